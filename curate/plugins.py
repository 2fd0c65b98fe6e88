"""Stages from outside the package: a pipeline's ``imports:`` and the ``curate.stages`` entry
points.

A plugin is a Python module that defines stages exactly as the built-ins do (a subclass of
``Scorer``, ``SampleScorer``, ``Rule`` or ``Selector`` with a ``name``, decorated with
``@register``). It is found in one of two ways:

* **``imports:``** in a pipeline or selection file (``load_imports``), ``curate stages --import``
  and ``curate.load_plugins`` in Python (``load``): each entry is a module name importable here
  (``my_lab.stages``), or the path of a ``.py`` file or of a package directory (relative to the
  pipeline file). A file is imported once per process, under a private module name.
* **The entry-point group ``curate.stages``** of installed packages (``load_entry_points``):
  each entry point names a module (in ``pyproject.toml``: ``[project.entry-points."curate.stages"]``
  ``my_stages = "my_lab.curate_stages"``). They are imported the first time stages are looked up
  (``curate.stages.base.registered``), and again for new ones when ``sys.path`` changed.

**On Ray workers.** ``ship_to_ray`` (called whenever a run uses Ray) registers every plugin
module, and the module of every registered stage that is not curate's own, with Ray's
cloudpickle ``register_pickle_by_value`` (a package's submodules included). A plugin scorer's
class, and the functions and globals of its module (or package) that it uses, then travel with
the scorer to each worker, which needs neither the file nor the package: a plugin runs on a
cluster, or on a Ray started before it was loaded, without installing anything there. Other
modules it imports (numpy, torch, a helper module outside its package) must be importable on
the workers, as curate's own are. State a scorer builds in ``setup()`` is made on each worker,
never sent.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import importlib.util
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from curate.errors import ConfigError

ENTRY_POINT_GROUP = "curate.stages"
BUILTIN_PREFIX = "curate."
_MODULE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


@dataclass(frozen=True)
class Plugin:
    """A loaded plugin module and where it came from (``origin``: ``file PATH``, ``module
    NAME`` or ``entry point NAME = VALUE (DIST VERSION)``)."""

    module: str
    origin: str


class _Loaded:
    """What this process has imported as plugins (one instance: the import system is
    process-wide too)."""

    def __init__(self) -> None:
        self.by_module: dict[str, Plugin] = {}  # module name -> plugin
        self.by_path: dict[Path, str] = {}  # resolved file -> module name
        self.entry_points: set[tuple[str, str]] = set()  # (name, value) already imported
        self.scanned: tuple[str, ...] | None = None  # sys.path when entry points were read


_LOADED = _Loaded()


def is_path(spec: str) -> bool:
    """Whether an ``imports:`` entry names a file or directory (else a module name)."""
    return spec.endswith(".py") or "/" in spec or "\\" in spec or spec.startswith(".")


def load(spec: str, base: str | Path | None = None) -> Plugin:
    """Import one plugin: a module name, or a ``.py`` file or package directory (relative to
    ``base``, default the working directory). Importing registers its stages. Raises
    ``ConfigError`` when it cannot be found or its import fails."""
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"plugin {spec!r}: give a module name or the path of a .py file")
    if is_path(spec):
        return _load_path(spec, Path(base) if base is not None else Path.cwd())
    if not _MODULE_NAME.fullmatch(spec):
        raise ConfigError(f"plugin {spec!r} is neither a module name nor a path",
                          "e.g. my_lab.stages, or plugins/my_scorer.py")
    if spec in _LOADED.by_module:
        return _LOADED.by_module[spec]
    try:
        importlib.import_module(spec)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (spec == exc.name or spec.startswith(exc.name + ".")):
            raise ConfigError(f"plugin module {spec!r} is not importable here (no module "
                              f"{exc.name!r})", "install its package, or give the path of "
                              "its .py file instead") from exc
        raise _import_failed(f"plugin module {spec!r}", exc) from exc
    except Exception as exc:  # any error of the user's module, reported as one
        raise _import_failed(f"plugin module {spec!r}", exc) from exc
    plugin = Plugin(spec, f"module {spec}")
    _LOADED.by_module[spec] = plugin
    return plugin


def _load_path(spec: str, base: Path) -> Plugin:
    path = (base / Path(spec).expanduser()).resolve()
    if path in _LOADED.by_path:
        return _LOADED.by_module[_LOADED.by_path[path]]
    if path.is_dir():
        init = path / "__init__.py"
        if not init.is_file():
            raise ConfigError(f"plugin {spec!r}: {path} is a directory without __init__.py",
                              "give a .py file, or a package directory")
        file, search = init, [str(path)]
    elif path.is_file():
        file, search = path, None
    else:
        raise ConfigError(f"plugin {spec!r}: no file {path}",
                          "a relative path is read from the pipeline file's directory")
    stem = re.sub(r"\W", "_", path.stem if path.is_file() else path.name)
    name = f"curate_plugin_{stem}_{hashlib.sha256(str(path).encode()).hexdigest()[:8]}"
    module_spec = importlib.util.spec_from_file_location(name, file,
                                                         submodule_search_locations=search)
    if module_spec is None or module_spec.loader is None:
        raise ConfigError(f"plugin {spec!r}: {path} cannot be imported as Python")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module
    try:
        module_spec.loader.exec_module(module)
    except Exception as exc:  # any error of the user's file, reported as one
        del sys.modules[name]
        raise _import_failed(f"plugin file {path}", exc) from exc
    plugin = Plugin(name, f"file {path}")
    _LOADED.by_module[name] = plugin
    _LOADED.by_path[path] = name
    return plugin


def _import_failed(what: str, exc: BaseException) -> ConfigError:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return ConfigError(f"{what} failed to import: {type(exc).__name__}"
                       f"{': ' + text if text else ''}",
                       "curate --debug ... shows the traceback")


def load_imports(specs: list[str], source: str) -> list[str]:
    """Import a pipeline's ``imports:`` (``source`` is the pipeline file, or ``<...>``; paths
    are relative to its directory). Returns the entries as they are saved with a run: paths
    made absolute, module names as given."""
    base = Path(source).parent if source and not source.startswith("<") else Path.cwd()
    resolved = []
    for i, spec in enumerate(specs):
        try:
            load(spec, base)
        except ConfigError as exc:
            raise ConfigError(f"{source}: imports[{i}]: {exc.message}", exc.hint) from exc
        resolved.append(str((base / Path(spec).expanduser()).resolve()) if is_path(spec)
                        else spec)
    return resolved


def load_entry_points() -> list[Plugin]:
    """Import the modules of the ``curate.stages`` entry points not imported yet (read again
    only when ``sys.path`` changed). Raises ``ConfigError`` naming a package whose plugin
    fails to import."""
    key = tuple(sys.path)
    if _LOADED.scanned == key:
        return []
    _LOADED.scanned = key
    found = []
    for ep in sorted(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP),
                     key=lambda e: (e.name, e.value)):
        if (ep.name, ep.value) in _LOADED.entry_points:
            continue
        _LOADED.entry_points.add((ep.name, ep.value))
        dist = ep.dist
        where = f"{dist.name} {dist.version}" if dist is not None else "unknown package"
        try:
            module = ep.load()
        except Exception as exc:  # a broken plugin package, named as such
            _LOADED.entry_points.discard((ep.name, ep.value))
            raise ConfigError(f"the {ENTRY_POINT_GROUP} entry point {ep.name} = {ep.value} "
                              f"(package {where}) failed to import: {type(exc).__name__}: "
                              f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}",
                              f"fix or uninstall that package (pip uninstall "
                              f"{dist.name if dist is not None else '...'})") from exc
        name = module.__name__ if isinstance(module, ModuleType) else getattr(
            module, "__module__", ep.module)
        plugin = Plugin(name, f"entry point {ep.name} = {ep.value} ({where})")
        _LOADED.by_module.setdefault(name, plugin)
        found.append(plugin)
    return found


def origin(module: str) -> str | None:
    """Where the stages of ``module`` come from: None for curate's own, else the plugin's
    origin (``file PATH``, ``module NAME``, ``entry point ...``), or ``module NAME`` for a
    module that registered stages without being loaded as a plugin (a script: ``__main__``)."""
    if module.startswith(BUILTIN_PREFIX):
        return None
    plugin = _LOADED.by_module.get(module)
    if plugin is None:  # a submodule of a plugin package
        plugin = next((p for m, p in _LOADED.by_module.items() if module.startswith(m + ".")),
                      None)
    return plugin.origin if plugin is not None else f"module {module}"


def loaded() -> list[Plugin]:
    """The plugins imported in this process, in the order they were loaded."""
    return list(_LOADED.by_module.values())


def ship_to_ray() -> None:
    """Make Ray send plugin stages by value (see the module docs): every loaded plugin module,
    and the module of every registered stage that is neither curate's own nor ``__main__``
    (which cloudpickle sends by value anyway)."""
    from curate.stages.base import registered

    modules = {cls.__module__ for kind in ("scorer", "rule", "selector")
               for cls in registered(kind).values()}  # type: ignore[arg-type]
    modules |= set(_LOADED.by_module)
    names = sorted(m for m in modules if not m.startswith(BUILTIN_PREFIX) and m != "__main__")
    if not names:
        return
    import ray.cloudpickle as cloudpickle

    for name in names:
        module = sys.modules.get(name)
        if module is not None:
            cloudpickle.register_pickle_by_value(module)
