"""The selection phase on its own (no Ray): step order, first-reason attribution, uid clashes."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest
from shardmaker import jpeg, sample_members, write_tar

from curate.config import pipeline_from_dict
from curate.io.shards import list_shards
from curate.score.shard import score_shard, scoring_fingerprint, signals_path
from curate.select.selection import select


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


def _signals(run_dir: Path, shards: dict[str, list[tuple[int, str, int]]]) -> list[Path]:
    """One signals file per shard, rows as given: (index, uid, caption_chars)."""
    import pyarrow as pa

    from curate.schema import SAMPLE_COLUMNS

    schema = pa.schema({**SAMPLE_COLUMNS, "caption_chars": pa.int32(),
                        "caption_words": pa.int32()})
    files = []
    for shard, rows in shards.items():
        path = run_dir / "signals" / shard.replace(".tar", ".parquet")
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(
            [{"uid": uid, "shard": shard, "key": f"{shard}/{i}", "index": i, "status": "ok",
              "caption_chars": chars, "caption_words": 3} for i, uid, chars in rows],
            schema=schema), path)
        files.append(path)
    return files


def _pipeline(*select: dict[str, object]) -> object:
    return pipeline_from_dict({"input": {"shards": "x"}, "score": ["caption_stats"],
                               "select": list(select)})


def test_pool_order_is_shard_then_index_whatever_the_file_order(tmp_path: Path) -> None:
    """Files in pool order take the no-sort path; files out of order, or rows out of index
    order inside a file, are renumbered by (shard, index). All give the same manifest."""
    shards = {"a.tar": [(0, "0" * 31 + "1", 10), (1, "d" * 32, 50), (2, "0" * 31 + "3", 30)],
              "b.tar": [(0, "d" * 32, 70), (1, "0" * 31 + "5", 20)],
              "c.tar": [(0, "0" * 31 + "6", 60), (1, "0" * 31 + "7", 40)]}
    p = _pipeline({"rule": "threshold", "column": "caption_chars", "min": 15, "reason": "short"},
                  {"rule": "top_fraction", "column": "caption_chars", "fraction": 0.5})
    # top_fraction: k = floor(7 * 0.5) = 3 over the whole pool (70, 60, 50): keep >= 50.
    expected = [("a.tar", 0, "short"), ("a.tar", 1, None),
                ("a.tar", 2, "caption_chars_not_in_top_0.5"),
                ("b.tar", 0, "duplicate_uid"), ("b.tar", 1, "caption_chars_not_in_top_0.5"),
                ("c.tar", 0, None), ("c.tar", 1, "caption_chars_not_in_top_0.5")]
    layouts = {
        "in_order": (shards, False),
        "files_reversed": (shards, True),
        "rows_reversed": ({s: rows[::-1] for s, rows in shards.items()}, False),
    }
    manifests = {}
    for name, (layout, reverse) in layouts.items():
        run_dir = tmp_path / name
        files = _signals(run_dir, layout)
        sel = select(p, files[::-1] if reverse else files, run_dir, [])  # type: ignore[arg-type]
        table = pq.read_table(run_dir / "manifest.parquet")
        got = [(r["shard"], r["index"], r["reason"]) for r in table.to_pylist()]
        assert got == expected, name
        assert (sel.samples, sel.kept) == (7, 2)
        assert not (run_dir / ".selection.duckdb").exists()
        manifests[name] = table
    assert manifests["in_order"].equals(manifests["files_reversed"])
    assert manifests["in_order"].equals(manifests["rows_reversed"])


def test_stale_database_memory_limit_and_step_seconds(tmp_path: Path, monkeypatch) -> None:
    from curate.errors import CurateError
    from curate.select.selection import DATABASE, MEMORY_ENV, memory_limit

    files = _signals(tmp_path, {"a.tar": [(i, f"{i:032x}", 10 * i) for i in range(6)]})
    # The limit is DuckDB's while rules run: a rule that keeps rows only under it sees it.
    p = _pipeline({"rule": "sql", "keep": "current_setting('memory_limit') = '1.5 GiB'",
                   "reason": "limit_not_applied"},
                  {"rule": "threshold", "column": "caption_chars", "gt": 15, "reason": "short"})
    (tmp_path / DATABASE).write_bytes(b"not a database, left by a killed run")
    monkeypatch.setenv(MEMORY_ENV, "1536MiB")
    sel = select(p, files, tmp_path, [])  # type: ignore[arg-type]
    assert [(f.reason, f.dropped) for f in sel.funnel] == [("limit_not_applied", 0),
                                                           ("short", 2)]
    assert list(sel.seconds) == ["load", "duplicate_uid", "errors", "limit_not_applied", "short",
                                 "count", "manifest"]
    assert all(s >= 0 for s in sel.seconds.values())
    assert not (tmp_path / DATABASE).exists()

    monkeypatch.setenv(MEMORY_ENV, "lots")
    with pytest.raises(CurateError, match="CURATE_DUCKDB_MEMORY='lots' is not a memory size"):
        select(p, files, tmp_path, [])  # type: ignore[arg-type]
    assert not (tmp_path / DATABASE).exists()
    monkeypatch.delenv(MEMORY_ENV)
    mib = int(memory_limit().removesuffix("MiB"))
    assert 1024 <= mib <= 8192
