"""Audio decoding, downmixing, resampling and mean pooling (paper 4.3 "Pre-processing"): the one decoder.

Every decoded signal is mono float32 at one sample rate, whatever the file's
format, channel count or rate: otherwise a model can tell albums apart by their
encoding rather than their music.

Layers, each built on the one above:

- a file's header and raw frames (libsndfile, the audioread fallback, the truncation checks):
  ``musicsim.data.audio_files``, whose :func:`audio_info` and errors are imported here;
- a file, block by block: :func:`iter_audio_blocks` (seek, decode, downmix, resample), :func:`load_audio`;
- the centred excerpt of a track: :func:`centred_excerpt`, :func:`iter_excerpt_blocks`,
  :func:`load_excerpt`, checked by :func:`check_excerpt` (:class:`MeasuredBlocks`);
- model inputs: mean pooling (:func:`mean_pool`, :func:`iter_mean_pooled`, :func:`iter_pooled_blocks`,
  :func:`pooled_excerpt`, :func:`decode_track`). ``decode_track`` never raises: it returns a
  :class:`DecodeResult`, for worker pools (``musicsim.workers.decode_in_order``). Chromagrams are
  features, beside the others: ``musicsim.chroma``.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np
import soxr

# The file level (header, raw frames, the errors), imported here so callers need only musicsim.data.audio.
from musicsim.data.audio_files import AudioDecodeError, AudioInfo, UnsupportedHeaderError, audio_info, file_frames

DEFAULT_SAMPLE_RATE = 16000
DEFAULT_POOL_SIZE = 5
# Peak amplitude under which a decoded excerpt counts as silence (about -80 dBFS).
SILENCE_PEAK = 1e-4
# Seconds of audio decoded and resampled at a time: memory is bounded by a block, not by the file.
DEFAULT_BLOCK_SECONDS = 10.0
# File name extensions taken for audio when a folder is scanned (data preparation, export).
AUDIO_EXTENSIONS = (".mp3", ".ogg", ".oga", ".opus", ".flac", ".wav", ".aif", ".aiff", ".au", ".m4a", ".wma")


def _downmix(data: np.ndarray) -> np.ndarray:
    """Average the channels of ``[n, channels]`` audio into ``[n, 1]``.

    Adding column slices is ~10x faster than ``data.mean(axis=1)``, whose reduction over a short
    axis of 2 costs a quarter of an Ogg track's decode time; the result is the same mean.
    """
    channels = data.shape[1]
    if channels == 1:
        return data
    mono = data[:, 0].copy()
    for channel in range(1, channels):
        mono += data[:, channel]
    mono /= np.float32(channels)
    return mono[:, None]


def iter_audio_blocks(path: str | os.PathLike, *, sample_rate: int = DEFAULT_SAMPLE_RATE,
                      block_seconds: float = DEFAULT_BLOCK_SECONDS, offset_seconds: float = 0.0,
                      duration_seconds: float | None = None, mono: bool = True) -> Iterator[np.ndarray]:
    """Decode an excerpt of an audio file block by block, downmixed and resampled.

    Only the excerpt's frames are read (seek, then read ``block_seconds`` at a time), and the
    resampling is streamed (``soxr.ResampleStream``), so memory is bounded by one block whatever the
    file's length. Concatenated, the blocks equal the whole excerpt resampled at once.

    Parameters
    ----------
    path : str or path-like
        Any format libsndfile reads (wav, flac, ogg/vorbis, opus, mp3, ...); other formats go
        through audioread when a backend is installed.
    sample_rate : int > 0
        Output rate in Hz.
    block_seconds : float > 0
        Source seconds decoded per block.
    offset_seconds : float >= 0
        Start of the excerpt in seconds.
    duration_seconds : float > 0 or None
        Length of the excerpt in seconds; ``None`` reads to the end.
    mono : bool
        Average the channels. ``False`` keeps them.

    Yields
    ------
    np.ndarray, float32, shape ``[n]`` (or ``[channels, n]`` when ``mono=False``)
        Consecutive pieces of the excerpt at ``sample_rate``; ``n`` is about
        ``block_seconds * sample_rate`` (the first and last may be shorter, never empty).

    Raises
    ------
    ValueError
        For invalid arguments (at the first ``next``).
    AudioDecodeError
        Naming the file and the reason: missing, empty, not audio, offset past the end, truncated
        or corrupt (possibly after some blocks were yielded: a cut file shows only at its end),
        non-finite samples, or no frames at all. Too short and silent are the caller's to judge.
    """
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    if block_seconds <= 0:
        raise ValueError(f"block_seconds must be positive, got {block_seconds}")
    if offset_seconds < 0:
        raise ValueError(f"offset must be >= 0, got {offset_seconds}")
    if duration_seconds is not None and duration_seconds <= 0:
        raise ValueError(f"duration must be positive or None, got {duration_seconds}")
    path = os.fspath(path)
    file_rate, channels, frames_iter = file_frames(path, offset_seconds=offset_seconds,
                                                   duration_seconds=duration_seconds, block_seconds=block_seconds)
    out_channels = 1 if mono else channels
    resampler = (None if file_rate == sample_rate else
                 soxr.ResampleStream(file_rate, sample_rate, out_channels, dtype="float32", quality="HQ"))
    decoded = 0
    for block in frames_iter:
        if not np.all(np.isfinite(block)):
            raise AudioDecodeError(path, "corrupt audio (non-finite samples)")
        decoded += block.shape[0]
        block = _downmix(block) if mono else block
        if resampler is not None:
            block = resampler.resample_chunk(np.ascontiguousarray(block), last=False)
        if block.shape[0]:
            yield block[:, 0].copy() if mono else np.ascontiguousarray(block.T)
    if decoded == 0:
        raise AudioDecodeError(path, "truncated or corrupt audio (no frames could be decoded)")
    if resampler is not None:
        tail = resampler.resample_chunk(np.zeros((0, out_channels), np.float32), last=True)
        if tail.shape[0]:
            yield tail[:, 0].copy() if mono else np.ascontiguousarray(tail.T)


def check_excerpt(path: str | os.PathLike, *, samples: int, peak: float, sample_rate: int,
                  min_seconds: float = 1.0, reject_silence: bool = True) -> None:
    """Reject a decoded excerpt that is too short or silent.

    Parameters
    ----------
    path : str or path-like
        The file, named in the error.
    samples : int >= 0
        The excerpt's length at ``sample_rate``.
    peak : float >= 0
        Its largest absolute sample.
    sample_rate : int > 0
    min_seconds : float >= 0
    reject_silence : bool
        Reject a peak under ``SILENCE_PEAK``.

    Raises
    ------
    AudioDecodeError
        "too short" or "silent".
    """
    seconds = samples / float(sample_rate)
    if seconds < min_seconds:
        raise AudioDecodeError(path, f"too short ({seconds:.2f}s < {min_seconds:.2f}s)")
    if reject_silence and peak < SILENCE_PEAK:
        raise AudioDecodeError(path, "silent (peak under -80 dBFS)")


def load_audio(path: str | os.PathLike, *, sample_rate: int = DEFAULT_SAMPLE_RATE, mono: bool = True,
               offset: float = 0.0, duration: float | None = None, min_seconds: float = 1.0,
               reject_silence: bool = True) -> np.ndarray:
    """Decode an excerpt of an audio file, downmixed and resampled (:func:`iter_audio_blocks`, joined).

    Only the frames of the excerpt are read (seek, then read), and decoded block by block, so a
    long file costs no more memory than its excerpt at ``sample_rate``.

    Parameters
    ----------
    path : str or path-like
        Any format libsndfile reads (wav, flac, ogg/vorbis, opus, mp3, ...);
        other formats go through audioread when a backend is installed.
    sample_rate : int > 0
        Output rate in Hz.
    mono : bool
        Average the channels. ``False`` keeps them: shape ``[channels, n]``.
    offset : float >= 0
        Start of the excerpt in seconds.
    duration : float > 0 or None
        Length of the excerpt in seconds; ``None`` reads to the end.
    min_seconds : float >= 0
        Excerpts shorter than this are rejected.
    reject_silence : bool
        Reject excerpts whose peak is under ``SILENCE_PEAK``.

    Returns
    -------
    np.ndarray, float32, shape ``[n]`` (or ``[channels, n]`` when ``mono=False``)

    Raises
    ------
    ValueError
        For invalid arguments.
    AudioDecodeError
        Naming the file and the reason: missing, empty, not audio, truncated or
        corrupt, too short, or silent. A truncated file is caught when the decoder
        fails, when it returns under ``musicsim.data.audio_files.TRUNCATED_FRACTION`` of the frames its header
        promises, or (Ogg, whose length libsndfile reads from the last page) when
        the stream lacks its end-of-stream page; a cut WAV is not (libsndfile fixes
        up its header on opening, and PCM has no framing to show the cut), so it
        reads as the shorter file it is.
    """
    blocks = list(iter_audio_blocks(path, sample_rate=sample_rate, offset_seconds=offset,
                                    duration_seconds=duration, mono=mono))
    data = np.concatenate(blocks, axis=-1) if len(blocks) != 1 else blocks[0]
    check_excerpt(path, samples=data.shape[-1], peak=float(np.max(np.abs(data))) if data.size else 0.0,
                  sample_rate=sample_rate, min_seconds=min_seconds, reject_silence=reject_silence)
    return data


def centred_excerpt(duration: float, max_seconds: float | None) -> tuple[float, float | None]:
    """(offset, duration) of the centred ``max_seconds`` excerpt of a track ``duration`` long."""
    if max_seconds is None or duration <= max_seconds:
        return 0.0, None
    return (duration - max_seconds) / 2.0, float(max_seconds)


def mean_pool(audio: np.ndarray, *, size: int = DEFAULT_POOL_SIZE) -> np.ndarray:
    """Average consecutive, non-overlapping windows of ``size`` samples (paper 4.3).

    A trailing partial window is averaged over the samples it has, so no audio is dropped.

    Parameters
    ----------
    audio : np.ndarray, shape ``[n]``
    size : int >= 1
        1 returns the audio unchanged.

    Returns
    -------
    np.ndarray, float32, shape ``[ceil(n / size)]``
    """
    if size < 1:
        raise ValueError(f"pool size must be >= 1, got {size}")
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim != 1:
        raise ValueError(f"mean_pool expects a 1-D signal, got shape {audio.shape}")
    if size == 1:
        return audio
    whole = (audio.size // size) * size
    pooled = audio[:whole].reshape(-1, size).mean(axis=1)
    if whole < audio.size:
        pooled = np.append(pooled, audio[whole:].mean())
    return pooled.astype(np.float32)


class MeasuredBlocks:
    """A signal's blocks, passed through while their samples and peak are counted.

    Given ``path``, the excerpt is checked (:func:`check_excerpt`) as soon as the blocks end, so a
    consumer never reaches the end of a too-short or silent excerpt.

    Parameters
    ----------
    blocks : iterable of np.ndarray, float32, shape ``[n_i]``
        Consecutive pieces of one signal (e.g. :func:`iter_audio_blocks`).
    path : str, optional
        The file the blocks come from: check the excerpt once they end.
    sample_rate : int > 0
        Their rate (only used for the check).
    min_seconds : float >= 0
        Shortest acceptable excerpt (only used for the check).
    """

    def __init__(self, blocks: Iterable[np.ndarray], *, path: str | os.PathLike | None = None,
                 sample_rate: int = DEFAULT_SAMPLE_RATE, min_seconds: float = 1.0):
        self.blocks, self.path, self.sample_rate, self.min_seconds = blocks, path, sample_rate, min_seconds
        self.samples, self.peak = 0, 0.0

    def __iter__(self) -> Iterator[np.ndarray]:
        for block in self.blocks:
            if block.size:
                self.samples += block.size
                self.peak = max(self.peak, float(np.max(np.abs(block))))
            yield block
        if self.path is not None:
            check_excerpt(self.path, samples=self.samples, peak=self.peak, sample_rate=self.sample_rate,
                          min_seconds=self.min_seconds)

    @property
    def seconds(self) -> float:
        """Length of the blocks seen so far, in seconds."""
        return self.samples / float(self.sample_rate)


def iter_mean_pooled(blocks: Iterable[np.ndarray], *, size: int = DEFAULT_POOL_SIZE) -> Iterator[np.ndarray]:
    """:func:`mean_pool` of the concatenation of ``blocks``, a piece at a time.

    Each block is pooled as it comes; the samples of a window cut by a block boundary wait for the
    next block, so the pieces, concatenated, equal ``mean_pool(np.concatenate(blocks), size=size)``
    exactly, and memory is bounded by one block.

    Parameters
    ----------
    blocks : iterable of np.ndarray, float32, shape ``[n_i]``
        Consecutive pieces of one signal (e.g. :func:`iter_audio_blocks`).
    size : int >= 1

    Yields
    ------
    np.ndarray, float32, shape ``[m_j]``
        Pooled pieces; together ``ceil(sum(n_i) / size)`` values.

    Examples
    --------
    >>> pieces = iter_mean_pooled([np.arange(3, dtype=np.float32), np.arange(3, 7, dtype=np.float32)], size=2)
    >>> np.concatenate(list(pieces))
    array([0.5, 2.5, 4.5, 6. ], dtype=float32)
    """
    if size < 1:
        raise ValueError(f"pool size must be >= 1, got {size}")
    carry = np.zeros(0, np.float32)
    for block in blocks:
        block = np.asarray(block, dtype=np.float32)
        if block.ndim != 1:
            raise ValueError(f"iter_mean_pooled expects 1-D blocks, got shape {block.shape}")
        if not block.size:
            continue
        signal = np.concatenate([carry, block]) if carry.size else block
        whole = (signal.size // size) * size  # the pooling windows must fall where the whole signal's do
        if whole:
            yield mean_pool(signal[:whole], size=size)
        carry = signal[whole:].copy()
    if carry.size:
        yield mean_pool(carry, size=size)


def file_duration(path: str | os.PathLike) -> float | None:
    """A file's duration in seconds from its header; None when the header cannot be read (or says 0)."""
    try:
        seconds = audio_info(path).duration
    except AudioDecodeError:
        return None
    return seconds if math.isfinite(seconds) and seconds > 0 else None


