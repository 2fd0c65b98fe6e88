"""Exports of the demo run (DataComp .npy, uid list, Parquet for re-download) and resharding a
pool by a uid list, from the run's manifest or by reading the pool."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import duckdb
import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import curate_cli

from curate.errors import CurateError
from curate.write.export import (
    export_datacomp,
    export_parquet,
    export_uids,
    kept_uids,
    pairs_to_uids,
    read_uids,
    reshard,
    uids_to_pairs,
)


def _members(out: Path) -> dict[str, dict[str, bytes]]:
    samples: dict[str, dict[str, bytes]] = {}
    for tar in sorted(out.glob("*.tar")):
        with tarfile.open(tar) as t:
            for m in t.getmembers():
                key, ext = m.name.split(".", 1)
                samples.setdefault(key, {})[ext] = t.extractfile(m).read()  # type: ignore
    return samples


def test_datacomp_export_round_trips(demo_run: Path, tmp_path: Path) -> None:
    kept = kept_uids(demo_run)
    n = export_datacomp(demo_run, tmp_path / "subset.npy")
    pairs = np.load(tmp_path / "subset.npy")
    assert n == len(kept) == len(pairs) > 0
    assert pairs.dtype == np.dtype("u8,u8")  # what DataComp's resharder asserts
    assert (np.sort(pairs) == pairs).all()
    assert int(pairs[0]["f0"]) == min(int(u[:16], 16) for u in kept)
    assert sorted(pairs_to_uids(pairs)) == sorted(kept)
    assert sorted(read_uids(tmp_path / "subset.npy")) == sorted(kept)
    assert uids_to_pairs(["f" * 32, "0" * 31 + "1"]).tolist() == [(0, 1), (2**64 - 1, 2**64 - 1)]
    with pytest.raises(CurateError, match="32 hex"):
        uids_to_pairs(["abc"])


def test_uid_list_and_parquet(demo_run: Path, tmp_path: Path) -> None:
    kept = kept_uids(demo_run)
    assert export_uids(demo_run, tmp_path / "kept.txt") == len(kept)
    assert (tmp_path / "kept.txt").read_text().split() == kept
    assert read_uids(tmp_path / "kept.txt") == kept
    assert export_parquet(demo_run, tmp_path / "kept.parquet") == len(kept)
    t = pq.read_table(tmp_path / "kept.parquet")
    assert t.column_names == ["uid", "url", "caption"]
    assert t.column("uid").to_pylist() == kept
    assert read_uids(tmp_path / "kept.parquet") == kept
    truth = dict(duckdb.connect().execute(
        f"SELECT uid, caption FROM read_parquet('{demo_run / 'manifest'}/*.parquet')").fetchall())
    assert all(truth[u] == c for u, c in zip(kept, t.column("caption").to_pylist(),
                                               strict=True))


def test_reshard_from_run_and_from_pool(demo_run: Path, demo_pool: Path,
                                        tmp_path: Path) -> None:
    kept = kept_uids(demo_run)
    chosen = [*kept[::3], "0" * 32]  # every third kept sample, plus a uid not in the pool
    (tmp_path / "chosen.txt").write_text("\n".join(chosen))
    by_run = reshard(read_uids(tmp_path / "chosen.txt"), tmp_path / "by_run", run_dir=demo_run,
                     samples_per_shard=40)
    assert by_run.written == len(chosen) - 1 and by_run.missing == ["0" * 32]
    assert (tmp_path / "by_run" / "missing_uids.txt").read_text().split() == ["0" * 32]
    sizes = json.loads((tmp_path / "by_run" / "sizes.json").read_text())
    assert sum(sizes.values()) == by_run.written and max(sizes.values()) <= 40
    by_pool = reshard(chosen, tmp_path / "by_pool", pool=str(demo_pool / "*.tar"),
                      samples_per_shard=40)
    assert by_pool.written == by_run.written
    a, b = _members(tmp_path / "by_run"), _members(tmp_path / "by_pool")
    assert a == b and set(a) == set(chosen[:-1])
    # the bytes are the run's own output bytes (image and caption)
    run_out = _members(demo_run / "output")
    for uid, m in a.items():
        image_ext = next(e for e in m if e not in ("txt", "json"))
        assert m[image_ext] == run_out[uid][image_ext] and m["txt"] == run_out[uid]["txt"]
        assert json.loads(m["json"])["uid"] == uid


def test_cli(demo_run: Path, tmp_path: Path) -> None:
    r = curate_cli("export", str(demo_run), "--format", "datacomp", "--out",
                   str(tmp_path / "s.npy"))
    assert r.returncode == 0, r.stderr
    r = curate_cli("reshard", "--uids", str(tmp_path / "s.npy"), "--run", str(demo_run),
                   "--out", str(tmp_path / "shards"))
    assert r.returncode == 0, r.stderr
    assert "wrote" in r.stdout and len(_members(tmp_path / "shards")) == len(
        kept_uids(demo_run))
    r = curate_cli("reshard", "--uids", str(tmp_path / "s.npy"), "--out", str(tmp_path / "x"))
    assert r.returncode != 0 and "exactly one of --run" in r.stderr
