"""Similarity-search index over track embeddings (paper section 1: "a search engine that, given a
music, returns the most similar musics").

``musicsim.index.open(DIR)`` opens any index folder, of whichever backend its config.json names; it is the
one way to open one.

The package's rooms, each importing only those above it:

* ``errors``: ``IndexFileError``, the package's error (a file it cannot use, named);
* ``vectors``: what the backends compute and check with no index at hand (standardisation, re-ranking
  settings, ids, maximal marginal relevance);
* ``storage``: the index directory on disk (config.json, the atomic save, ``read_version``);
* ``lock``: ``index_lock(DIR, wait=, command=)``, the one-writer-at-a-time lock every writer takes;
* ``embeddings_io``: the embeddings files an export writes and the index reads (.parquet, .npy +
  .ids.json + .meta.json, a run's embeddings.npz), and what a run directory says of them;
* ``backends``: ``IndexBackend``, the interface every index implements, and what the implementations
  share (argument checks);
* ``faiss_files``, ``faiss_search``, ``faiss_index``: ``FaissIndex``, the default backend: exact (numpy /
  faiss flat) or IVF / HNSW search in memory, its files, its query side;
* ``milvus_client``, ``milvus``: ``MilvusIndex``, vectors in a Milvus Lite file or a Milvus server;
* ``registry``: ``BACKENDS`` (backend name -> class), the table, and ``open(DIR)``; a new backend is its
  module and one line there;
* ``build``: building and updating a saved index from embeddings files;
* ``cli``: ``python -m musicsim.index build | add | remove`` (queries: ``python -m musicsim.search.query``).

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
from musicsim.index.backends import IndexBackend
from musicsim.index.build import add_to_index, build_index, build_index_from_vectors, remove_from_index
from musicsim.index.cli import cli, main
from musicsim.index.embeddings_io import (embedding_file_writers, load_embeddings, read_provenance,
                                          run_embedding_dim, run_similarity)
from musicsim.index.errors import IndexFileError
from musicsim.index.faiss_index import FaissIndex
from musicsim.index.lock import IndexLockedError, index_lock
from musicsim.index.milvus import MilvusIndex
from musicsim.index.registry import BACKENDS, backend_class, open  # noqa: A004 - musicsim.index.open(DIR)
from musicsim.index.storage import (CONFIG_FILE, FORMAT_MARKER, FORMAT_VERSION, check_output_directory,
                                    read_version, remove_stale_temporaries, save_index_directory,
                                    write_json_synced)
from musicsim.index.vectors import (APPROXIMATE_KINDS, MAX_DIVERSITY_POOL, Result, default_nlist, default_nprobe,
                                    maximal_marginal_relevance)
from musicsim.similarity import SIMILARITIES

__all__ = ["APPROXIMATE_KINDS", "BACKENDS", "CONFIG_FILE", "FORMAT_MARKER", "FORMAT_VERSION", "MAX_DIVERSITY_POOL",
           "SIMILARITIES", "FaissIndex", "IndexBackend", "IndexFileError", "IndexLockedError", "MilvusIndex",
           "Result", "add_to_index", "backend_class", "build_index", "build_index_from_vectors",
           "check_output_directory", "cli", "default_nlist", "default_nprobe", "embedding_file_writers",
           "index_lock", "load_embeddings", "main", "maximal_marginal_relevance", "open", "read_provenance",
           "read_version", "remove_from_index", "remove_stale_temporaries", "run_embedding_dim", "run_similarity",
           "save_index_directory", "write_json_synced"]
