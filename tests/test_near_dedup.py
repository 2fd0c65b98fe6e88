"""``near_dedup``: planted near-duplicate images are grouped with their originals, one kept."""

from __future__ import annotations

import html
import io
import json
import re
from pathlib import Path
from typing import Any

import imagehash
import numpy as np
import pyarrow.parquet as pq
import pytest
from neardupmaker import PLANTED, Planted, scenes, write_pool
from PIL import Image
from stagetest import run_selector

from curate.errors import ConfigError, CurateError
from curate.lib.hamming import brute_force_pairs
from curate.stages.near_dedup import NearDedup, NearDedupParams

K = NearDedupParams().k


def rows(hashes: list[int], **cols: list[Any]) -> list[dict[str, Any]]:
    return [{"uid": f"u{i}", "shard": "s", "index": i, "phash": h,
             **{c: v[i] for c, v in cols.items()}} for i, h in enumerate(hashes)]


def decided(out: list[dict[str, Any]]) -> list[tuple[str, str | None, str | None]]:
    return [(r["uid"], r["reason"], r["near_duplicate_of"]) for r in out]


def test_groups_keep_the_first_and_name_it(tmp_path: Path) -> None:
    far = 0x0F0F_F0F0_1234_5678
    hashes = [0b0, far, 0b11, 0b1111_1111_0000, far ^ 0b1, 0b1111_1111_0111]
    out = run_selector(NearDedup(NearDedupParams(k=4)), rows(hashes), tmp_path)
    # u0~u2 (2 bits), u2~u5 (9 bits: no); u3~u5 (3 bits): u3 and u5 form their own group
    assert decided(out) == [("u0", None, None), ("u1", None, None),
                            ("u2", "near_duplicate_image", "u0"), ("u3", None, None),
                            ("u4", "near_duplicate_image", "u1"),
                            ("u5", "near_duplicate_image", "u3")]
    assert [r["near_duplicate_distance"] for r in out] == [None, None, "2", None, "1", "3"]
    report = json.loads((tmp_path / "reports" / "near_dedup.json").read_text())
    assert report["groups"] == 3 and report["dropped"] == 3 and report["pairs_within_k"] == 3
    assert report["dropped_beyond_k"] == 0 and report["rows"] == 6


def test_chained_groups_are_counted(tmp_path: Path) -> None:
    hashes = [0b0, 0b1111, 0b1111_1111]  # a~b, b~c at 4 bits; a, c are 8 apart
    out = run_selector(NearDedup(NearDedupParams(k=4)), rows(hashes), tmp_path)
    assert decided(out)[2] == ("u2", "near_duplicate_image", "u0")
    assert out[2]["near_duplicate_distance"] == "8"
    report = json.loads((tmp_path / "reports" / "near_dedup.json").read_text())
    assert report["dropped_beyond_k"] == 1 and report["groups_beyond_k"] == 1


def test_keep_largest_and_by_score_ties_in_pool_order(tmp_path: Path) -> None:
    hashes = [0, 1, 3, 7, 0xFFFF_FFFF_0000]
    largest = run_selector(NearDedup(NearDedupParams(keep="largest")), rows(
        hashes, width=[10, 30, 20, 15, 5], height=[10, 10, 15, 20, 5]), tmp_path)
    # u1 and u3 both have 300 pixels: u1 comes first in pool order
    assert decided(largest) == [("u0", "near_duplicate_image", "u1"), ("u1", None, None),
                                ("u2", "near_duplicate_image", "u1"),
                                ("u3", "near_duplicate_image", "u1"), ("u4", None, None)]
    by_index = run_selector(NearDedup(NearDedupParams(keep="index")), rows(hashes), tmp_path)
    assert [r["near_duplicate_of"] for r in by_index] == ["u3", "u3", "u3", None, None]
    scored = run_selector(NearDedup(NearDedupParams(keep="clip_score")), rows(
        hashes, clip_score=[0.2, None, 0.31, 0.31, 0.1]), tmp_path)
    assert [r["near_duplicate_of"] for r in scored] == ["u2", "u2", None, "u2", None]
    with pytest.raises(CurateError, match="not a number"):
        run_selector(NearDedup(NearDedupParams(keep="caption")),
                     rows(hashes, caption=list("abcde")), tmp_path)
    with pytest.raises(CurateError, match="'phash' is string, not a 64-bit hash"):
        run_selector(NearDedup(), rows(["0f", "0e"]), tmp_path)  # type: ignore[list-item]


