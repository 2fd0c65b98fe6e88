"""Selector ``near_dedup``: keep one image of each group of near-duplicates (perceptual hash).

Over the rows still kept that have a hash (``column``, default ``phash``, from the ``phash``
scorer): two rows are near-duplicates when their 64-bit hashes differ in at most ``k`` bits
(Hamming distance). The groups are the connected components of that relation, so they chain:
``A ~ B`` and ``B ~ C`` put ``A`` and ``C`` in one group even when ``d(A, C) > k``
(``near_duplicate_distance`` then shows more than ``k``, and the selector's report counts such
rows). In each group one row is kept, by ``keep``:

* ``first``: the first in pool order;
* ``largest``: the most pixels (``width * height`` from ``image_info``);
* any other value names a numeric column (e.g. ``clip_score``): its highest value.

Nulls lose, and ties go to the first in pool order (``_row``), so the choice depends only on the
data, never on workers or sharding. The others are dropped with reason ``near_duplicate_image``;
``near_duplicate_of`` names the kept row's uid and ``near_duplicate_distance`` the Hamming
distance of their hashes. Rows without a hash take no part.

The pairs within ``k`` come from an exact multi-index Hamming search (``curate.lib.hamming``),
never from comparing all pairs. The default ``k = 8`` (of 64 bits) was chosen on planted copies
of the demo's photos: every re-encoded, format-swapped, 50-150% resized and up-to-4%-cropped
copy is within 8 of its original, while distinct photos and views of them are 20 or more apart
(docs/near_dedup.md has the measurements, and what pHash misses).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
from pydantic import Field, field_validator

from curate.lib.coltypes import NAME
from curate.stages.base import Params, SelectContext, Selector, register

REASON = "near_duplicate_image"
KEEP_RULES = ("first", "largest")


class NearDedupParams(Params):
    column: str = Field(default="phash", description="the 64-bit hash column (uint64)")
    k: int = Field(default=8, ge=0, le=32, description="largest Hamming distance of a pair")
    keep: str = Field(default="first", description=(
        "which row of a group stays: first (pool order), largest (most pixels, from "
        "image_info), or a numeric column whose highest value stays (e.g. clip_score)"))

    @field_validator("column", "keep")
    @classmethod
    def _name(cls, v: str) -> str:
        if not NAME.match(v):
            raise ValueError(f"{v!r} is not a column name")
        return v


@register
class NearDedup(Selector):
    name = "near_dedup"
    Params = NearDedupParams

    def _keep_columns(self) -> list[str]:
        keep = self.params.keep  # type: ignore[attr-defined]
        if keep == "first":
            return []
        if keep == "largest":
            return ["width", "height"]
        return [keep]

    def columns(self) -> Sequence[str]:
        return list(dict.fromkeys([self.params.column,  # type: ignore[attr-defined]
                                   *self._keep_columns()]))

    def reasons(self) -> Sequence[str]:
        return (REASON,)

    def extra_columns(self) -> Mapping[str, pa.DataType]:
        return {"near_duplicate_of": pa.string(), "near_duplicate_distance": pa.int32()}

    def apply(self, con: Any, table: str, ctx: SelectContext) -> None:
        from curate.lib.hamming import SearchStats, as_hashes, choose_plan, components, distance

        p: NearDedupParams = self.params  # type: ignore[assignment]
        t0 = time.perf_counter()
        rows = ctx.kept(con, table, [c for c in self.columns()
                                     if c not in ("_row", "uid", "shard", "index")])
        kind = rows.schema.field(p.column).type
        if kind not in (pa.uint64(), pa.int64()):
            from curate.errors import CurateError

            raise CurateError(f"near_dedup column: {p.column!r} is {kind}, not a 64-bit hash "
                              f"(uint64, or int64 holding the bits)",
                              "score the images with `phash` and use its column")
        hashed = rows.column(p.column).is_valid()
        rows = rows.filter(hashed)
        n = rows.num_rows
        h = as_hashes(rows.column(p.column).to_numpy(zero_copy_only=False)) if n else \
            np.zeros(0, dtype=np.uint64)
        stats = SearchStats()
        labels = components(h, p.k, stats=stats)
        order = np.arange(n)  # rows come in pool order (_row)
        score = self._score(rows)
        if score is not None:
            order = np.lexsort((order, -score))  # best score first, then pool order
        # The kept row of each group: the first of its label in that order.
        groups, first = np.unique(labels[order], return_index=True)
        keeper = order[first][np.searchsorted(groups, labels)]
        dropped = np.flatnonzero(keeper != np.arange(n))
        dist = distance(h[dropped], h[keeper[dropped]])
        uids = rows.column("uid").to_numpy(zero_copy_only=False)
        decisions = pa.table({
            "_row": rows.column("_row").to_numpy()[dropped],
            "reason": pa.array([REASON] * len(dropped), pa.string()),
            "near_duplicate_of": pa.array(uids[keeper[dropped]].tolist(), pa.string()),
            "near_duplicate_distance": pa.array(dist.astype(np.int32))})
        ctx.mark(con, table, decisions)
        sizes = np.bincount(labels, minlength=1)
        beyond = dropped[dist > p.k]
        plan = choose_plan(stats.hashes, p.k) if stats.hashes > 1 else None
        ctx.report(self.name, {
            "column": p.column, "k": p.k, "keep": p.keep, "rows": n,
            "distinct_hashes": stats.hashes,
            "block_widths": list(plan.widths) if plan else [],
            "block_radii": list(plan.radii) if plan else [],
            "candidate_pairs": stats.candidates, "pairs_within_k": stats.found,
            "groups": int((sizes > 1).sum()), "largest_group": int(sizes.max(initial=0)),
            "dropped": len(dropped),
            # chaining: dropped rows farther than k from the row kept for them
            "dropped_beyond_k": len(beyond),
            "groups_beyond_k": len(np.unique(labels[beyond])),
            "seconds": round(time.perf_counter() - t0, 3)})

    def _score(self, rows: pa.Table) -> np.ndarray | None:
        """Per row, the value ``keep`` maximises (nulls lowest), or None for pool order."""
        keep = self.params.keep  # type: ignore[attr-defined]
        if keep == "first":
            return None
        if keep == "largest":
            w = rows.column("width").to_numpy(zero_copy_only=False)
            h = rows.column("height").to_numpy(zero_copy_only=False)
            values = w.astype(np.float64) * h.astype(np.float64)
        else:
            col = rows.column(keep)
            if not (pa.types.is_integer(col.type) or pa.types.is_floating(col.type)
                    or pa.types.is_decimal(col.type)):
                from curate.errors import CurateError

                raise CurateError(f"near_dedup keep: {keep!r} is {col.type}, not a number; "
                                  f"use first, largest or a numeric column")
            values = col.to_numpy(zero_copy_only=False).astype(np.float64)
        return np.where(np.isnan(values), -np.inf, values)
