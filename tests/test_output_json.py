"""What the json member of a curated sample holds: the caption for tar inputs (DataComp-style
readers look for it there), and none of img2dataset's nulls for sizes it never measured nor its
EXIF string for URL-list inputs (kept with ``output: {keep_exif: true}``)."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from http_server import LocalServer
from PIL import Image

from curate.config import pipeline_from_dict, selection_from_dict
from curate.runner import run, select


def samples(out: Path) -> dict[str, dict[str, bytes]]:
    """uid → {extension: bytes} of every sample in the tars of ``out``."""
    got: dict[str, dict[str, bytes]] = {}
    for path in sorted(out.glob("*.tar")):
        with tarfile.open(path) as tar:
            for m in tar:
                key, ext = m.name.split(".", 1)
                f = tar.extractfile(m)
                assert f is not None
                got.setdefault(key, {})[ext] = f.read()
    return got


def test_tar_input_json_has_the_caption(demo_run: Path) -> None:
    out = samples(demo_run / "output")
    assert len(out) > 100
    for uid, m in out.items():
        meta = json.loads(m["json"])
        assert meta["uid"] == uid
        assert meta["caption"] == m["txt"].decode("utf-8")  # the demo's json has none itself
        assert "width" in meta["scores"]


def photo(i: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (300 + i, 240), (i * 60 % 255, 120, 30)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


@pytest.mark.slow
def test_url_list_json_drops_img2datasets_nulls_and_exif(tmp_path: Path,
                                                         ray_local: None) -> None:
    images = {f"{i}.jpg": photo(i) for i in range(3)}
    with LocalServer(images) as srv:
        rows = [{"url": f"{srv.base}/img/{i}.jpg", "caption": f"a photo of a red tile {i}"}
                for i in range(3)]
        pq.write_table(pa.Table.from_pylist(rows), tmp_path / "urls.parquet")
        pipeline = pipeline_from_dict({
            "name": "urls", "input": {"urls": str(tmp_path / "urls.parquet"),
                                      "download": {"timeout": 5, "thread_count": 2}},
            "score": ["image_info"], "output": {"write_shards": True}})
        result = run(pipeline, tmp_path / "run", progress=False)
    # what img2dataset stored: nulls for the sizes it did not measure, and an EXIF string
    with tarfile.open(next((tmp_path / "run" / "store" / "download").glob("*.tar"))) as tar:
        stored = [json.loads(tar.extractfile(m).read())  # type: ignore[union-attr]
                  for m in tar if m.name.endswith(".json")]
    assert stored and all(s["width"] is None and s["original_height"] is None and "exif" in s
                          for s in stored)
    out = samples(result.dir / "output")
    assert len(out) == 3
    for m in out.values():
        meta = json.loads(m["json"])
        assert not {"width", "height", "original_width", "original_height", "exif"} & set(meta)
        assert meta["caption"] == m["txt"].decode("utf-8") and meta["url"].startswith(srv.base)
        assert meta["scores"]["width"] == 300 + int(meta["url"].rsplit("/", 1)[1][0])
    # keep_exif: the same samples with img2dataset's EXIF string; and a selection into the
    # same directory without it writes its shards again (the option is part of their digest)
    store = tmp_path / "run" / "store"
    for keep in (True, False):
        sel = selection_from_dict({"name": "exif", "output": {"keep_exif": keep,
                                                              "write_shards": True}})
        done = select(store, sel, tmp_path / "exif", progress=False)
        metas = [json.loads(m["json"]) for m in samples(done.dir / "output").values()]
        assert len(metas) == 3 and all("width" not in meta for meta in metas)
        assert all(isinstance(meta.get("exif"), str) == keep for meta in metas)
