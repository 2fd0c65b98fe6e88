"""Scorer ``exact_hash``: the (url, caption) hash for exact duplicate detection.

``url_caption_sha256`` hashes the (url, caption) pair and is null when the url is unknown. The
``exact_dedup`` selector uses it beside ``image_sha256``, the SHA-256 of the image bytes as
stored, which the shard reader records for every sample (byte-identical copies collide).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence

import pyarrow as pa

from curate.stages.base import Scorer, register


@register
class ExactHash(Scorer):
    name = "exact_hash"
    version = 2  # image_sha256 moved to the reader

    def inputs(self) -> tuple[str, ...]:
        return ("url", "caption")

    def outputs(self) -> Mapping[str, pa.DataType]:
        return {"url_caption_sha256": pa.string()}

    def score_batch(self, batch: pa.Table) -> Mapping[str, Sequence[str | None]]:
        urls = batch.column("url").to_pylist()
        captions = batch.column("caption").to_pylist()
        pair_hash = [
            hashlib.sha256(f"{u}\0{c or ''}".encode()).hexdigest() if u is not None else None
            for u, c in zip(urls, captions, strict=True)
        ]
        return {"url_caption_sha256": pair_hash}
