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

**Several texts per image.** When the entries column is ``list<list<int32>>`` (one id list per
text: ``metaclip_match`` with ``texts:``), MetaCLIP's unit is the text: ``count[e]`` counts texts,
each text is kept as above with draws ``u(seed, uid, text index, e)`` (text 0 draws what a
one-text row draws), and a row is kept when at least one of its texts is. MetaCLIP 1 keeps the
surviving (image, text) pairs (``metaclip1/indexing/balance_sampling.py``; its demo
``balancing.py`` appends the record once per surviving text); a row here is one image, and
``metaclip_texts_kept`` says how many of its texts survived.

**Which metadata names the entries.** The ids are positions in the metadata file matching
used. Balancing takes that file: its own ``metadata`` when given, else the ``metadata`` of the
``metaclip_match`` version that stored ``column`` (from the selection's scorer versions), else
the shipped default. The file's digest must equal the ``metaclip_metadata`` column that
matching wrote on every row, or balancing stops with an error before it changes or writes
anything: names, ids past the list's end and the entry count can only come from the file the
ids index.

Writes ``SEL/entry_counts.parquet`` (entry_id, entry, count_before, count_after, p), the report
``SEL/reports/metaclip_balance.json`` (head/tail summary, the metadata file and digest) and
``metaclip_balance.png`` (the sorted entry-count curve before and after balancing, as in
MetaCLIP's figure). Adds the columns ``metaclip_keep_p`` (each row's keep probability) and
``metaclip_texts_kept``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, model_validator

from curate.errors import CurateError
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
    path_fields = ("metadata",)  # local paths: saved absolute (curate.saved)
    t: int | None = Field(default=None, gt=0)  # default 20,000 unless target_size is given
    target_size: int | None = Field(default=None, gt=0)  # derive t: expected kept ≈ this
    seed: int = 0
    column: str = "metaclip_entries"
    # the file the ids index; default: the one matching used (see the module docs)
    metadata: str | None = None
    # the column holding the matching metadata's digest (null: do not check, for hand-made ids)
    metadata_column: str | None = "metaclip_metadata"

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


def draws(seed: int, uids: np.ndarray, entries: np.ndarray,
          texts: np.ndarray | None = None) -> np.ndarray:
    """u(seed, uid, entry) in [0, 1), elementwise over equal-length uid64/entry arrays; with
    ``texts`` (each draw's text index), u(seed, uid, text, entry), equal to u(seed, uid, entry)
    for text 0 (the finaliser maps 0 to 0)."""
    with np.errstate(over="ignore"):
        salt = _mix(np.uint64(seed & (2**64 - 1)) * _GOLDEN + entries.astype(np.uint64))
        if texts is not None:
            salt = salt ^ _mix(texts.astype(np.uint64) * _GOLDEN)
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


def keep(seed: int, uids: pa.Array, entries: pa.Array, p: np.ndarray,
         texts: np.ndarray | None = None) -> np.ndarray:
    """Per row of ``entries`` (one id list per text), whether that text is kept: any of its
    entries draws below p. ``uids`` are the texts' uids, ``texts`` their index in the row."""
    values, parents = _flat(entries)
    if len(values) == 0:
        return np.zeros(len(entries), dtype=bool)
    u = draws(seed, uid64(uids)[parents], values, None if texts is None else texts[parents])
    hits = parents[u < p[values]]
    return np.bincount(hits, minlength=len(entries)) > 0


def per_text(entries: pa.Array) -> tuple[pa.Array, np.ndarray, np.ndarray]:
    """(one id list per text, the row of each text, its index within the row) of a
    ``list<list<int32>>`` array; a ``list<int32>`` array is one text per row."""
    if not pa.types.is_list(entries.type.value_type):
        n = len(entries)
        return entries, np.arange(n), np.zeros(n, dtype=np.int64)
    rows = pc.list_parent_indices(entries).to_numpy(zero_copy_only=False).astype(np.int64)
    starts = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]]) if len(rows) else rows
    first = np.zeros(len(entries), dtype=np.int64)
    first[rows[starts]] = starts
    return pc.list_flatten(entries), rows, np.arange(len(rows)) - first[rows]


def texts_kept(seed: int, uids: pa.Array, entries: pa.Array, p: np.ndarray) -> np.ndarray:
    """How many texts of each row are kept (see the module docs)."""
    if not pa.types.is_list(entries.type.value_type):  # one text per row
        return keep(seed, uids, entries, p).astype(np.int32)
    texts, rows, index = per_text(entries)
    kept = keep(seed, uids.take(pa.array(rows)), texts, p, index)
    return np.bincount(rows[kept], minlength=len(entries)).astype(np.int32)


