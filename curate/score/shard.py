"""Scoring one shard: the unit of work, retry and resume.

``compute_shard`` runs what a shard's plan asks for and writes nothing: the reader (when the
shard is new or changed, or a scorer needs the raw members) and the scorers that must compute,
in pipeline order, batch by batch. A scorer that reads another scorer's outputs gets them from
the same pass when that scorer computes too, else from the store (``StoredInputs``). Each
scorer runs on the samples the reader read and whose inputs succeeded; the rest are
``skipped``. ``commit`` writes the results into the store (embeddings first, then each
Parquet); a worker that sees the store calls it itself, otherwise the driver does.

When the reader runs on a shard whose stored base is kept, its samples must be the stored
ones (same uids, keys, positions and image hashes): otherwise the shard changed under the
run, and the task fails (``ShardChanged``) rather than mix two versions of it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate.errors import CurateError
from curate.io.shards import MAX_MEMBER_BYTES, ShardReader, ShardRef
from curate.schema import BATCH_ONLY_COLUMNS, SAMPLE_COLUMNS, STATUS_ERROR, STATUS_OK
from curate.score.plan import ScorerVersion
from curate.stages.base import BatchErrors, StageCounters, run_scorer
from curate.store.store import (
    ERROR,
    KEY_DIGEST,
    KEY_INFO,
    KEY_SHARD,
    KEY_SIDECARS,
    KEY_STAMP,
    KEY_VERSION,
    STATUS,
    Store,
    shard_key,
)
from curate.store.verify import sidecar_record

SKIPPED = "skipped"
_SKIP = "(skipped)"  # marks a row a scorer must not score (its inputs failed)
SAMPLE_SCHEMA = pa.schema(SAMPLE_COLUMNS)
# Columns the driver and verification compare between a fresh read and the stored base.
IDENTITY_COLUMNS = ("uid", "key", "index", "image_member", "image_sha256", "status")


class ShardChanged(CurateError):
    """An input shard's bytes are not the ones planned for (it changed during the run)."""


@dataclass
class ShardTask:
    """One shard's work: the plan's decisions, plus the stored inputs when the worker cannot
    read the store itself."""

    ref: ShardRef
    digest: str | None
    stamp: str
    read_base: bool
    compute: list[str]
    inputs: StoredInputs | None = None

    @property
    def key(self) -> str:
        return shard_key(self.ref.shard_id)


@dataclass
class StoredInputs:
    """What a task reads from the store: the base (when the reader does not run, or to check
    a fresh read against), the columns (and ``__status``) of the scorers it reads but does not
    compute, and their embeddings."""

    base: pa.Table | None = None
    columns: dict[str, pa.Table] = field(default_factory=dict)  # label -> table
    sidecars: dict[str, np.ndarray] = field(default_factory=dict)  # column -> float16 matrix

    def nbytes(self) -> int:
        n = self.base.nbytes if self.base is not None else 0
        return n + sum(t.nbytes for t in self.columns.values()) + sum(
            m.nbytes for m in self.sidecars.values())


@dataclass
class ScorerResult:
    label: str
    version: str
    table: pa.Table  # __status, __error, stored columns; metadata: version, digest, counters
    sidecars: dict[str, np.ndarray]
    counters: StageCounters


