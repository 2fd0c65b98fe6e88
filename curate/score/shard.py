"""Scoring one shard: read it, run every scorer over its batches, write its signals Parquet.

This is the unit of work, retry and resume. ``compute_shard`` is plain Python (``score_shard``
computes and writes; tests call it directly); the runner calls it inside Ray actors
(``ShardWorker``) that hold the set-up scorers, and the driver writes what they return, so
workers never need the run directory. A shard's signals file is written atomically and
carries, in its Parquet metadata, the fingerprint of the scorers that made it and the shard's
counters: a rerun skips every shard whose file has the current fingerprint.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curate.io.atomic import atomic_path
from curate.io.shards import MAX_MEMBER_BYTES, ShardReader, ShardRef
from curate.schema import SAMPLE_COLUMNS, SHARD_SCHEMA, STATUS_ERROR, STATUS_OK
from curate.stages.base import BatchErrors, Scorer, StageCounters, run_scorer

FINGERPRINT_KEY = b"curate.fingerprint"
SUMMARY_KEY = b"curate.shard_summary"


def scoring_fingerprint(scorers: list[Scorer], max_member_bytes: int = MAX_MEMBER_BYTES) -> str:
    """Identifies what the signals of a shard were computed with: the scorers and, when it is
    not the default, the reader's member size limit."""
    parts: list[object] = [s.fingerprint() for s in scorers]
    if max_member_bytes != MAX_MEMBER_BYTES:
        parts.append({"max_member_bytes": max_member_bytes})
    blob = json.dumps(parts)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def signals_path(run_dir: Path, shard_id: str) -> Path:
    """``signals/<shard id without extension, / replaced by __>.parquet``."""
    stem = shard_id[:-4] if shard_id.endswith(".tar") else shard_id
    return run_dir / "signals" / (stem.replace("/", "__") + ".parquet")


def signals_schema(scorers: list[Scorer]) -> pa.Schema:
    cols = dict(SAMPLE_COLUMNS)
    for s in scorers:
        side = set(s.sidecars())
        cols.update({c: t for c, t in s.outputs().items() if c not in side})
    return pa.schema(cols)


def sidecar_path(signals: Path, column: str) -> Path:
    """Where the sidecar array ``column`` of the shard whose signals are ``signals`` lives:
    ``RUN/embeddings/<column>/<shard>.npy`` (memory-map it with ``np.load(mmap_mode="r")``)."""
    return signals.parent.parent / "embeddings" / column / (signals.stem + ".npy")


def _as_matrix(chunks: list[pa.Array], dtype: pa.DataType) -> np.ndarray:
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


@dataclass
class ShardSummary:
    """What happened to one shard (stored in its signals file; one row of shards.parquet)."""

    shard: str
    url: str
    status: str  # done | truncated
    samples: int
    errors: int
    read_error: str | None
    seconds: float
    node: str | None = None
    stages: dict[str, dict[str, float | int]] = field(default_factory=dict)
    attempts: int = 1
    resumed: bool = False

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> ShardSummary:
        return cls(**json.loads(text))


@dataclass
class ScoredShard:
    """A scored shard in memory: its signals table (fingerprint and summary in the schema
    metadata), its sidecar arrays and its summary. Workers return it; the driver writes it, so
    the run directory only has to exist on the driver's machine."""

    table: pa.Table
    sidecars: dict[str, np.ndarray]
    summary: ShardSummary


def compute_shard(ref: ShardRef, scorers: list[Scorer], fingerprint: str,
                  batch_size: int = 256, node: str | None = None,
                  max_member_bytes: int = MAX_MEMBER_BYTES) -> ScoredShard:
    """Score every sample of ``ref`` with ``scorers`` (already set up); writes nothing."""
    t0 = time.perf_counter()
    reader = ShardReader(ref, batch_size=batch_size, max_member_bytes=max_member_bytes)
    counters: dict[str, StageCounters] = {}
    schema = signals_schema(scorers)
    side_types = {c: s.outputs()[c] for s in scorers for c in s.sidecars()}
    side_parts: dict[str, list[pa.Array]] = {c: [] for c in side_types}
    parts: list[pa.Table] = []
    for batch in reader:
        errors = BatchErrors.from_batch(batch)
        errors.counters = counters
        for scorer in scorers:
            batch = run_scorer(scorer, batch, errors)
        status = [STATUS_OK if s is None else STATUS_ERROR for s in errors.stage]
        batch = batch.set_column(batch.schema.get_field_index("status"), "status",
                                 pa.array(status, pa.string()))
        batch = batch.set_column(batch.schema.get_field_index("error_stage"), "error_stage",
                                 pa.array(errors.stage, pa.string()))
        batch = batch.set_column(batch.schema.get_field_index("error"), "error",
                                 pa.array(errors.message, pa.string()))
        for c in side_types:
            side_parts[c].append(batch.column(c))
        parts.append(batch.select(schema.names).cast(schema))
    table = pa.concat_tables(parts) if parts else schema.empty_table()
    n_errors = int(pc.sum(pc.equal(table.column("status"), STATUS_ERROR)).as_py() or 0) \
        if table.num_rows else 0
    summary = ShardSummary(
        shard=ref.shard_id, url=ref.url,
        status="truncated" if reader.report.truncated else "done",
        samples=table.num_rows, errors=n_errors, read_error=reader.report.truncated,
        seconds=round(time.perf_counter() - t0, 6), node=node,
        stages={"read": {"samples": reader.report.samples,
                         "errors": reader.report.read_errors, "skipped": 0, "seconds": 0.0},
                **{k: v.as_dict() for k, v in counters.items()}},
    )
    meta = {FINGERPRINT_KEY: fingerprint.encode(), SUMMARY_KEY: summary.to_json().encode()}
    return ScoredShard(table=table.replace_schema_metadata(meta),
                       sidecars={c: _as_matrix(side_parts[c], t) for c, t in side_types.items()},
                       summary=summary)


