"""Spherical k-means on L2-normalised embeddings (faiss), shared by the embedding selectors."""

from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger("curate")

# faiss prints "please provide at least k*39 training points" on stderr below this many points
# per centroid; the run log records it instead (it changes no result).
FAISS_MIN_POINTS_PER_CENTROID = 39


def spherical_kmeans(x: np.ndarray, k: int, niter: int = 20, seed: int = 0,
                     ) -> tuple[np.ndarray, np.ndarray]:
    """(centroids [k, d], assignment [n]) of normalised ``x``. Deterministic for a seed and an
    input order; callers sort their points (by uid) so that sharding does not matter."""
    import faiss

    x = np.ascontiguousarray(x, dtype=np.float32)
    k = max(1, min(k, len(x)))
    if k == 1:
        c = x.mean(axis=0, keepdims=True)
        c /= max(float(np.linalg.norm(c)), 1e-12)
        return c.astype(np.float32), np.zeros(len(x), dtype=np.int64)
    if len(x) < k * FAISS_MIN_POINTS_PER_CENTROID:
        log.info("k-means of %d points into %d clusters: faiss advises at least %d points",
                 len(x), k, k * FAISS_MIN_POINTS_PER_CENTROID)
    # min_points_per_centroid only decides whether faiss prints that advice on stderr
    km = faiss.Kmeans(x.shape[1], k, niter=niter, seed=seed, spherical=True, verbose=False,
                      max_points_per_centroid=64, min_points_per_centroid=1)
    km.train(x)
    _, assign = km.index.search(x, 1)
    return km.centroids, assign[:, 0].astype(np.int64)
