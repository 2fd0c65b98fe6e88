"""nearest_centroid: DataComp's get_centroid_ids_gpu argmax over centroids loaded from the
released file format (torch.save of a numpy array) or .npy."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from stagetest import score

from curate.errors import CurateError
from curate.lib.centroids import load_centroids, load_features, nearest_centroids
from curate.stages.nearest_centroid import NearestCentroid, NearestCentroidParams


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def datacomp_ids(features: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """The assignment written from DataComp's semantics in numpy: float32 dot products, the
    first of equal maxima."""
    return np.argmax(features.astype(np.float32) @ centroids.astype(np.float32).T, axis=1)


def as_numpy1_pickle(path: Path) -> None:
    """Rewrite a torch.save file of a numpy array as numpy 1 (DataComp's numpy 1.23) names its
    array reconstructor, ``numpy.core.multiarray`` instead of numpy 2's ``numpy._core``."""
    with zipfile.ZipFile(path) as z:
        members = {i.filename: z.read(i) for i in z.infolist()}
    pkl = next(n for n in members if n.endswith("data.pkl"))
    assert b"numpy._core.multiarray" in members[pkl]
    members[pkl] = members[pkl].replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        for name, data in members.items():
            z.writestr(name, data)


def test_scorer_equals_datacomp_argmax_on_released_format(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    centroids = unit(rng.normal(size=(37, 16))).astype(np.float32)
    emb = unit(rng.normal(size=(300, 16))).astype(np.float16)  # stored as the clip scorer does
    path = tmp_path / "small_centroids_l14.pt"
    torch.save(centroids, path)  # the released format: torch.save of a numpy array
    scorer = NearestCentroid(NearestCentroidParams(column="clip_image_emb_l14",
                                                   centroids=str(path), batch_size=64))
    out, errors = score(scorer, [{"clip_image_emb_l14": e.tolist()} for e in emb])
    assert [r["centroid"] for r in out] == datacomp_ids(emb, centroids).tolist()
    assert errors.ok_rows() == list(range(300))
    # .npy gives the same; the batch size does not change the ids
    np.save(tmp_path / "c.npy", centroids)
    assert nearest_centroids(emb, load_centroids(tmp_path / "c.npy"), 7).tolist() == [
        r["centroid"] for r in out]


def test_ties_go_to_the_first_centroid() -> None:
    centroids = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    x = np.array([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]], dtype=np.float16)
    assert nearest_centroids(x, centroids).tolist() == [0, 2, 0]


def test_numpy1_pickles_load_without_running_code(tmp_path: Path) -> None:
    centroids = np.arange(12, dtype=np.float32).reshape(3, 4)
    path = tmp_path / "old.pt"
    torch.save(centroids, path)
    as_numpy1_pickle(path)
    assert np.array_equal(load_centroids(path).numpy(), centroids)
    # anything but arrays and tensors is refused by weights_only loading
    evil = tmp_path / "evil.pt"
    torch.save({"image_features": torch.zeros(2, 4), "x": Path("/")}, evil)
    with pytest.raises(CurateError, match="weights_only"):
        load_features([evil])
    bad = tmp_path / "bad.npy"
    np.save(bad, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(CurateError, match=r"not a plain \.npy"):
        load_centroids(bad)
    torch.save(np.arange(4), tmp_path / "int.pt")  # only float arrays are allowed
    with pytest.raises(CurateError, match="weights_only"):
        load_centroids(tmp_path / "int.pt")
    torch.save(torch.zeros(4), tmp_path / "1d.pt")
    with pytest.raises(CurateError, match="2-d float"):
        load_centroids(tmp_path / "1d.pt")


def test_bad_embeddings_fail_alone_and_missing_centroids_fail_fast(tmp_path: Path) -> None:
    centroids = np.eye(4, dtype=np.float32)
    np.save(tmp_path / "c.npy", centroids)
    scorer = NearestCentroid(NearestCentroidParams(column="emb", centroids=str(
        tmp_path / "c.npy"), name="l14"))
    rows = [{"emb": [0.0, 1.0, 0.0, 0.0]}, {"emb": [float("nan"), 0.0, 0.0, 0.0]},
            {"emb": [0.0, 0.0, 0.0, 2.0]}, {"emb": [0.0, None, 1.0, 0.0]}]
    out, errors = score(scorer, rows)
    assert [r["centroid_l14"] for r in out] == [1, None, 3, None]
    assert errors.stage[1] == errors.stage[3] == "nearest_centroid_l14"
    assert "NaN" in (errors.message[1] or "")
    with pytest.raises(CurateError, match="no centroids file"):
        NearestCentroid(NearestCentroidParams(centroids=str(tmp_path / "none.pt"))).check()


def test_fingerprint_follows_the_centroids_content(tmp_path: Path) -> None:
    path = tmp_path / "c.npy"
    np.save(path, np.eye(3, dtype=np.float32))
    first = NearestCentroid(NearestCentroidParams(centroids=str(path))).fingerprint()
    np.save(path, 2 * np.eye(3, dtype=np.float32))
    assert NearestCentroid(NearestCentroidParams(centroids=str(path))).fingerprint() != first


def test_reads_the_stores_fixed_size_float16_lists(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    centroids = unit(rng.normal(size=(9, 8))).astype(np.float32)
    emb = unit(rng.normal(size=(50, 8))).astype(np.float16)
    np.save(tmp_path / "c.npy", centroids)
    col = pa.FixedSizeListArray.from_arrays(pa.array(emb.ravel(), pa.float16()), 8)
    scorer = NearestCentroid(NearestCentroidParams(column="e", centroids=str(tmp_path / "c.npy")))
    scorer.setup()
    got = scorer.score_batch(pa.table({"e": col.slice(5)}))  # an offset slice, as batches are
    assert got["centroid"].to_pylist() == datacomp_ids(emb[5:], centroids).tolist()
    masked = pa.FixedSizeListArray.from_arrays(pa.array(emb[:3].ravel(), pa.float16()), 8,
                                               mask=pa.array([False, True, False]))
    got = scorer.score_batch(pa.table({"e": masked}))  # a stored null row fails alone
    assert got["__errors__"][1] and not got["__errors__"][0] and not got["__errors__"][2]
    assert got["centroid"].to_pylist()[::2] == datacomp_ids(emb[:3:2], centroids).tolist()
