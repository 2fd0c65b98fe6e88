"""Pipeline definitions: YAML → validated ``Pipeline``, before any work starts.

A pipeline file::

    name: demo
    input:
      shards: demo/pool/{00000..00007}.tar     # or a glob, a list, fsspec URLs
      # urls: urls.parquet                     # or a URL list downloaded by img2dataset
    score:                                     # scorers, in order; a name or {name: {params}}
      - image_info
      - language: {model_path: null}
    select:                                    # rules, presets and selectors, in order
      - preset: datacomp_basic
      - rule: threshold
        column: caption_words
        gt: 2
        reason: caption_too_few_words
      - selector: exact_dedup
    output:
      samples_per_shard: 1000
    run:
      workers: null                            # default: one per free CPU (or GPU)
      batch_size: 256

Every problem (unknown key, unknown stage, bad parameter, a rule naming a column no scorer
makes) raises ``ConfigError`` naming where in the file it is.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import duckdb
import pyarrow as pa
import yaml
from pydantic import BaseModel, Field, ValidationError, model_validator

from curate.errors import ConfigError, CurateError
from curate.recaption.config import RecaptionConfig
from curate.rewrite.config import RewriteConfig
from curate.schema import BATCH_ONLY_COLUMNS, MANIFEST_COLUMNS, SAMPLE_COLUMNS
from curate.select.metadata import MetadataConfig
from curate.stages.base import Params, Rule, Scorer, Selector, Stage, StageKind, registered

PRESET_DIR = Path(__file__).parent / "presets"


class DownloadConfig(Params):
    """img2dataset settings for URL-list input (images are stored as downloaded)."""

    timeout: int = Field(default=10, gt=0)
    thread_count: int = Field(default=32, gt=0)
    processes_count: int = Field(default=1, gt=0)
    samples_per_shard: int = Field(default=10_000, gt=0)
    retries: int = Field(default=0, ge=0)
    user_agent_token: str | None = None


class InputConfig(Params):
    shards: str | list[str] | None = None
    urls: str | None = None
    url_col: str = "url"
    caption_col: str | None = "caption"
    format: Literal["parquet", "csv", "tsv", "txt", "json"] | None = None
    download: DownloadConfig = DownloadConfig()
    # A tar member over this size is never read into memory; its sample fails (stage read).
    max_member_bytes: int = Field(default=128 * 2**20, gt=0)
    # How a shard whose scores are stored is recognised as unchanged: "stamp" (its size and
    # modification time; a changed stamp means hashing it again) or "always" (hash it on every
    # run, for filesystems whose modification times cannot be trusted).
    verify: Literal["stamp", "always"] = "stamp"

    @model_validator(mode="after")
    def _exactly_one(self) -> InputConfig:
        if (self.shards is None) == (self.urls is None):
            raise ValueError("give exactly one of 'shards' (webdataset tars) or 'urls' "
                             "(a URL list to download)")
        return self


class OutputConfig(Params):
    samples_per_shard: int = Field(default=1000, gt=0)
    # A selection is a query over the store: curated shards (a copy of every kept sample)
    # are written only when asked (here, `--write-shards`, or `curate write SEL` later).
    write_shards: bool = False
    split_by: str | None = None  # a column: one directory of shards per value
    # Where the shards go: None = SEL/output (in the selection's directory); a local path or an
    # fsspec URL (s3://bucket/x, gs://..., file:///shared/x = a mount at the same path on every
    # node, memory://x).
    dir: str | None = None
    # Blur faces as DataComp's resharder does (--apply-blur): the column holding each sample's
    # boxes (e.g. face_bboxes from the pool's metadata); blurred images become WebP at quality.
    blur_faces: str | None = None
    blur_quality: int = Field(default=100, ge=1, le=100)
    # Keep img2dataset's `exif` string in each sample's json (left out by default).
    keep_exif: bool = False

    @model_validator(mode="after")
    def _known_filesystem(self) -> OutputConfig:
        """An unknown protocol, or one whose package is missing, fails before any work."""
        import fsspec
        from pydantic_core import PydanticCustomError

        if self.dir is None:
            return self
        if not self.dir.strip():
            raise PydanticCustomError("output_dir", "dir is empty: give a path or a URL, or "
                                      "leave it out for SEL/output")
        for part in self.dir.split("::"):
            protocol, _ = fsspec.core.split_protocol(part)
            if protocol is None:
                continue
            try:
                fsspec.get_filesystem_class(protocol)
            except ValueError:
                raise PydanticCustomError(
                    "output_dir", "dir '{dir}': fsspec knows no protocol '{protocol}' (e.g. "
                    "s3://, gs://, file://, memory://, or a local path)",
                    {"dir": self.dir, "protocol": protocol}) from None
            except ImportError as exc:
                raise PydanticCustomError(
                    "output_dir", "dir '{dir}': {why} (pip install it on the driver and on "
                    "every node)", {"dir": self.dir, "why": str(exc)}) from None
        return self


class RunConfig(Params):
    workers: int | None = Field(default=None, gt=0)
    batch_size: int = Field(default=256, gt=0)
    max_retries: int = Field(default=2, ge=0)
    address: str | None = None  # join this Ray cluster instead of starting a local one


class _PipelineFile(Params):
    name: str = Field(default="pipeline", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    description: str | None = None
    # Plugins imported before the stages are looked up (curate.plugins): module names, or
    # paths of .py files or package directories relative to the pipeline file.
    imports: list[str] = []
    input: InputConfig
    # The scored pool store (a path or an fsspec URL); default: OUT/store of `curate run`.
    store: str | None = None
    score: list[Any] = Field(min_length=1)
    select: list[Any] = []
    output: OutputConfig = OutputConfig()
    run: RunConfig = RunConfig()
    rewrite: RewriteConfig | None = None  # LLM caption rewrites of the kept samples
    recaption: RecaptionConfig | None = None  # synthetic captions of the kept images
    metadata: MetadataConfig | None = None  # the pool's own columns, joined at selection


class _SelectionFile(Params):
    """What ``curate select`` reads: a selection, or a whole pipeline (whose input and store
    are then not used, and whose ``score:`` names the scorers to select on)."""

    name: str = Field(default="selection", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    description: str | None = None
    imports: list[str] = []
    input: Any = None
    store: Any = None
    score: list[Any] | None = None
    select: list[Any] = []
    output: OutputConfig = OutputConfig()
    run: RunConfig = RunConfig()
    rewrite: RewriteConfig | None = None
    recaption: RecaptionConfig | None = None
    metadata: MetadataConfig | None = None


@dataclass(frozen=True)
class Step:
    """A configured stage and where it was defined (for error messages)."""

    stage: Stage
    where: str


@dataclass
class Selection:
    """What ``curate select`` applies to a store: rules and selectors, output, rewrites; and,
    when given, the scorers (with their parameters) whose stored columns it selects on
    (default: the current version of every scorer in the store)."""

    name: str
    description: str | None
    select: list[Step]
    output: OutputConfig
    run: RunConfig
    source: str
    raw: dict[str, Any]
    rewrite: RewriteConfig | None = None
    scorers: list[Step] | None = None
    metadata: MetadataConfig | None = None
    recaption: RecaptionConfig | None = None

    def metadata_columns(self) -> dict[str, pa.DataType]:
        return {} if self.metadata is None else self.metadata.arrow_columns()

    def scorer_stages(self) -> list[Scorer] | None:
        return None if self.scorers is None else [s.stage for s in self.scorers]  # type: ignore[misc]

    def selector_columns(self) -> dict[str, pa.DataType]:
        cols: dict[str, pa.DataType] = {}
        for step in self.select:
            if isinstance(step.stage, Selector):
                cols.update(step.stage.extra_columns())
        return cols


@dataclass
class Pipeline:
    name: str
    description: str | None
    input: InputConfig
    scorers: list[Step]
    select: list[Step]
    output: OutputConfig
    run: RunConfig
    source: str  # the file it came from, or "<dict>"
    raw: dict[str, Any]
    rewrite: RewriteConfig | None = None
    store: str | None = None
    metadata: MetadataConfig | None = None
    recaption: RecaptionConfig | None = None

    def scorer_stages(self) -> list[Scorer]:
        return [s.stage for s in self.scorers]  # type: ignore[misc]

    def signal_columns(self) -> dict[str, pa.DataType]:
        """Every column a selection of this pipeline sees, in order (embeddings are stored
        beside the columns, not in them)."""
        cols = dict(SAMPLE_COLUMNS)
        for s in self.scorer_stages():
            side = set(s.sidecars())
            cols.update({c: t for c, t in s.outputs().items() if c not in side})
        if self.metadata is not None:
            for c, t in self.metadata.arrow_columns().items():
                if c in cols:
                    raise ConfigError(f"{self.source}: metadata column {c!r} is also made by a "
                                      "scorer of the pipeline", "leave one of them out")
                cols[c] = t
        return cols

    def selector_columns(self) -> dict[str, pa.DataType]:
        return self.selection().selector_columns()

    def selection(self) -> Selection:
        """The pipeline's selection: its steps, selecting on its own scorers."""
        return Selection(name=self.name, description=self.description, select=self.select,
                         output=self.output, run=self.run, source=self.source, raw=self.raw,
                         rewrite=self.rewrite, scorers=self.scorers, metadata=self.metadata,
                         recaption=self.recaption)


