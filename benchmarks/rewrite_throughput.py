"""Caption rewrite throughput of the transformers backend: one generate call per caption (the
baseline, what generic LLM mappers do) against curate's batched generate.

Models (built here, offline):
  demo:     the demo rewriter (1M parameters) trained for --train-seconds on demo captions, so
            completions stop at a newline as real rewrites do;
  llama135: a random-weight Llama with SmolLM-135M's shape (hidden 576, 30 layers, 9 heads,
            vocabulary 1024 from the demo tokenizer), completions of --max-tokens tokens.

Prompts are LaCLIP completion prompts (3 examples) over demo-pool captions. For each model and
batch size: captions/s and generated tokens/s; ratios are against batch size 1 in the same run.
Ends with one JSON line per model. Pass --device cuda on a GPU machine.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from curate.demo.rewriter import make_demo_rewriter, paraphrase_pairs
from curate.rewrite.backend_transformers import TransformersBackend
from curate.rewrite.backends import GenRequest
from curate.rewrite.config import RewriteConfig
from curate.rewrite.prompts import build_prompt, load_examples, pick_examples


def big_random_llama(tokenizer_dir: Path, out: Path) -> Path:
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=576, intermediate_size=1536,
                      num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                      max_position_embeddings=2048, bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                      tie_word_embeddings=True)
    LlamaForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def measure(model: Path, prompts: list[str], batch: int, max_tokens: int,
            device: str) -> dict[str, Any]:
    cfg = RewriteConfig(backend="transformers", model=str(model), batch_size=batch,
                        sampling={"temperature": 0.8, "top_p": 0.95, "max_tokens": max_tokens},
                        transformers={"device": device})
    b = TransformersBackend(cfg, device)
    b.setup()
    reqs = [GenRequest(p, seed=i) for i, p in enumerate(prompts)]
    b.generate(reqs[:batch])  # warm-up
    tokens = 0
    t0 = time.perf_counter()
    for i in range(0, len(reqs), batch):
        for r in b.generate(reqs[i:i + batch]):
            tokens += len(b.tokenizer.encode(r.text or "", add_special_tokens=False))
    dt = time.perf_counter() - t0
    return {"batch": batch, "captions": len(reqs), "seconds": round(dt, 2),
            "captions_per_s": round(len(reqs) / dt, 2), "tokens_per_s": round(tokens / dt, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--captions", type=int, default=128)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--train-seconds", type=float, default=60)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--models", nargs="+", default=["demo", "llama135"])
    args = ap.parse_args()

    import torch

    rng = random.Random(0)
    examples = load_examples()
    captions = [a for a, _ in paraphrase_pairs(rng, args.captions)]
    prompts = [build_prompt(c, pick_examples(examples, f"b{i}", 3)) for i, c in
               enumerate(captions)]
    with tempfile.TemporaryDirectory() as tmp:
        demo = make_demo_rewriter(Path(tmp) / "demo", train_seconds=args.train_seconds).out
        models = {"demo": demo}
        if "llama135" in args.models:
            models["llama135"] = big_random_llama(demo, Path(tmp) / "llama135")
        for name in args.models:
            rows = [measure(models[name], prompts, b, args.max_tokens, args.device)
                    for b in args.batches]
            base = rows[0]["captions_per_s"]
            print(f"\n{name} on {args.device} ({torch.get_num_threads()} threads), "
                  f"{args.captions} captions, max {args.max_tokens} tokens")
            for r in rows:
                print(f"  batch {r['batch']:>3}: {r['captions_per_s']:8.2f} captions/s "
                      f"{r['tokens_per_s']:9.1f} tokens/s  x{r['captions_per_s'] / base:.2f} "
                      f"vs batch {rows[0]['batch']}")
            print(json.dumps({"benchmark": "rewrite_throughput", "model": name,
                              "device": args.device, "threads": torch.get_num_threads(),
                              "max_tokens": args.max_tokens, "results": rows}))


if __name__ == "__main__":
    main()
