"""Small networks over a stored CLIP image embedding (LAION's aesthetic and NSFW heads): their
released weight formats read into one torch module, the check that the embedding comes from
the CLIP model a head was trained on, and the forward pass.

A head is a ``torch.nn.Sequential`` built here from the published architecture, with the
weights of a released file, evaluated in float32 with dropout off (``eval()``): the same
operations, in the same order, as the authors' modules. What each release expects:

* LAION-Aesthetics V2 (``christophschuhmann/improved-aesthetic-predictor``, ``MLP`` in
  ``simple_inference.py``): ``layers`` = Linear(d, 1024), Dropout, Linear(1024, 128), Dropout,
  Linear(128, 64), Dropout, Linear(64, 16), Linear(16, 1) (keys ``layers.{0,2,4,6,7}``; the
  ReLUs are commented out, so the head is affine); the ``reluMSE`` variant has ReLUs (keys
  ``layers.{0,3,6,9,11}``). Input: the L2-normalised embedding (``normalized``).
* LAION-Aesthetics V1 (``LAION-AI/aesthetic-predictor``): ``nn.Linear(d, 1)`` (keys ``weight``,
  ``bias``) on the L2-normalised embedding (the notebook's ``image_features /= norm``).
* LAION's CLIP-based NSFW detector in NeMo Curator's torch port (``NSFWModel``: keys
  ``norm.mean``, ``norm.variance``, ``linear_{1..4}.*``): (x - mean) / sqrt(variance), then
  Linear/ReLU x3, Linear, sigmoid. The released autokeras SavedModel is read by
  ``curate.lib.tf_bundle`` into the same kind of module.

Files are read with ``torch.load(weights_only=True)``: tensors and dicts only, no code.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from curate.errors import CurateError

# The CLIP model LAION's L/14 heads were trained on: OpenAI's ViT-L/14 (open_clip's names).
CLIP_L14 = "ViT-L-14/openai"

# Layouts of the V2 MLP: indices of the Linear layers in ``layers`` → whether ReLUs follow.
V2_LAYOUTS: dict[tuple[int, ...], str] = {(0, 2, 4, 6, 7): "linear", (0, 3, 6, 9, 11): "relu"}


def load_state_dict(path: str | Path) -> dict[str, Any]:
    """The tensors of a ``torch.save``'d state dict (``weights_only``: no code runs)."""
    import torch

    try:
        obj = torch.load(Path(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001  (not a torch file, or one holding objects)
        raise CurateError(f"{path}: not a torch state dict ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0] if str(exc) else ''})",
                          "give the .pth file the authors released") from None
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]  # a Lightning checkpoint
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CurateError(f"{path}: not a state dict of tensors")
    return {str(k): v.float() for k, v in obj.items()}


def _keys_error(path: str | Path, what: str, sd: Mapping[str, Any], want: str) -> CurateError:
    shown = ", ".join(sorted(sd)[:8]) + (" ..." if len(sd) > 8 else "")
    return CurateError(f"{path}: not a {what} state dict (keys: {shown})", f"expected {want}")


def _linear(w: Any, b: Any) -> Any:
    import torch

    layer = torch.nn.Linear(w.shape[1], w.shape[0])
    with torch.no_grad():
        layer.weight.copy_(w)
        layer.bias.copy_(b)
    return layer


def aesthetic_v2(sd: Mapping[str, Any], path: str | Path = "weights") -> Any:
    """LAION-Aesthetics V2's ``MLP.layers`` from its state dict (linear or ReLU layout)."""
    import torch

    idx = tuple(sorted({int(k.split(".")[1]) for k in sd if k.startswith("layers.")
                        and k.split(".")[1].isdigit()}))
    layout = V2_LAYOUTS.get(idx)
    if layout is None or set(sd) != {f"layers.{i}.{p}" for i in idx for p in ("weight", "bias")}:
        raise _keys_error(path, "LAION-Aesthetics V2 (MLP)", sd,
                          "layers.{0,2,4,6,7}.{weight,bias} (sac+logos+ava1-l14-linearMSE.pth)")
    mods: list[Any] = []
    width: int | None = None
    for n, i in enumerate(idx):
        w, b = sd[f"layers.{i}.weight"], sd[f"layers.{i}.bias"]
        if w.ndim != 2 or b.shape != (w.shape[0],) or (width is not None and w.shape[1] != width):
            raise CurateError(f"{path}: layers.{i} has weight {tuple(w.shape)} and bias "
                              f"{tuple(b.shape)} after a layer with {width} outputs")
        mods.append(_linear(w, b))
        if n < len(idx) - 1 and layout == "relu":
            mods.append(torch.nn.ReLU())
        width = int(w.shape[0])
    if width != 1:
        raise CurateError(f"{path}: the last layer has {width} outputs, not 1")
    return torch.nn.Sequential(*mods).eval()


def aesthetic_v1(sd: Mapping[str, Any], path: str | Path = "weights") -> Any:
    """LAION-Aesthetics V1: one ``nn.Linear(d, 1)``."""
    import torch

    if set(sd) != {"weight", "bias"} or sd["weight"].ndim != 2 or sd["weight"].shape[0] != 1:
        raise _keys_error(path, "LAION-Aesthetics V1 (nn.Linear(d, 1))", sd,
                          "weight [1, d] and bias [1] (sa_0_4_vit_l_14_linear.pth)")
    return torch.nn.Sequential(_linear(sd["weight"], sd["bias"])).eval()


EPSILON = 1e-7  # keras.backend.epsilon()


def standardize(mean: Any, variance: Any) -> Any:
    """Keras' ``Normalization`` at inference: (x - mean) / max(sqrt(variance), 1e-7). NeMo's
    port divides by sqrt(variance) alone; the two differ only for variances below 1e-14."""
    import torch

    class Standardize(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("mean", mean.reshape(-1).float().clone())
            self.register_buffer("std", torch.clamp(variance.reshape(-1).float().sqrt(),
                                                    min=EPSILON))

        def forward(self, x: Any) -> Any:
            return (x - self.mean) / self.std

    Standardize.__qualname__ = Standardize.__name__ = "Standardize"
    return Standardize()


NEMO_NSFW_KEYS = ("norm.mean", "norm.variance", "linear_1.weight", "linear_1.bias",
                  "linear_2.weight", "linear_2.bias", "linear_3.weight", "linear_3.bias",
                  "linear_4.weight", "linear_4.bias")


def nsfw_nemo(sd: Mapping[str, Any], path: str | Path = "weights") -> Any:
    """The NSFW detector in NeMo Curator's torch port (``NSFWModel``)."""
    import torch

    if set(sd) != set(NEMO_NSFW_KEYS):
        raise _keys_error(path, "NSFW detector (NeMo Curator's NSFWModel)", sd,
                          ", ".join(NEMO_NSFW_KEYS))
    mods: list[Any] = [standardize(sd["norm.mean"], sd["norm.variance"])]
    width = sd["norm.mean"].numel()
    for i in range(1, 5):
        w, b = sd[f"linear_{i}.weight"], sd[f"linear_{i}.bias"]
        if w.shape[1] != width:
            raise CurateError(f"{path}: linear_{i} takes {w.shape[1]} inputs, gets {width}")
        mods.append(_linear(w, b))
        mods.append(torch.nn.ReLU() if i < 4 else torch.nn.Sigmoid())
        width = w.shape[0]
    if width != 1:
        raise CurateError(f"{path}: linear_4 has {width} outputs, not 1")
    return torch.nn.Sequential(*mods).eval()


def input_dim(module: Any) -> int:
    """The embedding width a head takes (its first Linear's, or its standardisation's)."""
    import torch

    for m in module.modules():
        if isinstance(m, torch.nn.Linear):
            return int(m.in_features)
        if hasattr(m, "mean") and isinstance(m.mean, torch.Tensor):
            return int(m.mean.numel())
    raise ValueError("a head without a first layer")


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Rows divided by their L2 norm, zero rows left zero (the authors' ``normalized``)."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    norms[norms == 0] = 1
    return (x / norms).astype(np.float32)


def l2_normalise_torch(x: np.ndarray) -> np.ndarray:
    """The same with torch's ``x / x.norm(dim=-1, keepdim=True)`` (the V1 notebook's)."""
    import torch

    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    norms = t.norm(dim=-1, keepdim=True)
    return (t / torch.where(norms == 0, torch.ones_like(norms), norms)).numpy()


def forward(module: Any, x: np.ndarray, device: str = "cpu", batch_size: int = 4096) -> np.ndarray:
    """The head's single output for each row of ``x`` (float32 [N]), in batches."""
    import torch

    out = np.empty(len(x), dtype=np.float32)
    with torch.inference_mode():
        for a in range(0, len(x), batch_size):
            t = torch.from_numpy(np.ascontiguousarray(x[a:a + batch_size], dtype=np.float32))
            out[a:a + batch_size] = module(t.to(device)).reshape(-1).float().cpu().numpy()
    return out


def clip_of(scorer: Any) -> str | None:
    """``MODEL/PRETRAINED`` of a ``clip`` scorer (None for other scorers)."""
    if getattr(scorer, "name", None) != "clip":
        return None
    p = scorer.params
    # open_clip's openai weights run with QuickGELU whether or not the name says so
    return f"{str(p.model).removesuffix('-quickgelu')}/{p.pretrained}"


def check_producer(who: str, column: str, producer: Any, trained_on: str, any_model: bool,
                   dim: int | None = None) -> None:
    """Refuse a head over an embedding that the CLIP model it was trained on did not make:
    ``producer`` is the scorer that outputs ``column`` (None: the column comes from elsewhere).
    ``dim``: the head's input width, checked against the producer's embedding width."""
    made_by = clip_of(producer) if producer is not None else None
    if not any_model and made_by != trained_on:
        what = (f"comes from scorer {producer.label} ({made_by or producer.name})"
                if producer is not None else "has no known producer")
        raise CurateError(f"{who}: the head was trained on {trained_on} image embeddings, but "
                          f"{column} {what}",
                          f"read the embedding of a clip scorer with model: "
                          f"{trained_on.split('/')[0]}, pretrained: {trained_on.split('/', 1)[1]} "
                          "(e.g. name: l14 → clip_image_emb_l14), or set any_model: true to "
                          "apply it to another model's embeddings anyway")
    if producer is not None and dim is not None:
        dtype = producer.outputs().get(column)
        width = getattr(dtype, "list_size", None)
        if width is not None and width != dim:
            raise CurateError(f"{who}: {column} has {width} dimensions (from scorer "
                              f"{producer.label}), the head takes {dim}",
                              "give the embedding of the CLIP model the head was trained on, "
                              "or weights trained on this one")
