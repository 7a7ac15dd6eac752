"""Chromagrams (the LSTM's input, paper 4.2): the pitch-class features of a decoded signal.

Beside the librosa features (``musicsim.features``, paper 4.1), on the one decoder's signal
(``musicsim.data.audio``):

- :func:`chroma_sequence`: the STFT chromagram of a signal, one 12-bin row per frame;
- :func:`windowed_chroma`: the same frames of a streamed signal, computed a window at a time;
- :func:`decode_chroma` (:class:`ChromaSettings`) and :func:`chroma_of_file`: a file's centred
  excerpt, never raising: a failure is the result's reason, for worker pools
  (``musicsim.workers.decode_in_order``, ``musicsim.models.rnn.load_tracks``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

import librosa
import numpy as np

from musicsim.data.audio import AudioDecodeError, DecodeResult, MeasuredBlocks, iter_excerpt_blocks

# STFT size of the chromagram.
CHROMA_N_FFT = 2048


def chroma_sequence(*, audio: np.ndarray, sample_rate: int, hop_length: int) -> np.ndarray:
    """The STFT chromagram of a mono signal, one row per frame.

    Parameters
    ----------
    audio : np.ndarray, shape ``[n]``, n >= 1
    sample_rate : int > 0
    hop_length : int > 0
        Samples between frames (frames are centred: ``1 + n // hop_length`` of them).

    Returns
    -------
    np.ndarray, float32, shape ``[1 + n // hop_length, 12]``; each frame scaled to a maximum of 1
    (librosa's default), bins from C to B.
    """
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim != 1 or audio.size == 0:
        raise ValueError(f"audio must be a non-empty 1-D signal, got shape {audio.shape}")
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    if hop_length <= 0:
        raise ValueError(f"hop_length must be positive, got {hop_length}")
    chroma = librosa.feature.chroma_stft(y=audio, sr=sample_rate, n_fft=CHROMA_N_FFT, hop_length=hop_length)
    return np.ascontiguousarray(chroma.T, dtype=np.float32)


@dataclass(frozen=True)
class ChromaSettings:
    """How the LSTM's input is computed from a file (see :func:`decode_chroma`)."""

    sample_rate: int
    hop_length: int
    max_seconds: float | None
    window_seconds: float | None = None  # the chromagram is computed this many seconds at a time
    min_seconds: float = 0.0


def windowed_chroma(*, blocks: Iterable[np.ndarray], sample_rate: int, hop_length: int, window_samples: int
                    ) -> tuple[np.ndarray, int, float]:
    """The chromagram of a streamed signal, computed a window at a time.

    Each window is extended by half an STFT frame (rounded up to a hop) on either side, and only
    the frames centred inside the window are kept, so every frame is the whole signal's frame (the
    first and last windows are padded at the signal's edges just as the whole signal is). Only the
    tuning differs: librosa estimates it per window. The last window is one to two windows long:
    a signal under two windows is computed whole.

    Parameters
    ----------
    blocks : iterable of float32 ``[n_i]`` pieces of the signal
    sample_rate, hop_length : int > 0
    window_samples : int > 0
        Window length; rounded up to a multiple of ``hop_length``.

    Returns
    -------
    chroma : float32 ``[1 + n // hop_length, 12]``
    samples : int, ``n``
    peak : float, the largest absolute sample
    """
    window = -(-max(window_samples, hop_length) // hop_length) * hop_length
    margin = -(-(CHROMA_N_FFT // 2) // hop_length) * hop_length
    frames: list[np.ndarray] = []
    # The buffer is kept as a list of pieces and joined only when a window is cut, so a signal
    # computed whole costs one copy, not one per block.
    pieces: list[np.ndarray] = []
    buffered, buffer_start, own_start, total, peak = 0, 0, 0, 0, 0.0

    def joined() -> np.ndarray:
        buffer = np.concatenate([np.zeros(0, np.float32)] + pieces)
        pieces[:] = [buffer]
        return buffer

    for block in blocks:
        block = np.asarray(block, np.float32).reshape(-1)
        if block.size:
            peak = max(peak, float(np.max(np.abs(block))))
        total += block.size
        pieces.append(block)
        buffered += block.size
        # A window is cut once a whole window more (and half a frame) has arrived after it, so the last
        # window is one to two windows long and a signal under two windows is computed in one piece.
        while buffer_start + buffered > own_start + 2 * window + margin:
            buffer = joined()
            lo = max(0, own_start - margin)
            segment = buffer[lo - buffer_start: own_start + window + margin - buffer_start]
            chroma = chroma_sequence(audio=segment, sample_rate=sample_rate, hop_length=hop_length)
            first = (own_start - lo) // hop_length
            frames.append(chroma[first:first + window // hop_length])
            own_start += window
            keep_from = max(0, own_start - margin)
            pieces[:] = [buffer[keep_from - buffer_start:]]
            buffered, buffer_start = buffer.size - (keep_from - buffer_start), keep_from
    if total:
        # The last window: every frame centred from its start to the end of the signal.
        buffer = joined()
        lo = max(0, own_start - margin)
        chroma = chroma_sequence(audio=buffer[lo - buffer_start:], sample_rate=sample_rate, hop_length=hop_length)
        frames.append(chroma[(own_start - lo) // hop_length:])
    chroma = np.concatenate(frames) if frames else np.zeros((0, 12), np.float32)
    return chroma, total, peak


def decode_chroma(path: str, settings: ChromaSettings) -> DecodeResult:
    """The chromagram of a file's centred excerpt, as a :class:`DecodeResult` (``pooled``: ``[frames, 12]``).

    Module-level so worker processes can unpickle it; failures become the result's ``reason``,
    never an exception. The excerpt is decoded block by block and its chromagram computed a window
    at a time (:func:`windowed_chroma`), so memory is bounded by a window, not by the file; the
    excerpt is checked (too short, silent) before its last window is computed.
    """
    try:
        blocks = MeasuredBlocks(iter_excerpt_blocks(path, sample_rate=settings.sample_rate,
                                                    max_seconds=settings.max_seconds),
                                path=path, sample_rate=settings.sample_rate, min_seconds=settings.min_seconds)
        window = (settings.window_seconds or math.inf) * settings.sample_rate
        chroma, samples, _ = windowed_chroma(blocks=blocks, sample_rate=settings.sample_rate,
                                             hop_length=settings.hop_length, window_samples=int(min(window, 2 ** 62)))
    except AudioDecodeError as err:
        return DecodeResult(pooled=None, seconds=0.0, reason=err.reason)
    except Exception as err:  # noqa: BLE001 - one bad file must never stop a batch
        return DecodeResult(pooled=None, seconds=0.0, reason=f"chromagram failed ({type(err).__name__}: {err})")
    return DecodeResult(pooled=chroma, seconds=samples / float(settings.sample_rate))


def chroma_of_file(path: str, sample_rate: int, hop_length: int, max_seconds: float | None
                   ) -> tuple[np.ndarray | None, str | None]:
    """(chromagram float32 ``[frames, 12]`` or None, failure reason or None) of a file's whole excerpt.

    :func:`decode_chroma` with the excerpt computed in one piece and at least a second of audio;
    module-level and positional so a worker pool can run it.
    """
    result = decode_chroma(path, ChromaSettings(sample_rate=sample_rate, hop_length=hop_length,
                                                max_seconds=max_seconds, min_seconds=1.0))
    if result.pooled is None:
        return None, result.reason or "could not be decoded"
    return result.pooled, None
