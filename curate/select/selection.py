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

**The manifest** is a Parquet dataset, ``SEL/manifest/part-NNNNN.parquet``: one part per
partition, each written by its partition (``curate.io.dataset``); one part in one process.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from curate.config import Step
from curate.errors import CurateError
from curate.io.dataset import LEGACY_MANIFEST, MANIFEST, atomic_dir, part_name, write_query
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
    partitions: int = 1  # how many partitions it ran in (``curate.select.partitioned``)
    on_ray: bool = False  # whether they were Ray actors
    # per partition: peak RSS of its process (GiB) and bytes it sent to the dedup reducers
    partition_stats: list[dict[str, Any]] = field(default_factory=list)


def memory_limit() -> str:
    """DuckDB's ``memory_limit`` for selection (see the module docs)."""
    env = os.environ.get(MEMORY_ENV, "").strip()
    if env:
        return env
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    with contextlib.suppress(OSError, ValueError):  # a container's limit, when lower
        total = min(total, int(Path("/sys/fs/cgroup/memory.max").read_text().strip()))
    return f"{int(min(8 * _GIB, max(_GIB, total // 4)) // 2**20)}MiB"


def connect(run_dir: Path, limit: str | None = None) -> duckdb.DuckDBPyConnection:
    """A DuckDB for the pool table in ``run_dir`` (see the module docs), under ``limit``
    (default ``memory_limit()``)."""
    db = run_dir / DATABASE
    remove_database(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    # A directory DuckDB cannot hold a database in (a "?" in its path): the database lives
    # in memory, and still spills to run_dir/.duckdb_tmp past the memory limit.
    con = duckdb.connect(str(db) if writable_db_path(db) else ":memory:")
    limit = limit or memory_limit()
    try:
        con.execute(f"SET memory_limit = {literal(limit)}")
    except duckdb.Error as exc:
        con.close()
        remove_database(run_dir)
        raise CurateError(f"{MEMORY_ENV}={limit!r} is not a memory size ({exc})",
                          f"set it like {MEMORY_ENV}=8GB or unset it") from exc
    con.execute(f"SET temp_directory = {literal(str(run_dir / TEMP_DIR))}")
    con.execute("SET preserve_insertion_order = true")
    return con


def remove_database(run_dir: Path) -> None:
    db = run_dir / DATABASE
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
           note: Callable[[str], None] | None = None, workers: int = 1,
           on_ray: bool = False) -> Selection:
    """Apply ``steps`` (rules and selectors, in order) to the pool of ``source`` (with the
    columns of ``metadata`` joined on) and write the manifest (``manifest/``, a Parquet
    dataset) into ``out_dir`` atomically. ``note`` (e.g. ``curate.runtime.Notes``) gets one
    line per phase and step, with the samples each step dropped and those left.

    The pool is cut into ``workers`` partitions (``curate.select.partitioned``), run as Ray
    actors when ``on_ray`` (Ray must be up), else in this process; a selection with a step that
    has no partitioned form yet runs in one process, whatever ``workers`` says."""
    from curate.select.partitioned import unsupported

    why = unsupported(steps)
    if why is None:
        return _select_partitioned(steps, source, out_dir, metadata, note, workers, on_ray)
    if (workers > 1 or on_ray) and note is not None:
        note(f"selecting in one process: {why}")
    con = connect(out_dir)
    try:
        return _select(con, steps, source, out_dir, metadata, note)
    finally:
        con.close()
        remove_database(out_dir)


MANIFEST_SQL = """SELECT uid, shard, key, "index", reason IS NULL AS kept, reason,
                         * EXCLUDE (_row, uid, shard, key, "index", reason)
                  FROM {table}"""


