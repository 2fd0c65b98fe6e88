"""MetaCLIP metadata: the list of entries that balancing matches captions against.

MetaCLIP (Xu et al., "Demystifying CLIP Data", 2023) curates by substring-matching captions
against ~500k metadata entries and capping how many pairs each entry may bring. A metadata file
is a JSON list of strings, MetaCLIP's own format: an entry's id is its position in the list.
``load_metadata`` reads such a file, MetaCLIP's released ``metadata.json`` included, unchanged.

``build_metadata`` writes one, following MetaCLIP's ``metaclip/build_metadata.py`` and
``metaclip/README_metadata.md`` (facebookresearch/MetaCLIP):

- **Sources, in MetaCLIP's order.** MetaCLIP starts its entry set with the numbers "0" to "99",
  then adds WordNet synsets, Wikipedia unigrams (kept when their count is at least 100),
  Wikipedia bigrams (PMI at least 30) and Wikipedia titles (at least 70 page views). Here the
  three Wikipedia sources are user files, already filtered for bigrams and titles; unigrams
  are filtered by ``min_count`` (default 100, MetaCLIP's threshold).
- **Filter.** Like MetaCLIP, an entry is skipped when it is empty or a single ASCII punctuation
  character.
- **Dedupe and order.** MetaCLIP collects entries in a Python ``set`` and dumps ``list(set)``,
  so its file order is arbitrary and changes between runs. Here the first occurrence wins and
  the order is the sources' order (numbers, WordNet, unigrams, bigrams, titles), then each
  source's own order; the file is reproducible, and entry ``i`` is ``str(i)`` for i < 100.

**WordNet names.** MetaCLIP takes, for each synset of NLTK's ``wn.all_synsets()``, its name up
to the first ``"."`` with ``"_"`` turned into spaces. The data files are parsed directly here,
reproducing what NLTK's reader (``nltk/corpus/reader/wordnet.py``) does:

- ``all_synsets()`` walks the parts of speech in the order of its ``_FILEMAP`` dict: adjectives,
  adverbs, nouns, verbs. Each data file is read top to bottom, lines that start with whitespace
  (the licence header) are skipped, and data.adj yields its head adjectives and satellites
  ("s") together, in file order.
- ``_synset_from_pos_and_line`` names a synset after its FIRST lemma: the word as written in
  the data file minus an adjective's syntactic marker (``(a)``, ``(p)``, ``(ip)``), then
  **lowercased** (``Paris`` gives ``paris``), then ``.pos.NN``.
- Cutting at the first ``"."`` therefore also cuts lemmas that contain one: ``St._John's``
  gives ``st``, ``Ph.D.`` gives ``ph``, and ``.22_caliber`` gives an empty name, which the
  filter drops. No WordNet entry contains a ``"."``.

On Debian's WordNet 3.0 (``wordnet-base``), the 117,659 synsets give 86,554 distinct non-empty
names; with the numbers the file holds 86,654 entries. NLTK 3.10.4's reader, run on the same
files, gives the same name for every synset, in the same order.

**Matching caveat.** MetaCLIP's matcher (``metaclip/substr_matching.py``) is case-sensitive and
pads the caption's ``, . ; : ? ! ` `` with spaces, then looks for `` entry `` in it; entries are
not normalised. An entry holding one of those characters (or a tab or newline) can never match;
``BuildResult.unmatchable`` counts them.
"""

from __future__ import annotations

import hashlib
import json
import string
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from curate.errors import CurateError
from curate.io.atomic import write_text

DEFAULT_METADATA = Path(__file__).resolve().parents[2] / "metadata" / "wordnet.json"
WORDNET_DIR = Path("/usr/share/wordnet")
#: NLTK's ``all_synsets()`` order (its ``_FILEMAP``): adjectives (with satellites), adverbs,
#: nouns, verbs.
WORDNET_FILES = ("data.adj", "data.adv", "data.noun", "data.verb")
UNIGRAM_MIN_COUNT = 100
NUMBERS = tuple(str(i) for i in range(100))

_SYNSET_TYPES = frozenset("nvasr")
_FORBIDDEN = frozenset(string.punctuation)
#: What MetaCLIP's ``spacing`` pads or blanks in a caption: an entry holding one never matches.
_UNMATCHABLE = frozenset(",.;:?!`\t\n\r")
_WORDNET_HINT = ("install WordNet 3.0 from Debian: apt-get update && apt-get install -y "
                 "--no-install-recommends wordnet-base (or pass --wordnet-dir DIR with "
                 "data.adj, data.adv, data.noun, data.verb)")


@dataclass(frozen=True)
class SourceCount:
    """What one source gave: ``given`` items read (synsets, lines), ``kept`` after the source's
    own filter and the empty/punctuation filter, ``added`` entries not already present."""

    name: str
    given: int
    kept: int
    added: int


