"""What every phase of a run shares: a Ray session started only when work needs it, progress
on screen, and a machine-readable event log.

Logging: while a ``RunLog`` is open, every record of curate's logger (``curate``, from DEBUG
up) and every warning of another library that logs through Python's root logger goes into the
run log as a ``log`` event. On screen, curate's own warnings print as before; the libraries'
(open_clip's "No pretrained weights loaded", ...) do not: where one matters, curate says so in
one line of its own (``library_logs`` collects them around such a call)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

from curate.errors import CurateError

log = logging.getLogger("curate")


class _ToRunLog(logging.Handler):
    """Writes log records into a ``RunLog`` as ``log`` events. A warning of curate's own that
    no other handler takes is also printed on stderr, as Python does without any handler; other
    libraries' records are only recorded."""

    def __init__(self, rlog: RunLog) -> None:
        super().__init__(logging.DEBUG)
        self.rlog = rlog

    def emit(self, record: logging.LogRecord) -> None:
        # The handler is on curate's logger and on the root: each run log takes a record once
        # (a set, so that two run logs open at once do not make each other write it twice).
        seen = record.__dict__.setdefault("_curate_run_logs", set())
        if id(self) in seen:
            return
        seen.add(id(self))
        try:
            message = record.getMessage()
        except (TypeError, ValueError):  # a library's bad format arguments
            message = str(record.msg)
        self.rlog.event("log", level=record.levelname, logger=record.name, message=message)
        if record.levelno >= logging.WARNING and record.name.split(".")[0] == "curate" \
                and not _other_handlers(record.name) and logging.lastResort is not None:
            logging.lastResort.handle(record)


def _other_handlers(name: str) -> bool:
    """Whether a record of logger ``name`` reaches a handler that is not a run log's."""
    logger: logging.Logger | None = logging.getLogger(name)
    while logger is not None:
        if any(not isinstance(h, _ToRunLog) for h in logger.handlers):
            return True
        logger = logger.parent if logger.propagate else None
    return False


@contextlib.contextmanager
def library_logs() -> Iterator[list[logging.LogRecord]]:
    """Collect what other libraries log through the root logger during the block (open_clip
    logs "No pretrained weights loaded" with ``logging.warning``) instead of printing it; yields
    the list of records. Each is passed on to curate's logger at DEBUG level (the run log keeps
    it), so the caller says in its own words only what matters."""
    root = logging.getLogger()
    saved = root.handlers[:]
    records: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if not record.name.startswith("curate"):
                records.append(record)

    collect = Collect(logging.DEBUG)
    root.handlers = [h for h in saved if isinstance(h, _ToRunLog)] + [collect]
    try:
        yield records
    finally:
        root.handlers = saved
        for r in records:
            try:
                message = r.getMessage()
            except (TypeError, ValueError):
                message = str(r.msg)
            log.debug("%s: %s", r.name, message)


