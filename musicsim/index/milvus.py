"""The Milvus backend of the similarity-search index (``--backend=milvus``).

The vectors live in a Milvus collection: a local path ending in ``.db`` runs Milvus Lite embedded
(one process at a time on a file), an ``http://host:19530`` URI uses a Milvus standalone or
cluster. One row per track holds the vector (unit length for cosine), the track id (primary key),
its group, path, the model's name and run, and any other metadata columns (JSON). Exclusion of ids
and groups is a filter expression of the search itself; the scores returned are recomputed
exactly from the stored vectors, as the faiss backend does. Search is exact (FLAT) by default;
``approximate='ivf'`` (IVF_FLAT) and ``'hnsw'`` take the faiss backend's parameter names.

The index directory holds only ``config.json``: backend, URI, collection, similarity, dimension,
approximate-search parameters, model, metadata columns and the track count. ``add`` and ``remove``
change the collection at once; ``save`` flushes it and records the new state in the directory. A
folder whose collection is missing or holds another number of tracks than its config.json says (a
write killed between the two) fails on load with an ``IndexFileError`` saying so.

Replacing a collection never destroys the one in use first: ``overwrite=True`` over an existing
collection builds a new one (``NAME__g<8 hex>``), and only once the folder's config.json names it
(``save``) is the replaced one dropped; a build killed midway leaves the folder on its old, intact
collection (and an unused ``NAME__g...`` collection behind).

Catalog standardisation (``standardise=True``): the collection holds the searched (standardised)
vectors in ``vector`` and the raw ones in the JSON field ``raw``; the statistics they were
standardised with are kept client-side, in config.json. Because every searched vector changes with
the statistics, ``add`` and ``remove`` of a standardising index write the whole catalog into a new
collection (read back from ``raw``) that ``save`` switches to, as above: O(N) per write.

Milvus Lite searches the rows inserted since it was opened by brute force, one call at a time
(about 0.6 s per query at 20k rows), and builds the IVF / HNSW index of flushed rows in the
background; an index opened again (``musicsim.index.open``, e.g. the next command) searches the
indexed rows (tens of ms). Reloading the collection in the process that flushed it races that
background build in milvus-lite 3.2.2 (``LoadCollection failed: No data left in file``), so it is
not done here.

The connection (``connect`` / ``disconnect``, pymilvus's log noise) and the collection's schema are
``musicsim.index.milvus_client``'s.
"""
from __future__ import annotations

import json
import os
import re
import uuid
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from musicsim.index import storage
from musicsim.index.backends import IndexBackend
from musicsim.index.errors import IndexFileError
from musicsim.index.milvus_client import (collection_fields, collection_problem, connect, create_collection, disconnect,
                                          is_local_uri, milvus_list, quiet_pymilvus)
from musicsim.index.vectors import (APPROXIMATE_KINDS, Result, as_group_set, catalog_statistics,
                                    check_dimension_weights, default_nlist, default_nprobe,
                                    maximal_marginal_relevance, similarities_to, standardised_rows)
from musicsim.similarity import SIMILARITIES

# Milvus answers at most this many results per query (its topk limit).
MAX_RESULTS = 16_384
INSERT_BATCH = 2_000  # rows per insert call: well under the 64 MB gRPC message limit at D <= 2048
FILTER_BATCH = 1_000  # ids per "in [...]" lookup
# A collection that replaces another is named BASE__g<8 hex> (see the module docstring).
GENERATION_PATTERN = re.compile(r"__g[0-9a-f]{8}$")


