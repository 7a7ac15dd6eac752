"""A sound file's header and its raw frames, for the one decoder (``musicsim.data.audio``).

The file level, below decoding: :func:`audio_info` reads the header; :func:`file_frames` yields an
excerpt's frames at the file's own rate and channel count, block by block, from libsndfile (seeked,
MP3-safe reads, cut Ogg streams and short reads caught) or, for formats libsndfile does not read
(m4a, wma, ...), from audioread. Every failure is an :class:`AudioDecodeError` naming the file.
``musicsim.data.audio`` downmixes and resamples these blocks; callers import the errors from there.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterator

import audioread  # librosa's fallback backend (needs ffmpeg or gstreamer on the machine to decode)
import numpy as np
import soundfile as sf

# A read that yields less than this share of the frames the header promises counts as truncated.
TRUNCATED_FRACTION = 0.9
# Ogg page layout (RFC 3533): capture pattern, header size before the segment table, end-of-stream flag.
_OGG_CAPTURE = b"OggS"
_OGG_HEADER_SIZE = 27
_OGG_MAX_PAGE = _OGG_HEADER_SIZE + 255 + 255 * 255
_OGG_EOS_FLAG = 0x04


class AudioDecodeError(Exception):
    """A file could not be used as audio; ``path`` and ``reason`` say which and why."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = os.fspath(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class UnsupportedHeaderError(AudioDecodeError):
    """libsndfile cannot parse the header of a readable, non-empty file: a fallback decoder may."""


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



