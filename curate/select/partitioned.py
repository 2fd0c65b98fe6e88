"""Selection in partitions: the pool cut into contiguous ranges of shards, each range's table in
its own DuckDB, on Ray actors (a cluster, or a private local Ray) or in this process.

The pool is cut into ``workers`` partitions of whole shards, in pool order, balanced by sample
count. Each partition is one ``PartWorker``: it loads its shards' store files into a DuckDB
table (``_row`` numbered in global pool order) and runs every step on it. Steps that see one
row at a time (errors, ``threshold``, ``in_set``, ``sql`` and the presets' rules) run in each
partition independently. Global steps exchange only what they need, through Ray's object store
(or plain values in this process), and never gather rows on the driver:

* ``duplicate_uid`` and ``exact_dedup`` ("keep the first in pool order"): each partition finds,
  per key, its first row (``_row``, uid) and its bucket ``hash(key) % B`` (B: the partitions,
  or more so that a bucket holds at most ``KEYS_PER_BUCKET`` keys); bucket b is reduced on
  partition ``b % workers``, in waves of one bucket per partition: the reducer finds, for keys
  seen in several partitions, the global first and sends it to every partition whose own first
  it is not, which keeps it in its DuckDB. Each partition then drops every row of such a key
  but the global first (``duplicate_of`` = its uid), and, within itself, every row but its
  first. A wave's objects are gone before the next is made, so what a partition holds of the
  exchange is bounded by the bucket size, not by the pool.
* ``top_fraction``: DataComp's threshold, exactly. The partitions report counts, then bucket
  counts of the column over a narrowing bracket of values (1,024 equal-width buckets per round)
  until the bracket holds the value at the wanted rank alone, or at most ``GATHER_MAX`` values,
  which are then gathered and sorted; the rows scoring at least that value are kept.
* ``metaclip_balance``: per-partition entry counts summed once, p broadcast, each row's draws
  seeded by its uid (``curate.stages.metaclip_balance``), so the subset does not depend on the
  partitioning. ``metaclip2_balance`` the same, per language (entry counts per language
  summed, t and p per language computed once, each row's text choice and keep draw by uid).
* ``centroid_target``: the target centroids computed once (from the centroids and target files,
  not the pool), sent to every partition, which drops its own rows.

Every answer depends only on the data: the manifest is identical for any number of partitions,
in this process or on Ray, on one node or many (tested). Selectors without a partitioned form
yet (``near_dedup``, ``semdedup``, ``mode_clusters``, ``clipcov``) run in one process
(``curate.select.selection``). ``metadata:`` is joined per partition (each reads the metadata
rows of its own uids; the checks of the metadata itself run once, on the first partition).

What the driver holds: one count per reason and partition, per global step its small
aggregates (``top_fraction``: 1,024 counts per round; ``metaclip_balance``: one count per
metadata entry). Each partition writes its own part of the manifest dataset
(``SEL/manifest/part-NNNNN.parquet``, ``curate.io.dataset``) straight from its DuckDB.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa

from curate.config import Step
from curate.errors import CurateError
from curate.io.dataset import part_name, write_query
from curate.select.metadata import SelectMetadata
from curate.sql import ident, literal
from curate.stages.base import Rule, SelectContext, Selector
from curate.store.store import PoolShard, Store, Version

BUCKETS = 1024  # top_fraction: buckets per round
GATHER_MAX = 1_000_000  # top_fraction: values gathered once the bracket holds at most this
KEYS_PER_BUCKET = 2_000_000  # dedup exchange: buckets hold about this many keys at most
PARTITIONED_SELECTORS = ("exact_dedup", "metaclip_balance", "metaclip2_balance",
                         "centroid_target")
ROW_GROUP = 122_880  # rows per row group of a partition's manifest part
VALUE_CHUNK = 1 << 20  # rows per batch when top_fraction reads a partition's scores


def unsupported(steps: Sequence[Step]) -> str | None:
    """Why this selection cannot run partitioned (None: it can)."""
    for step in steps:
        st = step.stage
        if isinstance(st, Selector) and st.name not in PARTITIONED_SELECTORS:
            return f"selector {st.name} has no partitioned form yet"
    return None


@dataclass(frozen=True)
class Part:
    """One partition: a contiguous range of the pool's shards, and the rows before it as the
    pool's records count them (for balancing; the rows are numbered from exact counts)."""

    index: int
    shards: list[PoolShard]
    base: int