@dataclass
class ShardResult:
    """A scored shard in memory, or (once committed by the worker) its summary only."""

    shard: str
    digest: str
    stamp: str
    samples: int
    read: dict[str, Any]  # the read report: samples, read_errors, truncated, ...
    base: pa.Table | None  # when the reader ran for a new or changed shard
    scorers: list[ScorerResult]
    seconds: float
    node: str | None = None
    committed: bool = False
    counters: dict[str, dict[str, float | int]] = field(default_factory=dict)

    def summary(self) -> ShardResult:
        """The same result without its data (what a worker returns once it has committed)."""
        counters = {f"{s.label}@{s.version}": s.counters.as_dict() for s in self.scorers}
        return ShardResult(self.shard, self.digest, self.stamp, self.samples, self.read, None,
                           [], self.seconds, self.node, True, counters)

    def stage_counters(self) -> dict[str, dict[str, float | int]]:
        """label -> counters of the scorers this result computed."""
        return {k.split("@")[0]: v for k, v in self.version_counters_flat().items()}

    def version_counters_flat(self) -> dict[str, dict[str, float | int]]:
        if self.committed:
            return dict(self.counters)
        return {f"{s.label}@{s.version}": s.counters.as_dict() for s in self.scorers}

    def version_counters(self) -> dict[tuple[str, str], dict[str, float | int]]:
        """(label, version) -> counters of the scorers this result computed."""
        return {tuple(k.split("@", 1)): v  # type: ignore[misc]
                for k, v in self.version_counters_flat().items()}

    def nbytes(self) -> int:
        n = self.base.nbytes if self.base is not None else 0
        return n + sum(s.table.nbytes + sum(m.nbytes for m in s.sidecars.values())
                       for s in self.scorers)


def needed_inputs(task: ShardTask, versions: Sequence[ScorerVersion],
                  ) -> tuple[bool, dict[str, list[str]], list[tuple[str, str]]]:
    """(the stored base is needed, label -> stored columns to read, (label, embedding column)
    to read) for ``task``."""
    by_label = {v.label: v for v in versions}
    producer = {c: v.label for v in versions for c in (*v.stored, *v.sidecars)}
    columns: dict[str, list[str]] = {}
    sidecars: list[tuple[str, str]] = []
    for label in task.compute:
        for c in by_label[label].scorer.inputs():
            up = producer.get(c)
            if up is None or up in task.compute:
                continue
            if c in by_label[up].sidecars:
                if (up, c) not in sidecars:
                    sidecars.append((up, c))
                columns.setdefault(up, [])
            elif c not in columns.setdefault(up, []):
                columns[up].append(c)
    return not task.read_base, columns, sidecars


def load_inputs(store: Store, task: ShardTask, versions: Sequence[ScorerVersion], reader: str,
                ) -> StoredInputs:
    """Read what ``task`` needs from the store."""
    assert task.digest is not None or task.read_base
    by_label = {v.label: v for v in versions}
    need_base, columns, sidecars = needed_inputs(task, versions)
    out = StoredInputs()
    if need_base:
        assert task.digest is not None
        out.base = store.dir.read_parquet(Store.base_name(reader, task.key, task.digest))
    for label, cols in columns.items():
        v = by_label[label]
        assert task.digest is not None
        out.columns[label] = store.dir.read_parquet(
            Store.score_name(label, v.version, task.key, task.digest), columns=[STATUS, *cols])
    for label, col in sidecars:
        v = by_label[label]
        assert task.digest is not None
        out.sidecars[col] = np.asarray(store.dir.read_array(
            Store.sidecar_name(label, v.version, col, task.key, task.digest), mmap=False))
    return out


def _as_matrix(chunks: list[Any], dtype: pa.DataType) -> np.ndarray:
    """Fixed-size-list chunks → float16 [n, d], NaN rows where the value is null."""
    d = dtype.list_size  # type: ignore[attr-defined]
    arr = pa.concat_arrays([c.combine_chunks() if isinstance(c, pa.ChunkedArray) else c
                            for c in chunks]) if chunks else pa.array([], type=dtype)
    flat = arr.values.slice(arr.offset * d, len(arr) * d)
    out = flat.to_numpy(zero_copy_only=False).astype(np.float16).reshape(len(arr), d)
    nulls = arr.is_null().to_numpy(zero_copy_only=False)
    if nulls.any():
        out = out.copy()
        out[nulls] = np.nan
    return out


def _from_matrix(mat: np.ndarray, dtype: pa.DataType) -> pa.Array:
    """float16 [n, d] → a fixed-size-list array of ``dtype``, null where a row is NaN."""
    d = dtype.list_size  # type: ignore[attr-defined]
    values = pa.array(np.ascontiguousarray(mat, dtype=np.float16).reshape(-1))
    mask = np.isnan(mat).all(axis=1) if len(mat) and d else np.zeros(len(mat), dtype=bool)
    arr = pa.FixedSizeListArray.from_arrays(values, d, mask=pa.array(mask))
    return arr.cast(dtype) if arr.type != dtype else arr