class MilvusIndex(IndexBackend):
    """k-nearest-neighbour search over track embeddings held in a Milvus collection.

    Parameters
    ----------
    uri : str
        A Milvus Lite file (``PATH.db``) or a server URI (``http://host:19530``).
    collection : str
        Collection name; an existing one is refused unless ``overwrite``.
    track_ids, vectors, similarity, metadata, model, approximate, nlist, nprobe, hnsw_m,
    ef_construction, ef_search
        As for ``musicsim.index.faiss_index.FaissIndex``. ``group`` and ``path`` metadata are stored as
        strings; other columns as JSON values.
    overwrite : bool
        Replace an existing collection of that name: the index is built into a new collection
        (``NAME__g<8 hex>``) and the old one is dropped by ``save``, once the folder names the new one.
    standardise, dimension_weights
        Catalog standardisation, as for ``FaissIndex`` (see the module docstring).
    """

    backend = "milvus"

    def __init__(self, *, uri: str, collection: str, track_ids: Sequence[str], vectors: np.ndarray,
                 similarity: str = "cosine", metadata: Mapping[str, Sequence[Any]] | None = None,
                 model: Mapping[str, Any] | None = None, approximate: str | None = None,
                 nlist: int | None = None, nprobe: int | None = None, hnsw_m: int = 32,
                 ef_construction: int = 80, ef_search: int = 64, overwrite: bool = False,
                 standardise: bool = False, dimension_weights: np.ndarray | None = None) -> None:
        if similarity not in SIMILARITIES:
            raise ValueError(f"similarity must be one of {SIMILARITIES}, got {similarity!r}")
        if approximate not in (None,) + APPROXIMATE_KINDS:
            raise ValueError(f"approximate must be None or one of {APPROXIMATE_KINDS}, got {approximate!r}")
        for name, value in (("hnsw_m", hnsw_m), ("ef_construction", ef_construction), ("ef_search", ef_search)):
            if int(value) < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        for name, value in (("nlist", nlist), ("nprobe", nprobe)):
            if value is not None and int(value) < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if not collection or not collection.replace("_", "a").isalnum() or collection[0].isdigit():
            raise ValueError("a Milvus collection name is letters, digits and _ (not first a digit), "
                             f"got {collection!r}")
        self.similarity = similarity
        self.approximate = approximate
        self.model = dict(model or {})
        self.hnsw_m, self.ef_construction, self.ef_search = int(hnsw_m), int(ef_construction), int(ef_search)
        self.standardise = bool(standardise)
        self.version = 0
        ids = self._check_ids(track_ids, name="track_ids")
        matrix = self._check_vectors(vectors, count=len(ids), dim=None, name="vectors", ids=ids)
        columns = self._check_metadata(metadata, count=len(ids))
        self._dim = int(matrix.shape[1])
        self.dimension_weights = check_dimension_weights(dimension_weights, dim=self._dim,
                                                         standardise=self.standardise)
        self._mean, self._scale = np.zeros(self._dim), np.ones(self._dim)
        self.nlist = nlist
        if approximate == "ivf" and nlist is None:
            self.nlist = default_nlist(count=max(len(ids), 1))
        self.nprobe = nprobe if nprobe is not None or self.nlist is None else default_nprobe(nlist=self.nlist)
        self.uri = os.path.abspath(uri) if is_local_uri(uri) else uri
        self.collection = collection
        self._columns: list[str] = sorted(columns)
        # Collections this index replaces: dropped by save() once the folder names self.collection.
        self._superseded: list[str] = []
        self._has_raw_field = True  # collections made before standardisation existed lack it
        self._catalog: tuple[list[str], np.ndarray] | None = None  # (ids, vectors) read back, until a write
        self._client = connect(uri=self.uri)
        with quiet_pymilvus():
            if self._client.has_collection(collection):
                if not overwrite:
                    self.close()
                    raise ValueError(f"the collection {collection!r} already exists at {self.uri}; choose another "
                                     "--collection, or pass --overwrite to replace it")
                self._superseded.append(collection)
                self.collection = self._new_generation_name()
            self._create_collection()
        self._count = 0
        self._write_catalog(ids=ids, raw=matrix, columns=columns)

    # ------------------------------------------------------------------ collection plumbing
    @property
    def _metric(self) -> str:
        return "IP" if self.similarity == "cosine" else "L2"

    def _new_generation_name(self) -> str:
        """A fresh collection name for a new version of this index's collection: ``BASE__g<8 hex>``."""
        return f"{GENERATION_PATTERN.sub('', self.collection)}__g{uuid.uuid4().hex[:8]}"

    def _write_catalog(self, *, ids: list[str], raw: np.ndarray, columns: dict[str, list[Any]]) -> None:
        """Insert tracks into the (new, empty) collection: ``raw`` [N, D] as checked by ``_check_vectors``
        (unit rows for cosine, or raw ones when standardising: then the statistics are recomputed over
        exactly these tracks and the standardised rows are written, with the raw ones in ``raw``)."""
        if self.standardise:
            self._mean, self._scale = catalog_statistics(raw_vectors=raw)
            searched = standardised_rows(raw_vectors=raw, mean=self._mean, scale=self._scale,
                                         dimension_weights=self.dimension_weights, similarity=self.similarity)
            self._insert(ids, searched, columns, raw=raw)
        else:
            self._insert(ids, raw, columns)

    def _create_collection(self) -> None:
        create_collection(self._client, name=self.collection, uri=self.uri, dim=self._dim, metric=self._metric,
                          approximate=self.approximate, nlist=self.nlist, hnsw_m=self.hnsw_m,
                          ef_construction=self.ef_construction)

    def _insert(self, ids: list[str], matrix: np.ndarray, columns: dict[str, list[Any]],
                raw: np.ndarray | None = None) -> None:
        extra_columns = [c for c in columns if c not in ("group", "path")]
        name, model_dir = self.model.get("name"), self.model.get("model_dir")
        for start in range(0, len(ids), INSERT_BATCH):
            rows = []
            for row in range(start, min(start + INSERT_BATCH, len(ids))):
                group = columns.get("group", [None] * len(ids))[row]
                path = columns.get("path", [None] * len(ids))[row]
                extra = {c: columns[c][row] for c in extra_columns}
                rows.append({"track_id": ids[row], "vector": matrix[row].tolist(),
                             "group": None if group is None else str(group),
                             "path": None if path is None else str(path),
                             "model": None if name is None else str(name),
                             "model_dir": None if model_dir is None else str(model_dir),
                             "extra": json.loads(json.dumps(extra, default=str)) if extra else None,
                             **({"raw": None if raw is None else raw[row].tolist()} if self._has_raw_field else {})})
            with quiet_pymilvus():
                self._client.insert(self.collection, rows)
        self._count += len(ids)
        self._catalog = None

    def _get(self, ids: Sequence[str], *, fields: Sequence[str]) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        with quiet_pymilvus():
            for start in range(0, len(ids), FILTER_BATCH):
                found.extend(self._client.get(self.collection, ids=list(ids[start:start + FILTER_BATCH]),
                                              output_fields=list(fields)))
        return found

    def _present(self, ids: Sequence[str]) -> list[str]:
        return [str(row["track_id"]) for row in self._get(ids, fields=["track_id"])]

    def _row(self, track_id: str, *, fields: Sequence[str]) -> dict[str, Any]:
        rows = self._get([track_id], fields=fields) if isinstance(track_id, str) and track_id else []
        if not rows:
            raise ValueError(f"unknown track id {track_id!r} (index holds {len(self)} tracks)")
        return rows[0]

    def _count_rows(self) -> int:
        with quiet_pymilvus():
            answer = self._client.query(self.collection, filter="", output_fields=["count(*)"])
        return int(answer[0]["count(*)"])

    # ------------------------------------------------------------------ accessors
    def __len__(self) -> int:
        return self._count

    def __contains__(self, track_id: object) -> bool:
        return isinstance(track_id, str) and bool(track_id) and bool(self._present([track_id]))

    def _scan(self, *, fields: Sequence[str]) -> list[dict[str, Any]]:
        """Every row of the collection with ``fields`` (in Milvus's primary-key order)."""
        rows: list[dict[str, Any]] = []
        with quiet_pymilvus():
            iterator = self._client.query_iterator(self.collection, batch_size=5_000, filter="",
                                                   output_fields=list(fields))
            try:
                while batch := iterator.next():
                    rows.extend(batch)
            finally:
                iterator.close()
        return rows

    def _catalog_rows(self) -> tuple[list[str], np.ndarray]:
        """Every track id and its searched vector [N, D], read in one pass (kept until the next write)."""
        if self._catalog is None:
            rows = self._scan(fields=["track_id", "vector"])
            vectors = (np.asarray([row["vector"] for row in rows], dtype=np.float32) if rows
                       else np.zeros((0, self._dim), np.float32))
            self._catalog = ([str(row["track_id"]) for row in rows], np.ascontiguousarray(vectors))
        return self._catalog

    @property
    def track_ids(self) -> list[str]:
        return list(self._catalog_rows()[0])

    @property
    def vectors(self) -> np.ndarray:
        """Every track's searched vector [N, D] float32, rows in ``track_ids`` order (read from the collection
        once, then kept until the next write); a read-only view."""
        view = self._catalog_rows()[1].view()
        view.flags.writeable = False
        return view

    def raw_vector(self, *, track_id: str) -> np.ndarray:
        if not self.standardise:
            return self.vector(track_id=track_id)
        return np.asarray(self._row(track_id, fields=["raw"])["raw"], dtype=np.float32)

    def catalog_statistics(self) -> tuple[np.ndarray, np.ndarray]:
        return self._mean.copy(), self._scale.copy()

    @property
    def metadata_columns(self) -> list[str]:
        return list(self._columns)

    def vector(self, *, track_id: str) -> np.ndarray:
        return np.asarray(self._row(track_id, fields=["vector"])["vector"], dtype=np.float32)

    def metadata(self, *, track_id: str) -> dict[str, Any]:
        row = self._row(track_id, fields=["group", "path", "extra"])
        extra = row.get("extra") or {}
        values = {"group": row.get("group"), "path": row.get("path")}
        return {column: values[column] if column in values else extra.get(column) for column in self._columns}

    def track_id_of_path(self, *, path: str) -> str | None:
        if "path" not in self._columns:
            return None
        wanted = os.path.realpath(path)
        spellings = sorted({path, os.path.abspath(path), wanted})
        with quiet_pymilvus():
            rows = self._client.query(self.collection, filter=f"path in {milvus_list(spellings)}",
                                      output_fields=["track_id", "path"])
        for row in rows:
            if os.path.realpath(str(row["path"])) == wanted:
                return str(row["track_id"])
        return None

    def summary(self) -> str:
        mode = self.search_mode()
        model = self.model.get("name") or self.model.get("model_dir") or "unknown model"
        standardised = ", standardised" + (" (weighted)" if self.dimension_weights is not None else "") \
            if self.standardise else ""
        return (f"MilvusIndex: {len(self)} tracks, dim {self._dim}, {self.similarity}{standardised}, {mode}, collection "
                f"{self.collection} at {self.uri}, model {model}")

    # ------------------------------------------------------------------ search
    def _filter_expression(self, *, exclude_ids: Any, exclude_groups: Any) -> str:
        clauses = []
        ids = sorted(str(t) for t in as_group_set(exclude_ids))
        if ids:
            clauses.append(f"track_id not in {milvus_list(ids)}")
        groups = sorted(str(g) for g in as_group_set(exclude_groups) if g is not None)
        if groups:
            clauses.append(f"(group is null or group not in {milvus_list(groups)})")
        return " and ".join(clauses)

    def search(self, *, queries: np.ndarray, k: int = 10,
               exclude_ids: Sequence[Iterable[str] | str | None] | None = None,
               exclude_groups: Sequence[Iterable[Any] | str | None] | None = None,
               diversity: float = 0.0, candidate_pool: int | None = None,
               nprobe: int | None = None, ef_search: int | None = None,
               query_model: Mapping[str, Any] | str | None = None, rerank: bool = True,
               query_track_ids: Sequence[str | None] | None = None) -> list[Result]:
        """The k most similar tracks to each query; same arguments and results as
        ``FaissIndex.search``. At most ``MAX_RESULTS`` candidates per query (Milvus's limit).
        A Milvus index never re-ranks (``check_index_rerank``), so ``rerank`` and ``query_track_ids``
        change nothing."""
        k, matrix = self._check_search_arguments(queries=queries, k=k, exclude_ids=exclude_ids,
                                                 exclude_groups=exclude_groups, diversity=diversity,
                                                 candidate_pool=candidate_pool, query_model=query_model)
        query_count, count = matrix.shape[0], len(self)
        if query_count == 0 or count == 0:
            return [[] for _ in range(query_count)]
        target = self._fetch_target(k=k, count=count, diversity=float(diversity), candidate_pool=candidate_pool)
        if target > MAX_RESULTS:
            raise ValueError(f"the milvus backend returns at most {MAX_RESULTS} results per query, got k={k}")
        params: dict[str, Any] = {"metric_type": self._metric, "params": {}}
        if self.approximate == "ivf":
            probe = int(nprobe if nprobe is not None else self.nprobe)
            if probe < 1:
                raise ValueError(f"nprobe must be >= 1, got {probe}")
            params["params"]["nprobe"] = min(probe, int(self.nlist))
        elif self.approximate == "hnsw":
            ef = int(ef_search if ef_search is not None else self.ef_search)
            if ef < 1:
                raise ValueError(f"ef_search must be >= 1, got {ef}")
            params["params"]["ef"] = max(ef, target)
        expressions = [self._filter_expression(exclude_ids=None if exclude_ids is None else exclude_ids[q],
                                               exclude_groups=None if exclude_groups is None else exclude_groups[q])
                       for q in range(query_count)]
        results: list[Result] = [[] for _ in range(query_count)]
        # Queries with the same filter (typically none) go to Milvus in one call.
        for expression in dict.fromkeys(expressions):
            members = [q for q, e in enumerate(expressions) if e == expression]
            with quiet_pymilvus():
                answers = self._client.search(self.collection, data=[matrix[q] for q in members], limit=target,
                                              filter=expression, output_fields=["vector"], search_params=params)
            for q, hits in zip(members, answers):
                results[q] = self._rank(matrix[q], hits, k=k, diversity=float(diversity))
        return results

    def _rank(self, query: np.ndarray, hits: Sequence[Mapping[str, Any]], *, k: int, diversity: float) -> Result:
        """Exact scores of Milvus's candidates (recomputed from the stored vectors), best first,
        re-ranked by MMR when ``diversity`` > 0."""
        if not hits:
            return []
        ids = [str(hit["id"] if "id" in hit else hit["track_id"]) for hit in hits]
        candidates = np.asarray([hit["entity"]["vector"] for hit in hits], dtype=np.float32)
        scores = similarities_to(vectors=candidates, vector=query, similarity=self.similarity)
        order = np.argsort(-scores, kind="stable")
        if diversity > 0 and len(order) > 1:
            picked = maximal_marginal_relevance(candidates=candidates[order], relevance=scores[order], k=k,
                                                trade_off=1.0 - diversity, similarity=self.similarity)
            order = order[picked]
        return [(ids[i], float(scores[i])) for i in order[:k].tolist()]

    # ------------------------------------------------------------------ updates
    def add(self, *, track_ids: Sequence[str], vectors: np.ndarray,
            metadata: Mapping[str, Sequence[Any]] | None = None, replace: bool = False) -> None:
        """Add tracks (written to the collection at once). Repeated ids raise ValueError; so do ids already
        in the index, unless ``replace`` (their vector and metadata are then replaced)."""
        ids = self._check_ids(track_ids, name="track_ids")
        present = self._present(ids)
        if present and not replace:
            raise ValueError(f"track ids already in the index: {present[:5]}")
        matrix = self._check_vectors(vectors, count=len(ids), dim=self._dim, name="vectors", ids=ids)
        columns = self._check_metadata(metadata, count=len(ids))
        if not ids:
            return
        if self.standardise:
            self._rewrite(removed=set(present), added_ids=ids, added_raw=matrix, added_columns=columns)
        else:
            if present:
                self.remove(track_ids=present)
            self._insert(ids, matrix, columns)
        self._columns = sorted(set(self._columns) | set(columns))

    def _rewrite(self, *, removed: set[str], added_ids: list[str], added_raw: np.ndarray | None,
                 added_columns: dict[str, list[Any]]) -> None:
        """A standardising index's write: the catalog less ``removed`` plus the added tracks, standardised by
        the new statistics, into a new collection that ``save`` switches to (the current one stays intact)."""
        kept = [row for row in self._scan(fields=["track_id", "group", "path", "extra", "raw"])
                if str(row["track_id"]) not in removed]
        ids = [str(row["track_id"]) for row in kept] + list(added_ids)
        parts = [np.asarray([row["raw"] for row in kept], dtype=np.float32).reshape(len(kept), self._dim)]
        if added_raw is not None:
            parts.append(np.asarray(added_raw, dtype=np.float32))
        raw = np.concatenate(parts)
        names = sorted(set(self._columns) | set(added_columns))
        columns: dict[str, list[Any]] = {}
        for name in names:
            stored = [row.get(name) if name in ("group", "path") else (row.get("extra") or {}).get(name)
                      for row in kept]
            columns[name] = stored + list(added_columns.get(name, [None] * len(added_ids)))
        previous = self.collection
        self.collection = self._new_generation_name()
        with quiet_pymilvus():
            self._create_collection()
        self._has_raw_field = True
        self._count = 0
        self._write_catalog(ids=ids, raw=raw, columns=columns)
        self._superseded.append(previous)

    def remove(self, *, track_ids: Sequence[str]) -> None:
        """Remove tracks (from the collection at once). Unknown or repeated ids raise ValueError
        (nothing is removed then)."""
        ids = self._check_ids(track_ids, name="track_ids")
        present = set(self._present(ids))
        unknown = [t for t in ids if t not in present]
        if unknown:
            raise ValueError(f"unknown track ids: {unknown[:5]} (index holds {len(self)} tracks)")
        if not ids:
            return
        if self.standardise:
            self._rewrite(removed=set(ids), added_ids=[], added_raw=None, added_columns={})
            return
        with quiet_pymilvus():
            for start in range(0, len(ids), FILTER_BATCH):
                self._client.delete(self.collection, ids=ids[start:start + FILTER_BATCH])
        self._count -= len(ids)
        self._catalog = None

    # ------------------------------------------------------------------ persistence
    def _config(self, *, version: int) -> dict[str, Any]:
        statistics = {"catalog_mean": self._mean.tolist(), "catalog_scale": self._scale.tolist()} \
            if self.standardise else {}
        return storage.config_entries(
            backend=self.backend, similarity=self.similarity, dim=self._dim, count=len(self), model=self.model,
            version=version, standardise=self.standardise, dimension_weights=self.dimension_weights,
            uri=self.uri, collection=self.collection, approximate=self.approximate, nlist=self.nlist,
            nprobe=self.nprobe, hnsw_m=self.hnsw_m, ef_construction=self.ef_construction,
            ef_search=self.ef_search, metadata_columns=self._columns, **statistics)

    @classmethod
    def check_location(cls, *, uri: str | None, collection: str | None) -> dict[str, Any]:
        """``--uri`` and ``--collection``, both required."""
        if not (uri and collection):
            raise ValueError("the milvus backend needs --uri (a PATH.db file or http://host:19530) and --collection")
        return {"uri": uri, "collection": collection}

    @classmethod
    def create(cls, *, output: str, overwrite: bool, location: Mapping[str, Any], rerank: Any,
               **arguments: Any) -> "MilvusIndex":
        """A new Milvus index to be saved to ``output``; with ``overwrite``, the collection the folder names now
        (when it is a Milvus index at the same URI) is dropped after the save that switches it."""
        uri, collection = location["uri"], location["collection"]
        output = os.path.abspath(output)
        if is_local_uri(uri) and os.path.commonpath([output, os.path.abspath(uri)]) == output:
            raise ValueError(f"--uri={uri} lies inside --output={output}: keep the Milvus Lite file outside the "
                             "index directory")
        previous = _collection_named_by(output=output, uri=uri) if overwrite else None
        index = cls(uri=uri, collection=collection, overwrite=overwrite, **arguments)
        if previous:
            index.supersede(collection=previous)
        return index

    def supersede(self, *, collection: str) -> None:
        """Drop the collection ``collection`` (of this index's Milvus) after the next successful ``save``:
        the one a rebuilt folder named before (``build_index --overwrite``)."""
        if collection != self.collection and collection not in self._superseded:
            self._superseded.append(collection)

    def save(self, directory: str, *, overwrite: bool = False) -> None:
        """Write ``directory/config.json`` atomically, naming the collection (which Milvus keeps).

        Raises
        ------
        IndexFileError
            If ``directory`` is a folder other than an index, or the Milvus Lite file lies inside it.
        """

        directory = os.path.abspath(directory)
        if is_local_uri(self.uri) and os.path.commonpath([directory, self.uri]) == directory:
            raise IndexFileError(f"cannot save the index to {directory}: its Milvus Lite file {self.uri} lies "
                                 "inside it; keep the .db file outside the index directory")
        with quiet_pymilvus():
            self._client.flush(self.collection)  # the rows on disk before the directory names them

        def write_files(temp: str, version: int) -> None:
            storage.write_json_synced(os.path.join(temp, storage.CONFIG_FILE), self._config(version=version))

        self.version = storage.save_index_directory(directory=directory, overwrite=overwrite,
                                                    write_files=write_files)
        # Only now that the folder names self.collection may the collections it replaced go.
        with quiet_pymilvus():
            for name in self._superseded:
                if name != self.collection and self._client.has_collection(name):
                    self._client.drop_collection(name)
        self._superseded = []

    @classmethod
    def open_directory(cls, *, source: str, config: Mapping[str, Any]) -> "MilvusIndex":
        """The index of the folder ``source`` whose config.json is ``config`` (``musicsim.index.open`` calls
        this)."""
        return cls.open(config=config, config_path=os.path.join(source, storage.CONFIG_FILE))

    @classmethod
    def open(cls, *, config: Mapping[str, Any], config_path: str) -> "MilvusIndex":
        """The index a milvus ``config.json`` (already read from ``config_path``) describes.

        Raises
        ------
        IndexFileError
            For a config without its entries, a collection that does not exist, or one whose
            vectors have another dimension.
        """
        for key, kinds in (("uri", (str,)), ("collection", (str,)), ("similarity", (str,)), ("dim", (int,)),
                           ("metadata_columns", (list,))):
            if not isinstance(config.get(key), kinds):
                raise IndexFileError(f"index file {config_path}: {key!r} is missing or not a {kinds[0].__name__}")
        index = cls.__new__(cls)
        index.uri, index.collection = config["uri"], config["collection"]
        index.similarity, index._dim = config["similarity"], int(config["dim"])
        index.approximate = config.get("approximate")
        if index.similarity not in SIMILARITIES or index.approximate not in (None,) + APPROXIMATE_KINDS:
            raise IndexFileError(f"index file {config_path}: unknown similarity {index.similarity!r} or "
                                 f"approximate {index.approximate!r}")
        index.nlist, index.nprobe = config.get("nlist"), config.get("nprobe")
        index.hnsw_m = int(config.get("hnsw_m", 32))
        index.ef_construction = int(config.get("ef_construction", 80))
        index.ef_search = int(config.get("ef_search", 64))
        index.model = dict(config.get("model") or {})
        index._columns = [str(c) for c in config["metadata_columns"]]
        index.version = storage.read_version_entry(dict(config), config_path=config_path)
        index.standardise, index.dimension_weights = storage.read_standardisation(
            dict(config), config_path=config_path, dim=index._dim)
        index._mean, index._scale = np.zeros(index._dim), np.ones(index._dim)
        if index.standardise:
            try:
                index._mean = np.asarray(config["catalog_mean"], dtype=np.float64)
                index._scale = np.asarray(config["catalog_scale"], dtype=np.float64)
                if (index._mean.shape != (index._dim,) or index._scale.shape != (index._dim,)
                        or not np.isfinite(index._mean).all() or not (index._scale > 0).all()):
                    raise ValueError("not finite [dim] arrays with positive scales")
            except (KeyError, TypeError, ValueError) as error:
                raise IndexFileError(f"index file {config_path}: bad catalog statistics of a standardising index "
                                     f"({error})") from None
        index._superseded, index._catalog = [], None
        index._client = connect(uri=index.uri)
        with quiet_pymilvus():
            if not index._client.has_collection(index.collection):
                index.close()
                raise IndexFileError(f"index file {config_path} names the collection {index.collection!r}, which "
                                     f"does not exist at {index.uri}")
            fields = collection_fields(index._client, name=index.collection)
            problem = collection_problem(fields, name=index.collection, uri=index.uri, dim=index._dim,
                                         standardise=index.standardise)
            if problem:
                index.close()
                raise IndexFileError(f"index file {config_path}: {problem}")
            index._has_raw_field = "raw" in fields
            index._client.load_collection(index.collection)
        index._count = index._count_rows()
        expected = config.get("count")
        if isinstance(expected, int) and not isinstance(expected, bool) and expected != index._count:
            index.close()
            raise IndexFileError(f"index file {config_path} says the collection {index.collection!r} at {index.uri} "
                                 f"holds {expected} tracks, but it holds {index._count}: a write to it was "
                                 "interrupted; rebuild the index (index build ... --overwrite)")
        return index

    def shares_connection_with(self, other: IndexBackend) -> bool:
        """pymilvus shares one connection per Milvus URI in a process: another Milvus index of the same URI."""
        return isinstance(other, MilvusIndex) and other.uri == self.uri

    def close(self) -> None:
        """Close the connection to Milvus (for Milvus Lite, frees the file for other processes)."""
        client = getattr(self, "_client", None)
        if client is None:
            return
        self._client = None
        disconnect(client=client, uri=self.uri)


def _collection_named_by(*, output: str, uri: str) -> str | None:
    """The collection the index folder ``output`` names when it is a Milvus index at ``uri`` (else None)."""
    try:
        _, config = storage.read_config(output)
    except (FileNotFoundError, ValueError):
        return None
    same_uri = config.get("uri") == (os.path.abspath(uri) if is_local_uri(uri) else uri)
    name = config.get("collection")
    return name if config.get("backend") == MilvusIndex.backend and same_uri and isinstance(name, str) else None