def cut(shards: Sequence[PoolShard], rows: Sequence[int], parts: int) -> list[Part]:
    """``parts`` contiguous ranges of ``shards`` (pool order) of about equal row counts (fewer
    when there are fewer shards)."""
    n = max(1, min(parts, len(shards)))
    total = sum(rows)
    out: list[Part] = []
    start, seen = 0, 0
    for k in range(n):
        if k == n - 1:
            end = len(shards)
        else:
            goal = total * (k + 1) / n
            end, acc = start + 1, seen + rows[start]
            while end < len(shards) - (n - k - 1) and acc + rows[end] / 2 <= goal:
                acc += rows[end]
                end += 1
        out.append(Part(k, list(shards[start:end]), seen))
        seen += sum(rows[start:end])
        start = end
    return out


class PartWorker:
    """One partition's table and the steps' work on it (a Ray actor, or a plain object)."""

    def __init__(self, store: str, reader: str, part: Part, versions: list[Version],
                 steps: list[Step], work_dir: str | None, memory: str,
                 on_ray: bool = False) -> None:
        from curate.select.pool import PoolSource
        from curate.select.selection import TABLE, connect, selector_columns

        self.table = TABLE
        self.on_ray = on_ray
        self.steps = steps
        self.source = PoolSource(Store(store), reader, part.shards, versions)
        self.part = part
        self.own_dir = work_dir is None
        self._lock: Any = None
        if work_dir is None:
            self.dir = Path(tempfile.mkdtemp(prefix=WORK_PREFIX))
            self._lock = _hold(self.dir)
            remove_orphans(self.dir.parent)
        else:
            self.dir = Path(work_dir)
        self.con = connect(self.dir, memory)
        self.extra = selector_columns(steps)
        self.shuffled = 0  # bytes this partition sent to the dedup reducers
        self.peaks: dict[str, float] = {}  # step -> peak RSS (GiB) once it ran

    def row_count(self) -> int:
        """This partition's rows (its shards' base file footers, read here, on its node)."""
        return sum(self.source.row_counts())

    def load(self, base: int) -> int:
        """Load this partition's rows, numbered in pool order from ``base`` (the rows of the
        partitions before it)."""
        from curate.select.selection import load

        load(self.con, self.extra, self.source, base)
        self._mark("load")
        return self.kept()

    def check_metadata(self, metadata: SelectMetadata, taken: set[str]) -> None:
        """The checks of the metadata itself (run on one partition: they read the metadata,
        not the pool)."""
        from curate.select.metadata import check_metadata

        check_metadata(self.con, metadata.config, metadata.files, taken)

    def join_metadata(self, metadata: SelectMetadata) -> None:
        """This partition's rows LEFT JOINed with their metadata rows."""
        from curate.select.metadata import join_metadata

        join_metadata(self.con, self.table, metadata.config, metadata.files)
        self._mark("metadata")

    def kept(self) -> int:
        return int(self.con.execute(
            f"SELECT count(*) FROM {self.table} WHERE reason IS NULL").fetchall()[0][0])

    def drop(self, reason_sql: str, where: str) -> int:
        row = self.con.execute(f"UPDATE {self.table} SET reason = {reason_sql} WHERE reason IS "
                               f"NULL AND ({where})").fetchone()
        return int(row[0]) if row else 0

    def rule(self, i: int) -> int:
        st: Rule = self.steps[i].stage  # type: ignore[assignment]
        n = self.drop(literal(st.reason),
                      f"NOT coalesce(({st.keep_sql(self.table)})::BOOLEAN, FALSE)")
        self._mark("rules")
        return n

    # -- keep the first in pool order -------------------------------------------------------

    def firsts(self, key: str, where: str, buckets: int, with_uid: bool) -> None:
        """Per key (among rows matching ``where``), this partition's first row (and its uid
        when ``with_uid``) and its bucket (``hash(key) % buckets``), kept in DuckDB until
        ``drop_later``; ``bucket_firsts`` hands them out one wave of buckets at a time."""
        uid = "arg_min(uid, _row)" if with_uid else "CAST(NULL AS VARCHAR)"
        self.con.execute(f"""
            CREATE OR REPLACE TEMP TABLE _firsts AS
            SELECT {key} AS key, min(_row) AS first_row, {uid} AS first_uid,
                   CAST({self.part.index} AS INTEGER) AS part,
                   CAST(hash({key}) % {buckets} AS INTEGER) AS bucket
            FROM {self.table} WHERE ({where}) AND {key} IS NOT NULL GROUP BY {key}
        """)
        self.con.execute("CREATE OR REPLACE TEMP TABLE _remote_firsts AS SELECT key, first_row, "
                         "first_uid FROM _firsts LIMIT 0")
        self._mark("dedup_map")

    def bucket_firsts(self, lo: int, hi: int) -> list[Any]:
        """This partition's firsts of buckets ``lo`` to ``hi - 1``, one table per bucket. On
        Ray each table goes into the object store as soon as it is made (the list holds their
        references)."""
        out: list[Any] = []
        for b in range(lo, hi):
            t = self.con.sql("SELECT key, first_row, first_uid, part FROM _firsts "
                             f"WHERE bucket = {b}").to_arrow_table()
            self.shuffled += t.nbytes
            if self.on_ray:
                import ray

                out.append(ray.put(t))
                del t
            else:
                out.append(t)
        self._mark("dedup_map")
        return out

    def reduce_firsts(self, parts: int, *tables: pa.Table) -> list[pa.Table]:
        """``global_firsts`` on this worker (each worker reduces its share of the buckets,
        one at a time)."""
        out = global_firsts(parts, *tables)
        self._mark("dedup_reduce")
        return out

    def take_firsts(self, *remote: pa.Table) -> int:
        """Keep the global firsts the reducers sent this partition (keys whose first is in
        another partition) in DuckDB, where they may spill, until ``drop_later``."""
        given = [r for r in remote if r.num_rows]
        for k, t in enumerate(given):
            self.con.register(f"_given{k}", t)
            try:
                self.con.execute(f"INSERT INTO _remote_firsts SELECT key, first_row, first_uid "
                                 f"FROM _given{k}")
            finally:
                self.con.unregister(f"_given{k}")
        self._mark("dedup_reduce")
        return sum(t.num_rows for t in given)

    def drop_later(self, key: str, where: str, reason: str, mark: bool) -> int:
        """Drop every row matching ``where`` but the first of its key in pool order: the
        global first from the reducers (keys whose first is in an earlier partition), else
        this partition's own; ``mark`` records the first's uid in ``duplicate_of``."""
        t = self.table
        dup = ", duplicate_of = d.first_uid" if mark else ""
        exchanged = bool(self.con.execute(  # no exchange with one partition
            "SELECT count(*) FROM duckdb_tables() WHERE temporary AND table_name = "
            "'_remote_firsts'").fetchall()[0][0])
        join = "LEFT JOIN _remote_firsts AS g ON g.key = k.key" if exchanged else \
            "LEFT JOIN (SELECT NULL AS key, NULL::BIGINT AS first_row, NULL::VARCHAR AS " \
            "first_uid) AS g ON FALSE"
        try:
            row = self.con.execute(f"""
                UPDATE {t} SET reason = {literal(reason)}{dup}
                FROM (
                    SELECT k._row, coalesce(g.first_row, k.own_row) AS first_row,
                           coalesce(g.first_uid, k.own_uid) AS first_uid
                    FROM (SELECT _row, {key} AS key,
                                 first_value(_row) OVER w AS own_row,
                                 first_value(uid) OVER w AS own_uid
                          FROM {t} WHERE ({where}) AND {key} IS NOT NULL
                          WINDOW w AS (PARTITION BY {key} ORDER BY _row)) AS k
                    {join}
                ) AS d
                WHERE {t}._row = d._row AND d._row <> d.first_row AND {t}.reason IS NULL
            """).fetchone()
        finally:
            self.con.execute("DROP TABLE IF EXISTS _firsts")
            self.con.execute("DROP TABLE IF EXISTS _remote_firsts")
        self._mark("dedup_drop")
        return int(row[0]) if row else 0

    # -- top_fraction -----------------------------------------------------------------------

    def _values(self, column: str, where: str) -> Iterator[np.ndarray]:
        """The column's non-null values among ``where`` as float64, ``VALUE_CHUNK`` rows at a
        time (a partition's whole column would be 8 bytes per row in this process)."""
        col = ident(column)
        reader = self.con.sql(f"SELECT CAST({col} AS DOUBLE) AS v FROM {self.table} "
                              f"WHERE {col} IS NOT NULL AND ({where})"
                              ).to_arrow_reader(VALUE_CHUNK)
        for batch in reader:
            if batch.num_rows:
                yield batch.column(0).to_numpy(zero_copy_only=False).astype(np.float64,
                                                                            copy=False)

    def value_range(self, column: str, where: str) -> tuple[int, float, float]:
        n, lows, highs = 0, [], []
        for v in self._values(column, where):
            n += len(v)
            lows.append(v.min())
            highs.append(v.max())
        result = (n, float(np.min(lows)), float(np.max(highs))) if n \
            else (0, math.inf, -math.inf)
        self._mark("top_fraction")
        return result

    def bucket_counts(self, column: str, where: str, bracket: Bracket,
                      edges: np.ndarray) -> np.ndarray:
        counts = np.zeros(len(edges) - 1, dtype=np.int64)
        for chunk in self._values(column, where):
            v = bracket.inside(chunk)
            b = np.clip(np.searchsorted(edges, v, side="right") - 1, 0, len(edges) - 2)
            counts += np.bincount(b, minlength=len(edges) - 1)
        self._mark("top_fraction")
        return counts

    def values_in(self, column: str, where: str, bracket: Bracket) -> np.ndarray:
        got = [bracket.inside(v) for v in self._values(column, where)]
        self._mark("top_fraction")
        return np.concatenate(got) if got else np.zeros(0, dtype=np.float64)

    # -- metaclip_balance ----------------------------------------------------------------------

    def metaclip_count(self, i: int) -> dict[str, Any]:
        out = self.steps[i].stage.count(self.con, self.table)  # type: ignore[attr-defined]
        self._mark("metaclip")
        return out  # type: ignore[no-any-return]

    def metaclip_sample(self, i: int, rows_in: int) -> pa.Array:
        from curate.stages.metaclip_balance import _sample_rows

        col = ident(self.steps[i].stage.params.column)  # type: ignore[attr-defined]
        return _sample_rows(self.con, ident(self.table), col, rows_in)

    def metaclip_draw(self, i: int, plan: dict[str, Any]) -> dict[str, Any]:
        out = self.steps[i].stage.draw(self.con, self.table, plan)  # type: ignore[attr-defined]
        self._mark("metaclip")
        return out  # type: ignore[no-any-return]

    # -- metaclip2_balance ---------------------------------------------------------------------

    def metaclip2_count(self, i: int) -> dict[str, Any]:
        out = self.steps[i].stage.count(self.con, self.table)  # type: ignore[attr-defined]
        self._mark("metaclip2")
        return out  # type: ignore[no-any-return]

    def metaclip2_draw(self, i: int, plan: dict[str, Any]) -> dict[str, Any]:
        out = self.steps[i].stage.draw(self.con, self.table, plan)  # type: ignore[attr-defined]
        self._mark("metaclip2")
        return out  # type: ignore[no-any-return]

    def centroid_drop(self, i: int, ids: np.ndarray) -> int:
        return self.steps[i].stage.drop(self.con, self.table, ids)  # type: ignore[attr-defined,no-any-return]

    # -- results ---------------------------------------------------------------------------

    def counts(self) -> dict[str, int]:
        return {r: int(n) for r, n in self.con.execute(
            f"SELECT coalesce(reason, ''), count(*) FROM {self.table} GROUP BY 1").fetchall()}

    def shard_counts(self) -> dict[str, tuple[int, int]]:
        return {sid: (int(n), int(e)) for sid, n, e in self.con.execute(
            f"SELECT shard, count(*), count(*) FILTER (WHERE status <> 'ok') FROM {self.table} "
            "GROUP BY shard").fetchall()}

    def write_manifest(self, directory: str, k: int, parts: int) -> None:
        """This partition's manifest rows, in pool order, as part ``k`` of the manifest
        dataset being written in ``directory`` (a file system every partition can reach)."""
        from curate.select.selection import MANIFEST_SQL

        write_query(self.con, MANIFEST_SQL.format(table=self.table),
                    Path(directory) / part_name(k, parts), row_group=ROW_GROUP)
        self._mark("manifest")

    def _mark(self, step: str) -> None:
        """Record this process's peak RSS so far against ``step`` (the first step at which the
        peak reached its final value is where the memory went)."""
        self.peaks[step] = round(_peak_rss_gib(), 3)

    def stats(self) -> dict[str, Any]:
        """This process's peak RSS (GiB), the peak after each kind of step, and the bytes it
        sent to the dedup reducers."""
        return {"peak_rss_gib": _peak_rss_gib(), "peak_after": dict(self.peaks),
                "bytes_shuffled": self.shuffled}

    def close(self) -> None:
        from curate.select.selection import remove_database

        self.con.close()
        if self.own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)
            if self._lock is not None:
                self._lock.close()
        else:
            remove_database(self.dir)


