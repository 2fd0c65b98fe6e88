"""Selection: rules and selectors over a store's scores, in DuckDB → a selection's manifest.

Steps, in order; each sees only the rows every earlier step kept, and a dropped row records the
first step that dropped it (``reason``):

1. ``duplicate_uid``: a uid seen earlier in pool order (only possible when the input carries
   uids and repeats one);
2. ``error:<stage>``: the sample failed to download, read or score;
3. the selection's steps (rules and presets expanded into rules, then selectors), in the order
   the selection lists them.

Pool order is (shard id, position in shard). Nothing here depends on how many workers or nodes
scored the pool, so the manifest is identical for any cluster layout. Selection computes no
score: it reads the store (``curate.select.pool``), one shard at a time, into DuckDB.

**Memory.** The pool table lives in a file-backed DuckDB database, ``SEL/.selection.duckdb``
(a stale one is removed first; it is deleted when selection ends), under a memory limit, and
DuckDB spills what does not fit to ``SEL/.duckdb_tmp``. So memory stops growing with the pool
(``benchmarks/scale.py`` measures it up to 100M rows). While selection runs, the database
takes about 1.2 times the disk of the pool's score files. The limit is the environment
variable ``CURATE_DUCKDB_MEMORY`` when set (a DuckDB size such as ``8GB`` or ``1500MiB``), else
a quarter of the machine's memory (or of its cgroup limit), at least 1 GiB and at most 8 GiB:
more buys little (a 30M-row pool selected 15% faster with 12 GB than with 4 GB, at twice the
peak memory), and selectors' own arrays (numpy, Arrow) are outside it.

**Pool order without a sort.** The pool is streamed shard by shard in pool order with ``_row``
(1-based pool order) already numbered, and the table keeps that order.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pyarrow as pa

from curate.config import Step
from curate.errors import CurateError
from curate.io.atomic import atomic_path
from curate.select.metadata import SelectMetadata, check_metadata, join_metadata
from curate.select.pool import PoolSource
from curate.sql import ident, literal, path_literal, writable_db_path
from curate.stages.base import Rule, SelectContext, Selector

TABLE = "pool"
DATABASE = ".selection.duckdb"
TEMP_DIR = ".duckdb_tmp"
MEMORY_ENV = "CURATE_DUCKDB_MEMORY"
_GIB = 2**30


@dataclass(frozen=True)
class FunnelRow:
    reason: str
    dropped: int
    stage: str = ""  # the stage that drops with this reason (rule/selector name, or error stage)


@dataclass(frozen=True)
class Selection:
    samples: int
    kept: int
    funnel: list[FunnelRow]  # in step order; reasons that dropped nothing are listed with 0
    # Wall seconds per phase, in order: "load", "duplicate_uid", "errors", then each step
    # (a rule by its reason, a selector by its name), "count", "manifest" and "shards".
    seconds: dict[str, float] = field(default_factory=dict)
    shard_counts: dict[str, tuple[int, int]] = field(default_factory=dict)  # samples, errors


def memory_limit() -> str:
    """DuckDB's ``memory_limit`` for selection (see the module docs)."""
    env = os.environ.get(MEMORY_ENV, "").strip()
    if env:
        return env
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    with contextlib.suppress(OSError, ValueError):  # a container's limit, when lower
        total = min(total, int(Path("/sys/fs/cgroup/memory.max").read_text().strip()))
    return f"{int(min(8 * _GIB, max(_GIB, total // 4)) // 2**20)}MiB"


def _connect(run_dir: Path) -> duckdb.DuckDBPyConnection:
    db = run_dir / DATABASE
    _remove_database(db)
    run_dir.mkdir(parents=True, exist_ok=True)
    # A directory DuckDB cannot hold a database in (a "?" in its path): the database lives
    # in memory, and still spills to run_dir/.duckdb_tmp past the memory limit.
    con = duckdb.connect(str(db) if writable_db_path(db) else ":memory:")
    limit = memory_limit()
    try:
        con.execute(f"SET memory_limit = {literal(limit)}")
    except duckdb.Error as exc:
        con.close()
        _remove_database(db)
        raise CurateError(f"{MEMORY_ENV}={limit!r} is not a memory size ({exc})",
                          f"set it like {MEMORY_ENV}=8GB or unset it") from exc
    con.execute(f"SET temp_directory = {literal(str(run_dir / TEMP_DIR))}")
    con.execute("SET preserve_insertion_order = true")
    return con


def _remove_database(db: Path) -> None:
    for f in (db, db.with_name(db.name + ".wal")):
        f.unlink(missing_ok=True)


@contextlib.contextmanager
def _timed(seconds: dict[str, float], name: str) -> Iterator[None]:
    t0 = time.perf_counter()
    yield
    key, n = name, 1
    while key in seconds:  # a selector listed twice
        n += 1
        key = f"{name}#{n}"
    seconds[key] = round(time.perf_counter() - t0, 3)


