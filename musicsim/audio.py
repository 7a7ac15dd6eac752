"""Audio decoding, downmixing, resampling and mean pooling (paper 4.3 "Pre-processing").

Every decoded signal is mono float32 at one sample rate, whatever the file's
format, channel count or rate: otherwise a model can tell albums apart by their
encoding rather than their music.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import soundfile as sf
import soxr

DEFAULT_SAMPLE_RATE = 16000
DEFAULT_POOL_SIZE = 5
# Peak amplitude under which a decoded excerpt counts as silence (about -80 dBFS).
SILENCE_PEAK = 1e-4
# A read that yields less than this share of the frames the header promises counts as truncated.
TRUNCATED_FRACTION = 0.9


class AudioDecodeError(Exception):
    """A file could not be used as audio; ``path`` and ``reason`` say which and why."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = os.fspath(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


@dataclass(frozen=True)
class AudioInfo:
    """What a file's header says, before decoding."""

    path: str
    sample_rate: int
    channels: int
    frames: int

    @property
    def duration(self) -> float:
        return self.frames / float(self.sample_rate)


def _audioread_load(path: str, offset: float, duration: float | None, *, sndfile_reason: str = ""
                    ) -> tuple[np.ndarray, int]:
    """Fallback for formats libsndfile does not read (m4a, wma, ...) via audioread.

    ``sndfile_reason`` (why libsndfile refused the file) goes into the error when
    audioread fails too: without a backend its own message is empty.
    """
    import audioread  # librosa's backend; needs ffmpeg or gstreamer on the machine

    try:
        with audioread.audio_open(path) as f:
            sr, channels = f.samplerate, f.channels
            start = int(offset * sr) * channels
            stop = None if duration is None else start + int(duration * sr) * channels
            chunks, seen = [], 0
            for buf in f:
                block = np.frombuffer(buf, dtype="<i2").astype(np.float32) / 32768.0
                lo, hi = seen, seen + block.size
                seen = hi
                if hi <= start:
                    continue
                chunks.append(block[max(0, start - lo): None if stop is None else max(0, stop - lo)])
                if stop is not None and seen >= stop:
                    break
    except Exception as err:  # audioread raises its own hierarchy plus OSError
        detail = f"{type(err).__name__}: {err}".rstrip(": ")
        if sndfile_reason:
            raise AudioDecodeError(path, f"{sndfile_reason}; audioread fallback: {detail}")
        raise AudioDecodeError(path, f"not audio or unsupported format ({detail})")
    data = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    return data.reshape(-1, channels), sr


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


def audio_info(path: str | os.PathLike) -> AudioInfo:
    """Read a file's header: sample rate, channels and length.

    Raises
    ------
    AudioDecodeError
        If the file is missing, empty or not a readable audio file.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise AudioDecodeError(path, "file not found")
    if os.path.isdir(path):
        raise AudioDecodeError(path, "is a directory, not an audio file")
    if os.path.getsize(path) == 0:
        raise AudioDecodeError(path, "empty file (0 bytes)")
    try:
        info = sf.info(path)
    except Exception as err:
        raise AudioDecodeError(path, f"not audio or unsupported format ({err})")
    if info.samplerate <= 0 or info.channels <= 0:
        raise AudioDecodeError(path, "header has no sample rate or channels")
    return AudioInfo(path=path, sample_rate=int(info.samplerate), channels=int(info.channels),
                     frames=max(0, int(info.frames)))


def load_audio(path: str | os.PathLike, *, sample_rate: int = DEFAULT_SAMPLE_RATE, mono: bool = True,
               offset: float = 0.0, duration: float | None = None, min_seconds: float = 1.0,
               reject_silence: bool = True) -> np.ndarray:
    """Decode an excerpt of an audio file, downmixed and resampled.

    Only the frames of the excerpt are read (seek, then read), so a long file
    costs no more memory than its excerpt.

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
        fails or returns under ``TRUNCATED_FRACTION`` of the frames its header
        promises; a cut WAV is not (libsndfile fixes up its header on opening, and
        PCM has no framing to show the cut), so it reads as the shorter file it is.
    """
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    if offset < 0:
        raise ValueError(f"offset must be >= 0, got {offset}")
    if duration is not None and duration <= 0:
        raise ValueError(f"duration must be positive or None, got {duration}")
    path = os.fspath(path)
    try:
        info = audio_info(path)
    except AudioDecodeError as err:
        if not os.path.isfile(path) or os.path.getsize(path) == 0:
            raise
        # raises AudioDecodeError itself
        data, file_rate = _audioread_load(path, offset, duration, sndfile_reason=err.reason)
    else:
        file_rate = info.sample_rate
        start = int(round(offset * file_rate))
        if info.frames and start >= info.frames:
            raise AudioDecodeError(path, f"offset {offset:.2f}s is past the end ({info.duration:.2f}s)")
        frames = -1 if duration is None else int(round(duration * file_rate))
        try:
            with sf.SoundFile(path) as f:
                if start:
                    f.seek(start)
                data = f.read(frames=frames, dtype="float32", always_2d=True)
        except Exception as err:
            raise AudioDecodeError(path, f"truncated or corrupt audio ({err})")
        # A cut-off mp3/ogg decodes cleanly but stops early: compare with what the header promised.
        promised = (info.frames - start) if frames < 0 else min(frames, info.frames - start)
        if info.frames and data.shape[0] < TRUNCATED_FRACTION * promised:
            raise AudioDecodeError(path, f"truncated audio (decoded {data.shape[0] / file_rate:.2f}s of the "
                                         f"{promised / file_rate:.2f}s the header promises)")
    if data.size == 0:
        raise AudioDecodeError(path, "truncated or corrupt audio (no frames could be decoded)")
    if not np.all(np.isfinite(data)):
        raise AudioDecodeError(path, "corrupt audio (non-finite samples)")
    data = _downmix(data) if mono else data
    if file_rate != sample_rate:
        data = soxr.resample(data, file_rate, sample_rate, quality="HQ")
    data = np.ascontiguousarray(data.T, dtype=np.float32)  # [channels, n]
    seconds = data.shape[1] / float(sample_rate)
    if seconds < min_seconds:
        raise AudioDecodeError(path, f"too short ({seconds:.2f}s < {min_seconds:.2f}s)")
    if reject_silence and float(np.max(np.abs(data))) < SILENCE_PEAK:
        raise AudioDecodeError(path, "silent (peak under -80 dBFS)")
    return data[0] if mono else data


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
