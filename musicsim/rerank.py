"""Label-free re-ranking that uses the catalog itself (as image and text retrieval do).

A search engine knows its whole catalog at search time, never its labels. These methods use the
catalog's own neighbour structure to sharpen any model's similarity:

* ``aqe`` — average query expansion (Chum et al. 2007; the alpha-weighted form of Radenović et al.
  2018): the query is replaced by the weighted mean of itself and its ``k`` nearest catalog tracks;
* ``dba`` — database-side augmentation (Arandjelović and Zisserman 2012): every catalog vector is
  replaced by the weighted mean of itself and its ``k`` nearest neighbours, once, at index time;
* ``dba+aqe`` — both, the usual pairing;
* ``kreciprocal`` — k-reciprocal re-ranking (Zhong et al. 2017): two tracks are close when their
  sets of mutual (k-reciprocal) neighbours overlap (Jaccard distance), blended with the original
  distance.

Weights are ``max(cosine, 0) ** alpha`` (``alpha = 0``: a plain mean). Expansion runs on unit
vectors: a model compared by euclidean distance is re-ranked on its length-normalised vectors
(for standardised embeddings the two rankings are close; the tests check the cosine case).

None of these functions takes a label. ``choose_settings`` may pick parameters on an eval split
by the catalog metric, but only a gain over ``none`` larger than that split's noise counts: on a few
dozen tracks a best-of-the-grid margin is mostly chance (a DBA picked by 0.003 catalog mAP on 35 eval
tracks lowered the test split from 0.470 to 0.416), so the best setting is kept only when its mean
per-query gain over ``none`` exceeds ``NOISE_Z`` standard errors of the paired per-query differences,
else ``none``. An index never chooses per catalog: it applies its model's fixed setting
(``musicsim.index.build.model_rerank``).

>>> import numpy as np
>>> from musicsim import rerank
>>> vectors = np.random.default_rng(0).standard_normal((50, 8))
>>> scores = rerank.catalog_scores(vectors=vectors, settings=rerank.RerankSettings(method="dba", k=3))
>>> scores.shape
(50, 50)
"""
from __future__ import annotations

import dataclasses
import itertools
from typing import Iterable, Mapping, Sequence

import numpy as np

from musicsim import evaluation, metrics

METHODS = ("none", "aqe", "dba", "dba+aqe", "kreciprocal")
# choose_settings keeps a setting over none only when its mean per-query AP gain exceeds this many standard
# errors of the paired differences: 3 rather than 2 because the best of a grid of ~40 is picked, whose
# gain is biased upwards by the picking itself.
NOISE_Z = 3.0
# Rows scored at once against the whole catalog: bounds the [block, N] score block in memory.
_BLOCK_ROWS = 1024


@dataclasses.dataclass(frozen=True)
class RerankSettings:
    """One re-ranking configuration.

    Attributes
    ----------
    method : one of ``METHODS``.
    k : int >= 1, neighbours used for expansion (``aqe``/``dba``) or ``k1`` of ``kreciprocal``.
    alpha : float >= 0, weight exponent of expansion: ``max(cosine, 0) ** alpha``.
    k2 : int >= 1, ``kreciprocal`` only: neighbours of the local query expansion of the
        reciprocal-neighbour vectors (1 = none).
    blend : float in [0, 1], ``kreciprocal`` only: weight of the original distance in the final
        distance (``lambda`` in Zhong et al.).
    """

    method: str = "none"
    k: int = 5
    alpha: float = 3.0
    k2: int = 1
    blend: float = 0.3

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"re-ranking method must be one of {METHODS}, got {self.method!r}")
        if int(self.k) != self.k or self.k < 1:
            raise ValueError(f"re-ranking k must be an integer >= 1, got {self.k!r}")
        if int(self.k2) != self.k2 or self.k2 < 1:
            raise ValueError(f"re-ranking k2 must be an integer >= 1, got {self.k2!r}")
        if not self.alpha >= 0:
            raise ValueError(f"re-ranking alpha must be >= 0, got {self.alpha!r}")
        if not 0.0 <= self.blend <= 1.0:
            raise ValueError(f"re-ranking blend must be in [0, 1], got {self.blend!r}")

    def to_json(self) -> dict:
        """The settings as a JSON-ready dict (``RerankSettings(**d)`` reads it back)."""
        return dataclasses.asdict(self)


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero).

    Parameters
    ----------
    vectors : float array ``[N, D]``, finite.

    Returns
    -------
    np.ndarray, float32 ``[N, D]``.
    """
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or vectors.shape[0] == 0:
        raise ValueError(f"vectors must have shape [N, D] with N >= 1, got {vectors.shape}")
    if not np.isfinite(vectors).all():
        raise ValueError("vectors contain NaN or infinite values")
    return evaluation.unit_rows(vectors)


def nearest(*, queries: np.ndarray, catalog: np.ndarray, k: int, exclude_self: bool = False
            ) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` catalog rows of each query by dot product, in blocks of bounded memory.

    Parameters
    ----------
    queries : float array ``[Q, D]`` (unit rows for cosine).
    catalog : float array ``[N, D]``.
    k : int >= 1; at most ``N`` (``N - 1`` with ``exclude_self``) rows are returned.
    exclude_self : the queries are the catalog itself (``Q == N``): row ``i`` never returns ``i``.

    Returns
    -------
    rows : int64 ``[Q, k']``, best first.
    scores : float32 ``[Q, k']``.
    """
    n = len(catalog)
    k = min(int(k), n - 1 if exclude_self else n)
    if k < 1:
        return np.zeros((len(queries), 0), np.int64), np.zeros((len(queries), 0), np.float32)
    rows = np.empty((len(queries), k), np.int64)
    scores = np.empty((len(queries), k), np.float32)
    for start in range(0, len(queries), _BLOCK_ROWS):
        block = queries[start:start + _BLOCK_ROWS] @ catalog.T
        if exclude_self:
            block[np.arange(len(block)), np.arange(start, start + len(block))] = -np.inf
        top = np.argpartition(-block, k - 1, axis=1)[:, :k]
        top_scores = np.take_along_axis(block, top, axis=1)
        order = np.argsort(-top_scores, axis=1, kind="stable")
        rows[start:start + len(block)] = np.take_along_axis(top, order, axis=1)
        scores[start:start + len(block)] = np.take_along_axis(top_scores, order, axis=1)
    return rows, scores


