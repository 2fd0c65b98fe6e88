"""The text-spotting pipelines (parrot_free, tmars, cat) on the demo pool, run into one run
directory so the pool is scored once, checked against the generator's ground truth."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import TEXT_PIPELINES

from curate.io.shards import ShardReader, list_shards

TEXT_PHOTOS = {"skimage.data.stereo_motorcycle"}  # the only demo photo with real text (YAMAHA)


@pytest.fixture(scope="module")
def text_runs(demo_pool: Path, text_run: Path) -> dict[str, object]:
    """Each pipeline's run (how many shards it found scored) and its manifest joined with the
    generator's ground truth; the runs are the session's ``text_run`` (the README's loop)."""
    resumed = json.loads((text_run.parent / "resumed.json").read_text())
    truth = pq.read_table(demo_pool / "ground_truth.parquet")
    con = duckdb.connect()
    con.register("truth", truth)
    results: dict[str, object] = {}
    for name in TEXT_PIPELINES:
        sel = text_run / "selections" / name
        results[name] = (SimpleNamespace(dir=sel, shards_resumed=resumed[name]), con.sql(
            f"SELECT m.*, truth.kind, truth.source FROM '{sel}/manifest/*.parquet' m "
            "JOIN truth USING (uid)").to_arrow_table())
    return results


def rows(table: pa.Table) -> list[dict[str, object]]:
    return table.to_pylist()


@pytest.mark.slow
def test_scored_once_for_three_selections(text_runs: dict[str, object]) -> None:
    assert text_runs["parrot_free"][0].shards_resumed == 0  # type: ignore[index]
    assert text_runs["tmars"][0].shards_resumed == 8  # type: ignore[index]
    assert text_runs["cat"][0].shards_resumed == 8  # type: ignore[index]


@pytest.mark.slow
def test_ocr_reads_the_posters_and_nothing_on_plain_images(demo_pool: Path,
                                                           text_runs: dict[str, object]) -> None:
    manifest = {r["uid"]: r for r in rows(text_runs["cat"][1])}  # type: ignore[index]
    rendered: dict[str, str] = {}
    for ref in list_shards(str(demo_pool / "*.tar")):
        for batch in ShardReader(ref):
            for r in batch.select(["uid", "json"]).to_pylist():
                meta = json.loads(r["json"])
                if meta.get("source") == "render:text":
                    rendered[r["uid"]] = meta["text"]
    found = total = 0
    for uid, text in rendered.items():
        spotted = set(re.findall(r"\w+", (manifest[uid]["ocr_text"] or "").lower()))
        words = re.findall(r"\w+", text.lower())
        found += sum(w in spotted for w in words)
        total += len(words)
    assert total > 50 and found / total >= 0.9
    plain = [r for r in manifest.values() if r["kind"] in ("photo", "scene")
             and r["source"] not in TEXT_PHOTOS]
    assert len(plain) > 300 and all(r["ocr_n_boxes"] == 0 for r in plain)


@pytest.mark.slow
def test_parroting_is_high_exactly_on_parrot_captions(text_runs: dict[str, object]) -> None:
    for r in rows(text_runs["cat"][1]):  # type: ignore[index]
        if r["parrot_char_sim"] is None:
            continue
        assert (r["parrot_char_sim"] >= 0.8) == (r["kind"] == "parrot"), r["uid"]
        assert (r["parrot_word_overlap"] > 0) == (r["kind"] == "parrot"), r["uid"]


@pytest.mark.slow
def test_tmars_masked_score_drops_for_parrots(text_runs: dict[str, object]) -> None:
    all_rows = rows(text_runs["tmars"][1])  # type: ignore[index]
    parrots = [r for r in all_rows if r["kind"] == "parrot"]
    drops = [r["clip_score_masked"] - r["clip_score"] for r in parrots]
    assert sum(drops) / len(drops) < -0.03
    assert sum(d < 0 for d in drops) >= 0.7 * len(drops)
    no_text = [r for r in all_rows if r["ocr_n_boxes"] == 0 and r["clip_score"] is not None]
    assert all(abs(r["clip_score_masked"] - r["clip_score"]) < 1e-6 for r in no_text)


@pytest.mark.slow
def test_funnels_drop_the_right_samples(text_runs: dict[str, object]) -> None:
    pf = rows(text_runs["parrot_free"][1])  # type: ignore[index]
    assert all(r["reason"] == "parrot_caption" for r in pf if r["kind"] == "parrot")
    assert all(r["ocr_n_boxes"] == 0 for r in pf if r["kept"])
    assert {r["source"] for r in pf if r["reason"] == "has_text"} <= TEXT_PHOTOS
    tm = rows(text_runs["tmars"][1])  # type: ignore[index]
    cut = [r for r in tm if r["reason"] == "tmars_masked_score_low"]
    kept = [r for r in tm if r["kept"]]
    assert min(r["clip_score_masked"] for r in kept) >= max(r["clip_score_masked"] for r in cut)
    cat = rows(text_runs["cat"][1])  # type: ignore[index]
    assert not any(r["kept"] for r in cat if r["kind"] == "parrot")
    assert all(r["has_action"] and r["caption_complexity"] >= 1 for r in cat if r["kept"])
    assert any(r["reason"] == "text_spotting" for r in cat if r["kind"] == "parrot")