WORK_PREFIX = "curate-select-"  # a partition's working directory in its node's temp dir


def _hold(directory: Path) -> Any:
    """An exclusive lock on ``directory/.lock``, held while the partition lives: the kernel
    drops it when the process dies, however it dies (a killed actor runs no cleanup)."""
    import fcntl

    f = open(directory / ".lock.new", "w")
    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.rename(directory / ".lock.new", directory / ".lock")  # appears already locked
    return f


def remove_orphans(temp: Path) -> int:
    """Delete the working directories of partitions whose process is gone (their lock is
    free), left in ``temp`` by actors that were killed; returns how many. A directory without
    a lock file is one being created this instant (or not ours): left alone."""
    import fcntl

    removed = 0
    for d in temp.glob(WORK_PREFIX + "*"):
        try:
            f = open(d / ".lock")
        except OSError:
            continue
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # held: a live partition
            f.close()
            continue
        shutil.rmtree(d, ignore_errors=True)
        f.close()
        removed += 1
    return removed


@dataclass(frozen=True)
class Bracket:
    """Values v with lo <= v < hi (v <= hi when ``closed``)."""

    lo: float
    hi: float
    closed: bool = True

    def inside(self, v: np.ndarray) -> np.ndarray:
        top = v <= self.hi if self.closed else v < self.hi
        return v[(v >= self.lo) & top]


