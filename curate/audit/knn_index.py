"""k-nearest-neighbour indices over L2-normalised embeddings, with faiss.

What ``curate search`` and ``curate export-retrieval`` build. Inner product on unit vectors is
the cosine, as CLIP scores it. Two kinds:

* ``exact``: ``IndexFlatIP``, every vector kept in float32 (``rows × dim × 4`` bytes). Chosen by
  ``auto`` up to ``EXACT_MAX_ROWS`` rows when it fits the memory budget: below that an exact
  scan takes milliseconds and needs no training.
* ``ivfpq``: ``IVF{nlist},PQ{m}`` (faiss' inverted file with product quantisation, as
  autofaiss builds LAION's indices). ``nlist`` is the power of two nearest to √rows (so a list
  holds about √rows vectors; at most rows / 39, faiss' minimum of training points per
  centroid), and ``m`` (bytes per vector) the largest that fits ``memory``: the index holds
  ``rows × (m + 8)`` bytes of codes and ids, ``nlist × dim × 4`` of centroids and
  ``256 × dim × 4`` of codebooks. The coarse quantiser and the codebooks are trained on
  ``TRAIN_PER_LIST × nlist`` rows (at least ``TRAIN_MIN``), picked with a fixed seed (the
  same rows give the same index), with ``KMEANS_ITERATIONS`` k-means iterations and without
  polysemous training. ``nprobe`` (lists scanned per query) is a query option: more is slower
  and closer to exact.

``plan_index`` chooses, ``build_index`` builds from a ``VectorSource`` (vectors read chunk by
chunk, so an IVF-PQ index over a pool larger than memory is built with the budget plus one
chunk), ``save_index`` / ``load_index`` write and read it atomically on any ``FsDir``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any, Literal, Protocol

import numpy as np

from curate.errors import CurateError

IndexKind = Literal["exact", "ivfpq"]
EXACT_MAX_ROWS = 100_000  # `auto` builds an exact index up to this many rows
DEFAULT_MEMORY = "4G"
DEFAULT_NPROBE = 16
TRAIN_PER_LIST = 39  # training rows per IVF list (faiss' minimum)
TRAIN_MIN = 39 * 256  # and at least what the PQ codebooks need (256 centroids each)
KMEANS_ITERATIONS = 10  # of the coarse quantiser and of each PQ codebook (faiss' default: 25)
MIN_IVF_ROWS = 39 * 4  # fewer rows than this cannot train even 4 lists
CHUNK_ROWS = 65_536
MIN_SUBVECTOR = 4  # dimensions per PQ sub-vector (finer codes train slowly and gain little)
PQ_CODEBOOK_BITS = 8
_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def parse_memory(text: str | int) -> int:
    """Bytes of ``"4G"``, ``"512M"``, ``"1.5GB"``, ``"2GiB"`` or a plain byte count (binary
    units, as autofaiss reads them)."""
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*", str(text), re.IGNORECASE)
    if not m:
        raise CurateError(f"memory budget {text!r} is not a size",
                          "write it as bytes or with a unit: 512M, 4G, 1.5GB")
    return int(float(m.group(1)) * _UNITS[m.group(2).upper()])


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


@dataclass(frozen=True)
class IndexPlan:
    """Which index to build: its kind, size and faiss parameters."""

    kind: IndexKind
    rows: int
    dim: int
    memory: int  # the budget it was chosen for (bytes)
    nlist: int = 0
    m: int = 0

    @property
    def factory(self) -> str:
        """faiss' ``index_factory`` string."""
        return "Flat" if self.kind == "exact" else f"IVF{self.nlist},PQ{self.m}"

    @property
    def estimate(self) -> int:
        """Bytes the index holds in memory (its size on disk is about the same)."""
        if self.kind == "exact":
            return exact_bytes(self.rows, self.dim)
        return ivfpq_bytes(self.rows, self.dim, self.nlist, self.m)

    def describe(self) -> str:
        what = "exact (IndexFlatIP)" if self.kind == "exact" else \
            f"IVF-PQ (nlist {self.nlist}, m {self.m} bytes/vector)"
        return f"{what}, {self.rows:,} rows × {self.dim}, ~{format_bytes(self.estimate)}"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> IndexPlan:
        return cls(**d)