def row_keep_probability(entries: pa.Array, p: np.ndarray) -> np.ndarray:
    """P(at least one text of the row is kept) = 1 - prod over its (text, entry) of (1 - p)."""
    if not pa.types.is_list(entries.type.value_type):
        return keep_probability(entries, p)
    texts, rows, _ = per_text(entries)
    q = keep_probability(texts, p)
    with np.errstate(divide="ignore"):
        logs = np.bincount(rows, weights=np.log1p(-q), minlength=len(entries))
    return 1.0 - np.exp(logs)


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

    def reasons(self) -> Sequence[str]:
        return [REASON]

    def columns(self) -> Sequence[str]:
        prm: MetaclipBalanceParams = self.params  # type: ignore[assignment]
        return [prm.column] + ([prm.metadata_column] if prm.metadata_column else [])

    def extra_columns(self) -> Mapping[str, pa.DataType]:
        return {"metaclip_keep_p": pa.float64(), "metaclip_texts_kept": pa.int32()}

    def apply(self, con: Any, table: str, ctx: SelectContext) -> None:
        """Count, plan, draw and report in one process: the partitioned selection
        (``curate.select.partitioned``) runs the same pieces, ``count`` and ``draw`` once per
        partition, ``plan`` and ``finish`` once."""
        counted = self.count(con, table)
        plan = self.plan([counted], ctx,
                         lambda rows_in: [_sample_rows(con, ident(table),
                                                       ident(self.params.column),  # type: ignore[attr-defined]
                                                       rows_in)])
        self.finish([self.draw(con, table, plan)], plan, ctx)

    def count(self, con: Any, table: str) -> dict[str, Any]:
        """One partition's share of pass 1: rows, rows without a match, matches per entry,
        and the metadata digests of its kept rows."""
        prm: MetaclipBalanceParams = self.params  # type: ignore[assignment]
        t_ = ident(table)
        col = ident(prm.column)
        have = con.sql(f"SELECT * FROM {t_} LIMIT 0").columns
        kind = con.sql(f"SELECT {col} FROM {t_} LIMIT 0").arrow().schema.field(0).type
        nested = pa.types.is_list(kind) and pa.types.is_list(kind.value_type)
        ids_sql = f"flatten({col})" if nested else col  # every text's ids: counts per text
        rows_in, unmatched = con.execute(
            f"SELECT count(*), count(*) FILTER (WHERE coalesce(len({ids_sql}), 0) = 0) "
            f"FROM {t_} WHERE reason IS NULL").fetchall()[0]
        pairs = con.execute(f"""
            SELECT e, count(*) FROM (SELECT unnest({ids_sql}) AS e FROM {t_}
                                     WHERE reason IS NULL)
            WHERE e IS NOT NULL GROUP BY e ORDER BY e""").fetchnumpy()
        digests: list[str] = []
        if prm.metadata_column and prm.metadata_column in have:
            mc = ident(prm.metadata_column)
            digests = sorted(d for (d,) in con.execute(
                f"SELECT DISTINCT {mc} FROM {t_} WHERE reason IS NULL AND {mc} IS NOT NULL"
            ).fetchall())
        return {"nested": nested, "rows_in": int(rows_in), "unmatched": int(unmatched),
                "ids": np.asarray(pairs["e"], dtype=np.int64),
                "counts": np.asarray(pairs["count_star()"], dtype=np.int64),
                "digests": digests, "has_metadata_column": (prm.metadata_column or "") in have}

    @staticmethod
    def merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
        """Two partitions' ``count`` (or ``draw``) results as one: sums, entry counts added
        by id (so the driver holds one array of the metadata's size, however many
        partitions report)."""
        size = max([int(x["ids"].max()) + 1 for x in (a, b) if len(x["ids"])], default=0)
        dense = np.zeros(size, dtype=np.int64)
        for x in (a, b):
            np.add.at(dense, x["ids"], x["counts"])
        ids = np.flatnonzero(dense)
        out = {"ids": ids.astype(np.int64), "counts": dense[ids]}
        for k in ("rows_in", "unmatched", "rows_kept"):
            if k in a:
                out[k] = a[k] + b[k]
        if "digests" in a:
            out.update(nested=a["nested"], digests=sorted(set(a["digests"]) | set(b["digests"])),
                       has_metadata_column=a["has_metadata_column"] and b["has_metadata_column"])
        return out

    def plan(self, parts: Sequence[dict[str, Any]], ctx: SelectContext,
             sample: Any) -> dict[str, Any]:
        """Pass 1's sums over the partitions (in pool order), the metadata check and p.
        ``sample(rows_in)`` gives the partitions' entry-list samples (for ``target_size``)."""
        prm: MetaclipBalanceParams = self.params  # type: ignore[assignment]
        nested = parts[0]["nested"]
        digests = sorted({d for part in parts for d in part["digests"]})
        names, metadata_path, digest = resolve_metadata(
            all(part["has_metadata_column"] for part in parts), digests, prm, ctx)
        rows_in = sum(part["rows_in"] for part in parts)
        unmatched = sum(part["unmatched"] for part in parts)
        n_ids = max((int(part["ids"].max()) + 1 for part in parts if len(part["ids"])),
                    default=0)
        size = max(n_ids, len(names))
        before = np.zeros(size, dtype=np.int64)
        for part in parts:
            np.add.at(before, part["ids"], part["counts"])  # integers: any order, same sums
        t = prm.t or 20_000
        if prm.target_size is not None:
            if nested:
                raise CurateError("target_size needs one text per row; give t",
                                  "set t: on metaclip_balance")
            rows = pa.concat_arrays([a for a in sample(rows_in) if len(a)] or
                                    [pa.array([], type=pa.list_(pa.int32()))])
            t = derive_t(rows, before, prm.target_size * min(1.0, SAMPLE_ROWS / max(rows_in, 1)))
        return {"nested": nested, "names": names, "t": t, "before": before,
                "p": t / np.maximum(before, t).astype(np.float64), "rows_in": rows_in,
                "unmatched": unmatched, "size": size,
                "extra": {"metadata": str(metadata_path), "metadata_digest": digest,
                          "texts_per_row": "several" if nested else "one"}}

    def draw(self, con: Any, table: str, plan: dict[str, Any]) -> dict[str, Any]:
        """Pass 2 on one partition: each kept row's draws against p (by its uid: the same
        whatever the partition), the rows whose texts all lost dropped; the entry counts and
        rows kept after."""
        prm: MetaclipBalanceParams = self.params  # type: ignore[assignment]
        t_, col, p, seed, nested = ident(table), ident(prm.column), plan["p"], prm.seed, \
            plan["nested"]
        ids_sql = f"flatten({col})" if nested else col

        def keep_p_udf(entries: pa.ChunkedArray) -> pa.Array:
            return pa.array(row_keep_probability(entries.combine_chunks(), p))

        def kept_udf(uids: pa.ChunkedArray, entries: pa.ChunkedArray) -> pa.Array:
            return pa.array(texts_kept(seed, uids.combine_chunks(), entries.combine_chunks(), p))

        sql_type = "INTEGER[][]" if nested else "INTEGER[]"
        con.create_function("_metaclip_keep_p", keep_p_udf, [sql_type], "DOUBLE",
                            type="arrow", null_handling="special")
        con.create_function("_metaclip_kept", kept_udf, ["VARCHAR", sql_type], "INTEGER",
                            type="arrow", null_handling="special")
        try:
            con.execute(f"UPDATE {t_} SET metaclip_keep_p = _metaclip_keep_p({col}), "
                        f"metaclip_texts_kept = _metaclip_kept(uid, {col}) WHERE reason IS NULL")
            con.execute(f"UPDATE {t_} SET reason = {literal(REASON)} WHERE reason IS NULL AND "
                        "metaclip_texts_kept = 0")
        finally:
            con.remove_function("_metaclip_keep_p")
            con.remove_function("_metaclip_kept")
        # after: the texts kept (a row's dropped texts no longer count)
        after_pairs = con.execute(f"""
            SELECT e, count(*) FROM (SELECT unnest({ids_sql}) AS e FROM {t_}
                                     WHERE reason IS NULL)
            WHERE e IS NOT NULL GROUP BY e""").fetchnumpy() if not nested else _after_nested(
            con, t_, col, seed, p)
        rows_kept = con.execute(f"SELECT count(*) FROM {t_} WHERE reason IS NULL").fetchall()[0][0]
        return {"ids": np.asarray(after_pairs["e"], dtype=np.int64),
                "counts": np.asarray(after_pairs["count_star()"], dtype=np.int64),
                "rows_kept": int(rows_kept)}

    def finish(self, parts: Sequence[dict[str, Any]], plan: dict[str, Any],
               ctx: SelectContext) -> None:
        """The entry counts after, summed, and the reports (``entry_counts.parquet``...)."""
        prm: MetaclipBalanceParams = self.params  # type: ignore[assignment]
        after = np.zeros(plan["size"], dtype=np.int64)
        for part in parts:
            np.add.at(after, part["ids"], part["counts"])
        _write_outputs(ctx, plan["names"], plan["before"], after, plan["t"], prm,
                       plan["rows_in"], sum(part["rows_kept"] for part in parts),
                       plan["unmatched"], plan["extra"])


