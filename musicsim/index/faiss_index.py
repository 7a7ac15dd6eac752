"""Similarity-search index over track embeddings, on faiss (paper section 1: "a search engine that,
given a music, returns the most similar musics").

``FaissIndex`` (the default backend) holds one embedding per track in memory and answers
k-nearest-neighbour queries under the paper's two similarities:

* ``cosine``: the dot product of unit vectors (vectors are normalised on the way in);
* ``euclidean``: ``-||a - b||`` (section 5, "Wavenet Variations"), so higher is better for both.

This module holds the catalog (construction, accessors, ``add`` / ``remove``, the faiss structure, its
files); the query side (exact or IVF / HNSW search, exclusions, diversity, query expansion) is
``musicsim.index.faiss_search.FaissSearch``, its base class.

Label-free re-ranking (``musicsim.rerank``, cosine only; ``rerank=`` at construction, recorded in
config.json): with ``dba`` the catalog vectors searched are the augmented ones, computed once over
the whole catalog and recomputed over the whole catalog on every ``add`` / ``remove`` (a track's
neighbours change when tracks arrive or leave); ``vectors`` and ``vector`` stay the tracks' own
embeddings (what the catalog map and playlists read), ``searched_vector`` is what is searched. With
``aqe`` each query is expanded (see ``faiss_search``). For a query by track id of an exact index, the
ranking is ``rerank.catalog_scores``'s row.

Catalog standardisation (``standardise=True``, optional ``dimension_weights``; see
``musicsim.index.backends``): the raw vectors are kept (``raw_vectors.npy``), the statistics are
recomputed over the whole catalog and every searched vector with them on each ``add`` / ``remove``
(the faiss index is rebuilt: every vector moved), and dba augments the standardised vectors.

Its files are ``musicsim.index.faiss_files``'s, its directory and atomic save ``musicsim.index.storage``'s;
``musicsim.index.open(DIR)`` opens it (as any backend).
"""
from __future__ import annotations

import os
from collections import Counter
from typing import Any, Mapping, Sequence

from musicsim.index import faiss_files  # first: it silences faiss's loader before faiss is imported
import faiss  # noqa: E402
import numpy as np  # noqa: E402

from musicsim import rerank as reranking  # noqa: E402
from musicsim.index import storage  # noqa: E402
from musicsim.index.faiss_search import FaissSearch  # noqa: E402
from musicsim.index.vectors import (APPROXIMATE_KINDS, catalog_statistics, check_dimension_weights,  # noqa: E402
                                    check_index_rerank, default_nlist, default_nprobe, describe_rerank,
                                    standardised_rows)
from musicsim.similarity import SIMILARITIES  # noqa: E402

# IVF k-means trains on at most this many points per list: more costs time without improving the
# lists noticeably.
DEFAULT_TRAINING_POINTS_PER_LIST = 64


