"""Search indices at scale: exact (IndexFlatIP, the baseline) against IVF-PQ at a memory budget.

Generates N unit vectors (default 1M × 512, float32) in two levels of clusters
(``--clusters`` centres, ``SUBS`` sub-centres each: ~10 points per sub-centre at 1M), so that
the 10 nearest neighbours are a query's near copies, and ``--queries`` held-out queries from
the same distribution. Then, in one run, with ``curate.audit.knn_index`` (what ``curate search``
builds):

  exact:   build time, index size, query time per query (one at a time) and per query in a
           batch; its top-10 is the ground truth;
  ivfpq:   the plan the memory budget gives (nlist, m), build time (training + adding), size,
           and for each nprobe the query times and recall@10 against exact, raw and after the
           re-ranking ``curate search`` does (``RERANK`` × 10 candidates scored exactly).

Prints ratios to exact and ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from curate.audit.knn_index import (
    ArraySource,
    IndexPlan,
    build_index,
    plan_index,
    search_index,
)
from curate.audit.search import RERANK

SUBS = 100  # sub-centres per centre
SUB_NOISE = 0.6  # norm of a sub-centre's offset from its centre (centres have norm 1)
NOISE = 0.3  # norm of a point's offset from its sub-centre: cosines ~0.94 within a
# sub-centre, ~0.69 across sub-centres of a centre, ~0 across centres


def peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def synthetic(n: int, d: int, clusters: int, queries: int, seed: int,
              ) -> tuple[np.ndarray, np.ndarray]:
    """(data, queries), unit float32, in two levels as a web pool is (concepts, and near
    copies of one picture within a concept): a point is a sub-centre plus noise, a sub-centre
    a centre plus noise (``SUBS`` per centre)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, d), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    subs = np.repeat(centres, SUBS, axis=0) + SUB_NOISE * rng.standard_normal(
        (clusters * SUBS, d), dtype=np.float32) / math.sqrt(d)

    def draw(m: int) -> np.ndarray:
        out = np.empty((m, d), dtype=np.float32)
        for a in range(0, m, 65536):
            b = min(m, a + 65536)
            c = rng.integers(0, len(subs), size=b - a)
            out[a:b] = subs[c] + NOISE * rng.standard_normal((b - a, d),
                                                             dtype=np.float32) / math.sqrt(d)
            out[a:b] /= np.linalg.norm(out[a:b], axis=1, keepdims=True)
        return out

    return draw(n), draw(queries)


def size_bytes(index: object) -> int:
    import faiss

    return int(faiss.serialize_index(index).size)


def timed_queries(index: object, q: np.ndarray, k: int, nprobe: int | None,
                  singles: int) -> tuple[float, float, np.ndarray, np.ndarray]:
    """(ms per query one at a time, ms per query in one batch, scores, ids of the batch)."""
    t = time.perf_counter()
    for i in range(singles):
        search_index(index, q[i:i + 1], k, nprobe)
    single_ms = (time.perf_counter() - t) / singles * 1000
    t = time.perf_counter()
    scores, ids = search_index(index, q, k, nprobe)
    batch_ms = (time.perf_counter() - t) / len(q) * 1000
    return single_ms, batch_ms, scores, ids


def recall(ids: np.ndarray, truth: np.ndarray, k: int) -> float:
    return float(np.mean([len(set(a[:k]) & set(b[:k])) / k for a, b in
                          zip(ids, truth, strict=True)]))


def reranked(data: np.ndarray, q: np.ndarray, ids: np.ndarray, k: int) -> np.ndarray:
    out = np.empty((len(q), k), dtype=np.int64)
    for i in range(len(q)):
        cand = ids[i][ids[i] >= 0]
        s = data[cand] @ q[i]
        out[i] = cand[np.argsort(-s, kind="stable")[:k]]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--d", type=int, default=512)
    ap.add_argument("--clusters", type=int, default=1000)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--singles", type=int, default=50, help="queries timed one at a time")
    ap.add_argument("--memory", default="128M", help="IVF-PQ memory budget")
    ap.add_argument("--nprobe", type=int, nargs="+", default=[8, 16, 32, 64])
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    import faiss

    k = args.k
    t = time.perf_counter()
    data, q = synthetic(args.n, args.d, args.clusters, args.queries, args.seed)
    print(f"generated {args.n:,} × {args.d} vectors in {args.clusters} clusters and "
          f"{args.queries} queries in {time.perf_counter() - t:.1f}s "
          f"({faiss.omp_get_max_threads()} faiss threads)")
    src = ArraySource(data)

    exact_plan = IndexPlan("exact", args.n, args.d, 0)
    t = time.perf_counter()
    exact = build_index(src, exact_plan)
    exact_build = time.perf_counter() - t
    exact_size = size_bytes(exact)
    e_single, e_batch, _, truth = timed_queries(exact, q, k, None, args.singles)
    print(f"exact: built in {exact_build:.1f}s, {exact_size / 2**20:.0f} MiB; "
          f"{e_single:.2f} ms/query alone, {e_batch:.3f} ms/query in a batch of {len(q)}")

    plan = plan_index(args.n, args.d, args.memory, "ivfpq")
    t = time.perf_counter()
    ivf = build_index(src, plan)
    ivf_build = time.perf_counter() - t
    ivf_size = size_bytes(ivf)
    print(f"ivfpq at {args.memory}: {plan.describe()}; built in {ivf_build:.1f}s "
          f"({ivf_build / exact_build:.1f}× exact), {ivf_size / 2**20:.1f} MiB "
          f"({exact_size / ivf_size:.1f}× smaller)")
    probes = []
    for nprobe in args.nprobe:
        single, batch, _, ids = timed_queries(ivf, q, k, nprobe, args.singles)
        wide_ids = search_index(ivf, q, k * RERANK, nprobe)[1]
        r_raw = recall(ids, truth, k)
        r_rr = recall(reranked(data, q, wide_ids, k), truth, k)
        probes.append({"nprobe": nprobe, "single_ms": round(single, 3),
                       "batch_ms": round(batch, 4), "recall_at_10": round(r_raw, 4),
                       "recall_at_10_reranked": round(r_rr, 4),
                       "speedup_single": round(e_single / single, 2),
                       "speedup_batch": round(e_batch / batch, 2)})
        print(f"  nprobe {nprobe:>3}: {single:.2f} ms/query alone ({e_single / single:.1f}× "
              f"exact), {batch:.3f} ms/query batched ({e_batch / batch:.1f}×); recall@{k} "
              f"{r_raw:.3f}, re-ranked from {k * RERANK} {r_rr:.3f}")
    print(f"peak RSS {peak_gib():.2f} GiB")
    print(json.dumps({"benchmark": "search_index", "rows": args.n, "dim": args.d,
                      "clusters": args.clusters, "queries": args.queries, "k": k,
                      "threads": faiss.omp_get_max_threads(),
                      "exact": {"build_seconds": round(exact_build, 3),
                                "size_bytes": exact_size, "single_ms": round(e_single, 3),
                                "batch_ms": round(e_batch, 4)},
                      "ivfpq": {"memory": args.memory, "nlist": plan.nlist, "m": plan.m,
                                "build_seconds": round(ivf_build, 3), "size_bytes": ivf_size,
                                "build_ratio": round(ivf_build / exact_build, 2),
                                "size_ratio": round(exact_size / ivf_size, 2),
                                "probes": probes},
                      "peak_rss_gib": round(peak_gib(), 2)}))


if __name__ == "__main__":
    main()
