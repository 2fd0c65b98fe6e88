"""The recaption stage: synthetic captions of the kept samples' images, after selection (ALIP).

For every kept sample, ``recaption.captions`` captions are asked of a captioning model. Caption
k of sample u, attempt a, has a sampling seed derived from (seed, u, k, a), and its cache key
is the model identity, the image's SHA-256, the prompt, the sampling parameters and that
seed, so a caption never depends on batching, workers or order, and a rerun (or another
selection of the same store) generates nothing it has. The driver is the rewrite step's
(``curate.rewrite.engine``):

1. reads the kept rows from the manifest, in pool order;
2. answers cache hits; for the misses, reads the images from the input shards
   (``read_members``, one pass per shard, two shards held at a time) and checks each against
   the stored ``image_sha256`` (an image that changed after scoring stops the run, as the
   output writer does), then sends them in batches to the backend's workers;
3. keeps the completion's first line and validates it (``caption_rejection``); a rejected
   caption (``unfinished`` too: one cut at ``max_tokens``) is asked again with the next seed
   up to ``max_attempts``, then recorded as
   ``rejected`` with its reason; a backend error (an image that does not decode included) is
   ``error`` and is not cached;
4. computes ALIP's consistency signals when the store has a clip scorer with embeddings
   (``curate.recaption.signals``);
5. writes ``recaptions.parquet`` (one row per sample and caption, with provenance and the
   signals) and adds ``recaptions``, ``recaptions_ok``, ``syn_image_sim`` and ``syn_text_sim``
   to the manifest.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from curate.errors import CurateError
from curate.io.atomic import write_parquet
from curate.io.dataset import manifest_path, rewrite_parts, scan_sql
from curate.io.shards import ShardRef, read_members
from curate.recaption.config import RecaptionConfig
from curate.rewrite.backends import Backend, GenRequest, model_identity
from curate.rewrite.cache import GenerationCache, request_key
from curate.rewrite.engine import (
    STATUS_ERROR,
    STATUS_OK,
    STATUS_REJECTED,
    STATUS_SKIPPED,
    Slot,
    drive,
    reason_kind,
    request_seed,
)
from curate.rewrite.engine import preflight as engine_preflight
from curate.rewrite.validate import caption_rejection
from curate.sql import path_literal

log = logging.getLogger("curate")

RECAPTION_SCHEMA = pa.schema({
    "uid": pa.string(), "shard": pa.string(), "index": pa.int32(),
    "syn": pa.int16(),  # 0 .. captions-1; output member txt_syn<syn>
    "text": pa.string(),  # the accepted caption (null unless status is ok)
    "status": pa.string(),  # ok | rejected | error | skipped
    "reason": pa.string(),  # last validation failure, backend error, or no_image
    "attempts": pa.int16(),
    "seed": pa.int64(),  # sampling seed of the last attempt
    "image_sim": pa.float32(),  # cosine of the stored CLIP image embedding and the caption's
    "text_sim": pa.float32(),  # cosine of the stored CLIP text embedding (raw caption) and it
    "image_sha256": pa.string(),  # the image the caption is of
    "model": pa.string(), "backend": pa.string(), "prompt": pa.string(),
    "prompt_format": pa.string(),
    "sampling": pa.string(),  # JSON: temperature, top_p, max_tokens
})


@dataclass
class RecaptionSummary:
    images: int = 0  # kept samples
    requested: int = 0  # images x captions
    ok: int = 0
    rejected: int = 0
    errors: int = 0
    skipped: int = 0
    generated: int = 0  # completions the backend produced in this run
    cache_hits: int = 0
    seconds: float = 0.0
    generation_seconds: float = 0.0  # from the first request sent to the last result
    generated_per_s: float = 0.0
    signals: str | None = None  # the clip scorer whose embeddings gave the signals
    reasons: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Slot(Slot):
    image_member: str = ""
    image_sha256: str | None = None
    image_sim: float | None = None
    text_sim: float | None = None


def make_caption_backend(cfg: RecaptionConfig, device: str) -> Backend:
    if cfg.backend == "transformers":
        from curate.recaption.backend_transformers import TransformersCaptionBackend

        return TransformersCaptionBackend(cfg, device)
    if cfg.backend == "openai":
        from curate.recaption.backend_openai import OpenAICaptionBackend

        return OpenAICaptionBackend(cfg, device)
    from curate.recaption.backend_vllm import VLLMCaptionBackend

    return VLLMCaptionBackend(cfg, device)


class ShardImages:
    """The images of the kept samples, read from their input shards one pass per shard and
    checked against the stored SHA-256; ``hold`` shards are kept in memory at a time."""

    def __init__(self, refs: dict[str, ShardRef], hold: int = 2) -> None:
        self.refs, self.hold = refs, hold
        self.loaded: OrderedDict[str, dict[int, dict[str, bytes]]] = OrderedDict()
        self.wanted: dict[str, set[int]] = {}
        self.reads = 0

    def want(self, s: _Slot) -> None:
        self.wanted.setdefault(s.shard, set()).add(s.index)

    def get(self, s: _Slot) -> bytes:
        if s.shard not in self.loaded:
            if s.shard not in self.refs:
                raise CurateError(f"sample {s.uid}: its input shard {s.shard} is not in the "
                                  "pool this selection reads")
            self.loaded[s.shard] = read_members(self.refs[s.shard],
                                                self.wanted.get(s.shard, {s.index}))
            self.reads += 1
            while len(self.loaded) > self.hold:
                self.loaded.popitem(last=False)
        self.loaded.move_to_end(s.shard)
        image = self.loaded[s.shard].get(s.index, {}).get(s.image_member)
        hint = ("its input shard changed after it was scored: score the pool again (the same "
                "`curate run`, or `curate score`), then select")
        if image is None:
            raise CurateError(f"sample {s.uid} ({s.shard}, position {s.index}) is no longer in "
                              "its input shard", hint)
        digest = hashlib.sha256(image).hexdigest()
        if s.image_sha256 is not None and digest != s.image_sha256:
            raise CurateError(f"sample {s.uid} ({s.shard}, position {s.index}): its image is "
                              f"not the one that was scored (SHA-256 {digest[:16]}…, the "
                              f"scores are of {s.image_sha256[:16]}…)", hint)
        return image


class _Job:
    def __init__(self, cfg: RecaptionConfig, images: ShardImages,
                 lang_of: Callable[[str], str | None] | None) -> None:
        self.cfg = cfg
        self.model = model_identity(cfg)
        self.images = images
        self.sampling = cfg.sampling_key()
        self.lang_of = lang_of

    def request(self, s: _Slot) -> GenRequest:
        s.seed = request_seed("recaption", self.cfg.seed, s.uid, s.number, s.attempts)
        s.key = request_key(self.model, {"image": s.image_sha256 or s.uid,
                                         "prompt": self.cfg.prompt}, self.sampling, s.seed)
        return GenRequest(prompt=self.cfg.prompt or "", seed=s.seed)

    def prepare(self, slots: list[_Slot], requests: list[GenRequest]) -> list[GenRequest]:
        return [dataclasses.replace(r, image=self.images.get(s))
                for s, r in zip(slots, requests, strict=True)]

    def judge(self, s: _Slot, completion: str) -> bool:
        s.attempts += 1
        text = completion.split("\n", 1)[0].strip()
        v = self.cfg.validation
        why = caption_rejection(text, self.cfg.prompt, min_words=v.min_words,
                                max_words=v.max_words, min_known_words=v.min_known_words,
                                lang_of=self.lang_of if v.require_english else None)
        if why is None and v.require_finished and "\n" not in completion:
            why = "unfinished"  # cut at max_tokens: the model had not ended the caption
        if why is None:
            s.status, s.text, s.reason = STATUS_OK, text, None
            return True
        s.reason = why
        if s.attempts >= self.cfg.max_attempts:
            s.status = STATUS_REJECTED
            return True
        return False


def _kept_rows(manifest: Path) -> list[tuple[Any, ...]]:
    con = duckdb.connect()
    rows = con.execute(f"""SELECT uid, shard, "index", image_member, image_sha256 FROM
        {scan_sql(manifest)} WHERE kept ORDER BY shard, "index" """).fetchall()
    con.close()
    return rows


def recaption_kept(cfg: RecaptionConfig, run_dir: Path, refs: list[ShardRef], *,
                   source: Any = None, max_retries: int = 2,
                   event: Callable[..., None] | None = None, progress: Any = None,
                   lang_of: Callable[[str], str | None] | None = None,
                   cache: Path | None = None) -> RecaptionSummary:
    """Caption the kept images of the selection in ``run_dir`` (its manifest must exist),
    reading them from ``refs``; writes ``recaptions.parquet`` and adds the recaption columns to
    the manifest. ``source`` (the selection's ``PoolSource``) gives the stored clip
    embeddings for the signals. The generation cache is ``cache``, else ``recaption.cache``,
    else ``run_dir/rewrite_cache.sqlite``."""
    from curate.recaption.signals import ClipSignals
    from curate.rewrite.validate import english

    t0 = time.perf_counter()
    emit = event or (lambda *_a, **_k: None)
    if cfg.backend != "openai" and Path(cfg.model).is_dir():
        # A local model is resolved here, on the driver: workers may run in another directory.
        cfg = cfg.model_copy(update={"model": str(Path(cfg.model).resolve())})
    signals = ClipSignals.find(cfg.clip, source)  # a wrong clip label fails before any work
    rows = _kept_rows(manifest_path(run_dir))
    cache_path = cache if cache is not None else (
        Path(cfg.cache) if cfg.cache else run_dir / "rewrite_cache.sqlite")
    generations = GenerationCache(cache_path)
    images = ShardImages({r.shard_id: r for r in refs})
    job = _Job(cfg, images, lang_of or english)
    summary = RecaptionSummary(images=len(rows))
    slots: list[_Slot] = []
    queue: deque[_Slot] = deque()
    for uid, shard, index, member, sha in rows:
        for k in range(cfg.captions):
            s = _Slot(uid, shard, index, k, image_member=member or "", image_sha256=sha)
            slots.append(s)
            if not member:
                s.status, s.reason = STATUS_SKIPPED, "no_image"
            else:
                queue.append(s)
                images.want(s)
    summary.requested = len(slots)
    emit("recaption_start", images=len(rows), requests=len(slots), model=job.model,
         backend=cfg.backend, cache=str(generations.path), cached=len(generations))
    bar = progress(len(slots)) if progress else None
    if bar is not None:
        bar.update(len(slots) - len(queue))

    def finished(n: int = 1) -> None:
        if bar is not None:
            bar.update(n)

    try:
        stats = drive(queue, job, cfg, generations, make_caption_backend, what="recaption",
                      max_retries=max_retries, emit=emit, finished=finished)
    finally:
        if bar is not None:
            bar.close()
        generations.close()
    if signals is not None:
        signals.fill([s for s in slots if s.status == STATUS_OK])
        summary.signals = signals.label
    _write(slots, cfg, job.model, run_dir)
    counts = Counter(s.status for s in slots)
    summary.ok, summary.rejected = counts[STATUS_OK], counts[STATUS_REJECTED]
    summary.errors, summary.skipped = counts[STATUS_ERROR], counts[STATUS_SKIPPED]
    summary.reasons = dict(Counter(f"{s.status}:{reason_kind(s.reason)}" for s in slots
                                   if s.status != STATUS_OK).most_common())
    summary.seconds = round(time.perf_counter() - t0, 3)
    summary.generated, summary.cache_hits = stats.generated, stats.cache_hits
    summary.generation_seconds = stats.generation_seconds
    summary.generated_per_s = stats.generated_per_s
    emit("recaption_end", shard_reads=images.reads, **summary.as_dict())
    if summary.errors:
        log.warning("%d of %d synthetic captions failed in the backend (first: %s); the next "
                    "run asks again", summary.errors, summary.requested,
                    next(s.reason for s in slots if s.status == STATUS_ERROR))
    return summary


def preflight(cfg: RecaptionConfig) -> None:
    engine_preflight(cfg, "recaption")


def _write(slots: list[_Slot], cfg: RecaptionConfig, model: str, run_dir: Path) -> None:
    prov = cfg.provenance()
    table = pa.Table.from_pylist([
        {"uid": s.uid, "shard": s.shard, "index": s.index, "syn": s.number, "text": s.text,
         "status": s.status, "reason": s.reason, "attempts": s.attempts,
         "seed": s.seed if s.attempts else None, "image_sim": s.image_sim,
         "text_sim": s.text_sim, "image_sha256": s.image_sha256, "model": model, **prov}
        for s in slots], schema=RECAPTION_SCHEMA)
    recaptions = run_dir / "recaptions.parquet"
    write_parquet(table, recaptions)
    con = duckdb.connect()
    try:
        con.execute(f"""CREATE TEMP TABLE r AS
            SELECT uid, shard, "index",
                   list(struct_pack(syn, text, status, reason, attempts, seed, image_sim,
                                    text_sim, model, backend, prompt, prompt_format,
                                    sampling) ORDER BY syn) AS recaptions,
                   count(*) FILTER (WHERE status = 'ok')::INTEGER AS recaptions_ok,
                   avg(image_sim) FILTER (WHERE status = 'ok')::FLOAT AS syn_image_sim,
                   avg(text_sim) FILTER (WHERE status = 'ok')::FLOAT AS syn_text_sim
            FROM read_parquet({path_literal(recaptions)}) GROUP BY ALL""")
        rewrite_parts(manifest_path(run_dir), lambda part: f"""
            SELECT m.*, r.recaptions,
                   CASE WHEN m.kept THEN coalesce(r.recaptions_ok, 0) END AS recaptions_ok,
                   r.syn_image_sim, r.syn_text_sim
            FROM {part} m LEFT JOIN r USING (uid, shard, "index")
            ORDER BY m.shard, m."index" """, con)
    finally:
        con.close()


def recaptions_json(items: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """The provenance written into each output sample's json (sampling params as an object)."""
    out = []
    for r in items or []:
        item = dict(r)
        if isinstance(item.get("sampling"), str):
            item["sampling"] = json.loads(item["sampling"])
        for k in ("image_sim", "text_sim"):
            if isinstance(item.get(k), float):
                item[k] = round(item[k], 6)
        out.append(item)
    return out
