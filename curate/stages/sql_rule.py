"""Rule ``sql``: keep rows where a DuckDB boolean expression over signal columns is true.

The expression is the user's own and is checked against the pipeline's columns before any work
starts. A null result drops the row. Beware that DuckDB's ``least``/``greatest`` skip nulls.
Example: ``{rule: sql, keep: "width >= 200 AND height >= 200", reason: image_too_small}``.
"""

from __future__ import annotations

from pydantic import Field

from curate.stages.base import Params, Rule, register


class SqlParams(Params):
    keep: str = Field(min_length=1)
    reason: str


@register
class SqlRule(Rule):
    name = "sql"
    Params = SqlParams

    def keep_sql(self, table: str) -> str:
        return self.params.keep  # type: ignore[attr-defined,no-any-return]
