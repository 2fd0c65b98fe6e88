"""Input shards, the store and curated output through fsspec: ``file://`` URLs in a full Ray
run give the local run's bytes (the store's workers commit their own results there),
``memory://`` output works in-process, reruns rewrite nothing, stale shards go, and an unknown
protocol fails before any work."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import duckdb
import fsspec
import pyarrow.parquet as pq
import pytest
from conftest import REPO, curate_cli

from curate.config import Pipeline, load_pipeline
from curate.errors import ConfigError, CurateError
from curate.io.shards import list_shards
from curate.runner import run
from curate.write import output

BASIC = REPO / "pipelines" / "basic.yaml"


def basic(shards: str, **out: object) -> Pipeline:
    """pipelines/basic.yaml on ``shards`` with ``output`` keys replaced."""
    return load_pipeline(BASIC, {"input": {"shards": shards},
                                 "output": {"write_shards": True, **out}})


def events(run_dir: Path, name: str, log: str = "selections/basic/log.jsonl",
           ) -> list[dict[str, object]]:
    lines = (run_dir / log).read_text().splitlines()
    return [e for e in map(json.loads, lines) if e["event"] == name]


def local_tars(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.glob("*.tar"))}


@pytest.fixture()
def mem() -> Iterator[str]:
    """A fresh memory:// prefix, removed afterwards (the memory filesystem is per process)."""
    root = f"memory://curate-test-{uuid.uuid4().hex[:8]}"
    yield root
    fs, path = fsspec.core.url_to_fs(root)
    if fs.exists(path):
        fs.rm(path, recursive=True)


def mem_files(root: str) -> dict[str, bytes]:
    fs, path = fsspec.core.url_to_fs(root)
    return {p[len(path) + 1:]: fs.cat_file(p) for p in fs.find(path)}


def test_resolve_dir_and_placement() -> None:
    assert output.resolve_dir("rel/x") == str(Path.cwd() / "rel" / "x")
    assert output.resolve_dir("file://rel/x/") == f"file://{Path.cwd()}/rel/x"
    assert output.resolve_dir("s3://bucket/curated/") == "s3://bucket/curated"
    assert output.resolve_dir("memory://") == "memory://"
    assert output.placement("/data/out") == "driver_node"
    assert output.placement("file:///shared/out") == "spread"
    assert output.placement("memory://out") == "driver_process"


def test_run_with_file_urls_equals_local_run(demo_pool: Path, demo_run: Path, ray_local: None,
                                             tmp_path: Path) -> None:
    curated = tmp_path / "curated"
    p = basic(f"file://{demo_pool}/*.tar", dir=f"file://{curated}")
    p.store = f"file://{tmp_path}/store"
    result = run(p, tmp_path / "run", progress=False)
    assert result.output_shards == 5
    assert pq.read_table(result.dir / "manifest").equals(
        pq.read_table(demo_run / "manifest"))
    urls = pq.read_table(result.dir / "shards.parquet").column("url").to_pylist()
    assert all(u.startswith("file:///") for u in urls)
    # A store on a URL is shared storage: every worker committed its own shards.
    done = events(tmp_path / "store", "shard_done", "log.jsonl")
    assert [e["committed_by"] for e in done] == ["worker"] * 8
    assert result.scoring is not None and result.scoring.driver_bytes_in == 0
    assert not (tmp_path / "run" / "store").exists()
    theirs = local_tars(demo_run / "output")
    assert local_tars(curated) == theirs and len(theirs) == 5
    assert (curated / "sizes.json").read_bytes() == (demo_run / "output" / "sizes.json"
                                                     ).read_bytes()
    assert not (result.dir / "output").exists()  # nothing went to SEL/output
    start = events(tmp_path / "run", "writing_start")[-1]
    assert start["dir"] == f"file://{curated}" and start["placement"] == "spread"
    # The catalogue and the CLI work on a run whose shards are elsewhere.
    res = curate_cli("stats", str(tmp_path / "run"))
    assert res.returncode == 0 and "414" in res.stdout


