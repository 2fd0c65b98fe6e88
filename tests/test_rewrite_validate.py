"""Rewrite validation: every rejection reason, and acceptance of a real rewrite."""

from __future__ import annotations

import pytest

from curate.rewrite.validate import rejection

SOURCE = "a large brown dog running across a grassy park"


@pytest.mark.parametrize(("rewrite", "reason"), [
    ("", "empty"),
    (None, "empty"),
    ("   ", "empty"),
    ("dog", "too_short"),
    (" ".join(["word"] * 2 + ["a", "b"] * 30), "too_long"),
    ("A large brown dog, running across a grassy park!", "identical"),
    ("dog dog dog in the park", "repeated_tokens"),
    ("a b a b a b a b", "repeated_tokens"),
    ("write image captions differently, a dog", "prompt_echo"),
    ("a dog => a cat", "prompt_echo"),
    ("ein großer brauner Hund rennt durch einen grünen Park", "not_english"),
    ("a brown dog\x1a in the park", "malformed"),
    ("a brown dog \ufffd in the park", "malformed"),
    ("fema cu befo flighteld coffping srunx dogq", "not_words"),
])
def test_rejections(rewrite: str | None, reason: str) -> None:
    assert rejection(SOURCE, rewrite) == reason


def test_good_rewrites_pass() -> None:
    assert rejection(SOURCE, "a big brown dog runs through a green park") is None
    assert rejection(SOURCE, "in a grassy park, a large brown dog is running") is None


def test_language_check_only_when_the_source_is_english() -> None:
    german = "ein großer brauner Hund rennt durch einen Park"
    assert rejection(german, "ein großer Hund läuft durch den grünen Park") is None
    assert rejection(SOURCE, "a dog running", lang_of=lambda t: "fr") is None  # source not en


def test_known_words_allow_names_copied_from_the_source() -> None:
    source = "the Kowloon Walled City at dusk"
    assert rejection(source, "Kowloon Walled City seen at dusk") is None
    assert rejection("xq zzv kkr", "qqq vvb zzx") != "not_words"  # the source is not words