def write_scored(scored: ScoredShard, dest: Path) -> None:
    """Write a scored shard's sidecars, then its signals file ``dest`` (atomically, in that
    order: the signals file marks the shard done)."""
    for c, matrix in scored.sidecars.items():
        with atomic_path(sidecar_path(dest, c)) as tmp, open(tmp, "wb") as f:
            np.save(f, matrix)
    with atomic_path(dest) as tmp:
        pq.write_table(scored.table, tmp, compression="zstd")


def score_shard(ref: ShardRef, scorers: list[Scorer], dest: Path, fingerprint: str,
                batch_size: int = 256, node: str | None = None) -> ShardSummary:
    """Score every sample of ``ref`` with ``scorers`` (already set up) and write ``dest``."""
    scored = compute_shard(ref, scorers, fingerprint, batch_size, node)
    write_scored(scored, dest)
    return scored.summary


def completed_summary(dest: Path, fingerprint: str) -> ShardSummary | None:
    """The summary of a finished shard, or None if ``dest`` is absent or from other scorers."""
    if not dest.is_file():
        return None
    try:
        meta = pq.read_schema(dest).metadata or {}
    except (OSError, pa.ArrowInvalid):
        return None  # unreadable: recompute it
    if meta.get(FINGERPRINT_KEY) != fingerprint.encode() or SUMMARY_KEY not in meta:
        return None
    summary = ShardSummary.from_json(meta[SUMMARY_KEY])
    summary.resumed = True
    return summary


class ShardWorker:
    """Holds set-up scorers for the life of a Ray actor and scores shards on request."""

    def __init__(self, scorers: list[Scorer], fingerprint: str, batch_size: int,
                 device: str = "cpu", max_member_bytes: int = MAX_MEMBER_BYTES) -> None:
        self.scorers = scorers
        self.fingerprint = fingerprint
        self.batch_size = batch_size
        self.max_member_bytes = max_member_bytes
        self.device = device
        self._ready = False

    def setup(self) -> str:
        """Load every scorer's models; returns the Ray node id this worker runs on."""
        for s in self.scorers:
            s.device = self.device
            s.setup()
        self._ready = True
        return self.node()

    def node(self) -> str:
        try:
            import ray

            return str(ray.get_runtime_context().get_node_id())
        except Exception:  # noqa: BLE001 - outside Ray
            return "local"

    def score(self, ref: ShardRef) -> ScoredShard:
        """Score one shard and return it (the driver writes it)."""
        if not self._ready:
            self.setup()
        return compute_shard(ref, self.scorers, self.fingerprint, self.batch_size,
                             node=self.node(), max_member_bytes=self.max_member_bytes)


def shard_summaries_table(summaries: list[ShardSummary],
                          failed: dict[str, tuple[ShardRef, int, str]] | None = None,
                          ) -> pa.Table:
    """One row per shard: the scored ones, then the failed ones (``failed``: shard id →
    (ref, attempts, last error)) with status ``failed``."""
    rows: list[dict[str, Any]] = []
    for s in summaries:
        rows.append({"shard": s.shard, "url": s.url, "status": s.status, "samples": s.samples,
                     "errors": s.errors, "read_error": s.read_error, "attempts": s.attempts,
                     "seconds": s.seconds, "resumed": s.resumed, "node": s.node,
                     "error": None})
    for shard, (ref, attempts, error) in (failed or {}).items():
        rows.append({"shard": shard, "url": ref.url, "status": "failed", "samples": None,
                     "errors": None, "read_error": None, "attempts": attempts, "seconds": None,
                     "resumed": False, "node": None, "error": error})
    return pa.Table.from_pylist(rows, schema=SHARD_SCHEMA)
