"""Selector ``semdedup``: semantic deduplication (SemDeDup, Abbas et al., 2023).

Over the rows still kept: spherical k-means (faiss) on the image embeddings, then within each
cluster the items are ordered by distance to the centroid, farthest first (the paper's default;
``keep: closest`` reverses it). Item j is dropped as ``semantic_duplicate`` when its largest
cosine similarity to an earlier item of the order exceeds ``1 - epsilon``. Earlier items count
even if they were dropped themselves, as in the authors' code.
``semantic_duplicate_of`` names the kept item it duplicates: its most similar earlier item,
followed through that item's own duplicate link if it was dropped. ``semdedup_cluster`` records
the cluster.

Points enter k-means sorted by uid and ties are broken by uid, so the result does not depend
on how the pool is sharded or which worker scored what.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import pyarrow as pa
from pydantic import Field

from curate.lib.clustering import spherical_kmeans
from curate.stages.base import Params, SelectContext, Selector, register


class SemDedupParams(Params):
    column: str = "clip_image_emb"
    epsilon: float = Field(default=0.05, gt=0, lt=1)
    clusters: int | None = Field(default=None, gt=0,
                                 description="k-means clusters (default: one per ~1000 items)")
    keep: Literal["farthest", "closest"] = "farthest"
    niter: int = Field(default=20, gt=0)
    seed: int = 0


def dedup_cluster(x: np.ndarray, threshold: float, block: int = 2048,
                  ) -> tuple[np.ndarray, np.ndarray]:
    """For items in order (rows of normalised ``x``): (is_duplicate, index of the most similar
    earlier item or -1). Item j is a duplicate when max_i<j cos(x_i, x_j) > threshold."""
    n = len(x)
    best = np.full(n, -np.inf, dtype=np.float32)
    arg = np.full(n, -1, dtype=np.int64)
    for start in range(0, n, block):
        stop = min(n, start + block)
        sims = x[:stop] @ x[start:stop].T  # rows: earlier candidates, cols: items start..stop
        rows = np.arange(stop)[:, None]
        cols = np.arange(start, stop)[None, :]
        sims[rows >= cols] = -np.inf  # only strictly earlier items count
        if stop > 0 and sims.shape[0] > 0:
            arg[start:stop] = sims.argmax(axis=0)
            best[start:stop] = sims.max(axis=0)
    arg[best == -np.inf] = -1
    return best > threshold, arg


def semdedup(x: np.ndarray, uids: np.ndarray, clusters: int, epsilon: float,
             keep: str = "farthest", niter: int = 20, seed: int = 0,
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """SemDeDup over normalised ``x`` (rows sorted by ``uids``): (is_duplicate, index of the
    kept item each duplicate duplicates or -1, cluster of every item)."""
    centroids, assign = spherical_kmeans(x, clusters, niter, seed)
    is_dup = np.zeros(len(x), dtype=bool)
    dup_of = np.full(len(x), -1, dtype=np.int64)
    for c in range(len(centroids)):
        members = np.flatnonzero(assign == c)
        if len(members) < 2:
            continue
        dist = 1.0 - x[members] @ centroids[c]
        key = -dist if keep == "farthest" else dist
        order = members[np.lexsort((uids[members], key))]  # by distance, then uid
        dup, earlier = dedup_cluster(x[order], 1.0 - epsilon)
        kept_as = np.arange(len(order))
        for pos in np.flatnonzero(dup):  # increasing: an earlier item's link is final
            kept_as[pos] = kept_as[earlier[pos]]
        is_dup[order[dup]] = True
        dup_of[order[dup]] = order[kept_as[dup]]
    return is_dup, dup_of, assign


@register
class SemDedup(Selector):
    name = "semdedup"
    Params = SemDedupParams

    def reasons(self) -> Sequence[str]:
        return ("semantic_duplicate",)

    def sidecars_needed(self) -> Sequence[str]:
        return (self.params.column,)  # type: ignore[attr-defined]

    def extra_columns(self) -> Mapping[str, pa.DataType]:
        return {"semantic_duplicate_of": pa.string(), "semdedup_cluster": pa.int32()}

    def apply(self, con: Any, table: str, ctx: SelectContext) -> None:
        p: SemDedupParams = self.params  # type: ignore[assignment]
        rows = ctx.kept(con, table, [])
        if rows.num_rows == 0:
            return
        rows = rows.sort_by("uid")
        x = ctx.embeddings(p.column, rows)
        scored = ~np.isnan(x).any(axis=1)
        rows, x = rows.filter(pa.array(scored)), x[scored]
        uids = np.asarray(rows.column("uid").to_pylist(), dtype=object)
        k = p.clusters or max(1, math.ceil(len(x) / 1000))
        is_dup, dup_of, assign = semdedup(x, uids, k, p.epsilon, p.keep, p.niter, p.seed)
        decisions = pa.table({
            "_row": rows.column("_row").to_numpy(),
            "reason": pa.array(np.where(is_dup, "semantic_duplicate", None).tolist(),
                               pa.string()),
            "semantic_duplicate_of": pa.array([str(uids[j]) if j >= 0 else None
                                               for j in dup_of], pa.string()),
            "semdedup_cluster": pa.array(assign.astype(np.int32))})
        ctx.mark(con, table, decisions)
