"""Similarity-search index over track embeddings (paper section 1: "a search engine that, given a
music, returns the most similar musics").

``EmbeddingIndex`` holds one embedding per track and answers k-nearest-neighbour queries under the
paper's two similarities:

* ``cosine``: the dot product of unit vectors (vectors are normalised on the way in);
* ``euclidean``: ``-||a - b||`` (section 5, "Wavenet Variations"), so higher is better for both.

Search is exact by default. Batches of queries run on faiss's flat index: on this project's
machines faiss's blocked BLAS + heap top-k answers 1000 queries against 100k vectors about 8x faster
than a numpy matrix product followed by ``argpartition`` (the partition over [Q, N] scores
dominates), and a flat index is exact too. Fewer than ``NUMPY_MAX_QUERIES`` queries (the
interactive case) run in numpy, which skips faiss's per-call OpenMP start-up: several times faster
for one query, and tens of times on a busy machine. ``approximate='ivf'`` or ``'hnsw'`` trades
recall for speed on large catalogues (see ``benchmarks/search.py`` for the figures). The scores
returned are exact float32 similarities whatever index found the candidates (euclidean ones are
recomputed as ``||q - v||``, which stays precise near 0 where faiss's expanded form does not).

On disk an index is one directory::

    DIR/config.json   "format": "musicsim.index", backend, similarity, dimension, approximate-search
                      parameters, model (name, model_dir, dim), count
    DIR/tracks.json   track ids and per-track metadata columns (path, group, duration_s, ...)
    DIR/vectors.npy   [N, D] float32 (unit vectors for cosine)
    DIR/labels.npy    [N] int64 faiss ids of the rows (only with approximate search)
    DIR/faiss.index   the trained IVF / HNSW index (only with approximate search)

It is saved atomically (written into a sibling temp directory, then swapped in; the previous
version is kept at ``DIR.bak`` during the swap, and ``load`` falls back to it). ``load`` checks
every file (counts, dimensions, finite unit vectors, the faiss index) and raises ``IndexFileError``
naming the one at fault. A Milvus index (``musicsim.index_milvus``) keeps only config.json here;
``EmbeddingIndex.load`` opens either backend.

CLI (queries: ``python -m musicsim.search``)::

    python -m musicsim.index build --embeddings=FILE --output=DIR [--similarity=cosine]
        [--approximate=ivf|hnsw] [--model_dir=RUN] [--model=NAME] [--overwrite]
        [--backend=faiss|milvus --uri=PATH.db|http://host:19530 --collection=NAME]
    python -m musicsim.index add --index=DIR --embeddings=FILE [--replace]
    python -m musicsim.index remove --index=DIR --track_id=ID [ID ...]

``build`` replaces DIR only when it is absent, empty or an index (its config.json says so).
"""
from __future__ import annotations

import argparse
import json
import math
import logging
import os
import re
import shutil
import sys
import uuid
import warnings
from collections import Counter
from typing import Any, Callable, Iterable, Mapping, Sequence

# faiss's loader logs each CPU variant it could not load at INFO; under absl's INFO logging (experiments.run)
# that printed three ModuleNotFoundError lines on every index build.
logging.getLogger("faiss.loader").setLevel(logging.WARNING)
import faiss  # noqa: E402
import numpy as np

from musicsim.index_backends import (APPROXIMATE_KINDS, BACKENDS, MAX_DIVERSITY_POOL, SIMILARITIES,  # noqa: F401
                                     IndexBackend, IndexFileError, Result, _as_group_set, _as_str_list,
                                     maximal_marginal_relevance)

FORMAT_VERSION = 1
# config.json's "format" entry: marks a directory as this project's index, the only kind a save replaces.
FORMAT_MARKER = "musicsim.index"
CONFIG_FILE = "config.json"
TRACKS_FILE = "tracks.json"
VECTORS_FILE = "vectors.npy"
LABELS_FILE = "labels.npy"
FAISS_FILE = "faiss.index"
BACKUP_SUFFIX = ".bak"
INDEX_FILES = frozenset({"config.json", "tracks.json", "vectors.npy", "labels.npy", "faiss.index"})
# Temporary directories of save(): DIR.tmp-<pid>-<8 hex>.
TEMP_PATTERN = re.compile(r"\.tmp-(\d+)-[0-9a-f]{8}$")
# Stored cosine vectors are unit length; a norm further from 1 than this means a damaged vectors.npy.
UNIT_NORM_TOLERANCE = 1e-3
# IVF: faiss wants >= 39 training points per list; training on more than this many per list
# costs k-means time without improving the lists noticeably.
MIN_POINTS_PER_LIST = 39
DEFAULT_TRAINING_POINTS_PER_LIST = 64
# Exact search of fewer queries than this runs in numpy (see _numpy_candidates), more in faiss's flat
# index (blocked BLAS with a heap top-k, faster than numpy's matmul + argpartition for batches).
NUMPY_MAX_QUERIES = 16

def _is_index_directory(directory: str) -> bool:
    """True when ``directory`` holds only this project's index files and a config.json that says so."""
    try:
        entries = set(os.listdir(directory))
        with open(os.path.join(directory, CONFIG_FILE)) as f:
            config = json.load(f)
    except (OSError, ValueError):
        return False
    if not isinstance(config, dict) or not entries <= INDEX_FILES:
        return False
    # Indexes written before the marker existed carry format_version, similarity and dim.
    return (config.get("format") == FORMAT_MARKER
            or ("format" not in config and {"format_version", "similarity", "dim"} <= set(config)))


