"""benchmarks/recaption_throughput.py at a tiny size: it runs and ends with its JSON line (the
figures themselves are not asserted: tests check correctness, never speed)."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import REPO


def test_benchmark_runs_tiny() -> None:
    out = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "recaption_throughput.py"), "--images", "4",
         "--batches", "1", "4", "--train-steps", "0", "--max-tokens", "4", "--models", "demo"],
        capture_output=True, text=True, timeout=600, check=True)
    last = json.loads(out.stdout.strip().splitlines()[-1])
    assert last["benchmark"] == "recaption_throughput"
    rows = last["models"]["demo"]
    assert [r["batch"] for r in rows] == [1, 4] and all(r["captions"] == 4 for r in rows)
    assert rows[0]["vs_one_call_per_image"] == 1.0
