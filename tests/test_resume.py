"""Interrupting a run (a shard that cannot be read) and resuming it gives the same result."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import demo_pipeline

from curate.errors import ShardFailed
from curate.runner import run


def test_failed_shard_then_resume_equals_uninterrupted_run(
        demo_pool: Path, demo_run: Path, tmp_path: Path, ray_local: None) -> None:
    pool = tmp_path / "pool"
    shutil.copytree(demo_pool, pool)
    shard = pool / "00003.tar"
    shard.rename(tmp_path / "00003.tar.aside")
    shard.write_bytes(bytes(range(256)) * 40)  # listed like a shard, fails every read attempt
    out = tmp_path / "run"
    with pytest.raises(ShardFailed, match="1 of 8 shards failed after 2 attempts"):
        run(demo_pipeline(pool, max_retries=1), out, progress=False)
    assert not (out / "selections").exists()
    done = {str(p): p.stat().st_mtime_ns for p in (out / "store").rglob("*.parquet")
            if p.name != "pool.parquet"}
    assert len(done) == 7 * 5 and not [p for p in done if "/00003." in p]  # base + 4 scorers
    log = [json.loads(x) for x in (out / "store" / "log.jsonl").read_text().splitlines()]
    assert [e["event"] for e in log].count("shard_retry") == 1
    assert any(e["event"] == "shard_failed" and "is not a tar archive" in e["error"]
               for e in log)

    shard.unlink()
    (tmp_path / "00003.tar.aside").rename(shard)
    result = run(demo_pipeline(pool, write_shards=True), out, progress=False)
    assert result.shards_resumed == 7
    for name, mtime in done.items():  # finished shards were not recomputed
        assert Path(name).stat().st_mtime_ns == mtime

    assert pq.read_table(result.dir / "manifest").equals(
        pq.read_table(demo_run / "manifest"))
    ours = sorted((result.dir / "output").glob("*.tar"))
    theirs = sorted((demo_run / "output").glob("*.tar"))
    assert [p.name for p in ours] == [p.name for p in theirs]
    for a, b in zip(ours, theirs, strict=True):
        assert a.read_bytes() == b.read_bytes()

    # A third run changes nothing and recomputes nothing.
    again = run(demo_pipeline(pool), out, progress=False)
    assert again.shards_resumed == 8 and again.kept == result.kept


def test_changing_a_rule_reuses_every_score(demo_pool: Path, tmp_path: Path,
                                            ray_local: None) -> None:
    from conftest import REPO

    from curate.config import load_pipeline

    out = tmp_path / "run"
    run(demo_pipeline(demo_pool), out, progress=False)
    raw = (REPO / "pipelines" / "basic.yaml").read_text().replace(
        "  - selector: exact_dedup\n", "  - rule: threshold\n    column: width\n    min: 400\n"
        "    reason: narrow\n  - selector: exact_dedup\n")
    path = tmp_path / "p.yaml"
    path.write_text(raw)
    p = load_pipeline(path, {"input": {"shards": str(demo_pool / "*.tar")}})
    result = run(p, out, progress=False)
    assert result.shards_resumed == 8
    assert dict(result.funnel)["narrow"] > 0
