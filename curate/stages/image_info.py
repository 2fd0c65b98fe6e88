"""Scorer ``image_info``: checks that the image decodes and measures it.

Outputs the original ``width`` and ``height``, ``aspect_ratio`` (long side / short side),
``image_format`` (as Pillow names it: JPEG, PNG, WEBP, ...), and ``image_bytes``. An image that
does not decode (corrupt, truncated, empty, not an image) fails the sample with the decoder's
message. Images over ``max_pixels`` are rejected from their header, before any pixel is decoded
(decompression bombs). JPEGs are decoded at 1/8 scale in the DCT domain (Pillow ``draft``):
enough to prove the data decodes, at a fraction of the cost.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Mapping
from typing import Any

import pyarrow as pa
from PIL import Image
from pydantic import Field

from curate.stages.base import Params, SampleScorer, register


class ImageInfoParams(Params):
    max_pixels: int = Field(default=178_956_970, gt=0,
                            description="images with more pixels fail before decoding")
    full_decode: bool = Field(default=False,
                              description="decode JPEGs at full size instead of 1/8 (slower)")


@register
class ImageInfo(SampleScorer):
    name = "image_info"
    Params = ImageInfoParams

    def inputs(self) -> tuple[str, ...]:
        return ("image",)

    def outputs(self) -> Mapping[str, pa.DataType]:
        return {"width": pa.int32(), "height": pa.int32(), "aspect_ratio": pa.float32(),
                "image_format": pa.string(), "image_bytes": pa.int64()}

    def score_sample(self, sample: dict[str, Any]) -> Mapping[str, Any]:
        data: bytes = sample["image"] or b""
        if not data:
            raise ValueError("empty image member (0 bytes)")
        p: ImageInfoParams = self.params  # type: ignore[assignment]
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                w, h = im.size
                if w <= 0 or h <= 0:
                    raise ValueError(f"image has no pixels ({w}x{h})")
                if w * h > p.max_pixels:
                    raise ValueError(f"image is {w}x{h} = {w * h} pixels, over max_pixels "
                                     f"{p.max_pixels}")
                fmt = im.format
                if fmt == "JPEG" and not p.full_decode:
                    im.draft("RGB", (max(1, w // 8), max(1, h // 8)))
                im.load()
        return {"width": w, "height": h, "aspect_ratio": max(w, h) / min(w, h),
                "image_format": fmt, "image_bytes": len(data)}
