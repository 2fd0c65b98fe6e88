"""Scorer ``image_complexity``: cheap signals that flag flat or near-empty images.

The image is decoded at reduced DCT scale and turned into a ``size`` x ``size`` greyscale
thumbnail. From it:

* ``image_bpp``: bits per pixel of the thumbnail's pixels after zlib compression (level 9, no
  headers). Flat images compress to almost nothing, busy ones do not;
* ``edge_density``: the share of pixels whose gradient magnitude (central differences) exceeds
  ``edge_threshold`` grey levels.

A rule such as ``{rule: threshold, column: image_bpp, min: 0.5, reason: flat_image}`` drops
flat images. Images are opened by ``curate.lib.imaging.open_image``: one whose header claims more
than ``max_pixels`` pixels fails before it is decoded.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from typing import Any

import numpy as np
import pyarrow as pa
from PIL import Image
from pydantic import Field

from curate.lib.imaging import MAX_PIXELS, PILLOW_HARD_LIMIT, open_image
from curate.stages.base import Params, SampleScorer, register


class ImageComplexityParams(Params):
    size: int = Field(default=128, ge=16)
    edge_threshold: float = Field(default=24.0, gt=0)
    max_pixels: int = Field(default=MAX_PIXELS, gt=0, le=PILLOW_HARD_LIMIT,
                            description="images with more pixels fail before decoding")


@register
class ImageComplexity(SampleScorer):
    name = "image_complexity"
    Params = ImageComplexityParams

    def inputs(self) -> tuple[str, ...]:
        return ("image",)

    def outputs(self) -> Mapping[str, pa.DataType]:
        return {"image_bpp": pa.float32(), "edge_density": pa.float32()}

    def score_sample(self, sample: dict[str, Any]) -> Mapping[str, Any]:
        p: ImageComplexityParams = self.params  # type: ignore[assignment]
        im = open_image(sample["image"], p.max_pixels)
        if im.format == "JPEG":
            im.draft("L", (p.size, p.size))
        thumb = im.convert("L").resize((p.size, p.size), Image.BILINEAR)
        compressed = zlib.compress(thumb.tobytes(), 9)
        g = np.asarray(thumb, dtype=np.float32)
        gx = np.zeros_like(g)
        gy = np.zeros_like(g)
        gx[:, 1:-1] = (g[:, 2:] - g[:, :-2]) / 2
        gy[1:-1, :] = (g[2:, :] - g[:-2, :]) / 2
        edges = float((np.hypot(gx, gy) > p.edge_threshold).mean())
        return {"image_bpp": 8 * len(compressed) / (p.size * p.size), "edge_density": edges}
