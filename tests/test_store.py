"""Score once, select many times: a store that scorers add to and selections read, on the demo
pool through real Ray, with the demo's filter network as the CLIP model.

What is checked, each against the store's own records and the files' bytes:

* adding a scorer that reads the stored CLIP embedding computes only that scorer: CLIP is not
  even loaded, its files are untouched, and the new column equals a pass that scored
  everything at once;
* changing one scorer's parameters recomputes it and its readers only; removing a scorer
  deletes nothing;
* changing a threshold, or making another selection, scores nothing; two selections of one
  store live in two directories and ``curate diff`` compares them;
* a shard rewritten in place is rescored with a warning (a touched one is not), and every
  curated sample's json belongs to its own image bytes; a change the stamp cannot see is
  caught by the output writer.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
import tarfile
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import curate_cli

from curate.audit.diff import diff_runs, format_diff
from curate.config import ConfigError, pipeline_from_dict, selection_from_dict
from curate.errors import CurateError
from curate.runner import RunResult, run, select, write

BASE = ["image_info", "caption_stats", "language", "exact_hash"]
RULES = [{"preset": "datacomp_basic"}, {"selector": "exact_dedup"}]


def clip(filter_dir: Path, **params: Any) -> dict[str, Any]:
    return {"clip": {"model": str(filter_dir), "pretrained": None, "cpus": 1, **params}}


def head(weights: Path, **params: Any) -> dict[str, Any]:
    return {"embedding_head": {"weights": str(weights), "name": "aes", **params}}


def pipeline(pool: Path, score: list[Any], select: list[Any] | None = None,
             name: str = "p") -> Any:
    return pipeline_from_dict({"name": name, "input": {"shards": str(pool / "*.tar")},
                               "score": score, "select": RULES if select is None else select})


NS = 4  # shards, of the demo pool's 8: what these tests check is per shard, not per pool size


@pytest.fixture(scope="module")
def pool4(demo_pool: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo pool's first NS shards, in a folder of their own."""
    root = tmp_path_factory.mktemp("pool4")
    for i in range(NS):
        shutil.copy(demo_pool / f"{i:05d}.tar", root / f"{i:05d}.tar")
    return root


@pytest.fixture(scope="module")
def head_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = np.random.default_rng(7)
    path = tmp_path_factory.mktemp("head") / "aes.npz"
    np.savez(path, w0=rng.normal(size=(256, 16)).astype(np.float32),
             b0=rng.normal(size=16).astype(np.float32),
             w1=rng.normal(size=(16, 1)).astype(np.float32), b1=np.zeros(1, np.float32))
    return path


def computed(r: RunResult) -> dict[str, tuple[int, int]]:
    assert r.scoring is not None
    return {name: (c, u) for name, c, u in r.scoring.table()}


def files(store: Path, sub: str) -> dict[str, int]:
    """Relative name -> mtime of every file under ``store/sub``."""
    root = store / sub
    return {str(p.relative_to(store)): p.stat().st_mtime_ns for p in root.rglob("*")
            if p.is_file()}


def events(path: Path, name: str) -> list[dict[str, Any]]:
    return [e for e in map(json.loads, path.read_text().splitlines()) if e["event"] == name]


def reference_head(store: Path, manifest: list[dict[str, Any]], weights: Path) -> dict[str, float]:
    """The head computed here with numpy from the stored float16 embeddings."""
    z = np.load(weights)
    out = {}
    by_shard: dict[str, list[dict[str, Any]]] = {}
    for r in manifest:
        if r["clip_score"] is not None:
            by_shard.setdefault(r["shard"], []).append(r)
    for shard, rows in by_shard.items():
        [npy] = (store / "scores" / "clip").glob(f"*/clip_image_emb/{shard[:-4]}.*.npy")
        mat = np.load(npy).astype(np.float32)
        for r in rows:
            x = mat[r["index"]]
            x = x / np.linalg.norm(x)
            h = np.maximum(x @ z["w0"] + z["b0"], 0) @ z["w1"] + z["b1"]
            out[r["uid"]] = float(h[0])
    return out


