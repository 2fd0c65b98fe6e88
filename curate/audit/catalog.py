"""A selection's DuckDB catalogue: views over its Parquet files.

``catalog.duckdb`` in the selection directory holds only views whose paths are relative to that
directory, so a selection can be moved or copied whole. ``open_catalog`` opens it with DuckDB's
``file_search_path`` pointed at the selection. Views:

========== ==========================================================================
manifest   one row per input sample: uid, shard, key, index, kept, reason, every score
kept       manifest rows that were kept
drops      uid, shard, key, caption, stage (the rule, selector or failing stage), reason,
           error_stage, error of every dropped sample
signals    the manifest's scores without the selection's decisions (kept, reason)
shards     one row per input shard: status, samples, errors, digest, last scoring's attempts,
           seconds, node
funnel     step, stage, reason, dropped, remaining: the selection funnel in order
stages     per scorer: samples, errors, skipped, seconds (summed over the pool's shards)
rewrites   (selections with ``rewrite:``) one row per kept sample and rewrite: text, status,
           reason, attempts, seed, example_ids, model, backend, prompt_format, sampling
recaptions (selections with ``recaption:``) one row per kept sample and synthetic caption: syn,
           text, status, reason, attempts, seed, image_sim, text_sim, image_sha256, model,
           backend, prompt, prompt_format, sampling
entry_counts (selections with ``metaclip_balance``) per metadata entry: entry_id, entry,
           count_before, count_after, p
========== ==========================================================================

Every command that reads a selection (``curate query``, ``stats``, ``report``, ``diff``,
``export``) takes a selection directory, or the ``--out`` directory of ``curate run`` when it
holds exactly one selection (``resolve_selection``).

``open_run(path)`` (also ``curate.open_run``) gives a ``Run``: ``run.sql(query)`` returns a
DuckDB relation over these views, ``run.pl(query_or_view)`` a polars DataFrame.
``open_runs({"a": SEL_A, "b": SEL_B})`` puts several selections' views in one connection, one
schema per selection (``a.manifest``, ``b.kept``...), to compare them in SQL.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from curate.errors import CurateError
from curate.io.atomic import atomic_path
from curate.io.dataset import (
    LEGACY_MANIFEST,
    MANIFEST,
    has_manifest,
    manifest_path,
    part_files,
    scan_sql,
)
from curate.sql import literal, path_literal, writable_db_path

CATALOG = "catalog.duckdb"

VIEWS: dict[str, str] = {
    "manifest": "SELECT * FROM read_parquet('manifest/part-*.parquet')",
    "funnel": "SELECT * FROM read_parquet('funnel.parquet')",
    "kept": "SELECT * FROM manifest WHERE kept",
    "drops": "SELECT m.uid, m.shard, m.key, m.caption, f.stage, m.reason, m.error_stage, "
             "m.error FROM manifest m LEFT JOIN funnel f USING (reason) WHERE NOT m.kept",
    "signals": "SELECT * EXCLUDE (kept, reason) FROM manifest",
    "shards": "SELECT * FROM read_parquet('shards.parquet')",
    "stages": "SELECT * FROM read_parquet('stages.parquet')",
}

# Views over files only some runs have: name -> (file, SQL).
OPTIONAL_VIEWS: dict[str, tuple[str, str]] = {
    "rewrites": ("rewrites.parquet", "SELECT * FROM read_parquet('rewrites.parquet')"),
    "recaptions": ("recaptions.parquet", "SELECT * FROM read_parquet('recaptions.parquet')"),
    "entry_counts": ("entry_counts.parquet",
                     "SELECT * FROM read_parquet('entry_counts.parquet')"),
}


def write_catalog(run_dir: Path) -> Path:
    dest = run_dir / CATALOG
    with atomic_path(dest) as tmp:
        tmp.unlink()  # DuckDB creates the file itself
        if writable_db_path(tmp):
            _build_catalog(tmp, run_dir)
        else:  # DuckDB cannot write a database there ("?" in the path): build it elsewhere
            with tempfile.TemporaryDirectory(prefix="curate-catalog-") as scratch:
                built = Path(scratch) / CATALOG
                _build_catalog(built, run_dir)
                shutil.copyfile(built, tmp)
    return dest


def _build_catalog(path: Path, run_dir: Path) -> None:
    con = duckdb.connect(str(path))
    con.execute(f"SET file_search_path = {literal(str(run_dir.resolve()))}")
    for name, sql in VIEWS.items():
        if name == "manifest" and manifest_path(run_dir).is_file():  # an older selection
            sql = f"SELECT * FROM read_parquet({literal(LEGACY_MANIFEST)})"
        con.execute(f"CREATE VIEW {name} AS {sql}")
    for name, (file, sql) in OPTIONAL_VIEWS.items():
        if (run_dir / file).is_file():
            con.execute(f"CREATE VIEW {name} AS {sql}")
    con.close()


def resolve_selection(path: str | Path, need: str = CATALOG) -> Path:
    """The selection directory ``path`` names: itself when it holds ``need``, or the one
    selection under ``path/selections/`` (the ``--out`` of ``curate run``)."""
    run = Path(path)

    def has(d: Path) -> bool:
        return (d / need).is_file() or (need == MANIFEST and has_manifest(d))

    if has(run):
        return check_selection_files(run)
    under = sorted(d for d in (run / "selections").glob("*") if has(d)) \
        if (run / "selections").is_dir() else []
    if len(under) == 1:
        return check_selection_files(under[0])
    if len(under) > 1:
        names = ", ".join(str(d) for d in under)
        raise CurateError(f"{path} holds {len(under)} selections: name one", f"e.g. {names}")
    if not run.exists():
        raise CurateError(f"{path} does not exist",
                          "run `curate run PIPELINE.yaml --out DIR` first")
    if (run / "store.json").is_file():
        raise CurateError(f"{path} is a scored store (it holds store.json), not a selection",
                          f"select from it first: curate select {path} SELECTION.yaml --out DIR;"
                          " then give that DIR")
    if _started_selection(run) or (run / "store" / "store.json").is_file() or (
            (run / "selections").is_dir() and any((run / "selections").iterdir())):
        raise CurateError(f"{path} holds no finished selection (no {need})",
                          "the run stopped before its selection finished: run the same "
                          "command again to resume it")
    raise CurateError(f"{path} is not a curate run or selection directory (no {CATALOG}, "
                      "no selections/, no store/)",
                      "give the --out of `curate run` (RUN/selections/<name> is its selection), "
                      "or a directory `curate select` wrote")


SELECTION_TABLES = ("funnel.parquet", "shards.parquet", "stages.parquet",
                    "rewrites.parquet", "recaptions.parquet", "entry_counts.parquet")
SELECTION_RECORDS = ("stats.json", "selection.json")


def check_selection_files(run: Path) -> Path:
    """``run``, once every file of the selection that exists opens: each table's Parquet
    footer, each JSON record, the catalogue's DuckDB header. A damaged one is a CurateError
    naming it and the command that rewrites it."""
    def damaged(name: str, why: str) -> CurateError:
        return CurateError(f"selection file {run / name} is damaged ({why})",
                           f"run the `curate select` (or `curate run`) command that wrote "
                           f"{run} again: it rewrites the selection from the store's scores, "
                           "computing none")

    parts = [str(f.relative_to(run)) for f in part_files(manifest_path(run))]
    for name in (*parts, *SELECTION_TABLES):
        if (run / name).is_file():
            try:
                pq.read_metadata(run / name)
            except (OSError, pa.ArrowException) as exc:
                raise damaged(name, _first_line(exc)) from None
    for name in SELECTION_RECORDS:
        if (run / name).is_file():
            try:
                ok = isinstance(json.loads((run / name).read_bytes()), dict)
            except (ValueError, UnicodeDecodeError) as exc:
                raise damaged(name, f"not JSON: {exc}") from None
            if not ok:
                raise damaged(name, "not a JSON object")
    if (run / CATALOG).is_file():
        with open(run / CATALOG, "rb") as f:
            head = f.read(12)
        if head[8:12] != b"DUCK":
            raise damaged(CATALOG, "not a DuckDB database")
    return run


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:200] if lines else type(exc).__name__


def _started_selection(run: Path) -> bool:
    """Whether ``run`` is a selection directory whose selection started: it holds the files
    a selection writes first (``selection.json``, ``pipeline.yaml``, the manifest), or a
    ``log.jsonl`` whose first event is a selection's."""
    if any((run / f).is_file() for f in ("selection.json", "pipeline.yaml", LEGACY_MANIFEST)) \
            or (run / MANIFEST).is_dir():
        return True
    try:
        with open(run / "log.jsonl", encoding="utf-8") as f:
            first = f.readline()
    except (OSError, UnicodeDecodeError):
        return False
    return '"event": "select_start"' in first