def select(steps: Sequence[Step], source: PoolSource, out_dir: Path,
           metadata: SelectMetadata | None = None,
           note: Callable[[str], None] | None = None) -> Selection:
    """Apply ``steps`` (rules and selectors, in order) to the pool of ``source`` (with the
    columns of ``metadata`` joined on) and write ``manifest.parquet`` into ``out_dir``
    atomically. ``note`` (e.g. ``curate.runtime.Notes``) gets one line per phase and step,
    with the samples each step dropped and those left."""
    con = _connect(out_dir)
    try:
        return _select(con, steps, source, out_dir, metadata, note)
    finally:
        con.close()
        _remove_database(out_dir / DATABASE)


def selector_columns(steps: Sequence[Step]) -> dict[str, pa.DataType]:
    cols: dict[str, pa.DataType] = {}
    for step in steps:
        if isinstance(step.stage, Selector):
            cols.update(step.stage.extra_columns())
    return cols


def _select(con: duckdb.DuckDBPyConnection, steps: Sequence[Step], source: PoolSource,
            out_dir: Path, metadata: SelectMetadata | None = None,
            note: Callable[[str], None] | None = None) -> Selection:
    seconds: dict[str, float] = {}
    say = note or (lambda _message: None)
    counting = bool(getattr(note, "enabled", note is not None))  # counts only for the notes
    say(f"selecting: loading {len(source.shards)} shards from the store ...")
    with _timed(seconds, "load"):
        _load(con, steps, source)
    left = _still_kept(con) if counting else 0
    say(f"selecting: {left} samples loaded in {seconds['load']:.1f}s; {len(steps)} steps")
    if metadata is not None:
        with _timed(seconds, "metadata"):
            check_metadata(con, metadata.config, metadata.files, set(source.columns()))
            join_metadata(con, TABLE, metadata.config, metadata.files)
    order: list[str] = []
    stage_of: dict[str, str] = {"duplicate_uid": "uid"}
    ctx = SelectContext(out_dir, source.sidecars(), source.versions)

    def drop(reason_sql: str, where: str) -> int:
        """Drop the kept rows matching ``where``; the number dropped."""
        row = con.execute(f"UPDATE {TABLE} SET reason = {reason_sql} WHERE reason IS NULL AND "
                          f"({where})").fetchone()
        return int(row[0]) if row else 0

    with _timed(seconds, "duplicate_uid"):
        # Only uids that occur more than once are ranked (an aggregation, then a small window).
        drop(literal("duplicate_uid"), f"""_row IN (SELECT _row FROM (
                SELECT _row, row_number() OVER (PARTITION BY uid ORDER BY _row) AS n
                FROM {TABLE}
                WHERE uid IN (SELECT uid FROM {TABLE} GROUP BY uid HAVING count(*) > 1)
            ) WHERE n > 1)""")
    order.append("duplicate_uid")
    with _timed(seconds, "errors"):
        failed = drop("'error:' || error_stage", "status <> 'ok'")
    order.extend(f"error:{s}" for s in source.error_stages())
    if counting:
        left = _still_kept(con)
        say(f"selecting: {failed} samples failed to read or score, {left} left")
    for i, step in enumerate(steps, 1):
        st = step.stage
        if isinstance(st, Rule):
            with _timed(seconds, st.reason):
                n = drop(literal(st.reason),
                         f"NOT coalesce(({st.keep_sql(TABLE)})::BOOLEAN, FALSE)")
            order.append(st.reason)
            stage_of[st.reason] = st.name
            what = f"rule {st.name}"
        else:
            sel: Selector = st  # type: ignore[assignment]
            say(f"selecting: step {i}/{len(steps)} selector {sel.name} on {left} samples ...")
            with _timed(seconds, sel.name):
                sel.apply(con, TABLE, ctx)
            order.extend(sel.reasons())
            stage_of.update({r: sel.name for r in sel.reasons()})
            n = left - _still_kept(con) if counting else 0
            what = f"selector {sel.name}"
        left -= n
        say(f"selecting: step {i}/{len(steps)} {st.label} ({what}): dropped {n}, {left} left")
    with _timed(seconds, "count"):
        counts = dict(con.execute(
            f"SELECT coalesce(reason, ''), count(*) FROM {TABLE} GROUP BY 1").fetchall())
    total = sum(counts.values())
    kept = counts.pop("", 0)
    for r in counts:  # reasons not announced in advance (e.g. an unexpected error stage)
        if r not in order:
            order.append(r)
    funnel = [FunnelRow(r, counts.get(r, 0),
                        stage_of.get(r, r.removeprefix("error:") if r.startswith("error:")
                                     else "")) for r in order
              if counts.get(r, 0) or not r.startswith(("error:", "duplicate_uid"))]
    with _timed(seconds, "manifest"), atomic_path(out_dir / "manifest.parquet") as tmp:
        # The table is stored in pool order (preserve_insertion_order): no sort needed.
        con.execute(f"""
            COPY (SELECT uid, shard, key, "index", reason IS NULL AS kept, reason,
                         * EXCLUDE (_row, uid, shard, key, "index", reason)
                  FROM {TABLE})
            TO {literal(str(tmp))} (FORMAT parquet, COMPRESSION zstd)
        """)
    with _timed(seconds, "shards"):
        per_shard = {sid: (n, e) for sid, n, e in con.execute(
            f"SELECT shard, count(*), count(*) FILTER (WHERE status <> 'ok') FROM {TABLE} "
            "GROUP BY shard").fetchall()}
    return Selection(samples=total, kept=kept, funnel=funnel, seconds=seconds,
                     shard_counts=per_shard)


