"""The generation cache (rewrites and synthetic captions): a damaged cache file is kept aside
and a new cache started, never an internal error."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from curate.rewrite.cache import GenerationCache


def filled(path: Path) -> None:
    cache = GenerationCache(path)
    cache.put_many([(f"k{i}", "x" * 2000) for i in range(200)], "m", "b")
    cache.close()
    for suffix in ("-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)


def test_a_cache_keeps_its_generations(tmp_path: Path) -> None:
    filled(tmp_path / "c.sqlite")
    cache = GenerationCache(tmp_path / "c.sqlite")
    assert len(cache) == 200 and cache.get_many(["k3", "nope"]) == {"k3": "x" * 2000}


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_a_damaged_cache_is_kept_aside_and_started_anew(
        tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "c.sqlite"
    filled(path)
    data = path.read_bytes()
    path.write_bytes(b"not a database\n" * 100 if damage == "garbage" else data[:len(data) // 2])
    with caplog.at_level(logging.WARNING, logger="curate"):
        cache = GenerationCache(path)
    assert any("is damaged" in r.getMessage() for r in caplog.records)
    assert (tmp_path / "c.sqlite.damaged").exists()
    assert len(cache) == 0
    cache.put_many([("k", "v")], "m", "b")
    assert cache.get_many(["k"]) == {"k": "v"}
