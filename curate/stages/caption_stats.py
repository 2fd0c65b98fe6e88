"""Scorer ``caption_stats``: caption length in characters, whitespace-separated words and
fasttext tokens.

``caption_chars`` is the length in characters (Python's ``len``), ``caption_words`` the number
of ``str.split()`` words (DataComp's basic filter counts these), and ``caption_fasttext_tokens``
the length of ``fasttext.tokenize(caption)``, which DataComp's ``image_based`` caption filter
counts (Gadre et al., 2023; ``baselines/apply_filter.py``, ``caption_filter``, keeps more than
one). fasttext's tokenizer (``Dictionary::readWord``) splits on the bytes space, ``\\n``, ``\\r``,
``\\t``, ``\\v``, ``\\f`` and NUL only (so NBSP, U+2003, U+3000 and other Unicode spaces join
words), and every ``\\n`` adds one end-of-sentence token ``</s>``: ``"ab\\n"`` is 2 tokens,
``"\\n\\n"`` 2, ``"x\\r\\ny"`` 3 (checked against ``fasttext.tokenize`` of fasttext 0.9.2,
DataComp's pin; DataComp tokenizes the caption as it is, newlines included).

A missing caption counts as 0 characters, 0 words and 0 tokens (the manifest's ``caption``
column still tells a missing caption, null, from an empty one). All count the whole caption,
however long: ``caption_chars`` is its true length in characters.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import pyarrow as pa
import pyarrow.compute as pc

from curate.stages.base import Scorer, register

# The bytes fasttext's Dictionary::readWord treats as word boundaries (all ASCII, so splitting
# the str equals splitting its UTF-8 bytes).
_FASTTEXT_SPACE = re.compile(r"[ \n\r\t\v\f\x00]+")


def fasttext_token_count(text: str) -> int:
    """``len(fasttext.tokenize(text))``: words between fasttext's separators, plus one ``</s>``
    per newline."""
    return sum(1 for w in _FASTTEXT_SPACE.split(text) if w) + text.count("\n")


@register
class CaptionStats(Scorer):
    name = "caption_stats"
    version = 2  # 2: caption_fasttext_tokens

    def inputs(self) -> tuple[str, ...]:
        return ("caption",)

    def outputs(self) -> Mapping[str, pa.DataType]:
        return {"caption_chars": pa.int32(), "caption_words": pa.int32(),
                "caption_fasttext_tokens": pa.int32()}

    def score_batch(self, batch: pa.Table) -> Mapping[str, Sequence[int] | pa.Array]:
        captions = batch.column("caption")
        chars = pc.fill_null(pc.utf8_length(captions), 0)
        texts = captions.to_pylist()
        words = [len(c.split()) if c else 0 for c in texts]
        tokens = [fasttext_token_count(c) if c else 0 for c in texts]
        return {"caption_chars": chars.combine_chunks() if isinstance(
            chars, pa.ChunkedArray) else chars, "caption_words": words,
            "caption_fasttext_tokens": tokens}
