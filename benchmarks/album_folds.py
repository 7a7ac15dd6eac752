"""Album folds: the measure that decides the engine's defaults (pure numpy, no audio, no TF).

The albums of a corpus are split into ``n_folds`` folds (`assign_album_folds`: seeded, balanced by track
count). Each fold is tested once: its albums are the catalog, every one of its tracks a query. A row of the
benchmark is two functions:

- ``choose(features=..., labels=...) -> choice`` reads labels: it picks whatever a row picks (block weights,
  re-ranking settings, a fitted transform). It is given the OTHER folds' rows only (`run_album_folds` slices
  them), so a test album's labels and vectors never reach it;
- ``search(choice=..., features=...) -> scores [n, n]`` is what a search engine does with its own catalog: it
  is given the test fold's rows only (never their labels) and may use them for label-free steps
  (standardising each dimension over the catalog, DBA / query expansion).

Per fold: catalog mAP and P@10 (every query ranks the whole catalog, `musicsim.evaluation.catalog_retrieval`)
and PC (the paper's 15 pairs per query, mean over the evaluation seeds). `summarise` gives mean ± std over
folds (population std) and the mean over all queries (AP and precision pooled; PC weighted by queries).

Helpers for the rows: `standardise` (z-score with given or own statistics), `block_vectors` (standardised
blocks, each scaled by weight / sqrt(dim), concatenated), `inner_catalogs` + `mean_catalog_map` (how a
``choose`` scores a candidate: the training albums split into catalogs of test-fold size, so a choice is
judged under the conditions of search), `coordinate_search` (block weights), `evenly_spread` (patch sampling).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from musicsim import evaluation, metrics, rerank

Features = Mapping[str, np.ndarray]  # block name -> [N, d] (rows: tracks)
ChooseFn = Callable[..., Any]  # choose(*, features: Features, labels: np.ndarray) -> choice
SearchFn = Callable[..., np.ndarray]  # search(*, choice, features: Features) -> scores [n, n]

FOLD_METRICS = ("catalog_mAP", "P@10", "PC")
DEFAULT_EVAL_SEEDS = (0, 1, 2, 3, 4)


class AlbumFoldsError(ValueError):
    """Album folds cannot be made or run (too few albums, mismatched rows); the message says why."""


# --------------------------------------------------------------------------- folds
def assign_album_folds(*, albums: Sequence[str], n_folds: int = 5, seed: int = 0) -> np.ndarray:
    """The fold of every track: whole albums per fold, folds balanced by track count.

    Albums are taken largest first (equal sizes in a seeded order); each goes to a fold holding fewer than two
    albums while there is one (a catalog of one album has no wrong answer to rank), else to the fold holding the
    fewest tracks so far (ties: fewest albums, then a seeded fold order), so fold sizes differ by at most the
    largest album. Deterministic for a given (albums, n_folds, seed); the tracks' order does not matter.

    Parameters
    ----------
    albums : sequence of str, length N; the album label of each track.
    n_folds : int >= 2; the corpus needs at least ``2 * n_folds`` albums.
    seed : int >= 0.

    Returns
    -------
    np.ndarray, int64 ``[N]``, fold index in ``[0, n_folds)`` of each track; every fold holds two albums or more.
    """
    albums = np.asarray([str(a) for a in albums])
    names, counts = np.unique(albums, return_counts=True)
    if isinstance(n_folds, bool) or int(n_folds) != n_folds or n_folds < 2:
        raise AlbumFoldsError(f"n_folds must be an integer >= 2, got {n_folds!r}")
    if len(names) < 2 * n_folds:
        raise AlbumFoldsError(f"{n_folds} album folds need at least {2 * n_folds} albums (two per fold: a catalog of "
                              f"one album has no wrong answer), the corpus has {len(names)}")
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0xA1B]))
    tiebreak = rng.permutation(len(names))
    fold_rank = rng.permutation(n_folds)
    order = sorted(range(len(names)), key=lambda i: (-counts[i], tiebreak[i]))
    tracks, n_albums = np.zeros(n_folds, np.int64), np.zeros(n_folds, np.int64)
    album_fold = {}
    for i in order:
        fold = min(range(n_folds), key=lambda f: (n_albums[f] >= 2, tracks[f], n_albums[f], fold_rank[f]))
        album_fold[names[i]] = fold
        tracks[fold] += counts[i]
        n_albums[fold] += 1
    return np.asarray([album_fold[a] for a in albums], dtype=np.int64)


def subset(features: Features, rows: np.ndarray) -> dict[str, np.ndarray]:
    """Every block's ``rows`` (a copy: a row function cannot reach the others through a view)."""
    return {name: np.array(np.asarray(values)[rows]) for name, values in features.items()}


