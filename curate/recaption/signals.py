"""ALIP's consistency signals for synthetic captions, as columns.

ALIP (Yang et al., "ALIP: Adaptive Language-Image Pre-training with Synthetic Caption", ICCV
2023) generates a synthetic caption of each image with OFA and trains a bi-path model on the
raw text and the caption; its Language Consistency Gate (LCG) and Description Consistency Gate
(DCG) "dynamically adjust the weights of samples and image-text/caption pairs during the
training process" (the paper's abstract). The gates are computed during training, by the model
being trained; curate does not reproduce them. What it gives are the similarities the gates'
names refer to, measured once with the pool's stored CLIP scorer, as columns rules (and a
training loader) can use:

* ``image_sim``: cosine of the stored image embedding (``clip_image_emb<suffix>``) and the
  synthetic caption's text embedding (image vs. synthetic caption);
* ``text_sim``: cosine of the stored raw-caption embedding (``clip_text_emb<suffix>``) and the
  synthetic caption's text embedding (raw text vs. synthetic caption; the same text tower
  encodes both).

Image vs. raw text is the clip scorer's own ``clip_score``. Only the synthetic captions are
encoded, with the clip scorer's model and its parameters (weights, caption truncation, padding
trimmed exactly as the scorer does); the stored embeddings are read, never recomputed. The
encoding runs in one Ray task (on a GPU when the cluster has one, in fp16 as the scorer does
there).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from curate.errors import CurateError

log = logging.getLogger("curate")


@dataclass
class ClipSignals:
    label: str  # the clip scorer's label in the store (clip, clip_l14, ...)
    params: dict[str, Any]
    image_column: str
    text_column: str
    sidecars: Any  # curate.store.embeddings.SidecarReader

    @classmethod
    def find(cls, wanted: str | None, source: Any) -> ClipSignals | None:
        """The stored clip scorer named ``wanted`` (``auto``: the only one, if any)."""
        if wanted is None or source is None:
            return None
        clips = [v for v in source.versions if v.name == "clip"]
        if wanted == "auto":
            if len(clips) != 1:
                return None  # none (no signals), or several: the user names one
            v = clips[0]
        else:
            found = [v for v in clips if v.label == wanted]
            if not found:
                have = ", ".join(v.label for v in clips) or "none"
                raise CurateError(f"recaption.clip: the selection has no clip scorer "
                                  f"{wanted!r} (clip scorers: {have})",
                                  "name one of them, or `clip: null` for no signals")
            v = found[0]
        model, pretrained = str(v.params.get("model", "")), v.params.get("pretrained")
        if not pretrained and not (model.startswith(("hf-hub:", "local-dir:"))
                                   or Path(model).is_dir()):
            # Weights drawn at random when the scorer loaded them: its embeddings cannot be
            # matched by loading the model again.
            log.warning("recaption: clip scorer %s has random weights (%s, no pretrained), so "
                        "the ALIP signals are not computed", v.label, model)
            return None
        cols = list(v.sidecars)
        img = next((c for c in cols if c.startswith("clip_image_emb")), None)
        txt = next((c for c in cols if c.startswith("clip_text_emb")), None)
        if img is None or txt is None:
            if wanted == "auto":
                return None
            raise CurateError(f"recaption.clip: clip scorer {v.label} stores no embeddings",
                              "score with `embeddings: true` (the default)")
        return cls(v.label, dict(v.params), img, txt, source.sidecars())

    def fill(self, slots: list[Any]) -> None:
        """Set ``image_sim`` and ``text_sim`` of each slot (with an accepted ``text``)."""
        if not slots:
            return
        syn = encode_captions(self.params, [s.text for s in slots])
        shards = [s.shard for s in slots]
        indices = [s.index for s in slots]
        img = self.sidecars.read_rows(self.image_column, shards, indices)
        txt = self.sidecars.read_rows(self.text_column, shards, indices)
        image_sim = np.einsum("nd,nd->n", img, syn)
        text_sim = np.einsum("nd,nd->n", txt, syn)
        for s, a, b in zip(slots, image_sim.tolist(), text_sim.tolist(), strict=True):
            s.image_sim = a if math.isfinite(a) else None
            s.text_sim = b if math.isfinite(b) else None


class ClipTextEncoder:
    """The clip scorer's text side: its model, tokenizer, caption truncation and trimming."""

    def __init__(self, params: dict[str, Any], device: str) -> None:
        import torch

        from curate.lib.clip_model import can_trim_text, encode_text_trimmed, load_clip, trim_tokens
        from curate.stages.clip import CHARS_PER_TOKEN

        if device == "cpu":
            torch.set_num_threads(max(1, math.floor(float(params.get("cpus", 2.0)))))
        self.torch, self.device = torch, device
        loaded = load_clip(params["model"], params.get("pretrained"), device=device)
        self.model, self.tokenizer = loaded.model, loaded.tokenizer
        context = getattr(loaded.tokenizer, "context_length", None) or 77
        self.chars = CHARS_PER_TOKEN * int(context)
        self.trim = trim_tokens if can_trim_text(self.model) else None
        self.encode_text = (lambda t: encode_text_trimmed(self.model, t)) if self.trim else \
            self.model.encode_text
        precision = params.get("precision", "auto")
        if precision == "auto":
            precision = "fp16" if device.startswith("cuda") else "fp32"
        self.dtype = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]

    def encode(self, texts: list[str], batch_size: int = 256) -> np.ndarray:
        from curate.stages.base import text_prefix

        torch = self.torch
        out = []
        for i in range(0, len(texts), batch_size):
            tokens = self.tokenizer([text_prefix(t, self.chars) for t in texts[i:i + batch_size]])
            if self.trim is not None:
                tokens = self.trim(tokens)
            with torch.inference_mode():
                tokens = tokens.to(self.device)
                if self.dtype is not None:
                    with torch.autocast(self.device.split(":")[0], dtype=self.dtype):
                        emb = self.encode_text(tokens)
                else:
                    emb = self.encode_text(tokens)
                emb = torch.nn.functional.normalize(emb.float(), dim=-1)
            out.append(emb.cpu().numpy())
        return np.concatenate(out) if out else np.empty((0, 0), np.float32)


def _encode_remote(params: dict[str, Any], texts: list[str], device: str) -> np.ndarray:
    return ClipTextEncoder(params, device).encode(texts)


def encode_captions(params: dict[str, Any], texts: list[str]) -> np.ndarray:
    """L2-normalised text embeddings of ``texts`` with the clip scorer ``params``' model, in
    one Ray task (a GPU one when the cluster has a GPU)."""
    import ray

    gpus = ray.cluster_resources().get("GPU", 0.0) if ray.is_initialized() else 0.0
    if not ray.is_initialized():
        return _encode_remote(params, texts, "cpu")
    opts: dict[str, Any] = ({"num_gpus": 1, "num_cpus": 1} if gpus >= 1 else
                            {"num_cpus": min(float(params.get("cpus", 2.0)),
                                             ray.cluster_resources().get("CPU", 1.0))})
    task = ray.remote(_encode_remote).options(max_retries=1, **opts)
    try:
        return ray.get(task.remote(params, texts, "cuda" if gpus >= 1 else "cpu"))
    except ray.exceptions.RayTaskError as exc:
        cause = exc.cause if exc.cause is not None else exc
        raise CurateError(f"the clip text tower for the recaption signals failed: "
                          f"{type(cause).__name__}: {cause}".splitlines()[0]) from exc
