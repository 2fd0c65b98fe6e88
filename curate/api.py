"""The Python API: pipelines built from stage objects, scored, selected and run from a notebook
or a script, with each selection's relations as DuckDB relations or polars frames.

::

    import curate

    p = curate.Pipeline(
        name="basic",
        input="demo/pool/*.tar",
        score=["image_info", "caption_stats", "language", curate.scorer("exact_hash")],
        select=[curate.preset("datacomp_basic"),
                curate.rule("threshold", column="caption_words", gt=3,
                            reason="caption_under_4_words"),
                curate.selector("exact_dedup")])
    result = p.run("runs/basic")         # runs/basic/store, runs/basic/selections/basic
    result.funnel                         # [(reason, dropped), ...]
    result.manifest()                     # polars DataFrame, one row per input sample
    result.sql("select reason, count(*) from manifest group by 1")   # DuckDB relation

A ``Pipeline`` is exactly what the same YAML file gives: it is built as the dict that file would
hold and validated by ``curate.config.pipeline_from_dict`` (every check of a YAML pipeline, the
same stage classes, the same scorer versions), ``Pipeline.load(path)`` reads a YAML file and
``to_yaml()`` writes one. ``score`` and ``select`` are the two halves of ``run`` (score once,
select many times: ``p.replace(select=[...]).select(store, out)``), ``plan`` is ``curate
validate``. Scorers, rules and selectors are given as names, as stage objects (``curate.scorer
(name, **params)``, or an instance of a registered stage class, a plugin's included) or, for
the ``score:`` list, as ``{name: {params}}``; presets as ``curate.preset(name, **params)``.

Ray: each call starts a private local Ray when it has work for it and stops it after, unless
Ray is already initialised in the process (``ray.init()`` once in a notebook keeps it up across
calls) or ``address`` names a cluster. Stages defined in the notebook itself, or in a plugin
module (``curate.load_plugins``), reach the Ray workers by value.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import BaseModel

from curate.config import Pipeline as PipelineConfig
from curate.config import _build, _preset, load_pipeline, pipeline_from_dict
from curate.errors import ConfigError
from curate.stages.base import Rule, Scorer, Selector, Stage

if TYPE_CHECKING:
    import duckdb
    import polars

    from curate.audit.catalog import Run
    from curate.runner import SelectResult, WriteResult
    from curate.score.engine import ScoreResult
    from curate.validate import DryRun

URL_LIST_SUFFIXES = (".parquet", ".csv", ".tsv", ".txt", ".json")


def scorer(name: str, **params: Any) -> Scorer:
    """The registered scorer ``name`` with ``params``, validated now (``ConfigError`` names a
    bad parameter and lists the good ones)."""
    stage = _build("scorer", name, params, f"curate.scorer({name!r})", "<python>")
    return stage  # type: ignore[return-value]


def rule(name: str, **params: Any) -> Rule:
    """The registered rule ``name`` (``threshold``, ``in_set``, ``sql``, ...) with ``params``."""
    stage = _build("rule", name, params, f"curate.rule({name!r})", "<python>")
    return stage  # type: ignore[return-value]


def selector(name: str, **params: Any) -> Selector:
    """The registered selector ``name`` (``exact_dedup``, ``semdedup``, ...) with ``params``."""
    stage = _build("selector", name, params, f"curate.selector({name!r})", "<python>")
    return stage  # type: ignore[return-value]


@dataclass(frozen=True)
class Preset:
    """A preset (``curate/presets/NAME.yaml``) with its parameters: it expands into its steps
    where it stands in ``select``."""

    name: str
    params: Mapping[str, Any]

    def steps(self) -> list[Stage]:
        """The stages it expands into, in order."""
        return [s.stage for s in _preset(self.name, dict(self.params), "preset", "<python>")]


def preset(name: str, **params: Any) -> Preset:
    """The preset ``name`` with ``params`` (checked now: an unknown preset or parameter raises
    ``ConfigError``)."""
    p = Preset(name, dict(params))
    p.steps()
    return p


def load_plugins(*specs: str | Path) -> list[str]:
    """Import plugin modules (module names, or paths of ``.py`` files or package directories,
    relative to the working directory), registering their stages; returns their module names
    (see ``curate.plugins``). A pipeline's ``imports:`` does the same for its file."""
    from curate.plugins import load

    return [load(str(s)).module for s in specs]


def _params(stage: Stage) -> dict[str, Any]:
    """A stage's parameters as YAML gives them: JSON values, defaults left out."""
    return stage.params.model_dump(mode="json", exclude_defaults=True)


def _registered_as(stage: Stage) -> None:
    from curate.stages.base import registered

    cls = registered(stage.kind).get(stage.name)
    if cls is not type(stage):
        raise ConfigError(f"{type(stage).__qualname__} is not the registered {stage.kind} "
                          f"{stage.name!r}", "decorate its class with @register "
                          "(curate.stages.base.register), or load its plugin first")


