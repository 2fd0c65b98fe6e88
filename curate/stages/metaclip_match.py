"""Scorer ``metaclip_match``: the metadata entries a caption contains, by MetaCLIP's substring
matching (Xu et al., "Demystifying CLIP Data", 2023; ``metaclip/substr_matching.py``).

The semantics are MetaCLIP's, exactly:

* The caption is *spaced*: one space is put around it, every ``, . ; : ? ! ` `` gets a space
  on each side, and tabs, newlines and carriage returns become spaces.
* Entry ``e`` matches when ``" " + e + " "`` is a substring of the spaced caption. Matching is
  case-sensitive and entries are used as written, so an entry holding ``.`` never matches.
  Overlapping entries all match: "new york" and "york city" both match "new york city".
  An entry that occurs twice counts once; two list positions holding the same string both
  match (`SubstringMatcher` allows that, ``load_metadata`` rejects such files).
* ``metaclip_entries`` holds the sorted ids (positions in the metadata list) of the matching
  entries, ``metaclip_matches`` how many there are. A missing caption matches nothing.

The metadata is a JSON list of strings (``curate.lib.metadata.load_metadata``); the default is the
shipped ``metadata/wordnet.json``. ``metaclip_metadata`` holds, on every row, the metadata
file's identity (``curate.lib.metadata.metadata_digest``: 16 hex digits of its SHA-256); the
``metaclip_balance`` selector uses these columns and refuses to name entries from another file.

**Several texts per image.** MetaCLIP counts per text: its records carry a list of texts per
image (``texts`` of its parsed json, ``[key, text]`` pairs in MetaCLIP 1, ``[key, text, lang]``
in MetaCLIP 2) and each text is matched and counted on its own. With ``texts: FIELD`` the
scorer reads that field of the sample's json member instead of the caption: a list whose items
are strings or such records (the text is item 1). ``metaclip_entries`` is then
``list<list<int32>>``, one sorted id list per text in the field's order, and
``metaclip_matches`` the sum of the per-text counts. A json that is not an object, or whose
field is missing or not such a list, fails the sample (``error:metaclip_match``).

**How it is computed.** In the spaced caption, an occurrence of ``" " + e + " "`` starts and
ends at a space and has a space exactly where ``e`` has one, so it covers whole words: ``e``
matches exactly when the words of ``e`` (``e.split(" ")``) are consecutive words of the spaced
caption (its ``split(" ")``, less the empty words outside the two padding spaces; empty words
from double spaces count, as they do in the substring test). `SubstringMatcher` keeps the
entries as a trie over word ids, built with numpy once per worker. A compiled loop (numba) then
makes one pass over a batch's Arrow buffers. It cuts each caption into the words of its spaced
form without building that text, and looks each word up in a hash table, checked byte for byte,
so a lookup is exact. It walks the trie from every word and writes the sorted, distinct ids
straight into the offsets and values of the Arrow list column. Aho-Corasick libraries were
slower here: polars' ``str.extract_many`` rebuilds its automaton on every call, and a
per-caption ``pyahocorasick`` loop (MetaCLIP's faster variant) pays Python per caption and per
match. ``benchmarks/metaclip_matching.py`` measures both against this and checks that they
find the same matches. The whole caption is matched, in one linear pass: no prefix is cut, so a
1 MB caption gets exact matches (a 1 MB caption of English words took 0.03 s and raised the peak
memory by 1.4 MiB on a 2-CPU machine).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate.errors import CurateError
from curate.stages.base import SAMPLE_ERRORS, Params, Scorer, register

PUNCTUATION = (",", ".", ";", ":", "?", "!", "`")  # padded with spaces, in MetaCLIP's order
BLANKED = ("\t", "\n", "\r")  # turned into spaces
NUMBA_HINT = "pip install numba==0.68.1 (it is in requirements/base.txt)"

# Hashing inside the kernels: FNV-1a over a word's bytes, then a multiply-xorshift finaliser so
# that the top bits (the slot) depend on every byte; Fibonacci hashing for integer keys.
_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)
_MIX = np.uint64(0xBF58476D1CE4E5B9)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_LOW32 = np.uint64(0xFFFFFFFF)


class SubstringMatcher:
    """MetaCLIP substring matching of Arrow caption arrays against a fixed list of entries
    (see the module docs). Building it is the expensive part: do it once per worker."""

    def __init__(self, entries: Sequence[str]) -> None:
        try:
            import numba
        except ImportError as exc:
            raise CurateError("MetaCLIP substring matching needs the numba package",
                              NUMBA_HINT) from exc
        arr = pa.array(entries, type=pa.string())
        # An entry holding a tab, newline or carriage return can never match: spaced captions
        # have none.
        usable = np.ones(len(arr), dtype=bool)
        for c in BLANKED:
            usable &= ~pc.match_substring(arr, c).to_numpy(zero_copy_only=False)
        ids = np.flatnonzero(usable)
        words = pc.split_pattern(arr.filter(pa.array(usable)), " ")
        enc = pc.dictionary_encode(pc.list_flatten(words))
        vocab = enc.dictionary
        self._nwords = nwords = len(vocab)
        word = enc.indices.to_numpy().astype(np.int64)
        offsets = words.offsets.to_numpy().astype(np.int64)
        starts, lengths = offsets[:-1], np.diff(offsets)
        # Trie states: 0..nwords-1 are the one-word prefixes (state = word id); longer prefixes
        # are numbered after them. A transition is keyed by state * nwords + next word id.
        state = word[starts] if len(starts) else np.zeros(0, dtype=np.int64)
        states = nwords
        keys: list[np.ndarray] = []
        longer = np.arange(len(ids))
        depth = 1
        while True:
            longer = longer[lengths[longer] > depth]
            if not longer.size:
                break
            key = state[longer] * nwords + word[starts[longer] + depth]
            distinct, inverse = np.unique(key, return_inverse=True)
            keys.append(distinct)
            state[longer] = states + inverse.reshape(-1)
            states += len(distinct)
            depth += 1
        if states * max(nwords, 1) >= 2**62 or nwords >= 2**32 - 1:
            raise CurateError(f"{len(entries)} metadata entries are too many to match")
        transitions = np.concatenate(keys) if keys else np.zeros(0, dtype=np.int64)
        parents = transitions // max(nwords, 1)
        self._has_next = np.zeros(states, dtype=bool)
        self._has_next[parents] = True
        # Entries ending at each state, ids ascending (several when a string is listed twice).
        order = np.lexsort((ids, state))
        self._ids = ids[order].astype(np.int32)
        self._count = np.bincount(state, minlength=states).astype(np.int64)
        self._start = np.concatenate(([0], np.cumsum(self._count)[:-1])).astype(np.int64)
        # The most ids one walk can collect: the entries ending along its path.
        along = self._count.copy()
        child = nwords
        for level in keys:  # parents of one level's states are on the level above it
            along[child:child + len(level)] += along[level // max(nwords, 1)]
            child += len(level)
        self._emit_bound = int(along.max()) if states else 1
        # The hash tables and the matching loop are compiled; numba caches them on disk.
        jit = numba.njit(cache=True, nogil=True)
        self._kernel = jit(_match_kernel)
        vbytes = _string_bytes(vocab)
        voffsets = _string_offsets(vocab)
        self._words_bits = _table_bits(nwords)
        self._words = jit(_word_table)(vbytes, voffsets, self._words_bits)
        self._vocab = (vbytes, voffsets)
        self._next_bits = _table_bits(len(transitions))
        self._next = jit(_key_table)(transitions, np.arange(nwords, states, dtype=np.int64),
                                     self._next_bits)

    def match(self, captions: pa.Array) -> pa.ListArray:
        """``list<int32>`` of matching entry ids per caption, sorted (empty for nulls)."""
        offsets, ids = self.match_arrays(captions)
        return pa.ListArray.from_arrays(pa.array(offsets, type=pa.int32()),
                                        pa.array(ids, type=pa.int32()))

    def match_arrays(self, captions: pa.Array) -> tuple[np.ndarray, np.ndarray]:
        """(offsets, ids), int32: caption ``i`` matched ``ids[offsets[i]:offsets[i + 1]]``."""
        if not pa.types.is_string(captions.type):
            raise TypeError(f"captions must be a string array, not {captions.type}")
        bitmap = captions.buffers()[0]
        valid = (np.frombuffer(bitmap, dtype=np.uint8) if bitmap is not None
                 and captions.null_count else np.zeros(0, dtype=np.uint8))
        offsets, ids = self._kernel(
            _string_bytes(captions), _string_offsets(captions), valid, captions.offset,
            *self._vocab, self._words, self._words_bits, self._next, self._next_bits,
            self._has_next, self._count, self._start, self._ids, self._nwords,
            self._emit_bound)
        return offsets, ids


def _string_bytes(arr: pa.Array) -> np.ndarray:
    data = arr.buffers()[2]
    return np.zeros(0, dtype=np.uint8) if data is None else np.frombuffer(data, dtype=np.uint8)


def _string_offsets(arr: pa.Array) -> np.ndarray:
    """The ``len + 1`` offsets of a (possibly sliced) string array into its data buffer."""
    buf = arr.buffers()[1]
    if buf is None:
        return np.zeros(len(arr) + 1, dtype=np.int32)
    return np.frombuffer(buf, dtype=np.int32)[arr.offset:arr.offset + len(arr) + 1]


def _table_bits(n: int) -> int:
    """log2 of a hash table size that keeps ``n`` keys at most half full."""
    return max(4, int(2 * n).bit_length())


# --------------------------------------------------------------------------------------------
# Compiled with numba.njit when a SubstringMatcher is built (numba is imported only then).
# Hash tables use open addressing with linear probing; 0 marks an empty slot, so stored ids and
# keys are shifted by one.


def _word_table(vbytes: np.ndarray, voffsets: np.ndarray, bits: int) -> np.ndarray:
    """One slot per vocabulary word: the top 32 bits of the hash of its bytes, then its id + 1
    in the low 32 bits."""
    size = 1 << bits
    table = np.zeros(size, dtype=np.uint64)
    shift = np.uint64(64 - bits)
    for w in range(len(voffsets) - 1):
        h = _FNV_OFFSET
        for i in range(voffsets[w], voffsets[w + 1]):
            h = (h ^ np.uint64(vbytes[i])) * _FNV_PRIME
        h = (h ^ (h >> np.uint64(29))) * _MIX
        s = np.int64(h >> shift)
        while table[s] != 0:
            s = (s + 1) & (size - 1)
        table[s] = ((h >> np.uint64(32)) << np.uint64(32)) | np.uint64(w + 1)
    return table


def _key_table(keys: np.ndarray, values: np.ndarray, bits: int) -> np.ndarray:
    """Slots of (key + 1, value) for distinct keys ≥ 0."""
    size = 1 << bits
    table = np.zeros(2 * size, dtype=np.uint64)
    shift = np.uint64(64 - bits)
    for k in range(len(keys)):
        s = np.int64((np.uint64(keys[k]) * _GOLDEN) >> shift)
        while table[2 * s] != 0:
            s = (s + 1) & (size - 1)
        table[2 * s] = np.uint64(keys[k] + 1)
        table[2 * s + 1] = np.uint64(values[k])
    return table


def _match_kernel(data: np.ndarray, offsets: np.ndarray, valid: np.ndarray, valid_offset: int,
                  vbytes: np.ndarray, voffsets: np.ndarray, words: np.ndarray, words_bits: int,
                  nexts: np.ndarray, next_bits: int, has_next: np.ndarray, count: np.ndarray,
                  start: np.ndarray, ids: np.ndarray, nwords: int,
                  emit_bound: int) -> tuple[np.ndarray, np.ndarray]:
    """Per caption: cut it into the words of its spaced form, look each word up, walk the
    word trie from every word, then sort and dedupe the ids collected.
    Returns (list offsets, entry ids) for an Arrow ``list<int32>``."""
    n = len(offsets) - 1
    longest = 0
    for r in range(n):
        longest = max(longest, offsets[r + 1] - offsets[r])
    most = 2 * longest + 2  # each byte ends at most two words
    word_start = np.empty(most, dtype=np.int64)
    word_end = np.empty(most, dtype=np.int64)
    word_hash = np.empty(most, dtype=np.uint64)
    word_id = np.empty(most, dtype=np.int64)
    found = np.empty(most * emit_bound, dtype=np.int64)
    list_offsets = np.zeros(n + 1, dtype=np.int32)
    out = np.empty(8 * n + 16, dtype=np.int32)
    nout = 0
    words_mask = (1 << words_bits) - 1
    words_shift = np.uint64(64 - words_bits)
    next_mask = (1 << next_bits) - 1
    next_shift = np.uint64(64 - next_bits)
    for r in range(n):
        list_offsets[r] = nout
        bit = valid_offset + r
        if len(valid) and not (valid[bit >> 3] >> (bit & 7)) & 1:
            continue  # a null caption (``valid`` is the validity bitmap, empty without nulls)
        # The words of MetaCLIP's spacing without its outer pads (their words are empty and
        # never inside a match), as byte ranges of the caption: each , . ; : ? ! ` is a word
        # of its own and ends the word before it; space, tab, newline and return end a word.
        nw = 0
        begin = offsets[r]
        h = _FNV_OFFSET
        for i in range(offsets[r], offsets[r + 1]):
            c = data[i]
            if c == 32 or c == 9 or c == 10 or c == 13:
                word_start[nw] = begin
                word_end[nw] = i
                word_hash[nw] = h
                nw += 1
                begin = i + 1
                h = _FNV_OFFSET
            elif c == 44 or c == 46 or c == 59 or c == 58 or c == 63 or c == 33 or c == 96:
                word_start[nw] = begin
                word_end[nw] = i
                word_hash[nw] = h
                word_start[nw + 1] = i
                word_end[nw + 1] = i + 1
                word_hash[nw + 1] = (_FNV_OFFSET ^ np.uint64(c)) * _FNV_PRIME
                nw += 2
                begin = i + 1
                h = _FNV_OFFSET
            else:
                h = (h ^ np.uint64(c)) * _FNV_PRIME
        word_start[nw] = begin
        word_end[nw] = offsets[r + 1]
        word_hash[nw] = h
        nw += 1
        for k in range(nw):
            h = word_hash[k]
            h = (h ^ (h >> np.uint64(29))) * _MIX
            s = np.int64(h >> words_shift)
            word_id[k] = -1
            size = word_end[k] - word_start[k]
            tag = h >> np.uint64(32)
            while words[s] != 0:
                if words[s] >> np.uint64(32) == tag:
                    w = np.int64(words[s] & _LOW32) - 1
                    if voffsets[w + 1] - voffsets[w] == size:
                        delta = voffsets[w] - word_start[k]
                        i = word_start[k]
                        while i < word_end[k] and vbytes[delta + i] == data[i]:
                            i += 1
                        if i == word_end[k]:
                            word_id[k] = w
                            break
                s = (s + 1) & words_mask
        nf = 0
        for k in range(nw):
            state = word_id[k]
            j = k + 1
            while state >= 0:
                for q in range(start[state], start[state] + count[state]):
                    found[nf] = ids[q]
                    nf += 1
                if not has_next[state] or j >= nw or word_id[j] < 0:
                    break
                key = np.uint64(state * nwords + word_id[j])
                s = np.int64((key * _GOLDEN) >> next_shift)
                state = -1
                while nexts[2 * s] != 0:
                    if nexts[2 * s] == key + np.uint64(1):
                        state = np.int64(nexts[2 * s + 1])
                        break
                    s = (s + 1) & next_mask
                j += 1
        if nf:
            got = found[:nf]
            if nf > 32:
                got.sort()
            else:  # insertion sort: a caption matches a handful of entries
                for q in range(1, nf):
                    v = got[q]
                    i = q - 1
                    while i >= 0 and got[i] > v:
                        got[i + 1] = got[i]
                        i -= 1
                    got[i + 1] = v
            if nout + nf > len(out):
                grown = np.empty(2 * len(out) + nf, dtype=np.int32)
                grown[:nout] = out[:nout]
                out = grown
            last = -1
            for q in range(nf):
                if got[q] != last:
                    out[nout] = got[q]
                    nout += 1
                    last = got[q]
    list_offsets[n] = nout
    return list_offsets, out[:nout].copy()


def as_captions(column: pa.Array | pa.ChunkedArray) -> tuple[pa.Array, list[str | None] | None]:
    """The column as one ``string`` array, plus per-row errors when it does not hold text (its
    rows then count as missing captions)."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    kind = arr.type
    if pa.types.is_string(kind):
        return arr, None
    if pa.types.is_large_string(kind) or pa.types.is_string_view(kind):
        return arr.cast(pa.string()), None
    blank = pa.nulls(len(arr), type=pa.string())
    if pa.types.is_null(kind):
        return blank, None
    message = f"caption is {kind}, not text"
    return blank, [None if missing else message
                   for missing in arr.is_null().to_numpy(zero_copy_only=False)]