def exact_bytes(rows: int, dim: int) -> int:
    return rows * dim * 4


def ivfpq_bytes(rows: int, dim: int, nlist: int, m: int) -> int:
    return rows * (m + 8) + nlist * dim * 4 + (1 << PQ_CODEBOOK_BITS) * dim * 4


def nlist_for(rows: int) -> int:
    """The power of two nearest √rows, at most rows / 39 (and at least 1)."""
    if rows < 1:
        return 1
    nearest = 2 ** max(0, round(math.log2(math.sqrt(rows))))
    cap = max(1, rows // 39)
    return max(1, min(nearest, 2 ** int(math.log2(cap))))


def pq_sizes(dim: int) -> list[int]:
    """The PQ code sizes used for ``dim``: its divisors with at least ``MIN_SUBVECTOR``
    dimensions per sub-vector, largest first."""
    return sorted((m for m in range(1, dim // MIN_SUBVECTOR + 1) if dim % m == 0),
                  reverse=True)


def plan_index(rows: int, dim: int, memory: str | int = DEFAULT_MEMORY,
               kind: Literal["auto", "exact", "ivfpq"] = "auto") -> IndexPlan:
    """The index for ``rows`` vectors of ``dim``: exact when asked, or under ``auto`` when
    ``rows <= EXACT_MAX_ROWS`` and it fits ``memory``; else IVF-PQ with the largest code that
    fits ``memory``."""
    budget = parse_memory(memory)
    if rows < 1:
        raise CurateError("there is nothing to index (no row has this embedding)")
    flat = exact_bytes(rows, dim)
    if kind == "exact" or (kind == "auto" and ((rows <= EXACT_MAX_ROWS and flat <= budget)
                                               or rows < MIN_IVF_ROWS)):
        if kind == "exact" and flat > budget:
            raise CurateError(f"an exact index of {rows:,} × {dim} vectors needs "
                              f"{format_bytes(flat)}, over the memory budget "
                              f"{format_bytes(budget)}",
                              "raise --memory, or use --index ivfpq (or auto)")
        return IndexPlan("exact", rows, dim, budget)
    if rows < MIN_IVF_ROWS:
        raise CurateError(f"IVF-PQ needs at least {MIN_IVF_ROWS} rows to train; this has "
                          f"{rows}", "use --index exact (or auto)")
    nlist = nlist_for(rows)
    for m in pq_sizes(dim):
        if ivfpq_bytes(rows, dim, nlist, m) <= budget:
            return IndexPlan("ivfpq", rows, dim, budget, nlist=nlist, m=m)
    least = ivfpq_bytes(rows, dim, nlist, 1)
    raise CurateError(f"the memory budget {format_bytes(budget)} is too small for an index "
                      f"of {rows:,} rows: IVF-PQ needs at least {format_bytes(least)}",
                      "raise --memory")


class VectorSource(Protocol):
    """Unit vectors to index, row by row (row i gets faiss id i)."""

    rows: int
    dim: int

    def take(self, positions: np.ndarray) -> np.ndarray:
        """float32 ``[len(positions), dim]`` of these rows (ascending positions)."""

    def chunks(self, size: int) -> Iterator[np.ndarray]:
        """Every row, in order, as float32 blocks of at most ``size`` rows."""


@dataclass
class ArraySource:
    """A ``VectorSource`` over an array in memory (normalised here when ``normalise``)."""

    array: np.ndarray

    def __post_init__(self) -> None:
        a = np.ascontiguousarray(self.array, dtype=np.float32)
        self.array = a
        self.rows, self.dim = int(a.shape[0]), int(a.shape[1])

    def take(self, positions: np.ndarray) -> np.ndarray:
        return self.array[positions]

    def chunks(self, size: int) -> Iterator[np.ndarray]:
        for start in range(0, self.rows, size):
            yield self.array[start:start + size]


def normalised(x: np.ndarray) -> np.ndarray:
    """float32 rows scaled to unit length (zero rows stay zero)."""
    x = np.array(x, dtype=np.float32, copy=True)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    np.divide(x, norms, out=x, where=norms > 0)
    return x


def _faiss() -> Any:
    try:
        import faiss
    except ImportError as exc:
        raise CurateError("search indices need faiss", "pip install faiss-cpu==1.15.1"
                          ) from exc
    return faiss


def build_index(source: VectorSource, plan: IndexPlan,
                progress: Callable[[int], None] | None = None) -> Any:
    """A faiss index of every row of ``source`` (ids 0..rows-1 in order), as ``plan`` says."""
    faiss = _faiss()
    if source.dim != plan.dim or source.rows != plan.rows:
        raise ValueError(f"plan is for {plan.rows} × {plan.dim}, source is "
                         f"{source.rows} × {source.dim}")
    if plan.kind == "exact":
        index = faiss.IndexFlatIP(plan.dim)
    else:
        index = faiss.index_factory(plan.dim, plan.factory, faiss.METRIC_INNER_PRODUCT)
        n_train = min(plan.rows, max(TRAIN_PER_LIST * plan.nlist, TRAIN_MIN))
        rng = np.random.default_rng(0)
        picked = np.sort(rng.choice(plan.rows, size=n_train, replace=False))
        train = np.ascontiguousarray(source.take(picked), dtype=np.float32)
        ivf = faiss.downcast_index(faiss.extract_index_ivf(index))
        ivf.cp.niter = KMEANS_ITERATIONS
        ivf.pq.cp.niter = KMEANS_ITERATIONS
        # index_factory turns on polysemous training (a code permutation for Hamming
        # filtering, which these searches do not use); it took most of the training time
        ivf.do_polysemous_training = False
        index.train(train)  # faiss' k-means seeds are fixed: same rows, same index
        del train
        ivf.nprobe = DEFAULT_NPROBE  # saved with it: what a reader that sets none scans
    done = 0
    for block in source.chunks(CHUNK_ROWS):
        index.add(np.ascontiguousarray(block, dtype=np.float32))
        done += len(block)
        if progress is not None:
            progress(done)
    return index


def search_index(index: Any, queries: np.ndarray, k: int, nprobe: int | None = None,
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(scores, ids) ``[len(queries), k]`` of the ``k`` nearest rows; ids -1 past the end."""
    faiss = _faiss()
    q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
    k = max(1, min(k, int(index.ntotal)))
    if nprobe is not None and _is_ivf(index):
        params = faiss.SearchParametersIVF(nprobe=int(nprobe))
        scores, ids = index.search(q, k, params=params)
    else:
        scores, ids = index.search(q, k)
    return scores, ids


def _is_ivf(index: Any) -> bool:
    faiss = _faiss()
    try:
        faiss.extract_index_ivf(index)
        return True
    except (RuntimeError, TypeError):
        return False


def save_index(index: Any, fsdir: Any, name: str) -> None:
    """Write ``index`` as ``name`` in ``fsdir`` (a ``curate.io.fsdir.FsDir``), atomically."""
    faiss = _faiss()
    local = fsdir.local_path(name)
    if local is not None:
        from curate.io.atomic import atomic_path

        with atomic_path(local) as tmp:
            faiss.write_index(index, str(tmp))
        return
    data = faiss.serialize_index(index)
    fsdir.write(name, lambda f: f.write(data.tobytes()))


def load_index(fsdir: Any, name: str) -> Any:
    faiss = _faiss()
    local = fsdir.local_path(name)
    if local is not None:
        return faiss.read_index(str(local))
    return faiss.deserialize_index(np.frombuffer(fsdir.read_bytes(name), dtype=np.uint8))
