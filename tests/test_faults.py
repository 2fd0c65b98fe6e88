"""Fault injection on real runs (real Ray, real tar shards, real disks).

Each case breaks a run in one way, then checks what the issue asks of every failure: the
failure is reported plainly, nothing is lost or duplicated in the manifest, completed work is
not redone, and the final manifest and output shards equal those of a clean run (``demo_run``:
pipelines/basic.yaml on the demo pool). The injected faults come from ``faultstage.Fault``, a
scorer that adds no column, so a run with it has exactly the clean run's manifest and output.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from conftest import REPO, curate_cli, demo_pipeline
from faultstage import pipeline

from curate.errors import CurateError, ShardFailed
from curate.reaper import session_processes
from curate.runner import run

SHARDS = [f"{i:05d}.tar" for i in range(8)]


def events(run_dir: Path, name: str) -> list[dict[str, Any]]:
    """Events of the run's store log (scoring)."""
    lines = (run_dir / "store" / "log.jsonl").read_text().splitlines()
    return [e for e in map(json.loads, lines) if e["event"] == name]


def selection(run_dir: Path) -> Path:
    return run_dir / "selections" / "basic"


def assert_same_as_clean(run_dir: Path, clean: Path) -> None:
    """Manifest and output shards equal the clean run's; no uid twice; no temp file left."""
    out = selection(run_dir)
    ours = pq.read_table(out / "manifest")
    theirs = pq.read_table(clean / "manifest")
    assert ours.schema.names == theirs.schema.names
    assert [c for c in ours.schema.names if not ours[c].equals(theirs[c])] == []
    uids = ours.column("uid").to_pylist()
    assert len(uids) == len(set(uids)) == 8 * 64
    names = sorted(p.name for p in (clean / "output").glob("*.tar"))
    assert sorted(p.name for p in (out / "output").glob("*.tar")) == names
    for name in names:
        assert (out / "output" / name).read_bytes() == (clean / "output" / name).read_bytes()
    assert not list(run_dir.rglob("*.tmp"))


def _commands(pids: list[int]) -> list[str]:
    out = []
    for pid in pids:
        try:
            out.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode())
        except OSError:
            continue
    return out


def signal_mtimes(run_dir: Path) -> dict[str, int]:
    """Shard -> mtime of its last scorer's file in the store, for every shard whose scoring
    finished (the files of a shard are committed base first, scorers in pipeline order)."""
    last = run_dir / "store" / "scores" / "exact_hash"
    return {p.name.split(".")[0]: p.stat().st_mtime_ns for p in last.glob("*/*.parquet")}


def store_files(run_dir: Path) -> dict[str, int]:
    """Every scorer and base file of the run's store -> its mtime."""
    store = run_dir / "store"
    return {str(p.relative_to(store)): p.stat().st_mtime_ns
            for sub in ("base", "scores") for p in (store / sub).rglob("*.parquet")}


def test_killed_worker_mid_shard_is_replaced_and_only_that_shard_redone(
        demo_pool: Path, demo_run: Path, tmp_path: Path, ray_local: None) -> None:
    flag = tmp_path / "killed"
    p = pipeline(demo_pool, {"kill_at": "00003.tar", "kill_from": 32, "kill_once": str(flag)},
                 batch_size=16)
    out = tmp_path / "run"
    result = run(p, out, progress=False)
    assert flag.exists()  # the worker really was SIGKILLed, two batches into the shard
    retries = events(out, "shard_retry")
    assert [(e["shard"], e["error"].startswith("worker died")) for e in retries] == [
        ("00003.tar", True)]
    done = [e["shard"] for e in events(out, "shard_done")]
    assert sorted(done) == SHARDS  # every shard finished once: none was scored twice
    attempts = dict(zip(*pq.read_table(selection(out) / "shards.parquet",
                                       columns=["shard", "attempts"]).to_pydict().values(),
                        strict=True))
    assert attempts == {s: 2 if s == "00003.tar" else 1 for s in SHARDS}
    assert result.samples == 8 * 64
    assert_same_as_clean(out, demo_run)


