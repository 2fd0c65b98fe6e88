"""Nearest-centroid assignment of DataComp's ``image_based`` baseline (Gadre et al., 2023,
"DataComp", Sec. 3.4; ``baselines/apply_filter.py``: ``get_centroid_ids_gpu``,
``load_uids_with_image_filter``).

DataComp clusters the pool's OpenAI CLIP ViT-L/14 image embeddings with k-means (100,000
centroids, ``baselines/image_based_clustering.py``), assigns each ImageNet-1k training image's
L/14 embedding to its nearest centroid and keeps the pool samples whose nearest centroid is one
of those. "Nearest" is the largest dot product: ``argmax(features.float() @ centroids.T)`` in
float32 (the first of equal maxima, as ``torch.argmax``), computed here with torch in batches
exactly as ``get_centroid_ids_gpu`` writes it (``einsum("ik, jk -> ij")``), on the CPU or a GPU.

Released files, read in their formats (``baselines/utils.py``, ``download``):

* ``{small,medium,large,xlarge}_centroids_l14.pt``: ``torch.save`` of a numpy array [K, 768];
  DataComp reads it with ``torch.from_numpy(torch.load(path))``;
* ``in1k_clip_vit_l14_{0..4}.pt``: ``torch.save`` of a dict whose ``"image_features"`` is a
  tensor [n, 768]; DataComp concatenates the five.

Both are read with ``torch.load(weights_only=True)``: only tensors, dicts and numpy arrays of
float dtypes are allowed (numpy's array reconstructor under its numpy 1 and numpy 2 names), so
a file cannot run code when loaded. Plain ``.npy`` files (``np.save``, no pickle) are accepted
for both. Centroids are cast to float32 (DataComp's einsum needs them float32 already);
features are cast batch by batch, as DataComp's ``.float()``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from curate.errors import CurateError

BATCH_SIZE = 1024  # DataComp's --batch_size default


def _safe_globals() -> list[Any]:
    rec = np._core.multiarray._reconstruct  # type: ignore[attr-defined]
    return [rec, (rec, "numpy.core.multiarray._reconstruct"), np.ndarray, np.dtype,
            np.dtypes.Float16DType, np.dtypes.Float32DType, np.dtypes.Float64DType]


def load_file(path: str | Path) -> Any:
    """The object in a ``.npy`` (numpy array) or a ``torch.save`` file (``weights_only``)."""
    path = Path(path)
    if not path.is_file():
        raise CurateError(f"no file {path}", "give the path of a DataComp asset (.pt) or a .npy")
    if path.suffix == ".npy":
        try:
            return np.load(path, allow_pickle=False)
        except ValueError as exc:
            raise CurateError(f"{path}: not a plain .npy array ({exc})") from exc
    import torch

    try:
        with torch.serialization.safe_globals(_safe_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any unreadable file (bad zip, pickle, disallowed type)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CurateError(f"{path}: cannot be read with torch.load(weights_only=True): {first}",
                          "give a torch.save file of a numpy array or tensor (or a dict with "
                          "'image_features'), or a .npy") from exc


def _matrix(obj: Any, path: str | Path) -> Any:
    import torch

    if isinstance(obj, np.ndarray):
        obj = torch.from_numpy(obj)
    if not isinstance(obj, torch.Tensor) or obj.ndim != 2 or not obj.is_floating_point():
        raise CurateError(f"{path}: expected a 2-d float array, got "
                          f"{getattr(obj, 'shape', type(obj).__name__)}")
    return obj


def load_centroids(path: str | Path) -> Any:
    """Centroids [K, D] as a float32 torch tensor (DataComp's ``*_centroids_l14.pt``)."""
    return _matrix(load_file(path), path).float().contiguous()


def load_features(paths: Sequence[str | Path]) -> Any:
    """Embeddings [N, D] (torch tensor, dtype as stored) of the given files, concatenated in
    order: DataComp's ``in1k_clip_vit_l14_{i}.pt`` (``["image_features"]``), or ``.npy``."""
    import torch

    parts = []
    for path in paths:
        obj = load_file(path)
        if isinstance(obj, dict):
            if "image_features" not in obj:
                raise CurateError(f"{path}: a dict without 'image_features' "
                                  f"(keys: {sorted(map(str, obj))})")
            obj = obj["image_features"]
        parts.append(_matrix(obj, path))
    if not parts:
        raise CurateError("no embedding files given")
    if len({p.shape[1] for p in parts}) > 1:
        raise CurateError(f"embedding files of different widths: {[p.shape[1] for p in parts]}")
    return torch.cat(parts, dim=0)


def nearest_centroids(features: Any, centroids: Any, batch_size: int = BATCH_SIZE,
                      device: str = "cpu") -> np.ndarray:
    """Index of the nearest centroid of each row of ``features`` [N, D] (numpy or torch, any
    float dtype): ``get_centroid_ids_gpu``'s argmax of the float32 dot products, int64 [N]."""
    import torch

    if isinstance(features, np.ndarray):
        features = torch.from_numpy(features)
    if features.ndim != 2 or features.shape[1] != centroids.shape[1]:
        raise CurateError(f"embeddings of shape {tuple(features.shape)} against centroids of "
                          f"width {centroids.shape[1]}")
    labels = torch.zeros(features.shape[0], dtype=torch.long)
    cents = centroids.to(device)
    with torch.no_grad():
        for i in range(0, features.shape[0], batch_size):
            sim = torch.einsum("ik, jk -> ij", features[i: i + batch_size].float().to(device),
                               cents)
            labels[i: i + batch_size] = torch.argmax(sim, dim=1).cpu().long()
    return labels.numpy()


def target_centroids(centroids: Any, targets: Any, batch_size: int = BATCH_SIZE,
                     device: str = "cpu") -> np.ndarray:
    """The sorted distinct nearest centroids of ``targets`` (``torch.unique`` of their ids)."""
    return np.unique(nearest_centroids(targets, centroids, batch_size, device))


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file, read in 16 MiB pieces."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            h.update(chunk)
    return h.hexdigest()
