"""Scorer ``parrot``: how much of the caption merely spells the text visible in the image.

"Parrot Captions Teach CLIP to Spot Text" (Lin et al., 2023) found that about half of LAION-2B
images contain text and most of their captions repeat it. This scorer needs the ``ocr`` scorer
before it. It outputs:

* ``parrot_word_overlap``: the share of the caption's words that also occur among the OCR words
  (both lower-cased, split into runs of letters and digits). This is the Parrot paper's
  co-emb(edding) text rate;
* ``parrot_char_sim``: how much of the OCR text is spelled in the caption, at the character
  level: characters of the OCR text inside runs of at least 3 characters that also occur in the
  caption (difflib's matching blocks), over the OCR text's length, ignoring case, punctuation
  and spacing. Runs of 1-2 characters are chance (any caption contains "a", "ap", "ma").

Both are 0 when no text was spotted, and null for a caption without words.
``parrot_word_overlap`` reads the whole caption (linear time). ``parrot_char_sim`` compares at
most ``MAX_CHARS`` letters and digits of each side (the caption's and the OCR text's first
ones): difflib's matching grows with the product of the two lengths (a 1 MB caption against
550 characters of OCR text took 42 s; with the bound, 0.02 s).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from typing import Any

import pyarrow as pa

from curate.stages.base import SampleScorer, register

_WORD = re.compile(r"[^\W_]+", re.UNICODE)
MIN_RUN = 3  # shortest character run that counts as spelled
MAX_CHARS = 2000  # letters and digits of each side that parrot_char_sim compares


def words(text: str | None) -> list[str]:
    return _WORD.findall(text.lower()) if text else []


def word_overlap(caption: str | None, ocr_text: str | None) -> float | None:
    cap = words(caption)
    if not cap:
        return None
    spotted = set(words(ocr_text))
    return sum(w in spotted for w in cap) / len(cap)


def _letters(text: str | None, limit: int) -> str:
    """The first ``limit`` letters and digits of ``text``, lower-cased (``words`` joined, cut)."""
    out: list[str] = []
    n = 0
    for m in _WORD.finditer(text.lower() if text else ""):
        word = m.group()[: limit - n]
        out.append(word)
        n += len(word)
        if n >= limit:
            break
    return "".join(out)


def char_similarity(caption: str | None, ocr_text: str | None) -> float | None:
    cap = _letters(caption, MAX_CHARS)
    if not cap:
        return None
    ocr = _letters(ocr_text, MAX_CHARS)
    if len(ocr) < MIN_RUN:
        return 0.0
    blocks = difflib.SequenceMatcher(None, ocr, cap, autojunk=False).get_matching_blocks()
    return sum(b.size for b in blocks if b.size >= MIN_RUN) / len(ocr)


@register
class Parrot(SampleScorer):
    name = "parrot"

    def inputs(self) -> tuple[str, ...]:
        return ("caption", "ocr_text")

    def outputs(self) -> Mapping[str, pa.DataType]:
        return {"parrot_word_overlap": pa.float32(), "parrot_char_sim": pa.float32()}

    def score_sample(self, sample: dict[str, Any]) -> Mapping[str, Any]:
        return {"parrot_word_overlap": word_overlap(sample["caption"], sample["ocr_text"]),
                "parrot_char_sim": char_similarity(sample["caption"], sample["ocr_text"])}