DRIVER = """
import sys
sys.path.insert(0, {tests!r})
from faultstage import pipeline
from pathlib import Path
from curate.runner import run
run(pipeline(Path({pool!r}), {{"sleep": 1.0}}, workers=1), {out!r}, progress=False)
"""


@pytest.mark.slow
def test_killed_driver_resumes_without_redoing_finished_shards(
        demo_pool: Path, demo_run: Path, tmp_path: Path, ray_local: None) -> None:
    out = tmp_path / "run"
    code = DRIVER.format(tests=str(REPO / "tests"), pool=str(demo_pool), out=str(out))
    env = {**os.environ, "RAY_ADDRESS": ""}  # its own local Ray, not the tests' cluster
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 240
        while len(signal_mtimes(out)) < 3:
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:]  # type: ignore
            assert time.monotonic() < deadline, "the run did not get going"
            time.sleep(0.2)
        os.kill(proc.pid, signal.SIGKILL)  # the driver only: as if its machine went away
        proc.wait(timeout=30)
        # None of its private Ray's processes outlive it for long (curate.reaper).
        [ray_info] = events(out, "ray")
        assert ray_info["private"] and ray_info["session_dir"]
        deadline = time.monotonic() + 30  # Ray's own agents linger for a minute or more
        while left := session_processes(ray_info["session_dir"], {os.getpid()}):
            assert time.monotonic() < deadline, f"left behind: {_commands(left)}"
            time.sleep(0.5)
    finally:
        time.sleep(1)
        try:  # then whatever local Ray processes it left behind
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert proc.returncode == -signal.SIGKILL
    finished = signal_mtimes(out)
    files = store_files(out)
    assert 3 <= len(finished) < 8 and not (selection(out) / "manifest").exists()
    # What a write cut short leaves behind (never taken for a finished shard).
    [base] = (out / "store" / "base").glob("*")
    (base / ".00007.x1y2.parquet.tmp").write_bytes(b"PAR1 half a file")

    result = run(pipeline(demo_pool, {"sleep": 1.0}, workers=1), out, progress=False)
    # A worker of the killed driver may still commit a shard (complete, atomically) before Ray
    # reaps it, so the rerun reuses at least what was finished at the kill.
    assert len(finished) <= result.shards_resumed <= 8
    now = store_files(out)
    assert {k: now[k] for k in files} == files  # finished work was not recomputed
    assert not list(base.glob(".*.tmp"))  # the leftover was removed
    assert len(events(out, "score_start")) == 2
    assert_same_as_clean(out, demo_run)


@pytest.mark.slow
def test_shard_failing_every_time_is_reported_and_the_rest_finish(
        demo_pool: Path, demo_run: Path, tmp_path: Path) -> None:
    pool = tmp_path / "pool"
    shutil.copytree(demo_pool, pool)
    bad = pool / "00005.tar"
    bad.rename(tmp_path / "00005.tar.good")
    bad.write_bytes(b"<html><body>404 Not Found</body></html>\n" * 20)  # not a tar at all
    out = tmp_path / "run"
    res = curate_cli("run", str(REPO / "pipelines" / "basic.yaml"), "--out", str(out),
                     "--input", str(pool / "*.tar"), "--workers", "2", "--no-progress")
    assert res.returncode == 1, res.stderr
    lines = res.stderr.strip().splitlines()
    assert any(x.startswith("shard 00005.tar failed after 3 attempts") for x in lines)  # live
    err = lines[-2:]  # then the summary: one error line and a hint
    assert err[0].startswith("error: 1 of 8 shards failed after 3 attempts: 00005.tar: "), err
    assert "is not a tar archive" in err[0] and err[1].startswith("hint: "), err
    assert "Traceback" not in res.stderr
    shards = pq.read_table(out / "store" / "pool.parquet").to_pylist()
    status = {r["shard"]: r["status"] for r in shards}
    assert status == {s: "failed" if s == "00005.tar" else "done" for s in SHARDS}
    failed = next(r for r in shards if r["status"] == "failed")
    assert failed["attempts"] == 3 and "not a tar archive" in failed["error"]
    assert len(signal_mtimes(out)) == 7 and not (selection(out) / "manifest").exists()
    finished = signal_mtimes(out)

    bad.unlink()
    (tmp_path / "00005.tar.good").rename(bad)
    res = curate_cli("run", str(REPO / "pipelines" / "basic.yaml"), "--out", str(out),
                     "--input", str(pool / "*.tar"), "--no-progress", "--write-shards")
    assert res.returncode == 0, res.stderr
    assert {k: v for k, v in signal_mtimes(out).items() if k != "00005"} == finished
    assert_same_as_clean(out, demo_run)