class FaissIndex(FaissSearch):
    """k-nearest-neighbour search over track embeddings, on faiss (the default backend).

    The shared argument checks and ``search_by_id`` come from ``IndexBackend``, ``search`` from ``FaissSearch``.

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
    rerank : RerankSettings, optional
        Re-ranking applied by the index (default none): ``aqe``, ``dba`` or ``dba+aqe`` of a cosine
        index; any other raises ValueError (``check_index_rerank``).
    standardise : bool
        Catalog standardisation: keep ``vectors`` raw and search them z-scored by the catalog's own
        per-dimension mean and std (recomputed on add / remove); queries from files go through
        ``prepare_query``.
    dimension_weights : array_like, shape [D], optional
        With ``standardise``: multipliers applied after the z-score (e.g. an engine's block weights).
    """

    def __init__(self, *, track_ids: Sequence[str], vectors: np.ndarray, similarity: str = "cosine",
                 metadata: Mapping[str, Sequence[Any]] | None = None,
                 model: Mapping[str, Any] | None = None, approximate: str | None = None,
                 nlist: int | None = None, nprobe: int | None = None, hnsw_m: int = 32,
                 ef_construction: int = 80, ef_search: int = 64,
                 training_points_per_list: int = DEFAULT_TRAINING_POINTS_PER_LIST,
                 seed: int = 0, rerank: reranking.RerankSettings | None = None, standardise: bool = False,
                 dimension_weights: np.ndarray | None = None) -> None:
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
        self.rerank = check_index_rerank(settings=rerank or reranking.RerankSettings(), similarity=similarity,
                                         backend=self.backend, reranks=self.reranks)
        self.standardise = bool(standardise)
        self.version = 0

        ids = self._check_ids(track_ids, name="track_ids")
        matrix = self._check_vectors(vectors, count=len(ids), dim=None, name="vectors", ids=ids)
        self._dim = int(matrix.shape[1])
        self.dimension_weights = check_dimension_weights(dimension_weights, dim=self._dim,
                                                         standardise=self.standardise)
        self._ids: list[str] = ids
        self._row_of: dict[str, int] = {tid: row for row, tid in enumerate(ids)}
        # With standardisation: the raw vectors as given (what is saved), else None.
        self._raw_vectors: np.ndarray | None = matrix if self.standardise else None
        # The tracks' own vectors in the searched space, and the searched ones (_vectors: augmented with dba,
        # else the same array); _refresh_vectors sets both.
        self._original_vectors = matrix
        self._vectors = matrix
        self._refresh_vectors()
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
    reranks = True

    def _refresh_vectors(self) -> None:
        """The searched-space vectors of the catalog: standardised by its current statistics (when the
        index standardises), then augmented (dba)."""
        if self.standardise:
            self._mean, self._scale = catalog_statistics(raw_vectors=self._raw_vectors)
            self._original_vectors = standardised_rows(raw_vectors=self._raw_vectors, mean=self._mean,
                                                       scale=self._scale, dimension_weights=self.dimension_weights,
                                                       similarity=self.similarity)
        self._vectors = self._augment(self._original_vectors)

    def catalog_statistics(self) -> tuple[np.ndarray, np.ndarray]:
        """The per-dimension mean and scale [D] the index standardises by (mean 0, scale 1 when it does not)."""
        if not self.standardise:
            return np.zeros(self._dim), np.ones(self._dim)
        return self._mean.copy(), self._scale.copy()

    def raw_vector(self, *, track_id: str) -> np.ndarray:
        """The track's vector as given [D] (before standardisation; unit for a cosine index that does not
        standardise)."""
        if not self.standardise:
            return self.vector(track_id=track_id)
        return self._raw_vectors[self._row(track_id)].copy()

    @property
    def raw_vectors(self) -> np.ndarray:
        """The tracks' vectors as given [N, D] float32 (``vectors`` when the index does not standardise);
        a read-only view."""
        view = (self._raw_vectors if self.standardise else self._original_vectors).view()
        view.flags.writeable = False
        return view

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
    def augments(self) -> bool:
        """Whether the searched catalog vectors are augmented (re-ranking ``dba`` or ``dba+aqe``)."""
        return self.rerank.method in ("dba", "dba+aqe")

    def _augment(self, originals: np.ndarray) -> np.ndarray:
        """The searched vectors [N, D] of the tracks' own ``originals`` [N, D]: augmented with ``dba``."""
        count = len(originals)
        if not self.augments or count < 2:
            return originals  # a lone track has no neighbours: it stays itself (a unit vector already)
        k = min(self.rerank.k, count - 1)
        # rerank.augment_database's neighbours, found by faiss's flat search (several times faster than
        # its numpy blocks on large catalogues; memory [N, k + 1]).
        flat = faiss.IndexFlatIP(self._dim)
        flat.add(originals)
        scores, rows = flat.search(originals, k + 1)
        own = rows == np.arange(count)[:, None]
        own[~own.any(axis=1), -1] = True  # an identical track tied ahead of the track itself: drop the last
        scores, rows = scores[~own].reshape(count, k), rows[~own].reshape(count, k)
        return np.ascontiguousarray(reranking.expand(vectors=originals, neighbour_vectors=originals[rows],
                                                     neighbour_scores=scores, alpha=self.rerank.alpha))

    @property
    def vectors(self) -> np.ndarray:
        """The tracks' own vectors in the searched space, shape [N, D] float32 (standardised when the index
        standardises; unit length for cosine), never the augmented ones (see ``searched_vector``); a
        read-only view."""
        view = self._original_vectors.view()
        view.flags.writeable = False
        return view

    @property
    def metadata_columns(self) -> list[str]:
        return sorted(self._metadata)

    def vector(self, *, track_id: str) -> np.ndarray:
        """The track's own vector in the searched space, shape [D] (not augmented)."""
        return self._original_vectors[self._row(track_id)].copy()

    def searched_vector(self, *, track_id: str) -> np.ndarray:
        """The vector [D] searched for this track: augmented with ``dba``, else ``vector``."""
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
        standardised = ", standardised" + (" (weighted)" if self.dimension_weights is not None else "") \
            if self.standardise else ""
        return (f"FaissIndex: {len(self)} tracks, dim {self._dim}, {self.similarity}{standardised}, {mode}, "
                f"{groups} groups, model {model}, rerank {describe_rerank(self.rerank)}")

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

    # ------------------------------------------------------------------ updates
    def add(self, *, track_ids: Sequence[str], vectors: np.ndarray,
            metadata: Mapping[str, Sequence[Any]] | None = None, replace: bool = False) -> None:
        """Add tracks. Repeated ids raise ValueError; so do ids already in the index, unless ``replace``
        (their vector and metadata are then replaced).

        Metadata columns the new tracks lack are filled with None, and new columns are None for
        the tracks already there.
        """
        ids = self._check_ids(track_ids, name="track_ids")
        present = [t for t in ids if t in self._row_of]
        if present and not replace:
            raise ValueError(f"track ids already in the index: {present[:5]}")
        matrix = self._check_vectors(vectors, count=len(ids), dim=self._dim, name="vectors", ids=ids)
        columns = self._check_metadata(metadata, count=len(ids))
        if not ids:
            return
        if present:
            self.remove(track_ids=present)
        labels = np.arange(self._next_label, self._next_label + len(ids), dtype=np.int64)
        old_count = len(self._ids)
        for column in set(self._metadata) | set(columns):
            existing = self._metadata.get(column, [None] * old_count)
            self._metadata[column] = existing + columns.get(column, [None] * len(ids))
        if self.standardise:
            self._raw_vectors = np.ascontiguousarray(np.concatenate([self._raw_vectors, matrix]))
        else:
            self._original_vectors = np.ascontiguousarray(np.concatenate([self._original_vectors, matrix]))
        self._refresh_vectors()
        self._labels = np.concatenate([self._labels, labels])
        self._next_label += len(ids)
        for offset, tid in enumerate(ids):
            self._row_of[tid] = old_count + offset
        self._ids.extend(ids)
        self._group_sizes = None
        self._squared_norms = None
        self._id_array = None
        if self._faiss is None or self.augments or self.standardise:
            # IVF that had nothing to train on yet, augmented vectors that all changed with their neighbours,
            # or standardised ones that all changed with the catalog's statistics.
            self._build_faiss()
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
        if self.standardise:
            self._raw_vectors = np.ascontiguousarray(self._raw_vectors[keep])
        self._original_vectors = np.ascontiguousarray(self._original_vectors[keep])
        self._refresh_vectors()
        self._labels = self._labels[keep]
        self._ids = [t for t, k in zip(self._ids, keep.tolist()) if k]
        self._row_of = {t: row for row, t in enumerate(self._ids)}
        self._metadata = {c: [v for v, k in zip(values, keep.tolist()) if k] for c, values in self._metadata.items()}
        self._group_sizes = None
        self._squared_norms = None
        self._id_array = None
        if self.approximate == "hnsw" or ((self.augments or self.standardise) and len(self._ids)):
            # graphs cannot delete nodes; augmented or standardised vectors changed with the catalog
            self._build_faiss()
        elif self.approximate == "ivf":
            if self._faiss is not None:
                self._faiss.remove_ids(removed_labels)
        else:
            self._faiss.remove_ids(removed_rows)  # compacts in order, like the rows above
            self._labels = np.arange(len(self._ids), dtype=np.int64)
            self._next_label = len(self._ids)

    # ------------------------------------------------------------------ persistence
    def _config(self, *, version: int) -> dict[str, Any]:
        return storage.config_entries(
            backend=self.backend, similarity=self.similarity, dim=self._dim, count=len(self._ids),
            model=self.model, version=version, standardise=self.standardise,
            dimension_weights=self.dimension_weights, approximate=self.approximate, nlist=self.nlist, nprobe=self.nprobe,
            hnsw_m=self.hnsw_m, ef_construction=self.ef_construction, ef_search=self.ef_search,
            training_points_per_list=self.training_points_per_list, seed=self.seed, next_label=self._next_label,
            rerank=self.rerank.to_json())

    def save(self, directory: str, *, overwrite: bool = False) -> None:
        """Write the index to ``directory`` atomically (see ``storage.save_index_directory``).

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
        trained = self.approximate is not None and self._faiss is not None

        def write_files(temp: str, version: int) -> None:
            faiss_files.write_faiss_files(temp, config=self._config(version=version), track_ids=self._ids,
                                      metadata=self._metadata,
                                      vectors=self._raw_vectors if self.standardise else self._original_vectors,
                                      searched_vectors=self._vectors if self.augments else None,
                                      labels=self._labels if trained else None,
                                      faiss_index=self._faiss if trained else None)

        self.version = storage.save_index_directory(directory=directory, write_files=write_files,
                                                    overwrite=overwrite)

    @classmethod
    def open_directory(cls, *, source: str, config: Mapping[str, Any]) -> "FaissIndex":
        """The faiss index saved in ``source`` whose config.json is ``config`` (``musicsim.index.open`` calls this).

        Raises
        ------
        IndexFileError
            If a file of the index is missing, damaged or inconsistent (the message names it).
        """
        return cls._from_files(faiss_files.read_faiss_files(source, config=dict(config)))

    @classmethod
    def _from_files(cls, files: faiss_files.FaissFiles) -> "FaissIndex":
        """The index whose validated files are ``files``; the faiss index is rebuilt when none was stored."""
        index = cls.__new__(cls)
        index.similarity = files.similarity
        index.approximate = files.approximate
        index.model = files.model
        for key in ("nlist", "nprobe", "hnsw_m", "ef_construction", "ef_search", "training_points_per_list", "seed"):
            setattr(index, key, files.settings[key])
        index.rerank = files.rerank
        index.standardise, index.dimension_weights, index.version = (files.standardise, files.dimension_weights,
                                                                     files.version)
        index._dim = int(files.vectors.shape[1])
        index._ids = files.track_ids
        index._row_of = {t: row for row, t in enumerate(index._ids)}
        index._raw_vectors = files.vectors if files.standardise else None
        index._original_vectors = files.vectors
        if files.standardise:
            index._mean, index._scale = catalog_statistics(raw_vectors=files.vectors)
            index._original_vectors = standardised_rows(raw_vectors=files.vectors, mean=index._mean,
                                                        scale=index._scale, dimension_weights=files.dimension_weights,
                                                        similarity=files.similarity)
        index._vectors = files.searched_vectors if files.searched_vectors is not None else index._original_vectors
        index._metadata = files.metadata
        index._group_sizes = None
        index._squared_norms = None
        index._id_array = None
        if files.faiss_index is not None:
            index._labels = files.labels
            index._next_label = files.settings["next_label"]
            index._faiss = files.faiss_index
        else:
            index._labels = np.arange(len(index._ids), dtype=np.int64)
            index._next_label = len(index._ids)
            index._build_faiss()
        return index

