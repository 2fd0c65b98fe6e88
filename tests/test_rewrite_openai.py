"""The openai rewrite backend against a real OpenAI-compatible server (``transformers serve`` on
127.0.0.1, serving the tiny rewriter): completions and chat, timeouts, and a server that dies in
the middle of a run (failures recorded, originals kept, the rerun asks only for what is missing).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import duckdb
import pytest
import yaml
from conftest import REPO
from llm_server import LLMServer

from curate.config import pipeline_from_dict
from curate.rewrite.backend_openai import OpenAIBackend
from curate.rewrite.backends import GenRequest
from curate.rewrite.config import RewriteConfig
from curate.rewrite.prompts import build_chat, build_prompt, load_examples
from curate.runner import run

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(trained_rewriter: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    srv = LLMServer(trained_rewriter, tmp_path_factory.mktemp("serve") / "serve.log").start()
    yield srv
    srv.stop()


def _pipeline(pool: Path, model: Path, base_url: str, shards: int = 2, **rewrite: Any) -> Any:
    data = yaml.safe_load((REPO / "pipelines" / "basic.yaml").read_text())
    data["input"]["shards"] = [str(pool / f"{i:05d}.tar") for i in range(shards)]
    openai = {"base_url": base_url, "concurrency": 4, "timeout": 30, "retries": 1,
              "backoff": 0.05, **rewrite.pop("openai", {})}
    data["rewrite"] = {"backend": "openai", "model": str(model), "rewrites": 1,
                       "max_attempts": 2, "sampling": {"max_tokens": 24}, "batch_size": 16,
                       "openai": openai, **rewrite}
    data["output"] = {**(data.get("output") or {}), "write_shards": True}
    return pipeline_from_dict(data)


def _statuses(run_dir: Path) -> dict[str, int]:
    from curate.audit.catalog import resolve_selection

    run_dir = resolve_selection(run_dir, "rewrites.parquet")
    return dict(duckdb.connect().execute(
        f"SELECT status, count(*) FROM read_parquet('{run_dir / 'rewrites.parquet'}') GROUP BY 1"
    ).fetchall())


def test_completions_and_chat(server: LLMServer, trained_rewriter: Path) -> None:
    ex = load_examples()[:3]
    for fmt, prompt in (("completion", build_prompt("a red circle on a white background", ex)),
                        ("chat", build_chat("a red circle on a white background", ex))):
        cfg = RewriteConfig(backend="openai", model=str(trained_rewriter), prompt=fmt,
                            openai={"base_url": server.base_url})
        b = OpenAIBackend(cfg, "cpu")
        b.setup()
        results = b.generate([GenRequest(prompt, seed=s) for s in range(3)])
        assert all(r.error is None and isinstance(r.text, str) for r in results), results


def test_pipeline_through_the_server(server: LLMServer, demo_pool: Path,
                                     trained_rewriter: Path, ray_local: None,
                                     tmp_path: Path) -> None:
    p = _pipeline(demo_pool, trained_rewriter, server.base_url, shards=1)
    first = run(p, tmp_path / "run", progress=False)
    rw = first.rewrite
    assert rw["errors"] == 0 and rw["generated"] > 0 and rw["ok"] > 0
    assert rw["ok"] + rw["rejected"] + rw["skipped"] == rw["requested"] == first.kept
    served = server.completions_served()
    again = run(p, tmp_path / "run", progress=False)
    assert again.rewrite["generated"] == 0 and server.completions_served() == served
    assert _statuses(tmp_path / "run") == {k: v for k, v in (
        ("ok", rw["ok"]), ("rejected", rw["rejected"]), ("skipped", rw["skipped"])) if v}


def test_timeouts_are_recorded_not_fatal(server: LLMServer, demo_pool: Path,
                                         trained_rewriter: Path, ray_local: None,
                                         tmp_path: Path) -> None:
    p = _pipeline(demo_pool, trained_rewriter, server.base_url, shards=1,
                  openai={"timeout": 0.001, "retries": 1})
    result = run(p, tmp_path / "run", progress=False)
    rw = result.rewrite
    assert rw["errors"] == rw["requested"] - rw["skipped"] > 0 and rw["generated"] == 0
    reasons = duckdb.connect().execute(
        f"SELECT DISTINCT reason FROM read_parquet('{result.dir / 'rewrites.parquet'}') "
        "WHERE status = 'error'").fetchall()
    assert reasons == [("timeout after 0.001s (2 attempts)",)]
    assert result.output_shards > 0  # the run finished and wrote the originals


def test_server_dies_mid_run(demo_pool: Path, trained_rewriter: Path, ray_local: None,
                             tmp_path: Path) -> None:
    srv = LLMServer(trained_rewriter, tmp_path / "serve.log").start()
    try:
        kill_after = 25

        def killer() -> None:
            deadline = time.time() + 120
            while srv.completions_served() < kill_after and time.time() < deadline:
                time.sleep(0.05)
            srv.stop()

        t = threading.Thread(target=killer, daemon=True)
        t.start()
        # one shard (~50 requests): the server dies after 25 of them
        p = _pipeline(demo_pool, trained_rewriter, srv.base_url, shards=1,
                      openai={"concurrency": 1})
        first = run(p, tmp_path / "run", progress=False)
        t.join(timeout=130)
        rw = first.rewrite
        assert rw["errors"] > 0, "the server died, yet no request failed"
        assert rw["generated"] >= kill_after - 1  # what was answered before the kill is kept
        errors = duckdb.connect().execute(
            f"SELECT reason FROM read_parquet('{first.dir / 'rewrites.parquet'}') "
            "WHERE status = 'error'").fetchall()
        assert all("connection error" in r for (r,) in errors)
        assert first.output_shards > 0

        # the server comes back on the same port: the rerun asks only for what failed
        srv.start()
        before = srv.completions_served()
        again = run(p, tmp_path / "run", progress=False)
        assert again.rewrite["errors"] == 0
        assert again.rewrite["cache_hits"] >= rw["generated"]
        assert srv.completions_served() - before == again.rewrite["generated"]
        # (how many it generates depends on when the server died: rejected rewrites are
        # asked again, and count as generations)
    finally:
        srv.stop()
