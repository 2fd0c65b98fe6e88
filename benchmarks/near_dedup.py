"""Near-duplicate search over 64-bit hashes: multi-index hashing against all pairs.

Generates N synthetic 64-bit hashes (default 1M): uniformly random, then a fraction of them
(default 2%) replaced by near copies of other hashes with 0 to k + 2 random bits flipped (so
planted pairs fall both inside and just outside ``k``), 1 to 3 copies of each source (so
some groups chain). Then, in one run:

  baseline: on ``--baseline-n`` hashes (default 100k, made the same way, with their own
            planted copies), every pair compared: faiss ``IndexBinaryFlat.range_search``
            (exhaustive, multi-threaded C++);
  faiss:    faiss's own multi-index, ``IndexBinaryMultiHash`` (3 tables of 21 bits, ``nflip``
            so that it is exact at k), range search on the same subset (``--no-multihash``
            skips it);
  indexed:  ``curate.lib.hamming.pairs_within`` on the same subset (the three must find
            identical pairs: the searches are exact), then ``components`` (what
            ``near_dedup`` runs) on all N hashes.

Prints the pairs compared (all pairs vs the index's candidates), pairs found within ``k``,
seconds, their ratios, groups and how many rows chain (are farther than ``k`` from their
group's first row), and the process's peak resident memory. Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from curate.lib.hamming import (
    SearchStats,
    choose_plan,
    components,
    distance,
    pairs_within,
)


def peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB → GiB (Linux)


def synthetic(n: int, k: int, fraction: float, seed: int) -> tuple[np.ndarray, int]:
    """uint64 hashes with planted near copies; returns (hashes, copies planted)."""
    rng = np.random.default_rng(seed)
    h = rng.integers(0, 2**64 - 1, size=n, dtype=np.uint64, endpoint=True)
    copies = int(n * fraction)
    targets = rng.choice(n, size=copies, replace=False)
    # 1 to 3 copies of each source: copies of one source may be near each other and not the
    # source (or the other way round), so some groups chain
    per_source = rng.integers(1, 4, size=copies)
    sources = np.repeat(rng.integers(0, n, size=copies), per_source)[:copies]
    flips = rng.integers(0, k + 3, size=copies)
    bits = np.zeros(copies, dtype=np.uint64)
    for i, f in enumerate(flips):
        for b in rng.choice(64, size=f, replace=False):
            bits[i] |= np.uint64(1) << np.uint64(b)
    h[targets] = h[sources] ^ bits
    return h, copies


def brute_force_faiss(h: np.ndarray, k: int) -> tuple[np.ndarray, float]:
    """Every pair i < j within k, by faiss's exhaustive binary range search; seconds."""
    import faiss

    codes = np.ascontiguousarray(h).view(np.uint8).reshape(-1, 8)
    t0 = time.perf_counter()
    index = faiss.IndexBinaryFlat(64)
    index.add(codes)
    lims, _, labels = index.range_search(codes, k + 1)  # distances < radius
    seconds = time.perf_counter() - t0
    rows = np.repeat(np.arange(len(h)), np.diff(lims.astype(np.int64)))
    keep = rows < labels
    pairs = np.stack([rows[keep], labels[keep].astype(np.int64)], axis=1)
    return pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))], seconds


def multihash_faiss(h: np.ndarray, k: int) -> tuple[np.ndarray, float, int]:
    """The same pairs by faiss's IndexBinaryMultiHash: 3 tables of 21 bits, each probed
    within ``nflip`` bits, with 3 * (nflip + 1) >= k + 1 (exact); (pairs, seconds, nflip)."""
    import faiss

    nflip = -(-(k + 1) // 3) - 1
    codes = np.ascontiguousarray(h).view(np.uint8).reshape(-1, 8)
    t0 = time.perf_counter()
    index = faiss.IndexBinaryMultiHash(64, 3, 21)
    index.nflip = nflip
    index.add(codes)
    lims, _, labels = index.range_search(codes, k + 1)
    seconds = time.perf_counter() - t0
    rows = np.repeat(np.arange(len(h)), np.diff(lims.astype(np.int64)))
    keep = rows < labels
    pairs = np.stack([rows[keep], labels[keep].astype(np.int64)], axis=1)
    return pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))], seconds, nflip


