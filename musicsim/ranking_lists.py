"""The paper's ranking lists and pairs (5.2, "Skew issues"), and which tracks can be a query at all.

For each query track, `make_ranking_lists` draws 3 similar and 3 non-similar tracks and
`make_pair_lists` 15 (similar, non-similar) pairs; `make_skew_lists` builds them from a reference
model's failures instead. A query needs a similar and a non-similar track among the others
(`count_query_tracks`; `split_query_problem` says why a split has none). `musicsim.evaluation` scores
a model on these lists. Each seed feeds separate random streams (`seeded_rng`) for list sampling,
pair sampling, the skew shuffle and the random baseline, so results do not depend on call order.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from musicsim import metrics
from musicsim.data.dataset import DatasetInfo, read_catalog
from musicsim.relevance import make_relevance

# Purposes of the random streams derived from one seed (np.random.SeedSequence([seed, purpose])).
LISTS_STREAM, PAIRS_STREAM, RANDOM_MODEL_STREAM, SKEW_SHUFFLE_STREAM = range(4)


@dataclass(frozen=True)
class RankingLists:
    """Ranking lists, one per query.

    Attributes
    ----------
    query : int array ``[Q]``, track index of each query.
    candidates : int array ``[Q, L]``, track indices of the candidates, -1 for padding.
    relevance : float array ``[Q, L]``, relevance of each candidate to its query, -1 for padding.
    """

    query: np.ndarray
    candidates: np.ndarray
    relevance: np.ndarray


@dataclass(frozen=True)
class PairLists:
    """(similar, non-similar) candidate pairs, ``P`` per query.

    Attributes
    ----------
    query : int array ``[Q]``, track index of each query.
    positive : int array ``[Q, P]``, the similar track of each pair.
    negative : int array ``[Q, P]``, the non-similar track of each pair.
    """

    query: np.ndarray
    positive: np.ndarray
    negative: np.ndarray


# --------------------------------------------------------------------------- validation


def check_seed(value: object, *, name: str = "seed") -> int:
    """``value`` as a seed: a non-negative integer (not a bool)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return int(value)


def seeded_rng(seed: int, purpose: int) -> np.random.Generator:
    """The random stream of one ``purpose`` (``*_STREAM``) of one seed, independent of the others."""
    return np.random.default_rng(np.random.SeedSequence([seed, purpose]))


def square_matrix(matrix: np.ndarray, *, name: str, dtype: type = np.float64) -> np.ndarray:
    """``matrix`` checked ``[N, N]``, as ``dtype`` (bool: must already be bool; else no NaN)."""
    matrix = np.asarray(matrix)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"{name} must be a square [N, N] matrix, got shape {matrix.shape}")
    if dtype is bool:
        if matrix.dtype != bool:
            raise ValueError(f"{name} must be a bool matrix, got dtype {matrix.dtype}")
        return matrix
    matrix = matrix.astype(dtype, copy=False)
    if np.isnan(matrix).any():
        raise ValueError(f"{name} contains NaN")
    return matrix


def relevance_and_binary(relevance_matrix: np.ndarray, binary: np.ndarray | None
                         ) -> tuple[np.ndarray, np.ndarray]:
    """Validate a relevance matrix and its binary view (default ``relevance > 0``)."""
    relevance_matrix = square_matrix(relevance_matrix, name="relevance_matrix")
    if (relevance_matrix < 0).any():
        raise ValueError("relevance_matrix must be >= 0 (negative values mean padding in lists)")
    if binary is None:
        return relevance_matrix, relevance_matrix > 0
    binary = square_matrix(binary, name="binary", dtype=bool)
    if binary.shape != relevance_matrix.shape:
        raise ValueError(f"binary shape {binary.shape} does not match relevance_matrix shape "
                         f"{relevance_matrix.shape}")
    if not np.array_equal(binary, relevance_matrix > 0):
        raise ValueError("binary must be the binary view of relevance_matrix (relevance_matrix > 0): "
                         "MAP and PC read relevance > 0 from the lists")
    return relevance_matrix, binary