def audio_info(path: str | os.PathLike) -> AudioInfo:
    """Read a file's header: sample rate, channels and length.

    Raises
    ------
    AudioDecodeError
        If the file is missing, empty, cannot be read (permissions, I/O error) or is not an audio
        file libsndfile reads (then :class:`UnsupportedHeaderError`).
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise AudioDecodeError(path, "file not found")
    if os.path.isdir(path):
        raise AudioDecodeError(path, "is a directory, not an audio file")
    if os.path.getsize(path) == 0:
        raise AudioDecodeError(path, "empty file (0 bytes)")
    try:
        with open(path, "rb") as f:
            f.read(1)
    except OSError as err:  # libsndfile would only say "System error"
        raise AudioDecodeError(path, f"cannot be read ({err.strerror or err})") from None
    try:
        info = sf.info(path)
    except Exception as err:
        raise UnsupportedHeaderError(path, f"not audio or unsupported format ({err})")
    if info.samplerate <= 0 or info.channels <= 0:
        raise AudioDecodeError(path, "header has no sample rate or channels")
    return AudioInfo(path=path, sample_rate=int(info.samplerate), channels=int(info.channels),
                     frames=max(0, int(info.frames)))


def _ogg_crc_table() -> tuple[int, ...]:
    table = []
    for index in range(256):
        crc = index << 24
        for _ in range(8):
            crc = ((crc << 1) ^ 0x04C11DB7) if crc & 0x80000000 else (crc << 1)
        table.append(crc & 0xFFFFFFFF)
    return tuple(table)


_OGG_CRC_TABLE = _ogg_crc_table()


def _ogg_crc(data: bytes) -> int:
    """The Ogg page checksum (CRC-32, polynomial 0x04c11db7, not reflected, initial value 0)."""
    crc = 0
    for byte in data:
        crc = ((crc << 8) & 0xFFFFFFFF) ^ _OGG_CRC_TABLE[(crc >> 24) ^ byte]
    return crc


def _ogg_truncation(path: str) -> str | None:
    """Why an Ogg file cannot be decoded whole (cut short, or unreadable), or None when it can (or is not Ogg).

    libsndfile counts an Ogg file's frames from its last page, so a cut file reports, and decodes
    to, the shorter length without any error. A whole stream ends with a page flagged
    end-of-stream: the last complete page (the one whose checksum holds) must carry that flag.
    """
    try:
        with open(path, "rb") as f:
            if f.read(4) != _OGG_CAPTURE:
                return None
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - _OGG_MAX_PAGE))
            tail = f.read()
    except OSError as err:
        return f"cannot be read ({err.strerror or err})"
    position = len(tail)
    while True:
        position = tail.rfind(_OGG_CAPTURE, 0, position)
        if position < 0:
            return "truncated audio (no complete Ogg page at the end of the file)"
        header = tail[position:position + _OGG_HEADER_SIZE]
        if len(header) == _OGG_HEADER_SIZE and header[4] == 0:
            segments = header[26]
            table = tail[position + _OGG_HEADER_SIZE:position + _OGG_HEADER_SIZE + segments]
            page_size = _OGG_HEADER_SIZE + segments + sum(table)
            page = tail[position:position + page_size]
            if len(table) == segments and len(page) == page_size:
                zeroed = page[:22] + b"\0\0\0\0" + page[26:]
                if _ogg_crc(zeroed) == int.from_bytes(page[22:26], "little"):
                    if header[5] & _OGG_EOS_FLAG:
                        return None
                    return ("truncated audio (the Ogg stream stops before its end-of-stream page: the file "
                            "was cut short)")


# soundfile's C bindings, used by _read_frames (present in soundfile 0.10 to 0.14).
_DIRECT_READ = all(hasattr(sf, name) for name in ("_snd", "_ffi", "_error_check"))


def _read_frames(f: sf.SoundFile, frames: int) -> np.ndarray:
    """The next ``[<= frames, channels]`` float32 frames of ``f``, read with one libsndfile call.

    ``SoundFile.read`` seeks back to its own position after every call; for MP3 that restarts the
    decoder and garbles the next ~4000 frames, so block-wise reads would differ from one whole read.
    """
    if not _DIRECT_READ:  # another soundfile release: its public read, MP3 caveat and all
        return f.read(frames=frames, dtype="float32", always_2d=True)
    out = np.empty((frames, f.channels), np.float32)
    got = sf._snd.sf_readf_float(f._file, sf._ffi.cast("float *", out.ctypes.data), frames)
    sf._error_check(f._errorcode)
    return out[:got]


def _sndfile_frames(path: str, info: AudioInfo, *, start: int, frames: int, block_frames: int
                    ) -> Iterator[np.ndarray]:
    """``[n, channels]`` float32 blocks of ``frames`` frames from ``start`` (-1: to the end), read with
    libsndfile; raises :class:`AudioDecodeError` when the file turns out cut or corrupt."""
    read = 0
    try:
        with sf.SoundFile(path) as f:
            if start:
                f.seek(start)
            while frames < 0 or read < frames:
                block = _read_frames(f, block_frames if frames < 0 else min(block_frames, frames - read))
                if not block.shape[0]:
                    break
                read += block.shape[0]
                yield block
    except AudioDecodeError:
        raise
    except Exception as err:
        raise AudioDecodeError(path, f"truncated or corrupt audio ({err})") from None
    # A cut-off mp3 decodes cleanly but stops early: compare with what the header promised.
    promised = (info.frames - start) if frames < 0 else min(frames, info.frames - start)
    if info.frames and read < TRUNCATED_FRACTION * promised:
        rate = info.sample_rate
        raise AudioDecodeError(path, f"truncated audio (decoded {read / rate:.2f}s of the "
                                     f"{promised / rate:.2f}s the header promises)")


def _audioread_frames(path: str, *, offset: float, duration: float | None, block_seconds: float,
                      sndfile_reason: str = "") -> tuple[int, int, Iterator[np.ndarray]]:
    """Fallback for formats libsndfile does not read (m4a, wma, ...) via audioread, block by block.

    ``sndfile_reason`` (why libsndfile refused the file) goes into the error when audioread fails
    too: without a backend its own message is empty.

    Returns
    -------
    file_rate, channels : int
    blocks : iterator of np.ndarray, float32, shape ``[frames, channels]``
        The excerpt's frames at ``file_rate``, about ``block_seconds`` at a time.
    """
    def failure(err: Exception) -> AudioDecodeError:
        detail = f"{type(err).__name__}: {err}".rstrip(": ")
        if sndfile_reason:
            return AudioDecodeError(path, f"{sndfile_reason}; audioread fallback: {detail}")
        return AudioDecodeError(path, f"not audio or unsupported format ({detail})")

    try:
        source = audioread.audio_open(path)
        file_rate, channels = int(source.samplerate), int(source.channels)
    except Exception as err:  # audioread raises its own hierarchy plus OSError
        raise failure(err) from None
    block_frames = max(1, int(round(block_seconds * file_rate)))

    def blocks() -> Iterator[np.ndarray]:
        start = int(offset * file_rate) * channels
        stop = None if duration is None else start + int(duration * file_rate) * channels
        pending, pending_size, seen = [], 0, 0
        try:
            with source:
                for buf in source:
                    block = np.frombuffer(buf, dtype="<i2").astype(np.float32) / np.float32(32768.0)
                    lo, hi = seen, seen + block.size
                    seen = hi
                    if hi <= start:
                        continue
                    block = block[max(0, start - lo): None if stop is None else max(0, stop - lo)]
                    pending.append(block)
                    pending_size += block.size
                    if pending_size >= block_frames * channels:
                        whole = np.concatenate(pending)
                        cut = (whole.size // channels) * channels
                        yield whole[:cut].reshape(-1, channels)
                        pending, pending_size = [whole[cut:]], whole.size - cut
                    if stop is not None and seen >= stop:
                        break
        except AudioDecodeError:
            raise
        except Exception as err:
            raise failure(err) from None
        if pending_size:
            whole = np.concatenate(pending)
            yield whole[:(whole.size // channels) * channels].reshape(-1, channels)

    return file_rate, channels, blocks()


def file_frames(path: str, *, offset_seconds: float, duration_seconds: float | None, block_seconds: float
                ) -> tuple[int, int, Iterator[np.ndarray]]:
    """An excerpt's frames as the file holds them, block by block: libsndfile, else audioread.

    Parameters
    ----------
    path : str
    offset_seconds : float >= 0
    duration_seconds : float > 0 or None
        ``None`` reads to the end.
    block_seconds : float > 0
        Source seconds per block.

    Returns
    -------
    file_rate, channels : int
    blocks : iterator of np.ndarray, float32, shape ``[frames, channels]``
        Raises :class:`AudioDecodeError` when the file turns out cut or corrupt.

    Raises
    ------
    AudioDecodeError
        Missing, empty, unreadable, not audio, offset past the end, or a cut Ogg stream.
    """
    try:
        info = audio_info(path)
    except UnsupportedHeaderError as err:
        # raises AudioDecodeError itself
        return _audioread_frames(path, offset=offset_seconds, duration=duration_seconds,
                                 block_seconds=block_seconds, sndfile_reason=err.reason)
    start = int(round(offset_seconds * info.sample_rate))
    if info.frames and start >= info.frames:
        raise AudioDecodeError(path, f"offset {offset_seconds:.2f}s is past the end ({info.duration:.2f}s)")
    truncation = _ogg_truncation(path)
    if truncation:
        raise AudioDecodeError(path, truncation)
    frames = -1 if duration_seconds is None else int(round(duration_seconds * info.sample_rate))
    blocks = _sndfile_frames(path, info, start=start, frames=frames,
                             block_frames=max(1, int(round(block_seconds * info.sample_rate))))
    return info.sample_rate, info.channels, blocks
