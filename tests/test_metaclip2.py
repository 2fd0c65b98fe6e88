"""MetaCLIP 2 (worldwide) curation: per-language metadata and matching rules, t per language from
the English tail share, one random text per image, and balancing's use of the metadata that
matching used. Expected values are worked out by hand or by brute-force loops written here."""

from __future__ import annotations

import hashlib
import json
import math
import random
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from stagetest import score
from storemaker import READER

from curate.config import Step
from curate.errors import CurateError
from curate.lib.metaclip2 import (
    MetadataDir,
    count_to_prob,
    p_to_t,
    padded_entry,
    spaced_text,
    t_to_p,
    unpadded,
)
from curate.schema import SAMPLE_COLUMNS
from curate.select.pool import PoolSource
from curate.select.selection import select
from curate.stages.base import SelectContext, registered
from curate.stages.metaclip2_balance import Metaclip2Balance, choose
from curate.stages.metaclip2_match import Metaclip2Match, Metaclip2MatchParams
from curate.store.store import ERROR, STATUS, PoolShard, Store, Version, shard_key

METADATA = {
    "en": ["cat", "dog", "hot dog", "C++", "#tag", "(a)", "e.g", "new york", "york city",
           "北京", "ice-cream", "don't", "“quote”", "—dash"],
    "zh": ["北京", "天安门", "北京 大学", "iPhone手机", "中国。", "《书》", "a北京", "大"],
    "th": ["ไทย", "สวัสดี", "ไทย cat"],
    "ja": ["東京", "東京タワー", "ひらがな"],
    "other": ["zzz", "北"],
}


def write_dir(root: Path, metadata: dict[str, list[str]] = METADATA) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for lang, entries in metadata.items():
        (root / f"{lang}.json").write_text(json.dumps(entries, ensure_ascii=False), "utf-8")
    return root


def matcher(tmp_path: Path, **params: Any) -> Metaclip2Match:
    return Metaclip2Match(Metaclip2MatchParams(metadata_dir=str(write_dir(tmp_path / "md")),
                                               **params))


def match_captions(tmp_path: Path, pairs: list[tuple[str | None, str | None]],
                   **params: Any) -> list[tuple[list[int] | None, str | None]]:
    """(ids, metadata language) of each (caption, lid) pair, matched one text per sample."""
    out, errors = score(matcher(tmp_path, **params),
                        [{"caption": c, "lang": lang} for c, lang in pairs])
    assert all(s is None for s in errors.stage)
    return [(r["metaclip2_entries"][0], r["metaclip2_langs"][0])
            if r["metaclip2_entries"] else (None, None) for r in out]


# --------------------------------------------------------------------------------------------
# Matching rules


def test_entries_are_padded_unless_they_start_or_end_with_cjk_thai_or_punctuation() -> None:
    assert padded_entry("cat") == " cat "
    assert padded_entry("北京") == "北京"              # CJK ideographs
    assert padded_entry("iPhone手机") == " iPhone手机"  # latin start, CJK end
    assert padded_entry("a北京") == " a北京"
    assert padded_entry("ไทย cat") == "ไทย cat "        # Thai start
    assert padded_entry("C++") == " C++"              # ASCII punctuation end
    assert padded_entry("#tag") == "#tag "
    assert padded_entry("(a)") == "(a)"
    assert padded_entry("“quote”") == "“quote”"        # CJK punctuation list
    assert padded_entry("—dash") == "—dash "
    assert padded_entry("ひらがな") == " ひらがな "     # kana is outside the listed ranges
    assert padded_entry("東京タワー") == "東京タワー "  # ... so a kana end is padded
    for ch in "ກကកཀ㐀豈⺀⼀⿰":  # Lao, Burmese, Khmer, Tibetan, CJK ext. A, compat., radicals
        assert unpadded(ch)
    for ch in "aé1 ßЖא":
        assert not unpadded(ch)
    with pytest.raises(ValueError):
        padded_entry("")


def test_texts_are_stripped_then_spaced() -> None:
    assert spaced_text("\u3000 cat, dog.\n") == " cat ,  dog .  "
    assert spaced_text("a\tb\rc") == " a b c "
    assert spaced_text("") == "  "


