"""Selection at scale: a synthetic scored store of N rows (default 100M) through the real
selection code, timing each step and the process's peak memory.

The pool is written as a store (``curate.store.store``) of shards of --shard-rows rows each
(default 1M), one shard at a time, so generating it never holds the whole table. Each shard has
what a real scoring pass stores: a base file with the sample columns (uid, shard, key, index,
image_member, url, caption, image_sha256, status, error_stage, error) and one file per scorer
with what image_info, caption_stats, language, exact_hash, clip and metaclip_match write
(width, height, aspect_ratio, image_format, image_bytes, original_width, original_height,
caption_chars, caption_words, caption_fasttext_tokens, lang, lang_score, url_caption_sha256,
clip_score, metaclip_entries, metaclip_metadata, metaclip_matches). About 1.5% of
the rows are failed samples (null scores): half failed to download, half in image_info.
``metaclip_entries`` holds 0 to 6 sorted, distinct ids per row (mostly 0 to 3), drawn Zipf-like
over --entries ids (default 500k).

Then ``curate.select.selection.select`` runs a pipeline of DataComp basic filtering (the
``datacomp_basic`` preset), ``top_fraction`` (the top 30% by clip_score over the pool),
``exact_dedup`` and ``metaclip_balance`` (t = 20,000 per 400M rows, scaled to N) and writes the
manifest, in a fresh child process, once per ``--select-workers`` count: 1 is one partition in
that process; more are that many partitions on Ray actors (a private local Ray with that many
CPUs, ``curate.select.partitioned``). Peak RSS is reported per process: the child's own (with
its children, DuckDB included) and each partition actor's. The steps timed are the ones
``select`` reports in ``Selection.seconds``: loading the pool table, the rules, (a) the global
top-fraction threshold, exact dedup, (b) MetaCLIP pass 1 + pass 2 and (d) writing the manifest;
then (c) the funnel and drops aggregations through the run's catalogue
(``curate.audit.catalog``); with partitions, the bytes their dedup exchange sent. The first file
of the same pool (--baseline-rows, 1M) is measured first, in its own child with one partition,
as the baseline: the lines before the JSON give seconds per million rows and the ratios against
it. The last line is one JSON object: ``rows``, ``*_seconds`` per step and ``peak_rss_gib`` of
the first worker count, ``by_workers`` (the same per count) and ``baseline``.

    python benchmarks/scale.py --rows 10000000 --select-workers 1,2 --workdir /data/tmp
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate.lib.metadata import DEFAULT_METADATA, metadata_digest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SHARD_ROWS = 1_000_000
ENTRIES = 500_000
TOP_FRACTION = 0.3
T_PER_400M = 20_000  # MetaCLIP's t for a 400M pool
STEPS = ("load", "rules", "top_fraction", "exact_dedup", "metaclip_balance", "funnel_query",
         "manifest")

_WORDS = (
    "a the of and in on with at by for from to photo picture image view old new red blue "
    "green white black small large big little dog cat bird horse car truck bus train boat "
    "plane house home tree flower garden street city beach sea mountain river lake sky sun "
    "night day man woman child girl boy people family friends wedding party food cake pizza "
    "coffee table chair room kitchen bed window door book phone computer shirt dress shoes "
    "bag hat logo icon vector illustration design pattern background texture art painting "
    "drawing poster card sale free best top modern vintage retro cute funny happy beautiful "
    "summer winter spring autumn christmas birthday travel hotel restaurant shop store market "
    "park road bridge building tower church castle museum stadium game team player ball "
    "music guitar piano concert stage light lamp wall floor stone wood metal glass paper "
    "gold silver black-and-white closeup portrait landscape aerial sunset sunrise snow rain"
).split()
_LANGS = ["en", "de", "fr", "es", "it", "pt", "nl", "ru", "ja", "zh", "pl", "tr"]
_LANG_P = np.array([0.6, 0.06, 0.06, 0.06, 0.04, 0.04, 0.03, 0.03, 0.03, 0.02, 0.02, 0.01])
_HEX2 = np.array([f"{i:02x}".encode() for i in range(256)], dtype="S2")


def _hex(rng: np.random.Generator, n: int, nbytes: int) -> pa.Array:
    """``n`` random lowercase hex strings of ``2 * nbytes`` characters."""
    raw = np.frombuffer(rng.bytes(n * nbytes), dtype=np.uint8).reshape(n, nbytes)
    arr = pa.array(_HEX2[raw].view(f"S{2 * nbytes}").ravel())
    if isinstance(arr, pa.ChunkedArray):  # large byte arrays convert in chunks
        arr = arr.combine_chunks()
    return arr.cast(pa.string())


def _words(rng: np.random.Generator, n: int, lo: int, hi: int) -> pa.Array:
    """``n`` strings of ``lo`` to ``hi`` vocabulary words separated by spaces."""
    vocab = pa.array(_WORDS)
    count = rng.integers(lo, hi + 1, n)
    cols = []
    for j in range(hi):
        words = vocab.take(pa.array(rng.integers(0, len(_WORDS), n)))
        cols.append(pc.if_else(pa.array(count > j), words, pa.scalar(None, pa.string())))
    return pc.binary_join_element_wise(*cols, " ", null_handling="skip")


def _entries(rng: np.random.Generator, n: int, entries: int) -> pa.ListArray:
    """Sorted, distinct metadata entry ids per row: mostly 0-3, Zipf-like over ``entries``."""
    sizes = np.minimum(rng.geometric(0.45, n) - 1, 6)
    rows = np.repeat(np.arange(n, dtype=np.int64), sizes)
    ids = (rng.zipf(1.25, len(rows)) - 1) % entries
    key = np.unique(rows * (1 << 32) + ids)
    rows, ids = key >> 32, (key & 0xFFFFFFFF).astype(np.int32)
    offsets = np.searchsorted(rows, np.arange(n + 1)).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(ids))


def make_shard(store_dir: Path, shard: int, n: int, entries: int = ENTRIES, seed: int = 0,
               ) -> Path:
    """One shard of ``n`` rows in the store at ``store_dir``; its content depends on (seed,
    shard, n) only. Returns its base file."""
    rng = np.random.default_rng([seed, shard])
    name = f"{shard:05d}.tar"
    index = np.arange(n, dtype=np.int32)
    keys = pc.binary_join_element_wise(f"{shard:05d}", pc.utf8_lpad(
        pa.array(index).cast(pa.string()), 6, "0"), "")
    caption = _words(rng, n, 2, 14)
    domains = pa.array([f"https://img{i}.example{i % 7}.com/" for i in range(50)])
    url = pc.binary_join_element_wise(domains.take(pa.array(rng.integers(0, 50, n))),
                                      _hex(rng, n, 6), "/", _words(rng, n, 1, 3),
                                      ".jpg", "")
    failed = rng.random(n) < 0.015
    ok = pa.array(~failed)
    stage = pa.array(np.where(rng.random(n) < 0.5, "download", "image_info"))
    null_s = pa.scalar(None, pa.string())

    def scored(values: np.ndarray, t: pa.DataType) -> pa.Array:
        return pa.array(values, t, mask=failed)

    width = np.clip(rng.lognormal(6.2, 0.6, n), 16, 8000).astype(np.int32)
    height = np.clip(width / rng.lognormal(0.15, 0.4, n), 16, 8000).astype(np.int32)
    n_words = pc.list_value_length(pc.split_pattern(caption, " "))
    lang = pa.array(np.array(_LANGS)[rng.choice(len(_LANGS), n, p=_LANG_P)])
    image_sha = _hex(rng, n, 32)
    dup = np.flatnonzero(rng.random(n) < 0.02)  # exact duplicate images
    if len(dup):
        image_sha = pc.replace_with_mask(image_sha, pa.array(np.isin(index, dup)),
                                         image_sha.take(pa.array(rng.integers(0, n, len(dup)))))
    no_original = rng.random(n) < 0.5  # the json of about half the rows has no size
    clip = rng.normal(0.30, 0.06, n).astype(np.float32)
    metaclip = _entries(rng, n, entries)
    table = pa.table({
        "uid": _hex(rng, n, 16),
        "shard": pa.array([name] * n) if n else pa.array([], pa.string()),
        "key": keys,
        "index": pa.array(index),
        "image_member": pc.if_else(ok, "jpg", null_s),
        "url": url,
        "caption": caption,
        "status": pc.if_else(ok, "ok", "error"),
        "error_stage": pc.if_else(ok, null_s, stage),
        "error": pc.if_else(ok, null_s, pc.binary_join_element_wise(
            stage, "failed: synthetic error", ": ")),
        "width": scored(width, pa.int32()),
        "height": scored(height, pa.int32()),
        "aspect_ratio": scored((np.maximum(width, height) / np.minimum(width, height)).astype(
            np.float32), pa.float32()),
        "image_format": pc.if_else(ok, pa.array(np.where(rng.random(n) < 0.8, "JPEG", "PNG")),
                                   null_s),
        "image_bytes": scored(width.astype(np.int64) * height // 7, pa.int64()),
        # img2dataset's json sizes before resizing: present for about half the rows
        "original_width": pa.array(width * 2, pa.int32(), mask=failed | no_original),
        "original_height": pa.array(height * 2, pa.int32(), mask=failed | no_original),
        "caption_chars": pc.if_else(ok, pc.utf8_length(caption), pa.scalar(None, pa.int32())),
        "caption_words": pc.if_else(ok, n_words.cast(pa.int32()), pa.scalar(None, pa.int32())),
        # single spaces, no newline: fasttext's tokens are the words
        "caption_fasttext_tokens": pc.if_else(ok, n_words.cast(pa.int32()),
                                              pa.scalar(None, pa.int32())),
        "lang": pc.if_else(ok, lang, null_s),
        "lang_score": scored(rng.uniform(0.3, 1.0, n).astype(np.float32), pa.float32()),
        "image_sha256": pc.if_else(ok, image_sha, null_s),
        "url_caption_sha256": pc.if_else(ok, _hex(rng, n, 32), null_s),
        "clip_score": scored(clip, pa.float32()),
        "metaclip_entries": pc.if_else(ok, metaclip, pa.scalar(None, metaclip.type)),
        "metaclip_metadata": pc.if_else(ok, metadata_digest(DEFAULT_METADATA), null_s),
        "metaclip_matches": scored(np.diff(metaclip.offsets.to_numpy()).astype(np.int32),
                                   pa.int32()),
    })
    return _write_store_shard(store_dir, name, table)


def _digest(name: str) -> str:
    import hashlib

    return hashlib.sha256(f"synthetic {name}".encode()).hexdigest()


def _write_store_shard(store_dir: Path, name: str, table: pa.Table) -> Path:
    """Split one shard's table into the store's base file and one file per scorer."""
    from curate.schema import SAMPLE_COLUMNS
    from curate.score.plan import reader_fingerprint
    from curate.store.store import ERROR, STATUS, Store, shard_key

    store = Store(store_dir)
    reader = reader_fingerprint()
    key, digest = shard_key(name), _digest(name)
    stage = table.column("error_stage")
    download = pc.fill_null(pc.equal(stage, "download"), False)
    image = pc.fill_null(pc.equal(stage, "image_info"), False)
    null_s = pa.scalar(None, pa.string())
    base = table.select(list(SAMPLE_COLUMNS)).cast(pa.schema(SAMPLE_COLUMNS))
    base = base.set_column(base.schema.get_field_index("status"), "status",
                           pc.if_else(download, "error", "ok"))
    base = base.set_column(base.schema.get_field_index("error_stage"), "error_stage",
                           pc.if_else(download, stage, null_s))
    base = base.set_column(base.schema.get_field_index("error"), "error",
                           pc.if_else(download, table.column("error"), null_s))
    path = store.dir.local_path(Store.base_name(reader, key, digest))
    assert path is not None
    store.dir.write_parquet(Store.base_name(reader, key, digest), base)
    for v in _versions():
        if v.label == "image_info":
            status = pc.if_else(download, "skipped", pc.if_else(image, "error", "ok"))
            error = pc.if_else(image, table.column("error"), null_s)
        else:
            status = pc.if_else(pc.or_(download, image), "skipped", "ok")
            error = pa.nulls(table.num_rows, pa.string())
        cols = {STATUS: status, ERROR: error}
        cols.update({f.name: table.column(f.name).cast(f.type) for f in v.schema})
        store.dir.write_parquet(Store.score_name(v.label, v.version, key, digest),
                                pa.table(cols))
    return path


def _versions() -> list[Any]:
    from curate.score.plan import reader_fingerprint, scorer_versions

    reader = reader_fingerprint()
    # The pool holds no embedding files (the selection reads none), so no version claims any:
    # a store's readers check that every embedding file a scorer claims is there.
    return [dataclasses.replace(v.record(reader), sidecars={})
            for v in scorer_versions(pipeline(1).scorer_stages(), reader)]


def _make_shard_args(args: tuple[Path, int, int, int]) -> Path:
    return make_shard(*args)


def make_pool(store_dir: Path, rows: int, shard_rows: int = SHARD_ROWS, entries: int = ENTRIES,
              workers: int = 1) -> list[Path]:
    """Write ``rows`` rows as shards of ``shard_rows`` into a store at ``store_dir``; returns
    the shards' base files in pool order."""
    from curate.score.plan import reader_fingerprint
    from curate.store.store import PoolShard, Store

    jobs = [(store_dir, s, min(shard_rows, rows - start), entries)
            for s, start in enumerate(range(0, rows, shard_rows))]
    if workers <= 1:
        files = [_make_shard_args(j) for j in jobs]
    else:
        from multiprocessing import get_context

        with get_context("spawn").Pool(workers) as pool:
            files = list(pool.imap(_make_shard_args, jobs))
    store = Store(store_dir)
    store.register(_versions(), reader_fingerprint(), None)
    store.write_pool([PoolShard(shard=f"{s:05d}.tar", url=f"/synthetic/{s:05d}.tar",
                                stamp="synthetic", digest=_digest(f"{s:05d}.tar"), samples=n)
                      for _, s, n, _ in jobs])
    return files


