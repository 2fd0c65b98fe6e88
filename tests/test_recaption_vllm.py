"""The vllm caption backend: a clear error before any work when the cluster has no GPU; on a GPU
machine with vLLM installed (``pip install curate[vllm]``), the stage end to end with a tiny
LLaVA-style chat model built offline (random weights: the test checks the plumbing, images in
``LLM.chat`` and the cache, not the captions' quality)."""

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
    data["input"]["shards"] = [str(pool / "00000.tar")]
    data["recaption"] = {"backend": "vllm", "model": str(model), "captions": 1,
                         "max_attempts": 1, "sampling": {"max_tokens": 16},
                         "validation": {"min_words": 1, "min_known_words": 0,
                                        "require_english": False},
                         "vllm": {"gpu_memory_utilization": 0.3, "max_model_len": 512}}
    return pipeline_from_dict(data)


def test_no_gpu_fails_before_scoring(demo_pool: Path, random_captioner: Path, ray_local: None,
                                     tmp_path: Path) -> None:
    import ray

    if ray.cluster_resources().get("GPU", 0):
        pytest.skip("this Ray cluster has a GPU")
    with pytest.raises(CurateError, match="vllm recaption backend needs 1 GPU") as e:
        run(_pipeline(demo_pool, random_captioner), tmp_path / "run", progress=False)
    assert "transformers backend" in (e.value.hint or "")
    assert not (tmp_path / "run" / "store" / "scores").exists()  # nothing was scored


@pytest.mark.gpu
def test_vllm_recaption_on_gpu(demo_pool: Path, tmp_path: Path) -> None:
    pytest.importorskip("vllm")
    from curate.demo.captioner import make_tiny_llava

    model = make_tiny_llava(tmp_path / "llava")
    result = run(_pipeline(demo_pool, model), tmp_path / "run", progress=False)
    rc = result.recaption
    assert rc["requested"] == result.kept and rc["errors"] == 0 and rc["generated"] > 0
    again = run(_pipeline(demo_pool, model), tmp_path / "run", progress=False)
    assert again.recaption["generated"] == 0
