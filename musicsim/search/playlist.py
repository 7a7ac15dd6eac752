"""Playlists walked through an index's embedding space: a "radio" from a seed, or a morph between two tracks.

Both work on the stored vectors of an index (``musicsim.index.IndexBackend``) and never repeat a track:

* ``radio``: each next track is the nearest unused one to a blend of the last track and the seed
  (so the walk drifts but keeps the seed's character); ``diversity`` trades that closeness for
  distance from the tracks already played.
* ``morph``: targets interpolated linearly between the two tracks' embeddings; at each step the
  nearest unused track to the target.

Similarities are the index's own (cosine, or minus the Euclidean distance): higher is closer.

``to_m3u8`` writes a playlist for players: an extended M3U in UTF-8 (``#EXTM3U``, then per track
``#EXTINF:<seconds>,<artist> - <title>`` and its file's path, absolute or relative to a root folder).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from musicsim.index import IndexBackend

# Weight of the last track in the radio's query blend (the rest goes to the seed).
RADIO_LAST_WEIGHT = 0.6
# Unused candidates fetched per radio step for the diversity trade-off.
RADIO_CANDIDATES = 20
MAX_PLAYLIST_LENGTH = 500


def similarity(*, index: IndexBackend, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The index's similarity between vectors ``a`` [D] and each row of ``b`` [M, D]: shape [M]."""
    b = np.atleast_2d(b)
    if index.similarity == "cosine":
        a = a / max(float(np.linalg.norm(a)), 1e-12)
        return b @ a
    return -np.linalg.norm(b - a[None, :], axis=1)


def _check_length(n: int, *, minimum: int) -> int:
    if isinstance(n, bool) or int(n) != n or not minimum <= n <= MAX_PLAYLIST_LENGTH:
        raise ValueError(f"n must be an integer in [{minimum}, {MAX_PLAYLIST_LENGTH}], got {n!r}")
    return int(n)


def _check_track(index: IndexBackend, track_id: str, *, role: str) -> None:
    if track_id not in index:
        raise KeyError(f"unknown {role} track id {track_id!r} (the index holds {len(index)} tracks)")


def radio(*, index: IndexBackend, seed: str, n: int = 20, diversity: float = 0.0) -> list[dict[str, Any]]:
    """A walk of ``n`` distinct tracks from ``seed``, each close to the last one and to the seed.

    Parameters
    ----------
    index : the catalog
    seed : track id of the first track
    n : playlist length, seed included (fewer when the index holds fewer tracks)
    diversity : float in [0, 1]
        0 takes the nearest unused track to the blend ``0.6 * last + 0.4 * seed``; above 0, each step
        picks among the ``RADIO_CANDIDATES`` nearest the one maximising
        ``(1 - diversity) * sim(blend, c) - diversity * max_played sim(c, p)``.

    Returns
    -------
    list of dict, in play order: ``track_id``, ``score_to_last`` and ``score_to_seed`` (None for
    the seed itself)

    Raises
    ------
    KeyError
        For a seed not in the index.
    ValueError
        For ``n`` or ``diversity`` out of range.
    """
    _check_track(index, seed, role="seed")
    n = _check_length(n, minimum=1)
    if not 0.0 <= float(diversity) <= 1.0:
        raise ValueError(f"diversity must be in [0, 1], got {diversity}")
    seed_vector = index.vector(track_id=seed)
    played = [seed]
    played_vectors = [seed_vector]
    entries: list[dict[str, Any]] = [{"track_id": seed, "score_to_last": None, "score_to_seed": None}]
    while len(played) < min(n, len(index)):
        last_vector = played_vectors[-1]
        blend = RADIO_LAST_WEIGHT * last_vector + (1.0 - RADIO_LAST_WEIGHT) * seed_vector
        if not np.any(blend):  # opposite cosine vectors cancel out: follow the last track alone
            blend = last_vector
        fetch = 1 if diversity == 0 else RADIO_CANDIDATES
        found = index.search(queries=blend[None, :], k=fetch, exclude_ids=[played])[0]
        if not found:
            break
        candidates = [track_id for track_id, _ in found]
        if diversity > 0 and len(candidates) > 1:
            vectors = np.stack([index.vector(track_id=t) for t in candidates])
            closeness = np.array([score for _, score in found])
            redundancy = np.max(np.stack([similarity(index=index, a=p, b=vectors) for p in played_vectors]),
                                axis=0)
            pick = int(np.argmax((1.0 - diversity) * closeness - diversity * redundancy))
        else:
            pick = 0
        chosen = candidates[pick]
        vector = index.vector(track_id=chosen)
        entries.append({"track_id": chosen,
                        "score_to_last": float(similarity(index=index, a=last_vector, b=vector)[0]),
                        "score_to_seed": float(similarity(index=index, a=seed_vector, b=vector)[0])})
        played.append(chosen)
        played_vectors.append(vector)
    return entries


