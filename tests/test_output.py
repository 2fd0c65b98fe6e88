"""Who writes the output shards (curate/write/output.py): a small output in a process that has
no Ray is written by the driver itself, byte for byte the shards Ray's tasks write; anything
else goes to Ray as before. The tars are laid out as webdataset's own writer lays them out."""

from __future__ import annotations

import io
import json
from pathlib import Path

from conftest import REPO, curate_cli

from curate.runtime import RaySession
from curate.write.output import DRIVER_WRITE_MAX_SAMPLES, OutputShard, TarWriter, in_driver


def test_a_small_selection_is_written_by_the_driver_with_the_same_bytes(
        demo_run: Path, tmp_path: Path) -> None:
    store = demo_run.parent.parent / "store"
    out = tmp_path / "sel"
    res = curate_cli("select", str(store), str(REPO / "pipelines" / "basic.yaml"),
                     "--out", str(out), "--no-progress", "--write-shards")
    assert res.returncode == 0, res.stderr[-2000:]
    events = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    [start] = [e for e in events if e["event"] == "writing_start"]
    assert start["placement"] == "driver_process" and start["reason"] == "small"
    assert start["todo"] == start["shards"] > 0
    assert not [e for e in events if e["event"] == "ray"]  # no Ray was started for it
    # demo_run wrote the same selection through Ray tasks: the same files, the same bytes
    ray_written = demo_run / "output"
    names = sorted(p.name for p in ray_written.glob("*.tar"))
    assert names == sorted(p.name for p in (out / "output").glob("*.tar")) and names
    for name in [*names, "sizes.json"]:
        assert (out / "output" / name).read_bytes() == (ray_written / name).read_bytes(), name


def test_what_goes_to_ray() -> None:
    small = [OutputShard(0, [{}] * 10)]
    big = [OutputShard(i, [{}] * 1000) for i in range(DRIVER_WRITE_MAX_SAMPLES // 1000 + 1)]
    assert not in_driver(small, False, RaySession("ray://head:10001"))  # a cluster was named
    assert not in_driver(small, True, RaySession())  # face blurring: a detector per image
    assert not in_driver(big, False, RaySession())  # too much for one process


def test_tars_are_laid_out_as_webdatasets_writer_lays_them_out(tmp_path: Path) -> None:
    import webdataset as wds

    samples = [{"__key__": "b7e2", "jpg": b"\xff\xd8 image", "txt": b"a cat", "json": b"{}",
                "txt_rw0": "une chatte très noire".encode()},
               {"__key__": "0a1f", "png": b"", "txt": b"x" * 3000}]
    ours, theirs = io.BytesIO(), io.BytesIO()
    writer = TarWriter(ours)
    for s in samples:
        writer.write(dict(s))
    writer.close()
    reference = wds.TarWriter(theirs, encoder=False, mtime=0)
    for s in samples:
        reference.write(dict(s))
    reference.close()
    assert ours.getvalue() == theirs.getvalue()
    # and webdataset reads them back as written
    (tmp_path / "s.tar").write_bytes(ours.getvalue())
    got = list(wds.WebDataset(str(tmp_path / "s.tar"), shardshuffle=False))
    assert [g["__key__"] for g in got] == ["b7e2", "0a1f"]
    assert got[0]["txt_rw0"] == "une chatte très noire".encode() and got[1]["txt"] == b"x" * 3000
