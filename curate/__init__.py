"""curate: score once, select later: turn raw image-text pools into CLIP training sets.

The Python API, for notebooks and scripts (the CLI calls the same functions):

* ``curate.runner.score(pipeline, store)``: score a pipeline's input into a store, computing
  only what the store lacks;
* ``curate.runner.select(store, selection, out)``: apply a selection to a store's scores, into
  its own directory, computing no score;
* ``curate.runner.run(pipeline, out)``: both, into ``OUT/store`` and ``OUT/selections/<name>``;
* ``curate.open_run(path)``: a selection's DuckDB views as relations and polars frames.

``pipeline`` is a ``curate.config.Pipeline`` (``curate.config.load_pipeline(path)``) or a path to
a pipeline YAML; ``selection`` a ``curate.config.Selection`` (``load_selection``) or a Pipeline.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

    import duckdb

    from curate.audit.catalog import Run

__version__ = "0.1.0"


def open_run(run_dir: str | Path) -> Run:
    """A selection's catalogue (``curate.audit.catalog.Run``): ``.sql``, ``.view``, ``.pl``;
    ``run_dir`` is a selection directory, or a run's ``--out`` holding one selection."""
    from curate.audit.catalog import open_run as _open_run

    return _open_run(run_dir)


def open_runs(runs: dict[str, str | Path]) -> duckdb.DuckDBPyConnection:
    """Several selections' views in one DuckDB connection, one schema each (``a.manifest``)."""
    from curate.audit.catalog import open_runs as _open_runs

    return _open_runs(runs)
