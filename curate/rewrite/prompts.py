"""LaCLIP-style rewrite prompts (Fan et al., "Improving CLIP Training with Language Rewrites").

A prompt is a fixed instruction line, k in-context ``source => target`` examples drawn from a
pool of meta examples (``examples.yaml``, several styles), then the caption to rewrite followed
by ``=>``. The model's completion up to the first newline is the rewrite. The examples are drawn
with a generator seeded by (seed, uid, rewrite number), so a sample's prompt never depends on
its shard, its worker or the order of the run. Instruction-tuned models get the same examples
as a chat conversation (``build_chat``).
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

INSTRUCTION = "write image captions differently,"
EXAMPLES_FILE = Path(__file__).parent / "examples.yaml"


@dataclass(frozen=True)
class Example:
    id: str
    style: str
    source: str
    target: str


def load_examples(path: str | Path | None = None) -> list[Example]:
    """The meta example pool (curate's own by default, or a user's YAML list of the same form)."""
    from curate.config import load_yaml  # strict: duplicate keys and tags are errors

    items: list[dict[str, Any]] = load_yaml(Path(path or EXAMPLES_FILE))
    examples = [Example(str(i["id"]), str(i["style"]), str(i["source"]), str(i["target"]))
                for i in items]
    bad = [e.id for e in examples if "\n" in e.source + e.target or "=>" in e.source + e.target]
    if bad:
        raise ValueError(f"meta examples {bad} contain a newline or '=>'")
    return examples


def pick_examples(examples: list[Example], uid: str, k: int, seed: int = 0,
                  rewrite: int = 0, attempt: int = 0) -> list[Example]:
    """k distinct examples, drawn deterministically from (seed, uid, rewrite number, attempt);
    a retried rewrite gets a fresh draw."""
    salt = f"\0{attempt}" if attempt else ""
    digest = hashlib.sha256(f"{seed}\0{uid}\0{rewrite}{salt}".encode()).digest()
    rng = random.Random(int.from_bytes(digest[:8], "big"))
    return rng.sample(examples, min(k, len(examples)))


def clean(caption: str) -> str:
    """One line, single spaces (a newline would end the completion the prompt asks for)."""
    return " ".join(caption.split())


def build_prompt(caption: str, examples: list[Example]) -> str:
    """``write image captions differently,`` + ``source => target`` lines + ``caption =>``."""
    lines = [INSTRUCTION]
    lines += [f"{e.source} => {e.target}" for e in examples]
    lines.append(f"{clean(caption)} =>")
    return "\n".join(lines)


def build_chat(caption: str, examples: list[Example]) -> list[dict[str, str]]:
    """The same request as chat messages for instruction-tuned models."""
    messages = [{"role": "system", "content": "You rewrite image captions. Keep the meaning, "
                 "change the wording. Answer with the rewritten caption only, on one line."}]
    for e in examples:
        messages.append({"role": "user", "content": e.source})
        messages.append({"role": "assistant", "content": e.target})
    messages.append({"role": "user", "content": clean(caption)})
    return messages


def parse_completion(text: str) -> str:
    """The rewrite: the completion up to its first newline, trimmed."""
    return text.split("\n", 1)[0].strip()