def _stored_batches(base: pa.Table, batch_size: int) -> Iterator[pa.Table]:
    """The stored base as reader batches (no members: no scorer that runs needs them)."""
    n = base.num_rows
    extra = {c: pa.nulls(0, t) for c, t in BATCH_ONLY_COLUMNS.items()}
    for start in range(0, n, batch_size):
        sl = base.slice(start, batch_size).select(SAMPLE_SCHEMA.names).cast(SAMPLE_SCHEMA)
        for c, empty in extra.items():
            sl = sl.append_column(c, pa.nulls(sl.num_rows, empty.type))
        yield sl


def compute_shard(task: ShardTask, versions: Sequence[ScorerVersion], reader_fp: str,
                  inputs: StoredInputs, batch_size: int = 256,
                  max_member_bytes: int = MAX_MEMBER_BYTES, node: str | None = None,
                  ) -> ShardResult:
    """Run ``task`` (see the module docs); writes nothing. Scorers must be set up."""
    t0 = time.perf_counter()
    compute = [v for v in versions if v.label in task.compute]
    read_tar = task.read_base or any(v.needs_members for v in compute)
    if not read_tar and inputs.base is None:
        raise CurateError(f"shard {task.ref.shard_id}: its stored base is missing")
    shard_reader = ShardReader(task.ref, batch_size=batch_size,
                               max_member_bytes=max_member_bytes) if read_tar else None
    batches = iter(shard_reader) if shard_reader is not None else _stored_batches(
        inputs.base, batch_size)  # type: ignore[arg-type]
    counters: dict[str, StageCounters] = {}
    base_parts: list[pa.Table] = []
    parts: dict[str, list[pa.Table]] = {v.label: [] for v in compute}
    side_parts: dict[str, dict[str, list[np.ndarray]]] = {
        v.label: {c: [] for c in v.sidecars} for v in compute}
    statuses: dict[str, list[str]] = {v.label: [] for v in compute}
    messages: dict[str, list[str | None]] = {v.label: [] for v in compute}
    types = {c: t for v in versions for c, t in v.sidecars.items()}
    offset = 0
    for batch in batches:
        n = batch.num_rows
        if shard_reader is not None:
            base_parts.append(batch.select(SAMPLE_SCHEMA.names).cast(SAMPLE_SCHEMA))
        base_ok = [s == STATUS_OK for s in batch.column("status").to_pylist()]
        state: dict[str, list[str]] = {}
        for label, table in inputs.columns.items():
            sl = table.slice(offset, n)
            state[label] = sl.column(STATUS).to_pylist()
            for c in sl.column_names:
                if c != STATUS:
                    batch = batch.append_column(sl.schema.field(c), sl.column(c))
        for c, mat in inputs.sidecars.items():
            batch = batch.append_column(pa.field(c, types[c]),
                                        _from_matrix(mat[offset:offset + n], types[c]))
        for v in compute:
            skip = [not base_ok[i] or any(state[u][i] != STATUS_OK for u in v.reads)
                    for i in range(n)]
            errs = BatchErrors(stage=[_SKIP if k else None for k in skip], message=[None] * n,
                               counters=counters)
            batch = run_scorer(v.scorer, batch, errs)
            status = [SKIPPED if skip[i] else STATUS_ERROR if errs.stage[i] is not None
                      else STATUS_OK for i in range(n)]
            state[v.label] = status
            statuses[v.label].extend(status)
            messages[v.label].extend(None if skip[i] else errs.message[i] for i in range(n))
            for c in v.sidecars:
                side_parts[v.label][c].append(_as_matrix([batch.column(c)], v.sidecars[c]))
            parts[v.label].append(batch.select(list(v.stored)))
        offset += n
    stamp = task.stamp
    if shard_reader is not None:
        digest = shard_reader.digest
        assert digest is not None
        if task.digest is not None and digest != task.digest:
            raise ShardChanged(f"input shard {task.ref.url} changed during the run (its "
                               f"content digest is now {digest[:12]}…, it was planned as "
                               f"{task.digest[:12]}…)", "run the same command again: the "
                               "changed shard is scored anew")
        read = asdict(shard_reader.report)
    else:
        assert task.digest is not None
        digest = task.digest
        read = {}
    base_table: pa.Table | None = None
    if shard_reader is not None:
        base_table = pa.concat_tables(base_parts) if base_parts else SAMPLE_SCHEMA.empty_table()
        if not task.read_base:
            _check_same(task, base_table, inputs.base)
            base_table = None
    samples = base_table.num_rows if base_table is not None else (
        inputs.base.num_rows if inputs.base is not None else offset)
    if base_table is not None:
        base_table = base_table.replace_schema_metadata({
            KEY_DIGEST: digest.encode(), KEY_STAMP: stamp.encode(),
            KEY_SHARD: task.ref.shard_id.encode(),
            KEY_INFO: json.dumps({"read": read, "shard": task.ref.shard_id,
                                  "url": task.ref.url}).encode()})
    results: list[ScorerResult] = []
    for v in compute:
        c = counters.get(v.label, StageCounters())
        cols = {STATUS: pa.array(statuses[v.label], pa.string()),
                ERROR: pa.array(messages[v.label], pa.string())}
        stored = pa.concat_tables(parts[v.label]) if parts[v.label] else pa.schema(
            v.stored).empty_table()
        table = pa.table({**cols, **{name: stored.column(name) for name in v.stored}})
        sidecars = {col: (np.concatenate(ms) if ms else np.zeros(
            (0, v.sidecars[col].list_size), np.float16))  # type: ignore[attr-defined]
            for col, ms in side_parts[v.label].items()}
        table = table.replace_schema_metadata({
            KEY_VERSION: v.version.encode(), KEY_DIGEST: digest.encode(),
            KEY_SHARD: task.ref.shard_id.encode(),
            KEY_SIDECARS: json.dumps({col: sidecar_record(m) for col, m in sidecars.items()},
                                     sort_keys=True).encode(),
            KEY_INFO: json.dumps({"label": v.label, "counters": c.as_dict()}).encode()})
        results.append(ScorerResult(v.label, v.version, table, sidecars, c))
    return ShardResult(shard=task.ref.shard_id, digest=digest, stamp=stamp, samples=samples,
                       read=read, base=base_table, scorers=results,
                       seconds=round(time.perf_counter() - t0, 6), node=node)