# --- measuring (in a fresh child process per size) ------------------------------------------


def pipeline(rows: int) -> Any:
    """DataComp basic filtering, the top 30% by clip_score, exact dedup, then MetaCLIP
    balancing."""
    from curate.config import pipeline_from_dict

    t = max(1, round(T_PER_400M * rows / 400e6))
    return pipeline_from_dict({
        "name": "scale", "input": {"shards": "unused"},
        "score": ["image_info", "caption_stats", "language", "exact_hash", "clip",
                  "metaclip_match"],
        "select": [{"preset": "datacomp_basic"},
                   {"rule": "top_fraction", "column": "clip_score", "fraction": TOP_FRACTION,
                    "reason": "clip_score_not_top"},
                   {"selector": "exact_dedup"},
                   {"selector": "metaclip_balance", "t": t}]})


def _peak_gib() -> float:
    """Peak RSS of this process or of any of its finished children, in GiB (Linux: KiB)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, children) / 2**20


def measure(store_dir: Path, shards: int, run_dir: Path, workers: int = 1) -> dict[str, Any]:
    """Select over the first ``shards`` shards of the store into ``run_dir`` in ``workers``
    partitions (on Ray when more than 1), then query its funnel; seconds per step."""
    import duckdb

    from curate.audit.catalog import VIEWS
    from curate.io.atomic import write_parquet
    from curate.select.pool import PoolSource
    from curate.select.selection import memory_limit, select
    from curate.sql import literal
    from curate.store.store import Store

    store = Store(store_dir)
    pool = store.pool()[:shards]
    rows = sum(s.samples or 0 for s in pool)
    p = pipeline(rows)
    top = next(s.stage.reason for s in p.select if s.stage.name == "top_fraction")
    if workers > 1:
        import ray

        ray.init(address="local", num_cpus=workers, include_dashboard=False,
                 logging_level="ERROR")
    t0 = time.perf_counter()
    sel = select(p.select, PoolSource.of(store, pool=pool), run_dir, workers=workers,
                 on_ray=workers > 1)
    select_s = time.perf_counter() - t0
    sec = sel.seconds
    out: dict[str, Any] = {
        "rows": sel.samples, "kept": sel.kept,
        "load_seconds": sec["load"],
        "rules_seconds": round(sum(v for k, v in sec.items() if k not in {
            "load", top, "exact_dedup", "metaclip_balance", "count", "manifest", "shards"}), 3),
        "top_fraction_seconds": sec[top],
        "exact_dedup_seconds": sec["exact_dedup"],
        "metaclip_seconds": sec["metaclip_balance"],
        "manifest_seconds": sec["manifest"],
        "select_seconds": round(select_s, 3),
        "peak_rss_gib_select": round(_peak_gib(), 3),
        "workers": workers, "partitions": sel.partitions,
        "partition_peak_rss_gib": [round(w["peak_rss_gib"], 3) for w in sel.partition_stats],
        "partition_peak_after": [w.get("peak_after", {}) for w in sel.partition_stats],
        "bytes_shuffled": sum(w["bytes_shuffled"] for w in sel.partition_stats),
    }
    remaining, funnel = sel.samples, []
    for i, f in enumerate(sel.funnel):
        remaining -= f.dropped
        funnel.append({"step": i + 1, "stage": f.stage, "reason": f.reason,
                       "dropped": f.dropped, "remaining": remaining})
    write_parquet(pa.Table.from_pylist(funnel, schema=pa.schema({
        "step": pa.int32(), "stage": pa.string(), "reason": pa.string(),
        "dropped": pa.int64(), "remaining": pa.int64()})), run_dir / "funnel.parquet")

    # (c) the funnel through the catalogue's own view definitions: drops per step, and kept.
    con = duckdb.connect()
    con.execute(f"SET file_search_path = {literal(str(run_dir))}")
    for name in ("manifest", "funnel", "kept", "drops"):
        con.execute(f"CREATE VIEW {name} AS {VIEWS[name]}")
    t0 = time.perf_counter()
    steps = con.sql("""
        SELECT f.step, f.reason, f.dropped, coalesce(d.n, 0) AS counted
        FROM funnel f LEFT JOIN (SELECT stage, reason, count(*) AS n FROM drops
                                 GROUP BY ALL) d USING (reason)
        ORDER BY f.step""").fetchall()
    kept, total = con.sql("SELECT count(*) FILTER (WHERE kept), count(*) FROM manifest"
                          ).fetchall()[0]
    out["funnel_query_seconds"] = round(time.perf_counter() - t0, 3)
    con.close()
    out["funnel_matches_manifest"] = bool(
        all(d == n for _, _, d, n in steps) and kept == sel.kept and total == sel.samples)
    out["funnel"] = {r: d for _, r, d, _ in steps}
    out["manifest_gib"] = round(sum(f.stat().st_size for f in (run_dir / "manifest").iterdir())
                                / 2**30, 3)
    out["duckdb_memory_limit"] = memory_limit()
    out["peak_rss_gib"] = round(_peak_gib(), 3)
    return out


def run_child(store_dir: Path, shards: int, run_dir: Path, workers: int = 1) -> dict[str, Any]:
    """``measure`` in a fresh interpreter, so its peak RSS is its own."""
    proc = subprocess.run([sys.executable, __file__, "--child", str(store_dir), str(shards),
                           str(run_dir), str(workers)], capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(f"measuring {run_dir.name} failed (exit {proc.returncode})")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _report(base: dict[str, Any] | None, big: dict[str, Any]) -> None:
    label = {"load": "load the store into DuckDB", "rules": "uid/error checks + 5 basic rules",
             "top_fraction": "(a) top_fraction threshold", "exact_dedup": "exact dedup",
             "metaclip": "(b) MetaCLIP pass 1+2",
             "funnel_query": "(c) funnel/drops query", "manifest": "(d) write manifest",
             "select": "select() in all"}
    n_big = big["rows"] / 1e6
    if base is None:
        print(f"{'step':34} {'seconds':>9} {'s/M rows':>9}")
    else:
        n_base = base["rows"] / 1e6
        print(f"{'step':34} {f'{n_base:g}M s':>9} {f'{n_big:g}M s':>9} "
              f"{'s/M rows':>17} {'ratio':>6}")
    for step, text in label.items():
        s_big = big[f"{step}_seconds"]
        if base is None:
            print(f"{text:34} {s_big:9.1f} {s_big / n_big:9.2f}")
            continue
        s_base = base[f"{step}_seconds"]
        per_base, per_big = s_base / n_base, s_big / n_big
        ratio = per_big / per_base if per_base else float("nan")
        print(f"{text:34} {s_base:9.1f} {s_big:9.1f} {per_base:7.2f} -> {per_big:6.2f} "
              f"{ratio:6.2f}")
    if big.get("workers", 1) > 1:
        print(f"{big['partitions']} partitions on Ray: peak RSS per partition actor "
              f"{', '.join(f'{g:.2f}' for g in big['partition_peak_rss_gib'])} GiB; "
              f"{big['bytes_shuffled'] / 2**20:.0f} MiB exchanged by the dedup steps")
        for k, after in enumerate(big.get("partition_peak_after", [])):
            print(f"  partition {k}: peak RSS (GiB) after each step: "
                  + ", ".join(f"{step} {gib:.2f}" for step, gib in after.items()))
    if base is not None:
        growth = big["peak_rss_gib"] / base["peak_rss_gib"]
        print(f"peak RSS: {base['peak_rss_gib']:.2f} GiB at {base['rows']:,} rows, "
              f"{big['peak_rss_gib']:.2f} GiB at {big['rows']:,} rows: x{growth:.2f} for "
              f"x{big['rows'] / base['rows']:.0f} rows")
    else:
        print(f"peak RSS: {big['peak_rss_gib']:.2f} GiB at {big['rows']:,} rows")
    print(f"kept {big['kept']:,} of {big['rows']:,}; funnel matches the manifest: "
          f"{big['funnel_matches_manifest']}; manifest {big['manifest_gib']:.2f} GiB; "
          f"DuckDB memory_limit {big['duckdb_memory_limit']}")


def main() -> None:
    if len(sys.argv) == 6 and sys.argv[1] == "--child":
        print(json.dumps(measure(Path(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4]),
                                 int(sys.argv[5]))))
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=100_000_000)
    ap.add_argument("--shard-rows", type=int, default=SHARD_ROWS, help="rows per shard")
    ap.add_argument("--baseline-rows", type=int, default=SHARD_ROWS,
                    help="measured first, on the first files of the same pool")
    ap.add_argument("--entries", type=int, default=ENTRIES, help="MetaCLIP metadata entries")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                    help="processes generating the pool")
    ap.add_argument("--select-workers", default="1",
                    help="comma-separated partition counts to select with (1: in-process; "
                    "more: Ray actors), each in its own child, e.g. 1,2")
    ap.add_argument("--workdir", type=Path, default=None,
                    help="where the pool and runs go (a temporary directory inside it)")
    ap.add_argument("--keep", action="store_true", help="keep the generated pool and runs")
    args = ap.parse_args()
    if args.rows < 1 or args.shard_rows < 1:
        ap.error("--rows and --shard-rows must be positive")
    try:
        counts = [int(w) for w in args.select_workers.split(",")]
    except ValueError:
        counts = []
    if not counts or min(counts) < 1:
        ap.error("--select-workers: positive integers separated by commas, e.g. 1,2")
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="curate-scale-", dir=args.workdir))
    try:
        t0 = time.perf_counter()
        files = make_pool(work / "store", args.rows, args.shard_rows, args.entries,
                          args.workers)
        gen_s = time.perf_counter() - t0
        size = sum(f.stat().st_size for f in (work / "store").rglob("*.parquet"))
        print(f"generated {args.rows:,} rows in {len(files)} shards of a store "
              f"({size / 2**30:.2f} GiB) in {gen_s:.0f} s", flush=True)
        base = None
        n_base = max(1, args.baseline_rows // args.shard_rows)
        if n_base < len(files):
            base = run_child(work / "store", n_base, work / "run-baseline")
            print(f"baseline {base['rows']:,} rows: select {base['select_seconds']:.1f} s, "
                  f"peak RSS {base['peak_rss_gib']:.2f} GiB", flush=True)
            if not args.keep:
                shutil.rmtree(work / "run-baseline")
        by_workers: dict[str, Any] = {}
        for w in counts:
            one = run_child(work / "store", len(files), work / f"run-{w}", w)
            print(f"--- {w} worker{'s' if w > 1 else ''}: load average (1 min) after the run: "
                  f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
            _report(base, one)
            by_workers[str(w)] = {k: v for k, v in one.items() if k != "funnel"}
            if not args.keep and w != counts[-1]:
                shutil.rmtree(work / f"run-{w}")
        if len(counts) > 1:
            first = by_workers[str(counts[0])]
            for w in counts[1:]:
                other = by_workers[str(w)]
                print(f"select() with {w} workers: {other['select_seconds']:.1f} s, "
                      f"{first['select_seconds'] / other['select_seconds']:.2f}x the speed "
                      f"of {counts[0]}; same kept: {other['kept'] == first['kept']}")
        big = by_workers[str(counts[0])]
        result = {k: v for k, v in big.items() if k != "funnel"}
        result["by_workers"] = by_workers
        result.update({"generate_seconds": round(gen_s, 1), "store_gib": round(size / 2**30, 3),
                       "baseline": None if base is None else {
                           k: v for k, v in base.items() if k != "funnel"}})
        if args.keep:
            result["run_dir"] = str(work / f"run-{counts[-1]}")
        print(json.dumps(result))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