# --------------------------------------------------------------------------------------------
# Reading YAML: plain data only, every key once, bounded expansion.

MAX_YAML_VALUES = 100_000  # values a pipeline or preset file may expand to (aliases included)


class _Refused(yaml.constructor.ConstructorError):
    """Valid YAML that a pipeline may not hold (a duplicate key, a language-specific tag, list
    items run together by their indentation); ``hint`` says what to write instead."""

    hint: str | None = None


class StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader (plain data: no Python objects, nothing executed or imported) that
    also refuses a key given twice in one mapping, which PyYAML would silently resolve to the
    last value, and names any tag it does not know instead of constructing it, and any value
    that does not fit its tag (``!!int x``, ``!!timestamp x``: PyYAML's own constructors fail
    on those with ValueError, KeyError, AttributeError...)."""

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        if isinstance(node, yaml.SequenceNode):
            for item in node.value:
                _refuse_glued_items(item)
        try:
            return super().construct_object(node, deep)
        except (ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
            raise _Refused(None, None, f"the value is not a valid {_short(node.tag)} "
                           f"({type(exc).__name__}: {exc})", node.start_mark) from None


def _refuse_glued_items(node: yaml.Node) -> None:
    """Refuse a list item that YAML reads as one text although it holds further list items: a
    line ``- b`` indented deeper than the ``- a`` above it continues a's plain text, so YAML
    reads ``'a - b'`` (and the pipeline would name an unknown stage ``a - b``)."""
    if not isinstance(node, yaml.ScalarNode) or node.style is not None:
        return
    start, end = node.start_mark, node.end_mark
    if start.line == end.line or not isinstance(start.buffer, str):
        return
    lines = start.buffer[start.index:end.index].split("\n")
    for offset, line in enumerate(lines[1:], 1):
        item = line.lstrip()
        if item == "-" or item.startswith("- "):
            mark = yaml.Mark(start.name, 0, start.line + offset, len(line) - len(item), None, None)
            err = _Refused(None, None, f"the list item '{item.strip()}' is indented deeper than "
                           f"the item '- {lines[0].strip()}' above it, so YAML reads the two as "
                           f"one text, {node.value!r}", mark)
            err.hint = "give every `- ` of one list the same indentation"
            raise err


# PyYAML's syntax errors in plain words: (start of PyYAML's problem, what to say, whether the
# place to name is where the unclosed thing began, PyYAML's context mark).
_YAML_PROBLEMS: tuple[tuple[str, str, bool], ...] = (
    ("expected ',' or ']'", "this '[' list is never closed: a ']' (or a ',' between its "
     "items) is missing", True),
    ("expected ',' or '}'", "this '{' mapping is never closed: a '}' (or a ',' between its "
     "entries) is missing", True),
    ("found unexpected end of stream", "this quote is never closed", True),
    ("could not find expected ':'", "this line is not `key: value`: its ':' is missing", True),
    ("mapping values are not allowed", "a ':' where no key can begin: quote a value that holds "
     "': ', or indent this line like the keys above it", False),
    ("found character '\\t'", "a tab character: YAML indents with spaces only", False),
    ("expected <block end>, but found '<block sequence start>'", "this list item is indented "
     "less than the items above it", False),
    ("expected <block end>, but found '?'", "this key is indented like the list items above "
     "it: make it an item (`- key: ...`) or indent it under one", False),
    ("expected <block end>", "this line is indented differently from the lines it belongs "
     "with", False),
    ("did not find expected key", "this line is indented differently from the keys above it",
     False),
    ("did not find expected '-' indicator", "this line is indented differently from the list "
     "items above it", False),
    ("found undefined alias", "an alias (*name) with no anchor (&name) before it", False),
    ("found unknown escape character", "an escape that YAML does not know inside double "
     "quotes: use single quotes, or write \\\\ for a backslash", False),
    ("expected the node content", "a value YAML cannot read: quote it (a value may not begin "
     "with ] } , or another YAML symbol)", False),
    ("but found another document", "a second YAML document (after `---`): a pipeline is one "
     "document", False),
)


def _yaml_error(path: Path, text: str, exc: yaml.YAMLError) -> ConfigError:
    """A YAML syntax error in plain words, at the line and column where the problem is (for an
    unclosed bracket or quote, where it opened), with that line quoted in the hint."""
    if isinstance(exc, yaml.reader.ReaderError):  # a character YAML does not allow
        at = int(exc.position)
        mark = yaml.Mark(str(path), at, text.count("\n", 0, at),
                         at - text.rfind("\n", 0, at) - 1, None, None)
        what = (f"#x{exc.character:04x}" if isinstance(exc.character, int)
                else repr(exc.character))
        plain, at_context = f"character {what}: {exc.reason}", False
    else:
        problem = str(getattr(exc, "problem", None) or exc)
        plain, at_context = next(((say, ctx) for start, say, ctx in _YAML_PROBLEMS
                                  if problem.startswith(start)), (problem, False))
        mark = getattr(exc, "context_mark", None) if at_context else None
        mark = mark or getattr(exc, "problem_mark", None)
    if mark is None:
        return ConfigError(f"{path}: not valid YAML: {plain}")
    lines = text.splitlines()
    line = lines[mark.line].strip() if mark.line < len(lines) else ""
    line = line if line.isprintable() else ascii(line)
    return ConfigError(f"{path}: not valid YAML at line {mark.line + 1}, column "
                       f"{mark.column + 1}: {plain}",
                       f"line {mark.line + 1} is: {line}" if line else None)


def _short(tag: str) -> str:
    return "!!" + tag.removeprefix("tag:yaml.org,2002:") if tag.startswith(
        "tag:yaml.org,2002:") else tag


def _mapping(loader: StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
            continue  # merge keys (<<) may be overridden; complex keys are refused later
        key = loader.construct_object(key_node)
        if key in seen:
            raise _Refused(None, None, f"key {key!r} is given twice in one mapping (YAML would "
                           "silently keep the last)", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node)


def _undefined(loader: StrictLoader, node: yaml.Node) -> Any:
    raise _Refused(None, None, f"tag {_short(str(node.tag))} is not allowed: a pipeline holds "
                   "plain data only (strings, numbers, booleans, lists, mappings)",
                   node.start_mark)


StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)
StrictLoader.add_constructor(None, _undefined)
# A set has no order (its iteration order changes with PYTHONHASHSEED): `score: !!set {...}`
# would run scorers in a different order from run to run.
StrictLoader.add_constructor("tag:yaml.org,2002:set", _undefined)


def load_yaml(path: Path) -> Any:
    """The data of a pipeline or preset file, or ``ConfigError`` naming the line: not UTF-8,
    not YAML, a duplicate key, a Python (or other unknown) tag, nested too deeply for PyYAML's
    recursive parser, or more than ``MAX_YAML_VALUES`` values once aliases are expanded (a
    billion-laughs file)."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}: {exc.reason})") from exc
    try:
        data = yaml.load(text, Loader=StrictLoader)  # safe: StrictLoader is a SafeLoader
    except yaml.YAMLError as exc:
        if isinstance(exc, _Refused):
            mark = exc.problem_mark
            where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
            raise ConfigError(f"{path}: {where}{exc.problem}", exc.hint) from None
        raise _yaml_error(path, text, exc) from exc
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply (lists or mappings inside each other "
                          "hundreds of levels deep)") from None
    stack, values = [data], 0
    while stack:
        item = stack.pop()
        values += 1
        if values > MAX_YAML_VALUES:
            raise ConfigError(f"{path}: expands to more than {MAX_YAML_VALUES} values",
                              "aliases (*name) that repeat aliases multiply; write it out")
        if isinstance(item, dict):
            stack.extend(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return data


def load_pipeline(path: str | Path, overrides: dict[str, Any] | None = None) -> Pipeline:
    """Read and validate a pipeline YAML file. ``overrides`` replace top-level sections' keys,
    e.g. ``{"input": {"shards": "x/*.tar"}}``."""
    p = Path(path)
    if not p.is_file():
        known = sorted(x.name for x in Path("pipelines").glob("*.yaml")) if Path(
            "pipelines").is_dir() else []
        raise ConfigError(f"pipeline file {str(path)!r} not found",
                          f"pipelines here: {', '.join(known)}" if known else None)
    data = load_yaml(p)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a pipeline is a YAML mapping (name, input, score, ...)")
    for section, values in (overrides or {}).items():
        merged = dict(data.get(section) or {})
        merged.update(values)
        if section == "input" and "urls" in values:
            merged.pop("shards", None)
        if section == "input" and "shards" in values:
            merged.pop("urls", None)
        data[section] = merged
    return pipeline_from_dict(data, source=str(path))


def pipeline_from_dict(data: dict[str, Any], source: str = "<dict>") -> Pipeline:
    """Validate a pipeline given as a dict (the parsed YAML)."""
    try:
        spec = _PipelineFile.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {_first_error(exc)}", _hint_for(exc, _PipelineFile)
                          ) from exc
    if spec.imports:  # saved with the run as absolute paths
        from curate.plugins import load_imports

        data = {**data, "imports": load_imports(spec.imports, source)}
    scorers = [_scorer_step(item, f"score[{i}]", source) for i, item in enumerate(spec.score)]
    select: list[Step] = []
    for i, item in enumerate(spec.select):
        select.extend(_select_steps(item, f"select[{i}]", source))
    pipeline = Pipeline(name=spec.name, description=spec.description, input=spec.input,
                        scorers=scorers, select=select, output=spec.output, run=spec.run,
                        source=source, raw=data, rewrite=spec.rewrite, store=spec.store,
                        metadata=spec.metadata, recaption=spec.recaption)
    check_scorers(pipeline.scorers, source)
    check_selection(pipeline.selection(), pipeline.signal_columns(), _sidecars(pipeline.scorers))
    if spec.rewrite is not None:
        _check_rewrite(spec.rewrite, source)
    if spec.recaption is not None:
        _check_recaption(spec.recaption, source)
    return pipeline


