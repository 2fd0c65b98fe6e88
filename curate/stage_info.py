"""What ``curate stages`` prints: every registered stage and preset in aligned columns, and one
stage or preset in full (``curate stages NAME``).

A stage's text is its module's docstring when that starts ``<Kind> ``name``:`` (the built-ins'
convention), else its class docstring, else its module's; reStructuredText markup (double
backticks, ``*emphasis*``, roles) is removed. The listing shows the first sentence of the first
paragraph, whole, wrapped under its column. A preset's text is its file's leading comment.

``describe`` adds the kind, where the stage comes from (built in, or the plugin's origin), its
parameters (name, type, default and the field's description, or else the comment beside or
above the field in its source), and for scorers the columns read and made (with Arrow types,
embeddings marked), for selectors the columns and embeddings read, the columns added and the
drop reasons, for rules the default reason; for presets their parameters and steps.
"""

from __future__ import annotations

import difflib
import inspect
import io
import re
import shutil
import sys
import textwrap
import tokenize
from typing import Any

import yaml

from curate.errors import CurateError
from curate.stages.base import Rule, Scorer, Selector, Stage, StageKind, registered

KINDS: tuple[StageKind, ...] = ("scorer", "rule", "selector")
_ROLE = re.compile(r":[a-z]+:`([^`]*)`")
_LITERAL = re.compile(r"``(.+?)``", re.DOTALL)
_INTERPRETED = re.compile(r"(?<![`\w])`([^`\n]+)`(?![`\w])")
_EMPH = re.compile(r"(?<![\w*])\*{1,2}(?=\S)(.+?)(?<=\S)\*{1,2}(?![\w*])")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z(\"'])")
_ABBREV = re.compile(r"\b(e\.g|i\.e|et al|cf|vs|Sec|Fig|Eq|No|approx)\.$")


def plain(text: str) -> str:
    """``text`` without reStructuredText markup: ``literal`` text, roles and single-backtick
    names become their text, ``*emphasis*`` and ``**strong**`` lose their stars (outside
    literals only: a ``*.tar`` glob keeps its star)."""
    parts = _LITERAL.split(text)  # odd items: the literals' contents
    for i in range(0, len(parts), 2):
        part = _ROLE.sub(r"\1", parts[i])
        part = _INTERPRETED.sub(r"\1", part)
        part = _EMPH.sub(r"\1", part)
        parts[i] = re.sub(r"::$", ":", part, flags=re.MULTILINE)  # a literal block's marker
    return "".join(parts)


def first_sentence(paragraph: str) -> str:
    """The first sentence of ``paragraph`` (its lines joined), whole: cut after the first
    ``.``, ``!`` or ``?`` that ends a word before a capital, and is not an abbreviation."""
    text = " ".join(paragraph.split())
    for m in _SENTENCE_END.finditer(text):
        head = text[: m.start()]
        if not _ABBREV.search(head) and head.count("(") <= head.count(")"):
            return head
    return text


def _doc(cls: type[Stage]) -> str:
    module_doc = inspect.cleandoc(sys.modules[cls.__module__].__doc__ or "")
    own = re.match(rf"{cls.kind.capitalize()} ``{re.escape(cls.name)}``: ", module_doc)
    if own:
        return module_doc[own.end():]
    class_doc = cls.__dict__.get("__doc__")
    if class_doc:
        return inspect.cleandoc(class_doc)
    return module_doc


def summary(cls: type[Stage]) -> str:
    """One line for the listing: the first sentence of the stage's text, without markup."""
    text = plain(_doc(cls)).strip()
    if not text:
        return "(no description)"
    para = text.split("\n\n", 1)[0]
    line = first_sentence(para)
    return line[:1].upper() + line[1:]


def preset_text(name: str) -> str:
    """A preset file's leading comment, without the ``#``."""
    from curate.config import PRESET_DIR

    lines = []
    for line in (PRESET_DIR / f"{name}.yaml").read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        lines.append(line[1:].removeprefix(" "))
    return "\n".join(lines)


def _origin(cls: type[Stage]) -> str | None:
    from curate.plugins import origin

    return origin(cls.__module__)


def _width() -> int:
    return max(60, min(120, shutil.get_terminal_size((100, 24)).columns))


