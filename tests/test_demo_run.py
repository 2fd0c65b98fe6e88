"""The demo pipeline end to end through local Ray, checked against the generator's truth."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import webdataset as wds
from conftest import curate_cli


def test_manifest_has_one_row_per_input_sample(demo_pool: Path, demo_run: Path) -> None:
    truth = pq.read_table(demo_pool / "ground_truth.parquet")
    manifest = pq.read_table(demo_run / "manifest")
    assert manifest.num_rows == truth.num_rows == 512
    uids = manifest.column("uid").to_pylist()
    assert len(set(uids)) == len(uids)
    assert set(uids) == set(truth.column("uid").to_pylist())
    head = manifest.column_names[:6]
    assert head == ["uid", "shard", "key", "index", "kept", "reason"]


def test_every_drop_reason_matches_ground_truth(demo_pool: Path, demo_run: Path) -> None:
    con = duckdb.connect()
    wrong = con.execute(f"""
        SELECT g.kind, g.expected_reason, m.reason, count(*)
        FROM '{demo_pool}/ground_truth.parquet' g JOIN '{demo_run}/manifest/*.parquet' m USING (uid)
        WHERE g.expected_reason IS DISTINCT FROM m.reason GROUP BY ALL""").fetchall()
    assert wrong == []
    expected = dict(con.execute(f"""SELECT coalesce(expected_reason, 'kept'), count(*)
        FROM '{demo_pool}/ground_truth.parquet' GROUP BY 1""").fetchall())
    stats = json.loads((demo_run / "stats.json").read_text())
    got = {f["reason"]: f["dropped"] for f in stats["funnel"] if f["dropped"]}
    got["kept"] = stats["kept"]
    assert got == expected
    # Duplicates name the sample they duplicate.
    dup = con.execute(f"""SELECT count(*) FROM '{demo_run}/manifest/*.parquet'
        WHERE reason LIKE 'duplicate%' AND duplicate_of IS NULL""").fetchone()
    assert dup == (0,)


def test_kept_samples_are_byte_identical_and_open_clip_readable(demo_pool: Path,
                                                                demo_run: Path) -> None:
    manifest = pq.read_table(demo_run / "manifest").to_pylist()
    kept = {r["uid"]: r for r in manifest if r["kept"]}
    originals: dict[tuple[str, str], bytes] = {}
    for tar_path in sorted(demo_pool.glob("*.tar")):
        with tarfile.open(tar_path) as tar:
            for m in tar.getmembers():
                key, ext = m.name.split(".", 1)
                originals[(tar_path.name, f"{key}.{ext}")] = tar.extractfile(m).read()  # type: ignore[union-attr]
    out_tars = sorted((demo_run / "output").glob("*.tar"))
    seen = []
    for tar_path in out_tars:
        with tarfile.open(tar_path) as tar:
            for m in tar.getmembers():
                uid, ext = m.name.split(".", 1)
                data = tar.extractfile(m).read()  # type: ignore[union-attr]
                row = kept[uid]
                if ext in ("jpg", "png"):
                    assert data == originals[(row["shard"], f"{row['key']}.{ext}")]
                    seen.append(uid)
                elif ext == "txt":
                    assert data == originals[(row["shard"], f"{row['key']}.txt")]
                elif ext == "json":
                    meta = json.loads(data)
                    assert meta["uid"] == uid and "lang" in meta["scores"]
                    assert meta["url"] == row["url"]
    assert sorted(seen) == sorted(kept)
    # The way open_clip's training loader reads webdataset shards.
    sizes = json.loads((demo_run / "output" / "sizes.json").read_text())
    assert sum(sizes.values()) == len(kept) and max(sizes.values()) == 100
    ds = (wds.WebDataset([str(p) for p in out_tars], shardshuffle=False)
          .decode("pilrgb").rename(image="jpg;png;jpeg;webp", text="txt")
          .to_tuple("image", "text"))
    n = 0
    for image, text in ds:
        assert image.size[0] >= 200 and isinstance(text, str) and len(text) > 5
        n += 1
    assert n == len(kept)


def test_query_and_stats_commands(demo_run: Path) -> None:
    res = curate_cli("query", str(demo_run),
                     "select reason, count(*) from manifest group by 1 order by 2 desc")
    assert res.returncode == 0, res.stderr
    assert "duplicate_image" in res.stdout and "NULL" in res.stdout and "414" in res.stdout
    res = curate_cli("query", str(demo_run), "select count(*) as n from kept", "--format", "csv")
    assert res.stdout.splitlines() == ["n", "414"]
    res = curate_cli("query", str(demo_run), "select * from nope")
    assert res.returncode == 2 and res.stderr.startswith("error: query failed")
    res = curate_cli("stats", str(demo_run))
    assert res.returncode == 0
    assert "not_english" in res.stdout and "414" in res.stdout and "512" in res.stdout


def test_views_and_run_records(demo_run: Path) -> None:
    from curate.audit.catalog import open_catalog

    con = open_catalog(demo_run)
    assert con.execute("select count(*) from drops").fetchone() == (98,)
    assert con.execute("select count(*), sum(samples) from shards").fetchone() == (8, 512)
    assert con.execute("select remaining from funnel order by step desc limit 1").fetchone() \
        == (414,)
    assert con.execute("select count(*) from signals").fetchone() == (512,)
    stages = dict(con.execute("select stage, errors from stages").fetchall())
    assert stages["image_info"] == 11 and stages["language"] == 0
    events = [json.loads(line)["event"] for line in
              (demo_run / "log.jsonl").read_text().splitlines()]
    assert events[0] == "select_start" and events[-1] == "select_end"
    store = demo_run.parent.parent / "store"
    scoring = [json.loads(line)["event"] for line in
               (store / "log.jsonl").read_text().splitlines()]
    assert scoring.count("shard_done") == 8 and scoring[-1] == "scoring_end"
