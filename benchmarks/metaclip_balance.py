"""MetaCLIP balancing (pass 1 + pass 2 of the ``metaclip_balance`` selector) on a simulated pool.

The benchmark writes signals-like Parquet shards (1M rows each: uid, metaclip_entries with a
Zipf-like entry distribution over --entries ids, ~--matches ids per row), loads them into a
file-backed DuckDB table under a fixed memory limit (as a large selection would run), and times
the selector's ``apply``: the entry-count aggregation and the streaming keep rule. Each size runs
in a fresh subprocess so its peak RSS is its own. Run at --rows and at a tenth of it: memory
should stay flat while time grows linearly. Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SHARD_ROWS = 1_000_000


def make_pool(out: Path, rows: int, entries: int, matches: float, seed: int = 0) -> list[Path]:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    files = []
    for s, start in enumerate(range(0, rows, SHARD_ROWS)):
        n = min(SHARD_ROWS, rows - start)
        sizes = rng.poisson(matches, n).astype(np.int32)
        flat = (rng.zipf(1.3, int(sizes.sum())) - 1) % entries
        offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int32)
        lists = pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat.astype(np.int32)))
        # duplicate ids inside a row are rare for the tail and harmless for the timing
        hexes = rng.bytes(16 * n).hex()
        uids = [hexes[i:i + 32] for i in range(0, 32 * n, 32)]
        t = pa.table({"uid": pa.array(uids),
                      "shard": pa.array([f"{s:05d}.tar"] * n),
                      "index": pa.array(np.arange(n, dtype=np.int32)),
                      "metaclip_entries": lists})
        path = out / f"{s:05d}.parquet"
        pq.write_table(t, path)
        files.append(path)
    return files


def run_one(pool_dir: Path, db: Path, memory_limit: str) -> dict[str, Any]:
    import duckdb

    from curate.stages.base import SelectContext
    from curate.stages.metaclip_balance import MetaclipBalance

    con = duckdb.connect(str(db))
    con.execute(f"SET memory_limit = '{memory_limit}'")
    con.execute(f"SET temp_directory = '{db.parent / 'tmp'}'")
    t0 = time.perf_counter()
    con.execute(f"""CREATE TABLE pool AS SELECT row_number() OVER () AS _row, *,
                    CAST(NULL AS VARCHAR) AS reason, CAST(NULL AS DOUBLE) AS metaclip_keep_p,
                    CAST(NULL AS INTEGER) AS metaclip_texts_kept
                    FROM read_parquet('{pool_dir}/*.parquet')""")
    load = time.perf_counter() - t0
    rss_load = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    t0 = time.perf_counter()
    # synthetic ids over --entries positions: no metadata file to check them against
    MetaclipBalance(MetaclipBalance.Params(t=20_000, metadata_column=None)).apply(
        con, "pool", SelectContext(db.parent))
    seconds = time.perf_counter() - t0
    kept = con.execute("SELECT count(*) FROM pool WHERE reason IS NULL").fetchone()[0]
    rows = con.execute("SELECT count(*) FROM pool").fetchone()[0]
    con.close()
    return {"rows": rows, "kept": kept, "load_seconds": round(load, 2),
            "balance_seconds": round(seconds, 2), "rows_per_s": round(rows / seconds),
            "peak_rss_gib_after_load": round(rss_load, 3),
            "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)}


def measure(rows: int, entries: int, matches: float, memory_limit: str) -> dict[str, Any]:
    """Generate a pool of ``rows`` and balance it in a fresh subprocess."""
    with tempfile.TemporaryDirectory() as tmp:
        pool = Path(tmp) / "signals"
        pool.mkdir()
        make_pool(pool, rows, entries, matches)
        out = subprocess.run(
            [sys.executable, __file__, "--child", str(pool), str(Path(tmp) / "run" / "pool.db"),
             memory_limit], capture_output=True, text=True, check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        db = Path(sys.argv[3])
        db.parent.mkdir(parents=True, exist_ok=True)
        print(json.dumps(run_one(Path(sys.argv[2]), db, sys.argv[4])))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--entries", type=int, default=500_000)
    ap.add_argument("--matches", type=float, default=5.0, help="mean entries per row")
    ap.add_argument("--memory-limit", default="2GB", help="DuckDB memory_limit")
    args = ap.parse_args()
    small = measure(max(1, args.rows // 10), args.entries, args.matches, args.memory_limit)
    big = measure(args.rows, args.entries, args.matches, args.memory_limit)
    for r in (small, big):
        print(f"{r['rows']:>11,} rows: balance {r['balance_seconds']:7.1f}s "
              f"({r['rows_per_s']:,} rows/s), peak RSS {r['peak_rss_gib']:.2f} GiB "
              f"(after loading the table {r['peak_rss_gib_after_load']:.2f}), kept {r['kept']:,}")
    print(f"10x rows: time x{big['balance_seconds'] / small['balance_seconds']:.1f}, "
          f"peak RSS x{big['peak_rss_gib'] / small['peak_rss_gib']:.2f}")
    print(json.dumps({"benchmark": "metaclip_balance", "entries": args.entries,
                      "rows": big["rows"], "balance_seconds": big["balance_seconds"],
                      "peak_rss_gib": big["peak_rss_gib"], "small": small}))


if __name__ == "__main__":
    main()