def _select_partitioned(steps: Sequence[Step], source: PoolSource, out_dir: Path,
                        metadata: SelectMetadata | None,
                        note: Callable[[str], None] | None, workers: int,
                        on_ray: bool) -> Selection:
    from curate.select.partitioned import Workers, cut, run_steps, write_manifest

    seconds: dict[str, float] = {}
    say = note or (lambda _message: None)
    counting = bool(getattr(note, "enabled", note is not None))
    # balanced by the pool's recorded sample counts: the driver reads no file per shard (each
    # partition reads its own shards' footers; their exact row counts number the rows below)
    parts = cut(source.shards, [s.samples if s.samples is not None else 1
                                for s in source.shards], workers)
    where = f"{len(parts)} partitions on Ray" if on_ray else (
        f"{len(parts)} partitions in this process" if len(parts) > 1 else "")
    say(f"selecting: loading {len(source.shards)} shards from the store"
        f"{' in ' + where if where else ''} ...")
    out_dir.mkdir(parents=True, exist_ok=True)
    limit = memory_limit()
    if len(parts) > 1:  # the partitions of one node share its memory
        limit = f"{max(256, _mib(limit) // min(len(parts), _cpus()))}MiB"
    pool = Workers(source.store, source.reader, parts, source.versions, list(steps), limit,
                   out_dir, on_ray)
    try:
        with _timed(seconds, "load"):
            bases, total = [], 0
            for n in pool.call("row_count"):
                bases.append(total)
                total += n
            left = sum(pool.call_each("load", [(b,) for b in bases]))
        say(f"selecting: {left} samples loaded in {seconds['load']:.1f}s; {len(steps)} steps")
        if metadata is not None:
            with _timed(seconds, "metadata"):
                pool.first("check_metadata", metadata, set(source.columns()))
                pool.call("join_metadata", metadata)
        ctx = SelectContext(out_dir, source.sidecars(), source.versions)
        order, stage_of = run_steps(pool, steps, ctx, lambda name: _timed(seconds, name), say,
                                    counting)
        order[1:1] = [f"error:{s}" for s in source.error_stages()]
        with _timed(seconds, "count"):
            counts: dict[str, int] = {}
            for part in pool.call("counts"):
                for r, n in part.items():
                    counts[r] = counts.get(r, 0) + n
        with _timed(seconds, "manifest"), atomic_dir(out_dir / MANIFEST) as tmp:
            write_manifest(pool, tmp)
        _remove_legacy_manifest(out_dir)
        with _timed(seconds, "shards"):
            per_shard: dict[str, tuple[int, int]] = {}
            for part in pool.call("shard_counts"):
                per_shard.update(part)
        stats = pool.call("stats")
    finally:
        pool.close()
    return dataclasses.replace(_selection(counts, order, stage_of, seconds, per_shard),
                               partitions=len(parts), on_ray=on_ray, partition_stats=stats)


def _remove_legacy_manifest(out_dir: Path) -> None:
    """A selection written again by this curate into the directory of one written by an older
    one: its one-file manifest goes (readers prefer the dataset, but it is stale)."""
    (out_dir / LEGACY_MANIFEST).unlink(missing_ok=True)


def _mib(size: str) -> int:
    """MiB in a DuckDB memory size such as ``1500MiB`` or ``8GB``."""
    import re

    m = re.fullmatch(r"\s*([0-9.]+)\s*([KMGT]?)(i?)B?\s*", size, re.I)
    if not m:
        return 1024
    unit = {"": 0, "K": 1, "M": 2, "G": 3, "T": 4}[m.group(2).upper()]
    base = 1024 if m.group(3) else 1000
    return int(float(m.group(1)) * base**unit / 2**20)


def _cpus() -> int:
    from curate.select.partitioned import cpu_count

    return cpu_count()


def _selection(counts: dict[str, int], order: list[str], stage_of: dict[str, str],
               seconds: dict[str, float], per_shard: dict[str, tuple[int, int]]) -> Selection:
    total = sum(counts.values())
    kept = counts.pop("", 0)
    for r in counts:  # reasons not announced in advance (e.g. an unexpected error stage)
        if r not in order:
            order.append(r)
    funnel = [FunnelRow(r, counts.get(r, 0),
                        stage_of.get(r, r.removeprefix("error:") if r.startswith("error:")
                                     else "")) for r in order
              if counts.get(r, 0) or not r.startswith(("error:", "duplicate_uid"))]
    return Selection(samples=total, kept=kept, funnel=funnel, seconds=seconds,
                     shard_counts=per_shard)


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
        load(con, selector_columns(steps), source)
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
    with _timed(seconds, "manifest"), atomic_dir(out_dir / MANIFEST) as tmp:
        # The table is stored in pool order (preserve_insertion_order): no sort needed.
        write_query(con, MANIFEST_SQL.format(table=TABLE), tmp / part_name(0, 1))
    _remove_legacy_manifest(out_dir)
    with _timed(seconds, "shards"):
        per_shard = {sid: (n, e) for sid, n, e in con.execute(
            f"SELECT shard, count(*), count(*) FILTER (WHERE status <> 'ok') FROM {TABLE} "
            "GROUP BY shard").fetchall()}
    return _selection(counts, order, stage_of, seconds, per_shard)


def _still_kept(con: duckdb.DuckDBPyConnection) -> int:
    row = con.execute(f"SELECT count(*) FROM {TABLE} WHERE reason IS NULL").fetchone()
    return int(row[0]) if row else 0


def load(con: duckdb.DuckDBPyConnection, extra: dict[str, pa.DataType], source: PoolSource,
         base: int = 0) -> None:
    """Create the pool table, in pool order, from the store's files: the base files and each
    selected scorer's files, each list read by DuckDB in pool order and joined by position,
    with the selectors' ``extra`` columns (null). ``_row`` counts from ``base`` + 1 (the rows
    of the pool before ``source``'s shards). Every row's (file, row in file) must agree across
    them, or the load fails: a scorer file with a row too many or too few can never shift
    scores onto other samples."""
    from curate.schema import SAMPLE_COLUMNS
    from curate.store.store import ERROR, STATUS

    if not source.store.dir.local:
        con.register_filesystem(source.store.dir.fs)
    base_files, score_files = source.files()
    offsets, start = [], base
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