def _after_nested(con: Any, table: str, col: str, seed: int,
                  p: np.ndarray) -> dict[str, np.ndarray]:
    """Entry counts over the kept texts of the kept rows (several texts per row)."""
    rows = con.sql(f"SELECT uid, {col} FROM {table} WHERE reason IS NULL").arrow()
    if not isinstance(rows, pa.Table):  # a RecordBatchReader in newer DuckDB
        rows = rows.read_all()
    counts: dict[int, int] = {}
    for batch in rows.to_batches(max_chunksize=65_536):
        texts, rix, index = per_text(batch.column(1))
        kept = keep(seed, batch.column(0).take(pa.array(rix)), texts, p, index)
        values, _ = _flat(texts.filter(pa.array(kept)))
        for e, c in zip(*np.unique(values, return_counts=True), strict=True):
            counts[int(e)] = counts.get(int(e), 0) + int(c)
    keys = np.array(sorted(counts), dtype=np.int64)
    return {"e": keys, "count_star()": np.array([counts[k] for k in keys], dtype=np.int64)}


def producer_of(versions: Sequence[Any], column: str) -> Any:
    """The stored scorer version whose columns include ``column`` (None if none does)."""
    for v in versions:
        if column in getattr(v, "columns", ()):
            return v
    return None


def resolve_metadata(has_column: bool, digests: list[str], prm: MetaclipBalanceParams,
                     ctx: SelectContext) -> tuple[list[str], Path, str | None]:
    """(entries, path, digest) of the metadata the ids index, checked against the digests the
    matching wrote on the kept rows (see the module docs); a mismatch is a ``CurateError``."""
    from curate.lib.metadata import DEFAULT_METADATA, load_metadata, metadata_digest

    if prm.metadata_column:
        if not has_column:
            raise CurateError(f"metaclip_balance: the pool has no column "
                              f"{prm.metadata_column!r} (the digest of the metadata matching "
                              "used)", "score the pool with metaclip_match, or set "
                              "metadata_column: null to skip the check")
        if len(digests) > 1:
            raise CurateError(f"metaclip_balance: the rows of {prm.column!r} were matched "
                              f"against {len(digests)} different metadata files (digests "
                              f"{', '.join(digests[:4])})", "match the whole pool with one "
                              "metadata file")
    producer = producer_of(ctx.versions, prm.column)
    matched = (producer.params.get("metadata") if producer is not None
               and producer.name == "metaclip_match" else None)
    if prm.metadata:
        path, told = Path(prm.metadata), "metaclip_balance's metadata"
    elif matched:
        path, told = Path(matched), f"the metadata of {producer.label} (as stored)"
    else:
        path, told = DEFAULT_METADATA, "the default metadata"
    hint = (f"set metadata: on metaclip_balance to the file {prm.column} was matched with"
            + (f" ({matched})" if matched else "") + ", or match again with this one")
    if not path.is_file():
        raise CurateError(f"metaclip_balance: {told} {path} is not a file", hint)
    digest = metadata_digest(path)
    if digests and digest != digests[0]:
        raise CurateError(f"metaclip_balance: {prm.column!r} holds ids into the metadata with "
                          f"digest {digests[0]}, but {told} {path} has digest {digest}: its "
                          "entries would be misnamed", hint)
    return load_metadata(path), path.resolve(), digests[0] if digests else None


def _sample_rows(con: Any, table: str, col: str, rows: int) -> pa.Array:
    """Entry lists of (a uid-determined sample of at most SAMPLE_ROWS of) the kept rows."""
    where = "reason IS NULL"
    if rows > SAMPLE_ROWS:
        cut = format(int(65536 * SAMPLE_ROWS / rows), "04x")
        where += f" AND lower(substr(uid, 1, 4)) < {literal(cut)}"
    return con.sql(f"SELECT {col} FROM {table} WHERE {where}").to_arrow_table().column(
        0).combine_chunks()


def _write_outputs(ctx: SelectContext, names: list[str], before: np.ndarray,
                   after: np.ndarray, t: int, prm: MetaclipBalanceParams, rows_in: int,
                   rows_kept: int, unmatched: int, extra: dict[str, Any]) -> None:
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
        "plot": "metaclip_balance.png", **extra,
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