def _sidecars(steps: list[Step]) -> set[str]:
    return {c for step in steps for c in step.stage.sidecars()}  # type: ignore[attr-defined]


def load_selection(path: str | Path) -> Selection:
    """Read a selection file (or a pipeline file, see ``_SelectionFile``); its rules are
    checked against a store's columns by ``check_selection`` when it is applied."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"selection file {str(path)!r} not found")
    data = load_yaml(p)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a selection is a YAML mapping (name, select, output, ...)")
    return selection_from_dict(data, source=str(path))


def selection_from_dict(data: dict[str, Any], source: str = "<dict>") -> Selection:
    try:
        spec = _SelectionFile.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {_first_error(exc)}", _hint_for(exc, _SelectionFile)
                          ) from exc
    if spec.imports:
        from curate.plugins import load_imports

        data = {**data, "imports": load_imports(spec.imports, source)}
    scorers = None
    if spec.score is not None:
        scorers = [_scorer_step(item, f"score[{i}]", source) for i, item in
                   enumerate(spec.score)]
        check_scorers(scorers, source)
    select: list[Step] = []
    for i, item in enumerate(spec.select):
        select.extend(_select_steps(item, f"select[{i}]", source))
    if spec.rewrite is not None:
        _check_rewrite(spec.rewrite, source)
    if spec.recaption is not None:
        _check_recaption(spec.recaption, source)
    return Selection(name=spec.name, description=spec.description, select=select,
                     output=spec.output, run=spec.run, source=source, raw=data,
                     rewrite=spec.rewrite, scorers=scorers, metadata=spec.metadata,
                     recaption=spec.recaption)


def _main_error(exc: ValidationError) -> Any:
    """The error to report: an unknown key first (a typo also makes the real key 'missing')."""
    errors = exc.errors()
    return next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])


MAX_ERRORS = 6  # validation errors listed in one message


def _first_error(exc: ValidationError) -> str:
    """Every error of ``exc`` as ``where: what``, joined by '; ' (unknown keys first, at most
    ``MAX_ERRORS``), so that all of a step's bad parameters are reported at once."""
    errors = sorted(exc.errors(), key=lambda e: e["type"] != "extra_forbidden")
    parts: list[str] = []
    for err in errors:
        loc = ".".join(str(x) for x in err["loc"]) or "(top level)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        elif err["type"] == "missing":
            msg = "required key is missing"
        if f"{loc}: {msg}" not in parts:
            parts.append(f"{loc}: {msg}")
    more = f" (and {len(parts) - MAX_ERRORS} more)" if len(parts) > MAX_ERRORS else ""
    return "; ".join(parts[:MAX_ERRORS]) + more


