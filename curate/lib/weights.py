"""Where a model's weights file comes from, and its identity.

A weights spec is either a local path (``~`` expanded) or ``hf-hub:ORG/REPO/PATH/IN/REPO``
(optionally ``@REVISION`` at the end), fetched through ``huggingface_hub.hf_hub_download`` into
the Hugging Face cache; without a network the cached copy is used, so a file downloaded once
keeps working offline. ``resolve_weights`` returns the local file; ``weights_digest`` its
SHA-256, which scorers put in their identity so that new weights are a new version (rescored)
and the same weights are reused, whatever path or hub name led to them.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

from curate.errors import CurateError

HUB_PREFIX = "hf-hub:"


def is_hub_spec(spec: str) -> bool:
    return spec.startswith(HUB_PREFIX)


def parse_hub_spec(spec: str) -> tuple[str, str, str | None]:
    """``hf-hub:org/repo/file[@rev]`` → (repo id, file name in the repo, revision or None)."""
    body = spec.removeprefix(HUB_PREFIX)
    revision = None
    if "@" in body:
        body, revision = body.rsplit("@", 1)
        revision = revision or None
    parts = [p for p in body.split("/") if p]
    if len(parts) < 3:
        raise CurateError(f"weights {spec!r}: a hub name is hf-hub:ORG/REPO/FILE",
                          "e.g. hf-hub:laion/some-model/model.pth, or give a local file")
    return "/".join(parts[:2]), "/".join(parts[2:]), revision


def resolve_weights(spec: str, what: str = "weights") -> Path:
    """The local file a weights spec names (a hub name is downloaded, or found in the cache)."""
    if is_hub_spec(spec):
        repo_id, filename, revision = parse_hub_spec(spec)
        try:
            from huggingface_hub import hf_hub_download

            return Path(hf_hub_download(repo_id, filename, revision=revision))
        except Exception as e:  # noqa: BLE001  (offline and not cached, unknown repo or file)
            raise CurateError(
                f"{what} {spec!r}: not in the Hugging Face cache and could not be downloaded "
                f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})",
                f"download it where there is a network (`hf download {repo_id} {filename}`), "
                "or give the local file's path") from None
    path = Path(spec).expanduser()
    if not path.is_file():
        raise CurateError(f"no {what} file {str(path)!r}",
                          "give a local file's path or a hub name hf-hub:ORG/REPO/FILE")
    return path.resolve()


@lru_cache(maxsize=64)
def _digest(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def weights_digest(path: str | Path) -> str:
    """SHA-256 of a weights file (cached per path, size and mtime)."""
    st = Path(path).stat()
    return _digest(str(path), st.st_size, st.st_mtime_ns)
