"""Scorer ``nsfw``: LAION's CLIP-based NSFW detector over the stored CLIP ViT-L/14 image
embedding, the ``punsafe`` column of LAION-5B (Schuhmann et al., 2022, "LAION-5B: An open
large-scale dataset for training next generation image-text models", NeurIPS Datasets and
Benchmarks, Sec. 3.3 "Safety"; LAION-Aesthetics keeps ``punsafe < 0.5``).

It reads the embedding another scorer stored (``column``, by default ``clip_image_emb_l14`` of
a ``clip`` scorer with ``model: ViT-L-14, pretrained: openai, name: l14``): CLIP is never run
again. Output: ``punsafe<suffix>`` (float32 in [0, 1], 1 = unsafe).

Weights (``weights``: a local path or ``hf-hub:ORG/REPO/FILE``), recognised by their form:

* the released autokeras SavedModel (LAION-AI/CLIP-based-NSFW-Detector,
  ``clip_autokeras_binary_nsfw.zip`` for L/14, ``clip_autokeras_nsfw_b32.zip`` for B/32), the
  zip or its unpacked directory, read without TensorFlow by ``curate.lib.tf_bundle``: the
  model's layers from ``keras_metadata.pb``, the variables from ``variables/``, and the
  vocabularies of the columns autokeras encoded as categories from ``saved_model.pb``. The
  default is where clip-retrieval caches it, ``~/.cache/clip_retrieval/ViT-L_14/
  clip_autokeras_binary_nsfw``.
* NeMo Curator's torch port (``clip_autokeras_binary_nsfw.pth``, ``NSFWModel``): the same
  network without the categorical columns (those dimensions are read as numbers).

Input: LAION-5B scored the L2-normalised image embeddings that clip-retrieval stored as float16
(``clip_inference`` normalises, its ``.npy`` files are float16). The clip scorer also stores
L2-normalised embeddings as float16, so by default they are fed as stored (cast exactly to
float32); ``normalise: true`` divides each by its norm first (for a column that is not
normalised). The head was trained on one CLIP model's embeddings (``trained_on``):
``check_producers`` refuses another unless ``any_model: true``, and a wrong width always. A
sample whose embedding holds a NaN, an infinity or a null fails alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field, field_validator

from curate.lib import clip_heads
from curate.stages.aesthetic import EmbeddingHeadScorer, local_spec
from curate.stages.base import Params, register

DEFAULT_WEIGHTS = "~/.cache/clip_retrieval/ViT-L_14/clip_autokeras_binary_nsfw"
RELEASE = ("https://raw.githubusercontent.com/LAION-AI/CLIP-based-NSFW-Detector/main/"
           "clip_autokeras_binary_nsfw.zip")


class NsfwParams(Params):
    path_fields = ("weights",)  # local paths: saved absolute (curate.saved)
    column: str = Field(default="clip_image_emb_l14", description="the stored embedding to read")
    weights: str | None = Field(default=None, description="the released Keras model (.zip or "
                                "directory), NeMo Curator's .pth, or hf-hub:ORG/REPO/FILE")
    trained_on: str = Field(default=clip_heads.CLIP_L14, pattern=r"^[^/]+/.+$",
                            description="MODEL/PRETRAINED of the CLIP the head was trained on")
    any_model: bool = Field(default=False, description="allow embeddings of another CLIP model")
    normalise: bool = False
    name: str = Field(default="", pattern=r"^[a-z0-9_]*$")
    batch_size: int = Field(default=4096, gt=0)
    cpus: float = Field(default=1.0, gt=0)
    gpus: float = Field(default=0.0, ge=0)

    @field_validator("weights")
    @classmethod
    def _absolute(cls, v: str | None) -> str | None:
        return None if v is None else local_spec(v)  # workers may run in another directory


@register
class Nsfw(EmbeddingHeadScorer):
    name = "nsfw"
    Params = NsfwParams
    column_name = "punsafe"
    what = "NSFW"

    def default_weights(self) -> str:
        return DEFAULT_WEIGHTS

    def download_hint(self) -> str:
        return (f"download LAION's NSFW detector where there is a network and unzip it: curl -L "
                f"-o nsfw.zip '{RELEASE}' && unzip nsfw.zip -d ~/.cache/clip_retrieval/ViT-L_14 "
                "(or give weights: the .zip, its directory, NeMo Curator's .pth, or "
                "hf-hub:ORG/REPO/FILE)")

    def weights_path(self) -> Path:
        if self._path is None:
            spec = self.weights_spec()
            if not spec.startswith("hf-hub:") and Path(spec).is_dir():
                self._path = Path(spec)  # an unpacked SavedModel
            else:
                return super().weights_path()
        return self._path

    def weights_identity(self) -> str:
        path = self.weights_path()
        if path.is_dir():  # an unpacked SavedModel: its files, by content
            from curate.lib.tf_bundle import savedmodel_digest

            return savedmodel_digest(path)
        return super().weights_identity()

    def build(self, path: Path) -> Any:
        if path.is_dir() or path.suffix == ".zip":
            from curate.lib.tf_bundle import load_keras_head

            head = load_keras_head(path)
            self._encode = head.encode
            return head.module
        self._encode = None
        return clip_heads.nsfw_nemo(clip_heads.load_state_dict(path), path)

    def prepare(self, x: np.ndarray) -> np.ndarray:
        if self.params.normalise:  # type: ignore[attr-defined]
            x = clip_heads.l2_normalise(x)
        return super().prepare(x)