def _hint_for(exc: ValidationError, model: type[BaseModel]) -> str | None:
    err = _main_error(exc)
    if err["type"] != "extra_forbidden":
        return None
    # Walk the location to the model that rejected the key, then list its keys.
    current: Any = model
    for part in err["loc"][:-1]:
        field = getattr(current, "model_fields", {}).get(part)
        if field is None:
            break
        ann = field.annotation
        if not isinstance(ann, type):  # Optional[Model]: the model
            ann = next((a for a in getattr(ann, "__args__", ()) if isinstance(a, type)
                        and issubclass(a, BaseModel)), None)
        if ann is None:
            break
        current = ann
    keys = sorted(getattr(current, "model_fields", {}))
    bad = str(err["loc"][-1])
    close = difflib.get_close_matches(bad, keys, n=1)
    hint = f"allowed keys: {', '.join(keys)}" if keys else None
    if close:
        hint = f"did you mean {close[0]!r}? ({hint})"
    return hint


def _build(kind: StageKind, name: Any, params: Any, where: str, source: str) -> Stage:
    table = registered(kind)
    if not isinstance(name, str) or name not in table:
        close = difflib.get_close_matches(str(name), list(table), n=1)
        hint = f"did you mean {close[0]!r}?" if close else None
        raise ConfigError(f"{source}: {where}: unknown {kind} {name!r}; known {kind}s: "
                          f"{', '.join(sorted(table))}", hint)
    cls = table[name]
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise ConfigError(f"{source}: {where} ({kind} {name}): parameters must be a mapping, "
                          f"got {type(params).__name__}")
    try:
        validated = cls.Params.model_validate(params)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {where} ({kind} {name}): {_first_error(exc)}",
                          _hint_for(exc, cls.Params) or _param_list(cls)) from exc
    return cls(validated)


