"""Rule ``threshold``: keep rows whose numeric ``column`` lies within the given bounds.

Bounds: ``min`` (≥), ``max`` (≤), ``gt`` (>), ``lt`` (<); at least one. A null value drops the
row. Example: ``{rule: threshold, column: caption_words, gt: 2, reason: caption_too_few_words}``.

A bound is compared in the column's type: a float32 score (CLIP scores are float32) is compared
with the bound rounded to float32, as DataComp's ``df[key] >= threshold`` does on float32
columns with its pinned numpy 1.23. So float32(0.01), which is 0.0099999998, passes
``min: 0.01``.
"""

from __future__ import annotations

from pydantic import model_validator

from curate.sql import ident, literal
from curate.stages.base import Params, Rule, register


class ThresholdParams(Params):
    column: str
    min: float | None = None
    max: float | None = None
    gt: float | None = None
    lt: float | None = None
    reason: str | None = None

    @model_validator(mode="after")
    def _one_bound(self) -> ThresholdParams:
        if all(b is None for b in (self.min, self.max, self.gt, self.lt)):
            raise ValueError("give at least one of min, max, gt, lt")
        return self


@register
class Threshold(Rule):
    name = "threshold"
    Params = ThresholdParams
    numeric_columns = ("column",)  # compared with numbers: a text column is refused up front

    @property
    def reason(self) -> str:
        p: ThresholdParams = self.params  # type: ignore[assignment]
        return p.reason or f"{p.column}_out_of_range"

    def keep_sql(self, table: str) -> str:
        p: ThresholdParams = self.params  # type: ignore[assignment]
        col = ident(p.column)
        parts = [f"{col} {op} {literal(v)}" for op, v in
                 ((">=", p.min), ("<=", p.max), (">", p.gt), ("<", p.lt)) if v is not None]
        return " AND ".join(parts)
