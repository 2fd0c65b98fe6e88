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
