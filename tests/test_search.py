"""curate search: indices over the stored CLIP embeddings of the demo run (pipelines/demo.yaml
with the demo's trained filter network), queries by text, image file and uid, reuse by
identity, IVF-PQ on synthetic embeddings, the HTML page and the CLI."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import duckdb
import numpy as np
import pytest
from conftest import curate_cli
from embedpool import unit, write_pool
from storemaker import write_store

from curate.audit import knn_index as ki
from curate.audit.search import ensure_index, open_corpus, run_search, search, write_html
from curate.demo.generator import _PHOTOS
from curate.errors import CurateError
from curate.store.store import Store


@pytest.fixture(scope="module")
def demo(demo_yaml_run: Path, tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """Copies of the demo run's store and selection (indices are written beside them, so the
    session's fixture stays as it is), with the pool's ground truth."""
    root = tmp_path_factory.mktemp("search")
    store = root / "store"
    shutil.copytree(demo_yaml_run.parent.parent / "store", store)
    sel = root / "sel"
    shutil.copytree(demo_yaml_run, sel, ignore=shutil.ignore_patterns("output"))
    record = json.loads((sel / "selection.json").read_text())
    record["store"] = str(store)
    (sel / "selection.json").write_text(json.dumps(record))
    pool = Path(json.loads((demo_yaml_run / "selection.json").read_text())["store"])
    gt_file = next(Path(s.url).parent for s in Store(pool).pool()) / "ground_truth.parquet"
    gt = duckdb.sql(f"SELECT uid, kind, source FROM '{gt_file}'").pl()
    return SimpleNamespace(store=store, sel=sel, gt=gt)


def test_text_query_ranks_the_concept_first(demo: SimpleNamespace) -> None:
    """Each demo photo's description, encoded by the filter network's text tower, ranks that
    photo's images above every other image of the pool (ground truth: the source photo)."""
    aucs, p10 = [], []
    for photo in _PHOTOS:
        hits = search(demo.store, text=photo.noun, k=1000).join(demo.gt, on="uid").sort("rank")
        match = (hits["source"] == photo.source).to_numpy()
        s = hits["score"].to_numpy()
        assert match.sum() >= 20
        aucs.append((s[match][:, None] > s[~match][None, :]).mean())
        p10.append(match[:10].mean())
    assert min(aucs) > 0.95 and np.mean(aucs) > 0.98, aucs
    assert np.mean(p10) >= 0.8 and min(p10) >= 0.4, p10


def test_uid_query_finds_itself(demo: SimpleNamespace) -> None:
    kept = duckdb.sql(f"SELECT uid FROM '{demo.sel}/manifest/*.parquet' WHERE kept "
                      "ORDER BY uid LIMIT 3").fetchall()
    for (uid,) in kept:
        hits = search(demo.sel, uid=uid, k=5)
        assert hits["uid"][0] == uid
        assert hits["score"][0] == pytest.approx(1.0, abs=1e-3)
        assert hits["rank"].to_list() == [1, 2, 3, 4, 5]
        assert hits["kept"].all()  # a selection's kept rows
        assert (hits["score"].diff().drop_nulls() <= 1e-6).all()


def test_image_file_query_finds_that_photo(demo: SimpleNamespace, tmp_path: Path) -> None:
    """A photo of the pool, as a file, is encoded as the scorer encoded it: its own samples
    (the same bytes) come first with a cosine of ~1, then more of the same source photo."""
    from curate.io.shards import ShardRef, read_members

    row = duckdb.sql(f"""SELECT uid, shard, index, image_sha256 FROM '{demo.sel}/manifest/*.parquet'
        WHERE kept AND image_member = 'jpg' ORDER BY uid LIMIT 1""").fetchall()[0]
    uid, shard, index, sha = row
    url = duckdb.sql(f"SELECT url FROM '{demo.sel}/shards.parquet' WHERE shard = "
                     f"'{shard}'").fetchall()[0][0]
    data = read_members(ShardRef(url, shard), {index})[index]["jpg"]
    assert hashlib.sha256(data).hexdigest() == sha
    (tmp_path / "q.jpg").write_bytes(data)
    hits = search(demo.sel, image=tmp_path / "q.jpg", k=10).join(demo.gt, on="uid").sort("rank")
    same = hits.filter(hits["image_sha256"] == sha)
    assert uid in same["uid"].to_list()
    assert same["rank"].max() == len(same)  # every copy of the bytes before anything else
    assert hits["score"][0] > 0.99
    source = demo.gt.filter(demo.gt["uid"] == uid)["source"][0]
    assert (hits["source"] == source).mean() >= 0.8


