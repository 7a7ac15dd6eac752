"""The one-pass engine (``--model=pretrained``): one decode, one spectrogram, every musicnn tagger.

musicnn's four trained taggers (``MSD_musicnn``, ``MTT_musicnn``, ``MSD_vgg``, ``MTT_vgg``; see
`musicsim.models.musicnn`) read the very same input: 16 kHz mono, musicnn's log-mel spectrogram
cut into 3 s patches. So each file is decoded once, block by block
(`musicsim.audio.iter_excerpt_blocks`: memory is bounded by a block whatever the track's length),
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
import math
import os
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np

from musicsim.audio import (AudioDecodeError, AudioInfo, MeasuredBlocks, UnsupportedHeaderError, audio_info,
                            centred_excerpt, check_excerpt, iter_audio_blocks, iter_excerpt_blocks)
from musicsim.models import musicnn
from musicsim.models.entry import FittedEntry
from musicsim.models.fitted import StandardisedModel

CHECKPOINTS = tuple(musicnn.ARCHITECTURES)  # MSD_musicnn, MTT_musicnn, MSD_vgg, MTT_vgg
# The cheap statistics of the spectrogram itself, as a pseudo-checkpoint: each mel band over the track.
LOGMEL = "logmel"
LOGMEL_LAYERS = ("mean", "std")
BLOCK_DIMS: dict[tuple[str, str], int] = {
    **{(checkpoint, layer): dim for checkpoint in CHECKPOINTS
       for layer, dim in musicnn.LAYER_DIMS[musicnn.ARCHITECTURES[checkpoint]].items()},
    **{(LOGMEL, layer): musicnn.N_MELS for layer in LOGMEL_LAYERS},
}
ALL_BLOCKS = tuple(BLOCK_DIMS)  # every (checkpoint, layer) one pass gives

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
# A sampled track is decoded only around its patches (a seek each), this much either side.
SEEK_MARGIN_SECONDS = 0.5
# Numerics of the networks: "float32" (exact, the reference) and the faster paths (see BlockNetworks).
PRECISIONS = ("float32",)
DEFAULT_PRECISION = "float32"
# Patches per network call (bounds the activations' memory).
DEFAULT_BATCH_PATCHES = 8
# Bump when the cached block means of a file change (how they are computed, not which are chosen).
FEATURES_VERSION = 1


def _engine_version(*, blocks: Sequence[tuple[str, str, float]], max_patches: int | None, precision: str,
                    seek: bool = True) -> str:
    """Names everything a file's vector depends on: the feature version, the blocks, their weights, sampling."""
    identity = json.dumps({"features": FEATURES_VERSION, "musicnn": musicnn.EMBEDDING_VERSION,
                           "blocks": [[c, l, float(w)] for c, l, w in blocks], "max_patches": max_patches,
                           "precision": precision, "seek": bool(seek) and max_patches is not None}, sort_keys=True)
    return f"pretrained-v{FEATURES_VERSION}-{hashlib.sha1(identity.encode()).hexdigest()[:12]}"


# Changes whenever a file's (default) vector would change: a scan re-embeds on change.
ENGINE_VERSION: str = _engine_version(blocks=BLOCKS, max_patches=DEFAULT_MAX_PATCHES, precision=DEFAULT_PRECISION)


class EngineError(ValueError):
    """A setting of the engine that cannot work (unknown block, precision, ...)."""


def check_blocks(blocks: Iterable[Sequence[Any]]) -> tuple[tuple[str, str, float], ...]:
    """Blocks as ``((checkpoint, layer, weight), ...)``, checked: known, distinct, weights >= 0, not all 0."""
    checked = []
    for block in blocks:
        if len(block) != 3:
            raise EngineError(f"a block is (checkpoint, layer, weight), got {block!r}")
        checkpoint, layer, weight = str(block[0]), str(block[1]), float(block[2])
        if (checkpoint, layer) not in BLOCK_DIMS:
            raise EngineError(f"unknown block ({checkpoint!r}, {layer!r}): expected one of {list(ALL_BLOCKS)}")
        if not np.isfinite(weight) or weight < 0:
            raise EngineError(f"block ({checkpoint}, {layer}): weight must be >= 0, got {weight}")
        checked.append((checkpoint, layer, weight))
    names = [(c, l) for c, l, _ in checked]
    if len(set(names)) != len(names):
        raise EngineError(f"blocks must be distinct, got {names}")
    if not any(w > 0 for _, _, w in checked):
        raise EngineError(f"at least one block needs a weight > 0, got {checked}")
    return tuple(checked)


