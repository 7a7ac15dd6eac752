"""Embeddings files: the one owner of their format, for the export that writes them and the index that reads them.

Formats read by ``load_embeddings``:

* ``.parquet`` (``experiments.export``): columns ``track_id``, ``path``, ``embedding``
  list<float32>, ``model``, ``duration_s``, ``group``, and schema metadata ``musicsim.model`` /
  ``musicsim.model_dir`` / ``musicsim.similarity`` / ``musicsim.version``;
* ``.npy`` [N, D] with ``<stem>.ids.json`` (a JSON array of the N track ids) and
  ``<stem>.meta.json`` (the same provenance);
* ``.npz``: a run's own ``embeddings.npz`` (``track_ids``, ``embeddings``, ``paths``, ``labels``,
  ``splits``, ``durations``), lying in its run folder.

``embedding_file_writers`` writes the parquet and .npy exports. What a run directory says of its
embeddings (``run_similarity``, ``run_embedding_dim``) is read through ``musicsim.rundir``.
"""
from __future__ import annotations

import json
import os
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from musicsim.similarity import SIMILARITIES
from musicsim.index.vectors import as_str_list, id_defects
from musicsim.rundir import FITTED_CONFIG_FILE, RunDir

IDS_SUFFIX = ".ids.json"
LEGACY_IDS_SUFFIX = ".ids.txt"
META_SUFFIX = ".meta.json"
# The parquet schema metadata keys of an export's provenance: musicsim.<key>.
PROVENANCE_KEYS = ("model", "model_dir", "similarity")


def export_sidecars(npy_path: str) -> dict[str, str]:
    """The files beside an ``.npy`` export: ``ids`` (``<stem>.ids.json``) and ``meta`` (``<stem>.meta.json``)."""
    stem = os.path.splitext(npy_path)[0]
    return {"ids": stem + IDS_SUFFIX, "meta": stem + META_SUFFIX}


def embedding_file_writers(*, parquet: str, npy: str, track_ids: Sequence[str], vectors: np.ndarray,
                           paths: Sequence[str], durations: Sequence[float], groups: Sequence[str | None],
                           provenance: Mapping[str, str]) -> dict[str, Callable[[str], None]]:
    """Writers of an export's embeddings files, for the caller to run on temporary names and swap in.

    Parameters
    ----------
    parquet, npy : str
        Destinations of the parquet file and of the ``.npy`` matrix (its ``.ids.json`` and
        ``.meta.json`` go beside it, see ``export_sidecars``).
    track_ids : sequence of str, length N
    vectors : np.ndarray, shape [N, D]
    paths, durations, groups : sequences of length N
        The audio file, its duration in seconds, and its group (album) of each track.
    provenance : mapping
        What made the embeddings: ``model``, ``model_dir``, ``similarity``, ``version``; the
        ``model`` column is its ``model``.

    Returns
    -------
    dict of str to callable
        ``{destination: write(path)}``: each writes one file's content to ``path``.
    """
    matrix = np.asarray(vectors, dtype=np.float32)
    if matrix.ndim != 2 or len(matrix) != len(track_ids):
        raise ValueError(f"embeddings must be [N, D] with N = {len(track_ids)} track ids, got shape {matrix.shape}")
    offsets = pa.array(np.arange(len(matrix) + 1, dtype=np.int32) * matrix.shape[1], type=pa.int32())
    embedding = pa.ListArray.from_arrays(offsets, pa.array(matrix.reshape(-1), type=pa.float32()))
    table = pa.table({
        "track_id": pa.array(list(track_ids), type=pa.string()),
        "path": pa.array(list(paths), type=pa.string()),
        "embedding": embedding,
        "model": pa.array([provenance["model"]] * len(matrix), type=pa.string()),
        "duration_s": pa.array(list(durations), type=pa.float64()),
        "group": pa.array(list(groups), type=pa.string()),
    })
    table = table.replace_schema_metadata({f"musicsim.{key}": value for key, value in provenance.items()})

    def write_npy(path: str) -> None:
        with open(path, "wb") as f:
            np.save(f, matrix)

    def write_json(value: Any) -> Callable[[str], None]:
        def write(path: str) -> None:
            with open(path, "w", encoding="utf-8") as f:
                json.dump(value, f, ensure_ascii=False)
        return write

    sidecars = export_sidecars(npy)
    return {parquet: lambda path: pq.write_table(table, path), npy: write_npy,
            sidecars["ids"]: write_json(list(track_ids)), sidecars["meta"]: write_json(dict(provenance))}


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
    return as_str_list(values.tolist())


