"""Scorer ``nearest_centroid``: the pool k-means centroid nearest to each stored embedding.

The per-sample half of DataComp's ``image_based`` baseline (Gadre et al., 2023, Sec. 3.4;
``baselines/apply_filter.py``, ``get_centroid_ids_gpu``): reads an embedding another scorer
stored (``column``, by default the L/14 image embedding ``clip_image_emb_l14`` of a ``clip``
scorer with ``model: ViT-L-14, pretrained: openai, name: l14``), so nothing is recomputed, and
outputs ``centroid<suffix>`` (int32): ``argmax(embedding.float() @ centroids.T)``, see
``curate.lib.centroids``. ``centroids`` is DataComp's released ``{small,medium,large,xlarge}_
centroids_l14.pt`` (DataComp's ``download()`` caches it as ``~/.cache/datacomp/small_centroids.pt``,
the default) or a ``.npy`` [K, D]; its SHA-256 is part of the scorer's identity. The selector
``centroid_target`` then keeps the samples whose centroid is hit by ImageNet-1k embeddings.

The embedding read is the stored float16 one (as DataComp's ``l14_img`` arrays are), cast to
float32 before the product. A sample whose embedding holds a NaN or infinity fails alone. With
``gpus`` > 0 the product runs on the worker's GPU, else on ``cpus`` threads.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, field_validator

from curate.errors import CurateError
from curate.lib.centroids import BATCH_SIZE, file_digest, load_centroids, nearest_centroids
from curate.stages.base import SAMPLE_ERRORS, Params, Resources, Scorer, register

DEFAULT_CENTROIDS = "~/.cache/datacomp/small_centroids.pt"


class NearestCentroidParams(Params):
    path_fields = ("centroids",)  # local paths: saved absolute (curate.saved)
    column: str = Field(default="clip_image_emb_l14", description="the stored embedding to read")
    centroids: str = Field(default=DEFAULT_CENTROIDS, description="centroids .pt or .npy [K, D]")
    name: str = Field(default="", pattern=r"^[a-z0-9_]*$")
    batch_size: int = Field(default=BATCH_SIZE, gt=0)
    cpus: float = Field(default=1.0, gt=0)
    gpus: float = Field(default=0.0, ge=0)

    @field_validator("centroids")
    @classmethod
    def _absolute(cls, v: str) -> str:
        return str(Path(v).expanduser().resolve())  # workers may run in another directory


def _matrix(col: pa.Array) -> np.ndarray:
    """Rows of a list column (the store's fixed-size float16 lists, or plain lists of one
    length) as a 2-d numpy array, NaN where a value is null."""
    n = len(col)
    if pa.types.is_fixed_size_list(col.type):
        d = col.type.list_size
        values = col.values.slice(col.offset * d, n * d)
    else:
        values = col.flatten()
        lengths = pc.list_value_length(col).to_numpy(zero_copy_only=False)
        d = int(lengths[0]) if n else 0
        if n and (lengths != d).any():
            raise ValueError("embeddings of different lengths in one batch")
    if values.null_count:
        values = pc.fill_null(values.cast(pa.float32()), float("nan"))
    x = values.to_numpy(zero_copy_only=False).reshape(n, d)
    if col.null_count:  # a null embedding: NaN, so the sample fails
        x = x.astype(np.float32)
        x[col.is_null().to_numpy(zero_copy_only=False)] = np.nan
    return x


@register
class NearestCentroid(Scorer):
    name = "nearest_centroid"
    Params = NearestCentroidParams

    def __init__(self, params: NearestCentroidParams | None = None) -> None:
        super().__init__(params)
        p: NearestCentroidParams = self.params  # type: ignore[assignment]
        self.resources = Resources(cpus=p.cpus, gpus=p.gpus)
        self.column = f"centroid_{p.name}" if p.name else "centroid"
        self._centroids: Any = None
        self._fingerprint: str | None = None

    @property
    def label(self) -> str:
        return f"nearest_{self.column}"

    def inputs(self) -> tuple[str, ...]:
        return (self.params.column,)  # type: ignore[attr-defined]

    def outputs(self) -> Mapping[str, pa.DataType]:
        return {self.column: pa.int32()}

    def check(self) -> None:
        path = Path(self.params.centroids)  # type: ignore[attr-defined]
        if not path.is_file():
            raise CurateError(f"no centroids file {path}", "give `centroids`: DataComp's "
                              "{small,medium,large,xlarge}_centroids_l14.pt or a .npy [K, D]")

    def fingerprint(self) -> str:
        """Also changes when the centroids file's content changes."""
        if self._fingerprint is None:
            self.check()
            digest = file_digest(self.params.centroids)  # type: ignore[attr-defined]
            self._fingerprint = hashlib.sha256(
                (super().fingerprint() + digest).encode()).hexdigest()[:16]
        return self._fingerprint

    def setup(self) -> None:
        import torch

        p: NearestCentroidParams = self.params  # type: ignore[assignment]
        if self.device == "cpu":
            torch.set_num_threads(max(1, math.floor(p.cpus)))
        self._centroids = load_centroids(p.centroids)

    def score_batch(self, batch: pa.Table) -> Mapping[str, Any]:
        p: NearestCentroidParams = self.params  # type: ignore[assignment]
        if self._centroids is None:
            self.setup()
        x = _matrix(batch.column(p.column).combine_chunks())
        n = len(x)
        finite = np.isfinite(x).all(axis=1)
        ids = np.zeros(n, dtype=np.int64)
        if finite.any():
            ids[finite] = nearest_centroids(np.ascontiguousarray(x[finite]), self._centroids,
                                            p.batch_size, self.device)
        errors = [None if ok else f"{p.column} holds a NaN or infinity" for ok in finite]
        return {self.column: pa.array(ids.astype(np.int32)), SAMPLE_ERRORS: errors}
