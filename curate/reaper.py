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

    python -m curate.reaper SESSION_DIR DRIVER_PID RAY_PACKAGE_DIR   # stdin: the driver's pipe
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


def spawn(session_dir: str) -> subprocess.Popen[bytes] | None:
    """Start the watcher for the Ray session in ``session_dir`` of this process; the returned
    process's ``stdin`` is the driver's end of the pipe (close it after ``ray.shutdown``).
    None where the system has no ``/proc`` to find processes in."""
    if not Path("/proc/self/fd").is_dir():
        return None
    import ray

    return subprocess.Popen(
        [sys.executable, "-m", "curate.reaper", session_dir, str(os.getpid()),
         os.path.dirname(os.path.abspath(ray.__file__))],
        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True, close_fds=True)


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
    session_dir, driver, ray_dir = argv[0], int(argv[1]), argv[2]
    while sys.stdin.buffer.read(4096):  # returns b"" once the driver's end is closed
        pass
    time.sleep(GRACE_S)
    reap(session_dir, driver, ray_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