def _load_npz(path: str) -> tuple[list[str], np.ndarray, dict[str, list[Any]]]:
    with np.load(path, allow_pickle=False) as archive:
        missing = [name for name in ("track_ids", "embeddings") if name not in archive.files]
        if missing:
            raise ValueError(f"{path}: missing arrays {missing} (has {sorted(archive.files)})")
        track_ids = as_str_list(archive["track_ids"].tolist())
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

    table = pq.read_table(path)
    missing = [name for name in ("track_id", "embedding") if name not in table.column_names]
    if missing:
        raise ValueError(f"{path}: missing columns {missing} (has {table.column_names})")
    raw_ids = table.column("track_id").to_pylist()
    nulls = [row for row, value in enumerate(raw_ids) if value is None]
    if nulls:
        raise ValueError(f"{path}: {len(nulls)} rows have a null track_id (first at row {nulls[0]})")
    track_ids = as_str_list(raw_ids)
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
    empty, duplicates = id_defects(track_ids)
    if empty:
        raise ValueError(f"{path}: {len(empty)} track ids are empty (first at row {empty[0]})")
    if duplicates:
        raise ValueError(f"{path}: {len(duplicates)} track ids appear more than once, e.g. {duplicates[:3]}")


def _read_side_file(path: str, *, kind: type, expected: str) -> Any:
    """The JSON value in an export's side file (``.ids.json``, ``.meta.json``); ValueError naming it
    when it cannot be read or is not of ``kind``."""
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except (OSError, ValueError) as error:
        raise ValueError(f"cannot read {path}: {error}") from error
    if not isinstance(value, kind):
        raise ValueError(f"{path}: expected {expected}")
    return value


def _load_npy(path: str) -> tuple[list[str], np.ndarray, dict[str, list[Any]]]:
    stem = os.path.splitext(path)[0]
    json_path, text_path = stem + IDS_SUFFIX, stem + LEGACY_IDS_SUFFIX
    if os.path.isfile(json_path):
        track_ids = _read_side_file(json_path, kind=list, expected="a JSON array of track id strings")
        if not all(isinstance(t, str) for t in track_ids):
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
    ``musicsim.similarity``; a ``.npy`` export has ``<stem>.meta.json`` beside it; a run's own
    ``embeddings.npz`` lies in its run folder (with ``run.json``).

    Returns
    -------
    dict
        ``model``, ``model_dir``, ``similarity``: str, or None when unknown.
    """
    found: dict[str, Any] = {}
    suffix = os.path.splitext(path)[1].lower()
    if suffix == ".parquet":
        try:
            schema_metadata = pq.read_schema(path).metadata or {}
        except Exception as error:  # noqa: BLE001 - pyarrow raises ArrowInvalid, OSError, ...
            raise ValueError(f"cannot read embeddings {path}: {error}") from error
        for key in PROVENANCE_KEYS:
            value = schema_metadata.get(f"musicsim.{key}".encode())
            found[key] = value.decode("utf-8") if value else None
    elif suffix == ".npy":
        meta_path = export_sidecars(path)["meta"]
        if os.path.isfile(meta_path):
            meta = _read_side_file(meta_path, kind=dict, expected="a JSON object")
            found = {key: meta.get(key) for key in PROVENANCE_KEYS}
    elif suffix == ".npz":
        beside = os.path.dirname(os.path.abspath(path))
        if RunDir(beside).exists():
            found["model_dir"] = beside
    model_dir = found.get("model_dir")
    if model_dir and not os.path.isabs(model_dir):
        # A relative model_dir was written from some working directory: try here, then beside the file.
        beside = os.path.join(os.path.dirname(os.path.abspath(path)), model_dir)
        found["model_dir"] = model_dir if os.path.isdir(model_dir) or not os.path.isdir(beside) else beside
    return {key: (str(found[key]) if found.get(key) else None) for key in PROVENANCE_KEYS}


# ---------------------------------------------------------------------- run directories
def _fitted_model_entry(*, model_dir: str, key: str) -> Any:
    """An entry of the ``fitted_model.json`` of a fitted model saved outside ``experiments.run``, or None."""
    try:
        with open(os.path.join(model_dir, FITTED_CONFIG_FILE)) as f:
            return json.load(f).get(key)
    except (OSError, ValueError, AttributeError):
        return None


def run_similarity(*, model_dir: str) -> str | None:
    """The similarity a run's embeddings are compared with (``musicsim.rundir.RunDir.similarity``), or a
    saved fitted model's (its ``fitted_model.json``); None when neither says."""
    similarity = RunDir(model_dir).similarity() or _fitted_model_entry(model_dir=model_dir, key="similarity")
    return similarity if similarity in SIMILARITIES else None


def run_embedding_dim(*, model_dir: str) -> int:
    """The dimension of the embeddings a run (or a saved fitted model) makes.

    Read from ``fitted_model.json``, else the header of the run's ``embeddings.npz``, else the
    run's recorded hyperparameters through its embedder.
    """
    from musicsim.embedder import load_embedder  # why here: it imports TensorFlow, which only this fallback needs

    dim = _fitted_model_entry(model_dir=model_dir, key="dim")
    if isinstance(dim, int) and not isinstance(dim, bool):
        return dim
    dim = RunDir(model_dir).embedding_dim()
    return int(dim) if dim is not None else int(load_embedder(model_dir).dim)
