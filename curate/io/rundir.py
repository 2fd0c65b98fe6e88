"""Guarding a run's directories (a selection directory, a local store): one run at a time,
leftovers of a killed run removed, and disk errors turned into messages a user can act on.

* ``DirLock`` (``RunLock`` for a selection directory; the store's scoring lock too): an
  exclusive ``flock`` on ``DIR/.lock`` held for the whole run. The kernel drops it when the
  process dies, however it dies, so a killed run never blocks the next one; a second run
  started while the first is alive fails at once, naming the first one's pid and command line
  (``lock_holder`` reads them without taking the lock, e.g. to say that a scoring pass is
  running). A directory that cannot be written is a one-line error, not a crash.
* ``remove_leftovers``: a run killed while writing leaves ``.<name>.<random>.tmp`` files (every
  write goes to such a file and is renamed into place only when complete, see
  ``curate.io.atomic``; a dataset such as the manifest is written in a ``.<name>.<random>.tmp``
  directory, see ``curate.io.dataset``), selection's working database and DuckDB spill
  files. They are never mistaken for finished work; a new run deletes them before it starts.
* ``disk_error``: ``ENOSPC``, ``EDQUOT`` and ``EFBIG`` (also when raised inside a Ray task, or
  reported by DuckDB for its own database and spill files) →
  a ``CurateError`` saying which file could not be written and that rerunning resumes.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

from curate.errors import CurateError
from curate.io.dataset import leftover_dirs

DISK_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_LEFTOVER_DIRS = (".duckdb_tmp",)
_LEFTOVER_FILES = (".selection.duckdb", ".selection.duckdb.wal")  # selection's working database


READ_ONLY = {errno.EROFS, errno.EACCES, errno.EPERM}


def _command() -> str:
    """This process's command line as a user would read it (``curate score p.yaml ...``)."""
    argv = [Path(sys.argv[0]).name, *sys.argv[1:]] if sys.argv and sys.argv[0] else ["python"]
    text = " ".join(argv)
    return text if len(text) <= 160 else text[:157] + "..."


def _holder(fd: int) -> str:
    """Who holds the lock on ``fd``, as written into the file by the holder. A holder that got
    the lock an instant ago may not have written yet: wait a moment for it."""
    deadline = time.monotonic() + 2.0
    while True:
        text = os.pread(fd, 512, 0).decode(errors="replace").strip()
        if text or time.monotonic() > deadline:
            return text or "its pid is not recorded"
        time.sleep(0.05)


def lock_holder(directory: Path) -> str | None:
    """Who holds ``directory/.lock`` right now (``pid 123: curate score ...``), or None when
    nobody does. Reading needs no write permission and takes no lock."""
    try:
        fd = os.open(directory / ".lock", os.O_RDONLY)
    except OSError:
        return None  # no lock file (or not readable): nobody we can see holds it
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _holder(fd)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


class DirLock:
    """``with DirLock(dir, busy, hint):`` holds ``dir/.lock`` exclusively (``flock``: the kernel
    drops it when the holder dies, however it dies), or raises CurateError naming the holder
    (its pid and command line, which it writes into the file once it holds the lock) after
    ``busy`` (e.g. "is scoring into the store X"). A directory that cannot be written raises
    CurateError too: the command writes there."""

    def __init__(self, directory: Path, busy: str, hint: str, what: str) -> None:
        self.path = directory / ".lock"
        self.busy, self.hint, self.what = busy, hint, what
        self._fd: int | None = None

    def __enter__(self) -> DirLock:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as exc:
            if exc.errno in READ_ONLY:
                raise CurateError(
                    f"{self.what} {self.path.parent} is read-only "
                    f"({os.strerror(exc.errno or 0).lower()}), and this command writes there",
                    "give a writable directory, or copy it somewhere writable first") from None
            raise
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise CurateError(f"another curate process ({holder}) {self.busy}",
                              self.hint) from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()}: {_command()}".encode(), 0)
        except OSError as exc:  # the note is for others to read; a full disk must not stop us
            if exc.errno not in DISK_FULL:
                os.close(fd)
                raise
        self._fd = fd
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing releases the lock
            self._fd = None


class RunLock(DirLock):
    """``with RunLock(run_dir):`` holds ``run_dir/.lock`` exclusively, or raises CurateError."""

    def __init__(self, run_dir: Path) -> None:
        super().__init__(run_dir, f"is using {run_dir}",
                         "wait for it to end or stop it; two runs in one directory would "
                         "overwrite each other's files", "the directory")


