"""MetaCLIP substring matching: captions/s per core, three ways, same captions, same matches.

  naive:   MetaCLIP's ``substr_matching.py``: space the caption, then test ``" entry " in
           text`` for every entry. It is slow, so it runs on the first ``--naive-captions``
           captions only, and its rate is per caption (the cost does not depend on which ones).
  ac_loop: MetaCLIP's optional ``substr_matching_ahocorasick.py``: one pyahocorasick
           automaton of the spaced entries; per caption, in Python: space it,
           ``automaton.iter``, collect the ids in a set.
  ours:    the ``metaclip_match`` scorer as a worker runs it (``run_scorer`` on Arrow batches
           of ``--batch-size`` captions, default 256 like ``run.batch_size``): one compiled
           pass per batch over the Arrow buffers, a word-trie walk (see
           curate/stages/metaclip_match.py). ``matcher_only_cps`` is its matcher alone on the
           same batches, without the framework's per-batch work.

Metadata sets: the shipped ``metadata/wordnet.json`` (or ``--metadata FILE``), and a synthetic
500k-entry list, MetaCLIP's size: every word of a seeded vocabulary, then distinct bigrams and
trigrams of it. Captions (20k, seeded) are the demo pool's caption material
(``curate/demo/generator.py``) with words swapped for Zipf-distributed vocabulary words, plus
captions of vocabulary words alone, with punctuation and capitals. All three methods must give
identical entry lists; the run fails otherwise.

Everything runs on one thread: ``pyarrow.set_cpu_count(1)``, and ``POLARS_MAX_THREADS``,
``RAYON_NUM_THREADS``, ``OMP_NUM_THREADS`` and ``NUMBA_NUM_THREADS`` are set to 1 before anything
is imported. Each rate is the best of ``--repeats`` rounds, in which ours and ac_loop take turns
(the machines are noisy; naive: one pass). Ends with one JSON line per metadata set, then one
line with all of them.
"""

from __future__ import annotations

import os

os.environ["POLARS_MAX_THREADS"] = "1"  # before anything that could start a thread pool
os.environ["RAYON_NUM_THREADS"] = "1"
os.environ["OMP_NUM_THREADS"] = "1"
os.environ["NUMBA_NUM_THREADS"] = "1"

import argparse
import json
import random
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from curate.demo import generator as demo
from curate.lib.metadata import DEFAULT_METADATA, load_metadata
from curate.stages.base import BatchErrors, run_scorer
from curate.stages.metaclip_match import MetaclipMatch, MetaclipMatchParams

pa.set_cpu_count(1)
pa.set_io_thread_count(1)

Matches = list[list[int]]


def spacing(text: str) -> str:
    """MetaCLIP's caption spacing (``metaclip/substr_matching.py``)."""
    text = f" {text} "
    for p in (",", ".", ";", ":", "?", "!", "`"):
        text = text.replace(p, f" {p} ")
    for c in ("\t", "\n", "\r"):
        text = text.replace(c, " ")
    return text


def naive_cps(captions: Sequence[str], entries: Sequence[str]) -> tuple[float, Matches]:
    """MetaCLIP's loop: every padded entry tested against every spaced caption."""
    padded = [f" {e} " for e in entries]  # MetaCLIP pads the entries once, too
    t0 = time.perf_counter()
    out = []
    for caption in captions:
        text = spacing(caption)
        out.append([i for i, e in enumerate(padded) if e in text])
    return len(captions) / (time.perf_counter() - t0), out


def build_automaton(entries: Sequence[str]) -> Any:
    """MetaCLIP's automaton: every padded entry, its id as the value."""
    import ahocorasick

    automaton = ahocorasick.Automaton()
    for i, entry in enumerate(entries):
        automaton.add_word(f" {entry} ", i)  # a repeated string would keep its last id only
    automaton.make_automaton()
    return automaton


