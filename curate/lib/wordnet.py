"""WordNet look-ups of DataComp's ``text_based`` baseline (Gadre et al., 2023, "DataComp: In
search of the next generation of multimodal datasets", Sec. 3.4 and App. P).

DataComp (``baselines/apply_filter.py``, ``does_contain_text_entity``) keeps a caption when one
of its ``str.split()`` words has a first NLTK synset, ``wordnet.synsets(word)[0]``, whose
``offset()`` is in the set of ImageNet-21k WordNet ids (``n01234567`` read as the int 1234567).
DataComp pins ``nltk==3.8.1``; this module computes the same offset without NLTK, from the
WordNet 3.0 dictionary files, following NLTK 3.8.1's ``WordNetCorpusReader`` step by step:

* the word is lower-cased (``str.lower``);
* parts of speech are tried in NLTK's ``POS_LIST`` order: noun, verb, adjective, adverb; the
  first one where morphy finds a form gives the synset;
* morphy (NLTK 3.8.1 ``_morphy``): when the word is in the part of speech's exception list
  (``noun.exc`` ...), the candidates are the word then its listed base forms, and nothing else;
  otherwise the candidates are the word then the detachment rules applied once; when none of
  them is a lemma of that part of speech, the rules are applied again to the rule outputs,
  round after round, until one is or no rule applies. The first candidate that is a lemma of
  the part of speech wins, and the synset is the first offset on its ``index.<pos>`` line
  (WordNet orders a lemma's senses by frequency there);
* the offset is compared with the ids whatever the synset's part of speech: offsets are byte
  positions in ``data.noun``, ``data.verb``, ... so a verb or adjective synset whose offset
  happens to equal a listed noun synset's offset counts as an entity (DataComp's code does this;
  we reproduce it).

NLTK 3.10 dropped the repeated rounds of rule application; we follow 3.8.1, DataComp's pin.
Each round's candidates are deduplicated in order before the next round (which gives the same
first match as NLTK's lists and keeps hostile words such as ``esesese...`` from growing the
candidate list exponentially). Only ``index.{noun,verb,adj,adv}`` and ``{noun,verb,adj,adv}.exc``
are read: the first synset's offset is on the index line, so the data files are not needed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

from curate.errors import CurateError
from curate.lib.metadata import WORDNET_DIR

#: NLTK's POS_LIST order and the file suffix of each part of speech.
POS_ORDER = (("n", "noun"), ("v", "verb"), ("a", "adj"), ("r", "adv"))
#: NLTK 3.8.1 ``WordNetCorpusReader.MORPHOLOGICAL_SUBSTITUTIONS`` (WordNet's morphy rules).
SUBSTITUTIONS: dict[str, tuple[tuple[str, str], ...]] = {
    "n": (("s", ""), ("ses", "s"), ("ves", "f"), ("xes", "x"), ("zes", "z"), ("ches", "ch"),
          ("shes", "sh"), ("men", "man"), ("ies", "y")),
    "v": (("s", ""), ("ies", "y"), ("es", "e"), ("es", ""), ("ed", "e"), ("ed", ""),
          ("ing", "e"), ("ing", "")),
    "a": (("er", ""), ("est", ""), ("er", "e"), ("est", "e")),
    "r": (),
}
FILES = tuple(f"index.{s}" for _, s in POS_ORDER) + tuple(f"{s}.exc" for _, s in POS_ORDER)
WORD_CACHE = 1 << 18  # distinct words remembered per reader (look-ups are deterministic)
_HINT = ("install WordNet 3.0 (Debian: apt-get install wordnet-base, in /usr/share/wordnet) or "
         "point `wordnet` at a directory holding index.noun, noun.exc, ... (e.g. NLTK's "
         "nltk_data/corpora/wordnet)")


def check_wordnet_dir(directory: str | Path) -> None:
    """Raise ``CurateError`` unless ``directory`` holds the WordNet files this module reads."""
    missing = [f for f in FILES if not (Path(directory) / f).is_file()]
    if missing:
        raise CurateError(f"WordNet directory {directory} lacks {', '.join(missing)}", _HINT)


class WordNetIndex:
    """The lemma index and exception lists of a WordNet 3.0 dictionary directory, answering
    ``first_offset(word)``: NLTK 3.8.1's ``wordnet.synsets(word)[0].offset()`` (None when
    ``synsets`` is empty). See the module docs."""

    def __init__(self, directory: str | Path = WORDNET_DIR) -> None:
        self.directory = Path(directory)
        check_wordnet_dir(self.directory)
        # lemma -> {pos: first synset offset}; NLTK keeps the last line of a repeated lemma
        self._index: dict[str, dict[str, int]] = {}
        self._exceptions: dict[str, dict[str, list[str]]] = {}
        for pos, suffix in POS_ORDER:
            self._read_index(self.directory / f"index.{suffix}")
            self._exceptions[pos] = self._read_exceptions(self.directory / f"{suffix}.exc")
        self.first_offset = lru_cache(maxsize=WORD_CACHE)(self._first_offset)

    def _read_index(self, path: Path) -> None:
        with open(path, encoding="utf-8") as f:
            for i, line in enumerate(f, 1):
                if line.startswith(" "):  # the licence header
                    continue
                parts = line.split()
                try:
                    lemma, n_synsets, n_pointers = parts[0], int(parts[2]), int(parts[3])
                    first = 4 + n_pointers + 2  # after the pointers, sense_cnt and tagsense_cnt
                    if n_synsets <= 0 or int(parts[4 + n_pointers]) != n_synsets:
                        raise ValueError("synset counts disagree")
                    offset = int(parts[first])
                    int(parts[first + n_synsets - 1])  # the line holds every offset
                except (IndexError, ValueError) as exc:
                    raise CurateError(f"{path}, line {i}: not a WordNet index line ({exc})",
                                      _HINT) from exc
                self._index.setdefault(lemma, {})[parts[1]] = offset  # NLTK keys the line's pos

    @staticmethod
    def _read_exceptions(path: Path) -> dict[str, list[str]]:
        table: dict[str, list[str]] = {}
        with open(path, encoding="utf-8") as f:
            for line in f:
                terms = line.split()
                if terms:  # NLTK fails on a blank line; we skip it
                    table[terms[0]] = terms[1:]
        return table

    def _first_form(self, forms: Iterable[str], pos: str) -> str | None:
        for form in forms:
            entry = self._index.get(form)
            if entry is not None and pos in entry:
                return form
        return None

    def morphy(self, form: str, pos: str) -> str | None:
        """The first form NLTK 3.8.1's ``_morphy(form, pos)`` returns, or None."""
        exceptions = self._exceptions[pos]
        if form in exceptions:
            return self._first_form([form, *exceptions[form]], pos)
        rules = SUBSTITUTIONS[pos]

        def apply(forms: list[str]) -> list[str]:
            return list(dict.fromkeys(f[: -len(old)] + new for f in forms for old, new in rules
                                      if f.endswith(old)))

        forms = apply([form])
        found = self._first_form([form, *forms], pos)
        while found is None and forms:
            forms = apply(forms)
            found = self._first_form(forms, pos)
        return found

    def _first_offset(self, word: str) -> int | None:
        lemma = word.lower()
        for pos, _ in POS_ORDER:
            form = self.morphy(lemma, pos)
            if form is not None:
                return self._index[form][pos]
        return None

    def contains_entity(self, text: str, ids: frozenset[int] | set[int]) -> bool:
        """DataComp's ``does_contain_text_entity``: is the first synset offset of any
        ``text.split()`` word in ``ids``?"""
        for word in text.split():
            offset = self.first_offset(word)
            if offset is not None and offset in ids:
                return True
        return False

    def digest(self) -> str:
        """SHA-256 of the files read, so a changed dictionary is a new scorer version."""
        h = hashlib.sha256()
        for name in FILES:
            h.update(name.encode() + b"\0" + (self.directory / name).read_bytes())
        return h.hexdigest()


def load_wordnet_ids(path: str | Path) -> frozenset[int]:
    """The ids of DataComp's ``imagenet21k_wordnet_ids.txt`` (lines such as ``n01440764``) as
    DataComp reads them: each line stripped, its first character dropped, the rest an int
    (``n01440764`` -> 1440764). Blank lines are skipped (DataComp would fail on them)."""
    ids: set[int] = set()
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            s = line.strip()
            if not s:
                continue
            try:
                ids.add(int(s[1:]))
            except ValueError as exc:
                raise CurateError(f"{path}, line {i}: {s!r} is not a WordNet id such as "
                                  "n01440764") from exc
    return frozenset(ids)