def _score_item(item: Any) -> Any:
    if isinstance(item, Scorer):
        _registered_as(item)
        params = _params(item)
        return {item.name: params} if params else item.name
    if isinstance(item, str | Mapping):
        return copy.deepcopy(dict(item)) if isinstance(item, Mapping) else item
    raise ConfigError(f"score: {item!r} is not a scorer",
                      "give a name, curate.scorer(name, **params) or {name: {params}}")


def _select_item(item: Any) -> dict[str, Any]:
    if isinstance(item, Preset):
        return {"preset": item.name, **copy.deepcopy(dict(item.params))}
    if isinstance(item, Rule | Selector):
        _registered_as(item)
        key = "rule" if isinstance(item, Rule) else "selector"
        return {key: item.name, **_params(item)}
    if isinstance(item, Mapping):
        return copy.deepcopy(dict(item))
    raise ConfigError(f"select: {item!r} is not a select step",
                      "give curate.rule(...), curate.selector(...), curate.preset(...) or a "
                      "mapping as in YAML")


def _section(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", exclude_defaults=True)
    return copy.deepcopy(dict(value)) if isinstance(value, Mapping) else value


def _input(value: Any) -> Any:
    if isinstance(value, str | Path):
        text = str(value)
        return {"urls" if text.endswith(URL_LIST_SUFFIXES) else "shards": text}
    if isinstance(value, list | tuple):
        return {"shards": [str(v) for v in value]}
    return _section(value)


class Pipeline:
    """A validated pipeline, built in Python or loaded from YAML (see the module docs).

    ``config`` is the ``curate.config.Pipeline`` the runner takes; ``to_dict()`` the YAML
    mapping it is equivalent to."""

    def __init__(self, *, input: Any, score: Sequence[Any], select: Iterable[Any] = (),
                 name: str = "pipeline", description: str | None = None,
                 store: str | Path | None = None, output: Any = None, run: Any = None,
                 rewrite: Any = None, recaption: Any = None, metadata: Any = None,
                 imports: Sequence[str | Path] = ()) -> None:
        data: dict[str, Any] = {"name": name}
        if description is not None:
            data["description"] = description
        if imports:
            data["imports"] = [str(i) for i in imports]
        data["input"] = _input(input)
        if store is not None:
            data["store"] = str(store)
        if metadata is not None:
            data["metadata"] = _section(metadata)
        data["score"] = [_score_item(s) for s in score]
        data["select"] = [_select_item(s) for s in select]
        for key, value in (("output", output), ("run", run), ("rewrite", rewrite),
                           ("recaption", recaption)):
            if value is not None:
                data[key] = _section(value)
        self.config: PipelineConfig = pipeline_from_dict(data, source=f"<python: {name}>")

    @classmethod
    def wrap(cls, config: PipelineConfig) -> Pipeline:
        """A ``Pipeline`` around an already validated ``curate.config.Pipeline``."""
        self = cls.__new__(cls)
        self.config = config
        return self

    @classmethod
    def load(cls, path: str | Path, **overrides: dict[str, Any]) -> Pipeline:
        """Read a pipeline YAML file; ``overrides`` replace keys of its sections, e.g.
        ``input={"shards": "pool/*.tar"}``."""
        return cls.wrap(load_pipeline(path, overrides or None))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Pipeline:
        """A pipeline from the mapping a YAML file holds."""
        return cls.wrap(pipeline_from_dict(copy.deepcopy(dict(data)), source="<dict>"))

    # -- what it is -------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def scorers(self) -> list[Scorer]:
        """The scorer objects, in order."""
        return self.config.scorer_stages()

    @property
    def steps(self) -> list[Stage]:
        """The selection's rules and selectors, in order, presets expanded."""
        return [s.stage for s in self.config.select]

    def to_dict(self) -> dict[str, Any]:
        """The YAML mapping of this pipeline (what ``pipeline_from_dict`` validated)."""
        return copy.deepcopy(self.config.raw)

    def to_yaml(self, path: str | Path | None = None) -> str:
        """The pipeline as YAML text; written to ``path`` when given."""
        text = yaml.safe_dump(self.to_dict(), sort_keys=False)
        if path is not None:
            Path(path).write_text(text, encoding="utf-8")
        return text

    def replace(self, **sections: Any) -> Pipeline:
        """A new pipeline with some top-level sections replaced (``name=``, ``select=``,
        ``score=``, ``output=``...; values as the constructor takes them)."""
        data = self.to_dict()
        if "input" in sections:
            sections["input"] = _input(sections["input"])
        if "score" in sections:
            sections["score"] = [_score_item(s) for s in sections["score"]]
        if "select" in sections:
            sections["select"] = [_select_item(s) for s in sections["select"]]
        for key in ("output", "run", "rewrite", "recaption", "metadata"):
            if key in sections and sections[key] is not None:
                sections[key] = _section(sections[key])
        data.update({k: (str(v) if isinstance(v, Path) else v) for k, v in sections.items()})
        return Pipeline.wrap(pipeline_from_dict(data, source=f"<python: {data.get('name')}>"))

    def __repr__(self) -> str:
        return (f"Pipeline({self.name!r}: {len(self.config.scorers)} scorers, "
                f"{len(self.config.select)} select steps)")

    # -- doing it ---------------------------------------------------------------------------

    def plan(self, store: str | Path | None = None, out: str | Path | None = None) -> DryRun:
        """What ``run(out)`` (or ``score(store)``) would compute and reuse, without starting
        Ray or writing anything: ``curate validate`` (``print(p.plan(...).format())``)."""
        from curate.runner import default_store, selection_dir
        from curate.validate import dry_run

        out = Path(out) if out is not None else Path("runs") / self.name
        where = store if store is not None else default_store(self.config, out)
        return dry_run(self.config, where, selection_dir(out, self.name))

    def score(self, store: str | Path, *, address: str | None = None, progress: bool = False,
              local: bool = False) -> ScoreResult:
        """Score the input into ``store``, computing only what it lacks (``curate score``).
        ``local`` scores in this process without Ray (small pools)."""
        from curate.runner import score

        return score(self.config, store, address=address, progress=progress, local=local)

    def select(self, store: str | Path, out: str | Path, *, address: str | None = None,
               progress: bool = False) -> Result:
        """Apply this pipeline's selection to the scores in ``store``, into the directory
        ``out``; computes no score (``curate select``)."""
        from curate.runner import select

        return Result(select(store, self.config, out, address=address, progress=progress))

    def run(self, out: str | Path, *, store: str | Path | None = None, name: str | None = None,
            address: str | None = None, progress: bool = False) -> Result:
        """Score into ``store`` (default the pipeline's ``store:``, else ``OUT/store``), then
        select into ``OUT/selections/<name>`` (``curate run``)."""
        from curate.runner import run

        config = self.config
        if store is not None:
            config = copy.copy(config)
            config.store = str(store)
        return Result(run(config, out, address=address, progress=progress, name=name))


class Result:
    """A finished selection: its counts, and its catalogue's views (``manifest``, ``kept``,
    ``drops``, ``signals``, ``shards``, ``funnel``, ``stages``...) as DuckDB relations
    (``sql``) and polars frames (``pl``, ``manifest``)."""

    def __init__(self, summary: SelectResult) -> None:
        self.summary = summary
        self._run: Run | None = None

    @property
    def dir(self) -> Path:
        """The selection directory."""
        return self.summary.dir

    @property
    def samples(self) -> int:
        return self.summary.samples

    @property
    def kept(self) -> int:
        return self.summary.kept

    @property
    def funnel(self) -> list[tuple[str, int]]:
        """(reason, samples dropped) per step, in order."""
        return list(self.summary.funnel)

    @property
    def scoring(self) -> ScoreResult | None:
        """The scoring pass of ``Pipeline.run`` (None after ``select``)."""
        return getattr(self.summary, "scoring", None)

    @property
    def catalog(self) -> Run:
        """The selection's catalogue (``curate.open_run``), opened on first use."""
        if self._run is None:
            from curate.audit.catalog import open_run

            self._run = open_run(self.dir)
        return self._run

    def sql(self, query: str) -> duckdb.DuckDBPyRelation:
        """A DuckDB relation over the selection's views."""
        return self.catalog.sql(query)

    def pl(self, query_or_view: str) -> polars.DataFrame:
        """A polars DataFrame of a view (by name) or of a query."""
        return self.catalog.pl(query_or_view)  # type: ignore[no-any-return]

    def manifest(self, columns: Sequence[str] | None = None) -> polars.DataFrame:
        """The manifest (one row per input sample) as a polars DataFrame, all columns or
        ``columns``."""
        from curate.sql import ident

        cols = ", ".join(ident(c) for c in columns) if columns else "*"
        return self.catalog.sql(f"SELECT {cols} FROM manifest").pl()

    def search(self, *, text: str | None = None, image: str | Path | None = None,
               uid: str | None = None, k: int = 20, column: str = "clip_image_emb",
               all_rows: bool = False, nprobe: int | None = None) -> polars.DataFrame:
        """The ``k`` samples of this selection (its kept rows, or every row with
        ``all_rows``) nearest to a text, an image file or a sample's uid, over the stored
        embeddings ``column`` (``curate search``, ``curate.audit.search``): rank, score, uid,
        kept, reason, caption and the manifest's other columns."""
        from curate.audit.search import search

        return search(self.dir, text=text, image=image, uid=uid, k=k, column=column,
                      rows="all" if all_rows else "kept", nprobe=nprobe)

    def write(self, *, dir: str | Path | None = None, address: str | None = None,
              progress: bool = False) -> WriteResult:
        """Write the curated webdataset shards of this selection (``curate write``): its
        kept samples, copied from the input shards, into ``output.dir`` (or ``dir``). A
        selection writes none unless asked."""
        from curate.runner import write

        return write(self.dir, dir=None if dir is None else str(dir), address=address,
                     progress=progress)

    def close(self) -> None:
        if self._run is not None:
            self._run.close()
            self._run = None

    def __repr__(self) -> str:
        return f"Result({str(self.dir)!r}: {self.kept} of {self.samples} samples kept)"
