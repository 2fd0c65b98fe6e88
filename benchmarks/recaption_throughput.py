"""Synthetic-caption throughput of the transformers caption backend: one ``generate`` call per
image (the baseline, what per-sample captioning mappers do) against curate's batched
``generate``, in the same run.

Models (built here, offline):
  demo:       the demo captioner (a 0.2M-parameter BLIP, 64x64 images) trained for
              --train-steps on demo scenes, so captions end at [SEP] as real ones do;
  blip_base:  a random-weight BlipForConditionalGeneration with BLIP-base's shape (ViT-B/16 at
              384x384: 12 layers, width 768; a 12-layer, width-768 BERT decoder with
              cross-attention), the demo tokenizer's vocabulary instead of BERT's 30,524
              words (only the embedding and output layer are smaller); random weights write
              until --max-tokens.

Images are rendered demo scenes (JPEG, 256x192). For each model and batch size: captions/s,
and the ratio against batch size 1 (the baseline). Ends with one JSON line. Pass --device
cuda on a GPU machine.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from curate.demo.captioner import make_demo_captioner
from curate.recaption.backend_transformers import TransformersCaptionBackend
from curate.recaption.config import RecaptionConfig
from curate.rewrite.backends import GenRequest


def blip_base_shape(tokenizer_dir: Path, out: Path) -> Path:
    """A random BLIP with BLIP-base's configuration (Salesforce/blip-image-captioning-base)."""
    from transformers import (
        AutoProcessor,
        BlipConfig,
        BlipForConditionalGeneration,
        BlipImageProcessor,
        BlipProcessor,
    )

    demo = AutoProcessor.from_pretrained(tokenizer_dir)
    tok = demo.tokenizer
    cfg = BlipConfig(
        vision_config={"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
                       "num_attention_heads": 12, "image_size": 384, "patch_size": 16},
        text_config={"vocab_size": len(tok), "hidden_size": 768, "intermediate_size": 3072,
                     "num_hidden_layers": 12, "num_attention_heads": 12,
                     "encoder_hidden_size": 768, "max_position_embeddings": 512,
                     "bos_token_id": tok.convert_tokens_to_ids("[DEC]"),
                     "sep_token_id": tok.sep_token_id, "pad_token_id": tok.pad_token_id,
                     "eos_token_id": tok.sep_token_id},
        projection_dim=512)
    BlipForConditionalGeneration(cfg).save_pretrained(out)
    BlipProcessor(image_processor=BlipImageProcessor(size={"height": 384, "width": 384}),
                  tokenizer=tok).save_pretrained(out)
    return out


def scene_jpegs(n: int, seed: int = 0) -> list[bytes]:
    from curate.demo import generator as g

    rng = random.Random(seed)
    out = []
    for _ in range(n):
        buf = io.BytesIO()
        g._render_scene(rng, g._random_scene(rng), 256, 192).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def measure(model: Path, images: list[bytes], batch: int, max_tokens: int,
            device: str) -> dict[str, Any]:
    cfg = RecaptionConfig(backend="transformers", model=str(model), batch_size=batch,
                          sampling={"temperature": 0.7, "top_p": 0.9, "max_tokens": max_tokens},
                          transformers={"device": device})
    b = TransformersCaptionBackend(cfg, device)
    b.setup()
    reqs = [GenRequest("", seed=i, image=im) for i, im in enumerate(images)]
    b.generate(reqs[:batch])  # warm-up
    words = 0
    t0 = time.perf_counter()
    for i in range(0, len(reqs), batch):
        for r in b.generate(reqs[i:i + batch]):
            words += len((r.text or "").split())
    dt = time.perf_counter() - t0
    return {"batch": batch, "captions": len(reqs), "seconds": round(dt, 2),
            "captions_per_s": round(len(reqs) / dt, 2), "words_per_caption": round(
                words / max(1, len(reqs)), 1)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--images", type=int, default=64, help="images for the demo model")
    ap.add_argument("--big-images", type=int, default=16, help="images for blip_base")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--train-steps", type=int, default=150)
    ap.add_argument("--max-tokens", type=int, default=30)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--models", nargs="+", default=["demo", "blip_base"])
    args = ap.parse_args(argv)

    import torch

    figures: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        demo = make_demo_captioner(Path(tmp) / "demo", max_steps=args.train_steps).out
        models = {"demo": demo}
        if "blip_base" in args.models:
            models["blip_base"] = blip_base_shape(demo, Path(tmp) / "blip_base")
        for name in args.models:
            n = args.images if name == "demo" else args.big_images
            images = scene_jpegs(n)
            batches = [b for b in args.batches if b <= n] or [1]
            rows = [measure(models[name], images, b, args.max_tokens, args.device)
                    for b in batches]
            base = rows[0]["captions_per_s"]
            for r in rows:
                r["vs_one_call_per_image"] = round(r["captions_per_s"] / base, 2)
            print(f"\n{name} on {args.device} ({torch.get_num_threads()} threads), {n} images, "
                  f"max {args.max_tokens} tokens")
            for r in rows:
                print(f"  batch {r['batch']:>3}: {r['captions_per_s']:8.2f} captions/s  "
                      f"x{r['vs_one_call_per_image']:.2f} vs one generate call per image")
            figures[name] = rows
    print(json.dumps({"benchmark": "recaption_throughput", "device": args.device,
                      "threads": torch.get_num_threads(), "max_tokens": args.max_tokens,
                      "train_steps": args.train_steps, "models": figures}))


if __name__ == "__main__":
    main()
