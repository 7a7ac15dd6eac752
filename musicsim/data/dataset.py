"""A prepared dataset directory, as written by ``data_prep.build``.

Layout::

    DIR/dataset.json        name, kind, decode sample_rate, pool_size, max_seconds, relevance
    DIR/tracks.csv          track_id, split, labels ('|'-joined), duration_s, path (absolute source file)
    DIR/report.json         counts per split and label, seconds of audio, skipped files with reasons
    DIR/{train,eval,test}/*.tfrecord   pooled audio (see ``musicsim.data.tfrecords``)
    DIR/feature_cache/      per-track model inputs computed from the source files and kept for reruns:
                            ``<feature_fn>/`` fitted models' feature vectors (``musicsim.features``),
                            ``chroma/`` the LSTM's chromagrams (``musicsim.models.rnn``)
"""
from __future__ import annotations

import csv
import json
import os
from dataclasses import asdict, dataclass, field

from musicsim.atomic import atomic_open, write_json_atomic

LABEL_SEPARATOR = "|"
DATASET_INFO_FILE = "dataset.json"  # written last: a folder holding it is a finished build
TRACKS_FILE = "tracks.csv"
REPORT_FILE = "report.json"
FEATURE_CACHE_DIRNAME = "feature_cache"


def is_prepared(dataset_dir: str) -> bool:
    """Whether ``dataset_dir`` holds a finished prepared dataset (its ``dataset.json`` and ``tracks.csv``)."""
    return (os.path.isfile(os.path.join(dataset_dir, DATASET_INFO_FILE))
            and os.path.isfile(os.path.join(dataset_dir, TRACKS_FILE)))


def feature_cache_dir(dataset_dir: str, *, kind: str | None = None) -> str:
    """The dataset's per-track feature cache folder, or its ``kind`` subfolder (e.g. ``"chroma"``).

    Examples
    --------
    >>> feature_cache_dir("data/demo", kind="chroma")
    'data/demo/feature_cache/chroma'
    """
    folder = os.path.join(dataset_dir, FEATURE_CACHE_DIRNAME)
    return folder if kind is None else os.path.join(folder, kind)


@dataclass
class DatasetInfo:
    """What ``dataset.json`` records about how a dataset was prepared."""

    name: str
    kind: str
    sample_rate: int  # decode rate, before pooling
    pool_size: int
    max_seconds: float | None
    relevance: str = "album"  # default label relevance definition (musicsim.relevance) for this dataset
    min_shared_tags: int = 2
    split_by: str = "track"
    split_seed: int = 0
    extra: dict = field(default_factory=dict)

    def save(self, dataset_dir: str) -> None:
        write_json_atomic(os.path.join(dataset_dir, DATASET_INFO_FILE), asdict(self))

    @classmethod
    def load(cls, dataset_dir: str) -> "DatasetInfo":
        path = os.path.join(dataset_dir, DATASET_INFO_FILE)
        if not os.path.exists(path):
            raise FileNotFoundError(f"{dataset_dir} is not a prepared dataset (no dataset.json); "
                                    "run `python -m data_prep.build` first")
        with open(path) as f:
            recorded = json.load(f)
        if "similarity" in recorded:  # datasets prepared before the label definition was called relevance
            recorded["relevance"] = recorded.pop("similarity")
        return cls(**recorded)


@dataclass(frozen=True)
class CatalogEntry:
    """One row of ``tracks.csv``."""

    track_id: str
    split: str
    labels: tuple[str, ...]
    duration_s: float
    path: str


TRACKS_COLUMNS = ("track_id", "split", "labels", "duration_s", "path")


def write_catalog(dataset_dir: str, entries: list[CatalogEntry]) -> None:
    """Write ``tracks.csv`` atomically, sorted by split then track id."""
    with atomic_open(os.path.join(dataset_dir, TRACKS_FILE), newline="") as f:
        writer = csv.writer(f)
        writer.writerow(TRACKS_COLUMNS)
        for e in sorted(entries, key=lambda e: (e.split, e.track_id)):
            writer.writerow([e.track_id, e.split, LABEL_SEPARATOR.join(e.labels), f"{e.duration_s:.3f}", e.path])


def read_catalog(dataset_dir: str, *, split: str | None = None) -> list[CatalogEntry]:
    """Rows of ``tracks.csv`` (optionally one split), sorted by track id."""
    path = os.path.join(dataset_dir, TRACKS_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{dataset_dir} is not a prepared dataset (no tracks.csv)")
    with open(path, newline="") as f:
        rows = [CatalogEntry(track_id=r["track_id"], split=r["split"],
                             labels=tuple(l for l in r["labels"].split(LABEL_SEPARATOR) if l),
                             duration_s=float(r["duration_s"] or 0.0), path=r["path"])
                for r in csv.DictReader(f)]
    if split is not None:
        rows = [r for r in rows if r.split == split]
    return sorted(rows, key=lambda r: r.track_id)


