"""What every generation step shares (LaCLIP rewrites, synthetic captions from images): the
Ray worker holding a backend, the dispatch loop with the generation cache, validation retries
and worker replacement, and the per-request seeds.

A step describes each wanted generation as a ``Slot`` and gives a ``Job``: ``request(slot)``
builds the request (and sets ``slot.key``, the cache key, and ``slot.seed``), ``judge(slot,
completion)`` records an attempt and says whether the slot is finished (accepted, or out of
attempts), and ``prepare(slots, requests)`` returns the requests of a chunk's misses with what
they need loaded (the images, for captions: a cache hit never reads one). ``drive`` then:

1. takes chunks of ``batch_size`` slots from the queue, answers cache hits at once and sends
   the misses to the least busy worker (two batches in flight per worker at most);
2. caches each completion (never an error), judges it and queues a rejected slot again (its
   next attempt has a new seed, so a new key);
3. on a worker that died, starts another and sends its batch again (``max_retries`` times per
   slot, then the slot is an error); an exception in a batch is retried the same way.
"""

from __future__ import annotations

import contextlib
import hashlib
import socket
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from curate.errors import CurateError
from curate.rewrite.backends import Backend, GenRequest, GenResult
from curate.rewrite.cache import GenerationCache

STATUS_OK, STATUS_REJECTED, STATUS_ERROR, STATUS_SKIPPED = "ok", "rejected", "error", "skipped"


@dataclass
class Slot:
    """One wanted generation (rewrite k or caption k of a sample) and its outcome."""

    uid: str
    shard: str
    index: int
    number: int  # rewrite or caption number k
    attempts: int = 0
    status: str | None = None
    reason: str | None = None
    text: str | None = None
    seed: int = 0
    key: str = ""
    batch_tries: int = 0


class Job(Protocol):
    model: str  # the model identity the cache keys by

    def request(self, s: Any) -> GenRequest: ...

    def judge(self, s: Any, completion: str) -> bool: ...

    def prepare(self, slots: list[Any], requests: list[GenRequest]) -> list[GenRequest]: ...


@dataclass
class DriveStats:
    generated: int = 0
    cache_hits: int = 0
    generation_seconds: float = 0.0
    generated_per_s: float = 0.0