def test_adding_a_scorer_computes_only_that_scorer(pool4: Path, demo_filter: Path,
                                                   head_weights: Path, tmp_path: Path,
                                                   ray_local: None) -> None:
    out = tmp_path / "run"
    store = out / "store"
    first = run(pipeline(pool4, [*BASE, clip(demo_filter)]), out, progress=False)
    assert computed(first) == {"(read)": (NS, 0), **{s: (NS, 0) for s in BASE}, "clip": (NS, 0)}
    before = files(store, "scores/clip") | files(store, "base")
    assert before

    second = run(pipeline(pool4, [*BASE, clip(demo_filter), head(head_weights)]), out,
                 progress=False)
    assert computed(second) == {"(read)": (0, NS), **{s: (0, NS) for s in BASE}, "clip": (0, NS),
                                "embedding_head_aes": (NS, 0)}
    assert second.scoring is not None
    assert second.scoring.scorers["clip"].samples == 0  # no CLIP forward pass at all
    started = events(store / "log.jsonl", "workers_started")
    assert started[-1]["scorers"] == ["embedding_head_aes"]  # CLIP was not even loaded
    assert files(store, "scores/clip") | files(store, "base") == before  # untouched
    assert second.shards_resumed == 0 and first.kept == second.kept

    manifest = pq.read_table(second.dir / "manifest").to_pylist()
    want = reference_head(store, manifest, head_weights)
    got = {r["uid"]: r["head_aes"] for r in manifest if r["head_aes"] is not None}
    assert got.keys() == want.keys() and len(got) > 0.75 * 64 * NS
    assert max(abs(got[u] - want[u]) for u in got) < 1e-4
    # A sample CLIP could not score (a broken image) is skipped by the head, not failed.
    broken = [r for r in manifest if r["clip_score"] is None]
    assert broken and all(r["head_aes"] is None for r in broken)
    assert all(r["error_stage"] == "image_info" for r in broken)

    # The same columns as one pass that scores everything at once into a new store.
    together = run(pipeline(pool4, [*BASE, clip(demo_filter), head(head_weights)]),
                   tmp_path / "together", progress=False)
    a = pq.read_table(second.dir / "manifest")
    b = pq.read_table(together.dir / "manifest")
    assert a.schema.names == b.schema.names
    assert [c for c in a.schema.names if not a[c].equals(b[c])] == []

    # Changing the head's parameters recomputes the head only ...
    third = run(pipeline(pool4, [*BASE, clip(demo_filter),
                                     head(head_weights, activation="sigmoid")]), out,
                progress=False)
    assert computed(third) == {"(read)": (0, NS), **{s: (0, NS) for s in BASE}, "clip": (0, NS),
                               "embedding_head_aes": (NS, 0)}
    # ... changing CLIP's recomputes CLIP and the head that reads it, nothing else ...
    fourth = run(pipeline(pool4, [*BASE, clip(demo_filter, batch_size=16),
                                      head(head_weights, activation="sigmoid")]), out,
                 progress=False)
    assert computed(fourth) == {"(read)": (0, NS), **{s: (0, NS) for s in BASE}, "clip": (NS, 0),
                                "embedding_head_aes": (NS, 0)}
    # ... and going back to earlier parameters finds their versions in the store.
    fifth = run(pipeline(pool4, [*BASE, clip(demo_filter), head(head_weights)]), out,
                progress=False)
    assert all(c == 0 for c, _ in computed(fifth).values())

    # Removing a scorer deletes nothing: its columns leave the manifest, not the store.
    heads = files(store, "scores/embedding_head_aes")
    sixth = run(pipeline(pool4, BASE), out, progress=False)
    assert all(c == 0 for c, _ in computed(sixth).values())
    assert "head_aes" not in pq.ParquetDataset(sixth.dir / "manifest").schema.names
    assert files(store, "scores/embedding_head_aes") == heads
    res = curate_cli("store", str(store))
    assert res.returncode == 0, res.stderr
    # Every version stays: 2 of CLIP, 3 of the head (its own 2, and 1 over the second CLIP).
    assert res.stdout.count("embedding_head_aes") == 3 and res.stdout.count(" clip ") == 2


