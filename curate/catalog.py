"""The run's DuckDB catalogue: views over its Parquet files.

``catalog.duckdb`` in the run directory holds only views whose paths are relative to the run
directory, so a run can be moved or copied whole. ``open_catalog`` opens it with DuckDB's
``file_search_path`` pointed at the run. Views:

========== ==========================================================================
manifest   one row per input sample: uid, shard, key, index, kept, reason, every score
kept       manifest rows that were kept
drops      uid, shard, key, reason, error_stage, error of every dropped sample
signals    the per-shard signals files (scores before selection)
shards     one row per input shard: status, samples, errors, attempts, seconds, node
funnel     step, reason, dropped, remaining: the selection funnel in pipeline order
stages     per scorer: samples, errors, skipped, seconds (summed over shards)
rewrites   (pipelines with ``rewrite:``) one row per kept sample and rewrite: text, status,
           reason, attempts, seed, example_ids, model, backend, prompt_format, sampling
========== ==========================================================================
"""

from __future__ import annotations

from pathlib import Path

import duckdb

from curate.errors import CurateError
from curate.io.atomic import atomic_path
from curate.sql import literal

CATALOG = "catalog.duckdb"

VIEWS: dict[str, str] = {
    "manifest": "SELECT * FROM read_parquet('manifest.parquet')",
    "kept": "SELECT * FROM manifest WHERE kept",
    "drops": "SELECT uid, shard, key, reason, error_stage, error FROM manifest WHERE NOT kept",
    "signals": "SELECT * FROM read_parquet('signals/*.parquet', union_by_name = true)",
    "shards": "SELECT * FROM read_parquet('shards.parquet')",
    "funnel": "SELECT * FROM read_parquet('funnel.parquet')",
    "stages": "SELECT * FROM read_parquet('stages.parquet')",
}

# Views over files only some runs have: name -> (file, SQL).
OPTIONAL_VIEWS: dict[str, tuple[str, str]] = {
    "rewrites": ("rewrites.parquet", "SELECT * FROM read_parquet('rewrites.parquet')"),
}


def write_catalog(run_dir: Path) -> Path:
    dest = run_dir / CATALOG
    with atomic_path(dest) as tmp:
        tmp.unlink()  # DuckDB creates the file itself
        con = duckdb.connect(str(tmp))
        con.execute(f"SET file_search_path = {literal(str(run_dir.resolve()))}")
        for name, sql in VIEWS.items():
            con.execute(f"CREATE VIEW {name} AS {sql}")
        for name, (file, sql) in OPTIONAL_VIEWS.items():
            if (run_dir / file).is_file():
                con.execute(f"CREATE VIEW {name} AS {sql}")
        con.close()
    return dest


def open_catalog(run_dir: str | Path) -> duckdb.DuckDBPyConnection:
    """A read-only DuckDB connection on the run's views."""
    run = Path(run_dir)
    path = run / CATALOG
    if not path.is_file():
        hint = "run `curate run PIPELINE.yaml --out DIR` first" if not run.exists() else (
            "the run has not finished its selection phase; rerun it to resume")
        raise CurateError(f"{run_dir} is not a finished curate run (no {CATALOG})", hint)
    con = duckdb.connect(str(path), read_only=True)
    con.execute(f"SET file_search_path = {literal(str(run.resolve()))}")
    return con
