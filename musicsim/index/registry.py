"""The index backends by name, and the one way to open an index directory.

``BACKEND_CLASSES`` maps each backend name config.json may record to its class (``backends.BACKENDS``
names the built-in ones); ``open_index(DIR)`` reads DIR's config.json and lets that class open it. Build, storage and
the command line look backends up here rather than branching on their names.
"""
from __future__ import annotations

import os

from musicsim.index import storage
from musicsim.index.backends import IndexBackend
from musicsim.index.faiss_index import FaissIndex
from musicsim.index.milvus import MilvusIndex

# A new backend: its module (an IndexBackend subclass with ``backend``, ``open_directory`` and, when it keeps its
# vectors elsewhere, ``check_location`` / ``create``) and one line here.
BACKEND_CLASSES: dict[str, type[IndexBackend]] = {"faiss": FaissIndex, "milvus": MilvusIndex}


def backend_class(name: str) -> type[IndexBackend]:
    """The class of backend ``name``; ValueError naming the known ones otherwise."""
    try:
        return BACKEND_CLASSES[name]
    except KeyError:
        raise ValueError(f"backend must be one of {tuple(BACKEND_CLASSES)}, got {name!r}") from None


def open_index(directory: str) -> IndexBackend:
    """Open the index saved in ``directory``, of whichever backend its config.json names (an index saved
    before backends existed is a faiss one). Falls back to ``directory + '.bak'`` when a save was
    interrupted between its two renames.

    Raises
    ------
    FileNotFoundError
        If there is no index at ``directory``.
    IndexFileError
        If a file of the index is missing, damaged or inconsistent, or (Milvus) its collection does not
        match its config.json (the message names the file and why).
    """
    source, config = storage.read_config(directory)
    cls = BACKEND_CLASSES[config.get("backend", "faiss")]  # read_config refused unknown names
    return cls.open_directory(source=source, config=config)


__all__ = ["BACKEND_CLASSES", "backend_class", "open_index"]
