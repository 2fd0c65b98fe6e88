"""Selector ``metaclip_balance``: MetaCLIP's metadata balancing (Xu et al., "Demystifying CLIP
Data"), over the ``metaclip_entries`` the ``metaclip_match`` scorer found.

Two passes over the rows still kept when the step runs (the pool given to balancing):

1. ``count[e]`` = how many of those rows matched entry e, over all shards (a DuckDB
   aggregation over the unnested id lists: its memory grows with the number of entries, not of
   rows);
2. each row draws, for each of its entries, ``u(seed, uid, e)`` in [0, 1) and is kept when any
   draw is below ``p[e] = t / max(count[e], t)``; so P(keep) = 1 - prod(1 - p[e]). Rows that
   matched nothing are dropped. Reason: ``metaclip_balance``.

The draws come from a splitmix64 hash of (seed, the uid's first 64 bits, entry id), computed in
numpy inside a streaming DuckDB function: the subset depends on the seed only, never on shards,
workers or order. ``t`` is a parameter (MetaCLIP: 20k for a 400M pool, 170k for 2.5B), or is
derived from ``target_size``: the smallest t whose expected number of kept rows reaches it.

Writes ``SEL/entry_counts.parquet`` (entry_id, entry, count_before, count_after, p), the report
``SEL/reports/metaclip_balance.json`` (head/tail summary) and ``metaclip_balance.png`` (the
sorted entry-count curve before and after balancing, as in MetaCLIP's figure). Adds the column
``metaclip_keep_p`` (each row's keep probability).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, model_validator

from curate.io.atomic import atomic_path, write_parquet
from curate.sql import ident, literal
from curate.stages.base import Params, SelectContext, Selector, register

REASON = "metaclip_balance"
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_HEX = np.full(256, 0, dtype=np.uint64)
for _i, _c in enumerate(b"0123456789abcdef"):
    _HEX[_c] = _i
for _i, _c in enumerate(b"ABCDEF"):
    _HEX[_c] = 10 + _i
SAMPLE_ROWS = 2_000_000  # rows used to derive t from target_size (all of them below this)


class MetaclipBalanceParams(Params):
    t: int | None = Field(default=None, gt=0)  # default 20,000 unless target_size is given
    target_size: int | None = Field(default=None, gt=0)  # derive t: expected kept ≈ this
    seed: int = 0
    column: str = "metaclip_entries"
    metadata: str | None = None  # names entries in the report (default: the shipped file)

    @model_validator(mode="after")
    def _one_of(self) -> MetaclipBalanceParams:
        if self.t is not None and self.target_size is not None:
            raise ValueError("give t or target_size, not both")
        return self


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser on uint64 (wrapping arithmetic)."""
    x = x ^ (x >> np.uint64(30))
    x = x * _M1
    x = x ^ (x >> np.uint64(27))
    x = x * _M2
    return x ^ (x >> np.uint64(31))


def uid64(uids: pa.Array) -> np.ndarray:
    """The first 64 bits of 32-hex-character uids, as uint64."""
    raw = np.asarray(pc.utf8_slice_codeunits(uids, 0, 16).cast(pa.binary()).to_numpy(
        zero_copy_only=False)).astype("S16")
    nibbles = _HEX[raw.view(np.uint8).reshape(-1, 16)]
    shifts = np.arange(60, -1, -4, dtype=np.uint64)
    return np.bitwise_or.reduce(nibbles << shifts, axis=1)


def draws(seed: int, uids: np.ndarray, entries: np.ndarray) -> np.ndarray:
    """u(seed, uid, entry) in [0, 1), elementwise over equal-length uid64/entry arrays."""
    with np.errstate(over="ignore"):
        salt = _mix(np.uint64(seed & (2**64 - 1)) * _GOLDEN + entries.astype(np.uint64))
        key = _mix(uids ^ salt)
    return (key >> np.uint64(11)).astype(np.float64) * 2.0**-53


