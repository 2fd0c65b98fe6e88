"""The pool a selection reads: a store's shards joined with the scorer versions it selects on.

``PoolSource.of(store, versions)`` checks that every shard of the pool has every scorer's
columns (a selection never computes, so anything missing is an error that names the scorer
and the command that computes it). The pool is the reader's columns, then each scorer's,
joined by position: every file of a shard has one row per sample, in shard order. A sample's
``status``, ``error_stage`` and ``error`` are its first failure in the order read (or
download), then the scorers in selection order (for a selection that names no scorers, the
store's canonical order: by label, each after the scorers it reads, whatever the order in
which they were scored). ``files()`` gives the files in pool order;
selection reads them with DuckDB (``curate.select.selection``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pyarrow as pa

from curate.errors import CurateError, ShardFailed
from curate.io.rundir import lock_holder
from curate.schema import SAMPLE_COLUMNS
from curate.store.embeddings import SidecarReader
from curate.store.store import PoolShard, Store, Version
from curate.store.verify import Damage, ScorerFiles, ShardFiles, damage_many, repair_hint, summary


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
        running = _scoring_now(store)
        wait = "wait for that pass to end, then select"
        if not store.exists() or meta.reader is None:
            raise CurateError(f"{store.location} is not a scored store (no store.json){running}",
                              wait if running else
                              "score a pool into it first: curate score PIPELINE.yaml --store "
                              f"{store.location}")
        shards = list(pool) if pool is not None else store.pool()
        if not shards:
            raise CurateError(f"the store {store.location} holds no scored pool: its first "
                              f"scoring pass has not finished{running}",
                              wait if running else
                              "run the same `curate score` (or `curate run`) command again: "
                              "it resumes, keeping the shards already scored")
        failed = [s for s in shards if s.status == "failed" or s.digest is None]
        if failed:
            names = ", ".join(s.shard for s in failed[:5]) + (
                f" and {len(failed) - 5} more" if len(failed) > 5 else "")
            raise ShardFailed(f"{len(failed)} of {len(shards)} shards of the pool were not "
                              f"scored: {names}{running}",
                              wait if running else "score the pool again (the same "
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
        damage = self.damage()
        if damage:
            raise CurateError(
                f"{len(damage)} file{'s' if len(damage) > 1 else ''} of the store "
                f"{'are' if len(damage) > 1 else 'is'} not what "
                f"{'their names say' if len(damage) > 1 else 'its name says'}: "
                f"{summary(damage, 2)}",
                repair_hint(self.store.location))

    def damage(self, deep: bool = False) -> list[Damage]:
        """The pool's files that fail their identity check (``curate.store.verify``)."""
        scorers = tuple(ScorerFiles(v.label, v.version, dict(v.sidecars))
                        for v in self.versions)
        return damage_many(self.store, self.reader, [
            ShardFiles(s.shard, s.digest, True, scorers, s.samples)
            for s in self.shards if s.digest is not None], deep)

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

    def files(self) -> tuple[list[str], dict[str, list[str]]]:
        """The base files of the pool's shards and, per selected scorer label, its files: in
        pool order, as DuckDB reads them (local paths, or URLs of the store's filesystem)."""
        def where(name: str) -> str:
            path = self.store.dir.path(name)
            if self.store.dir.local:
                return path
            proto = self.store.dir.fs.protocol
            return f"{proto if isinstance(proto, str) else proto[0]}://{path}"

        base = [where(Store.base_name(self.reader, s.key, s.digest)) for s in self.shards
                if s.digest is not None]
        scores = {v.label: [where(Store.score_name(v.label, v.version, s.key, s.digest))
                            for s in self.shards if s.digest is not None]
                  for v in self.versions}
        return base, scores

    def row_counts(self, threads: int = 8) -> list[int]:
        """Rows of each shard's base file (their footers, read on threads, once)."""
        from concurrent.futures import ThreadPoolExecutor

        import pyarrow.parquet as pq

        cached: list[int] | None = getattr(self, "_row_counts", None)
        if cached is not None:
            return cached

        def rows(s: PoolShard) -> int:
            assert s.digest is not None
            with self.store.dir.open(Store.base_name(self.reader, s.key, s.digest)) as f:
                return int(pq.read_metadata(f).num_rows)

        with ThreadPoolExecutor(max_workers=threads) as pool:
            self._row_counts = list(pool.map(rows, self.shards))
        return self._row_counts


def _scoring_now(store: Store) -> str:
    """``; a scoring pass is running into it now (pid ...: curate score ...)`` when one holds
    the store's lock, else ''."""
    root = store.local_root
    holder = lock_holder(root) if root is not None else None
    return f"; a scoring pass is running into it now ({holder})" if holder else ""
