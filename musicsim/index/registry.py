"""The table of index backends by name, and the one way to open an index directory.

``BACKENDS`` maps each backend name config.json may record to its class; ``open(DIR)`` (``musicsim.index.open``)
reads DIR's config.json and lets that class open it. Building (``build``), the command line (``cli``) and every
reader look backends up here, never by branching on their names.

A new backend: its module (an ``IndexBackend`` subclass with ``backend``, ``open_directory`` and, when it keeps its
vectors elsewhere, ``check_location`` / ``create``; see ``musicsim.index.backends``) and one line in ``BACKENDS``.
"""
from __future__ import annotations

import os

from musicsim.index import storage
from musicsim.index.backends import IndexBackend
from musicsim.index.errors import IndexFileError
from musicsim.index.faiss_index import FaissIndex
from musicsim.index.milvus import MilvusIndex

BACKENDS: dict[str, type[IndexBackend]] = {"faiss": FaissIndex, "milvus": MilvusIndex}
# The backend a build uses unless told otherwise, and that of an index saved before config.json named one.
DEFAULT_BACKEND = "faiss"


def backend_class(name: str) -> type[IndexBackend]:
    """The class of backend ``name``; ValueError naming the known ones otherwise."""
    try:
        return BACKENDS[name]
    except KeyError:
        raise ValueError(f"backend must be one of {tuple(BACKENDS)}, got {name!r}") from None


def open(directory: str) -> IndexBackend:  # noqa: A001 - musicsim.index.open(DIR), the package's entry
    """Open the index saved in ``directory``, of whichever backend its config.json names (an index saved
    before backends existed is a faiss one). Falls back to ``directory + '.bak'`` when a save was
    interrupted between its two renames.

    Raises
    ------
    FileNotFoundError
        If there is no index at ``directory``.
    IndexFileError
        If config.json names a backend ``BACKENDS`` lacks, or a file of the index is missing, damaged or
        inconsistent, or (Milvus) its collection does not match its config.json (the message names the file
        and why).
    """
    source, config = storage.read_config(directory)
    name = config.get("backend", DEFAULT_BACKEND)
    if name not in BACKENDS:
        raise IndexFileError(f"{os.path.join(source, storage.CONFIG_FILE)}: unknown backend {name!r} (this code has "
                             f"{tuple(BACKENDS)})")
    return BACKENDS[name].open_directory(source=source, config=config)


__all__ = ["BACKENDS", "DEFAULT_BACKEND", "backend_class", "open"]
