"""Selector ``mode_clusters``: data-expert clusters (MoDE, "CLIP Data Experts via Clustering",
Ma et al., 2024).

MoDE trains one CLIP data expert per coarse cluster of the data: a fine k-means of the
embeddings, then a coarse clustering of the fine centres. This selector drops nothing. It adds
``cluster_fine`` and ``cluster_coarse`` to every row still kept, and with
``output: {split_by: cluster_coarse}`` the writer puts each coarse cluster's samples in its own
directory of shards (``output/cluster_coarse=3/00000.tar``), one training set per expert. The
clusters use the image embeddings by default (``column``); points enter k-means sorted by uid.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
from pydantic import Field

from curate.lib.clustering import spherical_kmeans
from curate.stages.base import Params, SelectContext, Selector, register


class ModeParams(Params):
    column: str = "clip_image_emb"
    fine: int | None = Field(default=None, gt=0, description="default: one per ~50 items")
    coarse: int = Field(default=4, gt=0)
    niter: int = Field(default=20, gt=0)
    seed: int = 0


@register
class ModeClusters(Selector):
    name = "mode_clusters"
    Params = ModeParams

    def reasons(self) -> Sequence[str]:
        return ()

    def sidecars_needed(self) -> Sequence[str]:
        return (self.params.column,)  # type: ignore[attr-defined]

    def extra_columns(self) -> Mapping[str, pa.DataType]:
        return {"cluster_fine": pa.int32(), "cluster_coarse": pa.int32()}

    def apply(self, con: Any, table: str, ctx: SelectContext) -> None:
        p: ModeParams = self.params  # type: ignore[assignment]
        rows = ctx.kept(con, table, []).sort_by("uid")
        x = ctx.embeddings(p.column, rows)
        ok = ~np.isnan(x).any(1)
        rows, x = rows.filter(pa.array(ok)), x[ok]
        if len(x) == 0:
            return
        fine_centres, fine = spherical_kmeans(x, p.fine or max(1, math.ceil(len(x) / 50)),
                                              p.niter, p.seed)
        _, coarse_of_fine = spherical_kmeans(fine_centres, p.coarse, p.niter, p.seed)
        ctx.mark(con, table, pa.table({
            "_row": rows.column("_row"),
            "cluster_fine": pa.array(fine.astype(np.int32)),
            "cluster_coarse": pa.array(coarse_of_fine[fine].astype(np.int32))}))