def listing() -> str:
    """Every registered stage by kind, then the presets: name, then the first sentence of its
    text, wrapped under its column (one column per section); a plugin's stages say where they
    come from."""
    from curate.config import known_presets

    rows: list[tuple[str, list[tuple[str, str]]]] = []
    for kind in KINDS:
        entries = []
        for name, cls in sorted(registered(kind).items()):
            text = summary(cls)
            where = _origin(cls)
            if where is not None:
                text += f" [plugin: {where}]"
            entries.append((name, text))
        rows.append((f"{kind}s", entries))
    rows.append(("presets", [(n, plain(first_sentence(preset_text(n).split("\n\n")[0])) or
                              "(no description)") for n in known_presets()]))
    width = _width()
    out = []
    for title, entries in rows:
        out.append(f"{title}:")
        name_w = max((len(n) for n, _ in entries), default=0) + 2  # one column per section
        for name, text in entries:
            wrapped = textwrap.wrap(text, width=max(30, width - 2 - name_w)) or [""]
            out.append(f"  {name:<{name_w}}{wrapped[0]}")
            out.extend(f"  {'':<{name_w}}{w}" for w in wrapped[1:])
    out.append("")
    out.append("curate stages NAME: one stage or preset in full (parameters, columns)")
    return "\n".join(out)


def _type(annotation: Any) -> str:
    if isinstance(annotation, type) and not getattr(annotation, "__args__", None):
        return annotation.__name__
    text = repr(annotation)
    text = re.sub(r"\btyping\.", "", text)
    text = re.sub(r"<class '([\w.]+)'>", lambda m: m.group(1).rsplit(".", 1)[-1], text)
    return re.sub(r"\b(?:[a-z_]+\.)+([A-Z]\w*)", r"\1", text)


def _comments(params_cls: type[Any]) -> dict[str, str]:
    """Field name -> the comment beside its line, or the comment lines just above it, in the
    class's source (empty when the source cannot be read)."""
    try:
        source = textwrap.dedent(inspect.getsource(params_cls))
    except (OSError, TypeError):
        return {}
    lines = source.splitlines()
    comment_at: dict[int, str] = {}
    try:
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type == tokenize.COMMENT:
                comment_at[tok.start[0]] = tok.string.lstrip("#").strip()
    except (tokenize.TokenError, IndentationError):
        return {}
    out: dict[str, str] = {}
    for i, line in enumerate(lines, start=1):
        m = re.match(r"    (\w+)\s*:", line)
        if not m or m.group(1) in out:
            continue
        if i in comment_at and not line.lstrip().startswith("#"):
            out[m.group(1)] = comment_at[i]
            continue
        above, j = [], i - 1
        while j >= 1 and lines[j - 1].lstrip().startswith("#") and j in comment_at:
            above.insert(0, comment_at[j])
            j -= 1
        if above:
            out[m.group(1)] = " ".join(above)
    return out


def _params_table(cls: type[Stage]) -> list[str]:
    fields = cls.Params.model_fields
    if not fields:
        return ["parameters: none"]
    comments = _comments(cls.Params)
    rows = []
    for name, f in fields.items():
        if f.is_required():
            default = "(required)"
        elif f.default_factory is not None:
            default = repr(f.default_factory())  # type: ignore[call-arg]
        else:
            default = repr(f.default.model_dump(mode="json") if hasattr(
                f.default, "model_dump") else f.default)
        if len(default) > 40:
            default = default[:39] + "…"
        rows.append((name, _type(f.annotation), default,
                     plain(f.description or comments.get(name, ""))))
    w = [max(len(r[i]) for r in rows) for i in range(3)]
    out = ["parameters:"]
    text_w = max(30, _width() - 8 - sum(w))
    for name, typ, default, text in rows:
        wrapped = textwrap.wrap(text, width=text_w) or [""]
        out.append(f"  {name:<{w[0]}}  {typ:<{w[1]}}  {default:<{w[2]}}  {wrapped[0]}".rstrip())
        out.extend(f"  {'':<{w[0] + w[1] + w[2] + 6}}{x}" for x in wrapped[1:])
    return out


def _columns(title: str, cols: dict[str, Any], embeddings: set[str] | None = None) -> list[str]:
    if not cols:
        return [f"{title}: none"]
    w = max(len(c) for c in cols)
    out = [f"{title}:"]
    for c, t in cols.items():
        note = "  (an embedding, stored beside the Parquet)" if embeddings and c in embeddings \
            else ""
        out.append(f"  {c:<{w}}  {t}{note}")
    return out


