"""The identity of an input shard: what its stored scores were computed from.

A shard's identity is the SHA-256 of its bytes (for a downloaded URL-list shard, of its tar and
of img2dataset's Parquet beside it). Every file of the store that describes a shard carries that
digest in its name, so a stored score is found only for the exact bytes it was computed from:
a changed shard can only miss.

Hashing costs a read of the shard, so it is done only when needed:

* while the shard is read for scoring, its bytes go through the hash as they stream by
  (``HashingFile``), at no extra read;
* a shard that is not read (every score it needs is stored) is identified by its *stamp*: its
  size and modification time (an object store's ETag or last-modified time), recorded when its
  digest was last computed. A shard whose stamp is unchanged keeps its recorded digest; one
  whose stamp changed is hashed again, and only a different digest counts as a change (a
  ``touch`` or a copy does not). ``input.verify: always`` hashes every shard on every run.
"""

from __future__ import annotations

import hashlib
import os
from typing import IO, Any

import fsspec

CHUNK = 4 * 2**20


def _file_stamp(url: str) -> str:
    """``size:mtime`` of one file (``absent`` when it does not exist)."""
    fs, path = fsspec.core.url_to_fs(url)
    if getattr(fs, "protocol", None) in ("file", ("file", "local")) or type(
            fs).__name__ == "LocalFileSystem":
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return "absent"
        return f"{st.st_size}:{st.st_mtime_ns}"
    try:
        info: dict[str, Any] = fs.info(path)
    except FileNotFoundError:
        return "absent"
    when = next((str(info[k]) for k in ("ETag", "etag", "md5Hash", "LastModified",
                                         "last_modified", "mtime", "updated", "created")
                 if info.get(k) is not None), "")
    return f"{info.get('size')}:{when}"


def shard_stamp(url: str, failures: str | None = None) -> str:
    """The cheap identity check of a shard (and of its download Parquet, when it has one)."""
    stamp = _file_stamp(url)
    return stamp if failures is None else f"{stamp}|{_file_stamp(failures)}"


def combine(tar_digest: str | None, failures_digest: str | None) -> str:
    """The identity of a shard from the digests of its files (``None``: the file is absent)."""
    if failures_digest is None:
        return tar_digest or hashlib.sha256(b"").hexdigest()
    blob = f"tar:{tar_digest or 'absent'}\nparquet:{failures_digest}"
    return hashlib.sha256(blob.encode()).hexdigest()


def file_digest(url: str) -> str | None:
    """SHA-256 of a file's bytes, read in 4 MiB chunks (None when it does not exist)."""
    h = hashlib.sha256()
    try:
        with fsspec.open(url, "rb") as f:
            while chunk := f.read(CHUNK):
                h.update(chunk)
    except FileNotFoundError:
        return None
    return h.hexdigest()


def shard_digest(url: str, failures: str | None = None) -> str:
    """The identity of a shard (see the module docs)."""
    tar = file_digest(url)
    if failures is None and tar is None:
        raise FileNotFoundError(url)
    return combine(tar, file_digest(failures) if failures is not None else None)


class HashingFile:
    """A read-only binary file that hashes every byte read through it; ``finish()`` reads what
    is left (a tar's trailing padding) and returns the SHA-256 of the whole file."""

    def __init__(self, f: IO[bytes]) -> None:
        self._f = f
        self._h = hashlib.sha256()
        self.bytes = 0

    def read(self, n: int = -1) -> bytes:
        data = self._f.read(n)
        self._h.update(data)
        self.bytes += len(data)
        return data

    def readable(self) -> bool:
        return True

    def finish(self) -> str:
        while chunk := self._f.read(CHUNK):
            self._h.update(chunk)
            self.bytes += len(chunk)
        return self._h.hexdigest()

    def close(self) -> None:
        self._f.close()
