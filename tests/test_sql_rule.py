from __future__ import annotations

from stagetest import rule_keeps

from curate.stages.sql_rule import SqlParams, SqlRule


def test_expression() -> None:
    rule = SqlRule(SqlParams(keep="width >= 200 AND height >= 200", reason="image_too_small"))
    rows = [{"width": 300, "height": 200}, {"width": 1000, "height": 150},
            {"width": None, "height": 500}]
    assert rule_keeps(rule, rows) == [True, False, False]
    assert rule.reason == "image_too_small"