def morph(*, index: IndexBackend, source: str, target: str, n: int = 10) -> list[dict[str, Any]]:
    """A path of ``n`` distinct tracks from ``source`` to ``target`` through the embedding space.

    Step ``i`` of ``n`` aims at ``(1 - a) * v_source + a * v_target`` with ``a = i / (n - 1)`` and
    takes the nearest track not used yet; the first and last steps are the two tracks themselves.

    Parameters
    ----------
    index : the catalog
    source, target : track ids, distinct
    n : path length >= 2, both ends included (fewer when the index holds fewer tracks)

    Returns
    -------
    list of dict, in order: ``track_id``, ``alpha`` (the step's interpolation weight) and
    ``score_to_target`` (the similarity to the step's interpolated target)

    Raises
    ------
    KeyError
        For a track not in the index.
    ValueError
        For ``source == target`` or ``n`` out of range.
    """
    _check_track(index, source, role="from")
    _check_track(index, target, role="to")
    if source == target:
        raise ValueError(f"from and to are the same track {source!r}: a morph needs two tracks")
    n = min(_check_length(n, minimum=2), len(index))
    start, end = index.vector(track_id=source), index.vector(track_id=target)
    used = [source, target]
    middle: list[dict[str, Any]] = []
    for step in range(1, n - 1):
        alpha = step / (n - 1)
        aim = (1.0 - alpha) * start + alpha * end
        if not np.any(aim):
            aim = start if alpha < 0.5 else end
        found = index.search(queries=aim[None, :], k=1, exclude_ids=[used])[0]
        if not found:
            break
        track_id, score = found[0]
        used.append(track_id)
        middle.append({"track_id": track_id, "alpha": alpha, "score_to_target": float(score)})
    ends_score = float(similarity(index=index, a=start, b=start)[0])
    return ([{"track_id": source, "alpha": 0.0, "score_to_target": ends_score}] + middle
            + [{"track_id": target, "alpha": 1.0, "score_to_target": ends_score}])


@dataclass(frozen=True)
class M3UEntry:
    """One track of an M3U playlist: its file, title, artist (None when unknown) and duration (None: unknown)."""

    path: str
    title: str
    artist: str | None = None
    duration_s: float | None = None


def _one_line(text: str) -> str:
    """``text`` with line breaks as spaces (an M3U entry is one line)."""
    return " ".join(str(text).splitlines()).strip()


def to_m3u8(*, entries: Sequence[M3UEntry], root: str | None = None, name: str | None = None) -> str:
    """An extended M3U playlist (to be written as UTF-8, a ``.m3u8`` file) of ``entries`` in order.

    Parameters
    ----------
    entries : the tracks, with absolute paths
    root : when given, paths are written relative to this folder (``..`` where a file lies outside it),
        so the playlist works wherever the library and the playlist move together; absolute otherwise
    name : the playlist's title (an ``#PLAYLIST:`` line), if any

    Returns
    -------
    str
        ``#EXTM3U``, then per track ``#EXTINF:<whole seconds, -1 when unknown>,<artist> - <title>`` (the
        title alone without an artist) and the path on the next line; lines end with ``\n``. A path
        holding a line break cannot be written in M3U: that track is left out.
    """
    lines = ["#EXTM3U"]
    if name:
        lines.append(f"#PLAYLIST:{_one_line(name)}")
    for entry in entries:
        if "\n" in entry.path or "\r" in entry.path:
            continue
        path = os.path.relpath(entry.path, root) if root else os.path.abspath(entry.path)
        duration = entry.duration_s
        seconds = int(round(duration)) if duration is not None and math.isfinite(duration) and duration >= 0 else -1
        title = _one_line(entry.title)
        label = f"{_one_line(entry.artist)} - {title}" if entry.artist else title
        lines += [f"#EXTINF:{seconds},{label}", path]
    return "\n".join(lines) + "\n"