def test_per_language_matching_examples(tmp_path: Path) -> None:
    got = match_captions(tmp_path, [
        ("我爱北京天安门", "zh"),             # no spaces needed around CJK entries
        ("北京大学 and 北京 大学", "zh"),     # the entry with a space needs that space
        ("买iPhone手机 a iPhone手机", "zh"),  # a latin start needs a space before it
        ("中国。好", "zh"),                   # 。 is not spaced in the text: a substring
        ("a cat in concatenate", "en"),
        ("I like C++11 and #tags #tag", "en"),
        ("see e.g. this", "en"),             # "." is spaced in the text: "e.g" never matches
        ("(a) hot dog (a)", "en"),
        ("北京 cat", "en"),                  # the English list's 北京
        ("\u3000cat\u3000", "en"),           # stripped first: U+3000 is not kept as a word
        ("ประเทศไทย cat", "th"),
        ("これはひらがなです これは ひらがな です", "ja"),
        ("東京タワー", "ja"),
        ("new york city", "en"),
        (None, "en"),
        ("cat", None),                       # no language: MetaCLIP's "" -> other
    ])
    zh, en, th, ja, other = (METADATA[k] for k in ("zh", "en", "th", "ja", "other"))

    def ids(lang: list[str], *names: str) -> list[int]:
        return sorted(lang.index(n) for n in names)

    assert got == [
        (ids(zh, "北京", "天安门"), "zh"),
        (ids(zh, "北京", "北京 大学", "大"), "zh"),
        (ids(zh, "iPhone手机"), "zh"),
        (ids(zh, "中国。"), "zh"),
        (ids(en, "cat"), "en"),
        (ids(en, "C++", "#tag"), "en"),
        ([], "en"),
        (ids(en, "(a)", "hot dog", "dog"), "en"),
        (ids(en, "北京", "cat"), "en"),
        (ids(en, "cat"), "en"),
        (ids(th, "ไทย", "ไทย cat"), "th"),
        (ids(ja, "ひらがな"), "ja"),
        (ids(ja, "東京", "東京タワー"), "ja"),
        (ids(en, "new york", "york city"), "en"),
        (None, None),
        ([], "other"),
    ]
    assert other == ["zzz", "北"]


def test_language_mapping(tmp_path: Path) -> None:
    pairs = [("zzz 北京", "xx"), ("zzz 北京", ""), ("zzz 北京", "de"), ("北京", "cmn")]
    got = match_captions(tmp_path, pairs, languages={"xx": "N/A", "cmn": "zh"})
    assert [lang for _, lang in got] == ["other", "other", "other", "zh"]
    assert got[0][0] == [0, 1] and got[3][0] == [0]
    # without other.json, a language with no list matches nothing
    bare = {k: v for k, v in METADATA.items() if k != "other"}
    scorer = Metaclip2Match(Metaclip2MatchParams(metadata_dir=str(write_dir(tmp_path / "b",
                                                                            bare))))
    out, _ = score(scorer, [{"caption": "cat", "lang": "de"}, {"caption": "cat", "lang": "en"}])
    assert [r["metaclip2_langs"] for r in out] == [[None], ["en"]]
    assert [r["metaclip2_entries"] for r in out] == [[[]], [[0]]]


def brute_force(text: str, entries: list[str]) -> list[int]:
    """Every entry whose padded form is a substring of the stripped, spaced text."""
    spaced = spaced_text(text)
    return [i for i, e in enumerate(entries) if padded_entry(e) in spaced]


def test_random_texts_match_the_brute_force_loop(tmp_path: Path) -> None:
    rng = random.Random(4)
    alphabet = "ab北京ไทยひら,.;:?!`'#()+—“” \t\n\u3000"
    entries = list(dict.fromkeys(
        e for e in ("".join(rng.choice(alphabet) for _ in range(rng.randint(1, 4))).strip()
                    for _ in range(400)) if e))
    texts = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
             for _ in range(600)]
    root = write_dir(tmp_path / "md", {"en": entries})
    scorer = Metaclip2Match(Metaclip2MatchParams(metadata_dir=str(root), texts="texts",
                                                 lang_column=None))
    docs = [{"json": json.dumps({"texts": [["alt", t, "en"] for t in texts[i:i + 3]]})}
            for i in range(0, len(texts), 3)]
    out, _ = score(scorer, docs)
    got = [ids for r in out for ids in r["metaclip2_entries"]]
    assert got == [brute_force(t, entries) for t in texts]
    assert sum(map(len, got)) > 300  # the case exercises matching


