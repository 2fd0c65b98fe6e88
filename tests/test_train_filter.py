"""Filter-network training and the demo's CLIP stage: a checkpoint from train-filter loads in
the scorer and separates the demo's matched from mismatched pairs."""

from __future__ import annotations

from pathlib import Path

import duckdb
import numpy as np
import pytest
from clipfixtures import random_clip_dir
from conftest import REPO, curate_cli

from curate.config import load_pipeline
from curate.errors import CurateError
from curate.runner import run


def roc_auc(pos: np.ndarray, neg: np.ndarray) -> float:
    greater = (pos[:, None] > neg[None, :]).mean()
    ties = (pos[:, None] == neg[None, :]).mean()
    return float(greater + 0.5 * ties)


@pytest.fixture(scope="module")
def clip_demo_run(demo_pool: Path, demo_filter: Path, ray_local: None,
                  tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("clip_demo")
    yaml_text = (REPO / "pipelines" / "demo.yaml").read_text().replace(
        "model: demo/filter", f"model: {demo_filter}")
    (root / "demo.yaml").write_text(yaml_text)
    p = load_pipeline(root / "demo.yaml", {"input": {"shards": str(demo_pool / "*.tar")}})
    return run(p, root / "run", progress=False).dir
    return root / "run"


@pytest.mark.slow
def test_filter_network_separates_mismatched_pairs(demo_pool: Path, clip_demo_run: Path) -> None:
    con = duckdb.connect()
    rows = con.execute(f"""
        SELECT g.kind, g.expected_reason, m.reason, m.clip_score
        FROM '{clip_demo_run}/manifest.parquet' m
        JOIN '{demo_pool}/ground_truth.parquet' g USING (uid)""").fetchall()
    scored = [(k, s) for k, _, _, s in rows if s is not None]
    pos = np.array([s for k, s in scored if k in ("photo", "scene")])
    neg = np.array([s for k, s in scored if k == "mismatched"])
    assert roc_auc(pos, neg) >= 0.9
    # Every non-CLIP decision is still the generator's ground truth.
    assert all(r == e for k, e, r, _ in rows if r != "clip_score_too_low")
    # The CLIP rule's drops are mismatched pairs (and a few text posters); most mismatched pairs
    # go (the rest are near-misses, e.g. a shape's position, that the tiny network cannot see).
    clip_drops = [k for k, _, r, _ in rows if r == "clip_score_too_low"]
    mismatched = [r for k, _, r, _ in rows if k == "mismatched"]
    assert sum(k in ("mismatched", "parrot") for k in clip_drops) >= 0.8 * len(clip_drops)
    assert mismatched.count("clip_score_too_low") >= 0.7 * len(mismatched)


def test_train_filter_cli_from_scratch_and_fine_tune(tmp_path: Path) -> None:
    res = curate_cli("demo-data", str(tmp_path / "trusted"), "--trusted", "--shards", "2",
                     "--per-shard", "16")
    assert res.returncode == 0, res.stderr
    res = curate_cli("train-filter", "--data", str(tmp_path / "trusted" / "*.tar"), "--out",
                     str(tmp_path / "f1"), "--epochs", "1", "--batch-size", "8")
    assert res.returncode == 0, res.stderr
    assert "trained curate-tiny on 32 trusted samples: 4 steps" in res.stdout
    assert (tmp_path / "f1" / "open_clip_config.json").is_file()
    base = random_clip_dir(tmp_path / "base")
    res = curate_cli("train-filter", "--data", str(tmp_path / "trusted" / "*.tar"), "--out",
                     str(tmp_path / "f2"), "--model", str(base), "--epochs", "1",
                     "--batch-size", "8")
    assert res.returncode == 0, res.stderr
    from curate.lib.clip_model import load_clip

    loaded = load_clip(str(tmp_path / "f2"), None)
    assert loaded.model.visual is not None


def test_train_filter_needs_usable_data(tmp_path: Path) -> None:
    from shardmaker import sample_members, write_tar

    from curate.lib.train_filter import TrainConfig, train_filter

    write_tar(tmp_path / "t.tar", sample_members("a", b"x", None))
    with pytest.raises(CurateError, match="0 usable samples"):
        train_filter(TrainConfig(data=str(tmp_path / "t.tar"), out=str(tmp_path / "o")))
