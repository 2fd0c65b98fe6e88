"""Stable 128-bit sample identifiers.

A sample's ``uid`` is 32 lowercase hex characters (128 bits, the DataComp convention).

* When the sample's json member carries a ``uid`` that is already 32 hex characters, that value
  is used (trimmed and lower-cased; DataComp pools and URL lists with a uid column keep their
  identity). Any other value (a path, a number, 31 or 33 characters, non-ASCII digits) is
  ignored, so a uid is always 32 characters of ``0-9a-f`` and safe as a file or member name.
* Otherwise it is derived from where the sample lives: the first 128 bits of
  ``sha256(shard_id + "\\0" + key)``, where ``shard_id`` is the shard's path relative to the pool
  root (the deepest directory that contains every input shard; posix separators, extension kept)
  and ``key`` is the webdataset ``__key__``. Moving the whole pool keeps every uid.

url+caption is deliberately *not* used: identical pairs recur in web pools, and a uid must name
exactly one row of the manifest.
"""

from __future__ import annotations

import hashlib
import re

_HEX128 = re.compile(r"[0-9a-f]{32}")


def derive_uid(shard_id: str, key: str) -> str:
    """The derived uid of the sample ``key`` in shard ``shard_id`` (see module docs)."""
    return hashlib.sha256(f"{shard_id}\0{key}".encode()).hexdigest()[:32]


def normalise_uid(value: object) -> str | None:
    """``value`` as a canonical uid, or None when it is not a 128-bit hex string."""
    if not isinstance(value, str):
        return None
    v = value.strip().lower()
    return v if _HEX128.fullmatch(v) else None
