"""curate: score once, select later: turn raw image-text pools into CLIP training sets."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

    import duckdb

    from curate.audit.catalog import Run

__version__ = "0.1.0"


def open_run(run_dir: str | Path) -> Run:
    """The run's catalogue (``curate.audit.catalog.Run``): ``.sql``, ``.view``, ``.pl``."""
    from curate.audit.catalog import open_run as _open_run

    return _open_run(run_dir)


def open_runs(runs: dict[str, str | Path]) -> duckdb.DuckDBPyConnection:
    """Several runs' views in one DuckDB connection, one schema per run (``a.manifest``)."""
    from curate.audit.catalog import open_runs as _open_runs

    return _open_runs(runs)
