"""A store that cannot lie: every file is checked against the identity it carries.

A small store (two demo shards; the basic scorers and a random-weight CLIP, whose embeddings
are stored as .npy files) is damaged in one way per test: a file copied over another shard's
name, a Parquet or .npy truncated or overwritten, an embedding file deleted, the store's
records (``pool.parquet``, ``store.json``) overwritten with garbage. Each time:

* ``curate select`` refuses the store (a CurateError: exit 2) naming the file and the repair;
* ``curate store verify`` lists the file (exit 1);
* the next ``curate score`` recomputes exactly what is damaged (reusing the rest), after which
  selection gives the clean store's manifest again.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from clipfixtures import random_clip_dir
from conftest import curate_cli

from curate.config import pipeline_from_dict, selection_from_dict
from curate.errors import CurateError
from curate.runner import score, select
from curate.select.pool import PoolSource
from curate.store.store import Store
from curate.store.verify import verify_store

SHARDS = ["00000.tar", "00001.tar"]


def pipeline(pool: Path, model: Path) -> object:
    return pipeline_from_dict({
        "name": "p", "input": {"shards": str(pool / "*.tar")},
        "score": ["image_info", "caption_stats", "language", "exact_hash",
                  {"clip": {"model": str(model), "pretrained": None, "cpus": 1}}],
        "select": []})


SELECTION = {"name": "s", "select": [{"preset": "datacomp_basic"},
                                     {"selector": "exact_dedup"}],
             "output": {"write_shards": False}}


@pytest.fixture(scope="module")
def scored(demo_pool: Path, tmp_path_factory: pytest.TempPathFactory,
           ) -> tuple[Path, Path, object, list[dict[str, object]]]:
    """(the pool, the clean store, the pipeline, the clean selection's manifest rows)."""
    root = tmp_path_factory.mktemp("verify")
    pool = root / "pool"
    pool.mkdir()
    for s in SHARDS:
        shutil.copy(demo_pool / s, pool / s)
    p = pipeline(pool, random_clip_dir(root / "clip"))
    score(p, root / "store", local=True)
    out = select(root / "store", selection_from_dict(SELECTION), root / "sel")
    return pool, root / "store", p, pq.read_table(out.dir / "manifest").to_pylist()


def copy_store(scored: tuple[Path, Path, object, list[dict[str, object]]],
               tmp_path: Path) -> Path:
    store = tmp_path / "store"
    shutil.copytree(scored[1], store)
    return store


def one(store: Path, pattern: str) -> Path:
    [path] = sorted(store.glob(pattern))
    return path


def truncate_half(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def empty(path: Path) -> None:
    path.write_bytes(b"")


def garbage(path: Path) -> None:
    path.write_bytes(b"not what you think\n" * 10)


def delete(path: Path) -> None:
    path.unlink()


def from_shard_0(path: Path) -> None:
    """Put shard 00000's file of the same kind under this (shard 00001's) name."""
    [other] = path.parent.glob("00000.*" + path.suffix)
    shutil.copy(other, path)


# (what is damaged, how, which scorer pass must recompute it)
CASES: list[tuple[str, Callable[[Path], None], str]] = [
    ("scores/language/*/00001.*.parquet", from_shard_0, "language"),
    ("scores/caption_stats/*/00001.*.parquet", truncate_half, "caption_stats"),
    ("scores/exact_hash/*/00001.*.parquet", empty, "exact_hash"),
    ("scores/clip/*/clip_image_emb/00001.*.npy", truncate_half, "clip"),
    ("scores/clip/*/clip_text_emb/00001.*.npy", from_shard_0, "clip"),
    ("scores/clip/*/clip_image_emb/00001.*.npy", delete, "clip"),
    ("base/*/00001.*.parquet", garbage, "(read)"),
]


def computed(result: object) -> dict[str, int]:
    return {name: c for name, c, _ in result.table() if c}  # type: ignore[attr-defined]


@pytest.mark.parametrize(("pattern", "damage", "recomputed"), CASES,
                         ids=[f"{p.split('/')[1]}-{d.__name__}" for p, d, _ in CASES])
def test_a_damaged_file_is_refused_then_recomputed(
        scored: tuple[Path, Path, object, list[dict[str, object]]], tmp_path: Path,
        pattern: str, damage: Callable[[Path], None], recomputed: str) -> None:
    store = copy_store(scored, tmp_path)
    path = one(store, pattern)
    name = str(path.relative_to(store))
    damage(path)
    sel = selection_from_dict(SELECTION)
    with pytest.raises(CurateError) as err:
        select(store, sel, tmp_path / "sel")
    assert f"store file {name} " in err.value.message
    assert err.value.hint is not None and f"curate store verify --repair {store}" in (
        err.value.hint)
    assert not (tmp_path / "sel" / "manifest").exists()
    found = verify_store(Store(store))
    assert name in [d.name for d in found.damage]
    result = score(scored[2], store, local=True)
    assert name in [d.name for d in result.damaged]
    assert computed(result) == {recomputed: 1}  # that shard's file only; the rest is reused
    assert verify_store(Store(store)).damage == []
    out = select(store, sel, tmp_path / "sel")
    assert pq.read_table(out.dir / "manifest").to_pylist() == scored[3]


def test_the_cli_names_the_file_and_verify_repairs(
        scored: tuple[Path, Path, object, list[dict[str, object]]], tmp_path: Path) -> None:
    store = copy_store(scored, tmp_path)
    path = one(store, "scores/language/*/00001.*.parquet")
    name = str(path.relative_to(store))
    from_shard_0(path)
    sel = tmp_path / "sel.yaml"
    sel.write_text("name: s\nselect:\n  - preset: datacomp_basic\noutput:\n"
                   "  write_shards: false\n")
    r = curate_cli("select", str(store), str(sel), "--out", str(tmp_path / "sel"))
    assert r.returncode == 2, r.stderr
    assert f"store file {name} does not belong to shard 00001.tar (it holds shard " \
        "00000.tar's)" in r.stderr
    assert "hint: curate store verify --repair" in r.stderr
    r = curate_cli("store", "verify", str(store), "--no-progress")
    assert r.returncode == 1, r.stderr
    assert f"damaged: store file {name} does not belong to shard 00001.tar" in r.stdout
    r = curate_cli("store", "verify", str(store), "--repair", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert f"removed: {name}" in r.stdout
    assert not path.exists()
    r = curate_cli("store", "verify", str(store), "--no-progress")
    assert r.returncode == 0 and "0 damaged" in r.stdout, r.stdout + r.stderr


def test_embeddings_changed_inside_are_caught_by_their_checksum(
        scored: tuple[Path, Path, object, list[dict[str, object]]], tmp_path: Path) -> None:
    """A row in the middle of an .npy changed (shape and first/last rows intact): the cheap
    check cannot see it, the reader and `curate store verify` do; repair, then score, restores
    the clean embeddings."""
    store = copy_store(scored, tmp_path)
    path = one(store, "scores/clip/*/clip_image_emb/00001.*.npy")
    clean = np.load(path)
    changed = clean.copy()
    changed[10] = changed[11]
    np.save(path, changed)
    parquet = str(one(store, "scores/clip/*/00001.*.parquet").relative_to(store))
    source = PoolSource.of(Store(store))  # the cheap checks pass
    with pytest.raises(CurateError, match="SHA-256 differs"):
        source.sidecars().read_rows("clip_image_emb", ["00001.tar"], [3])
    found = verify_store(Store(store), repair=True)
    assert {d.name for d in found.damage} == {str(path.relative_to(store)), parquet} == set(
        found.removed)
    result = score(scored[2], store, local=True)
    assert computed(result) == {"clip": 1}
    assert np.array_equal(np.load(path), clean, equal_nan=True)


@pytest.mark.parametrize("record", ["pool.parquet", "store.json"])
def test_damaged_records_are_an_error_then_rebuilt_by_score(
        scored: tuple[Path, Path, object, list[dict[str, object]]], tmp_path: Path,
        record: str) -> None:
    store = copy_store(scored, tmp_path)
    garbage(store / record)
    with pytest.raises(CurateError, match=f"{record} .*is damaged"):
        select(store, selection_from_dict(SELECTION), tmp_path / "sel")
    result = score(scored[2], store, local=True)
    assert computed(result) == {}  # nothing is recomputed: every score file is intact
    out = select(store, selection_from_dict(SELECTION), tmp_path / "sel")
    assert pq.read_table(out.dir / "manifest").to_pylist() == scored[3]
    if record == "store.json":
        assert (store / "store.json.damaged").read_bytes().startswith(b"not what")


def test_damaged_selection_files_are_named_and_rewritten_by_select(
        scored: tuple[Path, Path, object, list[dict[str, object]]], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Each file of a selection (tables, records, the DuckDB catalogue) overwritten: every
    command that reads the selection exits 2 naming it; selecting again rewrites it."""
    from curate.cli import main

    sel_dir = tmp_path / "sel"
    sel = selection_from_dict(SELECTION)
    select(scored[1], sel, sel_dir)
    for name in ("manifest/part-00000.parquet", "funnel.parquet", "shards.parquet",
                 "stages.parquet", "stats.json", "selection.json", "catalog.duckdb"):
        garbage(sel_dir / name)
        for argv in (["stats", str(sel_dir)], ["query", str(sel_dir), "select 1"],
                     ["export", str(sel_dir), "--out", str(tmp_path / "uids.npy")],
                     ["diff", str(sel_dir), str(sel_dir)]):
            capsys.readouterr()
            assert main(argv) == 2, (name, argv)
            err = capsys.readouterr().err
            assert err.startswith(f"error: selection file {sel_dir / name} is damaged"), err
            assert "hint: run the `curate select`" in err
        select(scored[1], sel, sel_dir)
        assert main(["stats", str(sel_dir)]) == 0
    assert pq.read_table(sel_dir / "manifest").to_pylist() == scored[3]
