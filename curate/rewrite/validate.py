"""Checks on an LLM rewrite before it is accepted; a rejected one is retried, then recorded.

``rejection(source, rewrite)`` returns None for an acceptable rewrite, else the reason:
``empty``, ``too_short``, ``too_long``, ``identical`` (same words as the source),
``repeated_tokens`` (a word repeated 3+ times in a row, or under half the words distinct),
``prompt_echo`` (the prompt's ``=>`` or instruction leaking into the output), ``malformed``
(control, private-use or unassigned characters, or U+FFFD from broken byte sequences),
``not_words`` (under ``min_known_words`` of its words are known words or words of the source,
checked when the source itself passes; the known words are the 33k whole-word tokens of CLIP's
BPE vocabulary, learned on web text and shipped with open_clip) and ``not_english`` (when the
source is English and the rewrite is not). Language comes from a callable; by default the
fasttext model the ``language`` scorer uses.
"""

from __future__ import annotations

import gzip
import importlib.util
import re
import unicodedata
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

from curate.rewrite.prompts import INSTRUCTION

_WORD = re.compile(r"[^\W_]+", re.UNICODE)
_LETTERS = re.compile(r"[^\W\d_]+", re.UNICODE)
_BAD_CATEGORIES = frozenset({"Cc", "Cf", "Co", "Cn", "Cs"})


@lru_cache(maxsize=1)
def known_words() -> frozenset[str]:
    """Whole-word tokens of CLIP's BPE vocabulary (the file ships inside open_clip; read here
    without importing open_clip)."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        return frozenset()
    path = Path(next(iter(spec.submodule_search_locations))) / "bpe_simple_vocab_16e6.txt.gz"
    merges = gzip.open(path).read().decode("utf-8").split("\n")[1:49152 - 256 - 2 + 1]
    words = set()
    for line in merges:
        parts = line.split()
        if len(parts) == 2 and parts[1].endswith("</w>"):
            word = parts[0] + parts[1][:-4]
            if word.isalpha():
                words.add(word)
    return frozenset(words)


def known_fraction(text: str, also: set[str] | frozenset[str] = frozenset()) -> float:
    words = _LETTERS.findall(text.lower())
    if not words:
        return 0.0
    vocab = known_words()
    return sum(w in vocab or w in also for w in words) / len(words)


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
              max_words: int | None = None, min_known_words: float = 0.5,
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
    if _repeated(words):
        return "repeated_tokens"
    if _malformed(text):
        return "malformed"
    lang = lang_of or _fasttext()
    if lang(source) == "en" and lang(text) != "en":
        return "not_english"
    if min_known_words > 0 and known_fraction(source) >= min_known_words and known_fraction(
            text, set(_LETTERS.findall(source.lower()))) < min_known_words:
        return "not_words"
    return None


def _repeated(words: list[str]) -> bool:
    """A word three times in a row, or (6+ words) under half of the words distinct."""
    return any(words[i] == words[i + 1] == words[i + 2] for i in range(len(words) - 2)) or (
        len(words) >= 6 and len(set(words)) < len(words) / 2)


def _malformed(text: str) -> bool:
    return any(ch == "\ufffd" or unicodedata.category(ch) in _BAD_CATEGORIES for ch in text)


def caption_rejection(caption: str | None, prompt: str | None = None, *, min_words: int = 3,
                      max_words: int = 60, min_known_words: float = 0.5,
                      lang_of: Callable[[str], str | None] | None = None) -> str | None:
    """Why ``caption``, a synthetic caption of an image, is not acceptable (None when it is):
    the same checks as ``rejection`` without a source caption to compare with. ``empty``,
    ``prompt_echo`` (the prompt, when it has 3 or more words, inside the caption),
    ``too_short``, ``too_long``, ``repeated_tokens``, ``malformed``, ``not_english`` (checked
    when ``lang_of`` is given) and ``not_words`` (under ``min_known_words`` of its words are
    known words)."""
    text = (caption or "").strip()
    if not text:
        return "empty"
    words = _WORD.findall(text.lower())
    asked = _WORD.findall((prompt or "").lower())
    if len(asked) >= 3 and f" {' '.join(asked)} " in f" {' '.join(words)} ":
        return "prompt_echo"
    if len(words) < min_words:
        return "too_short"
    if len(words) > max_words:
        return "too_long"
    if _repeated(words):
        return "repeated_tokens"
    if _malformed(text):
        return "malformed"
    if lang_of is not None and lang_of(text) != "en":
        return "not_english"
    if min_known_words > 0 and known_fraction(text) < min_known_words:
        return "not_words"
    return None


def english(text: str) -> str | None:
    """The language of ``text`` by the ``language`` scorer's fasttext model."""
    return _fasttext()(text)
