"""TensorBoard embedding projector files for a run: ``tensorboard --logdir DIR`` shows its embedding map.

Writes, into the run's log directory::

    projector/embeddings.tsv     [N, D] vectors, tab-separated, one track per line
    projector/metadata.tsv       a header ``track<TAB>group``, then one row per track
    projector_config.pbtxt       names the tensor and metadata files (paths relative to the config)

The projector plugin lists a run when its directory holds event files; a run without any (a fitted
model) gets an empty event file so that it is listed too. Every file is written to a temporary name
and renamed.
"""
from __future__ import annotations

import glob
import os
from typing import Sequence

import numpy as np
from tensorboard.summary.writer.event_file_writer import EventFileWriter

from musicsim.atomic import atomic_open

CONFIG_FILE = "projector_config.pbtxt"
PROJECTOR_DIR = "projector"
TENSOR_FILE = "embeddings.tsv"
METADATA_FILE = "metadata.tsv"
TENSOR_NAME = "track_embeddings"


def _write_atomic(path: str, text: str) -> None:
    with atomic_open(path) as f:
        f.write(text)


def _tsv_field(value: object) -> str:
    """A metadata cell: tabs and newlines would break the TSV, so they become spaces."""
    return " ".join(str(value).split()) or "-"


def write_projector(*, log_dir: str, track_ids: Sequence[str], embeddings: np.ndarray,
                    groups: Sequence[str] | None = None) -> str:
    """Write the projector files of ``embeddings`` into ``log_dir``.

    Parameters
    ----------
    log_dir : the run's directory (what ``tensorboard --logdir`` lists as a run)
    track_ids : sequence of str, length N
    embeddings : array_like, shape [N, D]
    groups : sequence of str, length N, optional
        Each track's group (its album / labels), a metadata column to colour the points by.

    Returns
    -------
    str : the path of ``projector_config.pbtxt``

    Raises
    ------
    ValueError
        When the lengths disagree or ``embeddings`` is not a non-empty [N, D] array.
    """
    vectors = np.asarray(embeddings, dtype=np.float32)
    if vectors.ndim != 2 or vectors.shape[0] == 0 or vectors.shape[1] == 0:
        raise ValueError(f"embeddings must be a non-empty [N, D] array, got shape {vectors.shape}")
    if len(track_ids) != vectors.shape[0] or (groups is not None and len(groups) != vectors.shape[0]):
        raise ValueError(f"{vectors.shape[0]} embeddings but {len(track_ids)} track ids"
                         + ("" if groups is None else f" and {len(groups)} groups"))
    folder = os.path.join(log_dir, PROJECTOR_DIR)
    os.makedirs(folder, exist_ok=True)
    _write_atomic(os.path.join(folder, TENSOR_FILE),
                  "".join("\t".join(f"{v:.7g}" for v in row) + "\n" for row in vectors.tolist()))
    rows = ["track\tgroup"] + [f"{_tsv_field(t)}\t{_tsv_field(g)}"
                               for t, g in zip(track_ids, groups if groups is not None else ["-"] * len(track_ids))]
    _write_atomic(os.path.join(folder, METADATA_FILE), "\n".join(rows) + "\n")
    config = (f'embeddings {{\n  tensor_name: "{TENSOR_NAME}"\n'
              f'  tensor_path: "{PROJECTOR_DIR}/{TENSOR_FILE}"\n'
              f'  metadata_path: "{PROJECTOR_DIR}/{METADATA_FILE}"\n'
              f"  tensor_shape: {vectors.shape[0]}\n  tensor_shape: {vectors.shape[1]}\n}}\n")
    config_path = os.path.join(log_dir, CONFIG_FILE)
    _write_atomic(config_path, config)
    if not glob.glob(os.path.join(log_dir, "events.out.tfevents.*")):
        writer = EventFileWriter(log_dir)
        writer.close()
    return config_path
