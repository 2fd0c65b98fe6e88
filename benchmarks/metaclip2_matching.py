"""MetaCLIP 2 per-language matching: texts/s on one core, two ways, same texts, same matches.

  loop: the authors' ``substr_match`` (``metaclip/curation/substr_matching.py``) as written
        out here: per text, in Python: strip, space, ``automaton.iter`` over the text's
        language automaton of padded entries, collect the ids in a set.
  ours: the ``metaclip2_match`` scorer through ``run_scorer`` on Arrow batches of
        ``--batch-size`` samples of 1 to 3 ``[key, text, lang]`` records (json members): it
        parses each json member, groups the texts by language and builds Arrow columns;
        ``matcher_only_tps`` is its matcher alone (the same per-text scan as the loop).

Metadata (seeded): en: ``--entries`` words and bigrams of a latin vocabulary; zh: CJK words of 1
to 4 ideographs (unpadded); th: Thai words. Texts mix a language's entries with filler and
punctuation; a third of the records are zh or th. Both methods must give identical entry
lists; the run fails otherwise. One JSON line at the end.
"""

from __future__ import annotations

import os

os.environ["OMP_NUM_THREADS"] = "1"

import argparse
import itertools
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
pa.set_cpu_count(1)

LATIN = "abcdefghijklmnoprstuvwy"
CJK = "北京天安门中国大学人民我爱东西南海上手机电话学生老师朋友"
THAI = "กขคงจฉชซดตถทนบปผพฟมยรลวสหอ"


def make_metadata(rng: random.Random, entries: int) -> dict[str, list[str]]:
    def word(chars: str, lo: int, hi: int) -> str:
        return "".join(rng.choice(chars) for _ in range(rng.randint(lo, hi)))

    en = list(dict.fromkeys(word(LATIN, 2, 8) for _ in range(entries // 2)))
    en += [f"{a} {b}" for a, b in itertools.pairwise(en)][: entries - len(en)]
    zh = list(dict.fromkeys(word(CJK, 1, 4) for _ in range(entries // 4)))
    th = list(dict.fromkeys(word(THAI, 2, 6) for _ in range(entries // 8)))
    return {"en": en, "zh": zh, "th": th}


def make_docs(rng: random.Random, md: dict[str, list[str]], n: int) -> list[list[list[str]]]:
    docs = []
    for _ in range(n):
        recs = []
        for _ in range(rng.choice((1, 1, 2, 3))):
            lang = rng.choice(("en", "en", "en", "en", "zh", "th"))
            words = md[lang]
            parts = [words[min(len(words) - 1, int(rng.paretovariate(0.9)) - 1)]
                     if rng.random() < 0.7 else rng.choice((",", ".", "!", "x", "。", "的"))
                     for _ in range(rng.randint(3, 14))]
            recs.append(["alt", ("" if lang != "en" else " ").join(parts), lang])
        docs.append(recs)
    return docs


def loop_rate(md: dict[str, list[str]], docs: list[list[list[str]]]) -> tuple[float, list]:
    import ahocorasick

    from curate.lib.metaclip2 import padded_entry, spaced_text

    automatons = {}
    for lang, entries in md.items():
        a = ahocorasick.Automaton()
        for i, e in enumerate(entries):
            a.add_word(padded_entry(e), i)
        a.make_automaton()
        automatons[lang] = a
    t0 = time.perf_counter()
    out = []
    for recs in docs:
        for _, text, lang in recs:
            out.append(sorted({i for _, i in automatons[lang].iter(spaced_text(text))}))
    return len(out) / (time.perf_counter() - t0), out


def matcher_rate(md: dict[str, list[str]], docs: list[list[list[str]]]) -> float:
    """``LanguageMatcher.match`` alone, on each language's texts in one call."""
    from curate.lib.metaclip2 import LanguageMatcher

    matchers = {lang: LanguageMatcher(entries) for lang, entries in md.items()}
    by_lang: dict[str, list[str]] = {}
    for recs in docs:
        for _, text, lang in recs:
            by_lang.setdefault(lang, []).append(text)
    t0 = time.perf_counter()
    for lang, texts in by_lang.items():
        matchers[lang].match(texts)
    return sum(map(len, by_lang.values())) / (time.perf_counter() - t0)


def ours_rate(mdir: Path, docs: list[list[list[str]]], batch_size: int) -> tuple[float, list]:
    from curate.schema import BATCH_SCHEMA
    from curate.stages.base import BatchErrors, run_scorer
    from curate.stages.metaclip2_match import Metaclip2Match, Metaclip2MatchParams

    scorer = Metaclip2Match(Metaclip2MatchParams(metadata_dir=str(mdir), texts="texts",
                                                 lang_column=None))
    scorer.setup()
    batches = []
    for start in range(0, len(docs), batch_size):
        part = docs[start:start + batch_size]
        rows = [{"uid": f"{start + i:032x}", "shard": "s.tar", "key": str(i), "index": i,
                 "status": "ok", "json": json.dumps({"texts": recs})}
                for i, recs in enumerate(part)]
        batches.append(pa.Table.from_pylist(rows, schema=BATCH_SCHEMA))
    run_scorer(scorer, batches[0], BatchErrors.from_batch(batches[0]))  # builds the automatons
    t0 = time.perf_counter()
    results = [run_scorer(scorer, b, BatchErrors.from_batch(b)) for b in batches]
    seconds = time.perf_counter() - t0
    texts = sum(len(r) for r in docs)
    return texts / seconds, [ids for r in results
                             for row in r.column("metaclip2_entries").to_pylist()
                             for ids in row]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--entries", type=int, default=200_000, help="English entries")
    ap.add_argument("--images", type=int, default=20_000)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    rng = random.Random(args.seed)
    md = make_metadata(rng, args.entries)
    docs = make_docs(rng, md, args.images)
    with tempfile.TemporaryDirectory() as tmp:
        mdir = Path(tmp)
        for lang, entries in md.items():
            (mdir / f"{lang}.json").write_text(json.dumps(entries, ensure_ascii=False), "utf-8")
        loop, ours, alone = [], [], []
        for _ in range(args.repeats):
            rate, expected = loop_rate(md, docs)
            loop.append(rate)
            alone.append(matcher_rate(md, docs))
            rate, got = ours_rate(mdir, docs, args.batch_size)
            ours.append(rate)
            if got != expected:
                print("MISMATCH between the loop and metaclip2_match", file=sys.stderr)
                return 1
    texts = sum(len(r) for r in docs)
    result = {"benchmark": "metaclip2_matching", "threads": 1,
              "entries": {k: len(v) for k, v in md.items()}, "images": len(docs),
              "texts": texts, "matched_per_text": round(sum(map(len, expected)) / texts, 2),
              "loop_tps": round(max(loop)), "ours_tps": round(max(ours)),
              "matcher_only_tps": round(max(alone)),
              "ours_vs_loop": round(max(ours) / max(loop), 2), "identical": True}
    print(f"  loop {result['loop_tps']:,} texts/s, metaclip2_match {result['ours_tps']:,} "
          f"texts/s ({result['ours_vs_loop']}x; its matcher alone "
          f"{result['matcher_only_tps']:,}), identical matches")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