def test_several_texts_with_their_own_languages(tmp_path: Path) -> None:
    scorer = matcher(tmp_path, texts="texts")
    assert scorer.inputs() == ("json", "lang")
    doc = {"texts": [["alt", "我爱北京", "zh"], ["title", "a hot dog", "en"], "北京 cat",
                     ["alt", "nothing here", "en"]]}
    out, errors = score(scorer, [{"json": json.dumps(doc), "lang": "en"},
                                 {"json": json.dumps({"url": "x"}), "lang": "en"}])
    zh, en = METADATA["zh"], METADATA["en"]
    assert out[0]["metaclip2_entries"] == [[zh.index("北京")],
                                           sorted([en.index("hot dog"), en.index("dog")]),
                                           sorted([en.index("北京"), en.index("cat")]), []]
    assert out[0]["metaclip2_langs"] == ["zh", "en", "en", "en"]  # a string takes the row's
    assert out[0]["metaclip2_matches"] == 5
    assert errors.message[1] == "json has no 'texts' list of texts"
    assert registered("scorer")["metaclip2_match"] is Metaclip2Match


def test_metadata_directory(tmp_path: Path) -> None:
    with pytest.raises(CurateError, match="not found"):
        MetadataDir(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "en.pkl").write_bytes(b"not read")
    with pytest.raises(CurateError, match=r"holds no <code>\.json"):
        MetadataDir(tmp_path / "empty")
    root = write_dir(tmp_path / "md")
    (root / "en.pkl").write_bytes(b"the authors' pickled automaton: never unpickled")
    d = MetadataDir(root)
    assert sorted(d.files) == sorted(METADATA) and d.entries("zh") == METADATA["zh"]
    before = d.digest()
    (root / "th.json").write_text(json.dumps(["ไทย"]), "utf-8")
    assert MetadataDir(root).digest() != before
    (root / "th.json").write_text(json.dumps(["ไทย", "ไทย"]), "utf-8")
    with pytest.raises(CurateError, match="repeats entry 0"):
        MetadataDir(root).entries("th")
    scorer = Metaclip2Match(Metaclip2MatchParams(metadata_dir=str(tmp_path / "missing")))
    with pytest.raises(CurateError, match="not found"):
        scorer.check()


# --------------------------------------------------------------------------------------------
# t per language


def test_t_to_p_is_the_tail_share() -> None:
    counts = np.array([0, 1, 2, 3, 10, 20, 64], dtype=np.uint64)
    assert t_to_p(counts, 10) == pytest.approx(6 / 100)   # counts below t: 1 + 2 + 3
    assert t_to_p(counts, 11) == pytest.approx(16 / 100)  # 10 joins the tail
    assert t_to_p(counts, 1000) == 1.0
    with pytest.raises(CurateError, match="no English text matched"):
        t_to_p(np.zeros(3), 5)


def test_p_to_t_takes_the_count_nearest_the_share() -> None:
    counts = np.array([64, 0, 3, 20, 1, 10, 2])  # sorted: 0 1 2 3 10 20 64; shares
    # cumulative shares: 0, .01, .03, .06, .16, .36, 1.0
    assert p_to_t(counts, 0.06) == 3
    assert p_to_t(counts, 0.10) == 3     # |.06 - .10| < |.16 - .10|
    assert p_to_t(counts, 0.12) == 10
    assert p_to_t(counts, 0.5) == 20
    assert p_to_t(counts, 0.9) == 64
    assert p_to_t(counts, 0.004) == 0    # the unmatched entries' share (0) is nearest
    assert p_to_t(np.array([5, 5]), 0.75) == 5  # a tie takes the first
    assert p_to_t(np.zeros(4), 0.5) == 0


def test_count_to_prob() -> None:
    p = count_to_prob(np.array([0, 3, 10, 40]), 10)
    assert p.dtype == np.float32 and p.tolist() == [1.0, 1.0, 1.0, np.float32(0.25)]
    assert count_to_prob(np.array([0, 5]), 0).tolist() == [1.0, 0.0]


# --------------------------------------------------------------------------------------------
# Balancing


def _pool(rows: list[dict[str, Any]], digest: str) -> duckdb.DuckDBPyConnection:
    n = len(rows)
    table = pa.table({
        "_row": pa.array(range(n), pa.int64()),
        "uid": [hashlib.sha256(f"u{i}".encode()).hexdigest()[:32] for i in range(n)],
        "reason": pa.nulls(n, pa.string()),
        "metaclip2_entries": pa.array([r["metaclip2_entries"] for r in rows],
                                      pa.list_(pa.list_(pa.int32()))),
        "metaclip2_langs": pa.array([r["metaclip2_langs"] for r in rows], pa.list_(pa.string())),
        "metaclip2_metadata": [digest] * n,
        "metaclip2_text": pa.nulls(n, pa.int32()), "metaclip2_lang": pa.nulls(n, pa.string()),
        "metaclip2_keep_p": pa.nulls(n, pa.float64()),
    })
    con = duckdb.connect()
    con.register("t", table)
    con.execute("CREATE TABLE pool AS SELECT * FROM t")
    con.unregister("t")
    return con


