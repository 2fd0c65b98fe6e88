"""Reading the embeddings that scorers store beside their columns.

A scorer's embedding column (e.g. ``clip_image_emb``) is one file per shard in the store,
``scores/<label>/<version>/<column>/<shard>.<digest>.npy``: float16 ``[samples in shard, dim]``,
row i = sample i of the shard, NaN rows where the sample was not scored. ``SidecarReader``
gathers the rows of any subset of the pool (given as shard ids and positions) into one float32
array. Local files are memory-mapped and only the wanted rows are read, so a selection never
loads the pool; files on an object store are fetched once each.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from curate.errors import CurateError
from curate.store.store import KEY_SIDECARS, Store, shard_key
from curate.store.verify import array_sha256, repair_hint


@dataclass
class SidecarReader:
    """The embeddings of one pool: ``columns`` maps an embedding column to the (label,
    version) that stores it, ``digests`` a shard id to its content digest."""

    store: Store
    columns: dict[str, tuple[str, str]]
    digests: dict[str, str]
    _checked: set[tuple[str, str]] = field(default_factory=set, repr=False)

    def name(self, column: str, shard_id: str) -> str:
        if column not in self.columns:
            raise CurateError(f"no stored scorer has the embeddings {column!r}",
                              f"stored embeddings: {', '.join(sorted(self.columns)) or 'none'}")
        label, version = self.columns[column]
        return Store.sidecar_name(label, version, column, shard_key(shard_id),
                                  self.digests[shard_id])

    def shard(self, column: str, shard_id: str) -> np.ndarray:
        """float16 ``[samples, dim]`` of one shard (memory-mapped when local), checked against
        the shape and SHA-256 its scorer recorded (once per file and reader)."""
        name = self.name(column, shard_id)
        try:
            mat = self.store.dir.read_array(name)
        except FileNotFoundError:
            raise CurateError(f"the store has no {column} embeddings for shard {shard_id} "
                              f"({self.store.location}/{name})",
                              "score the pool again into this store to recompute them"
                              ) from None
        except (OSError, ValueError, EOFError) as exc:
            raise self._damaged(name, f"is unreadable (truncated or not .npy: {exc})") from None
        if (column, shard_id) not in self._checked:
            problem = self._check(column, shard_id, mat)
            if problem is not None:
                raise self._damaged(name, problem)
            self._checked.add((column, shard_id))
        return mat

    def _check(self, column: str, shard_id: str, mat: np.ndarray) -> str | None:
        label, version = self.columns[column]
        digest = self.digests[shard_id]
        parquet = Store.score_name(label, version, shard_key(shard_id), digest)
        try:
            schema = self.store.dir.parquet_schema(parquet)
        except (OSError, ValueError, pa.ArrowException):
            return f"belongs to the unreadable scorer file {parquet}"
        try:
            rec = json.loads((schema.metadata or {}).get(KEY_SIDECARS, b"{}")).get(column)
        except (ValueError, AttributeError):
            rec = None
        if not rec:
            return None  # written by a curate that did not record it
        if mat.ndim != 2 or tuple(mat.shape) != (rec["rows"], rec["dim"]):
            return f"holds an array of shape {tuple(mat.shape)}, not {(rec['rows'], rec['dim'])}"
        if array_sha256(mat) != rec["sha256"]:
            return "does not hold the embeddings its scorer recorded (their SHA-256 differs)"
        return None

    def _damaged(self, name: str, problem: str) -> CurateError:
        return CurateError(f"store file {name} {problem}", repair_hint(self.store.location))

    def read_rows(self, column: str, shards: Sequence[str], indices: Sequence[int],
                  normalise: bool = True) -> np.ndarray:
        """float32 ``[len(shards), dim]``: the embedding of sample ``indices[k]`` of
        ``shards[k]``, L2-normalised unless ``normalise`` is false."""
        by_shard: dict[str, list[int]] = defaultdict(list)
        for k, sid in enumerate(shards):
            by_shard[sid].append(k)
        out: np.ndarray | None = None
        for sid, positions in by_shard.items():
            mat = self.shard(column, sid)
            rows = np.asarray([indices[k] for k in positions])
            if out is None:
                out = np.empty((len(shards), mat.shape[1]), dtype=np.float32)
            out[positions] = mat[rows].astype(np.float32)
        if out is None:
            return np.empty((0, 0), dtype=np.float32)
        if normalise:
            norms = np.linalg.norm(out, axis=1, keepdims=True)
            np.divide(out, norms, out=out, where=norms > 0)
        return out