def test_memory_output_and_input_in_process(demo_pool: Path, demo_run: Path, mem: str,
                                            tmp_path: Path) -> None:
    fs, _ = fsspec.core.url_to_fs(mem)
    for name in ("00000.tar", "00001.tar"):
        fs.pipe_file(f"{mem}/pool/{name}", (demo_pool / name).read_bytes())
    refs = {r.shard_id: r for r in list_shards(f"{mem}/pool/*.tar")}
    assert all(r.url.startswith("memory://") for r in refs.values())
    rows = duckdb.connect().sql(f"""
        SELECT uid, shard, "index", image_member FROM '{demo_run}/manifest/*.parquet'
        WHERE kept AND shard IN ('00000.tar', '00001.tar') ORDER BY shard, "index" """
                                ).fetchall()
    items = [{"uid": u, "shard": s, "index": i, "image_member": m, "scores": {"n": i}}
             for u, s, i, m in rows]
    shards = [output.OutputShard(n, items[k:k + 30])
              for n, k in enumerate(range(0, len(items), 30))]
    assert len(shards) >= 3
    out = f"{mem}/out"
    assert output.stale(out, shards) == shards
    for s in shards:
        assert output.write_shard(s, refs, out) == len(s.items)
        assert output.is_current(out, s)
    output.finish(out, shards)
    assert output.stale(out, shards) == []
    # The same shards written to a local directory are the same bytes.
    for s in shards:
        output.write_shard(s, refs, tmp_path / "local")
    output.finish(tmp_path / "local", shards)
    files = mem_files(out)
    assert {k: v for k, v in files.items() if k.endswith(".tar")} == local_tars(
        tmp_path / "local")
    assert files["sizes.json"] == (tmp_path / "local" / "sizes.json").read_bytes()
    assert json.loads(files["sizes.json"]) == {s.name: len(s.items) for s in shards}
    # Changed content is no longer current; fewer shards remove the rest (with their state),
    # but a tar this writer did not make stays.
    changed = output.OutputShard(0, shards[0].items[:5])
    assert not output.is_current(out, changed) and output.stale(out, [changed]) == [changed]
    fs.pipe_file(f"{mem}/out/00042.tar", b"not ours")
    output.finish(out, shards[:1])
    left = mem_files(out)
    assert sorted(k for k in left if k.endswith(".tar")) == ["00000.tar", "00042.tar"]
    assert sorted(k for k in left if k.startswith(".state/")) == [".state/00000.json"]
    assert json.loads(left["sizes.json"]) == {"00000.tar": len(shards[0].items)}


def test_failed_write_leaves_no_partial_file(demo_pool: Path, mem: str,
                                            tmp_path: Path) -> None:
    refs = {r.shard_id: r for r in list_shards(str(demo_pool / "00000.tar"))}
    good = {"uid": "a" * 32, "shard": "00000.tar", "index": 0, "image_member": "jpg",
            "scores": {}}
    missing = {**good, "uid": "b" * 32, "index": 10_000}  # no such sample: fails mid-tar
    shard = output.OutputShard(0, [good, missing])
    for out in (f"{mem}/out", str(tmp_path / "out")):
        with pytest.raises(CurateError, match="is no longer in its input shard"):
            output.write_shard(shard, refs, out)
        fs, path = fsspec.core.url_to_fs(out)
        assert fs.find(path) == []  # no tar, no state, no temporary file


def test_finish_removes_leftovers_of_a_killed_local_write(tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out / ".state").mkdir(parents=True)
    leftovers = [out / ".00003.tar.k2j_x9.tmp", out / ".state" / ".00003.json.ab12.tmp",
                 out / ".sizes.json.zz.tmp"]
    for p in [*leftovers, out / ".notes.tmp", out / "00009.tar"]:
        p.write_bytes(b"x")
    output.finish(f"file://{out}", [])
    assert not any(p.exists() for p in leftovers)
    # Not curate's: kept (00009.tar has no state record).
    assert (out / ".notes.tmp").exists() and (out / "00009.tar").exists()
    assert json.loads((out / "sizes.json").read_text()) == {}