def check_output_directory(*, directory: str, overwrite: bool = False) -> None:
    """Raise IndexFileError unless ``directory`` may receive an index: absent, empty, or an index.

    Parameters
    ----------
    directory : str
        Where an index is about to be saved.
    overwrite : bool
        Allow replacing any other directory too (its content is deleted).
    """
    if not os.path.exists(directory):
        return
    if not os.path.isdir(directory):
        raise IndexFileError(f"cannot save the index to {directory}: it exists and is not a directory")
    if overwrite or not os.listdir(directory) or _is_index_directory(directory):
        return
    raise IndexFileError(f"cannot save the index to {directory}: it is a non-empty folder that holds no index "
                         f"(no {CONFIG_FILE} marked {FORMAT_MARKER!r}, or files an index does not have); "
                         "choose another --output, or pass --overwrite to replace it")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_stale_temporaries(*, directory: str) -> list[str]:
    """Delete the temporary directories a killed ``save`` of ``directory`` left behind.

    Only siblings named ``<directory>.tmp-<pid>-<8 hex>`` whose pid is not a live process are removed.

    Returns
    -------
    list of str
        The removed paths.
    """
    parent, base = os.path.split(os.path.abspath(directory))
    removed = []
    try:
        names = os.listdir(parent)
    except OSError:
        return removed
    for name in names:
        if not name.startswith(base):
            continue
        match = TEMP_PATTERN.fullmatch(name[len(base):])
        path = os.path.join(parent, name)
        if match and os.path.isdir(path) and int(match.group(1)) != os.getpid() and not _pid_alive(int(match.group(1))):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def save_index_directory(*, directory: str, write_files: Callable[[str], None], overwrite: bool = False) -> None:
    """Write an index directory atomically.

    ``write_files(temp)`` writes everything into a temp sibling directory first; then the current
    directory (if any) is renamed to ``directory + '.bak'``, the new one renamed in, and the backup
    deleted. A crash at any point leaves a loadable index at ``directory`` or its backup.
    Temporaries that killed saves of ``directory`` left behind are removed first.

    Raises
    ------
    IndexFileError
        If ``directory`` (or its ``.bak`` sibling) is a file or a folder that is not an index
        (``overwrite`` allows replacing ``directory`` anyway).
    """
    directory = os.path.abspath(directory)
    check_output_directory(directory=directory, overwrite=overwrite)
    backup = directory + BACKUP_SUFFIX
    if os.path.exists(backup) and not _is_index_directory(backup):
        raise IndexFileError(f"cannot save the index to {directory}: {backup} exists and is not an index "
                             "backup; move it away")
    parent = os.path.dirname(directory)
    os.makedirs(parent, exist_ok=True)
    remove_stale_temporaries(directory=directory)
    temp = f"{directory}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    os.mkdir(temp)
    try:
        write_files(temp)
        if os.path.isdir(directory):
            if os.path.exists(backup):
                shutil.rmtree(backup)  # a stale backup from a finished or crashed earlier save
            os.rename(directory, backup)
        elif os.path.exists(backup):
            shutil.rmtree(backup)  # the only copy is older than what we are about to rename in
        os.rename(temp, directory)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    shutil.rmtree(backup, ignore_errors=True)


def write_json_synced(path: str, payload: Any) -> None:
    """Write JSON to ``path`` and fsync it (the files of an index being saved)."""
    with open(path, "w") as f:
        json.dump(payload, f, default=str)
        f.flush()
        os.fsync(f.fileno())


