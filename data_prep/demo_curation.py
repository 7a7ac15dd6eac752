"""The curation of a demo package's music files, done in code (``shared/data/README.md``'s rules).

:func:`curate_tracks` keeps music: it leaves out non-music paths (by pattern), files that do not
decode (:func:`checked_duration` probes each), tracks under ``MIN_TRACK_SECONDS`` and duplicates:
the same bytes, or the same decoded audio up to gain (:func:`decoded_correlation`). Used by
``data_prep.demo`` for the packages it does not curate by hand (``demo_packages.EXTRA_SOURCES``).
"""
from __future__ import annotations

import re
from typing import Callable, Sequence

import numpy as np

from data_prep.sources import file_sha256
from musicsim.data.audio import DEFAULT_SAMPLE_RATE, AudioDecodeError, audio_info, load_audio

MIN_TRACK_SECONDS = 30.0
# Bump when ``curate_tracks`` changes: only the stamps of pattern-matched sources depend on it.
CURATION_VERSION = 1
# Paths (inside a source's music folder) that are not music, whatever the package.
NON_MUSIC_PATTERNS = (r"(?i)(^|/)(sfx|sounds?|effects?|voices?|announcer|ambience|jingles?)/", r"(?i)jingle")
# Decode checks of a kept file: this many seconds at its start, middle and end.
PROBE_SECONDS = 2.0
# Two files of the same length are the same recording when the median correlation of their
# decoded audio over NEAR_DUPLICATE_WINDOW_S windows reaches this (a remaster at another gain
# scores ~0.999; two arrangements sharing stems, e.g. freedroidrpg's AmbientBattle/TechBattle, ~0.84).
NEAR_DUPLICATE_CORRELATION = 0.98
NEAR_DUPLICATE_RATE = 4000
NEAR_DUPLICATE_WINDOW_S = 5.0
# Rate at which a file with no readable length is decoded to measure it.
DEFAULT_MEASURE_RATE = DEFAULT_SAMPLE_RATE


def checked_duration(path: str) -> tuple[float, int, int]:
    """A file's duration, once it is known to decode.

    The header gives the length; when it has none, the whole file is decoded to measure it. A file
    with a length is checked by decoding ``PROBE_SECONDS`` at its start, middle and end (what breaks
    a file, a bad header, truncation or a corrupt stream, shows there; ``data_prep.build`` still
    reports any excerpt that fails to decode later).

    Returns
    -------
    seconds : float
    sample_rate, frames : int
        The file's rate and length in frames at that rate (frames decoded when the header has none).

    Raises
    ------
    AudioDecodeError
        When the header or a probe does not decode; its ``reason`` says why.
    """
    try:
        info = audio_info(path)
    except AudioDecodeError:
        info = None  # not a libsndfile format: load_audio tries audioread, or says why not
    if info is None or info.frames == 0:
        rate = info.sample_rate if info is not None else DEFAULT_MEASURE_RATE
        audio = load_audio(path, sample_rate=rate, min_seconds=0.0, reject_silence=False)
        return audio.size / float(rate), rate, int(audio.size)
    probe = min(PROBE_SECONDS, info.duration)
    for offset in (0.0, (info.duration - probe) / 2.0, info.duration - probe):
        load_audio(path, sample_rate=info.sample_rate, offset=max(0.0, offset), duration=probe,
                   min_seconds=0.0, reject_silence=False)
    return info.duration, info.sample_rate, info.frames


def decoded_correlation(path_a: str, path_b: str) -> float:
    """How alike two files' decoded audio is, whatever their gains: 1.0 for the same recording.

    Both are decoded to mono at ``NEAR_DUPLICATE_RATE`` and cut into aligned windows of
    ``NEAR_DUPLICATE_WINDOW_S``; the result is the median over windows of the Pearson correlation
    (windows silent in either file do not count). Per window, so a remaster whose gain follows
    another curve than the original's still scores near 1.

    Returns
    -------
    float in [-1, 1]; 0.0 when no window has sound in both files.
    """
    a = load_audio(path_a, sample_rate=NEAR_DUPLICATE_RATE, min_seconds=0.0, reject_silence=False)
    b = load_audio(path_b, sample_rate=NEAR_DUPLICATE_RATE, min_seconds=0.0, reject_silence=False)
    length = min(a.size, b.size)
    window = min(int(NEAR_DUPLICATE_WINDOW_S * NEAR_DUPLICATE_RATE), length)
    if window == 0:
        return 0.0
    count = length // window
    windows_a = a[:count * window].reshape(count, window).astype(np.float64)  # [windows, samples]
    windows_b = b[:count * window].reshape(count, window).astype(np.float64)
    windows_a -= windows_a.mean(axis=1, keepdims=True)
    windows_b -= windows_b.mean(axis=1, keepdims=True)
    norms = np.sqrt((windows_a ** 2).sum(axis=1) * (windows_b ** 2).sum(axis=1))  # [windows]
    audible = norms > 1e-12
    if not audible.any():
        return 0.0
    return float(np.median((windows_a * windows_b).sum(axis=1)[audible] / norms[audible]))


