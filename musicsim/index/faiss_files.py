"""The faiss backend's files in an index directory (``musicsim.index.storage`` describes the layout): writing
them, and reading them back with every file checked.

``read_faiss_files`` checks counts, dimensions, finite (unit, for cosine) vectors, the re-ranking entry and
the trained faiss index, and raises ``IndexFileError`` naming the file at fault: a damaged index must fail
on load, not answer nan scores.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any

# faiss's loader logs each CPU variant it could not load at INFO; under absl's INFO logging (experiments.run)
# that printed three ModuleNotFoundError lines on every index build.
logging.getLogger("faiss.loader").setLevel(logging.WARNING)
import faiss  # noqa: E402
import numpy as np  # noqa: E402

from musicsim.index.errors import IndexFileError  # noqa: E402
from musicsim.index.storage import (AUGMENTED_FILE, CONFIG_FILE, FAISS_FILE, LABELS_FILE,  # noqa: E402
                                    RAW_VECTORS_FILE, TRACKS_FILE, VECTORS_FILE, read_json, read_standardisation,
                                    read_version_entry, write_json_synced)
from musicsim.index.vectors import APPROXIMATE_KINDS, check_index_rerank  # noqa: E402
from musicsim.rerank import RerankSettings, settings_from_json  # noqa: E402
from musicsim.similarity import SIMILARITIES  # noqa: E402

# Stored cosine vectors are unit length; a norm further from 1 than this means a damaged vectors.npy.
UNIT_NORM_TOLERANCE = 1e-3
# config.json's approximate-search entries and their types.
SETTING_KINDS: dict[str, tuple[type, ...]] = {
    "nlist": (int, type(None)), "nprobe": (int, type(None)), "hnsw_m": (int,), "ef_construction": (int,),
    "ef_search": (int,), "training_points_per_list": (int,), "seed": (int,), "next_label": (int,)}


@dataclasses.dataclass
class FaissFiles:
    """The validated content of a faiss index directory.

    ``vectors`` is [N, D] float32, the tracks' own; ``searched_vectors`` [N, D] the augmented ones of
    an index that re-ranks with dba (None otherwise); ``rerank`` what config.json records (an index
    written before re-ranking existed records nothing: none); ``labels`` [N] int64 and ``faiss_index`` are None when the
    directory holds no trained approximate index (it is then rebuilt from the vectors).
    """

    similarity: str
    approximate: str | None
    model: dict[str, Any]
    settings: dict[str, int | None]  # nlist, nprobe, hnsw_m, ef_construction, ef_search, ..., next_label
    track_ids: list[str]
    metadata: dict[str, list[Any]]
    vectors: np.ndarray
    rerank: RerankSettings = RerankSettings()
    searched_vectors: np.ndarray | None = None
    labels: np.ndarray | None = None
    faiss_index: faiss.Index | None = None
    # Catalog standardisation: ``vectors`` are then the raw vectors (raw_vectors.npy), not unit ones.
    standardise: bool = False
    dimension_weights: np.ndarray | None = None
    version: int = 0


def write_faiss_files(directory: str, *, config: dict[str, Any], track_ids: list[str],
                      metadata: dict[str, list[Any]], vectors: np.ndarray, labels: np.ndarray | None,
                      faiss_index: faiss.Index | None, searched_vectors: np.ndarray | None = None) -> None:
    """Write a faiss index's files into ``directory`` (config.json last: it marks a complete directory).

    ``labels`` and ``faiss_index`` are written only when both are given (an approximate index);
    ``searched_vectors`` [N, D] (the augmented vectors of a dba index) only when given. ``vectors``
    go to raw_vectors.npy when ``config['standardise']`` (the raw vectors), else to vectors.npy.
    """
    vectors_file = RAW_VECTORS_FILE if config.get("standardise") else VECTORS_FILE
    for name, array in ((vectors_file, vectors), (AUGMENTED_FILE, searched_vectors)):
        if array is None:
            continue
        with open(os.path.join(directory, name), "wb") as f:
            np.save(f, array)
            f.flush()
            os.fsync(f.fileno())
    if labels is not None and faiss_index is not None:
        np.save(os.path.join(directory, LABELS_FILE), labels)
        faiss.write_index(faiss_index, os.path.join(directory, FAISS_FILE))
    write_json_synced(os.path.join(directory, TRACKS_FILE), {"track_ids": track_ids, "metadata": metadata})
    write_json_synced(os.path.join(directory, CONFIG_FILE), config)


def _entry(payload: dict[str, Any], path: str, key: str, kinds: tuple[type, ...]) -> Any:
    """``payload[key]`` (read from the file ``path``) when it is one of ``kinds``; IndexFileError otherwise."""
    if key not in payload:
        raise IndexFileError(f"index file {path} has no {key!r} entry")
    value = payload[key]
    if not isinstance(value, kinds) or isinstance(value, bool) and bool not in kinds:
        raise IndexFileError(f"index file {path}: {key!r} is {value!r}, "
                             f"expected {' or '.join(k.__name__ for k in kinds)}")
    return value


def _read_array(path: str) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except Exception as error:  # noqa: BLE001 - numpy raises EOFError, ValueError, OSError, ...
        raise IndexFileError(f"cannot read index file {path}: {type(error).__name__}: {error}") from error


def _read_config_entries(config: dict[str, Any], *, config_path: str) -> dict[str, Any]:
    """config.json's similarity, approximate, count, dim, approximate-search settings and model, checked."""
    similarity = _entry(config, config_path, "similarity", (str,))
    approximate = _entry(config, config_path, "approximate", (str, type(None)))
    if similarity not in SIMILARITIES or approximate not in (None,) + APPROXIMATE_KINDS:
        raise IndexFileError(f"{config_path}: unknown similarity {similarity!r} or approximate {approximate!r}")
    count = _entry(config, config_path, "count", (int,))
    dim = _entry(config, config_path, "dim", (int,))
    if count < 0 or dim < 1:
        raise IndexFileError(f"{config_path}: count {count} and dim {dim} are not valid")
    settings = {key: _entry(config, config_path, key, kinds) for key, kinds in SETTING_KINDS.items()}
    model = config.get("model") or {}
    if not isinstance(model, dict):
        raise IndexFileError(f"{config_path}: 'model' is {model!r}, expected an object")
    model_dim = model.get("dim")
    if model_dim is not None and model_dim != dim:
        raise IndexFileError(f"{config_path}: dim {dim} but its model makes {model_dim}-d embeddings")
    return {"similarity": similarity, "approximate": approximate, "count": count, "dim": dim,
            "settings": settings, "model": dict(model)}


