from __future__ import annotations

import pytest
from stagetest import score

from curate.stages.caption_stats import CaptionStats, fasttext_token_count


def test_counts_chars_words_and_fasttext_tokens() -> None:
    rows = [{"caption": "a red  circle\non white"}, {"caption": ""}, {"caption": None},
            {"caption": "café au lait"}]
    out, _ = score(CaptionStats(), rows)
    assert out == [{"caption_chars": 22, "caption_words": 5, "caption_fasttext_tokens": 6},
                   {"caption_chars": 0, "caption_words": 0, "caption_fasttext_tokens": 0},
                   {"caption_chars": 0, "caption_words": 0, "caption_fasttext_tokens": 0},
                   {"caption_chars": 12, "caption_words": 3, "caption_fasttext_tokens": 3}]


# len(fasttext.tokenize(text)) as fasttext 0.9.2 (DataComp's pin) returned it for each text,
# measured with the official package beside ours: fasttext splits on space, \n, \r, \t, \v, \f
# and NUL only, and each \n is an extra "</s>" token.
@pytest.mark.parametrize(("text", "tokens"), [
    ("", 0), (" ", 0), ("a", 1), ("ab cd", 2), ("a\nb", 3), ("ab\n", 2), ("\n", 1),
    ("\n\n", 2), ("a \n b", 3), ("a\tb\rc\vd\fe", 5), ("a\x00b", 2), ("a\xa0b", 1),
    ("a\u2003b", 1), ("a\u3000b", 1), (" a  b ", 2), ("</s>", 1), ("a </s> b", 3),
    ("a\x85b", 1), ("a\x1cb", 1), ("a\x1fb", 1), ("é è", 2), ("\r\n", 1), ("x\r\ny", 3),
])
def test_fasttext_token_count_equals_fasttext_tokenize(text: str, tokens: int) -> None:
    assert fasttext_token_count(text) == tokens