def _balance(con: duckdb.DuckDBPyConnection, out: Path, **params: Any) -> list[tuple]:
    Metaclip2Balance(Metaclip2Balance.Params(**params)).apply(con, "pool", SelectContext(out))
    return con.execute("SELECT _row, reason, metaclip2_text, metaclip2_lang, metaclip2_keep_p "
                       "FROM pool ORDER BY _row").fetchall()


def _synthetic(tmp_path: Path) -> tuple[Path, list[dict[str, Any]]]:
    """en: entry 0 in 3,000 texts, 1 in 300, 2 in 30, 3 in 3; zh: 0 in 1,000, 1..10 in 20."""
    root = write_dir(tmp_path / "md", {"en": [f"e{i}" for i in range(6)],
                                       "zh": [f"字{i}" for i in range(12)]})
    rows: list[dict[str, Any]] = []
    for e, c in ((0, 3000), (1, 300), (2, 30), (3, 3)):
        rows += [{"metaclip2_entries": [[e]], "metaclip2_langs": ["en"]}] * c
    rows += [{"metaclip2_entries": [[0], []], "metaclip2_langs": ["zh", "zh"]}] * 1000
    rows += [{"metaclip2_entries": [[], [k]], "metaclip2_langs": ["en", "zh"]}
             for k in range(1, 11) for _ in range(20)]
    rows += [{"metaclip2_entries": [[]], "metaclip2_langs": ["en"]}] * 7  # nothing matched
    rows += [{"metaclip2_entries": [], "metaclip2_langs": []}] * 2       # no text
    return root, rows


def test_t_per_language_and_probabilities(tmp_path: Path) -> None:
    root, rows = _synthetic(tmp_path)
    con = _pool(rows, MetadataDir(root).digest())
    got = _balance(con, tmp_path / "sel", t_en=300, metadata_dir=str(root))
    report = json.loads((tmp_path / "sel" / "reports" / "metaclip2_balance.json").read_text())
    # English tail share at t_en = 300: (30 + 3) / 3,333; zh counts sorted: 0 20 x10 1000,
    # cumulative shares 0, .0167 ... .1667, 1: .0099 is nearest .0167 -> t_zh = 20
    assert report["tail_share"] == pytest.approx(33 / 3333)
    assert report["languages"]["en"]["t"] == 300 and report["languages"]["zh"]["t"] == 20
    assert report["languages"]["zh"]["entries"] == 12
    assert report["rows_in"] == len(rows) and report["rows_without_match"] == 9
    ec = pq.read_table(tmp_path / "sel" / "entry_counts.parquet").to_pylist()
    by = {(r["lang"], r["entry_id"]): r for r in ec}
    assert len(ec) == 18 and by[("zh", 3)]["entry"] == "字3"
    assert by[("en", 0)]["count_before"] == 3000 and by[("zh", 0)]["count_before"] == 1000
    assert by[("en", 0)]["p"] == pytest.approx(0.1) and by[("en", 1)]["p"] == 1.0
    assert by[("zh", 0)]["p"] == np.float32(0.02) and by[("zh", 5)]["p"] == 1.0
    kept = {lang: sum(1 for r in got if r[1] is None and r[3] == lang) for lang in ("en", "zh")}
    # en: 3,000 * 0.1 + 333 kept whole; zh: 1,000 * 0.02 + the 200 tail rows
    assert abs(kept["en"] - 633) < 5 * math.sqrt(3000 * 0.09)
    assert abs(kept["zh"] - 220) < 5 * math.sqrt(1000 * 0.02)
    dropped = [r for r in got if r[1] == "metaclip2_balance"]
    assert all(r[2] is None for r in got[-9:]) and len(dropped) == len(rows) - sum(kept.values())
    # the chosen text is always a matched one; keep_p is the chosen text's
    assert all(r[2] == 1 for r in got[4333:4533])
    assert all(r[4] == pytest.approx(0.1) for r in got[:3000])
    assert report["languages"]["en"]["matches_after"] == kept["en"]


