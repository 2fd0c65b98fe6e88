"""Rule ``top_fraction``: keep the top ``fraction`` of the pool by ``column``, globally.

DataComp semantics (``baselines/apply_filter.py``, ``get_threshold``): over all N samples with
a score (``over: pool``, the default; rows already dropped by earlier steps still count, as in
DataComp, where the percentile is taken over the whole pool), let n = ``int(N * f)``, with N·f
computed in float64 as DataComp does (N = 100, f = 0.29 gives 28.999999999999996, so n = 28).
The threshold is the score at 0-based position n of the scores sorted in descending order (rank
n + 1), and rows scoring at least that are kept. So at least n + 1 rows are kept, one more than
N·f when N·f is a whole number (2,997 rows at f = 0.3 keep 900), and ties at the threshold are
all kept. With ``over: kept`` the ranking uses only the rows that earlier steps kept. Computed
in one DuckDB query over the whole table, never per shard; the column is compared with one of
its own values, so float32 scores at the threshold compare exactly.

Where DataComp has no answer we choose: f = 1 (its index is out of range) keeps every scored
row; null scores are dropped and do not count in N (DataComp's pool has no missing scores).
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
    numeric_columns = ("column",)  # compared with numbers: a text column is refused up front

    @property
    def reason(self) -> str:
        p: TopFractionParams = self.params  # type: ignore[assignment]
        return p.reason or f"{p.column}_not_in_top_{p.fraction:g}"

    def keep_sql(self, table: str) -> str:
        p: TopFractionParams = self.params  # type: ignore[assignment]
        col, t = ident(p.column), ident(table)
        where = f"{col} IS NOT NULL" + (" AND reason IS NULL" if p.over == "kept" else "")
        # N·f in float64 as DataComp computes it (int(len(df) * fraction)): for N = 100 and
        # f = 0.29 that is 28.999999999999996, so position 28.
        frac = f"CAST('{p.fraction!r}' AS DOUBLE)"
        return (f"{col} >= (SELECT v FROM (SELECT {col} AS v, row_number() OVER (ORDER BY {col} "
                f"DESC) AS rank_ FROM {t} WHERE {where}) WHERE rank_ = (SELECT least(CAST(floor("
                f"count(*) * {frac}) AS BIGINT) + 1, count(*)) FROM {t} WHERE {where}))")
