"""A track's public description, from the index's metadata row: tags with fallbacks, the album key, what is searched.

Tracks are described by their tags (title, artist, album, album_artist, track_number, disc, year,
genre, duration_s: the index's metadata columns, written by ``musicsim-scan``), with fallbacks for an
index without them: the title is the file name (or the id's last part) and the album the track's group.
"Same album" is the album tag with its album artist, or the group, or the file's folder.
"""
from __future__ import annotations

import math
import os
import re
import unicodedata
from typing import Any, Collection, Sequence

import numpy as np

TAG_TEXT_COLUMNS = ("title", "artist", "album", "album_artist", "genre")
TAG_NUMBER_COLUMNS = ("track_number", "disc", "year")


def folded(text: str) -> str:
    """``text`` for case- and composition-insensitive matching."""
    return unicodedata.normalize("NFC", text).casefold()


def text_tag(value: Any) -> str | None:
    """A text tag, stripped; None for a missing, empty, boolean or non-finite value."""
    if value is None or isinstance(value, bool) or (isinstance(value, float) and not math.isfinite(value)):
        return None
    text = str(value).strip()
    return text or None


def _number_tag(value: Any) -> int | None:
    """An integer tag from a number or a string such as '3', '3/12' or '2001-05-03'; None otherwise."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return int(value) if math.isfinite(value) and float(value).is_integer() else None
    match = re.match(r"\s*(\d+)", str(value))
    return int(match.group(1)) if match else None


def _seconds(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        return None
    return float(value) if math.isfinite(value) and value >= 0 else None


def _json_value(value: Any) -> Any:
    """A metadata value as JSON can carry it (numpy scalars as numbers, anything else odd as text)."""
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return str(value)


def common_shown_root(paths: Sequence[str]) -> str | None:
    """The folder the tracks' relative paths are shown from when the index records none: the folder
    their files share (for an index built from an export), unless that is only the file-system root."""
    folders = [os.path.dirname(p) for p in paths]
    if not folders:
        return None
    try:
        root = os.path.commonpath(folders)
    except ValueError:
        return None
    return root if root not in ("", os.sep) else None


def describe_track(track_id: str, metadata: dict[str, Any], *, columns: Collection[str], shown_root: str | None,
                   real_folders: dict[str, str]) -> dict[str, Any]:
    """The record of one track: its public fields, and privately its file, album key and search text.

    Built for every track of every version (100k tracks in about a second): no per-track work that
    can wait until the track is asked for (its URLs, its art).

    Parameters
    ----------
    track_id : the track's id in the index
    metadata : its metadata row (``index.metadata``), possibly empty
    columns : the index's metadata columns (a tag column the index lacks is None, not looked up)
    shown_root : the folder relative paths are shown from when the index records none
    real_folders : ``{folder: its realpath}``, filled as folders are met (shared by one version's tracks)

    Returns
    -------
    dict: the public fields, and ``_audio_file``, ``_path``, ``_album_key`` and ``_haystack``
    """
    path = str(metadata["path"]) if metadata.get("path") else None
    audio_file = None
    if path:
        # Resolved once per version: requests are answered from this table, never from a path they
        # carry. One realpath per folder, and one lstat per file for a file that is itself a link.
        folder, name = os.path.split(os.path.abspath(path))
        real_folder = real_folders.get(folder)
        if real_folder is None:
            real_folder = real_folders[folder] = os.path.realpath(folder)
        audio_file = os.path.join(real_folder, name)
        if os.path.islink(audio_file):
            audio_file = os.path.realpath(audio_file)
    tags = {name: text_tag(metadata.get(name)) if name in columns else None for name in TAG_TEXT_COLUMNS}
    tags.update({name: _number_tag(metadata.get(name)) if name in columns else None
                 for name in TAG_NUMBER_COLUMNS})
    group = _json_value(metadata.get("group"))
    relative = text_tag(metadata.get("relative_path"))
    if relative is None and path:
        relative = (os.path.relpath(path, shown_root) if shown_root and path.startswith(shown_root + os.sep)
                    else os.path.join(os.path.basename(os.path.dirname(path)), os.path.basename(path)))
    album_tagged = tags["album"] is not None
    if tags["title"] is None:
        tags["title"] = os.path.splitext(os.path.basename(path))[0] if path else track_id.rsplit("/", 1)[-1]
    if not album_tagged and group is not None:
        tags["album"] = str(group)
    # "Same album": the album tag with its album artist, else the group, else the file's folder.
    if album_tagged:
        album_key = ("album", folded(tags["album"]), folded(tags["album_artist"] or ""))
    elif group is not None:
        album_key = ("group", str(group))
    elif path:
        album_key = ("folder", os.path.dirname(os.path.abspath(path)))
    else:
        album_key = None
    entry = {"track_id": track_id, **tags, "duration_s": _seconds(metadata.get("duration_s")), "group": group,
             "relative_path": relative, "file": os.path.basename(path) if path else None,
             "_audio_file": audio_file, "_path": path, "_album_key": album_key}
    shown = [track_id, relative, group, *tags.values()]
    # Only what a client is shown is searched: never the absolute path the server reads.
    entry["_haystack"] = folded("\n".join([str(value) for value in shown if value is not None]))
    return entry