def iter_excerpt_blocks(path: str | os.PathLike, *, sample_rate: int, max_seconds: float | None,
                        block_seconds: float = DEFAULT_BLOCK_SECONDS) -> Iterator[np.ndarray]:
    """A file's centred ``max_seconds`` excerpt (:func:`centred_excerpt`), decoded block by block.

    Only the excerpt is read: its offset comes from the header's duration. A file whose header
    gives no duration (a format only audioread reads) is decoded once to count its samples
    (nothing kept), then again for the excerpt.

    Parameters
    ----------
    path : str or path-like
    sample_rate : int > 0
        Output rate in Hz.
    max_seconds : float > 0 or None
        Excerpt length; None: the whole file.
    block_seconds : float > 0
        Source seconds decoded per block.

    Yields
    ------
    np.ndarray, float32, shape ``[n_i]``
        As :func:`iter_audio_blocks`. Too short and silent are the caller's to judge.

    Raises
    ------
    AudioDecodeError
        As :func:`iter_audio_blocks`.
    """
    seconds = file_duration(path)
    if seconds is None and max_seconds is not None:
        seconds = sum(block.size for block in iter_audio_blocks(path, sample_rate=sample_rate)) / float(sample_rate)
    offset, duration = centred_excerpt(seconds or 0.0, max_seconds)
    yield from iter_audio_blocks(path, sample_rate=sample_rate, offset_seconds=offset, duration_seconds=duration,
                                 block_seconds=block_seconds)


