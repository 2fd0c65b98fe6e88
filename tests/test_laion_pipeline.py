"""pipelines/laion_aesthetics.yaml is a valid pipeline as written: ``curate validate`` on it,
offline, in a home whose caches hold weights in each release's own format at the documented
default places (seeded weights: the real ones cannot be downloaded here), checks every scorer's
weights, that the heads read the L/14 embedding they were trained on, and every preset's
columns; a missing file is named with where to get it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO
from hubcache import put_in_hub_cache
from test_aesthetic import v1_weights, v2_weights
from test_nsfw import write_autokeras
from test_watermark import published_model

PIPELINE = REPO / "pipelines" / "laion_aesthetics.yaml"


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    home = tmp_path_factory.mktemp("home")
    cache = home / ".cache"
    (cache / "curate" / "aesthetic").mkdir(parents=True)
    v2_weights(cache / "curate" / "aesthetic" / "sac+logos+ava1-l14-linearMSE.pth")
    (cache / "emb_reader").mkdir()
    v1_weights(cache / "emb_reader" / "sa_0_4_vit_l_14_linear.pth")
    write_autokeras(cache / "clip_retrieval" / "ViT-L_14" / "clip_autokeras_binary_nsfw", 768,
                    [16, 8], {})
    torch.save(published_model().state_dict(), cache / "curate" / "watermark_model_v1.pt")
    for name in ("open_clip_model.safetensors", "open_clip_pytorch_model.bin"):
        put_in_hub_cache(home / "hub", "timm/vit_large_patch14_clip_224.openai", name, b"w")
    return home


def validate(home: Path, pool: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HOME": str(home), "HF_HUB_CACHE": str(home / "hub"),
           "HF_HUB_OFFLINE": "1", "RAY_ADDRESS": "127.0.0.1:9"}
    return subprocess.run([sys.executable, "-m", "curate", "validate", str(PIPELINE),
                           "--input", str(pool / "*.tar")], capture_output=True, text=True,
                          timeout=300, env=env)


def test_the_pipeline_validates_offline(home: Path, demo_pool: Path) -> None:
    res = validate(home, demo_pool)
    assert res.returncode == 0, res.stdout + res.stderr
    for scorer in ("clip_l14", "aesthetic", "aesthetic_v1", "nsfw", "watermark", "phash"):
        assert scorer in res.stdout, res.stdout


def test_a_missing_weights_file_is_named_with_its_download(home: Path, demo_pool: Path) -> None:
    w = home / ".cache" / "curate" / "watermark_model_v1.pt"
    hidden = w.with_suffix(".hidden")
    w.rename(hidden)
    try:
        res = validate(home, demo_pool)
    finally:
        hidden.rename(w)
    assert res.returncode != 0
    assert "watermark_model_v1.pt" in res.stderr, res.stderr
    assert "curl" in res.stderr or "download" in res.stderr, res.stderr
