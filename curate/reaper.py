"""Nothing left behind: the processes of a private Ray end with the run that started it.

Ray ties its head processes to the driver that started them (they die with it), but the agents
its raylet starts (``ray::DashboardAgent``, ``ray::RuntimeEnvAgent``) notice the raylet's death
and then hang on their way out for a minute or more when the driver was SIGKILLed. A killed run
must not leave processes behind, so ``RaySession`` starts this small watcher beside a private
Ray. It is not in the driver's process group (a Ctrl-C or a kill of the group reaches it only
through the pipe) and holds the read end of a pipe whose write end only the driver has: the
pipe ends when the driver ends, however it ends. The watcher then gives Ray a moment to shut
itself down and kills, with SIGTERM and then SIGKILL, what is left of that Ray session: this
user's Ray processes (named ``ray::...``, or run from Ray's package) that hold a file under the
session's directory open (every Ray process keeps its log files there) or name it in their
arguments; never the driver, never another program that happens to read those logs.

The watcher starts before Ray does, so a driver killed while Ray is still starting leaves
nothing either: the driver writes the session directory into the pipe once Ray is up, and a
watcher that never got it sweeps the sessions its driver started (Ray names a local session
after the pid of the process that started it).

    python -m curate.reaper RAY_TEMP_ROOT DRIVER_PID RAY_PACKAGE_DIR   # stdin: the driver's pipe
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

# Seconds Ray gets to end its own processes after the driver ended, before they are killed.
GRACE_S = 2.0
# Seconds between SIGTERM and SIGKILL, and how long the watcher keeps sweeping.
TERM_S = 2.0
SWEEP_S = 20.0


def spawn() -> subprocess.Popen[bytes] | None:
    """Start the watcher for the private Ray this process is about to start: call it *before*
    ``ray.init``, so that a driver killed while Ray is still starting is covered too, and
    ``announce`` the session directory once Ray is up. The returned process's ``stdin`` is the
    driver's end of the pipe (close it after ``ray.shutdown``). None where the system has no
    ``/proc`` to find processes in."""
    if not Path("/proc/self/fd").is_dir():
        return None
    import ray

    return subprocess.Popen(
        [sys.executable, "-m", "curate.reaper", ray_temp_root(), str(os.getpid()),
         os.path.dirname(os.path.abspath(ray.__file__))],
        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True, close_fds=True)


def announce(watcher: subprocess.Popen[bytes], session_dir: str) -> None:
    """Tell the watcher which Ray session to sweep (else it finds the driver's own)."""
    assert watcher.stdin is not None
    watcher.stdin.write(session_dir.encode() + b"\n")
    watcher.stdin.flush()


def ray_temp_root() -> str:
    """Where a local Ray started without ``_temp_dir`` puts its session directories."""
    try:
        from ray._common.utils import get_default_ray_temp_dir

        return str(get_default_ray_temp_dir())
    except ImportError:  # another Ray version: its documented default
        import tempfile

        return os.path.join(os.environ.get("RAY_TMPDIR") or tempfile.gettempdir(), "ray")


def driver_sessions(root: str, driver: int, since: float) -> list[str]:
    """The session directories under ``root`` that the process ``driver`` created since
    ``since`` (Ray names a local session ``session_<date>_<pid of the process that started
    it>``): the Ray that a driver killed before it could announce one was starting."""
    found = []
    for d in Path(root).glob(f"session_*_{driver}"):
        try:
            if d.is_dir() and not d.is_symlink() and d.stat().st_mtime >= since - 1.0:
                found.append(str(d))
        except OSError:
            continue
    return found


def session_processes(session_dir: str, spare: set[int], ray_dir: str | None = None,
                      ) -> list[int]:
    """Pids of this user's Ray processes, other than ``spare``, that have a file under
    ``session_dir`` open or name it on their command line (with ``ray_dir`` None: any of this
    user's processes that do)."""
    root = os.path.realpath(session_dir).rstrip("/") + "/"
    uid = os.getuid()
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) in spare:
            continue
        try:
            if entry.stat().st_uid != uid:
                continue
            if _uses(entry.path, root, ray_dir):
                found.append(int(entry.name))
        except OSError:  # gone meanwhile, or not ours to look at
            continue
    return found


def _uses(proc: str, root: str, ray_dir: str | None) -> bool:
    with open(f"{proc}/cmdline", "rb") as f:
        cmdline = f.read()
    if ray_dir is not None and not (cmdline.startswith(b"ray::")
                                    or (ray_dir.rstrip("/") + "/").encode() in cmdline):
        return False
    key = root[:-1].encode()  # the directory itself, or a path inside it, in an argument
    at = cmdline.find(key)
    while at >= 0:
        if cmdline[at + len(key):at + len(key) + 1] in (b"", b"/", b"\0"):
            return True
        at = cmdline.find(key, at + 1)
    for fd in os.scandir(f"{proc}/fd"):
        try:
            if os.readlink(fd.path).startswith(root):
                return True
        except OSError:
            continue
    return False


def reap(session_dir: str, driver: int, ray_dir: str) -> int:
    """Kill what is left of the Ray session; the number of processes signalled."""
    spare = {os.getpid(), driver}
    termed: dict[int, float] = {}  # pid -> when it was sent SIGTERM
    deadline = time.monotonic() + SWEEP_S
    while time.monotonic() < deadline:
        left = session_processes(session_dir, spare, ray_dir)
        if not left:
            break
        now = time.monotonic()
        for pid in left:
            if pid not in termed:
                sig = signal.SIGTERM
                termed[pid] = now
            elif now - termed[pid] >= TERM_S:
                sig = signal.SIGKILL
            else:
                continue
            try:
                os.kill(pid, sig)
            except OSError:
                continue
        time.sleep(0.2)
    return len(termed)


def main(argv: list[str]) -> int:
    root, driver, ray_dir = argv[0], int(argv[1]), argv[2]
    started = time.time()
    announced: list[str] = []
    for line in sys.stdin.buffer:  # ends once the driver's end is closed
        if line.strip():
            announced.append(line.strip().decode())
    time.sleep(GRACE_S)
    for session_dir in announced or driver_sessions(root, driver, started):
        reap(session_dir, driver, ray_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