def _stage_parts(cls: type[Stage]) -> list[str]:
    fields = cls.Params.model_fields
    try:
        stage = cls()
    except Exception as exc:  # noqa: BLE001 - required parameters, or a model to look up
        if issubclass(cls, Rule):
            return ["drop reason: the step's `reason:`" if "reason" in fields else
                    f"drop reason: {cls.name}"]
        required = [n for n, f in fields.items() if f.is_required()]
        why = f"required: {', '.join(required)}" if required else \
            f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        return [f"columns: they depend on its parameters ({why})"]
    out: list[str] = []
    try:
        if isinstance(stage, Scorer):
            out.append("reads: " + (", ".join(stage.inputs()) or "nothing"))
            outputs = dict(stage.outputs())
            out += _columns("adds (with the default parameters)", outputs, set(stage.sidecars()))
            res = stage.resources
            out.append(f"resources per worker: {res.cpus:g} CPU, {res.gpus:g} GPU "
                       "(GPUs only when the cluster has them); code version "
                       f"{getattr(stage, 'version', 1)}")
        elif isinstance(stage, Selector):
            out.append("reads: " + (", ".join(stage.columns()) or "any column"))
            if stage.sidecars_needed():
                out.append("reads the embeddings: " + ", ".join(stage.sidecars_needed()))
            out += _columns("adds to the manifest", dict(stage.extra_columns()))
            out.append("drop reasons: " + (", ".join(stage.reasons()) or "none"))
        elif isinstance(stage, Rule):
            out.append(f"drop reason: {stage.reason} unless `reason:` is given")
    except Exception as exc:  # noqa: BLE001 - e.g. an output size that needs a model's config
        out.append(f"columns: they depend on its parameters ({type(exc).__name__}: "
                   f"{str(exc).splitlines()[0] if str(exc) else ''})")
    return out


def _reflow(text: str) -> str:
    """Paragraphs of running text re-wrapped to the terminal; lists, indented blocks and
    tables are kept as they are."""
    out = []
    for para in text.split("\n\n"):
        lines = para.splitlines()
        if lines and not any(re.match(r"\s|[*-] |\d+\. |=+ ", line) for line in lines):
            para = textwrap.fill(" ".join(lines), width=_width())
        out.append(para)
    text = "\n\n".join(out)
    return text[:1].upper() + text[1:]


def describe(name: str) -> str:
    """Everything ``curate stages NAME`` shows about the stages and preset named ``name``;
    ``CurateError`` with the closest names when there is none."""
    from curate.config import PRESET_DIR, known_presets, load_yaml

    parts: list[str] = []
    for kind in KINDS:
        cls = registered(kind).get(name)
        if cls is None:
            continue
        where = _origin(cls)
        src = inspect.getsourcefile(cls) or cls.__module__
        parts.append(f"{kind} {name} ({'plugin: ' + where if where else 'built in'}; "
                     f"{cls.__module__}.{cls.__qualname__}, {src})")
        parts.append("")
        parts.append(_reflow(plain(_doc(cls)).strip()) or "(no description)")
        parts.append("")
        parts += _params_table(cls)
        parts += _stage_parts(cls)
        parts.append("")
    if name in known_presets():
        spec = load_yaml(PRESET_DIR / f"{name}.yaml")
        params = spec.get("params", {}) if isinstance(spec, dict) else {}
        steps = spec["steps"] if isinstance(spec, dict) else spec
        parts.append(f"preset {name} ({PRESET_DIR / (name + '.yaml')})")
        parts.append("")
        parts.append(_reflow(plain(preset_text(name))) or "(no description)")
        parts.append("")
        parts.append("parameters (`- preset: NAME` then `KEY: VALUE`; ${KEY} in the steps):"
                     if params else "parameters: none")
        parts += [f"  {k}: {v!r}" for k, v in params.items()]
        parts.append("steps:")
        parts += ["  " + line for line in yaml.safe_dump(steps, sort_keys=False).splitlines()]
        parts.append("")
    if not parts:
        known = [*known_presets(), *(n for k in KINDS for n in registered(k))]
        close = difflib.get_close_matches(name, known, n=3)
        raise CurateError(f"no stage or preset is named {name!r}",
                          (f"did you mean {' or '.join(repr(c) for c in close)}? " if close
                           else "") + "`curate stages` lists them all")
    return "\n".join(parts).rstrip()
