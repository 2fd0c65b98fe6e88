"""The pipeline a selection saves as ``SEL/pipeline.yaml``, and loading it back.

A pipeline names files relative to the directory it is run from (``input.shards:
demo/pool/*.tar``, ``clip: {model: demo/filter}``). The saved copy has them absolute, so that
the selection can be audited, diffed and run again from any directory (a notebook runs in
``notebooks/``). ``absolute_paths`` rewrites, in the parsed YAML:

* ``input.shards`` (a pattern or a list), ``input.urls``, ``store``, ``output.dir``,
  ``metadata.parquet``, ``rewrite.cache``, ``rewrite.examples_file`` and ``recaption.cache``:
  local relative paths always (they may not exist yet);
* ``rewrite.model``, ``recaption.model``, ``imports`` entries and every stage parameter that
  its ``Params`` lists in ``path_fields`` (e.g. ``clip``'s ``model``, ``centroid_target``'s
  ``targets``), and preset parameters that the preset passes to such a parameter: when the
  path exists, since these may also be names (``ViT-B-32``, a hub model, a module).

URLs (``s3://...``, ``hf-hub:...``), absolute paths and ``~/...`` are left as they are, and so is
everything else (columns, SQL, reasons). ``saved_selection`` loads the selection steps back and
raises ``CurateError`` naming the file and the reason when they do not load.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from curate.errors import CurateError

SAVED = "pipeline.yaml"
# A URL or an open_clip-style prefix ("hf-hub:", "local-dir:" is handled below): not a path.
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
_ALWAYS = (("input", "shards"), ("input", "urls"), (None, "store"), ("output", "dir"),
           ("metadata", "parquet"), ("rewrite", "cache"), ("rewrite", "examples_file"),
           ("recaption", "cache"))


def absolute_paths(raw: dict[str, Any], base: str | Path | None = None) -> dict[str, Any]:
    """A copy of the parsed pipeline (or selection) ``raw`` with its relative paths made
    absolute against ``base`` (default: the working directory); see the module docs."""
    base = Path(base if base is not None else os.getcwd()).absolute()
    out = _copy(raw)
    for section, key in _ALWAYS:
        holder = out if section is None else out.get(section)
        if isinstance(holder, dict) and key in holder:
            holder[key] = _each(holder[key], lambda v: _absolute(v, base, must_exist=False))
    for step in ("rewrite", "recaption"):  # a model directory, unless a served model's name
        gen = out.get(step)
        if isinstance(gen, dict) and isinstance(gen.get("model"), str) and \
                gen.get("backend") != "openai":
            gen["model"] = _absolute(gen["model"], base, must_exist=True)
    if isinstance(out.get("imports"), list):
        out["imports"] = [_absolute(v, base, must_exist=True) if isinstance(v, str) else v
                          for v in out["imports"]]
    if isinstance(out.get("score"), list):
        out["score"] = [_scorer(item, base) for item in out["score"]]
    if isinstance(out.get("select"), list):
        out["select"] = [_step(item, base) for item in out["select"]]
    return out


def _copy(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _copy(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_copy(x) for x in v]
    return v


def _each(v: Any, f: Any) -> Any:
    if isinstance(v, str):
        return f(v)
    if isinstance(v, list):
        return [f(x) if isinstance(x, str) else x for x in v]
    return v


def _absolute(value: str, base: Path, *, must_exist: bool) -> str:
    """``value`` made absolute against ``base`` when it is a relative local path (and, with
    ``must_exist``, names something that exists there)."""
    prefix = ""
    if value.startswith("local-dir:"):
        prefix, value = "local-dir:", value.removeprefix("local-dir:")
    if (not value or value.startswith("~") or os.path.isabs(value) or "::" in value
            or _SCHEME.match(value)):
        return prefix + value
    path = os.path.normpath(os.path.join(base, value))
    if must_exist and not os.path.exists(path):
        return prefix + value
    return prefix + path


def _path_fields(kind: str, name: Any) -> tuple[str, ...]:
    from curate.stages.base import registered

    cls = registered(kind).get(name) if isinstance(name, str) else None  # type: ignore[arg-type]
    return tuple(getattr(cls.Params, "path_fields", ())) if cls is not None else ()


def _params(params: dict[str, Any], fields: tuple[str, ...], base: Path) -> dict[str, Any]:
    return {k: _each(v, lambda s: _absolute(s, base, must_exist=True)) if k in fields else v
            for k, v in params.items()}


def _scorer(item: Any, base: Path) -> Any:
    if not (isinstance(item, dict) and len(item) == 1):
        return item
    (name, params), = item.items()
    if not isinstance(params, dict):
        return item
    return {name: _params(params, _path_fields("scorer", name), base)}


def _step(item: Any, base: Path) -> Any:
    if not isinstance(item, dict):
        return item
    if "rule" in item:
        fields = _path_fields("rule", item["rule"])
    elif "selector" in item:
        fields = _path_fields("selector", item["selector"])
    elif "preset" in item:
        fields = _preset_path_params(item["preset"])
    else:
        return item
    return _params(item, fields, base)


def _preset_path_params(name: Any) -> tuple[str, ...]:
    """The parameters of preset ``name`` that it passes whole (``key: ${param}``) to a stage
    parameter listed in that stage's ``path_fields``."""
    from curate.config import PRESET_DIR, known_presets, load_yaml

    if name not in known_presets():
        return ()
    try:
        spec = load_yaml(PRESET_DIR / f"{name}.yaml")
    except CurateError:
        return ()
    steps = spec.get("steps", []) if isinstance(spec, dict) else spec
    found: list[str] = []
    for step in steps if isinstance(steps, list) else []:
        if not isinstance(step, dict):
            continue
        kind = next((k for k in ("rule", "selector") if k in step), None)
        if kind is None:
            continue
        fields = _path_fields(kind, step[kind])
        for key, value in step.items():
            m = re.fullmatch(r"\$\{(\w+)\}", value) if isinstance(value, str) else None
            if m and key in fields:
                found.append(m.group(1))
    return tuple(found)


def saved_selection(path: str | Path) -> Any:
    """The selection steps (``curate.config.Selection``) of a saved ``SEL/pipeline.yaml``, or
    ``CurateError`` naming the file and why they do not load. Only ``name`` and ``select`` are
    read (with ``imports`` when pipelines have it): the scorers' models need not exist here."""
    from curate.config import _SelectionFile, load_yaml, selection_from_dict

    path = Path(path)
    if not path.is_file():
        raise CurateError(f"{path}: no such file, so the selection's rules are unknown",
                          "is this a selection directory? (curate select/run writes it)")
    try:
        raw = load_yaml(path)
        if not isinstance(raw, dict):
            raise CurateError(f"{path}: not a YAML mapping")
        keep = ("name", "select", "imports") if "imports" in _SelectionFile.model_fields \
            else ("name", "select")
        return selection_from_dict({k: v for k, v in raw.items() if k in keep},
                                   source=str(path))
    except CurateError as exc:
        message = exc.message if exc.message.startswith(str(path)) else \
            f"{path}: {exc.message}"
        raise CurateError(f"cannot load the saved selection: {message}", exc.hint) from exc
