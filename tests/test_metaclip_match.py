"""metaclip_match against a plain reference loop of MetaCLIP's substring matching."""

from __future__ import annotations

import hashlib
import json
import random
import sys
from pathlib import Path

import pyarrow as pa
import pytest
from stagetest import score

from curate.errors import CurateError
from curate.lib.metadata import DEFAULT_METADATA
from curate.schema import BATCH_SCHEMA
from curate.stages.base import BatchErrors, registered, run_scorer
from curate.stages.metaclip_match import (
    AhoCorasickMatcher,
    MetaclipMatch,
    MetaclipMatchParams,
    SubstringMatcher,
)


def spaced(text: str) -> str:
    """MetaCLIP's ``spacing``, written out again here as the reference."""
    text = f" {text} "
    for p in (",", ".", ";", ":", "?", "!", "`"):
        text = text.replace(p, f" {p} ")
    for c in ("\t", "\n", "\r"):
        text = text.replace(c, " ")
    return text


def reference(captions: list[str | None], entries: list[str]) -> list[list[int]]:
    """MetaCLIP's loop: every entry id whose `` entry `` is in the spaced caption."""
    out = []
    for caption in captions:
        text = spaced(caption) if caption is not None else None
        out.append([] if text is None else
                   [i for i, e in enumerate(entries) if f" {e} " in text])
    return out


def write_metadata(path: Path, entries: list[str]) -> str:
    path.write_text(json.dumps(entries, ensure_ascii=False), encoding="utf-8")
    return str(path)


def scorer_for(tmp_path: Path, entries: list[str]) -> MetaclipMatch:
    return MetaclipMatch(MetaclipMatchParams(metadata=write_metadata(tmp_path / "m.json",
                                                                      entries)))


ENTRIES = [
    "new york", "york city", "new york city", "york", "New York", "city",   # overlaps, case
    "hot dog", "dog", "hot", "a dog", "dog park",
    "St.", "st", "Mr. Smith", "u.s.", "e.g",     # dotted: "St." and "Mr. Smith" never match
    "ice cream", "ice", "cream", "café", "Café", "crème brûlée", "東京", "東京 タワー", "🐱",
    "🐱 cat", "naïve", "hello world", "world", "a b c", "b c", "a", "b", "c",
    "?", "!", ",", ":", ";", "`", ".",          # lone punctuation: matches once padded
    "wait , what", "x ; y", "p : q",           # entries written with padded punctuation
    "tab", "line", "two  spaces", " lead", "trail ", "",
    "100", "3", "u2",
]

CORPUS: list[str | None] = [
    "new york city at night",
    "New York City, New York.",
    "a hot dog in new york",
    "the dog park; a dog, a hot dog!",
    "St. Louis and st louis",
    "Mr. Smith went to the u.s. e.g. today",
    "ice cream, ice, cream: crème brûlée?",
    "Café café CAFÉ",
    "東京 タワー and 東京タワー",
    "🐱 cat 🐱🐱 cat",
    "naïve naive",
    "hello world hello world hello world",
    "a b c d",
    "abc a-b c",
    "wait, what? x;y p:q",
    "tab\tline\nline\r\ncarriage\rreturn",
    "two  spaces and two spaces",
    "lead trail",
    "`backticks` and 'quotes'",
    "100 dogs, 3 cats and u2",
    "",
    " ",
    "   ",
    None,
    "dog",
    "Dog DOG dOg",
    "new\tyork",
    "new york\ncity",
    "york city new york",
    "...",
    "a.b,c;d:e?f!g`h",
]


def test_documented_examples() -> None:
    m = SubstringMatcher(["new york", "york city", "St.", "dog", "Dog", "", "new york"])
    got = m.match(pa.array([
        "new york city",         # overlapping entries share the space between them
        "Photo of a dog. Dog!",  # case-sensitive; punctuation is padded before matching
        "St. Patrick",           # an entry holding "." never matches ...
        "dog dog dog",           # ... and an entry found three times counts once
        None,                    # no caption: nothing (not even the empty entry)
        "",                      # "" spaces to "  ", which holds " " + "" + " "
        "new\tyork",             # tabs and newlines become spaces
    ])).to_pylist()
    assert got == [[0, 1, 6], [3, 4, 5], [5], [3], [], [5], [0, 6]]