def ac_loop_cps(captions: Sequence[str], automaton: Any) -> tuple[float, Matches]:
    """MetaCLIP's pyahocorasick variant, one caption at a time in Python. Like MetaCLIP's, it
    collects each caption's ids in a set and returns them unsorted; they are sorted for the
    comparison, outside the timing."""
    t0 = time.perf_counter()
    out = []
    for caption in captions:
        found = set()
        for _end, entry_id in automaton.iter(spacing(caption)):
            found.add(entry_id)
        out.append(list(found))
    cps = len(captions) / (time.perf_counter() - t0)
    return cps, [sorted(ids) for ids in out]


def build_scorer(metadata: Path, engine: str = "trie") -> MetaclipMatch:
    scorer = MetaclipMatch(MetaclipMatchParams(metadata=str(metadata),
                                               engine=engine))  # type: ignore[arg-type]
    scorer.setup()
    return scorer


def caption_batches(captions: Sequence[str], batch_size: int) -> list[pa.Table]:
    """The captions as the Arrow batches a worker gets (with the error columns it carries)."""
    nulls = pa.nulls(len(captions), pa.string())
    table = pa.table({"caption": pa.array(captions, pa.string()), "error_stage": nulls,
                      "error": nulls})
    return [table.slice(i, batch_size) for i in range(0, len(captions), batch_size)]


def ours_cps(batches: Sequence[pa.Table], scorer: MetaclipMatch) -> tuple[float, Matches]:
    """The metaclip_match scorer on Arrow batches, as a worker runs it (``run_scorer``)."""
    n = sum(b.num_rows for b in batches)
    t0 = time.perf_counter()
    results = [run_scorer(scorer, b, BatchErrors.from_batch(b)) for b in batches]
    cps = n / (time.perf_counter() - t0)
    return cps, [ids for r in results for ids in r.column("metaclip_entries").to_pylist()]


def match_only_cps(batches: Sequence[pa.Table], scorer: MetaclipMatch) -> float:
    """``SubstringMatcher.match`` alone on the same batches: ours without the framework."""
    columns = [b.column("caption").combine_chunks() for b in batches]
    matcher = scorer._matcher
    assert matcher is not None
    t0 = time.perf_counter()
    for column in columns:
        matcher.match(column)
    return sum(len(c) for c in columns) / (time.perf_counter() - t0)


# ---------------------------------------------------------------------------------------------
# Data


def demo_captions() -> list[str]:
    """The English caption material of the demo pool generator."""
    texts = [c for photo in demo._PHOTOS for c in photo.captions]
    nouns = [photo.noun for photo in demo._PHOTOS]
    for template in (*demo._THUMBNAIL_CAPTIONS, *(t for ts in demo._BANNER_CAPTIONS.values()
                                                  for t in ts)):
        texts += [template.format(noun=n) for n in nouns]
    texts += [t.format(t=p.lower()) for t in demo._POSTER_CAPTIONS for p in demo._POSTER_TEXTS]
    texts += [t.format(shapes="a red circle on the left and two blue squares at the top",
                       bg="white") for t in demo._SCENE_TEMPLATES]
    return texts + list(demo._SHORT_CAPTIONS)


def vocabulary(seed: int, size: int) -> list[str]:
    """The demo captions' words, then seeded pseudo-words (syllables), most frequent first."""
    rng = random.Random(seed)
    words = list(dict.fromkeys(w for t in demo_captions() for w in t.split()))
    syllables = [a + b for a in "bcdfghklmnprstvwz" for b in ("a", "e", "i", "o", "u", "ai",
                                                               "ou", "ee")]
    seen = set(words)
    while len(words) < size:
        w = "".join(rng.choice(syllables) for _ in range(rng.choice((1, 2, 2, 3, 3, 4))))
        if rng.random() < 0.15:
            w += rng.choice(("s", "ed", "ing", "er", "y"))
        if w not in seen:
            seen.add(w)
            words.append(w)
    return words


def synthetic_entries(words: Sequence[str], n: int, seed: int) -> list[str]:
    """Every vocabulary word, the demo captions' bigrams, then distinct Zipf-drawn bigrams
    (80%) and trigrams (20%) until there are ``n``."""
    rng = random.Random(seed)
    entries = dict.fromkeys(words)
    for text in demo_captions():
        w = text.split()
        entries.update(dict.fromkeys(" ".join(w[i:i + 2]) for i in range(len(w) - 1)))
    weights = _zipf(len(words))
    while len(entries) < n:
        k = 2 if rng.random() < 0.8 else 3
        for gram in zip(*(rng.choices(words, cum_weights=weights, k=4096) for _ in range(k)),
                        strict=True):
            entries[" ".join(gram)] = None
    return list(entries)[:n]


