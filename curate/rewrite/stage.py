"""The rewrite stage: LLM rewrites of the kept captions, after selection (LaCLIP).

For every kept sample with a caption, ``rewrite.rewrites`` rewrites are asked for. Rewrite k of
sample u, attempt a, has a prompt with examples drawn from (seed, u, k, a) and a sampling seed
derived from the same, so the result never depends on batching, workers or order. The driver:

1. reads the kept rows (uid, caption) from the manifest, in pool order;
2. looks every request up in the generation cache; sends the misses, in batches, to a pool of
   ``RewriteWorker`` actors that hold the backend; caches each completion;
3. keeps the completion's first line and validates it (``curate.rewrite.validate``); a rejected
   rewrite is asked again (next attempt: new examples, new seed) up to ``max_attempts``, then
   recorded as ``rejected`` with the last reason; a backend error is recorded as ``error``
   (not cached: a rerun asks again). The original caption is never replaced;
4. writes ``rewrites.parquet`` (one row per sample and rewrite, with provenance) and adds
   ``rewrites`` (a list of structs) and ``rewrites_ok`` to the manifest.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import socket
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from curate.errors import CurateError
from curate.io.atomic import atomic_path, write_parquet
from curate.rewrite.backends import GenRequest, GenResult, make_backend, model_identity
from curate.rewrite.cache import GenerationCache, request_key
from curate.rewrite.config import RewriteConfig
from curate.rewrite.prompts import (
    Example,
    build_chat,
    build_prompt,
    load_examples,
    parse_completion,
    pick_examples,
)
from curate.rewrite.validate import rejection
from curate.sql import literal

log = logging.getLogger("curate")

STATUS_OK, STATUS_REJECTED, STATUS_ERROR, STATUS_SKIPPED = "ok", "rejected", "error", "skipped"

REWRITE_SCHEMA = pa.schema({
    "uid": pa.string(), "shard": pa.string(), "index": pa.int32(),
    "rewrite": pa.int16(),  # 0 .. rewrites-1; output member txt_rw<rewrite>
    "text": pa.string(),  # the accepted rewrite (null unless status is ok)
    "status": pa.string(),  # ok | rejected | error | skipped
    "reason": pa.string(),  # last validation failure, backend error, or no_caption
    "attempts": pa.int16(),
    "seed": pa.int64(),  # sampling seed of the last attempt
    "example_ids": pa.list_(pa.string()),  # in-context examples of the last attempt
    "model": pa.string(), "backend": pa.string(), "prompt_format": pa.string(),
    "sampling": pa.string(),  # JSON: temperature, top_p, max_tokens
})


@dataclass
class RewriteSummary:
    captions: int = 0  # kept samples
    requested: int = 0  # captions x rewrites
    ok: int = 0
    rejected: int = 0
    errors: int = 0
    skipped: int = 0
    generated: int = 0  # completions the backend produced in this run
    cache_hits: int = 0
    seconds: float = 0.0
    generation_seconds: float = 0.0  # from the first request sent to the last result
    generated_per_s: float = 0.0
    reasons: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class RewriteWorker:
    """A Ray actor holding one backend instance."""

    def __init__(self, cfg: RewriteConfig, device: str) -> None:
        self.backend = make_backend(cfg, device)

    def setup(self) -> str:
        self.backend.setup()
        return socket.gethostname()

    def generate(self, requests: list[GenRequest]) -> list[GenResult]:
        return self.backend.generate(requests)


def request_seed(seed: int, uid: str, rewrite: int, attempt: int) -> int:
    digest = hashlib.sha256(f"rewrite\0{seed}\0{uid}\0{rewrite}\0{attempt}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


@dataclass
class _Slot:
    uid: str
    shard: str
    index: int
    caption: str
    rewrite: int
    attempts: int = 0
    status: str | None = None
    reason: str | None = None
    text: str | None = None
    seed: int = 0
    example_ids: tuple[str, ...] = ()
    key: str = ""
    batch_tries: int = 0


class _Driver:
    def __init__(self, cfg: RewriteConfig, cache: GenerationCache,
                 lang_of: Callable[[str], str | None] | None) -> None:
        self.cfg = cfg
        self.cache = cache
        self.examples: list[Example] = load_examples(cfg.examples_file)
        self.model = model_identity(cfg)
        self.sampling = cfg.sampling.as_json()
        self.lang_of = lang_of
        self.summary = RewriteSummary()

    def request(self, s: _Slot) -> GenRequest:
        ex = pick_examples(self.examples, s.uid, self.cfg.examples, self.cfg.seed, s.rewrite,
                           s.attempts)
        s.example_ids = tuple(e.id for e in ex)
        s.seed = request_seed(self.cfg.seed, s.uid, s.rewrite, s.attempts)
        prompt = build_chat(s.caption, ex) if self.cfg.prompt == "chat" else build_prompt(
            s.caption, ex)
        s.key = request_key(self.model, prompt, self.sampling, s.seed)
        return GenRequest(prompt=prompt, seed=s.seed)

    def judge(self, s: _Slot, completion: str) -> bool:
        """Record the attempt; True when the slot is finished."""
        s.attempts += 1
        text = parse_completion(completion)
        v = self.cfg.validation
        why = rejection(s.caption, text, min_words=v.min_words, max_words=v.max_words,
                        min_known_words=v.min_known_words,
                        lang_of=self.lang_of if v.require_english else _no_language)
        if why is None:
            s.status, s.text, s.reason = STATUS_OK, text, None
            return True
        s.reason = why
        if s.attempts >= self.cfg.max_attempts:
            s.status = STATUS_REJECTED
            return True
        return False


def _no_language(_: str) -> str | None:
    return None


def _kept_rows(manifest: Path) -> list[tuple[str, str, int, str | None]]:
    con = duckdb.connect()
    rows = con.execute(f"""SELECT uid, shard, "index", caption FROM read_parquet(
        {literal(str(manifest))}) WHERE kept ORDER BY shard, "index" """).fetchall()
    con.close()
    return rows


def rewrite_kept(cfg: RewriteConfig, run_dir: Path, *, max_retries: int = 2,
                 event: Callable[..., None] | None = None,
                 progress: Any = None,
                 lang_of: Callable[[str], str | None] | None = None,
                 cache: Path | None = None) -> RewriteSummary:
    """Rewrite the kept captions of the selection in ``run_dir`` (its manifest must exist);
    writes ``rewrites.parquet`` and adds the rewrite columns to ``manifest.parquet``. The
    generation cache is ``cache`` (``curate run`` passes the store's, so every selection of a
    store shares it), else ``rewrite.cache``, else ``run_dir/rewrite_cache.sqlite``."""
    import ray

    t0 = time.perf_counter()
    emit = event or (lambda *_a, **_k: None)
    manifest = run_dir / "manifest.parquet"
    rows = _kept_rows(manifest)
    cache_path = cache if cache is not None else (
        Path(cfg.cache) if cfg.cache else run_dir / "rewrite_cache.sqlite")
    generations = GenerationCache(cache_path)
    driver = _Driver(cfg, generations, lang_of)
    summary = driver.summary
    summary.captions = len(rows)
    slots: list[_Slot] = []
    queue: deque[_Slot] = deque()
    for uid, shard, index, caption in rows:
        for k in range(cfg.rewrites):
            s = _Slot(uid, shard, index, caption or "", k)
            slots.append(s)
            if not s.caption.strip():
                s.status, s.reason = STATUS_SKIPPED, "no_caption"
            else:
                queue.append(s)
    summary.requested = len(slots)
    emit("rewrite_start", captions=len(rows), requests=len(slots), model=driver.model,
         backend=cfg.backend, cache=str(generations.path), cached=len(generations))
    bar = progress(len(slots)) if progress else None
    if bar is not None:
        bar.update(len(slots) - len(queue))

    def finished(n: int = 1) -> None:
        if bar is not None:
            bar.update(n)

    workers: list[Any] = []
    inflight: dict[Any, tuple[Any, list[_Slot]]] = {}
    busy: Counter[Any] = Counter()
    t_gen: float | None = None
    t_last = 0.0
    try:
        while queue or inflight:
            # Resolve cache hits and send misses while a worker has room.
            if queue and (not workers or min(busy[w] for w in workers) < 2):
                chunk = [queue.popleft() for _ in range(min(cfg.batch_size, len(queue)))]
                reqs = [driver.request(s) for s in chunk]
                hits = generations.get_many([s.key for s in chunk])
                misses: list[tuple[_Slot, GenRequest]] = []
                for s, r in zip(chunk, reqs, strict=True):
                    if s.key in hits:
                        summary.cache_hits += 1
                        if driver.judge(s, hits[s.key]):
                            finished()
                        else:
                            queue.append(s)
                    else:
                        misses.append((s, r))
                if misses:
                    if not workers:
                        workers = _start_workers(cfg, emit)
                        busy = Counter({w: 0 for w in workers})
                    w = min(workers, key=lambda x: busy[x])
                    fut = w.generate.remote([r for _, r in misses])
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
                    emit("rewrite_worker_died", error=str(exc).splitlines()[0])
                    workers.remove(w)
                    del busy[w]
                    new = _start_workers(cfg, emit, count=1)
                    workers.extend(new)
                    busy.update({x: 0 for x in new})
                    _requeue_or_fail(batch, queue, max_retries, f"worker died: {exc}", finished)
                    continue
                except ray.exceptions.RayTaskError as exc:
                    cause = exc.cause if exc.cause is not None else exc
                    error = f"{type(cause).__name__}: {cause}".splitlines()[0]
                    emit("rewrite_batch_failed", error=error)
                    _requeue_or_fail(batch, queue, max_retries, error, finished)
                    continue
                t_last = time.perf_counter()
                fresh = [(s.key, r.text) for s, r in zip(batch, results, strict=True)
                         if r.error is None and r.text is not None]
                generations.put_many(fresh, driver.model, cfg.backend)  # type: ignore[arg-type]
                summary.generated += len(fresh)
                for s, r in zip(batch, results, strict=True):
                    if r.error is not None or r.text is None:
                        s.status, s.reason = STATUS_ERROR, r.error or "no completion"
                        finished()
                    elif driver.judge(s, r.text):
                        finished()
                    else:
                        queue.append(s)
    finally:
        for w in workers:
            with contextlib.suppress(Exception):
                ray.kill(w)
        if bar is not None:
            bar.close()
        generations.close()

    _write(slots, cfg, driver.model, run_dir)
    counts = Counter(s.status for s in slots)
    summary.ok, summary.rejected = counts[STATUS_OK], counts[STATUS_REJECTED]
    summary.errors, summary.skipped = counts[STATUS_ERROR], counts[STATUS_SKIPPED]
    summary.reasons = dict(Counter(f"{s.status}:{_reason_kind(s.reason)}" for s in slots
                                   if s.status != STATUS_OK).most_common())
    summary.seconds = round(time.perf_counter() - t0, 3)
    if t_gen is not None and t_last > t_gen:
        summary.generation_seconds = round(t_last - t_gen, 3)
        summary.generated_per_s = round(summary.generated / (t_last - t_gen), 2)
    emit("rewrite_end", **summary.as_dict())
    if summary.errors:
        log.warning("%d of %d rewrites failed in the backend (first: %s); they keep the "
                    "original caption, and the next run asks again", summary.errors,
                    summary.requested, next(s.reason for s in slots if s.status == STATUS_ERROR))
    return summary


def _reason_kind(reason: str | None) -> str:
    """A short, countable form of a reason (backend errors carry details after a colon)."""
    return (reason or "").split(":", 1)[0].split(" (", 1)[0]


def _requeue_or_fail(batch: list[_Slot], queue: deque[_Slot], max_retries: int, error: str,
                     finished: Callable[[int], None]) -> None:
    for s in batch:
        s.batch_tries += 1
        if s.batch_tries <= max_retries:
            queue.append(s)
        else:
            s.status, s.reason = STATUS_ERROR, error
            finished(1)


def preflight(cfg: RewriteConfig) -> None:
    """Checks that need the cluster, run before scoring so a hopeless rewrite fails early."""
    import ray

    if cfg.backend == "vllm":
        need = float(cfg.vllm.tensor_parallel_size)
        have = ray.cluster_resources().get("GPU", 0.0)
        if have < need:
            raise CurateError(f"the vllm rewrite backend needs {need:g} GPU(s) per worker; "
                              f"the Ray cluster has {have:g}",
                              "use the transformers backend on CPU, or an openai endpoint")


def _start_workers(cfg: RewriteConfig, emit: Callable[..., None],
                   count: int | None = None) -> list[Any]:
    import ray

    cluster = ray.cluster_resources()
    gpus = cluster.get("GPU", 0.0)
    node_cpus = max((n["Resources"].get("CPU", 0.0) for n in ray.nodes() if n.get("Alive")),
                    default=1.0)
    if cfg.backend == "vllm":
        preflight(cfg)
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
    actor = ray.remote(RewriteWorker).options(  # type: ignore[attr-defined]
        num_cpus=num_cpus, num_gpus=num_gpus, max_restarts=0, scheduling_strategy="SPREAD")
    workers = [actor.remote(cfg, device) for _ in range(n)]
    try:
        hosts = ray.get([w.setup.remote() for w in workers])
    except ray.exceptions.RayTaskError as exc:
        cause = exc.cause if exc.cause is not None else exc
        for w in workers:
            ray.kill(w)
        if isinstance(cause, CurateError):
            raise cause from None
        raise CurateError(f"the rewrite backend failed to start: {type(cause).__name__}: "
                          f"{cause}".splitlines()[0]) from exc
    emit("rewrite_workers_started", workers=n, cpus=num_cpus, gpus=num_gpus, nodes=hosts)
    return workers


def _write(slots: list[_Slot], cfg: RewriteConfig, model: str, run_dir: Path) -> None:
    prov = cfg.provenance()
    table = pa.Table.from_pylist([
        {"uid": s.uid, "shard": s.shard, "index": s.index, "rewrite": s.rewrite,
         "text": s.text, "status": s.status, "reason": s.reason, "attempts": s.attempts,
         "seed": s.seed if s.attempts else None,
         "example_ids": list(s.example_ids) if s.attempts else None, "model": model, **prov}
        for s in slots], schema=REWRITE_SCHEMA)
    rewrites = run_dir / "rewrites.parquet"
    write_parquet(table, rewrites)
    manifest = run_dir / "manifest.parquet"
    con = duckdb.connect()
    with atomic_path(manifest) as tmp:
        con.execute(f"""
            COPY (
              SELECT m.*, r.rewrites, CASE WHEN m.kept THEN coalesce(r.rewrites_ok, 0) END
                     AS rewrites_ok
              FROM read_parquet({literal(str(manifest))}) m
              LEFT JOIN (
                SELECT uid, shard, "index",
                       list(struct_pack(rewrite, text, status, reason, attempts, seed,
                                        example_ids, model, backend, prompt_format, sampling)
                            ORDER BY rewrite) AS rewrites,
                       count(*) FILTER (WHERE status = 'ok')::INTEGER AS rewrites_ok
                FROM read_parquet({literal(str(rewrites))}) GROUP BY ALL
              ) r USING (uid, shard, "index")
              ORDER BY m.shard, m."index"
            ) TO {literal(str(tmp))} (FORMAT parquet, COMPRESSION zstd)
        """)
    con.close()


def rewrites_json(rewrites: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """The provenance written into each output sample's json (sampling params as an object)."""
    out = []
    for r in rewrites or []:
        item = dict(r)
        if isinstance(item.get("sampling"), str):
            item["sampling"] = json.loads(item["sampling"])
        out.append(item)
    return out
