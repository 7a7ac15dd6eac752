"""What the local build (``data_prep.build``) and the Beam pipeline (``data_prep.beam_pipeline``) share.

The driver plans the shards (:func:`plan_shards`), every runner serializes a decoded track the same
way (:func:`track_record`) and hands back a :class:`BuiltShards`; a :class:`FeatureSpec` says which
per-track feature vectors a build caches.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from typing import Sequence

import numpy as np

from data_prep.sources import SourceTrack
from musicsim.data.audio import DecodeSettings
from musicsim.data.dataset import CatalogEntry, feature_cache_dir
from musicsim.data.tfrecords import SPLITS, Track, serialize_track

# Part of every shard's key: bump when the bytes a shard holds would change for the same inputs.
SHARD_FORMAT_VERSION = 1
LOCAL_RUNNER = "local"
BEAM_RUNNERS = ("DirectRunner", "FlinkRunner", "SparkRunner", "DataflowRunner")
RUNNERS = (LOCAL_RUNNER,) + BEAM_RUNNERS
# Beam's WriteToTFRecord names shards <prefix>-SSSSS-of-NNNNN.tfrecord.
BEAM_SHARD_PREFIX = "part"


@dataclass
class ShardPlan:
    """One shard to write: its tracks (sorted by id) and the key its sidecar must match to be reused."""

    split: str
    index: int
    tracks: list[SourceTrack]
    key: str

    def record_path(self, output: str) -> str:
        return os.path.join(output, self.split, f"shard-{self.index:05d}.tfrecord")

    def sidecar_path(self, output: str) -> str:
        return os.path.join(output, self.split, f"shard-{self.index:05d}.json")


def _file_stamp(path: str) -> list[int]:
    """Size and mtime: a changed source file gives its shard a new key."""
    try:
        stat = os.stat(path)
    except OSError:
        return [-1, -1]
    return [stat.st_size, stat.st_mtime_ns]


def plan_shards(*, tracks: Sequence[SourceTrack], split_of: dict[str, str], settings: DecodeSettings,
                shard_size: int) -> list[ShardPlan]:
    """Cut each split's tracks, sorted by id, into shards of ``shard_size`` and key each shard."""
    plans = []
    for split in SPLITS:
        members = sorted((t for t in tracks if split_of[t.track_id] == split), key=lambda t: t.track_id)
        for index, start in enumerate(range(0, len(members), shard_size)):
            chunk = members[start:start + shard_size]
            payload = {"format": SHARD_FORMAT_VERSION, "settings": asdict(settings), "split": split,
                       "tracks": [[t.track_id, list(t.labels), t.path, _file_stamp(t.path)] for t in chunk]}
            key = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
            plans.append(ShardPlan(split=split, index=index, tracks=chunk, key=key))
    return plans




def track_record(*, track: SourceTrack, pooled: np.ndarray, settings: DecodeSettings) -> bytes:
    """The serialized ``tf.train.Example`` of one decoded track: what every runner writes for it.

    Parameters
    ----------
    track : SourceTrack
    pooled : np.ndarray, float32, shape ``[n]``
        Its pooled excerpt (``musicsim.data.audio.pooled_excerpt``).
    settings : DecodeSettings
    """
    return serialize_track(Track(track_id=track.track_id, labels=track.labels, audio=pooled,
                                 sample_rate=settings.sample_rate // settings.pool_size,
                                 pool_size=settings.pool_size))




@dataclass(frozen=True)
class FeatureSpec:
    """Which per-track feature vectors a build caches, keyed as ``musicsim.features.extract_many`` keys them."""

    name: str  # a musicsim.features.FEATURE_FUNCTIONS name: the fitted model's feature_fn
    sample_rate: int  # the fitted models' decode rate
    max_seconds: float | None  # the dataset's excerpt, as experiments.run passes it
    cache_dir: str

    @classmethod
    def for_dataset(cls, *, name: str, output: str, max_seconds: float | None) -> "FeatureSpec":
        """The cache ``experiments.run --model=<name>`` reads for the dataset in ``output``."""
        from musicsim.features import DEFAULT_SAMPLE_RATE as FEATURE_SAMPLE_RATE  # why: librosa+scipy ~2 s

        return cls(name=name, sample_rate=FEATURE_SAMPLE_RATE, max_seconds=max_seconds,
                   cache_dir=feature_cache_dir(output))


@dataclass
class BuiltShards:
    """What a runner wrote: the catalog rows, the files it skipped and its shard counts."""

    entries: list[CatalogEntry]
    skipped: list[dict]  # {"path", "track_id", "reason"}
    written: int
    reused: int
    feature_failures: list[dict] = field(default_factory=list)  # {"path", "reason"}
    beam_options: list[str] = field(default_factory=list)
