"""Make ``import torchvision`` work next to a CPU torch when torchvision is a CUDA build.

With torch 2.13.0 (CPU) and torchvision 0.28.0 (CUDA build), importing torchvision fails with
``operator torchvision::nms does not exist`` because its compiled ops cannot load. open_clip,
timm and transformers all import torchvision. ``ensure_torchvision()`` declares the two missing
operator schemas (``nms``, ``qnms``) only when that import fails, so transforms and models work
(``torchvision.ops`` kernels and ``torchvision.io`` decoders still do not). Where torchvision
imports normally it does nothing. curate's torch stages call it before importing open_clip, so it
also runs inside Ray workers.
"""

from __future__ import annotations

import sys

# The operator registrations are process-wide and live as long as their Library objects.
_KEEP_ALIVE: list[object] = []


def ensure_torchvision() -> None:
    """Idempotent: make ``import torchvision`` succeed in this process."""
    if "torchvision" in sys.modules:
        return
    try:
        import torchvision
        return
    except RuntimeError as exc:
        if "torchvision::nms" not in str(exc):
            raise
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]
    import torch

    lib = torch.library.Library("torchvision", "FRAGMENT")
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _KEEP_ALIVE.append(lib)
    import torchvision  # noqa: F401