def default_nlist(*, count: int) -> int:
    """Number of IVF lists for ``count`` vectors: about ``4 * sqrt(count)``, at most ``count // 39``."""
    if count < 1:
        raise ValueError(f"an IVF index needs at least one vector to train, got count={count}")
    return int(max(1, min(round(4 * math.sqrt(count)), count // MIN_POINTS_PER_LIST)))


def default_nprobe(*, nlist: int) -> int:
    """Lists visited per IVF query by default: 1/16 of the lists (at least 1)."""
    return int(max(1, round(nlist / 16)))


class EmbeddingIndex(IndexBackend):
    """k-nearest-neighbour search over track embeddings, on faiss (the default backend).

    The shared argument checks and ``search_by_id`` come from ``IndexBackend``.

    Parameters
    ----------
    track_ids : sequence of str, length N
        Unique, non-empty track ids.
    vectors : array_like, shape [N, D]
        One finite embedding per track (cast to float32; normalised to unit length for cosine).
    similarity : {'cosine', 'euclidean'}
        Cosine: dot product of unit vectors. Euclidean: ``-||a - b||``.
    metadata : mapping of str to sequence of length N, optional
        Per-track columns, e.g. ``path``, ``group`` (album / artist, used by the group exclusions),
        ``duration_s``. Values must be JSON-serialisable.
    model : mapping, optional
        What produced the vectors, e.g. ``{'name': 'wavenet', 'model_dir': '/runs/w1'}``; recorded
        so a query by audio file can be embedded with the same model, and checked against
        ``search(query_model=...)``.
    approximate : {None, 'ivf', 'hnsw'}
        None for exact search (faiss flat), else an approximate faiss index.
    nlist : int, optional
        IVF lists (default ``default_nlist(count=N)``, about ``4 * sqrt(N)``).
    nprobe : int, optional
        IVF lists visited per query (default ``default_nprobe(nlist=nlist)``); higher is slower and
        more exact. Can be overridden per search.
    hnsw_m : int
        HNSW graph degree.
    ef_construction : int
        HNSW candidate list size while building.
    ef_search : int
        HNSW candidate list size while searching (raised to the number of results fetched when
        that is larger). Can be overridden per search.
    training_points_per_list : int
        IVF k-means is trained on at most ``nlist * training_points_per_list`` sampled vectors.
    seed : int
        Seed for the IVF training sample and k-means.
    """

    def __init__(self, *, track_ids: Sequence[str], vectors: np.ndarray, similarity: str = "cosine",
                 metadata: Mapping[str, Sequence[Any]] | None = None,
                 model: Mapping[str, Any] | None = None, approximate: str | None = None,
                 nlist: int | None = None, nprobe: int | None = None, hnsw_m: int = 32,
                 ef_construction: int = 80, ef_search: int = 64,
                 training_points_per_list: int = DEFAULT_TRAINING_POINTS_PER_LIST,
                 seed: int = 0) -> None:
        if similarity not in SIMILARITIES:
            raise ValueError(f"similarity must be one of {SIMILARITIES}, got {similarity!r}")
        if approximate not in (None,) + APPROXIMATE_KINDS:
            raise ValueError(f"approximate must be None or one of {APPROXIMATE_KINDS}, got {approximate!r}")
        for name, value in (("hnsw_m", hnsw_m), ("ef_construction", ef_construction),
                            ("ef_search", ef_search), ("training_points_per_list", training_points_per_list)):
            if int(value) < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        for name, value in (("nlist", nlist), ("nprobe", nprobe)):
            if value is not None and int(value) < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        self.similarity = similarity
        self.approximate = approximate
        self.model: dict[str, Any] = dict(model or {})
        self.nlist = None if nlist is None else int(nlist)
        self.nprobe = None if nprobe is None else int(nprobe)
        self.hnsw_m = int(hnsw_m)
        self.ef_construction = int(ef_construction)
        self.ef_search = int(ef_search)
        self.training_points_per_list = int(training_points_per_list)
        self.seed = int(seed)

        ids = self._check_ids(track_ids, name="track_ids")
        matrix = self._check_vectors(vectors, count=len(ids), dim=None, name="vectors", ids=ids)
        self._dim = int(matrix.shape[1])
        self._ids: list[str] = ids
        self._row_of: dict[str, int] = {tid: row for row, tid in enumerate(ids)}
        self._vectors = matrix
        # faiss id of each row, kept sorted. Flat and HNSW indexes use positions (ids == rows);
        # only IVF stores explicit ids, which survive removals. (No IndexIDMap: its id translation
        # is an OpenMP region per call, which costs up to tens of ms per query on a busy machine.)
        self._labels = np.arange(len(ids), dtype=np.int64)
        self._next_label = len(ids)
        self._metadata: dict[str, list[Any]] = self._check_metadata(metadata, count=len(ids))
        self._group_sizes: Counter | None = None
        self._squared_norms: np.ndarray | None = None  # [N], for euclidean numpy search
        self._id_array: np.ndarray | None = None  # [N] object, for fast result lists
        self._faiss: faiss.Index | None = None
        self._build_faiss()

    backend = "faiss"

    # ------------------------------------------------------------------ basic accessors
    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, track_id: object) -> bool:
        return track_id in self._row_of

    @property
    def track_ids(self) -> list[str]:
        """Track ids in row order (a copy)."""
        return list(self._ids)

    @property
    def vectors(self) -> np.ndarray:
        """Stored vectors, shape [N, D] float32 (unit length for cosine); a read-only view."""
        view = self._vectors.view()
        view.flags.writeable = False
        return view

    @property
    def metadata_columns(self) -> list[str]:
        return sorted(self._metadata)

    def vector(self, *, track_id: str) -> np.ndarray:
        """The stored vector of one track, shape [D]."""
        return self._vectors[self._row(track_id)].copy()

    def metadata(self, *, track_id: str) -> dict[str, Any]:
        """All metadata columns of one track."""
        row = self._row(track_id)
        return {column: values[row] for column, values in self._metadata.items()}

    def group(self, *, track_id: str) -> Any:
        """The track's ``group`` metadata (None when absent)."""
        row = self._row(track_id)
        groups = self._metadata.get("group")
        return None if groups is None else groups[row]

    def track_id_of_path(self, *, path: str) -> str | None:
        """The id of the track whose ``path`` metadata is the file ``path`` (by real path), if any."""
        wanted = os.path.realpath(path)
        for track_id, stored in zip(self._ids, self._metadata.get("path", [])):
            if stored and os.path.realpath(str(stored)) == wanted:
                return track_id
        return None

    def summary(self) -> str:
        """One line describing the index."""
        mode = self.search_mode()
        model = self.model.get("name") or self.model.get("model_dir") or "unknown model"
        groups = len(set(g for g in self._metadata.get("group", []) if g is not None))
        return (f"EmbeddingIndex (faiss): {len(self)} tracks, dim {self._dim}, {self.similarity}, {mode}, "
                f"{groups} groups, model {model}")

    # ------------------------------------------------------------------ validation helpers
    def _row(self, track_id: str) -> int:
        try:
            return self._row_of[track_id]
        except KeyError:
            raise ValueError(f"unknown track id {track_id!r} (index holds {len(self)} tracks)") from None

    @property
    def _metric(self) -> int:
        return faiss.METRIC_INNER_PRODUCT if self.similarity == "cosine" else faiss.METRIC_L2

    def _flat_quantizer(self) -> faiss.Index:
        return faiss.IndexFlatIP(self._dim) if self.similarity == "cosine" else faiss.IndexFlatL2(self._dim)

    def _build_faiss(self) -> None:
        """(Re)build the faiss index over all stored vectors, training IVF if needed."""
        count = len(self._ids)
        if self.approximate is None:
            index = self._flat_quantizer()
        elif self.approximate == "hnsw":
            index = faiss.IndexHNSWFlat(self._dim, self.hnsw_m, self._metric)
            index.hnsw.efConstruction = self.ef_construction
        else:
            if count == 0:
                self._faiss = None  # trained on the first add()
                return
            if self.nlist is None:
                self.nlist = default_nlist(count=count)
            if self.nlist > count:
                raise ValueError(f"nlist={self.nlist} is more than the {count} vectors to train on")
            if self.nprobe is None:
                self.nprobe = default_nprobe(nlist=self.nlist)
            index = faiss.IndexIVFFlat(self._flat_quantizer(), self._dim, self.nlist, self._metric)
            index.cp.seed = self.seed
            index.cp.spherical = self.similarity == "cosine"
            if self.nlist * self.training_points_per_list < count:
                sample_size = self.nlist * self.training_points_per_list
                sample = np.random.default_rng(self.seed).choice(count, size=sample_size, replace=False)
                training = self._vectors[np.sort(sample)]
            else:
                training = self._vectors
            index.train(training)
        if self.approximate == "ivf":
            index.add_with_ids(self._vectors, self._labels)
        else:
            self._labels = np.arange(count, dtype=np.int64)
            self._next_label = count
            if count:
                index.add(self._vectors)
        self._faiss = index

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
               query_model: Mapping[str, Any] | str | None = None) -> list[Result]:
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

        target = self._fetch_target(k=k, count=count, diversity=float(diversity), candidate_pool=candidate_pool)

        excluded_rows: list[set[int]] = [set() for _ in range(query_count)]
        excluded_groups: list[set] = [set() for _ in range(query_count)]
        needed = np.full(query_count, target, dtype=np.int64)
        if exclude_ids is not None:
            for q, ids in enumerate(exclude_ids):
                excluded_rows[q] = {self._row_of[t] for t in _as_group_set(ids) if t in self._row_of}
                needed[q] += len(excluded_rows[q])
        if exclude_groups is not None:
            sizes = self._group_size_counter()
            for q, groups in enumerate(exclude_groups):
                excluded_groups[q] = {g for g in _as_group_set(groups) if g is not None}
                needed[q] += sum(sizes.get(g, 0) for g in excluded_groups[q])
        needed = np.minimum(needed, count)
        filtering = exclude_ids is not None or exclude_groups is not None

        if not filtering and diversity == 0:
            return self._plain_search(matrix, k=min(k, count), nprobe=nprobe, ef_search=ef_search)

        results: list[Result] = [[] for _ in range(query_count)]
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
                                        diversity=float(diversity))
        return results

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

    # ------------------------------------------------------------------ updates
    def add(self, *, track_ids: Sequence[str], vectors: np.ndarray,
            metadata: Mapping[str, Sequence[Any]] | None = None) -> None:
        """Add tracks. Ids already in the index, or repeated, raise ValueError.

        Metadata columns the new tracks lack are filled with None, and new columns are None for
        the tracks already there.
        """
        ids = self._check_ids(track_ids, name="track_ids")
        present = [t for t in ids if t in self._row_of]
        if present:
            raise ValueError(f"track ids already in the index: {present[:5]}")
        matrix = self._check_vectors(vectors, count=len(ids), dim=self._dim, name="vectors", ids=ids)
        columns = self._check_metadata(metadata, count=len(ids))
        if not ids:
            return
        labels = np.arange(self._next_label, self._next_label + len(ids), dtype=np.int64)
        old_count = len(self._ids)
        for column in set(self._metadata) | set(columns):
            existing = self._metadata.get(column, [None] * old_count)
            self._metadata[column] = existing + columns.get(column, [None] * len(ids))
        self._vectors = np.ascontiguousarray(np.concatenate([self._vectors, matrix]))
        self._labels = np.concatenate([self._labels, labels])
        self._next_label += len(ids)
        for offset, tid in enumerate(ids):
            self._row_of[tid] = old_count + offset
        self._ids.extend(ids)
        self._group_sizes = None
        self._squared_norms = None
        self._id_array = None
        if self._faiss is None:
            self._build_faiss()  # IVF that had nothing to train on yet
        elif self.approximate == "ivf":
            self._faiss.add_with_ids(matrix, labels)
        else:
            self._faiss.add(matrix)  # positions old_count.. == labels

    def remove(self, *, track_ids: Sequence[str]) -> None:
        """Remove tracks. Unknown or repeated ids raise ValueError (nothing is removed then).

        HNSW graphs cannot delete nodes, so removing from an HNSW index rebuilds the graph.
        """
        ids = self._check_ids(track_ids, name="track_ids")
        unknown = [t for t in ids if t not in self._row_of]
        if unknown:
            raise ValueError(f"unknown track ids: {unknown[:5]} (index holds {len(self)} tracks)")
        if not ids:
            return
        drop = np.zeros(len(self._ids), dtype=bool)
        drop[[self._row_of[t] for t in ids]] = True
        removed_labels = self._labels[drop]
        removed_rows = np.flatnonzero(drop).astype(np.int64)
        keep = ~drop
        self._vectors = np.ascontiguousarray(self._vectors[keep])
        self._labels = self._labels[keep]
        self._ids = [t for t, k in zip(self._ids, keep.tolist()) if k]
        self._row_of = {t: row for row, t in enumerate(self._ids)}
        self._metadata = {c: [v for v, k in zip(values, keep.tolist()) if k] for c, values in self._metadata.items()}
        self._group_sizes = None
        self._squared_norms = None
        self._id_array = None
        if self.approximate == "hnsw":
            self._build_faiss()
        elif self.approximate == "ivf":
            if self._faiss is not None:
                self._faiss.remove_ids(removed_labels)
        else:
            self._faiss.remove_ids(removed_rows)  # compacts in order, like the rows above
            self._labels = np.arange(len(self._ids), dtype=np.int64)
            self._next_label = len(self._ids)

    # ------------------------------------------------------------------ persistence
    def _config(self) -> dict[str, Any]:
        return {"format": FORMAT_MARKER, "format_version": FORMAT_VERSION, "backend": self.backend,
                "similarity": self.similarity, "dim": self._dim,
                "count": len(self._ids), "approximate": self.approximate, "nlist": self.nlist,
                "nprobe": self.nprobe, "hnsw_m": self.hnsw_m, "ef_construction": self.ef_construction,
                "ef_search": self.ef_search, "training_points_per_list": self.training_points_per_list,
                "seed": self.seed, "model": self.model, "next_label": self._next_label}

    def save(self, directory: str, *, overwrite: bool = False) -> None:
        """Write the index to ``directory`` atomically (see ``save_index_directory``).

        Parameters
        ----------
        directory : str
            Absent, empty, or an index (recognised by its config.json); anything else is refused.
        overwrite : bool
            Replace ``directory`` even when it is not an index (its content is deleted).

        Raises
        ------
        IndexFileError
            If ``directory`` (or its ``.bak`` sibling) is a file or a folder that is not an index.
        """
        save_index_directory(directory=directory, write_files=self._write_files, overwrite=overwrite)

    def _write_files(self, directory: str) -> None:
        def write_json(name: str, payload: Any) -> None:
            write_json_synced(os.path.join(directory, name), payload)

        with open(os.path.join(directory, VECTORS_FILE), "wb") as f:
            np.save(f, self._vectors)
            f.flush()
            os.fsync(f.fileno())
        if self.approximate is not None and self._faiss is not None:
            np.save(os.path.join(directory, LABELS_FILE), self._labels)
            faiss.write_index(self._faiss, os.path.join(directory, FAISS_FILE))
        write_json(TRACKS_FILE, {"track_ids": self._ids, "metadata": self._metadata})
        write_json(CONFIG_FILE, self._config())  # last: its presence marks a complete directory

    @classmethod
    def load(cls, directory: str) -> IndexBackend:
        """Open the index saved in ``directory``: this faiss index, or the backend its config.json
        names (``musicsim.index_milvus.MilvusIndex``). Falls back to ``directory + '.bak'`` when a
        save was interrupted between its two renames.

        Raises
        ------
        FileNotFoundError
            If there is no index at ``directory``.
        IndexFileError
            If a file of the index is missing, damaged or inconsistent (the message names it).
        """
        directory = os.path.abspath(directory)
        source = directory
        if not os.path.isfile(os.path.join(directory, CONFIG_FILE)):
            backup = directory + BACKUP_SUFFIX
            if os.path.isfile(os.path.join(backup, CONFIG_FILE)):
                warnings.warn(f"{directory} is missing or incomplete; loading the backup {backup} "
                              "left by an interrupted save")
                source = backup
            else:
                raise FileNotFoundError(f"no index at {directory} (no {CONFIG_FILE}, and no backup {backup})")
        return cls._read(source)

    @classmethod
    def _read(cls, directory: str) -> IndexBackend:
        """Read and validate the files of one index directory; any defect is an IndexFileError naming
        the file (a damaged index must fail on load, not answer nan scores)."""
        def path_of(name: str) -> str:
            return os.path.join(directory, name)

        def read_json(name: str) -> dict[str, Any]:
            try:
                with open(path_of(name)) as f:
                    payload = json.load(f)
            except (OSError, ValueError) as error:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
                raise IndexFileError(f"cannot read index file {path_of(name)}: {error}") from error
            if not isinstance(payload, dict):
                raise IndexFileError(f"index file {path_of(name)} is not a JSON object")
            return payload

        def entry(payload: dict[str, Any], name: str, key: str, kinds: tuple[type, ...]) -> Any:
            if key not in payload:
                raise IndexFileError(f"index file {path_of(name)} has no {key!r} entry")
            value = payload[key]
            if not isinstance(value, kinds) or isinstance(value, bool) and bool not in kinds:
                raise IndexFileError(f"index file {path_of(name)}: {key!r} is {value!r}, "
                                     f"expected {' or '.join(k.__name__ for k in kinds)}")
            return value

        def read_array(name: str) -> np.ndarray:
            try:
                return np.load(path_of(name), allow_pickle=False)
            except Exception as error:  # noqa: BLE001 - numpy raises EOFError, ValueError, OSError, ...
                raise IndexFileError(f"cannot read index file {path_of(name)}: "
                                     f"{type(error).__name__}: {error}") from error

        config = read_json(CONFIG_FILE)
        if config.get("format_version") != FORMAT_VERSION:
            raise IndexFileError(f"{path_of(CONFIG_FILE)}: format_version {config.get('format_version')!r}, "
                                 f"this code reads {FORMAT_VERSION}")
        backend = config.get("backend", "faiss")
        if backend == "milvus":
            from musicsim.index_milvus import MilvusIndex

            return MilvusIndex.open(config=config, config_path=path_of(CONFIG_FILE))
        if backend != "faiss":
            raise IndexFileError(f"{path_of(CONFIG_FILE)}: unknown backend {backend!r} (this code has {BACKENDS})")
        similarity = entry(config, CONFIG_FILE, "similarity", (str,))
        approximate = entry(config, CONFIG_FILE, "approximate", (str, type(None)))
        if similarity not in SIMILARITIES or approximate not in (None,) + APPROXIMATE_KINDS:
            raise IndexFileError(f"{path_of(CONFIG_FILE)}: unknown similarity {similarity!r} or approximate "
                                 f"{approximate!r}")
        count = entry(config, CONFIG_FILE, "count", (int,))
        dim = entry(config, CONFIG_FILE, "dim", (int,))
        if count < 0 or dim < 1:
            raise IndexFileError(f"{path_of(CONFIG_FILE)}: count {count} and dim {dim} are not valid")
        integer_or_none = (int, type(None))
        settings = {key: entry(config, CONFIG_FILE, key, kinds) for key, kinds in (
            ("nlist", integer_or_none), ("nprobe", integer_or_none), ("hnsw_m", (int,)),
            ("ef_construction", (int,)), ("ef_search", (int,)), ("training_points_per_list", (int,)),
            ("seed", (int,)), ("next_label", (int,)))}
        model = config.get("model") or {}
        if not isinstance(model, dict):
            raise IndexFileError(f"{path_of(CONFIG_FILE)}: 'model' is {model!r}, expected an object")
        model_dim = model.get("dim")
        if model_dim is not None and model_dim != dim:
            raise IndexFileError(f"{path_of(CONFIG_FILE)}: dim {dim} but its model makes {model_dim}-d embeddings")

        tracks = read_json(TRACKS_FILE)
        ids = entry(tracks, TRACKS_FILE, "track_ids", (list,))
        metadata = entry(tracks, TRACKS_FILE, "metadata", (dict,))
        if len(ids) != count:
            raise IndexFileError(f"{path_of(TRACKS_FILE)} has {len(ids)} track ids, {CONFIG_FILE} says {count}")
        if not all(isinstance(t, str) and t for t in ids) or len(set(ids)) != len(ids):
            raise IndexFileError(f"{path_of(TRACKS_FILE)}: track ids must be unique non-empty strings")
        for column, values in metadata.items():
            if not isinstance(values, list) or len(values) != count:
                raise IndexFileError(f"{path_of(TRACKS_FILE)}: metadata column {column!r} is not a list of "
                                     f"{count} values")

        vectors = read_array(VECTORS_FILE)
        if vectors.shape != (count, dim) or vectors.dtype != np.float32:
            raise IndexFileError(f"{path_of(VECTORS_FILE)} holds {vectors.dtype} {vectors.shape}, "
                                 f"{CONFIG_FILE} says float32 ({count}, {dim})")
        finite = np.isfinite(vectors).all(axis=1)
        if not finite.all():
            raise IndexFileError(f"{path_of(VECTORS_FILE)} is damaged: {int(np.sum(~finite))} rows have "
                                 f"non-finite values (first: track {ids[int(np.argmin(finite))]!r})")
        if similarity == "cosine" and count:
            off = np.abs(np.linalg.norm(vectors, axis=1) - 1.0) > UNIT_NORM_TOLERANCE
            if off.any():
                raise IndexFileError(f"{path_of(VECTORS_FILE)} is damaged: {int(np.sum(off))} rows of a cosine "
                                     f"index are not unit vectors (first: track {ids[int(np.argmax(off))]!r})")

        index = cls.__new__(cls)
        index.similarity = similarity
        index.approximate = approximate
        index.model = dict(model)
        index.nlist = settings["nlist"]
        index.nprobe = settings["nprobe"]
        index.hnsw_m = settings["hnsw_m"]
        index.ef_construction = settings["ef_construction"]
        index.ef_search = settings["ef_search"]
        index.training_points_per_list = settings["training_points_per_list"]
        index.seed = settings["seed"]
        index._dim = dim
        index._ids = list(ids)
        index._row_of = {t: row for row, t in enumerate(index._ids)}
        index._vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        index._metadata = {c: list(v) for c, v in metadata.items()}
        index._group_sizes = None
        index._squared_norms = None
        index._id_array = None
        faiss_path = path_of(FAISS_FILE)
        if approximate is not None and os.path.exists(faiss_path):
            labels = read_array(LABELS_FILE)
            if labels.shape != (count,) or labels.dtype != np.int64 or (count > 1 and np.any(np.diff(labels) <= 0)):
                raise IndexFileError(f"{path_of(LABELS_FILE)} holds {labels.dtype} {labels.shape}, expected "
                                     f"{count} increasing int64 labels")
            if count and (labels[0] < 0 or labels[-1] >= settings["next_label"]):
                raise IndexFileError(f"{path_of(LABELS_FILE)}: labels outside [0, next_label)")
            try:
                stored = faiss.read_index(faiss_path)
            except RuntimeError as error:
                raise IndexFileError(f"cannot read index file {faiss_path}: {str(error).splitlines()[0]}") from error
            if stored.ntotal != count or stored.d != dim:
                raise IndexFileError(f"{faiss_path} holds {stored.ntotal} vectors of dimension {stored.d}, "
                                     f"expected {count} of dimension {dim}")
            index._labels = labels
            index._next_label = settings["next_label"]
            index._faiss = stored
        else:
            index._labels = np.arange(len(ids), dtype=np.int64)
            index._next_label = len(ids)
            index._build_faiss()
        return index


