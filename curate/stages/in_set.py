"""Rule ``in_set``: keep rows whose ``column`` equals one of ``values`` (null drops).

Example: ``{rule: in_set, column: lang, values: [en], reason: not_english}``.
"""

from __future__ import annotations

from pydantic import Field

from curate.sql import ident, literal
from curate.stages.base import Params, Rule, register


class InSetParams(Params):
    column: str
    values: list[str | int | float | bool] = Field(min_length=1)
    reason: str | None = None


@register
class InSet(Rule):
    name = "in_set"
    Params = InSetParams

    @property
    def reason(self) -> str:
        p: InSetParams = self.params  # type: ignore[assignment]
        return p.reason or f"{p.column}_not_allowed"

    def keep_sql(self, table: str) -> str:
        p: InSetParams = self.params  # type: ignore[assignment]
        return f"{ident(p.column)} IN ({', '.join(literal(v) for v in p.values)})"