def test_one_random_text_per_image_uniform_among_matched(tmp_path: Path) -> None:
    n = 6000
    entries = pa.array([[[0], [], [1], [2]]] * n, pa.list_(pa.list_(pa.int32())))
    uids = pa.array([hashlib.sha256(f"x{i}".encode()).hexdigest()[:32] for i in range(n)])
    picks = choose(7, uids, entries)
    counts = np.bincount(picks, minlength=4)
    assert counts[1] == 0 and counts.sum() == n
    for k in (0, 2, 3):
        assert abs(counts[k] - n / 3) < 5 * math.sqrt(n * 2 / 9)
    assert np.array_equal(picks, choose(7, uids, entries))
    assert not np.array_equal(picks, choose(8, uids, entries))
    none = choose(7, uids[:3], pa.array([[[]], [], None], pa.list_(pa.list_(pa.int32()))))
    assert none.tolist() == [-1, -1, -1]


def test_several_texts_count_per_text_and_keep_with_the_chosen_one(tmp_path: Path) -> None:
    # two English texts per image: entry 0 is in 3,500 texts (p = 1,000 / 3,500 at t_en =
    # 1,000), entry 1 in the second text of the first 500 images (500 texts: p = 1)
    root = write_dir(tmp_path / "md", {"en": ["a", "b"]})
    rows = [{"metaclip2_entries": [[0], [1] if i < 500 else [0]],
             "metaclip2_langs": ["en", "en"]} for i in range(2000)]
    con = _pool(rows, MetadataDir(root).digest())
    got = _balance(con, tmp_path / "s", t_en=1000, seed=2, metadata_dir=str(root))
    ec = pq.read_table(tmp_path / "s" / "entry_counts.parquet").to_pydict()
    assert ec["count_before"] == [3500, 500]  # per text
    chose_b = [r for r in got[:500] if r[2] == 1]
    assert all(r[1] is None and r[4] == 1.0 for r in chose_b)
    assert abs(len(chose_b) - 250) < 5 * math.sqrt(125)
    expected = 1000 / 3500
    rest = [r for r in got if r[2] is not None and r[4] != 1.0]
    assert all(r[4] == pytest.approx(expected, rel=1e-6) for r in rest)
    share = sum(1 for r in rest if r[1] is None) / len(rest)
    assert abs(share - expected) < 5 * math.sqrt(expected * (1 - expected) / len(rest))


def test_same_subset_for_any_row_order_and_reproducible(tmp_path: Path) -> None:
    root, rows = _synthetic(tmp_path)
    digest = MetadataDir(root).digest()
    a = _balance(_pool(rows, digest), tmp_path / "a", t_en=300, seed=1, metadata_dir=str(root))
    con = _pool(rows, digest)
    con.execute("CREATE TABLE shuffled AS SELECT * FROM pool ORDER BY md5(uid)")
    con.execute("DROP TABLE pool")
    con.execute("ALTER TABLE shuffled RENAME TO pool")
    b = _balance(con, tmp_path / "b", t_en=300, seed=1, metadata_dir=str(root))
    c = _balance(_pool(rows, digest), tmp_path / "c", t_en=300, seed=2, metadata_dir=str(root))
    assert a == b and a != c


def test_no_english_is_an_error(tmp_path: Path) -> None:
    root = write_dir(tmp_path / "md", {"zh": ["字"]})
    con = _pool([{"metaclip2_entries": [[0]], "metaclip2_langs": ["zh"]}],
                MetadataDir(root).digest())
    with pytest.raises(CurateError, match="no English text matched"):
        _balance(con, tmp_path / "s", metadata_dir=str(root))
    # nothing matched at all: every row is dropped, outputs are written
    con = _pool([{"metaclip2_entries": [[]], "metaclip2_langs": ["zh"]}] * 3,
                MetadataDir(root).digest())
    got = _balance(con, tmp_path / "none", metadata_dir=str(root))
    assert [r[1] for r in got] == ["metaclip2_balance"] * 3
    report = json.loads((tmp_path / "none" / "reports" / "metaclip2_balance.json").read_text())
    assert report["rows_kept"] == 0 and report["tail_share"] is None


# --------------------------------------------------------------------------------------------
# Balancing takes the metadata directory matching used, through a real store and selection


