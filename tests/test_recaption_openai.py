"""The openai caption backend against a real OpenAI-compatible server on 127.0.0.1 that accepts
images (tests/caption_server.py: chat completions with an ``image_url`` data: URL, answered by
the tiny trained captioner): the request format, seeds, a pipeline through the server with its
cache, and timeouts recorded as errors."""

from __future__ import annotations

import base64
import io
import socket
from pathlib import Path
from typing import Any

import pytest
import yaml
from caption_server import CaptionServer
from conftest import REPO
from PIL import Image

from curate.config import pipeline_from_dict
from curate.recaption.backend_openai import OpenAICaptionBackend, data_url, mime_type
from curate.recaption.config import RecaptionConfig
from curate.rewrite.backends import GenRequest
from curate.runner import run


@pytest.fixture(scope="module")
def server(trained_captioner: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    srv = CaptionServer(trained_captioner, tmp_path_factory.mktemp("serve") / "serve.log")
    srv.start()
    yield srv
    srv.stop()


def _jpeg(colour: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (80, 60), colour).save(buf, "JPEG")
    return buf.getvalue()


def _pipeline(pool: Path, base_url: str, shards: int = 1, **openai: Any) -> Any:
    data = yaml.safe_load((REPO / "pipelines" / "basic.yaml").read_text())
    data["input"]["shards"] = [str(pool / f"{i:05d}.tar") for i in range(shards)]
    data["recaption"] = {"backend": "openai", "model": "tiny-captioner", "captions": 1,
                         "max_attempts": 2, "sampling": {"max_tokens": 24}, "batch_size": 16,
                         "openai": {"base_url": base_url, "concurrency": 2, "timeout": 30,
                                    "retries": 1, "backoff": 0.05, **openai}}
    data["output"] = {**(data.get("output") or {}), "write_shards": True}
    return pipeline_from_dict(data)


def test_data_urls() -> None:
    jpg = _jpeg((200, 10, 10))
    buf = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buf, "PNG")
    assert mime_type(jpg) == "image/jpeg" and mime_type(buf.getvalue()) == "image/png"
    url = data_url(jpg)
    assert url.startswith("data:image/jpeg;base64,")
    assert base64.b64decode(url.split(",", 1)[1]) == jpg


def test_backend_sends_images(server: CaptionServer) -> None:
    cfg = RecaptionConfig(backend="openai", model="tiny-captioner",
                          openai={"base_url": server.base_url})
    b = OpenAICaptionBackend(cfg, "cpu")
    b.setup()
    reqs = [GenRequest("", seed=s, image=_jpeg((20 * s, 100, 200))) for s in range(4)]
    first = b.generate(reqs)
    assert all(r.error is None and r.text for r in first), first
    assert [r.text for r in b.generate(reqs)] == [r.text for r in first]  # seeded
    bad = b.generate([GenRequest("", seed=0, image=b"not an image")])[0]
    assert bad.text is None and "HTTP 400" in (bad.error or "")


def test_pipeline_through_the_server(server: CaptionServer, demo_pool: Path, ray_local: None,
                                     tmp_path: Path) -> None:
    p = _pipeline(demo_pool, server.base_url)
    before = server.served()
    first = run(p, tmp_path / "run", progress=False)
    rc = first.recaption
    assert rc["errors"] == 0 and rc["generated"] > 0 and rc["ok"] > 0, rc
    assert rc["ok"] + rc["rejected"] + rc["skipped"] == rc["requested"] == first.kept
    served = server.served()
    assert served - before == rc["generated"]
    again = run(p, tmp_path / "run", progress=False)
    assert again.recaption["generated"] == 0 and server.served() == served


def test_timeouts_are_recorded_not_fatal(demo_pool: Path, ray_local: None,
                                         tmp_path: Path) -> None:
    import duckdb

    # A server that accepts connections and never answers: every request times out however
    # busy the machine is (against the real server, a client descheduled for longer than the
    # server took to answer found the reply waiting and read it: 54 of 56 timed out).
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(256)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/v1"
        p = _pipeline(demo_pool, url, timeout=0.001, retries=1)
        result = run(p, tmp_path / "run", progress=False)
    rc = result.recaption
    assert rc["errors"] == rc["requested"] > 0 and rc["generated"] == 0
    reasons = duckdb.connect().execute(
        f"SELECT DISTINCT reason FROM read_parquet('{result.dir / 'recaptions.parquet'}')"
    ).fetchall()
    assert reasons == [("timeout after 0.001s (2 attempts)",)]
    assert result.output_shards > 0  # the run finished and wrote the originals
