"""Atomic writes: a file appears complete under its final name, or not at all."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pyarrow as pa
import pyarrow.parquet as pq


def current_umask() -> int:
    """This process's umask, read without changing it where the system allows (Linux's
    ``/proc/self/status``), since setting it to read it races with other threads' writes."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(dest: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``dest``; on success it is renamed onto ``dest``. The
    file gets the mode a plain ``open`` would give it (0666 less the umask), not the 0600 of
    a temporary file, so users and jobs the umask admits can read the output."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
    finally:
        os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_open(dest: str | Path, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file for writing; it replaces ``dest`` when the block succeeds."""
    with atomic_path(dest) as tmp, open(tmp, mode) as f:
        yield f


def write_parquet(table: pa.Table, dest: str | Path) -> None:
    """Write ``table`` to ``dest`` atomically (zstd compressed)."""
    with atomic_path(dest) as tmp:
        pq.write_table(table, tmp, compression="zstd")


def write_text(text: str, dest: str | Path) -> None:
    with atomic_open(dest, "w") as f:
        f.write(text)
