"""The transformers rewrite backend on a tiny random Llama with a tokenizer trained in-process:
per-request seeds make results independent of batching, a row stops at its first newline, the
chat format works, and load errors are clear."""

from __future__ import annotations

from pathlib import Path

import pytest

from curate.errors import CurateError
from curate.rewrite.backend_transformers import TransformersBackend
from curate.rewrite.backends import GenRequest, model_identity
from curate.rewrite.config import RewriteConfig
from curate.rewrite.prompts import build_chat, build_prompt, load_examples, pick_examples

CAPTIONS = [
    "two red circles on the left on a white background",
    "a yellow triangle in the center on a black background",
    "close up of a tabby cat with green eyes looking to the side",
    "a smiling astronaut in an orange spacesuit posing for an official portrait",
    "a blue square",
]


def _backend(model: Path, **cfg: object) -> TransformersBackend:
    b = TransformersBackend(RewriteConfig(backend="transformers", model=str(model), **cfg),
                            "cpu")
    b.setup()
    return b


def _requests(prompt_format: str = "completion") -> list[GenRequest]:
    ex = load_examples()
    out = []
    for i, c in enumerate(CAPTIONS):
        picked = pick_examples(ex, f"u{i}", 3)
        prompt = build_chat(c, picked) if prompt_format == "chat" else build_prompt(c, picked)
        out.append(GenRequest(prompt=prompt, seed=1000 + i))
    return out


def test_results_depend_on_seed_not_on_batching(random_rewriter: Path) -> None:
    b = _backend(random_rewriter, sampling={"temperature": 1.0, "top_p": 0.9, "max_tokens": 12})
    reqs = _requests()
    together = [r.text for r in b.generate(reqs)]
    alone = [b.generate([r])[0].text for r in reqs]
    reordered = [r.text for r in b.generate(reqs[::-1])][::-1]
    assert together == alone == reordered
    assert len(set(together)) == len(together)  # different seeds, different samples
    other_seed = b.generate([GenRequest(reqs[0].prompt, seed=7)])[0].text
    assert other_seed != together[0]
    # every completion ends at its first newline at the latest (a rewrite is one line)
    assert all(t is not None and t.count("\n") <= 1 and not t.rstrip("\n").count("\n")
               for t in together)


def test_greedy_and_max_tokens(random_rewriter: Path) -> None:
    b = _backend(random_rewriter, sampling={"temperature": 0.0, "max_tokens": 5})
    reqs = _requests()
    a = [r.text for r in b.generate(reqs)]
    c = [r.text for r in b.generate([GenRequest(r.prompt, seed=r.seed + 1) for r in reqs])]
    assert a == c  # greedy ignores the seed
    ids = [b.tokenizer.encode(t, add_special_tokens=False) for t in a if t]
    assert all(len(x) <= 5 for x in ids)


def test_chat_prompts(random_rewriter: Path) -> None:
    b = _backend(random_rewriter, prompt="chat", sampling={"max_tokens": 8})
    results = b.generate(_requests("chat"))
    assert len(results) == len(CAPTIONS) and all(r.error is None for r in results)


def test_missing_model_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CurateError, match="could not be loaded"):
        _backend(tmp_path / "nope")


def test_model_identity_follows_the_weights(random_rewriter: Path, tmp_path: Path) -> None:
    import shutil

    cfg = RewriteConfig(backend="transformers", model=str(random_rewriter))
    ident = model_identity(cfg)
    assert ident.startswith(random_rewriter.name + "#")
    copy = tmp_path / random_rewriter.name
    shutil.copytree(random_rewriter, copy)
    assert model_identity(cfg.model_copy(update={"model": str(copy)})) == ident  # moved: same
    with open(copy / "config.json", "a") as f:
        f.write("\n")
    assert model_identity(cfg.model_copy(update={"model": str(copy)})) != ident  # changed
    hub = cfg.model_copy(update={"model": "org/some-llm", "revision": "abc"})
    assert model_identity(hub) == "org/some-llm@abc"