def _similar_and_not(binary: np.ndarray, query: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the tracks similar and non-similar to ``query``, the query itself excluded."""
    row = binary[query].copy()
    others = np.ones(len(row), dtype=bool)
    others[query] = False
    return np.flatnonzero(row & others), np.flatnonzero(~row & others)


def _pad_rows(rows: list[np.ndarray], width: int, fill: float, dtype: type) -> np.ndarray:
    out = np.full((len(rows), width), fill, dtype=dtype)
    for i, row in enumerate(rows):
        out[i, :len(row)] = row
    return out


def _lists_from_rows(queries: list[int], candidate_rows: list[np.ndarray], width: int,
                     relevance_matrix: np.ndarray) -> RankingLists:
    candidates = _pad_rows(candidate_rows, width, -1, np.int64)
    query = np.asarray(queries, dtype=np.int64)
    relevance = np.where(candidates >= 0, relevance_matrix[query[:, None], np.maximum(candidates, 0)], -1.0)
    return RankingLists(query=query, candidates=candidates, relevance=relevance)


# --------------------------------------------------------------------------- list construction


def make_ranking_lists(*, relevance_matrix: np.ndarray, binary: np.ndarray, n_similar: int = 3,
                       n_dissimilar: int = 3, seed: int) -> RankingLists:
    """Paper 5.2 ranking lists: per query, random similar and non-similar tracks in shuffled order.

    Each track is a query; its candidates are up to ``n_similar`` tracks drawn without
    replacement among those similar to it and up to ``n_dissimilar`` among the others, never the
    query itself. Queries lacking a similar or a non-similar track are skipped; shorter lists are
    padded at the end (-1). The valid candidates are shuffled so that a stable sort on tied
    scores cannot favour similar tracks.

    Parameters
    ----------
    relevance_matrix : float array ``[N, N]``, ``>= 0``; row = query, column = candidate.
    binary : bool array ``[N, N]``, equal to ``relevance_matrix > 0``.
    n_similar, n_dissimilar : int >= 1
    seed : int >= 0

    Returns
    -------
    RankingLists with ``L = n_similar + n_dissimilar``.
    """
    relevance_matrix, binary = relevance_and_binary(relevance_matrix, binary)
    n_similar = metrics.positive_int(n_similar, name="n_similar")
    n_dissimilar = metrics.positive_int(n_dissimilar, name="n_dissimilar")
    rng = seeded_rng(check_seed(seed), LISTS_STREAM)
    queries, rows = [], []
    for query in range(binary.shape[0]):
        similar, dissimilar = _similar_and_not(binary, query)
        if len(similar) == 0 or len(dissimilar) == 0:
            continue
        chosen = np.concatenate([rng.choice(similar, min(n_similar, len(similar)), replace=False),
                                 rng.choice(dissimilar, min(n_dissimilar, len(dissimilar)), replace=False)])
        queries.append(query)
        rows.append(rng.permutation(chosen))
    return _lists_from_rows(queries, rows, n_similar + n_dissimilar, relevance_matrix)


def make_pair_lists(*, binary: np.ndarray, n_pairs: int = 15, seed: int) -> PairLists:
    """Paper 5.2 pairs: per query, ``n_pairs`` random (similar, non-similar) pairs.

    Pairs are drawn without replacement from the product similar x non-similar (query excluded)
    when it holds at least ``n_pairs`` combinations; otherwise every combination is taken once
    and the rest are drawn with replacement. Queries lacking a similar or a non-similar track are
    skipped.

    Parameters
    ----------
    binary : bool array ``[N, N]``, similar or not; row = query.
    n_pairs : int >= 1
    seed : int >= 0

    Returns
    -------
    PairLists with ``P = n_pairs``.
    """
    binary = square_matrix(binary, name="binary", dtype=bool)
    n_pairs = metrics.positive_int(n_pairs, name="n_pairs")
    rng = seeded_rng(check_seed(seed), PAIRS_STREAM)
    queries, positives, negatives = [], [], []
    for query in range(binary.shape[0]):
        similar, dissimilar = _similar_and_not(binary, query)
        n_combinations = len(similar) * len(dissimilar)
        if n_combinations == 0:
            continue
        if n_combinations >= n_pairs:
            flat = rng.choice(n_combinations, n_pairs, replace=False)
        else:
            # Too few combinations: use each once, then fill up with replacement.
            flat = np.concatenate([rng.permutation(n_combinations),
                                   rng.integers(0, n_combinations, n_pairs - n_combinations)])
        queries.append(query)
        positives.append(similar[flat // len(dissimilar)])
        negatives.append(dissimilar[flat % len(dissimilar)])
    shape = (len(queries), n_pairs)
    return PairLists(query=np.asarray(queries, dtype=np.int64),
                     positive=np.asarray(positives, dtype=np.int64).reshape(shape),
                     negative=np.asarray(negatives, dtype=np.int64).reshape(shape))


def make_skew_lists(*, reference_scores: np.ndarray, relevance_matrix: np.ndarray, binary: np.ndarray,
                    n_similar: int = 3, n_dissimilar: int = 3, n_pairs: int = 15, seed: int = 0
                    ) -> tuple[RankingLists, PairLists]:
    """Paper 5.2 "Skew issues": lists and pairs built from a reference model's failures.

    Per query (itself excluded): the ``n_similar`` similar tracks that the reference scores
    lowest and the ``n_dissimilar`` non-similar tracks it scores highest form the ranking list
    (shuffled with ``seed``, padded when there are fewer). Pair ``n`` (0-based) joins the n-th
    lowest scored similar track with the n-th highest scored non-similar one, cycling through
    each ranked set when it has fewer than ``n_pairs`` tracks. Score ties are broken by track
    index. Queries lacking a similar or a non-similar track are skipped.

    Parameters
    ----------
    reference_scores : float array ``[N, N]``, the reference model's (librosa's) scores.
    relevance_matrix : float array ``[N, N]``, ``>= 0``.
    binary : bool array ``[N, N]``, equal to ``relevance_matrix > 0``.
    n_similar, n_dissimilar, n_pairs : int >= 1
    seed : int >= 0, only for the order of candidates within a list.

    Returns
    -------
    (RankingLists ``[Q, n_similar + n_dissimilar]``, PairLists ``[Q, n_pairs]``)
    """
    relevance_matrix, binary = relevance_and_binary(relevance_matrix, binary)
    reference_scores = square_matrix(reference_scores, name="reference_scores")
    if reference_scores.shape != binary.shape:
        raise ValueError(f"reference_scores shape {reference_scores.shape} does not match "
                         f"relevance_matrix shape {binary.shape}")
    n_similar = metrics.positive_int(n_similar, name="n_similar")
    n_dissimilar = metrics.positive_int(n_dissimilar, name="n_dissimilar")
    n_pairs = metrics.positive_int(n_pairs, name="n_pairs")
    rng = seeded_rng(check_seed(seed), SKEW_SHUFFLE_STREAM)
    queries, rows, positives, negatives = [], [], [], []
    for query in range(binary.shape[0]):
        similar, dissimilar = _similar_and_not(binary, query)
        if len(similar) == 0 or len(dissimilar) == 0:
            continue
        row_scores = reference_scores[query]
        worst_similar = similar[np.argsort(row_scores[similar], kind="stable")]
        best_dissimilar = dissimilar[np.argsort(-row_scores[dissimilar], kind="stable")]
        queries.append(query)
        rows.append(rng.permutation(np.concatenate([worst_similar[:n_similar], best_dissimilar[:n_dissimilar]])))
        pair_rank = np.arange(n_pairs)
        positives.append(worst_similar[pair_rank % len(worst_similar)])
        negatives.append(best_dissimilar[pair_rank % len(best_dissimilar)])
    lists = _lists_from_rows(queries, rows, n_similar + n_dissimilar, relevance_matrix)
    shape = (len(queries), n_pairs)
    pairs = PairLists(query=lists.query.copy(),
                      positive=np.asarray(positives, dtype=np.int64).reshape(shape),
                      negative=np.asarray(negatives, dtype=np.int64).reshape(shape))
    return lists, pairs


# --------------------------------------------------------------------------- can a split be evaluated at all


def count_query_tracks(*, labels: Sequence[Sequence[str]], relevance, block_rows: int = 512,
                       stop_at: int | None = None) -> int:
    """How many of these tracks can be a protocol query: a track with a similar and a non-similar
    track among the others (what `make_ranking_lists` and `make_pair_lists` keep).

    Parameters
    ----------
    labels : sequence of label sets, length ``N`` (one split's tracks)
    relevance : musicsim.relevance.Relevance
        Who is similar (its binary view).
    block_rows : int
        Queries compared at once (memory ``[block_rows, N]``, not ``[N, N]``: MagnaTagATune's 25k tracks).
    stop_at : int, optional
        Stop counting once this many are found.

    Returns
    -------
    int, the number of query tracks (at most ``stop_at`` when given)
    """
    label_sets = [tuple(track_labels) for track_labels in labels]
    total = len(label_sets)
    found = 0
    for start in range(0, total, block_rows):
        rows = range(start, min(total, start + block_rows))
        binary = relevance.is_similar(relevance.relevance_matrix([label_sets[i] for i in rows], label_sets))
        binary[np.arange(len(rows)), np.asarray(rows)] = False  # never similar to itself
        similar = binary.sum(axis=1)
        # Non-similar: the others (N - 1 of them) minus the similar ones.
        found += int(np.count_nonzero((similar > 0) & (similar < total - 1)))
        if stop_at is not None and found >= stop_at:
            return stop_at
    return found


def split_query_problem(*, split: str, labels: Sequence[Sequence[str]], relevance) -> str | None:
    """Why the ``split``'s tracks cannot form a single protocol query (None when they can).

    A query is a track with a similar track (same label; for tags, enough shared tags) and a non-similar
    one in its own split: a split needs 2 tracks of one label and 1 of another. The message says how many
    tracks of each label the split holds, and what the dataset needs.
    """
    if count_query_tracks(labels=labels, relevance=relevance, stop_at=1):
        return None
    counts: dict[str, int] = {}
    for track_labels in labels:
        for label in set(track_labels):
            counts[label] = counts.get(label, 0) + 1
    most = max(counts.values(), default=0)
    if getattr(relevance, "min_shared_tags", None):
        need = (f"2 tracks sharing {relevance.min_shared_tags} tags or more and a third sharing fewer with them")
    else:
        need = f"2 tracks of one {relevance.name} and 1 of another"
    return (f"the {split} split cannot form a query ({len(labels)} tracks, {len(counts)} labels, at most {most} "
            f"track{'s' if most != 1 else ''} per label): each query needs a similar and a non-similar track in its "
            f"split, so the split needs {need}; with the 50/25/25 split by track that is at least "
            f"{MIN_TRACKS_PER_LABEL} tracks per label and 2 labels")


# 2 tracks of a label in each of the 25% splits (eval, test): about 8 in all.
MIN_TRACKS_PER_LABEL = 8


def dataset_query_problems(*, dataset_dir: str, splits: Sequence[str] = ("train", "eval", "test"),
                           relevance: str | None = None, min_shared_tags: int | None = None) -> list[str]:
    """`split_query_problem` for each of a prepared dataset's ``splits`` (those that cannot form a query).

    Parameters
    ----------
    dataset_dir : a prepared dataset (``tracks.csv``, ``dataset.json``)
    splits : the splits to check
    relevance, min_shared_tags : the relevance definition (default: the dataset's own)
    """
    info = DatasetInfo.load(dataset_dir)
    relevance_def = make_relevance(relevance or info.relevance, min_shared_tags=min_shared_tags or info.min_shared_tags)
    catalog = read_catalog(dataset_dir)
    problems = []
    for split in splits:
        problem = split_query_problem(split=split, labels=[e.labels for e in catalog if e.split == split],
                                      relevance=relevance_def)
        if problem:
            problems.append(problem)
    return problems
