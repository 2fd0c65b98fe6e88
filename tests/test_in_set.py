from __future__ import annotations

from stagetest import rule_keeps

from curate.stages.in_set import InSet, InSetParams


def test_membership_and_quoting() -> None:
    rule = InSet(InSetParams(column="lang", values=["en", "it's"], reason="not_english"))
    rows = [{"lang": "en"}, {"lang": "de"}, {"lang": None}, {"lang": "it's"}]
    assert rule_keeps(rule, rows) == [True, False, False, True]
