"""Complexity and action on hand-written captions with known answers."""

from __future__ import annotations

import pytest
from stagetest import score

from curate.stages.caption_complexity import CaptionComplexity

CASES = [
    # caption, relations (= complexity), has_action
    ("a dog", 0, False),
    ("red circle", 0, False),
    ("the cat is sleeping", 1, True),
    ("a woman is holding an umbrella", 2, True),
    ("a man riding a horse on the beach", 2, True),
    ("a cup of coffee on a saucer", 2, False),
    ("two children are playing football in the park", 3, True),
    ("sunset", 0, False),
]


@pytest.fixture(scope="module")
def scored() -> list[dict[str, object]]:
    out, errors = score(CaptionComplexity(), [{"caption": c} for c, _, _ in CASES]
                        + [{"caption": None}, {"caption": "   "}])
    assert all(e is None for e in errors.stage)
    return out


@pytest.mark.parametrize("i", range(len(CASES)))
def test_known_answers(scored: list[dict[str, object]], i: int) -> None:
    _, relations, action = CASES[i]
    assert scored[i]["caption_complexity"] == relations
    assert scored[i]["has_action"] is action


def test_missing_captions_give_nulls(scored: list[dict[str, object]]) -> None:
    assert all(v is None for v in scored[-1].values())
    assert all(v is None for v in scored[-2].values())
