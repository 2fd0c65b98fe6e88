"""What a run does with the machine it finds: a Ray cluster someone else started, the user's
umask, paths that are files, a disk that fills under DuckDB, and Ray going away under it."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, curate_cli

from curate.reaper import driver_sessions, session_processes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {
        "PYTHONUNBUFFERED": "1"}


def _curate(*args: str, umask: int | None = None, timeout: float = 300,
            ) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("curate", path=str(Path(sys.executable).parent)) or "curate"
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=timeout,
                          env=_env(), preexec_fn=(lambda: os.umask(umask)) if umask else None)


def _ray_events(store: Path) -> list[dict[str, Any]]:
    lines = (store / "log.jsonl").read_text().splitlines()
    return [e for e in map(json.loads, lines) if e["event"] == "ray"]


@pytest.fixture
def other_cluster(tmp_path: Path) -> Any:
    """A Ray head started by someone else on this machine (`ray start --head`), stopped, with
    every process of its session, at the end (never `ray stop`: that stops every Ray here)."""
    ray_exe = Path(sys.executable).parent / "ray"
    port = _free_port()
    # Ray names the session after the pid of `ray start`; pids are reused, and /tmp/ray keeps
    # the sessions of earlier runs: only a session made since now is this one.
    since = time.time()
    proc = subprocess.Popen([str(ray_exe), "start", "--head", "--block", f"--port={port}",
                             "--num-cpus=1", "--include-dashboard=false",
                             "--disable-usage-stats"], env=_env(), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not (sessions := [Path(d) for d in driver_sessions("/tmp/ray", proc.pid, since)]):
            assert proc.poll() is None and time.monotonic() < deadline, "ray start failed"
            time.sleep(0.5)
        with socket.socket() as s:  # its GCS is up
            while s.connect_ex(("127.0.0.1", port)) != 0:
                assert time.monotonic() < deadline, "ray start did not listen"
                time.sleep(0.5)
        yield f"127.0.0.1:{port}", sessions[0]
    finally:
        # SIGKILL, not SIGTERM: `ray start --block` answers SIGTERM with a graceful stop of
        # its whole cluster that took 30 s; every process of its session is swept below.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
        current = Path("/tmp/ray/ray_current_cluster")  # `ray start`'s pointer to it
        if current.is_file() and current.read_text().strip().endswith(f":{port}"):
            current.unlink()
        for sess in driver_sessions("/tmp/ray", proc.pid, since):
            for pid in session_processes(str(sess), {os.getpid()}):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


@pytest.mark.slow
def test_a_plain_run_never_joins_a_running_cluster_and_honours_the_umask(
        tmp_path: Path, other_cluster: tuple[str, Path]) -> None:
    _, their_session = other_cluster
    res = curate_cli("demo-data", str(tmp_path / "pool"), "--shards", "2", "--per-shard", "16")
    assert res.returncode == 0, res.stderr
    out = tmp_path / "run"
    res = _curate("run", str(REPO / "pipelines" / "basic.yaml"), "--out", str(out),
                  "--input", str(tmp_path / "pool"), "--no-progress", "--write-shards",
                  umask=0o022)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "multiple active Ray" not in res.stdout + res.stderr
    assert "Connecting to" not in res.stdout + res.stderr
    [ray_info] = _ray_events(out / "store")
    assert ray_info["private"] and ray_info["address"] == "local"
    assert Path(ray_info["session_dir"]) != their_session
    assert Path(ray_info["session_dir"]).name != their_session.name

    sel = out / "selections" / "basic"
    res = _curate("export", str(sel), "--format", "uids", "--out", str(tmp_path / "uids.txt"),
                  umask=0o022)
    assert res.returncode == 0, res.stderr
    # Everything the run wrote is readable by the others the umask admits (0644, 0755).
    written = [p for p in (*out.rglob("*"), tmp_path / "uids.txt")]
    names = {p.name for p in written}
    for expected in ("pipeline.yaml", "stats.json", "shards.parquet", "part-00000.parquet",
                     "store.json", "pool.parquet", "00000.tar"):
        assert expected in names, expected
    modes = {str(p.relative_to(tmp_path)): stat.S_IMODE(p.stat().st_mode) for p in written
             if not p.is_symlink()}
    bad = {k: oct(m) for k, m in modes.items()
           if m != (0o755 if (tmp_path / k).is_dir() else 0o644)}
    assert bad == {}


def test_paths_that_are_files_are_user_errors(tmp_path: Path) -> None:
    (tmp_path / "taken").write_text("not a directory")
    pool = tmp_path / "pool"
    res = curate_cli("demo-data", str(pool), "--shards", "1", "--per-shard", "4")
    assert res.returncode == 0, res.stderr
    basic = str(REPO / "pipelines" / "basic.yaml")
    for args, what in (
            (("run", basic, "--out", str(tmp_path / "taken"), "--input", str(pool)), "--out"),
            (("run", basic, "--out", str(tmp_path / "taken" / "run"), "--input", str(pool)),
             "--out"),
            (("score", basic, "--store", str(tmp_path / "taken"), "--input", str(pool)),
             "the store"),
    ):
        res = curate_cli(*args)
        assert res.returncode == 2, (args, res.stderr)
        lines = res.stderr.strip().splitlines()
        assert lines[0].startswith(f"error: {what}") and "taken" in lines[0], res.stderr
        assert lines[1].startswith("hint: ") and "Traceback" not in res.stderr


def test_an_empty_folder_as_input_is_a_user_error(tmp_path: Path) -> None:
    (tmp_path / "pool").mkdir()
    res = curate_cli("run", str(REPO / "pipelines" / "basic.yaml"), "--out",
                     str(tmp_path / "run"), "--input", str(tmp_path / "pool"))
    assert res.returncode == 2
    assert "holds no shard" in res.stderr and "hint:" in res.stderr


def test_ray_losing_its_cluster_is_an_error_line_not_an_internal_error() -> None:
    from ray.exceptions import LocalRayletDiedError, RayTaskError

    from curate.cli import ray_lost

    lost = ray_lost(LocalRayletDiedError())
    assert lost is not None and lost.message.startswith("the Ray cluster went away")
    assert "LocalRayletDiedError" in lost.message and "same command again" in (lost.hint or "")
    try:
        raise ValueError("a bug in a scorer")
    except ValueError as cause:
        task_error = RayTaskError("score_shard", "Traceback ...", cause)
    assert ray_lost(task_error) is None  # our own code's error inside a task is a bug
    assert ray_lost(ValueError("x")) is None


def test_more_workers_than_the_cluster_can_place_are_capped(
        demo_pool: Path, tmp_path: Path, ray_local: None, caplog: pytest.LogCaptureFixture,
        ) -> None:
    from faultstage import pipeline

    from curate.runner import run

    # The session's Ray has 2 CPUs; two workers of 2 CPUs each cannot both be placed, and
    # waiting for the second one's set-up would wait forever.
    p = pipeline(demo_pool, {"cpus": 2.0}, workers=2)
    with caplog.at_level("WARNING", logger="curate"):
        result = run(p, tmp_path / "run", progress=False)
    assert result.kept > 0
    assert "the Ray cluster can place only 1 scoring worker of 2 CPU each" in caplog.text
    events = [json.loads(x) for x in (tmp_path / "run" / "store" / "log.jsonl").read_text()
              .splitlines()]
    [capped] = [e for e in events if e["event"] == "workers_capped"]
    assert capped["asked"] == 2 and capped["placeable"] == 1
    [started] = [e for e in events if e["event"] == "workers_started"]
    assert started["workers"] == 1 and started["cpus"] == 2.0


DRIVER = """
import sys
sys.path.insert(0, {tests!r})
import faultstage
faultstage.install()
from curate.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_joined_cluster_going_away_ends_with_an_error_line(
        demo_pool: Path, tmp_path: Path, other_cluster: tuple[str, Path]) -> None:
    import yaml

    address, their_session = other_cluster
    raw = yaml.safe_load((REPO / "pipelines" / "basic.yaml").read_text())
    raw["score"] = [{"fault": {"sleep": 2.0}}, *raw["score"]]  # slow enough to be cut short
    raw["input"] = {"shards": str(demo_pool / "*.tar")}
    (tmp_path / "slow.yaml").write_text(yaml.safe_dump(raw))
    out = tmp_path / "run"
    code = DRIVER.format(tests=str(REPO / "tests"))
    proc = subprocess.Popen([sys.executable, "-c", code, "run", str(tmp_path / "slow.yaml"),
                             "--out", str(out), "--address", address, "--no-progress"],
                            # Ray's driver gives up on a lost GCS after 60 s by default.
                            env=_env() | {"RAY_gcs_rpc_server_reconnect_timeout_s": "10"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        log = out / "store" / "log.jsonl"
        deadline = time.monotonic() + 300
        while not (log.is_file() and '"workers_started"' in log.read_text()):
            assert proc.poll() is None, proc.stderr.read()[-3000:]  # type: ignore[union-attr]
            assert time.monotonic() < deadline, "the run did not get going"
            time.sleep(0.5)
        import ray

        ray_dir = str(Path(ray.__file__).parent)  # Ray's processes, not the driver
        for pid in session_processes(str(their_session), {os.getpid(), proc.pid}, ray_dir):
            with contextlib.suppress(ProcessLookupError):  # the whole cluster goes away
                os.kill(pid, signal.SIGKILL)
        _, err = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 1, err[-3000:]
    lines = [x for x in err.splitlines() if x.startswith(("error:", "hint:"))]
    assert lines[-2].startswith("error: ") and "Ray cluster" in lines[-2], err[-3000:]
    assert address in lines[-2] or "went away" in lines[-2]
    assert lines[-1].startswith("hint: ") and "run the same command again" in lines[-1]
    assert "internal error" not in err and "Traceback" not in err