# ---------------------------------------------------------------------- embeddings files
def load_embeddings(path: str) -> tuple[list[str], np.ndarray, dict[str, list[Any]]]:
    """Read an embeddings export.

    Formats:

    * ``.npz`` with ``track_ids`` [N] (str) and ``embeddings`` [N, D], optional ``paths`` [N],
      ``labels`` [N] (one label string per track, e.g. the album, '|'-joined when several),
      ``splits`` [N] and ``durations`` [N] (as written by ``experiments.run``);
    * ``.parquet`` with columns ``track_id``, ``embedding`` (list of float), and optional ``path``,
      ``model``, ``duration_s``, ``labels`` / ``group`` (as written by ``experiments.export``);
    * ``.npy`` [N, D] with a sibling ``<stem>.ids.json`` (a JSON array of N strings; a legacy
      ``<stem>.ids.txt`` with one id per line is read only when there is no ``.ids.json``).

    Track ids must be unique non-empty strings (a null, empty or repeated id raises ValueError
    naming the file). What made the vectors is read by ``read_provenance``.

    Returns
    -------
    track_ids : list of str, length N
    vectors : np.ndarray, shape [N, D], float32
    metadata : dict of str to list of length N
        Any of ``path``, ``group`` (from labels), ``split``, ``duration_s``, ``model`` found in
        the file.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"embeddings file {path} does not exist")
    suffix = os.path.splitext(path)[1].lower()
    if suffix == ".npz":
        track_ids, vectors, metadata = _load_npz(path)
    elif suffix == ".parquet":
        track_ids, vectors, metadata = _load_parquet(path)
    elif suffix == ".npy":
        track_ids, vectors, metadata = _load_npy(path)
    else:
        raise ValueError(f"{path}: unknown embeddings format {suffix!r}; expected .npz, .parquet or "
                         ".npy (+ .ids.json)")
    _check_file_ids(track_ids, path=path)
    vectors = np.asarray(vectors)
    if vectors.ndim != 2 or vectors.shape[0] != len(track_ids):
        raise ValueError(f"{path}: embeddings must be [N, D] with N = {len(track_ids)} track ids, "
                         f"got shape {vectors.shape}")
    for column, values in metadata.items():
        if len(values) != len(track_ids):
            raise ValueError(f"{path}: {column} has {len(values)} entries for {len(track_ids)} track ids")
    return track_ids, np.ascontiguousarray(vectors, dtype=np.float32), metadata


def _label_strings(values: np.ndarray, *, path: str, name: str) -> list[str]:
    if values.ndim != 1:
        raise ValueError(f"{path}: {name} must be one label string per track (shape [N]), got shape {values.shape}")
    return _as_str_list(values.tolist())


def _load_npz(path: str) -> tuple[list[str], np.ndarray, dict[str, list[Any]]]:
    with np.load(path, allow_pickle=False) as archive:
        missing = [name for name in ("track_ids", "embeddings") if name not in archive.files]
        if missing:
            raise ValueError(f"{path}: missing arrays {missing} (has {sorted(archive.files)})")
        track_ids = _as_str_list(archive["track_ids"].tolist())
        vectors = archive["embeddings"]
        metadata: dict[str, list[Any]] = {}
        if "paths" in archive.files:
            metadata["path"] = _label_strings(archive["paths"], path=path, name="paths")
        for name in ("labels", "groups"):
            if name in archive.files:
                metadata["group"] = _label_strings(archive[name], path=path, name=name)
                break
        if "splits" in archive.files:
            metadata["split"] = _label_strings(archive["splits"], path=path, name="splits")
        for name in ("durations", "duration_s"):
            if name in archive.files:
                metadata["duration_s"] = [float(v) for v in archive[name].tolist()]
                break
        if "model" in archive.files:
            model = archive["model"]
            metadata["model"] = ([str(model.item())] * len(track_ids) if model.ndim == 0
                                 else _label_strings(model, path=path, name="model"))
    return track_ids, vectors, metadata


def _load_parquet(path: str) -> tuple[list[str], np.ndarray, dict[str, list[Any]]]:
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    missing = [name for name in ("track_id", "embedding") if name not in table.column_names]
    if missing:
        raise ValueError(f"{path}: missing columns {missing} (has {table.column_names})")
    raw_ids = table.column("track_id").to_pylist()
    nulls = [row for row, value in enumerate(raw_ids) if value is None]
    if nulls:
        raise ValueError(f"{path}: {len(nulls)} rows have a null track_id (first at row {nulls[0]})")
    track_ids = _as_str_list(raw_ids)
    column = table.column("embedding").combine_chunks()
    if column.null_count:
        raise ValueError(f"{path}: {column.null_count} rows have no embedding")
    count = len(column)
    if count == 0:
        raise ValueError(f"{path}: no rows")
    flat = np.asarray(column.flatten().to_numpy(zero_copy_only=False), dtype=np.float32)
    if hasattr(column, "value_lengths"):
        lengths = np.asarray(column.value_lengths().to_numpy(zero_copy_only=False))
    else:  # fixed-size lists
        lengths = np.full(count, flat.size // count)
    if lengths.min() != lengths.max():
        raise ValueError(f"{path}: embeddings have different lengths ({lengths.min()} to {lengths.max()})")
    vectors = flat.reshape(count, int(lengths[0]))
    metadata: dict[str, list[Any]] = {}
    for source, target in (("path", "path"), ("duration_s", "duration_s"), ("model", "model"),
                           ("group", "group"), ("labels", "group")):
        if source in table.column_names and target not in metadata:
            metadata[target] = table.column(source).to_pylist()
    if "group" in metadata:  # a list of labels per track becomes one '|'-joined group, as in tracks.csv
        metadata["group"] = ["|".join(map(str, g)) if isinstance(g, (list, tuple)) else g for g in metadata["group"]]
    return track_ids, vectors, metadata


def _check_file_ids(track_ids: Sequence[str], *, path: str) -> None:
    """Raise ValueError naming ``path`` for empty or repeated track ids."""
    empty = [row for row, tid in enumerate(track_ids) if not tid]
    if empty:
        raise ValueError(f"{path}: {len(empty)} track ids are empty (first at row {empty[0]})")
    duplicates = sorted(tid for tid, n in Counter(track_ids).items() if n > 1)
    if duplicates:
        raise ValueError(f"{path}: {len(duplicates)} track ids appear more than once, e.g. {duplicates[:3]}")


def _load_npy(path: str) -> tuple[list[str], np.ndarray, dict[str, list[Any]]]:
    stem = os.path.splitext(path)[0]
    json_path, text_path = stem + ".ids.json", stem + ".ids.txt"
    if os.path.isfile(json_path):
        try:
            with open(json_path) as f:
                track_ids = json.load(f)
        except (OSError, ValueError) as error:
            raise ValueError(f"cannot read the track ids {json_path}: {error}") from error
        if not isinstance(track_ids, list) or not all(isinstance(t, str) for t in track_ids):
            raise ValueError(f"{json_path}: expected a JSON array of track id strings")
    elif os.path.isfile(text_path):
        with open(text_path) as f:
            track_ids = [line.rstrip("\n") for line in f if line.strip()]
    else:
        raise FileNotFoundError(f"{path}: a .npy embeddings file needs its track ids in {json_path} "
                                "(a JSON array of strings)")
    try:
        vectors = np.load(path, allow_pickle=False)
    except Exception as error:  # noqa: BLE001 - numpy raises EOFError, ValueError, OSError, ...
        raise ValueError(f"cannot read embeddings {path}: {type(error).__name__}: {error}") from error
    return track_ids, vectors, {}


def read_provenance(path: str) -> dict[str, str | None]:
    """What made an embeddings file, as far as the file says.

    Parquet exports carry schema metadata ``musicsim.model`` / ``musicsim.model_dir`` /
    ``musicsim.relevance``; a ``.npy`` export has ``<stem>.meta.json`` beside it; a run's own
    ``embeddings.npz`` lies in its run folder (with ``run.json``).

    Returns
    -------
    dict
        ``model``, ``model_dir``, ``similarity``: str, or None when unknown.
    """
    found: dict[str, Any] = {}
    suffix = os.path.splitext(path)[1].lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            schema_metadata = pq.read_schema(path).metadata or {}
        except Exception as error:  # noqa: BLE001 - pyarrow raises ArrowInvalid, OSError, ...
            raise ValueError(f"cannot read embeddings {path}: {error}") from error
        for key in ("model", "model_dir", "similarity"):
            value = schema_metadata.get(f"musicsim.{key}".encode())
            found[key] = value.decode("utf-8") if value else None
    elif suffix == ".npy":
        meta_path = os.path.splitext(path)[0] + ".meta.json"
        if os.path.isfile(meta_path):
            try:
                with open(meta_path) as f:
                    meta = json.load(f)
            except (OSError, ValueError) as error:
                raise ValueError(f"cannot read {meta_path}: {error}") from error
            if not isinstance(meta, dict):
                raise ValueError(f"{meta_path}: expected a JSON object")
            found = {key: meta.get(key) for key in ("model", "model_dir", "similarity")}
    elif suffix == ".npz":
        beside = os.path.dirname(os.path.abspath(path))
        if os.path.exists(os.path.join(beside, "run.json")):
            found["model_dir"] = beside
    model_dir = found.get("model_dir")
    if model_dir and not os.path.isabs(model_dir):
        # A relative model_dir was written from some working directory: try here, then beside the file.
        beside = os.path.join(os.path.dirname(os.path.abspath(path)), model_dir)
        found["model_dir"] = model_dir if os.path.isdir(model_dir) or not os.path.isdir(beside) else beside
    return {key: (str(found[key]) if found.get(key) else None) for key in ("model", "model_dir", "similarity")}


# ---------------------------------------------------------------------- CLI
def _run_similarity(model_dir: str) -> str | None:
    """The similarity a run's embeddings are compared with, from its results.json or run.json (or a
    fitted model's fitted_model.json)."""
    for name in ("results.json", "run.json", "fitted_model.json"):
        path = os.path.join(model_dir, name)
        try:
            with open(path) as f:
                record = json.load(f)
        except (OSError, ValueError):
            continue
        if not isinstance(record, dict):
            continue
        params = (record.get("config") or {}).get("params") or {} if isinstance(record.get("config"), dict) else {}
        similarity = record.get("similarity") or params.get("similarity")
        if similarity in SIMILARITIES:
            return similarity
    return None


