"""The run catalogue as a Python API: curate.open_run gives DuckDB relations and polars frames
over the views, with known counts on the demo run."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

import curate
from curate.errors import CurateError


def test_views_answer_known_counts(demo_run: Path) -> None:
    run = curate.open_run(demo_run)
    assert {"manifest", "kept", "drops", "signals", "shards", "funnel", "stages"} <= set(
        run.views)
    m = duckdb.connect().execute(
        f"SELECT count(*), count(*) FILTER (WHERE kept) FROM read_parquet("
        f"'{demo_run / 'manifest'}/*.parquet')").fetchone()
    assert run.value("SELECT count(*) FROM manifest") == m[0] == 512
    assert run.value("SELECT count(*) FROM kept") == m[1]
    assert run.value("SELECT count(*) FROM drops") == m[0] - m[1]
    assert run.value("SELECT count(*) FROM signals") == 512
    assert run.value("SELECT sum(samples) FROM shards") == 512
    funnel = run.pl("funnel")
    assert funnel["dropped"].sum() == m[0] - m[1]
    by_reason = run.pl("SELECT reason, count(*) AS n FROM drops GROUP BY 1")
    assert dict(zip(by_reason["reason"], by_reason["n"], strict=True)) == {
        r: d for r, d in zip(funnel["reason"], funnel["dropped"], strict=True) if d}
    # every drop names the stage that made it
    assert run.value("SELECT count(*) FROM drops WHERE coalesce(stage, '') = ''") == 0
    stages = dict(run.sql("SELECT DISTINCT reason, stage FROM drops").fetchall())
    assert stages["image_too_small"] == "sql" and stages["not_english"] == "in_set"
    assert stages["error:image_info"] == "image_info"
    assert stages["duplicate_image"] == "exact_dedup"
    with pytest.raises(CurateError, match="no view"):
        run.view("entry_counts")  # the basic pipeline does not balance
    run.close()


def test_not_a_run(tmp_path: Path, demo_run: Path) -> None:
    with pytest.raises(CurateError, match="not a curate run or selection directory"):
        curate.open_run(tmp_path)
    with pytest.raises(CurateError, match="does not exist"):
        curate.open_run(tmp_path / "nope")
    # a folder that never was a run is not told to resume, even with a log.jsonl in it
    (tmp_path / "log.jsonl").write_text('{"ts": 1, "event": "score_start"}\n')
    with pytest.raises(CurateError, match="not a curate run or selection directory"):
        curate.open_run(tmp_path)
    # a store (its log.jsonl was taken for a stopped selection's): what it is, what to do
    store = demo_run.parent.parent / "store"
    with pytest.raises(CurateError, match="is a scored store") as info:
        curate.open_run(store)
    assert info.value.hint is not None and f"curate select {store}" in info.value.hint
    (tmp_path / "selections" / "a").mkdir(parents=True)
    with pytest.raises(CurateError, match="holds no finished selection"):
        curate.open_run(tmp_path)
    # `curate run` stopped while scoring: OUT/store, no selection yet
    stopped = tmp_path / "stopped"
    (stopped / "store").mkdir(parents=True)
    (stopped / "store" / "store.json").write_text("{}")
    with pytest.raises(CurateError, match="holds no finished selection") as info:
        curate.open_run(stopped)
    assert info.value.hint is not None and "run the same command again" in info.value.hint
    # a selection stopped before its catalogue
    sel = tmp_path / "sel"
    sel.mkdir()
    (sel / "log.jsonl").write_text('{"ts": 1, "event": "select_start"}\n')
    with pytest.raises(CurateError, match="holds no finished selection"):
        curate.open_run(sel)
