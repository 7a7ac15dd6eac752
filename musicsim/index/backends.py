"""The interface every similarity-search index implements, and what the implementations share.

Two backends implement ``IndexBackend`` (``musicsim.index.registry.BACKENDS`` is the table of them by name):

* ``faiss`` (``musicsim.index.faiss_index.FaissIndex``; the default): vectors in
  memory, exact (flat) or IVF / HNSW search, saved as files in the index directory;
* ``milvus`` (``musicsim.index.milvus.MilvusIndex``): vectors in a Milvus collection, either a
  Milvus Lite file (embedded, one process at a time) or a Milvus server (``http://host:19530``);
  the index directory holds only its ``config.json``, naming the collection.

Both take the same arguments and raise the same errors: ids are unique non-empty strings, vectors
[N, D] finite (unit length for cosine), queries [Q, D] of the index's dimension; ``search``
excludes ids and groups per query and re-ranks by maximal marginal relevance (``diversity``).
``musicsim.index.open(DIR)`` opens any kind, as the directory's config.json says.

Catalog standardisation (``standardise=True``, label-free): the index keeps each track's raw vector
as given, computes every dimension's mean and standard deviation over the catalog it holds
(``catalog_statistics``; recomputed on every add / remove), and searches
``((raw - mean) / std) * dimension_weights`` (unit length for cosine; ``standardised_rows``). So
``vectors`` / ``vector`` are vectors of the searched space (what ``search(queries=...)`` takes and
what the catalog map and playlists compare), ``raw_vector`` the stored raw one, and a query embedded
from a file goes through ``prepare_query(raw)`` first: the same statistics as the catalog. For an
index that does not standardise, ``prepare_query`` returns its input.

A new backend is an ``IndexBackend`` subclass in a module of its own (with ``backend``, its name in
config.json, ``open_directory`` and, when it keeps its vectors elsewhere, ``check_location`` / ``create``)
and one line in that table.

The package's imports go one way: ``errors``, ``vectors``, ``storage``, ``lock`` (leaves), then this
interface and the backends, then the table (``registry``), then ``build`` and ``cli``.
"""
from __future__ import annotations

import abc
import os
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from musicsim.index.vectors import MAX_DIVERSITY_POOL, Result, as_str_list, id_defects, standardised_rows
from musicsim.rerank import RerankSettings


