"""Reading the per-shard embeddings that scorers store beside the signals.

A scorer's sidecar column (e.g. ``clip_image_emb``) lives in
``RUN/embeddings/<column>/<shard>.npy``: float16 ``[samples in shard, dim]``, row i = sample i
of the shard, NaN rows where the sample was not scored. ``read_rows`` gathers the rows of any
subset of the pool (given as shard ids and positions) into one float32 array. Each shard file
is memory-mapped and only the wanted rows are read, so a selection never loads the pool.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from curate.errors import CurateError
from curate.score.shard import sidecar_path, signals_path


def shard_file(run_dir: Path, column: str, shard_id: str) -> Path:
    return sidecar_path(signals_path(run_dir, shard_id), column)


def read_rows(run_dir: Path, column: str, shards: Sequence[str], indices: Sequence[int],
              normalise: bool = True) -> np.ndarray:
    """float32 ``[len(shards), dim]``: the embedding of sample ``indices[k]`` of ``shards[k]``."""
    by_shard: dict[str, list[int]] = defaultdict(list)
    for k, sid in enumerate(shards):
        by_shard[sid].append(k)
    out: np.ndarray | None = None
    for sid, positions in by_shard.items():
        path = shard_file(run_dir, column, sid)
        if not path.is_file():
            raise CurateError(f"no {column} embeddings for shard {sid} ({path})",
                              "run a scorer that stores them (e.g. clip with embeddings: true)")
        mat = np.load(path, mmap_mode="r")
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