def _param_list(cls: type[Stage]) -> str | None:
    keys = sorted(cls.Params.model_fields)
    return f"parameters of {cls.name}: {', '.join(keys)}" if keys else f"{cls.name} takes no " \
        "parameters"


def _scorer_step(item: Any, where: str, source: str) -> Step:
    if isinstance(item, str):
        return Step(_build("scorer", item, {}, where, source), where)
    if isinstance(item, dict) and len(item) == 1:
        (name, params), = item.items()
        return Step(_build("scorer", name, params, where, source), where)
    raise ConfigError(f"{source}: {where}: a scorer is a name or a one-key mapping "
                      "{name: {params}}", "e.g. `- image_info` or `- language: {}`")


def _select_steps(item: Any, where: str, source: str) -> list[Step]:
    if not isinstance(item, dict):
        raise ConfigError(f"{source}: {where}: a select step is a mapping with one of the keys "
                          "rule, preset, selector", "e.g. `- preset: datacomp_basic`")
    kinds = [k for k in ("rule", "preset", "selector") if k in item]
    if len(kinds) != 1:
        raise ConfigError(f"{source}: {where}: give exactly one of rule, preset, selector "
                          f"(got {', '.join(kinds) or 'none'})")
    key = kinds[0]
    params = {k: v for k, v in item.items() if k != key}
    if key == "preset":
        return _preset(item[key], params, where, source)
    kind: StageKind = "rule" if key == "rule" else "selector"
    stage = _build(kind, item[key], params, where, source)
    if kind == "rule" and not params.get("reason"):
        raise ConfigError(f"{source}: {where} (rule {item[key]}): no `reason:`; every rule names "
                          "the reason its drops get in the manifest and the funnel",
                          f"e.g. `reason: {stage.label}`")
    return [Step(stage, where)]