class IndexBackend(abc.ABC):
    """k-nearest-neighbour search over track embeddings: what every backend offers.

    Subclasses set ``similarity`` (str), ``model`` (dict), ``approximate`` (None, 'ivf', 'hnsw')
    and ``_dim`` (int), and implement the abstract methods; argument checks are shared here so
    every backend refuses bad input with the same errors.
    """

    backend = "abstract"
    # Whether the backend can apply re-ranking (``check_index_rerank``), and the re-ranking the index applies.
    reranks: bool = False
    rerank: RerankSettings = RerankSettings()
    similarity: str
    model: dict[str, Any]
    approximate: str | None
    _dim: int
    # Catalog standardisation (see the module docstring): off for indexes saved before it existed.
    standardise: bool = False
    dimension_weights: np.ndarray | None = None
    # config.json's write counter: bumped by every successful save (``storage.read_version``).
    version: int = 0

    # ------------------------------------------------------------------ what a backend implements
    @abc.abstractmethod
    def __len__(self) -> int:
        """Number of tracks."""

    @abc.abstractmethod
    def __contains__(self, track_id: object) -> bool:
        """Whether a track id is in the index."""

    @property
    def dim(self) -> int:
        """Embedding dimension D."""
        return self._dim

    @property
    @abc.abstractmethod
    def track_ids(self) -> list[str]:
        """Every track id."""

    @property
    @abc.abstractmethod
    def metadata_columns(self) -> list[str]:
        """Names of the per-track metadata columns (e.g. ``path``, ``group``)."""

    @abc.abstractmethod
    def vector(self, *, track_id: str) -> np.ndarray:
        """The vector of one track in the searched space, shape [D] (unit for cosine; standardised when the
        index standardises); ValueError for an unknown id."""

    @property
    @abc.abstractmethod
    def vectors(self) -> np.ndarray:
        """Every track's vector in the searched space, shape [N, D] float32, rows in ``track_ids`` order."""

    def raw_vector(self, *, track_id: str) -> np.ndarray:
        """The vector of one track as it was given, shape [D] (before standardisation); for an index that does
        not standardise, ``vector`` (cosine indexes keep unit vectors only)."""
        return self.vector(track_id=track_id)

    def catalog_statistics(self) -> tuple[np.ndarray, np.ndarray]:
        """The per-dimension mean and scale [D] the index standardises by (mean 0, scale 1 when it does not)."""
        return np.zeros(self._dim), np.ones(self._dim)

    def prepare_query(self, raw_vectors: np.ndarray) -> np.ndarray:
        """Query vectors as the index searches them: a raw embedding (e.g. of an uploaded file) [D] or [Q, D]
        standardised with the catalog's statistics and weights, same shape, float32; returned as given (as
        float32) by an index that does not standardise. ``search`` then normalises cosine queries."""
        matrix = np.asarray(raw_vectors)
        if matrix.ndim not in (1, 2) or matrix.shape[-1] != self._dim:
            raise ValueError(f"a raw query must have shape [D] or [Q, D] with D={self._dim}, got {matrix.shape}")
        if not np.issubdtype(matrix.dtype, np.number) or not np.isfinite(matrix).all():
            raise ValueError("a raw query must be finite real numbers")
        if not self.standardise:
            return matrix.astype(np.float32)
        mean, scale = self.catalog_statistics()
        rows = standardised_rows(raw_vectors=matrix.reshape(-1, self._dim), mean=mean, scale=scale,
                                 dimension_weights=self.dimension_weights, similarity="euclidean")
        return rows.reshape(matrix.shape)

    @abc.abstractmethod
    def metadata(self, *, track_id: str) -> dict[str, Any]:
        """All metadata columns of one track; ValueError for an unknown id."""

    def group(self, *, track_id: str) -> Any:
        """The track's ``group`` metadata (None when absent)."""
        return self.metadata(track_id=track_id).get("group")

    @abc.abstractmethod
    def track_id_of_path(self, *, path: str) -> str | None:
        """The id of the track whose ``path`` metadata is the file ``path`` (by real path), if any."""

    def search_mode(self) -> str:
        """``exact``, or the approximate structure with its parameters, for summaries."""
        mode = "exact" if self.approximate is None else self.approximate
        if self.approximate == "ivf":
            mode += f"(nlist={self.nlist}, nprobe={self.nprobe})"
        elif self.approximate == "hnsw":
            mode += f"(M={self.hnsw_m}, efSearch={self.ef_search})"
        return mode

    @abc.abstractmethod
    def summary(self) -> str:
        """One line describing the index."""

    @abc.abstractmethod
    def search(self, *, queries: np.ndarray, k: int = 10,
               exclude_ids: Sequence[Iterable[str] | str | None] | None = None,
               exclude_groups: Sequence[Iterable[Any] | str | None] | None = None,
               diversity: float = 0.0, candidate_pool: int | None = None,
               nprobe: int | None = None, ef_search: int | None = None,
               query_model: Mapping[str, Any] | str | None = None, rerank: bool = True,
               query_track_ids: Sequence[str | None] | None = None) -> list[Result]:
        """The k most similar tracks to each query [Q, D]; see ``FaissIndex.search``."""

    @abc.abstractmethod
    def add(self, *, track_ids: Sequence[str], vectors: np.ndarray,
            metadata: Mapping[str, Sequence[Any]] | None = None, replace: bool = False) -> None:
        """Add tracks [N] with raw vectors [N, D]; ids already present raise ValueError unless ``replace``."""

    @abc.abstractmethod
    def remove(self, *, track_ids: Sequence[str]) -> None:
        """Remove tracks; unknown ids raise ValueError (and nothing is removed)."""

    @abc.abstractmethod
    def save(self, directory: str, *, overwrite: bool = False) -> None:
        """Write the index directory atomically, bumping its ``version`` (``musicsim.index.open`` opens
        it); the caller holds ``musicsim.index.lock.index_lock``."""

    @classmethod
    @abc.abstractmethod
    def open_directory(cls, *, source: str, config: Mapping[str, Any]) -> "IndexBackend":
        """The index saved in the folder ``source`` whose config.json is ``config`` (``musicsim.index.open``
        calls this)."""

    @classmethod
    def check_location(cls, *, uri: str | None, collection: str | None) -> dict[str, Any]:
        """Where a new index of this backend keeps its vectors, from ``--uri`` / ``--collection``: the keyword
        arguments ``create`` takes as ``location``; ValueError for options the backend does not take.
        The default: the index folder itself (no uri, no collection)."""
        if uri or collection:
            raise ValueError(f"--uri and --collection are not for the {cls.backend} backend")
        return {}

    @classmethod
    def create(cls, *, output: str, overwrite: bool, location: Mapping[str, Any], rerank: RerankSettings,
               **arguments: Any) -> "IndexBackend":
        """A new index of this backend, about to be saved to ``output`` (``build_index_from_vectors`` calls this):
        ``arguments`` are the constructor's (track_ids, vectors, similarity, metadata, model, approximate,
        standardise, dimension_weights), ``location`` is ``check_location``'s. The default: the constructor."""
        return cls(**location, **arguments, **({"rerank": rerank} if cls.reranks else {}))

    def close(self) -> None:
        """Release what the index holds open (a database connection); the default holds nothing."""

    def shares_connection_with(self, other: "IndexBackend") -> bool:
        """Whether closing this index would close ``other``'s connection too (the default: they share nothing);
        a server that swaps index versions then closes only the newer one."""
        return False

    def __repr__(self) -> str:
        return self.summary()

    # ------------------------------------------------------------------ shared
    def search_by_id(self, *, track_id: str, k: int = 10, exclude_self: bool = True,
                     exclude_same_group: bool = False, diversity: float = 0.0,
                     candidate_pool: int | None = None, nprobe: int | None = None,
                     ef_search: int | None = None, rerank: bool = True) -> Result:
        """The k tracks most similar to a track already in the index (see ``search``).

        The query is the track's searched vector (``searched_vector``); ``rerank=False`` searches
        without the index's query expansion. The track never expands itself.
        """
        query = self.searched_vector(track_id=track_id)
        exclude_groups = None
        if exclude_same_group:
            if "group" not in self.metadata_columns:
                raise ValueError("exclude_same_group needs 'group' metadata, and this index has none "
                                 f"(columns: {self.metadata_columns})")
            exclude_groups = [[self.group(track_id=track_id)]]
        return self.search(queries=query[None, :], k=k, exclude_ids=[[track_id]] if exclude_self else None,
                           exclude_groups=exclude_groups, diversity=diversity,
                           candidate_pool=candidate_pool, nprobe=nprobe, ef_search=ef_search, rerank=rerank,
                           query_track_ids=[track_id])[0]

    def searched_vector(self, *, track_id: str) -> np.ndarray:
        """The vector [D] the index searches for this track: ``vector`` unless the index augments its
        catalog (re-ranking ``dba``)."""
        return self.vector(track_id=track_id)

    def _check_search_arguments(self, *, queries: np.ndarray, k: int,
                                exclude_ids: Sequence[Iterable[str] | str | None] | None,
                                exclude_groups: Sequence[Iterable[Any] | str | None] | None,
                                diversity: float, candidate_pool: int | None,
                                query_model: Mapping[str, Any] | str | None) -> tuple[int, np.ndarray]:
        """Validate ``search``'s arguments; returns k as int and the prepared queries [Q, D] float32."""
        if isinstance(k, bool) or int(k) != k or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        k = int(k)
        if not 0.0 <= float(diversity) <= 1.0:
            raise ValueError(f"diversity must be in [0, 1], got {diversity}")
        if candidate_pool is not None and int(candidate_pool) < 1:
            raise ValueError(f"candidate_pool must be >= 1, got {candidate_pool}")
        matrix = self._prepare_queries(queries, query_model=query_model)
        query_count = matrix.shape[0]
        for name, value in (("exclude_ids", exclude_ids), ("exclude_groups", exclude_groups)):
            if value is None:
                continue
            if isinstance(value, (str, bytes)):
                raise ValueError(f"{name} must be a list with one entry per query ({query_count}), "
                                 f"got the single string {value!r}")
            if len(value) != query_count:
                raise ValueError(f"{name} must be a list with one entry per query ({query_count}), "
                                 f"got {len(value)} entries")
        if exclude_groups is not None and "group" not in self.metadata_columns:
            raise ValueError("exclude_groups needs 'group' metadata, and this index has none "
                             f"(columns: {self.metadata_columns})")
        return k, matrix

    @staticmethod
    def _fetch_target(*, k: int, count: int, diversity: float, candidate_pool: int | None) -> int:
        """Candidates to rank per query: k, or the diversity pool (capped at ``MAX_DIVERSITY_POOL``)."""
        target = k
        if diversity > 0:
            if min(k, count) > MAX_DIVERSITY_POOL:
                raise ValueError(f"diversity re-ranking returns at most {MAX_DIVERSITY_POOL} results, got "
                                 f"k={k} on {count} tracks: lower k, or search with diversity=0")
            target = max(k, int(candidate_pool) if candidate_pool is not None else max(10 * k, 100))
            target = min(target, MAX_DIVERSITY_POOL)
        target = min(target, count)
        return target

    @staticmethod
    def _check_ids(track_ids: Sequence[str], *, name: str) -> list[str]:
        if isinstance(track_ids, (str, bytes)):
            raise ValueError(f"{name} must be a sequence of track ids, got a single string {track_ids!r}")
        ids = as_str_list(track_ids)
        empty, duplicates = id_defects(ids)
        if empty:
            raise ValueError(f"{name} has empty ids at positions {empty[:5]}")
        if duplicates:
            raise ValueError(f"{name} has duplicate ids: {duplicates[:5]}"
                             f"{' ...' if len(duplicates) > 5 else ''}")
        return ids

    def _check_vectors(self, vectors: np.ndarray, *, count: int, dim: int | None, name: str,
                       ids: Sequence[str]) -> np.ndarray:
        matrix = np.asarray(vectors)
        if matrix.ndim != 2:
            raise ValueError(f"{name} must have shape [N, D], got shape {matrix.shape}")
        if not np.issubdtype(matrix.dtype, np.number) or np.iscomplexobj(matrix):
            raise ValueError(f"{name} must be real numbers, got dtype {matrix.dtype}")
        if matrix.shape[0] != count:
            raise ValueError(f"{name} has {matrix.shape[0]} rows but {count} track ids were given")
        if dim is not None and matrix.shape[1] != dim:
            raise ValueError(f"{name} dimension mismatch: expected {dim} (the index's), got {matrix.shape[1]}")
        if matrix.shape[1] < 1:
            raise ValueError(f"{name} must have at least one dimension, got shape {matrix.shape}")
        matrix = np.ascontiguousarray(matrix, dtype=np.float32)
        finite = np.isfinite(matrix).all(axis=1)
        if not finite.all():
            bad = [ids[i] for i in np.flatnonzero(~finite)[:5]]
            raise ValueError(f"{name} has non-finite values (nan/inf) for tracks {bad}")
        if self.similarity == "cosine" and not self.standardise:  # a standardising index keeps the raw vectors
            matrix = self._normalise(matrix, name=name, ids=ids)
        return matrix

    @staticmethod
    def _normalise(matrix: np.ndarray, *, name: str, ids: Sequence[str] | None) -> np.ndarray:
        norms = np.linalg.norm(matrix, axis=1, keepdims=True)
        zero = norms[:, 0] == 0
        if zero.any():
            which = np.flatnonzero(zero)[:5]
            where = [ids[i] for i in which] if ids is not None else which.tolist()
            raise ValueError(f"{name} has zero vectors (cosine similarity is undefined) at {where}")
        return np.ascontiguousarray(matrix / norms, dtype=np.float32)

    @staticmethod
    def _check_metadata(metadata: Mapping[str, Sequence[Any]] | None, *, count: int) -> dict[str, list[Any]]:
        columns: dict[str, list[Any]] = {}
        for column, values in (metadata or {}).items():
            if not isinstance(column, str) or not column:
                raise ValueError(f"metadata column names must be non-empty strings, got {column!r}")
            if values is None:
                continue
            values = [v.item() if isinstance(v, np.generic) else v for v in values]
            if len(values) != count:
                raise ValueError(f"metadata column {column!r} has {len(values)} values for {count} tracks")
            if column == "group":
                bad = [v for v in values if v is not None and not isinstance(v, (str, int, float, bool))]
                if bad:
                    raise ValueError(f"metadata column 'group' must hold strings or numbers (one group per "
                                     f"track), got {type(bad[0]).__name__} {bad[0]!r}")
            columns[column] = values
        return columns

    def _prepare_queries(self, queries: np.ndarray, *, query_model: Mapping[str, Any] | str | None) -> np.ndarray:
        self.check_model(query_model=query_model)
        matrix = np.asarray(queries)
        if matrix.ndim != 2:
            raise ValueError(f"queries must have shape [Q, D] with D={self._dim}, got shape {matrix.shape}"
                             " (wrap a single vector as queries=vector[None, :])")
        if matrix.shape[1] != self._dim:
            model = self.model.get("name") or self.model.get("model_dir") or "the index's model"
            raise ValueError(f"query dimension mismatch: expected {self._dim} (embeddings of {model}), "
                             f"got {matrix.shape[1]}")
        if not np.issubdtype(matrix.dtype, np.number) or np.iscomplexobj(matrix):
            raise ValueError(f"queries must be real numbers, got dtype {matrix.dtype}")
        matrix = np.ascontiguousarray(matrix, dtype=np.float32)
        if not np.isfinite(matrix).all():
            raise ValueError("queries have non-finite values (nan/inf) in rows "
                             f"{np.flatnonzero(~np.isfinite(matrix).all(axis=1))[:5].tolist()}")
        if self.similarity == "cosine":
            matrix = self._normalise(matrix, name="queries", ids=None)
        return matrix

    def check_model(self, *, query_model: Mapping[str, Any] | str | None) -> None:
        """Raise ValueError when ``query_model`` (a name, or a dict with ``name`` / ``model_dir``)
        differs from the model the index was built from. None, or keys the index lacks, pass."""
        if query_model is None:
            return
        if isinstance(query_model, str):
            query_model = {"name": query_model}
        for key in ("name", "model_dir"):
            expected, actual = self.model.get(key), query_model.get(key)
            if expected is None or actual is None:
                continue
            if key == "model_dir":
                same = os.path.abspath(str(expected)) == os.path.abspath(str(actual))
            else:
                same = str(expected) == str(actual)
            if not same:
                raise ValueError(f"query model mismatch: the index was built from {key}={expected!r}, "
                                 f"the queries come from {key}={actual!r}; embed the queries with the same model")