class AhoCorasickMatcher:
    """The same matches as `SubstringMatcher`, found by pyahocorasick (a maintained C library)
    instead of the word trie: the patterns are ``" " + entry + " "``; a batch's spaced
    captions (Arrow compute, MetaCLIP's replacement order) are joined by a character no entry
    holds, so no match can span two captions, and scanned by one ``iter``; numpy maps each
    match back to its caption and sorts and de-duplicates the ids. ``engine: aho_corasick``
    selects it; it is exact but slower than the trie (the per-match Python tuples dominate,
    see the README's MetaCLIP section)."""

    def __init__(self, entries: Sequence[str]) -> None:
        try:
            import ahocorasick
        except ImportError as exc:
            raise CurateError("engine aho_corasick needs pyahocorasick",
                              "pip install pyahocorasick==2.3.1") from exc
        used = set("".join(entries))
        self.sep = next(chr(c) for c in range(0x110000) if chr(c) not in used and c != 32)
        groups: dict[str, list[int]] = {}
        for i, entry in enumerate(entries):
            groups.setdefault(f" {entry} ", []).append(i)
        self.automaton = ahocorasick.Automaton()
        for k, pattern in enumerate(groups):
            self.automaton.add_word(pattern, k)
        self.automaton.make_automaton()
        sizes = np.array([len(v) for v in groups.values()], dtype=np.int64)
        self.group_start = np.concatenate([[0], np.cumsum(sizes)])[:-1]
        self.group_size = sizes
        self.group_ids = np.array([i for v in groups.values() for i in v], dtype=np.int64)

    def match_arrays(self, captions: pa.Array) -> tuple[np.ndarray, np.ndarray]:
        n = len(captions)
        valid = captions.is_valid().to_numpy(zero_copy_only=False)
        spaced = pc.binary_join_element_wise(" ", pc.fill_null(captions, ""), " ", "")
        for ch in PUNCTUATION:
            spaced = pc.replace_substring(spaced, ch, f" {ch} ")
        for ch in BLANKED:
            spaced = pc.replace_substring(spaced, ch, " ")
        lengths = pc.utf8_length(spaced).to_numpy(zero_copy_only=False).astype(np.int64)
        starts = np.concatenate([[0], np.cumsum(lengths + 1)])[:-1]
        found = list(self.automaton.iter(self.sep.join(spaced.to_pylist())))
        ends = np.fromiter((f[0] for f in found), np.int64, len(found))
        groups = np.fromiter((f[1] for f in found), np.int64, len(found))
        rows = np.searchsorted(starts, ends, side="right") - 1
        keep = valid[rows] if len(rows) else np.zeros(0, dtype=bool)
        rows, groups = rows[keep], groups[keep]
        counts = self.group_size[groups]
        rows = np.repeat(rows, counts)
        first = np.repeat(self.group_start[groups], counts)
        within = np.arange(len(rows)) - np.repeat(np.cumsum(counts) - counts, counts)
        ids = self.group_ids[first + within]
        key = np.unique(rows * (1 << 32) + ids)
        rows, ids = key >> 32, (key & 0xFFFFFFFF).astype(np.int32)
        offsets = np.searchsorted(rows, np.arange(n + 1)).astype(np.int32)
        return offsets, ids

    def match(self, captions: pa.Array) -> pa.ListArray:
        offsets, ids = self.match_arrays(captions)
        return pa.ListArray.from_arrays(pa.array(offsets), pa.array(ids))


