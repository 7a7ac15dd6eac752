"""Similarity-search index over track embeddings (paper section 1: "a search engine that, given a
music, returns the most similar musics").

The package's rooms:

* ``backends``: the interface every index implements (``IndexBackend``), what the implementations
  share (argument checks, maximal marginal relevance, ``IndexFileError``);
* ``faiss_index``: ``FaissIndex`` (``EmbeddingIndex``, its former name, is kept as an alias), the default
  backend: exact (numpy / faiss flat) or IVF / HNSW search in memory;
* ``milvus``: ``MilvusIndex``, vectors in a Milvus Lite file or a Milvus server;
* ``registry``: ``BACKEND_CLASSES`` (backend name -> class) and ``open_index(DIR)``, the way to open
  any index folder;
* ``lock``: ``index_lock(DIR, wait=, command=)``, the one-writer-at-a-time lock every writer takes;
* ``storage``: the index directory on disk (its files, their validation, the atomic save);
* ``embeddings_io``: the embeddings files an export writes and the index reads (.parquet, .npy +
  .ids.json + .meta.json, a run's embeddings.npz), and what a run directory says of them;
* ``build``: building and updating a saved index from embeddings files;
* ``cli``: ``python -m musicsim.index build | add | remove`` (queries: ``python -m musicsim.search``).

A faiss index of cosine similarity may re-rank by the catalog (``musicsim.rerank``: ``aqe``, ``dba``,
``dba+aqe``; ``build --rerank``, recorded in config.json; see ``faiss_index``). Any index may
standardise every dimension over the catalog it holds (``standardise=True``; a file query goes
through ``index.prepare_query(raw)``; see ``backends``). Every save bumps config.json's ``version``
(``read_version(DIR)``).

>>> import numpy as np
>>> from musicsim.index import FaissIndex
>>> index = FaissIndex(track_ids=["a", "b", "c"], vectors=np.eye(3), similarity="cosine")
>>> [track_id for track_id, _ in index.search_by_id(track_id="a", k=2, exclude_self=False)][0]
'a'
"""
from musicsim.index.backends import (APPROXIMATE_KINDS, BACKENDS, MAX_DIVERSITY_POOL, IndexBackend, IndexFileError,
                                     Result, default_nlist, default_nprobe, maximal_marginal_relevance)
from musicsim.index.build import add_to_index, build_index, build_index_from_vectors, remove_from_index
from musicsim.index.cli import cli, main
from musicsim.index.embeddings_io import (embedding_file_writers, load_embeddings, read_provenance,
                                          run_embedding_dim, run_similarity)
from musicsim.index.faiss_index import EmbeddingIndex, FaissIndex
from musicsim.index.lock import IndexLockedError, index_lock
from musicsim.index.milvus import MilvusIndex
from musicsim.index.registry import BACKEND_CLASSES, backend_class, open_index
from musicsim.index.storage import (CONFIG_FILE, FORMAT_MARKER, FORMAT_VERSION, check_output_directory,
                                    read_version, remove_stale_temporaries, save_index_directory,
                                    write_json_synced)
from musicsim.similarity import SIMILARITIES

__all__ = ["APPROXIMATE_KINDS", "BACKENDS", "BACKEND_CLASSES", "CONFIG_FILE", "FORMAT_MARKER", "FORMAT_VERSION",
           "MAX_DIVERSITY_POOL", "SIMILARITIES", "EmbeddingIndex", "FaissIndex", "IndexBackend", "IndexFileError",
           "IndexLockedError", "MilvusIndex", "Result", "add_to_index", "backend_class", "build_index",
           "build_index_from_vectors", "index_lock", "open_index", "read_version", "check_output_directory", "default_nlist", "default_nprobe", "embedding_file_writers",
           "cli", "load_embeddings", "main", "maximal_marginal_relevance", "read_provenance", "remove_from_index",
           "remove_stale_temporaries", "run_embedding_dim", "run_similarity", "save_index_directory",
           "write_json_synced"]