def load_excerpt(*, path: str | os.PathLike, sample_rate: int, max_seconds: float | None,
                 min_seconds: float = 1.0) -> np.ndarray:
    """The centred ``max_seconds`` excerpt of a file in one array (:func:`iter_excerpt_blocks`, joined).

    Returns
    -------
    np.ndarray, float32, shape ``[n]``

    Raises
    ------
    AudioDecodeError
        Naming the file and why it cannot be used (unreadable, too short, silent, ...).
    """
    blocks = list(MeasuredBlocks(iter_excerpt_blocks(path, sample_rate=sample_rate, max_seconds=max_seconds),
                                 path=path, sample_rate=sample_rate, min_seconds=min_seconds))
    return np.concatenate(blocks) if len(blocks) != 1 else blocks[0]


def iter_pooled_blocks(path: str | os.PathLike, *, sample_rate: int, pool_size: int, max_seconds: float | None,
                       min_seconds: float, block_seconds: float = DEFAULT_BLOCK_SECONDS) -> Iterator[np.ndarray]:
    """A file's centred ``max_seconds`` excerpt, decoded block by block and mean-pooled by ``pool_size``.

    Concatenated, the blocks equal :func:`pooled_excerpt`'s pooled excerpt; memory is bounded by
    one block.

    Yields
    ------
    np.ndarray, float32, shape ``[m_i]``
        Pooled pieces; together ``ceil(n / pool_size)`` values for an excerpt of ``n`` samples.

    Raises
    ------
    AudioDecodeError
        As :func:`iter_audio_blocks`, and, once the excerpt has ended, when it was too short or
        silent (:func:`check_excerpt`).
    """
    blocks = MeasuredBlocks(iter_excerpt_blocks(path, sample_rate=sample_rate, max_seconds=max_seconds,
                                                block_seconds=block_seconds),
                            path=path, sample_rate=sample_rate, min_seconds=min_seconds)
    yield from iter_mean_pooled(blocks, size=pool_size)