def same_album(labels: np.ndarray) -> np.ndarray:
    """bool ``[n, n]``: same album label."""
    labels = np.asarray(labels)
    return labels[:, None] == labels[None, :]


# --------------------------------------------------------------------------- scoring one catalog
def per_query_metrics(*, scores: np.ndarray, binary: np.ndarray, k: int = 10) -> dict[str, np.ndarray]:
    """Catalog AP and precision@k of each query (the query excluded from its own ranking).

    Returns
    -------
    dict ``{"AP": [n], "P@k": [n]}``, NaN for a query with no similar track.
    """
    scores = np.asarray(scores, np.float64)
    relevance = np.asarray(binary, bool).astype(np.float64)
    np.fill_diagonal(relevance, -1.0)
    return {"AP": metrics.average_precision(scores=scores, relevance=relevance),
            f"P@{k}": metrics.precision_at_k(scores=scores, relevance=relevance, k=k)}


def pc_queries(binary: np.ndarray) -> int:
    """Queries PC is defined for: a similar and a non-similar track besides themselves."""
    binary = np.asarray(binary, bool)
    n = len(binary)
    similar = binary.sum(axis=1) - binary[np.arange(n), np.arange(n)]
    return int(((similar > 0) & ((n - 1 - similar) > 0)).sum())


@dataclass
class FoldResult:
    """One row's results on one fold."""

    fold: int
    n_queries: int
    metrics: dict[str, float]  # catalog_mAP, P@10, PC
    ap: np.ndarray  # [n_test] per query (NaN: no similar track)
    precision: np.ndarray  # [n_test]
    pc_queries: int
    choice: Any = None


@dataclass
class RowResult:
    """One row over all folds."""

    name: str
    folds: list[FoldResult] = field(default_factory=list)

    def summary(self) -> dict[str, dict[str, float]]:
        return summarise(self.folds)


def score_catalog(*, scores: np.ndarray, labels: np.ndarray, seeds: Sequence[int] = DEFAULT_EVAL_SEEDS
                  ) -> tuple[dict[str, float], dict[str, np.ndarray], int]:
    """(fold metrics, per-query AP / P@10, PC queries) of one catalog's ``[n, n]`` scores."""
    binary = same_album(labels)
    per_query = per_query_metrics(scores=scores, binary=binary)
    protocol = evaluation.evaluate(relevance_matrix=binary.astype(np.float64), scores=scores, seeds=seeds)
    fold_metrics = {"catalog_mAP": float(np.nanmean(per_query["AP"])), "P@10": float(np.nanmean(per_query["P@10"])),
                    "PC": float(protocol["PC"][0])}
    return fold_metrics, per_query, pc_queries(binary)


