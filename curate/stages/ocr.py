"""Scorer ``ocr``: text spotting with RapidOCR (PP-OCR ONNX models shipped in its wheel).

Per sample:

* ``ocr_boxes``: text boxes as 8 floats each (x1, y1, ... x4, y4), normalised to [0, 1] of the
  image's width and height;
* ``ocr_texts`` and ``ocr_scores``: the recognised string and confidence of each box;
* ``ocr_text``: all strings joined by spaces (null when no text);
* ``ocr_n_boxes`` and ``ocr_area``: the fraction of the image covered by the union of the boxes.

Detection runs first, and recognition only on detected boxes, so an image without text costs
detection alone. Boxes whose recognised text has fewer than ``min_alnum`` letters or digits are
dropped: the detector also fires on shapes, which read as "O", "■" or ":". The detection
threshold is 0.7 rather than RapidOCR's 0.5: on the demo pool that halves the images sent to
recognition (204 → 100 of 501) and still reads every poster. JPEGs are decoded
at reduced DCT scale no smaller than the detector's input (``limit_side_len``). The classifier
for rotated text is off (it costs time; upside-down text is rare). CPU by default; the CUDA
execution provider of onnxruntime is used when the worker has a GPU and onnxruntime-gpu is
installed. Images are opened by ``curate.lib.imaging.open_image``: one whose header claims more
than ``max_pixels`` pixels fails before it is decoded.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pyarrow as pa
from PIL import Image, ImageDraw
from pydantic import Field

from curate.errors import CurateError
from curate.lib.imaging import MAX_PIXELS, PILLOW_HARD_LIMIT, open_image
from curate.stages.base import Params, Resources, SampleScorer, register


class OcrParams(Params):
    limit_side_len: int = Field(default=640, ge=32, description="detector input, longest side")
    text_score: float = Field(default=0.5, ge=0, le=1, description="min recognition confidence")
    box_thresh: float = Field(default=0.7, ge=0, le=1, description="min detection confidence "
                              "(RapidOCR's default 0.5 also fires on shapes, costing recognition)")
    min_alnum: int = Field(default=3, ge=0, description="drop boxes whose text has fewer "
                           "letters/digits (shapes read as 'O', '■', ':')")
    threads: int = Field(default=1, gt=0, description="onnxruntime intra-op threads")
    cpus: float = Field(default=1.0, gt=0)
    gpus: float = Field(default=0.0, ge=0)
    max_pixels: int = Field(default=MAX_PIXELS, gt=0, le=PILLOW_HARD_LIMIT,
                            description="images with more pixels fail before decoding")


@register
class Ocr(SampleScorer):
    name = "ocr"
    Params = OcrParams

    def __init__(self, params: OcrParams | None = None) -> None:
        super().__init__(params)
        p: OcrParams = self.params  # type: ignore[assignment]
        self.resources = Resources(cpus=max(p.cpus, p.threads), gpus=p.gpus)

    def inputs(self) -> tuple[str, ...]:
        return ("image",)

    def outputs(self) -> Mapping[str, pa.DataType]:
        return {"ocr_boxes": pa.list_(pa.list_(pa.float32(), 8)),
                "ocr_texts": pa.list_(pa.string()), "ocr_scores": pa.list_(pa.float32()),
                "ocr_text": pa.string(), "ocr_n_boxes": pa.int32(), "ocr_area": pa.float32()}

    def setup(self) -> None:
        try:
            from rapidocr import RapidOCR
        except ImportError as exc:
            raise CurateError("the ocr scorer needs rapidocr and onnxruntime",
                              "pip install rapidocr onnxruntime") from exc
        p: OcrParams = self.params  # type: ignore[assignment]
        params: dict[str, Any] = {
            "Global.use_cls": False, "Global.log_level": "critical",
            "Global.text_score": p.text_score, "Det.box_thresh": p.box_thresh,
            "Det.limit_type": "max", "Det.limit_side_len": p.limit_side_len,
            "EngineConfig.onnxruntime.intra_op_num_threads": p.threads,
            "EngineConfig.onnxruntime.inter_op_num_threads": 1,
        }
        if self.device.startswith("cuda"):
            params["EngineConfig.onnxruntime.use_cuda"] = True
        self._engine = RapidOCR(params=params)

    def _decode(self, data: bytes | None) -> Image.Image:
        im = open_image(data, self.params.max_pixels)  # type: ignore[attr-defined]
        w, h = im.size
        side = self.params.limit_side_len  # type: ignore[attr-defined]
        if im.format == "JPEG" and max(w, h) > side:
            scale = side / max(w, h)
            im.draft("RGB", (math.ceil(w * scale), math.ceil(h * scale)))
        return im.convert("RGB")

    def score_sample(self, sample: dict[str, Any]) -> Mapping[str, Any]:
        im = self._decode(sample["image"])
        w, h = im.size
        result = self._engine(np.asarray(im))
        boxes = getattr(result, "boxes", None)
        if boxes is None or len(boxes) == 0:
            return {"ocr_boxes": [], "ocr_texts": [], "ocr_scores": [], "ocr_text": None,
                    "ocr_n_boxes": 0, "ocr_area": 0.0}
        min_alnum = self.params.min_alnum  # type: ignore[attr-defined]
        kept = [(box, str(t), float(s)) for box, t, s in
                zip(boxes, result.txts or (), result.scores or (), strict=False)
                if sum(ch.isalnum() for ch in str(t)) >= min_alnum]
        if not kept:
            return {"ocr_boxes": [], "ocr_texts": [], "ocr_scores": [], "ocr_text": None,
                    "ocr_n_boxes": 0, "ocr_area": 0.0}
        norm = [[float(min(1.0, max(0.0, v / (w if k % 2 == 0 else h))))
                 for k, v in enumerate(np.asarray(box, dtype=np.float64).reshape(-1))]
                for box, _, _ in kept]
        texts = [t for _, t, _ in kept]
        scores = [s for _, _, s in kept]
        return {"ocr_boxes": norm, "ocr_texts": texts, "ocr_scores": scores,
                "ocr_text": " ".join(t for t in texts if t) or None,
                "ocr_n_boxes": len(norm), "ocr_area": text_area(norm)}


def polygon_mask(boxes: list[list[float]], width: int, height: int, grow: float = 0.0,
                 ) -> Image.Image:
    """An 'L' mask (255 inside) of the normalised boxes at ``width`` x ``height``; ``grow``
    enlarges each box about its centre by that fraction of its size (for a surrounding ring)."""
    mask = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(mask)
    for box in boxes:
        xs, ys = np.array(box[0::2]) * width, np.array(box[1::2]) * height
        if grow:
            cx, cy = xs.mean(), ys.mean()
            xs, ys = cx + (xs - cx) * (1 + grow), cy + (ys - cy) * (1 + grow)
        draw.polygon(list(zip(xs.tolist(), ys.tolist(), strict=True)), fill=255)
    return mask


def text_area(boxes: list[list[float]], resolution: int = 256) -> float:
    """Fraction of the image covered by the union of the boxes (rasterised)."""
    if not boxes:
        return 0.0
    return float(np.asarray(polygon_mask(boxes, resolution, resolution)).mean() / 255.0)


def mask_text_regions(im: Image.Image, boxes: list[list[float]], ring: float = 0.4,
                      ) -> Image.Image:
    """T-MARS masking: fill each text box with the mean colour of the pixels in a ring around
    it (the box grown by ``ring`` minus the box itself), so the text is gone but the scene's
    colours stay."""
    if not boxes:
        return im
    out = im.copy()
    pixels = np.asarray(im.convert("RGB"), dtype=np.float32)
    w, h = im.size
    for box in boxes:
        inner = polygon_mask([box], w, h)
        outer = polygon_mask([box], w, h, grow=ring)
        ring_px = (np.asarray(outer) > 0) & (np.asarray(inner) == 0)
        colour = pixels[ring_px].mean(axis=0) if ring_px.any() else pixels.reshape(-1, 3).mean(0)
        out.paste(tuple(int(c + 0.5) for c in colour), mask=inner)
    return out