def needed_checkpoints(blocks: Iterable[Sequence[Any]]) -> tuple[str, ...]:
    """The networks the blocks read, in `CHECKPOINTS` order (the log-mel statistics need none)."""
    wanted = {block[0] for block in blocks}
    return tuple(checkpoint for checkpoint in CHECKPOINTS if checkpoint in wanted)


def feature_blocks(checkpoints: Sequence[str]) -> tuple[tuple[str, str], ...]:
    """The blocks one pass with these networks gives, in cache order: their layers, then the log-mel statistics."""
    return tuple(block for block in ALL_BLOCKS if block[0] in checkpoints or block[0] == LOGMEL)


# -- the networks, in one graph -------------------------------------------------------------------
class BlockNetworks:
    """Several musicnn networks run on the same patches by one traced function.

    Parameters
    ----------
    checkpoints : sequence of str
        Networks to run (`CHECKPOINTS`); may be empty (then only the log-mel statistics are given).
    batch_patches : int >= 1
        Patches per call: ``n`` patches take ``ceil(n / batch_patches)`` calls of the one traced graph
        (batch-norm runs with its moving statistics, so each patch is computed on its own). Bounds the
        activations' memory (about 0.1 GB per network at 8).
    precision : str
        One of `PRECISIONS`.
    pretrained_cache : str or None
        Cache root of the weights (`musicsim.pretrained.cache_root` when None).
    """

    def __init__(self, *, checkpoints: Sequence[str], batch_patches: int = DEFAULT_BATCH_PATCHES,
                 precision: str = DEFAULT_PRECISION, pretrained_cache: str | None = None):
        unknown = [c for c in checkpoints if c not in CHECKPOINTS]
        if unknown:
            raise EngineError(f"unknown checkpoints {unknown}: expected some of {list(CHECKPOINTS)}")
        if precision not in PRECISIONS:
            raise EngineError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        if int(batch_patches) < 1:
            raise EngineError(f"batch_patches must be >= 1, got {batch_patches}")
        self.checkpoints = tuple(checkpoints)
        self.batch_patches = int(batch_patches)
        self.precision = precision
        self.pretrained_cache = pretrained_cache
        self._run = None

    @property
    def blocks(self) -> tuple[tuple[str, str], ...]:
        """The (checkpoint, layer) outputs of a call."""
        return tuple(block for block in ALL_BLOCKS if block[0] in self.checkpoints)

    def _build(self):
        import tensorflow as tf

        networks = {checkpoint: musicnn.MusicnnNetwork.from_checkpoint(checkpoint=checkpoint,
                                                                       cache_dir=self.pretrained_cache)
                    for checkpoint in self.checkpoints}

        def every_layer(patches):
            outputs = {}
            for checkpoint, network in networks.items():
                for layer, value in network.layer_outputs(patches).items():
                    outputs[f"{checkpoint}/{layer}"] = value
            return outputs

        # One trace for any batch up to batch_patches: a short track's last call is not padded to a full batch.
        run = tf.function(every_layer, input_signature=[
            tf.TensorSpec([None, musicnn.PATCH_FRAMES, musicnn.N_MELS], tf.float32)])

        def call(batch: np.ndarray) -> dict[tuple[str, str], np.ndarray]:
            found = run(batch)
            return {tuple(key.split("/")): value.numpy() for key, value in found.items()}

        return call

    def __call__(self, *, patches: np.ndarray) -> dict[tuple[str, str], np.ndarray]:
        """Every layer of every network on each patch.

        Parameters
        ----------
        patches : np.ndarray, float32, shape ``[n, PATCH_FRAMES, N_MELS]``

        Returns
        -------
        dict (checkpoint, layer) -> np.ndarray, float32, shape ``[n, BLOCK_DIMS[block]]``
        """
        patches = np.asarray(patches, dtype=np.float32)
        if patches.ndim != 3 or patches.shape[1:] != (musicnn.PATCH_FRAMES, musicnn.N_MELS):
            raise ValueError(f"patches must be [n, {musicnn.PATCH_FRAMES}, {musicnn.N_MELS}], got {patches.shape}")
        count = patches.shape[0]
        if not self.checkpoints:
            return {}
        if self._run is None:
            self._run = self._build()
        parts: dict[tuple[str, str], list[np.ndarray]] = {block: [] for block in self.blocks}
        for start in range(0, count, self.batch_patches):
            for block, value in self._run(patches[start:start + self.batch_patches]).items():
                parts[block].append(value)
        return {block: (np.concatenate(values) if values else np.zeros((0, BLOCK_DIMS[block]), np.float32))
                for block, values in parts.items()}