def chaining(h: np.ndarray, labels: np.ndarray, k: int) -> tuple[int, int, int]:
    """(groups of 2+, rows in them beyond their group's first, rows farther than k from it)."""
    sizes = np.bincount(labels)
    grouped = labels != np.arange(len(h))
    beyond = int((distance(h[grouped], h[labels[grouped]]) > k).sum())
    return int((sizes > 1).sum()), int(grouped.sum()), beyond


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--baseline-n", type=int, default=100_000)
    ap.add_argument("--fraction", type=float, default=0.02, help="share of planted copies")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-multihash", action="store_true",
                    help="skip faiss's IndexBinaryMultiHash on the subset")
    args = ap.parse_args()
    n, k, nb = args.n, args.k, min(args.baseline_n, args.n)
    out: dict[str, object] = {"n": n, "k": k, "baseline_n": nb, "fraction": args.fraction}

    t0 = time.perf_counter()
    h, copies = synthetic(n, k, args.fraction, args.seed)
    out["planted_copies"] = copies
    print(f"{n:,} hashes, {copies:,} planted near copies (0..{k + 2} bits flipped), "
          f"generated in {time.perf_counter() - t0:.1f} s", flush=True)
    components(h[:1000], k)  # compile (or load) the kernel outside the timings

    sub, _ = synthetic(nb, k, args.fraction, args.seed + 1)
    all_pairs = nb * (nb - 1) // 2
    want, base_s = brute_force_faiss(sub, k)
    print(f"baseline  (all pairs, faiss IndexBinaryFlat) on {nb:,}: {all_pairs:,} pairs compared, "
          f"{len(want):,} within k, {base_s:.2f} s", flush=True)
    mh_exact, mh_s = True, 0.0
    if not args.no_multihash:
        mh, mh_s, nflip = multihash_faiss(sub, k)
        mh_exact = bool(np.array_equal(mh, want))
        print(f"faiss     IndexBinaryMultiHash (3 x 21 bits, nflip {nflip}) on {nb:,}: "
              f"{len(mh):,} within k, {mh_s:.2f} s; identical pairs: {mh_exact}", flush=True)
        out["faiss_multihash"] = {"tables": 3, "bits": 21, "nflip": nflip,
                                  "pairs_within_k": len(mh), "seconds": round(mh_s, 3),
                                  "identical_pairs": mh_exact}
    st = SearchStats()
    t0 = time.perf_counter()
    got = pairs_within(sub, k, stats=st)
    idx_s = time.perf_counter() - t0
    exact = bool(np.array_equal(got, want))
    plan = choose_plan(nb, k)
    print(f"indexed   (multi-index, blocks {plan.widths}, radii {plan.radii}) on {nb:,}: "
          f"{st.candidates:,} candidates, {st.found:,} within k, {idx_s:.2f} s; "
          f"identical pairs: {exact}", flush=True)
    print(f"  ratios on {nb:,}: {all_pairs / max(st.candidates, 1):,.0f}x fewer pairs compared, "
          f"{base_s / idx_s:.1f}x faster", flush=True)
    out["baseline"] = {"method": "faiss IndexBinaryFlat range_search (all pairs)",
                       "pairs_compared": all_pairs, "pairs_within_k": len(want),
                       "seconds": round(base_s, 3)}
    out["indexed_subset"] = {"candidates": st.candidates, "pairs_within_k": st.found,
                             "seconds": round(idx_s, 3), "identical_pairs": exact,
                             "block_widths": list(plan.widths), "block_radii": list(plan.radii)}
    out["ratio_pairs_compared"] = round(all_pairs / max(st.candidates, 1), 1)
    out["ratio_seconds"] = round(base_s / idx_s, 2)
    if not args.no_multihash:
        out["ratio_seconds_vs_faiss_multihash"] = round(mh_s / idx_s, 2)
        print(f"  {mh_s / idx_s:.1f}x faster than faiss's multi-index", flush=True)
    if not (exact and mh_exact):
        raise SystemExit("a search missed or invented pairs")

    st = SearchStats()
    t0 = time.perf_counter()
    labels = components(h, k, stats=st)
    full_s = time.perf_counter() - t0
    groups, grouped, beyond = chaining(h, labels, k)
    plan = choose_plan(st.hashes, k)
    full_pairs = n * (n - 1) // 2
    est = base_s * full_pairs / all_pairs
    fewer = full_pairs / max(st.candidates, 1)
    print(f"indexed   components on {n:,} ({st.hashes:,} distinct; blocks {plan.widths}, radii "
          f"{plan.radii}): {st.candidates:,} candidates ({fewer:,.0f}x "
          f"fewer than the {full_pairs:,} pairs), {st.found:,} within k, {full_s:.2f} s "
          f"(all pairs at the baseline's rate: ~{est:,.0f} s, estimated)", flush=True)
    print(f"  {groups:,} groups, {grouped:,} rows beyond their group's first, {beyond:,} of "
          f"them farther than k from it (chaining: {100 * beyond / max(grouped, 1):.2f}%)")
    print(f"peak RSS {peak_gib():.2f} GiB", flush=True)
    out["indexed_full"] = {"distinct_hashes": st.hashes, "candidates": st.candidates,
                           "pairs_within_k": st.found, "seconds": round(full_s, 3),
                           "all_pairs": full_pairs, "groups": groups, "grouped_rows": grouped,
                           "rows_beyond_k_of_first": beyond,
                           "block_widths": list(plan.widths), "block_radii": list(plan.radii)}
    out["all_pairs_seconds_estimated"] = round(est, 1)
    out["peak_rss_gib"] = round(peak_gib(), 3)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