def make_captions(words: Sequence[str], n: int, seed: int) -> list[str]:
    """Demo captions with some words swapped for vocabulary words (70%) or Zipf-drawn
    vocabulary sentences (30%), with commas, full stops, capitals and the odd "!" or "?"."""
    rng = random.Random(seed)
    base = [t.split() for t in demo_captions()]
    weights = _zipf(len(words))
    out = []
    for _ in range(n):
        if rng.random() < 0.7:
            w = list(rng.choice(base))
            for _swap in range(rng.randint(0, 4)):
                w[rng.randrange(len(w))] = rng.choices(words, cum_weights=weights)[0]
            if rng.random() < 0.3:
                w += rng.choices(words, cum_weights=weights, k=rng.randint(1, 8))
        else:
            w = rng.choices(words, cum_weights=weights, k=rng.randint(4, 24))
        if len(w) > 4 and rng.random() < 0.4:
            cut = rng.randrange(1, len(w) - 1)
            w[cut] += rng.choice((",", ",", ";", ":", " -"))
        text = " ".join(w)
        if rng.random() < 0.5:
            text = text[0].upper() + text[1:]
        out.append(text + rng.choice(("", "", ".", ".", "!", "?", " ...")))
    return out


def _zipf(n: int) -> list[float]:
    total, cum = 0.0, []
    for rank in range(n):
        total += 1.0 / (rank + 1)
        cum.append(total)
    return cum


# ---------------------------------------------------------------------------------------------


