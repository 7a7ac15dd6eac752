"""The query side of the faiss backend (``musicsim.index.faiss_index.FaissIndex`` is this class with its
catalog, updates and files).

Search is exact by default. Batches of queries run on faiss's flat index: on this project's
machines faiss's blocked BLAS + heap top-k answers 1000 queries against 100k vectors about 8x faster
than a numpy matrix product followed by ``argpartition`` (the partition over [Q, N] scores
dominates), and a flat index is exact too. Fewer than ``NUMPY_MAX_QUERIES`` queries (the
interactive case) run in numpy, which skips faiss's per-call OpenMP start-up: several times faster
for one query, and tens of times on a busy machine. ``approximate='ivf'`` or ``'hnsw'`` trades
recall for speed on large catalogues (see ``benchmarks/search.py`` for the figures). The scores
returned are exact float32 similarities whatever index found the candidates (euclidean ones are
recomputed as ``||q - v||``, which stays precise near 0 where faiss's expanded form does not).

With re-ranking ``aqe`` each query is averaged with its ``k`` nearest catalog tracks, found by this
index's own search of the searched vectors, before it is searched; a query by track id never expands
with itself.
"""
from __future__ import annotations

from collections import Counter
from typing import Any, Iterable, Mapping, Sequence

from musicsim.index import faiss_files  # noqa: F401 - first: it silences faiss's loader before faiss is imported
import faiss  # noqa: E402
import numpy as np  # noqa: E402

from musicsim import rerank as reranking  # noqa: E402
from musicsim.index.backends import IndexBackend  # noqa: E402
from musicsim.index.vectors import Result, as_group_set, maximal_marginal_relevance  # noqa: E402

# Exact search of fewer queries than this runs in numpy (see _numpy_candidates), more in faiss's flat
# index (blocked BLAS with a heap top-k, faster than numpy's matmul + argpartition for batches).
NUMPY_MAX_QUERIES = 16


