"""Ranking metrics in numpy (paper 5.1.2): NDCG@k, AP, pairwise accuracy (PC), precision@k.

Every function scores a batch of lists, one list per query:

- ``scores``: float array ``[Q, L]``, the model's score of each candidate (higher = more similar).
- ``relevance``: float array ``[Q, L]``, the true relevance. Entries with ``relevance < 0`` are
  padding (TF-Ranking's convention) and are ignored: they never enter a ranking, a gain or a pair.

A function returns one value per query, shape ``[Q]``; averaging over queries is left to the caller.

Conventions, chosen to match TF-Ranking 0.5.5 (``tfr.metrics`` / ``tfr.keras.metrics``) where it matters:

- **Ranking**: candidates are sorted by descending score. The sort is stable, so tied scores keep
  their order in the list (TF-Ranking shuffles ties at random instead). Callers who do not want
  list order to break ties should shuffle their lists, as ``musicsim.evaluation`` does.
- **Binary view**: AP and precision@k count a candidate as relevant when ``relevance > 0``.
  TF-Ranking uses ``relevance >= 1``; the two agree on 0/1 labels and on integer graded labels.
- **Pairwise accuracy**: a pair ``(i, j)`` with ``relevance_i > relevance_j`` counts as right only
  when ``score_i > score_j`` strictly; a tie counts as wrong, as in TF-Ranking's
  ``ORDERED_PAIR_ACCURACY``. TF-Ranking's *mean* weights each list by its number of pairs; the
  per-list values here are the same, how to average them is the caller's choice.
- **Undefined values are NaN**: a query with no relevant candidate has no NDCG or AP, a list
  without a single ordered pair has no pairwise accuracy, and a list with no valid candidate has
  no precision. Those queries get ``NaN`` so that a caller can drop them (``np.nanmean``) rather
  than mixing in a made-up 0 (TF-Ranking reports 0 for them and counts them in its mean).
"""
from __future__ import annotations

import numpy as np

__all__ = ["ndcg", "average_precision", "pairwise_accuracy", "precision_at_k", "rank_order"]


def positive_int(value: object, *, name: str) -> int:
    """``value`` as an int, raising ValueError (naming ``name``) unless it is an integer >= 1.

    >>> positive_int(3, name="k")
    3
    """
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value}")
    return int(value)


def _validated(scores: np.ndarray, relevance: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Check shapes and values; return float64 ``scores``, ``relevance`` and the valid mask, all ``[Q, L]``."""
    scores = np.asarray(scores, dtype=np.float64)
    relevance = np.asarray(relevance, dtype=np.float64)
    if scores.ndim != 2:
        raise ValueError(f"scores must have shape [Q, L], got shape {scores.shape}")
    if relevance.shape != scores.shape:
        raise ValueError(f"relevance shape {relevance.shape} does not match scores shape {scores.shape}")
    if np.isnan(relevance).any():
        raise ValueError("relevance contains NaN (padding must be marked with a negative value)")
    valid = relevance >= 0
    if np.isnan(scores[valid]).any():
        raise ValueError("scores contain NaN at non-padding positions")
    return scores, relevance, valid


def rank_order(*, scores: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Indices that rank each list: valid candidates by descending score, then the padding.

    Parameters
    ----------
    scores : float array ``[Q, L]``
    valid : bool array ``[Q, L]``, False for padding.

    Returns
    -------
    np.ndarray, int ``[Q, L]``: ``order[q, r]`` is the list position of the candidate at rank ``r``
    (0-based). Ties keep list order (stable sort); padding comes last.
    """
    # lexsort sorts by the last key first and is stable: padding last, then descending score.
    descending = np.where(valid, -np.asarray(scores, dtype=np.float64), 0.0)
    return np.lexsort((descending, ~np.asarray(valid, dtype=bool)), axis=-1)


def _discounted_gains(relevance_by_rank: np.ndarray, topn: int | None) -> np.ndarray:
    """DCG of lists already in rank order: sum over ranks i = 1..topn of (2^rel_i - 1) / log2(i + 1).

    ``relevance_by_rank`` is ``[Q, L]`` with padding set to 0 (gain 0); returns ``[Q]``.
    """
    list_size = relevance_by_rank.shape[1]
    ranks = np.arange(1, list_size + 1, dtype=np.float64)
    discounts = 1.0 / np.log2(ranks + 1.0)
    if topn is not None:
        discounts[topn:] = 0.0
    return ((np.power(2.0, relevance_by_rank) - 1.0) * discounts).sum(axis=1)


def ndcg(*, scores: np.ndarray, relevance: np.ndarray, topn: int | None = None) -> np.ndarray:
    """Normalised discounted cumulative gain at ``topn`` per query (paper 5.1.2).

    ``DCG@k = sum_{i=1..k} (2^rel_i - 1) / log2(i + 1)`` over the list sorted by descending score,
    ``NDCG@k = DCG@k / IDCG@k`` where IDCG is the DCG of the list sorted by true relevance.
    Graded relevance is allowed.

    Parameters
    ----------
    scores : float array ``[Q, L]``
    relevance : float array ``[Q, L]``; ``< 0`` marks padding.
    topn : int >= 1 or None
        Cut-off k; None ranks the whole list.

    Returns
    -------
    np.ndarray, float64 ``[Q]``, in ``[0, 1]``; NaN for a query with no relevant candidate
    (IDCG = 0).
    """
    if topn is not None:
        topn = positive_int(topn, name="topn")
    scores, relevance, valid = _validated(scores, relevance)
    gains_relevance = np.where(valid, relevance, 0.0)
    by_model = np.take_along_axis(gains_relevance, rank_order(scores=scores, valid=valid), axis=1)
    by_truth = -np.sort(-gains_relevance, axis=1)
    dcg = _discounted_gains(by_model, topn)
    ideal_dcg = _discounted_gains(by_truth, topn)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(ideal_dcg > 0, dcg / ideal_dcg, np.nan)


def average_precision(*, scores: np.ndarray, relevance: np.ndarray) -> np.ndarray:
    """Average precision per query (paper 5.1.2), binary view ``relevance > 0``.

    ``AP = sum_i P(i) y_i / sum_i y_i`` with ``P(i) = (y_1 + ... + y_i) / i`` over the whole list
    sorted by descending score, ``y_i`` = 1 for a relevant candidate.

    Parameters
    ----------
    scores : float array ``[Q, L]``
    relevance : float array ``[Q, L]``; ``< 0`` marks padding, ``> 0`` relevant.

    Returns
    -------
    np.ndarray, float64 ``[Q]``, in ``[0, 1]``; NaN for a query with no relevant candidate.
    """
    scores, relevance, valid = _validated(scores, relevance)
    relevant = (valid & (relevance > 0)).astype(np.float64)
    relevant_by_rank = np.take_along_axis(relevant, rank_order(scores=scores, valid=valid), axis=1)
    ranks = np.arange(1, relevant.shape[1] + 1, dtype=np.float64)
    precision_at_rank = np.cumsum(relevant_by_rank, axis=1) / ranks
    n_relevant = relevant.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n_relevant > 0, (precision_at_rank * relevant_by_rank).sum(axis=1) / n_relevant, np.nan)


