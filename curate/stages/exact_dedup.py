"""Selector ``exact_dedup``: keep the first of each group of exact duplicates.

Among the rows still kept, in pool order (shard id, then position in shard), a row whose
``image_sha256`` equals an earlier row's is dropped with reason ``duplicate_image``; then a row
whose ``url_caption_sha256`` equals an earlier remaining row's is dropped with reason
``duplicate_url_caption``. ``duplicate_of`` names the uid of the row that was kept. Pool order
makes the choice independent of how many workers or nodes scored the pool. Needs the
``exact_hash`` scorer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import pyarrow as pa

from curate.sql import ident, literal
from curate.stages.base import Params, SelectContext, Selector, register

_BY = {"image": ("image_sha256", "duplicate_image"),
       "url_caption": ("url_caption_sha256", "duplicate_url_caption")}


class ExactDedupParams(Params):
    by: list[Literal["image", "url_caption"]] = ["image", "url_caption"]


@register
class ExactDedup(Selector):
    name = "exact_dedup"
    Params = ExactDedupParams

    def columns(self) -> Sequence[str]:
        return [_BY[b][0] for b in self.params.by]  # type: ignore[attr-defined]

    def reasons(self) -> Sequence[str]:
        return [_BY[b][1] for b in self.params.by]  # type: ignore[attr-defined]

    def extra_columns(self) -> Mapping[str, pa.DataType]:
        return {"duplicate_of": pa.string()}

    def apply(self, con: Any, table: str, ctx: SelectContext) -> None:
        t = ident(table)
        for by in self.params.by:  # type: ignore[attr-defined]
            column, reason = _BY[by]
            col = ident(column)
            con.execute(f"""
                UPDATE {t} SET reason = {literal(reason)}, duplicate_of = d.first_uid
                FROM (
                    SELECT _row,
                           first_value(uid) OVER w AS first_uid,
                           row_number() OVER w AS n
                    FROM {t}
                    WHERE reason IS NULL AND {col} IS NOT NULL
                    WINDOW w AS (PARTITION BY {col} ORDER BY _row)
                ) AS d
                WHERE {t}._row = d._row AND d.n > 1
            """)
