"""A tiny caption rewriter for the demo and the tests: a small Llama trained here, offline.

``make_demo_rewriter(out)`` trains a byte-level BPE tokenizer on the demo pool's caption
vocabulary and curate's meta examples, builds a small ``LlamaForCausalLM`` with random weights
and, when ``train_seconds > 0``, trains it on LaCLIP-format prompts (``curate.rewrite.prompts``)
whose targets are other honest captions of the same demo image (the scene generator describes a
scene with several templates). The result is a real Hugging Face model directory (config,
safetensors, tokenizer with a chat template) that every rewrite backend loads like any other.
Training stops after ``train_seconds`` or ``max_steps``, whichever comes first; with
``max_steps`` and a generous time the learning-rate schedule follows the steps, so the model
does not depend on how fast the machine is. With ``train_seconds=0`` the model is random: its
outputs are garbage, which is what the tests use to check validation.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

from curate.rewrite.prompts import build_prompt, load_examples, pick_examples

CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


@dataclass(frozen=True)
class RewriterResult:
    out: Path
    parameters: int
    steps: int
    seconds: float
    first_loss: float | None
    last_loss: float | None


def paraphrase_pairs(rng: random.Random, n: int) -> list[tuple[str, str]]:
    """(caption, another caption of the same demo image) pairs: scene templates and photos."""
    from curate.demo import generator as g

    pairs: list[tuple[str, str]] = []
    while len(pairs) < n:
        if rng.random() < 0.95:
            scene = g._random_scene(rng)
            a, b = rng.sample(range(len(g._SCENE_TEMPLATES)), 2)
            pairs.append((scene.caption(a), scene.caption(b)))
        else:
            photo = rng.choice(g._PHOTOS)
            a_text, b_text = rng.sample(list(photo.captions), 2)
            pairs.append((a_text, b_text))
    return pairs


def _tokenizer_corpus(rng: random.Random) -> list[str]:
    from curate.demo import generator as g

    texts = [t for e in load_examples() for t in (e.source, e.target)]
    texts += [c for p in g._PHOTOS for c in p.captions + p.foreign]
    texts += [a + " => " + b for a, b in paraphrase_pairs(rng, 3000)]
    return texts


def make_demo_rewriter(out: str | Path, *, seed: int = 0, train_seconds: float = 0.0,
                       max_steps: int | None = None, hidden: int = 128, layers: int = 4,
                       batch_size: int = 32, lr: float = 3e-3) -> RewriterResult:
    from curate.lib.torch_compat import ensure_torchvision

    ensure_torchvision()
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    t0 = time.perf_counter()
    rng = random.Random(seed)
    torch.manual_seed(seed)
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(_tokenizer_corpus(rng), trainers.BpeTrainer(
        vocab_size=1024, special_tokens=["<s>", "</s>", "<pad>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>",
                                  pad_token="<pad>")
    tok.chat_template = CHAT_TEMPLATE
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=hidden * 3,
                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=4,
                      max_position_embeddings=1024, bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                      tie_word_embeddings=True)
    model = LlamaForCausalLM(cfg)
    steps, first, last = 0, None, None
    if train_seconds > 0:
        first, last, steps = _train(model, tok, rng, train_seconds, max_steps, batch_size, lr)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.eval()
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return RewriterResult(out_dir, sum(p.numel() for p in model.parameters()), steps,
                          round(time.perf_counter() - t0, 1), first, last)


def _train(model: object, tok: object, rng: random.Random, seconds: float,
           max_steps: int | None, batch_size: int, lr: float) -> tuple[float, float, int]:
    import torch

    examples = load_examples()
    pairs = paraphrase_pairs(rng, 20_000)
    bos = tok.bos_token_id  # type: ignore[attr-defined]
    eos = tok.eos_token_id  # type: ignore[attr-defined]
    pad = tok.pad_token_id  # type: ignore[attr-defined]

    def encode(i: int, a: str, b: str) -> tuple[list[int], list[int]]:
        ex = pick_examples(examples, f"train{i}", k=rng.choice((0, 1, 1, 2)), seed=rng.random())
        prompt = tok.encode(build_prompt(a, ex), add_special_tokens=False)  # type: ignore
        target = tok.encode(" " + b + "\n", add_special_tokens=False)  # type: ignore
        ids = [bos, *prompt, *target, eos]
        labels = [-100] * (1 + len(prompt)) + target + [eos]
        return ids, labels

    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)  # type: ignore
    model.train()  # type: ignore[attr-defined]
    t0 = time.perf_counter()
    first = last = math.nan
    step = 0
    total = max_steps or 10**9
    while step < total and time.perf_counter() - t0 < seconds:
        batch = [encode(step * batch_size + j, *rng.choice(pairs)) for j in range(batch_size)]
        width = max(len(ids) for ids, _ in batch)
        ids = torch.tensor([x + [pad] * (width - len(x)) for x, _ in batch])
        labels = torch.tensor([y + [-100] * (width - len(y)) for _, y in batch])
        mask = (torch.arange(width)[None, :] < torch.tensor([len(x) for x, _ in batch])[:, None])
        # The schedule follows the steps when their number is fixed (the same model however
        # busy the machine is), else the clock.
        frac = (step / total if max_steps else
                min(1.0, (time.perf_counter() - t0) / seconds))
        for group in opt.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / 50) * 0.5 * (1 + math.cos(math.pi * frac))
        loss = model(input_ids=ids, attention_mask=mask.long(), labels=labels).loss  # type: ignore
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # type: ignore[attr-defined]
        opt.step()
        if step == 0:
            first = loss.item()
        last = loss.item()
        step += 1
    return first, last, step
