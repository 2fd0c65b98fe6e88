"""Images with rendered text, for OCR tests."""

from __future__ import annotations

import io

from PIL import Image, ImageDraw, ImageFont

FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf"


def poster(lines: list[str], size: tuple[int, int] = (560, 320), bg: tuple[int, int, int] = (
        235, 225, 200), fmt: str = "JPEG") -> bytes:
    im = Image.new("RGB", size, bg)
    draw = ImageDraw.Draw(im)
    font = ImageFont.truetype(FONT, 52)
    for i, line in enumerate(lines):
        draw.text((30, 40 + 110 * i), line, font=font, fill=(30, 30, 110))
    buf = io.BytesIO()
    im.save(buf, fmt, quality=92)
    return buf.getvalue()
