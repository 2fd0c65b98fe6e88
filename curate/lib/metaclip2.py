"""MetaCLIP 2 (worldwide) building blocks: per-language metadata, its matching rules and the
per-language thresholds (Chuang et al., "Meta CLIP 2: A Worldwide Scaling Recipe", 2025;
facebookresearch/MetaCLIP ``metaclip/curation/``, ``docs/metaclip2.md``).

**Per-language metadata.** The authors' ``metaclip/metadata/align_lid_to_wiki.py`` writes one
file per metadata language, ``data/metadata/<code>.json``: a JSON list of distinct strings (an
entry's id is its position), beside a pickled pyahocorasick automaton ``<code>.pkl``. The code
is a Wikipedia language code, with variants merged (``zh_yue`` and ``zh_classical`` into
``zh``), plus ``other`` for the languages their LID mapping marks "N/A"; English is MetaCLIP 1's
list. ``MetadataDir`` reads exactly those ``<code>.json`` files from a local directory, each
with ``curate.lib.metadata.load_metadata``; the ``.pkl`` files are not read (unpickling runs
code, and the automaton is rebuilt from the list).

**Language of a text.** The authors map the LID code of each text to a metadata code with
``lid_langcode_to_metadata_langcode``: ``other`` for an empty code or one their
``lid_to_wiki`` table maps to "N/A", else ``lid_to_wiki[code]`` (the released table is empty,
"customize your LID lang set to metadata/wiki lang set"). ``MetadataDir.language`` does the
same with ``mapping`` as that table, and the identity for codes it does not list: a code with
no ``<code>.json`` falls to ``other`` when the directory has ``other.json``, else the text
has no metadata and matches nothing.

**Matching** (``substr_matching.py``). The text is stripped (``str.strip``) and spaced as in
MetaCLIP 1 (one space around it, a space either side of each ``, . ; : ? ! ```, tab, newline
and carriage return as spaces). An entry gets a space before it unless its first character is
"CJK or similar", and after it unless its last character is: CJK ideographs (the ranges of
``is_cjk_or_similar``), Thai, Lao, Burmese, Khmer and Tibetan letters, ASCII punctuation and
the CJK punctuation in ``additional_punctuation``. An entry matches when its padded form is a
substring of the spaced text, so ``北京`` matches inside ``我爱北京天安门`` while ``cat`` needs
word boundaries.

**Thresholds** (``curate.py``). English keeps t_en (170,000 in MetaCLIP 2, against 20,000
in OpenAI's CLIP). ``t_to_p`` turns it into the tail share of English matches (counts below
t_en over all), and ``p_to_t`` gives each other language the count at which its own cumulative
share of matches, counts sorted ascending, comes nearest to that share. ``count_to_prob``
is ``t / max(count, t)``; the authors store it as float32 and so does ``count_to_prob`` here.
"""

from __future__ import annotations

import hashlib
import re
import string
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from curate.errors import CurateError
from curate.lib.metadata import load_metadata

T_EN = 170_000  # MetaCLIP 2's English threshold (OpenAI CLIP: 20,000)
OTHER = "other"
NOT_AVAILABLE = "N/A"

#: ``additional_punctuation`` of the authors' ``curation/substr_matching.py``.
CJK_PUNCTUATION = frozenset("，。、；：？！“”‘’（）【】《》〈〉「」『』～—")
_ASCII_PUNCTUATION = frozenset(string.punctuation)

#: Code point ranges (inclusive) of ``is_cjk_or_similar``: CJK ideographs and radicals, then
#: Thai, Lao, Burmese, Khmer and Tibetan.
UNPADDED_RANGES = (
    (0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F),
    (0x2B740, 0x2B81F), (0x2B820, 0x2CEAF), (0x2CEB0, 0x2EBEF), (0xF900, 0xFAFF),
    (0x2E80, 0x2EFF), (0x2F00, 0x2FDF), (0x2FF0, 0x2FFF),
    (0x0E00, 0x0E7F), (0x0E80, 0x0EFF), (0x1000, 0x109F), (0x1780, 0x17FF), (0x0F00, 0x0FFF),
)

_SPACED = (",", ".", ";", ":", "?", "!", "`")
_BLANKED = ("\t", "\n", "\r")


_UNPADDED = re.compile("[" + "".join(f"{re.escape(chr(lo))}-{re.escape(chr(hi))}"
                                      for lo, hi in UNPADDED_RANGES) + "]")


def unpadded(char: str) -> bool:
    """Whether an entry starting (ending) with ``char`` gets no space before (after) it."""
    return (char in _ASCII_PUNCTUATION or char in CJK_PUNCTUATION
            or _UNPADDED.fullmatch(char) is not None)