def _matched_store(root: Path, scorer: Metaclip2Match, rows: list[dict[str, Any]]) -> PoolSource:
    out, _ = score(scorer, rows)
    store = Store(root)
    shard = "00000.tar"
    digest = hashlib.sha256(shard.encode()).hexdigest()
    columns = dict(scorer.outputs())
    version = Version(label=scorer.label, version="2" * 16, name=scorer.name,
                      params=scorer.params.model_dump(mode="json"), reads={}, reader=READER,
                      schema=pa.schema(columns), sidecars={})
    base = [{"uid": f"{k:032x}", "shard": shard, "key": str(k), "index": k, "status": "ok",
             "caption": r.get("caption")} for k, r in enumerate(rows)]
    store.dir.write_parquet(Store.base_name(READER, shard_key(shard), digest),
                            pa.Table.from_pylist(base, schema=pa.schema(SAMPLE_COLUMNS)))
    scored = pa.Table.from_pylist([{STATUS: "ok", ERROR: None, **r} for r in out],
                                  schema=pa.schema({STATUS: pa.string(), ERROR: pa.string(),
                                                    **columns}))
    store.dir.write_parquet(Store.score_name(version.label, version.version, shard_key(shard),
                                             digest), scored)
    store.register([version], READER, None)
    store.write_pool([PoolShard(shard=shard, url="/nonexistent", stamp="x", digest=digest,
                                samples=len(rows))])
    return PoolSource.of(store)


def test_balancing_reads_the_matching_metadata_dir_and_refuses_another(tmp_path: Path) -> None:
    scorer = matcher(tmp_path)
    rows = [{"caption": c, "lang": lang} for c, lang in
            [("a hot dog", "en"), ("cat", "en"), ("我爱北京", "zh"), ("nothing", "en")] * 5]
    source = _matched_store(tmp_path / "store", scorer, rows)
    step = Step(Metaclip2Balance(Metaclip2Balance.Params(t_en=2)), "test")
    select([step], source, tmp_path / "sel")
    manifest = pq.read_table(tmp_path / "sel" / "manifest").to_pylist()
    assert {r["reason"] for r in manifest[3::4]} == {"metaclip2_balance"}  # no match
    ec = pq.read_table(tmp_path / "sel" / "entry_counts.parquet").to_pylist()
    names = {(r["lang"], r["entry_id"]): (r["entry"], r["count_before"]) for r in ec}
    assert names[("zh", 0)] == ("北京", 5) and names[("en", 2)] == ("hot dog", 5)
    assert names[("en", 0)] == ("cat", 5) and len(ec) == len(METADATA["en"]) + len(
        METADATA["zh"])
    # another directory (one list changed) is refused before anything is written
    other = write_dir(tmp_path / "other", {**METADATA, "zh": METADATA["zh"][::-1]})
    bad = Step(Metaclip2Balance(Metaclip2Balance.Params(t_en=2, metadata_dir=str(other))), "t")
    with pytest.raises(CurateError, match="misnamed"):
        select([bad], source, tmp_path / "sel2")
    assert not (tmp_path / "sel2" / "entry_counts.parquet").exists()
    assert registered("selector")["metaclip2_balance"] is Metaclip2Balance


def test_partitions_counted_apart_give_the_one_table_subset(tmp_path: Path) -> None:
    """count on each partition, merge + plan once, draw on each, finish once (what a
    partitioned selection runs): the same rows, choices, probabilities, entry counts and
    report as ``apply`` on the whole table."""
    root, rows = _synthetic(tmp_path)
    digest = MetadataDir(root).digest()
    params = {"t_en": 300, "seed": 4, "metadata_dir": str(root)}
    whole = _balance(_pool(rows, digest), tmp_path / "whole", **params)
    step = Metaclip2Balance(Metaclip2Balance.Params(**params))
    cons = []
    for lo, hi in ((0, 1000), (1000, 3400), (3400, len(rows))):  # cut inside each language
        con = _pool(rows, digest)
        con.execute(f"DELETE FROM pool WHERE _row < {lo} OR _row >= {hi}")
        cons.append(con)
    ctx = SelectContext(tmp_path / "parts")
    plan = step.plan([step.count(con, "pool") for con in cons], ctx)
    step.finish([step.draw(con, "pool", {"probs": plan["probs"]}) for con in cons], plan, ctx)
    parts = [r for con in cons for r in con.execute(
        "SELECT _row, reason, metaclip2_text, metaclip2_lang, metaclip2_keep_p FROM pool "
        "ORDER BY _row").fetchall()]
    assert parts == whole
    for name in ("entry_counts.parquet", "reports/metaclip2_balance.json"):
        assert (tmp_path / "parts" / name).read_bytes() == (tmp_path / "whole" / name
                                                             ).read_bytes(), name