def run_embedding_dim(*, model_dir: str) -> int:
    """The dimension of the embeddings a run (or a saved fitted model) makes.

    Read from ``fitted_model.json``, else the header of the run's ``embeddings.npz``, else the
    run's recorded hyperparameters through its embedder.
    """
    import zipfile

    from musicsim.embedder import FITTED_CONFIG_FILE, load_embedder

    fitted = os.path.join(model_dir, FITTED_CONFIG_FILE)
    if os.path.isfile(fitted):
        try:
            with open(fitted) as f:
                dim = json.load(f).get("dim")
            if isinstance(dim, int) and not isinstance(dim, bool):
                return dim
        except (OSError, ValueError, AttributeError):
            pass
    archive_path = os.path.join(model_dir, "embeddings.npz")
    if os.path.isfile(archive_path):
        try:  # the array's header only: the shape without reading the vectors
            with zipfile.ZipFile(archive_path) as archive, archive.open("embeddings.npy") as member:
                version = np.lib.format.read_magic(member)
                shape = np.lib.format._read_array_header(member, version)[0]
            if len(shape) == 2:
                return int(shape[1])
        except (OSError, KeyError, ValueError, zipfile.BadZipFile):
            pass
    return int(load_embedder(model_dir).dim)


def _resolve_model(*, embeddings: str, dim: int, file_models: Sequence[str], model_dir: str | None,
                   model_name: str | None) -> dict[str, Any]:
    """The model record of an index built from ``embeddings`` ([N, ``dim``] vectors): the run
    given, else the one the file names; the run must exist, be the file's model and make
    ``dim``-d embeddings.

    Returns
    -------
    dict
        ``name``, ``model_dir`` (absolute), ``dim``, ``similarity`` (the run's), ``embeddings``;
        entries that are unknown are left out.
    """
    from musicsim.embedder import read_run_info

    provenance = read_provenance(embeddings)
    source = "--model_dir"
    if model_dir is None and provenance["model_dir"]:
        model_dir, source = provenance["model_dir"], f"the metadata of {embeddings}"
    names = sorted(set(file_models) | ({provenance["model"]} if provenance["model"] else set()))
    if len(names) > 1:
        raise ValueError(f"{embeddings}: embeddings come from several models {names}; build one index per model")
    if model_name and names and names[0] != model_name:
        raise ValueError(f"--model={model_name} but {embeddings} says its embeddings come from {names[0]!r}")
    model: dict[str, Any] = {"name": model_name or (names[0] if names else None),
                             "similarity": provenance["similarity"], "embeddings": os.path.abspath(embeddings)}
    if model_dir is not None:
        model_dir = os.path.abspath(model_dir)
        try:
            info = read_run_info(model_dir)
        except FileNotFoundError as error:
            hint = "" if source == "--model_dir" else "; name the run with --model_dir=RUN"
            raise FileNotFoundError(f"the run {model_dir} (from {source}) cannot be used: {error}{hint}") from None
        run_name = str(info["model"])
        if model["name"] and model["name"] != run_name:
            raise ValueError(f"{embeddings} holds {model['name']!r} embeddings but {model_dir} is a {run_name!r} run")
        run_dim = run_embedding_dim(model_dir=model_dir)
        if run_dim != dim:
            raise ValueError(f"dimension mismatch: {embeddings} holds {dim}-d embeddings but the run {model_dir} "
                             f"({run_name}) makes {run_dim}-d ones; were they exported from another run?")
        model.update(name=run_name, model_dir=model_dir, dim=run_dim,
                     similarity=_run_similarity(model_dir) or model["similarity"])
    return {key: value for key, value in model.items() if value is not None}


