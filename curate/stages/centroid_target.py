"""Selector ``centroid_target``: keep samples whose nearest pool centroid is the nearest
centroid of at least one target embedding.

The global half of DataComp's ``image_based`` baseline (Gadre et al., 2023, Sec. 3.4;
``baselines/apply_filter.py``, ``load_uids_with_image_filter``): the target embeddings (the
ImageNet-1k training set's OpenAI CLIP ViT-L/14 image embeddings, DataComp's released
``in1k_clip_vit_l14_{0..4}.pt``, cached by DataComp's ``download()`` as
``~/.cache/datacomp/in1k_clip_vit_l14_{i}.pt``, the defaults) are assigned to the pool's
centroids (the same ``centroids`` file the ``nearest_centroid`` scorer used) by the same float32
argmax (``curate.lib.centroids``); the distinct centroids they hit are the targets
(``torch.unique``). Rows still kept whose ``column`` (the scorer's ``centroid`` output) is not a
target, or is null, are dropped with ``reason``. Computed once per selection, on a GPU when
``device`` is ``auto`` and one is visible, else on the CPU. The report
(``reports/centroid_target.json``) gives the number of centroids, of target embeddings, of
target centroids, and the SHA-256 of the centroids file. A selector runs after scoring, so
missing ``centroids`` or ``targets`` files fail the pipeline's load instead, before any work.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
from pydantic import Field, field_validator

from curate.lib.centroids import BATCH_SIZE, file_digest, load_centroids, load_features
from curate.lib.centroids import target_centroids as assign_targets
from curate.sql import ident, literal
from curate.stages.base import Params, SelectContext, Selector, register

DEFAULT_TARGETS = [f"~/.cache/datacomp/in1k_clip_vit_l14_{i}.pt" for i in range(5)]


class CentroidTargetParams(Params):
    path_fields = ("centroids", "targets")  # local paths: saved absolute (curate.saved)
    column: str = Field(default="centroid", description="the nearest_centroid scorer's column")
    centroids: str = Field(default="~/.cache/datacomp/small_centroids.pt")
    targets: list[str] = Field(default_factory=lambda: list(DEFAULT_TARGETS), min_length=1)
    batch_size: int = Field(default=BATCH_SIZE, gt=0)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    reason: str = "not_near_target_centroid"

    # A selector has no check() before scoring starts: missing files fail the pipeline's load.
    @field_validator("centroids")
    @classmethod
    def _absolute(cls, v: str) -> str:
        return _existing(v)

    @field_validator("targets")
    @classmethod
    def _all_absolute(cls, v: list[str]) -> list[str]:
        return [_existing(t) for t in v]


def _existing(path: str) -> str:
    p = Path(path).expanduser().resolve()
    if not p.is_file():
        raise ValueError(f"no file {p} (DataComp's download() caches its assets in "
                         "~/.cache/datacomp; or give a .npy)")
    return str(p)


@register
class CentroidTarget(Selector):
    name = "centroid_target"
    Params = CentroidTargetParams

    @property
    def label(self) -> str:
        return self.params.reason  # type: ignore[attr-defined,no-any-return]

    def columns(self) -> Sequence[str]:
        return (self.params.column,)  # type: ignore[attr-defined]

    def reasons(self) -> Sequence[str]:
        return (self.params.reason,)  # type: ignore[attr-defined]

    def target_ids(self) -> tuple[np.ndarray, dict[str, Any]]:
        """The target centroid ids (sorted) and the figures of the report."""
        import torch

        p: CentroidTargetParams = self.params  # type: ignore[assignment]
        device = p.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        centroids = load_centroids(p.centroids)
        targets = load_features(p.targets)
        ids = assign_targets(centroids, targets, p.batch_size, device)
        return ids, {"centroids": p.centroids, "centroids_sha256": file_digest(p.centroids),
                     "n_centroids": int(centroids.shape[0]), "targets": p.targets,
                     "n_target_embeddings": int(targets.shape[0]),
                     "n_target_centroids": len(ids), "device": device}

    def apply(self, con: Any, table: str, ctx: SelectContext) -> None:
        """``target_ids`` once, ``drop`` on the table, ``finish``; a partitioned selection
        (``curate.select.partitioned``) runs ``drop`` on each partition with the same ids."""
        ids, figures = self.target_ids()
        self.finish(ctx, figures, self.drop(con, table, ids))

    def drop(self, con: Any, table: str, ids: np.ndarray) -> int:
        """Drop the kept rows whose centroid is not one of ``ids``; the rows that carry this
        step's reason after."""
        p: CentroidTargetParams = self.params  # type: ignore[assignment]
        con.register("_target_centroids", pa.table({"id": pa.array(ids.astype(np.int64))}))
        col = ident(p.column)
        try:
            con.execute(f"UPDATE {ident(table)} SET reason = {literal(p.reason)} WHERE reason IS "
                        f"NULL AND ({col} IS NULL OR {col} NOT IN "
                        "(SELECT id FROM _target_centroids))")
        finally:
            con.unregister("_target_centroids")
        return int(con.execute(f"SELECT count(*) FROM {ident(table)} WHERE reason = "
                               f"{literal(p.reason)}").fetchone()[0])

    def finish(self, ctx: SelectContext, figures: dict[str, Any], dropped: int) -> None:
        ctx.report(self.name, {**figures, "dropped": int(dropped)})
