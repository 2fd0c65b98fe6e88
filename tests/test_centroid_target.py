"""centroid_target: keep rows whose centroid is hit by the target (ImageNet-1k) embeddings,
read from DataComp's released in1k_clip_vit_l14_{i}.pt format or .npy."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pytest
import torch
from stagetest import run_selector

from curate.errors import CurateError
from curate.stages.base import SelectContext
from curate.stages.centroid_target import CentroidTarget, CentroidTargetParams


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def write_assets(root: Path, rng: np.random.Generator, k: int = 40, n: int = 60,
                 ) -> tuple[Path, list[Path], np.ndarray, np.ndarray]:
    centroids = unit(rng.normal(size=(k, 12))).astype(np.float32)
    targets = unit(rng.normal(size=(n, 12))).astype(np.float16)
    cpath = root / "small_centroids_l14.pt"
    torch.save(centroids, cpath)
    tpaths = []
    for i, part in enumerate(np.array_split(targets, 3)):  # the released files hold a dict
        tpaths.append(root / f"in1k_clip_vit_l14_{i}.pt")
        torch.save({"image_features": torch.from_numpy(part)}, tpaths[-1])
    return cpath, tpaths, centroids, targets


def test_keeps_rows_whose_centroid_a_target_hits(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    cpath, tpaths, centroids, targets = write_assets(tmp_path, rng)
    # DataComp: torch.unique(argmax(in1k.float() @ centroids.T)) — written here in numpy
    hit = set(np.argmax(targets.astype(np.float32) @ centroids.T, axis=1).tolist())
    assert 0 < len(hit) < 40
    ids: list[int | None] = [int(i) for i in rng.integers(0, 40, 200)] + [None]
    rows = [{"uid": f"{i:032x}", "centroid": c} for i, c in enumerate(ids)]
    sel = CentroidTarget(CentroidTargetParams(
        centroids=str(cpath), targets=[str(p) for p in tpaths], device="cpu"))
    out = run_selector(sel, rows, tmp_path / "sel")
    kept = [r["reason"] is None for r in out]
    assert kept == [c is not None and c in hit for c in ids]
    assert 0 < sum(kept) < 200
    assert {r["reason"] for r in out if r["reason"]} == {"not_near_target_centroid"}
    report = json.loads((tmp_path / "sel" / "reports" / "centroid_target.json").read_text())
    assert report["n_centroids"] == 40 and report["n_target_embeddings"] == 60
    assert report["n_target_centroids"] == len(hit)
    assert report["dropped"] == sum(not k for k in kept)
    # the same targets as one .npy give the same selection
    np.save(tmp_path / "in1k.npy", targets)
    sel2 = CentroidTarget(CentroidTargetParams(centroids=str(cpath), device="cpu",
                                               targets=[str(tmp_path / "in1k.npy")]))
    assert [r["reason"] for r in run_selector(sel2, rows, tmp_path / "sel2")] == [
        r["reason"] for r in out]


def test_only_kept_rows_are_marked(tmp_path: Path) -> None:
    np.save(tmp_path / "c.npy", np.eye(3, dtype=np.float32))
    np.save(tmp_path / "t.npy", np.array([[1, 0, 0]], dtype=np.float32))
    sel = CentroidTarget(CentroidTargetParams(column="cid", centroids=str(tmp_path / "c.npy"),
                                              targets=[str(tmp_path / "t.npy")], reason="far"))
    con = duckdb.connect()
    con.register("src", pa.table({"cid": [0, 1, 2], "reason": [None, None, "earlier"]}))
    con.execute("CREATE TABLE pool AS SELECT row_number() OVER () AS _row, * FROM src")
    sel.apply(con, "pool", SelectContext(tmp_path / "sel"))
    assert [r[0] for r in con.execute("SELECT reason FROM pool ORDER BY _row").fetchall()] == [
        None, "far", "earlier"]


def test_target_files_in_other_formats_are_refused(tmp_path: Path) -> None:
    np.save(tmp_path / "c.npy", np.eye(3, dtype=np.float32))
    torch.save({"features": torch.zeros(2, 3)}, tmp_path / "t.pt")
    sel = CentroidTarget(CentroidTargetParams(centroids=str(tmp_path / "c.npy"),
                                              targets=[str(tmp_path / "t.pt")]))
    with pytest.raises(CurateError, match="without 'image_features'"):
        sel.target_ids()
    np.save(tmp_path / "wide.npy", np.zeros((2, 5), dtype=np.float32))
    sel = CentroidTarget(CentroidTargetParams(centroids=str(tmp_path / "c.npy"),
                                              targets=[str(tmp_path / "wide.npy")]))
    with pytest.raises(CurateError, match="width 3"):
        sel.target_ids()
    with pytest.raises(ValueError, match="no file"):  # at the pipeline's load
        CentroidTargetParams(centroids=str(tmp_path / "none.pt"),
                             targets=[str(tmp_path / "wide.npy")])
    with pytest.raises(ValueError, match="no file"):
        CentroidTargetParams(centroids=str(tmp_path / "c.npy"), targets=[str(tmp_path)])
