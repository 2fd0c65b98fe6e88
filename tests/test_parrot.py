from __future__ import annotations

from stagetest import score

from curate.stages.parrot import Parrot, char_similarity, word_overlap


def test_word_overlap_is_the_share_of_caption_words_spotted() -> None:
    assert word_overlap("summer sale poster with the words summer sale", "SUMMER SALE") == 0.5
    assert word_overlap("a photo of a dog", "SUMMER SALE") == 0.0
    assert word_overlap("a photo of a dog", None) == 0.0
    assert word_overlap("", "SALE") is None


def test_char_similarity_counts_spelled_runs_only() -> None:
    assert char_similarity("a banner reading open 24 hours", "OPEN 24 HOURS") == 1.0
    assert char_similarity("a banner reading open 24 hours", "OPEN 24 DAYS") < 0.7
    # Short or scattered matches are chance, not parroting.
    assert char_similarity("a curious cat staring at something", "ap") == 0.0
    assert char_similarity("a motorcycle parked in a garage", "YAMAHA") == 0.0


def test_scorer_columns() -> None:
    out, _ = score(Parrot(), [{"caption": "a sign that says hot coffee", "ocr_text": "HOT COFFEE"},
                              {"caption": "a cat", "ocr_text": None}])
    assert out[0]["parrot_char_sim"] == 1.0 and out[0]["parrot_word_overlap"] > 0.3
    assert out[1] == {"parrot_word_overlap": 0.0, "parrot_char_sim": 0.0}