def test_corpus_matches_reference(tmp_path: Path) -> None:
    expected = reference(CORPUS, ENTRIES)
    assert SubstringMatcher(ENTRIES).match(pa.array(CORPUS)).to_pylist() == expected
    out, errors = score(scorer_for(tmp_path, [e for e in ENTRIES if e]),
                        [{"caption": c} for c in CORPUS])
    nonempty = [e for e in ENTRIES if e]  # load_metadata rejects the empty entry
    assert [r["metaclip_entries"] for r in out] == reference(CORPUS, nonempty)
    assert [r["metaclip_matches"] for r in out] == [len(x) for x in reference(CORPUS, nonempty)]
    assert all(s is None for s in errors.stage)
    # A few facts the reference shows, so that a wrong reference cannot hide them.
    york_city = expected[0]
    assert {ENTRIES.index(e) for e in ("new york", "york city", "new york city", "york",
                                       "city")} <= set(york_city)
    assert ENTRIES.index("St.") not in {i for ids in expected for i in ids}
    assert ENTRIES.index("Mr. Smith") not in {i for ids in expected for i in ids}


def test_repeated_entries_all_match() -> None:
    entries = ["dog", "cat", "dog", "hot dog", "dog", "cat"]
    captions = ["a hot dog", "cat and dog", "no pets", None]
    got = SubstringMatcher(entries).match(pa.array(captions)).to_pylist()
    assert got == reference(captions, entries) == [[0, 2, 3, 4], [0, 1, 2, 4, 5], [], []]


def test_long_captions_and_dense_matches() -> None:
    """Captions whose words and matches are as many as the kernel's buffers allow for."""
    entries = [",", "a", "a a", "a a a", ",", "new york", "york city", "new york city", "a a",
               ", ,", ""]
    captions = [",," * 3000, "a " * 3000, "new york city " * 400, ", " * 2000 + "a",
                "short", "\n" * 100, "a" * 10000]
    got = SubstringMatcher(entries).match(pa.array(captions)).to_pylist()
    assert got == reference(captions, entries)
    assert got[1] == [1, 2, 3, 8, 10]


def test_missing_numba_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "numba", None)
    with pytest.raises(CurateError, match="numba"):
        SubstringMatcher(["dog"])


def _random_case(seed: int, n_captions: int) -> tuple[list[str], list[str | None]]:
    """Entries and captions that share words, with punctuation, case, unicode and odd spaces."""
    rng = random.Random(seed)
    words = ["new", "york", "city", "New", "York", "hot", "dog", "Dog", "park", "a", "the", "of",
             "ice", "cream", "café", "Café", "東京", "タワー", "🐱", "naïve", "St", "St.", "u.s.",
             "3", "100", "red", "blue", "car", "x", "y", "-", "'s", "o'clock", "ü"]
    glue = [" "] * 12 + ["  ", "\t", "\n", "\r\n", ", ", ". ", "; ", ": ", "? ", "! ", "`",
                         ",", ".", "!", "?"]
    entries = list(dict.fromkeys(
        " ".join(rng.choice(words) for _ in range(rng.choice((1, 1, 1, 2, 2, 3, 4))))
        for _ in range(400)))
    entries += ["wait , what", "?", ".", ",", "york .", " dog", "dog ", "a  b"]
    captions: list[str | None] = []
    for _ in range(n_captions):
        if rng.random() < 0.02:
            captions.append(rng.choice([None, "", " ", "\n"]))
            continue
        n = rng.randint(1, 14)
        parts = [rng.choice(words) for _ in range(n)]
        text = "".join(w + rng.choice(glue) for w in parts[:-1]) + parts[-1]
        if rng.random() < 0.3:
            text += rng.choice(".!?,;:`")
        if rng.random() < 0.1:
            text = rng.choice(["", " ", "\t"]) + text + rng.choice(["", " ", "\n"])
        captions.append(text)
    return entries, captions


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_captions_match_reference(seed: int) -> None:
    entries, captions = _random_case(seed, 3000)
    expected = reference(captions, entries)
    assert sum(map(len, expected)) > 3 * len(captions)  # the corpus does match, a lot
    matcher = SubstringMatcher(entries)
    assert matcher.match(pa.array(captions)).to_pylist() == expected
    # The same on sliced batches (Arrow offsets not at zero) of uneven sizes.
    arr = pa.array(captions)
    start, got = 0, []
    rng = random.Random(seed)
    while start < len(captions):
        size = rng.choice((1, 7, 256, 1000))
        got += matcher.match(arr.slice(start, size)).to_pylist()
        start += size
    assert got == expected


