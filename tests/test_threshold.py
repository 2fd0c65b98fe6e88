from __future__ import annotations

import pytest
from pydantic import ValidationError
from stagetest import rule_keeps

from curate.stages.threshold import Threshold, ThresholdParams


def test_bounds_and_nulls() -> None:
    rule = Threshold(ThresholdParams(column="x", gt=2, max=5, reason="r"))
    rows = [{"x": 2}, {"x": 3}, {"x": 5}, {"x": 6}, {"x": None}]
    assert rule_keeps(rule, rows) == [False, True, True, False, False]
    assert rule.reason == "r"
    assert Threshold(ThresholdParams(column="x", min=1)).reason == "x_out_of_range"


def test_needs_a_bound() -> None:
    with pytest.raises(ValidationError, match="at least one"):
        ThresholdParams(column="x")


def test_float32_scores_compare_in_float32_as_datacomp_does() -> None:
    """A float32 score column against a decimal threshold compares in float32, as DataComp's
    ``df[key] >= threshold`` does on a float32 column with its pinned numpy 1.23 (value-based
    casting; checked: ``np.array([np.float32(0.01)]) >= 0.01`` is True there). So
    float32(0.01) = 0.0099999998 passes ``min: 0.01``, and the next float32 below it does not."""
    import duckdb
    import numpy as np
    import pyarrow as pa

    for t in (0.01, 0.02, 0.11, 0.28, 0.3, 0.25):
        at = np.float32(t)
        below = np.nextafter(at, np.float32(0))
        rule = Threshold(ThresholdParams(column="x", min=t))
        con = duckdb.connect()
        con.register("s", pa.table({"x": pa.array([at, below], pa.float32())}))
        got = [r[0] for r in con.execute(f"SELECT {rule.keep_sql('s')} FROM s").fetchall()]
        assert got == [True, False], t