def _check_same(task: ShardTask, fresh: pa.Table, stored: pa.Table | None) -> None:
    """A fresh read of a shard whose base is kept must find exactly the stored samples."""
    if stored is None:
        return
    same = fresh.num_rows == stored.num_rows and all(
        fresh.column(c).equals(stored.column(c).cast(fresh.schema.field(c).type))
        for c in IDENTITY_COLUMNS if c in stored.column_names)
    if not same:
        raise ShardChanged(f"input shard {task.ref.url} holds other samples than when it was "
                           "scored", "run the same command again: the changed shard is "
                           "scored anew")


def commit(store: Store, result: ShardResult, reader_fp: str) -> None:
    """Write a shard's results into the store: the base first (it records the shard's
    identity), then, per scorer, its embeddings and then its Parquet (which marks that
    scorer's work on the shard done)."""
    key = shard_key(result.shard)
    if result.base is not None:
        store.dir.write_parquet(Store.base_name(reader_fp, key, result.digest), result.base)
    for s in result.scorers:
        for col, mat in s.sidecars.items():
            store.dir.write_array(Store.sidecar_name(s.label, s.version, col, key,
                                                     result.digest), mat)
        store.dir.write_parquet(Store.score_name(s.label, s.version, key, result.digest),
                                s.table)


def error_count(table: pa.Table) -> int:
    return int(pc.sum(pc.equal(table.column(STATUS), STATUS_ERROR)).as_py() or 0) \
        if table.num_rows else 0
