"""Opening untrusted image bytes, and decoding them for models.

``open_image`` is the one door every decoder in curate goes through (``image_info``, ``clip``,
``ocr``, ``image_complexity``, the report's thumbnails, ``train-filter``). It reads the header
only and refuses, before a single pixel is decoded:

* an empty member (``empty image member (0 bytes)``);
* bytes that are not an image, saying what they look like (``not an image: looks like HTML``);
  the format is found from the content, never from the member's extension, so a PNG stored as
  ``.jpg`` opens as a PNG;
* an image whose header claims more than ``max_pixels`` pixels (``image is 40000x40000 =
  1600000000 pixels, over max_pixels 89478485``): a decompression bomb, a few kilobytes of
  compressed zeros that would decode to gigabytes. When the header is beyond Pillow's own hard
  limit (``PILLOW_HARD_LIMIT``) Pillow refuses it inside ``Image.open`` and only the pixel count
  is known. ``max_pixels`` can be at most that hard limit; above ``MAX_PIXELS`` Pillow logs a
  ``DecompressionBombWarning`` for each large image.

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
import re
from collections.abc import Callable
from typing import Any

from PIL import Image, UnidentifiedImageError

# Pillow's Image.MAX_IMAGE_PIXELS (about a quarter GiB of 24-bit pixels): the default limit of
# every curate decoder. Pillow warns above it, and refuses twice as much outright.
MAX_PIXELS = 89_478_485
PILLOW_HARD_LIMIT = 2 * MAX_PIXELS

_PILLOW_PIXELS = re.compile(r"Image size \((\d+) pixels\)")


def sniff(data: bytes) -> str:
    """What non-image bytes are, for error messages: ``looks like HTML`` (or SVG, XML, JSON,
    PDF, text), or ``unknown format (first bytes ...)``."""
    kind = _kind(data)
    return f"looks like {kind}" if kind else f"unknown format (first bytes {data[:8].hex(' ')})"


def _kind(data: bytes) -> str | None:
    head = data[:512]
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if text.startswith((b"<!doctype html", b"<html", b"<head", b"<body", b"<!--")):
        return "HTML"
    if text.startswith(b"<svg") or (text.startswith(b"<?xml") and b"<svg" in text):
        return "SVG (vector images are not decoded)"
    if text.startswith(b"<?xml"):
        return "XML"
    if text.startswith(b"<") and b">" in text:
        return "HTML"
    if text.startswith((b"{", b"[")):
        return "JSON"
    if text.startswith(b"%pdf"):
        return "PDF"
    try:
        decoded = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        decoded = head[: exc.start].decode("utf-8") if exc.start >= len(head) - 3 else ""
    if decoded and sum(c.isprintable() or c in "\t\r\n" for c in decoded) >= 0.95 * len(decoded):
        return "text"
    return None


def open_image(data: bytes | None, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Open ``data`` as an image, reading its header only (see the module docs).

    Raises ``ValueError`` for an empty member or more than ``max_pixels`` pixels, and
    ``PIL.UnidentifiedImageError`` for bytes that are not an image, each with a message that
    says which. Decode the pixels afterwards (``load``, ``convert``, after ``draft``).
    """
    if not data:
        raise ValueError("empty image member (0 bytes)")
    try:
        im = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise UnidentifiedImageError(f"not an image: {sniff(data)}") from None
    except Image.DecompressionBombError as exc:
        # Beyond Pillow's hard limit: Pillow refused it from the header.
        m = _PILLOW_PIXELS.search(str(exc))
        pixels = f"{m.group(1)} pixels" if m else f"over {PILLOW_HARD_LIMIT} pixels"
        raise ValueError(f"image is {pixels}, over max_pixels {max_pixels}") from None
    w, h = im.size
    if w <= 0 or h <= 0:
        im.close()
        raise ValueError(f"image has no pixels ({w}x{h})")
    if w * h > max_pixels:
        im.close()
        raise ValueError(f"image is {w}x{h} = {w * h} pixels, over max_pixels {max_pixels}")
    return im


def decode_for(data: bytes | None, size: tuple[int, int], resize_mode: str = "shortest",
               max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Decode ``data`` to RGB, at reduced scale when it is a JPEG larger than needed for a
    resize to ``size`` (height, width) in open_clip's ``resize_mode``. Opened by
    ``open_image`` (images over ``max_pixels`` are refused before decoding)."""
    im = open_image(data, max_pixels)
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
                 resize_mode: str = "shortest", max_pixels: int = MAX_PIXELS) -> None:
        self.transform = transform
        self.size = size
        self.resize_mode = resize_mode
        self.max_pixels = max_pixels

    def decode(self, data: bytes | None) -> Image.Image:
        return decode_for(data, self.size, self.resize_mode, self.max_pixels)

    def __call__(self, data: bytes | None) -> Any:
        return self.transform(self.decode(data))
