"""What every phase of a run shares: a Ray session started only when work needs it, progress
on screen, and a machine-readable event log."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from curate.errors import CurateError

log = logging.getLogger("curate")


class RunLog:
    """Appends one JSON object per event to ``run_log.jsonl`` (timestamps in seconds)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(path, "a", encoding="utf-8")
        self._t0 = time.time()
        self._broken = False

    def event(self, event: str, **fields: Any) -> None:
        record = {"ts": round(time.time(), 3), "event": event, **fields}
        try:
            self._f.write(json.dumps(record, default=str) + "\n")
            self._f.flush()
        except OSError as exc:  # e.g. a full disk: the run's own error says so, not the log
            if not self._broken:
                log.warning("could not write run_log.jsonl: %s", exc)
            self._broken = True

    def close(self) -> None:
        try:
            self._f.close()
        except OSError:  # the last flush hit a full disk
            pass


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

    def __init__(self, address: str | None = None) -> None:
        self.address = address or os.environ.get("RAY_ADDRESS") or None
        self._started = False
        self._reaper: Any = None
        self.info: dict[str, Any] = {}

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
        session_dir = str(getattr(ctx, "address_info", {}).get("session_dir") or "")
        self.info = {"address": self.address or "local", "private": not self.address,
                     "session_dir": session_dir}
        if not self.address and session_dir:
            from curate.reaper import spawn

            self._reaper = spawn(session_dir)

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
