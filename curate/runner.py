"""Running a pipeline: ingest → score (Ray, per shard) → select (DuckDB) → write → catalogue.

``run(pipeline, out)`` is the library entry point behind ``curate run``. Ray is started locally
for the run (and stopped after) unless an address is given or Ray is already initialised in the
process, in which case that cluster is used.

The run directory::

    pipeline.yaml        the pipeline as run
    run_log.jsonl        machine-readable events (one JSON object per line)
    download/            img2dataset output, when the input is a URL list
    signals/*.parquet    per input shard: one row per sample, every score (resume unit)
    shards.parquet       per input shard: status, counts, attempts, seconds, node
    manifest.parquet     one row per input sample: scores, kept, reason
    funnel.parquet       the selection funnel; stages.parquet: per-scorer counters
    output/*.tar         curated webdataset shards (+ sizes.json)
    stats.json           summary; catalog.duckdb: views over all of the above
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import yaml

from curate import __version__
from curate.audit.catalog import write_catalog
from curate.config import Pipeline, load_pipeline
from curate.errors import CurateError, ShardFailed
from curate.io.atomic import write_parquet, write_text
from curate.io.rundir import RunLock, disk_error, remove_leftovers
from curate.io.shards import ShardRef, list_shards
from curate.score.shard import (
    ScoredShard,
    ShardSummary,
    ShardWorker,
    completed_summary,
    scoring_fingerprint,
    shard_summaries_table,
    signals_path,
    write_scored,
)
from curate.select.selection import Selection, select
from curate.stages.base import Resources, StageCounters

log = logging.getLogger("curate")


@dataclass
class RunResult:
    run_dir: Path
    samples: int
    kept: int
    funnel: list[tuple[str, int]]
    shards: int
    shards_resumed: int
    output_shards: int
    seconds: float
    stages: dict[str, dict[str, float | int]] = field(default_factory=dict)
    rewrite: dict[str, Any] | None = None  # RewriteSummary.as_dict() when the pipeline rewrites
    output_dir: str = ""  # where the curated shards are: RUN/output or the pipeline's output.dir


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


@contextlib.contextmanager
def ray_session(address: str | None) -> Iterator[None]:
    """Use the Ray already initialised in this process, join ``address``, or start one."""
    import ray

    if ray.is_initialized():
        yield
        return
    kwargs: dict[str, Any] = {
        "include_dashboard": False, "logging_level": logging.WARNING,
        "runtime_env": {"env_vars": {"NO_ALBUMENTATIONS_UPDATE": "1"}},
    }
    try:
        if address:
            ray.init(address=address, **kwargs)
        else:
            os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a private, local cluster
            ray.init(**kwargs)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise CurateError(f"could not start or join Ray ({address or 'local'}): {exc}",
                          "check --address (e.g. ray://head:10001 or auto)") from exc
    try:
        yield
    finally:
        ray.shutdown()


def run(pipeline: Pipeline | str | Path, out: str | Path, *, address: str | None = None,
        progress: bool | None = None) -> RunResult:
    """Run ``pipeline`` into the run directory ``out``; resumes whatever an earlier run of the
    same pipeline into ``out`` finished. Raises ``ShardFailed`` when shards still fail after
    their retries (the finished ones are kept for the next attempt)."""
    p = pipeline if isinstance(pipeline, Pipeline) else load_pipeline(pipeline)
    # Shard inputs are listed before anything is created or started: a wrong path costs nothing.
    listed = list_shards(p.input.shards) if p.input.shards is not None else None
    run_dir = Path(out).absolute()
    run_dir.mkdir(parents=True, exist_ok=True)
    with RunLock(run_dir):
        return _run_locked(p, listed, run_dir, address, progress)


def _run_locked(p: Pipeline, listed: list[ShardRef] | None, run_dir: Path,
                address: str | None, progress: bool | None) -> RunResult:
    t0 = time.perf_counter()
    leftovers = remove_leftovers(run_dir)
    rlog = RunLog(run_dir / "run_log.jsonl")
    rlog.event("run_start", pipeline=p.name, source=p.source, curate=__version__,
               pid=os.getpid(), leftovers_removed=leftovers)
    doing = f"the run directory {run_dir}"
    try:
        write_text(yaml.safe_dump(p.raw, sort_keys=False), run_dir / "pipeline.yaml")
        with ray_session(address or p.run.address):
            if p.rewrite is not None:
                from curate.rewrite.stage import preflight

                preflight(p.rewrite)
            refs = listed if listed is not None else _download(p, run_dir, rlog)
            rlog.event("shards_listed", count=len(refs))
            doing = f"shard signals in {run_dir / 'signals'}"
            summaries, failed = _score_all(p, refs, run_dir, rlog, progress)
            write_parquet(shard_summaries_table(summaries, failed), run_dir / "shards.parquet")
            if failed:
                raise _shards_failed(failed, len(refs), p.run.max_retries)
            stages = _sum_stages(summaries)
            write_parquet(_stages_table(stages), run_dir / "stages.parquet")
            t_sel = time.perf_counter()
            doing = f"the manifest in {run_dir}"
            error_stages = ["download", "read"] + [s.label for s in p.scorer_stages()]
            selection = select(p, [signals_path(run_dir, r.shard_id) for r in refs], run_dir,
                               error_stages)
            write_parquet(_funnel_table(selection), run_dir / "funnel.parquet")
            rlog.event("selected", samples=selection.samples, kept=selection.kept,
                       seconds=round(time.perf_counter() - t_sel, 3), steps=selection.seconds)
            if p.rewrite is not None:
                doing = f"caption rewrites in {run_dir}"
                rewrite = _rewrite(p, run_dir, rlog, progress)
            else:
                rewrite = None
                (run_dir / "rewrites.parquet").unlink(missing_ok=True)  # from an earlier run
            from curate.write.output import resolve_dir

            out_dir = resolve_dir(p.output.dir if p.output.dir is not None else run_dir / "output")
            doing = f"the output shards in {out_dir}"
            n_out = _write_output(p, refs, run_dir, rlog, progress) if p.output.write_shards \
                else 0
            doing = f"the catalogue in {run_dir}"
            write_catalog(run_dir)
            result = RunResult(
                run_dir=run_dir, samples=selection.samples, kept=selection.kept,
                funnel=[(f.reason, f.dropped) for f in selection.funnel], shards=len(refs),
                shards_resumed=sum(s.resumed for s in summaries), output_shards=n_out,
                seconds=round(time.perf_counter() - t0, 3), stages=stages, rewrite=rewrite,
                output_dir=out_dir)
            stats = {"pipeline": p.name, "samples": result.samples, "kept": result.kept,
                     "funnel": [{"reason": r, "dropped": n} for r, n in result.funnel],
                     "shards": result.shards, "shards_resumed": result.shards_resumed,
                     "output_shards": n_out, "output_dir": out_dir, "seconds": result.seconds,
                     "stages": stages}
            if rewrite is not None:
                stats["rewrite"] = rewrite
            write_text(json.dumps(stats, indent=1), run_dir / "stats.json")
    except BaseException as exc:
        full = disk_error(exc, doing)
        rlog.event("run_failed", error=f"{type(exc).__name__}: {exc}".splitlines()[0],
                   disk_full=full is not None)
        rlog.close()
        if full is not None:
            raise full from exc
        raise
    rlog.event("run_end", samples=result.samples, kept=result.kept, seconds=result.seconds)
    rlog.close()
    return result


def _shards_failed(failed: dict[str, tuple[ShardRef, int, str]], total: int,
                   max_retries: int) -> ShardFailed:
    """The error for shards that failed every attempt: how many, then each with its error."""
    lines = [f"{shard}: {error}" for shard, (_, _, error) in sorted(failed.items())]
    shown = "; ".join(lines[:5]) + (f"; and {len(lines) - 5} more" if len(lines) > 5 else "")
    return ShardFailed(
        f"{len(failed)} of {total} shards failed after {max_retries + 1} attempts: {shown}",
        "the other shards are scored and kept; fix the cause and run the same command again "
        "(shards.parquet lists every failed shard with its error, run_log.jsonl every attempt)")


def _rewrite(p: Pipeline, run_dir: Path, rlog: RunLog, progress: bool | None) -> dict[str, Any]:
    from curate.rewrite.stage import rewrite_kept

    assert p.rewrite is not None
    summary = rewrite_kept(p.rewrite, run_dir, max_retries=p.run.max_retries, event=rlog.event,
                           progress=lambda n: Progress(n, "rewriting", progress, "caption"))
    return summary.as_dict()


def _download(p: Pipeline, run_dir: Path, rlog: RunLog) -> list[ShardRef]:
    from curate.ingest.download import download

    return download(p.input, run_dir / "download", rlog)


def _worker_resources(p: Pipeline) -> Resources:
    scorers = p.scorer_stages()
    return Resources(cpus=max((s.resources.cpus for s in scorers), default=1.0),
                     gpus=max((s.resources.gpus for s in scorers), default=0.0))


def _score_all(p: Pipeline, refs: list[ShardRef], run_dir: Path, rlog: RunLog,
               progress: bool | None,
               ) -> tuple[list[ShardSummary], dict[str, tuple[ShardRef, int, str]]]:
    """Score every shard not already done; returns the summaries of the scored shards (pool
    order) and the shards that failed every attempt (id → (ref, attempts, last error))."""
    import ray
    from ray.exceptions import RayActorError, RayTaskError

    scorers = p.scorer_stages()
    fingerprint = scoring_fingerprint(scorers, p.input.max_member_bytes)
    summaries: dict[str, ShardSummary] = {}
    todo: deque[ShardRef] = deque()
    for ref in refs:
        done = completed_summary(signals_path(run_dir, ref.shard_id), fingerprint)
        if done is not None:
            summaries[ref.shard_id] = done
        else:
            todo.append(ref)
    rlog.event("scoring_start", shards=len(refs), resumed=len(summaries), todo=len(todo),
               fingerprint=fingerprint)
    if not todo:
        return [summaries[r.shard_id] for r in refs], {}

    res = _worker_resources(p)
    cluster = ray.cluster_resources()
    # A worker asking for more CPUs than any node has could never be placed: cap it.
    node_cpus = max((n["Resources"].get("CPU", 0.0) for n in ray.nodes() if n.get("Alive")),
                    default=1.0)
    if res.cpus > node_cpus > 0:
        log.warning("scorers ask for %.1f CPUs per worker, the largest node has %.1f: using "
                    "%.1f", res.cpus, node_cpus, node_cpus)
        res = Resources(cpus=node_cpus, gpus=res.gpus)
    use_gpu = res.gpus > 0 and cluster.get("GPU", 0) > 0
    if res.gpus > 0 and not use_gpu:
        log.warning("no GPU in the Ray cluster: scoring on CPU")
    capacity = int(cluster.get("GPU", 0) // res.gpus) if use_gpu else int(
        cluster.get("CPU", 1) // max(res.cpus, 0.01))
    n_workers = max(1, min(p.run.workers or capacity, len(todo)))
    actor_cls = ray.remote(ShardWorker).options(  # type: ignore[attr-defined]
        num_cpus=res.cpus, num_gpus=res.gpus if use_gpu else 0,
        scheduling_strategy="SPREAD", max_restarts=0)

    def new_worker() -> Any:
        return actor_cls.remote(scorers, fingerprint, p.run.batch_size,
                                "cuda" if use_gpu else "cpu", p.input.max_member_bytes)

    workers = [new_worker() for _ in range(n_workers)]
    try:
        ray.get([w.setup.remote() for w in workers])
    except (RayTaskError, RayActorError) as exc:
        cause = getattr(exc, "cause", None) or exc
        for w in workers:
            ray.kill(w)
        if isinstance(cause, CurateError):
            raise cause from None
        first = f"{type(cause).__name__}: {cause}".splitlines()[0]
        raise CurateError(f"a scoring worker failed to start: {first}",
                          "see the Ray worker logs (/tmp/ray/session_latest/logs) for the "
                          "traceback") from exc
    rlog.event("workers_started", workers=n_workers, cpus=res.cpus,
               gpus=res.gpus if use_gpu else 0)

    bar = Progress(len(refs), "scoring", progress)
    bar.update(shards=len(summaries), samples=0)
    attempts: dict[str, int] = {}
    failed: dict[str, tuple[ShardRef, int, str]] = {}
    inflight: dict[Any, tuple[Any, ShardRef]] = {}
    idle = list(workers)
    live = list(workers)
    try:
        while todo or inflight:
            while idle and todo:
                ref = todo.popleft()
                worker = idle.pop()
                attempts[ref.shard_id] = attempts.get(ref.shard_id, 0) + 1
                inflight[worker.score.remote(ref)] = (worker, ref)
            ready, _ = ray.wait(list(inflight), num_returns=1, timeout=1.0)
            for fut in ready:
                worker, ref = inflight.pop(fut)
                try:
                    scored: ScoredShard = ray.get(fut)
                except RayActorError as exc:  # the worker died (killed, OOM, crash): replace it
                    ray.kill(worker)
                    live.remove(worker)
                    worker = new_worker()
                    live.append(worker)
                    error = f"worker died: {exc}".splitlines()[0]
                except RayTaskError as exc:
                    error = _task_error(exc, ref)
                else:
                    # The driver writes (signals last: it marks the shard done); a disk error
                    # here stops the run, a rerun redoes only this shard.
                    write_scored(scored, signals_path(run_dir, ref.shard_id))
                    summary = scored.summary
                    summary.attempts = attempts[ref.shard_id]
                    summaries[ref.shard_id] = summary
                    rlog.event("shard_done", shard=ref.shard_id, samples=summary.samples,
                               errors=summary.errors, status=summary.status,
                               seconds=summary.seconds, node=summary.node,
                               attempts=summary.attempts)
                    if summary.read_error:
                        log.warning("shard %s is truncated: kept the %d samples before the "
                                    "break (%s)", ref.shard_id, summary.samples,
                                    summary.read_error)
                    bar.update(samples=summary.samples)
                    idle.append(worker)
                    continue
                idle.append(worker)
                if attempts[ref.shard_id] <= p.run.max_retries:
                    rlog.event("shard_retry", shard=ref.shard_id, attempt=attempts[ref.shard_id],
                               error=error)
                    todo.append(ref)
                else:
                    failed[ref.shard_id] = (ref, attempts[ref.shard_id], error)
                    rlog.event("shard_failed", shard=ref.shard_id, attempts=attempts[ref.shard_id],
                               error=error)
                    log.warning("shard %s failed after %d attempts: %s", ref.shard_id,
                                attempts[ref.shard_id], error)
                    bar.update(samples=0)
    finally:
        bar.close()
        for w in live:
            with contextlib.suppress(Exception):
                ray.kill(w)
    return [summaries[r.shard_id] for r in refs if r.shard_id in summaries], failed


def _task_error(exc: Exception, ref: ShardRef) -> str:
    """One line for a shard whose scoring raised; a vanished input says so plainly."""
    cause = getattr(exc, "cause", None) or exc
    if isinstance(cause, FileNotFoundError):
        return f"input shard {ref.url} is gone (it was there when the shards were listed)"
    return f"{type(cause).__name__}: {cause}".splitlines()[0]


def _sum_stages(summaries: list[ShardSummary]) -> dict[str, dict[str, float | int]]:
    total: dict[str, StageCounters] = {}
    for s in summaries:
        for name, c in s.stages.items():
            total.setdefault(name, StageCounters()).add(StageCounters(**c))  # type: ignore[arg-type]
    return {k: v.as_dict() for k, v in total.items()}


def _stages_table(stages: dict[str, dict[str, float | int]]) -> pa.Table:
    return pa.Table.from_pylist(
        [{"stage": k, **v} for k, v in stages.items()],
        schema=pa.schema({"stage": pa.string(), "samples": pa.int64(), "errors": pa.int64(),
                          "skipped": pa.int64(), "seconds": pa.float64()}))


def _funnel_table(sel: Selection) -> pa.Table:
    rows, remaining = [], sel.samples
    for i, f in enumerate(sel.funnel):
        remaining -= f.dropped
        rows.append({"step": i + 1, "stage": f.stage, "reason": f.reason, "dropped": f.dropped,
                     "remaining": remaining})
    return pa.Table.from_pylist(rows, schema=pa.schema(
        {"step": pa.int32(), "stage": pa.string(), "reason": pa.string(),
         "dropped": pa.int64(), "remaining": pa.int64()}))


def _write_output(p: Pipeline, refs: list[ShardRef], run_dir: Path, rlog: RunLog,
                  progress: bool | None) -> int:
    """Write the output shards into ``output.dir`` (default RUN/output) as Ray tasks.

    A plain local path may exist only on the driver's machine, so its tasks are pinned to the
    driver's node (one per CPU there; one at a time when the driver's node has no CPU, e.g. a
    head started with ``--num-cpus 0``). ``file://`` (a mount at the same path on every node)
    and object stores are written from every node (SPREAD). ``memory://`` lives in this
    process, and under Ray Client (``ray://``) this process is on no node of the cluster, so
    in those cases the driver writes the shards itself."""
    import ray
    from ray.util.client import ray as ray_client
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from curate.write import output

    out = output.resolve_dir(p.output.dir if p.output.dir is not None else run_dir / "output")
    where = output.placement(out)
    if where == "driver_node" and ray_client.is_connected():
        where = "driver_process"  # Ray Client (ray://): this process is on no cluster node
    score_cols = [c for s in p.scorer_stages() for c in s.outputs() if c not in s.sidecars()]
    score_cols += list(p.selector_columns())
    shards = output.plan(run_dir / "manifest.parquet", score_cols, p.output.samples_per_shard,
                         p.output.split_by)
    todo = output.stale(out, shards)
    driver = ray.get_runtime_context().get_node_id()
    rlog.event("writing_start", shards=len(shards), todo=len(todo), dir=out, placement=where,
               driver_node=driver)
    bar = Progress(len(shards), "writing", progress)
    bar.update(shards=len(shards) - len(todo))
    refs_by_id = {r.shard_id: r for r in refs}
    if where == "driver_process":
        for s in todo:
            n = output.write_shard(s, refs_by_id, out)
            rlog.event("output_shard_done", shard=s.name, samples=n, node=driver)
            bar.update(samples=n)
    elif todo:
        def write(shard: output.OutputShard, by_id: dict[str, ShardRef], dest: str,
                  ) -> tuple[int, str]:
            return output.write_shard(shard, by_id, dest), \
                ray.get_runtime_context().get_node_id()

        if where == "driver_node":
            cpus = next((n["Resources"].get("CPU", 0.0) for n in ray.nodes()
                         if n["NodeID"] == driver), 0.0)
            opts: dict[str, Any] = {
                "num_cpus": 1 if cpus >= 1 else 0,
                "scheduling_strategy": NodeAffinitySchedulingStrategy(driver, soft=False)}
            window = max(1, int(cpus))
        else:
            opts = {"num_cpus": 1, "scheduling_strategy": "SPREAD"}
            window = len(todo)
        task = ray.remote(write).options(max_retries=p.run.max_retries, **opts)
        shared = ray.put(refs_by_id)
        queue = deque(todo)
        pending: dict[Any, output.OutputShard] = {}
        first_error: BaseException | None = None
        while (queue and first_error is None) or pending:
            while queue and first_error is None and len(pending) < window:
                s = queue.popleft()
                pending[task.remote(s, shared, out)] = s
            ready, _ = ray.wait(list(pending), num_returns=1)
            for fut in ready:
                s = pending.pop(fut)
                try:
                    n, node = ray.get(fut)
                except Exception as exc:  # noqa: BLE001 - re-raised once the others settle
                    rlog.event("output_shard_failed", shard=s.name,
                               error=f"{type(exc).__name__}: {exc}".splitlines()[0])
                    first_error = first_error or exc
                    continue
                rlog.event("output_shard_done", shard=s.name, samples=n, node=node)
                bar.update(samples=n)
        if first_error is not None:
            # Raised only now: the tasks still writing when it failed have finished (each one
            # complete, or its temporary file removed), so nothing is left half-written.
            bar.close()
            raise first_error
    bar.close()
    output.finish(out, shards)
    return len(shards)