def test_shard_vanishing_after_listing_fails_clearly_then_resumes(
        demo_pool: Path, demo_run: Path, tmp_path: Path, ray_local: None) -> None:
    pool = tmp_path / "pool"
    shutil.copytree(demo_pool, pool)
    # One worker scores in pool order; while it reads 00000.tar, 00007.tar is deleted.
    fault = {"delete_at": "00000.tar", "delete": str(pool / "00007.tar")}
    out = tmp_path / "run"
    with pytest.raises(ShardFailed) as info:
        run(pipeline(pool, fault, workers=1), out, progress=False)
    assert "1 of 8 shards failed" in info.value.message
    assert "00007.tar: input shard" in info.value.message and "is gone" in info.value.message
    assert sorted(signal_mtimes(out)) == [f"{i:05d}" for i in range(7)]
    finished = signal_mtimes(out)

    shutil.copy(demo_pool / "00007.tar", pool / "00007.tar")  # it comes back
    result = run(pipeline(pool, fault, workers=1), out, progress=False)
    assert result.shards_resumed == 7
    assert {k: v for k, v in signal_mtimes(out).items() if k != "00007"} == finished
    assert_same_as_clean(out, demo_run)


def _mount_tmpfs(path: Path, size: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                         capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs to fill (needs root): {res.stderr.strip()}")


def _resize(path: Path, size: str) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(path)], check=True)


@pytest.fixture
def small_disk(tmp_path: Path) -> Any:
    disk = tmp_path / "disk"
    _mount_tmpfs(disk, "64k")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


def _output_bytes(clean: Path) -> list[int]:
    return [p.stat().st_size for p in sorted((clean / "output").glob("*.tar"))]


