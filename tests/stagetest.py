"""Helpers to run one scorer, rule or selector on hand-made rows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from curate.schema import BATCH_SCHEMA
from curate.stages.base import BatchErrors, Rule, Scorer, SelectContext, Selector, run_scorer


def score(scorer: Scorer, rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], BatchErrors]:
    """Score ``rows`` (partial sample dicts) and return the output columns per row."""
    full = [{"uid": f"{i:032x}", "shard": "s.tar", "key": str(i), "index": i, "status": "ok",
             **r} for i, r in enumerate(rows)]
    extra = sorted({k for r in rows for k in r} - set(BATCH_SCHEMA.names))  # earlier outputs
    schema = BATCH_SCHEMA
    for name in extra:
        schema = schema.append(pa.field(name, pa.array([r.get(name) for r in rows]).type))
    batch = pa.Table.from_pylist(full, schema=schema)
    scorer.setup()
    errors = BatchErrors.from_batch(batch)
    out = run_scorer(scorer, batch, errors)
    cols = list(scorer.outputs())
    return out.select(cols).to_pylist(), errors


def rule_keeps(rule: Rule, rows: list[dict[str, Any]]) -> list[bool]:
    con = duckdb.connect()
    con.register("t", pa.Table.from_pylist(rows))
    sql = f"SELECT coalesce(({rule.keep_sql('t')})::BOOLEAN, FALSE) FROM t"
    return [r[0] for r in con.execute(sql).fetchall()]


def run_selector(selector: Selector, rows: list[dict[str, Any]],
                 run_dir: Path | None = None) -> list[dict[str, Any]]:
    con = duckdb.connect()
    con.register("src", pa.Table.from_pylist(rows))
    extra = "".join(f", CAST(NULL AS VARCHAR) AS {c}" for c in selector.extra_columns())
    con.execute("CREATE TABLE pool AS SELECT row_number() OVER () AS _row, *, "
                f"CAST(NULL AS VARCHAR) AS reason {extra} FROM src")
    selector.apply(con, "pool", SelectContext(run_dir or Path("/nonexistent")))
    cur = con.execute("SELECT * FROM pool ORDER BY _row")
    names = [d[0] for d in cur.description]
    return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