def test_rerun_into_memory_output_rewrites_nothing_and_removes_stale(
        demo_pool: Path, demo_run: Path, ray_local: None, mem: str, tmp_path: Path) -> None:
    pool = f"file://{demo_pool}/*.tar"
    rd = tmp_path / "run"
    run(basic(pool, dir=mem), rd, progress=False)
    start = events(rd, "writing_start")[-1]
    assert start["placement"] == "driver_process" and start["todo"] == 5
    files = mem_files(mem)
    assert {k: v for k, v in files.items() if k.endswith(".tar")} == local_tars(
        demo_run / "output")

    again = run(basic(pool, dir=mem), rd, progress=False)
    assert again.shards_resumed == 8
    assert events(rd, "writing_start")[-1]["todo"] == 0
    assert len(events(rd, "output_shard_done")) == 5  # only the first run's
    assert mem_files(mem) == files

    # Bigger output shards: 3 new ones are written, the old 00003 and 00004 go.
    run(basic(pool, dir=mem, samples_per_shard=150), rd, progress=False)
    assert events(rd, "writing_start")[-1]["todo"] == 3
    now = mem_files(mem)
    assert sorted(k for k in now if k.endswith(".tar")) == ["00000.tar", "00001.tar",
                                                            "00002.tar"]
    assert sorted(k for k in now if k.startswith(".state/")) == [
        ".state/00000.json", ".state/00001.json", ".state/00002.json"]
    assert json.loads(now["sizes.json"]) == {"00000.tar": 150, "00001.tar": 150,
                                             "00002.tar": 114}


def test_unknown_protocol_fails_before_any_work(demo_pool: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="fsspec knows no protocol 'nope'"):
        basic(str(demo_pool / "*.tar"), dir="nope://bucket/x")
    with pytest.raises(ConfigError, match="dir is empty"):
        basic(str(demo_pool / "*.tar"), dir=" ")
    yaml_text = BASIC.read_text().replace("samples_per_shard: 100",
                                          "samples_per_shard: 100\n  dir: nope://bucket/x")
    (tmp_path / "p.yaml").write_text(yaml_text)
    res = curate_cli("run", str(tmp_path / "p.yaml"), "--out", str(tmp_path / "run"),
                     "--input", str(demo_pool / "*.tar"))
    assert res.returncode == 2, res.stderr
    assert res.stderr.startswith("error: ") and "output: dir 'nope://bucket/x'" in res.stderr
    assert not (tmp_path / "run").exists()


def test_a_process_local_store_is_refused(tmp_path: Path) -> None:
    from curate.store.store import Store

    with pytest.raises(CurateError, match="memory:// lives in one process"):
        Store("memory://pool")


def test_missing_filesystem_package_is_a_config_error(demo_pool: Path) -> None:
    try:
        import s3fs  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("s3fs is installed here")
    with pytest.raises(ConfigError, match=r"s3fs.*every node"):
        basic(str(demo_pool / "*.tar"), dir="s3://bucket/curated")


def test_reshard_reuses_the_writer(demo_run: Path, tmp_path: Path) -> None:
    """reshard writes through the same functions; a second reshard rewrites nothing."""
    from curate.write.export import kept_uids, reshard

    uids = kept_uids(demo_run)[:50]
    reshard(uids, tmp_path / "r", run_dir=demo_run, samples_per_shard=20)
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "r").glob("*.tar")}
    assert len(before) == 3
    reshard(uids, tmp_path / "r", run_dir=demo_run, samples_per_shard=20)
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "r").glob("*.tar")} == before