def test_selections_score_nothing_and_diff(pool4: Path, demo_filter: Path, tmp_path: Path,
                                           ray_local: None) -> None:
    out = tmp_path / "run"
    store = out / "store"
    scored = run(pipeline(pool4, [*BASE, clip(demo_filter)], name="demo"), out,
                 progress=False)
    assert scored.dir == out / "selections" / "demo"
    snapshot = files(store, "")
    scorings = len(events(store / "log.jsonl", "score_start"))

    def selection(threshold: float) -> Any:
        return selection_from_dict({"name": f"clip_{threshold}", "select": [
            *RULES, {"rule": "threshold", "column": "clip_score", "min": threshold,
                     "reason": "clip_score_too_low"}]})

    a = select(store, selection(0.0), tmp_path / "a", progress=False)
    b = select(store, selection(0.3), tmp_path / "b", progress=False)
    assert files(store, "") == snapshot  # nothing scored, nothing written into the store
    assert len(events(store / "log.jsonl", "score_start")) == scorings
    con = duckdb.connect()
    for sel, t in ((a, 0.0), (b, 0.3)):
        kept = con.execute(f"""SELECT count(*) FROM '{scored.dir}/manifest/*.parquet'
            WHERE kept AND clip_score >= {t}""").fetchone()
        assert (sel.kept,) == kept, t
        record = json.loads((sel.dir / "selection.json").read_text())
        # (a selection that names no scorers reads them in the store's canonical order)
        assert record["store"] == str(store) and [s["label"] for s in record["scorers"]] == \
            sorted([*BASE, "clip"])
    assert a.kept > b.kept
    # Each selection is its own directory: manifest, catalogue; no copy of the pool.
    for d in (a.dir, b.dir):
        names = {p.name for p in d.iterdir()}
        assert {"manifest", "catalog.duckdb", "stats.json"} <= names
        assert "output" not in names
    res = curate_cli("query", str(b.dir), "select count(*) from kept", "--format", "csv")
    assert res.stdout.splitlines() == ["count_star()", str(b.kept)]

    d = diff_runs(a.dir, b.dir)
    assert (d.only_a, d.only_b) == (a.kept - b.kept, 0)
    assert d.only_a_by_reason == {"clip_score_too_low": a.kept - b.kept}
    assert [c.describe() for c in d.changes] == ["select clip_score_too_low: min: 0.0 → 0.3"]
    text = format_diff(d)
    assert f"store: {store} (both)" in text
    res = curate_cli("diff", str(a.dir), str(b.dir))
    assert res.returncode == 0 and "clip_score_too_low" in res.stdout

    # A selection needing a column no stored scorer has fails before anything is written,
    # naming the scorer that makes it and how to add it.
    needs_ocr = selection_from_dict({"name": "x", "select": [
        {"rule": "threshold", "column": "ocr_n_boxes", "max": 0, "reason": "has_text"}]})
    with pytest.raises(ConfigError) as info:
        select(store, needs_ocr, tmp_path / "c")
    assert "scorer 'ocr' produces 'ocr_n_boxes'" in str(info.value)
    assert f"curate score PIPELINE.yaml --store {store}" in str(info.value)
    assert not (tmp_path / "c").exists()
    # Several selections under one run directory: commands ask which one.
    run(pipeline(pool4, BASE, name="other"), out, progress=False)
    res = curate_cli("query", str(out), "select 1")
    assert res.returncode == 2 and "holds 2 selections" in res.stderr


def _rotate_images(shard: Path) -> None:
    """Rewrite ``shard`` in place with the same members, each sample's image moved to the next
    sample (the last one's to the first)."""
    with tarfile.open(shard) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]  # type: ignore[union-attr]
    images = [i for i, (m, _) in enumerate(members) if m.name.endswith((".jpg", ".png"))]
    datas = [members[i][1] for i in images]
    datas = datas[-1:] + datas[:-1]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        k = 0
        for i, (m, data) in enumerate(members):
            if i in images:
                data = datas[k]
                k += 1
            info = tarfile.TarInfo(m.name)
            info.size, info.mtime = len(data), m.mtime
            tar.addfile(info, io.BytesIO(data))
    shard.write_bytes(buf.getvalue())