def bench_set(name: str, entries: list[str], metadata: Path, captions: list[str],
              naive_n: int, repeats: int, batch_size: int) -> dict[str, Any]:
    """All three methods on one metadata set. Ours and the Aho-Corasick loop take turns,
    ``repeats`` rounds, and each keeps its best round (noise from other work hits both)."""
    print(f"\n== {name}: {len(entries):,} entries, {len(captions):,} captions "
          f"({len(set(captions)):,} distinct), batch {batch_size}", flush=True)
    t0 = time.perf_counter()
    scorer = build_scorer(metadata)
    ours_setup = time.perf_counter() - t0
    t0 = time.perf_counter()
    automaton = build_automaton(entries)
    ac_build = time.perf_counter() - t0
    batches = caption_batches(captions, batch_size)
    ac_engine = build_scorer(metadata, engine="aho_corasick")
    ours = ac = bare = ours_ac = 0.0
    ours_ac_out: Matches = []
    ours_out: Matches = []
    ac_out: Matches = []
    for _ in range(repeats):
        cps, ours_out = ours_cps(batches, scorer)
        ours = max(ours, cps)
        cps, ac_out = ac_loop_cps(captions, automaton)
        ac = max(ac, cps)
        bare = max(bare, match_only_cps(batches, scorer))
        cps, ours_ac_out = ours_cps(batches, ac_engine)
        ours_ac = max(ours_ac, cps)
    print(f"  ours     {ours:>12,.0f} captions/s   (setup {ours_setup:.2f} s; the matcher alone "
          f"{bare:,.0f}/s)", flush=True)
    print(f"  ours, engine aho_corasick {ours_ac:>10,.0f} captions/s (pyahocorasick, batched)",
          flush=True)
    print(f"  ac_loop  {ac:>12,.0f} captions/s   (automaton {ac_build:.2f} s)", flush=True)
    naive, naive_out = naive_cps(captions[:naive_n], entries)
    print(f"  naive    {naive:>12,.1f} captions/s   (on the first {naive_n} captions)",
          flush=True)
    same_ac = ac_out == ours_out == ours_ac_out
    same_naive = naive_out == ours_out[:naive_n]
    matches = sum(map(len, ours_out))
    print(f"  identical matches: ours = ac_loop {same_ac}, ours = naive {same_naive}; "
          f"{matches / len(captions):.1f} entries matched per caption")
    print(f"  ours / naive = {ours / naive:,.0f}x   ours / ac_loop = {ours / ac:.2f}x")
    return {"set": name, "entries": len(entries), "captions": len(captions),
            "naive_captions": naive_n, "batch_size": batch_size,
            "matched_per_caption": round(matches / len(captions), 2),
            "naive_cps": round(naive, 2), "ac_loop_cps": round(ac), "ours_cps": round(ours),
            "speedup_vs_loop": round(ours / naive, 1),
            "speedup_vs_ac_loop": round(ours / ac, 2),
            "matcher_only_cps": round(bare), "ours_aho_corasick_engine_cps": round(ours_ac),
            "ours_setup_s": round(ours_setup, 2), "ac_build_s": round(ac_build, 2),
            "identical": same_ac and same_naive}


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--metadata", type=Path, default=None,
                    help=f"a metadata JSON list (default {DEFAULT_METADATA}, skipped if absent)")
    ap.add_argument("--captions", type=int, default=20_000)
    ap.add_argument("--naive-captions", type=int, default=200)
    ap.add_argument("--synthetic-entries", type=int, default=500_000)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rows", type=int, default=10_000_000,
                    help="balancing: simulated pool rows (benchmarks/metaclip_balance.py; 0 skips)")
    ap.add_argument("--balance-entries", type=int, default=500_000)
    args = ap.parse_args(argv)
    print("one thread: pyarrow cpu_count=1, POLARS_MAX_THREADS=RAYON_NUM_THREADS="
          "OMP_NUM_THREADS=NUMBA_NUM_THREADS=1")

    words = vocabulary(args.seed, 50_000)
    captions = make_captions(words, args.captions, args.seed + 1)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        sets: list[tuple[str, list[str], Path]] = []
        path = args.metadata or DEFAULT_METADATA
        if path.is_file():
            sets.append((path.stem, load_metadata(path), path))
        else:
            print(f"{path} not found: the wordnet set is skipped")
        synthetic = synthetic_entries(words, args.synthetic_entries, args.seed + 2)
        synthetic_path = Path(tmp) / "synthetic.json"
        synthetic_path.write_text(json.dumps(synthetic), encoding="utf-8")
        sets.append((f"synthetic_{len(synthetic) // 1000}k", synthetic, synthetic_path))
        for name, entries, file in sets:
            result = bench_set(name, entries, file, captions, args.naive_captions,
                               args.repeats, args.batch_size)
            results.append(result)
            print(json.dumps(result), flush=True)
    balance: dict[str, Any] = {}
    if args.rows:
        balance = _balance_module().measure(args.rows, args.balance_entries, 5.0, "2GB")
        print(f"balancing {balance['rows']:,} rows ({args.balance_entries:,} entries): "
              f"{balance['balance_seconds']:.1f}s, peak RSS {balance['peak_rss_gib']:.2f} GiB")
    main_set = results[0]
    print(json.dumps({"benchmark": "metaclip_matching", "threads": 1,
                      "entries": main_set["entries"], "naive_cps": main_set["naive_cps"],
                      "ac_loop_cps": main_set["ac_loop_cps"], "ours_cps": main_set["ours_cps"],
                      "speedup_vs_loop": main_set["speedup_vs_loop"],
                      "speedup_vs_ac_loop": main_set["speedup_vs_ac_loop"],
                      "rows": balance.get("rows"),
                      "balance_seconds": balance.get("balance_seconds"),
                      "peak_rss_gib": balance.get("peak_rss_gib"),
                      "captions": len(captions), "batch_size": args.batch_size,
                      "sets": {r["set"]: r for r in results}}))
    return 0 if all(r["identical"] for r in results) else 1


def _balance_module() -> Any:
    """benchmarks/metaclip_balance.py (pass 1 + pass 2 on a simulated pool, in a subprocess)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "bench_metaclip_balance", Path(__file__).with_name("metaclip_balance.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


if __name__ == "__main__":
    sys.exit(main())
