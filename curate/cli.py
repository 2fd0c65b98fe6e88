"""The ``curate`` command line. Errors print as one line plus a hint, never a traceback
(``--debug`` shows it)."""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from curate import __version__
from curate.errors import CurateError, ShardFailed


def _cmd_demo_data(args: argparse.Namespace) -> int:
    from curate.demo.generator import make_demo_pool

    pool = make_demo_pool(args.out, seed=args.seed, shards=args.shards,
                          samples_per_shard=args.per_shard, trusted=args.trusted)
    print(f"wrote {pool.samples} samples in {len(pool.shards)} shards to {pool.out_dir}")
    print("kinds: " + ", ".join(f"{k} {v}" for k, v in sorted(pool.kinds.items())))
    print(f"ground truth: {pool.out_dir / 'ground_truth.parquet'}")
    return 0


def _cmd_train_filter(args: argparse.Namespace) -> int:
    from curate.lib.train_filter import TrainConfig, train_filter

    cfg = TrainConfig(data=args.data, out=args.out, model=args.model, pretrained=args.pretrained,
                      epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                      max_seconds=args.max_seconds, seed=args.seed, device=args.device,
                      workers=args.workers)
    r = train_filter(cfg)
    print(f"trained {args.model} on {r.samples} trusted samples: {r.steps} steps "
          f"({r.epochs_run:.1f} epochs) in {r.seconds:.0f}s, loss {r.first_loss:.3f} → "
          f"{r.last_loss:.3f}")
    print(f"filter network in {r.out}: score with `- clip: {{model: {r.out}, pretrained: null}}`")
    return 0


def _cmd_demo_rewriter(args: argparse.Namespace) -> int:
    from curate.demo.rewriter import make_demo_rewriter

    r = make_demo_rewriter(args.out, seed=args.seed, train_seconds=args.train_seconds,
                           max_steps=args.max_steps)
    trained = (f"trained {r.steps} steps, loss {r.first_loss:.2f} → {r.last_loss:.2f}"
               if r.steps else "random weights (untrained)")
    print(f"demo rewriter ({r.parameters / 1e6:.1f}M parameters, {trained}) in {r.out}, "
          f"{r.seconds:.0f}s")
    print(f"use it with `rewrite: {{backend: transformers, model: {r.out}}}`")
    return 0