def known_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def _preset(name: Any, given: dict[str, Any], where: str, source: str) -> list[Step]:
    """Expand a preset file: a list of select steps, or ``{params: {...}, steps: [...]}`` where
    ``${param}`` in a value is replaced by the given (or default) parameter."""
    known = known_presets()
    if name not in known:  # a name, never a path: "../x" would load any YAML file
        close = difflib.get_close_matches(str(name), known, n=1)
        raise ConfigError(f"{source}: {where}: unknown preset {name!r}; known presets: "
                          f"{', '.join(known)}", f"did you mean {close[0]!r}?" if close else None)
    path = PRESET_DIR / f"{name}.yaml"
    spec = load_yaml(path)
    defaults = spec.get("params", {}) if isinstance(spec, dict) else {}
    items = spec["steps"] if isinstance(spec, dict) else spec
    unknown = [k for k in given if k not in defaults]  # keys of any type: no sorting
    if unknown:
        close = difflib.get_close_matches(str(unknown[0]), [str(k) for k in defaults], n=1)
        listed = f"its parameters: {', '.join(sorted(defaults)) or 'none'}"
        raise ConfigError(f"{source}: {where}: preset {name} has no parameter {unknown[0]!r}",
                          f"did you mean {close[0]!r}? ({listed})" if close else listed)
    values = {**defaults, **given}

    def fill(v: Any) -> Any:
        if isinstance(v, str):
            m = re.fullmatch(r"\$\{(\w+)\}", v)
            if m:
                return values[m.group(1)]
            return re.sub(r"\$\{(\w+)\}", lambda g: str(values[g.group(1)]), v)
        if isinstance(v, list):
            return [fill(x) for x in v]
        if isinstance(v, dict):
            return {k: fill(x) for k, x in v.items()}
        return v

    items = fill(items)
    steps: list[Step] = []
    for i, item in enumerate(items):
        steps.extend(_select_steps(item, f"{where} (preset {name}[{i}])", str(path)))
    return steps


