"""A synthetic store of hand-made vectors (a clip scorer's score and embeddings), so
selectors can be tested on planted structure without images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from storemaker import write_store

from curate.config import Pipeline, pipeline_from_dict
from curate.select.pool import PoolSource
from curate.select.selection import Selection, select

CLIP = {"clip": {"model": "curate-tiny", "pretrained": None}}


def write_pool(run_dir: Path, img: np.ndarray, txt: np.ndarray, shards: int,
               scores: np.ndarray | None = None, order: np.ndarray | None = None) -> PoolSource:
    """Rows k = 0..n-1 (uid = f"{k:032x}") spread over ``shards`` shards in ``order``."""
    n = len(img)
    order = np.arange(n) if order is None else order
    scores = (img * txt).sum(1) if scores is None else scores
    rows, ks = [], []
    for s, chunk in enumerate(np.array_split(order, shards)):
        for j, k in enumerate(chunk):
            rows.append({"uid": f"{k:032x}", "shard": f"{s:05d}.tar", "key": str(k),
                         "index": j, "clip_score": float(scores[k])})
            ks.append(k)
    ks_arr = np.asarray(ks)
    return write_store(run_dir / "store", rows, {"clip_score": pa.float32()},
                       {"clip_image_emb": img[ks_arr], "clip_text_emb": txt[ks_arr]},
                       label="clip")


def run_select(run_dir: Path, source: PoolSource, steps: list[dict[str, object]],
               ) -> tuple[Selection, list[dict[str, object]], Pipeline]:
    p = pipeline_from_dict({"input": {"shards": "x"}, "score": [CLIP], "select": steps})
    sel = select(p.select, source, run_dir)
    rows = pq.read_table(run_dir / "manifest").to_pylist()
    return sel, sorted(rows, key=lambda r: r["uid"]), p


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)