def test_index_reused_then_rebuilt_when_the_store_changes(demo: SimpleNamespace,
                                                          tmp_path: Path) -> None:
    store = tmp_path / "store"
    shutil.copytree(demo.store, store, ignore=shutil.ignore_patterns("search"))
    uid = search(store, text="a tabby cat", k=1)["uid"][0]
    first = ensure_index(open_corpus(store))
    assert first.status == "reused" and first.plan.kind == "exact"
    assert first.location == str(store / "search" / "pool" / "clip_image_emb")
    assert len(first.rows) == first.plan.rows == first.index.ntotal
    # rows of the index: the pool's embedded samples in pool order
    assert first.rows.column("shard").to_pylist() == sorted(first.rows.column(
        "shard").to_pylist())

    st = Store(store)
    pool = st.pool()
    st.write_pool(pool[:-1])  # the pool loses a shard: what the index covers changed
    rebuilt = run_search(store, uid=uid, k=3)
    assert rebuilt.index.status == "built" and "shards changed" in rebuilt.index.why
    assert rebuilt.index.plan.rows < first.plan.rows
    assert pool[-1].shard not in set(rebuilt.index.rows.column("shard").to_pylist())
    files = sorted(p.name for p in (store / "search" / "pool" / "clip_image_emb").iterdir())
    assert len(files) == 3 and "current.json" in files  # the old index was removed
    assert run_search(store, uid=uid, k=3).index.status == "reused"
    # another kind asked for: built again, and said why
    again = run_search(store, uid=uid, k=3, index="ivfpq")
    assert again.index.status == "built" and "asked for ivfpq" in again.index.why
    assert again.hits["uid"][0] == uid
    # a damaged index file: built again, and said why
    [faiss] = (store / "search" / "pool" / "clip_image_emb").glob("*.faiss")
    faiss.write_bytes(faiss.read_bytes()[:100])
    repaired = run_search(store, uid=uid, k=3, index="ivfpq")
    assert repaired.index.status == "built" and "unreadable" in repaired.index.why
    assert repaired.hits["uid"][0] == uid


def test_selection_all_rows_show_the_drops(demo: SimpleNamespace) -> None:
    (uid,) = duckdb.sql(f"SELECT uid FROM '{demo.sel}/manifest/*.parquet' WHERE reason = "
                        "'duplicate_image' LIMIT 1").fetchall()[0]
    hits = search(demo.sel, uid=uid, k=5, rows="all")
    assert hits["uid"][0] == uid and hits["kept"][0] is False
    assert hits["reason"][0] == "duplicate_image"
    assert hits["score"][1] == pytest.approx(1.0, abs=1e-3)  # the sample it duplicates
    with pytest.raises(CurateError, match=r"no sample of .* has uid"):
        search(demo.sel, uid="0" * 32)