def _output_samples(out_dir: Path) -> list[tuple[bytes, dict[str, Any]]]:
    got = []
    for path in sorted(out_dir.glob("*.tar")):
        with tarfile.open(path) as tar:
            by_key: dict[str, dict[str, bytes]] = {}
            for m in tar.getmembers():
                key, ext = m.name.split(".", 1)
                by_key.setdefault(key, {})[ext] = tar.extractfile(m).read()  # type: ignore[union-attr]
        for key, members in by_key.items():
            image = next(v for e, v in members.items() if e in ("jpg", "png"))
            meta = json.loads(members["json"])
            assert meta["uid"] == key
            got.append((image, meta))
    return got


def test_a_shard_changed_in_place_is_rescored(pool4: Path, demo_filter: Path,
                                              tmp_path: Path, ray_local: None,
                                              caplog: pytest.LogCaptureFixture) -> None:
    pool = tmp_path / "pool"
    shutil.copytree(pool4, pool)
    out = tmp_path / "run"
    p = pipeline(pool, [*BASE, clip(demo_filter)])
    run(p, out, progress=False)

    # Touched (new mtime, same bytes): hashed again, found unchanged, nothing recomputed.
    os.utime(pool / "00002.tar")
    touched = run(p, out, progress=False)
    assert touched.scoring is not None and touched.scoring.changed == []
    assert all(c == 0 for c, _ in computed(touched).values())
    # Copied elsewhere (new mtimes): every shard is hashed again (in parallel Ray tasks), and
    # nothing is rescored.
    moved = tmp_path / "moved"
    shutil.copytree(pool, moved, copy_function=shutil.copy)
    again = run(pipeline(moved, [*BASE, clip(demo_filter)]), out, progress=False)
    assert again.scoring is not None and again.scoring.changed == []
    assert all(c == 0 for c, _ in computed(again).values())
    assert events(out / "store" / "log.jsonl", "hashing")[-1]["shards"] == NS
    assert {s.url for s in again.scoring.pool} == {str(moved / f"{i:05d}.tar") for i in range(NS)}

    _rotate_images(pool / "00003.tar")
    with caplog.at_level(logging.WARNING, logger="curate"):
        again = run(p, out, progress=False)
    assert again.scoring is not None and again.scoring.changed == ["00003.tar"]
    assert any("input shard 00003.tar changed since it was scored" in r.getMessage()
               for r in caplog.records)
    assert computed(again) == {"(read)": (1, NS - 1), **{s: (1, NS - 1) for s in BASE},
                               "clip": (1, NS - 1)}
    assert again.scoring.pool[3].digest == hashlib.sha256(
        (pool / "00003.tar").read_bytes()).hexdigest()

    # Every curated sample's json belongs to its own image bytes ...
    manifest = {r["uid"]: r for r in pq.read_table(again.dir / "manifest").to_pylist()}
    write(again.dir, progress=False)
    samples = _output_samples(again.dir / "output")
    assert len(samples) == again.kept
    for image, meta in samples:
        row = manifest[meta["uid"]]
        assert meta["image_sha256"] == hashlib.sha256(image).hexdigest() == row["image_sha256"]
        assert meta["scores"]["clip_score"] == pytest.approx(row["clip_score"])
        assert meta["scores"]["width"] == row["width"]
    # ... and the selection equals a fresh run over the changed pool.
    fresh = run(p, tmp_path / "fresh", progress=False)
    a = pq.read_table(again.dir / "manifest")
    b = pq.read_table(fresh.dir / "manifest")
    assert [c for c in a.schema.names if not a[c].equals(b[c])] == []


def test_a_change_the_stamp_cannot_see_fails_the_output(demo_pool: Path, tmp_path: Path,
                                                        ray_local: None) -> None:
    pool = tmp_path / "pool"
    shutil.copytree(demo_pool, pool)
    out = tmp_path / "run"
    p = pipeline(pool, BASE)
    first = run(p, out, progress=False)
    shard = pool / "00001.tar"
    st = shard.stat()
    data = bytearray(shard.read_bytes())
    kept = [r for r in pq.read_table(first.dir / "manifest").to_pylist()
            if r["kept"] and r["shard"] == "00001.tar"]
    # Flip bytes in the middle of a kept sample's image: same size, mtime put back.
    with tarfile.open(shard) as tar:
        m = tar.getmember(f"{kept[0]['key']}.{kept[0]['image_member']}")
    at = m.offset_data + m.size // 2
    data[at:at + 8] = bytes(255 - b for b in data[at:at + 8])
    shard.write_bytes(bytes(data))
    os.utime(shard, ns=(st.st_atime_ns, st.st_mtime_ns))

    with pytest.raises(CurateError) as info:  # writing the shards checks every sample
        write(first.dir, progress=False)
    msg = str(info.value)
    assert f"sample {kept[0]['uid']} (00001.tar" in msg and "not the one that was scored" in msg
    assert "score the pool again" in msg
    # Scoring with input.verify: always hashes every shard and finds the change.
    strict = pipeline_from_dict({**p.raw, "input": {**p.raw["input"], "verify": "always"}})
    again = run(strict, out, progress=False)
    assert again.scoring is not None and again.scoring.changed == ["00001.tar"]


