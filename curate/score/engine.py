"""Scoring a pool into a store: identify the shards, plan, run what is missing on Ray, commit.

``score_pool`` is the scoring phase of ``curate run`` and all of ``curate score``:

1. **Identify** every input shard (``plan.identify``): shards whose stamp changed are hashed
   again in parallel Ray tasks; a shard whose bytes changed is reported (``shard_changed``) and
   scored anew, never reused.
2. **Plan** (``plan.plan``): per shard, the reader and the scorers that must run. A scorer whose
   file for the shard's bytes exists at its current version is reused; adding a scorer computes
   only that scorer, and changing one's parameters computes it and the scorers that read it.
3. **Run** the shards that have work on a pool of ``ShardWorker`` actors holding only the
   scorers that compute somewhere (a model that is never needed is never loaded). A worker
   that sees the store (a shared store: ``file://`` or an object store; or a plain path when
   the worker is on the driver's node) reads its stored inputs and commits its own results,
   and the driver receives a summary. Otherwise the driver sends the stored inputs with the
   task and writes the results it gets back. A worker that dies is replaced; a shard that
   fails is retried ``max_retries`` times and then reported, and the other shards finish.
4. **Record** the pool (``pool.parquet``: every shard's identity and last scoring) and each
   scorer's counts of shards computed and reused.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow.parquet as pq

from curate.errors import CurateError, ShardFailed
from curate.io.rundir import disk_error
from curate.io.shards import MAX_MEMBER_BYTES, ShardRef
from curate.runtime import Progress, RaySession, RunLog
from curate.score.plan import (
    ScorerVersion,
    ShardPlan,
    identify,
    plan,
    reader_fingerprint,
    scorer_versions,
)
from curate.score.shard import ShardResult, ShardTask, commit, compute_shard, load_inputs
from curate.stages.base import Resources, Scorer, StageCounters
from curate.store.identity import shard_digest
from curate.store.store import PoolShard, Store, Version
from curate.store.verify import Damage

log = logging.getLogger("curate")


@dataclass
class ScorerCounts:
    """What one scorer cost in one scoring pass."""

    computed: int = 0  # shards
    reused: int = 0
    samples: int = 0  # samples it scored (computed shards only)
    errors: int = 0
    seconds: float = 0.0


@dataclass
class ScoreResult:
    store: str
    shards: int
    samples: int
    reader: ScorerCounts  # the shard reader: shards read (new or changed) / reused
    scorers: dict[str, ScorerCounts]  # label -> counts, pipeline order
    versions: list[Version]
    pool: list[PoolShard]  # pool order
    changed: list[str] = field(default_factory=list)  # shards whose bytes changed
    damaged: list[Damage] = field(default_factory=list)  # stored files found wrong: recomputed
    computed: list[str] = field(default_factory=list)  # shards this pass did work on
    failed: dict[str, tuple[ShardRef, int, str]] = field(default_factory=dict)
    seconds: float = 0.0
    workers: int = 0
    driver_bytes_in: int = 0  # scored data the driver received from workers (and wrote)
    driver_bytes_out: int = 0  # stored inputs the driver sent to workers that cannot read them

    def table(self) -> list[tuple[str, int, int]]:
        """(scorer, shards computed, shards reused), the reader first."""
        rows = [("(read)", self.reader.computed, self.reader.reused)]
        rows += [(k, v.computed, v.reused) for k, v in self.scorers.items()]
        return rows


class ShardWorker:
    """A Ray actor holding set-up scorers; scores shards on request (see the module docs)."""

    def __init__(self, versions: list[ScorerVersion], setup_labels: list[str], reader_fp: str,
                 store: str, batch_size: int, max_member_bytes: int, device: str,
                 driver_node: str | None) -> None:
        self.versions = versions
        self.setup_labels = setup_labels
        self.reader_fp = reader_fp
        self.store_location = store
        self.batch_size = batch_size
        self.max_member_bytes = max_member_bytes
        self.device = device
        self.driver_node = driver_node
        self.sees_store = False
        self._store: Store | None = None
        self._ready = False

    def setup(self) -> tuple[str, bool]:
        """Load the scorers' models; returns (this worker's Ray node, whether it commits its
        own results to the store)."""
        for v in self.versions:
            if v.label in self.setup_labels:
                v.scorer.device = self.device
                v.scorer.setup()
        self._ready = True
        node = self.node()
        store = Store(self.store_location)
        self.sees_store = store.shared or (node == self.driver_node)
        self._store = store if self.sees_store else None
        return node, self.sees_store

    def node(self) -> str:
        try:
            import ray

            return str(ray.get_runtime_context().get_node_id())
        except Exception:  # noqa: BLE001 - outside Ray
            return "local"

    def score(self, task: ShardTask) -> ShardResult:
        if not self._ready:
            self.setup()
        inputs = task.inputs
        if inputs is None:
            assert self._store is not None
            inputs = load_inputs(self._store, task, self.versions, self.reader_fp)
        result = compute_shard(task, self.versions, self.reader_fp, inputs, self.batch_size,
                               self.max_member_bytes, node=self.node())
        if self._store is not None:
            commit(self._store, result, self.reader_fp)
            return result.summary()
        return result


# Seconds between warnings while scoring workers have not started.
SETUP_WARN_S = 60.0


def _placeable(nodes: list[dict[str, Any]], res: Resources, use_gpu: bool) -> int:
    """How many workers asking for ``res`` the cluster's live nodes can hold at once (each
    worker on one node); at least 1."""
    n = 0
    for node in nodes:
        if not node.get("Alive"):
            continue
        have = node.get("Resources", {})
        fit = int(have.get("CPU", 0.0) // res.cpus) if res.cpus > 0 else 10**6
        if use_gpu:
            fit = min(fit, int(have.get("GPU", 0.0) // res.gpus))
        n += fit
    return max(1, n)


def _asks(res: Resources, use_gpu: bool) -> str:
    return f"{res.cpus:g} CPU" + (f" and {res.gpus:g} GPU" if use_gpu else "")


def _resources(scorers: Sequence[Scorer]) -> Resources:
    return Resources(cpus=max((s.resources.cpus for s in scorers), default=1.0),
                     gpus=max((s.resources.gpus for s in scorers), default=0.0))


def _hash_many(session: RaySession, rlog: RunLog, progress: bool | None,
               ) -> Callable[[list[ShardRef]], dict[str, str]]:
    """Hash shards whose stamp changed: here for one or two, else in parallel Ray tasks (with
    a progress bar: a copied pool is read once in full)."""

    def run(refs: list[ShardRef]) -> dict[str, str]:
        rlog.event("hashing", shards=len(refs))
        if len(refs) <= 2:
            return {r.shard_id: shard_digest(r.url, r.failures) for r in refs}
        session.ensure()
        import ray

        task = ray.remote(num_cpus=1)(shard_digest)
        pending = {task.remote(r.url, r.failures): r for r in refs}
        out: dict[str, str] = {}
        bar = Progress(len(refs), "hashing changed shards", progress)
        try:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                for fut in ready:
                    out[pending.pop(fut).shard_id] = ray.get(fut)
                    bar.update()
        finally:
            bar.close()
        return out

    return run


def score_pool(scorers: Sequence[Scorer], refs: Sequence[ShardRef], store: Store, *,
               session: RaySession, rlog: RunLog, progress: bool | None = None,
               batch_size: int = 256, max_member_bytes: int = MAX_MEMBER_BYTES,
               max_retries: int = 2, workers: int | None = None, verify: bool = False,
               input_section: dict[str, Any] | None = None, measure_transfer: bool = False,
               local: bool = False, read_only: bool = False) -> ScoreResult:
    """Score ``refs`` with ``scorers`` into ``store`` (see the module docs). Raises
    ``ShardFailed`` when shards still fail after their retries (the rest are committed).
    ``local`` scores in this process, one shard at a time, without Ray (small pools, tests,
    debugging)."""
    t0 = time.perf_counter()
    reader = reader_fingerprint(max_member_bytes)
    versions = scorer_versions(scorers, reader)
    records = {r.shard: r for r in store.pool(damaged_ok=True)}
    meta_versions = [v.record(reader) for v in versions]
    if read_only:  # nothing may be written: every score must be stored already
        meta = store.meta()
        unknown = [v.label for v in meta_versions if meta.version(v.label, v.version) is None]
        if unknown:
            raise _read_only_error(store, f"it has no {', '.join(unknown)} with these "
                                   "parameters")
    else:
        store.register(meta_versions, reader, input_section)
    identities = identify(store, refs, reader, verify, _hash_many(session, rlog, progress),
                          records)
    changed = [sid for sid, ident in identities.items() if ident.changed_from is not None]
    for sid in changed:
        ident = identities[sid]
        log.warning("input shard %s changed since it was scored (content %s… is now %s…): "
                    "scoring it anew", sid, (ident.changed_from or "")[:12],
                    (ident.digest or "")[:12])
        rlog.event("shard_changed", shard=sid, was=ident.changed_from, now=ident.digest)
    damaged: list[Damage] = []
    plans = plan(store, refs, versions, reader, identities, records, damaged)
    for d in damaged:
        log.warning("%s: recomputed", d.line())
        rlog.event("store_file_damaged", file=d.name, shard=d.shard, problem=d.problem,
                   scorer=d.label)
    counts = {v.label: ScorerCounts() for v in versions}
    reader_counts = ScorerCounts()
    for p in plans:
        for v in versions:
            if v.label in p.compute:
                counts[v.label].computed += 1
            else:
                counts[v.label].reused += 1
        if p.read_base:
            reader_counts.computed += 1
        else:
            reader_counts.reused += 1
    todo = [p for p in plans if p.todo]
    if read_only and todo:
        raise _read_only_error(store, f"{len(todo)} of {len(plans)} shards need scoring "
                               f"(e.g. {todo[0].ref.shard_id}: "
                               f"{', '.join(todo[0].compute) or 'its reader'})")
    rlog.event("scoring_start", store=store.location, shards=len(refs), todo=len(todo),
               reader=reader, scorers={k: {"version": v.version, "computed": counts[k].computed,
                                           "reused": counts[k].reused}
                                       for k, v in ((v.label, v) for v in versions)},
               changed=changed)
    results: dict[str, ShardResult] = {}
    attempts: dict[str, int] = {}
    failed: dict[str, tuple[ShardRef, int, str]] = {}
    transfer = [0, 0]
    n_workers = 0
    for v in versions:  # what no worker could set up fails here, in seconds
        if any(v.label in p.compute for p in todo):
            v.scorer.check()
    if todo and local:
        _run_here(todo, versions, reader, store, rlog, batch_size, max_member_bytes,
                  max_retries, results, attempts, failed)
        n_workers = 1
    elif todo:
        n_workers = _run(todo, versions, reader, store, session, rlog, progress, batch_size,
                         max_member_bytes, max_retries, workers, results, attempts, failed,
                         transfer, measure_transfer, len(plans))
    for r in results.values():
        for label, c in r.stage_counters().items():
            sc = counts[label]
            sc.samples += int(c["samples"])
            sc.errors += int(c["errors"])
            sc.seconds += float(c["seconds"])
    pool = _pool_records(plans, records, results, attempts, failed, store, reader)
    if not read_only:
        store.write_pool(pool)
    result = ScoreResult(
        store=store.location, shards=len(refs),
        samples=sum(s.samples or 0 for s in pool if s.status != "failed"),
        reader=reader_counts, scorers=counts, versions=meta_versions, pool=pool,
        changed=changed, damaged=damaged, computed=sorted(results), failed=failed,
        seconds=round(time.perf_counter() - t0, 3),
        workers=n_workers, driver_bytes_in=transfer[0], driver_bytes_out=transfer[1])
    rlog.event("scoring_end", shards=len(refs), computed=len(results), failed=sorted(failed),
               seconds=result.seconds, driver_bytes_in=transfer[0],
               driver_bytes_out=transfer[1])
    if failed:
        raise shards_failed(failed, len(refs), max_retries)
    return result


def _read_only_error(store: Store, why: str) -> CurateError:
    return CurateError(f"the store {store.location} is read-only, and {why}",
                       "score into a writable copy of it (cp -r), or ask its owner to score "
                       "this pipeline; a pass with nothing to compute works on a read-only "
                       "store")


def _run_here(todo: list[ShardPlan], versions: list[ScorerVersion], reader: str, store: Store,
              rlog: RunLog, batch_size: int, max_member_bytes: int, max_retries: int,
              results: dict[str, ShardResult], attempts: dict[str, int],
              failed: dict[str, tuple[ShardRef, int, str]]) -> None:
    """``_run`` in this process, one shard at a time."""
    needed = {label for p in todo for label in p.compute}
    for v in versions:
        if v.label in needed:
            v.scorer.device = "cpu"
            v.scorer.setup()
    for p in todo:
        sid = p.ref.shard_id
        task = ShardTask(p.ref, p.digest, p.identity.stamp, p.read_base, p.compute)
        for attempt in range(1, max_retries + 2):
            attempts[sid] = attempt
            try:
                inputs = load_inputs(store, task, versions, reader)
                result = compute_shard(task, versions, reader, inputs, batch_size,
                                       max_member_bytes, node="local")
            except Exception as exc:
                full = disk_error(exc, f"the store {store.location}")
                if full is not None:
                    raise full from exc
                error = _task_error(exc, p.ref)
                if attempt <= max_retries:
                    rlog.event("shard_retry", shard=sid, attempt=attempt, error=error)
                    continue
                failed[sid] = (p.ref, attempt, error)
                rlog.event("shard_failed", shard=sid, attempts=attempt, error=error)
                log.warning("shard %s failed after %d attempts: %s", sid, attempt, error)
                break
            commit(store, result, reader)
            results[sid] = result
            rlog.event("shard_done", shard=sid, samples=result.samples, computed=p.compute,
                       read=p.read_base, seconds=result.seconds, node="local",
                       attempts=attempt, committed_by="driver")
            _warn_read(sid, result)
            break


def _run(todo: list[ShardPlan], versions: list[ScorerVersion], reader: str, store: Store,
         session: RaySession, rlog: RunLog, progress: bool | None, batch_size: int,
         max_member_bytes: int, max_retries: int, workers: int | None,
         results: dict[str, ShardResult], attempts: dict[str, int],
         failed: dict[str, tuple[ShardRef, int, str]], transfer: list[int],
         measure: bool, total: int) -> int:
    """Run the shards of ``todo`` on Ray workers; fills ``results``, ``attempts``, ``failed``.
    Returns the number of workers."""
    session.ensure()
    import ray
    from ray.exceptions import RayActorError, RayTaskError

    if session.info:
        rlog.event("ray", **session.info)

    needed = [v for v in versions if any(v.label in p.compute for p in todo)]
    res = _resources([v.scorer for v in needed])
    cluster = ray.cluster_resources()
    node_cpus = max((n["Resources"].get("CPU", 0.0) for n in ray.nodes() if n.get("Alive")),
                    default=1.0)
    if res.cpus > node_cpus > 0:
        log.warning("scorers ask for %.1f CPUs per worker, the largest node has %.1f: using "
                    "%.1f", res.cpus, node_cpus, node_cpus)
        res = Resources(cpus=node_cpus, gpus=res.gpus)
    use_gpu = res.gpus > 0 and cluster.get("GPU", 0) > 0
    if res.gpus > 0 and not use_gpu:
        log.warning("no GPU in the Ray cluster: scoring on CPU")
    capacity = _placeable(ray.nodes(), res, use_gpu)
    if workers and workers > capacity:
        log.warning("--workers %d: the Ray cluster can place only %d scoring worker%s of %s "
                    "each; using %d", workers, capacity, "" if capacity == 1 else "s",
                    _asks(res, use_gpu), capacity)
        rlog.event("workers_capped", asked=workers, placeable=capacity)
        workers = capacity
    n_workers = max(1, min(workers or capacity, len(todo)))
    driver = ray.get_runtime_context().get_node_id()
    actor_cls = ray.remote(ShardWorker).options(  # type: ignore[attr-defined]
        num_cpus=res.cpus, num_gpus=res.gpus if use_gpu else 0,
        scheduling_strategy="SPREAD", max_restarts=0)
    setup_labels = [v.label for v in needed]

    def new_worker() -> Any:
        return actor_cls.remote(versions, setup_labels, reader, store.location, batch_size,
                                max_member_bytes, "cuda" if use_gpu else "cpu", driver)

    pool = [new_worker() for _ in range(n_workers)]
    sees: dict[Any, bool] = {}
    try:
        setups = {w.setup.remote(): w for w in pool}
        waited = 0.0
        while setups:
            ready, _ = ray.wait(list(setups), num_returns=len(setups), timeout=SETUP_WARN_S)
            for fut in ready:
                sees[setups.pop(fut)] = ray.get(fut)[1]
            if setups:
                waited += SETUP_WARN_S
                log.warning("%d of %d scoring workers not started after %.0f s: setting up "
                            "(loading models) or waiting for the cluster to place them "
                            "(each asks for %s; `ray status` shows what is free)",
                            len(setups), len(pool), waited, _asks(res, use_gpu))
    except (RayTaskError, RayActorError) as exc:
        cause = getattr(exc, "cause", None) or exc
        for w in pool:
            ray.kill(w)
        if isinstance(cause, CurateError):
            raise cause from None
        first = f"{type(cause).__name__}: {cause}".splitlines()[0]
        raise CurateError(f"a scoring worker failed to start: {first}",
                          "see the Ray worker logs (/tmp/ray/session_latest/logs) for the "
                          "traceback") from exc
    rlog.event("workers_started", workers=n_workers, cpus=res.cpus,
               gpus=res.gpus if use_gpu else 0, scorers=setup_labels,
               commit_on_workers=sum(sees.values()))

    bar = Progress(total, "scoring", progress)
    bar.update(shards=total - len(todo), samples=0)
    queue: deque[ShardPlan] = deque(todo)
    inflight: dict[Any, tuple[Any, ShardPlan]] = {}
    idle = list(pool)
    live = list(pool)
    try:
        while queue or inflight:
            while idle and queue:
                p = queue.popleft()
                worker = idle.pop()
                attempts[p.ref.shard_id] = attempts.get(p.ref.shard_id, 0) + 1
                task = ShardTask(p.ref, p.digest, p.identity.stamp, p.read_base, p.compute)
                if not sees[worker]:  # the driver reads (and sends) what the task needs
                    task.inputs = load_inputs(store, task, versions, reader)
                    transfer[1] += task.inputs.nbytes()
                inflight[worker.score.remote(task)] = (worker, p)
            ready, _ = ray.wait(list(inflight), num_returns=1, timeout=1.0)
            for fut in ready:
                worker, p = inflight.pop(fut)
                sid = p.ref.shard_id
                try:
                    result: ShardResult = ray.get(fut)
                except RayActorError as exc:  # the worker died (killed, OOM, crash): replace it
                    ray.kill(worker)
                    live.remove(worker)
                    sees.pop(worker, None)
                    worker = new_worker()
                    _, sees[worker] = ray.get(worker.setup.remote())
                    live.append(worker)
                    error = f"worker died: {exc}".splitlines()[0]
                except RayTaskError as exc:
                    full = disk_error(exc, f"the store {store.location}")
                    if full is not None:  # retrying cannot help: stop, a rerun resumes
                        raise full from exc
                    error = _task_error(exc, p.ref)
                else:
                    if measure:
                        import ray.cloudpickle as cp

                        transfer[0] += len(cp.dumps(result))
                    elif not result.committed:
                        transfer[0] += result.nbytes()
                    if not result.committed:
                        # The driver writes; a disk error here stops the run, a rerun redoes
                        # only this shard.
                        commit(store, result, reader)
                    results[sid] = result
                    rlog.event("shard_done", shard=sid, samples=result.samples,
                               computed=p.compute, read=p.read_base, seconds=result.seconds,
                               node=result.node, attempts=attempts[sid],
                               committed_by="worker" if result.committed else "driver")
                    _warn_read(sid, result)
                    bar.update(samples=result.samples)
                    idle.append(worker)
                    continue
                idle.append(worker)
                if attempts[sid] <= max_retries:
                    rlog.event("shard_retry", shard=sid, attempt=attempts[sid], error=error)
                    queue.append(p)
                else:
                    failed[sid] = (p.ref, attempts[sid], error)
                    rlog.event("shard_failed", shard=sid, attempts=attempts[sid], error=error)
                    log.warning("shard %s failed after %d attempts: %s", sid, attempts[sid],
                                error)
                    bar.update(samples=0)
    finally:
        bar.close()
        for w in live:
            with contextlib.suppress(Exception):
                ray.kill(w)
    return n_workers


def read_status(read: dict[str, Any]) -> tuple[str, str | None]:
    """A shard's status from its read report: ``truncated`` (it ends early), ``damaged`` (the
    reader skipped data to resynchronise), else ``done``; and the message."""
    truncated, damaged = read.get("truncated"), read.get("damaged")
    if truncated:
        return "truncated", truncated if not damaged else f"{truncated}; {damaged}"
    if damaged:
        regions = int(read.get("damaged_regions") or 1)
        more = f" ({regions} damaged regions, {read.get('damaged_bytes')} bytes)" \
            if regions > 1 else ""
        return "damaged", damaged + more
    return "done", None


def _warn_read(sid: str, result: ShardResult) -> None:
    status, message = read_status(result.read or {})
    if status == "truncated":
        log.warning("shard %s is truncated: kept the %d samples before the break (%s)", sid,
                    result.samples, message)
    elif status == "damaged":
        log.warning("shard %s is damaged: %s; the %d samples around it were read", sid, message,
                    result.samples)


def _task_error(exc: Exception, ref: ShardRef) -> str:
    """One line for a shard whose scoring raised; a vanished input says so plainly."""
    cause = getattr(exc, "cause", None) or exc
    if isinstance(cause, FileNotFoundError):
        return f"input shard {ref.url} is gone (it was there when the shards were listed)"
    return f"{type(cause).__name__}: {cause}".splitlines()[0]


def _pool_records(plans: list[ShardPlan], records: dict[str, PoolShard],
                  results: dict[str, ShardResult], attempts: dict[str, int],
                  failed: dict[str, tuple[ShardRef, int, str]], store: Store,
                  reader: str) -> list[PoolShard]:
    """``pool.parquet``'s rows after this pass, in pool order."""
    out: list[PoolShard] = []
    for p in plans:
        sid = p.ref.shard_id
        prev = records.get(sid)
        rec = PoolShard(shard=sid, url=p.ref.url, failures=p.ref.failures,
                        stamp=p.identity.stamp, digest=p.digest)
        if prev is not None and prev.digest == p.digest and p.digest is not None:
            rec.counters = dict(prev.counters)
        if sid in results:
            r = results[sid]
            if r.digest != p.digest:
                rec.counters = {}
            rec.counters.update({f"{label}@{ver}": c for (label, ver), c in
                                 r.version_counters().items()})
            if p.read_base:
                rec.counters["read"] = {"samples": int(r.read.get("samples", 0)),
                                        "errors": int(r.read.get("read_errors", 0)),
                                        "skipped": 0, "seconds": 0.0}
            rec.digest, rec.stamp, rec.samples = r.digest, r.stamp, r.samples
            if p.read_base:
                rec.status, rec.read_error = read_status(r.read)
            elif prev is not None:
                rec.status, rec.read_error = prev.status, prev.read_error
            rec.attempts, rec.seconds, rec.node = attempts.get(sid, 1), r.seconds, r.node
        elif sid in failed:
            _, n, error = failed[sid]
            rec.status, rec.attempts, rec.error = "failed", n, error
            if prev is not None and prev.digest == p.digest:
                rec.samples = prev.samples
        elif not p.todo:
            if prev is not None and prev.digest == p.digest:
                rec.samples, rec.status, rec.read_error = prev.samples, prev.status, \
                    prev.read_error
                rec.attempts, rec.seconds, rec.node = prev.attempts, prev.seconds, prev.node
            else:  # known from its base file (a pass that died before writing the pool)
                _fill_from_base(rec, store, reader, p)
        out.append(rec)
    return out