def test_errors_are_said_in_the_users_terms(demo: SimpleNamespace, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(CurateError, match=r"no embedding column .clip_image. \(did you mean"):
        search(demo.sel, uid="x", column="clip_image")
    with pytest.raises(CurateError, match="exactly one query"):
        search(demo.sel, text="a", uid="b")
    with pytest.raises(CurateError, match="store: it has no selection"):
        search(demo.store, uid="x", rows="kept")
    import pyarrow as pa

    plain = tmp_path / "plain"
    write_store(plain, [{"shard": "a.tar", "index": 0, "x": 1.0}], {"x": pa.float64()})
    with pytest.raises(CurateError, match="has no stored embeddings"):
        search(plain, uid="0" * 32)
    # a store whose CLIP cannot be loaded here: text needs the model, uid does not
    rng = np.random.default_rng(0)
    img = unit(rng.standard_normal((40, 16)).astype(np.float32))
    synth = tmp_path / "synth"
    write_pool(synth, img, img, shards=2)
    meta_path = synth / "store" / "store.json"
    meta = json.loads(meta_path.read_text())
    params = {"model": str(tmp_path / "gone"), "pretrained": None}
    meta["scorers"]["clip"]["versions"]["0" * 16]["params"] = params
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(CurateError, match="cannot load the CLIP model that made "
                       "clip_image_emb") as e:
        search(synth / "store", text="a cat")
    assert "--uid" in (e.value.hint or "")
    meta["scorers"]["clip"]["versions"]["0" * 16]["params"] = {
        "model": "ViT-B-32", "pretrained": "laion2b_s34b_b79k"}
    meta_path.write_text(json.dumps(meta))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(CurateError, match=r"cannot load the CLIP model.*HF_HUB_OFFLINE"):
        search(synth / "store", text="a cat")
    assert search(synth / "store", uid=f"{7:032x}", k=1)["uid"][0] == f"{7:032x}"


def test_ivfpq_recall_close_to_exact(tmp_path: Path) -> None:
    """IVF-PQ over clustered synthetic embeddings: its hits (re-ranked on the stored
    embeddings) are the exact top 10 for nearly every query."""
    rng = np.random.default_rng(0)
    n, d = 12_000, 32
    centres = unit(rng.standard_normal((40, d)).astype(np.float32))
    img = unit(centres[rng.integers(0, 40, n)] + 0.6 * rng.standard_normal((n, d)).astype(
        np.float32) / np.sqrt(d))
    write_pool(tmp_path, img, img, shards=3)
    store = tmp_path / "store"
    stored = unit(img.astype(np.float16).astype(np.float32))
    queries = rng.choice(n, size=40, replace=False)
    found = []
    for q in queries:
        out = run_search(store, uid=f"{q:032x}", k=10, index="ivfpq", nprobe=8)
        got = [int(u, 16) for u in out.hits["uid"].to_list()]
        truth = np.argsort(-(stored @ stored[q]), kind="stable")[:10]
        found.append(len(set(got) & set(truth.tolist())) / 10)
        assert out.index.plan.kind == "ivfpq"
    assert np.mean(found) >= 0.9, np.mean(found)
    handle = ensure_index(open_corpus(store))
    assert handle.status == "reused" and handle.plan.nlist == 128 and handle.plan.m == 8


def test_plan_index_from_rows_and_memory() -> None:
    assert ki.parse_memory("4G") == 4 * 2**30 and ki.parse_memory("512MiB") == 512 * 2**20
    assert ki.parse_memory("1.5GB") == int(1.5 * 2**30) and ki.parse_memory(1000) == 1000
    with pytest.raises(CurateError, match="not a size"):
        ki.parse_memory("lots")
    assert ki.plan_index(5_000, 512).kind == "exact"
    big = ki.plan_index(1_000_000, 512, "128M")
    assert (big.kind, big.nlist, big.m) == ("ivfpq", 1024, 64)
    assert big.estimate <= 128 * 2**20 < ki.ivfpq_bytes(1_000_000, 512, 1024, 128)
    assert ki.plan_index(1_000_000, 512, "4G").m == 128  # at most 4 dimensions per code byte
    with pytest.raises(CurateError, match="too small"):
        ki.plan_index(1_000_000, 512, "1M")
    with pytest.raises(CurateError, match="over the memory budget"):
        ki.plan_index(1_000_000, 512, "1G", "exact")
    assert ki.plan_index(ki.EXACT_MAX_ROWS + 1, 64).kind == "ivfpq"


def test_html_page_lists_the_hits(demo: SimpleNamespace, tmp_path: Path) -> None:
    outcome = run_search(demo.sel, text="a tabby cat", k=6)
    page = write_html(outcome, tmp_path / "hits.html").read_text()
    assert page.count('<div class="card">') == 6
    assert page.count('src="data:image/jpeg;base64,') == 6  # every thumbnail read
    for uid in outcome.hits["uid"]:
        assert uid in page
    assert "text &#x27;a tabby cat&#x27;" in page


def test_cli_prints_the_hits(demo: SimpleNamespace, tmp_path: Path) -> None:
    r = curate_cli("search", str(demo.sel), "--text", "a tabby cat", "-k", "4",
                   "--html", str(tmp_path / "p.html"))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("index clip_image_emb: exact (IndexFlatIP)")
    assert "rank |  score | uid" in r.stdout and "(4 rows)" in r.stdout
    assert (tmp_path / "p.html").is_file()
    expected = search(demo.sel, text="a tabby cat", k=4)
    for uid in expected["uid"]:
        assert uid in r.stdout
    bad = curate_cli("search", str(demo.sel), "--uid", "x", "--column", "clip_txt_emb")
    assert bad.returncode == 2
    assert "error: the selection" in bad.stderr and "did you mean 'clip_text_emb'" in bad.stderr


def test_result_search(demo: SimpleNamespace) -> None:
    from curate.api import Result

    result = Result(SimpleNamespace(dir=demo.sel))  # type: ignore[arg-type]
    hits = result.search(text="a tabby cat", k=3)
    assert hits.columns[:6] == ["rank", "score", "uid", "kept", "reason", "caption"]
    assert "clip_score" in hits.columns and len(hits) == 3
    result.close()


def test_a_read_only_store_is_searched_without_saving_its_index(
        demo: SimpleNamespace, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """An auditor's read-only copy of a store (a tmpfs remounted read-only): search builds its
    index in memory, says it could not keep it, and answers as on the writable store."""
    import logging
    import subprocess

    disk = tmp_path / "disk"
    disk.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256m", "tmpfs", str(disk)],
                         capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs (needs root): {res.stderr.strip()}")
    try:
        shutil.copytree(demo.store, disk / "store", ignore=shutil.ignore_patterns("search"))
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        [(uid,)] = duckdb.sql(f"SELECT uid FROM '{demo.sel}/manifest/*.parquet' WHERE kept "
                              "ORDER BY uid LIMIT 1").fetchall()
        with caplog.at_level(logging.WARNING, logger="curate"):
            hits = search(disk / "store", uid=uid, k=5)
        assert any("not saved" in r.getMessage() for r in caplog.records)
        assert hits["uid"].to_list() == search(demo.store, uid=uid, k=5)["uid"].to_list()
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)
