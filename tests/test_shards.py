"""Shard listing and reading: grouping, identity, and every malformed input recorded."""

from __future__ import annotations

import hashlib
import tarfile
from pathlib import Path

import fsspec
import pytest
from shardmaker import clean_shard, jpeg, sample_members, write_tar

from curate.errors import CurateError
from curate.io.shards import ShardReader, ShardRef, list_shards, read_members, split_member
from curate.uid import derive_uid


def read_all(ref: ShardRef, batch_size: int = 4) -> tuple[list[dict], ShardReader]:
    reader = ShardReader(ref, batch_size=batch_size)
    rows = [r for b in reader for r in b.to_pylist()]
    return rows, reader


def test_split_member_follows_webdataset_convention() -> None:
    assert split_member("a/b/000001.seg.jpg") == ("a/b/000001", "seg.jpg")
    assert split_member("000001.JPG") == ("000001", "jpg")
    assert split_member("README") is None
    assert split_member(".hidden") is None


def test_list_shards_brace_glob_and_ids(tmp_path: Path) -> None:
    for i in range(3):
        clean_shard(tmp_path / "pool" / f"{i:05d}.tar", 1)
    clean_shard(tmp_path / "pool" / "sub" / "00000.tar", 1)
    refs = list_shards(str(tmp_path / "pool/{00000..00002}.tar"))
    assert [r.shard_id for r in refs] == ["00000.tar", "00001.tar", "00002.tar"]
    refs = list_shards(str(tmp_path / "pool/**/*.tar"))
    assert "sub/00000.tar" in [r.shard_id for r in refs]
    # The same files listed twice are one shard each.
    assert len(list_shards([str(tmp_path / "pool/00000.tar")] * 2)) == 1


def test_a_folder_is_the_shards_directly_in_it(tmp_path: Path) -> None:
    # `--input demo/pool` the way img2dataset and webdataset users pass it: the folder's tars,
    # not its Parquet or stats files, not its sub-folders, and the same ids as a glob gives.
    for i in range(3):
        clean_shard(tmp_path / "pool" / f"{i:05d}.tar", 1)
    (tmp_path / "pool" / "00000.parquet").write_bytes(b"PAR1")
    (tmp_path / "pool" / "00000_stats.json").write_text("{}")
    clean_shard(tmp_path / "pool" / "sub" / "00000.tar", 1)
    (tmp_path / "pool" / "dir.tar").mkdir()  # a folder named like a shard is not one
    for given in (tmp_path / "pool", f"{tmp_path / 'pool'}/"):
        refs = list_shards(str(given))
        assert [r.shard_id for r in refs] == ["00000.tar", "00001.tar", "00002.tar"]
        assert refs == list_shards(str(tmp_path / "pool/*.tar"))
    # A glob that matches folders takes only the files.
    assert [r.shard_id for r in list_shards(str(tmp_path / "pool/*"))] == [
        "00000.parquet", "00000.tar", "00000_stats.json", "00001.tar", "00002.tar"]
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(CurateError, match="holds no shard") as err:
        list_shards(str(tmp_path / "empty"))
    assert "**/*.tar" in (err.value.hint or "")


def test_list_shards_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(CurateError, match="does not exist"):
        list_shards(str(tmp_path / "nope.tar"))
    with pytest.raises(CurateError, match="matches no file"):
        list_shards(str(tmp_path / "*.tar"))


def test_read_memory_filesystem() -> None:
    path = Path("/tmp/_curate_mem_src.tar")
    clean_shard(path, 3)
    with fsspec.open("memory://pool/00000.tar", "wb") as f:
        f.write(path.read_bytes())
    refs = list_shards("memory://pool/*.tar")
    assert refs[0].url.startswith("memory://")
    rows, reader = read_all(refs[0])
    assert len(rows) == 3 and reader.report.truncated is None


def test_samples_identity_and_members(tmp_path: Path) -> None:
    path = clean_shard(tmp_path / "00007.tar", 5)
    ref = list_shards(str(path))[0]
    rows, reader = read_all(ref, batch_size=2)
    assert [r["index"] for r in rows] == list(range(5))
    assert all(r["status"] == "ok" for r in rows)
    assert rows[0]["uid"] == derive_uid("00007.tar", "000000")
    assert rows[0]["url"] == "https://example.invalid/0.jpg"
    assert rows[0]["caption"].startswith("a photograph")
    assert reader.report.samples == 5
    # The reader's identity records: each image's SHA-256, and the shard's (hashed as it
    # streamed by, trailing padding included).
    with tarfile.open(path) as tar:
        image = tar.extractfile("000002.jpg").read()  # type: ignore[union-attr]
    assert rows[2]["image_sha256"] == hashlib.sha256(image).hexdigest()
    assert reader.digest == hashlib.sha256(path.read_bytes()).hexdigest()


def test_uid_from_json_is_kept(tmp_path: Path) -> None:
    uid = "0123456789abcdef0123456789abcdef"
    path = write_tar(tmp_path / "a.tar",
                     sample_members("k", jpeg(), "a cat on a mat", {"uid": uid}))
    rows, _ = read_all(list_shards(str(path))[0])
    assert rows[0]["uid"] == uid