def _fill_from_base(rec: PoolShard, store: Store, reader: str, p: ShardPlan) -> None:
    import json

    from curate.store.store import KEY_INFO

    assert p.digest is not None
    name = Store.base_name(reader, p.key, p.digest)
    with store.dir.open(name) as f:
        md = pq.read_metadata(f)
    rec.samples = md.num_rows
    info = json.loads((md.metadata or {}).get(KEY_INFO, b"{}"))
    rec.status, rec.read_error = read_status(info.get("read") or {})


def shards_failed(failed: dict[str, tuple[ShardRef, int, str]], total: int,
                  max_retries: int) -> ShardFailed:
    """The error for shards that failed every attempt: how many, then each with its error."""
    lines = [f"{shard}: {error}" for shard, (_, _, error) in sorted(failed.items())]
    shown = "; ".join(lines[:5]) + (f"; and {len(lines) - 5} more" if len(lines) > 5 else "")
    return ShardFailed(
        f"{len(failed)} of {total} shards failed after {max_retries + 1} attempts: {shown}",
        "the other shards are scored and kept; fix the cause and run the same command again "
        "(pool.parquet in the store lists every failed shard with its error, log.jsonl every "
        "attempt)")


def stage_totals(store: Store, pool: Sequence[PoolShard], versions: Sequence[Version],
                 reader: str) -> dict[str, dict[str, float | int]]:
    """Per scorer, its counters summed over the pool's shards (what the selection's scores
    cost, whichever pass computed them): from ``pool.parquet``, or from the stored files'
    metadata for a shard whose pass died before recording them."""
    import json

    from curate.store.store import KEY_INFO

    total: dict[str, StageCounters] = {"read": StageCounters()}
    for s in pool:
        if s.digest is None or s.status == "failed":
            continue
        for key, name, label in (("read", Store.base_name(reader, s.key, s.digest), "read"),
                                 *((f"{v.label}@{v.version}", Store.score_name(
                                     v.label, v.version, s.key, s.digest), v.label)
                                   for v in versions)):
            c = s.counters.get(key)
            if c is None:
                with store.dir.open(name) as f:
                    info = json.loads((pq.read_metadata(f).metadata or {}).get(KEY_INFO, b"{}"))
                r = info.get("read") or {}
                c = info.get("counters") or {"samples": int(r.get("samples", 0)),
                                             "errors": int(r.get("read_errors", 0))}
            total.setdefault(label, StageCounters()).add(StageCounters(**c))
    return {k: v.as_dict() for k, v in total.items()}
