"""Writing small tar shards by hand, including malformed ones, for tests."""

from __future__ import annotations

import io
import json
import tarfile
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


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    """Write ``members`` (name, bytes) in order, with fixed metadata."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 0
            tar.addfile(info, io.BytesIO(data))
    return path


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
