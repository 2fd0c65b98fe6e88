"""A tiny image captioner for the demo and the tests: a small BLIP trained here, offline.

``make_demo_captioner(out)`` builds a word-level WordPiece tokenizer from the demo's caption
vocabulary (the scene templates and the photos' honest captions), a ``BlipProcessor`` (64x64
images) and a ``BlipForConditionalGeneration`` with a tiny config (2 vision and 2 text layers,
width 64) and random weights. With ``max_steps > 0`` it is trained, by teacher forcing, on
images made like the demo's trusted set (``curate.demo.generator``): rendered shape scenes
with one of their template captions, and random crops of the shipped photos with one of their
honest captions. The result is a real Hugging Face directory (config, safetensors, processor,
tokenizer) that ``AutoProcessor`` and ``AutoModelForImageTextToText`` load like any BLIP
captioner. Training runs a fixed number of steps (no clock), so the model is the same however
busy the machine is. With ``max_steps=0`` it is random: its captions are garbage, which the
tests use to check validation.
"""

from __future__ import annotations

import math
import random
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]"]
IMAGE_SIZE = 64


@dataclass(frozen=True)
class CaptionerResult:
    out: Path
    parameters: int
    steps: int
    seconds: float
    first_loss: float | None
    last_loss: float | None


def _scene_caption(rng: random.Random) -> tuple[Any, str]:
    from curate.demo import generator as g

    scene = g._random_scene(rng)
    return scene, scene.caption(rng.randrange(len(g._SCENE_TEMPLATES)))


def training_example(rng: random.Random, photos: dict[str, Any]) -> tuple[Any, str]:
    """(image, honest caption): a rendered scene (90%) or a random crop of a demo photo."""
    from curate.demo import generator as g

    if rng.random() < 0.9:
        scene, caption = _scene_caption(rng)
        w, h = rng.randint(96, 160), rng.randint(80, 140)
        return g._render_scene(rng, scene, w, h), caption
    photo = rng.choice(g._PHOTOS)
    img = photos[photo.name]
    w, h = img.size
    cw, ch = int(w * rng.uniform(0.6, 1.0)), int(h * rng.uniform(0.6, 1.0))
    x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
    return img.crop((x, y, x + cw, y + ch)).resize((128, 96)), rng.choice(photo.captions)


def _vocabulary(rng: random.Random) -> list[str]:
    from curate.demo import generator as g

    words: set[str] = set()
    texts = [c for p in g._PHOTOS for c in p.captions]
    for _ in range(3000):
        scene = g._random_scene(rng)
        texts += [scene.caption(t) for t in range(len(g._SCENE_TEMPLATES))]
    for t in texts:
        words.update(re.findall(r"\w+|[^\w\s]", t.lower()))
    return SPECIAL + sorted(words)


def build_processor(out: Path, rng: random.Random) -> Any:
    """A BlipProcessor whose tokenizer is a WordPiece over the demo's words (offline)."""
    from transformers import BertTokenizerFast, BlipImageProcessor, BlipProcessor

    out.mkdir(parents=True, exist_ok=True)
    vocab = {w: i for i, w in enumerate(_vocabulary(rng))}
    tok = BertTokenizerFast(vocab=vocab, do_lower_case=True,
                            additional_special_tokens=["[DEC]"], model_max_length=64)
    tok.bos_token = "[DEC]"
    images = BlipImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    return BlipProcessor(image_processor=images, tokenizer=tok)


def make_demo_captioner(out: str | Path, *, seed: int = 0, max_steps: int = 0,
                        hidden: int = 64, layers: int = 2, batch_size: int = 32,
                        lr: float = 2e-3, examples: int = 2048) -> CaptionerResult:
    from curate.lib.torch_compat import ensure_torchvision

    ensure_torchvision()
    import torch
    from transformers import BlipConfig, BlipForConditionalGeneration

    t0 = time.perf_counter()
    rng = random.Random(seed)
    torch.manual_seed(seed)
    out_dir = Path(out)
    processor = build_processor(out_dir, rng)
    tok = processor.tokenizer
    bos = tok.convert_tokens_to_ids("[DEC]")
    heads = max(1, hidden // 32)
    cfg = BlipConfig(
        vision_config={"hidden_size": hidden, "intermediate_size": hidden * 2,
                       "num_hidden_layers": layers, "num_attention_heads": heads,
                       "image_size": IMAGE_SIZE, "patch_size": 8},
        text_config={"vocab_size": len(tok), "hidden_size": hidden,
                     "intermediate_size": hidden * 2, "num_hidden_layers": layers,
                     "num_attention_heads": heads, "encoder_hidden_size": hidden,
                     "max_position_embeddings": 64, "bos_token_id": bos,
                     "sep_token_id": tok.sep_token_id, "pad_token_id": tok.pad_token_id,
                     "eos_token_id": tok.sep_token_id},
        projection_dim=hidden)
    model = BlipForConditionalGeneration(cfg)
    first = last = None
    if max_steps > 0:
        first, last = _train(model, processor, rng, max_steps, batch_size, lr, examples, bos)
    model.eval()
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return CaptionerResult(out_dir, sum(p.numel() for p in model.parameters()), max_steps,
                           round(time.perf_counter() - t0, 1), first, last)


def _train(model: Any, processor: Any, rng: random.Random, steps: int, batch_size: int,
           lr: float, examples: int, bos: int) -> tuple[float, float]:
    import torch

    from curate.demo.generator import _load_photos

    photos = _load_photos()
    tok = processor.tokenizer
    pairs = [training_example(rng, photos) for _ in range(examples)]
    pixels = processor.image_processor([im for im, _ in pairs],
                                       return_tensors="pt")["pixel_values"]
    enc = tok([c for _, c in pairs], padding=True, return_tensors="pt")
    ids = enc["input_ids"].clone()
    ids[:, 0] = bos  # the decoder starts from [DEC], as BLIP's generate does
    mask = enc["attention_mask"]
    labels = ids.masked_fill(mask == 0, -100)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    model.train()
    first = last = math.nan
    gen = torch.Generator().manual_seed(rng.randrange(1 << 31))
    for step in range(steps):
        pick = torch.randint(0, len(pairs), (batch_size,), generator=gen)
        width = int(mask[pick].sum(dim=1).max())
        for group in opt.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / 20) * 0.5 * (
                1 + math.cos(math.pi * step / steps))
        loss = model(pixel_values=pixels[pick], input_ids=ids[pick, :width],
                     attention_mask=mask[pick, :width], labels=labels[pick, :width]).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step == 0:
            first = loss.item()
        last = loss.item()
    return first, last


