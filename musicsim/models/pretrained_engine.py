"""The one-pass engine (``--model=pretrained``): one decode, one spectrogram, every musicnn tagger.

musicnn's four trained taggers (``MSD_musicnn``, ``MTT_musicnn``, ``MSD_vgg``, ``MTT_vgg``; see
`musicsim.models.musicnn`) read the very same input: 16 kHz mono, musicnn's log-mel spectrogram
cut into 3 s patches. So each file is decoded once, block by block
(`musicsim.data.audio.iter_excerpt_blocks`: memory is bounded by a block whatever the track's length),
its patches are computed once (`musicnn.iter_patch_blocks`), and every network the engine needs
runs on the same patches in one traced graph (`BlockNetworks`). A track's vector
is the concatenation of the chosen *blocks*: the mean over its patches of one layer of one
checkpoint (``("MSD_musicnn", "penultimate")``), or a cheap statistic of the same spectrogram
(``("logmel", "mean")``, ``("logmel", "std")``: each mel band's mean and standard deviation).

The blocks and their weights are `BLOCKS`, fixed in the code (chosen under album folds:
``benchmarks/generalisation.py --protocol=album_folds``). `fit` learns only the standardisation
(each dimension's mean and scale over any set of files: no labels), and the embedding is::

    ((raw - mean) / scale) * dimension_weights        # weight / sqrt(block dim) per dimension

compared by cosine, so each block weighs by its weight whatever its size. A long track runs at most
`DEFAULT_MAX_PATCHES` patches, spread evenly over it, and is decoded only around them
(`iter_seeked_patches`); ``max_patches=None`` runs every patch of one streamed decode. `raw_engine` is an
engine "fitted" with the identity standardisation: what a scan indexes (the index standardises
over its own catalog, then applies `PretrainedEngine.dimension_weights`).

Every layer of every network comes out of the same forward pass, so the per-track feature cache
holds them all (`all_block_means`): a new choice of blocks re-uses it without running a network.

>>> engine = raw_engine()                                          # doctest: +SKIP
>>> vectors, ok_indices, skipped = engine.embed_paths(paths=paths)  # doctest: +SKIP
"""
from __future__ import annotations

import hashlib
import json
from typing import Any, Mapping, Sequence

import numpy as np

from musicsim.data.dataset import feature_cache_dir
from musicsim.models import musicnn
from musicsim.models.engine_blocks import (ALL_BLOCKS, BLOCK_DIMS, CHECKPOINTS, DEFAULT_PRECISION, FEATURES_VERSION,
                                           LOGMEL, PRECISIONS, BlockNetworks, EngineError, all_block_means,
                                           check_blocks, feature_blocks, needed_checkpoints, shared_networks)
from musicsim.models.engine_patches import (DEFAULT_BATCH_PATCHES, SEEK_MARGIN_SECONDS, expected_patches,
                                            iter_seeked_patches, iter_selected_patches, sampled_patches)
from musicsim.models.entry import FittedEntry
from musicsim.models.fitted import StandardisedModel

