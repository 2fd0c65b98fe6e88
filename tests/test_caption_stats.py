from __future__ import annotations

from stagetest import score

from curate.stages.caption_stats import CaptionStats


def test_counts_chars_and_words() -> None:
    rows = [{"caption": "a red  circle\non white"}, {"caption": ""}, {"caption": None},
            {"caption": "café au lait"}]
    out, _ = score(CaptionStats(), rows)
    assert out == [{"caption_chars": 22, "caption_words": 5},
                   {"caption_chars": 0, "caption_words": 0},
                   {"caption_chars": 0, "caption_words": 0},
                   {"caption_chars": 12, "caption_words": 3}]
