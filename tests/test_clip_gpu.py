"""The CLIP stage on a CUDA GPU (fp16) gives the CPU (fp32) scores. Skipped without a GPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from clipfixtures import big_photos, random_clip_dir
from stagetest import score

from curate.stages.clip import Clip, ClipParams


@pytest.mark.gpu
def test_gpu_fp16_matches_cpu(tmp_path: Path) -> None:
    model_dir = random_clip_dir(tmp_path / "m", "ViT-S-32")
    rows = [{"image": b, "caption": f"a photograph number {i}"}
            for i, b in enumerate(big_photos(8))]
    cpu_out, _ = score(Clip(ClipParams(model=str(model_dir), pretrained=None)), rows)
    gpu = Clip(ClipParams(model=str(model_dir), pretrained=None, precision="auto"))
    gpu.device = "cuda"
    gpu_out, errors = score(gpu, rows)
    assert all(e is None for e in errors.stage)
    a = np.array([r["clip_score"] for r in cpu_out])
    b = np.array([r["clip_score"] for r in gpu_out])
    assert np.abs(a - b).max() < 0.02