@dataclass(frozen=True)
class BuildResult:
    out: Path
    sources: tuple[SourceCount, ...]
    total: int
    unmatchable: int
    wordnet_version: str | None


def wordnet_synset_names(wordnet_dir: str | Path = WORDNET_DIR) -> list[str]:
    """One name per synset, in NLTK's ``all_synsets()`` order, as MetaCLIP derives it (see the
    module docstring); not deduplicated, and empty where the first lemma starts with "."."""
    wordnet_dir = Path(wordnet_dir)
    names: list[str] = []
    for path in _wordnet_files(wordnet_dir):
        names.extend(_synset_names(path))
    return names


def wordnet_entries(wordnet_dir: str | Path = WORDNET_DIR) -> list[str]:
    """The distinct non-empty WordNet names, first occurrence first."""
    return list(dict.fromkeys(n for n in wordnet_synset_names(wordnet_dir) if _keep(n)))


def wordnet_version(wordnet_dir: str | Path = WORDNET_DIR) -> str | None:
    """The version in data.adj's licence header ("WordNet 3.0 Copyright ..."), if there."""
    path = Path(wordnet_dir) / WORDNET_FILES[0]
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                if not line[:1].isspace():
                    break
                words = line.split()
                for i, word in enumerate(words[:-2]):
                    if word.lower() == "wordnet" and words[i + 2] == "Copyright":
                        return words[i + 1]
    except (OSError, UnicodeDecodeError):
        return None
    return None


def build_metadata(out: str | Path, wordnet_dir: str | Path = WORDNET_DIR,
                   unigrams: str | Path | None = None, min_count: int = UNIGRAM_MIN_COUNT,
                   bigrams: str | Path | None = None, titles: str | Path | None = None,
                   ) -> BuildResult:
    """Write the metadata JSON list to ``out`` (atomically) and say what each source gave.

    ``unigrams`` lines are ``word<TAB>count`` or ``word count`` (kept when count >=
    ``min_count``); ``bigrams`` and ``titles`` hold one entry per line. Lines are stripped of
    surrounding whitespace and blank lines are ignored.
    """
    if min_count < 0:
        raise CurateError(f"--min-count must be >= 0, got {min_count}")
    wordnet_names = wordnet_synset_names(wordnet_dir)
    sources: list[tuple[str, int, list[str]]] = [
        ("numbers", len(NUMBERS), list(NUMBERS)),
        ("wordnet", len(wordnet_names), wordnet_names),
    ]
    if unigrams is not None:
        given, words = _read_unigrams(Path(unigrams), min_count)
        sources.append(("unigrams", given, words))
    for name, path in (("bigrams", bigrams), ("titles", titles)):
        if path is not None:
            lines = [line for _, line in _read_lines(Path(path), f"{name} list")]
            sources.append((name, len(lines), lines))

    entries: dict[str, None] = {}
    counts = []
    for name, given, items in sources:
        kept = [item for item in items if _keep(item)]
        before = len(entries)
        entries.update(dict.fromkeys(kept))
        counts.append(SourceCount(name, given, len(kept), len(entries) - before))
    out = Path(out)
    write_text(json.dumps(list(entries), ensure_ascii=False, indent=0) + "\n", out)
    return BuildResult(out=out, sources=tuple(counts), total=len(entries),
                       unmatchable=count_unmatchable(entries),
                       wordnet_version=wordnet_version(wordnet_dir))


def count_unmatchable(entries: Iterable[str]) -> int:
    """Entries that MetaCLIP's substring matcher can never find in a caption."""
    return sum(1 for e in entries if not _UNMATCHABLE.isdisjoint(e))


def load_metadata(path: str | Path = DEFAULT_METADATA) -> list[str]:
    """Read a metadata file: a JSON list of distinct non-empty strings (entry id = position)."""
    path = Path(path)
    hint = (f"a metadata file is a JSON list of strings, e.g. MetaCLIP's metadata.json or "
            f"one written by `curate metadata build` (shipped: {DEFAULT_METADATA})")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CurateError(f"metadata file {path} not found", hint) from None
    except IsADirectoryError:
        raise CurateError(f"metadata file {path} is a directory", hint) from None
    except UnicodeDecodeError as exc:
        raise CurateError(f"metadata file {path} is not UTF-8 text ({exc.reason} at byte "
                          f"{exc.start})", hint) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CurateError(f"metadata file {path} is not valid JSON: {exc.msg} (line "
                          f"{exc.lineno}, column {exc.colno})", hint) from None
    if not isinstance(data, list):
        raise CurateError(f"metadata file {path} holds a JSON {_json_type(data)}, not a list "
                          "of strings", hint)
    if not data:
        raise CurateError(f"metadata file {path} is an empty list: no entries", hint)
    seen: dict[str, int] = {}
    for i, entry in enumerate(data):
        if not isinstance(entry, str):
            raise CurateError(f"metadata file {path}: entry {i} is a JSON {_json_type(entry)} "
                              f"({json.dumps(entry)[:60]}), not a string", hint)
        if not entry:
            raise CurateError(f"metadata file {path}: entry {i} is an empty string", hint)
        if entry in seen:
            raise CurateError(f"metadata file {path}: entry {i} ({entry!r}) repeats entry "
                              f"{seen[entry]}; entries must be distinct (an entry's id is its "
                              "position)", hint)
        seen[entry] = i
    return data


