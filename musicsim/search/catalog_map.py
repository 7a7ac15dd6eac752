"""2-D coordinates of every track of an index, for an embedding map: PCA (default) or UMAP.

Computed once per index content and cached beside the index, in its own directory, as
``map-<method>-<digest>.npy`` (``[N, 2]`` float32, rows in the index's track order), where the
digest covers the method, the track ids and the vectors: a rebuilt index gets a new file, and an
index never reads another's map. The file is written to a temporary name and renamed, so a reader
never sees half of it. A directory that is not an index (no ``config.json``) or that cannot be
written is never written to: the map is then computed in memory only.
"""
from __future__ import annotations

import hashlib
import os
import warnings

import numpy as np

from musicsim.atomic import atomic_open
from musicsim.index import CONFIG_FILE, IndexBackend
from musicsim.index.storage import MAP_CACHE_NAME

METHODS = ("pca", "umap")
CACHE_VERSION = 1


def index_vectors(index: IndexBackend) -> np.ndarray:
    """Every track's searched vector of ``index`` (either backend), shape [N, D] float32, in ``track_ids``
    order: the backend's ``vectors``, or one ``vector`` per track for a backend without it."""
    try:
        vectors = index.vectors
    except (AttributeError, NotImplementedError):
        vectors = None
    if callable(vectors):
        vectors = vectors()
    if vectors is None:
        ids = index.track_ids
        vectors = (np.stack([index.vector(track_id=t) for t in ids]) if ids
                   else np.zeros((0, index.dim), dtype=np.float32))
    return np.asarray(vectors, dtype=np.float32)


def content_digest(*, index: IndexBackend, method: str, vectors: np.ndarray | None = None) -> str:
    """Hex digest (16 characters) of the method, the track ids and the vectors ([N, D], ``index_vectors``
    when not given) of ``index``."""
    digest = hashlib.sha256(f"catalog-map v{CACHE_VERSION} {method}\n".encode())
    digest.update("\n".join(index.track_ids).encode("utf-8"))
    digest.update(np.ascontiguousarray(index_vectors(index) if vectors is None else vectors).tobytes())
    return digest.hexdigest()[:16]


def cache_path(*, index: IndexBackend, index_dir: str, method: str, vectors: np.ndarray | None = None) -> str:
    """Where the map of ``index`` (its vectors [N, D], ``index_vectors`` when not given) by ``method`` is
    cached in ``index_dir``."""
    digest = content_digest(index=index, method=method, vectors=vectors)
    return os.path.join(index_dir, MAP_CACHE_NAME.format(method=method, digest=digest))


def project(*, vectors: np.ndarray, method: str = "pca", seed: int = 0) -> np.ndarray:
    """2-D coordinates of ``vectors`` [N, D]: shape [N, 2] float32, each axis scaled to [-1, 1].

    Fewer than 3 vectors (or a single dimension) cannot be projected meaningfully: the missing
    axes are 0. UMAP needs at least 4 points; with fewer, PCA is used.
    """
    if method not in METHODS:
        raise ValueError(f"map method must be one of {METHODS}, got {method!r}")
    vectors = np.asarray(vectors, dtype=np.float64)
    count = vectors.shape[0]
    coordinates = np.zeros((count, 2), dtype=np.float64)
    if count >= 2:
        if method == "umap" and count >= 4:
            import umap  # imported here: numba compilation makes it slow to import (about 10 s)

            reducer = umap.UMAP(n_components=2, n_neighbors=min(15, count - 1), random_state=seed,
                                init="random" if count < 10 else "spectral")
            coordinates = reducer.fit_transform(vectors).astype(np.float64)
        else:
            from sklearn.decomposition import PCA  # imported here: seconds to import, and a cached map never needs it

            components = min(2, count - 1, vectors.shape[1])
            centred = vectors - vectors.mean(axis=0, keepdims=True)
            if np.any(centred):
                coordinates[:, :components] = PCA(n_components=components, random_state=seed).fit_transform(centred)
    # Each axis scaled to [-1, 1] around its centre, so the map fills its canvas.
    low, high = coordinates.min(axis=0, initial=0.0), coordinates.max(axis=0, initial=0.0)
    span = np.where(high - low > 0, high - low, 1.0)
    scaled = np.where(high - low > 0, 2.0 * (coordinates - low) / span - 1.0, 0.0)
    return scaled.astype(np.float32)


def catalog_map(*, index: IndexBackend, index_dir: str | None, method: str = "pca", seed: int = 0) -> np.ndarray:
    """The cached or freshly computed map of ``index``: shape [N, 2] float32, in track order.

    Parameters
    ----------
    index : the loaded index (either backend)
    index_dir : the directory ``index`` was loaded from (the only place a cache is written), or None
        to compute without a cache
    method : 'pca' or 'umap'
    seed : random state of the projection
    """
    if method not in METHODS:
        raise ValueError(f"map method must be one of {METHODS}, got {method!r}")
    is_index_dir = index_dir is not None and os.path.isfile(os.path.join(index_dir, CONFIG_FILE))
    vectors = index_vectors(index)
    path = cache_path(index=index, index_dir=index_dir, method=method, vectors=vectors) if is_index_dir else None
    if path is not None and os.path.isfile(path):
        try:
            cached = np.load(path, allow_pickle=False)
            if cached.shape == (len(index), 2) and np.isfinite(cached).all():
                return cached.astype(np.float32)
        except (OSError, ValueError) as error:
            warnings.warn(f"ignoring the unreadable map cache {path}: {error}")
    coordinates = project(vectors=vectors, method=method, seed=seed)
    if path is not None:
        try:
            with atomic_open(path, "wb") as f:
                np.save(f, coordinates, allow_pickle=False)
        except OSError as error:  # a read-only index still gets its map, uncached
            warnings.warn(f"cannot cache the catalog map in {index_dir}: {error}")
    return coordinates
