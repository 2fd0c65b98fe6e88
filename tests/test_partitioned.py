"""Partitioned selection (curate/select/partitioned.py): the manifest, funnel, per-shard counts
and selector outputs are identical to the one-process algorithm's, whether the pool is cut
into 1, 4 or 7 partitions in this process or run on 4 Ray actors (2 on the demo pool); with
metadata joined per partition, every global step that has a partitioned form (duplicate uids,
top_fraction over the pool and over the kept rows, exact_dedup, metaclip_balance,
centroid_target, metaclip2_balance) and planted cases that cross partitions: duplicates whose
first is in another partition, ties and nulls at the top_fraction threshold; with more dedup
buckets than partitions, and top_fraction's search in rounds. The manifest is a dataset of one
part per partition that DuckDB, pyarrow and Ray Data read as one table."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from storemaker import write_store

from curate.config import selection_from_dict
from curate.errors import CurateError
from curate.lib.metaclip2 import MetadataDir
from curate.lib.metadata import DEFAULT_METADATA, metadata_digest
from curate.select import partitioned, selection
from curate.select.metadata import MetadataConfig, SelectMetadata, metadata_files
from curate.select.pool import PoolSource
from curate.store.store import shard_key

SHARDS, PER_SHARD = 24, 120


MC2 = {"en": [f"e{i}" for i in range(8)], "zh": [f"z{i}" for i in range(6)]}


def _pool(root: Path) -> PoolSource:
    rnd = random.Random(7)
    digest = metadata_digest(DEFAULT_METADATA)
    (root / "mc2").mkdir(parents=True)
    for lang, entries in MC2.items():
        (root / "mc2" / f"{lang}.json").write_text(json.dumps(entries), "utf-8")
    mc2_digest = MetadataDir(root / "mc2").digest()
    np.save(root / "centroids.npy", np.eye(6, dtype=np.float32))  # centroid_target's files
    np.save(root / "targets.npy", np.eye(6, dtype=np.float32)[[0, 2, 3, 3]])
    rows = []
    for s in range(SHARDS):
        for i in range(PER_SHARD):
            k = s * PER_SHARD + i
            uid = hashlib.sha256(f"u{k}".encode()).hexdigest()[:32]
            if k % 97 == 5:  # the uid of a row in an earlier shard (duplicate_uid)
                uid = hashlib.sha256(f"u{k - 3 * PER_SHARD}".encode()).hexdigest()[:32] \
                    if k > 3 * PER_SHARD else uid
            image = hashlib.sha256(f"img{rnd.randrange(SHARDS * PER_SHARD * 9 // 10)}".encode())
            score = rnd.choice([None, 0.25, 0.5]) if k % 13 == 0 else round(rnd.random(), 3)
            # one or two texts, each matched to a few entries of its language (or to none)
            langs = rnd.choices(["en", "en", "zh"], k=rnd.randint(1, 2))
            entries = [rnd.sample(range(len(MC2[lang])), rnd.randrange(3)) for lang in langs]
            rows.append({
                "uid": uid, "shard": f"{s:05d}.tar", "key": str(k), "index": i,
                "status": "error" if k % 89 == 3 else "ok",
                "error_stage": "read" if k % 89 == 3 else None,
                "image_sha256": image.hexdigest(),
                "url_caption_sha256": hashlib.sha256(f"uc{rnd.randrange(3000)}".encode())
                .hexdigest(),
                "caption_chars": rnd.randrange(40),
                "clip_score": score,
                "metaclip_entries": rnd.sample(range(12), rnd.randrange(3)),
                "metaclip_metadata": digest,
                "centroid": None if k % 41 == 0 else rnd.randrange(6),
                "metaclip2_langs": langs, "metaclip2_entries": entries,
                "metaclip2_metadata": mc2_digest,
            })
    return write_store(root, rows, {
        "url_caption_sha256": pa.string(), "caption_chars": pa.int32(),
        "clip_score": pa.float32(), "metaclip_entries": pa.list_(pa.int32()),
        "metaclip_metadata": pa.string(), "centroid": pa.int32(),
        "metaclip2_langs": pa.list_(pa.string()),
        "metaclip2_entries": pa.list_(pa.list_(pa.int32())), "metaclip2_metadata": pa.string()})


STEPS = [
    {"rule": "threshold", "column": "caption_chars", "min": 4, "reason": "short"},
    {"rule": "threshold", "column": "meta_score", "min": 0.05, "reason": "low_meta"},
    {"rule": "top_fraction", "column": "clip_score", "fraction": 0.75, "reason": "low_pool"},
    {"selector": "exact_dedup"},
    {"rule": "top_fraction", "column": "clip_score", "fraction": 0.8, "over": "kept",
     "reason": "low_kept"},
    {"selector": "metaclip_balance", "t": 60, "seed": 3},
]


def _steps(source: PoolSource) -> list:
    root: Path = source.store.local_root  # type: ignore[assignment]
    mc2 = {"selector": "metaclip2_balance", "t_en": 25, "seed": 5,
           "metadata_dir": str(root / "mc2")}
    target = {"selector": "centroid_target", "centroids": str(root / "centroids.npy"),
              "targets": [str(root / "targets.npy")], "device": "cpu"}
    return selection_from_dict({"name": "t", "select": [*STEPS, target, mc2]}).select


def _metadata(root: Path, source: PoolSource, duplicate: bool = False) -> SelectMetadata:
    """A metadata file for most of the pool's uids (upper case, as users' files may have
    them), and for uids not in the pool."""
    rnd = random.Random(11)
    uids = [u for s in source.shards for u in source.store.dir.read_parquet(
        source.store.base_name(source.reader, shard_key(s.shard), s.digest), ["uid"])
        .column("uid").to_pylist()]
    keys = [u.upper() for u in dict.fromkeys(uids) if rnd.random() < 0.9]
    keys += [f"{k:032x}" for k in range(50)] + (keys[:1] if duplicate else [])
    root.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"uid": keys, "meta_score": [round(rnd.random(), 3) for _ in keys]}),
                   root / "meta.parquet")
    cfg = MetadataConfig(parquet=str(root / "meta.parquet"), columns={"meta_score": "float32"})
    return SelectMetadata(cfg, metadata_files(cfg))


def _one_process(source: PoolSource, out: Path, meta: SelectMetadata) -> selection.Selection:
    con = selection.connect(out)
    try:
        return selection._select(con, _steps(source), source, out, meta)
    finally:
        con.close()


def _same(a: Path, b: Path) -> None:
    for name in ("manifest", "entry_counts.parquet"):  # metaclip2_balance's (the last)
        ta, tb = pq.read_table(a / name), pq.read_table(b / name)
        assert ta.schema == tb.schema, name
        assert ta.equals(tb), name
    for report in ("centroid_target", "metaclip2_balance"):
        name = f"reports/{report}.json"
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


@pytest.mark.timeout(600)
def test_every_partitioning_gives_the_one_process_answer(tmp_path: Path, ray_local: None,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    source = _pool(tmp_path / "store")
    meta = _metadata(tmp_path / "meta", source)
    monkeypatch.setattr(partitioned, "KEYS_PER_BUCKET", 500)  # 6 dedup buckets, not 1 each
    ref = _one_process(source, tmp_path / "ref", meta)
    funnel = {f.reason: f.dropped for f in ref.funnel}
    # every step had work to do, across partitions
    assert funnel["duplicate_uid"] > 0 and funnel["error:read"] > 0
    assert min(funnel[r] for r in ("short", "low_meta", "low_pool", "duplicate_image",
                                   "duplicate_url_caption", "low_kept", "metaclip_balance",
                                   "not_near_target_centroid", "metaclip2_balance")) > 0
    manifest = pq.read_table(tmp_path / "ref" / "manifest").to_pylist()
    firsts = {r["duplicate_of"] for r in manifest if r["reason"] == "duplicate_image"}
    shard_of = {r["uid"]: r["shard"] for r in manifest}
    assert any(shard_of[u] != r["shard"] for r in manifest if r["reason"] == "duplicate_image"
               for u in [r["duplicate_of"]] if u in firsts)  # a first in another shard
    # (2 Ray actors: the demo pool's test below)
    runs = [("here1", 1, False), ("here4", 4, False), ("ray4", 4, True)]
    for name, workers, on_ray in runs:
        got = selection.select(_steps(source), source, tmp_path / name, meta, workers=workers,
                               on_ray=on_ray)
        assert (got.samples, got.kept, got.funnel, got.shard_counts) == \
            (ref.samples, ref.kept, ref.funnel, ref.shard_counts), name
        _same(tmp_path / "ref", tmp_path / name)
    # top_fraction's exact search in rounds of buckets (a tiny gather limit), and 7 partitions
    monkeypatch.setattr(partitioned, "GATHER_MAX", 20)
    monkeypatch.setattr(partitioned, "BUCKETS", 4)
    got = selection.select(_steps(source), source, tmp_path / "here7", meta, workers=7)
    assert (got.kept, got.funnel) == (ref.kept, ref.funnel)
    _same(tmp_path / "ref", tmp_path / "here7")
    # metadata the checks refuse is refused the same way however the pool is cut
    bad = _metadata(tmp_path / "bad", source, duplicate=True)
    errors = []
    for workers, on_ray in ((1, False), (3, False), (2, True)):
        with pytest.raises(CurateError) as exc:
            selection.select(_steps(source), source, tmp_path / f"bad{workers}", bad,
                             workers=workers, on_ray=on_ray)
        errors.append(str(exc.value))
    assert len(set(errors)) == 1 and "rows for uid" in errors[0], errors


def test_partitions_are_contiguous_and_balanced(tmp_path: Path) -> None:
    from curate.store.store import PoolShard

    shards = [PoolShard(shard=f"{k}", url="", stamp="", digest="d", samples=n)
              for k, n in enumerate([10, 10, 50, 10, 10, 10, 0, 10])]
    rows = [s.samples or 0 for s in shards]
    for n in (1, 2, 3, 8, 20):
        parts = partitioned.cut(shards, rows, n)
        assert len(parts) == min(n, len(shards))
        assert [s for p in parts for s in p.shards] == shards  # every shard once, in order
        assert all(p.shards for p in parts)
        assert [p.base for p in parts] == [sum(rows[:shards.index(p.shards[0])]) for p in parts]
    assert [len(p.shards) for p in partitioned.cut(shards, rows, 2)] == [3, 5]  # 70 | 40


def test_the_demo_pool_selected_on_two_ray_actors_is_the_one_process_selection(
        demo_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`curate select --workers 2` on the demo pool (basic pipeline; the command run in this
    process, on the session's Ray): the manifest of ``demo_run`` (one partition, in-process),
    row for row; the log says where each ran."""
    import json

    from conftest import REPO

    from curate.cli import main

    store = demo_run.parent.parent / "store"
    basic = str(REPO / "pipelines" / "basic.yaml")
    assert main(["select", str(store), basic, "--out", str(tmp_path / "sel"), "--workers", "2"]
                ) == 0
    assert "selecting: loading 8 shards from the store in 2 partitions on Ray" in \
        capsys.readouterr().err
    got = pq.read_table(tmp_path / "sel" / "manifest")
    want = pq.read_table(demo_run / "manifest")
    assert got.schema == want.schema and got.equals(want)
    # one part per partition, read as one table by DuckDB (the catalogue's view) and Ray Data
    assert sorted(p.name for p in (tmp_path / "sel" / "manifest").iterdir()) == [
        "part-00000.parquet", "part-00001.parquet"]
    assert main(["query", str(tmp_path / "sel"), "select count(*) as n, count(distinct uid) "
                 "as u from manifest", "--format", "csv"]) == 0
    assert capsys.readouterr().out.split() == ["n,u", f"{want.num_rows},{want.num_rows}"]
    import ray
    import ray.data

    refs = ray.data.read_parquet(str(tmp_path / "sel" / "manifest")).to_arrow_refs()
    via_ray = pa.concat_tables(ray.get(refs)).sort_by([("shard", "ascending"),
                                                       ("index", "ascending")])
    assert via_ray.select(["uid", "kept", "reason"]).equals(
        want.select(["uid", "kept", "reason"]))
    capsys.readouterr()  # Ray Data's log lines
    [selected] = [e for e in map(json.loads, (tmp_path / "sel" / "log.jsonl").read_text()
                                 .splitlines()) if e["event"] == "selected"]
    assert selected["partitions"] == 2 and selected["on_ray"]
    [single] = [e for e in map(json.loads, (demo_run / "log.jsonl").read_text().splitlines())
                if e["event"] == "selected"]
    assert single["partitions"] == 1 and not single["on_ray"]
    assert main(["select", str(store), basic, "--out", str(tmp_path / "bad"), "--workers", "0"]
                ) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "error: --workers 0: give at least 1" and err[1].startswith("hint: ")


def test_working_directories_of_killed_partitions_are_removed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A partition killed mid-selection (an actor runs no cleanup when killed) leaves its
    DuckDB directory in the node's temp dir; the next partition started there removes it, and
    leaves the directories of live partitions alone."""
    import tempfile

    source = _pool(tmp_path / "store")
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    dead = temp / "curate-select-dead"  # its process is gone: nothing holds its lock
    dead.mkdir()
    (dead / ".lock").touch()
    (dead / ".selection.duckdb").write_bytes(b"x" * 1000)
    live = temp / "curate-select-live"  # a partition of another selection, running
    live.mkdir()
    held = partitioned._hold(live)
    steps = selection_from_dict({"name": "t", "select": STEPS[:1]}).select
    got = selection.select(steps, source, tmp_path / "sel", workers=2)
    assert got.samples == SHARDS * PER_SHARD
    assert sorted(p.name for p in temp.iterdir()) == ["curate-select-live"]
    held.close()  # that selection ends without cleaning up (killed): the next one removes it
    assert partitioned.remove_orphans(temp) == 1 and not any(temp.iterdir())