def run_album_folds(*, features: Features, labels: Sequence[str], folds: np.ndarray, choose: ChooseFn,
                    search: SearchFn, name: str = "", seeds: Sequence[int] = DEFAULT_EVAL_SEEDS,
                    test_folds: Sequence[int] | None = None) -> RowResult:
    """Test every fold once: ``choose`` on the other folds' rows and labels, ``search`` on the fold's rows.

    Parameters
    ----------
    features : block name -> float array ``[N, d]``; all blocks have the N rows of ``labels``.
    labels : album label of each track, length N.
    folds : int ``[N]`` (`assign_album_folds`).
    choose : ``choose(*, features, labels) -> choice``; given only the training rows and their labels.
    search : ``search(*, choice, features) -> [n, n]`` scores (row = query); given only the test rows, no label.
    name : the row's name.
    seeds : evaluation seeds of PC's pair lists.
    test_folds : the folds tested (default: every fold); each still chooses on all the other folds' rows.

    Returns
    -------
    RowResult, one FoldResult per fold in fold order.
    """
    labels = np.asarray([str(label) for label in labels])
    folds = np.asarray(folds)
    if folds.shape != labels.shape:
        raise AlbumFoldsError(f"folds has shape {folds.shape}, labels {labels.shape}")
    for block, values in features.items():
        if len(values) != len(labels):
            raise AlbumFoldsError(f"block {block!r} has {len(values)} rows, there are {len(labels)} labels")
    result = RowResult(name=name)
    for fold in np.unique(folds) if test_folds is None else sorted(set(int(f) for f in test_folds)):
        train, test = np.flatnonzero(folds != fold), np.flatnonzero(folds == fold)
        if len(set(labels[test])) < 2:
            raise AlbumFoldsError(f"fold {fold} holds one album ({labels[test][0]}): a catalog needs two or more")
        if set(labels[train]) & set(labels[test]):
            raise AlbumFoldsError(f"fold {fold}: an album is on both sides: {sorted(set(labels[train]) & set(labels[test]))}")
        choice = choose(features=subset(features, train), labels=labels[train].copy())
        scores = np.asarray(search(choice=choice, features=subset(features, test)), np.float64)
        if scores.shape != (len(test), len(test)):
            raise AlbumFoldsError(f"{name}: search returned shape {scores.shape} for a catalog of {len(test)}")
        fold_metrics, per_query, n_pc = score_catalog(scores=scores, labels=labels[test], seeds=seeds)
        result.folds.append(FoldResult(fold=int(fold), n_queries=len(test), metrics=fold_metrics, ap=per_query["AP"],
                                       precision=per_query["P@10"], pc_queries=n_pc, choice=choice))
    return result


def summarise(folds: Sequence[FoldResult]) -> dict[str, dict[str, float]]:
    """Per metric: ``mean`` and ``std`` (population) over folds, ``pooled`` (the mean over all queries)."""
    out = {}
    for metric in FOLD_METRICS:
        values = np.asarray([f.metrics[metric] for f in folds])
        if metric == "catalog_mAP":
            pooled = float(np.nanmean(np.concatenate([f.ap for f in folds])))
        elif metric == "P@10":
            pooled = float(np.nanmean(np.concatenate([f.precision for f in folds])))
        else:
            weights = np.asarray([f.pc_queries for f in folds], np.float64)
            pooled = float((values * weights).sum() / weights.sum())
        out[metric] = {"mean": float(values.mean()), "std": float(values.std()), "pooled": pooled}
    return out


def paired_gain(*, row: RowResult, reference: RowResult, metric: str = "catalog_mAP") -> tuple[float, int]:
    """(mean gain over folds, number of folds where ``row`` beats ``reference``) on ``metric``."""
    gains = np.asarray([a.metrics[metric] - b.metrics[metric] for a, b in zip(row.folds, reference.folds)])
    return float(gains.mean()), int((gains > 1e-12).sum())


# --------------------------------------------------------------------------- building blocks of rows
def standardise(values: np.ndarray, *, statistics: tuple[np.ndarray, np.ndarray] | None = None
                ) -> np.ndarray:
    """Z-score each dimension: with ``statistics`` (mean, std) when given, else over ``values`` itself.

    A (near-)constant dimension gets std 1, so it maps to 0 rather than NaN.
    """
    values = np.asarray(values, np.float64)
    mean, std = statistics if statistics is not None else column_statistics(values)
    return (values - mean) / std


