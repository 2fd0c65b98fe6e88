"""Damage inside a shard costs only the samples it touches: a corrupt header in the middle of a
tar is skipped (the reader resynchronises on the next valid header, as GNU tar does) and
reported, a member that cannot be parsed (a json nested 100,000 deep) is its own sample's
error, and the shard's other samples are read."""

from __future__ import annotations

import hashlib
import tarfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from shardmaker import clean_shard, jpeg, random_bytes, sample_members, write_tar

from curate.io.shards import ShardReader, ShardRef, read_members


def read_all(path: Path) -> tuple[list[dict], ShardReader]:
    reader = ShardReader(ShardRef(str(path), path.name), batch_size=4)
    return [r for b in reader for r in b.to_pylist()], reader


def _member(path: Path, name: str) -> tarfile.TarInfo:
    with tarfile.open(path) as tar:
        return tar.getmember(name)


def test_a_corrupt_header_mid_archive_is_skipped_and_reported(tmp_path: Path) -> None:
    path = clean_shard(tmp_path / "00000.tar", 6)
    original = path.read_bytes()
    m = _member(path, "000003.jpg")  # the 4th sample's first header
    data = bytearray(original)
    data[m.offset:m.offset + 512] = random_bytes(512, seed=3)
    path.write_bytes(bytes(data))

    rows, reader = read_all(path)
    assert [r["key"] for r in rows] == [f"{i:06d}" for i in range(6)]  # none lost after it
    assert [r["index"] for r in rows] == list(range(6))
    status = {r["key"]: (r["status"], r["error"]) for r in rows}
    assert status["000003"][0] == "error" and "no image member" in status["000003"][1]
    # The corrupt header could as well have been the last member of the sample before it
    # (its json, say): nothing says whose it was, so that sample fails too, with the reason.
    assert status["000002"] == ("error", f"tar data right after this sample is damaged (bytes "
                                f"{m.offset} to {m.offset_data + 512 * (-(-m.size // 512))} "
                                "were skipped): members of it may be lost")
    assert all(s == "ok" for k, (s, _) in status.items() if k not in ("000002", "000003"))
    damage = reader.report.damaged
    assert damage is not None and damage.startswith(f"corrupt tar data at byte {m.offset}")
    assert reader.report.truncated is None
    # The writer numbers samples the same way and copies the samples after the damage intact.
    got = read_members(ShardRef(str(path), path.name), {4, 5})
    with tarfile.open(fileobj=__import__("io").BytesIO(original)) as tar:
        assert got[4]["jpg"] == tar.extractfile("000004.jpg").read()  # type: ignore[union-attr]
    # The shard's identity is still the hash of its bytes.
    assert reader.digest == hashlib.sha256(path.read_bytes()).hexdigest()


def test_concatenated_tars_are_one_shard_without_damage(tmp_path: Path) -> None:
    a = clean_shard(tmp_path / "a.tar", 2)
    b = clean_shard(tmp_path / "b.tar", 2, start=2)
    both = tmp_path / "00000.tar"
    both.write_bytes(a.read_bytes() + b.read_bytes())  # `cat a.tar b.tar`: zero blocks between
    rows, reader = read_all(both)
    assert [r["key"] for r in rows] == [f"{i:06d}" for i in range(4)]
    assert all(r["status"] == "ok" for r in rows)
    assert reader.report.damaged is None and reader.report.truncated is None


def test_an_unparseable_member_fails_only_its_sample(tmp_path: Path) -> None:
    deep = b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    members = []
    for i in range(7):
        members += sample_members(f"{i:04d}", jpeg(300 + i, 240), f"a photo number {i}",
                                  deep if i == 3 else {"url": f"https://x.invalid/{i}"})
    path = write_tar(tmp_path / "00000.tar", members)
    rows, _ = read_all(path)
    assert len(rows) == 7
    bad = rows[3]
    assert bad["status"] == "error" and bad["error_stage"] == "read"
    assert "json member is not a valid JSON object" in bad["error"]
    assert "nested too deeply" in bad["error"]
    assert all(r["status"] == "ok" for i, r in enumerate(rows) if i != 3)


@pytest.mark.slow
def test_a_damaged_shard_in_a_run(tmp_path: Path, ray_local: None) -> None:
    from conftest import demo_pipeline

    from curate.runner import run

    pool = tmp_path / "pool"
    path = clean_shard(pool / "00000.tar", 6)
    clean_shard(pool / "00001.tar", 4, start=6)
    m = _member(path, "000003.jpg")
    data = bytearray(path.read_bytes())
    data[m.offset:m.offset + 512] = random_bytes(512, seed=4)
    path.write_bytes(bytes(data))
    result = run(demo_pipeline(pool), tmp_path / "run", progress=False)
    assert result.samples == 10
    shards = {r["shard"]: r for r in pq.read_table(result.dir / "shards.parquet").to_pylist()}
    assert shards["00000.tar"]["status"] == "damaged"
    assert shards["00000.tar"]["read_error"].startswith(f"corrupt tar data at byte {m.offset}")
    assert shards["00001.tar"]["status"] == "done"
    manifest = {r["key"]: r for r in pq.read_table(result.dir / "manifest").to_pylist()}
    assert manifest["000003"]["reason"] == "error:read"
    assert manifest["000004"]["kept"] and manifest["000005"]["kept"]


def test_garbage_after_the_archive_end_harms_no_sample(tmp_path: Path) -> None:
    path = clean_shard(tmp_path / "00000.tar", 6)
    path.write_bytes(path.read_bytes() + random_bytes(3000, seed=5))
    rows, reader = read_all(path)
    assert [r["status"] for r in rows] == ["ok"] * 6  # the archive ended before the garbage
    damage = reader.report.damaged
    assert damage is not None and damage.endswith("bytes to the end of the shard")


def test_bytes_with_no_valid_tar_header_are_not_a_tar(tmp_path: Path) -> None:
    from curate.io.shards import ShardUnreadable

    for seed in range(3):
        path = tmp_path / f"{seed:05d}.tar"
        path.write_bytes(random_bytes(5000, seed=seed))  # never 0 samples and a `done` shard
        with pytest.raises(ShardUnreadable, match="is not a tar archive"):
            read_all(path)