_LOADED: dict[tuple, BlockNetworks] = {}


def shared_networks(*, checkpoints: Sequence[str], batch_patches: int = DEFAULT_BATCH_PATCHES,
                    precision: str = DEFAULT_PRECISION, pretrained_cache: str | None = None) -> BlockNetworks:
    """One `BlockNetworks` per setting in this process (a graph is traced and its weights loaded once)."""
    key = (tuple(checkpoints), int(batch_patches), precision, pretrained_cache)
    if key not in _LOADED:
        _LOADED[key] = BlockNetworks(checkpoints=checkpoints, batch_patches=batch_patches, precision=precision,
                                     pretrained_cache=pretrained_cache)
    return _LOADED[key]


# -- one file, one pass ---------------------------------------------------------------------------
def expected_patches(*, seconds: float) -> int:
    """How many patches `musicnn.iter_patch_blocks` cuts from ``seconds`` of audio (at least 1)."""
    samples = int(round(seconds * musicnn.SAMPLE_RATE))
    return max((1 + samples // musicnn.HOP) // musicnn.PATCH_FRAMES, 1)


def sampled_patches(*, total: int, max_patches: int | None) -> np.ndarray | None:
    """Indices of at most ``max_patches`` of ``total`` patches, spread evenly (each at the middle of
    its share of the track); None: every patch.

    >>> sampled_patches(total=10, max_patches=3).tolist()
    [1, 5, 8]
    >>> sampled_patches(total=2, max_patches=3) is None
    True
    """
    if max_patches is None or total <= max_patches:
        return None
    return np.floor((np.arange(max_patches) + 0.5) * total / max_patches).astype(np.int64)


def iter_selected_patches(*, blocks: Iterable[np.ndarray], keep: np.ndarray,
                          block_patches: int = DEFAULT_BATCH_PATCHES) -> Iterator[np.ndarray]:
    """The patches ``keep`` of a signal given in pieces: only their spectrogram is computed.

    Patch ``p`` is the one `musicnn.iter_patch_blocks` cuts ``p``-th (the same frames of the
    whole signal's centred spectrogram); an index past the signal's last whole patch is dropped.
    A signal none of whose chosen patches exists (its length was misjudged) gives its last whole
    patch, or its one zero-padded patch when it is shorter than a patch, so it still has a vector.

    Parameters
    ----------
    blocks : iterable of np.ndarray, float32, shape ``[n_i]``
        Consecutive pieces of a 16 kHz signal.
    keep : np.ndarray, int, shape ``[k]``, ascending
    block_patches : int >= 1
        Patches per yielded array.

    Yields
    ------
    np.ndarray, float32, shape ``[m, PATCH_FRAMES, N_MELS]``, 1 <= m <= block_patches
    """
    half = musicnn.N_FFT // 2
    window = musicnn.PATCH_SAMPLES + half  # one patch's samples: 187 frames without centring
    wanted = [int(p) for p in np.asarray(keep).reshape(-1)]
    # The buffer starts at sample ``offset * PATCH_SAMPLES - half`` of the signal (the centring's zeros first).
    buffer, offset, total = np.zeros(half, dtype=np.float32), 0, 0
    pending: list[np.ndarray] = []
    emitted = False
    for block in blocks:
        block = np.asarray(block, dtype=np.float32).reshape(-1)
        total += block.size
        buffer = np.concatenate([buffer, block])
        while wanted and buffer.size >= (wanted[0] - offset) * musicnn.PATCH_SAMPLES + window:
            start = (wanted.pop(0) - offset) * musicnn.PATCH_SAMPLES
            pending.append(musicnn.log_mel_frames(window=buffer[start:start + window]))
            if len(pending) == block_patches:
                emitted = True
                yield np.stack(pending)
                pending = []
        # Keep only what a later patch can still need: the last two whole patches' windows at least.
        drop = max(0, (buffer.size - window) // musicnn.PATCH_SAMPLES - 1)
        if wanted:
            drop = min(drop, wanted[0] - offset)
        buffer, offset = buffer[drop * musicnn.PATCH_SAMPLES:], offset + drop

    def padded_patch(index: int) -> np.ndarray:
        """Patch ``index`` at the signal's end, zero padded past it (librosa's centring pads with zeros)."""
        start = (index - offset) * musicnn.PATCH_SAMPLES
        samples = np.zeros(window, dtype=np.float32)
        part = buffer[max(start, 0):start + window]
        samples[:part.size] = part
        return musicnn.log_mel_frames(window=samples)

    # As iter_patch_blocks: the centred spectrogram's whole patches, at least one (zero padded).
    whole = max((1 + total // musicnn.HOP) // musicnn.PATCH_FRAMES, 1)
    for index in [p for p in wanted if p < whole]:
        pending.append(padded_patch(index))
        if len(pending) == block_patches:
            emitted = True
            yield np.stack(pending)
            pending = []
    if pending:
        emitted = True
        yield np.stack(pending)
    if not emitted:
        yield padded_patch(max(whole - 1, offset))[None]


def _aligned_step(file_rate: int) -> int:
    """16 kHz samples between instants that fall on a whole source frame too (where a seek can start)."""
    return musicnn.SAMPLE_RATE // math.gcd(int(file_rate), musicnn.SAMPLE_RATE)


def iter_seeked_patches(*, path: str, keep: np.ndarray, info: AudioInfo, max_seconds: float | None,
                        min_seconds: float = 1.0, block_patches: int = DEFAULT_BATCH_PATCHES,
                        margin_seconds: float = SEEK_MARGIN_SECONDS) -> Iterator[np.ndarray]:
    """The patches ``keep`` of a file's excerpt, decoding only around them (a seek per patch).

    Each patch's samples are decoded from ``margin_seconds`` before to ``margin_seconds`` after it
    (`musicsim.audio.iter_audio_blocks`, from a source frame that falls on a 16 kHz sample, so the
    samples line up with those of the whole decode); the margins absorb the resampler's and the
    decoder's start and end, and are dropped. A patch is then what `iter_selected_patches` gives of
    the whole decode, up to float rounding at the margins (see the tests for the tolerance).

    Parameters
    ----------
    path : str
    keep : np.ndarray, int, ascending: patch indices of the excerpt
    info : AudioInfo
        The file's header (`musicsim.audio.audio_info`), with its frame count.
    max_seconds : float or None
        The centred excerpt (None: the whole file).
    min_seconds : float >= 0
        As `musicsim.audio.check_excerpt`; the excerpt's length is the header's.
    block_patches : int >= 1
    margin_seconds : float >= 0

    Yields
    ------
    np.ndarray, float32, shape ``[m, PATCH_FRAMES, N_MELS]``, 1 <= m <= block_patches

    Raises
    ------
    AudioDecodeError
        As the whole decode: unreadable, truncated, too short, or silent in every decoded part.
    """
    rate = int(info.sample_rate)
    offset, duration = centred_excerpt(info.frames / float(rate), max_seconds)
    first_frame = int(round(offset * rate))
    excerpt_frames = info.frames - first_frame if duration is None else int(round(duration * rate))
    total = int(round(excerpt_frames * musicnn.SAMPLE_RATE / rate))  # the excerpt's length at 16 kHz
    whole = max((1 + total // musicnn.HOP) // musicnn.PATCH_FRAMES, 1)
    wanted = [int(p) for p in np.asarray(keep).reshape(-1) if int(p) < whole] or [whole - 1]
    half = musicnn.N_FFT // 2
    window = musicnn.PATCH_SAMPLES + half
    margin = int(round(margin_seconds * musicnn.SAMPLE_RATE))
    step = _aligned_step(rate)
    peak, pending = 0.0, []
    for index in wanted:
        start = index * musicnn.PATCH_SAMPLES - half  # the patch's first sample (negative: the centring's zeros)
        begin = max(0, (start - margin) // step * step)
        end = min(total, start + window + margin)
        pieces = list(iter_audio_blocks(path, sample_rate=musicnn.SAMPLE_RATE,
                                        offset_seconds=(first_frame + begin * rate // musicnn.SAMPLE_RATE) / rate,
                                        duration_seconds=(end - begin) / musicnn.SAMPLE_RATE))
        decoded = np.concatenate(pieces) if pieces else np.zeros(0, np.float32)
        samples = np.zeros(window, dtype=np.float32)  # zeros past either end, as the centred spectrogram
        lo = max(start, begin)
        part = decoded[lo - begin:start + window - begin]
        samples[lo - start:lo - start + part.size] = part
        peak = max(peak, float(np.max(np.abs(part)))) if part.size else peak
        pending.append(musicnn.log_mel_frames(window=samples))
        if len(pending) == block_patches or index == wanted[-1]:
            if index == wanted[-1]:  # judged before the last patches run, as the whole decode is
                check_excerpt(path, samples=total, peak=peak, sample_rate=musicnn.SAMPLE_RATE,
                              min_seconds=min_seconds)
            yield np.stack(pending)
            pending = []


def _finite(values: np.ndarray, *, what: str) -> np.ndarray:
    if not np.all(np.isfinite(values)):
        raise ValueError(f"{what} has non-finite values")
    return values


def all_block_means(*, path: str, checkpoints: Sequence[str] = CHECKPOINTS, max_seconds: float | None = None,
                    max_patches: int | None = None, min_seconds: float = 1.0, per_patch: bool = False,
                    precision: str = DEFAULT_PRECISION, batch_patches: int = DEFAULT_BATCH_PATCHES,
                    pretrained_cache: str | None = None, networks: BlockNetworks | None = None,
                    seek: bool = True) -> dict[tuple[str, str], np.ndarray]:
    """Every block of one file in one pass: one decode, one spectrogram, each network once per patch.

    Parameters
    ----------
    path : str
        An audio file.
    checkpoints : sequence of str
        The networks to run (default all four); the log-mel statistics are always given.
    max_seconds : float > 0 or None
        The centred excerpt used (None: the whole track).
    max_patches : int >= 1 or None
        At most this many patches, spread evenly over the excerpt (`sampled_patches`); the count
        comes from the header's duration (unknown: every patch).
    seek : bool
        With ``max_patches``, decode only around the sampled patches (`iter_seeked_patches`);
        False decodes the whole excerpt and computes the sampled patches' spectrogram only.
    min_seconds : float >= 0
        Shorter excerpts are refused.
    per_patch : bool
        Return each patch's outputs instead of the means over the track.
    precision, batch_patches, pretrained_cache : as `BlockNetworks`
    networks : BlockNetworks or None
        Already loaded networks (else `shared_networks` of the settings above).

    Returns
    -------
    dict (checkpoint, layer) -> np.ndarray
        For each network's layers (`BLOCK_DIMS`) and ``("logmel", "mean" | "std")``: float64
        ``[dim]`` means over the patches, or with ``per_patch`` float32 ``[patches, dim]``: the
        network rows average to the means exactly (``rows[keep].mean(0)`` with ``keep`` =
        `sampled_patches` is what ``max_patches`` gives); the log-mel rows are each patch's band
        mean ``m_p`` and std ``s_p`` over its frames, so the track's are ``mean_p(m_p)`` and
        ``sqrt(mean_p(s_p ** 2 + m_p ** 2) - mean_p(m_p) ** 2)``.

    Raises
    ------
    AudioDecodeError
        Naming the file and why it cannot be used (unreadable, not audio, too short, silent).
    """
    if max_patches is not None and int(max_patches) < 1:
        raise EngineError(f"max_patches must be >= 1 or None, got {max_patches}")
    if networks is None:
        networks = shared_networks(checkpoints=checkpoints, batch_patches=batch_patches, precision=precision,
                                   pretrained_cache=pretrained_cache)
    elif tuple(networks.checkpoints) != tuple(checkpoints):
        raise EngineError(f"the networks run {networks.checkpoints}, not {tuple(checkpoints)}")
    keep, info = None, None
    if max_patches is not None:
        try:
            info = audio_info(path)
        except UnsupportedHeaderError:  # a format only audioread reads: no length known, every patch
            info = None
        if info is not None and info.frames > 0:
            seconds = info.frames / float(info.sample_rate)
            if max_seconds is not None:
                seconds = min(seconds, float(max_seconds))
            keep = sampled_patches(total=expected_patches(seconds=seconds), max_patches=int(max_patches))
    if keep is not None and seek:
        patch_blocks = iter_seeked_patches(path=path, keep=keep, info=info, max_seconds=max_seconds,
                                           min_seconds=min_seconds, block_patches=networks.batch_patches)
    else:
        # The excerpt is checked (too short, silent) as its blocks end, before its last patches run.
        decoded = MeasuredBlocks(iter_excerpt_blocks(path, sample_rate=musicnn.SAMPLE_RATE, max_seconds=max_seconds),
                                 path=path, sample_rate=musicnn.SAMPLE_RATE, min_seconds=min_seconds)
        if keep is None:
            patch_blocks = musicnn.iter_patch_blocks(blocks=decoded, block_patches=networks.batch_patches)
        else:
            patch_blocks = iter_selected_patches(blocks=decoded, keep=keep, block_patches=networks.batch_patches)
    sums: dict[tuple[str, str], np.ndarray] = {}
    rows: dict[tuple[str, str], list[np.ndarray]] = {}
    band_sum = np.zeros(musicnn.N_MELS)
    band_squares = np.zeros(musicnn.N_MELS)
    frames, count = 0, 0
    for patches in patch_blocks:
        outputs = networks(patches=patches)
        as64 = patches.astype(np.float64)
        band_sum += as64.sum(axis=(0, 1))
        band_squares += np.square(as64).sum(axis=(0, 1))
        frames += patches.shape[0] * patches.shape[1]
        count += patches.shape[0]
        if per_patch:
            outputs = {**outputs, (LOGMEL, "mean"): patches.mean(axis=1), (LOGMEL, "std"): patches.std(axis=1)}
            for block, value in outputs.items():
                rows.setdefault(block, []).append(value)
        else:
            for block, value in outputs.items():
                total = value.astype(np.float64).sum(axis=0)
                sums[block] = total if block not in sums else sums[block] + total
    if count == 0:  # iter_patch_blocks gives at least one patch of any signal: only an empty one has none
        raise AudioDecodeError(path, "no audio")
    if per_patch:
        return {block: _finite(np.concatenate(values), what=f"{path}: {block}") for block, values in rows.items()}
    means = {block: _finite(total / count, what=f"{path}: {block}") for block, total in sums.items()}
    band_mean = band_sum / frames
    means[(LOGMEL, "mean")] = band_mean
    means[(LOGMEL, "std")] = np.sqrt(np.maximum(band_squares / frames - np.square(band_mean), 0.0))
    return means


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
        from musicsim.dataset import feature_cache_dir

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