def _split(t: pa.Table, column: str, n: int) -> list[pa.Table]:
    t = t.sort_by(column) if n > 1 else t
    ids = t.column(column).to_numpy()
    bounds = np.searchsorted(ids, np.arange(n + 1))
    return [t.slice(int(bounds[b]), int(bounds[b + 1] - bounds[b])).drop_columns([column])
            for b in range(n)]


def global_firsts(parts: int, *tables: pa.Table) -> list[pa.Table]:
    """A reducer of ``firsts``: for each key seen in several partitions, the global first
    (``first_row``, ``first_uid``), sent to each partition whose own first it is not."""
    rows = [t for t in tables if t.num_rows]
    empty = pa.table({"key": pa.array([], pa.string()), "first_row": pa.array([], pa.int64()),
                      "first_uid": pa.array([], pa.string())})
    if not rows:
        return [empty] * parts
    con = duckdb.connect()
    try:
        con.register("f", pa.concat_tables(rows))
        out = con.sql("""
            WITH g AS (SELECT key, min(first_row) AS g_row, arg_min(first_uid, first_row) AS g_uid
                       FROM f GROUP BY key HAVING count(*) > 1)
            SELECT f.key, g.g_row AS first_row, g.g_uid AS first_uid, f.part
            FROM f JOIN g USING (key) WHERE f.first_row <> g.g_row
        """).to_arrow_table()
    finally:
        con.close()
    return _split(out, "part", parts)


