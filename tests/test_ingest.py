"""URL-list input downloaded by img2dataset from a local HTTP server on 127.0.0.1, with 404s,
a response slower than the timeout and a page that is not an image: every URL is one manifest
row, downloaded images are stored byte for byte."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest
from http_server import LocalServer
from PIL import Image

from curate.config import pipeline_from_dict
from curate.runner import run


def photo(i: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (320 + i, 240), (i * 40 % 255, 90, 200)).save(buf, "JPEG", quality=91)
    return buf.getvalue()


@pytest.mark.slow
def test_url_list_download(tmp_path: Path, ray_local: None) -> None:
    images = {f"{i}.jpg": photo(i) for i in range(7)}
    with LocalServer(images, slow_seconds=4.0) as srv:
        rows = [{"url": f"{srv.base}/img/{i}.jpg", "caption": f"a photo of a blue tile number {i}",
                 "uid": f"{i + 1:032x}"} for i in range(7)]
        rows += [
            {"url": f"{srv.base}/img/missing.jpg", "caption": "a photo that is not there",
             "uid": f"{100:032x}"},
            {"url": f"{srv.base}/page/index", "caption": "a web page instead of an image",
             "uid": f"{101:032x}"},
            {"url": f"{srv.base}/slow/0.jpg", "caption": "a server slower than the timeout",
             "uid": f"{102:032x}"},
        ]
        pq.write_table(pa.Table.from_pylist(rows), tmp_path / "urls.parquet")
        pipeline = pipeline_from_dict({
            "name": "ingest",
            "input": {"urls": str(tmp_path / "urls.parquet"),
                      "download": {"timeout": 2, "samples_per_shard": 4, "thread_count": 4}},
            "score": ["image_info", "caption_stats", "language", "exact_hash"],
            "select": [{"preset": "datacomp_basic"}, {"selector": "exact_dedup"}],
        })
        result = run(pipeline, tmp_path / "run", progress=False)

    con = duckdb.connect()
    got = {r[0]: r[1:] for r in con.execute(f"""
        SELECT uid, reason, error_stage, error, url FROM '{tmp_path}/run/manifest.parquet'
        """).fetchall()}
    assert result.samples == len(got) == 10  # one row per URL
    assert set(got) == {r["uid"] for r in rows}  # the list's uid column is the sample uid
    for i in range(7):
        assert got[f"{i + 1:032x}"][0] is None
    missing, page, slow = got[f"{100:032x}"], got[f"{101:032x}"], got[f"{102:032x}"]
    assert missing[:2] == ("error:download", "download") and "404" in missing[2]
    assert slow[:2] == ("error:download", "download") and "timed out" in slow[2].lower()
    assert page[:2] == ("error:image_info", "image_info")  # downloaded, but not an image
    # img2dataset's own tables are kept, and images are stored exactly as served.
    download = tmp_path / "run" / "download"
    assert sorted(p.name for p in download.glob("*.parquet")) == [
        "00000.parquet", "00001.parquet", "00002.parquet"]
    served = set(images.values())
    for tar_path in sorted((tmp_path / "run" / "output").glob("*.tar")):
        with tarfile.open(tar_path) as tar:
            jpgs = [tar.extractfile(m).read() for m in tar if m.name.endswith(".jpg")]  # type: ignore[union-attr]
            assert jpgs and all(j in served for j in jpgs)
    # A rerun downloads nothing again and resumes every shard.
    again = run(pipeline, tmp_path / "run", progress=False)
    assert again.shards_resumed == 3 and again.kept == result.kept


def test_url_list_errors_are_clear(tmp_path: Path) -> None:
    from curate.errors import CurateError
    from curate.ingest.download import download

    pcsv.write_csv(pa.table({"link": ["http://127.0.0.1:9/x.jpg"]}), tmp_path / "u.csv")
    p = pipeline_from_dict({"input": {"urls": str(tmp_path / "u.csv")}, "score": ["image_info"]})
    with pytest.raises(CurateError, match="no column 'url'"):
        download(p.input, tmp_path / "d")
    p = pipeline_from_dict({"input": {"urls": str(tmp_path / "nope.parquet")},
                            "score": ["image_info"]})
    with pytest.raises(CurateError, match="does not exist"):
        download(p.input, tmp_path / "d")