def expand(*, vectors: np.ndarray, neighbour_vectors: np.ndarray, neighbour_scores: np.ndarray,
           alpha: float) -> np.ndarray:
    """Weighted mean of each vector (weight 1) and its neighbours (``max(score, 0) ** alpha``).

    Parameters
    ----------
    vectors : float array ``[Q, D]``, unit rows.
    neighbour_vectors : float array ``[Q, K, D]``.
    neighbour_scores : float array ``[Q, K]``, cosine of each neighbour to its vector.
    alpha : float >= 0.

    Returns
    -------
    np.ndarray, float32 ``[Q, D]``, unit rows.
    """
    weights = np.maximum(np.asarray(neighbour_scores, np.float32), 0.0) ** np.float32(alpha)
    expanded = vectors + np.einsum("qk,qkd->qd", weights, np.asarray(neighbour_vectors, np.float32))
    return unit_rows(expanded)


def augment_database(*, vectors: np.ndarray, k: int, alpha: float) -> np.ndarray:
    """Database-side augmentation: each catalog vector averaged with its ``k`` nearest neighbours.

    Parameters
    ----------
    vectors : float array ``[N, D]``, the catalog.
    k : int >= 1.
    alpha : float >= 0.

    Returns
    -------
    np.ndarray, float32 ``[N, D]``, unit rows.
    """
    unit = unit_rows(vectors)
    rows, scores = nearest(queries=unit, catalog=unit, k=k, exclude_self=True)
    return expand(vectors=unit, neighbour_vectors=unit[rows], neighbour_scores=scores, alpha=alpha)


def expand_queries(*, queries: np.ndarray, catalog: np.ndarray, k: int, alpha: float,
                   queries_are_catalog: bool = False) -> np.ndarray:
    """Average query expansion: each query averaged with its ``k`` nearest catalog vectors.

    Parameters
    ----------
    queries : float array ``[Q, D]``.
    catalog : float array ``[N, D]`` (augmented or not).
    k : int >= 1.
    alpha : float >= 0.
    queries_are_catalog : the queries are the catalog's own rows (``Q == N``): a query does not
        expand with itself.

    Returns
    -------
    np.ndarray, float32 ``[Q, D]``, unit rows.
    """
    unit_queries, unit_catalog = unit_rows(queries), unit_rows(catalog)
    rows, scores = nearest(queries=unit_queries, catalog=unit_catalog, k=k, exclude_self=queries_are_catalog)
    return expand(vectors=unit_queries, neighbour_vectors=unit_catalog[rows], neighbour_scores=scores,
                  alpha=alpha)


