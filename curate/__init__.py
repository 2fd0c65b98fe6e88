"""curate: score once, select later: turn raw image-text pools into CLIP training sets.

The Python API, for notebooks and scripts (``curate.api``; the CLI calls the same functions):

* ``curate.Pipeline(input=..., score=[...], select=[...])``: a pipeline built from stage objects
  (``curate.scorer``, ``curate.rule``, ``curate.selector``, ``curate.preset``, or instances of
  stage classes), validated as its YAML would be; ``curate.Pipeline.load(path)`` reads a YAML
  file. Its ``plan(store)`` is ``curate validate``; ``score(store)``, ``select(store, out)`` and
  ``run(out)`` are ``curate score``, ``select`` and ``run``, and return a ``curate.Result``:
  counts, ``.sql(query)`` (a DuckDB relation), ``.pl(view)`` and ``.manifest()`` (polars).
* ``curate.load_plugins(path_or_module)``: stages from outside the package (``curate.plugins``).
* ``curate.open_run(path)``: a finished selection's views as relations and polars frames.
* Lower level: ``curate.runner.score(pipeline, store)``, ``select(store, selection, out)``,
  ``run(pipeline, out)`` with ``curate.config.Pipeline`` objects (``load_pipeline(path)``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pathlib import Path

    import duckdb

    from curate.api import Pipeline, Preset, Result, load_plugins, preset, rule, scorer, selector
    from curate.audit.catalog import Run

__version__ = "0.1.0"

__all__ = ["Pipeline", "Preset", "Result", "load_plugins", "open_run", "open_runs", "preset",
           "rule", "scorer", "selector"]

_API = {"Pipeline", "Preset", "Result", "load_plugins", "preset", "rule", "scorer", "selector"}


def __getattr__(name: str) -> Any:
    """The names of ``curate.api``, imported on first use (``import curate`` stays cheap for
    the CLI)."""
    if name in _API:
        import curate.api

        return getattr(curate.api, name)
    raise AttributeError(f"module 'curate' has no attribute {name!r}")


def open_run(run_dir: str | Path) -> Run:
    """A selection's catalogue (``curate.audit.catalog.Run``): ``.sql``, ``.view``, ``.pl``;
    ``run_dir`` is a selection directory, or a run's ``--out`` holding one selection."""
    from curate.audit.catalog import open_run as _open_run

    return _open_run(run_dir)


def open_runs(runs: dict[str, str | Path]) -> duckdb.DuckDBPyConnection:
    """Several selections' views in one DuckDB connection, one schema each (``a.manifest``)."""
    from curate.audit.catalog import open_runs as _open_runs

    return _open_runs(runs)