def _overrides(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    overrides: dict[str, dict[str, Any]] = {}
    if getattr(args, "input", None):
        key = "urls" if args.input.endswith((".parquet", ".csv", ".tsv", ".txt", ".json")) \
            else "shards"
        overrides["input"] = {key: args.input}
    if getattr(args, "workers", None):
        overrides["run"] = {"workers": args.workers}
    if getattr(args, "write_shards", False):
        overrides["output"] = {"write_shards": True}
    return overrides


def _cmd_run(args: argparse.Namespace) -> int:
    from curate.config import load_pipeline
    from curate.runner import run

    pipeline = load_pipeline(args.pipeline, _overrides(args))
    if args.store:
        pipeline.store = args.store
    out = args.out or str(Path("runs") / pipeline.name)
    if args.dry_run:
        return _print_plan(pipeline, out, args.name)
    result = run(pipeline, out, address=args.address, progress=not args.no_progress,
                 name=args.name)
    assert result.scoring is not None
    _print_scoring(result.scoring)
    print(f"selection {result.dir.name}: {result.samples} samples in {result.shards} shards "
          f"in {result.seconds:.1f}s")
    _print_funnel(result.samples, result.funnel, result.kept)
    if result.rewrite is not None:
        _print_rewrites(result.rewrite)
    if result.recaption is not None:
        _print_recaptions(result.recaption)
    _print_where(result.dir, result.output_dir, result.output_shards)
    return 0


def _print_scoring(s: Any) -> None:
    """Per scorer, the shards this pass computed and the shards it reused from the store."""
    print(f"store {s.store}: {s.shards} shards, {s.samples} samples, scored in {s.seconds:.1f}s")
    width = max([len(k) for k, *_ in s.table()] + [8]) + 2
    print(f"  {'scorer':<{width}}{'computed':>9}{'reused':>8}")
    for name, computed, reused in s.table():
        print(f"  {name:<{width}}{computed:>9}{reused:>8}")
    if s.damaged:
        print(f"  {len(s.damaged)} damaged store file{'s were' if len(s.damaged) > 1 else ' was'} "
              "recomputed (see the warnings)")
    if s.changed:
        print(f"  {len(s.changed)} shards changed since they were scored, and were scored "
              f"anew: {', '.join(s.changed[:5])}{' ...' if len(s.changed) > 5 else ''}")


def _print_where(sel_dir: Path, output_dir: str, output_shards: int) -> None:
    print(f"results in {sel_dir}")
    print(f"  manifest:  {sel_dir / 'manifest'}/ (Parquet, one table)")
    if output_shards:
        print(f"  shards:    {output_dir} ({output_shards} tar files)")
    else:
        print(f"  shards:    none written (a selection is a query); write them with: "
              f"curate write {sel_dir}")
    print(f"  query:     curate query {sel_dir} \"select reason, count(*) from manifest group "
          "by 1\"")


def _cmd_score(args: argparse.Namespace) -> int:
    from curate.config import load_pipeline
    from curate.runner import score

    pipeline = load_pipeline(args.pipeline, _overrides(args))
    store = args.store or pipeline.store
    if store is None:
        raise CurateError("no store to score into", "pass --store DIR (a path or a URL), or "
                          "give the pipeline a `store:`")
    result = score(pipeline, store, address=args.address, progress=not args.no_progress)
    _print_scoring(result)
    print(f"select from it: curate select {result.store} SELECTION.yaml --out DIR")
    return 0


def _cmd_select(args: argparse.Namespace) -> int:
    from curate.config import load_selection
    from curate.runner import select

    selection = load_selection(args.selection)
    if args.name:
        selection.name = args.name
    if args.write_shards:
        selection.output = selection.output.model_copy(update={"write_shards": True})
    result = select(args.store, selection, args.out, address=args.address,
                    progress=not args.no_progress, workers=args.workers)
    print(f"selection {selection.name} of {result.store}: {result.samples} samples in "
          f"{result.shards} shards in {result.seconds:.1f}s (no scoring)")
    _print_funnel(result.samples, result.funnel, result.kept)
    if result.rewrite is not None:
        _print_rewrites(result.rewrite)
    if result.recaption is not None:
        _print_recaptions(result.recaption)
    _print_where(result.dir, result.output_dir, result.output_shards)
    return 0


def _cmd_write(args: argparse.Namespace) -> int:
    from curate.runner import write

    result = write(args.selection, dir=args.dir, samples_per_shard=args.samples_per_shard,
                   address=args.address, progress=not args.no_progress)
    print(f"wrote the {result.samples} kept samples of {result.dir} into {result.shards} "
          f"shards in {result.output_dir} ({result.seconds:.1f}s)")
    return 0


def _cmd_store(args: argparse.Namespace) -> int:
    from curate.store.store import Store

    words = list(args.words)
    if len(words) == 2 and words[0] == "verify":
        return _store_verify(Store(words[1]), args.repair, not args.no_progress)
    if len(words) != 1:
        raise CurateError(f"curate store takes a store, or `verify` and a store (got: "
                          f"{' '.join(words)})", "curate store STORE, or curate store verify "
                          "STORE [--repair]")
    if args.repair:
        raise CurateError("--repair goes with `curate store verify`",
                          f"curate store verify {words[0]} --repair")
    args.store = words[0]
    store = Store(args.store)
    if not store.exists():
        raise CurateError(f"{args.store} is not a store (no store.json)",
                          "score into it first: curate score PIPELINE.yaml --store DIR")
    meta = store.meta()
    pool = store.pool()
    failed = sum(1 for s in pool if s.status == "failed")
    print(f"store {store.location}: {len(pool)} shards ({failed} failed), "
          f"{sum(s.samples or 0 for s in pool)} samples")
    for label in meta.order:
        entry = meta.scorers[label]
        for version, d in sorted(entry["versions"].items(), key=lambda kv: kv[1].get(
                "first_scored", "")):
            mark = "*" if version == entry["current"] else " "
            have = store.stored(f"scores/{label}/{version}")
            n = sum(1 for s in pool if s.digest in have.get(s.key, set()))
            params = ", ".join(f"{k}={v!r}" for k, v in d["params"].items())
            print(f" {mark} {label:<20} {version}  {n}/{len(pool)} shards  {params}")
    print("(* = current version: what `curate select` uses unless the selection names others)")
    return 0


def _store_verify(store: Any, repair: bool, progress: bool) -> int:
    from curate.io.rundir import writing_into
    from curate.runtime import Progress
    from curate.store.verify import verify_store

    if not store.exists() and not store.dir.isfile("pool.parquet"):
        raise CurateError(f"{store.location} is not a store (no store.json)",
                          "give the directory a `curate score` wrote into")
    bar: list[Any] = []

    def done(n: int, total: int) -> None:
        if not bar:
            bar.append(Progress(total, "verifying", progress, unit="file set"))
        bar[0].update()

    if repair:
        with writing_into(Path(store.location), "the store", "repair a writable copy, or "
                          "ask the store's owner to run curate store verify --repair"):
            found = verify_store(store, repair=True, done=done)
    else:
        found = verify_store(store, done=done)
    if bar:
        bar[0].close()
    for line in found.records:
        print(f"damaged: {line}")
    for d in found.damage:
        print(f"damaged: {d.line()}")
    print(f"store {store.location}: {found.files} files of {found.shards} shard contents "
          f"checked; {len(found.damage) + len(found.records)} damaged")
    if repair:
        for name in found.removed:
            print(f"removed: {name}")
        if found.removed:
            print("run the `curate score` (or `curate run`) command that filled the store "
                  "again: it recomputes what was removed")
        return 0
    if found.damage or found.records:
        print(f"repair: curate store verify --repair {store.location}, then the `curate "
              "score` command that filled the store")
        return 1
    return 0


def _print_funnel(samples: int, funnel: Sequence[tuple[str, int]], kept: int) -> None:
    width = max([len(r) for r, _ in funnel] + [12]) + 4
    print(f"{'samples in':<{width}}{samples:>9}")
    for reason, n in funnel:
        share = f"{100 * n / samples:5.1f}%" if samples else ""
        print(f"  - {reason:<{width - 4}}{n:>9}  {share}")
    share = f"{100 * kept / samples:5.1f}%" if samples else ""
    print(f"{'kept':<{width}}{kept:>9}  {share}")


def _print_rewrites(rw: dict[str, Any]) -> None:
    print(f"rewrites: {rw['requested']} asked for {rw['captions']} kept captions: {rw['ok']} ok, "
          f"{rw['rejected']} rejected, {rw['errors']} backend errors, {rw['skipped']} skipped")
    if rw["reasons"]:
        print("  not ok: " + ", ".join(f"{k} {v}" for k, v in rw["reasons"].items()))
    speed = f" at {rw['generated_per_s']:.1f} captions/s" if rw["generated"] else ""
    print(f"  generated {rw['generated']}{speed}, {rw['cache_hits']} from the cache")


def _print_recaptions(rc: dict[str, Any]) -> None:
    print(f"synthetic captions: {rc['requested']} asked for {rc['images']} kept images: "
          f"{rc['ok']} ok, {rc['rejected']} rejected, {rc['errors']} backend errors, "
          f"{rc['skipped']} skipped")
    if rc["reasons"]:
        print("  not ok: " + ", ".join(f"{k} {v}" for k, v in rc["reasons"].items()))
    speed = f" at {rc['generated_per_s']:.1f} captions/s" if rc["generated"] else ""
    print(f"  generated {rc['generated']}{speed}, {rc['cache_hits']} from the cache")
    signals = (f"from the stored embeddings of {rc['signals']}" if rc.get("signals") else
               "not computed (no clip scorer with stored embeddings)")
    print(f"  syn_image_sim, syn_text_sim: {signals}")


def _cmd_diff(args: argparse.Namespace) -> int:
    from curate.audit.diff import diff_runs, format_diff

    print(format_diff(diff_runs(args.run_a, args.run_b, args.out)))
    if args.out:
        print(f"per-sample differences: {args.out}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from curate.write import export

    fn = {"datacomp": export.export_datacomp, "uids": export.export_uids,
          "parquet": export.export_parquet}[args.format]
    n = fn(args.run_dir, args.out)
    print(f"exported {n} kept samples ({args.format}) to {args.out}")
    return 0


def _cmd_reshard(args: argparse.Namespace) -> int:
    from curate.write.export import read_uids, reshard

    if (args.run is None) == (args.pool is None):
        raise CurateError("give exactly one of --run (locate samples by its manifest) or "
                          "--pool (read the shards once)")
    uids = read_uids(args.uids)
    r = reshard(uids, args.out, run_dir=args.run, pool=args.pool,
                samples_per_shard=args.samples_per_shard, blur_faces=args.blur_faces,
                blur_quality=args.blur_quality)
    print(f"wrote {r.written} of {r.wanted} samples in {r.shards} shards to {r.out}")
    if r.missing:
        print(f"{len(r.missing)} uids are not in the pool: {r.out / 'missing_uids.txt'}")
    return 0


def _cmd_stats(args: argparse.Namespace) -> int:
    from curate.audit.catalog import resolve_selection

    sel = resolve_selection(args.run_dir, "stats.json")
    stats = json.loads((sel / "stats.json").read_text())
    if args.json:
        print(json.dumps(stats, indent=1))
        return 0
    print(f"selection {sel} (of the store {stats['store']}), {stats['shards']} shards")
    runs = _invocations(sel)
    last = f"the last invocation (of {runs} in its log.jsonl)" if runs > 1 else \
        "its one invocation"
    line = f"  {last}: selection {stats['seconds']:.1f}s"
    scoring = stats.get("scoring")
    if scoring:
        done = ", ".join(f"{k} {v}" for k, v in scoring["computed"].items() if v)
        line += f", scoring {scoring['seconds']:.1f}s (shards computed: {done or 'none'})"
    print(line)
    work = sum(float(c["seconds"]) for c in stats["stages"].values())
    print(f"  stored scores: {work:.1f}s of scorer compute for these shards (without start-up), "
          "summed over every invocation that computed them (per stage below)")
    _print_funnel(stats["samples"], [(f["reason"], f["dropped"]) for f in stats["funnel"]],
                  stats["kept"])
    if "rewrite" in stats:
        _print_rewrites(stats["rewrite"])
    if "recaption" in stats:
        _print_recaptions(stats["recaption"])
    print("\nstage           samples   errors   seconds")
    for name, c in stats["stages"].items():
        print(f"{name:<14}{c['samples']:>9}{c['errors']:>9}{c['seconds']:>10.2f}")
    return 0


def _invocations(sel: Path) -> int:
    """How many times the selection in ``sel`` was started (its log's ``select_start``)."""
    try:
        with open(sel / "log.jsonl", encoding="utf-8") as f:
            return sum('"event": "select_start"' in line for line in f)
    except (OSError, UnicodeDecodeError):
        return 1


def _cmd_query(args: argparse.Namespace) -> int:
    import duckdb

    from curate.audit.catalog import open_catalog
    from curate.config import duckdb_message

    con = open_catalog(args.run_dir)
    try:
        cur = con.execute(args.sql)
    except duckdb.Error as exc:
        raise CurateError(f"query failed: {duckdb_message(exc)}",
                          "views: manifest, kept, drops, signals, shards, funnel, stages, "
                          "rewrites, entry_counts "
                          "(try: curate query SEL \"describe manifest\")") from exc
    if cur.description is None:
        return 0
    names = [d[0] for d in cur.description]
    limit = args.max_rows if args.max_rows is not None else (
        QUERY_TABLE_ROWS if args.format == "table" else 0)
    rows = cur.fetchmany(limit + 1) if limit else cur.fetchall()
    more = bool(limit) and len(rows) > limit
    rows = rows[:limit] if limit else rows
    if args.format == "csv":
        w = csv.writer(sys.stdout)
        w.writerow(names)
        w.writerows(rows)
    elif args.format == "json":
        for r in rows:
            print(json.dumps(dict(zip(names, r, strict=True)), default=str))
    else:
        print(_table(names, rows))
        if more:
            print(f"(first {limit} rows; --max-rows 0 for all)")
    if more and args.format != "table":
        print(f"curate query: printed the first {limit} rows (--max-rows {limit}); "
              "--max-rows 0 for all", file=sys.stderr)
    return 0


QUERY_TABLE_ROWS = 100  # rows `curate query` prints as a table unless --max-rows says otherwise


def _table(names: list[str], rows: list[tuple[Any, ...]]) -> str:
    def cell(v: Any) -> str:
        s = "NULL" if v is None else str(v)
        s = s.replace("\n", " ")
        return s if len(s) <= 60 else s[:59] + "…"

    cells = [[cell(v) for v in r] for r in rows]
    widths = [max([len(n)] + [len(r[i]) for r in cells]) for i, n in enumerate(names)]
    numeric = [all(isinstance(r[i], (int, float)) or r[i] is None for r in rows) and bool(rows)
               for i in range(len(names))]

    def line(vals: list[str]) -> str:
        return " | ".join(v.rjust(w) if num else v.ljust(w)
                          for v, w, num in zip(vals, widths, numeric, strict=True)).rstrip()

    out = [line(names), "-+-".join("-" * w for w in widths)]
    out += [line(r) for r in cells]
    out.append(f"({len(rows)} row{'s' if len(rows) != 1 else ''})")
    return "\n".join(out)


def _cmd_stages(args: argparse.Namespace) -> int:
    from curate.plugins import load
    from curate.stage_info import describe, listing

    for spec in args.imports or ():
        load(spec)
    print(describe(args.name) if args.name else listing())
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    from curate.config import load_pipeline

    pipeline = load_pipeline(args.pipeline, _overrides(args))
    if args.store:
        pipeline.store = args.store
    return _print_plan(pipeline, args.out or str(Path("runs") / pipeline.name), args.name)


def _print_plan(pipeline: Any, out: str, name: str | None) -> int:
    """``curate validate`` and ``curate run --dry-run``: the plan, without Ray or writes."""
    from curate.runner import default_store, selection_dir
    from curate.validate import dry_run

    plan = dry_run(pipeline, default_store(pipeline, out),
                   selection_dir(out, name or pipeline.name))
    print(plan.format())
    return 0


def _cmd_metadata_build(args: argparse.Namespace) -> int:
    from curate.lib.metadata import UNIGRAM_MIN_COUNT, build_metadata

    if args.min_count is not None and args.unigrams is None:
        raise CurateError("--min-count applies to --unigrams, which was not given",
                          "pass --unigrams FILE (lines 'word<TAB>count') or drop --min-count")
    r = build_metadata(args.out, wordnet_dir=args.wordnet_dir, unigrams=args.unigrams,
                       min_count=UNIGRAM_MIN_COUNT if args.min_count is None else args.min_count,
                       bigrams=args.bigrams, titles=args.titles)
    version = f"WordNet {r.wordnet_version}" if r.wordnet_version else "WordNet"
    print(f"wrote {r.total} metadata entries to {r.out} ({version} from {args.wordnet_dir})")
    print(f"  {'source':<10}{'given':>9}{'kept':>9}{'new':>9}")
    for c in r.sources:
        print(f"  {c.name:<10}{c.given:>9}{c.kept:>9}{c.added:>9}")
    print(f"  {r.unmatchable} entries hold , . ; : ? ! ` or a tab: MetaCLIP's matcher never "
          "matches them")
    return 0


def _cmd_search(args: argparse.Namespace) -> int:
    from curate.audit.search import run_search, write_html

    outcome = run_search(args.run_or_sel, text=args.text, image=args.image, uid=args.uid,
                         k=args.k, column=args.column, rows="all" if args.all else None,
                         index=args.index, memory=args.memory, nprobe=args.nprobe)
    print(outcome.index.describe())
    hits = outcome.hits
    names = ["rank", "score", "uid"] + [c for c in ("kept", "reason") if c in hits.columns] \
        + ["caption"]
    rows = [tuple(round(v, 4) if isinstance(v, float) else v for v in r)
            for r in hits.select(names).iter_rows()]
    print(f"{outcome.query}: {len(rows)} nearest of {outcome.corpus.location} "
          f"({outcome.corpus.rows} rows)")
    print(_table(names, rows))
    if args.html:
        print(f"page of thumbnails: {write_html(outcome, args.html)}")
    return 0


def _cmd_export_retrieval(args: argparse.Namespace) -> int:
    from curate.write.retrieval_export import export_retrieval

    r = export_retrieval(args.run_or_sel, args.out, suffix=args.suffix,
                         rows="all" if args.all else None, index=args.index,
                         memory=args.memory)
    print(f"exported {r.rows} rows ({r.dim}-d image and text embeddings, {r.parts} part"
          f"{'s' if r.parts != 1 else ''}) to {r.out} in {r.seconds:.1f}s")
    print(f"  image.index: {r.image_index}")
    print(f"  text.index:  {r.text_index}")
    print(f"serve it: clip-retrieval back --indices-paths {r.out / 'indices_paths.json'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="curate", description="Score once, select later: curate image-text pools into "
        "CLIP training sets.")
    ap.add_argument("--version", action="version", version=f"curate {__version__}")
    ap.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("demo-data", help="write the demo pool (deterministic by seed)")
    p.add_argument("out", help="directory for the shards and ground_truth.parquet")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shards", type=int, default=8)
    p.add_argument("--per-shard", type=int, default=64)
    p.add_argument("--trusted", action="store_true",
                   help="matched pairs only (photos, scenes, text posters): a trusted set "
                   "to train a filter network")
    p.set_defaults(fn=_cmd_demo_data)

    p = sub.add_parser("train-filter", help="train a filter network (a CLIP) on trusted shards")
    p.add_argument("--data", required=True, help="trusted webdataset shards (pattern or URL)")
    p.add_argument("--out", required=True, help="directory for the model (config + weights)")
    p.add_argument("--model", default="curate-tiny",
                   help="open_clip name, hf-hub:org/repo or a model directory to fine-tune")
    p.add_argument("--pretrained", help="start from these weights (tag or file)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--max-seconds", type=float, help="stop after this much training time")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--workers", type=int, default=0, help="DataLoader decoding processes")
    p.set_defaults(fn=_cmd_train_filter)

    p = sub.add_parser("demo-rewriter", help="build (and optionally train) the tiny caption "
                       "rewriter LLM of the demo")
    p.add_argument("out", help="directory for the model (Hugging Face format)")
    p.add_argument("--train-seconds", type=float, default=0.0,
                   help="train on demo caption paraphrases for this long (0: random weights)")
    p.add_argument("--max-steps", type=int, help="stop training after this many steps")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(fn=_cmd_demo_rewriter)

    p = sub.add_parser("run", help="score a pipeline into its store, then select: "
                       "OUT/store and OUT/selections/<name> (a rerun computes only what is new)")
    p.add_argument("pipeline", help="pipeline YAML, e.g. pipelines/demo.yaml")
    p.add_argument("--out", help="run directory: OUT/store and OUT/selections/<name> "
                   "(default: runs/<pipeline name>)")
    p.add_argument("--store", help="the scored pool store (default: the pipeline's `store:`, "
                   "else OUT/store)")
    p.add_argument("--name", help="selection name (default: the pipeline's name)")
    p.add_argument("--input", help="override the input: shard pattern or URL list file")
    p.add_argument("--address", help="join this Ray cluster (e.g. auto, ray://head:10001)")
    p.add_argument("--workers", type=int, help="scoring workers (default: one per CPU/GPU)")
    p.add_argument("--no-progress", action="store_true", help="no progress output")
    p.add_argument("--write-shards", action="store_true", help="also write the curated "
                   "webdataset shards (a copy of every kept sample; default: the manifest only, "
                   "`curate write SEL` writes them later)")
    p.add_argument("--dry-run", action="store_true", help="check everything and print the "
                   "plan (as `curate validate`); start nothing, write nothing")
    p.set_defaults(fn=_cmd_run)

    p = sub.add_parser("validate", help="check a pipeline and print its plan: shards, the "
                       "scorers that would compute or be reused, steps, outputs; no Ray")
    p.add_argument("pipeline", help="pipeline YAML")
    p.add_argument("--out", help="the run directory it would use (default: runs/<name>)")
    p.add_argument("--store", help="the store to plan against (default: the pipeline's "
                   "`store:`, else OUT/store)")
    p.add_argument("--name", help="selection name (default: the pipeline's name)")
    p.add_argument("--input", help="override the input: shard pattern or URL list file")
    p.set_defaults(fn=_cmd_validate)

    p = sub.add_parser("score", help="score a pipeline's input into a store (only what the "
                       "store lacks); no selection")
    p.add_argument("pipeline", help="pipeline YAML (its score: list and input)")
    p.add_argument("--store", help="the store: a path or a URL (default: the pipeline's "
                   "`store:`)")
    p.add_argument("--input", help="override the input: shard pattern or URL list file")
    p.add_argument("--address", help="join this Ray cluster (e.g. auto, ray://head:10001)")
    p.add_argument("--workers", type=int, help="scoring workers (default: one per CPU/GPU)")
    p.add_argument("--no-progress", action="store_true", help="no progress output")
    p.set_defaults(fn=_cmd_score)

    p = sub.add_parser("select", help="apply a selection to a scored store into its own "
                       "directory; computes no score")
    p.add_argument("store", help="the scored pool store")
    p.add_argument("selection", help="selection YAML (select:, output:, ...), or a pipeline")
    p.add_argument("--out", required=True, help="the selection directory")
    p.add_argument("--name", help="selection name (default: the file's name:)")
    p.add_argument("--address", help="join this Ray cluster: the selection runs there, in "
                   "partitions (one per CPU unless --workers says), as does writing shards")
    p.add_argument("--workers", type=int, help="select in this many partitions, on Ray when "
                   "more than 1 (default: 1, in this process; the result is the same)")
    p.add_argument("--write-shards", action="store_true", help="also write the curated "
                   "webdataset shards (a copy of every kept sample; default: the manifest only, "
                   "`curate write SEL` writes them later)")
    p.add_argument("--no-progress", action="store_true", help="no progress output")
    p.set_defaults(fn=_cmd_select)

    p = sub.add_parser("write", help="write a selection's curated webdataset shards: its kept "
                       "samples, copied from the input shards (a selection writes none unless "
                       "asked)")
    p.add_argument("selection", help="the selection directory (or the --out of `curate run`)")
    p.add_argument("--dir", help="where to write them: a path or a URL (default: the "
                   "selection's output.dir, else SEL/output)")
    p.add_argument("--samples-per-shard", type=int, help="samples per output shard (default: "
                   "the selection's output.samples_per_shard)")
    p.add_argument("--address", help="join this Ray cluster (e.g. auto, ray://head:10001)")
    p.add_argument("--no-progress", action="store_true", help="no progress output")
    p.set_defaults(fn=_cmd_write)

    p = sub.add_parser("store", help="what a store holds: shards, scorers and their versions; "
                       "`curate store verify STORE` checks every file")
    p.add_argument("words", nargs="+", metavar="[verify] STORE",
                   help="the store; `verify STORE` checks that every file is whole and is what "
                   "its name says (exit 1 when one is not)")
    p.add_argument("--repair", action="store_true", help="with verify: remove the damaged "
                   "files, so that the next `curate score` recomputes them")
    p.add_argument("--no-progress", action="store_true", help="no progress output")
    p.set_defaults(fn=_cmd_store)

    p = sub.add_parser("query", help="SQL over a run's DuckDB views (manifest, kept, drops, ...)")
    p.add_argument("run_dir")
    p.add_argument("sql")
    p.add_argument("--format", choices=["table", "csv", "json"], default="table")
    p.add_argument("--max-rows", type=int, help="print at most this many rows, 0 for all "
                   f"(default: {QUERY_TABLE_ROWS} for table, every row for csv and json)")
    p.set_defaults(fn=_cmd_query)

    p = sub.add_parser("diff", help="compare two runs: samples kept in one and not the "
                       "other, the reasons, and the pipeline steps that differ")
    p.add_argument("run_a")
    p.add_argument("run_b")
    p.add_argument("--out", help="write the differing samples (uid, kept/reason in each) here "
                   "as Parquet")
    p.set_defaults(fn=_cmd_diff)

    p = sub.add_parser("export", help="the kept samples of a run as a DataComp uid subset "
                       "(.npy), a uid list, or a Parquet of url/caption for re-download")
    p.add_argument("run_dir")
    p.add_argument("--format", choices=["datacomp", "uids", "parquet"], default="datacomp")
    p.add_argument("--out", required=True)
    p.set_defaults(fn=_cmd_export)

    p = sub.add_parser("reshard", help="write shards holding exactly a uid list's samples, "
                       "from the original pool, without rescoring")
    p.add_argument("--uids", required=True, help="uid list: .npy (DataComp), .txt, .parquet")
    p.add_argument("--out", required=True, help="directory for the shards")
    p.add_argument("--run", help="a run over the pool: its manifest locates the samples")
    p.add_argument("--pool", help="or the pool's shards (pattern), read once")
    p.add_argument("--samples-per-shard", type=int, default=1000)
    p.add_argument("--blur-faces", metavar="COLUMN",
                   help="blur the face boxes in this manifest column (e.g. face_bboxes), as "
                   "DataComp's resharder --apply-blur; blurred images become WebP (needs --run)")
    p.add_argument("--blur-quality", type=int, default=100, choices=range(1, 101),
                   metavar="1-100", help="WebP quality of blurred images (default 100)")
    p.set_defaults(fn=_cmd_reshard)

    p = sub.add_parser("stats", help="the funnel of a run: samples in, drops per rule, kept")
    p.add_argument("run_dir")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=_cmd_stats)

    p = sub.add_parser("stages", help="list the scorers, rules, selectors and presets (with "
                       "plugins); NAME: one in full, with its parameters and columns")
    p.add_argument("name", nargs="?", help="a stage or preset to show in full")
    p.add_argument("--import", dest="imports", action="append", metavar="MODULE_OR_FILE",
                   help="import a plugin first (repeatable)")
    p.set_defaults(fn=_cmd_stages)

    p = sub.add_parser("metadata", help="MetaCLIP balancing metadata (entry lists)")
    msub = p.add_subparsers(dest="metadata_command", metavar="ACTION", required=True)
    p = msub.add_parser("build", help="write a metadata JSON list: the numbers 0-99, WordNet "
                        "synset names, then optional unigram, bigram and title lists")
    p.add_argument("--out", required=True, help="the JSON file, e.g. metadata/wordnet.json")
    p.add_argument("--wordnet-dir", default="/usr/share/wordnet",
                   help="WordNet 3.0 data files (Debian wordnet-base; default %(default)s)")
    p.add_argument("--unigrams", help="lines 'word<TAB>count' (or 'word count')")
    p.add_argument("--min-count", type=int,
                   help="keep unigrams counted at least this often (default 100, MetaCLIP's)")
    p.add_argument("--bigrams", help="one bigram per line")
    p.add_argument("--titles", help="one title per line")
    p.set_defaults(fn=_cmd_metadata_build)

    p = sub.add_parser("search", help="nearest samples of a store's pool or a selection to a "
                       "text, an image file or a sample (uid), over the stored CLIP embeddings")
    p.add_argument("run_or_sel", help="a store (holds store.json), a selection, or a run's --out")
    q = p.add_mutually_exclusive_group(required=True)
    q.add_argument("--text", help="encoded by the text tower of the CLIP that made the column")
    q.add_argument("--image", help="an image file, encoded by that CLIP's image tower")
    q.add_argument("--uid", help="a sample's uid: its stored embedding is the query")
    p.add_argument("-k", type=int, default=20, help="hits (default %(default)s)")
    p.add_argument("--column", default="clip_image_emb",
                   help="embedding column searched (default %(default)s)")
    p.add_argument("--all", action="store_true",
                   help="a selection: every row of its manifest, not only the kept ones")
    p.add_argument("--index", choices=["auto", "exact", "ivfpq"],
                   help="index kind (default: the stored one, else auto: exact up to 100,000 "
                   "rows, IVF-PQ beyond)")
    p.add_argument("--memory", help="memory budget of a new index, e.g. 4G (default 4G)")
    p.add_argument("--nprobe", type=int, help="IVF lists scanned per query (default 16)")
    p.add_argument("--html", metavar="OUT.html", help="also write a page of thumbnails")
    p.set_defaults(fn=_cmd_search)

    p = sub.add_parser("export-retrieval", help="embeddings, metadata and faiss indices in "
                       "clip-retrieval's layout (img_emb/, text_emb/, metadata/, image.index, "
                       "text.index), for `clip-retrieval back`")
    p.add_argument("run_or_sel", help="a store (holds store.json), a selection, or a run's --out")
    p.add_argument("out", help="the folder to write")
    p.add_argument("--suffix", default="", help="the clip scorer's column suffix (name: l14 "
                   "→ --suffix _l14)")
    p.add_argument("--all", action="store_true",
                   help="a selection: every row of its manifest, not only the kept ones")
    p.add_argument("--index", choices=["auto", "exact", "ivfpq"], default="auto")
    p.add_argument("--memory", default="4G", help="memory budget per index (default %(default)s)")
    p.set_defaults(fn=_cmd_export_retrieval)

    from curate.audit.report import report_command

    p = sub.add_parser("report", help="write a self-contained HTML report of a finished run "
                       "(RUN_DIR/report/index.html)")
    p.add_argument("run_dir")
    p.add_argument("--out", help="the HTML file (default RUN_DIR/report/index.html)")
    p.add_argument("--gallery", type=int, default=12,
                   help="kept and dropped samples shown, each (default %(default)s)")
    p.add_argument("--per-page", type=int, default=48,
                   help="thumbnails per page of each reason's gallery (default %(default)s)")
    p.add_argument("--max-pages", type=int, default=20,
                   help="gallery pages per reason, 0 for none (default %(default)s)")
    p.set_defaults(fn=report_command)
    return ap


def ray_lost(exc: BaseException) -> CurateError | None:
    """A CurateError for Ray losing its cluster under the run (the node, its raylet or the
    object store went away), else None. An error raised by curate's own code inside a Ray task
    is not one of these: that is a bug, reported as an internal error."""
    ray_exc = sys.modules.get("ray.exceptions")
    if ray_exc is None or not isinstance(exc, ray_exc.RayError) or isinstance(
            exc, ray_exc.RayTaskError):
        return None
    return CurateError(f"the Ray cluster went away during the run ({type(exc).__name__}: "
                       f"{str(exc).strip().splitlines()[0] if str(exc).strip() else 'no detail'})",
                       "finished shards and output files are kept: check the cluster "
                       "(`ray status`) and run the same command again")


def _joined_address(args: argparse.Namespace) -> str | None:
    """The Ray cluster a command will join: ``--address``, ``RAY_ADDRESS``, or the pipeline's
    ``run: {address: ...}`` (read leniently here: the command itself validates it)."""
    if getattr(args, "address", None):
        return str(args.address)
    if os.environ.get("RAY_ADDRESS"):
        return os.environ["RAY_ADDRESS"]
    path = getattr(args, "pipeline", None) or getattr(args, "selection", None)
    import yaml

    try:
        raw = yaml.safe_load(Path(path).read_text()) if path else None
        address = raw.get("run", {}).get("address") if isinstance(raw, dict) else None
    except (OSError, UnicodeDecodeError, yaml.YAMLError, AttributeError):  # reported later
        return None
    return str(address) if address else None


def _supervised(args: argparse.Namespace, address: str) -> int:
    """Run the command in a child process and watch it. Ray ends a driver process at once,
    with no Python exception and no message on the terminal, when the cluster it joined goes
    away under it (the node's raylet or object store dies); this parent then says so in one
    error line. The child reports its own exit code through a pipe when it ends normally, and
    dies with this process (a SIGKILL of the command stops the run, as without a parent)."""
    import signal

    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: the command itself, which never returns into the caller
        os.close(read_end)
        _die_with_parent()
        code = 1
        try:
            code = _run_command(args)
        except BaseException:  # noqa: BLE001 (--debug: print the traceback, then report)
            import traceback

            traceback.print_exc()
        finally:
            os.write(write_end, f"{code}\n".encode())
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    os.close(write_end)

    def forward(signum: int, _frame: Any) -> None:
        os.kill(pid, signum)

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the child, which stops
    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGHUP, forward)
    reported = b""
    while chunk := os.read(read_end, 64):
        reported += chunk
    os.close(read_end)
    _, status = os.waitpid(pid, 0)
    if reported.strip():
        return int(reported.strip())
    code = os.waitstatus_to_exitcode(status)
    how = (f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit status {code}")
    print(f"error: the run ended abruptly ({how}) while joined to the Ray cluster at "
          f"{address}: Ray stops its driver like this when the cluster goes away under it",
          file=sys.stderr)
    print("hint: finished shards and output files are kept: check the cluster (`ray status`, "
          "and the Ray logs on its head node) and run the same command again", file=sys.stderr)
    return 1


def _die_with_parent() -> None:
    """Linux: this process gets SIGKILL when its parent ends (elsewhere: nothing)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


RAY_COMMANDS = ("run", "score", "select")


def main(argv: Sequence[str] | None = None) -> int:
    try:
        try:
            parser = build_parser()
            args, extra = parser.parse_known_args(argv)
            if extra and args.command == "store" and not any(e.startswith("-") for e in extra):
                args.words += extra  # `curate store verify --repair STORE`
            elif extra:
                parser.error(f"unrecognized arguments: {' '.join(extra)}")
        except SystemExit:  # --help and --version print, then exit: flush what they printed
            sys.stdout.flush()
            raise
    except BrokenPipeError:
        if not _stdout_broken():
            raise
        return _stdout_closed()
    address = _joined_address(args) if args.command in RAY_COMMANDS and not getattr(
        args, "dry_run", False) else None
    if address and address != "local" and hasattr(os, "fork"):
        return _supervised(args, address)
    return _run_command(args)


STDOUT_CLOSED = 141  # what a shell reports for a command ended by SIGPIPE (128 + 13)


def _stdout_closed() -> int:
    """The reader of stdout went away (``curate stats --json | head``): stop quietly, as a
    command ended by SIGPIPE does. stdout is pointed at /dev/null first, so that flushing it
    at exit cannot fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # no file descriptor behind sys.stdout
        pass
    return STDOUT_CLOSED


def _stdout_broken() -> bool:
    """Whether stdout is a pipe whose reader has gone (poll reports an error on it)."""
    import select

    try:
        poll = select.poll()
        poll.register(sys.stdout.fileno(), select.POLLOUT)
        return any(ev & (select.POLLERR | select.POLLHUP) for _, ev in poll.poll(0))
    except (OSError, ValueError, AttributeError):
        return False


def _run_command(args: argparse.Namespace) -> int:
    try:
        code = int(args.fn(args))
        sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
        return code
    except CurateError as exc:
        if args.debug:
            raise
        print(f"error: {exc.message}", file=sys.stderr)
        if exc.hint:
            print(f"hint: {exc.hint}", file=sys.stderr)
        return 1 if isinstance(exc, ShardFailed) else 2
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to resume", file=sys.stderr)
        return 130
    except Exception as exc:
        if isinstance(exc, BrokenPipeError) and _stdout_broken():
            return _stdout_closed()
        if args.debug:
            raise
        lost = ray_lost(exc)
        if lost is not None:
            print(f"error: {lost.message}", file=sys.stderr)
            print(f"hint: {lost.hint}", file=sys.stderr)
            return 1
        from curate.io.rundir import filesystem_error

        out = getattr(args, "out", None)
        fs_error = filesystem_error(exc, f"--out {out}" if out else "")
        if fs_error is not None:
            print(f"error: {fs_error.message}", file=sys.stderr)
            print(f"hint: {fs_error.hint}", file=sys.stderr)
            return 2
        print(f"error: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
        print("hint: rerun with `curate --debug ...` for the traceback and report it",
              file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