def check_scorers(steps: list[Step], source: str) -> None:
    """Check that every scorer's inputs are produced by the reader or an earlier scorer, and
    that no two scorers produce the same column."""
    available = {**SAMPLE_COLUMNS, **BATCH_ONLY_COLUMNS}
    producers: dict[str, str] = {}
    made_by: dict[str, Scorer] = {}  # column -> the scorer producing it
    for step in steps:
        s: Scorer = step.stage  # type: ignore[assignment]
        try:
            s.outputs()  # may look up a model's config
        except CurateError as exc:
            raise ConfigError(f"{source}: {step.where} (scorer {s.name}): {exc.message}",
                              exc.hint) from exc
        for col in s.inputs():
            if col not in available:
                raise ConfigError(f"{source}: {step.where} (scorer {s.name}): needs column "
                                  f"{col!r}, which no earlier scorer produces",
                                  _who_makes(col))
        check = getattr(s, "check_producers", None)  # e.g. a head needing one CLIP model
        if check is not None:
            try:
                check({c: made_by[c] for c in s.inputs() if c in made_by})
            except CurateError as exc:
                raise ConfigError(f"{source}: {step.where} (scorer {s.name}): {exc.message}",
                                  exc.hint) from exc
        for col, dtype in s.outputs().items():
            if col in available:
                by = producers.get(col, "the sample reader")
                raise ConfigError(f"{source}: {step.where} (scorer {s.name}): column {col!r} "
                                  f"is already produced by {by}",
                                  "each scorer may appear once per pipeline")
            available[col] = dtype
            producers[col] = s.name
            made_by[col] = s


def check_selection(sel: Selection, columns: dict[str, pa.DataType], sidecars: set[str],
                    store: str | None = None) -> None:
    """Check every rule's SQL and every selector's columns against ``columns`` (what the
    scorers store) and ``sidecars`` (the embeddings they store). ``store`` names the store the
    columns come from, for the hint when one is missing."""
    p = sel
    cols = {**columns, **p.selector_columns(), **MANIFEST_COLUMNS}
    con = duckdb.connect()
    schema = pa.schema(cols)
    con.register("signals_probe", schema.empty_table())
    reasons: dict[str, str] = {}

    def hint(col: str) -> str | None:
        made = _who_makes(col)
        if made and store:
            return made.replace("add it to `score:`", "the store has no such scorer: score "
                                f"the pool with it (curate score PIPELINE.yaml --store {store})")
        return made

    for step in p.select:
        st = step.stage
        if isinstance(st, Rule):
            _check_numeric(st, cols, f"{p.source}: {step.where}")
            try:
                con.execute(f"SELECT ({st.keep_sql('signals_probe')})::BOOLEAN FROM signals_probe"
                            ).fetchall()
            except duckdb.Error as exc:
                msg = duckdb_message(exc)
                m = re.search(r'column "?([A-Za-z0-9_]+)"? not found', msg, re.IGNORECASE)
                raise ConfigError(f"{p.source}: {step.where} (rule {st.name}, reason "
                                  f"{st.reason}): {msg}", hint(m.group(1)) if m else None
                                  ) from exc
            own = [st.reason]
        else:
            sel_: Selector = st  # type: ignore[assignment]
            for col in sel_.columns():
                if col not in cols:
                    raise ConfigError(f"{p.source}: {step.where} (selector {sel_.name}): needs "
                                      f"column {col!r}", hint(col))
            for col in sel_.sidecars_needed():
                if col not in sidecars:
                    raise ConfigError(f"{p.source}: {step.where} (selector {sel_.name}): needs "
                                      f"the embeddings {col!r}, which no scorer stores",
                                      "add a clip scorer (embeddings: true) before it"
                                      if store is None else "score the pool with a clip "
                                      f"scorer into {store} (curate score ...)")
            own = list(sel_.reasons())
        for r in own:
            if r in reasons or r.startswith("error:") or r == "duplicate_uid":
                raise ConfigError(f"{p.source}: {step.where}: drop reason {r!r} is already used"
                                  f" ({reasons.get(r, 'reserved')})",
                                  "give the rule its own `reason`")
            reasons[r] = step.where
    con.close()
    if p.output.blur_faces is not None and p.output.blur_faces not in cols:
        raise ConfigError(f"{p.source}: output.blur_faces: no column {p.output.blur_faces!r}",
                          hint(p.output.blur_faces) or "declare the pool's face boxes as "
                          "metadata, e.g. metadata: {parquet: ..., columns: {face_bboxes: "
                          "list<list<float64>>}}")
    if p.output.split_by is not None and p.output.split_by not in cols:
        raise ConfigError(f"{p.source}: output.split_by: no column {p.output.split_by!r}",
                          hint(p.output.split_by) or "e.g. cluster_coarse from the "
                          "mode_clusters selector")