@dataclass(frozen=True)
class DecodeSettings:
    """How every track of a dataset is decoded (part of each shard's key)."""

    sample_rate: int
    pool_size: int
    max_seconds: float | None  # None: the whole track
    min_seconds: float


@dataclass
class DecodeResult:
    """What a decoder (possibly in a worker process) returns for one file: its input, or why there is none."""

    pooled: np.ndarray | None  # the model input: float32 pooled audio [m], or a chromagram [frames, 12]
    seconds: float  # length of the decoded excerpt, before pooling
    reason: str = ""


def pooled_excerpt(path: str | os.PathLike, *, settings: DecodeSettings) -> tuple[np.ndarray, float]:
    """Decode the centred excerpt of one file and mean-pool it, block by block (:func:`iter_pooled_blocks`).

    Memory is bounded by the pooled excerpt, not by the source file.

    Returns
    -------
    pooled : np.ndarray, float32, shape ``[ceil(n / pool_size)]``
    seconds : float
        ``n / sample_rate``, the excerpt's length before pooling.

    Raises
    ------
    AudioDecodeError
        Naming the file and the reason.
    """
    blocks = MeasuredBlocks(iter_excerpt_blocks(path, sample_rate=settings.sample_rate,
                                                max_seconds=settings.max_seconds),
                            path=path, sample_rate=settings.sample_rate, min_seconds=settings.min_seconds)
    pieces = list(iter_mean_pooled(blocks, size=settings.pool_size))
    pooled = np.concatenate(pieces) if pieces else np.zeros(0, np.float32)
    return pooled, blocks.seconds


def decode_track(path: str, settings: DecodeSettings) -> DecodeResult:
    """:func:`pooled_excerpt` that never raises: any failure becomes a :class:`DecodeResult` reason.

    Module-level so worker processes can unpickle it (``musicsim.workers.decode_in_order``).
    """
    try:
        pooled, seconds = pooled_excerpt(path, settings=settings)
    except AudioDecodeError as err:
        return DecodeResult(pooled=None, seconds=0.0, reason=err.reason)
    except Exception as err:  # a decoder bug must cost one file, not the run
        return DecodeResult(pooled=None, seconds=0.0, reason=f"{type(err).__name__}: {err}")
    return DecodeResult(pooled=pooled, seconds=seconds)
