"""Scorer ``watermark``: LAION's watermark detector, the ``pwatermark`` column of LAION-5B
(Schuhmann et al., 2022; LAION-AI/LAION-5B-WatermarkDetection).

The model is timm's EfficientNet-B3 (``efficientnet_b3a``, which timm 0.5 built exactly as
``efficientnet_b3`` and timm >= 0.9 maps to it) whose classifier is replaced by a small MLP on
its 1536 pooled features: Linear(1536, 625), ReLU, Dropout(0.3), Linear(625, 256), ReLU,
Linear(256, 2). The input is the image resized to 256x256 (Pillow's bilinear filter, which
antialiases), scaled to [0, 1] and normalised with the ImageNet mean and std (torchvision's
``Resize((256, 256))``, ``ToTensor``, ``Normalize``). ``pwatermark`` (float32) is
``softmax(logits)[:, 0]``: class 0 is "watermark", class 1 "clear".

Decoding: the whole image is decoded (no reduced-scale JPEG decoding, so the pixels are the
recipe's) and converted to RGB, as the authors' ``example_use.py`` does. The LAION-5B run
(``data.py``) fed ``Image.open`` to the transforms without a conversion: identical for RGB
images; a greyscale, RGBA or CMYK image made its Normalize raise there, and had no score
(img2dataset writes RGB JPEGs, except that a greyscale source stays greyscale). Images are
opened by ``curate.lib.imaging.open_image``, so one whose header claims more than
``max_pixels`` pixels fails before it is decoded. A sample whose image does not decode fails
alone (``error:watermark``); the rest of its batch is scored.

Weights: ``weights`` is a state dict in the authors' format (their released
``watermark_model_v1.pt``: the keys of timm's model with the replaced classifier, or the same
under ``"weights"`` as their ``inference.py`` reads it), a local path or
``hf-hub:ORG/REPO/FILE`` (``curate.lib.weights``). The model is built with ``pretrained=False``
(nothing is downloaded) and the state dict is loaded strictly: a file that is not that model's
state dict is a ``CurateError`` on the driver before any worker starts. The file's SHA-256 is
the scorer's identity (not the path or hub name that led to it).

Runs in fp32: on CPU with ``cpus`` threads; on a GPU (``gpus``, when the cluster has one) with
cuDNN's TF32 off for its convolutions. Images are decoded by ``decode_threads`` threads running
ahead of the model. See docs/watermark.md.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from pydantic import Field, field_validator

from curate.errors import CurateError
from curate.lib.imaging import MAX_PIXELS, PILLOW_HARD_LIMIT, open_image
from curate.lib.weights import is_hub_spec, resolve_weights, weights_digest
from curate.stages.base import SAMPLE_ERRORS, Params, Resources, Scorer, register

DEFAULT_WEIGHTS = "~/.cache/curate/watermark_model_v1.pt"
RELEASE_URL = ("https://github.com/LAION-AI/LAION-5B-WatermarkDetection/raw/main/models/"
               "watermark_model_v1.pt")
COLUMN = "pwatermark"

# The published recipe.
ARCH = "efficientnet_b3"  # the authors' "efficientnet_b3a": the same network in timm
IMAGE_SIZE = (256, 256)
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
FEATURES, HIDDEN = 1536, (625, 256)
WATERMARK_CLASS = 0

_HINT = ("download LAION's watermark_model_v1.pt where there is a network: curl -L "
         f"--create-dirs -o {DEFAULT_WEIGHTS} {RELEASE_URL} (or give weights: PATH or "
         "hf-hub:ORG/REPO/FILE)")


class WatermarkParams(Params):
    path_fields = ("weights",)  # local paths: saved absolute (curate.saved)
    weights: str = Field(default=DEFAULT_WEIGHTS, validate_default=True, min_length=1,
                         description="LAION's watermark_model_v1.pt (a state dict): a local "
                         "path or hf-hub:ORG/REPO/FILE")
    batch_size: int = Field(default=32, gt=0)
    cpus: float = Field(default=2.0, gt=0, description="CPU threads of the worker holding it")
    gpus: float = Field(default=1.0, ge=0, description="GPUs per worker, when the cluster has")
    decode_threads: int = Field(default=2, gt=0)
    max_pixels: int = Field(default=MAX_PIXELS, gt=0, le=PILLOW_HARD_LIMIT,
                            description="images with more pixels fail before decoding")

    @field_validator("weights")
    @classmethod
    def _absolute(cls, v: str) -> str:
        if is_hub_spec(v):
            return v
        return str(Path(v).expanduser().resolve())  # workers may run in another directory


def build_model() -> Any:
    """The detector's network with freshly initialised weights (``pretrained=False``: nothing
    is downloaded)."""
    from curate.lib.torch_compat import ensure_torchvision

    ensure_torchvision()
    try:
        import timm
    except ImportError as exc:
        raise CurateError("the watermark scorer needs timm",
                          "pip install timm==1.0.31 (open_clip_torch installs it too)") from exc
    from torch import nn

    net = timm.create_model(ARCH, pretrained=False, num_classes=2)
    net.classifier = nn.Sequential(
        nn.Linear(FEATURES, HIDDEN[0]), nn.ReLU(), nn.Dropout(p=0.3),
        nn.Linear(HIDDEN[0], HIDDEN[1]), nn.ReLU(), nn.Linear(HIDDEN[1], 2))
    return net


def read_state_dict(path: str | Path) -> dict[str, Any]:
    """The tensors of a weights file: a state dict, or one under ``"weights"``."""
    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001  (not a torch file, or one holding more than tensors)
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise CurateError(f"watermark weights {str(path)!r} are not a PyTorch state dict "
                          f"({type(exc).__name__}: {first[:200]})", _HINT) from None
    if isinstance(obj, Mapping) and set(obj) == {"weights"} and isinstance(obj["weights"],
                                                                          Mapping):
        obj = obj["weights"]  # the checkpoint layout the authors' inference.py reads
    if not isinstance(obj, Mapping) or not obj or not all(
            isinstance(v, torch.Tensor) for v in obj.values()):
        raise CurateError(f"watermark weights {str(path)!r} hold no state dict of tensors "
                          f"(found {type(obj).__name__})", _HINT)
    return dict(obj)


def _names(keys: list[str]) -> str:
    return ", ".join(keys[:3]) + (", ..." if len(keys) > 3 else "")


def load_model(path: str | Path) -> Any:
    """The detector with the weights of ``path`` loaded strictly, in eval mode (on CPU)."""
    state = read_state_dict(path)
    net = build_model()
    expected = net.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [k for k in expected if k in state and tuple(state[k].shape) != tuple(
        expected[k].shape)]
    if missing or unexpected or wrong:
        parts = [f"{len(v)} {what} ({_names(v)})" for what, v in
                 (("missing", missing), ("unexpected", unexpected), ("of another shape", wrong))
                 if v]
        raise CurateError(
            f"watermark weights {str(path)!r} do not fit LAION's watermark model (timm "
            f"efficientnet_b3a with a {FEATURES}-{HIDDEN[0]}-{HIDDEN[1]}-2 classifier): keys "
            + ", ".join(parts), _HINT)
    net.load_state_dict(state, strict=True)
    return net.eval()


@register
class Watermark(Scorer):
    name = "watermark"
    Params = WatermarkParams

    def __init__(self, params: WatermarkParams | None = None) -> None:
        super().__init__(params)
        p: WatermarkParams = self.params  # type: ignore[assignment]
        self.resources = Resources(cpus=p.cpus, gpus=p.gpus)
        self._fingerprint: str | None = None

    def inputs(self) -> tuple[str, ...]:
        return ("image",)

    def outputs(self) -> Mapping[str, pa.DataType]:
        return {COLUMN: pa.float32()}

    def weights_path(self) -> Path:
        """The local weights file (a hub name is found in the cache or downloaded)."""
        spec = self.params.weights  # type: ignore[attr-defined]
        if is_hub_spec(spec):
            return resolve_weights(spec, "watermark weights")
        path = Path(spec)
        if not path.is_file():
            raise CurateError(f"no watermark weights file {str(path)!r}", _HINT)
        return path

    def check(self) -> None:
        """The weights exist and load into the model (a few seconds, on the driver)."""
        load_model(self.weights_path())

    def fingerprint(self) -> str:
        """Name, version, parameters and the weights file's SHA-256 (not its path)."""
        if self._fingerprint is None:
            digest = weights_digest(self.weights_path())
            blob = json.dumps({"name": self.name, "version": self.version,
                               "params": self.params.model_dump(mode="json",
                                                                exclude={"weights"}),
                               "weights_sha256": digest}, sort_keys=True)
            self._fingerprint = hashlib.sha256(blob.encode()).hexdigest()[:16]
        return self._fingerprint

    def setup(self) -> None:
        import torch

        from curate.lib.torch_compat import ensure_torchvision

        ensure_torchvision()
        from torchvision import transforms as T

        p: WatermarkParams = self.params  # type: ignore[assignment]
        if self.device == "cpu":
            torch.set_num_threads(max(1, math.floor(p.cpus)))
        self._torch = torch
        self._model = load_model(self.weights_path()).to(self.device)
        self._transform = T.Compose([T.Resize(IMAGE_SIZE), T.ToTensor(), T.Normalize(MEAN, STD)])
        self._pool = ThreadPoolExecutor(max_workers=p.decode_threads,
                                        thread_name_prefix="watermark-decode")

    def _prepare(self, data: bytes | None) -> Any:
        """bytes → the model's input (runs on the decode threads)."""
        im = open_image(data, self.params.max_pixels)  # type: ignore[attr-defined]
        return self._transform(im.convert("RGB"))

    @contextmanager
    def _fp32(self) -> Iterator[None]:
        """Full fp32 convolutions on a GPU (cuDNN uses TF32 by default), restored after."""
        cudnn = self._torch.backends.cudnn
        if not self.device.startswith("cuda"):
            yield
            return
        before = cudnn.allow_tf32
        cudnn.allow_tf32 = False
        try:
            yield
        finally:
            cudnn.allow_tf32 = before

    def _forward(self, images: Any) -> np.ndarray:
        torch = self._torch
        with torch.inference_mode(), self._fp32():
            logits = self._model(images.to(self.device, non_blocking=True))
            probs = torch.softmax(logits.float(), dim=1)[:, WATERMARK_CLASS]
        return probs.cpu().numpy()

    def score_batch(self, batch: pa.Table) -> Mapping[str, Any]:
        p: WatermarkParams = self.params  # type: ignore[assignment]
        images = batch.column("image").to_pylist()
        n = len(images)
        decoded: list[Future[Any]] = [self._pool.submit(self._prepare, b) for b in images]
        scores = np.full(n, np.nan, dtype=np.float32)
        errors: list[str | None] = [None] * n
        for a in range(0, n, p.batch_size):
            good, tensors = [], []
            for i in range(a, min(a + p.batch_size, n)):
                try:
                    tensors.append(decoded[i].result())
                    good.append(i)
                except Exception as exc:  # noqa: BLE001 - recorded on the sample
                    errors[i] = f"{type(exc).__name__}: {exc}".splitlines()[0]
            if good:
                scores[good] = self._forward(self._torch.stack(tensors))
        return {COLUMN: pa.array(scores, pa.float32(), mask=np.isnan(scores)),
                SAMPLE_ERRORS: errors}
