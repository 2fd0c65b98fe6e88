"""Filter-network training and the demo's CLIP stage: a checkpoint from train-filter loads in
the scorer and separates the demo's matched from mismatched pairs."""

from __future__ import annotations

from pathlib import Path

import duckdb
import numpy as np
import pytest
from clipfixtures import random_clip_dir
from conftest import curate_cli

from curate.errors import CurateError


def roc_auc(pos: np.ndarray, neg: np.ndarray) -> float:
    greater = (pos[:, None] > neg[None, :]).mean()
    ties = (pos[:, None] == neg[None, :]).mean()
    return float(greater + 0.5 * ties)


@pytest.mark.slow
def test_filter_network_separates_mismatched_pairs(demo_pool: Path,
                                                   demo_yaml_run: Path) -> None:
    """pipelines/demo.yaml (the session's run of it, with the trained filter network)."""
    clip_demo_run = demo_yaml_run
    con = duckdb.connect()
    rows = con.execute(f"""
        SELECT g.kind, g.expected_reason, m.reason, m.clip_score
        FROM '{clip_demo_run}/manifest/*.parquet' m
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


def test_every_epoch_is_shuffled_anew_also_in_persistent_workers(tmp_path: Path) -> None:
    """The dataset counts its own epochs: a DataLoader worker that persists across epochs
    holds a copy the driver cannot update, and would otherwise repeat epoch 0's order. One
    worker gives the order of no worker, and every epoch has every sample once."""
    import torch

    from curate.demo.generator import make_demo_pool
    from curate.io.shards import list_shards
    from curate.lib.train_filter import _collate, _dataset

    make_demo_pool(tmp_path / "t", seed=1, shards=3, samples_per_shard=12, trusted=True)
    refs = list_shards(str(tmp_path / "t" / "*.tar"))

    def prep(data: bytes) -> torch.Tensor:
        return torch.tensor([len(data)])

    def tokenizer(texts: list[str]) -> torch.Tensor:
        return torch.tensor([[sum(map(ord, texts[0])), len(texts[0])]])

    orders = {}
    for workers in (0, 1):
        data = _dataset(refs, prep, tokenizer, seed=0, buffer=8)
        loader = torch.utils.data.DataLoader(data, batch_size=36, collate_fn=_collate,
                                             num_workers=workers,
                                             persistent_workers=workers > 0)
        orders[workers] = [[tuple(t.tolist()) for t in texts]
                           for _ in range(3) for _, texts in loader]
    assert orders[0] == orders[1]
    epochs = orders[1]
    assert len(epochs) == 3 and all(len(e) == 36 for e in epochs)
    assert all(sorted(e) == sorted(epochs[0]) for e in epochs)  # every sample, once
    assert len({tuple(e) for e in epochs}) == 3  # a new order every epoch
