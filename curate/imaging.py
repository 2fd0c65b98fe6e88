"""Image decoding for models: DCT-domain downscaling, then the model's own preprocessing.

``FastPreprocess`` wraps a model's preprocessing transform (open_clip's: resize the short side
with bicubic, centre crop, normalise). Before it, a JPEG is decoded with Pillow's ``draft`` at
the largest 1/2, 1/4 or 1/8 scale that still leaves the image at least as large as the resize
target. That is exact DCT scaling done by libjpeg, several times cheaper than a full decode, and
the pixels the model sees differ from the reference path only by that downscale filter (tested
against the reference scores). Other formats are decoded in full.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from typing import Any

from PIL import Image


def decode_for(data: bytes, size: tuple[int, int], resize_mode: str = "shortest") -> Image.Image:
    """Decode ``data`` to RGB, at reduced scale when it is a JPEG larger than needed for a
    resize to ``size`` (height, width) in open_clip's ``resize_mode``."""
    im = Image.open(io.BytesIO(data))
    if im.format == "JPEG":
        w, h = im.size
        th, tw = size
        if resize_mode == "shortest":
            scale = max(th, tw) / min(w, h)
        elif resize_mode == "longest":
            scale = max(th, tw) / max(w, h)
        else:  # squash
            scale = max(tw / w, th / h)
        if scale < 1:
            im.draft("RGB", (math.ceil(w * scale), math.ceil(h * scale)))
    if im.mode != "RGB":
        im = im.convert("RGB")
    else:
        im.load()
    return im


class FastPreprocess:
    """bytes → model input tensor: ``decode_for`` then the model's own transform."""

    def __init__(self, transform: Callable[[Image.Image], Any], size: tuple[int, int],
                 resize_mode: str = "shortest") -> None:
        self.transform = transform
        self.size = size
        self.resize_mode = resize_mode

    def decode(self, data: bytes) -> Image.Image:
        return decode_for(data, self.size, self.resize_mode)

    def __call__(self, data: bytes) -> Any:
        return self.transform(self.decode(data))
