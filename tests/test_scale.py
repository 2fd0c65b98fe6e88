"""benchmarks/scale.py on a small pool: its JSON line, and its numbers against the manifest."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import duckdb
import pyarrow.parquet as pq

from curate.sql import literal

REPO = Path(__file__).resolve().parent.parent
STEPS = ("load", "rules", "top_fraction", "metaclip", "funnel_query", "manifest", "select")


def test_scale_benchmark_small(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "scale.py"), "--rows", "20000",
         "--shard-rows", "5000", "--baseline-rows", "5000", "--workers", "1",
         "--workdir", str(tmp_path), "--keep"],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    result = json.loads(lines[-1])
    assert "(a) top_fraction threshold" in proc.stdout and "peak RSS" in proc.stdout
    assert result["rows"] == 20000 and result["baseline"]["rows"] == 5000
    for step in STEPS:
        assert isinstance(result[f"{step}_seconds"], (int, float))
        assert result[f"{step}_seconds"] >= 0
        assert result["baseline"][f"{step}_seconds"] >= 0
    assert result["select_seconds"] >= result["load_seconds"] + result["manifest_seconds"]
    assert 0 < result["peak_rss_gib"] < 24
    assert result["funnel_matches_manifest"] is True

    # The generated pool: a store of 4 shards of 5000 rows, with the columns real scorers
    # write, one file per scorer.
    store = Path(result["run_dir"]).parent / "store"
    base = sorted(store.glob("base/*/*.parquet"))
    assert [pq.read_metadata(f).num_rows for f in base] == [5000] * 4
    assert {"uid", "shard", "index", "status", "image_sha256"} <= set(pq.read_schema(
        base[0]).names)
    names = {n for f in store.glob("scores/*/*/00000.*.parquet") for n in pq.read_schema(f).names}
    assert {"clip_score", "caption_chars", "lang", "metaclip_entries", "__status"} <= names

    # Recount from the manifest it wrote: every sample once, in pool order, kept as reported.
    manifest = Path(result["run_dir"]) / "manifest"
    con = duckdb.connect()
    rows, kept, uids, out_of_order = con.sql(f"""
        SELECT count(*), count(*) FILTER (WHERE kept), count(DISTINCT uid),
               count(*) FILTER (WHERE shard < prev_shard
                                OR (shard = prev_shard AND "index" <= prev_index))
        FROM (SELECT *, lag(shard) OVER w AS prev_shard, lag("index") OVER w AS prev_index
              FROM read_parquet({literal(str(manifest))}) WINDOW w AS (ORDER BY file_row_number))
        """).fetchall()[0]
    assert (rows, uids, out_of_order) == (20000, 20000, 0)
    assert kept == result["kept"] > 0
    top = con.sql(f"""SELECT count(*) FROM read_parquet({literal(str(manifest))})
                      WHERE reason = 'clip_score_not_top'""").fetchall()[0][0]
    assert top > 0