LLAVA_CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }} :{% if m['content'] is string %} {{ m['content'] }}"
    "{% else %}{% for c in m['content'] %}{% if c['type'] == 'image' %} <image>{% else %} "
    "{{ c['text'] }}{% endif %}{% endfor %}{% endif %} ;{% endfor %}"
    "{% if add_generation_prompt %} assistant :{% endif %}"
)


def make_tiny_llava(out: str | Path, *, seed: int = 0, image_size: int = 32,
                    hidden: int = 64, layers: int = 2) -> Path:
    """A LLaVA-style image-text-to-text chat model with random weights (a CLIP vision tower,
    a projector and a small Llama), its processor with a chat template, and a word-level
    tokenizer over the demo's words: the shape of Qwen-VL / LLaVA / SmolVLM captioners for the
    chat-format path, the vLLM test and the benchmark. Its captions are garbage."""
    from curate.lib.torch_compat import ensure_torchvision

    ensure_torchvision()
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
        PreTrainedTokenizerFast,
    )

    torch.manual_seed(seed)
    rng = random.Random(seed)
    specials = ["[PAD]", "<s>", "</s>", "[UNK]", "<image>"]
    words = [w for w in _vocabulary(rng) if w not in SPECIAL]
    words += ["user", "assistant", ";", "describe", "this", "image", "in", "one", "sentence"]
    vocab = {w: i for i, w in enumerate(dict.fromkeys(specials + words))}
    bpe = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    bpe.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(),
                                                 pre_tokenizers.Punctuation()])
    from tokenizers import decoders

    bpe.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>",
                                  pad_token="[PAD]", unk_token="[UNK]",
                                  extra_special_tokens={"image_token": "<image>"})
    patch = 8
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                              num_attention_heads=2, image_size=image_size, patch_size=patch,
                              projection_dim=32)
    text = LlamaConfig(vocab_size=len(vocab), hidden_size=hidden, intermediate_size=hidden * 2,
                       num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=4,
                       max_position_embeddings=512, bos_token_id=1, eos_token_id=2,
                       pad_token_id=0)
    cfg = LlavaConfig(vision_config=vision, text_config=text, image_token_index=vocab["<image>"],
                      vision_feature_select_strategy="default", vision_feature_layer=-1,
                      image_seq_length=(image_size // patch) ** 2)
    model = LlavaForConditionalGeneration(cfg)
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": image_size},
                                           crop_size={"height": image_size,
                                                      "width": image_size}),
        tokenizer=tok, patch_size=patch, vision_feature_select_strategy="default",
        num_additional_image_tokens=1, chat_template=LLAVA_CHAT_TEMPLATE)
    out_dir = Path(out)
    model.eval()
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir


def main(argv: list[str] | None = None) -> int:
    """``python -m curate.demo.captioner DIR [--steps N] [--seed S]``."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m curate.demo.captioner",
                                 description="build (and train) the tiny demo captioner")
    ap.add_argument("out")
    ap.add_argument("--steps", type=int, default=200, help="training steps (0: random)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    r = make_demo_captioner(args.out, seed=args.seed, max_steps=args.steps)
    trained = f"trained {r.steps} steps, loss {r.first_loss:.2f} -> {r.last_loss:.2f}" \
        if r.steps else "random weights"
    print(f"demo captioner ({r.parameters / 1e6:.2f}M parameters, {trained}) in {r.out}, "
          f"{r.seconds:.0f}s")
    print(f"use it with `recaption: {{backend: transformers, model: {r.out}}}`")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