def remove_leftovers(run_dir: Path) -> int:
    """Delete the temporary files and spill directories a killed run left in ``run_dir``;
    returns how many were removed. Call it only while holding the run's lock."""
    removed = 0
    for tmp in run_dir.rglob(".*.tmp"):
        if tmp.is_file():
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
                removed += 1
    for name in _LEFTOVER_FILES:
        f = run_dir / name
        if f.is_file():
            f.unlink()
            removed += 1
    for name in _LEFTOVER_DIRS:
        d = run_dir / name
        if d.is_dir():
            shutil.rmtree(d, ignore_errors=True)
            removed += 1
    for d in leftover_dirs(run_dir):  # a dataset (the manifest) half written or swapped out
        shutil.rmtree(d, ignore_errors=True)
        removed += 1
    return removed


# How libraries that do their own I/O (DuckDB) report a full disk in their messages.
_DISK_FULL_TEXT = {errno.ENOSPC: "No space left on device", errno.EDQUOT: "Disk quota exceeded",
                   errno.EFBIG: "File too large"}


def _os_error(exc: BaseException) -> OSError | None:
    """The OSError behind ``exc``: itself, a Ray task's cause, or a chained cause; or one made
    from a library error whose message is the system's full-disk text (DuckDB raises
    ``TransactionException: ... No space left on device`` for its own files)."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, OSError) and cur.errno is not None:
            return cur
        text = str(cur)
        for code, words in _DISK_FULL_TEXT.items():
            if words in text and type(cur).__module__.split(".")[0] in ("duckdb", "_duckdb"):
                return OSError(code, os.strerror(code))
        cause = getattr(cur, "cause", None)  # ray.exceptions.RayTaskError
        cur = cause if isinstance(cause, BaseException) else (cur.__cause__ or cur.__context__)
    return None


def disk_error(exc: BaseException, doing: str = "") -> CurateError | None:
    """A CurateError for a full disk (or quota, or file size limit) behind ``exc``; else None.
    ``doing`` says what was being written where (the OSError often has no file name)."""
    err = _os_error(exc)
    if err is None or err.errno not in DISK_FULL:
        return None
    what = f" writing {err.filename}" if err.filename else ""
    what += f" ({doing})" if doing else ""
    return CurateError(
        f"{os.strerror(err.errno or 0).lower()}{what}",
        "free space (or raise the quota) there and run the same command again: finished "
        "shards and output files are complete and are kept; incomplete ones were removed")


# What else the filesystem can refuse: a name too long, a path through a file, a failing disk.
_OTHER_FS = {errno.ENAMETOOLONG, errno.ENOTDIR, errno.EISDIR, errno.ELOOP, errno.EIO}


def filesystem_error(exc: BaseException, doing: str = "") -> CurateError | None:
    """A CurateError for any filesystem condition behind ``exc`` (a full disk, a read-only or
    forbidden path, a name the filesystem refuses, a failing disk); else None. The last line
    of defence: the commands say more where they know what they were writing."""
    full = disk_error(exc, doing)
    if full is not None:
        return full
    err = _os_error(exc)
    if err is None or err.errno not in READ_ONLY | _OTHER_FS:
        return None
    where = f" {err.filename}" if err.filename else (f" ({doing})" if doing else "")
    why = os.strerror(err.errno or 0).lower()
    if err.errno in READ_ONLY:
        return CurateError(f"cannot write{where} ({why})", "give a writable path (e.g. --out "
                           "elsewhere), or ask the directory's owner")
    return CurateError(f"the filesystem refused{where} ({why})",
                       "give another path (a shorter name, a directory that exists), or check "
                       "the disk")


def as_directory(path: str | Path, what: str) -> Path:
    """``path`` made absolute; a CurateError when it exists and is not a directory."""
    p = Path(path).expanduser().absolute()
    if p.exists() and not p.is_dir():
        raise CurateError(f"{what} {p} exists and is not a directory",
                          "give a directory (it is created when missing)")
    for parent in p.parents:
        if parent.exists():
            if not parent.is_dir():
                raise CurateError(f"{what} {p}: {parent} is a file, not a directory",
                                  "give a path whose parents are directories")
            break
    return p


def read_only_dir(directory: Path) -> bool:
    """Whether ``directory`` exists and this process cannot write into it: a read-only mount,
    or (for a user other than root) a directory without write permission."""
    try:
        if os.statvfs(directory).f_flag & os.ST_RDONLY:
            return True
    except OSError:
        return False
    return directory.is_dir() and not os.access(directory, os.W_OK)


@contextlib.contextmanager
def writing_into(directory: Path, what: str, hint: str) -> Iterator[None]:
    """Turns "read-only file system" and "permission denied" raised while writing into
    ``directory`` into a CurateError (``what`` names it; ``hint`` says where else to write)."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in READ_ONLY:
            raise
        raise CurateError(f"{what} {directory} cannot be written "
                          f"({os.strerror(exc.errno or 0).lower()})", hint) from None
