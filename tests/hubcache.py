"""A Hugging Face hub cache laid out by hand (models--ORG--REPO/refs, snapshots, blobs), so
hub names resolve offline exactly as they do after a real download."""

from __future__ import annotations

import hashlib
from pathlib import Path


def put_in_hub_cache(cache: Path, repo_id: str, filename: str, data: bytes,
                     revision: str = "main") -> Path:
    """Place ``data`` as ``filename`` of ``repo_id`` in the cache at ``cache`` (what
    HF_HUB_CACHE points to); returns the snapshot path."""
    commit = hashlib.sha1(repo_id.encode() + filename.encode()).hexdigest()
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
    blob.parent.mkdir(parents=True, exist_ok=True)
    blob.write_bytes(data)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / revision).write_text(commit)
    snap = repo / "snapshots" / commit / filename
    snap.parent.mkdir(parents=True, exist_ok=True)
    if not snap.exists():
        snap.symlink_to(blob)
    return snap