def _reciprocal(ranked: np.ndarray, row: int, k: int) -> np.ndarray:
    """The k-reciprocal neighbours of ``row``: its top-``k`` that also hold it in their top-``k``."""
    forward = ranked[row, :k + 1]
    return forward[(ranked[forward, :k + 1] == row).any(axis=1)]


def k_reciprocal_distances(*, vectors: np.ndarray, k: int = 20, k2: int = 6, blend: float = 0.3) -> np.ndarray:
    """k-reciprocal re-ranking of a catalog against itself (Zhong et al. 2017).

    Parameters
    ----------
    vectors : float array ``[N, D]``.
    k : int >= 1, ``k1``: size of the neighbourhoods whose reciprocity is tested.
    k2 : int >= 1, local query expansion of the neighbour vectors (1 = none).
    blend : float in [0, 1], weight of the original distance.

    Returns
    -------
    np.ndarray, float64 ``[N, N]``: ``(1 - blend) * Jaccard + blend * original`` where the original
    distance is ``1 - cosine`` scaled to [0, 1] per query row as in the paper's code; lower is closer.
    Memory: a few ``[N, N]`` matrices (meant for evaluation sets and catalogs of thousands).
    """
    unit = unit_rows(vectors).astype(np.float64)
    n = len(unit)
    original = np.clip(1.0 - unit @ unit.T, 0.0, 2.0)
    original /= np.maximum(original.max(axis=1, keepdims=True), 1e-12)  # per query: keeps its ranking
    ranked = np.argsort(original, axis=1, kind="stable")
    k = min(int(k), n - 1)
    half = max(1, int(round(k / 2)))
    weights = np.zeros((n, n))
    for row in range(n):
        reciprocal = _reciprocal(ranked, row, k)
        expansion = [reciprocal]
        for candidate in reciprocal:
            candidate_set = _reciprocal(ranked, int(candidate), half)
            if len(np.intersect1d(candidate_set, reciprocal)) > 2.0 / 3.0 * len(candidate_set):
                expansion.append(candidate_set)
        members = np.unique(np.concatenate(expansion))
        weight = np.exp(-original[row, members])
        weights[row, members] = weight / weight.sum()
    if k2 > 1:
        weights = weights[ranked[:, :min(int(k2), n)]].mean(axis=1)
    shared = np.zeros((n, n))
    for row in range(n):
        columns = np.flatnonzero(weights[row])
        shared[row] = np.minimum(weights[row, columns][None, :], weights[:, columns]).sum(axis=1)
    jaccard = 1.0 - shared / (2.0 - shared)
    return (1.0 - blend) * jaccard + blend * original


def catalog_scores(*, vectors: np.ndarray, settings: RerankSettings) -> np.ndarray:
    """Re-ranked similarity of every catalog track to every other (higher is more similar).

    This is what the evaluation protocol scores: the catalog is the evaluated split, each of its
    tracks is a query, and no label is read.

    Parameters
    ----------
    vectors : float array ``[N, D]``, the model's embeddings of the catalog.
    settings : the re-ranking; ``method="none"`` gives plain cosine.

    Returns
    -------
    np.ndarray, float64 ``[N, N]``, row = query.
    """
    method = settings.method
    if method == "kreciprocal":
        return -k_reciprocal_distances(vectors=vectors, k=settings.k, k2=settings.k2, blend=settings.blend)
    catalog = unit_rows(vectors)
    if method in ("dba", "dba+aqe"):
        catalog = augment_database(vectors=catalog, k=settings.k, alpha=settings.alpha)
    queries = catalog
    if method in ("aqe", "dba+aqe"):
        queries = expand_queries(queries=catalog, catalog=catalog, k=settings.k, alpha=settings.alpha,
                                 queries_are_catalog=True)
    return queries.astype(np.float64) @ catalog.T.astype(np.float64)


def default_grid() -> list[RerankSettings]:
    """The configurations ``choose_settings`` tries by default (``none`` first)."""
    grid = [RerankSettings(method="none")]
    for method, k, alpha in itertools.product(("aqe", "dba", "dba+aqe"), (1, 2, 3, 5, 8), (0.0, 3.0)):
        grid.append(RerankSettings(method=method, k=k, alpha=alpha))
    for k, k2, blend in itertools.product((5, 10, 20), (1, 3), (0.3, 0.6)):
        grid.append(RerankSettings(method="kreciprocal", k=k, k2=k2, blend=blend))
    return grid