def _flat(entries: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(entry ids, row index of each) of a list<int32> array; null lists are empty."""
    values = pc.list_flatten(entries).to_numpy(zero_copy_only=False).astype(np.int64)
    parents = pc.list_parent_indices(entries).to_numpy(zero_copy_only=False)
    return values, parents


def keep_probability(entries: pa.Array, p: np.ndarray) -> np.ndarray:
    values, parents = _flat(entries)
    with np.errstate(divide="ignore"):
        logs = np.log1p(-p[values])
    total = np.bincount(parents, weights=logs, minlength=len(entries))
    return 1.0 - np.exp(total)


def keep(seed: int, uids: pa.Array, entries: pa.Array, p: np.ndarray) -> np.ndarray:
    values, parents = _flat(entries)
    if len(values) == 0:
        return np.zeros(len(entries), dtype=bool)
    u = draws(seed, uid64(uids)[parents], values)
    hits = parents[u < p[values]]
    return np.bincount(hits, minlength=len(entries)) > 0


def derive_t(entries: pa.Array, counts: np.ndarray, target: float) -> int:
    """Smallest t whose expected number of kept rows among ``entries`` (list<int32>, one per
    row) reaches ``target``; the largest count (everything matched is kept) if none does."""
    flat, parents = _flat(entries)
    c = counts[flat].astype(np.float64)

    def expected(t: int) -> float:
        p = np.minimum(1.0, t / np.maximum(c, 1.0))
        with np.errstate(divide="ignore"):
            logs = np.bincount(parents, weights=np.log1p(-p), minlength=len(entries))
        return float(np.sum(1.0 - np.exp(logs)))

    lo, hi = 1, max(1, int(counts.max()) if len(counts) else 1)
    if expected(hi) < target:
        return hi
    while lo < hi:
        mid = (lo + hi) // 2
        if expected(mid) >= target:
            hi = mid
        else:
            lo = mid + 1
    return lo


@register
class MetaclipBalance(Selector):
    name = "metaclip_balance"
    Params = MetaclipBalanceParams

    def columns(self) -> Sequence[str]:
        return [self.params.column]  # type: ignore[attr-defined]

    def reasons(self) -> Sequence[str]:
        return [REASON]

    def extra_columns(self) -> Mapping[str, pa.DataType]:
        return {"metaclip_keep_p": pa.float64()}

    def apply(self, con: Any, table: str, ctx: SelectContext) -> None:
        prm: MetaclipBalanceParams = self.params  # type: ignore[assignment]
        t_ = ident(table)
        col = ident(prm.column)
        rows_in, unmatched = con.execute(
            f"SELECT count(*), count(*) FILTER (WHERE coalesce(len({col}), 0) = 0) FROM {t_} "
            "WHERE reason IS NULL").fetchall()[0]
        pairs = con.execute(f"""
            SELECT e, count(*) FROM (SELECT unnest({col}) AS e FROM {t_} WHERE reason IS NULL)
            WHERE e IS NOT NULL GROUP BY e ORDER BY e""").fetchnumpy()
        ids = np.asarray(pairs["e"], dtype=np.int64)
        n_ids = int(ids.max()) + 1 if len(ids) else 0
        names = _entry_names(prm.metadata)
        size = max(n_ids, len(names))
        before = np.zeros(size, dtype=np.int64)
        before[ids] = np.asarray(pairs["count_star()"], dtype=np.int64)

        t = prm.t or 20_000
        if prm.target_size is not None:
            t = derive_t(_sample_rows(con, t_, col, rows_in), before,
                         prm.target_size * min(1.0, SAMPLE_ROWS / max(rows_in, 1)))
        p = t / np.maximum(before, t).astype(np.float64)
        seed = prm.seed

        def keep_p_udf(entries: pa.ChunkedArray) -> pa.Array:
            return pa.array(keep_probability(entries.combine_chunks(), p))

        def keep_udf(uids: pa.ChunkedArray, entries: pa.ChunkedArray) -> pa.Array:
            return pa.array(keep(seed, uids.combine_chunks(), entries.combine_chunks(), p))

        con.create_function("_metaclip_keep_p", keep_p_udf, ["INTEGER[]"], "DOUBLE",
                            type="arrow", null_handling="special")
        con.create_function("_metaclip_keep", keep_udf, ["VARCHAR", "INTEGER[]"], "BOOLEAN",
                            type="arrow", null_handling="special")
        try:
            con.execute(f"UPDATE {t_} SET metaclip_keep_p = _metaclip_keep_p({col}) "
                        "WHERE reason IS NULL")
            con.execute(f"UPDATE {t_} SET reason = {literal(REASON)} WHERE reason IS NULL AND "
                        f"NOT _metaclip_keep(uid, {col})")
        finally:
            con.remove_function("_metaclip_keep_p")
            con.remove_function("_metaclip_keep")
        after_pairs = con.execute(f"""
            SELECT e, count(*) FROM (SELECT unnest({col}) AS e FROM {t_} WHERE reason IS NULL)
            WHERE e IS NOT NULL GROUP BY e""").fetchnumpy()
        after = np.zeros(size, dtype=np.int64)
        after[np.asarray(after_pairs["e"], dtype=np.int64)] = np.asarray(
            after_pairs["count_star()"], dtype=np.int64)
        rows_kept = con.execute(f"SELECT count(*) FROM {t_} WHERE reason IS NULL").fetchall()[0][0]
        _write_outputs(ctx, names, before, after, t, prm, rows_in, rows_kept, unmatched)


def _sample_rows(con: Any, table: str, col: str, rows: int) -> pa.Array:
    """Entry lists of (a uid-determined sample of at most SAMPLE_ROWS of) the kept rows."""
    where = "reason IS NULL"
    if rows > SAMPLE_ROWS:
        cut = format(int(65536 * SAMPLE_ROWS / rows), "04x")
        where += f" AND lower(substr(uid, 1, 4)) < {literal(cut)}"
    return con.sql(f"SELECT {col} FROM {table} WHERE {where}").to_arrow_table().column(
        0).combine_chunks()


def _entry_names(metadata: str | None) -> list[str]:
    from curate.lib.metadata import DEFAULT_METADATA, load_metadata

    path = Path(metadata) if metadata else DEFAULT_METADATA
    return load_metadata(path) if path.is_file() else []


def _write_outputs(ctx: SelectContext, names: list[str], before: np.ndarray,
                   after: np.ndarray, t: int, prm: MetaclipBalanceParams, rows_in: int,
                   rows_kept: int, unmatched: int) -> None:
    n = len(before)
    p = t / np.maximum(before, t).astype(np.float64)
    table = pa.table({
        "entry_id": pa.array(np.arange(n, dtype=np.int32)),
        "entry": pa.array([names[i] if i < len(names) else None for i in range(n)],
                          type=pa.string()),
        "count_before": pa.array(before), "count_after": pa.array(after),
        "p": pa.array(p),
    })
    write_parquet(table, ctx.out_dir / "entry_counts.parquet")
    matches = int(before.sum())
    head = before > t
    order = np.argsort(-before, kind="stable")
    summary = {
        "t": t, "t_from_target_size": prm.target_size, "seed": prm.seed,
        "rows_in": int(rows_in), "rows_kept": int(rows_kept),
        "rows_without_match": int(unmatched),
        "entries": int(len(names) or n), "entries_matched": int((before > 0).sum()),
        "entries_zero_matches": int((len(names) or n) - (before > 0).sum()),
        "head_entries": int(head.sum()),
        "head_match_share": float(before[head].sum() / matches) if matches else 0.0,
        "matches_before": matches, "matches_after": int(after.sum()),
        "top_entries": [{"entry_id": int(i), "entry": names[i] if i < len(names) else None,
                         "count_before": int(before[i]), "count_after": int(after[i])}
                        for i in order[:20] if before[i] > 0],
        "plot": "metaclip_balance.png",
    }
    ctx.report("metaclip_balance", summary)
    plot_entry_counts(before, after, t, ctx.out_dir / "reports" / "metaclip_balance.png")


def plot_entry_counts(before: np.ndarray, after: np.ndarray, t: int, out: Path) -> Path:
    """MetaCLIP's figure: entry counts sorted in decreasing order, before and after balancing,
    log-log, with the threshold t."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    b = np.sort(before[before > 0])[::-1]
    a = np.sort(after[after > 0])[::-1]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    if len(b):
        ax.loglog(np.arange(1, len(b) + 1), b, label=f"before ({int(before.sum())} matches)")
    if len(a):
        ax.loglog(np.arange(1, len(a) + 1), a, label=f"after ({int(after.sum())} matches)")
    ax.axhline(t, color="grey", linestyle="--", linewidth=1, label=f"t = {t}")
    ax.set_xlabel("entries, sorted by count")
    ax.set_ylabel("matching samples")
    ax.set_title("MetaCLIP balancing: entry counts")
    ax.legend()
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return out