def test_full_disk_while_writing_output(demo_pool: Path, demo_run: Path, small_disk: Path,
                                        tmp_path: Path, ray_local: None) -> None:
    sizes = _output_bytes(demo_run)
    assert len(sizes) >= 2
    # Room for the first output shard, not for the second.
    _resize(small_disk, str((sizes[0] + sizes[1] // 2) // 4096 * 4096))
    out = tmp_path / "run"
    p = pipeline(demo_pool, {}, output={"dir": str(small_disk / "out")})
    with pytest.raises(CurateError) as info:
        run(p, out, progress=False)
    assert info.value.message.startswith("no space left on device"), info.value.message
    assert "output" in info.value.message and "run the same command again" in str(info.value)
    left = sorted(small_disk.rglob("*"))
    assert not [x for x in left if x.name.endswith(".tmp")]  # no partial file left
    for tar in (small_disk / "out").glob("*.tar"):  # what is there is complete
        assert tar.read_bytes() == (demo_run / "output" / tar.name).read_bytes()
    scored = signal_mtimes(out)
    assert len(scored) == 8

    _resize(small_disk, "64m")
    result = run(p, out, progress=False)
    assert result.shards_resumed == 8 and signal_mtimes(out) == scored
    assert pq.read_table(result.dir / "manifest").equals(
        pq.read_table(demo_run / "manifest"))
    for tar in sorted((demo_run / "output").glob("*.tar")):
        assert (small_disk / "out" / tar.name).read_bytes() == tar.read_bytes()


def test_full_disk_while_scoring(demo_pool: Path, demo_run: Path, small_disk: Path,
                                 ray_local: None) -> None:
    out = small_disk / "run"  # the whole run directory on a 64 KiB disk
    with pytest.raises(CurateError) as info:
        run(pipeline(demo_pool, {}, workers=1), out, progress=False)
    assert info.value.message.startswith("no space left on device"), info.value.message
    assert not list(out.rglob("*.tmp"))
    finished = signal_mtimes(out)
    for f in (out / "store").rglob("*.parquet"):  # every file there is complete and readable
        if f.parent.name != "store":
            assert pq.read_table(f).num_rows == 64
    assert len(finished) < 8

    _resize(small_disk, "64m")
    result = run(pipeline(demo_pool, {}, workers=1), out, progress=False)
    assert result.shards_resumed == len(finished)
    assert_same_as_clean(out, demo_run)


def test_second_run_into_the_same_directory_is_refused(tmp_path: Path) -> None:
    from curate.io.rundir import RunLock

    with RunLock(tmp_path), pytest.raises(CurateError, match=f"pid {os.getpid()}"):
        with RunLock(tmp_path):
            pass
    with RunLock(tmp_path):  # released on exit
        pass


def test_full_disk_under_duckdb_while_selecting(demo_pool: Path, demo_run: Path,
                                               small_disk: Path) -> None:
    from curate.runner import select

    # The store is complete; only the selection's directory (where DuckDB keeps its working
    # database and write-ahead log) is on the full disk.
    store = demo_run.parent.parent / "store"
    sel = demo_pipeline(demo_pool).selection()
    before = store_files(demo_run.parent.parent)
    for size in ("64k", "256k"):
        _resize(small_disk, size)
        with pytest.raises(CurateError) as info:
            select(store, sel, small_disk / "sel", progress=False)
        assert info.value.message.startswith("no space left on device"), info.value.message
        assert "run the same command again" in str(info.value)
        assert store_files(demo_run.parent.parent) == before  # the store is untouched
    _resize(small_disk, "64m")
    result = select(store, sel, small_disk / "sel", progress=False)
    assert pq.read_table(result.dir / "manifest").equals(
        pq.read_table(demo_run / "manifest"))


def test_a_refused_run_names_the_holder_and_its_command(tmp_path: Path) -> None:
    from curate.io.rundir import RunLock

    with RunLock(tmp_path), pytest.raises(CurateError) as info:
        with RunLock(tmp_path):
            pass
    assert info.value.message.startswith(f"another curate process (pid {os.getpid()}: ")
    assert Path(sys.argv[0]).name in info.value.message  # the holder's command line


def test_a_lock_taken_an_instant_ago_still_names_its_holder(tmp_path: Path) -> None:
    """Two commands started at the same instant: the loser reads the lock file before the
    winner has written its pid into it, and waits a moment for it."""
    import fcntl
    import threading

    from curate.io.rundir import RunLock

    fd = os.open(tmp_path / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)  # held, nothing written yet
    late = threading.Timer(0.3, lambda: os.pwrite(fd, b"pid 4242: curate score p.yaml", 0))
    late.start()
    try:
        with pytest.raises(CurateError, match=r"pid 4242: curate score p\.yaml"):
            with RunLock(tmp_path):
                pass
    finally:
        late.join()
        os.close(fd)


def test_select_on_a_store_being_scored_for_the_first_time_says_so(demo_pool: Path,
                                                                    tmp_path: Path) -> None:
    from curate.config import pipeline_from_dict
    from curate.runner import score, select
    from curate.store.store import POOL, Store

    (tmp_path / "pool").mkdir()
    shutil.copy(demo_pool / "00000.tar", tmp_path / "pool")
    p = pipeline_from_dict({"name": "s", "input": {"shards": str(tmp_path / "pool" / "*.tar")},
                            "score": ["caption_stats"], "select": []})
    store = Store(tmp_path / "store")
    score(p, store, progress=False, local=True)
    (tmp_path / "store" / POOL).unlink()  # as a first pass leaves it until its very end
    sel = p.selection()
    with store.lock():  # a first scoring pass, still running
        with pytest.raises(CurateError) as info:
            select(store, sel, tmp_path / "sel", progress=False)
    message = str(info.value)
    assert "a scoring pass is running into it now (pid " in message, message
    assert "hint: wait for that pass to end" in message
    with pytest.raises(CurateError) as info:  # no pass running: it was killed
        select(store, sel, tmp_path / "sel", progress=False)
    assert "scoring pass is running" not in str(info.value)
    assert info.value.hint


def test_a_read_only_selection_directory_is_one_error_line(demo_run: Path, small_disk: Path,
                                                           ) -> None:
    from curate.runner import select

    store = demo_run.parent.parent / "store"
    sel = demo_pipeline(Path("unused")).selection()
    (small_disk / "ro").mkdir()
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    for out in (small_disk / "ro", small_disk / "ro" / "new"):  # existing, to be created
        with pytest.raises(CurateError) as info:
            select(store, sel, out, progress=False)
        assert "read-only" in info.value.message or "cannot be created" in info.value.message
        assert info.value.hint


def test_a_full_disk_does_not_stop_a_command_from_taking_its_lock(small_disk: Path) -> None:
    from curate.io.rundir import RunLock

    (small_disk / "run").mkdir()
    with pytest.raises(OSError), open(small_disk / "filler", "wb") as f:  # 0 bytes free
        while True:
            f.write(b"\0" * 4096)
            f.flush()
    with RunLock(small_disk / "run"):  # the pid note cannot be written; the lock is held
        with pytest.raises(CurateError, match="another curate process"):
            with RunLock(small_disk / "run"):
                pass


def test_a_read_only_selection_is_reported_elsewhere(demo_run: Path, small_disk: Path,
                                                     tmp_path: Path) -> None:
    from curate.audit.report import write_report

    _resize(small_disk, "64m")
    sel = small_disk / "sel"
    shutil.copytree(demo_run, sel)
    shutil.rmtree(sel / "report", ignore_errors=True)
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    with pytest.raises(CurateError) as info:
        write_report(sel, max_pages=1)
    assert "cannot be written (read-only file system)" in info.value.message
    assert "--out" in (info.value.hint or "")
    page = write_report(sel, tmp_path / "r" / "index.html", max_pages=1)
    assert "curate report" in page.read_text()


@pytest.mark.slow
def test_a_driver_killed_while_ray_starts_leaves_no_ray_process(demo_pool: Path,
                                                                tmp_path: Path) -> None:
    """`curate score` SIGKILLed while its private Ray is still starting: the watcher was
    started before Ray, finds the session Ray named after the driver and sweeps it."""
    from curate.reaper import driver_sessions, ray_temp_root

    (tmp_path / "pool").mkdir()
    shutil.copy(demo_pool / "00000.tar", tmp_path / "pool")
    (tmp_path / "p.yaml").write_text(
        f"name: p\ninput: {{shards: '{tmp_path}/pool/*.tar'}}\nscore: [caption_stats]\n")
    exe = shutil.which("curate", path=str(Path(sys.executable).parent))
    assert exe is not None
    env = {**os.environ, "RAY_ADDRESS": ""}
    since = time.time()
    proc = subprocess.Popen([exe, "score", str(tmp_path / "p.yaml"), "--store",
                             str(tmp_path / "store"), "--no-progress"], env=env,
                            start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    root = ray_temp_root()
    try:
        deadline = time.monotonic() + 120
        agents: list[str] = []
        while not agents:  # Ray is half-way up: its raylet has started its agents
            assert proc.poll() is None and time.monotonic() < deadline, "Ray never started"
            sessions = driver_sessions(root, proc.pid, since)  # pids are reused
            if sessions:
                agents = [c for c in _commands(session_processes(str(sessions[0]),
                                                                 {os.getpid(), proc.pid}))
                          if "agent" in c]
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        [session] = sessions
        deadline = time.monotonic() + 40  # Ray's own agents linger for a minute or more
        while left := session_processes(session, {os.getpid()}):
            assert time.monotonic() < deadline, f"left behind: {_commands(left)}"
            time.sleep(0.5)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


ODD = "odd *.wal?[x] 'q'"  # glob characters, DuckDB's option mark, a quote, spaces


def test_paths_with_glob_and_sql_characters_work_everywhere(demo_run: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str],
                                                            ) -> None:
    """A store and selections under names holding `*`, `?`, `[x]` and quotes: selecting, and
    every command that reads a selection, work on them and read only their own files (a
    neighbour that the name would match as a glob holds another manifest)."""
    from curate.cli import main
    from curate.runner import select

    store = tmp_path / f"st {ODD}" / "store"
    shutil.copytree(demo_run.parent.parent / "store", store)
    sel = demo_pipeline(Path("unused")).selection()
    sel.output = sel.output.model_copy(update={"write_shards": False})
    out = tmp_path / f"sel {ODD}"
    neighbour = tmp_path / "sel odd x.wal1x 'q'"  # what `*`, `?` and `[x]` would match
    select(store, sel, neighbour, progress=False)
    select(store, sel, out, progress=False)
    clean = pq.read_table(demo_run / "manifest")
    ours = pq.read_table(out / "manifest")
    assert ours.num_rows == 8 * 64
    assert [c for c in clean.schema.names if not ours[c].equals(clean[c])] == []
    capsys.readouterr()
    assert main(["query", str(out), "select count(*) as n from manifest", "--format",
                 "csv"]) == 0
    assert capsys.readouterr().out.split() == ["n", "512"]
    assert main(["stats", str(out)]) == 0
    assert main(["export", str(out), "--format", "parquet", "--out",
                 str(tmp_path / f"uids {ODD}.parquet")]) == 0
    assert pq.read_table(tmp_path / f"uids {ODD}.parquet").num_rows == int(
        ours.to_pandas()["kept"].sum())
    assert main(["diff", str(out), str(neighbour)]) == 0
    assert main(["report", str(out), "--max-pages", "1"]) == 0
    assert main(["store", "verify", str(store), "--no-progress"]) == 0
    assert "0 damaged" in capsys.readouterr().out


def test_a_read_only_store_scores_what_it_holds_and_runs(demo_pool: Path, demo_run: Path,
                                                         small_disk: Path, tmp_path: Path,
                                                         ray_local: None) -> None:
    """An auditor's read-only copy of a store: `score` and `run` with nothing to compute work
    (writing nothing into it, taking no lock), and `run` selects into its own --out; a pipeline
    that would compute is one error line."""
    import dataclasses

    from curate.runner import run, score

    _resize(small_disk, "64m")
    store = small_disk / "store"
    shutil.copytree(demo_run.parent.parent / "store", store)
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    result = score(demo_pipeline(demo_pool), store, progress=False)
    assert result.reader.computed == 0 and result.reader.reused == 8
    assert {c.computed for c in result.scorers.values()} == {0}
    p = dataclasses.replace(demo_pipeline(demo_pool), store=str(store))
    ran = run(p, tmp_path / "run", progress=False)
    assert ran.samples == 8 * 64
    ours = pq.read_table(selection(tmp_path / "run") / "manifest")
    clean = pq.read_table(demo_run / "manifest")
    assert [c for c in clean.schema.names if not ours[c].equals(clean[c])] == []
    more = dataclasses.replace(p, scorers=[*p.scorers, *load_steps(["phash"])])
    with pytest.raises(CurateError) as info:
        score(more, store, progress=False)
    assert "is read-only, and it has no phash" in info.value.message
    assert info.value.hint


def load_steps(names: list[str]) -> list[Any]:
    from curate.config import pipeline_from_dict

    return pipeline_from_dict({"input": {"shards": "x"}, "score": names, "select": []}).scorers


def _fill(disk: Path) -> None:
    with pytest.raises(OSError), open(disk / "filler", "wb") as f:  # 0 bytes free
        while True:
            f.write(b"\0" * 65536)
            f.flush()


def test_a_disk_full_before_a_command_starts_is_one_error_line(
        demo_run: Path, small_disk: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """0 bytes free from the start: selecting (its log is the first thing it cannot write),
    and every command writing an --out there, exit 2 with the documented error line."""
    from curate.cli import main

    _resize(small_disk, "1m")
    _fill(small_disk)
    store = str(demo_run.parent.parent / "store")
    selection = small_disk.parent / "sel.yaml"
    selection.write_text("name: s\nselect:\n  - preset: datacomp_basic\n")
    for argv in (["select", store, str(selection), "--out", str(small_disk / "sel"),
                  "--no-progress"],
                 ["report", str(demo_run), "--out", str(small_disk / "r" / "index.html"),
                  "--max-pages", "1"],
                 ["export", str(demo_run), "--out", str(small_disk / "uids.npy")],
                 ["diff", str(demo_run), str(demo_run), "--out", str(small_disk / "d.parquet")]):
        capsys.readouterr()
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("error: no space left on device"), (argv, err)
        assert "\nhint: free space" in err and "internal error" not in err
