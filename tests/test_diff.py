"""curate diff: two selections of the demo store that differ in one threshold and one added
rule (the second made by ``select``, without scoring)."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pyarrow.parquet as pq
from conftest import REPO, curate_cli

from curate.audit.diff import diff_runs, format_diff
from curate.config import load_pipeline, selection_from_dict
from curate.runner import select


def test_diff_names_the_steps_that_differ(demo_run: Path, demo_pool: Path, ray_local: None,
                                          tmp_path: Path) -> None:
    # B: a selection of the same store, with a stricter caption rule and an extra rule on the
    # image width
    b = tmp_path / "b"
    store = demo_run.parent.parent / "store"
    before = {p: p.stat().st_mtime_ns for p in store.rglob("*") if p.is_file()}
    pipe = load_pipeline(REPO / "pipelines" / "basic.yaml",
                         {"input": {"shards": str(demo_pool / "*.tar")}})
    raw = dict(pipe.raw)
    raw["select"] = [{"rule": "threshold", "column": "caption_words", "gt": 6,
                      "reason": "caption_too_few_words"},
                     {"rule": "in_set", "column": "lang", "values": ["en"],
                      "reason": "not_english"},
                     {"rule": "sql", "keep": "width >= 300", "reason": "narrow"},
                     {"selector": "exact_dedup"}]
    select(store, selection_from_dict(raw), b, progress=False)
    assert {p: p.stat().st_mtime_ns for p in store.rglob("*") if p.is_file()} == before
    d = diff_runs(demo_run, b, tmp_path / "d.parquet")
    con = duckdb.connect()
    ka = {u for (u,) in con.execute(f"SELECT uid FROM '{demo_run}/manifest/*.parquet' WHERE kept"
                                    ).fetchall()}
    kb = {u for (u,) in con.execute(f"SELECT uid FROM '{b}/manifest/*.parquet' WHERE kept"
                                    ).fetchall()}
    assert d.kept_both == len(ka & kb) and d.only_a == len(ka - kb) and d.only_b == len(kb - ka)
    assert d.only_a > 0 and set(d.only_a_by_reason) <= {"caption_too_few_words", "narrow",
                                                          "not_english"}
    assert sum(d.only_a_by_reason.values()) == d.only_a
    # B dropped fewer for the rules it no longer has: those samples are kept only in B
    assert set(d.only_b_by_reason) <= {"caption_too_short", "image_too_small",
                                       "aspect_ratio_too_extreme"}
    changes = {c.name: c for c in d.changes}
    assert changes["caption_too_few_words"].change == "changed"
    assert changes["caption_too_few_words"].a["gt"] == 2  # type: ignore[index]
    assert changes["caption_too_few_words"].b["gt"] == 6  # type: ignore[index]
    assert changes["narrow"].change == "added"
    assert changes["image_too_small"].change == "removed"
    text = format_diff(d)
    assert "select caption_too_few_words: gt: 2.0 → 6.0" in text, text
    assert "select narrow: only in B" in text
    table = pq.read_table(tmp_path / "d.parquet")
    assert table.num_rows >= d.only_a + d.only_b
    cli = curate_cli("diff", str(demo_run), str(b))
    assert cli.returncode == 0 and f"kept only in A:     {d.only_a:>9}" in cli.stdout

    # several runs in one DuckDB connection, one schema each
    import curate

    both = curate.open_runs({"a": demo_run, "b": b})
    assert both.execute("SELECT count(*) FROM a.kept").fetchone()[0] == len(ka)
    assert both.execute("SELECT count(*) FROM b.kept").fetchone()[0] == len(kb)
    assert both.execute("SELECT count(*) FROM a.kept SEMI JOIN b.kept USING (uid)"
                        ).fetchone()[0] == d.kept_both
    assert both.execute("SELECT count(*) FROM b.drops WHERE stage = 'sql' AND reason = 'narrow'"
                        ).fetchone()[0] == d.only_a_by_reason.get("narrow", 0) + both.execute(
        "SELECT count(*) FROM a.drops JOIN b.drops USING (uid) WHERE b.drops.reason = 'narrow'"
    ).fetchone()[0]
