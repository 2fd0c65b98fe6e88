"""wordnet_entity: NLTK 3.8.1's ``wordnet.synsets(word)[0].offset()`` as DataComp's text_based
baseline uses it, on a hand-written WordNet and on Debian's WordNet 3.0."""

from __future__ import annotations

from pathlib import Path

import pytest
from stagetest import score

from curate.errors import CurateError
from curate.lib.metadata import WORDNET_DIR
from curate.lib.wordnet import WordNetIndex, load_wordnet_ids
from curate.stages.wordnet_entity import WordNetEntity, WordNetEntityParams

LICENCE = "  1 This software and database is being provided to you, the LICENSEE, by  \n"

# index.<pos> lines in wndb(5) format: lemma pos synset_cnt p_cnt [ptr...] sense_cnt
# tagsense_cnt offset... ; "breathe" (verb) shares the offset 00001740 with "entity" (noun).
FIXTURE = {
    "index.noun": ["box n 1 1 @ 1 0 02883344", "dog n 2 2 @ ~ 2 1 02084071 10114209",
                   "entity n 1 0 1 0 00001740", "goose n 1 0 1 0 01855672",
                   "ice_cream n 1 0 1 0 07614500", "man n 1 0 1 0 10287213"],
    "index.verb": ["breathe v 1 0 1 0 00001740", "dog v 1 0 1 0 02005948",
                   "run v 1 0 1 0 01926311"],
    "index.adj": ["red a 1 0 1 0 00381097"],
    "index.adv": ["quickly r 1 0 1 0 00085811"],
    "noun.exc": ["geese goose"],
    "verb.exc": ["ran run"],
    "adj.exc": ["redder red"],
    "adv.exc": [],
}


def write_wordnet(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, lines in FIXTURE.items():
        head = LICENCE if name.startswith("index.") else ""
        (root / name).write_text(head + "".join(f"{x}  \n" for x in lines), encoding="utf-8")
    return root


@pytest.fixture
def wordnet(tmp_path: Path) -> WordNetIndex:
    return WordNetIndex(write_wordnet(tmp_path / "wordnet"))


@pytest.mark.parametrize(("word", "offset"), [
    ("dog", 2084071),      # a noun and a verb: nouns come first, then the first sense
    ("Dogs", 2084071),     # lower-cased, then morphy's "s" rule
    ("geese", 1855672),    # the noun exception list
    ("ran", 1926311),      # no noun form; the verb exception list
    ("men", 10287213),     # the "men" -> "man" rule
    ("redder", 381097),    # adjective exception
    ("quickly", 85811),    # adverbs come last
    ("ice_cream", 7614500),
    ("boxeses", 2883344),  # no match after one round of rules; NLTK 3.8.1 applies them again
    ("dog,", None),        # punctuation is part of the word: no synset
    ("xyzzy", None),
])
def test_first_synset_offset_follows_nltk_3_8_1(wordnet: WordNetIndex, word: str,
                                                 offset: int | None) -> None:
    assert wordnet.first_offset(word) == offset


def test_offsets_are_compared_whatever_the_part_of_speech(wordnet: WordNetIndex) -> None:
    # DataComp tests synsets[0].offset() against the ids, ignoring the synset's POS: the verb
    # "breathe" (offset 1740) matches the noun id n00001740.
    assert wordnet.first_offset("breathe") == 1740
    assert wordnet.contains_entity("we breathe", frozenset({1740}))
    assert wordnet.contains_entity("A photo of two Dogs", frozenset({2084071}))
    assert not wordnet.contains_entity("A photo of two Dogs", frozenset({10114209}))
    assert not wordnet.contains_entity("dog, cat.", frozenset({2084071}))  # "dog," has none
    assert not wordnet.contains_entity("", frozenset({2084071}))


def test_hostile_words_stay_cheap(wordnet: WordNetIndex) -> None:
    # Each round of rules can triple NLTK's candidate list (a verb "...es" gives three);
    # deduplicating each round keeps the work polynomial (these would not finish in NLTK) and
    # the answer the same: rounds continue until "box" is reached, or nothing is left.
    assert wordnet.first_offset("es" * 300) is None
    assert wordnet.first_offset("box" + "es" * 200) == 2883344


def test_ids_file_is_read_as_datacomp_reads_it(tmp_path: Path) -> None:
    f = tmp_path / "ids.txt"
    f.write_text("n02084071\n\n  n00001740  \nn01440764\n")
    assert load_wordnet_ids(f) == {2084071, 1740, 1440764}
    f.write_text("n02084071\ndog\n")
    with pytest.raises(CurateError, match="line 2"):
        load_wordnet_ids(f)


def test_missing_wordnet_files_are_named(tmp_path: Path) -> None:
    root = write_wordnet(tmp_path / "wn")
    (root / "verb.exc").unlink()
    with pytest.raises(CurateError, match=r"verb\.exc"):
        WordNetIndex(root)


def test_scorer_marks_captions_with_an_entity(tmp_path: Path) -> None:
    root = write_wordnet(tmp_path / "wn")
    ids = tmp_path / "ids.txt"
    ids.write_text("n02084071\nn00001740\n")
    scorer = WordNetEntity(WordNetEntityParams(ids=str(ids), wordnet=str(root)))
    scorer.check()
    rows = [{"caption": "Two Dogs on a beach"}, {"caption": "they breathe"},
            {"caption": "a red car"}, {"caption": ""}, {"caption": None},
            {"caption": "dog,\nrunning"}]
    out, errors = score(scorer, rows)
    assert [r["wordnet_entity"] for r in out] == [True, True, False, False, False, False]
    assert errors.ok_rows() == list(range(len(rows)))
    before = scorer.fingerprint()
    ids.write_text("n02084071\n")
    assert WordNetEntity(WordNetEntityParams(ids=str(ids), wordnet=str(root))
                         ).fingerprint() != before
    named = WordNetEntity(WordNetEntityParams(ids=str(ids), wordnet=str(root), name="in21k"))
    assert list(named.outputs()) == ["wordnet_entity_in21k"]


def test_scorer_check_fails_fast(tmp_path: Path) -> None:
    root = write_wordnet(tmp_path / "wn")
    with pytest.raises(CurateError, match="no WordNet ids file"):
        WordNetEntity(WordNetEntityParams(ids=str(tmp_path / "none.txt"),
                                          wordnet=str(root))).check()
    ids = tmp_path / "ids.txt"
    ids.write_text("n02084071\n")
    with pytest.raises(CurateError, match="lacks"):
        WordNetEntity(WordNetEntityParams(ids=str(ids), wordnet=str(tmp_path))).check()


needs_wordnet = pytest.mark.skipif(
    not (WORDNET_DIR / "index.noun").is_file(),
    reason=f"Debian's WordNet is not installed in {WORDNET_DIR} (apt-get install wordnet-base)")


@needs_wordnet
def test_debian_wordnet_offsets_equal_nltk() -> None:
    # Offsets NLTK 3.8.1 (DataComp's pin) gave for these words on the same files; the whole
    # comparison (340,324 words, 0 differences) is in docs/datacomp.md.
    wn = WordNetIndex(WORDNET_DIR)
    expected = {"dogs": 2084071, "Dog": 2084071, "ran": 1926329, "geese": 1855672,
                "breathe": 1740, "running": 558883, "quickly": 85811, "ice_cream": 7614500,
                "tabby": 2123045, "photo": 3925226, "the": None, "dog,": None}
    assert {w: wn.first_offset(w) for w in expected} == expected
