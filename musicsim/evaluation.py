"""The paper's evaluation protocol (5.1.2, 5.2, "Skew issues"), the same numpy code for every model.

One call evaluates any model on a set of ``N`` tracks (normally the test split)::

    from musicsim import evaluation
    # a learned or fitted model: its embeddings of the N tracks, [N, D]
    results = evaluation.evaluate(relevance_matrix=relevance, embeddings=embeddings, similarity="cosine",
                                  reference_scores=librosa_scores)
    # a baseline, by name
    results = evaluation.evaluate(relevance_matrix=relevance, baseline="random")
    results["NDCG@6"]  # -> (mean over seeds, std over seeds)

``relevance_matrix[i, j]`` is the relevance of track ``j`` to query track ``i`` (from
``musicsim.relevance``: 0/1, or graded); its binary view ``relevance > 0`` says who is similar.
The model is given by exactly one of ``embeddings`` (+ ``similarity``: ``cosine`` or
``euclidean`` = ``-||a - b||``, paper 5.2), ``baseline`` (``random``: uniform random scores;
``worst``: ``-relevance``, the worst ranking possible), ``scores`` (a full ``[N, N]`` score
matrix) or ``scorer`` (a callable, see below; no catalog metrics then).

The result maps each metric name to ``(mean, std)`` over ``seeds`` (population std, ddof=0):

- ``PC``, ``NDCG@1``, ``NDCG@6``, ``MAP`` — paper 5.2 "Ranking": for each query track, a list of
  3 randomly drawn similar and 3 non-similar tracks (``make_ranking_lists``) scored with NDCG
  (graded relevance) and AP (binary view), and 15 random (similar, non-similar) pairs
  (``make_pair_lists``) scored with pairwise accuracy (a score tie counts as wrong, as in
  TF-Ranking's OPA, so a collapsed constant model gets PC 0). Each seed draws new lists.
- ``catalog_mAP``, ``P@10`` — every query ranks the whole set (``catalog_retrieval``): what a search
  engine user sees. Not in the paper; available whenever a full score matrix is.
- ``skew/PC``, ``skew/NDCG@1``, ``skew/NDCG@6``, ``skew/MAP`` — only with ``reference_scores``
  (librosa's ``[N, N]`` scores): paper 5.2 "Skew issues", lists built from the reference model's
  failures (``make_skew_lists``). These lists do not depend on the seed.

The catalogue and skew metrics are computed once (std 0) unless the model is the random
baseline, which draws a new ``[N, N]`` score matrix per seed. Memory: a few ``[N, N]`` float64
matrices (N = 6,500 tracks: about 340 MB each).

A *scorer* is ``scorer(query_idx [Q] int, candidate_idx [Q, L] int) -> scores [Q, L]``; positions
where ``candidate_idx`` is -1 (padding) may hold any value. ``embedding_scorer``,
``matrix_scorer``, ``random_scorer`` and ``worst_scorer`` make one.

Queries are skipped when they lack a similar or a non-similar track; every metric here is then
defined for every remaining query (see ``musicsim.metrics`` for NaN conventions).
Randomness: each seed feeds separate streams for list sampling, pair sampling and the random
baseline, so results are reproducible and independent of call order.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from musicsim import metrics
from musicsim.ranking_lists import (MIN_TRACKS_PER_LABEL, RANDOM_MODEL_STREAM, PairLists, RankingLists,
                                    check_seed, count_query_tracks, dataset_query_problems, make_pair_lists,
                                    make_ranking_lists, make_skew_lists, relevance_and_binary, seeded_rng,
                                    split_query_problem, square_matrix)
from musicsim.similarity import check_similarity

Scorer = Callable[[np.ndarray, np.ndarray], np.ndarray]

BASELINES = ("random", "worst")
LIST_METRICS = ("PC", "NDCG@1", "NDCG@6", "MAP")

# Rows of the [N, N] matrices handled at once, to bound memory on large sets.
_CHUNK_ROWS = 256


# --------------------------------------------------------------------------- scorers


def _embeddings(embeddings: np.ndarray) -> np.ndarray:
    embeddings = np.asarray(embeddings, dtype=np.float64)
    if embeddings.ndim != 2 or embeddings.shape[0] == 0:
        raise ValueError(f"embeddings must have shape [N, D] with N >= 1, got {embeddings.shape}")
    if not np.isfinite(embeddings).all():
        raise ValueError("embeddings contain NaN or infinite values")
    return embeddings


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """Rows ``[..., D]`` scaled to unit length, in their own dtype; a zero row stays zero (cosine 0 with
    everything) instead of dividing by zero.

    >>> unit_rows(np.array([[3.0, 4.0], [0.0, 0.0]]))
    array([[0.6, 0.8],
           [0. , 0. ]])
    """
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.where(norms > 0, norms, 1.0)


def similarity_matrix(*, embeddings: np.ndarray, similarity: str = "cosine") -> np.ndarray:
    """Similarity of every track to every track.

    Parameters
    ----------
    embeddings : float array ``[N, D]``
    similarity : ``cosine`` (zero vectors have similarity 0) or ``euclidean`` (``-||a - b||``,
        paper 5.2).

    Returns
    -------
    np.ndarray, float64 ``[N, N]``, row = query.
    """
    embeddings = _embeddings(embeddings)
    if check_similarity(similarity) == "cosine":
        unit = unit_rows(embeddings)
        return unit @ unit.T
    squared_norms = (embeddings ** 2).sum(axis=1)
    out = np.empty((len(embeddings), len(embeddings)))
    for start in range(0, len(embeddings), _CHUNK_ROWS):
        block = embeddings[start:start + _CHUNK_ROWS]
        squared = squared_norms[start:start + _CHUNK_ROWS, None] + squared_norms[None, :] - 2.0 * block @ embeddings.T
        out[start:start + len(block)] = -np.sqrt(np.maximum(squared, 0.0))
    np.fill_diagonal(out, 0.0)  # exactly 0 distance to itself, whatever the rounding
    return out


def _indices(query_idx: np.ndarray, candidate_idx: np.ndarray, n_tracks: int) -> tuple[np.ndarray, np.ndarray]:
    query_idx = np.asarray(query_idx)
    candidate_idx = np.asarray(candidate_idx)
    if query_idx.ndim != 1 or candidate_idx.ndim != 2 or candidate_idx.shape[0] != query_idx.shape[0]:
        raise ValueError(f"a scorer takes query_idx [Q] and candidate_idx [Q, L], got shapes "
                         f"{query_idx.shape} and {candidate_idx.shape}")
    if query_idx.size and (query_idx.min() < 0 or query_idx.max() >= n_tracks):
        raise ValueError(f"query_idx out of range [0, {n_tracks})")
    if candidate_idx.size and (candidate_idx.min() < -1 or candidate_idx.max() >= n_tracks):
        raise ValueError(f"candidate_idx out of range [-1, {n_tracks})")
    # Padding (-1) reads track 0; its score is ignored downstream.
    return query_idx.astype(np.int64), np.maximum(candidate_idx, 0).astype(np.int64)


def embedding_scorer(*, embeddings: np.ndarray, similarity: str = "cosine") -> Scorer:
    """Scorer comparing embeddings pair by pair (no ``[N, N]`` matrix is built).

    Parameters
    ----------
    embeddings : float array ``[N, D]``
    similarity : ``cosine`` or ``euclidean`` (``-||a - b||``); same values as ``similarity_matrix``.
    """
    embeddings = _embeddings(embeddings)
    similarity = check_similarity(similarity)
    unit = unit_rows(embeddings)

    def scorer(query_idx: np.ndarray, candidate_idx: np.ndarray) -> np.ndarray:
        query_idx, candidate_idx = _indices(query_idx, candidate_idx, len(embeddings))
        if similarity == "cosine":
            return np.einsum("qd,qld->ql", unit[query_idx], unit[candidate_idx])
        difference = embeddings[query_idx][:, None, :] - embeddings[candidate_idx]
        return -np.sqrt((difference ** 2).sum(axis=-1))

    return scorer


def matrix_scorer(*, scores: np.ndarray) -> Scorer:
    """Scorer reading a full score matrix ``[N, N]`` (row = query)."""
    scores = square_matrix(scores, name="scores")

    def scorer(query_idx: np.ndarray, candidate_idx: np.ndarray) -> np.ndarray:
        query_idx, candidate_idx = _indices(query_idx, candidate_idx, len(scores))
        return scores[query_idx[:, None], candidate_idx]

    return scorer


def random_scorer(*, seed: int) -> Scorer:
    """Baseline scorer drawing uniform random scores in [0, 1) on every call (seeded)."""
    rng = seeded_rng(check_seed(seed), RANDOM_MODEL_STREAM)

    def scorer(query_idx: np.ndarray, candidate_idx: np.ndarray) -> np.ndarray:
        query_idx, candidate_idx = np.asarray(query_idx), np.asarray(candidate_idx)
        if query_idx.ndim != 1 or candidate_idx.ndim != 2 or candidate_idx.shape[0] != query_idx.shape[0]:
            raise ValueError(f"a scorer takes query_idx [Q] and candidate_idx [Q, L], got shapes "
                             f"{query_idx.shape} and {candidate_idx.shape}")
        return rng.random(candidate_idx.shape)

    return scorer


def worst_scorer(*, relevance_matrix: np.ndarray) -> Scorer:
    """Baseline scorer giving the worst ranking possible: ``scores = -relevance``."""
    return matrix_scorer(scores=-square_matrix(relevance_matrix, name="relevance_matrix"))


# --------------------------------------------------------------------------- evaluation


def _mean(values: np.ndarray, *, name: str) -> float:
    values = values[~np.isnan(values)]
    if values.size == 0:
        raise ValueError(f"{name} is undefined for every query (no query has a similar track)")
    return float(values.mean())


def evaluate_lists(*, scorer: Scorer, lists: RankingLists, pairs: PairLists) -> dict[str, float]:
    """Score a model on ranking lists and pairs (paper 5.2), means over queries.

    ``NDCG@1`` and ``NDCG@6`` use the lists' (possibly graded) relevance, ``MAP`` its binary view
    ``relevance > 0``; ``PC`` is the share of pairs whose similar track scores strictly higher
    (a tie is wrong), averaged per query.

    Parameters
    ----------
    scorer : callable ``(query_idx [Q], candidate_idx [Q, L]) -> scores [Q, L]``
    lists : RankingLists
    pairs : PairLists

    Returns
    -------
    dict with keys exactly ``PC``, ``NDCG@1``, ``NDCG@6``, ``MAP`` (floats).
    """
    if len(lists.query) == 0 or len(pairs.query) == 0:
        raise ValueError("no query to evaluate: every track lacks a similar or a non-similar track")
    list_scores = np.asarray(scorer(lists.query, lists.candidates), dtype=np.float64)
    if list_scores.shape != lists.candidates.shape:
        raise ValueError(f"scorer returned shape {list_scores.shape} for candidates {lists.candidates.shape}")
    pair_candidates = np.stack([pairs.positive, pairs.negative], axis=-1)  # [Q, P, 2]
    n_queries, n_pairs = pairs.positive.shape
    pair_scores = np.asarray(scorer(pairs.query, pair_candidates.reshape(n_queries, 2 * n_pairs)),
                             dtype=np.float64)
    if pair_scores.shape != (n_queries, 2 * n_pairs):
        raise ValueError(f"scorer returned shape {pair_scores.shape} for pairs {(n_queries, 2 * n_pairs)}")
    # Each pair is a 2-item list (similar first), so PC shares its tie rule with pairwise_accuracy.
    pair_relevance = np.tile([1.0, 0.0], (n_queries * n_pairs, 1))
    pair_right = metrics.pairwise_accuracy(scores=pair_scores.reshape(n_queries * n_pairs, 2),
                                           relevance=pair_relevance).reshape(n_queries, n_pairs)
    binary_relevance = np.where(lists.relevance < 0, -1.0, (lists.relevance > 0).astype(np.float64))
    return {
        "PC": _mean(pair_right.mean(axis=1), name="PC"),
        "NDCG@1": _mean(metrics.ndcg(scores=list_scores, relevance=lists.relevance, topn=1), name="NDCG@1"),
        "NDCG@6": _mean(metrics.ndcg(scores=list_scores, relevance=lists.relevance, topn=6), name="NDCG@6"),
        "MAP": _mean(metrics.average_precision(scores=list_scores, relevance=binary_relevance), name="MAP"),
    }


def catalog_retrieval(*, scores: np.ndarray, binary: np.ndarray, k: int = 10) -> dict[str, float]:
    """Whole-catalogue retrieval: each query ranks all other tracks (what a search engine shows).

    Parameters
    ----------
    scores : float array ``[N, N]``, row = query.
    binary : bool array ``[N, N]``, similar or not.
    k : int >= 1, cut-off of the precision.

    Returns
    -------
    dict ``{"catalog_mAP": mean AP, f"P@{k}": mean precision@k}`` over the queries with at least
    one similar track (the query itself excluded from its own ranking).
    """
    scores = square_matrix(scores, name="scores")
    binary = square_matrix(binary, name="binary", dtype=bool)
    if scores.shape != binary.shape:
        raise ValueError(f"scores shape {scores.shape} does not match binary shape {binary.shape}")
    k = metrics.positive_int(k, name="k")
    average_precisions, precisions = [], []
    for start in range(0, len(scores), _CHUNK_ROWS):
        rows = np.arange(start, min(start + _CHUNK_ROWS, len(scores)))
        relevance = binary[rows].astype(np.float64)
        relevance[np.arange(len(rows)), rows] = -1.0  # the query is not its own result
        has_similar = (relevance > 0).any(axis=1)
        relevance, block_scores = relevance[has_similar], scores[rows][has_similar]
        average_precisions.append(metrics.average_precision(scores=block_scores, relevance=relevance))
        precisions.append(metrics.precision_at_k(scores=block_scores, relevance=relevance, k=k))
    return {"catalog_mAP": _mean(np.concatenate(average_precisions), name="catalog_mAP"),
            f"P@{k}": _mean(np.concatenate(precisions), name=f"P@{k}")}


def _fixed_scores(*, relevance_matrix: np.ndarray, embeddings: np.ndarray | None, similarity: str,
                  baseline: str | None, scores: np.ndarray | None) -> np.ndarray | None:
    """The model's ``[N, N]`` score matrix when it does not change with the seed (None: a scorer or the
    random baseline), checked against the ``[N, N]`` relevance."""
    fixed_scores = None
    if embeddings is not None:
        fixed_scores = similarity_matrix(embeddings=embeddings, similarity=similarity)
    elif scores is not None:
        fixed_scores = square_matrix(scores, name="scores")
    elif baseline == "worst":
        fixed_scores = -relevance_matrix
    n_tracks = len(relevance_matrix)
    if fixed_scores is not None and fixed_scores.shape != (n_tracks, n_tracks):
        raise ValueError(f"the model scores {fixed_scores.shape[0]} tracks but relevance_matrix has {n_tracks}")
    return fixed_scores


def evaluate(*, relevance_matrix: np.ndarray, binary: np.ndarray | None = None,
             embeddings: np.ndarray | None = None, similarity: str = "cosine",
             baseline: str | None = None, scores: np.ndarray | None = None, scorer: Scorer | None = None,
             reference_scores: np.ndarray | None = None, seeds: Sequence[int] = (0, 1, 2, 3, 4),
             n_similar: int = 3, n_dissimilar: int = 3, n_pairs: int = 15, catalog_k: int = 10
             ) -> dict[str, tuple[float, float]]:
    """Run the whole protocol for one model over several seeds (see the module docstring).

    Parameters
    ----------
    relevance_matrix : float array ``[N, N]``, ``>= 0``; row = query.
    binary : bool array ``[N, N]`` or None (default ``relevance_matrix > 0``; must equal it).
    embeddings : float array ``[N, D]``, the model's embeddings of the N tracks, or None.
    similarity : ``cosine`` or ``euclidean``, to compare ``embeddings``.
    baseline : ``random`` or ``worst``, or None.
    scores : float array ``[N, N]``, a full score matrix, or None.
    scorer : callable ``(query_idx [Q], candidate_idx [Q, L]) -> [Q, L]``, or None (no catalog
        metrics then). Exactly one of ``embeddings``, ``baseline``, ``scores``, ``scorer``.
    reference_scores : float array ``[N, N]`` or None; with it the ``skew/*`` metrics are added.
    seeds : non-empty sequence of ints >= 0, one evaluation per seed.
    n_similar, n_dissimilar, n_pairs : list sizes (paper: 3, 3, 15).
    catalog_k : cut-off of the catalogue precision (key ``P@{catalog_k}``).

    Returns
    -------
    dict metric name -> (mean over seeds, population std over seeds); keys ``PC``, ``NDCG@1``,
    ``NDCG@6``, ``MAP``, then ``catalog_mAP``, ``P@10`` unless a ``scorer`` was given, then
    ``skew/PC``, ``skew/NDCG@1``, ``skew/NDCG@6``, ``skew/MAP`` when ``reference_scores`` was given.
    """
    sources = {"embeddings": embeddings, "baseline": baseline, "scores": scores, "scorer": scorer}
    given = [name for name, value in sources.items() if value is not None]
    if len(given) != 1:
        raise ValueError(f"give exactly one of embeddings, baseline, scores, scorer; got {given or 'none'}")
    if baseline is not None and baseline not in BASELINES:
        raise ValueError(f"baseline must be one of {BASELINES}, got {baseline!r}")
    relevance_matrix, binary = relevance_and_binary(relevance_matrix, binary)
    n_tracks = len(relevance_matrix)
    seeds = [check_seed(seed, name="seeds") for seed in seeds]
    if not seeds:
        raise ValueError("seeds must not be empty")

    fixed_scores = _fixed_scores(relevance_matrix=relevance_matrix, embeddings=embeddings, similarity=similarity,
                                 baseline=baseline, scores=scores)

    skew = None
    if reference_scores is not None:
        skew = make_skew_lists(reference_scores=reference_scores, relevance_matrix=relevance_matrix,
                               binary=binary, n_similar=n_similar, n_dissimilar=n_dissimilar, n_pairs=n_pairs)

    def seed_free_results(model_scores: np.ndarray | None, model_scorer: Scorer) -> dict[str, float]:
        """Catalogue and skew metrics: they depend on the seed only through a random model."""
        results: dict[str, float] = {}
        if model_scores is not None:
            results.update(catalog_retrieval(scores=model_scores, binary=binary, k=catalog_k))
        if skew is not None:
            skew_results = evaluate_lists(scorer=model_scorer, lists=skew[0], pairs=skew[1])
            results.update({f"skew/{name}": value for name, value in skew_results.items()})
        return results

    fixed_results = None
    if baseline != "random":
        # Computed once: the whole-catalogue ranking is the costly part on thousands of tracks.
        fixed_scorer = scorer if scorer is not None else matrix_scorer(scores=fixed_scores)
        fixed_results = seed_free_results(fixed_scores, fixed_scorer)

    per_seed: dict[str, list[float]] = {}
    for seed in seeds:
        if baseline == "random":
            seed_scores = seeded_rng(seed, RANDOM_MODEL_STREAM).random((n_tracks, n_tracks))
            seed_scorer = matrix_scorer(scores=seed_scores)
        else:
            seed_scorer = fixed_scorer
        lists = make_ranking_lists(relevance_matrix=relevance_matrix, binary=binary, n_similar=n_similar,
                                   n_dissimilar=n_dissimilar, seed=seed)
        pairs = make_pair_lists(binary=binary, n_pairs=n_pairs, seed=seed)
        results = evaluate_lists(scorer=seed_scorer, lists=lists, pairs=pairs)
        results.update(fixed_results if fixed_results is not None else seed_free_results(seed_scores, seed_scorer))
        for name, value in results.items():
            per_seed.setdefault(name, []).append(value)
    return {name: (float(np.mean(values)), float(np.std(values))) for name, values in per_seed.items()}


__all__ = ["BASELINES", "LIST_METRICS", "MIN_TRACKS_PER_LABEL", "PairLists", "RankingLists", "Scorer",
           "catalog_retrieval", "count_query_tracks", "dataset_query_problems", "embedding_scorer", "evaluate",
           "evaluate_lists", "make_pair_lists", "make_ranking_lists", "make_skew_lists", "matrix_scorer",
           "random_scorer", "similarity_matrix", "split_query_problem", "unit_rows", "worst_scorer"]