class Workers:
    """The partitions' workers, in this process or as Ray actors: the same calls either way."""

    def __init__(self, store: Store, reader: str, parts: list[Part], versions: list[Version],
                 steps: list[Step], memory: str, local_dir: Path | None,
                 on_ray: bool) -> None:
        self.n = len(parts)
        self.on_ray = on_ray
        if on_ray:
            import ray

            # One CPU each, or an equal share when there are more partitions than CPUs (all
            # of them must be placed at once); reducers take none: the actors hold the CPUs.
            cpus = float(ray.cluster_resources().get("CPU", 1.0))
            share = max(0.01, round(min(1.0, cpus / self.n), 4) - 0.0001) \
                if cpus < self.n else 1.0
            actor = ray.remote(PartWorker).options(num_cpus=share, scheduling_strategy="SPREAD",
                                                   max_concurrency=1)
            self.workers = [actor.remote(store.location, reader, p, versions, steps, None,
                                         memory, True) for p in parts]
        else:
            self.workers = [PartWorker(store.location, reader, p, versions, steps,
                                       str(local_dir) if (local_dir and self.n == 1) else None,
                                       memory) for p in parts]
        self.rows = sum(sum(s.samples or 0 for s in p.shards) for p in parts)

    def call(self, method: str, *args: Any) -> list[Any]:
        """``method(*args)`` on every partition, the results in partition order."""
        if not self.on_ray:
            return [getattr(w, method)(*args) for w in self.workers]
        import ray

        shared = [ray.put(a) for a in args]  # each argument sent once, whatever the count
        return ray.get([getattr(w, method).remote(*shared) for w in self.workers])

    def first(self, method: str, *args: Any) -> Any:
        """``method(*args)`` on the first partition only; a CurateError it raises on Ray is
        raised here as itself (its message, not Ray's traceback)."""
        if not self.on_ray:
            return getattr(self.workers[0], method)(*args)
        import ray

        try:
            return ray.get(getattr(self.workers[0], method).remote(*args))
        except ray.exceptions.RayTaskError as exc:
            if isinstance(exc.cause, CurateError):
                raise exc.cause from None
            raise

    def fold(self, method: str, args: tuple[Any, ...],
             combine: Callable[[Any, Any], Any]) -> Any:
        """``method(*args)`` on every partition, combined as the results arrive (the driver
        holds one result and the running total, not one per partition)."""
        if not self.on_ray:
            total: Any = None
            for w in self.workers:
                one = getattr(w, method)(*args)
                total = one if total is None else combine(total, one)
            return total
        import ray

        shared = [ray.put(a) for a in args]
        pending = [getattr(w, method).remote(*shared) for w in self.workers]
        total = None
        while pending:
            [ready], pending = ray.wait(pending, num_returns=1)
            one = ray.get(ready)
            total = one if total is None else combine(total, one)
        return total

    def call_each(self, method: str, args: Sequence[tuple[Any, ...]]) -> list[Any]:
        if not self.on_ray:
            return [getattr(w, method)(*a) for w, a in zip(self.workers, args, strict=True)]
        import ray

        return ray.get([getattr(w, method).remote(*a)
                        for w, a in zip(self.workers, args, strict=True)])

    def first_in_pool_order(self, key: str, where: str, reason: str, mark: bool) -> int:
        """Drop all rows matching ``where`` but the first of each key (see the module docs);
        the number dropped. The rows exchanged go worker to worker, never to the driver, one
        wave of buckets at a time (one bucket per partition: a partition holds at most about
        ``KEYS_PER_BUCKET`` keys of the exchange at once, however large the pool)."""
        n = self.n
        if n > 1:
            # enough buckets that one holds at most about KEYS_PER_BUCKET keys; worker b % n
            # reduces bucket b
            buckets = max(n, math.ceil(self.rows / KEYS_PER_BUCKET))
            self.call("firsts", key, where, buckets, mark)
            for lo in range(0, buckets, n):
                self._exchange(lo, min(lo + n, buckets))
        return sum(self.call("drop_later", key, where, reason, mark))

    def _exchange(self, lo: int, hi: int) -> None:
        """Buckets ``lo`` to ``hi - 1``: mapped on every partition, reduced, delivered."""
        n = self.n
        if not self.on_ray:
            mapped = self.call("bucket_firsts", lo, hi)
            reduced = [global_firsts(n, *(m[b] for m in mapped)) for b in range(hi - lo)]
            for k, w in enumerate(self.workers):
                w.take_firsts(*(r[k] for r in reduced))
            return
        import ray

        mapped = ray.get([w.bucket_firsts.remote(lo, hi) for w in self.workers])
        reduced = [self.workers[(lo + b) % n].reduce_firsts.options(num_returns=n).remote(
            n, *(m[b] for m in mapped)) for b in range(hi - lo)]
        ray.get([w.take_firsts.remote(*(r[k] for r in reduced))
                 for k, w in enumerate(self.workers)])
        del mapped, reduced  # this wave's objects can go before the next is made

    def close(self) -> None:
        if not self.on_ray:
            for w in self.workers:
                w.close()
            return
        import ray

        try:  # an actor that died (the error being raised now) has nothing left to close
            ray.get([w.close.remote() for w in self.workers])
        except Exception:  # noqa: BLE001 - the selection's own error is the one to report
            pass
        finally:
            for w in self.workers:
                ray.kill(w)


