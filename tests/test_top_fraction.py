"""top_fraction equals a global sort over a pool spread over several shards."""

from __future__ import annotations

from pathlib import Path

import duckdb
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


def datacomp_keeps(scores: np.ndarray, fraction: float) -> np.ndarray:
    """DataComp's rule, written from its ``get_threshold`` semantics: the threshold is the
    descending-sorted score at 0-based position int(N * f); keep scores >= it."""
    n = int(len(scores) * fraction)
    if n >= len(scores):  # f = 1: DataComp indexes past the end; we keep everything
        return np.ones(len(scores), dtype=bool)
    return scores >= -np.sort(-scores)[n]


@pytest.mark.parametrize(("n_rows", "fraction", "shards"),
                         [(1000, 0.3, 4), (1000, 0.29, 7), (1000, 0.05, 3), (1000, 1.0, 2),
                          (2997, 0.3, 5), (2997, 0.1, 3), (100, 0.29, 2), (7, 0.5, 2)])
def test_equals_datacomp_on_distinct_scores(tmp_path: Path, n_rows: int, fraction: float,
                                            shards: int) -> None:
    rng = np.random.default_rng(0)
    scores = rng.permutation(n_rows)  # distinct: exactly int(N * f) + 1 rows are kept
    files = write_signals(tmp_path, scores, shards)
    p = pipeline_from_dict({"input": {"shards": "x"}, "score": ["caption_stats"], "select": [
        {"rule": "top_fraction", "column": "caption_chars", "fraction": fraction,
         "reason": "not_top"}]})
    sel = select(p.select, files, tmp_path)
    kept = pq.read_table(tmp_path / "manifest").to_pandas()
    expected = datacomp_keeps(scores, fraction)
    assert sel.kept == int(expected.sum())
    assert {int(u, 16) for u in kept[kept.kept].uid} == set(np.flatnonzero(expected))


def test_keeps_one_more_than_n_f_when_it_is_whole() -> None:
    # The figures: 2,997 rows keep 900 at f = 0.3 (N·f = 899.1) and 300 at f = 0.1;
    # 1,000 rows at f = 0.3 (N·f = 300 exactly) keep 301; N = 100, f = 0.29 keeps 29 (float64
    # N·f = 28.999999999999996, position 28).
    for n_rows, fraction, kept in [(2997, 0.3, 900), (2997, 0.1, 300), (1000, 0.3, 301),
                                   (100, 0.29, 29), (10, 0.05, 1)]:
        rule = TopFraction(TopFractionParams(column="x", fraction=fraction))
        rows = [{"x": float(v)} for v in np.random.default_rng(1).permutation(n_rows)]
        assert sum(rule_keeps(rule, rows)) == kept, (n_rows, fraction)


def test_float32_scores_and_ties_at_the_threshold_equal_datacomp() -> None:
    # float32 scores with many ties, as the released pool's similarity columns are stored: the
    # threshold is one of the column's own float32 values, so equality at it is exact.
    rng = np.random.default_rng(2)
    scores = (rng.integers(0, 40, 3001) / 97).astype(np.float32)
    for fraction in (0.1, 0.3, 0.5, 0.29):
        rule = TopFraction(TopFractionParams(column="x", fraction=fraction))
        tbl = pa.table({"x": pa.array(scores, pa.float32())})
        con = duckdb.connect()
        con.register("t", tbl)
        got = [r[0] for r in con.execute(
            f"SELECT coalesce(({rule.keep_sql('t')})::BOOLEAN, FALSE) FROM t").fetchall()]
        assert got == datacomp_keeps(scores, fraction).tolist(), fraction


def test_ties_at_the_threshold_are_kept_and_nulls_dropped() -> None:
    rule = TopFraction(TopFractionParams(column="x", fraction=0.5))
    rows = [{"x": 5}, {"x": 4}, {"x": 4}, {"x": 1}, {"x": None}, {"x": 0}]
    # N = 5 scored, n = int(2.5) = 2, threshold = the score at position 2 = 4: both 4s kept.
    assert rule_keeps(rule, rows) == [True, True, True, False, False, False]
    rule = TopFraction(TopFractionParams(column="x", fraction=0.2))
    # n = 1: the threshold is the second score (4); ties with it are kept.
    assert rule_keeps(rule, rows) == [True, True, True, False, False, False]


def test_over_kept_ranks_only_surviving_rows(tmp_path: Path) -> None:
    scores = np.arange(10)
    files = write_signals(tmp_path, scores, 2)
    p = pipeline_from_dict({"input": {"shards": "x"}, "score": ["caption_stats"], "select": [
        {"rule": "threshold", "column": "caption_chars", "max": 4, "reason": "big"},
        {"rule": "top_fraction", "column": "caption_chars", "fraction": 0.4, "over": "kept",
         "reason": "not_top"}]})
    select(p.select, files, tmp_path)
    m = pq.read_table(tmp_path / "manifest").to_pandas()
    # 5 rows survive (0..4); n = int(5 * 0.4) = 2: the threshold is the third best, 2.
    assert sorted(m[m.kept].caption_chars) == [2, 3, 4]


def test_presets_take_parameters() -> None:
    base = {"input": {"shards": "x"}, "score": ["caption_stats"]}
    p = pipeline_from_dict({**base, "select": [
        {"preset": "datacomp_clip_l14_30pct", "column": "caption_chars", "fraction": 0.1}]})
    assert p.select[0].stage.params.fraction == 0.1  # type: ignore[attr-defined]
    with pytest.raises(ConfigError, match="has no parameter 'colum'"):
        pipeline_from_dict({**base, "select": [{"preset": "laion400m", "colum": "x"}]})
    with pytest.raises(ConfigError, match="clip_score"):  # no clip scorer in the pipeline
        pipeline_from_dict({**base, "select": [{"preset": "datacomp_clip_b32_0.25"}]})