class FaissSearch(IndexBackend):
    """k-nearest-neighbour queries over a faiss index of the catalog: ``search`` and what it needs.

    The catalog itself (its vectors, ids, metadata, the faiss index and its labels) is ``FaissIndex``'s: this
    class reads ``similarity``, ``approximate``, ``nlist``, ``nprobe``, ``ef_search``, ``rerank``, ``_ids``,
    ``_row_of``, ``_vectors`` (the searched vectors [N, D]), ``_metadata``, ``_labels``, ``_faiss``,
    ``_squared_norms``, ``_id_array`` and ``_group_sizes`` (the last three caches ``FaissIndex`` resets on
    every write).
    """

    @property
    def expands_queries(self) -> bool:
        """Whether queries are expanded before they are searched (re-ranking ``aqe`` or ``dba+aqe``)."""
        return self.rerank.method in ("aqe", "dba+aqe")

    def _configure_search(self, *, k_fetch: int, nprobe: int | None, ef_search: int | None) -> None:
        if self.approximate == "ivf":
            probe = int(nprobe if nprobe is not None else self.nprobe)
            if probe < 1:
                raise ValueError(f"nprobe must be >= 1, got {probe}")
            self._faiss.nprobe = min(probe, self.nlist)
        elif self.approximate == "hnsw":
            ef = int(ef_search if ef_search is not None else self.ef_search)
            if ef < 1:
                raise ValueError(f"ef_search must be >= 1, got {ef}")
            self._faiss.hnsw.efSearch = max(ef, k_fetch)

    def _candidates(self, queries: np.ndarray, *, k_fetch: int, nprobe: int | None,
                    ef_search: int | None) -> tuple[np.ndarray, np.ndarray]:
        """The best ``k_fetch`` candidates of each query, best first.

        Returns
        -------
        scores : np.ndarray, shape [Q, k_fetch], float32
            Cosine: the exact dot products. Euclidean: ``-sqrt`` of faiss's squared distance,
            which loses precision near 0 (``_exact_scores`` recomputes those that are kept).
        rows : np.ndarray, shape [Q, k_fetch], int64
            Rows into the stored vectors, -1 where the index found fewer (approximate only).
        """
        if self.approximate is None and len(queries) < NUMPY_MAX_QUERIES:
            return self._numpy_candidates(queries, k_fetch=k_fetch)
        self._configure_search(k_fetch=k_fetch, nprobe=nprobe, ef_search=ef_search)
        distances, labels = self._faiss.search(queries, k_fetch)
        valid = labels >= 0
        if self.approximate == "ivf":
            rows = np.searchsorted(self._labels, labels)
            rows = np.where(valid, np.minimum(rows, len(self._labels) - 1), -1)
        else:
            rows = labels  # flat and HNSW ids are rows
        if self.similarity == "cosine":
            scores = distances
        else:
            scores = 0.0 - np.sqrt(np.maximum(distances, 0.0))
        return np.where(valid, scores, -np.inf).astype(np.float32), rows

    def _numpy_candidates(self, queries: np.ndarray, *, k_fetch: int) -> tuple[np.ndarray, np.ndarray]:
        """``_candidates`` for a few queries: a matrix-vector product and argpartition, which
        skips faiss's per-call thread start-up (several times faster for one query on small
        catalogues, and much faster on a busy machine)."""
        products = queries @ self._vectors.T  # [Q, N]
        if self.similarity == "cosine":
            scores = products
        else:
            if self._squared_norms is None:
                self._squared_norms = np.einsum("nd,nd->n", self._vectors, self._vectors)
            squared_distances = (self._squared_norms[None, :] - 2.0 * products
                                 + np.einsum("qd,qd->q", queries, queries)[:, None])
            scores = 0.0 - np.sqrt(np.maximum(squared_distances, 0.0))
        count = scores.shape[1]
        if k_fetch < count:
            top = np.argpartition(-scores, k_fetch - 1, axis=1)[:, :k_fetch]
        else:
            top = np.broadcast_to(np.arange(count), scores.shape)
        top_scores = np.take_along_axis(scores, top, axis=1)
        order = np.argsort(-top_scores, axis=1, kind="stable")
        return (np.take_along_axis(top_scores, order, axis=1).astype(np.float32),
                np.take_along_axis(top, order, axis=1).astype(np.int64))

    # ------------------------------------------------------------------ scoring
    def _exact_scores(self, queries: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Similarity of each query to its candidate rows: queries [Q, D], rows [Q, C] -> [Q, C].
        Computed as ``||q - v||`` for euclidean: exact near 0, where the expanded form is not."""
        candidates = self._vectors[rows]  # [Q, C, D]
        if self.similarity == "cosine":
            return np.einsum("qd,qcd->qc", queries, candidates)
        return 0.0 - np.linalg.norm(candidates - queries[:, None, :], axis=2)  # 0.0 - : no -0.0

    # ------------------------------------------------------------------ search
    def search(self, *, queries: np.ndarray, k: int = 10,
               exclude_ids: Sequence[Iterable[str] | str | None] | None = None,
               exclude_groups: Sequence[Iterable[Any] | str | None] | None = None,
               diversity: float = 0.0, candidate_pool: int | None = None,
               nprobe: int | None = None, ef_search: int | None = None,
               query_model: Mapping[str, Any] | str | None = None, rerank: bool = True,
               query_track_ids: Sequence[str | None] | None = None) -> list[Result]:
        """The k most similar tracks to each query.

        Parameters
        ----------
        queries : array_like, shape [Q, D]
            Query embeddings from the index's model.
        k : int
            Results per query (fewer only when fewer tracks remain after the exclusions, or when
            an approximate index finds fewer).
        exclude_ids : sequence of length Q, optional
            Per query, track ids to leave out (e.g. the query track itself); a str is one id.
        exclude_groups : sequence of length Q, optional
            Per query, ``group`` metadata values to leave out (e.g. the query's own album).
        diversity : float in [0, 1]
            0 ranks by similarity only. Above 0, the results are re-ranked by maximal marginal
            relevance with ``lambda = 1 - diversity`` over a candidate pool: each next result
            maximises ``lambda * sim(query, c) - (1 - lambda) * max_selected sim(c, s)``.
        candidate_pool : int, optional
            Pool size for the diversity re-ranking (default ``max(10 * k, 100)``), at most
            ``MAX_DIVERSITY_POOL``; with diversity, k above that pool cap raises ValueError.
        nprobe, ef_search : int, optional
            Per-call overrides of the IVF / HNSW search breadth.
        query_model : str or mapping, optional
            The model the queries come from; a mismatch with ``self.model`` raises ValueError.
        rerank : bool
            Apply the index's query expansion (``aqe``); False searches the queries as given (the
            catalog stays what the index searches).
        query_track_ids : sequence of length Q, optional
            Per query, the catalog track it is (a query by track id) or None: expansion leaves it out.

        Returns
        -------
        list of length Q of lists of (track_id, score)
            Best first; ``score`` is the exact cosine similarity or ``-euclidean distance``.
        """
        k, matrix = self._check_search_arguments(queries=queries, k=k, exclude_ids=exclude_ids,
                                                 exclude_groups=exclude_groups, diversity=diversity,
                                                 candidate_pool=candidate_pool, query_model=query_model)
        query_count = matrix.shape[0]
        count = len(self._ids)
        if query_count == 0 or count == 0 or self._faiss is None:
            return [[] for _ in range(query_count)]
        if query_track_ids is not None and len(query_track_ids) != query_count:
            raise ValueError(f"query_track_ids must have one entry per query ({query_count}), "
                             f"got {len(query_track_ids)}")
        if rerank and self.expands_queries:
            matrix = self._expand_queries(matrix, query_track_ids=query_track_ids, nprobe=nprobe,
                                          ef_search=ef_search)

        target = self._fetch_target(k=k, count=count, diversity=float(diversity), candidate_pool=candidate_pool)
        if exclude_ids is None and exclude_groups is None and diversity == 0:
            return self._plain_search(matrix, k=min(k, count), nprobe=nprobe, ef_search=ef_search)
        excluded_rows, excluded_groups, needed = self._exclusions(query_count=query_count, exclude_ids=exclude_ids,
                                                                  exclude_groups=exclude_groups, target=target)
        return self._filtered_search(matrix, k=k, target=target, excluded_rows=excluded_rows,
                                     excluded_groups=excluded_groups, needed=needed, diversity=float(diversity),
                                     nprobe=nprobe, ef_search=ef_search)

    def _exclusions(self, *, query_count: int, exclude_ids: Sequence[Iterable[str] | str | None] | None,
                    exclude_groups: Sequence[Iterable[Any] | str | None] | None,
                    target: int) -> tuple[list[set[int]], list[set], np.ndarray]:
        """Per query: the rows and groups it excludes, and the candidates [Q] to fetch so that ``target`` remain
        (the excluded ones counted in, at most the catalog)."""
        excluded_rows: list[set[int]] = [set() for _ in range(query_count)]
        excluded_groups: list[set] = [set() for _ in range(query_count)]
        needed = np.full(query_count, target, dtype=np.int64)
        if exclude_ids is not None:
            for q, ids in enumerate(exclude_ids):
                excluded_rows[q] = {self._row_of[t] for t in as_group_set(ids) if t in self._row_of}
                needed[q] += len(excluded_rows[q])
        if exclude_groups is not None:
            sizes = self._group_size_counter()
            for q, groups in enumerate(exclude_groups):
                excluded_groups[q] = {g for g in as_group_set(groups) if g is not None}
                needed[q] += sum(sizes.get(g, 0) for g in excluded_groups[q])
        return excluded_rows, excluded_groups, np.minimum(needed, len(self._ids))

    def _filtered_search(self, matrix: np.ndarray, *, k: int, target: int, excluded_rows: list[set[int]],
                         excluded_groups: list[set], needed: np.ndarray, diversity: float, nprobe: int | None,
                         ef_search: int | None) -> list[Result]:
        """``search`` with exclusions or diversity: each query [Q, D] fetches ``needed`` [Q] candidates, keeps
        ``target`` of those it does not exclude and ranks them (``_rank``)."""
        count = len(self._ids)
        results: list[Result] = [[] for _ in range(len(matrix))]
        # Queries needing a similar over-fetch are searched together: bucket by power of two.
        buckets = np.power(2, np.ceil(np.log2(np.maximum(needed, 1)))).astype(np.int64)
        groups_column = self._metadata.get("group")
        for bucket in np.unique(buckets):
            members = np.flatnonzero(buckets == bucket)
            k_fetch = int(min(bucket, count))
            scores, rows = self._candidates(matrix[members], k_fetch=k_fetch, nprobe=nprobe,
                                            ef_search=ef_search)
            for position, q in enumerate(members):
                candidate_scores, candidate_rows = scores[position], rows[position]
                fetched = k_fetch
                while True:
                    kept = self._filter(candidate_rows, excluded_rows[q], excluded_groups[q], groups_column)
                    returned = int(np.sum(candidate_rows >= 0))
                    # The group sizes make one fetch enough for exact search; an approximate index
                    # may come back short, and then a deeper search is tried.
                    if len(kept) >= target or fetched >= count or returned < fetched:
                        break
                    fetched = min(2 * fetched, count)
                    single_scores, single_rows = self._candidates(matrix[q:q + 1], k_fetch=fetched,
                                                                  nprobe=nprobe, ef_search=ef_search)
                    candidate_scores, candidate_rows = single_scores[0], single_rows[0]
                kept = kept[:target]
                results[q] = self._rank(matrix[q], candidate_rows[kept], candidate_scores[kept], k=k,
                                        diversity=diversity)
        return results

    def _expand_queries(self, matrix: np.ndarray, *, query_track_ids: Sequence[str | None] | None,
                        nprobe: int | None, ef_search: int | None) -> np.ndarray:
        """Average query expansion of ``matrix`` [Q, D] (unit rows) with each query's ``k`` nearest searched
        catalog vectors (this index's own search; a query's own track left out): [Q, D] unit rows."""
        k = self.rerank.k
        own_rows = np.full(len(matrix), -1, dtype=np.int64)
        for q, track_id in enumerate(query_track_ids or []):
            if track_id is not None and track_id in self._row_of:
                own_rows[q] = self._row_of[track_id]
        fetch = min(k + 1, len(self._ids))
        scores, rows = self._candidates(matrix, k_fetch=fetch, nprobe=nprobe, ef_search=ef_search)
        neighbour_rows = np.full((len(matrix), k), -1, dtype=np.int64)
        neighbour_scores = np.zeros((len(matrix), k), dtype=np.float32)
        for q in range(len(matrix)):
            kept = (rows[q] >= 0) & (rows[q] != own_rows[q])
            found = rows[q][kept][:k]
            neighbour_rows[q, :len(found)] = found
            neighbour_scores[q, :len(found)] = scores[q][kept][:k]
        # Rows not found contribute a zero vector, whatever their weight.
        neighbour_vectors = np.where((neighbour_rows >= 0)[:, :, None], self._vectors[np.maximum(neighbour_rows, 0)],
                                     0.0)
        return np.ascontiguousarray(reranking.expand(vectors=matrix, neighbour_vectors=neighbour_vectors,
                                                     neighbour_scores=neighbour_scores, alpha=self.rerank.alpha))

    def _plain_search(self, matrix: np.ndarray, *, k: int, nprobe: int | None,
                      ef_search: int | None) -> list[Result]:
        """No exclusions, no diversity: vectorised over queries."""
        scores, rows = self._candidates(matrix, k_fetch=k, nprobe=nprobe, ef_search=ef_search)
        valid = rows >= 0
        if self.similarity == "euclidean":
            scores = np.where(valid, self._exact_scores(matrix, np.where(valid, rows, 0)), -np.inf)
            order = np.argsort(-scores, axis=1, kind="stable")
            rows = np.take_along_axis(rows, order, axis=1)
            scores = np.take_along_axis(scores, order, axis=1)
            valid = rows >= 0
        if self._id_array is None:
            self._id_array = np.asarray(self._ids, dtype=object)
        id_lists = self._id_array[np.where(valid, rows, 0)].tolist()
        if valid.all():
            return [list(zip(ids, row_scores)) for ids, row_scores in zip(id_lists, scores.tolist())]
        return [[(t, s) for t, s, v in zip(ids, row_scores, row_valid) if v]
                for ids, row_scores, row_valid in zip(id_lists, scores.tolist(), valid.tolist())]

    @staticmethod
    def _filter(candidate_rows: np.ndarray, excluded_rows: set[int], excluded_groups: set,
                groups_column: list[Any] | None) -> np.ndarray:
        """Positions into ``candidate_rows`` [C] that are found and not excluded."""
        kept = [i for i, r in enumerate(candidate_rows.tolist()) if r >= 0 and r not in excluded_rows
                and not (excluded_groups and groups_column[r] in excluded_groups)]
        return np.asarray(kept, dtype=np.int64)

    def _rank(self, query: np.ndarray, rows: np.ndarray, scores: np.ndarray, *, k: int,
              diversity: float) -> Result:
        """Best ``k`` of the candidate ``rows`` [C] (with ``_candidates`` scores [C]) by
        similarity, or by MMR when ``diversity`` > 0."""
        if len(rows) == 0:
            return []
        if self.similarity == "euclidean":
            scores = self._exact_scores(query[None, :], rows[None, :])[0]
        order = np.argsort(-scores, kind="stable")
        rows, scores = rows[order], scores[order]
        if diversity > 0 and len(rows) > 1:
            picked = maximal_marginal_relevance(candidates=self._vectors[rows], relevance=scores, k=k,
                                                trade_off=1.0 - diversity, similarity=self.similarity)
            rows, scores = rows[picked], scores[picked]
        return [(self._ids[r], float(s)) for r, s in zip(rows[:k].tolist(), scores[:k].tolist())]

    def _group_size_counter(self) -> Counter:
        if self._group_sizes is None:
            self._group_sizes = Counter(g for g in self._metadata.get("group", []) if g is not None)
        return self._group_sizes