def top_fraction_value(workers: Workers, column: str, where: str,
                       fraction: float) -> float | None:
    """The score at 0-based position int(N·f) of the descending order (DataComp), N = the rows
    with a score among ``where``; None when there is none."""
    ranges = workers.call("value_range", column, where)
    total = sum(r[0] for r in ranges)
    if total == 0:
        return None
    k = min(math.floor(total * fraction) + 1, total)  # 1-based rank, descending
    bracket = Bracket(min(r[1] for r in ranges), max(r[2] for r in ranges))
    above, inside = 0, total
    for _round in range(64):
        if bracket.lo == bracket.hi:
            return bracket.lo
        if inside <= GATHER_MAX:
            values = np.sort(np.concatenate(workers.call("values_in", column, where, bracket)))
            return float(values[::-1][k - above - 1])
        edges = np.linspace(bracket.lo, bracket.hi, BUCKETS + 1)
        edges[-1] = bracket.hi
        counts = np.sum(workers.call("bucket_counts", column, where, bracket, edges), axis=0)
        cum = above + np.cumsum(counts[::-1])  # from the top bucket down
        j = BUCKETS - 1 - int(np.searchsorted(cum, k))  # the bucket holding rank k
        above_j = above + int(counts[j + 1:].sum())
        last = j == BUCKETS - 1
        nxt = Bracket(float(edges[j]), float(edges[j + 1]) if not last else bracket.hi,
                      bracket.closed if last else False)
        if nxt == bracket:  # cannot narrow (adjacent floats): gather what is left
            inside = 0
            continue
        bracket, above, inside = nxt, above_j, int(counts[j])
    raise AssertionError("top_fraction: the bracket did not narrow")  # pragma: no cover


