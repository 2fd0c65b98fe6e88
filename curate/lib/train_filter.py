"""``curate train-filter``: train a filter network, a CLIP trained on trusted data.

Data Filtering Networks (Fang et al., 2023) showed that a CLIP trained on a small high-quality set
filters better than a large generic CLIP. This trains (or fine-tunes) an open_clip model
contrastively on trusted webdataset shards, with open_clip's own model and ``ClipLoss``. It writes
a directory (``open_clip_config.json`` + weights) that the ``clip`` scorer loads with
``model: DIR``.

Samples stream from the shards through the same reader and decoding as scoring
(``ShardReader`` + ``FastPreprocess``): shard order is shuffled and a buffer is shuffled each
epoch, seeded. DataLoader workers (``workers``) decode in parallel. Optimisation is AdamW with
linear warmup then cosine decay, no weight decay on gains, biases and the logit scale, and the
logit scale clamped at 100 as in CLIP. Mixed precision is used on GPU. On this machine the
``curate-tiny`` config (64 px, 4+4 layers) learns the demo's trusted set in about a minute; the
same code trains real models on GPUs.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from curate.errors import CurateError
from curate.io.shards import ShardReader, ShardRef, list_shards
from curate.runtime import library_logs


@dataclass
class TrainConfig:
    data: str | list[str]  # trusted shards: patterns or URLs
    out: str
    model: str = "curate-tiny"  # open_clip name, hf-hub:..., or a directory to fine-tune
    pretrained: str | None = None  # start from these weights (tag or file); None: from scratch
    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup_fraction: float = 0.1
    max_seconds: float | None = None  # stop early after this much training time
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    workers: int = 0  # DataLoader worker processes for decoding
    threads: int | None = None  # torch CPU threads (default: all)
    shuffle_buffer: int = 2000


@dataclass
class TrainResult:
    out: Path
    samples: int  # trusted samples per epoch
    steps: int
    epochs_run: float
    seconds: float
    first_loss: float
    last_loss: float


def _pairs(refs: list[ShardRef]) -> Iterator[tuple[bytes, str]]:
    """(image bytes, caption) of every readable sample with a caption."""
    for ref in refs:
        for batch in ShardReader(ref, batch_size=256):
            for row in batch.select(["status", "image", "caption"]).to_pylist():
                if row["status"] == "ok" and row["image"] and row["caption"]:
                    yield row["image"], row["caption"]


def _dataset(refs: list[ShardRef], prep: Any, tokenizer: Any, seed: int, buffer: int) -> Any:
    import torch
    from torch.utils.data import IterableDataset, get_worker_info

    class Pairs(IterableDataset):  # type: ignore[type-arg]
        def __init__(self) -> None:
            self.epoch = 0

        def __iter__(self) -> Iterator[tuple[Any, Any]]:
            # Each call is one epoch, counted here: DataLoader workers that persist across
            # epochs hold their own copy of the dataset, which the driver cannot update.
            info = get_worker_info()
            rng = random.Random(seed * 1_000_003 + self.epoch)
            self.epoch += 1
            order = refs[:]
            rng.shuffle(order)
            if info is not None:  # each worker reads its own shards
                order = order[info.id::info.num_workers]
            pool: list[tuple[bytes, str]] = []
            for pair in _pairs(order):
                pool.append(pair)
                if len(pool) >= buffer:
                    yield self._one(pool.pop(rng.randrange(len(pool))))
            rng.shuffle(pool)
            for pair in pool:
                yield self._one(pair)

        @staticmethod
        def _one(pair: tuple[bytes, str]) -> tuple[Any, Any]:
            try:
                image = prep(pair[0])
            except Exception:  # noqa: BLE001 - an undecodable trusted image: skip it
                image = None
            return image, tokenizer([pair[1]])[0]

    del torch
    return Pairs()


def _collate(batch: list[tuple[Any, Any]]) -> tuple[Any, Any]:
    import torch

    batch = [b for b in batch if b[0] is not None]
    return torch.stack([b[0] for b in batch]), torch.stack([b[1] for b in batch])


def train_filter(cfg: TrainConfig, progress: bool = True) -> TrainResult:
    import torch

    from curate.lib.clip_model import _open_clip, model_config, model_id, save_clip_dir
    from curate.lib.imaging import FastPreprocess

    open_clip = _open_clip()
    refs = list_shards(cfg.data)
    n = sum(1 for _ in _pairs(refs))
    if n < 2:
        raise CurateError(f"the trusted data has {n} usable samples (image + caption)",
                          "point --data at webdataset shards of clean image-text pairs")
    device = ("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" \
        else cfg.device
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    mid = model_id(cfg.model)
    try:
        # open_clip logs through the root logger ("No pretrained weights loaded": training
        # starts from random ones), and configures it when nothing has: kept off the screen
        with library_logs():
            net, _, transform = open_clip.create_model_and_transforms(
                mid, pretrained=cfg.pretrained, device=device)
            pcfg = dict(open_clip.get_model_preprocess_cfg(net))
            tokenizer = open_clip.get_tokenizer(mid)
    except (RuntimeError, OSError, ValueError) as exc:
        raise CurateError(f"could not build {cfg.model}: {str(exc).splitlines()[0]}",
                          "give an open_clip name (e.g. curate-tiny), hf-hub:org/repo or a "
                          "directory with open_clip_config.json") from exc
    size = pcfg["size"] if isinstance(pcfg["size"], (tuple, list)) else (pcfg["size"],) * 2
    prep = FastPreprocess(transform, tuple(size), pcfg.get("resize_mode", "shortest"))  # type: ignore[arg-type]
    data = _dataset(refs, prep, tokenizer, cfg.seed, cfg.shuffle_buffer)
    loader = torch.utils.data.DataLoader(
        data, batch_size=cfg.batch_size, collate_fn=_collate, num_workers=cfg.workers,
        drop_last=n >= 2 * cfg.batch_size, persistent_workers=cfg.workers > 0)

    decay = [p for name, p in net.named_parameters()
             if p.ndim >= 2 and "logit_scale" not in name and p.requires_grad]
    no_decay = [p for name, p in net.named_parameters()
                if (p.ndim < 2 or "logit_scale" in name) and p.requires_grad]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr,
                            betas=(0.9, 0.98), eps=1e-6)
    steps_per_epoch = max(1, n // cfg.batch_size if n >= 2 * cfg.batch_size
                          else math.ceil(n / cfg.batch_size))
    total = steps_per_epoch * cfg.epochs
    warmup = max(1, int(total * cfg.warmup_fraction))

    def lr_at(step: int) -> float:
        if step < warmup:
            return cfg.lr * (step + 1) / warmup
        return 0.5 * cfg.lr * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    loss_fn = open_clip.ClipLoss()
    amp = device.startswith("cuda")
    scaler = torch.amp.GradScaler("cuda") if amp else None
    net.train()
    t0 = time.perf_counter()
    step, first, last = 0, math.nan, math.nan
    stop = False
    for epoch in range(cfg.epochs):
        for images, texts in loader:
            if images.shape[0] < 2:
                continue
            for g in opt.param_groups:
                g["lr"] = lr_at(step)
            images, texts = images.to(device), texts.to(device)
            with torch.autocast(device.split(":")[0], dtype=torch.float16, enabled=amp):
                out = net(images, texts)
                img_f, txt_f, scale = (out["image_features"], out["text_features"],
                                       out["logit_scale"]) if isinstance(out, dict) else out[:3]
                loss = loss_fn(img_f, txt_f, scale)
            opt.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
            else:
                loss.backward()
                opt.step()
            with torch.no_grad():
                net.logit_scale.clamp_(0, math.log(100))
            last = float(loss.detach())
            first = last if step == 0 else first
            step += 1
            if cfg.max_seconds is not None and time.perf_counter() - t0 > cfg.max_seconds:
                stop = True
                break
        if progress:
            print(f"train-filter: epoch {epoch + 1}/{cfg.epochs}, step {step}, loss {last:.3f}, "
                  f"{time.perf_counter() - t0:.0f}s", flush=True)
        if stop:
            break
    seconds = time.perf_counter() - t0
    net.eval()
    result = TrainResult(out=Path(cfg.out), samples=n, steps=step,
                         epochs_run=step / steps_per_epoch, seconds=round(seconds, 2),
                         first_loss=first, last_loss=last)
    save_clip_dir(net, model_config(cfg.model), pcfg, cfg.out, extra={"curate_train": {
        "config": asdict(cfg), "result": {k: v for k, v in asdict(result).items()
                                          if k != "out"}}})
    (Path(cfg.out) / "train_log.json").write_text(json.dumps(
        {k: str(v) if isinstance(v, Path) else v for k, v in asdict(result).items()}, indent=1))
    return result