def long_enough(*, track: str, measure: Callable[[], tuple], min_track_seconds: float,
                left_out: dict[str, list[str]]) -> tuple | None:
    """``measure()`` (a tuple, seconds first) of a track that decodes and lasts ``min_track_seconds``, else None
    with the track noted in ``left_out["undecodable"]`` or ``left_out["too_short"]``."""
    try:
        measured = measure()
    except AudioDecodeError as err:
        left_out["undecodable"].append(f"{track}: {err.reason}")
        return None
    if measured[0] < min_track_seconds:
        left_out["too_short"].append(f"{track} ({measured[0]:.1f}s)")
        return None
    return measured


def curate_tracks(*, files: dict[str, str], min_track_seconds: float = MIN_TRACK_SECONDS,
                  exclude_patterns: Sequence[str] = NON_MUSIC_PATTERNS
                  ) -> tuple[list[tuple[str, float]], dict[str, list[str]]]:
    """The README's curation of a package's music files, in order of track path.

    1. ``excluded``: the track path matches one of ``exclude_patterns`` (not music);
    2. ``undecodable``: the file does not decode (``checked_duration``);
    3. ``too_short``: under ``min_track_seconds`` (jingles, stingers);
    4. ``duplicate``: the same bytes (sha256) as a track kept before it, or, at the same length in
       frames, the same decoded audio (``decoded_correlation`` >= ``NEAR_DUPLICATE_CORRELATION``).
       The first by sorted track path is the one kept.

    Parameters
    ----------
    files : dict
        ``{track path: local file}``.
    min_track_seconds : float >= 0
    exclude_patterns : sequence of str
        Regular expressions searched in the track path.

    Returns
    -------
    kept : list of (track path, seconds)
        Sorted by track path.
    left_out : dict
        ``{"excluded" | "undecodable" | "too_short" | "duplicate": ["<track>: <why>", ...]}``.
    """
    if min_track_seconds < 0:
        raise ValueError(f"min_track_seconds must be >= 0, got {min_track_seconds}")
    left_out: dict[str, list[str]] = {"excluded": [], "undecodable": [], "too_short": [], "duplicate": []}
    kept: list[tuple[str, float]] = []
    kept_by_hash: dict[str, str] = {}
    kept_by_length: dict[tuple[int, int], list[str]] = {}
    for track in sorted(files):
        path = files[track]
        pattern = next((p for p in exclude_patterns if re.search(p, track)), None)
        if pattern is not None:
            left_out["excluded"].append(f"{track}: path matches {pattern}")
            continue
        measured = long_enough(track=track, measure=lambda: checked_duration(path),
                               min_track_seconds=min_track_seconds, left_out=left_out)
        if measured is None:
            continue
        seconds, sample_rate, frames = measured
        digest = file_sha256(path)
        if digest in kept_by_hash:
            left_out["duplicate"].append(f"{track}: same bytes as {kept_by_hash[digest]} (sha256 {digest[:12]})")
            continue
        same_length = kept_by_length.setdefault((sample_rate, frames), [])
        twin, correlation = None, 0.0
        for other in same_length:  # files of one length are rare: decoding them costs little
            correlation = decoded_correlation(files[other], path)
            if correlation >= NEAR_DUPLICATE_CORRELATION:
                twin = other
                break
        if twin is not None:
            left_out["duplicate"].append(f"{track}: same audio as {twin} (decoded, median window correlation "
                                         f"{correlation:.3f}, {seconds:.1f}s each)")
            continue
        kept_by_hash[digest] = track
        same_length.append(track)
        kept.append((track, seconds))
    return kept, left_out