# The engine's vector: (checkpoint, layer, weight) per block, concatenated in this order. Chosen under
# album folds over the extended corpus (15 albums, 218 tracks, 5 folds; docs/engine-choice.md, from
# `benchmarks/generalisation.py --protocol=album_folds --corpus=CORPUS`): the four penultimate layers
# (catalog mAP 0.739) plus both musicnn networks' max-pooled mid-end features (0.748, better on 4 of 5 folds,
# no extra network cost). Did not help: the taggrams (-0.016), the log-mel mean/std (-0.006 to -0.014), MFCC
# statistics (-0.001), dropping any network (0.716-0.732), weights searched on the training albums (-0.009).
BLOCKS: tuple[tuple[str, str, float], ...] = (
    ("MSD_musicnn", "penultimate", 1.0),
    ("MTT_musicnn", "penultimate", 1.0),
    ("MSD_vgg", "penultimate", 1.0),
    ("MTT_vgg", "penultimate", 1.0),
    ("MSD_musicnn", "maxpool", 1.0),
    ("MTT_musicnn", "maxpool", 1.0),
)
# The index re-ranking the engine's catalogs use (musicsim.rerank.parse_settings syntax). Album folds:
# dba+aqe gains +0.022 catalog mAP on 5 of 5 folds (k=3, 5, 8 alike: +0.019 / +0.022 / +0.023; 5 is the
# middle, safer for short albums), PC better on 4 of 5.
ENGINE_RERANK = "dba+aqe:k=5,alpha=3"
# At most this many 3 s patches per track go through the networks, spread evenly over it (None: all).
# The networks are the cost (per 3 s patch and CPU core: musicnn 34 ms, vgg 16 ms, the four 100 ms; about
# 30 s of audio per CPU second on every patch): 16 patches (48 s) of a 4-minute track is a fifth of it, and
# a sampled track is decoded only around its patches (benchmarks/engine_throughput.py: 88 s of audio per
# CPU second, 5.4x the fusion's; 8 patches: 169, 10.4x). Album folds (the chosen blocks and re-ranking, at most
# 64 patches a track as the reference): 32 patches 0.762, 16 0.759, 8 0.752 catalog mAP; 16 keeps the quality
# within 0.01 and the throughput goal. Against every patch (16 tracks of 12-204 patches, standardised):
# cosine to the full-track vector min 0.916, mean 0.969 (tests/test_pretrained_engine.py checks it on music).
DEFAULT_MAX_PATCHES: int | None = 16

def _engine_version(*, blocks: Sequence[tuple[str, str, float]], max_patches: int | None, precision: str,
                    seek: bool = True) -> str:
    """Names everything a file's vector depends on: the feature version, the blocks, their weights, sampling."""
    identity = json.dumps({"features": FEATURES_VERSION, "musicnn": musicnn.EMBEDDING_VERSION,
                           "blocks": [[c, l, float(w)] for c, l, w in blocks], "max_patches": max_patches,
                           "precision": precision, "seek": bool(seek) and max_patches is not None}, sort_keys=True)
    return f"pretrained-v{FEATURES_VERSION}-{hashlib.sha1(identity.encode()).hexdigest()[:12]}"


# Changes whenever a file's (default) vector would change: a scan re-embeds on change.
ENGINE_VERSION: str = _engine_version(blocks=BLOCKS, max_patches=DEFAULT_MAX_PATCHES, precision=DEFAULT_PRECISION)


