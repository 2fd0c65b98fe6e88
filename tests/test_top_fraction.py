"""top_fraction equals a global sort over a pool spread over several shards."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from stagetest import rule_keeps
from storemaker import write_store

from curate.config import pipeline_from_dict
from curate.errors import ConfigError
from curate.select.pool import PoolSource
from curate.select.selection import select
from curate.stages.top_fraction import TopFraction, TopFractionParams


def write_signals(root: Path, scores: np.ndarray, shards: int) -> PoolSource:
    rows = [{"uid": f"{i:032x}", "shard": f"{s:05d}.tar", "key": str(i), "index": j,
             "caption_chars": int(scores[i]), "caption_words": 3}
            for s, chunk in enumerate(np.array_split(np.arange(len(scores)), shards))
            for j, i in enumerate(chunk)]
    return write_store(root / "store", rows, {"caption_chars": pa.int32(),
                                              "caption_words": pa.int32()}, label="caption_stats")


@pytest.mark.parametrize(("fraction", "shards"), [(0.3, 4), (0.29, 7), (0.05, 3), (1.0, 2)])
def test_equals_global_sort(tmp_path: Path, fraction: float, shards: int) -> None:
    rng = np.random.default_rng(0)
    scores = rng.permutation(1000)  # distinct: exactly k rows are kept
    files = write_signals(tmp_path, scores, shards)
    p = pipeline_from_dict({"input": {"shards": "x"}, "score": ["caption_stats"], "select": [
        {"rule": "top_fraction", "column": "caption_chars", "fraction": fraction}]})
    sel = select(p.select, files, tmp_path)
    kept = pq.read_table(tmp_path / "manifest.parquet").to_pandas()
    k = int(np.floor(len(scores) * fraction))
    expected = set(np.argsort(-scores)[:k])
    assert sel.kept == k
    assert {int(u, 16) for u in kept[kept.kept].uid} == expected


def test_ties_at_the_threshold_are_kept_and_nulls_dropped() -> None:
    rule = TopFraction(TopFractionParams(column="x", fraction=0.5))
    rows = [{"x": 5}, {"x": 4}, {"x": 4}, {"x": 1}, {"x": None}, {"x": 0}]
    # N = 5 scored, k = floor(2.5) = 2, threshold = 4 → both 4s kept.
    assert rule_keeps(rule, rows) == [True, True, True, False, False, False]


def test_over_kept_ranks_only_surviving_rows(tmp_path: Path) -> None:
    scores = np.arange(10)
    files = write_signals(tmp_path, scores, 2)
    p = pipeline_from_dict({"input": {"shards": "x"}, "score": ["caption_stats"], "select": [
        {"rule": "threshold", "column": "caption_chars", "max": 4, "reason": "big"},
        {"rule": "top_fraction", "column": "caption_chars", "fraction": 0.4, "over": "kept",
         "reason": "not_top"}]})
    select(p.select, files, tmp_path)
    m = pq.read_table(tmp_path / "manifest.parquet").to_pandas()
    # 5 rows survive (0..4); top 40% of those = {4, 3}.
    assert sorted(m[m.kept].caption_chars) == [3, 4]


def test_presets_take_parameters() -> None:
    base = {"input": {"shards": "x"}, "score": ["caption_stats"]}
    p = pipeline_from_dict({**base, "select": [
        {"preset": "datacomp_clip_l14_30pct", "column": "caption_chars", "fraction": 0.1}]})
    assert p.select[0].stage.params.fraction == 0.1  # type: ignore[attr-defined]
    with pytest.raises(ConfigError, match="has no parameter 'colum'"):
        pipeline_from_dict({**base, "select": [{"preset": "laion400m", "colum": "x"}]})
    with pytest.raises(ConfigError, match="clip_score"):  # no clip scorer in the pipeline
        pipeline_from_dict({**base, "select": [{"preset": "datacomp_clip_b32_0.25"}]})