def pairwise_accuracy(*, scores: np.ndarray, relevance: np.ndarray) -> np.ndarray:
    """Share of ordered pairs that the scores order right (PC), per query.

    Over all pairs ``(i, j)`` of valid candidates with ``relevance_i > relevance_j`` (graded
    relevance compared as is), the fraction with ``score_i > score_j``. A score tie counts as
    wrong, matching TF-Ranking's ``ORDERED_PAIR_ACCURACY``.

    Parameters
    ----------
    scores : float array ``[Q, L]``
    relevance : float array ``[Q, L]``; ``< 0`` marks padding.

    Returns
    -------
    np.ndarray, float64 ``[Q]``, in ``[0, 1]``; NaN for a list without any ordered pair.
    """
    scores, relevance, valid = _validated(scores, relevance)
    both_valid = valid[:, :, None] & valid[:, None, :]
    ordered_pair = both_valid & (relevance[:, :, None] > relevance[:, None, :])
    scores_agree = scores[:, :, None] > scores[:, None, :]
    n_pairs = ordered_pair.sum(axis=(1, 2))
    n_right = (ordered_pair & scores_agree).sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n_pairs > 0, n_right / np.maximum(n_pairs, 1), np.nan)


def precision_at_k(*, scores: np.ndarray, relevance: np.ndarray, k: int) -> np.ndarray:
    """Precision of the top ``k`` per query, binary view ``relevance > 0``.

    The number of relevant candidates among the ``k`` best scored, divided by ``min(k, number of
    valid candidates)`` (as TF-Ranking's PRECISION does for lists shorter than ``k``).

    Parameters
    ----------
    scores : float array ``[Q, L]``
    relevance : float array ``[Q, L]``; ``< 0`` marks padding, ``> 0`` relevant.
    k : int >= 1

    Returns
    -------
    np.ndarray, float64 ``[Q]``, in ``[0, 1]``; NaN for a list with no valid candidate.
    """
    k = positive_int(k, name="k")
    scores, relevance, valid = _validated(scores, relevance)
    relevant = (valid & (relevance > 0)).astype(np.float64)
    relevant_by_rank = np.take_along_axis(relevant, rank_order(scores=scores, valid=valid), axis=1)
    n_retrieved = np.minimum(k, valid.sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n_retrieved > 0, relevant_by_rank[:, :k].sum(axis=1) / np.maximum(n_retrieved, 1), np.nan)