class MetaclipMatchParams(Params):
    path_fields = ("metadata",)  # local paths: saved absolute (curate.saved)
    metadata: str | None = None  # a JSON list of strings; default: metadata/wordnet.json
    # trie: curate's word trie (numba), the fast default; aho_corasick: pyahocorasick, exact too
    engine: Literal["trie", "aho_corasick"] = "trie"
    texts: str | None = None  # a json field with the sample's texts (see the module docs)


def json_texts(docs: Sequence[str | None], field: str,
               with_lang: bool = False) -> tuple[list[list[str]], list[list[str | None]],
                                                 list[str | None]]:
    """Per sample, the texts listed in ``field`` of its json member (and, with ``with_lang``,
    each record's language: item 2 of a ``[key, text, lang]`` record, else None), plus one
    error message (or None) per sample. Items are strings or MetaCLIP records, text at 1."""
    texts: list[list[str]] = []
    langs: list[list[str | None]] = []
    errors: list[str | None] = []
    for doc in docs:
        got: list[str] = []
        got_langs: list[str | None] = []
        error = None
        try:
            value = json.loads(doc) if doc is not None else None
        except (ValueError, RecursionError):
            value, error = None, "json member is not valid JSON"
        if error is None:
            items = value.get(field) if isinstance(value, dict) else None
            if not isinstance(items, list):
                error = (f"json has no {field!r} list of texts" if isinstance(value, dict)
                         else "json member is not an object")
            else:
                for item in items:
                    if isinstance(item, str):
                        got.append(item)
                        got_langs.append(None)
                    elif (isinstance(item, list) and len(item) in (2, 3)
                          and isinstance(item[1], str)):
                        got.append(item[1])
                        lang = item[2] if len(item) == 3 else None
                        got_langs.append(lang if isinstance(lang, str) else None)
                    else:
                        error = (f"{field!r} item {json.dumps(item)[:60]} is neither a text "
                                 "nor a [key, text] / [key, text, lang] record")
                        break
        if error is not None:
            got, got_langs = [], []
        texts.append(got)
        langs.append(got_langs if with_lang else [])
        errors.append(error)
    return texts, langs, errors


