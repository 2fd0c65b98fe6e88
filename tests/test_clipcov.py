"""clipcov: the greedy equals a brute-force greedy of the written objective; linear and clipped
agree when every similarity is positive; it preserves the cross-covariance better than top-k."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from embedpool import run_select, unit, write_pool

from curate.stages.clipcov import (
    class_budgets,
    cross_cov_error,
    greedy_class,
    objective,
    select_clipcov,
)


def brute_force(img: np.ndarray, txt: np.ndarray, k: int, lam: float, other: np.ndarray,
                similarity: str) -> list[int]:
    chosen: list[int] = []
    for _ in range(k):
        best, arg = -np.inf, -1
        for i in range(len(img)):
            if i in chosen:
                continue
            value = objective(img, txt, [*chosen, i], lam, other, similarity)
            if value > best + 1e-12:
                best, arg = value, i
        chosen.append(arg)
    return chosen


@pytest.mark.parametrize("similarity", ["linear", "clipped"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_greedy_equals_brute_force(similarity: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    img, txt = unit(rng.normal(size=(25, 8))), unit(rng.normal(size=(25, 8)))
    other = rng.uniform(-0.2, 0.5, size=25)
    assert greedy_class(img, txt, 10, 0.7, other, similarity) == brute_force(
        img, txt, 10, 0.7, other, similarity)


def test_linear_and_clipped_agree_when_similarities_are_positive() -> None:
    rng = np.random.default_rng(5)
    img, txt = unit(np.abs(rng.normal(size=(40, 6)))), unit(np.abs(rng.normal(size=(40, 6))))
    assert (img @ txt.T).min() > 0
    other = rng.uniform(0, 0.3, size=40)
    assert greedy_class(img, txt, 15, 0.5, other, "linear") == greedy_class(
        img, txt, 15, 0.5, other, "clipped")


def test_budgets_are_proportional_and_exact() -> None:
    assert class_budgets(np.array([50, 30, 20]), 10).tolist() == [5, 3, 2]
    b = class_budgets(np.array([7, 7, 7]), 10)
    assert b.sum() == 10 and b.max() - b.min() <= 1
    assert class_budgets(np.array([3, 100]), 50).tolist() == [1, 49]  # 1.46, 48.54


def planted_pool(seed: int = 0, n: int = 2000, d: int = 32) -> tuple[np.ndarray, np.ndarray,
                                                                       np.ndarray]:
    """5 concepts; captions of one concept align far better with their images, so a CLIP-score
    top-k over-samples it and distorts the cross-covariance."""
    rng = np.random.default_rng(seed)
    centres = unit(rng.normal(size=(5, d)))
    concept = rng.integers(0, 5, size=n)
    img = unit(centres[concept] + 0.35 * rng.normal(size=(n, d)))
    noise = np.where(concept == 0, 0.1, 0.9)[:, None]
    txt = unit(img + noise * rng.normal(size=(n, d)))
    return img, txt, (img * txt).sum(1)


def test_preserves_covariance_better_than_topk() -> None:
    img, txt, score = planted_pool()
    k = 200
    selected, _ = select_clipcov(img, txt, k, classes=5, lam=1.0, similarity="linear")
    assert len(selected) == k
    topk = np.argsort(-score)[:k]
    assert cross_cov_error(img, txt, selected) < cross_cov_error(img, txt, topk)


def test_selector_in_a_run(tmp_path: Path) -> None:
    img, txt, score = planted_pool(n=600)
    files = write_pool(tmp_path, img, txt, shards=3, scores=score)
    sel, rows, _ = run_select(tmp_path, files, [
        {"rule": "threshold", "column": "clip_score", "min": -1.0, "reason": "r"},
        {"selector": "clipcov", "fraction": 0.2, "classes": 5}])
    assert sel.kept == 120
    assert sum(r["reason"] == "clipcov_not_selected" for r in rows) == 480
    assert {r["clipcov_class"] for r in rows} == set(range(5))
    report = json.loads((tmp_path / "reports" / "clipcov.json").read_text())
    assert report["selected"] == 120
    assert report["cov_err_clipcov"] < report["cov_err_topk"]
