"""SemDeDup removes exactly the planted near-duplicates, whatever the sharding."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from embedpool import run_select, unit, write_pool

from curate.errors import ConfigError
from curate.stages.semdedup import dedup_cluster


def planted(n: int = 400, pairs: int = 40, d: int = 64, seed: int = 0,
            ) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int]]]:
    rng = np.random.default_rng(seed)
    img = unit(rng.normal(size=(n, d)))
    dups = []
    for p in range(pairs):  # item n-pairs+p is a near-copy of item p
        k = n - pairs + p
        img[k] = unit((img[p] + 0.005 * rng.normal(size=d))[None])[0]  # cos ≈ 0.999
        dups.append((p, k))
    txt = unit(img + 0.5 * rng.normal(size=img.shape))
    return img, txt, dups


@pytest.mark.parametrize("shards", [1, 4])
def test_removes_exactly_the_planted_duplicates(tmp_path: Path, shards: int) -> None:
    img, txt, dups = planted()
    rng = np.random.default_rng(shards)
    files = write_pool(tmp_path, img, txt, shards, order=rng.permutation(len(img)))
    sel, rows, _ = run_select(tmp_path, files, [{"selector": "semdedup", "epsilon": 0.01,
                                                 "clusters": 4}])
    dropped = {int(r["uid"], 16): int(r["semantic_duplicate_of"], 16) for r in rows
               if r["reason"] == "semantic_duplicate"}
    assert len(dropped) == len(dups) and sel.kept == len(img) - len(dups)
    for a, b in dups:
        assert (a in dropped) != (b in dropped)  # exactly one of each pair goes
        gone, other = (a, b) if a in dropped else (b, a)
        assert dropped[gone] == other


def test_result_is_independent_of_shard_count(tmp_path: Path) -> None:
    img, txt, _ = planted(seed=3)
    decisions = []
    for shards in (1, 5):
        run = tmp_path / str(shards)
        order = np.random.default_rng(shards).permutation(len(img))
        files = write_pool(run, img, txt, shards, order=order)
        _, rows, _ = run_select(run, files, [{"selector": "semdedup", "epsilon": 0.01}])
        decisions.append([(r["uid"], r["reason"], r["semantic_duplicate_of"]) for r in rows])
    assert decisions[0] == decisions[1]


def test_earlier_dropped_items_still_count_and_links_reach_a_kept_item() -> None:
    x = unit(np.array([[1.0, 0.0], [1.0, 0.01], [1.0, 0.02], [0.0, 1.0]]))
    is_dup, earlier = dedup_cluster(x, threshold=0.9999)
    # 1 duplicates 0; 2 is closest to 1 (dropped), and still counts as a duplicate.
    assert is_dup.tolist() == [False, True, True, False]
    assert earlier[1] == 0 and earlier[2] == 1


def test_needs_stored_embeddings() -> None:
    from curate.config import pipeline_from_dict

    with pytest.raises(ConfigError, match="needs the embeddings 'clip_image_emb'"):
        pipeline_from_dict({"input": {"shards": "x"}, "score": ["image_info"],
                            "select": [{"selector": "semdedup"}]})
