"""Watermark scoring throughput: the curate stage against the authors' loop and the bare model.

On the same tar shards and the same (random) weights, in one run:

  (a) recipe:   one process, batch by batch: PIL open + convert('RGB') + Resize((256, 256)),
                ToTensor, Normalize of every image in turn, then the model and the softmax
                (LAION's example_use.py / inference.py without their DataLoader workers);
  (b) forward:  the model and softmax alone on pre-decoded tensors (the ceiling);
  (c) pipeline: the curate ``watermark`` stage end to end from the tar shards (read, decode on
                ``decode_threads`` threads ahead of the model, model, commit to a store), what a
                Ray scoring worker runs per shard.

Prints images/s, the ratios c/a, c/b and the CPU seconds per image of each (all threads of
the process; on a busy machine wall-clock rates are shared, CPU time much less), and ends with
one JSON line. The shards hold real
photos shipped with scikit-image resized to web sizes (640-1280 px, JPEG q90). The weights are
random (the released ones are not here); throughput does not depend on the weights.

    python benchmarks/watermark_throughput.py --images 64 --batch 16 --threads 2
"""

from __future__ import annotations

import argparse
import io
import json
import os
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
from torchvision import transforms as T  # noqa: E402

from curate.stages.watermark import (  # noqa: E402
    IMAGE_SIZE,
    MEAN,
    STD,
    Watermark,
    WatermarkParams,
    build_model,
)

SIZES = [(1024, 768), (800, 1200), (1280, 720), (640, 640)]


def make_shards(root: Path, n: int, per_shard: int) -> list[bytes]:
    """Tar shards of ``n`` photos under ``root``; returns the JPEG bytes in order."""
    import webdataset as wds
    from skimage import data

    photos = [data.astronaut(), data.chelsea(), data.coffee(), data.rocket(),
              data.stereo_motorcycle()[0], data.astronaut()[::-1]]
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    out = []
    for s in range((n + per_shard - 1) // per_shard):
        with wds.TarWriter(str(root / f"{s:05d}.tar"), mtime=0) as w:
            for i in range(s * per_shard, min(n, (s + 1) * per_shard)):
                im = Image.fromarray(photos[i % len(photos)]).resize(SIZES[i % len(SIZES)],
                                                                     Image.BICUBIC)
                arr = np.asarray(im).astype(np.int16) + rng.integers(-6, 7, (1, 1, 3))
                buf = io.BytesIO()
                Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(buf, "JPEG",
                                                                           quality=90)
                w.write({"__key__": f"{i:09d}", "jpg": buf.getvalue(), "txt": "a photo"})
                out.append(buf.getvalue())
    return out


def bench(n: int, batch: int, threads: int, decode_threads: int) -> dict[str, object]:
    from curate.io.shards import list_shards
    from curate.score.plan import reader_fingerprint, scorer_versions
    from curate.score.shard import ShardTask, StoredInputs, commit, compute_shard
    from curate.store.store import Store

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    prep = T.Compose([T.Resize(IMAGE_SIZE), T.ToTensor(), T.Normalize(MEAN, STD)])
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        images = make_shards(root / "pool", n, per_shard=max(batch, n // 2))
        net = build_model().eval()
        torch.save(net.state_dict(), root / "weights.pt")

        def run(x: torch.Tensor) -> torch.Tensor:
            with torch.inference_mode():
                return torch.softmax(net(x), dim=1)[:, 0]

        run(torch.stack([prep(Image.open(io.BytesIO(b)).convert("RGB"))
                         for b in images[:batch]]))  # warm-up

        # (a) the authors' loop: sequential decode + transforms, then the model.
        t0, c0 = time.perf_counter(), time.process_time()
        for i in range(0, n, batch):
            run(torch.stack([prep(Image.open(io.BytesIO(b)).convert("RGB"))
                             for b in images[i:i + batch]]))
        recipe, recipe_cpu = n / (time.perf_counter() - t0), (time.process_time() - c0) / n

        # (b) the model alone on pre-decoded tensors.
        xs = [torch.stack([prep(Image.open(io.BytesIO(b)).convert("RGB"))
                           for b in images[i:i + batch]]) for i in range(0, n, batch)]
        t0, c0 = time.perf_counter(), time.process_time()
        for x in xs:
            run(x)
        forward, forward_cpu = n / (time.perf_counter() - t0), (time.process_time() - c0) / n
        del xs

        # (c) the curate stage end to end from the tar shards.
        stage = Watermark(WatermarkParams(weights=str(root / "weights.pt"), batch_size=batch,
                                          cpus=threads, decode_threads=decode_threads))
        stage.setup()
        reader = reader_fingerprint()
        versions = scorer_versions([stage], reader)
        store = Store(root / "store")
        t0, c0 = time.perf_counter(), time.process_time()
        done = 0
        for ref in list_shards(str(root / "pool" / "*.tar")):
            task = ShardTask(ref, None, "", True, [versions[0].label])
            result = compute_shard(task, versions, reader, StoredInputs(), batch_size=4 * batch)
            commit(store, result, reader)
            done += result.samples
        pipeline = done / (time.perf_counter() - t0)
        pipeline_cpu = (time.process_time() - c0) / done
    return {"images": n, "batch": batch, "threads": threads, "decode_threads": decode_threads,
            "recipe_ips": round(recipe, 2), "forward_ips": round(forward, 2),
            "pipeline_ips": round(pipeline, 2), "vs_recipe": round(pipeline / recipe, 3),
            "vs_forward": round(pipeline / forward, 3),
            "cpu_s_per_image": {"recipe": round(recipe_cpu, 3), "forward": round(forward_cpu, 3),
                                "pipeline": round(pipeline_cpu, 3)},
            "load_average_1min": round(os.getloadavg()[0], 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--decode-threads", type=int, default=2)
    args = ap.parse_args()
    r = bench(args.images, args.batch, args.threads, args.decode_threads)
    print(f"watermark: recipe loop {r['recipe_ips']} img/s, forward {r['forward_ips']} img/s, "
          f"curate stage {r['pipeline_ips']} img/s → c/a {r['vs_recipe']}, "
          f"c/b {r['vs_forward']}; CPU seconds per image {r['cpu_s_per_image']} "
          f"(1-min load average {r['load_average_1min']})", flush=True)
    print(json.dumps(r))


if __name__ == "__main__":
    main()