def run_steps(workers: Workers, steps: Sequence[Step], ctx: SelectContext,
              timed: Callable[[str], Any], say: Callable[[str], None],
              counting: bool) -> tuple[list[str], dict[str, str]]:
    """Every step on the partitions, in order (see ``curate.select.selection.select``): the
    reasons in funnel order and the stage of each."""
    from curate.stages.exact_dedup import _BY
    from curate.stages.top_fraction import TopFraction

    order: list[str] = []
    stage_of: dict[str, str] = {"duplicate_uid": "uid"}
    left = sum(workers.call("kept")) if counting else 0
    with timed("duplicate_uid"):
        workers.first_in_pool_order("uid", "TRUE", "duplicate_uid", False)
    order.append("duplicate_uid")
    with timed("errors"):
        failed = sum(workers.call("drop", "'error:' || error_stage", "status <> 'ok'"))
    if counting:
        left = sum(workers.call("kept"))
        say(f"selecting: {failed} samples failed to read or score, {left} left")
    for i, step in enumerate(steps):
        st = step.stage
        n = 0
        if isinstance(st, TopFraction):
            prm = st.params
            with timed(st.reason):
                where = "reason IS NULL" if prm.over == "kept" else "TRUE"  # type: ignore[attr-defined]
                v = top_fraction_value(workers, prm.column, where,  # type: ignore[attr-defined]
                                       prm.fraction)  # type: ignore[attr-defined]
                bound = "NULL" if v is None else f"CAST({literal(repr(v))} AS DOUBLE)"
                n = sum(workers.call("drop", literal(st.reason), f"NOT coalesce(("
                                     f"{ident(prm.column)} >= {bound})::BOOLEAN, FALSE)"))  # type: ignore[attr-defined]
            order.append(st.reason)
            stage_of[st.reason] = st.name
            what = f"rule {st.name}"
        elif isinstance(st, Rule):
            with timed(st.reason):
                n = sum(workers.call("rule", i))
            order.append(st.reason)
            stage_of[st.reason] = st.name
            what = f"rule {st.name}"
        else:
            sel: Selector = st  # type: ignore[assignment]
            say(f"selecting: step {i + 1}/{len(steps)} selector {sel.name} on {left} samples "
                "...")
            with timed(sel.name):
                if sel.name == "exact_dedup":
                    for by in sel.params.by:  # type: ignore[attr-defined]
                        column, reason = _BY[by]
                        col = ident(column)
                        n += workers.first_in_pool_order(col, f"reason IS NULL AND {col} IS NOT "
                                                         "NULL", reason, True)
                elif sel.name == "metaclip_balance":
                    merge = sel.merge  # type: ignore[attr-defined]
                    counted = workers.fold("metaclip_count", (i,), merge)
                    plan = sel.plan([counted], ctx,  # type: ignore[attr-defined]
                                    lambda rows_in, i=i: workers.call("metaclip_sample", i,
                                                                      rows_in))
                    # the partitions need p only (not the entry names)
                    drawn = workers.fold("metaclip_draw", (i, {"p": plan["p"],
                                                               "nested": plan["nested"]}), merge)
                    sel.finish([drawn], plan, ctx)  # type: ignore[attr-defined]
                    n = left - drawn["rows_kept"] if counting else 0
                elif sel.name == "metaclip2_balance":
                    merge = sel.merge  # type: ignore[attr-defined]
                    counted = workers.fold("metaclip2_count", (i,), merge)
                    plan = sel.plan([counted], ctx)  # type: ignore[attr-defined]
                    drawn = workers.fold("metaclip2_draw", (i, {"probs": plan["probs"]}), merge)
                    sel.finish([drawn], plan, ctx)  # type: ignore[attr-defined]
                    n = left - drawn["rows_kept"] if counting else 0
                elif sel.name == "centroid_target":
                    ids, figures = sel.target_ids()  # type: ignore[attr-defined]
                    sel.finish(ctx, figures,  # type: ignore[attr-defined]
                               sum(workers.call("centroid_drop", i, ids)))
                    n = left - sum(workers.call("kept")) if counting else 0
                else:  # pragma: no cover - excluded by unsupported()
                    raise CurateError(f"selector {sel.name} has no partitioned form")
            order.extend(sel.reasons())
            stage_of.update({r: sel.name for r in sel.reasons()})
            what = f"selector {sel.name}"
        left -= n
        say(f"selecting: step {i + 1}/{len(steps)} {st.label} ({what}): dropped {n}, "
            f"{left} left")
    return order, stage_of


def write_manifest(workers: Workers, directory: Path) -> None:
    """Each partition writes its part of the manifest dataset into ``directory``, at once:
    nothing passes through the driver."""
    workers.call_each("write_manifest", [(str(directory), k, workers.n)
                                         for k in range(workers.n)])


def _peak_rss_gib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


def cpu_count() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
               else (os.cpu_count() or 1))