def metadata_digest(path: str | Path) -> str:
    """The identity of a metadata file: the first 16 hex digits of the SHA-256 of its bytes.

    ``metaclip_match`` writes it beside every row's entry ids (column ``metaclip_metadata``),
    so that balancing can check that it names the entries from the very file they were
    matched against."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CurateError(f"metadata file {path} not found") from None
    except IsADirectoryError:
        raise CurateError(f"metadata file {path} is a directory") from None
    return hashlib.sha256(data).hexdigest()[:16]


def _keep(entry: str) -> bool:
    return bool(entry) and entry not in _FORBIDDEN


def _wordnet_files(wordnet_dir: Path) -> list[Path]:
    if not wordnet_dir.is_dir():
        raise CurateError(f"WordNet directory {wordnet_dir} not found", _WORDNET_HINT)
    paths = [wordnet_dir / name for name in WORDNET_FILES]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise CurateError(f"WordNet directory {wordnet_dir} lacks {', '.join(missing)}",
                          _WORDNET_HINT)
    return paths


def _synset_names(path: Path) -> Iterator[str]:
    """The MetaCLIP name of each synset line of one WordNet data file, in file order.

    A data line is ``offset lex_filenum ss_type w_cnt word lex_id [word lex_id ...] p_cnt ...
    | gloss`` (WordNet's wndb(5)); w_cnt is two hex digits.
    """
    try:
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line or line[0].isspace():
                    continue
                fields = line.partition("|")[0].split()
                if (len(fields) < 6 or not fields[0].isdigit() or fields[2] not in _SYNSET_TYPES
                        or not _is_positive_hex(fields[3])):
                    raise CurateError(f"{path}, line {lineno}: not a WordNet synset line: "
                                      f"{line[:80].rstrip()!r}", _WORDNET_HINT)
                yield _metaclip_name(fields[4])
    except UnicodeDecodeError as exc:
        raise CurateError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start})",
                          _WORDNET_HINT) from None


def _metaclip_name(word: str) -> str:
    """NLTK's synset name for a synset whose first lemma is ``word`` (marker stripped,
    lowercased), cut at its first "." and with "_" as spaces, as MetaCLIP does."""
    if word.endswith(")") and "(" in word:   # adjective syntactic marker: (a), (p), (ip)
        word = word[: word.index("(")]
    return word.lower().partition(".")[0].replace("_", " ")


def _is_positive_hex(token: str) -> bool:
    try:
        return int(token, 16) > 0
    except ValueError:
        return False


def _read_lines(path: Path, what: str) -> list[tuple[int, str]]:
    """(line number, stripped text) of the non-blank lines of a UTF-8 text file."""
    hint = "pass a UTF-8 text file with one entry per line"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CurateError(f"{what} {path} not found", hint) from None
    except IsADirectoryError:
        raise CurateError(f"{what} {path} is a directory", hint) from None
    except UnicodeDecodeError as exc:
        raise CurateError(f"{what} {path} is not UTF-8 text ({exc.reason} at byte "
                          f"{exc.start})", hint) from None
    lines = ((i, line.strip()) for i, line in enumerate(text.splitlines(), 1))
    return [(i, line) for i, line in lines if line]


def _read_unigrams(path: Path, min_count: int) -> tuple[int, list[str]]:
    """(lines, words with count >= min_count) of a ``word<TAB>count`` / ``word count`` file."""
    lines = _read_lines(path, "unigram list")
    words = []
    for lineno, line in lines:
        fields = line.split()
        count = _int_or_none(fields[-1]) if len(fields) == 2 else None
        if count is None:
            raise CurateError(f"unigram list {path}, line {lineno}: {line[:60]!r} is not "
                              "'word<TAB>count'",
                              "one unigram per line: the word, a tab or space, an integer count")
        if count >= min_count:
            words.append(fields[0])
    return len(lines), words


def _int_or_none(token: str) -> int | None:
    try:
        return int(token)
    except ValueError:
        return None


def _json_type(value: object) -> str:
    for kind, name in ((bool, "boolean"), (int, "number"), (float, "number"), (str, "string"),
                       (list, "list"), (dict, "object")):
        if isinstance(value, kind):
            return name
    return "null"
