"""Label relevance definitions (paper 3.1, Problem 2: which tracks count as similar).

A track carries a set of string labels (one album, one genre, or many tags).
A definition turns the labels of a query and of candidates into relevance:
binary (similar or not) or graded (how many tags are shared). Every
definition also has a binary view (``is_similar``), which MAP and PC need.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

Labels = Sequence[str]


def multi_hot(label_sets: Sequence[Iterable[str]], vocabulary: dict[str, int] | None = None
              ) -> tuple[np.ndarray, dict[str, int]]:
    """Encode label sets as a ``[n, vocab]`` float32 0/1 matrix (and the vocabulary used)."""
    label_sets = [set(labels) for labels in label_sets]
    if vocabulary is None:
        vocabulary = {label: i for i, label in enumerate(sorted(set().union(*label_sets)))}
    matrix = np.zeros((len(label_sets), max(1, len(vocabulary))), dtype=np.float32)
    for row, labels in enumerate(label_sets):
        for label in labels:
            if label in vocabulary:
                matrix[row, vocabulary[label]] = 1.0
    return matrix, vocabulary


class Relevance:
    """Base class: relevance of candidates to a query, from their labels."""

    name = "base"
    graded = False

    def relevance_matrix(self, query_labels: Sequence[Labels], candidate_labels: Sequence[Labels]) -> np.ndarray:
        """Relevance of every candidate to every query.

        Parameters
        ----------
        query_labels : sequence of label sets, length ``q``
        candidate_labels : sequence of label sets, length ``c``

        Returns
        -------
        np.ndarray, float32, shape ``[q, c]``
        """
        vocabulary = {label: i for i, label in enumerate(sorted(
            set().union(*map(set, query_labels), *map(set, candidate_labels))))}
        queries, _ = multi_hot(query_labels, vocabulary)
        candidates, _ = multi_hot(candidate_labels, vocabulary)
        return self._from_overlap(queries @ candidates.T)

    def _from_overlap(self, shared: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def is_similar(self, relevance: np.ndarray) -> np.ndarray:
        """Binary view of a relevance array (same shape, bool)."""
        return np.asarray(relevance) > 0

    def relevance(self, query: Labels, candidates: Sequence[Labels]) -> np.ndarray:
        """Relevance of ``candidates`` to one ``query``: float32 ``[c]``."""
        return self.relevance_matrix([query], candidates)[0]


class SharedLabel(Relevance):
    """Similar when the tracks share a label: same album (FilmMusic) or same genre (zalo)."""

    def __init__(self, *, name: str = "album"):
        self.name = name

    def _from_overlap(self, shared: np.ndarray) -> np.ndarray:
        return (shared > 0).astype(np.float32)


class TagOverlap(Relevance):
    """Similarity from shared tags (MagnaTagATune, paper 3.1.2 "third approach").

    Binary: 1 when at least ``min_shared_tags`` tags are shared. Graded: the number
    of shared tags, counted only from the threshold on, so the binary view (used by
    MAP and PC) is the same threshold.
    """

    def __init__(self, *, min_shared_tags: int = 2, graded: bool = False):
        if min_shared_tags < 1:
            raise ValueError(f"min_shared_tags must be >= 1, got {min_shared_tags}")
        self.min_shared_tags = int(min_shared_tags)
        self.graded = bool(graded)
        self.name = "tags_graded" if graded else "tags"

    def _from_overlap(self, shared: np.ndarray) -> np.ndarray:
        enough = shared >= self.min_shared_tags
        if self.graded:
            return np.where(enough, shared, 0.0).astype(np.float32)
        return enough.astype(np.float32)


def make_relevance(name: str, *, min_shared_tags: int = 2) -> Relevance:
    """Build a label relevance definition by name: ``album``, ``genre``, ``label``, ``tags``, ``tags_graded``."""
    if name in ("album", "genre", "label"):
        return SharedLabel(name=name)
    if name == "tags":
        return TagOverlap(min_shared_tags=min_shared_tags, graded=False)
    if name == "tags_graded":
        return TagOverlap(min_shared_tags=min_shared_tags, graded=True)
    raise ValueError(f"unknown relevance definition {name!r}: expected album, genre, label, tags or tags_graded")
