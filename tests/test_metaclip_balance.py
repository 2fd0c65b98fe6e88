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

from curate.stages.base import SelectContext
from curate.stages.metaclip_balance import MetaclipBalance, draws, uid64


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
        "metaclip_keep_p": pa.array([None] * len(idx), pa.float64()),
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