def column_statistics(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean ``[d]``, std ``[d]``, 1 where the std is below 1e-8) of each dimension."""
    values = np.asarray(values, np.float64)
    std = values.std(axis=0)
    return values.mean(axis=0), np.where(std > 1e-8, std, 1.0)


def block_vectors(*, features: Features, blocks: Sequence[str], weights: Sequence[float] | None = None,
                  statistics: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None) -> np.ndarray:
    """Each block z-scored (over these rows, or with ``statistics[block]``), scaled by weight / sqrt(dim),
    concatenated: ``[n, sum of dims]``. Blocks of weight 0 are left out."""
    weights = np.ones(len(blocks)) if weights is None else np.asarray(weights, np.float64)
    if len(weights) != len(blocks) or not (weights >= 0).all() or not weights.any():
        raise AlbumFoldsError(f"weights must be {len(blocks)} values >= 0, not all 0; got {list(weights)}")
    parts = []
    for block, weight in zip(blocks, weights):
        if weight == 0:
            continue
        values = np.asarray(features[block], np.float64)
        z = standardise(values, statistics=None if statistics is None else statistics[block])
        parts.append(z * (weight / np.sqrt(values.shape[1])))
    return np.concatenate(parts, axis=1)


def inner_catalogs(*, labels: np.ndarray, n_catalogs: int, seed: int = 0) -> list[np.ndarray]:
    """The training albums split into ``n_catalogs`` album-disjoint catalogs (`assign_album_folds`): row
    indices of each. With as many catalogs as the training folds, each is about a test catalog's size. Fewer
    when there are not two albums per catalog; one (every row) when there are under four albums."""
    n_catalogs = min(int(n_catalogs), len(set(labels)) // 2)
    if n_catalogs < 2:
        return [np.arange(len(labels))]
    inner = assign_album_folds(albums=labels, n_folds=n_catalogs, seed=seed)
    return [np.flatnonzero(inner == f) for f in range(n_catalogs)]


def mean_catalog_map(*, catalogs: Sequence[np.ndarray], labels: np.ndarray,
                     scores_of: Callable[[np.ndarray], np.ndarray]) -> float:
    """Mean over ``catalogs`` of the catalog mAP of ``scores_of(rows)`` (each catalog searched on its own)."""
    values = []
    for rows in catalogs:
        binary = same_album(labels[rows])
        values.append(evaluation.catalog_retrieval(scores=scores_of(rows), binary=binary)["catalog_mAP"])
    return float(np.mean(values))


def coordinate_search(*, n_blocks: int, objective: Callable[[np.ndarray], float],
                      grid: Sequence[float] = (0.0, 0.5, 1.0, 1.5, 2.0), passes: int = 2
                      ) -> tuple[np.ndarray, float]:
    """Block weights by coordinate search from equal weights (``musicsim.models.fusion``'s search): each
    block in turn takes the grid value that most raises ``objective``; ties keep the current weight."""
    weights = np.ones(n_blocks)
    best = objective(weights)
    for _ in range(passes):
        for block in range(n_blocks):
            for value in grid:
                trial = weights.copy()
                trial[block] = value
                if value == weights[block] or not trial.any():
                    continue
                score = objective(trial)
                if score > best + 1e-12:
                    best, weights = score, trial
    return weights, best


def search_scores(*, vectors: np.ndarray, similarity: str = "cosine",
                  settings: rerank.RerankSettings | None = None) -> np.ndarray:
    """``[n, n]`` scores of a catalog against itself: cosine with a re-ranking, or plain euclidean/cosine."""
    if settings is not None and settings.method != "none":
        return rerank.catalog_scores(vectors=vectors, settings=settings)
    return evaluation.similarity_matrix(embeddings=vectors, similarity=similarity)


def evenly_spread(n_patches: int, max_patches: int | None) -> np.ndarray:
    """Indices of at most ``max_patches`` of ``n_patches`` patches in time order, evenly spread: the patch at the
    middle of each of ``max_patches`` equal segments (``floor((i + 0.5) * n / max)``); all when None or n <= max."""
    if max_patches is None or n_patches <= max_patches:
        return np.arange(n_patches)
    return np.floor((np.arange(max_patches) + 0.5) * n_patches / max_patches).astype(np.int64)


__all__ = ("AlbumFoldsError", "FOLD_METRICS", "FoldResult", "RowResult", "assign_album_folds", "block_vectors",
           "column_statistics", "coordinate_search", "evenly_spread", "inner_catalogs", "mean_catalog_map",
           "paired_gain", "per_query_metrics", "run_album_folds", "same_album", "score_catalog", "search_scores",
           "standardise", "subset", "summarise")
