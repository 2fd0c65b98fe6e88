"""benchmarks/search_index.py at a tiny size: its printed figures and its JSON line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_search_benchmark_small() -> None:
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "search_index.py"), "--n", "12000",
         "--d", "32", "--clusters", "20", "--queries", "30", "--singles", "5",
         "--memory", "1M", "--nprobe", "2", "16"],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "exact: built in" in proc.stdout and "recall@10" in proc.stdout
    assert result["benchmark"] == "search_index" and result["rows"] == 12000
    ivf = result["ivfpq"]
    assert (ivf["nlist"], ivf["m"]) == (128, 8)  # √12000 → 128 lists; 8 bytes fit 1 MiB
    assert ivf["size_bytes"] < result["exact"]["size_bytes"]
    probes = {p["nprobe"]: p for p in ivf["probes"]}
    for p in probes.values():
        assert 0 <= p["recall_at_10"] <= p["recall_at_10_reranked"] <= 1
    # 16 of 128 lists, 40 candidates re-ranked exactly: nearly the exact top 10
    assert probes[16]["recall_at_10_reranked"] >= 0.9
