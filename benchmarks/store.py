"""Score once: what adding a scorer to a scored pool costs, what the driver receives, and what
a shard's content identity costs.

All in one run, on a generated demo-like pool (``--shards`` x ``--per-shard`` samples, real
photos from scikit-image and rendered text posters, ``curate demo-data``):

(1) add:    the pool is scored with the basic scorers (image_info, caption_stats, language,
            exact_hash) and a CLIP model (the curate-tiny config, random weights) into a store.
            Then ``image_complexity`` (which reads every image) is added: the wall time of that
            scoring pass, in which only image_complexity computes, against the same scorer
            alone on a fresh store (the baseline). Both run in one local Ray session (2 CPUs),
            alternating, ``--repeat`` times each; the medians are compared. Also timed: adding
            an ``embedding_head`` over the stored CLIP image embedding (no image is read).
(2) driver: a ``ray.cluster_utils.Cluster`` (a head without CPUs and two 1-CPU workers, so no
            worker runs on the driver's node) scores the pool with the basic scorers and CLIP
            into a store on a plain path (the workers return their results and the driver
            writes them) and into a ``file://`` store (shared storage: the workers commit their
            own results). Bytes the driver received, per scored sample: the pickled size of what
            every task returned.
(3) hash:   SHA-256 content identity of one shard-sized file (``--hash-mib``), GB/s, read
            through ``curate.store.identity.file_digest`` while the file is in the page cache.

Prints the figures and ratios, then one JSON line.

    python benchmarks/store.py --shards 8 --per-shard 128
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

BASIC = ["image_info", "caption_stats", "language", "exact_hash"]
CLIP = {"clip": {"model": "curate-tiny", "pretrained": None, "cpus": 1, "batch_size": 64}}


def pipeline(pool: Path, score: list[Any]) -> Any:
    from curate.config import pipeline_from_dict

    return pipeline_from_dict({"name": "bench", "input": {"shards": str(pool / "*.tar")},
                               "score": score})


def score_seconds(pool: Path, score: list[Any], store: Path, **kw: Any) -> tuple[float, Any]:
    from curate.runner import score as run_score

    t0 = time.perf_counter()
    result = run_score(pipeline(pool, score), store, progress=False, **kw)
    return time.perf_counter() - t0, result


def bench_add(pool: Path, work: Path, repeat: int, head: Path) -> dict[str, Any]:
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR")
    try:
        prepared = work / "scored"
        score_seconds(pool, [*BASIC, CLIP], prepared)  # the scored pool (not timed)
        score_seconds(pool, ["image_complexity"], work / "warm")  # warm caches, imports
        alone, added, heads = [], [], []
        for r in range(repeat):
            s, res = score_seconds(pool, ["image_complexity"], work / f"alone{r}")
            assert res.scorers["image_complexity"].computed == res.shards
            alone.append(s)
            copy = work / f"added{r}"
            shutil.copytree(prepared, copy)
            s, res = score_seconds(pool, [*BASIC, CLIP, "image_complexity"], copy)
            counts = {k: v.computed for k, v in res.scorers.items()}
            assert counts == {**dict.fromkeys(BASIC, 0), "clip": 0,
                              "image_complexity": res.shards}, counts
            added.append(s)
            s, res = score_seconds(pool, [*BASIC, CLIP, {"embedding_head": {
                "weights": str(head), "name": "bench"}}], copy)
            assert res.scorers["clip"].samples == 0
            heads.append(s)
        samples = res.samples
    finally:
        ray.shutdown()
    a, b, h = statistics.median(alone), statistics.median(added), statistics.median(heads)
    return {"samples": samples, "alone_seconds": [round(x, 2) for x in alone],
            "added_seconds": [round(x, 2) for x in added],
            "head_seconds": [round(x, 2) for x in heads],
            "alone_median_s": round(a, 2), "added_median_s": round(b, 2),
            "add_vs_alone": round(b / a, 3), "head_median_s": round(h, 2)}


def bench_driver(pool: Path, work: Path) -> dict[str, Any]:
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    for _ in range(2):
        cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    out: dict[str, Any] = {}
    try:
        for name, store in (("plain_path", str(work / "plain")),
                            ("file_url", f"file://{work / 'shared'}")):
            s, res = score_seconds(pool, [*BASIC, CLIP], store, address=cluster.address,
                                   measure_transfer=True)
            out[name] = {"seconds": round(s, 2), "samples": res.samples,
                         "driver_bytes_in": res.driver_bytes_in,
                         "driver_bytes_per_sample": round(res.driver_bytes_in / res.samples, 1)}
            ray.shutdown()
    finally:
        ray.shutdown()
        cluster.shutdown()
    out["ratio_plain_vs_shared"] = round(out["plain_path"]["driver_bytes_in"] / max(
        1, out["file_url"]["driver_bytes_in"]), 1)
    return out


def bench_hash(work: Path, mib: int) -> dict[str, Any]:
    from curate.store.identity import file_digest

    path = work / "hash.bin"
    rng = np.random.default_rng(0)
    with open(path, "wb") as f:
        for _ in range(mib):
            f.write(rng.bytes(2**20))
    file_digest(str(path))  # into the page cache
    runs = []
    for _ in range(3):
        t0 = time.perf_counter()
        file_digest(str(path))
        runs.append(time.perf_counter() - t0)
    best = min(runs)
    gb = mib * 2**20 / 1e9
    return {"mib": mib, "seconds": [round(x, 3) for x in runs],
            "gb_per_s": round(gb / best, 2), "seconds_per_gb": round(best / gb, 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--per-shard", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--hash-mib", type=int, default=1024)
    ap.add_argument("--skip-cluster", action="store_true")
    args = ap.parse_args()

    from curate.demo.generator import make_demo_pool

    work = Path(tempfile.mkdtemp(prefix="curate-store-bench-"))
    try:
        make_demo_pool(work / "pool", shards=args.shards, samples_per_shard=args.per_shard)
        rng = np.random.default_rng(1)
        head = work / "head.npz"
        np.savez(head, w0=rng.normal(size=(256, 16)).astype(np.float32),
                 b0=np.zeros(16, np.float32), w1=rng.normal(size=(16, 1)).astype(np.float32),
                 b1=np.zeros(1, np.float32))
        hashing = bench_hash(work, args.hash_mib)
        print(f"(3) shard identity: SHA-256 at {hashing['gb_per_s']} GB/s "
              f"({hashing['seconds_per_gb']} s per GB, file in the page cache)", flush=True)
        add = bench_add(work / "pool", work / "add", args.repeat, head)
        print(f"(1) {add['samples']} samples: image_complexity alone on a fresh store "
              f"{add['alone_median_s']} s (median of {args.repeat}); added to a store scored "
              f"with the basic scorers + CLIP {add['added_median_s']} s: "
              f"x{add['add_vs_alone']} of alone", flush=True)
        print(f"    an embedding head over the stored CLIP embeddings, added: "
              f"{add['head_median_s']} s (no image read, CLIP not loaded)", flush=True)
        driver = None
        if not args.skip_cluster:
            driver = bench_driver(work / "pool", work / "driver")
            p, f = driver["plain_path"], driver["file_url"]
            print(f"(2) bytes the driver received per scored sample (3 nodes, no worker on the "
                  f"driver's): store on a plain path {p['driver_bytes_per_sample']}, on a "
                  f"file:// URL {f['driver_bytes_per_sample']} "
                  f"(x{driver['ratio_plain_vs_shared']})", flush=True)
        print(json.dumps({"add": add, "driver": driver, "hash": hashing,
                          "cpus": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2)}))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
