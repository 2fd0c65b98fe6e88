"""Selection: rules and selectors over the whole pool's signals, in DuckDB → the manifest.

Steps, in order; each sees only the rows every earlier step kept, and a dropped row records the
first step that dropped it (``reason``):

1. ``duplicate_uid``: a uid seen earlier in pool order (only possible when the input carries
   uids and repeats one);
2. ``error:<stage>``: the sample failed to download, read or score;
3. the pipeline's ``select`` steps (rules and presets expanded into rules, then selectors), in
   the order the pipeline lists them.

Pool order is (shard id, position in shard). Nothing here depends on how many workers or nodes
scored the pool, so the manifest is identical for any cluster layout.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import duckdb

from curate.config import Pipeline
from curate.io.atomic import atomic_path
from curate.sql import ident, literal
from curate.stages.base import Rule, SelectContext, Selector

TABLE = "pool"


@dataclass(frozen=True)
class FunnelRow:
    reason: str
    dropped: int
    stage: str = ""  # the stage that drops with this reason (rule/selector name, or error stage)


@dataclass(frozen=True)
class Selection:
    samples: int
    kept: int
    funnel: list[FunnelRow]  # in step order; reasons that dropped nothing are listed with 0


def _connect(run_dir: Path) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    tmp = run_dir / ".duckdb_tmp"
    con.execute(f"SET temp_directory = {literal(str(tmp))}")
    con.execute("SET preserve_insertion_order = true")
    return con


def select(pipeline: Pipeline, signal_files: list[Path], run_dir: Path,
           error_stages: list[str]) -> Selection:
    """Apply the pipeline's steps to ``signal_files`` (in pool order) and write
    ``manifest.parquet`` into ``run_dir`` atomically."""
    con = _connect(run_dir)
    files = ", ".join(literal(str(f)) for f in signal_files)
    extra = pipeline.selector_columns()
    extra_sql = "".join(f", CAST(NULL AS {_duck_type(t)}) AS {ident(c)}" for c, t in extra.items())
    con.execute(f"""
        CREATE TABLE {TABLE} AS
        SELECT row_number() OVER (ORDER BY shard, "index") AS _row, *,
               CAST(NULL AS VARCHAR) AS reason {extra_sql}
        FROM read_parquet([{files}], union_by_name = true)
    """)
    order: list[str] = []
    stage_of: dict[str, str] = {"duplicate_uid": "uid"}

    def drop(reason_sql: str, where: str) -> None:
        con.execute(f"UPDATE {TABLE} SET reason = {reason_sql} WHERE reason IS NULL AND ({where})")

    drop(literal("duplicate_uid"), f"""_row IN (SELECT _row FROM (
            SELECT _row, row_number() OVER (PARTITION BY uid ORDER BY _row) AS n FROM {TABLE}
        ) WHERE n > 1)""")
    order.append("duplicate_uid")
    drop("'error:' || error_stage", "status <> 'ok'")
    order.extend(f"error:{s}" for s in error_stages)
    for step in pipeline.select:
        st = step.stage
        if isinstance(st, Rule):
            drop(literal(st.reason), f"NOT coalesce(({st.keep_sql(TABLE)})::BOOLEAN, FALSE)")
            order.append(st.reason)
            stage_of[st.reason] = st.name
        else:
            sel: Selector = st  # type: ignore[assignment]
            sel.apply(con, TABLE, SelectContext(run_dir))
            order.extend(sel.reasons())
            stage_of.update({r: sel.name for r in sel.reasons()})
    counts = dict(con.execute(
        f"SELECT coalesce(reason, ''), count(*) FROM {TABLE} GROUP BY 1").fetchall())
    total = sum(counts.values())
    kept = counts.pop("", 0)
    for r in counts:  # reasons not announced in advance (e.g. an unexpected error stage)
        if r not in order:
            order.append(r)
    funnel = [FunnelRow(r, counts.get(r, 0),
                        stage_of.get(r, r.removeprefix("error:") if r.startswith("error:")
                                     else "")) for r in order
              if counts.get(r, 0) or not r.startswith(("error:", "duplicate_uid"))]
    with atomic_path(run_dir / "manifest.parquet") as tmp:
        con.execute(f"""
            COPY (SELECT uid, shard, key, "index", reason IS NULL AS kept, reason,
                         * EXCLUDE (_row, uid, shard, key, "index", reason)
                  FROM {TABLE} ORDER BY _row)
            TO {literal(str(tmp))} (FORMAT parquet, COMPRESSION zstd)
        """)
    con.close()
    return Selection(samples=total, kept=kept, funnel=funnel)


def _duck_type(t: object) -> str:
    import pyarrow as pa

    mapping = {pa.string(): "VARCHAR", pa.int32(): "INTEGER", pa.int64(): "BIGINT",
               pa.float32(): "FLOAT", pa.float64(): "DOUBLE", pa.bool_(): "BOOLEAN"}
    if t not in mapping:
        raise TypeError(f"selector column type {t} has no DuckDB mapping")
    return mapping[t]  # type: ignore[index]