class RunLog:
    """Appends one JSON object per event to ``run_log.jsonl`` (timestamps in seconds); while
    open, it also records log messages (see the module docs)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(path, "a", encoding="utf-8")
        self._t0 = time.time()
        self._broken = False
        self._handler = _ToRunLog(self)
        self._level = log.level
        log.addHandler(self._handler)
        log.setLevel(logging.DEBUG)
        root = logging.getLogger()
        root.addHandler(self._handler)  # other libraries' warnings (root's level: WARNING)

    def event(self, event: str, **fields: Any) -> None:
        if self._broken:  # one failed write ends the log: the run's own error says why
            return
        record = {"ts": round(time.time(), 3), "event": event, **fields}
        try:
            self._f.write(json.dumps(record, default=str) + "\n")
            self._f.flush()
        except OSError as exc:  # e.g. a full disk: the run's own error says so, not the log
            self._broken = True  # first: the warning below comes back here as an event
            log.warning("could not write %s: %s", Path(self._f.name).name, exc)

    def close(self) -> None:
        log.removeHandler(self._handler)
        logging.getLogger().removeHandler(self._handler)
        if not any(isinstance(h, _ToRunLog) for h in log.handlers):
            log.setLevel(self._level)
        try:
            self._f.close()
        except OSError:  # the last flush hit a full disk
            pass


class Notes:
    """One-line progress notes on stderr for the phases without a bar ("starting Ray ...",
    "selecting: step 3/9 not_english ..."), when enabled (``None``: when stderr is a
    terminal)."""

    def __init__(self, enabled: bool | None) -> None:
        self.enabled = sys.stderr.isatty() if enabled is None else bool(enabled)

    def __call__(self, message: str) -> None:
        if self.enabled:
            print(message, file=sys.stderr, flush=True)


class Progress:
    """A tqdm bar on a terminal; a plain line every few seconds otherwise (CI logs)."""

    def __init__(self, total: int, what: str, enabled: bool | None, unit: str = "shard") -> None:
        self.total, self.what, self.done, self.samples = total, what, 0, 0
        self.unit = unit
        self._t0 = self._last = time.perf_counter()
        tty = sys.stderr.isatty()
        self.enabled = tty if enabled is None else enabled
        self._bar = None
        if self.enabled and tty:
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=what, unit=unit, dynamic_ncols=True)

    def update(self, shards: int = 1, samples: int = 0) -> None:
        self.done += shards
        self.samples += samples
        rate = self.samples / max(1e-9, time.perf_counter() - self._t0)
        if self._bar is not None:
            self._bar.set_postfix_str(f"{self.samples} samples, {rate:.0f}/s", refresh=False)
            self._bar.update(shards)
        elif self.enabled and (time.perf_counter() - self._last > 5 or self.done == self.total):
            self._last = time.perf_counter()
            left = (self.total - self.done) * (time.perf_counter() - self._t0) / max(1, self.done)
            if self.unit == "shard":
                done = f"{self.done}/{self.total} shards, {self.samples} samples, " \
                    f"{rate:.0f} samples/s"
            else:
                rate = self.done / max(1e-9, time.perf_counter() - self._t0)
                done = f"{self.done}/{self.total} {self.unit}s, {rate:.1f}/s"
            print(f"{self.what}: {done}, ETA {left:.0f}s", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


class RaySession:
    """Ray for one run, started on first use (``ensure``): a run that finds everything already
    computed never starts it. It uses the Ray already initialised in this process, joins
    ``address`` (or ``RAY_ADDRESS``, as ``ray job submit`` sets it), or else starts a private
    local Ray, never joining a cluster that happens to run on the machine; ``close`` shuts a
    private Ray down, and ``curate.reaper`` makes sure none of its processes outlive the run
    even when the driver is killed."""

    def __init__(self, address: str | None = None, progress: bool | None = None) -> None:
        self.address = address or os.environ.get("RAY_ADDRESS") or None
        self._started = False
        self._reaper: Any = None
        self.info: dict[str, Any] = {}
        self.note = Notes(progress)

    def ensure(self) -> None:
        import ray

        from curate.plugins import ship_to_ray

        ship_to_ray()  # plugin stages travel to the workers by value
        if ray.is_initialized():
            return
        kwargs: dict[str, Any] = {
            "include_dashboard": False, "logging_level": logging.WARNING,
            "runtime_env": {"env_vars": {"NO_ALBUMENTATIONS_UPDATE": "1"}},
        }
        self.note(f"starting Ray: joining {self.address} ..." if self.address else
                  "starting Ray: a private local cluster on this machine ...")
        t0 = time.perf_counter()
        if not self.address and self._reaper is None:
            from curate.reaper import spawn

            self._reaper = spawn()  # before Ray starts: a kill during its start is covered
        try:
            if self.address:
                ctx = ray.init(address=self.address, **kwargs)
            else:
                os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a private, local cluster
                ctx = ray.init(address="local", **kwargs)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise CurateError(f"could not start or join Ray ({self.address or 'local'}): {exc}",
                              "check --address (e.g. ray://head:10001 or auto)") from exc
        self._started = True
        if self.note.enabled:
            res = ray.cluster_resources()
            gpus = f", {res['GPU']:g} GPUs" if res.get("GPU") else ""
            self.note(f"Ray ready in {time.perf_counter() - t0:.1f}s: {len(ray.nodes())} "
                      f"node(s), {res.get('CPU', 0):g} CPUs{gpus}")
        session_dir = str(getattr(ctx, "address_info", {}).get("session_dir") or "")
        self.info = {"address": self.address or "local", "private": not self.address,
                     "session_dir": session_dir}
        if self._reaper is not None and session_dir:
            from curate.reaper import announce

            announce(self._reaper, session_dir)

    def close(self) -> None:
        if self._started:
            import ray

            ray.shutdown()
            self._started = False
        if self._reaper is not None:  # it sweeps what the shutdown left, then exits
            self._reaper.stdin.close()
            self._reaper = None

    def __enter__(self) -> RaySession:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
