"""Checks on an LLM rewrite before it is accepted; a rejected one is retried, then recorded.

``rejection(source, rewrite)`` returns None for an acceptable rewrite, else the reason:
``empty``, ``too_short``, ``too_long``, ``identical`` (same words as the source),
``repeated_tokens`` (a word repeated 3+ times in a row, or under half the words distinct),
``prompt_echo`` (the prompt's ``=>`` or instruction leaking into the output) and
``not_english`` (when the source is English and the rewrite is not). Language comes from a
callable; by default the fasttext model the ``language`` scorer uses.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import lru_cache

from curate.rewrite.prompts import INSTRUCTION

_WORD = re.compile(r"[^\W_]+", re.UNICODE)


@lru_cache(maxsize=1)
def _fasttext() -> Callable[[str], str | None]:
    import fasttext

    from curate.stages.language import bundled_model_path

    model = fasttext.load_model(str(bundled_model_path()))

    def lang(text: str) -> str | None:
        text = " ".join(text.split())
        if not text:
            return None
        labels, _ = model.predict(text, k=1)
        return labels[0].removeprefix("__label__") if labels else None

    return lang


def rejection(source: str, rewrite: str | None, *, min_words: int = 2,
              max_words: int | None = None,
              lang_of: Callable[[str], str | None] | None = None) -> str | None:
    """Why ``rewrite`` is not an acceptable rewrite of ``source`` (None when it is).
    ``max_words`` defaults to 3× the source's words, at least 40."""
    text = (rewrite or "").strip()
    if not text:
        return "empty"
    words = _WORD.findall(text.lower())
    src_words = _WORD.findall(source.lower())
    if "=>" in text or INSTRUCTION.rstrip(",") in text.lower():
        return "prompt_echo"
    if len(words) < min_words:
        return "too_short"
    if len(words) > (max_words or max(40, 3 * len(src_words))):
        return "too_long"
    if words == src_words:
        return "identical"
    if any(words[i] == words[i + 1] == words[i + 2] for i in range(len(words) - 2)) or (
            len(words) >= 6 and len(set(words)) < len(words) / 2):
        return "repeated_tokens"
    lang = lang_of or _fasttext()
    if lang(source) == "en" and lang(text) != "en":
        return "not_english"
    return None
