"""The vllm rewrite backend: a clear error before any work when the cluster has no GPU; on a GPU
machine with vLLM installed (``pip install curate[vllm]``), the stage end to end."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from conftest import REPO

from curate.config import pipeline_from_dict
from curate.errors import CurateError
from curate.runner import run


def _pipeline(pool: Path, model: Path) -> object:
    data = yaml.safe_load((REPO / "pipelines" / "basic.yaml").read_text())
    data["input"]["shards"] = [str(pool / "00000.tar"), str(pool / "00001.tar")]
    data["rewrite"] = {"backend": "vllm", "model": str(model), "rewrites": 2,
                       "sampling": {"max_tokens": 24},
                       "vllm": {"gpu_memory_utilization": 0.3, "max_model_len": 1024}}
    return pipeline_from_dict(data)


def test_no_gpu_fails_before_scoring(demo_pool: Path, random_rewriter: Path, ray_local: None,
                                     tmp_path: Path) -> None:
    import ray

    if ray.cluster_resources().get("GPU", 0):
        pytest.skip("this Ray cluster has a GPU")
    with pytest.raises(CurateError, match="needs 1 GPU") as e:
        run(_pipeline(demo_pool, random_rewriter), tmp_path / "run", progress=False)
    assert "transformers backend" in (e.value.hint or "")
    assert not (tmp_path / "run" / "store" / "scores").exists()  # nothing was scored


@pytest.mark.gpu
def test_vllm_stage_on_gpu(demo_pool: Path, trained_rewriter: Path, tmp_path: Path) -> None:
    pytest.importorskip("vllm")
    result = run(_pipeline(demo_pool, trained_rewriter), tmp_path / "run", progress=False)
    rw = result.rewrite
    assert rw["requested"] == 2 * result.kept and rw["errors"] == 0 and rw["ok"] > 0
    again = run(_pipeline(demo_pool, trained_rewriter), tmp_path / "run", progress=False)
    assert again.rewrite["generated"] == 0
