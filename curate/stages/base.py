"""The stage framework: scorers add columns, rules and selectors decide keep/drop.

Three kinds of stage, each registered by name (``@register``) so pipelines refer to them in YAML:

* ``Scorer``: adds columns to Arrow batches of samples, one shard at a time, on Ray workers.
  It declares ``inputs()`` (columns it reads), ``outputs()`` (columns it adds, with Arrow
  types), ``resources`` (cpus/gpus of the worker holding it) and may load models in ``setup()``.
  Subclass ``SampleScorer`` and implement ``score_sample`` for per-sample logic, or ``Scorer``
  and implement ``score_batch`` for vectorised logic. Either way the framework (``run_scorer``)
  owns batching, counters, timing and per-sample error capture.
* ``Rule``: a SQL predicate over the signals table; rows where it is false or null are dropped
  with the rule's ``reason``. Changing a threshold is a query, never a rescore.
* ``Selector``: global: it sees every still-kept row of the pool at once (DuckDB) and marks drops.

Parameters are pydantic models (``Params``) with unknown keys forbidden, so a pipeline with a
typo fails before any work starts.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import pyarrow as pa
from pydantic import BaseModel, ConfigDict

StageKind = Literal["scorer", "rule", "selector"]

# Key a batch scorer may add to its result: per row, None or the message of a failed sample.
SAMPLE_ERRORS = "__errors__"


_NON_SPACE = re.compile(r"\S+")


def text_prefix(text: str | None, max_chars: int) -> str:
    """``text`` with its runs of whitespace read as one space, cut to at most ``max_chars``
    characters, at the end of the last whole word that fits (a first word longer than
    ``max_chars`` is cut inside). Only the prefix is read, so a 1 MB caption costs what a
    ``max_chars`` one does. Stages whose work grows faster than linearly with the caption use it
    to bound that work, and say so in their docs."""
    if not text:
        return ""
    words: list[str] = []
    used = -1  # the first word has no space before it
    for m in _NON_SPACE.finditer(text):
        word = m.group()
        if used + 1 + len(word) > max_chars:
            if not words:
                words.append(word[:max_chars])
            break
        words.append(word)
        used += 1 + len(word)
    return " ".join(words)


class Params(BaseModel):
    """Base of every stage's parameters: unknown keys are errors, values are validated."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    # Parameters naming local files or directories (relative to the working directory): the
    # saved SEL/pipeline.yaml holds them absolute when they exist (curate.saved).
    path_fields: ClassVar[tuple[str, ...]] = ()


@dataclass(frozen=True)
class Resources:
    """What one worker holding the stage needs. Fractional GPUs are allowed."""

    cpus: float = 1.0
    gpus: float = 0.0


