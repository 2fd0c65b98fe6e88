"""Scorer ``caption_stats``: caption length in characters and whitespace-separated words.

A missing caption counts as 0 characters and 0 words (the manifest's ``caption`` column still
tells a missing caption, null, from an empty one). Both count the whole caption, however long:
``caption_chars`` is its true length in characters.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pyarrow as pa
import pyarrow.compute as pc

from curate.stages.base import Scorer, register


@register
class CaptionStats(Scorer):
    name = "caption_stats"

    def inputs(self) -> tuple[str, ...]:
        return ("caption",)

    def outputs(self) -> Mapping[str, pa.DataType]:
        return {"caption_chars": pa.int32(), "caption_words": pa.int32()}

    def score_batch(self, batch: pa.Table) -> Mapping[str, Sequence[int] | pa.Array]:
        captions = batch.column("caption")
        chars = pc.fill_null(pc.utf8_length(captions), 0)
        words = [len(c.split()) if c else 0 for c in captions.to_pylist()]
        return {"caption_chars": chars.combine_chunks() if isinstance(
            chars, pa.ChunkedArray) else chars, "caption_words": words}