def per_query_average_precision(*, scores: np.ndarray, binary: np.ndarray) -> np.ndarray:
    """Each query's average precision over the rest of the catalog (``evaluation.catalog_retrieval``'s, per
    query): shape [Q'] float64 for the Q' queries with at least one similar track, in catalog order.

    Parameters
    ----------
    scores : float array ``[N, N]``, row = query.
    binary : bool array ``[N, N]``, similar or not.
    """
    relevance = np.asarray(binary, dtype=np.float64).copy()
    np.fill_diagonal(relevance, -1.0)  # the query is not its own result
    has_similar = (relevance > 0).any(axis=1)
    return metrics.average_precision(scores=np.asarray(scores, dtype=np.float64)[has_similar],
                                      relevance=relevance[has_similar])


def choose_settings(*, eval_vectors: np.ndarray, eval_binary: np.ndarray,
                    grid: Iterable[RerankSettings] | None = None,
                    noise_z: float = NOISE_Z) -> tuple[RerankSettings, list[dict]]:
    """Pick a re-ranking on the eval split: the best catalog mAP, if its gain over ``none`` beats the noise.

    Only the eval split's vectors and labels are given: the choice can never see the test split. The best
    setting is kept only when its mean per-query AP gain over ``none`` exceeds ``noise_z`` standard errors of
    the paired per-query differences (see the module docstring); otherwise ``none`` is chosen. Ties keep the
    earlier (simpler) configuration.

    Parameters
    ----------
    eval_vectors : float array ``[N, D]``, the model's embeddings of the eval split.
    eval_binary : bool array ``[N, N]``, similar or not (eval split only).
    grid : configurations to try (default ``default_grid()``); ``none`` is always scored too.
    noise_z : standard errors the gain must exceed (0: the plain best).

    Returns
    -------
    best : RerankSettings
    table : list of ``{"settings": dict, "catalog_mAP": float, "gain": float, "gain_standard_error": float}``,
        one per configuration tried (gain and its standard error against ``none``, per query).
    """
    settings_list = list(default_grid() if grid is None else grid)
    if not settings_list:
        raise ValueError("the re-ranking grid is empty")
    baseline = RerankSettings(method="none")
    if baseline not in settings_list:
        settings_list.insert(0, baseline)
    per_query = {settings: per_query_average_precision(scores=catalog_scores(vectors=eval_vectors, settings=settings),
                                                        binary=eval_binary)
                 for settings in settings_list}
    reference = per_query[baseline]
    table = []
    best, best_map = baseline, float(np.mean(reference)) if len(reference) else float("nan")
    for settings in settings_list:
        values = per_query[settings]
        differences = values - reference
        error = float(np.std(differences, ddof=1) / np.sqrt(len(differences))) if len(differences) > 1 else np.inf
        value = float(np.mean(values)) if len(values) else float("nan")
        table.append({"settings": settings.to_json(), "catalog_mAP": value,
                      "gain": float(np.mean(differences)) if len(differences) else 0.0, "gain_standard_error": error})
        if value > best_map + 1e-12:
            best, best_map = settings, value
    best_row = table[settings_list.index(best)]
    if best != baseline and not best_row["gain"] > noise_z * best_row["gain_standard_error"]:
        best = baseline  # the margin is within the eval split's noise
    return best, table


def settings_from_json(record: Mapping | None) -> RerankSettings:
    """``RerankSettings`` from a dict written by ``to_json`` (None: no re-ranking)."""
    if not record:
        return RerankSettings()
    unknown = set(record) - {field.name for field in dataclasses.fields(RerankSettings)}
    if unknown:
        raise ValueError(f"unknown re-ranking settings {sorted(unknown)}")
    return RerankSettings(**record)


def parse_settings(text: str) -> RerankSettings:
    """``RerankSettings`` from a command-line string such as ``dba+aqe:k=3,alpha=3``.

    Parameters
    ----------
    text : ``METHOD`` or ``METHOD:key=value,...`` with keys ``k``, ``alpha``, ``k2``, ``blend``.
    """
    method, _, rest = text.partition(":")
    values: dict = {"method": method.strip()}
    for item in filter(None, (part.strip() for part in rest.split(","))):
        key, sep, value = item.partition("=")
        if not sep or key not in ("k", "alpha", "k2", "blend"):
            raise ValueError(f"bad re-ranking option {item!r} in {text!r}: expected k=, alpha=, k2= or blend=")
        values[key] = int(value) if key in ("k", "k2") else float(value)
    return RerankSettings(**values)


__all__: Sequence[str] = ("METHODS", "RerankSettings", "augment_database", "catalog_scores", "choose_settings",
                          "default_grid", "expand", "expand_queries", "k_reciprocal_distances", "nearest",
                          "NOISE_Z", "parse_settings", "per_query_average_precision", "settings_from_json", "unit_rows")
