"""curate.lib.hamming: multi-index Hamming search is exact against brute force."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from curate.lib.hamming import (
    SearchStats,
    brute_force_pairs,
    choose_plan,
    components,
    distance,
    make_plan,
    pairs_within,
)


def planted(n: int, k: int, seed: int) -> np.ndarray:
    """Uniform random hashes, a quarter of them replaced by copies of others with 0..k+2 bits
    flipped (so pairs just inside and just outside k), and a few exact repeats."""
    rng = np.random.default_rng(seed)
    h = rng.integers(0, 2**64 - 1, size=n, dtype=np.uint64, endpoint=True)
    for t in rng.choice(n, n // 4, replace=False):
        v = h[rng.integers(n)]
        for bit in rng.choice(64, rng.integers(0, k + 3), replace=False):
            v ^= np.uint64(1) << np.uint64(bit)
        h[t] = v
    h[:5] = h[5]
    return h


def brute_components(h: np.ndarray, k: int) -> np.ndarray:
    parent = list(range(len(h)))

    def find(i: int) -> int:
        while parent[i] != i:
            i = parent[i]
        return i

    for i, j in brute_force_pairs(h, k):
        a, b = find(int(i)), find(int(j))
        parent[max(a, b)] = min(a, b)
    return np.array([find(i) for i in range(len(h))])


@pytest.mark.parametrize("k", [0, 1, 3, 8, 12, 20])
def test_pairs_equal_brute_force(k: int) -> None:
    h = planted(1500, k, seed=k)
    stats = SearchStats()
    got = pairs_within(h, k, stats=stats)
    want = brute_force_pairs(h, k)
    assert len(want) > 100
    assert np.array_equal(got, want)
    assert stats.found == len(got) and stats.candidates >= stats.found
    assert (distance(h[got[:, 0]], h[got[:, 1]]) <= k).all()


@pytest.mark.parametrize("blocks", [3, 4, 5, 9])
def test_every_plan_is_exact(blocks: int) -> None:
    h = planted(800, 8, seed=blocks)
    plan = make_plan(8, blocks)
    assert sum(r + 1 for r in plan.radii) >= 9 and sum(plan.widths) == 64
    assert np.array_equal(pairs_within(h, 8, plan=plan), brute_force_pairs(h, 8))
    assert np.array_equal(components(h, 8, plan=plan), brute_components(h, 8))


def test_components_are_labelled_by_their_smallest_index() -> None:
    h = planted(2000, 8, seed=7)
    labels = components(h, 8)
    assert np.array_equal(labels, brute_components(h, 8))
    assert (labels <= np.arange(len(h))).all()
    # The same groups whatever the order of the hashes.
    perm = np.random.default_rng(1).permutation(len(h))
    again = components(h[perm], 8)
    groups = {frozenset(perm[again == g]) for g in np.unique(again)}
    assert groups == {frozenset(np.flatnonzero(labels == g)) for g in np.unique(labels)}


def test_chaining_merges_pairs_beyond_k() -> None:
    a = np.uint64(0)
    b = np.uint64(0b1111)  # 4 bits from a
    c = np.uint64(0b11111111)  # 4 bits from b, 8 from a
    far = np.uint64(2**64 - 1)
    h = np.array([a, b, c, far], dtype=np.uint64)
    assert pairs_within(h, 4).tolist() == [[0, 1], [1, 2]]
    assert components(h, 4).tolist() == [0, 0, 0, 3]


def test_many_equal_hashes_overflow_the_pair_buffer() -> None:
    h = np.zeros(400, dtype=np.uint64)  # 79,800 pairs: more than one output buffer holds
    h[200:] = np.uint64(3)
    pairs = pairs_within(h, 2)
    assert len(pairs) == 400 * 399 // 2
    assert components(h, 1).tolist() == [0] * 200 + [200] * 200


def test_int64_bit_patterns_are_read_as_unsigned() -> None:
    u = planted(300, 6, seed=3)
    assert np.array_equal(pairs_within(u.view(np.int64), 6), pairs_within(u, 6))


def test_plans() -> None:
    assert choose_plan(1_000_000, 8).widths == (22, 21, 21)
    assert choose_plan(1_000_000, 8).radii == (2, 2, 2)
    with pytest.raises(ValueError, match="k must be"):
        make_plan(64, 3)
    with pytest.raises(ValueError, match="blocks must be"):
        make_plan(8, 2)
    assert pairs_within(np.zeros(1, dtype=np.uint64), 3).shape == (0, 2)
    assert components(np.zeros(0, dtype=np.uint64), 3).shape == (0,)


@st.composite
def near_hashes(draw: st.DrawFn) -> tuple[np.ndarray, int]:
    k = draw(st.integers(0, 16))
    bases = draw(st.lists(st.integers(0, 2**64 - 1), min_size=1, max_size=6))
    items = []
    for _ in range(draw(st.integers(1, 40))):
        v = draw(st.sampled_from(bases))
        for bit in draw(st.lists(st.integers(0, 63), max_size=k + 3)):
            v ^= 1 << bit
        items.append(v)
    return np.array(items, dtype=np.uint64), k


@settings(max_examples=100, deadline=None)
@given(near_hashes())
def test_property_exact(case: tuple[np.ndarray, int]) -> None:
    h, k = case
    assert np.array_equal(pairs_within(h, k), brute_force_pairs(h, k))
    assert np.array_equal(components(h, k), brute_components(h, k))
