"""benchmarks/near_dedup.py on a tiny size: its JSON line, and its counts checked again."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))


def test_near_dedup_benchmark_small() -> None:
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "near_dedup.py"), "--n", "20000",
         "--baseline-n", "3000", "--k", "6", "--seed", "3"],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    result = json.loads(lines[-1])
    assert "baseline  (all pairs" in proc.stdout and "peak RSS" in proc.stdout
    assert (result["n"], result["k"], result["baseline_n"]) == (20000, 6, 3000)
    base, sub, full = result["baseline"], result["indexed_subset"], result["indexed_full"]
    assert base["pairs_compared"] == 3000 * 2999 // 2
    assert sub["identical_pairs"] is True and sub["pairs_within_k"] == base["pairs_within_k"]
    mh = result["faiss_multihash"]
    assert mh["identical_pairs"] is True and mh["pairs_within_k"] == base["pairs_within_k"]
    assert mh["nflip"] == 2 and result["ratio_seconds_vs_faiss_multihash"] > 0
    assert 0 < sub["candidates"] < base["pairs_compared"]
    assert result["ratio_pairs_compared"] > 1
    assert full["all_pairs"] == 20000 * 19999 // 2 and full["candidates"] >= full[
        "pairs_within_k"] > 0
    assert full["groups"] > 0 and 0 <= full["rows_beyond_k_of_first"] <= full["grouped_rows"]
    assert 0 < result["peak_rss_gib"] < 8

    # The same synthetic hashes, counted again by brute force.
    from near_dedup import synthetic

    from curate.lib.hamming import brute_force_pairs, components

    h, copies = synthetic(20000, 6, 0.02, 3)
    assert copies == result["planted_copies"] == 400
    sub_h, _ = synthetic(3000, 6, 0.02, 4)  # the subset has its own planted copies
    assert len(brute_force_pairs(sub_h, 6)) == base["pairs_within_k"]
    labels = components(h, 6)
    assert len(np.unique(labels[labels != np.arange(len(h))])) == full["groups"]