def _read_tracks(path: str, *, count: int) -> tuple[list[str], dict[str, list[Any]]]:
    """tracks.json's ids [count] and metadata columns (each [count]), checked."""
    tracks = read_json(path)
    ids = _entry(tracks, path, "track_ids", (list,))
    metadata = _entry(tracks, path, "metadata", (dict,))
    if len(ids) != count:
        raise IndexFileError(f"{path} has {len(ids)} track ids, {CONFIG_FILE} says {count}")
    if not all(isinstance(t, str) and t for t in ids) or len(set(ids)) != len(ids):
        raise IndexFileError(f"{path}: track ids must be unique non-empty strings")
    for column, values in metadata.items():
        if not isinstance(values, list) or len(values) != count:
            raise IndexFileError(f"{path}: metadata column {column!r} is not a list of {count} values")
    return list(ids), {c: list(v) for c, v in metadata.items()}


def _off_unit(vectors: np.ndarray) -> np.ndarray:
    """Which rows of ``vectors`` [N, D] are not unit length (within ``UNIT_NORM_TOLERANCE``): [N] bool."""
    return np.abs(np.linalg.norm(vectors, axis=1) - 1.0) > UNIT_NORM_TOLERANCE


def _read_vectors(directory: str, *, ids: list[str], count: int, dim: int, similarity: str,
                  standardise: bool) -> np.ndarray:
    """The tracks' own vectors [count, dim] float32 (raw_vectors.npy of a standardising index), checked."""
    path = os.path.join(directory, RAW_VECTORS_FILE if standardise else VECTORS_FILE)
    vectors = _read_array(path)
    if vectors.shape != (count, dim) or vectors.dtype != np.float32:
        raise IndexFileError(f"{path} holds {vectors.dtype} {vectors.shape}, {CONFIG_FILE} says float32 ({count}, {dim})")
    finite = np.isfinite(vectors).all(axis=1)
    if not finite.all():
        raise IndexFileError(f"{path} is damaged: {int(np.sum(~finite))} rows have "
                             f"non-finite values (first: track {ids[int(np.argmin(finite))]!r})")
    if similarity == "cosine" and count and not standardise:
        off = _off_unit(vectors)
        if off.any():
            raise IndexFileError(f"{path} is damaged: {int(np.sum(off))} rows of a cosine "
                                 f"index are not unit vectors (first: track {ids[int(np.argmax(off))]!r})")
    return np.ascontiguousarray(vectors, dtype=np.float32)