def test_malformed_samples_are_recorded_not_dropped(tmp_path: Path) -> None:
    members = (
        sample_members("a", jpeg(), "fine caption here")
        + sample_members("b", None, "no image at all")                  # no image member
        + sample_members("c", jpeg(), b"caf\xe9 \xff broken")             # not UTF-8
        + sample_members("d", jpeg(), None)                             # no caption member
        + sample_members("e", jpeg(), "bad json", b"{not json")          # invalid json
        + sample_members("f", jpeg(), "", None)                         # empty caption
    )
    path = write_tar(tmp_path / "m.tar", members)
    rows, reader = read_all(list_shards(str(path))[0])
    by_key = {r["key"]: r for r in rows}
    assert list(by_key) == ["a", "b", "c", "d", "e", "f"]
    assert by_key["a"]["status"] == "ok"
    assert by_key["b"]["error_stage"] == "read" and "no image member" in by_key["b"]["error"]
    assert "not valid UTF-8" in by_key["c"]["error"] and "\ufffd" in by_key["c"]["caption"]
    assert by_key["d"]["status"] == "ok" and by_key["d"]["caption"] is None
    assert "not a valid JSON object" in by_key["e"]["error"]
    assert by_key["f"]["status"] == "ok" and by_key["f"]["caption"] == ""
    assert reader.report.read_errors == 3


def test_truncated_tar_keeps_what_was_read(tmp_path: Path) -> None:
    path = clean_shard(tmp_path / "t.tar", 6)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * 0.6)])
    rows, reader = read_all(list_shards(str(path))[0])
    assert reader.report.truncated is not None
    assert 2 <= len(rows) < 6
    assert all(r["status"] == "ok" for r in rows[:-1])
    assert rows[-1]["status"] == "error" and "ends inside this sample" in rows[-1]["error"]


def test_key_collisions_get_distinct_uids(tmp_path: Path) -> None:
    members = (sample_members("k", jpeg(), "first sample with this key")
               + sample_members("j", jpeg(), "in between")
               + sample_members("k", jpeg(), "second sample with this key"))
    path = write_tar(tmp_path / "c.tar", members)
    rows, reader = read_all(list_shards(str(path))[0])
    assert [r["key"] for r in rows] == ["k", "j", "k"]
    assert len({r["uid"] for r in rows}) == 3
    assert reader.report.key_collisions == 1


def test_hostile_member_names_are_only_strings(tmp_path: Path) -> None:
    path = write_tar(tmp_path / "h.tar",
                     sample_members("../../evil", jpeg(), "a caption that is long enough"))
    rows, _ = read_all(list_shards(str(path))[0])
    assert rows[0]["key"] == "../../evil"
    assert not (tmp_path.parent / "evil.jpg").exists()


def test_read_members_returns_original_bytes(tmp_path: Path) -> None:
    path = clean_shard(tmp_path / "r.tar", 4)
    ref = list_shards(str(path))[0]
    got = read_members(ref, {1, 3})
    with tarfile.open(path) as tar:
        assert got[1]["jpg"] == tar.extractfile("000001.jpg").read()  # type: ignore[union-attr]
        assert got[3]["txt"] == tar.extractfile("000003.txt").read()  # type: ignore[union-attr]
    assert set(got) == {1, 3} and got[3]["__key__"] == b"000003"


def test_truncation_inside_member_data_is_detected(tmp_path: Path) -> None:
    path = clean_shard(tmp_path / "t.tar", 3)
    data = path.read_bytes()
    # Cut in the middle of the last image's data: header read, bytes missing.
    with tarfile.open(path) as tar:
        last = [m for m in tar.getmembers() if m.name.endswith(".jpg")][-1]
    path.write_bytes(data[: last.offset_data + last.size // 2])
    rows, reader = read_all(list_shards(str(path))[0])
    assert reader.report.truncated is not None
    assert [r["status"] for r in rows] == ["ok", "ok", "error"]


def test_gzipped_shard_reads(tmp_path: Path) -> None:
    import gzip

    path = clean_shard(tmp_path / "z.tar", 3)
    gz = tmp_path / "z.tar.gz"
    gz.write_bytes(gzip.compress(path.read_bytes()))
    rows, reader = read_all(list_shards(str(gz))[0])
    assert len(rows) == 3 and reader.report.truncated is None


def test_download_shard_samples_are_in_key_order(tmp_path: Path) -> None:
    """A downloaded shard: the tar's images and, in their key order, the URLs that failed
    (img2dataset's Parquet); read_members numbers samples the same way."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    write_tar(tmp_path / "00000.tar", sample_members("0000001", jpeg(), "one")
              + sample_members("0000003", jpeg(colour=(1, 2, 3)), "three"))
    pq.write_table(pa.table({
        "key": ["0000000", "0000001", "0000002", "0000003", "0000004"],
        "status": ["failed_to_download", "success", "failed_to_download", "success",
                   "failed_to_download"],
        "error_message": ["404", None, "timeout", None, "404"],
        "url": [f"http://x/{i}" for i in range(5)],
        "caption": [f"c{i}" for i in range(5)]}), tmp_path / "00000.parquet")
    ref = ShardRef(str(tmp_path / "00000.tar"), "00000.tar", str(tmp_path / "00000.parquet"))
    rows, reader = read_all(ref)
    assert [(r["key"], r["index"], r["status"]) for r in rows] == [
        ("0000000", 0, "error"), ("0000001", 1, "ok"), ("0000002", 2, "error"),
        ("0000003", 3, "ok"), ("0000004", 4, "error")]
    assert rows[2]["error_stage"] == "download" and rows[2]["error"] == "timeout"
    got = read_members(ref, {1, 3})
    assert got[1]["txt"] == b"one" and got[3]["txt"] == b"three"
    tar_digest = hashlib.sha256((tmp_path / "00000.tar").read_bytes()).hexdigest()
    pq_digest = hashlib.sha256((tmp_path / "00000.parquet").read_bytes()).hexdigest()
    from curate.store.identity import combine, shard_digest

    assert reader.digest == combine(tar_digest, pq_digest) == shard_digest(ref.url, ref.failures)
