"""CLIP scoring throughput: the curate stage against a naive loop and against the bare model.

On the same tar shards and the same model, in one run:

  (a) naive:    one process; for each batch, full PIL decode + open_clip's preprocess of every
                image in turn, then the model (both towers);
  (b) forward:  open_clip's model forward alone (both towers) on pre-decoded, pre-tokenised
                tensors; also reported with the caption padding cut as the stage does
                (``forward_trimmed``): the stage's real ceiling;
  (c) pipeline: the curate ``clip`` stage end to end from the tar shards (read, DCT-scaled
                decode on threads ahead of the model, tokenise, encode, commit the scores and
                embeddings to a store), exactly what each Ray scoring worker runs per shard.

Prints images/s, the ratios c/a and c/b, and ends with one JSON line per model. The shards are
generated here: real photos shipped with scikit-image, resized to web-typical sizes
(640-1280 px, JPEG q90). Models get random weights (none can be downloaded offline); the
throughput of a model does not depend on its weights.

    python benchmarks/clip_throughput.py --model ViT-S-32 --model curate-tiny
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from curate.lib.torch_compat import ensure_torchvision

ensure_torchvision()

import torch  # noqa: E402

from curate.lib.clip_model import (  # noqa: E402
    _open_clip,
    encode_text_trimmed,
    model_config,
    save_clip_dir,
    trim_tokens,
)

SIZES = [(1024, 768), (768, 1024), (1280, 720), (800, 800), (1200, 900), (640, 960)]
CAPTIONS = ["an astronaut in an orange suit in front of a flag", "a tabby cat looking up",
            "a cup of coffee on a saucer", "a rocket standing on the launch pad at night",
            "a motorcycle parked in a garage", "a colourful photograph of a street market"]


def make_shards(root: Path, n: int, per_shard: int) -> list[Path]:
    import webdataset as wds
    from skimage import data

    photos = [data.astronaut(), data.chelsea(), data.coffee(), data.rocket(),
              data.stereo_motorcycle()[0], data.astronaut()[::-1]]
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for s in range((n + per_shard - 1) // per_shard):
        path = root / f"{s:05d}.tar"
        with wds.TarWriter(str(path), mtime=0) as w:
            for i in range(s * per_shard, min(n, (s + 1) * per_shard)):
                src = Image.fromarray(photos[i % len(photos)])
                im = src.resize(SIZES[i % len(SIZES)], Image.BICUBIC)
                arr = np.asarray(im).astype(np.int16) + rng.integers(-6, 7, (1, 1, 3))
                im = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
                buf = io.BytesIO()
                im.save(buf, "JPEG", quality=90)
                w.write({"__key__": f"{i:09d}", "jpg": buf.getvalue(),
                         "txt": CAPTIONS[i % len(CAPTIONS)]})
        paths.append(path)
    return paths


def read_pairs(paths: list[Path]) -> list[tuple[bytes, str]]:
    import tarfile

    pairs = []
    for p in paths:
        with tarfile.open(p) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar}  # type: ignore[union-attr]
        for name in sorted(n for n in members if n.endswith(".jpg")):
            pairs.append((members[name], members[name[:-4] + ".txt"].decode()))
    return pairs


def encode(net: torch.nn.Module, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        img = torch.nn.functional.normalize(net.encode_image(x), dim=-1)  # type: ignore[operator]
        txt = torch.nn.functional.normalize(net.encode_text(t), dim=-1)  # type: ignore[operator]
        return (img * txt).sum(-1)


def bench(model: str, n: int, batch: int, threads: int, decode_threads: int) -> dict[str, object]:
    from curate.io.shards import list_shards
    from curate.score.plan import reader_fingerprint, scorer_versions
    from curate.score.shard import ShardTask, StoredInputs, commit, compute_shard
    from curate.stages.clip import Clip, ClipParams
    from curate.store.store import Store

    open_clip = _open_clip()
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        shards = make_shards(root / "pool", n, per_shard=max(batch, n // 4))
        net, _, preprocess = open_clip.create_model_and_transforms(model, pretrained=None)
        net.eval()
        tok = open_clip.get_tokenizer(model)
        model_dir = save_clip_dir(net, model_config(model),
                                  open_clip.get_model_preprocess_cfg(net), root / "model")
        pairs = read_pairs(shards)

        # Warm up (allocations, kernels) on one batch.
        encode(net, torch.stack([preprocess(Image.open(io.BytesIO(b)))
                                 for b, _ in pairs[:batch]]), tok([c for _, c in pairs[:batch]]))

        # (a) naive: sequential full decode + preprocess, then the model, batch by batch.
        t0 = time.perf_counter()
        for i in range(0, n, batch):
            chunk = pairs[i:i + batch]
            x = torch.stack([preprocess(Image.open(io.BytesIO(b)).convert("RGB"))
                             for b, _ in chunk])
            encode(net, x, tok([c for _, c in chunk]))
        naive = n / (time.perf_counter() - t0)

        # (b) the model alone on pre-decoded, pre-tokenised tensors.
        xs = [torch.stack([preprocess(Image.open(io.BytesIO(b)).convert("RGB"))
                           for b, _ in pairs[i:i + batch]]) for i in range(0, n, batch)]
        ts = [tok([c for _, c in pairs[i:i + batch]]) for i in range(0, n, batch)]
        t0 = time.perf_counter()
        for x, t in zip(xs, ts, strict=True):
            encode(net, x, t)
        forward = n / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        for x, t in zip(xs, ts, strict=True):
            with torch.inference_mode():
                img = torch.nn.functional.normalize(net.encode_image(x), dim=-1)  # type: ignore[operator]
                txt = torch.nn.functional.normalize(
                    encode_text_trimmed(net, trim_tokens(t)), dim=-1)
                (img * txt).sum(-1)
        forward_trimmed = n / (time.perf_counter() - t0)
        del xs, ts

        # (c) the curate stage end to end from the tar shards.
        stage = Clip(ClipParams(model=str(model_dir), pretrained=None, batch_size=batch,
                                cpus=threads, decode_threads=decode_threads))
        stage.setup()
        refs = list_shards(str(root / "pool" / "*.tar"))
        reader = reader_fingerprint()
        versions = scorer_versions([stage], reader)
        store = Store(root / "store")
        t0 = time.perf_counter()
        done = 0
        for ref in refs:
            task = ShardTask(ref, None, "", True, [versions[0].label])
            result = compute_shard(task, versions, reader, StoredInputs(), batch_size=4 * batch)
            commit(store, result, reader)
            done += result.samples
        pipeline = done / (time.perf_counter() - t0)
    return {"model": model, "images": n, "batch": batch, "threads": threads,
            "decode_threads": decode_threads, "naive_ips": round(naive, 2),
            "forward_ips": round(forward, 2), "pipeline_ips": round(pipeline, 2),
            "vs_naive": round(pipeline / naive, 3), "vs_forward": round(pipeline / forward, 3),
            "forward_trimmed_ips": round(forward_trimmed, 2),
            "vs_forward_trimmed": round(pipeline / forward_trimmed, 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", action="append", help="open_clip model (repeatable); default: "
                    "ViT-S-32 and curate-tiny")
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--decode-threads", type=int, default=2)
    args = ap.parse_args()
    results = []
    for model in args.model or ["ViT-S-32", "curate-tiny"]:
        r = bench(model, args.images, args.batch, args.threads, args.decode_threads)
        results.append(r)
        print(f"{model}: naive {r['naive_ips']} img/s, forward {r['forward_ips']} img/s, "
              f"curate stage {r['pipeline_ips']} img/s → c/a {r['vs_naive']}, "
              f"c/b {r['vs_forward']} (forward with trimmed captions "
              f"{r['forward_trimmed_ips']} img/s, c/b' {r['vs_forward_trimmed']})", flush=True)
    for r in results:
        print(json.dumps(r))


if __name__ == "__main__":
    main()
