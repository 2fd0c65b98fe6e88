"""The rewrite stage: LLM rewrites of the kept captions, after selection (LaCLIP).

For every kept sample with a caption, ``rewrite.rewrites`` rewrites are asked for. Rewrite k of
sample u, attempt a, has a prompt with examples drawn from (seed, u, k, a) and a sampling seed
derived from the same, so the result never depends on batching, workers or order. The driver:

1. reads the kept rows (uid, caption) from the manifest, in pool order;
2. looks every request up in the generation cache; sends the misses, in batches, to a pool of
   ``GenWorker`` actors that hold the backend (``curate.rewrite.engine``); caches each completion;
3. keeps the completion's first line and validates it (``curate.rewrite.validate``); a rejected
   rewrite is asked again (next attempt: new examples, new seed) up to ``max_attempts``, then
   recorded as ``rejected`` with the last reason; a backend error is recorded as ``error``
   (not cached: a rerun asks again). The original caption is never replaced;
4. writes ``rewrites.parquet`` (one row per sample and rewrite, with provenance) and adds
   ``rewrites`` (a list of structs) and ``rewrites_ok`` to the manifest.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from curate.io.atomic import write_parquet
from curate.io.dataset import manifest_path, rewrite_parts, scan_sql
from curate.rewrite.backends import GenRequest, make_backend, model_identity
from curate.rewrite.cache import GenerationCache, request_key
from curate.rewrite.config import RewriteConfig
from curate.rewrite.engine import (
    STATUS_ERROR,
    STATUS_OK,
    STATUS_REJECTED,
    STATUS_SKIPPED,
    Slot,
    drive,
    reason_kind,
)
from curate.rewrite.engine import preflight as engine_preflight
from curate.rewrite.engine import request_seed as engine_seed
from curate.rewrite.prompts import (
    Example,
    build_chat,
    build_prompt,
    load_examples,
    parse_completion,
    pick_examples,
)
from curate.rewrite.validate import rejection
from curate.sql import path_literal

log = logging.getLogger("curate")

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


def request_seed(seed: int, uid: str, rewrite: int, attempt: int) -> int:
    return engine_seed("rewrite", seed, uid, rewrite, attempt)


@dataclass
class _Slot(Slot):
    caption: str = ""
    example_ids: tuple[str, ...] = ()

    @property
    def rewrite(self) -> int:
        return self.number


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

    def prepare(self, slots: list[_Slot], requests: list[GenRequest]) -> list[GenRequest]:
        return requests

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
    rows = con.execute(f"""SELECT uid, shard, "index", caption FROM {scan_sql(manifest)}
        WHERE kept ORDER BY shard, "index" """).fetchall()
    con.close()
    return rows


def rewrite_kept(cfg: RewriteConfig, run_dir: Path, *, max_retries: int = 2,
                 event: Callable[..., None] | None = None,
                 progress: Any = None,
                 lang_of: Callable[[str], str | None] | None = None,
                 cache: Path | None = None) -> RewriteSummary:
    """Rewrite the kept captions of the selection in ``run_dir`` (its manifest must exist);
    writes ``rewrites.parquet`` and adds the rewrite columns to the manifest. The
    generation cache is ``cache`` (``curate run`` passes the store's, so every selection of a
    store shares it), else ``rewrite.cache``, else ``run_dir/rewrite_cache.sqlite``."""
    t0 = time.perf_counter()
    emit = event or (lambda *_a, **_k: None)
    if cfg.backend != "openai" and Path(cfg.model).is_dir():
        # A local model is made absolute here, on the driver: workers may run in another
        # directory (a Ray started before the driver changed directory, or another node).
        cfg = cfg.model_copy(update={"model": str(Path(cfg.model).absolute())})
    rows = _kept_rows(manifest_path(run_dir))
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
            s = _Slot(uid, shard, index, k, caption=caption or "")
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

    try:
        stats = drive(queue, driver, cfg, generations, make_backend, what="rewrite",
                      max_retries=max_retries, emit=emit, finished=finished)
    finally:
        if bar is not None:
            bar.close()
        generations.close()

    _write(slots, cfg, driver.model, run_dir)
    counts = Counter(s.status for s in slots)
    summary.ok, summary.rejected = counts[STATUS_OK], counts[STATUS_REJECTED]
    summary.errors, summary.skipped = counts[STATUS_ERROR], counts[STATUS_SKIPPED]
    summary.reasons = dict(Counter(f"{s.status}:{reason_kind(s.reason)}" for s in slots
                                   if s.status != STATUS_OK).most_common())
    summary.seconds = round(time.perf_counter() - t0, 3)
    summary.generated, summary.cache_hits = stats.generated, stats.cache_hits
    summary.generation_seconds = stats.generation_seconds
    summary.generated_per_s = stats.generated_per_s
    emit("rewrite_end", **summary.as_dict())
    if summary.errors:
        log.warning("%d of %d rewrites failed in the backend (first: %s); they keep the "
                    "original caption, and the next run asks again", summary.errors,
                    summary.requested, next(s.reason for s in slots if s.status == STATUS_ERROR))
    return summary


def preflight(cfg: RewriteConfig) -> None:
    """Checks that need the cluster, run before scoring so a hopeless rewrite fails early."""
    engine_preflight(cfg, "rewrite")


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
    con = duckdb.connect()
    try:
        con.execute(f"""CREATE TEMP TABLE r AS
            SELECT uid, shard, "index",
                   list(struct_pack(rewrite, text, status, reason, attempts, seed,
                                    example_ids, model, backend, prompt_format, sampling)
                        ORDER BY rewrite) AS rewrites,
                   count(*) FILTER (WHERE status = 'ok')::INTEGER AS rewrites_ok
            FROM read_parquet({path_literal(rewrites)}) GROUP BY ALL""")
        rewrite_parts(manifest_path(run_dir), lambda part: f"""
            SELECT m.*, r.rewrites, CASE WHEN m.kept THEN coalesce(r.rewrites_ok, 0) END
                   AS rewrites_ok
            FROM {part} m LEFT JOIN r USING (uid, shard, "index")
            ORDER BY m.shard, m."index" """, con)
    finally:
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