def test_only_kept_rows_with_a_hash_take_part(tmp_path: Path) -> None:
    data = rows([0, 1, 3, 0])
    data[1]["phash"] = None
    out = run_selector(NearDedup(), data, tmp_path)
    assert decided(out) == [("u0", None, None), ("u1", None, None),
                            ("u2", "near_duplicate_image", "u0"),
                            ("u3", "near_duplicate_image", "u0")]


def test_int64_and_uint64_columns_agree(tmp_path: Path) -> None:
    big = [2**63 + 5, 2**63 + 4, 2**64 - 1, 2**64 - 2]
    as_int64 = [int(np.array(h, dtype=np.uint64).view(np.int64)) for h in big]
    out = run_selector(NearDedup(), rows(as_int64), tmp_path)
    assert [r["near_duplicate_of"] for r in out] == [None, "u0", None, "u2"]


def test_params_are_checked() -> None:
    from curate.config import pipeline_from_dict

    with pytest.raises(ValueError):
        NearDedupParams(k=40)
    with pytest.raises(ValueError, match="not a column name"):
        NearDedupParams(keep="clip score")
    with pytest.raises(ConfigError, match="k"):
        pipeline_from_dict({"input": {"shards": "x"}, "score": ["phash"],
                            "select": [{"selector": "near_dedup", "k": 40}]})
    # the columns every run checks before it starts (a missing one names its scorer)
    assert NearDedup(NearDedupParams(keep="largest")).columns() == ["phash", "width", "height"]
    assert NearDedup(NearDedupParams(keep="clip_score", column="dhash")).columns() == [
        "dhash", "clip_score"]


# --- a real pipeline on planted near-duplicates -------------------------------------------


def distinct_scenes(n: int) -> list[tuple[bytes, str]]:
    """Demo scenes, leaving out any within 2k bits of an earlier one: pHash puts some distinct
    scenes (a few shapes on the same plain background) that close (docs/near_dedup.md)."""
    out: list[tuple[bytes, str]] = []
    seen: list[int] = []
    for data, ext in scenes(3 * n, seed=5):
        h = int(str(imagehash.phash(Image.open(io.BytesIO(data)))), 16)
        if all(bin(h ^ s).count("1") > 2 * K for s in seen):
            out.append((data, ext))
            seen.append(h)
        if len(out) == n:
            break
    return out


@pytest.fixture(scope="module")
def planted_run(tmp_path_factory: pytest.TempPathFactory, ray_local: None,
                ) -> tuple[list[Planted], dict[str, Path]]:
    from curate.config import pipeline_from_dict
    from curate.runner import run

    root = tmp_path_factory.mktemp("neardup")
    truth = write_pool(root / "pool", distinct_scenes(10))
    dirs = {}
    for keep in ("largest", "first"):
        pipeline = pipeline_from_dict({
            "name": keep, "input": {"shards": str(root / "pool" / "*.tar")},
            "score": ["image_info", "phash"],
            "select": [{"selector": "near_dedup", "keep": keep}],
            "output": {"write_shards": False}})
        dirs[keep] = run(pipeline, root / "run", progress=False).dir
    return truth, dirs


def manifest(sel: Path) -> dict[str, dict[str, Any]]:
    return {r["key"]: r for r in pq.read_table(sel / "manifest").to_pylist()}


