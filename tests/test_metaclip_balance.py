"""MetaCLIP balancing: per-entry kept counts ≈ min(count, t), P(keep) = 1 - prod(1 - p) for rows
with several entries, reproducible draws independent of order and sharding, t from a target
size, and the outputs (entry_counts.parquet, report, plot)."""

from __future__ import annotations

import hashlib
import json
import math
import random
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from stagetest import score
from storemaker import READER

from curate.config import Step
from curate.errors import CurateError
from curate.lib.metadata import DEFAULT_METADATA, metadata_digest
from curate.schema import SAMPLE_COLUMNS
from curate.select.pool import PoolSource
from curate.select.selection import select
from curate.stages.base import SelectContext
from curate.stages.metaclip_balance import MetaclipBalance, draws, uid64
from curate.stages.metaclip_match import MetaclipMatch, MetaclipMatchParams
from curate.store.store import ERROR, STATUS, PoolShard, Store, Version, shard_key

SHIPPED = metadata_digest(DEFAULT_METADATA)


def _uid(i: int) -> str:
    return hashlib.sha256(f"s{i}".encode()).hexdigest()[:32]


def _pool(entries: list[list[int] | None], shards: int = 1, order_seed: int | None = None,
          dropped: set[int] = frozenset()) -> tuple[duckdb.DuckDBPyConnection, list[str]]:
    """A selection table like curate.select.selection builds: _row, uid, shard, index, reason, the
    entry lists and the selector's extra column."""
    idx = list(range(len(entries)))
    if order_seed is not None:
        random.Random(order_seed).shuffle(idx)
    uids = [_uid(i) for i in idx]
    table = pa.table({
        "_row": pa.array(range(len(idx)), pa.int64()),
        "uid": uids,
        "shard": [f"{k % shards:05d}.tar" for k in range(len(idx))],
        "index": pa.array([k // shards for k in range(len(idx))], pa.int32()),
        "reason": pa.array(["earlier_rule" if i in dropped else None for i in idx], pa.string()),
        "metaclip_entries": pa.array([entries[i] for i in idx], pa.list_(pa.int32())),
        "metaclip_metadata": [SHIPPED] * len(idx),
        "metaclip_keep_p": pa.array([None] * len(idx), pa.float64()),
        "metaclip_texts_kept": pa.array([None] * len(idx), pa.int32()),
    })
    con = duckdb.connect()
    con.register("t", table)
    con.execute("CREATE TABLE pool AS SELECT * FROM t")
    con.unregister("t")
    return con, uids


def _apply(con: duckdb.DuckDBPyConnection, run_dir: Path, **params: object) -> set[str]:
    sel = MetaclipBalance(MetaclipBalance.Params(**params))
    sel.apply(con, "pool", SelectContext(run_dir))
    return {u for (u,) in con.execute("SELECT uid FROM pool WHERE reason IS NULL").fetchall()}


def test_uid64_and_draws() -> None:
    uids = [_uid(i) for i in range(50)] + ["ABCDEF0123456789" + "0" * 16]
    got = uid64(pa.array(uids))
    assert got.tolist() == [int(u[:16], 16) for u in uids]
    u = draws(0, got, np.arange(len(uids)))
    assert ((u >= 0) & (u < 1)).all()
    # elementwise: the same (seed, uid, entry) draws the same value wherever it sits
    again = draws(0, got[::-1].copy(), np.arange(len(uids))[::-1].copy())[::-1]
    assert np.array_equal(u, again)
    assert not np.array_equal(u, draws(1, got, np.arange(len(uids))))
    big = draws(3, np.repeat(got[:1], 200_000), np.arange(200_000))
    assert abs(big.mean() - 0.5) < 0.005 and abs((big < 0.1).mean() - 0.1) < 0.005


def test_kept_counts_follow_min_count_t(tmp_path: Path) -> None:
    counts = {0: 20_000, 1: 5_000, 2: 1_500, 3: 800, 4: 40}
    entries = [[e] for e, c in counts.items() for _ in range(c)] + [[]] * 300 + [None] * 10
    con, _ = _pool(entries)
    t = 1_000
    kept = _apply(con, tmp_path, t=t)
    after = dict(con.execute("SELECT metaclip_entries[1], count(*) FROM pool WHERE reason IS "
                             "NULL GROUP BY 1").fetchall())
    for e, c in counts.items():
        if c <= t:
            assert after[e] == c  # p = 1: the tail is kept whole
        else:
            sd = math.sqrt(t * (1 - t / c))
            assert abs(after[e] - t) < 5 * sd, (e, after[e])
    assert len(kept) == sum(after.values())
    reasons = dict(con.execute("SELECT coalesce(reason, 'kept'), count(*) FROM pool "
                               "GROUP BY 1").fetchall())
    assert reasons["metaclip_balance"] == len(entries) - len(kept)  # incl. 310 without match
    probs = dict(con.execute("SELECT metaclip_entries[1], any_value(metaclip_keep_p) FROM pool "
                             "WHERE len(metaclip_entries) = 1 GROUP BY 1").fetchall())
    assert probs[0] == pytest.approx(t / 20_000) and probs[4] == 1.0
    ec = pq.read_table(tmp_path / "entry_counts.parquet").to_pydict()
    assert ec["count_before"][:5] == [counts[e] for e in range(5)]
    assert ec["count_after"][:5] == [after[e] for e in range(5)]
    report = json.loads((tmp_path / "reports" / "metaclip_balance.json").read_text())
    assert report["t"] == t and report["head_entries"] == 3 and report["rows_without_match"] == 310
    assert report["head_match_share"] == pytest.approx(26_500 / 27_340)
    assert report["rows_in"] == len(entries) and report["rows_kept"] == len(kept)
    png = (tmp_path / "reports" / "metaclip_balance.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 5_000


def test_keep_probability_with_several_entries(tmp_path: Path) -> None:
    # entries 0 and 1 each match 2t rows (p = 1/2); every row matches both: P(keep) = 3/4
    n, t = 40_000, 20_000
    con, _ = _pool([[0, 1]] * n)
    kept = _apply(con, tmp_path, t=t, seed=5)
    assert abs(len(kept) / n - 0.75) < 5 * math.sqrt(0.75 * 0.25 / n)
    (p,) = con.execute("SELECT DISTINCT metaclip_keep_p FROM pool").fetchone()
    assert p == pytest.approx(0.75)


def test_independent_of_order_and_sharding_and_reproducible(tmp_path: Path) -> None:
    rng = random.Random(0)
    entries = [sorted(rng.sample(range(40), rng.randint(0, 4))) for _ in range(5_000)]
    a = _apply(_pool(entries)[0], tmp_path / "a", t=50, seed=1)
    b = _apply(_pool(entries, shards=7, order_seed=3)[0], tmp_path / "b", t=50, seed=1)
    c = _apply(_pool(entries, shards=2, order_seed=4)[0], tmp_path / "c", t=50, seed=1)
    other = _apply(_pool(entries)[0], tmp_path / "d", t=50, seed=2)
    assert a == b == c and 0 < len(a) < len(entries)
    assert other != a


def test_only_rows_still_kept_are_counted(tmp_path: Path) -> None:
    entries = [[0]] * 100 + [[1]] * 100
    con, uids = _pool(entries, dropped=set(range(50)))
    _apply(con, tmp_path, t=60)
    ec = pq.read_table(tmp_path / "entry_counts.parquet").to_pydict()
    assert ec["count_before"][:2] == [50, 100]
    rows = dict(con.execute("SELECT uid, reason FROM pool").fetchall())
    assert all(rows[uids[i]] == "earlier_rule" for i in range(50))  # untouched


def test_t_from_target_size(tmp_path: Path) -> None:
    rng = random.Random(1)
    zipf = [int(10_000 / (k + 1)) for k in range(200)]
    entries = [[k] + ([rng.randrange(200)] if rng.random() < 0.3 else [])
               for k, c in enumerate(zipf) for _ in range(c)]
    entries = [sorted(set(e)) for e in entries]
    con, _ = _pool(entries)
    kept = _apply(con, tmp_path, target_size=10_000)
    report = json.loads((tmp_path / "reports" / "metaclip_balance.json").read_text())
    assert report["t_from_target_size"] == 10_000 and report["t"] > 1
    assert abs(len(kept) - 10_000) < 300


def test_params() -> None:
    with pytest.raises(ValueError, match="not both"):
        MetaclipBalance.Params(t=5, target_size=10)


# --------------------------------------------------------------------------------------------
# Balancing names the entries from the metadata matching used (issue 16, item 6).

def _matched_store(root: Path, rows: list[dict[str, object]], scorer: MetaclipMatch,
                   shard: str = "00000.tar") -> PoolSource:
    """A store holding ``scorer``'s real output for ``rows`` (captions or json members), its
    version recorded with the scorer's name and parameters, as scoring records it."""
    out, _ = score(scorer, rows)
    store = Store(root)
    digest = hashlib.sha256(shard.encode()).hexdigest()
    columns = dict(scorer.outputs())
    version = Version(label=scorer.label, version="1" * 16, name=scorer.name,
                      params=scorer.params.model_dump(mode="json"), reads={}, reader=READER,
                      schema=pa.schema(columns), sidecars={})
    base = [{"uid": _uid(k), "shard": shard, "key": str(k), "index": k, "status": "ok",
             "caption": r.get("caption")} for k, r in enumerate(rows)]
    store.dir.write_parquet(Store.base_name(READER, shard_key(shard), digest),
                            pa.Table.from_pylist(base, schema=pa.schema(SAMPLE_COLUMNS)))
    scored = [{STATUS: "ok", ERROR: None, **r} for r in out]
    store.dir.write_parquet(
        Store.score_name(version.label, version.version, shard_key(shard), digest),
        pa.Table.from_pylist(scored, schema=pa.schema({STATUS: pa.string(), ERROR: pa.string(),
                                                       **columns})))
    store.register([version], READER, None)
    store.write_pool([PoolShard(shard=shard, url=f"/nonexistent/{shard}", stamp="x",
                                digest=digest, samples=len(rows))])
    return PoolSource.of(store)


def _select(source: PoolSource, out: Path, **params: object) -> pa.Table:
    step = Step(MetaclipBalance(MetaclipBalance.Params(**params)), "test")
    select([step], source, out)
    return pq.read_table(out / "manifest")


OWN = [f"w{i}" for i in range(90_000)]
OWN[5291], OWN[89_000], OWN[7] = "the", "zebra crossing", "cat"
OWN_CAPTIONS = ["the cat", "the zebra crossing", "a zebra crossing", "the end", "w12 w13"]


def test_names_and_entry_count_come_from_the_matching_metadata(tmp_path: Path) -> None:
    meta = tmp_path / "own.json"
    meta.write_text(json.dumps(OWN), encoding="utf-8")
    scorer = MetaclipMatch(MetaclipMatchParams(metadata=str(meta)))
    source = _matched_store(tmp_path / "store", [{"caption": c} for c in OWN_CAPTIONS], scorer)
    # balancing is not told the file: it takes the one matching used
    _select(source, tmp_path / "sel", t=100)
    ec = pq.read_table(tmp_path / "sel" / "entry_counts.parquet").to_pydict()
    names = dict(zip(ec["entry_id"], ec["entry"], strict=True))
    counts = dict(zip(ec["entry_id"], ec["count_before"], strict=True))
    assert len(ec["entry_id"]) == 90_000
    assert names[5291] == "the" and counts[5291] == 3      # the wordnet list has another word
    assert names[89_000] == "zebra crossing" and counts[89_000] == 2  # past wordnet's end
    assert names[7] == "cat" and counts[12] == counts[13] == 1
    report = json.loads((tmp_path / "sel" / "reports" / "metaclip_balance.json").read_text())
    assert report["entries"] == 90_000 and report["metadata"] == str(meta.resolve())
    assert report["metadata_digest"] == metadata_digest(meta)
    assert {e["entry"] for e in report["top_entries"]} == {"the", "zebra crossing", "cat",
                                                          "w12", "w13"}


def test_a_metadata_mismatch_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    meta = tmp_path / "own.json"
    meta.write_text(json.dumps(OWN), encoding="utf-8")
    scorer = MetaclipMatch(MetaclipMatchParams(metadata=str(meta)))
    source = _matched_store(tmp_path / "store", [{"caption": c} for c in OWN_CAPTIONS], scorer)
    with pytest.raises(CurateError, match="misnamed"):  # told another file
        _select(source, tmp_path / "a", t=100, metadata=str(DEFAULT_METADATA))
    assert not (tmp_path / "a" / "entry_counts.parquet").exists()
    assert not (tmp_path / "a" / "manifest").exists()
    meta.write_text(json.dumps(OWN[::-1]), encoding="utf-8")  # the file changed since matching
    with pytest.raises(CurateError, match="misnamed"):
        _select(source, tmp_path / "b", t=100)
    meta.unlink()
    with pytest.raises(CurateError, match="not a file"):
        _select(source, tmp_path / "c", t=100)
    # the same entries in another file are the same metadata: accepted
    copy = tmp_path / "copy.json"
    copy.write_text(json.dumps(OWN), encoding="utf-8")
    _select(source, tmp_path / "d", t=100, metadata=str(copy))
    assert (tmp_path / "d" / "entry_counts.parquet").exists()


def test_two_metadata_digests_in_one_pool_are_refused(tmp_path: Path) -> None:
    con, _ = _pool([[0], [1], [2]])
    con.execute("UPDATE pool SET metaclip_metadata = 'ffffffffffffffff' WHERE _row = 1")
    with pytest.raises(CurateError, match="2 different metadata files"):
        _apply(con, tmp_path, t=1)
    con.execute("DROP TABLE pool")
    con, _ = _pool([[0]])
    con.execute("ALTER TABLE pool DROP COLUMN metaclip_metadata")
    with pytest.raises(CurateError, match="no column 'metaclip_metadata'"):
        _apply(con, tmp_path, t=1)
    _apply(con, tmp_path, t=1, metadata_column=None)  # hand-made ids: unchecked


# --------------------------------------------------------------------------------------------
# Several texts per image: MetaCLIP counts and keeps texts; a row is kept with any text.

def _nested_pool(rows: list[list[list[int]] | None]) -> duckdb.DuckDBPyConnection:
    con, _ = _pool([[0]] * len(rows))
    con.execute("ALTER TABLE pool DROP COLUMN metaclip_entries")
    con.execute("ALTER TABLE pool ADD COLUMN metaclip_entries INTEGER[][]")
    con.register("n", pa.table({"_row": pa.array(range(len(rows)), pa.int64()),
                                "e": pa.array(rows, pa.list_(pa.list_(pa.int32())))}))
    con.execute("UPDATE pool SET metaclip_entries = n.e FROM n WHERE pool._row = n._row")
    return con


def test_several_texts_count_per_text_and_keep_rows_with_a_kept_text(tmp_path: Path) -> None:
    # entry 0 is in both texts of every row (4,000 texts), entry 1 in 500 texts, 2 in none
    n, t = 2_000, 1_000
    rows: list[list[list[int]] | None] = [[[0], [0, 1] if i < 500 else [0]]
                                          for i in range(n)] + [[], None, [[]]]
    con = _nested_pool(rows)
    kept = _apply(con, tmp_path, t=t, seed=3)
    ec = pq.read_table(tmp_path / "entry_counts.parquet").to_pydict()
    assert ec["count_before"][:3] == [2 * n, 500, 0]      # texts, not rows
    # entry 1 (p = 1) keeps all its texts, hence its 500 rows; entry 0 keeps each text w.p. 1/4
    got = dict(con.execute("SELECT _row, metaclip_texts_kept FROM pool").fetchall())
    assert all(got[r] >= 1 for r in range(500))
    share = sum(1 for r in range(500, n) if got[r]) / (n - 500)
    assert abs(share - (1 - 0.75**2)) < 5 * math.sqrt(0.44 * 0.56 / (n - 500))
    assert ec["count_after"][1] == 500
    assert ec["count_after"][0] == sum(got[r] for r in range(n))  # every text holds entry 0
    (p0,) = con.execute("SELECT metaclip_keep_p FROM pool WHERE _row = 600").fetchone()
    (p1,) = con.execute("SELECT metaclip_keep_p FROM pool WHERE _row = 1").fetchone()
    assert p0 == pytest.approx(1 - 0.75**2) and p1 == 1.0
    reasons = dict(con.execute("SELECT _row, reason FROM pool").fetchall())
    assert all(reasons[r] == "metaclip_balance" for r in range(n, n + 3))  # no text matched
    assert len(kept) == sum(1 for r in range(n) if got[r])
    report = json.loads((tmp_path / "reports" / "metaclip_balance.json").read_text())
    assert report["rows_without_match"] == 3 and report["texts_per_row"] == "several"


def test_one_text_in_a_list_draws_what_a_plain_row_draws(tmp_path: Path) -> None:
    rng = random.Random(2)
    entries = [sorted(rng.sample(range(30), rng.randint(1, 3))) for _ in range(3_000)]
    plain = _apply(_pool(entries)[0], tmp_path / "a", t=40, seed=9)
    nested = _apply(_nested_pool([[e] for e in entries]), tmp_path / "b", t=40, seed=9)
    assert plain == nested and 0 < len(plain) < len(entries)
    a = pq.read_table(tmp_path / "a" / "entry_counts.parquet")
    b = pq.read_table(tmp_path / "b" / "entry_counts.parquet")
    assert a.equals(b)
