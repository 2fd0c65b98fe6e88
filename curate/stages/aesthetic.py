"""Scorer ``aesthetic``: the LAION-Aesthetics predictor over the stored CLIP ViT-L/14 image
embedding, the score LAION-5B (Schuhmann et al., 2022, "LAION-5B: An open large-scale dataset
for training next generation image-text models", NeurIPS Datasets and Benchmarks) was
annotated with and the LAION-Aesthetics subsets were cut from ("aesthetic > 7", ...; Schuhmann,
2022, "LAION-Aesthetics", laion.ai/blog/laion-aesthetics).

It reads the embedding another scorer stored (``column``, by default ``clip_image_emb_l14`` of
a ``clip`` scorer with ``model: ViT-L-14, pretrained: openai, name: l14``): CLIP is never run
again. Output: ``aesthetic_score<suffix>`` (float32, roughly 1 to 10).

Models (``curate.lib.clip_heads`` builds them from the published architectures):

* ``v2`` (default): LAION-Aesthetics Predictor V2 (christophschuhmann/improved-aesthetic-
  predictor, ``sac+logos+ava1-l14-linearMSE.pth``; also what NeMo Curator's
  ``AestheticClassifier`` runs): an MLP 768→1024→128→64→16→1 without activations, on the
  L2-normalised embedding.
* ``v1``: LAION-Aesthetics V1 (LAION-AI/aesthetic-predictor, ``sa_0_4_vit_l_14_linear.pth``;
  ``sa_0_4_vit_b_32_linear.pth`` and ``..._b_16_...`` for ViT-B/32 and B/16 embeddings, with
  ``trained_on`` set to match): one linear layer on the L2-normalised embedding.

``weights`` is a local ``.pth`` (the authors' state dict) or ``hf-hub:ORG/REPO/FILE``; by
default the file is looked for where it is documented to be cached (``DEFAULT_WEIGHTS``), and a
missing file is an error before any work, saying where to download it. The file's SHA-256 is
the weights' part of the scorer's identity (not its path). Normalisation is the authors':
each stored (float16) embedding is cast to float32 and divided by its L2 norm (a zero vector
stays zero), unless ``normalise: false``. The head was trained on one CLIP model's embeddings
(``trained_on``, ``MODEL/PRETRAINED``): ``check_producers`` refuses a ``column`` that another
clip scorer makes unless ``any_model: true``, and an embedding of the wrong width always (at
pipeline validation once ``config.check_scorers`` calls it; at score time a wrong width fails
each sample with the reason).
A sample whose embedding holds a NaN, an infinity or a null fails alone.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
from pydantic import Field, field_validator

from curate.errors import CurateError
from curate.lib import clip_heads
from curate.lib.weights import is_hub_spec, resolve_weights, weights_digest
from curate.stages.base import SAMPLE_ERRORS, Params, Resources, Scorer, register
from curate.stages.nearest_centroid import _matrix

# Where each release is cached by default, and where its authors publish it.
DEFAULT_WEIGHTS = {
    "v2": "~/.cache/curate/aesthetic/sac+logos+ava1-l14-linearMSE.pth",
    "v1": "~/.cache/emb_reader/sa_0_4_vit_l_14_linear.pth",  # the V1 notebook's own cache
}
RELEASES = {
    "v2": "https://github.com/christophschuhmann/improved-aesthetic-predictor/raw/main/"
          "sac+logos+ava1-l14-linearMSE.pth",
    "v1": "https://github.com/LAION-AI/aesthetic-predictor/raw/main/sa_0_4_vit_l_14_linear.pth",
}


def local_spec(v: str) -> str:
    """A weights spec as workers must see it: hub names as given, local paths absolute."""
    if is_hub_spec(v):
        return v
    try:
        return str(Path(v).expanduser().resolve())
    except RuntimeError as exc:  # "~user" of an unknown user
        raise ValueError(f"{v!r}: {exc}") from None


class AestheticParams(Params):
    path_fields = ("weights",)  # local paths: saved absolute (curate.saved)
    column: str = Field(default="clip_image_emb_l14", description="the stored embedding to read")
    model: Literal["v2", "v1"] = Field(default="v2", description="LAION-Aesthetics release")
    weights: str | None = Field(default=None, description="a .pth (the authors' state dict) or "
                                "hf-hub:ORG/REPO/FILE; default: the release's cache path")
    trained_on: str = Field(default=clip_heads.CLIP_L14, pattern=r"^[^/]+/.+$",
                            description="MODEL/PRETRAINED of the CLIP the head was trained on")
    any_model: bool = Field(default=False, description="allow embeddings of another CLIP model")
    normalise: bool = True
    name: str = Field(default="", pattern=r"^[a-z0-9_]*$")
    batch_size: int = Field(default=4096, gt=0)
    cpus: float = Field(default=1.0, gt=0)
    gpus: float = Field(default=0.0, ge=0)

    @field_validator("weights")
    @classmethod
    def _absolute(cls, v: str | None) -> str | None:
        return None if v is None else local_spec(v)  # workers may run in another directory


class EmbeddingHeadScorer(Scorer):
    """What the aesthetic and NSFW scorers share: weights resolved and fingerprinted by
    content, the producer check, the stored embedding read and the forward pass."""

    column_name: str = ""
    what: str = "head"

    def __init__(self, params: Params | None = None) -> None:
        super().__init__(params)
        p: Any = self.params
        self.resources = Resources(cpus=p.cpus, gpus=p.gpus)
        self._suffix = f"_{p.name}" if p.name else ""
        self._module: Any = None
        self._encode: Any = None  # what turns embeddings into the module's input, if anything
        self._path: Path | None = None

    # -- to implement -----------------------------------------------------------------------
    def default_weights(self) -> str:
        raise NotImplementedError

    def download_hint(self) -> str:
        raise NotImplementedError

    def build(self, path: Path) -> Any:
        """The torch module of the weights file at ``path``."""
        raise NotImplementedError

    def prepare(self, x: np.ndarray) -> np.ndarray:
        """The module's input from the stored embeddings (float32 [N, D])."""
        return x if self._encode is None else self._encode(x)

    # -- shared -----------------------------------------------------------------------------
    @property
    def label(self) -> str:
        return f"{self.name}{self._suffix}"

    @property
    def column(self) -> str:
        return f"{self.column_name}{self._suffix}"

    def weights_spec(self) -> str:
        p: Any = self.params
        return p.weights if p.weights is not None else local_spec(self.default_weights())

    def weights_path(self) -> Path:
        if self._path is None:
            spec = self.weights_spec()
            try:
                self._path = resolve_weights(spec, f"{self.what} weights")
            except CurateError as exc:
                hint = exc.hint if is_hub_spec(spec) else self.download_hint()
                raise CurateError(f"{self.label}: {exc.message}", hint) from None
        return self._path

    def __getstate__(self) -> dict[str, Any]:
        """Workers load the head in ``setup`` (from the resolved file), not from the driver."""
        state = dict(self.__dict__)
        state["_module"] = None
        state["_encode"] = None
        if is_hub_spec(self.weights_spec()):
            state["_path"] = None  # each node finds the file in its own hub cache
        return state

    def weights_identity(self) -> str:
        """The SHA-256 of the weights' content."""
        return weights_digest(self.weights_path())

    def check(self) -> None:
        self.module()  # the file is there and holds what the head needs

    def module(self) -> Any:
        if self._module is None:
            self._module = self.build(self.weights_path())
        return self._module

    def input_dim(self) -> int:
        return clip_heads.input_dim(self.module())

    def fingerprint(self) -> str:
        """The weights' content, not their path, with every other parameter."""
        params = self.params.model_dump(mode="json")
        params.pop("weights", None)
        blob = json.dumps({"name": self.name, "version": self.version, "params": params,
                           "weights": self.weights_identity()}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def check_producers(self, producers: Mapping[str, Scorer]) -> None:
        """At validation: the scorer making ``column`` is a clip scorer of the model the head
        was trained on (unless ``any_model``), with embeddings as wide as the head's input
        (when the weights can be read; a missing file is ``check``'s error)."""
        p: Any = self.params
        try:
            dim: int | None = self.input_dim()
        except CurateError:
            dim = None
        clip_heads.check_producer(self.label, p.column, producers.get(p.column), p.trained_on,
                                  p.any_model, dim)

    def inputs(self) -> tuple[str, ...]:
        return (self.params.column,)  # type: ignore[attr-defined]

    def outputs(self) -> Mapping[str, pa.DataType]:
        return {self.column: pa.float32()}

    def setup(self) -> None:
        import torch

        p: Any = self.params
        if self.device == "cpu":
            torch.set_num_threads(max(1, math.floor(p.cpus)))
        self._module = self.module().to(self.device)

    def score_batch(self, batch: pa.Table) -> Mapping[str, Any]:
        p: Any = self.params
        if self._module is None:
            self.setup()
        x = _matrix(batch.column(p.column).combine_chunks()).astype(np.float32)
        dim = self.input_dim()
        if x.shape[1] != dim:
            raise ValueError(f"{p.column} has {x.shape[1]} dimensions, the {self.what} head "
                             f"takes {dim}")
        finite = np.isfinite(x).all(axis=1)
        y = np.full(len(x), np.nan, dtype=np.float32)
        if finite.any():
            y[finite] = clip_heads.forward(self._module, self.prepare(x[finite]), self.device,
                                           p.batch_size)
        errors = [None if ok else f"{p.column} holds a NaN, an infinity or a null"
                  for ok in finite]
        return {self.column: pa.array(y, pa.float32(), mask=~finite), SAMPLE_ERRORS: errors}


@register
class Aesthetic(EmbeddingHeadScorer):
    name = "aesthetic"
    Params = AestheticParams
    column_name = "aesthetic_score"
    what = "aesthetic"

    def default_weights(self) -> str:
        return DEFAULT_WEIGHTS[self.params.model]  # type: ignore[attr-defined]

    def download_hint(self) -> str:
        m = self.params.model  # type: ignore[attr-defined]
        return (f"download the LAION-Aesthetics {m} weights where there is a network: "
                f"curl -L --create-dirs -o {DEFAULT_WEIGHTS[m]} '{RELEASES[m]}' (or give "
                "weights: PATH or hf-hub:ORG/REPO/FILE)")

    def build(self, path: Path) -> Any:
        sd = clip_heads.load_state_dict(path)
        if self.params.model == "v1":  # type: ignore[attr-defined]
            return clip_heads.aesthetic_v1(sd, path)
        return clip_heads.aesthetic_v2(sd, path)

    def prepare(self, x: np.ndarray) -> np.ndarray:
        p: AestheticParams = self.params  # type: ignore[assignment]
        if not p.normalise:
            return x
        # Each release's own arithmetic: V2's numpy ``normalized``, V1's torch ``x /= x.norm``.
        return clip_heads.l2_normalise(x) if p.model == "v2" else clip_heads.l2_normalise_torch(x)