def _still_kept(con: duckdb.DuckDBPyConnection) -> int:
    row = con.execute(f"SELECT count(*) FROM {TABLE} WHERE reason IS NULL").fetchone()
    return int(row[0]) if row else 0


def _load(con: duckdb.DuckDBPyConnection, steps: Sequence[Step], source: PoolSource) -> None:
    """Create the pool table, in pool order, from the store's files: the base files and each
    selected scorer's files, each list read by DuckDB in pool order and joined by position.
    Every row's (file, row in file) must agree across them, or the load fails: a scorer file
    with a row too many or too few can never shift scores onto other samples."""
    from curate.schema import SAMPLE_COLUMNS
    from curate.store.store import ERROR, STATUS

    if not source.store.dir.local:
        con.register_filesystem(source.store.dir.fs)
    base_files, score_files = source.files()
    offsets, start = [], 0
    for n in source.row_counts():
        offsets.append(start)
        start += n
    offsets_sql = "CAST([" + ", ".join(map(str, offsets)) + "] AS BIGINT[])"

    def scan(files: list[str], cols: list[str]) -> str:
        listed = ", ".join(path_literal(f) for f in files)
        picked = ", ".join([*(ident(c) for c in cols), "file_index", "file_row_number"])
        return f"(SELECT {picked} FROM read_parquet([{listed}], file_row_number = true))"

    sources = [f"{scan(base_files, list(SAMPLE_COLUMNS))} AS b"]
    first_fail_status = ["WHEN b.status <> 'ok' THEN b.status"]
    first_fail_stage = ["WHEN b.status <> 'ok' THEN b.error_stage"]
    first_fail_error = ["WHEN b.status <> 'ok' THEN b.error"]
    columns: list[str] = []
    aligned: list[str] = []
    for k, v in enumerate(source.versions):
        alias = f"s{k}"
        sources.append(f"{scan(score_files[v.label], [STATUS, ERROR, *v.columns])} AS {alias}")
        st = f"{alias}.{ident(STATUS)}"
        first_fail_status.append(f"WHEN {st} = 'error' THEN 'error'")
        first_fail_stage.append(f"WHEN {st} = 'error' THEN {literal(v.label)}")
        first_fail_error.append(f"WHEN {st} = 'error' THEN {alias}.{ident(ERROR)}")
        columns += [f"{alias}.{ident(c)}" for c in v.columns]
        aligned.append(f"{alias}.file_index IS DISTINCT FROM b.file_index OR "
                       f"{alias}.file_row_number IS DISTINCT FROM b.file_row_number")
    combined = {"status": f"CASE {' '.join(first_fail_status)} ELSE 'ok' END AS status",
                "error_stage": f"CASE {' '.join(first_fail_stage)} ELSE NULL END AS error_stage",
                "error": f"CASE {' '.join(first_fail_error)} ELSE NULL END AS error"}
    sample = [combined.get(c, f"b.{ident(c)}") for c in SAMPLE_COLUMNS]
    extra = selector_columns(steps)
    extra_sql = "".join(f", CAST(NULL AS {_duck_type(t)}) AS {ident(c)}" for c, t in extra.items())
    check = ("WHERE CASE WHEN " + " OR ".join(aligned) + " THEN error("
             + literal("the store is inconsistent: a scorer's files do not have one row per "
                       "sample of the reader's (score the pool into a new store)")
             + ") ELSE TRUE END") if aligned else ""
    cols_sql = ", ".join([*sample, *columns])
    try:
        con.execute(f"""
            CREATE TABLE {TABLE} AS
            SELECT {offsets_sql}[CAST(b.file_index AS BIGINT) + 1]
                     + CAST(b.file_row_number AS BIGINT) + 1 AS _row,
                   {cols_sql}, CAST(NULL AS VARCHAR) AS reason {extra_sql}
            FROM {" POSITIONAL JOIN ".join(sources)}
            {check}
        """)
    except duckdb.Error as exc:
        if "the store is inconsistent" in str(exc):
            raise CurateError(f"{source.store.location}: a scorer's files do not have one row "
                              "per sample of the reader's", "score the pool into a new store"
                              ) from None
        raise


def _duck_type(t: object) -> str:
    mapping = {pa.string(): "VARCHAR", pa.int32(): "INTEGER", pa.int64(): "BIGINT",
               pa.float32(): "FLOAT", pa.float64(): "DOUBLE", pa.bool_(): "BOOLEAN"}
    if t not in mapping:
        raise TypeError(f"selector column type {t} has no DuckDB mapping")
    return mapping[t]  # type: ignore[index]