def padded_entry(entry: str) -> str:
    """The form of ``entry`` that must occur in the spaced text (see the module docs)."""
    if not entry:
        raise ValueError("an empty entry cannot be matched")
    left = "" if unpadded(entry[0]) else " "
    right = "" if unpadded(entry[-1]) else " "
    return f"{left}{entry}{right}"


def spaced_text(text: str) -> str:
    """The text as MetaCLIP 2 matches it: stripped, then spaced as MetaCLIP 1 spaces it."""
    out = f" {text.strip()} "
    for ch in _SPACED:
        out = out.replace(ch, f" {ch} ")
    for ch in _BLANKED:
        out = out.replace(ch, " ")
    return out


def t_to_p(counts: np.ndarray, t: int) -> float:
    """The share of all matches held by entries matched fewer than ``t`` times."""
    counts = np.asarray(counts)
    total = counts.sum()
    if total == 0:
        raise CurateError("no English text matched an entry: MetaCLIP 2 derives every "
                          "language's t from the English tail share",
                          "balance a pool with English texts (lang en), or use metaclip_balance")
    return float(counts[counts < t].sum() / total)


def p_to_t(counts: np.ndarray, p: float) -> int:
    """The count at which the ascending cumulative share of matches comes nearest to ``p``
    (the first such entry on a tie); every entry of the language's metadata takes part,
    unmatched ones included."""
    ordered = np.sort(np.asarray(counts, dtype=np.int64))
    total = ordered.sum()
    if total == 0:
        return 0
    share = np.cumsum(ordered) / total
    return int(ordered[int(np.abs(share - p).argmin())])


def count_to_prob(counts: np.ndarray, t: int) -> np.ndarray:
    """Per entry, ``t / max(count, t)`` as float32 (the authors' stored probabilities); with
    t = 0, entries never matched get 1 (they are in no text) and the others 0."""
    counts = np.asarray(counts, dtype=np.float64)
    if t <= 0:
        return (counts == 0).astype(np.float32)
    return (t / np.maximum(counts, t)).astype(np.float32)


class MetadataDir:
    """A directory of per-language metadata files ``<code>.json`` (see the module docs)."""

    def __init__(self, path: str | Path, mapping: Mapping[str, str] | None = None) -> None:
        self.path = Path(path)
        if not self.path.is_dir():
            raise CurateError(f"MetaCLIP 2 metadata directory {self.path} not found",
                              "set metadata_dir to a folder of per-language lists <code>.json "
                              "(MetaCLIP 2's data/metadata layout)")
        self.files = {p.stem: p for p in sorted(self.path.glob("*.json")) if p.is_file()}
        if not self.files:
            raise CurateError(f"MetaCLIP 2 metadata directory {self.path} holds no <code>.json "
                              "file", "put one JSON list of entries per language in it, e.g. "
                              "en.json, zh.json, other.json")
        self.mapping = dict(mapping or {})
        self._entries: dict[str, list[str]] = {}

    def language(self, lid: str | None) -> str | None:
        """The metadata code of a text whose LID code is ``lid`` (None: no metadata)."""
        code = self.mapping.get(lid, lid) if lid else OTHER
        if code == NOT_AVAILABLE:
            code = OTHER
        if code in self.files:
            return code
        return OTHER if OTHER in self.files else None

    def entries(self, code: str) -> list[str]:
        """The entries of one language (loaded once)."""
        if code not in self._entries:
            self._entries[code] = load_metadata(self.files[code])
        return self._entries[code]

    def digest(self) -> str:
        """16 hex digits of a SHA-256 over the directory's files (name and content digest of
        each ``<code>.json``, by name): changes when any language's list does."""
        h = hashlib.sha256()
        for code, path in self.files.items():
            h.update(f"{code}\0{hashlib.sha256(path.read_bytes()).hexdigest()}\n".encode())
        return h.hexdigest()[:16]


class LanguageMatcher:
    """MetaCLIP 2 matching against one language's entries: a pyahocorasick automaton of the
    padded entries, run over each spaced text; sorted, distinct entry ids per text."""

    def __init__(self, entries: Sequence[str]) -> None:
        try:
            import ahocorasick
        except ImportError as exc:
            raise CurateError("MetaCLIP 2 matching needs pyahocorasick",
                              "pip install pyahocorasick==2.3.1") from exc
        self.automaton = ahocorasick.Automaton()
        for i, entry in enumerate(entries):
            self.automaton.add_word(padded_entry(entry), i)
        self.automaton.make_automaton()

    def match(self, texts: Sequence[str]) -> list[list[int]]:
        """The ids of the entries each (raw) text matches, sorted."""
        scan = self.automaton.iter
        return [sorted({i for _, i in scan(spaced_text(t))}) for t in texts]
