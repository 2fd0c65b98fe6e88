"""clipcov: the greedy equals a brute-force greedy of the written objective, per class and (given
the class counts a global greedy reaches) over all classes; linear and clipped agree when every
similarity is positive; the report's per-class error and objective follow their definitions; it
preserves the cross-covariance better than top-k, and it raises the objective and the class
separation over a random subset while random keeps the cross-covariance error lower
(docs/clipcov.md)."""

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
    item_term,
    objective,
    per_class_cov_error,
    select_clipcov,
    separation,
    subset_objective,
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
    for name in ("clipcov", "random", "topk"):
        assert report[f"cov_err_per_class_{name}"] > 0
    assert report["objective_clipcov"] > report["objective_random"]


def three_classes(seed: int, per: int = 12, d: int = 6) -> tuple[np.ndarray, np.ndarray,
                                                                  np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = unit(rng.normal(size=(3, d)))
    assign = np.repeat(np.arange(3), per)
    rng.shuffle(assign)
    img = unit(centres[assign] + 0.6 * rng.normal(size=(3 * per, d)))
    txt = unit(img + 0.8 * rng.normal(size=(3 * per, d)))
    return img, txt, assign


@pytest.mark.parametrize("seed", [0, 1])
def test_per_class_greedy_equals_a_global_greedy_given_its_class_counts(seed: int) -> None:
    """The authors' notebook grows one subset over all classes, each pick lowering only its own
    class's gains; with the class counts that reaches, our per-class greedy picks the same set."""
    img, txt, assign = three_classes(seed)
    other = np.random.default_rng(seed).uniform(-0.5, 0.5, size=len(img))  # any per-item term
    members = [np.flatnonzero(assign == c) for c in range(3)]

    def total(subset: list[int]) -> float:
        return sum(objective(img[m], txt[m], [int(np.searchsorted(m, i)) for i in subset
                                             if assign[i] == c], 1.0, other[m], "clipped")
                   for c, m in enumerate(members))

    chosen: list[int] = []
    for _ in range(14):
        gains = [(total([*chosen, i]), -i) for i in range(len(img)) if i not in chosen]
        chosen.append(-max(gains)[1])
    counts = np.bincount(assign[chosen], minlength=3)
    assert counts.min() >= 1 and counts.max() > counts.min()  # not a proportional split
    ours = [int(i) for c, m in enumerate(members)
            for i in m[greedy_class(img[m], txt[m], int(counts[c]), 1.0, other[m], "clipped")]]
    assert sorted(ours) == sorted(chosen)


@pytest.mark.parametrize("similarity", ["linear", "clipped"])
def test_subset_objective_is_the_sum_of_the_class_objectives(similarity: str) -> None:
    img, txt, assign = three_classes(3, per=15)
    other = separation(img, assign, 3)
    subset = np.random.default_rng(0).choice(len(img), 17, replace=False)
    expected = sum(objective(img[m], txt[m], np.flatnonzero(np.isin(m, subset)), 0.4, other[m],
                             similarity)
                   for m in (np.flatnonzero(assign == c) for c in range(3)))
    assert subset_objective(img, txt, subset, assign, 0.4, other, similarity) == pytest.approx(
        expected, rel=1e-9)


def test_per_class_error_weighs_classes_by_size_and_counts_an_empty_class_as_one() -> None:
    img, txt, assign = three_classes(4, per=10)
    assign[assign == 2] = 1  # classes of 10 and 20 rows
    subset = np.flatnonzero(assign == 1)[:7]  # nothing from class 0
    m = np.flatnonzero(assign == 1)
    full = np.einsum("nd,ne->de", img[m], txt[m]) / len(m)
    part = np.einsum("nd,ne->de", img[subset], txt[subset]) / len(subset)
    err1 = np.sqrt(((part - full) ** 2).sum() / (full ** 2).sum())
    assert per_class_cov_error(img, txt, subset, assign) == pytest.approx((10 + 20 * err1) / 30)
    assert per_class_cov_error(img, txt, np.arange(30), assign) == pytest.approx(0, abs=1e-12)


@pytest.mark.parametrize("similarity", ["linear", "clipped"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_what_it_optimises_that_random_does_not(similarity: str, seed: int) -> None:
    """Measured finding (docs/clipcov.md): the subset scores far higher on F and lies farther
    from the other classes' centres than a random subset, yet random's cross-covariance error is
    lower, over all rows and per class: F is not the covariance error."""
    img, txt, _ = planted_pool(seed)
    k = 200
    selected, assign = select_clipcov(img, txt, k, classes=5, lam=1.0, similarity=similarity)
    other = separation(img, assign, 5)
    rand = np.random.default_rng(seed).choice(len(img), k, replace=False)
    assert subset_objective(img, txt, selected, assign, 1.0, other, similarity) > (
        subset_objective(img, txt, rand, assign, 1.0, other, similarity) + 20)
    assert other[selected].mean() < other[rand].mean() - 0.1
    assert cross_cov_error(img, txt, rand) < cross_cov_error(img, txt, selected)
    assert per_class_cov_error(img, txt, rand, assign) < per_class_cov_error(img, txt, selected,
                                                                             assign)


def test_easiness_adds_each_pairs_own_similarity_to_the_objective() -> None:
    """``easiness: w`` maximises F + w·Σ s(i,i) (the notebook's 2·easiness), class by class."""
    img, txt, assign = three_classes(6, per=10)
    other = item_term(img, txt, assign, 0.5, 2.0)
    own = (img * txt).sum(1)
    assert np.allclose(other, 0.5 * separation(img, assign, 3) - 2.0 * own)
    selected, _ = select_clipcov(img, txt, 9, 3, 0.5, "clipped", assign=assign, easiness=2.0)
    expected = [int(m[i]) for m in (np.flatnonzero(assign == c) for c in range(3))
                for i in brute_force(img[m], txt[m], 3, 1.0, other[m], "clipped")]
    assert selected.tolist() == sorted(expected)
    plain, _ = select_clipcov(img, txt, 9, 3, 0.5, "clipped", assign=assign)
    assert own[selected].mean() > own[plain].mean()


def test_rows_without_embeddings_take_no_place_in_the_budget(tmp_path: Path) -> None:
    """A kept row whose embedding is missing (NaN) is dropped with its own reason, so the
    subset is exactly the budget of the rows that have embeddings."""
    img, txt, score = planted_pool(n=200)
    img[[3, 50, 120]] = np.nan
    files = write_pool(tmp_path, img, txt, shards=2, scores=score)
    sel, rows, _ = run_select(tmp_path, files, [
        {"selector": "clipcov", "fraction": 0.25, "classes": 4}])
    missing = [r for r in rows if r["reason"] == "clipcov_no_embedding"]
    assert sorted(int(r["uid"], 16) for r in missing) == [3, 50, 120]
    assert sel.kept == int(197 * 0.25)


def test_class_sums_add_in_the_order_np_add_at_does() -> None:
    """The class centres' sums are bit for bit those of np.add.at (same order of additions),
    also for a class spread over several chunks and for empty classes."""
    from curate.stages.clipcov import class_sums

    rng = np.random.default_rng(3)
    x = rng.standard_normal((5000, 16)).astype(np.float32) * 1e3
    assign = np.where(rng.random(5000) < 0.7, 0, rng.integers(1, 6, 5000))  # class 6 empty
    expected = np.zeros((7, 16))
    np.add.at(expected, assign, x)
    for chunk in (64, 1000, 65536):
        assert np.array_equal(class_sums(x, assign, 7, chunk=chunk), expected), chunk
