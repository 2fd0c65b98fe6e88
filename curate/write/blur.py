"""Face blurring when writing or resharding, as DataComp's resharder does it (``--apply-blur``).

DataComp's metadata carries ``face_bboxes`` per sample (boxes ``[x0, y0, x1, y1]`` relative to
the image, in [0, 1]). Its resharder decodes an image that has boxes with OpenCV
(``IMREAD_UNCHANGED``), blurs it with img2dataset's ``BoundingBoxBlurrer`` (each box grown by
a tenth of the largest box side, a Gaussian blur masked by a blurred box mask) and re-encodes
it as WebP at quality 100, replacing the ``jpg`` member by a ``webp`` one. We call the same
library routine (img2dataset is a dependency already) and the same OpenCV calls, so a blurred
image equals the resharder's byte for byte (checked against DataComp's ``resharder.py``; see
docs/datacomp.md). Images without boxes are copied untouched; the json of a blurred one says
what was done (``face_blur``: boxes, the member it replaced, that member's SHA-256, format,
quality). OpenCV cannot decode every format Pillow can (GIF); those are decoded with Pillow.
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from curate.errors import CurateError

FORMAT = "webp"
DEFAULT_QUALITY = 100


def _blurrer() -> Any:
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    with warnings.catch_warnings():  # img2dataset's imghdr import warns on Python 3.11+
        warnings.simplefilter("ignore", DeprecationWarning)
        from img2dataset.blurrer import BoundingBoxBlurrer

    return BoundingBoxBlurrer()


def _decode(data: bytes) -> np.ndarray:
    import cv2

    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if img is not None:
        return img
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            rgb = np.asarray(im.convert("RGB"))
    except Exception as exc:
        raise CurateError(f"cannot decode the image to blur it: {exc}") from exc
    return np.ascontiguousarray(rgb[:, :, ::-1])  # OpenCV's channel order


def valid_boxes(boxes: Any) -> list[list[float]]:
    """``boxes`` as a list of 4-number lists; anything else is an error naming it."""
    if boxes is None:
        return []
    out = []
    for box in boxes:
        if box is None or len(box) != 4 or not all(isinstance(v, int | float) for v in box):
            raise CurateError(f"face box {box!r} is not [x0, y0, x1, y1]")
        out.append([float(v) for v in box])
    return out


def blur_faces(data: bytes, boxes: Sequence[Sequence[float]],
               quality: int = DEFAULT_QUALITY) -> bytes:
    """The image ``data`` with ``boxes`` blurred, encoded as WebP at ``quality``."""
    import cv2

    with warnings.catch_warnings():  # albumentations: its own always_apply deprecation
        warnings.simplefilter("ignore", DeprecationWarning)
        blurred = _blurrer()(_decode(data), [list(b) for b in boxes])
    ok, encoded = cv2.imencode(".webp", blurred, [int(cv2.IMWRITE_WEBP_QUALITY), int(quality)])
    if not ok:
        raise CurateError("OpenCV could not encode the blurred image as WebP")
    return bytes(encoded.tobytes())
