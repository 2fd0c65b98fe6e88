"""The pool a selection reads: a store's shards joined with the scorer versions it selects on.

``PoolSource.of(store, versions)`` checks that every shard of the pool has every scorer's
columns (a selection never computes, so anything missing is an error that names the scorer
and the command that computes it). ``batches()`` streams the pool in pool order, one shard at
a time: the reader's columns, then each scorer's, joined by position (every file of a shard
has one row per sample, in shard order). A sample's ``status``, ``error_stage`` and ``error``
are its first failure in the order read (or download), then the scorers in selection order.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from curate.errors import CurateError, ShardFailed
from curate.schema import SAMPLE_COLUMNS, STATUS_ERROR, STATUS_OK
from curate.store.embeddings import SidecarReader
from curate.store.store import ERROR, STATUS, PoolShard, Store, Version


@dataclass
class PoolSource:
    store: Store
    reader: str
    shards: list[PoolShard]  # pool order
    versions: list[Version]  # selection order (the order of error stages)

    @classmethod
    def of(cls, store: Store, versions: Sequence[Version] | None = None,
           pool: Sequence[PoolShard] | None = None) -> PoolSource:
        """The store's pool as last scored, with ``versions`` (default: the current version
        of every stored scorer)."""
        meta = store.meta()
        if not store.exists() or meta.reader is None:
            raise CurateError(f"{store.location} is not a scored store (no store.json)",
                              "score a pool into it first: curate score PIPELINE.yaml --store "
                              f"{store.location}")
        shards = list(pool) if pool is not None else store.pool()
        if not shards:
            raise CurateError(f"the store {store.location} holds no scored pool")
        failed = [s for s in shards if s.status == "failed" or s.digest is None]
        if failed:
            names = ", ".join(s.shard for s in failed[:5]) + (
                f" and {len(failed) - 5} more" if len(failed) > 5 else "")
            raise ShardFailed(f"{len(failed)} of {len(shards)} shards of the pool were not "
                              f"scored: {names}", "score the pool again (the same "
                              "`curate run` or `curate score` command): only they are redone")
        chosen = list(versions) if versions is not None else meta.current()
        source = cls(store, meta.reader, shards, chosen)
        source._check_complete()
        return source

    def _check_complete(self) -> None:
        need = {s.key: s.digest for s in self.shards}
        base = self.store.stored(f"base/{self.reader}")
        missing = [k for k, d in need.items() if d not in base.get(k, set())]
        if missing:
            raise CurateError(f"the store has no reader output for {len(missing)} shards of "
                              f"the pool (e.g. {missing[0]})", "score the pool again into "
                              "this store")
        for v in self.versions:
            have = self.store.stored(f"scores/{v.label}/{v.version}")
            missing = [k for k, d in need.items() if d not in have.get(k, set())]
            if missing:
                raise CurateError(
                    f"scorer {v.label} (version {v.version}) has no scores for "
                    f"{len(missing)} of {len(need)} shards of the pool",
                    "score the pool with it (curate score PIPELINE.yaml --store "
                    f"{self.store.location}, or curate run)")

    def columns(self) -> dict[str, pa.DataType]:
        """Every column of the pool table, in order (embeddings are not columns)."""
        cols = dict(SAMPLE_COLUMNS)
        owner: dict[str, str] = dict.fromkeys(cols, "the shard reader")
        for v in self.versions:
            for f in v.schema:
                if f.name in cols:
                    raise CurateError(f"column {f.name!r} is stored by both {owner[f.name]} "
                                      f"and {v.label}", "select on one of them (a `score:` "
                                      "list in the selection names the scorers it uses)")
                cols[f.name] = f.type
                owner[f.name] = v.label
        return cols

    def sidecar_columns(self) -> dict[str, tuple[str, str]]:
        return {c: (v.label, v.version) for v in self.versions for c in v.sidecars}

    def error_stages(self) -> list[str]:
        return ["download", "read"] + [v.label for v in self.versions]

    def sidecars(self) -> SidecarReader:
        return SidecarReader(self.store, self.sidecar_columns(),
                             {s.shard: s.digest for s in self.shards if s.digest})

    def samples(self) -> int:
        return sum(s.samples or 0 for s in self.shards)

    def schema(self) -> pa.Schema:
        return pa.schema({"_row": pa.int64(), **self.columns()})

    def batches(self, prefetch: int = 8) -> Iterator[pa.RecordBatch]:
        """The pool in pool order, one record batch per shard, with ``_row`` (1-based). The
        next ``prefetch`` shards' files are read ahead on threads (Parquet reads release the
        GIL), so a pool of many small shards is not read one file at a time."""
        from collections import deque
        from concurrent.futures import ThreadPoolExecutor

        schema = self.schema()
        offset = 0
        with ThreadPoolExecutor(max_workers=max(1, prefetch),
                                thread_name_prefix="pool-read") as pool:
            ahead: deque[Any] = deque()
            shards = iter(self.shards)
            for s in shards:
                ahead.append(pool.submit(self._shard_table, s))
                if len(ahead) >= prefetch:
                    break
            while ahead:
                table = ahead.popleft().result()
                nxt = next(shards, None)
                if nxt is not None:
                    ahead.append(pool.submit(self._shard_table, nxt))
                n = table.num_rows
                table = table.add_column(0, "_row", pa.array(range(offset + 1, offset + n + 1),
                                                             pa.int64())).cast(schema)
                offset += n
                yield from table.to_batches()

    def _shard_table(self, s: PoolShard) -> pa.Table:
        """One shard's columns: the reader's, its combined status, then every scorer's."""
        sample = pa.schema(SAMPLE_COLUMNS)
        assert s.digest is not None
        base = self.store.dir.read_parquet(Store.base_name(self.reader, s.key, s.digest))
        base = base.select(sample.names).cast(sample)
        n = base.num_rows
        status, stage, error = base.column("status"), base.column("error_stage"), \
            base.column("error")
        arrays: dict[str, Any] = {}
        for v in self.versions:
            t = self.store.dir.read_parquet(Store.score_name(v.label, v.version, s.key,
                                                             s.digest))
            if t.num_rows != n:
                raise CurateError(f"the store is inconsistent: {v.label} has {t.num_rows} "
                                  f"rows for shard {s.shard}, the reader {n}",
                                  "score the pool into a new store")
            fails = pc.and_(pc.equal(status, STATUS_OK), pc.equal(t.column(STATUS), STATUS_ERROR))
            status = pc.if_else(fails, STATUS_ERROR, status)
            stage = pc.if_else(fails, v.label, stage)
            error = pc.if_else(fails, t.column(ERROR), error)
            for f in v.schema:
                arrays[f.name] = t.column(f.name)
        cols: dict[str, Any] = {name: base.column(name) for name in sample.names}
        cols["status"], cols["error_stage"], cols["error"] = status, stage, error
        cols.update(arrays)
        return pa.table(cols)

    def stream(self) -> pa.RecordBatchReader:
        return pa.RecordBatchReader.from_batches(self.schema(), self.batches())