def test_random_captions_through_the_scorer(tmp_path: Path) -> None:
    entries, captions = _random_case(7, 2000)
    out, errors = score(scorer_for(tmp_path, entries), [{"caption": c} for c in captions])
    expected = reference(captions, entries)
    assert [r["metaclip_entries"] for r in out] == expected
    assert [r["metaclip_matches"] for r in out] == [len(x) for x in expected]
    assert all(s is None for s in errors.stage)


def test_output_types_and_registration(tmp_path: Path) -> None:
    assert registered("scorer")["metaclip_match"] is MetaclipMatch
    scorer = scorer_for(tmp_path, ["dog"])
    assert scorer.outputs() == {"metaclip_entries": pa.list_(pa.int32()),
                                "metaclip_matches": pa.int32(),
                                "metaclip_metadata": pa.string()}
    scorer.setup()
    got = scorer.score_batch(pa.table({"caption": pa.chunked_array(
        [["a dog", None], ["dog dog"]], type=pa.large_string())}))
    assert got["metaclip_entries"].type == pa.list_(pa.int32())
    assert got["metaclip_entries"].to_pylist() == [[0], [], [0]]
    assert got["metaclip_matches"].to_pylist() == [1, 0, 1]
    # every row names the metadata file it was matched against (16 hex digits of its SHA-256)
    digest = hashlib.sha256((tmp_path / "m.json").read_bytes()).hexdigest()[:16]
    assert got["metaclip_metadata"].to_pylist() == [digest] * 3


def test_several_texts_per_image_are_matched_one_by_one(tmp_path: Path) -> None:
    """``texts: FIELD``: each text of the json list (strings or MetaCLIP's [key, text] and
    [key, text, lang] records) is matched on its own, in the list's order."""
    entries, captions = _random_case(3, 300)
    path = write_metadata(tmp_path / "m.json", entries)
    scorer = MetaclipMatch(MetaclipMatchParams(metadata=path, texts="texts"))
    assert scorer.inputs() == ("json",)
    assert scorer.outputs()["metaclip_entries"] == pa.list_(pa.list_(pa.int32()))
    groups = [[c for c in captions[i:i + k] if c is not None]
              for i, k in zip(range(0, 300, 5), [0, 1, 2, 3, 5] * 12, strict=True)]
    docs = []
    for g, texts in enumerate(groups):
        items: list[object] = list(texts)
        if g % 3 == 1:
            items = [["alt", t] for t in texts]
        elif g % 3 == 2:
            items = [["title", t, "en"] for t in texts]
        docs.append({"json": json.dumps({"texts": items, "url": "x"})})
    docs += [{"json": json.dumps({"caption": "a"})}, {"json": "[1]"}, {"json": "{"},
             {"json": json.dumps({"texts": [["alt", 3]]})}, {"json": None}]
    out, errors = score(scorer, docs)
    expected = [reference(g, entries) for g in groups]
    assert [r["metaclip_entries"] for r in out[:len(groups)]] == expected
    assert [r["metaclip_matches"] for r in out[:len(groups)]] == [
        sum(map(len, e)) for e in expected]
    assert errors.message[len(groups):] == [
        "json has no 'texts' list of texts", "json member is not an object",
        "json member is not valid JSON",
        "'texts' item [\"alt\", 3] is neither a text nor a [key, text] / [key, text, lang] "
        "record", "json member is not an object"]
    assert [r["metaclip_entries"] for r in out[len(groups):]] == [None] * 5


def test_captions_that_are_not_text_fail_as_samples(tmp_path: Path) -> None:
    scorer = scorer_for(tmp_path, ["1", "dog"])
    scorer.setup()
    fields = [f if f.name != "caption" else pa.field("caption", pa.int64())
              for f in BATCH_SCHEMA]
    rows = [{"uid": f"{i:032x}", "shard": "s.tar", "key": str(i), "index": i, "status": "ok",
             "caption": c} for i, c in enumerate([1, None])]
    batch = pa.Table.from_pylist(rows, schema=pa.schema(fields))
    errors = BatchErrors.from_batch(batch)
    out = run_scorer(scorer, batch, errors)
    assert errors.stage == ["metaclip_match", None]
    assert errors.message[0] == "caption is int64, not text"
    assert out.column("metaclip_entries").to_pylist() == [None, []]


