"""Scorer ``image_info``: checks that the image decodes and measures it.

Outputs the original ``width`` and ``height``, ``aspect_ratio`` (long side / short side),
``image_format`` (the format found from the bytes, as Pillow names it: JPEG, PNG, WEBP, ...;
a PNG stored as ``.jpg`` says PNG here, while the output keeps its bytes and extension), and
``image_bytes``. ``original_width`` and ``original_height`` are the size of the image before
the downloader resized it, as img2dataset records it in the sample's json member (DataComp's
pool was downloaded resized to 512 px on the long side, so DataComp's size filters read
these); null when the json has no such whole number. An image that does not decode (corrupt,
truncated, empty, not an image) fails the sample with the decoder's message; bytes that are no
image say what they look like (``not an image: looks like HTML``). Images over ``max_pixels``
are rejected from their header, before any pixel is decoded (decompression bombs; see
``curate.lib.imaging.open_image``, which every decoding stage shares). JPEGs are decoded at 1/8
scale in the DCT domain (Pillow ``draft``): enough to prove the data decodes, at a fraction of
the cost.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import pyarrow as pa
from pydantic import Field

from curate.lib.imaging import MAX_PIXELS, PILLOW_HARD_LIMIT, open_image
from curate.stages.base import Params, SampleScorer, register


class ImageInfoParams(Params):
    max_pixels: int = Field(default=MAX_PIXELS, gt=0, le=PILLOW_HARD_LIMIT,
                            description="images with more pixels fail before decoding")
    full_decode: bool = Field(default=False,
                              description="decode JPEGs at full size instead of 1/8 (slower)")


@register
class ImageInfo(SampleScorer):
    name = "image_info"
    Params = ImageInfoParams
    version = 2  # 2: original_width, original_height from the json member

    def inputs(self) -> tuple[str, ...]:
        return ("image", "json")

    def outputs(self) -> Mapping[str, pa.DataType]:
        return {"width": pa.int32(), "height": pa.int32(), "aspect_ratio": pa.float32(),
                "image_format": pa.string(), "image_bytes": pa.int64(),
                "original_width": pa.int32(), "original_height": pa.int32()}

    def score_sample(self, sample: dict[str, Any]) -> Mapping[str, Any]:
        data: bytes = sample["image"] or b""
        p: ImageInfoParams = self.params  # type: ignore[assignment]
        with open_image(data, p.max_pixels) as im:
            w, h = im.size
            fmt = im.format
            if fmt == "JPEG" and not p.full_decode:
                im.draft("RGB", (max(1, w // 8), max(1, h // 8)))
            im.load()
        ow, oh = original_size(sample.get("json"))
        return {"width": w, "height": h, "aspect_ratio": max(w, h) / min(w, h),
                "image_format": fmt, "image_bytes": len(data),
                "original_width": ow, "original_height": oh}


def _whole(value: Any) -> int | None:
    """A positive whole number that fits int32, else None (bools are not numbers here)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int) and 0 < value < 2**31:
        return value
    return None


def original_size(meta_text: str | None) -> tuple[int | None, int | None]:
    """``original_width``, ``original_height`` of a json member's text (img2dataset's keys)."""
    if not meta_text:
        return None, None
    try:
        meta = json.loads(meta_text)
    except ValueError:  # the reader already failed such a sample; nothing to add
        return None, None
    if not isinstance(meta, dict):
        return None, None
    return _whole(meta.get("original_width")), _whole(meta.get("original_height"))
