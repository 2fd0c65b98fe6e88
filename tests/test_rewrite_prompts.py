"""LaCLIP prompt construction: exact format, k examples, deterministic per seed and uid."""

from __future__ import annotations

from pathlib import Path

import pytest

from curate.rewrite.prompts import (
    INSTRUCTION,
    build_chat,
    build_prompt,
    load_examples,
    parse_completion,
    pick_examples,
)


def test_pool_has_every_style_and_is_well_formed() -> None:
    examples = load_examples()
    assert {e.style for e in examples} == {"terse", "descriptive", "reordered", "synonyms"}
    assert len({e.id for e in examples}) == len(examples) >= 20


def test_prompt_format_is_exact() -> None:
    ex = load_examples()[:2]
    prompt = build_prompt("a dog\n on the  beach", ex)
    assert prompt.split("\n") == [
        "write image captions differently,",
        f"{ex[0].source} => {ex[0].target}",
        f"{ex[1].source} => {ex[1].target}",
        "a dog on the beach =>",
    ]
    assert prompt.startswith(INSTRUCTION)


def test_examples_are_deterministic_per_seed_uid_and_rewrite() -> None:
    pool = load_examples()
    a = pick_examples(pool, "00ff" * 8, k=3, seed=7)
    assert len(a) == 3 and len({e.id for e in a}) == 3
    assert a == pick_examples(pool, "00ff" * 8, k=3, seed=7)
    others = [pick_examples(pool, "00ff" * 8, k=3, seed=8),
              pick_examples(pool, "11ee" * 8, k=3, seed=7),
              pick_examples(pool, "00ff" * 8, k=3, seed=7, rewrite=1)]
    assert any(o != a for o in others)
    assert len(pick_examples(pool, "x", k=100)) == len(pool)


def test_chat_variant_and_completion_parsing() -> None:
    ex = load_examples()[:2]
    chat = build_chat("a red bus", ex)
    assert [m["role"] for m in chat] == ["system", "user", "assistant", "user", "assistant",
                                         "user"]
    assert chat[-1]["content"] == "a red bus"
    assert parse_completion(" a crimson bus on a street \nnext => junk") == (
        "a crimson bus on a street")
    assert parse_completion("") == ""


def test_bad_example_files_are_rejected(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "ex.yaml"
    path.write_text("- {id: a, style: terse, source: 'x => y', target: z}\n")
    with pytest.raises(ValueError, match="contain a newline or '=>'"):
        load_examples(path)


def test_user_examples_file_is_read_strictly(tmp_path: Path) -> None:
    from curate.errors import ConfigError
    from curate.rewrite.prompts import load_examples

    path = tmp_path / "examples.yaml"
    path.write_text("- id: a\n  style: terse\n  source: a dog\n  source: a cat\n  target: x\n")
    with pytest.raises(ConfigError, match="'source' is given twice"):
        load_examples(path)
    path.write_text("- !!python/object/apply:os.system ['true']\n")
    with pytest.raises(ConfigError, match="not allowed"):
        load_examples(path)