@pytest.mark.parametrize("keep", ["largest", "first"])
def test_planted_copies_join_their_originals(planted_run: tuple[list[Planted], dict[str, Path]],
                                             keep: str) -> None:
    truth, dirs = planted_run
    m = manifest(dirs[keep])
    assert len(m) == len(truth) == 8 * (1 + len(PLANTED)) + 8 * 2 + 10
    assert all(r["status"] == "ok" and r["error"] is None for r in m.values())
    by_group: dict[str, list[Planted]] = {}
    for p in truth:
        by_group.setdefault(p.group, []).append(p)
    for group, members in by_group.items():
        if members[0].role == "distinct":  # views and scenes: nothing is merged into them
            assert m[group]["kept"] and m[group]["near_duplicate_of"] is None
            continue
        if keep == "largest":
            want = max(members, key=lambda p: p.width * p.height).key  # ties: none here
            assert next(p for p in members if p.key == want).transform == "resize_150"
        else:
            want = min(members, key=lambda p: (int(p.key[:2]), int(p.key[2:]))).key
        kept_uid = m[want]["uid"]
        assert m[want]["kept"] and m[want]["reason"] is None
        for p in members:
            if p.key != want:
                row = m[p.key]
                assert (row["reason"], row["near_duplicate_of"]) == (
                    "near_duplicate_image", kept_uid), (p.name, p.transform)
    kept = sum(r["kept"] for r in m.values())
    assert kept == 8 + 8 * 2 + 10


def test_hashes_and_report_of_the_planted_pool(
        planted_run: tuple[list[Planted], dict[str, Path]]) -> None:
    truth, dirs = planted_run
    m = manifest(dirs["largest"])
    hashes = np.array([m[p.key]["phash"] for p in truth], dtype=np.uint64)
    # Pairs within k are exactly the planted ones (no distinct image is within k of another).
    group = [p.group for p in truth]
    pairs = brute_force_pairs(hashes, K)
    assert all(group[i] == group[j] for i, j in pairs)
    # Chaining in this pool: copies farther than k from the kept copy, through the original.
    report = json.loads((dirs["largest"] / "reports" / "near_dedup.json").read_text())
    assert report["groups"] == 8 and report["dropped"] == 8 * len(PLANTED)
    dist = {p.key: m[p.key]["near_duplicate_distance"] for p in truth
            if m[p.key]["reason"] == "near_duplicate_image"}
    assert report["dropped_beyond_k"] == sum(d > K for d in dist.values())
    within_groups = len(pairs)
    all_group_pairs = sum(len(g) * (len(g) - 1) // 2 for g in (
        [p for p in truth if p.group == o.key] for o in truth if o.role == "original"))
    print(f"planted pool: {all_group_pairs} same-group pairs, {within_groups} within k={K}; "
          f"{report['dropped_beyond_k']} of {report['dropped']} dropped farther than k from the "
          f"kept one (largest)")


def test_report_shows_the_original_beside_the_near_duplicate(
        planted_run: tuple[list[Planted], dict[str, Path]]) -> None:
    from curate.audit.report import write_report

    _, dirs = planted_run
    rows_by_uid = {r["uid"]: r for r in manifest(dirs["largest"]).values()}
    index = write_report(dirs["largest"])
    page = next((index.parent / "gallery").glob("*_near_duplicate_image_1.html")).read_text()
    cards = re.split(r'<div class="card( dup)?">', page)[1:]
    cards = [cards[i + 1] for i in range(0, len(cards), 2)]
    assert page.count('<div class="card dup">') == len(cards) > 0
    for card in cards:
        uid12 = re.search(r'<div class="uid">(\w+)</div>', card).group(1)  # type: ignore[union-attr]
        row = next(r for u, r in rows_by_uid.items() if u.startswith(uid12))
        original = rows_by_uid[row["near_duplicate_of"]]
        mine, theirs = card.split('<div class="orig">', 1)
        assert "duplicate of" in theirs and f'<div class="uid">{original["uid"][:12]}' in theirs
        assert html.escape(original["caption"][:30]) in theirs
        assert '<span class="tag kept">kept</span>' in theirs
        assert '<img class="thumb"' in mine and '<img class="thumb"' in theirs
        # the step's own columns on the card: the hash distance, not a histogram of hashes
        assert '<tr class="why"><th>near_duplicate_distance</th>' in mine