class Stage:
    """Common base: a name, validated params, a fingerprint."""

    name: ClassVar[str] = ""
    kind: ClassVar[StageKind]
    Params: ClassVar[type[Params]] = Params

    def __init__(self, params: Params | None = None) -> None:
        self.params = params if params is not None else self.Params()

    @property
    def label(self) -> str:
        """How the stage is named in counters and errors."""
        return self.name

    def fingerprint(self) -> str:
        """Changes whenever the stage's behaviour would (its name, version and params)."""
        blob = json.dumps(
            {"name": self.name, "version": getattr(self, "version", 1),
             "params": self.params.model_dump(mode="json")},
            sort_keys=True,
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


class Scorer(Stage):
    """Adds columns to batches of samples. See the module docs."""

    kind: ClassVar[StageKind] = "scorer"
    resources: Resources = Resources()  # a scorer may set its own from params in __init__
    version: ClassVar[int] = 1  # bump when outputs change for the same params
    device: str = "cpu"  # set by the runner before setup(): "cuda" when the worker has a GPU

    def inputs(self) -> Sequence[str]:
        """Batch columns this scorer reads (sample columns or other scorers' outputs)."""
        return ()

    def outputs(self) -> Mapping[str, pa.DataType]:
        """Columns this scorer adds, with their Arrow types."""
        raise NotImplementedError

    def output_names(self) -> Sequence[str]:
        """The names of ``outputs()``. A scorer whose types need a model loaded (e.g. an
        embedding's width) overrides it, so that naming a column stays cheap (hints)."""
        return list(self.outputs())

    def sidecars(self) -> Sequence[str]:
        """Output columns stored as arrays beside the scorer's Parquet instead of in it
        (embeddings: fixed-size lists of floats → one float16 ``.npy`` per shard in the store,
        row i = sample i of the shard, NaN rows for samples without a value)."""
        return ()

    def check(self) -> None:
        """Fail fast, on the driver, before any worker starts: raise ``CurateError`` for what
        ``setup`` could not do on any worker (model weights that cannot be had: a missing file,
        an unknown tag, weights neither cached nor downloadable). Called only when the scorer
        computes in this pass; keep it to seconds."""

    def setup(self) -> None:
        """Load models and other per-worker state. Called once per worker, before scoring."""

    def score_batch(self, batch: pa.Table) -> Mapping[str, Sequence[Any] | pa.Array]:
        """Return one value per row for every output column. To fail single samples, also
        return ``SAMPLE_ERRORS``: one message (or None) per row. Raising fails the batch: the
        framework then rescores each sample alone, so only the bad samples are marked failed."""
        raise NotImplementedError


class SampleScorer(Scorer):
    """A scorer written one sample at a time: implement ``score_sample``."""

    def score_sample(self, sample: dict[str, Any]) -> Mapping[str, Any]:
        """``sample`` holds the columns named by ``inputs()``; return the output values."""
        raise NotImplementedError


class Rule(Stage):
    """A keep predicate in DuckDB SQL over signal columns; false or null means drop."""

    kind: ClassVar[StageKind] = "rule"

    @property
    def reason(self) -> str:
        return str(getattr(self.params, "reason", None) or self.name)

    @property
    def label(self) -> str:
        return self.reason

    def keep_sql(self, table: str) -> str:
        """A boolean SQL expression over the columns of ``table`` (the pool being selected; a
        rule may query it as a whole, e.g. for a global quantile)."""
        raise NotImplementedError


@dataclass
class SelectContext:
    """What a selector may use besides the pool table: the selection's directory (for its
    reports and files), the stored embeddings, and a way to write its decisions back."""

    out_dir: Path
    sidecars: Any = None  # curate.store.embeddings.SidecarReader of the pool being selected
    # The store versions (curate.store.store.Version: label, name, params, schema) of the
    # scorers whose columns the pool holds, e.g. for a selector to find a scorer's parameters.
    versions: Sequence[Any] = ()

    def kept(self, con: Any, table: str, columns: Sequence[str]) -> pa.Table:
        """``_row``, ``uid``, ``shard``, ``index`` and ``columns`` of the rows still kept."""
        from curate.sql import ident

        cols = ", ".join(ident(c) for c in ("_row", "uid", "shard", "index", *columns))
        return con.sql(f"SELECT {cols} FROM {ident(table)} WHERE reason IS NULL "
                       "ORDER BY _row").to_arrow_table()

    def embeddings(self, column: str, rows: pa.Table) -> Any:
        """float32 L2-normalised embeddings ``[rows, dim]`` of ``rows`` (from ``kept``)."""
        from curate.errors import CurateError

        if self.sidecars is None:
            raise CurateError(f"no stored embeddings to read {column!r} from")
        return self.sidecars.read_rows(column, rows.column("shard").to_pylist(),
                                       rows.column("index").to_pylist())

    def mark(self, con: Any, table: str, decisions: pa.Table) -> None:
        """Write ``decisions`` (``_row`` plus columns of ``table``, e.g. ``reason``) back."""
        from curate.sql import ident

        if decisions.num_rows == 0:
            return
        con.register("_decisions", decisions)
        sets = ", ".join(f"{ident(c)} = d.{ident(c)}" for c in decisions.column_names
                         if c != "_row")
        con.execute(f"UPDATE {ident(table)} SET {sets} FROM _decisions AS d "
                    f"WHERE {ident(table)}._row = d._row")
        con.unregister("_decisions")

    def report(self, name: str, data: dict[str, Any]) -> Path:
        """Store a selector's report as ``SELECTION/reports/<name>.json``."""
        from curate.io.atomic import write_text

        path = self.out_dir / "reports" / f"{name}.json"
        write_text(json.dumps(data, indent=1, default=float), path)
        return path


class Selector(Stage):
    """A global selection over the rows still kept; marks drops with ``reason`` in SQL.

    ``apply`` gets a DuckDB connection holding table ``table`` with every signal column plus
    ``_row`` (BIGINT, pool order) and ``reason`` (null while kept), and a ``SelectContext``.
    It must only set ``reason`` (and its own ``extra_columns``) on rows whose ``reason`` is null.
    """

    kind: ClassVar[StageKind] = "selector"

    def columns(self) -> Sequence[str]:
        """Signal columns this selector reads (checked before the run starts)."""
        return ()

    def sidecars_needed(self) -> Sequence[str]:
        """Sidecar arrays (embeddings) this selector reads (checked before the run starts)."""
        return ()

    def reasons(self) -> Sequence[str]:
        """Every reason this selector can write, in the order the funnel shows them."""
        return (self.name,)

    @property
    def label(self) -> str:
        return self.name

    def extra_columns(self) -> Mapping[str, pa.DataType]:
        """Columns this selector adds to the manifest (null where it does not apply)."""
        return {}

    def apply(self, con: Any, table: str, ctx: SelectContext) -> None:
        raise NotImplementedError


# --------------------------------------------------------------------------------------------
# Registry


_REGISTRY: dict[StageKind, dict[str, type[Stage]]] = {"scorer": {}, "rule": {}, "selector": {}}


def register(cls: type[Stage]) -> type[Stage]:
    """Class decorator: make a stage available to pipelines under ``cls.name``."""
    if not cls.name:
        raise TypeError(f"{cls.__qualname__} has no name")
    table = _REGISTRY[cls.kind]
    old = table.get(cls.name)
    if old is not None and old is not cls and (old.__module__, old.__qualname__) != (
            cls.__module__, cls.__qualname__):  # the same class defined again replaces it
        raise TypeError(f"two {cls.kind}s are named {cls.name!r}")
    table[cls.name] = cls
    return cls


def registered(kind: StageKind) -> dict[str, type[Stage]]:
    """Name → class of every registered stage of ``kind`` (built-ins are loaded first, then
    the plugins of the ``curate.stages`` entry points: ``curate.plugins``)."""
    import curate.stages  # noqa: F401  (registers the built-in stages)
    from curate.plugins import load_entry_points

    load_entry_points()
    return dict(_REGISTRY[kind])


# --------------------------------------------------------------------------------------------
# Running a scorer over a batch: the one loop every scorer shares.


@dataclass
class StageCounters:
    """Always-on counters of one stage on one shard (summed over shards by the runner)."""

    samples: int = 0
    errors: int = 0
    skipped: int = 0  # samples that had already failed in an earlier step
    seconds: float = 0.0

    def add(self, other: StageCounters) -> None:
        self.samples += other.samples
        self.errors += other.errors
        self.skipped += other.skipped
        self.seconds += other.seconds

    def as_dict(self) -> dict[str, float | int]:
        return {"samples": self.samples, "errors": self.errors, "skipped": self.skipped,
                "seconds": round(self.seconds, 6)}


@dataclass
class BatchErrors:
    """Per-row error state of a batch: None while the sample is fine."""

    stage: list[str | None]
    message: list[str | None]
    counters: dict[str, StageCounters] = field(default_factory=dict)

    @classmethod
    def from_batch(cls, batch: pa.Table) -> BatchErrors:
        return cls(stage=batch.column("error_stage").to_pylist(),
                   message=batch.column("error").to_pylist())

    def ok_rows(self) -> list[int]:
        return [i for i, s in enumerate(self.stage) if s is None]

    def fail(self, row: int, stage: str, exc: BaseException | str) -> None:
        self.stage[row] = stage
        self.message[row] = exc if isinstance(exc, str) else _describe(exc)


class StageBug(Exception):
    """A stage broke its contract (wrong columns or lengths): a bug, not bad data."""


_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def _describe(exc: BaseException) -> str:
    """``Type: message`` on one line, without memory addresses (reruns must be identical)."""
    text = _ADDRESS.sub("", str(exc).strip().replace("\n", " "))
    if isinstance(exc, _Reported):
        return text
    if len(text) > 500:
        text = text[:500] + "…"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _to_array(scorer: Scorer, column: str, values: Sequence[Any] | pa.Array,
              dtype: pa.DataType, n: int) -> pa.Array:
    try:
        arr = values if isinstance(values, pa.Array) else pa.array(values, type=dtype)
        if arr.type != dtype:
            arr = arr.cast(dtype)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError) as exc:
        raise StageBug(f"scorer {scorer.name!r}: column {column!r} is not {dtype}: {exc}") from exc
    if len(arr) != n:
        raise StageBug(f"scorer {scorer.name!r}: column {column!r} has {len(arr)} values "
                       f"for {n} samples")
    return arr


