"""An index directory on disk: its files, their validation, and the atomic save.

A faiss index directory::

    DIR/config.json   "format": "musicsim.index", backend, similarity, dimension, approximate-search
                      parameters, model (name, model_dir, dim), count, standardise (+ dimension_weights),
                      version (an integer every successful save bumps) and generation (a token per save)
    DIR/tracks.json   track ids and per-track metadata columns (path, group, duration_s, title, artist, ...)
    DIR/vectors.npy   [N, D] float32 (unit vectors for cosine); an index that standardises keeps
                      raw_vectors.npy instead (its searched vectors are recomputed from them)
    DIR/labels.npy    [N] int64 faiss ids of the rows (only with approximate search)
    DIR/faiss.index   the trained IVF / HNSW index (only with approximate search)
    DIR/musicsim.json the manifest that marks the folder as an index (``musicsim.owned``)

A Milvus index keeps only ``config.json`` and the manifest here (its config names the collection).
Catalog maps cached in the directory (``MAP_CACHE_NAME``) go with it; the library scan's files
(``CARRIED_FILES``) are carried over into each new version of the directory.
``read_version(DIR)`` reads the version from config.json alone (a server polls it to notice writes). A directory is saved
atomically (written into a sibling temp directory, then swapped in; the previous version is kept at
``DIR.bak`` during the swap, and ``read_config`` falls back to it). The faiss backend's own files are
written and checked by ``musicsim.index.faiss_files``.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import uuid
import warnings
from typing import Any, Callable

import numpy as np

from musicsim.index.errors import IndexFileError
from musicsim.index.vectors import check_dimension_weights
from musicsim.owned import MANIFEST_NAME, NotOurFolderError, check_replaceable, write_manifest
from musicsim.workers import process_alive

FORMAT_VERSION = 1
# config.json's "format" entry: marks a directory as this project's index, the only kind a save replaces.
FORMAT_MARKER = "musicsim.index"
CONFIG_FILE = "config.json"
TRACKS_FILE = "tracks.json"
VECTORS_FILE = "vectors.npy"
# The raw vectors of an index that standardises over its catalog (vectors.npy is then not written).
RAW_VECTORS_FILE = "raw_vectors.npy"
# The searched (augmented) vectors of an index that re-ranks with dba; vectors.npy keeps the tracks' own.
AUGMENTED_FILE = "augmented_vectors.npy"
LABELS_FILE = "labels.npy"
FAISS_FILE = "faiss.index"
BACKUP_SUFFIX = ".bak"
# Files others keep in an index directory (musicsim.scan's state and report): each save copies them
# from the directory it replaces into the new one, so a write of the index never loses them.
CARRIED_FILES = ("scan-state.json", "scan-report.json")
INDEX_FILES = frozenset({CONFIG_FILE, TRACKS_FILE, VECTORS_FILE, RAW_VECTORS_FILE, AUGMENTED_FILE, LABELS_FILE,
                         FAISS_FILE, MANIFEST_NAME, *CARRIED_FILES})
# The kind of folder musicsim.owned's manifest records for an index directory.
INDEX_KIND = "index"
# Catalog maps cached in an index directory by its readers (musicsim.search.catalog_map): derived from the
# index, they are part of it and go with it when it is replaced.
MAP_CACHE_NAME = "map-{method}-{digest}.npy"
MAP_CACHE_PATTERN = re.compile(r"map-[a-z]+-[0-9a-f]{16}\.npy")
# Temporary directories of save(): DIR.tmp-<pid>-<8 hex>.
TEMP_PATTERN = re.compile(r"\.tmp-(\d+)-[0-9a-f]{8}$")


def _is_derived_cache(name: str) -> bool:
    return MAP_CACHE_PATTERN.fullmatch(name) is not None


def _is_index_directory(directory: str) -> bool:
    """True when ``directory`` holds only this project's index files and a config.json that says so
    (an index written before the ``musicsim.owned`` manifest, or one whose manifest is damaged)."""
    try:
        entries = {name for name in os.listdir(directory) if not _is_derived_cache(name)}
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
    """Raise IndexFileError unless ``directory`` may receive an index: absent, empty, or an index
    (``musicsim.owned.check_replaceable`` of kind ``index``; older indexes by their config.json).

    Parameters
    ----------
    directory : str
        Where an index is about to be saved.
    overwrite : bool
        Allow replacing any other directory too (its content is deleted).
    """
    try:
        check_replaceable(directory, kind=INDEX_KIND, overwrite=overwrite, legacy=_is_index_directory,
                          ignore=_is_derived_cache, description="an index",
                          remedy="choose another --output, or pass --overwrite to replace it")
    except NotOurFolderError as error:
        raise IndexFileError(f"cannot save the index to {directory}: {error}") from None


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
        pid = int(match.group(1)) if match else None
        if match and os.path.isdir(path) and pid != os.getpid() and not process_alive(pid):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def read_version(directory: str) -> int | None:
    """The ``version`` of the index at ``directory`` (or its ``.bak`` during a save), from config.json alone;
    None when there is no readable index there. 0 for an index saved before versions existed."""
    directory = os.path.abspath(directory)
    for source in (directory, directory + BACKUP_SUFFIX):
        try:
            with open(os.path.join(source, CONFIG_FILE)) as f:
                config = json.load(f)
        except (OSError, ValueError):
            continue
        if isinstance(config, dict):
            version = config.get("version", 0)
            return version if isinstance(version, int) and not isinstance(version, bool) else 0
    return None


def save_index_directory(*, directory: str, write_files: Callable[[str, int], None], overwrite: bool = False) -> int:
    """Write an index directory atomically; returns the version it recorded.

    ``write_files(temp, version)`` writes everything into a temp sibling directory first, recording
    ``version`` (one more than the directory's current one, 1 for a new directory) in its config.json;
    the ``CARRIED_FILES`` of the current directory are copied in; then the current directory (if any) is
    renamed to ``directory + '.bak'``, the new one renamed in, and the backup deleted. A crash at any
    point leaves a loadable index at ``directory`` or its backup. Temporaries that killed saves of
    ``directory`` left behind are removed first. Writers hold ``musicsim.index.lock.index_lock``.

    Raises
    ------
    IndexFileError
        If ``directory`` (or its ``.bak`` sibling) is a file or a folder that is not an index
        (``overwrite`` allows replacing ``directory`` anyway).
    """
    directory = os.path.abspath(directory)
    check_output_directory(directory=directory, overwrite=overwrite)
    backup = directory + BACKUP_SUFFIX
    try:
        check_replaceable(backup, kind=INDEX_KIND, overwrite=False, legacy=_is_index_directory,
                          ignore=_is_derived_cache)
    except NotOurFolderError:
        raise IndexFileError(f"cannot save the index to {directory}: {backup} exists and is not an index "
                             "backup; move it away") from None
    parent = os.path.dirname(directory)
    os.makedirs(parent, exist_ok=True)
    remove_stale_temporaries(directory=directory)
    temp = f"{directory}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    version = (read_version(directory) or 0) + 1
    os.mkdir(temp)
    try:
        write_files(temp, version)
        for name in CARRIED_FILES:
            for source in (directory, backup):
                if os.path.isfile(os.path.join(source, name)) and not os.path.exists(os.path.join(temp, name)):
                    shutil.copy2(os.path.join(source, name), os.path.join(temp, name))
                    break
        write_manifest(temp, kind=INDEX_KIND, extra={"entries": sorted(os.listdir(temp))})
        if os.path.isdir(directory):
            if os.path.exists(backup):
                _discard(backup, directory=directory)  # a stale backup from a finished or crashed earlier save
            os.rename(directory, backup)
        elif os.path.exists(backup):
            _discard(backup, directory=directory)  # the only copy is older than what we are about to rename in
        os.rename(temp, directory)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    if os.path.exists(backup):
        _discard(backup, directory=directory)
    return version


def _discard(path: str, *, directory: str) -> None:
    """Delete a backup of ``directory``: renamed to a temporary name first, so a kill in the middle of the
    deletion leaves a temporary the next save removes (`remove_stale_temporaries`), never a half-deleted
    ``.bak`` that no longer looks like an index."""
    doomed = f"{directory}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    os.rename(path, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def write_json_synced(path: str, payload: Any) -> None:
    """Write JSON to ``path`` and fsync it (the files of an index being saved)."""
    with open(path, "w") as f:
        json.dump(payload, f, default=str)
        f.flush()
        os.fsync(f.fileno())


def config_entries(*, backend: str, similarity: str, dim: int, count: int, model: dict[str, Any], version: int,
                   standardise: bool = False, dimension_weights: np.ndarray | None = None,
                   **settings: Any) -> dict[str, Any]:
    """The config.json of an index: the marker, the format version, and what describes the index.

    Parameters
    ----------
    backend, similarity, dim, count, model
        Entries every backend writes.
    version : int
        The write counter (``save_index_directory`` gives it); ``generation`` is a fresh random token.
    standardise, dimension_weights
        Catalog standardisation (``musicsim.index.backends``); weights [D] or None.
    **settings
        Backend-specific entries (approximate-search parameters, the Milvus collection, ...).
    """
    return {"format": FORMAT_MARKER, "format_version": FORMAT_VERSION, "backend": backend,
            "similarity": similarity, "dim": dim, "count": count, "version": int(version),
            "generation": uuid.uuid4().hex, "standardise": bool(standardise),
            "dimension_weights": None if dimension_weights is None else [float(w) for w in dimension_weights],
            **settings, "model": model}


def read_standardisation(config: dict[str, Any], *, config_path: str, dim: int) -> tuple[bool, np.ndarray | None]:
    """config.json's ``standardise`` (False for indexes saved before it existed) and ``dimension_weights``
    ([dim] float64 or None); IndexFileError naming the file for a bad entry."""
    standardise = config.get("standardise", False)
    if not isinstance(standardise, bool):
        raise IndexFileError(f"{config_path}: 'standardise' is {standardise!r}, expected true or false")
    try:
        weights = check_dimension_weights(config.get("dimension_weights"), dim=dim, standardise=standardise)
    except (TypeError, ValueError) as error:
        raise IndexFileError(f"{config_path}: bad 'dimension_weights': {error}") from None
    return standardise, weights


def read_json(path: str) -> dict[str, Any]:
    try:
        with open(path) as f:
            payload = json.load(f)
    except (OSError, ValueError) as error:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise IndexFileError(f"cannot read index file {path}: {error}") from error
    if not isinstance(payload, dict):
        raise IndexFileError(f"index file {path} is not a JSON object")
    return payload


def read_version_entry(config: dict[str, Any], *, config_path: str) -> int:
    """config.json's ``version`` (0 for an index saved before versions existed); IndexFileError when bad."""
    version = config.get("version", 0)
    if not isinstance(version, int) or isinstance(version, bool) or version < 0:
        raise IndexFileError(f"{config_path}: 'version' is {version!r}, expected an integer >= 0")
    return version


def read_config(directory: str) -> tuple[str, dict[str, Any]]:
    """The directory an index is read from and its config.json, checked for this format version.

    Falls back to ``directory + '.bak'`` when a save was interrupted between its two renames.

    Returns
    -------
    source : str
        ``directory`` (absolute), or its backup.
    config : dict
        The parsed config.json.

    Raises
    ------
    FileNotFoundError
        If there is no index at ``directory``.
    IndexFileError
        If config.json cannot be read or is of another format version (``musicsim.index.open`` refuses a
        backend the table does not hold).
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
    config_path = os.path.join(source, CONFIG_FILE)
    config = read_json(config_path)
    if config.get("format_version") != FORMAT_VERSION:
        raise IndexFileError(f"{config_path}: format_version {config.get('format_version')!r}, "
                             f"this code reads {FORMAT_VERSION}")
    return source, config
