"""Writing small tar shards by hand, including malformed ones, for tests."""

from __future__ import annotations

import io
import json
import math
import pickle
import random
import struct
import tarfile
import zlib
from pathlib import Path
from typing import Any

from PIL import Image


def jpeg(width: int = 320, height: int = 240, colour: tuple[int, int, int] = (200, 80, 40),
         quality: int = 90) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def png(width: int = 320, height: int = 240, colour: tuple[int, int, int] = (20, 80, 240)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buf, "PNG")
    return buf.getvalue()


def write_tar(path: Path, members: list[tuple[str, bytes]] | list[
        tuple[str, bytes] | tarfile.TarInfo]) -> Path:
    """Write ``members`` (name, bytes) in order, with fixed metadata. A ``TarInfo`` item is
    written as it is, without data (links, directories: see ``link_member``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for item in members:
            if isinstance(item, tarfile.TarInfo):
                tar.addfile(item)
                continue
            name, data = item
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 0
            tar.addfile(info, io.BytesIO(data))
    return path


def link_member(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tarfile.TarInfo:
    """A symbolic (or, with ``tarfile.LNKTYPE``, hard) link member named ``name``."""
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    info.mtime = 0
    return info


# --- hostile content ------------------------------------------------------------------------


def png_bomb(width: int, height: int, rgb: bool = False) -> bytes:
    """A valid PNG of ``width`` x ``height`` black pixels (1-bit grey, or 8-bit RGB): zlib
    compresses the zero rows about 1000:1, so a few hundred KB decode to gigabytes."""
    bits, colour_type, channels = (8, 2, 3) if rgb else (1, 0, 1)
    row = 1 + math.ceil(width * channels * bits / 8)  # a filter byte, then the pixels
    per_block = max(1, 4_000_000 // row)
    block = bytes(row * per_block)
    comp = zlib.compressobj(6)
    parts: list[bytes] = []
    left = height
    while left:
        n = min(per_block, left)
        parts.append(comp.compress(block[: n * row]))
        left -= n
    parts.append(comp.flush())

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    header = struct.pack(">IIBBBBB", width, height, bits, colour_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"".join(parts))
            + chunk(b"IEND", b""))


def jpeg_claiming(width: int, height: int) -> bytes:
    """A small real JPEG whose frame header (SOF0) claims ``width`` x ``height`` (≤ 65535)."""
    data = bytearray(jpeg(16, 16))
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def gif_claiming(width: int, height: int) -> bytes:
    """A small real GIF whose logical screen claims ``width`` x ``height`` (≤ 65535)."""
    buf = io.BytesIO()
    Image.new("P", (4, 4), 1).save(buf, "GIF")
    data = bytearray(buf.getvalue())
    data[6:10] = struct.pack("<HH", width, height)
    return bytes(data)


HTML_PAGE = (b"<!DOCTYPE html>\n<html><head><title>404 Not Found</title></head>\n"
             b"<body><h1>Not Found</h1><p>The requested URL was not found.</p></body></html>\n")


def random_bytes(n: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(n)


class _Touch:
    """Unpickling it calls ``open(path, "w")``: the file appears if anything unpickles it."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return (open, (str(self.path), "w"))


def pickle_payload(marker: Path) -> bytes:
    """Pickle bytes that create ``marker`` when unpickled (``pickle.loads``, ``torch.load``
    without ``weights_only``, webdataset's ``.pyd``/``.pickle`` decoders)."""
    return pickle.dumps(_Touch(marker))


def npy_payload(marker: Path) -> bytes:
    """A ``.npy`` object array that creates ``marker`` when loaded with ``allow_pickle=True``."""
    import numpy as np

    buf = io.BytesIO()
    arr = np.empty(1, dtype=object)
    arr[0] = _Touch(marker)
    np.save(buf, arr, allow_pickle=True)
    return buf.getvalue()


def sample_members(key: str, image: bytes | None = None, caption: str | bytes | None = "x",
                   meta: dict[str, Any] | bytes | None = None, ext: str = "jpg",
                   ) -> list[tuple[str, bytes]]:
    out: list[tuple[str, bytes]] = []
    if image is not None:
        out.append((f"{key}.{ext}", image))
    if caption is not None:
        out.append((f"{key}.txt", caption.encode() if isinstance(caption, str) else caption))
    if meta is not None:
        out.append((f"{key}.json", meta if isinstance(meta, bytes) else json.dumps(meta).encode()))
    return out


def clean_shard(path: Path, n: int, prefix: str = "", start: int = 0) -> Path:
    """``n`` clean English samples with distinct images."""
    members: list[tuple[str, bytes]] = []
    for i in range(start, start + n):
        key = f"{prefix}{i:06d}"
        members += sample_members(
            key, jpeg(300 + i, 240, (i * 37 % 255, i * 91 % 255, 120)),
            f"a photograph of a small red house number {i} near the river",
            {"url": f"https://example.invalid/{prefix}{i}.jpg"})
    return write_tar(path, members)
