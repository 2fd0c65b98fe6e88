"""Rule ``top_fraction``: keep the top ``fraction`` of the pool by ``column``, globally.

DataComp semantics: over all N samples with a score (``over: pool``, the default; rows already
dropped by earlier steps still count, as in DataComp, where the percentile is taken over the whole
pool), the threshold is the score at rank k = ⌊N·f⌋ in descending order (1-based). Rows
scoring at least that are kept, so ties at the threshold are all kept. With
``over: kept`` the ranking uses only the rows that earlier steps kept. Computed in one DuckDB
query over the whole table, never per shard. k = 0 keeps nothing; null scores are dropped.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from curate.sql import ident
from curate.stages.base import Params, Rule, register


class TopFractionParams(Params):
    column: str
    fraction: float = Field(gt=0, le=1)
    over: Literal["pool", "kept"] = "pool"
    reason: str | None = None


@register
class TopFraction(Rule):
    name = "top_fraction"
    Params = TopFractionParams

    @property
    def reason(self) -> str:
        p: TopFractionParams = self.params  # type: ignore[assignment]
        return p.reason or f"{p.column}_not_in_top_{p.fraction:g}"

    def keep_sql(self, table: str) -> str:
        p: TopFractionParams = self.params  # type: ignore[assignment]
        col, t = ident(p.column), ident(table)
        where = f"{col} IS NOT NULL" + (" AND reason IS NULL" if p.over == "kept" else "")
        # The fraction as an exact decimal: floor(N * 0.29) must not become 28.999... .
        frac = f"CAST('{p.fraction!r}' AS DECIMAL(38, 18))"
        return (f"{col} >= (SELECT v FROM (SELECT {col} AS v, row_number() OVER (ORDER BY {col} "
                f"DESC) AS rank_ FROM {t} WHERE {where}) WHERE rank_ = (SELECT CAST(floor("
                f"count(*) * {frac}) AS BIGINT) FROM {t} WHERE {where}))")
