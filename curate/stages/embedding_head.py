"""Scorer ``embedding_head``: a small MLP over an embedding that another scorer stored (e.g.
the CLIP image embedding), so the embedding is read from the store, never recomputed.

The head is a stack of dense layers, ``x → relu(x·W0 + b0) → … → x·Wn + bn``, whose weights
are a ``.npz`` file holding ``w0``, ``b0``, ``w1``, ``b1``, … (``w_i`` of shape [in, out], the
last layer with one output). The input is the stored float16 embedding, L2-normalised unless
``normalise: false`` (heads trained on CLIP embeddings, such as LAION's aesthetic and NSFW
predictors, take normalised ones). The output column is ``head_<name>``; ``activation:
sigmoid`` maps it to (0, 1). The weights file's SHA-256 is part of the scorer's identity, so
new weights are a new version (rescored), the same weights are reused.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
from pydantic import Field, field_validator

from curate.stages.base import Params, Resources, Scorer, register


class EmbeddingHeadParams(Params):
    path_fields = ("weights",)  # local paths: saved absolute (curate.saved)
    column: str = Field(default="clip_image_emb", description="the stored embedding to read")
    weights: str = Field(description="a .npz file with w0, b0, w1, b1, ... (w_i: [in, out])")
    name: str = Field(default="head", pattern=r"^[a-z0-9_]+$")
    normalise: bool = True
    activation: Literal["none", "sigmoid"] = "none"
    cpus: float = Field(default=1.0, gt=0)

    @field_validator("weights")
    @classmethod
    def _exists(cls, v: str) -> str:
        path = Path(v).expanduser()
        if not path.is_file():
            raise ValueError(f"no weights file {v!r} (a .npz with w0, b0, ...)")
        return str(path.resolve())  # workers may run in another directory


def load_layers(path: str | Path) -> list[tuple[np.ndarray, np.ndarray]]:
    """The (W, b) pairs of a head's ``.npz``, checked to chain and to end in one output."""
    with np.load(path, allow_pickle=False) as z:
        layers = []
        i = 0
        while f"w{i}" in z:
            w = np.asarray(z[f"w{i}"], dtype=np.float32)
            b = np.asarray(z[f"b{i}"], dtype=np.float32) if f"b{i}" in z else np.zeros(
                w.shape[1], np.float32)
            layers.append((w, b))
            i += 1
    if not layers:
        raise ValueError(f"{path}: no layer (expected arrays w0, b0, w1, b1, ...)")
    for k, (w, b) in enumerate(layers):
        if w.ndim != 2 or b.shape != (w.shape[1],):
            raise ValueError(f"{path}: layer {k} has w {w.shape} and b {b.shape}")
        if k and layers[k - 1][0].shape[1] != w.shape[0]:
            raise ValueError(f"{path}: layer {k} takes {w.shape[0]} inputs, layer {k - 1} "
                             f"gives {layers[k - 1][0].shape[1]}")
    if layers[-1][0].shape[1] != 1:
        raise ValueError(f"{path}: the last layer has {layers[-1][0].shape[1]} outputs, not 1")
    return layers


@register
class EmbeddingHead(Scorer):
    name = "embedding_head"
    Params = EmbeddingHeadParams

    def __init__(self, params: EmbeddingHeadParams | None = None) -> None:
        super().__init__(params)
        self.resources = Resources(cpus=self.params.cpus)  # type: ignore[attr-defined]
        self._layers: list[tuple[np.ndarray, np.ndarray]] | None = None

    @property
    def label(self) -> str:
        return f"embedding_head_{self.params.name}"  # type: ignore[attr-defined]

    @property
    def column(self) -> str:
        return f"head_{self.params.name}"  # type: ignore[attr-defined]

    def fingerprint(self) -> str:
        digest = hashlib.sha256(Path(self.params.weights).read_bytes()).hexdigest()  # type: ignore[attr-defined]
        return hashlib.sha256((super().fingerprint() + digest).encode()).hexdigest()[:16]

    def inputs(self) -> tuple[str, ...]:
        return (self.params.column,)  # type: ignore[attr-defined]

    def outputs(self) -> Mapping[str, pa.DataType]:
        return {self.column: pa.float32()}

    def setup(self) -> None:
        self._layers = load_layers(self.params.weights)  # type: ignore[attr-defined]

    def score_batch(self, batch: pa.Table) -> Mapping[str, Any]:
        p: EmbeddingHeadParams = self.params  # type: ignore[assignment]
        if self._layers is None:
            self.setup()
        assert self._layers is not None
        col = batch.column(p.column).combine_chunks()
        n = len(col)
        d = col.type.list_size
        x = col.values.slice(col.offset * d, n * d).to_numpy(zero_copy_only=False)
        x = x.astype(np.float32).reshape(n, d)
        if d != self._layers[0][0].shape[0]:
            raise ValueError(f"{p.column} has {d} dimensions, the head takes "
                             f"{self._layers[0][0].shape[0]}")
        if p.normalise:
            norms = np.linalg.norm(x, axis=1, keepdims=True)
            x = np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)
        for k, (w, b) in enumerate(self._layers):
            x = x @ w + b
            if k < len(self._layers) - 1:
                x = np.maximum(x, 0)
        y = x[:, 0]
        if p.activation == "sigmoid":
            y = 1 / (1 + np.exp(-y))
        return {self.column: pa.array(y.astype(np.float32))}
