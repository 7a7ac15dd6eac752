"""Which 3 s patches of a track the engine runs, and their spectrogram (`musicsim.models.pretrained_engine`).

A track gives ``expected_patches`` patches (musicnn's log-mel spectrogram cut every 3 s,
`musicsim.models.musicnn.iter_patch_blocks`); the engine runs at most ``max_patches`` of them, spread
evenly (`sampled_patches`), and computes only their spectrogram: from a streamed decode of the whole
excerpt (`iter_selected_patches`) or decoding only around each (`iter_seeked_patches`, a seek each).
`patches_of_file` picks between them for one file.
"""
from __future__ import annotations

import math
from typing import Iterable, Iterator

import numpy as np

from musicsim.data.audio import (AudioInfo, MeasuredBlocks, UnsupportedHeaderError, audio_info, centred_excerpt,
                            check_excerpt, iter_audio_blocks, iter_excerpt_blocks)
from musicsim.models import musicnn

# A sampled track is decoded only around its patches (a seek each), this much either side.
SEEK_MARGIN_SECONDS = 0.5
# Patches per network call and per yielded array (bounds the activations' memory).
DEFAULT_BATCH_PATCHES = 8

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
    (`musicsim.data.audio.iter_audio_blocks`, from a source frame that falls on a 16 kHz sample, so the
    samples line up with those of the whole decode); the margins absorb the resampler's and the
    decoder's start and end, and are dropped. A patch is then what `iter_selected_patches` gives of
    the whole decode, up to float rounding at the margins (see the tests for the tolerance).

    Parameters
    ----------
    path : str
    keep : np.ndarray, int, ascending: patch indices of the excerpt
    info : AudioInfo
        The file's header (`musicsim.data.audio.audio_info`), with its frame count.
    max_seconds : float or None
        The centred excerpt (None: the whole file).
    min_seconds : float >= 0
        As `musicsim.data.audio.check_excerpt`; the excerpt's length is the header's.
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


def patches_of_file(*, path: str, max_seconds: float | None, max_patches: int | None, min_seconds: float,
                    seek: bool, batch_patches: int) -> Iterator[np.ndarray]:
    """The patches of one file the engine runs: every patch of one streamed decode, or ``max_patches`` of them
    spread evenly (`sampled_patches`, the count from the header's duration; unknown: every patch), decoded
    only around them with ``seek`` (`iter_seeked_patches`), else cut from the whole decode
    (`iter_selected_patches`). The header is read now; the audio as the patches are taken.

    Parameters
    ----------
    path : str
    max_seconds : float > 0 or None
        The centred excerpt used (None: the whole track).
    max_patches : int >= 1 or None
    min_seconds : float >= 0
        Shorter excerpts are refused (as the patches are taken).
    seek : bool
    batch_patches : int >= 1
        Patches per yielded array.

    Returns
    -------
    iterator of np.ndarray, float32, shape ``[m, PATCH_FRAMES, N_MELS]``, 1 <= m <= batch_patches
    """
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
                                           min_seconds=min_seconds, block_patches=batch_patches)
    else:
        # The excerpt is checked (too short, silent) as its blocks end, before its last patches run.
        decoded = MeasuredBlocks(iter_excerpt_blocks(path, sample_rate=musicnn.SAMPLE_RATE, max_seconds=max_seconds),
                                 path=path, sample_rate=musicnn.SAMPLE_RATE, min_seconds=min_seconds)
        if keep is None:
            patch_blocks = musicnn.iter_patch_blocks(blocks=decoded, block_patches=batch_patches)
        else:
            patch_blocks = iter_selected_patches(blocks=decoded, keep=keep, block_patches=batch_patches)
    return patch_blocks
