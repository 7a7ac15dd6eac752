"""What the index backends compute and check on vectors, ids and settings, with no index at hand (a leaf:
it imports nothing of the package).

IVF defaults (``default_nlist``, ``default_nprobe``); catalog standardisation (``catalog_statistics``,
``standardised_rows``, ``check_dimension_weights``; see ``musicsim.index.backends``); which re-ranking an
index applies (``check_index_rerank``); id checks (``id_defects``); similarities and maximal marginal
relevance (``similarities_to``, ``maximal_marginal_relevance``).
"""
from __future__ import annotations

import math
from collections import Counter
from typing import Any, Iterable, Sequence

import numpy as np

from musicsim.rerank import RerankSettings

APPROXIMATE_KINDS = ("ivf", "hnsw")
# Diversity re-ranking looks at most this many candidates (and so returns at most this many results):
# greedy MMR costs O(k * pool * D) time, which a pool of the whole catalogue would make unbounded.
MAX_DIVERSITY_POOL = 10_000
# IVF: faiss wants >= 39 training points per list.
MIN_POINTS_PER_LIST = 39

Result = list[tuple[str, float]]


def default_nlist(*, count: int) -> int:
    """Number of IVF lists for ``count`` vectors: about ``4 * sqrt(count)``, at most ``count // 39``."""
    if count < 1:
        raise ValueError(f"an IVF index needs at least one vector to train, got count={count}")
    return int(max(1, min(round(4 * math.sqrt(count)), count // MIN_POINTS_PER_LIST)))


def default_nprobe(*, nlist: int) -> int:
    """Lists visited per IVF query by default: 1/16 of the lists (at least 1)."""
    return int(max(1, round(nlist / 16)))


# What an index can apply: database-side augmentation once at build / add / remove time, and query
# expansion per query. k-reciprocal re-ranking compares every pair's neighbourhoods (an [N, N]
# distance matrix), which no search of one query can afford.
INDEX_RERANK_METHODS = ("none", "aqe", "dba", "dba+aqe")


def check_index_rerank(*, settings: RerankSettings, similarity: str, backend: str, reranks: bool) -> RerankSettings:
    """``settings`` when an index of ``similarity`` on the backend named ``backend`` can apply them; else
    ValueError saying why and what it can apply.

    Re-ranking expands unit vectors (``musicsim.rerank``), so only cosine indexes apply it; only a backend
    that holds the whole catalog in memory (``reranks``: the backend class's attribute) can augment it.
    """
    if settings.method == "none":
        return settings
    if settings.method not in INDEX_RERANK_METHODS:
        raise ValueError(f"an index cannot apply re-ranking {settings.method!r}: it needs the whole catalog's "
                         f"[N, N] distance matrix at every query; an index applies {INDEX_RERANK_METHODS}, e.g. "
                         f"--rerank=dba+aqe:k={settings.k},alpha=3")
    if similarity != "cosine":
        raise ValueError(f"re-ranking {settings.method!r} averages unit vectors, so it ranks by cosine: a "
                         f"{similarity} index cannot apply it; build with --similarity=cosine, or --rerank=none")
    if not reranks:
        raise ValueError(f"the {backend} backend does not re-rank (database-side augmentation needs the "
                         "catalog in memory); build with --backend=faiss, or --rerank=none")
    return settings


def describe_rerank(settings: RerankSettings) -> str:
    """``none`` or e.g. ``dba+aqe(k=3, alpha=3.0)``, for summaries."""
    if settings.method == "none":
        return "none"
    return f"{settings.method}(k={settings.k}, alpha={settings.alpha})"


# A dimension whose standard deviation over the catalog is below this (relative to its spread of
# magnitudes) is constant: it is centred but not scaled (dividing by ~0 would blow up rounding noise).
CONSTANT_DIMENSION_TOLERANCE = 1e-6


def catalog_statistics(*, raw_vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension mean and scale of a catalog's raw vectors, for catalog standardisation.

    Parameters
    ----------
    raw_vectors : np.ndarray, shape [N, D]
        The catalog's raw vectors (finite).

    Returns
    -------
    mean : np.ndarray, shape [D], float64
    scale : np.ndarray, shape [D], float64
        The standard deviation (population), 1 where a dimension is constant. A catalog of fewer
        than two tracks has nothing to standardise by: mean 0, scale 1 (its vectors stay as given).
    """
    matrix = np.asarray(raw_vectors, dtype=np.float64)
    dim = matrix.shape[1]
    if len(matrix) < 2:
        return np.zeros(dim), np.ones(dim)
    mean = matrix.mean(axis=0)
    scale = matrix.std(axis=0)
    magnitude = np.maximum(np.abs(matrix).max(axis=0), 1e-30)
    scale = np.where(scale > CONSTANT_DIMENSION_TOLERANCE * magnitude, scale, 1.0)
    return mean, scale


def standardised_rows(*, raw_vectors: np.ndarray, mean: np.ndarray, scale: np.ndarray,
                      dimension_weights: np.ndarray | None, similarity: str) -> np.ndarray:
    """``((raw - mean) / scale) * dimension_weights``, unit rows for cosine (a row at the mean stays 0).

    Parameters
    ----------
    raw_vectors : np.ndarray, shape [N, D]
    mean, scale : np.ndarray, shape [D]
        ``catalog_statistics`` of the catalog.
    dimension_weights : np.ndarray, shape [D], optional
        Multipliers applied after the z-score (None: all 1).
    similarity : {'cosine', 'euclidean'}

    Returns
    -------
    np.ndarray, shape [N, D], float32 (C-contiguous)
    """
    rows = (np.asarray(raw_vectors, dtype=np.float64) - mean) / scale
    if dimension_weights is not None:
        rows = rows * dimension_weights
    if similarity == "cosine":
        norms = np.linalg.norm(rows, axis=1, keepdims=True)
        rows = rows / np.where(norms > 0, norms, 1.0)
    return np.ascontiguousarray(rows, dtype=np.float32)


def check_dimension_weights(weights: Any, *, dim: int, standardise: bool) -> np.ndarray | None:
    """``weights`` as a float64 [dim] array of finite non-negative numbers with one above 0 (None stays None);
    ValueError otherwise, or when given to an index that does not standardise."""
    if weights is None:
        return None
    if not standardise:
        raise ValueError("dimension_weights apply after catalog standardisation: pass standardise=True too")
    array = np.asarray(weights, dtype=np.float64)
    if array.shape != (dim,):
        raise ValueError(f"dimension_weights must have shape [{dim}] (the vectors' dimension), got {array.shape}")
    if not np.isfinite(array).all() or (array < 0).any() or not (array > 0).any():
        raise ValueError("dimension_weights must be finite, >= 0 and not all 0")
    return array


def as_str_list(values: Iterable[Any]) -> list[str]:
    out = []
    for value in values:
        if isinstance(value, bytes):
            value = value.decode("utf-8")
        out.append(str(value))
    return out


def id_defects(track_ids: Sequence[str]) -> tuple[list[int], list[str]]:
    """What makes ``track_ids`` unusable as an index's keys: the positions of empty ids, and the ids
    that appear more than once (sorted); both empty when every id is a unique non-empty string."""
    empty = [position for position, track_id in enumerate(track_ids) if not track_id]
    return empty, sorted(track_id for track_id, n in Counter(track_ids).items() if n > 1)


def as_group_set(values: Any) -> set:
    """One query's exclusions: a single str is one value, not an iterable of characters."""
    if values is None:
        return set()
    if isinstance(values, (str, bytes)):
        return {values.decode("utf-8") if isinstance(values, bytes) else values}
    return set(values)


def similarities_to(*, vectors: np.ndarray, vector: np.ndarray, similarity: str,
                    squared_norms: np.ndarray | None = None) -> np.ndarray:
    """Similarity of each row of ``vectors`` [P, D] to ``vector`` [D]: a dot product (cosine, unit
    rows) or ``-||v - vector||`` (euclidean); shape [P]."""
    products = vectors @ vector
    if similarity == "cosine":
        return products
    if squared_norms is None:
        squared_norms = np.einsum("pd,pd->p", vectors, vectors)
    return 0.0 - np.sqrt(np.maximum(squared_norms + float(vector @ vector) - 2.0 * products, 0.0))


def maximal_marginal_relevance(*, candidates: np.ndarray, relevance: np.ndarray, k: int, trade_off: float,
                               similarity: str) -> np.ndarray:
    """Greedy MMR over candidate vectors.

    Each next pick maximises ``trade_off * relevance - (1 - trade_off) * max_picked sim(c, s)``.
    Memory is O(P * D): each pick updates every candidate's redundancy with its similarity to the
    new pick only, never a [P, P] matrix of all pairs.

    Parameters
    ----------
    candidates : np.ndarray, shape [P, D]
        Candidate vectors (unit rows for cosine).
    relevance : np.ndarray, shape [P]
        Similarity of each candidate to the query.
    k : int
        Picks to make (at most P).
    trade_off : float in [0, 1]
        1 ranks by relevance only.
    similarity : {'cosine', 'euclidean'}

    Returns
    -------
    np.ndarray, shape [min(k, P)], int64
        Positions into ``candidates`` in pick order.
    """
    squared = np.einsum("pd,pd->p", candidates, candidates) if similarity == "euclidean" else None
    redundancy = np.full(len(candidates), -np.inf)
    available = np.ones(len(candidates), dtype=bool)
    picked: list[int] = []
    for _ in range(min(k, len(candidates))):
        if picked:
            value = trade_off * relevance - (1.0 - trade_off) * redundancy
        else:
            value = relevance.astype(np.float64)
        value = np.where(available, value, -np.inf)
        best = int(np.argmax(value))
        picked.append(best)
        available[best] = False
        redundancy = np.maximum(redundancy, similarities_to(vectors=candidates, vector=candidates[best],
                                                            similarity=similarity, squared_norms=squared))
    return np.asarray(picked, dtype=np.int64)
