"""A directory on any fsspec filesystem (a local path, ``file://``, ``s3://``...), with atomic
writes: a file appears complete under its final name, or not at all.

* local paths and ``file://``: written to a temporary file beside the target, then renamed;
* other filesystems (object stores): written to a local temporary file, then uploaded in one
  ``put``, which an object store shows complete or not at all.

Names are relative to the directory and '/'-separated.
"""

from __future__ import annotations

import contextlib
import io
import os
import posixpath
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from curate.io.atomic import atomic_path

PROCESS_LOCAL = frozenset({"memory"})


def is_url(location: str) -> bool:
    return "://" in location or "::" in location


def resolve(location: str | Path) -> str:
    """``location`` as every process reads it alike: a local path made absolute, ``file://``
    plus an absolute path, or any other URL as given (without a trailing slash)."""
    text = str(location)
    if not is_url(text):
        return str(Path(text).expanduser().absolute())
    if text.startswith("file://"):
        return "file://" + fsspec.core.url_to_fs(text)[1]
    proto, sep, rest = text.rpartition("://")
    return f"{proto}{sep}{rest.rstrip('/')}"


def protocols(location: str) -> set[str]:
    fs, _ = fsspec.core.url_to_fs(location)
    return {fs.protocol} if isinstance(fs.protocol, str) else set(fs.protocol)


@dataclass(frozen=True)
class FsDir:
    """A directory on some fsspec filesystem."""

    fs: Any
    root: str

    @classmethod
    def of(cls, location: str | Path) -> FsDir:
        fs, root = fsspec.core.url_to_fs(str(location))
        return cls(fs, root.rstrip("/") if root != "/" else root)

    @property
    def local(self) -> bool:
        return isinstance(self.fs, LocalFileSystem)

    def path(self, name: str) -> str:
        return posixpath.join(self.root, name) if self.root else name

    def local_path(self, name: str) -> Path | None:
        """The file's path on this machine, for a local directory (else None)."""
        return Path(self.path(name)) if self.local else None

    def exists(self, name: str) -> bool:
        return bool(self.fs.exists(self.path(name)))

    def isfile(self, name: str) -> bool:
        return bool(self.fs.isfile(self.path(name)))

    def files(self) -> set[str]:
        """Every file under the directory (recursively), by relative name."""
        found = self.fs.find(self.root)
        if self.root in ("", "/"):  # a filesystem's root (e.g. memory://)
            return {p.lstrip("/") for p in found}
        return {posixpath.relpath(p, self.root) for p in found}

    def listdir(self, sub: str) -> list[str]:
        """The names of the files directly in ``sub`` (none when it does not exist)."""
        if self.local:
            try:
                with os.scandir(self.path(sub)) as it:
                    return sorted(e.name for e in it if e.is_file())
            except FileNotFoundError:
                return []
        try:
            entries = self.fs.ls(self.path(sub), detail=True)
        except FileNotFoundError:
            return []
        return sorted(posixpath.basename(e["name"].rstrip("/")) for e in entries
                      if e.get("type") == "file")

    def read_bytes(self, name: str) -> bytes:
        return bytes(self.fs.cat_file(self.path(name)))

    def read(self, names: list[str]) -> dict[str, bytes]:
        """The bytes of existing files (missing ones are left out), in one batch request."""
        if not names:
            return {}
        paths = {self.fs._strip_protocol(self.path(n)): n for n in names}
        got = self.fs.cat(list(paths), on_error="omit")
        return {paths[k]: v for k, v in ((self.fs._strip_protocol(p), v)
                                          for p, v in got.items()) if k in paths}

    def open(self, name: str, mode: str = "rb") -> IO[Any]:
        return self.fs.open(self.path(name), mode)  # type: ignore[no-any-return]

    def write(self, name: str, fill: Callable[[IO[bytes]], None]) -> None:
        """Write ``name`` atomically; ``fill`` writes its bytes into a binary file."""
        if self.local:
            with atomic_path(self.path(name)) as tmp, open(tmp, "wb") as f:
                fill(f)
            return
        fd, tmp = tempfile.mkstemp(prefix="curate-", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as f:
                fill(f)
            self.fs.put_file(tmp, self.path(name))
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    def write_bytes(self, name: str, data: bytes) -> None:
        if self.local:
            self.write(name, lambda f: f.write(data))
        else:
            self.fs.pipe_file(self.path(name), data)  # one request: whole or nothing

    def write_parquet(self, name: str, table: pa.Table) -> None:
        self.write(name, lambda f: pq.write_table(table, f, compression="zstd",
                                                  write_page_checksum=True))

    def read_parquet(self, name: str, columns: list[str] | None = None) -> pa.Table:
        if self.local:
            return pq.read_table(self.path(name), columns=columns)
        with self.open(name) as f:
            return pq.read_table(f, columns=columns)

    def parquet_schema(self, name: str) -> pa.Schema:
        if self.local:
            return pq.read_schema(self.path(name))
        with self.open(name) as f:
            return pq.read_schema(f)

    def write_array(self, name: str, array: np.ndarray) -> None:
        self.write(name, lambda f: np.save(f, array, allow_pickle=False))

    def read_array(self, name: str, mmap: bool = True) -> np.ndarray:
        """A ``.npy`` array: memory-mapped when local (and ``mmap``), else read whole."""
        if self.local:
            return np.load(self.path(name), mmap_mode="r" if mmap else None,
                           allow_pickle=False)
        return np.load(io.BytesIO(self.read_bytes(name)), allow_pickle=False)

    def remove(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(self.path(name))