# -- the fitted model -----------------------------------------------------------------------------
class PretrainedEngine(StandardisedModel):
    """The chosen blocks of one pass, standardised (label-free), weighted per block; cosine.

    Parameters
    ----------
    blocks : sequence of (checkpoint, layer, weight) or None
        The vector's blocks (default `BLOCKS`).
    max_patches : int >= 1 or None
        At most this many 3 s patches per track through the networks, spread evenly (None: all).
    seek : bool
        A sampled track is decoded only around its patches (default); False: decoded whole.
    precision : str
        The networks' numerics (`PRECISIONS`).
    batch_patches : int >= 1
        Patches per network call.
    min_seconds : float >= 0
        Files shorter than this are skipped.
    pretrained_cache : str or None
        Cache root of the pretrained weights.
    **settings
        `FittedModel`'s: sample_rate (16000 only), max_seconds (default None: whole tracks),
        workers (unused: the networks run in this process), cache_dir, progress.
    """

    name = "pretrained"
    similarity = "cosine"

    def __init__(self, *, blocks: Sequence[Sequence[Any]] | None = None,
                 max_patches: int | None = DEFAULT_MAX_PATCHES, seek: bool = True,
                 precision: str = DEFAULT_PRECISION,
                 batch_patches: int = DEFAULT_BATCH_PATCHES, min_seconds: float = 1.0,
                 pretrained_cache: str | None = None, sample_rate: int = musicnn.SAMPLE_RATE,
                 max_seconds: float | None = None, **settings: Any):
        if sample_rate != musicnn.SAMPLE_RATE:
            raise EngineError(f"the musicnn networks take {musicnn.SAMPLE_RATE} Hz audio, "
                              f"got sample_rate={sample_rate}")
        if max_patches is not None and (isinstance(max_patches, bool) or int(max_patches) < 1):
            raise EngineError(f"max_patches must be >= 1 or None, got {max_patches!r}")
        if precision not in PRECISIONS:
            raise EngineError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        if min_seconds < 0:
            raise EngineError(f"min_seconds must be >= 0, got {min_seconds}")
        super().__init__(sample_rate=sample_rate, max_seconds=max_seconds, **settings)
        self.blocks = check_blocks(BLOCKS if blocks is None else blocks)
        self.max_patches = None if max_patches is None else int(max_patches)
        self.seek = bool(seek)
        self.precision = precision
        self.batch_patches = int(batch_patches)
        self.min_seconds = float(min_seconds)
        self.pretrained_cache = pretrained_cache
        self.checkpoints = needed_checkpoints(self.blocks)
        self.cached_blocks = feature_blocks(self.checkpoints)
        self._networks: BlockNetworks | None = None

    @classmethod
    def for_run(cls, *, params: Mapping[str, Any], run_params: Mapping[str, str], dataset_dir: str,
                max_seconds: float | None, workers: int | None) -> "PretrainedEngine":
        """An engine for an ``experiments.run`` run: whole tracks (the engine's setting), whatever
        excerpt the dataset was prepared with; the dataset's feature cache is reused."""
        del max_seconds
        settings = {keyword: params[key] for keyword, key in run_params.items() if key in params}
        return cls(max_seconds=None, workers=workers, cache_dir=feature_cache_dir(dataset_dir), **settings)

    @property
    def feature_fn(self) -> str:  # the feature cache's folder and key: what the cached vector holds
        sampling = "all" if self.max_patches is None else f"p{self.max_patches}" + ("s" if self.seek else "")
        networks = "+".join(self.checkpoints) or "none"
        return f"pretrained-{networks}-{self.precision}-{sampling}-v{FEATURES_VERSION}"

    @property
    def version(self) -> str:
        """Changes whenever a file's vector would (`ENGINE_VERSION` for the default settings)."""
        return _engine_version(blocks=self.blocks, max_patches=self.max_patches, precision=self.precision,
                               seek=self.seek)

    def _extra_settings(self) -> dict[str, Any]:
        return {"blocks": [[c, l, w] for c, l, w in self.blocks], "max_patches": self.max_patches, "seek": self.seek,
                "precision": self.precision, "batch_patches": self.batch_patches, "min_seconds": self.min_seconds,
                "pretrained_cache": self.pretrained_cache}

    @property
    def dim(self) -> int:
        return int(sum(BLOCK_DIMS[(c, l)] for c, l, _ in self.blocks))

    def block_slices(self) -> dict[tuple[str, str], slice]:
        """Where each block lies in the vector."""
        slices, start = {}, 0
        for checkpoint, layer, _ in self.blocks:
            size = BLOCK_DIMS[(checkpoint, layer)]
            slices[(checkpoint, layer)] = slice(start, start + size)
            start += size
        return slices

    def dimension_weights(self) -> np.ndarray:
        """Per-dimension multipliers applied after the z-score: each block's weight / sqrt(its size).

        Returns
        -------
        np.ndarray, float64, shape ``[dim]``
        """
        return np.concatenate([np.full(BLOCK_DIMS[(c, l)], w / np.sqrt(BLOCK_DIMS[(c, l)])) for c, l, w in self.blocks])

    @property
    def networks(self) -> BlockNetworks:
        """The engine's networks in one graph, loaded on first use (shared in the process)."""
        if self._networks is None:
            self._networks = shared_networks(checkpoints=self.checkpoints, batch_patches=self.batch_patches,
                                             precision=self.precision, pretrained_cache=self.pretrained_cache)
        return self._networks

    def _transform(self, features: np.ndarray) -> np.ndarray:
        return super()._transform(features) * self.dimension_weights()

    # -- features -------------------------------------------------------------------------------
    def block_means_of_file(self, *, path: str) -> dict[tuple[str, str], np.ndarray]:
        """`all_block_means` of one file with this engine's settings (its networks' every layer)."""
        return all_block_means(path=path, checkpoints=self.checkpoints, max_seconds=self.max_seconds,
                               max_patches=self.max_patches, min_seconds=self.min_seconds, networks=self.networks,
                               seek=self.seek)

    def cached_vector(self, *, path: str) -> np.ndarray:
        """Every cached block of one file, concatenated in `feature_blocks` order: float64 ``[cached dim]``.

        Raises
        ------
        AudioDecodeError
            Naming the file and why it cannot be used.
        """
        means = self.block_means_of_file(path=path)
        return np.concatenate([means[block] for block in self.cached_blocks])

    def choose_blocks(self, cached: np.ndarray) -> np.ndarray:
        """The engine's blocks out of cached vectors ``[n, cached dim]`` -> ``[n, dim]``."""
        offsets, start = {}, 0
        for block in self.cached_blocks:
            offsets[block] = start
            start += BLOCK_DIMS[block]
        columns = np.concatenate([np.arange(offsets[(c, l)], offsets[(c, l)] + BLOCK_DIMS[(c, l)])
                                  for c, l, _ in self.blocks])
        return cached[:, columns]

    @property
    def cached_dim(self) -> int:
        return int(sum(BLOCK_DIMS[block] for block in self.cached_blocks))

    def extract(self, *, paths: list[str]) -> tuple[np.ndarray, list[int], list[tuple[str, str]]]:
        """The raw (unstandardised, unweighted) vectors of files, cached per track.

        Returns
        -------
        features : np.ndarray, float64, shape ``[n_ok, dim]``
        ok_indices : list[int]
        skipped : list[(path, reason)]
        """
        cached, ok_indices, skipped = self.extract_each(paths=paths, dim=self.cached_dim,
                                                        extract_one=lambda path: self.extract_one(path=path),
                                                        desc=self.name)
        if not ok_indices:
            return np.zeros((0, self.dim), dtype=np.float64), ok_indices, skipped
        return self.choose_blocks(cached), ok_indices, skipped

    def extract_one(self, *, path: str) -> tuple[np.ndarray | None, str | None]:
        """One file's cached vector (every block of its pass) or ``(None, reason)``; never raises."""
        return self.cached_file_features(path=path, dim=self.cached_dim, compute=lambda: self.cached_vector(path=path))

    def identity_standardisation(self) -> "PretrainedEngine":
        """Mark the engine fitted with mean 0, scale 1: it embeds weighted raw vectors."""
        self.scaler_mean = np.zeros(self.dim)
        self.scaler_scale = np.ones(self.dim)
        self.fitted = True
        return self


ENTRY = FittedEntry(name="pretrained", fitted_class=PretrainedEngine)


def raw_engine(**settings: Any) -> PretrainedEngine:
    """The engine with the identity standardisation (no fit): ``embed_paths`` gives ``raw * dimension_weights``.

    What a scan indexes: the index standardises each dimension over its own catalog.
    ``settings`` are `PretrainedEngine`'s (defaults: `BLOCKS`, whole tracks).
    """
    settings.setdefault("progress", False)
    return PretrainedEngine(**settings).identity_standardisation()


__all__ = ["ALL_BLOCKS", "BLOCKS", "BLOCK_DIMS", "BlockNetworks", "CHECKPOINTS", "DEFAULT_MAX_PATCHES",
           "DEFAULT_PRECISION", "ENGINE_RERANK", "ENGINE_VERSION", "EngineError", "LOGMEL", "PretrainedEngine",
           "SEEK_MARGIN_SECONDS", "all_block_means", "check_blocks", "expected_patches", "iter_seeked_patches",
           "iter_selected_patches", "raw_engine", "sampled_patches", "shared_networks"]
