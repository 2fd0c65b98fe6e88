"""A synthetic run directory: signals and embedding files for hand-made vectors, so selectors
can be tested on planted structure without images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from curate.config import Pipeline, pipeline_from_dict
from curate.schema import SAMPLE_COLUMNS
from curate.score.shard import sidecar_path, signals_path
from curate.select.selection import Selection, select

CLIP = {"clip": {"model": "curate-tiny", "pretrained": None}}


def write_pool(run_dir: Path, img: np.ndarray, txt: np.ndarray, shards: int,
               scores: np.ndarray | None = None, order: np.ndarray | None = None) -> list[Path]:
    """Rows k = 0..n-1 (uid = f"{k:032x}") spread over ``shards`` files in ``order``."""
    n = len(img)
    order = np.arange(n) if order is None else order
    scores = (img * txt).sum(1) if scores is None else scores
    schema = pa.schema({**SAMPLE_COLUMNS, "clip_score": pa.float32()})
    files = []
    for s, chunk in enumerate(np.array_split(order, shards)):
        sid = f"{s:05d}.tar"
        rows = [{"uid": f"{k:032x}", "shard": sid, "key": str(k), "index": j, "status": "ok",
                 "clip_score": float(scores[k])} for j, k in enumerate(chunk)]
        path = signals_path(run_dir, sid)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
        for col, mat in (("clip_image_emb", img), ("clip_text_emb", txt)):
            side = sidecar_path(path, col)
            side.parent.mkdir(parents=True, exist_ok=True)
            np.save(side, mat[chunk].astype(np.float16))
        files.append(path)
    return files


def run_select(run_dir: Path, files: list[Path], steps: list[dict[str, object]],
               ) -> tuple[Selection, list[dict[str, object]], Pipeline]:
    p = pipeline_from_dict({"input": {"shards": "x"}, "score": [CLIP], "select": steps})
    sel = select(p, files, run_dir, [])
    rows = pq.read_table(run_dir / "manifest.parquet").to_pylist()
    return sel, sorted(rows, key=lambda r: r["uid"]), p


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)
