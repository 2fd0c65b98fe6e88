"""Scorer ``exact_hash``: content hashes for exact duplicate detection.

``image_sha256`` is the SHA-256 of the image bytes as stored (byte-identical copies collide);
``url_caption_sha256`` hashes the (url, caption) pair and is null when the url is unknown. The
``exact_dedup`` selector uses them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence

import pyarrow as pa

from curate.stages.base import Scorer, register


@register
class ExactHash(Scorer):
    name = "exact_hash"

    def inputs(self) -> tuple[str, ...]:
        return ("image", "url", "caption")

    def outputs(self) -> Mapping[str, pa.DataType]:
        return {"image_sha256": pa.string(), "url_caption_sha256": pa.string()}

    def score_batch(self, batch: pa.Table) -> Mapping[str, Sequence[str | None]]:
        images = batch.column("image").to_pylist()
        urls = batch.column("url").to_pylist()
        captions = batch.column("caption").to_pylist()
        image_hash = [hashlib.sha256(b).hexdigest() if b is not None else None for b in images]
        pair_hash = [
            hashlib.sha256(f"{u}\0{c or ''}".encode()).hexdigest() if u is not None else None
            for u, c in zip(urls, captions, strict=True)
        ]
        return {"image_sha256": image_hash, "url_caption_sha256": pair_hash}
