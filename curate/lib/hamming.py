"""Every pair of 64-bit hashes within Hamming distance ``k``, without comparing all pairs.

Multi-index hashing (Norouzi, Punjani and Fleet, "Fast Search in Hamming Space with
Multi-Index Hashing", CVPR 2012). The 64 bits are cut into ``m`` contiguous blocks, block ``j``
given a radius ``r_j`` with ``sum(r_j + 1) >= k + 1``. By the pigeonhole principle, two hashes
within distance ``k`` differ in at most ``r_j`` bits of some block ``j``: if every block
differed in ``r_j + 1`` bits or more they would differ in ``k + 1`` or more. So for each block
the hashes are sorted by the block's bits (a counting table of ``2**width`` offsets), and each
hash looks up every block value within ``r_j`` bits of its own: those hashes are the
candidates, and each candidate's full 64-bit distance is computed. The search is exact: every
pair within ``k`` is found, and only such pairs are reported.

A pair is counted once: in its block scan, a hash only looks at block values above its own (or
later positions of its own value), and a pair that was already a candidate of an earlier block
is skipped. The number of blocks is picked from a cost model (probes + expected candidates of
uniformly random hashes; 3 blocks of about 21 bits for ``k = 8`` at 1M hashes), at least 3 so
that a counting table has at most ``2**22`` entries. Memory is linear in the number of hashes:
under 100 bytes per hash plus one 16 MiB table (benchmarks/near_dedup.py at 10M hashes peaked
at 0.85 GiB, the benchmark's own arrays included). Time is not: for uniformly random hashes
the candidates grow as ``n**2 / 2**21`` at a fixed block width (1.4e8 at 1M, 1.4e10 at 10M).

``components`` groups the hashes into connected components of the within-``k`` graph (union-
find inside the compiled scan, so no pair list is ever held); identical hashes are merged
before the search. Components are labelled by their smallest index, so the result depends only
on the hashes and their order. Chaining is the nature of components: ``A ~ B ~ C`` puts ``A``
and ``C`` in one group even when ``d(A, C) > k``.

The scan is a numba kernel, compiled (and cached on disk) on first use. Import this module
only where it is used (``near_dedup`` does so in ``apply``): numba takes a moment to import.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any

import numba
import numpy as np

BITS = 64
MIN_BLOCKS = 3  # widths <= 22 bits: counting tables of at most 4M entries
_LOOKUP_COST = 4.0  # one block lookup, in candidate checks


@dataclass(frozen=True)
class Plan:
    """How the 64 bits are cut: block ``j`` covers bits ``shifts[j]`` to
    ``shifts[j] + widths[j] - 1`` and is searched within ``radii[j]`` bits."""

    k: int
    widths: tuple[int, ...]
    shifts: tuple[int, ...]
    radii: tuple[int, ...]

    @property
    def probes_per_hash(self) -> int:
        """Block values each hash looks up, over all blocks (about half are skipped)."""
        return sum(_ball(w, r) for w, r in zip(self.widths, self.radii, strict=True))


@dataclass
class SearchStats:
    """What a search did: hashes searched (distinct values for ``components``), candidate
    pairs whose full distance was computed, and pairs found within ``k``."""

    hashes: int = 0
    candidates: int = 0
    found: int = 0


def _ball(width: int, radius: int) -> int:
    return sum(math.comb(width, i) for i in range(min(radius, width) + 1))


def make_plan(k: int, blocks: int) -> Plan:
    """``blocks`` contiguous blocks (wider ones first), radii as even as possible with
    ``sum(r + 1) >= k + 1``."""
    if not 0 <= k < BITS:
        raise ValueError(f"k must be in 0..{BITS - 1}, not {k}")
    if not MIN_BLOCKS <= blocks <= BITS:
        raise ValueError(f"blocks must be in {MIN_BLOCKS}..{BITS}, not {blocks}")
    base, extra = divmod(BITS, blocks)
    widths = tuple(base + (j < extra) for j in range(blocks))
    shifts = tuple(BITS - sum(widths[:j + 1]) for j in range(blocks))  # block 0: the top bits
    spare = max(0, k + 1 - blocks)  # sum of radii needed
    radii = tuple(spare // blocks + (j < spare % blocks) for j in range(blocks))
    return Plan(k, widths, shifts, radii)


def choose_plan(n: int, k: int) -> Plan:
    """The plan with the least estimated work for ``n`` uniformly random hashes: block lookups
    (about half of them run, since a pair is looked at from one side) and the expected
    candidates they bring. A lookup costs about 4 candidate checks (a cache miss against a
    popcount; measured at 1M hashes: ~15 ns and ~4 ns)."""
    best: tuple[float, Plan] | None = None
    for m in range(MIN_BLOCKS, max(MIN_BLOCKS, min(BITS, k + 1)) + 1):
        plan = make_plan(k, m)
        cost = 0.0
        for w, r in zip(plan.widths, plan.radii, strict=True):
            probes = n * _ball(w, r) / 2
            cost += probes * (_LOOKUP_COST + n / 2.0**w)
        if best is None or cost < best[0]:
            best = (cost, plan)
    assert best is not None
    return best[1]


def _masks(width: int, radius: int) -> np.ndarray:
    """Every ``width``-bit value with at most ``radius`` bits set, as uint64."""
    out = [0]
    for r in range(1, min(radius, width) + 1):
        out += [sum(1 << b for b in bits) for bits in itertools.combinations(range(width), r)]
    return np.array(out, dtype=np.uint64)


def as_hashes(values: Any) -> np.ndarray:
    """uint64 array of ``values`` (uint64, or int64 holding the same bit pattern)."""
    arr = np.asarray(values)
    if arr.dtype == np.int64:
        return arr.view(np.uint64)
    if arr.dtype != np.uint64:
        arr = arr.astype(np.uint64)
    return np.ascontiguousarray(arr)


def distance(a: Any, b: Any) -> np.ndarray:
    """Elementwise Hamming distance of two uint64 arrays."""
    return np.bitwise_count(np.bitwise_xor(as_hashes(a), as_hashes(b))).astype(np.int64)


def brute_force_pairs(hashes: Any, k: int) -> np.ndarray:
    """Every pair ``(i, j)``, ``i < j``, within ``k``, by comparing all pairs (for tests and
    baselines: quadratic). Sorted, shape ``[pairs, 2]``."""
    h = as_hashes(hashes)
    out = []
    for i in range(len(h) - 1):
        d = np.bitwise_count(h[i + 1:] ^ h[i])
        j = np.flatnonzero(d <= k) + i + 1
        out.append(np.stack([np.full(len(j), i), j], axis=1))
    if not out:
        return np.zeros((0, 2), dtype=np.int64)
    return np.concatenate(out).astype(np.int64)


# --------------------------------------------------------------------------------------------
# The compiled scan (numba; compiled on first call, cached on disk)

_M1 = np.uint64(0x5555555555555555)
_M2 = np.uint64(0x3333333333333333)
_M4 = np.uint64(0x0F0F0F0F0F0F0F0F)
_H01 = np.uint64(0x0101010101010101)
_U1 = np.uint64(1)
_U2 = np.uint64(2)
_U4 = np.uint64(4)
_U56 = np.uint64(56)


@numba.njit(cache=True, nogil=True)
def _popcount(x: np.uint64) -> int:
    x = x - ((x >> _U1) & _M1)
    x = (x & _M2) + ((x >> _U2) & _M2)
    x = (x + (x >> _U4)) & _M4
    return int((x * _H01) >> _U56)


@numba.njit(cache=True, nogil=True)
def _find(parent: np.ndarray, i: int) -> int:
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = parent[i]
    return i


@numba.njit(cache=True, nogil=True)
def _scan(order: np.ndarray, keys: np.ndarray, hs: np.ndarray, offsets: np.ndarray,
          masks: np.ndarray, k: int, prev_shifts: np.ndarray, prev_masks: np.ndarray,
          prev_radii: np.ndarray, p0: int, parent: np.ndarray, out: np.ndarray,
          ) -> tuple[int, int, int, int]:
    """One block, positions ``p0..`` of the block order: (next position, pairs written to
    ``out``, candidates, found). Stops early, at the start of a position, when ``out`` is full;
    ``out`` of length 0 writes nothing. Unions every found pair in ``parent`` (when given)."""
    n = len(order)
    written = 0
    candidates = 0
    found = 0
    cap = out.shape[0]
    for p in range(p0, n):
        key = keys[p]
        x = hs[p]
        w0 = written
        c_here = 0
        f_here = 0
        full = False
        for t in range(len(masks)):
            q = key ^ masks[t]
            if q < key:
                continue  # that pair is looked at from the other side
            qi = np.int64(q)
            start = offsets[qi] if q != key else p + 1
            for s in range(start, offsets[qi + 1]):
                y = hs[s]
                c_here += 1
                z = x ^ y
                if _popcount(z) > k:
                    continue
                seen = False
                for e in range(len(prev_shifts)):
                    if _popcount((z >> prev_shifts[e]) & prev_masks[e]) <= prev_radii[e]:
                        seen = True  # a candidate of an earlier block: counted there
                        break
                if seen:
                    continue
                f_here += 1
                a = order[p]
                b = order[s]
                if parent.shape[0] > 0:
                    ra = _find(parent, a)
                    rb = _find(parent, b)
                    if ra < rb:
                        parent[rb] = ra
                    elif rb < ra:
                        parent[ra] = rb
                if cap > 0:
                    if written == cap:
                        full = True
                        break
                    out[written, 0] = min(a, b)
                    out[written, 1] = max(a, b)
                    written += 1
            if full:
                break
        if full:
            return p, w0, candidates, found
        candidates += c_here
        found += f_here
    return n, written, candidates, found


def _search(h: np.ndarray, plan: Plan, parent: np.ndarray, emit: bool, stats: SearchStats,
            ) -> list[np.ndarray]:
    n = len(h)
    idx = np.int64 if n >= 2**31 - 1 else np.int32
    chunks: list[np.ndarray] = []
    cap = 1 << 16 if emit else 0
    for j, (w, shift, r) in enumerate(zip(plan.widths, plan.shifts, plan.radii, strict=True)):
        keys = (h >> np.uint64(shift)) & np.uint64((1 << w) - 1)
        order = np.argsort(keys, kind="stable").astype(idx)
        keys = keys[order]
        counts = np.bincount(keys.astype(np.int64), minlength=1 << w)
        offsets = np.zeros((1 << w) + 1, dtype=idx)
        np.cumsum(counts, out=offsets[1:])
        del counts
        hs = h[order]
        prev = range(j)
        prev_shifts = np.array([plan.shifts[e] for e in prev], dtype=np.uint64)
        prev_masks = np.array([(1 << plan.widths[e]) - 1 for e in prev], dtype=np.uint64)
        prev_radii = np.array([plan.radii[e] for e in prev], dtype=np.int64)
        masks = _masks(w, r)
        p = 0
        while p < n:
            out = np.empty((cap, 2), dtype=np.int64)
            p_next, written, cand, found = _scan(order, keys, hs, offsets, masks, plan.k,
                                                prev_shifts, prev_masks, prev_radii, p,
                                                parent, out)
            stats.candidates += cand
            stats.found += found
            if written:
                chunks.append(out[:written].copy())
            if p_next == p and written == 0 and p_next < n:
                cap *= 2  # one hash has more pairs than the buffer holds
            p = p_next
        del keys, order, offsets, hs
    return chunks


def pairs_within(hashes: Any, k: int, plan: Plan | None = None,
                 stats: SearchStats | None = None) -> np.ndarray:
    """Every pair ``(i, j)``, ``i < j``, of ``hashes`` (uint64, or int64 bit patterns) within
    Hamming distance ``k``, sorted, shape ``[pairs, 2]`` (int64). Exact; identical hashes are
    pairs too (at distance 0), so a value repeated ``c`` times gives ``c(c-1)/2`` pairs."""
    h = as_hashes(hashes)
    stats = stats if stats is not None else SearchStats()
    stats.hashes += len(h)
    if len(h) < 2:
        return np.zeros((0, 2), dtype=np.int64)
    plan = plan or choose_plan(len(h), k)
    chunks = _search(h, plan, np.zeros(0, dtype=np.int64), True, stats)
    if not chunks:
        return np.zeros((0, 2), dtype=np.int64)
    pairs = np.concatenate(chunks)
    return pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))]


def components(hashes: Any, k: int, plan: Plan | None = None,
               stats: SearchStats | None = None) -> np.ndarray:
    """Label of each hash's connected component in the graph of pairs within ``k``: the
    smallest index in the component (int64). Identical hashes are merged first; the pairs are
    never listed (union-find inside the scan), so memory stays linear."""
    h = as_hashes(hashes)
    stats = stats if stats is not None else SearchStats()
    n = len(h)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    values, first, inverse = np.unique(h, return_index=True, return_inverse=True)
    stats.hashes += len(values)
    parent = np.arange(len(values), dtype=np.int64)
    if len(values) > 1:
        _search(values, plan or choose_plan(len(values), k), parent, False, stats)
    roots = _roots(parent)
    # smallest original index per component of distinct values, then back to every hash
    smallest = np.full(len(values), n, dtype=np.int64)
    np.minimum.at(smallest, roots, first)
    return smallest[roots][inverse.reshape(-1)]


def _roots(parent: np.ndarray) -> np.ndarray:
    """Every node's root, vectorised: pointer jumping until nothing changes."""
    roots = parent.copy()
    while True:
        nxt = roots[roots]
        if np.array_equal(nxt, roots):
            return roots
        roots = nxt