def request_seed(kind: str, seed: int, uid: str, number: int, attempt: int) -> int:
    """The sampling seed of attempt ``attempt`` at generation ``number`` of sample ``uid``."""
    digest = hashlib.sha256(f"{kind}\0{seed}\0{uid}\0{number}\0{attempt}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


class GenWorker:
    """A Ray actor holding one backend instance, made by ``factory(cfg, device)``."""

    def __init__(self, factory: Callable[[Any, str], Backend], cfg: Any, device: str) -> None:
        self.backend = factory(cfg, device)

    def setup(self) -> str:
        self.backend.setup()
        return socket.gethostname()

    def generate(self, requests: list[GenRequest]) -> list[GenResult]:
        return self.backend.generate(requests)


def drive(queue: deque[Any], job: Job, cfg: Any, generations: GenerationCache,
          factory: Callable[[Any, str], Backend], *, what: str, max_retries: int,
          emit: Callable[..., None], finished: Callable[[int], None]) -> DriveStats:
    """Run every slot of ``queue`` to its end (see the module docs). ``what`` names the step in
    events (``<what>_workers_started``, ``<what>_worker_died``, ``<what>_batch_failed``)."""
    import ray

    stats = DriveStats()
    workers: list[Any] = []
    inflight: dict[Any, tuple[Any, list[Any]]] = {}
    busy: Counter[Any] = Counter()
    t_gen: float | None = None
    t_last = 0.0

    def start(count: int | None = None) -> list[Any]:
        return start_workers(cfg, emit, factory, what, count)

    try:
        while queue or inflight:
            # Resolve cache hits and send misses while a worker has room.
            if queue and (not workers or min(busy[w] for w in workers) < 2):
                chunk = [queue.popleft() for _ in range(min(cfg.batch_size, len(queue)))]
                reqs = [job.request(s) for s in chunk]
                hits = generations.get_many([s.key for s in chunk])
                misses: list[tuple[Any, GenRequest]] = []
                for s, r in zip(chunk, reqs, strict=True):
                    if s.key in hits:
                        stats.cache_hits += 1
                        if job.judge(s, hits[s.key]):
                            finished(1)
                        else:
                            queue.append(s)
                    else:
                        misses.append((s, r))
                if misses:
                    reqs = job.prepare([s for s, _ in misses], [r for _, r in misses])
                    if not workers:
                        workers = start()
                        busy = Counter({w: 0 for w in workers})
                    w = min(workers, key=lambda x: busy[x])
                    fut = w.generate.remote(reqs)
                    inflight[fut] = (w, [s for s, _ in misses])
                    busy[w] += 1
                    t_gen = t_gen if t_gen is not None else time.perf_counter()
                continue
            ready, _ = ray.wait(list(inflight), num_returns=1, timeout=1.0)
            for fut in ready:
                w, batch = inflight.pop(fut)
                busy[w] -= 1
                try:
                    results: list[GenResult] = ray.get(fut)
                except ray.exceptions.RayActorError as exc:
                    # The worker died (OOM, crash): replace it and send the batch again.
                    emit(f"{what}_worker_died", error=str(exc).splitlines()[0])
                    workers.remove(w)
                    del busy[w]
                    new = start(1)
                    workers.extend(new)
                    busy.update({x: 0 for x in new})
                    _requeue_or_fail(batch, queue, max_retries, f"worker died: {exc}", finished)
                    continue
                except ray.exceptions.RayTaskError as exc:
                    cause = exc.cause if exc.cause is not None else exc
                    error = f"{type(cause).__name__}: {cause}".splitlines()[0]
                    emit(f"{what}_batch_failed", error=error)
                    _requeue_or_fail(batch, queue, max_retries, error, finished)
                    continue
                t_last = time.perf_counter()
                fresh = [(s.key, r.text) for s, r in zip(batch, results, strict=True)
                         if r.error is None and r.text is not None]
                generations.put_many(fresh, job.model, cfg.backend)
                stats.generated += len(fresh)
                for s, r in zip(batch, results, strict=True):
                    if r.error is not None or r.text is None:
                        s.status, s.reason = STATUS_ERROR, r.error or "no completion"
                        finished(1)
                    elif job.judge(s, r.text):
                        finished(1)
                    else:
                        queue.append(s)
    finally:
        for w in workers:
            with contextlib.suppress(Exception):
                ray.kill(w)
    if t_gen is not None and t_last > t_gen:
        stats.generation_seconds = round(t_last - t_gen, 3)
        stats.generated_per_s = round(stats.generated / (t_last - t_gen), 2)
    return stats


def reason_kind(reason: str | None) -> str:
    """A short, countable form of a reason (backend errors carry details after a colon)."""
    return (reason or "").split(":", 1)[0].split(" (", 1)[0]


def _requeue_or_fail(batch: list[Any], queue: deque[Any], max_retries: int, error: str,
                     finished: Callable[[int], None]) -> None:
    for s in batch:
        s.batch_tries += 1
        if s.batch_tries <= max_retries:
            queue.append(s)
        else:
            s.status, s.reason = STATUS_ERROR, error
            finished(1)


def preflight(cfg: Any, what: str = "rewrite") -> None:
    """Checks that need the cluster, run before scoring so a hopeless step fails early."""
    import ray

    if cfg.backend == "vllm":
        need = float(cfg.vllm.tensor_parallel_size)
        have = ray.cluster_resources().get("GPU", 0.0)
        if have < need:
            raise CurateError(f"the vllm {what} backend needs {need:g} GPU(s) per worker; "
                              f"the Ray cluster has {have:g}",
                              "use the transformers backend on CPU, or an openai endpoint")


def start_workers(cfg: Any, emit: Callable[..., None], factory: Callable[[Any, str], Backend],
                  what: str = "rewrite", count: int | None = None) -> list[Any]:
    import ray

    cluster = ray.cluster_resources()
    gpus = cluster.get("GPU", 0.0)
    node_cpus = max((n["Resources"].get("CPU", 0.0) for n in ray.nodes() if n.get("Alive")),
                    default=1.0)
    if cfg.backend == "vllm":
        preflight(cfg, what)
        per_gpu = float(cfg.vllm.tensor_parallel_size)
        n, num_cpus, num_gpus, device = int(gpus // per_gpu), 1.0, per_gpu, "cuda"
    elif cfg.backend == "transformers" and gpus >= 1:
        n, num_cpus, num_gpus, device = int(gpus), 1.0, 1.0, "cuda"
    elif cfg.backend == "transformers":
        # One CPU worker using a node's cores (torch threads follow the actor's CPUs).
        n, num_cpus, num_gpus, device = 1, max(1.0, node_cpus), 0.0, "cpu"
    else:  # openai: the concurrency is inside the worker
        n, num_cpus, num_gpus, device = 1, 0.25, 0.0, "cpu"
    n = count or cfg.workers or n
    actor = ray.remote(GenWorker).options(  # type: ignore[attr-defined]
        num_cpus=num_cpus, num_gpus=num_gpus, max_restarts=0, scheduling_strategy="SPREAD")
    workers = [actor.remote(factory, cfg, device) for _ in range(n)]
    try:
        hosts = ray.get([w.setup.remote() for w in workers])
    except ray.exceptions.RayTaskError as exc:
        cause = exc.cause if exc.cause is not None else exc
        for w in workers:
            ray.kill(w)
        if isinstance(cause, CurateError):
            raise cause from None
        raise CurateError(f"the {what} backend failed to start: {type(cause).__name__}: "
                          f"{cause}".splitlines()[0]) from exc
    emit(f"{what}_workers_started", workers=n, cpus=num_cpus, gpus=num_gpus, nodes=hosts)
    return workers