def open_catalog(run_dir: str | Path) -> duckdb.DuckDBPyConnection:
    """A read-only DuckDB connection on a selection's views (see ``resolve_selection``)."""
    run = resolve_selection(run_dir)
    path = run / CATALOG
    con = duckdb.connect(str(path), read_only=True)
    con.execute(f"SET file_search_path = {literal(str(run.resolve()))}")
    return con


class Run:
    """A finished run's catalogue: DuckDB relations and polars frames over its views."""

    def __init__(self, run_dir: str | Path) -> None:
        self.dir = resolve_selection(run_dir)
        self.con = open_catalog(self.dir)

    @property
    def views(self) -> list[str]:
        return [r[0] for r in self.con.execute(
            "SELECT view_name FROM duckdb_views() WHERE NOT internal ORDER BY 1").fetchall()]

    def sql(self, query: str) -> duckdb.DuckDBPyRelation:
        return self.con.sql(query)

    def value(self, query: str) -> Any:
        """The first column of the first row of ``query`` (None when it returns no row)."""
        rows = self.con.sql(query).fetchall()
        return rows[0][0] if rows else None

    def view(self, name: str) -> duckdb.DuckDBPyRelation:
        if name not in self.views:
            raise CurateError(f"run {self.dir} has no view {name!r}",
                              f"views: {', '.join(self.views)}")
        return self.con.sql(f"SELECT * FROM {name}")

    def pl(self, query_or_view: str) -> Any:
        """A polars DataFrame of a view (by name) or of a query."""
        rel = self.view(query_or_view) if query_or_view.isidentifier() else self.sql(
            query_or_view)
        return rel.pl()

    def close(self) -> None:
        self.con.close()


def open_run(run_dir: str | Path) -> Run:
    return Run(run_dir)


def open_runs(runs: dict[str, str | Path]) -> duckdb.DuckDBPyConnection:
    """One in-memory DuckDB connection with each run's views in a schema named by its key."""
    import re

    from curate.sql import ident

    con = duckdb.connect()
    for alias, path in runs.items():
        run = resolve_selection(path, MANIFEST).resolve()
        schema = ident(alias)
        con.execute(f"CREATE SCHEMA {schema}")
        views = dict(VIEWS)
        views.update({n: sql for n, (f, sql) in OPTIONAL_VIEWS.items() if (run / f).is_file()})
        for name, sql in views.items():
            if name == "manifest":
                con.execute(f"CREATE VIEW {schema}.manifest AS SELECT * FROM "
                            f"{scan_sql(manifest_path(run))}")
                continue
            sql = re.sub(r"read_parquet\('([^']+)'",
                         lambda m, r=run: "read_parquet(" + path_literal(r / m.group(1)), sql)
            sql = re.sub(r"\b(FROM|JOIN) (manifest|funnel)\b", rf"\1 {schema}.\2", sql)
            con.execute(f"CREATE VIEW {schema}.{ident(name)} AS {sql}")
    return con