def nest(per_row: Sequence[int], inner: pa.Array) -> pa.ListArray:
    """A ``list<inner type>`` array grouping ``inner`` into rows of ``per_row`` items."""
    offsets = np.concatenate(([0], np.cumsum(np.asarray(per_row, dtype=np.int64))))
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), inner)


@register
class MetaclipMatch(Scorer):
    name = "metaclip_match"
    Params = MetaclipMatchParams
    version = 2  # adds metaclip_metadata; several texts per image

    def __init__(self, params: MetaclipMatchParams | None = None) -> None:
        super().__init__(params)
        from curate.lib.metadata import DEFAULT_METADATA

        p: MetaclipMatchParams = self.params  # type: ignore[assignment]
        # Resolved here, on the driver: workers may run in another directory.
        self.metadata_path = Path(p.metadata).resolve() if p.metadata else DEFAULT_METADATA
        self._matcher: SubstringMatcher | AhoCorasickMatcher | None = None
        self._fingerprint: str | None = None
        self._digest: str | None = None

    def fingerprint(self) -> str:
        """Also changes when the metadata file's content does (entry ids would)."""
        if self._fingerprint is None:
            try:
                digest = hashlib.sha256(self.metadata_path.read_bytes()).hexdigest()
            except OSError:
                digest = "unreadable"  # setup() will say why
            blob = f"{super().fingerprint()}|{digest}"
            self._fingerprint = hashlib.sha256(blob.encode()).hexdigest()[:16]
        return self._fingerprint

    def inputs(self) -> tuple[str, ...]:
        return ("json",) if self.params.texts else ("caption",)  # type: ignore[attr-defined]

    def outputs(self) -> Mapping[str, pa.DataType]:
        ids = pa.list_(pa.int32())
        return {"metaclip_entries": pa.list_(ids) if self.params.texts else ids,  # type: ignore[attr-defined]
                "metaclip_matches": pa.int32(), "metaclip_metadata": pa.string()}

    def check(self) -> None:
        from curate.lib.metadata import load_metadata

        load_metadata(self.metadata_path)

    def setup(self) -> None:
        from curate.lib.metadata import load_metadata, metadata_digest

        entries = load_metadata(self.metadata_path)
        self._digest = metadata_digest(self.metadata_path)
        engine = self.params.engine  # type: ignore[attr-defined]
        self._matcher = SubstringMatcher(entries) if engine == "trie" else AhoCorasickMatcher(
            entries)

    def score_batch(self, batch: pa.Table) -> Mapping[str, Sequence[str | None] | pa.Array]:
        if self._matcher is None:
            self.setup()
        assert self._matcher is not None
        field: str | None = self.params.texts  # type: ignore[attr-defined]
        digest = pa.array([self._digest] * batch.num_rows, type=pa.string())
        if field:
            texts, _, errors = json_texts(batch.column("json").to_pylist(), field)
            flat = pa.array([t for row in texts for t in row], type=pa.string())
            offsets, ids = self._matcher.match_arrays(flat)
            per_text = pa.ListArray.from_arrays(pa.array(offsets), pa.array(ids))
            sizes = [len(row) for row in texts]
            rows = np.repeat(np.arange(len(sizes)), sizes)
            totals = np.bincount(rows, weights=np.diff(offsets), minlength=len(sizes))
            return {"metaclip_entries": nest(sizes, per_text),
                    "metaclip_matches": pa.array(totals.astype(np.int32)),
                    "metaclip_metadata": digest, SAMPLE_ERRORS: errors}
        captions, errors = as_captions(batch.column("caption"))
        offsets, ids = self._matcher.match_arrays(captions)
        out: dict[str, Sequence[str | None] | pa.Array] = {
            "metaclip_entries": pa.ListArray.from_arrays(pa.array(offsets), pa.array(ids)),
            "metaclip_matches": pa.array(np.diff(offsets)),
            "metaclip_metadata": digest,
        }
        if errors is not None:
            out[SAMPLE_ERRORS] = errors
        return out