def _checked(scorer: Scorer, out: Mapping[str, Any]) -> Mapping[str, Any]:
    missing = set(scorer.outputs()) - set(out)
    if missing:
        raise StageBug(f"scorer {scorer.name!r} did not return {sorted(missing)}")
    return out


def _score_one_by_one(scorer: Scorer, sub: pa.Table,
                      ) -> tuple[dict[str, list[Any]], list[BaseException | None]]:
    """Score each row alone; a failing row gets nulls and its exception."""
    outputs = scorer.outputs()
    per_sample = isinstance(scorer, SampleScorer)
    rows = sub.to_pylist() if per_sample else None
    values: dict[str, list[Any]] = {c: [] for c in outputs}
    failures: list[BaseException | None] = []
    for i in range(sub.num_rows):
        try:
            if per_sample:
                assert rows is not None
                got = _checked(scorer, scorer.score_sample(rows[i]))  # type: ignore[attr-defined]
                row = {c: got[c] for c in outputs}
            else:
                got = _checked(scorer, scorer.score_batch(sub.slice(i, 1)))
                row = {c: _first(got[c]) for c in outputs}
        except StageBug:
            raise
        except Exception as exc:  # noqa: BLE001 - recorded on the sample, never silent
            row = dict.fromkeys(outputs)
            failures.append(exc)
        else:
            failures.append(None)
        for c in outputs:
            values[c].append(row[c])
    return values, failures