def _read_rerank(directory: str, *, config: dict[str, Any], similarity: str, count: int,
                 dim: int) -> tuple[RerankSettings, np.ndarray | None]:
    """config.json's re-ranking, and the augmented vectors [count, dim] of a dba index (None otherwise)."""
    try:
        rerank = settings_from_json(config.get("rerank"))
        check_index_rerank(settings=rerank, similarity=similarity, backend="faiss", reranks=True)
    except (TypeError, ValueError) as error:
        raise IndexFileError(f"{os.path.join(directory, CONFIG_FILE)}: bad 'rerank' entry "
                             f"{config.get('rerank')!r}: {error}") from None
    if rerank.method not in ("dba", "dba+aqe"):
        return rerank, None
    path = os.path.join(directory, AUGMENTED_FILE)
    searched = _read_array(path)
    if (searched.shape != (count, dim) or searched.dtype != np.float32 or not np.isfinite(searched).all()
            or (count and np.any(_off_unit(searched)))):
        raise IndexFileError(f"{path} is damaged: expected {count} finite unit float32 "
                             f"rows of dimension {dim}, got {searched.dtype} {searched.shape}")
    return rerank, np.ascontiguousarray(searched)


def _read_trained(directory: str, *, count: int, dim: int, next_label: int) -> tuple[np.ndarray, faiss.Index]:
    """labels.npy [count] and the trained faiss.index of an approximate index, checked."""
    labels_path, faiss_path = os.path.join(directory, LABELS_FILE), os.path.join(directory, FAISS_FILE)
    labels = _read_array(labels_path)
    if labels.shape != (count,) or labels.dtype != np.int64 or (count > 1 and np.any(np.diff(labels) <= 0)):
        raise IndexFileError(f"{labels_path} holds {labels.dtype} {labels.shape}, expected "
                             f"{count} increasing int64 labels")
    if count and (labels[0] < 0 or labels[-1] >= next_label):
        raise IndexFileError(f"{labels_path}: labels outside [0, next_label)")
    try:
        stored = faiss.read_index(faiss_path)
    except RuntimeError as error:
        raise IndexFileError(f"cannot read index file {faiss_path}: {str(error).splitlines()[0]}") from error
    if stored.ntotal != count or stored.d != dim:
        raise IndexFileError(f"{faiss_path} holds {stored.ntotal} vectors of dimension {stored.d}, "
                             f"expected {count} of dimension {dim}")
    return labels, stored


def read_faiss_files(directory: str, *, config: dict[str, Any]) -> FaissFiles:
    """Read and validate the files of one faiss index directory (whose config.json is ``config``).

    Raises
    ------
    IndexFileError
        For any defect, naming the file.
    """
    config_path = os.path.join(directory, CONFIG_FILE)
    entries = _read_config_entries(config, config_path=config_path)
    similarity, count, dim = entries["similarity"], entries["count"], entries["dim"]
    ids, metadata = _read_tracks(os.path.join(directory, TRACKS_FILE), count=count)
    standardise, dimension_weights = read_standardisation(config, config_path=config_path, dim=dim)
    vectors = _read_vectors(directory, ids=ids, count=count, dim=dim, similarity=similarity, standardise=standardise)
    rerank, searched = _read_rerank(directory, config=config, similarity=similarity, count=count, dim=dim)
    files = FaissFiles(similarity=similarity, approximate=entries["approximate"], model=entries["model"],
                       settings=entries["settings"], track_ids=ids, metadata=metadata, vectors=vectors, rerank=rerank,
                       searched_vectors=searched, standardise=standardise, dimension_weights=dimension_weights,
                       version=read_version_entry(config, config_path=config_path))
    if entries["approximate"] is not None and os.path.exists(os.path.join(directory, FAISS_FILE)):
        files.labels, files.faiss_index = _read_trained(directory, count=count, dim=dim,
                                                        next_label=entries["settings"]["next_label"])
    return files