def duckdb_message(exc: BaseException) -> str:
    """DuckDB's error on one line: its first line, and the ``Candidate bindings`` line that
    names the columns closest to a misspelled one (the SQL excerpt after them is left out)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    candidates = next((line for line in lines[1:] if line.startswith("Candidate bindings")), None)
    return f"{lines[0]} {candidates}" if candidates else lines[0]


def _is_number(dtype: pa.DataType) -> bool:
    return bool(pa.types.is_integer(dtype) or pa.types.is_floating(dtype)
                or pa.types.is_decimal(dtype))


def _check_numeric(rule: Rule, cols: dict[str, pa.DataType], where: str) -> None:
    """A rule that compares a column with numbers (its ``numeric_columns`` parameters, e.g.
    ``threshold`` and ``top_fraction``) is refused in plain words on a column of text or of
    another type that is not a number, instead of DuckDB's type error (or, for
    ``top_fraction``, a silent ranking of texts)."""
    for param in getattr(rule, "numeric_columns", ()):
        col = getattr(rule.params, param, None)
        dtype = cols.get(col) if isinstance(col, str) else None
        if dtype is None or _is_number(dtype):
            continue
        text = pa.types.is_string(dtype) or pa.types.is_large_string(dtype)
        what = "text (a string column)" if text else f"of type {dtype}, not a number"
        use = (f"`rule: in_set` (column: {col}, values: [...]) or `rule: sql` (keep: "
               f"\"{col} = '...'\")" if text else f"`rule: sql` with a `keep:` expression on {col}")
        raise ConfigError(f"{where} (rule {rule.name}, reason {rule.reason}): column {col!r} is "
                          f"{what}, and {rule.name} compares it with numbers",
                          f"to keep rows by its value, use {use}")


def _check_rewrite(cfg: RewriteConfig, source: str) -> None:
    from curate.rewrite.prompts import load_examples

    try:
        examples = load_examples(cfg.examples_file)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{source}: rewrite.examples_file: {exc}",
                          "a YAML list of {id, style, source, target}") from exc
    if cfg.examples > len(examples):
        raise ConfigError(f"{source}: rewrite.examples: {cfg.examples} examples per prompt, but "
                          f"the pool has {len(examples)}")
    if cfg.backend != "openai" and "://" not in cfg.model and cfg.model.startswith(
            (".", "/")) and not Path(cfg.model).is_dir():
        raise ConfigError(f"{source}: rewrite.model: no directory {cfg.model!r}",
                          "give a local model directory or a hub name")


def _check_recaption(cfg: RecaptionConfig, source: str) -> None:
    if cfg.backend != "openai" and cfg.model.startswith((".", "/")) and not Path(
            cfg.model).is_dir():
        raise ConfigError(f"{source}: recaption.model: no directory {cfg.model!r}",
                          "give a local model directory or a hub name")


def _who_makes(column: str) -> str | None:
    for name, cls in sorted(registered("scorer").items()):
        try:
            outs = cls().output_names()  # type: ignore[attr-defined]
        except Exception:  # noqa: BLE001 - a scorer whose outputs need params
            continue
        if column in outs:
            return f"scorer {name!r} produces {column!r}: add it to `score:`"
    return None


