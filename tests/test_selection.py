"""The selection phase on its own (no Ray): step order, first-reason attribution, uid clashes."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
from shardmaker import jpeg, sample_members, write_tar

from curate.config import pipeline_from_dict
from curate.io.shards import list_shards
from curate.scoring import score_shard, scoring_fingerprint, signals_path
from curate.selection import select


def test_steps_run_in_order_and_the_first_drop_wins(tmp_path: Path) -> None:
    same_uid = {"uid": "ab" * 16, "url": "u"}
    write_tar(tmp_path / "pool" / "00000.tar",
              sample_members("a", jpeg(300, 250, (1, 1, 1)), "a long enough english caption",
                             same_uid)
              + sample_members("b", jpeg(300, 250, (2, 2, 2)), "the same uid as the first one",
                               same_uid)
              + sample_members("c", jpeg(100, 100, (3, 3, 3)), "tiny")  # too short AND too small
              + sample_members("d", b"junk", "a corrupt image with a caption")
              + sample_members("e", jpeg(300, 250, (1, 1, 1)), "the same image as sample a"))
    p = pipeline_from_dict({
        "input": {"shards": str(tmp_path / "pool" / "*.tar")},
        "score": ["image_info", "caption_stats", "exact_hash"],
        "select": [{"rule": "threshold", "column": "caption_chars", "gt": 5, "reason": "short"},
                   {"rule": "sql", "keep": "width >= 200", "reason": "small"},
                   {"selector": "exact_dedup", "by": ["image"]}]})
    run_dir = tmp_path / "run"
    refs = list_shards(p.input.shards)  # type: ignore[arg-type]
    scorers = p.scorer_stages()
    for s in scorers:
        s.setup()
    for ref in refs:
        score_shard(ref, scorers, signals_path(run_dir, ref.shard_id),
                    scoring_fingerprint(scorers))
    sel = select(p, [signals_path(run_dir, r.shard_id) for r in refs], run_dir,
                 ["download", "read", "image_info", "caption_stats", "exact_hash"])
    manifest = pq.read_table(run_dir / "manifest.parquet").to_pylist()
    assert [(r["key"], r["reason"]) for r in manifest] == [
        ("a", None), ("b", "duplicate_uid"), ("c", "short"), ("d", "error:image_info"),
        ("e", "duplicate_image")]
    assert manifest[4]["duplicate_of"] == "ab" * 16
    assert (sel.samples, sel.kept) == (5, 1)
    assert [(f.reason, f.dropped) for f in sel.funnel] == [
        ("duplicate_uid", 1), ("error:image_info", 1), ("short", 1), ("small", 0),
        ("duplicate_image", 1)]
