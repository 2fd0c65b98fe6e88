"""The selection phase on its own (no Ray): step order, first-reason attribution, uid clashes."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest
from shardmaker import jpeg, sample_members, write_tar
from storemaker import write_store

from curate.config import pipeline_from_dict
from curate.runner import score
from curate.select.pool import PoolSource
from curate.select.selection import select
from curate.store.store import Store


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
    scored = score(p, tmp_path / "store", local=True)
    source = PoolSource.of(Store(scored.store))
    # the store's canonical order (by label), not the pipeline's: see StoreMeta.current
    assert source.error_stages() == ["download", "read", "caption_stats", "exact_hash",
                                     "image_info"]
    sel = select(p.select, source, run_dir)
    manifest = pq.read_table(run_dir / "manifest").to_pylist()
    assert [(r["key"], r["reason"]) for r in manifest] == [
        ("a", None), ("b", "duplicate_uid"), ("c", "short"), ("d", "error:image_info"),
        ("e", "duplicate_image")]
    assert manifest[4]["duplicate_of"] == "ab" * 16
    assert (sel.samples, sel.kept) == (5, 1)
    assert [(f.reason, f.dropped) for f in sel.funnel] == [
        ("duplicate_uid", 1), ("error:image_info", 1), ("short", 1), ("small", 0),
        ("duplicate_image", 1)]


def _store(root: Path, shards: dict[str, list[tuple[int, str, int]]]) -> PoolSource:
    """A store whose shards hold the rows given: (index, uid, caption_chars)."""
    import pyarrow as pa

    rows = [{"uid": uid, "shard": shard, "key": f"{shard}/{i}", "index": i,
             "caption_chars": chars, "caption_words": 3}
            for shard, items in shards.items() for i, uid, chars in items]
    return write_store(root, rows, {"caption_chars": pa.int32(), "caption_words": pa.int32()},
                       label="caption_stats")


def _steps(*select: dict[str, object]) -> list:
    return pipeline_from_dict({"input": {"shards": "x"}, "score": ["caption_stats"],
                               "select": list(select)}).select


def test_pool_order_is_shard_then_index(tmp_path: Path) -> None:
    """Selection reads the store's shards in pool order, rows in shard order; a uid repeated
    in a later shard is the duplicate, and top_fraction ranks the whole pool."""
    shards = {"a.tar": [(0, "0" * 31 + "1", 10), (1, "d" * 32, 50), (2, "0" * 31 + "3", 30)],
              "b.tar": [(0, "d" * 32, 70), (1, "0" * 31 + "5", 20)],
              "c.tar": [(0, "0" * 31 + "6", 60), (1, "0" * 31 + "7", 40)]}
    steps = _steps({"rule": "threshold", "column": "caption_chars", "min": 15, "reason": "short"},
                   {"rule": "top_fraction", "column": "caption_chars", "fraction": 0.5,
                    "reason": "caption_chars_not_in_top_0.5"})
    # top_fraction: n = int(7 * 0.5) = 3 over the whole pool; the score at 0-based position 3
    # of (70, 60, 50, 40, ...) is 40: keep >= 40.
    expected = [("a.tar", 0, "short"), ("a.tar", 1, None),
                ("a.tar", 2, "caption_chars_not_in_top_0.5"),
                ("b.tar", 0, "duplicate_uid"), ("b.tar", 1, "caption_chars_not_in_top_0.5"),
                ("c.tar", 0, None), ("c.tar", 1, None)]
    source = _store(tmp_path / "store", shards)
    sel = select(steps, source, tmp_path / "sel")
    table = pq.read_table(tmp_path / "sel" / "manifest")
    assert [(r["shard"], r["index"], r["reason"]) for r in table.to_pylist()] == expected
    assert (sel.samples, sel.kept) == (7, 3)
    assert not (tmp_path / "sel" / ".selection.duckdb").exists()
    assert sel.shard_counts == {"a.tar": (3, 0), "b.tar": (2, 0), "c.tar": (2, 0)}


def test_stale_database_memory_limit_and_step_seconds(tmp_path: Path, monkeypatch) -> None:
    from curate.errors import CurateError
    from curate.select.selection import DATABASE, MEMORY_ENV, memory_limit

    source = _store(tmp_path / "store", {"a.tar": [(i, f"{i:032x}", 10 * i) for i in range(6)]})
    # The limit is DuckDB's while rules run: a rule that keeps rows only under it sees it.
    steps = _steps({"rule": "sql", "keep": "current_setting('memory_limit') = '1.5 GiB'",
                    "reason": "limit_not_applied"},
                   {"rule": "threshold", "column": "caption_chars", "gt": 15, "reason": "short"})
    out = tmp_path / "sel"
    out.mkdir()
    (out / DATABASE).write_bytes(b"not a database, left by a killed run")
    monkeypatch.setenv(MEMORY_ENV, "1536MiB")
    sel = select(steps, source, out)
    assert [(f.reason, f.dropped) for f in sel.funnel] == [("limit_not_applied", 0),
                                                           ("short", 2)]
    assert list(sel.seconds) == ["load", "duplicate_uid", "errors", "limit_not_applied", "short",
                                 "count", "manifest", "shards"]
    assert all(s >= 0 for s in sel.seconds.values())
    assert not (out / DATABASE).exists()

    monkeypatch.setenv(MEMORY_ENV, "lots")
    with pytest.raises(CurateError, match="CURATE_DUCKDB_MEMORY='lots' is not a memory size"):
        select(steps, source, out)
    assert not (out / DATABASE).exists()
    monkeypatch.delenv(MEMORY_ENV)
    mib = int(memory_limit().removesuffix("MiB"))
    assert 1024 <= mib <= 8192


def test_a_scorer_file_out_of_step_with_the_reader_fails_the_load(tmp_path: Path) -> None:
    """Files are joined by position; one with a row too few must never shift scores onto
    other samples: the load checks every row's (file, row in file) and fails."""
    import pyarrow.parquet as pq

    from curate.errors import CurateError

    source = _store(tmp_path / "store", {"a.tar": [(i, f"{i:032x}", 10 * i) for i in range(4)],
                                         "b.tar": [(i, f"{9 + i:032x}", i) for i in range(3)]})
    steps = _steps({"rule": "threshold", "column": "caption_chars", "gt": 15, "reason": "short"})
    select(steps, source, tmp_path / "ok")  # consistent: loads
    [a_file] = (tmp_path / "store" / "scores" / "caption_stats").glob("*/a.*.parquet")
    pq.write_table(pq.read_table(a_file).slice(1), a_file)  # one row short
    with pytest.raises(CurateError, match="do not have one row per sample"):
        select(steps, source, tmp_path / "bad")
