"""pipelines/metaclip.yaml on the demo pool: the balancing drops, its outputs (entry counts,
report, plot), and identical results for 1 vs 2 workers and 1 vs 8 shards."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import duckdb
import pytest
from conftest import REPO

from curate.config import load_pipeline
from curate.runner import run
from curate.uid import derive_uid

pytestmark = pytest.mark.slow


def _pipeline(shards: str, workers: int | None = None) -> object:
    overrides: dict[str, dict[str, object]] = {"input": {"shards": shards}}
    if workers:
        overrides["run"] = {"workers": workers}
    return load_pipeline(REPO / "pipelines" / "metaclip.yaml", overrides)


def _kept(run_dir: Path) -> list[tuple[str, list[int], float | None]]:
    return duckdb.connect().execute(
        f"SELECT uid, metaclip_entries, metaclip_keep_p FROM read_parquet("
        f"'{run_dir / 'manifest'}/*.parquet') WHERE kept ORDER BY uid").fetchall()


def _one_shard(pool: Path, out: Path) -> Path:
    """The demo pool rewritten as one shard; each json carries the sample's original uid."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(out, "w") as dst:
        for src_path in sorted(pool.glob("*.tar")):
            with tarfile.open(src_path) as src:
                for m in src.getmembers():
                    data = src.extractfile(m).read()  # type: ignore[union-attr]
                    key, ext = m.name.split(".", 1)
                    new_key = f"{src_path.stem}_{key}"
                    if ext == "json":
                        meta = json.loads(data)
                        meta["uid"] = derive_uid(src_path.name, key)
                        data = json.dumps(meta).encode()
                    info = tarfile.TarInfo(f"{new_key}.{ext}")
                    info.size, info.mtime = len(data), 0
                    dst.addfile(info, io.BytesIO(data))
    return out


@pytest.fixture(scope="module")
def metaclip_run(demo_pool: Path, ray_local: None,
                 tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("metaclip") / "run"
    return run(_pipeline(str(demo_pool / "*.tar")), out, progress=False).dir


def test_balancing_bites_and_reports(metaclip_run: Path) -> None:
    con = duckdb.connect()
    m = f"read_parquet('{metaclip_run / 'manifest'}/*.parquet')"
    dropped = con.execute(f"SELECT count(*) FROM {m} WHERE reason = 'metaclip_balance'"
                          ).fetchone()[0]
    kept = con.execute(f"SELECT count(*) FROM {m} WHERE kept").fetchone()[0]
    assert dropped > 0 and kept > 0
    report = json.loads((metaclip_run / "reports" / "metaclip_balance.json").read_text())
    assert report["t"] == 8 and report["rows_kept"] == kept
    assert report["rows_in"] == kept + dropped
    assert report["entries"] == 86_654 and report["head_entries"] > 0
    assert report["top_entries"][0]["count_before"] > 8
    assert (metaclip_run / "reports" / "metaclip_balance.png").read_bytes()[:4] == b"\x89PNG"
    ec = con.execute(f"SELECT entry, count_before, count_after FROM read_parquet("
                     f"'{metaclip_run / 'entry_counts.parquet'}') ORDER BY count_before DESC "
                     "LIMIT 3").fetchall()
    assert all(isinstance(e, str) and after <= before for e, before, after in ec)
    # the tail is kept whole: every row with an entry matched at most t times survives
    tail_dropped = con.execute(f"""
        WITH c AS (SELECT entry_id, count_before FROM read_parquet(
                   '{metaclip_run / 'entry_counts.parquet'}'))
        SELECT count(*) FROM {m} WHERE reason = 'metaclip_balance' AND EXISTS (
            SELECT 1 FROM c WHERE list_contains(metaclip_entries, c.entry_id)
            AND c.count_before <= 8)""").fetchone()[0]
    assert tail_dropped == 0
    # the catalogue has the entry counts
    import curate

    run = curate.open_run(metaclip_run)
    assert run.value("SELECT count(*) FROM entry_counts") == 86_654
    assert run.value("SELECT sum(count_before) FROM entry_counts") == report["matches_before"]
    run.close()


def test_same_subset_for_two_workers_and_one_shard(metaclip_run: Path, demo_pool: Path,
                                                   tmp_path: Path) -> None:
    two = run(_pipeline(str(demo_pool / "*.tar"), workers=2), tmp_path / "two_workers",
              progress=False).dir
    assert _kept(two) == _kept(metaclip_run)
    single = _one_shard(demo_pool, tmp_path / "one" / "00000.tar")
    one = run(_pipeline(str(single)), tmp_path / "one_shard", progress=False).dir
    assert _kept(one) == _kept(metaclip_run)


def test_metaclip2_pipeline_on_the_demo_pool(demo_pool: Path, ray_local: None,
                                            tmp_path: Path) -> None:
    """pipelines/metaclip2.yaml end to end (Ray scoring, the store, selection), with an
    English-only metadata directory: en.json is the shipped WordNet list (MetaCLIP 2's en.json
    is MetaCLIP 1's list); balancing finds that directory through the stored scorer version."""
    import shutil

    import yaml

    from curate.config import pipeline_from_dict

    mdir = tmp_path / "metadata"
    mdir.mkdir()
    shutil.copy(REPO / "metadata" / "wordnet.json", mdir / "en.json")
    raw = yaml.safe_load((REPO / "pipelines" / "metaclip2.yaml").read_text())
    raw["input"]["shards"] = str(demo_pool / "*.tar")
    for item in raw["score"]:
        if isinstance(item, dict) and "metaclip2_match" in item:
            item["metaclip2_match"]["metadata_dir"] = str(mdir)
    sel = run(pipeline_from_dict(raw), tmp_path / "run", progress=False).dir
    con = duckdb.connect()
    m = f"read_parquet('{sel / 'manifest'}/*.parquet')"
    kept, dropped, english = con.execute(
        f"SELECT count(*) FILTER (WHERE kept), count(*) FILTER (WHERE reason = "
        f"'metaclip2_balance'), count(*) FILTER (WHERE kept AND metaclip2_lang = 'en') "
        f"FROM {m}").fetchone()
    assert kept > 0 and dropped > 0 and english == kept
    # a caption whose language has no list (no other.json) matches nothing and is dropped
    assert con.execute(f"SELECT count(*) FROM {m} WHERE kept AND lang <> 'en'").fetchone()[0] == 0
    report = json.loads((sel / "reports" / "metaclip2_balance.json").read_text())
    assert report["languages"]["en"]["t"] == 8 and report["rows_kept"] == kept
    assert report["metadata_dir"] == str(mdir.resolve())
    top = con.execute(f"SELECT entry, count_before FROM read_parquet("
                      f"'{sel / 'entry_counts.parquet'}') ORDER BY count_before DESC LIMIT 1"
                      ).fetchone()
    assert isinstance(top[0], str) and top[1] > 8