@pytest.mark.parametrize(("content", "message"), [
    (None, "not found"),
    ("[\"dog\", ", "not valid JSON"),
    ("{\"dog\": 1}", "not a list"),
    ("[\"dog\", 3]", "entry 1 is a JSON number"),
    ("[\"dog\", \"dog\"]", "repeats entry 0"),
    ("[]", "empty list"),
])
def test_bad_metadata_file_is_a_clear_error(tmp_path: Path, content: str | None,
                                            message: str) -> None:
    path = tmp_path / "metadata.json"
    if content is not None:
        path.write_text(content, encoding="utf-8")
    scorer = MetaclipMatch(MetaclipMatchParams(metadata=str(path)))
    with pytest.raises(CurateError, match=message):
        scorer.setup()


def test_fingerprint_follows_the_metadata_content(tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    write_metadata(path, ["dog", "cat"])
    before = MetaclipMatch(MetaclipMatchParams(metadata=str(path))).fingerprint()
    write_metadata(path, ["cat", "dog"])
    after = MetaclipMatch(MetaclipMatchParams(metadata=str(path))).fingerprint()
    assert before != after


@pytest.mark.skipif(not DEFAULT_METADATA.is_file(), reason="metadata/wordnet.json not shipped")
def test_default_is_the_shipped_wordnet_metadata() -> None:
    scorer = MetaclipMatch()
    assert scorer.metadata_path == DEFAULT_METADATA
    entries = json.loads(DEFAULT_METADATA.read_text(encoding="utf-8"))
    captions = ["a hot dog on a bun, with mustard.", "New York at night", "ice cream cone"]
    out, _ = score(scorer, [{"caption": c} for c in captions])
    expected = reference(captions, entries)
    assert [r["metaclip_entries"] for r in out] == expected
    ids = {e: entries.index(e) for e in ("ice cream", "ice", "cream", "cone", "mustard")}
    assert {ids["ice cream"], ids["ice"], ids["cream"], ids["cone"]} <= set(expected[2])
    assert ids["mustard"] in expected[0]  # "mustard." is spaced to "mustard ."


# The pyahocorasick engine (engine: aho_corasick) must give exactly the same matches.

def test_aho_corasick_engine_edge_cases() -> None:
    m = AhoCorasickMatcher(["new york", "york city", "St.", "dog", "Dog", "", "new york"])
    got = m.match(pa.array(["new york city", "Photo of a dog. Dog!", "St. Patrick",
                            "dog dog dog", None, "", "new\tyork"])).to_pylist()
    assert got == [[0, 1, 6], [3, 4, 5], [5], [3], [], [5], [0, 6]]
    assert AhoCorasickMatcher(ENTRIES).match(pa.array(CORPUS)).to_pylist() == reference(
        CORPUS, ENTRIES)
    entries = ["dog", "cat", "dog", "hot dog", "dog", "cat"]
    captions = ["a hot dog", "cat and dog", "no pets", None]
    assert AhoCorasickMatcher(entries).match(pa.array(captions)).to_pylist() == reference(
        captions, entries)
    dense = [",", "a", "a a", "a a a", "new york", "york city", "new york city", ""]
    long_captions = [",," * 3000, "a " * 3000, "new york city " * 400, "\n" * 100]
    assert AhoCorasickMatcher(dense).match(pa.array(long_captions)).to_pylist() == reference(
        long_captions, dense)


@pytest.mark.parametrize("seed", [0, 1])
def test_aho_corasick_engine_matches_reference(seed: int) -> None:
    entries, captions = _random_case(seed, 3000)
    expected = reference(captions, entries)
    matcher = AhoCorasickMatcher(entries)
    arr = pa.array(captions)
    start, got = 0, []
    rng = random.Random(seed)
    while start < len(captions):
        size = rng.choice((1, 7, 256, 1000))
        got += matcher.match(arr.slice(start, size)).to_pylist()
        start += size
    assert got == expected


def test_engine_parameter(tmp_path: Path) -> None:
    entries, captions = _random_case(5, 500)
    path = write_metadata(tmp_path / "m.json", entries)
    rows = [{"caption": c} for c in captions]
    trie, _ = score(MetaclipMatch(MetaclipMatchParams(metadata=path)), rows)
    ac, _ = score(MetaclipMatch(MetaclipMatchParams(metadata=path, engine="aho_corasick")), rows)
    assert [r["metaclip_entries"] for r in ac] == [r["metaclip_entries"] for r in trie] == \
        reference(captions, entries)
