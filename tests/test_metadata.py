"""MetaCLIP metadata: WordNet parsing (a hand-written fixture and Debian's WordNet 3.0), the
build with user lists, the shipped file, the loader's errors and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import curate_cli

from curate.errors import CurateError
from curate.lib.metadata import (
    DEFAULT_METADATA,
    NUMBERS,
    WORDNET_DIR,
    build_metadata,
    count_unmatchable,
    load_metadata,
    wordnet_entries,
    wordnet_synset_names,
    wordnet_version,
)

needs_wordnet = pytest.mark.skipif(
    not (WORDNET_DIR / "data.noun").is_file(),
    reason=f"Debian's WordNet is not installed in {WORDNET_DIR} (apt-get install wordnet-base)")

# WordNet data files in their real format (wndb(5)): a licence header whose lines start with two
# spaces, then one synset per line: offset, lex_filenum, ss_type, w_cnt (hex), word/lex_id pairs,
# pointer count and pointers, (verbs: frames), "|" gloss.
HEADER = ("  1 This software and database is being provided to you, the LICENSEE, by  \n"
          "  2 WordNet 3.0 Copyright 2006 by Princeton University.  All rights reserved.  \n")
FIXTURE = {
    "data.adj": HEADER
    + "00001740 00 a 01 able 0 001 ! 00002098 a 0101 | having the necessary means\n"
    + "00002098 00 a 01 unable 0 001 ! 00001740 a 0101 | not having the necessary means\n"
    + "00020103 00 s 02 outback(a) 0 remote 0 001 & 00019731 a 0000 | of the back country\n"
    + "00076921 00 a 01 afloat(p) 0 000 | borne on the water\n"
    + "03146311 01 a 02 .22_caliber 0 .22-calibre 0 000 | of a firearm\n"
    + "00024619 00 s 01 used_to(p) 0 001 & 00024356 a 0000 | in the habit\n",
    "data.adv": HEADER
    + "00099887 02 r 01 et_al. 0 000 | and others\n"
    + "00002100 02 r 02 ABLY 0 capably 0 000 | in a competent manner\n",
    "data.noun": HEADER
    + "02084071 05 n 03 dog 0 domestic_dog 0 Canis_familiaris 0 000 | a domesticated canid\n"
    + "10023039 18 n 01 dog 1 000 | a dull unattractive unpleasant girl or woman\n"
    + "08932568 15 n 04 Paris 0 City_of_Light 0 French_capital 0 capital_of_France 0 000 "
      "| the capital of France\n"
    + "07614500 13 n 02 ice_cream 0 icecream 0 000 | frozen dessert\n"
    + "08710325 15 n 03 St._John's 1 Saint_John's 1 capital_of_Antigua_and_Barbuda 0 000 "
      "| port city\n"
    + "13742573 23 n 01 two 0 000 | the cardinal number\n",
    "data.verb": HEADER
    + "00018813 30 v 01 clear_up 0 000 01 + 01 00 | become clear\n"
    + "00002325 29 v 01 dog 0 000 01 + 08 00 | go after with the intent to catch\n",
}
# NLTK order: adj (head adjectives and satellites in file order), adv, noun, verb.
FIXTURE_NAMES = ["able", "unable", "outback", "afloat", "", "used to",
                 "et al", "ably",
                 "dog", "dog", "paris", "ice cream", "st", "two",
                 "clear up", "dog"]


@pytest.fixture
def wordnet_fixture(tmp_path: Path) -> Path:
    root = tmp_path / "wordnet"
    root.mkdir()
    for name, text in FIXTURE.items():
        (root / name).write_text(text)
    return root


def test_fixture_names_follow_nltk_and_metaclip(wordnet_fixture: Path) -> None:
    assert wordnet_synset_names(wordnet_fixture) == FIXTURE_NAMES
    # distinct, non-empty, first occurrence first
    assert wordnet_entries(wordnet_fixture) == [
        "able", "unable", "outback", "afloat", "used to", "et al", "ably", "dog", "paris",
        "ice cream", "st", "two", "clear up"]
    assert wordnet_version(wordnet_fixture) == "3.0"


def test_fixture_build_with_user_lists(wordnet_fixture: Path, tmp_path: Path) -> None:
    unigrams = tmp_path / "unigrams.tsv"
    unigrams.write_text("cat\t150\nable\t900\nkitten 100\nrare\t99\n,\t5000\n\n7\t400\n")
    bigrams = tmp_path / "bigrams.txt"
    bigrams.write_text("hot dog\n  new york  \n\ncat\n")
    titles = tmp_path / "titles.txt"
    titles.write_text("St. Louis\nNew York\nhot dog\n-\nWhat?\n")
    out = tmp_path / "sub" / "meta.json"

    r = build_metadata(out, wordnet_dir=wordnet_fixture, unigrams=unigrams, min_count=100,
                       bigrams=bigrams, titles=titles)

    entries = json.loads(out.read_text())
    assert entries == [*NUMBERS, *wordnet_entries(wordnet_fixture),
                       "cat", "kitten", "hot dog", "new york", "St. Louis", "New York", "What?"]
    assert entries[:100] == [str(i) for i in range(100)]          # id i is str(i)
    assert {c.name: (c.given, c.kept, c.added) for c in r.sources} == {
        "numbers": (100, 100, 100),
        "wordnet": (16, 15, 13),         # one empty name (".22_caliber"), dog x3
        "unigrams": (6, 4, 2),           # rare < 100, "," is punctuation; able, 7 are known
        "bigrams": (3, 3, 2),            # cat came with the unigrams
        "titles": (5, 4, 3),             # "-" is punctuation; hot dog came with the bigrams
    }
    assert r.total == len(entries) == 100 + 13 + 7
    assert r.unmatchable == 2            # "St. Louis" and "What?" can never match a caption
    assert r.wordnet_version == "3.0"
    assert load_metadata(out) == entries


def test_min_count_and_unigram_formats(wordnet_fixture: Path, tmp_path: Path) -> None:
    unigrams = tmp_path / "u.txt"
    unigrams.write_text("a1\t5\na2 4\n  a3\t 6  \n")
    r = build_metadata(tmp_path / "m.json", wordnet_dir=wordnet_fixture, unigrams=unigrams,
                       min_count=5)
    assert json.loads((tmp_path / "m.json").read_text())[-2:] == ["a1", "a3"]
    assert r.sources[-1].name == "unigrams"

    unigrams.write_text("ok\t3\n\nnew york\t12\n")
    with pytest.raises(CurateError, match=r"u\.txt, line 3: 'new york\\t12' is not"):
        build_metadata(tmp_path / "m.json", wordnet_dir=wordnet_fixture, unigrams=unigrams)
    unigrams.write_text("word\tmany\n")
    with pytest.raises(CurateError, match="line 1"):
        build_metadata(tmp_path / "m.json", wordnet_dir=wordnet_fixture, unigrams=unigrams)
    with pytest.raises(CurateError, match=r"bigrams list .*nope\.txt not found"):
        build_metadata(tmp_path / "m.json", wordnet_dir=wordnet_fixture,
                       bigrams=tmp_path / "nope.txt")
    with pytest.raises(CurateError, match="min-count"):
        build_metadata(tmp_path / "m.json", wordnet_dir=wordnet_fixture, min_count=-1)


def test_missing_or_broken_wordnet(wordnet_fixture: Path, tmp_path: Path) -> None:
    with pytest.raises(CurateError, match="not found") as exc:
        wordnet_entries(tmp_path / "absent")
    assert exc.value.hint is not None and "apt-get install" in exc.value.hint
    assert "wordnet-base" in exc.value.hint

    (wordnet_fixture / "data.verb").unlink()
    with pytest.raises(CurateError, match=r"lacks data\.verb"):
        build_metadata(tmp_path / "m.json", wordnet_dir=wordnet_fixture)
    assert not (tmp_path / "m.json").exists()

    (wordnet_fixture / "data.verb").write_text(HEADER + "00018813 30 v clear_up 0 | broken\n")
    with pytest.raises(CurateError, match=r"data\.verb, line 3: not a WordNet synset line"):
        wordnet_synset_names(wordnet_fixture)


def test_unmatchable_counts_metaclip_spaced_characters() -> None:
    assert count_unmatchable(["a b", "it's", "x-ray", "a.b", "a,b", "a;b", "a:b", "a?", "a!",
                              "a`b", "a\tb"]) == 8


@needs_wordnet
def test_debian_wordnet() -> None:
    names = wordnet_synset_names()
    assert len(names) == 117659                       # WordNet 3.0 synsets
    assert names.count("") == 3                       # .22, .38, .45 caliber
    entries = wordnet_entries()
    assert len(entries) == 86554
    assert len(set(entries)) == len(entries) and "" not in entries
    assert entries[:3] == ["able", "unable", "abaxial"]   # data.adj comes first in NLTK
    assert entries[-1] == "fog up"                        # data.verb comes last
    position = {e: i for i, e in enumerate(entries)}
    assert position["quickly"] < position["dog"] < position["clear up"]    # adv < noun < verb
    # the first lemma, syntactic marker stripped, lowercased, cut at its first ".", "_" → " "
    for name in ("outback", "used to", "afloat", "ice cream", "paris", "new york", "st", "ph",
                 "lake st", "et al", "mr", "wrangell-st"):
        assert name in position, name
    for absent in ("Paris", "outback(a)", "ice_cream", "st. john's", "domestic dog",
                   "capital of antigua and barbuda"):   # not first lemmas
        assert absent not in position, absent
    assert count_unmatchable(entries) == 0
    assert all(e == e.lower() for e in entries)
    assert wordnet_version() == "3.0"


@needs_wordnet
def test_shipped_file_equals_a_fresh_build(tmp_path: Path) -> None:
    r = build_metadata(tmp_path / "wordnet.json")
    assert (tmp_path / "wordnet.json").read_bytes() == DEFAULT_METADATA.read_bytes()
    assert r.total == 86654 and r.unmatchable == 0


def test_shipped_file_loads() -> None:
    entries = load_metadata(DEFAULT_METADATA)
    assert len(entries) == 86654
    assert entries[:100] == list(NUMBERS)
    assert entries[100:103] == ["able", "unable", "abaxial"]


@pytest.mark.parametrize(("content", "message"), [
    ("[\"a\", \"b\",]", r"not valid JSON: .*\(line 1, column"),
    ("{\"entries\": [\"a\"]}", "holds a JSON object, not a list of strings"),
    ("\"cat\"", "holds a JSON string, not a list"),
    ("[]", "empty list"),
    ("[\"a\", 3, \"b\"]", r"entry 1 is a JSON number \(3\), not a string"),
    ("[\"a\", [\"b\"]]", r"entry 1 is a JSON list"),
    ("[\"a\", null]", r"entry 1 is a JSON null"),
    ("[\"a\", \"\"]", "entry 1 is an empty string"),
    ("[\"a\", \"b\", \"a\"]", r"entry 2 \('a'\) repeats entry 0"),
])
def test_load_metadata_rejects(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "metadata.json"
    path.write_text(content)
    with pytest.raises(CurateError, match=message) as exc:
        load_metadata(path)
    assert str(path) in exc.value.message
    assert exc.value.hint is not None and "JSON list of strings" in exc.value.hint


def test_load_metadata_unreadable(tmp_path: Path) -> None:
    with pytest.raises(CurateError, match=r"metadata file .*absent\.json not found"):
        load_metadata(tmp_path / "absent.json")
    with pytest.raises(CurateError, match="is a directory"):
        load_metadata(tmp_path)
    (tmp_path / "latin1.json").write_bytes(b'["caf\xe9"]')
    with pytest.raises(CurateError, match="not UTF-8"):
        load_metadata(tmp_path / "latin1.json")


def test_load_metadata_keeps_metaclip_entries_unchanged(tmp_path: Path) -> None:
    # MetaCLIP's released file: one line, ASCII escapes, entries as written
    entries = ["St. Louis", "Pokémon", "0", "new york", "C++", " spaced "]
    path = tmp_path / "metadata.json"
    path.write_text(json.dumps(entries))
    assert load_metadata(path) == entries


def test_cli_build(wordnet_fixture: Path, tmp_path: Path) -> None:
    (tmp_path / "u.tsv").write_text("cat\t3\ndog\t1\n")
    (tmp_path / "t.txt").write_text("St. Louis\n")
    out = tmp_path / "m.json"
    res = curate_cli("metadata", "build", "--out", str(out), "--wordnet-dir",
                     str(wordnet_fixture), "--unigrams", str(tmp_path / "u.tsv"),
                     "--min-count", "2", "--titles", str(tmp_path / "t.txt"))
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0] == f"wrote 115 metadata entries to {out} (WordNet 3.0 from {wordnet_fixture})"
    assert lines[2].split() == ["numbers", "100", "100", "100"]
    assert lines[3].split() == ["wordnet", "16", "15", "13"]
    assert lines[4].split() == ["unigrams", "2", "1", "1"]
    assert lines[5].split() == ["titles", "1", "1", "1"]
    assert lines[6].split()[0] == "1"
    assert load_metadata(out)[-2:] == ["cat", "St. Louis"]


def test_cli_errors(tmp_path: Path) -> None:
    res = curate_cli("metadata", "build", "--out", str(tmp_path / "m.json"), "--wordnet-dir",
                     str(tmp_path / "none"))
    assert res.returncode == 2
    assert res.stderr.splitlines() == [
        f"error: WordNet directory {tmp_path / 'none'} not found",
        "hint: install WordNet 3.0 from Debian: apt-get update && apt-get install -y "
        "--no-install-recommends wordnet-base (or pass --wordnet-dir DIR with data.adj, "
        "data.adv, data.noun, data.verb)"]
    res = curate_cli("metadata", "build", "--out", str(tmp_path / "m.json"), "--min-count", "5")
    assert res.returncode == 2 and "--min-count applies to --unigrams" in res.stderr
    res = curate_cli("metadata")
    assert res.returncode == 2 and "ACTION" in res.stderr