def _doubled_scorer() -> type:
    """A scorer that reads another scorer's stored column (caption_words), registered for the
    test only (it is scored in this process)."""
    from collections.abc import Mapping

    import pyarrow as pa

    from curate.stages.base import _REGISTRY, SampleScorer

    class Doubled(SampleScorer):
        name = "doubled_words"

        def inputs(self) -> tuple[str, ...]:
            return ("caption_words",)

        def outputs(self) -> Mapping[str, pa.DataType]:
            return {"doubled_words": pa.int32()}

        def score_sample(self, sample: dict[str, Any]) -> Mapping[str, Any]:
            return {"doubled_words": 2 * sample["caption_words"]}

    _REGISTRY["scorer"].setdefault("doubled_words", Doubled)
    return _REGISTRY["scorer"]["doubled_words"]


def test_a_scorer_reads_another_scorers_stored_columns(demo_pool: Path, tmp_path: Path) -> None:
    from curate.runner import score

    _doubled_scorer()
    store = tmp_path / "store"
    first = score(pipeline(demo_pool, ["image_info", "caption_stats"], []), store, local=True)
    assert first.scorers["caption_stats"].computed == 8
    second = score(pipeline(demo_pool, ["image_info", "caption_stats", "doubled_words"], []),
                   store, local=True)
    assert {k: (v.computed, v.reused) for k, v in second.scorers.items()} == {
        "image_info": (0, 8), "caption_stats": (0, 8), "doubled_words": (8, 0)}
    assert second.reader.computed == 0  # no tar was read: its input is a stored column
    sel = selection_from_dict({"name": "all", "select": [], "output": {"write_shards": False}})
    out = select(store, sel, tmp_path / "sel")
    rows = pq.read_table(out.dir / "manifest").to_pylist()
    assert all(r["doubled_words"] == 2 * r["caption_words"] for r in rows
               if r["caption_words"] is not None)
    # A scorer depends on its inputs only: a sample image_info failed (a broken image) still
    # has its caption scores, and is dropped for its first error.
    broken = [r for r in rows if r["error_stage"] == "image_info"]
    assert len(broken) == 11 and all(r["doubled_words"] == 2 * r["caption_words"] > 0
                                     for r in broken)
    assert all(r["reason"] == "error:image_info" for r in broken)


def test_the_manifest_does_not_depend_on_the_order_scorers_were_added(
        demo_pool: Path, tmp_path: Path) -> None:
    """phash then image_info into one store, image_info then phash into another: a selection
    that names no scorers gives the same manifest from both (a sample that fails in both is
    attributed to the same stage), column for column."""
    from curate.runner import score

    pool = tmp_path / "pool"
    pool.mkdir()
    for i in range(2):
        shutil.copy(demo_pool / f"{i:05d}.tar", pool / f"{i:05d}.tar")
    sel = selection_from_dict({"name": "all", "select": [], "output": {"write_shards": False}})
    manifests = []
    for order in (["phash", "image_info"], ["image_info", "phash"]):
        store = tmp_path / f"store-{order[0]}"
        for name in order:
            score(pipeline(pool, [name], []), store, local=True)
        out = select(store, sel, tmp_path / f"sel-{order[0]}")
        manifests.append(pq.read_table(out.dir / "manifest"))
    first, second = manifests
    assert first.schema.names == second.schema.names
    assert [c for c in first.schema.names if not first[c].equals(second[c])] == []
    failed = [r for r in first.to_pylist() if r["error_stage"] in ("phash", "image_info")]
    assert failed and {r["error_stage"] for r in failed} == {"image_info"}