class _Reported(Exception):
    """A failure a batch scorer reported for one sample (its message is kept as given)."""


def _first(values: Sequence[Any] | pa.Array) -> Any:
    v = values[0]
    return v.as_py() if isinstance(v, pa.Scalar) else v


def run_scorer(scorer: Scorer, batch: pa.Table, errors: BatchErrors) -> pa.Table:
    """Apply ``scorer`` to the rows of ``batch`` that have not failed yet.

    Returns ``batch`` with the scorer's output columns appended (null on skipped and failed
    rows); failures are recorded in ``errors`` with the scorer's name as stage. A batch scorer
    that raises is retried one sample at a time so that only the bad samples fail. A stage that
    breaks its contract raises ``StageBug``.
    """
    counters = errors.counters.setdefault(scorer.label, StageCounters())
    t0 = time.perf_counter()
    outputs = scorer.outputs()
    ok = errors.ok_rows()
    counters.samples += len(ok)
    counters.skipped += batch.num_rows - len(ok)
    computed: Mapping[str, Sequence[Any] | pa.Array] = {c: [] for c in outputs}
    failures: list[BaseException | None] = [None] * len(ok)
    if ok:
        # only the inputs are copied (a table with no columns would lose its row count)
        sub = batch.select(list(scorer.inputs()) or batch.column_names[:1]).take(ok)
        if isinstance(scorer, SampleScorer):
            computed, failures = _score_one_by_one(scorer, sub)
        else:
            try:
                computed = _checked(scorer, scorer.score_batch(sub))
            except StageBug:
                raise
            except Exception:  # noqa: BLE001 - isolate the bad samples one by one
                computed, failures = _score_one_by_one(scorer, sub)
            else:
                reported = computed.get(SAMPLE_ERRORS)
                if reported is not None:
                    if len(reported) != len(ok):
                        raise StageBug(f"scorer {scorer.name!r}: {len(reported)} errors for "
                                       f"{len(ok)} samples")
                    failures = [None if m is None else _Reported(str(m)) for m in reported]
    # Row r of the batch takes value j of the scored subset, or null when skipped/failed.
    position: list[int | None] = [None] * batch.num_rows
    for j, row in enumerate(ok):
        if failures[j] is None:
            position[row] = j
        else:
            errors.fail(row, scorer.label, failures[j])  # type: ignore[arg-type]
            counters.errors += 1
    dense = all(p == i for i, p in enumerate(position))
    take = None if dense else pa.array(position, type=pa.int64())
    for c, dtype in outputs.items():
        vals = _to_array(scorer, c, computed[c], dtype, len(ok))
        batch = batch.append_column(pa.field(c, dtype), vals if take is None else vals.take(take))
    counters.seconds += time.perf_counter() - t0
    return batch
