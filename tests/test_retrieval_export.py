"""curate export-retrieval: clip-retrieval's folder layout (img_emb/, text_emb/, metadata/,
image.index, text.index), row i of every file the same sample, checked with faiss and pyarrow
against the store's embeddings."""

from __future__ import annotations

import json
from pathlib import Path

import faiss
import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import curate_cli
from embedpool import unit, write_pool

from curate.audit.search import open_corpus
from curate.store.embeddings import SidecarReader
from curate.write import retrieval_export as rx


def _stored(store: Path, column: str, shards: list[str], index: list[int]) -> np.ndarray:
    corpus = open_corpus(store)
    v = corpus.version_of(column)
    reader = SidecarReader(corpus.store, {column: (v.label, v.version)}, corpus.digests())
    return reader.read_rows(column, shards, index)


def test_export_layout_loads_with_faiss(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    n, d = 300, 16
    img = unit(rng.standard_normal((n, d)).astype(np.float32))
    txt = unit(img + 0.3 * rng.standard_normal((n, d)).astype(np.float32))
    write_pool(tmp_path, img, txt, shards=3, order=rng.permutation(n))
    out = tmp_path / "retrieval"
    r = rx.export_retrieval(tmp_path / "store", out)
    assert (r.rows, r.parts, r.dim) == (n, 1, d)
    ie = np.load(out / "img_emb" / "img_emb_0.npy")
    te = np.load(out / "text_emb" / "text_emb_0.npy")
    meta = pq.read_table(out / "metadata" / "metadata_0.parquet")
    assert ie.dtype == te.dtype == np.float16 and ie.shape == te.shape == (n, d)
    assert meta.num_rows == n and {"uid", "caption", "url", "shard", "key",
                                   "index"} <= set(meta.column_names)
    # row i of the embeddings is the stored embedding of metadata row i
    shards, index = meta.column("shard").to_pylist(), meta.column("index").to_pylist()
    np.testing.assert_allclose(ie.astype(np.float32), _stored(
        tmp_path / "store", "clip_image_emb", shards, index), atol=1e-3)
    np.testing.assert_allclose(te.astype(np.float32), _stored(
        tmp_path / "store", "clip_text_emb", shards, index), atol=1e-3)
    uids = [int(u, 16) for u in meta.column("uid").to_pylist()]
    np.testing.assert_allclose(ie.astype(np.float32), img[uids], atol=2e-3)
    for name, emb in (("image", ie), ("text", te)):
        index_ = faiss.read_index(str(out / f"{name}.index"))
        assert index_.ntotal == n and index_.d == d
        # id i is row i: each row finds itself first, and reconstructs to itself
        _, ids = index_.search(emb.astype(np.float32), 1)
        assert (ids[:, 0] == np.arange(n)).all()
        np.testing.assert_allclose(index_.reconstruct(7), emb[7].astype(np.float32), atol=1e-6)
    assert json.loads((out / "indices_paths.json").read_text()) == {"curate": str(out.resolve())}
    record = json.loads((out / "export.json").read_text())
    assert record["exported_rows"] == n and record["columns"] == ["clip_image_emb",
                                                                  "clip_text_emb"]


def test_export_of_a_selection_with_ivfpq(demo_yaml_run: Path, tmp_path: Path) -> None:
    """The demo selection's kept rows (its store is only read), with IVF-PQ indices; the CLI
    says what it wrote."""
    out = tmp_path / "r"
    res = curate_cli("export-retrieval", str(demo_yaml_run), str(out), "--index", "ivfpq")
    assert res.returncode == 0, res.stderr
    kept = pq.read_table(demo_yaml_run / "manifest", columns=["uid", "kept"])
    kept_uids = [u for u, k in zip(kept.column("uid").to_pylist(),
                                   kept.column("kept").to_pylist(), strict=True) if k]
    meta = pq.read_table(out / "metadata" / "metadata_0.parquet")
    assert meta.column("uid").to_pylist() == kept_uids  # every kept row embeds, in order
    assert meta.column("kept").to_pylist() == [True] * len(kept_uids)
    assert f"exported {len(kept_uids)} rows" in res.stdout and "IVF-PQ" in res.stdout
    image = faiss.read_index(str(out / "image.index"))
    assert isinstance(faiss.downcast_index(faiss.extract_index_ivf(image)), faiss.IndexIVFPQ)
    assert image.ntotal == len(kept_uids)
    ie = np.load(out / "img_emb" / "img_emb_0.npy").astype(np.float32)
    faiss.extract_index_ivf(image).nprobe = 64
    _, ids = image.search(ie[:20], 5)  # approximate: each row among its own 5 nearest
    assert np.mean([i in row for i, row in enumerate(ids)]) >= 0.9


@pytest.mark.parametrize(("parts", "first", "last"), [(1, "0", "0"), (5, "0", "4"),
                                                      (11, "00", "10"), (101, "000", "100")])
def test_part_names_sort_in_row_order(parts: int, first: str, last: str) -> None:
    names = rx._part_names(parts)
    assert (names[0], names[-1], len(names)) == (first, last, parts)
    assert sorted(f"metadata_{n}.parquet" for n in names) == [f"metadata_{n}.parquet"
                                                              for n in names]


def test_export_in_parts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(1)
    img = unit(rng.standard_normal((250, 8)).astype(np.float32))
    write_pool(tmp_path, img, img, shards=2)
    monkeypatch.setattr(rx, "PART_ROWS", 100)
    rx.export_retrieval(tmp_path / "store", tmp_path / "out")
    names = sorted(p.name for p in (tmp_path / "out" / "img_emb").iterdir())
    assert names == ["img_emb_0.npy", "img_emb_1.npy", "img_emb_2.npy"]
    rows = [np.load(tmp_path / "out" / "img_emb" / n).shape[0] for n in names]
    assert rows == [100, 100, 50]
    metas = sorted((tmp_path / "out" / "metadata").glob("*.parquet"))
    uids = [u for f in metas for u in pq.read_table(f).column("uid").to_pylist()]
    assert uids == [f"{k:032x}" for k in range(250)]
    assert faiss.read_index(str(tmp_path / "out" / "text.index")).ntotal == 250