def build_index(*, embeddings: str, output: str, similarity: str | None = None, approximate: str | None = None,
                model_dir: str | None = None, model_name: str | None = None, overwrite: bool = False,
                backend: str = "faiss", uri: str | None = None, collection: str | None = None) -> IndexBackend:
    """Build an index from an embeddings file and save it to ``output``.

    The model is ``model_dir`` when given, else the run the file names (a parquet's or a
    ``.meta.json``'s ``model_dir``, or the run folder holding an ``embeddings.npz``); it must exist,
    and make embeddings of the file's dimension. ``similarity`` defaults to the run's (else cosine).
    ``backend='milvus'`` puts the vectors in the Milvus ``collection`` at ``uri`` (a ``PATH.db``
    Milvus Lite file or ``http://host:19530``), and ``output`` records where.

    Raises
    ------
    ValueError
        For a bad file, a run of another model or dimension, or an ``output`` that is a folder
        other than an index (unless ``overwrite``).
    FileNotFoundError
        For a missing file or run.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "milvus" and not (uri and collection):
        raise ValueError("the milvus backend needs --uri (a PATH.db file or http://host:19530) and --collection")
    if backend == "faiss" and (uri or collection):
        raise ValueError("--uri and --collection are for --backend=milvus")
    output = os.path.abspath(output)
    check_output_directory(directory=output, overwrite=overwrite)  # before the expensive part
    track_ids, vectors, metadata = load_embeddings(embeddings)
    file_models = sorted(set(str(m) for m in metadata.pop("model", []) if m is not None))
    model = _resolve_model(embeddings=embeddings, dim=int(vectors.shape[1]), file_models=file_models,
                           model_dir=model_dir, model_name=model_name)
    if similarity is None:
        similarity = model.get("similarity") if model.get("similarity") in SIMILARITIES else "cosine"
    arguments = dict(track_ids=track_ids, vectors=vectors, similarity=similarity, metadata=metadata,
                     model={key: value for key, value in model.items() if key != "similarity"},
                     approximate=approximate)
    if backend == "milvus":
        from musicsim.index_milvus import MilvusIndex, is_local_uri

        if is_local_uri(uri) and os.path.commonpath([output, os.path.abspath(uri)]) == output:
            raise ValueError(f"--uri={uri} lies inside --output={output}: keep the Milvus Lite file outside the "
                             "index directory")
        index: IndexBackend = MilvusIndex(uri=uri, collection=collection, overwrite=overwrite, **arguments)
    else:
        index = EmbeddingIndex(**arguments)
    try:
        index.save(output, overwrite=overwrite)
    finally:
        index.close()
    return index


def add_to_index(*, index_dir: str, embeddings: str, replace: bool = False,
                 model_dir: str | None = None) -> tuple[IndexBackend, int, int]:
    """Add the tracks of an embeddings file to a saved index and save it again (atomically).

    The file must come from the index's model (same checks as ``build_index``). Ids already in
    the index raise ValueError, or with ``replace`` have their vector and metadata replaced.

    Returns
    -------
    index : EmbeddingIndex
        The updated index.
    added : int
        New tracks.
    replaced : int
        Tracks that were in the index already.
    """
    index = EmbeddingIndex.load(index_dir)
    track_ids, vectors, metadata = load_embeddings(embeddings)
    file_models = sorted(set(str(m) for m in metadata.pop("model", []) if m is not None))
    model = _resolve_model(embeddings=embeddings, dim=int(vectors.shape[1]), file_models=file_models,
                           model_dir=model_dir, model_name=None)
    for key in ("name", "model_dir"):
        if key in model and key in index.model and model[key] != index.model[key]:
            raise ValueError(f"{embeddings} comes from {key}={model[key]!r} but the index {index_dir} holds "
                             f"embeddings of {key}={index.model[key]!r}")
    if vectors.shape[1] != index.dim:
        raise ValueError(f"dimension mismatch: {embeddings} holds {vectors.shape[1]}-d embeddings, the index "
                         f"{index_dir} {index.dim}-d ones")
    present = [t for t in track_ids if t in index]
    if present and not replace:
        raise ValueError(f"{embeddings}: {len(present)} track ids are already in the index {index_dir}, e.g. "
                         f"{present[:3]}; pass --replace to replace them")
    try:
        if present:
            index.remove(track_ids=present)
        index.add(track_ids=track_ids, vectors=vectors, metadata=metadata)
        index.save(index_dir)
    finally:
        index.close()
    return index, len(track_ids) - len(present), len(present)


def remove_from_index(*, index_dir: str, track_ids: Sequence[str]) -> IndexBackend:
    """Remove tracks from a saved index and save it again (atomically); unknown ids raise ValueError."""
    index = EmbeddingIndex.load(index_dir)
    try:
        index.remove(track_ids=track_ids)
        index.save(index_dir)
    finally:
        index.close()
    return index


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m musicsim.index ...``; returns the exit status (2 on a usage or input error)."""
    parser = argparse.ArgumentParser(prog="python -m musicsim.index", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build", help="build an index from an embeddings file")
    build.add_argument("--embeddings", required=True, help=".npz, .parquet or .npy (+ .ids.json)")
    build.add_argument("--output", required=True, help="index directory to write")
    build.add_argument("--similarity", choices=SIMILARITIES, default=None,
                       help="default: the run's own (cosine when unknown)")
    build.add_argument("--approximate", choices=APPROXIMATE_KINDS, default=None)
    build.add_argument("--model_dir", default=None,
                       help="the run the embeddings come from (default: the one the embeddings file names)")
    build.add_argument("--model", default=None, help="model name, if the embeddings file does not say")
    build.add_argument("--overwrite", action="store_true",
                       help="replace --output even if it is a folder that holds no index (and, for milvus, "
                            "an existing --collection)")
    build.add_argument("--backend", choices=BACKENDS, default="faiss")
    build.add_argument("--uri", default=None, help="milvus: a PATH.db Milvus Lite file, or http://host:19530")
    build.add_argument("--collection", default=None, help="milvus: the collection to create")
    add = commands.add_parser("add", help="add the tracks of an embeddings file to an index")
    add.add_argument("--index", required=True)
    add.add_argument("--embeddings", required=True)
    add.add_argument("--model_dir", default=None, help="the run the embeddings come from, if the file does not say")
    add.add_argument("--replace", action="store_true", help="replace tracks already in the index")
    remove = commands.add_parser("remove", help="remove tracks from an index")
    remove.add_argument("--index", required=True)
    remove.add_argument("--track_id", required=True, nargs="+", action="extend", help="one or more track ids")
    args = parser.parse_args(argv)
    try:
        if args.command == "build":
            index = build_index(embeddings=args.embeddings, output=args.output, similarity=args.similarity,
                                approximate=args.approximate, model_dir=args.model_dir, model_name=args.model,
                                overwrite=args.overwrite, backend=args.backend, uri=args.uri,
                                collection=args.collection)
            print(f"{index.summary()} -> {os.path.abspath(args.output)}")
        elif args.command == "add":
            index, added, replaced = add_to_index(index_dir=args.index, embeddings=args.embeddings,
                                                  replace=args.replace, model_dir=args.model_dir)
            print(f"added {added}, replaced {replaced}: {index.summary()} -> {os.path.abspath(args.index)}")
        else:
            index = remove_from_index(index_dir=args.index, track_ids=args.track_id)
            print(f"removed {len(set(args.track_id))}: {index.summary()} -> {os.path.abspath(args.index)}")
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
