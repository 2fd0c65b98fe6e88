"""Spherical k-means on L2-normalised embeddings (faiss), shared by the embedding selectors."""

from __future__ import annotations

import numpy as np


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
    km = faiss.Kmeans(x.shape[1], k, niter=niter, seed=seed, spherical=True, verbose=False,
                      max_points_per_centroid=64)
    km.train(x)
    _, assign = km.index.search(x, 1)
    return km.centroids, assign[:, 0].astype(np.int64)
