"""The tags of an audio file, as people know the track: title, artist, album, ... and its cover art.

``read_tags(path=...)`` reads, with ``mutagen``, every tag format of the files the decoder reads
(``musicsim.data.audio.AUDIO_EXTENSIONS``):

- Vorbis comments: Ogg Vorbis, Ogg Opus, FLAC (``TITLE``, ``ARTIST``, ``ALBUM``, ``ALBUMARTIST`` or
  ``ALBUM ARTIST``, ``TRACKNUMBER``, ``DISCNUMBER``, ``DATE`` or ``YEAR``, ``GENRE``);
- ID3: MP3, and the ID3 chunk of WAV and AIFF files (``TIT2``, ``TPE1``, ``TALB``, ``TPE2``, ``TRCK``,
  ``TPOS``, ``TDRC``, ``TCON``);
- MP4 atoms: M4A (``©nam``, ``©ART``, ``©alb``, ``aART``, ``trkn``, ``disk``, ``©day``, ``©gen``);
- ASF: WMA (``Title``, ``Author``, ``WM/AlbumTitle``, ``WM/AlbumArtist``, ``WM/TrackNumber``, ...).

Every key is always present: a tag the file lacks is None, except ``title`` (the file name without
its extension) and ``album`` (the name of the file's folder), so each track has a name and an album
to be shown and grouped by. Text tags are stripped strings (several values joined with ``"; "``),
``track_number``, ``disc`` and ``year`` integers (``"3/12"`` is 3, ``"2001-05-03"`` is 2001),
``duration_s`` a float from the stream header (``musicsim.data.audio.file_duration`` when mutagen does
not know it). A file whose tags cannot be parsed is not an error here: it gets the fallbacks (the
decoder, not the tag reader, decides whether a file is usable audio).

``read_cover_art(path=...)`` returns the embedded picture (the front cover when several are
embedded) as ``(image bytes, mime type)``, or None.

>>> sorted(read_tags(path="/no/such/Album/01 Song.ogg"))  # doctest: +NORMALIZE_WHITESPACE
['album', 'album_artist', 'artist', 'disc', 'duration_s', 'genre', 'title', 'track_number', 'year']
>>> read_tags(path="/no/such/Album/01 Song.ogg")["title"], read_tags(path="/no/such/Album/01 Song.ogg")["album"]
('01 Song', 'Album')
"""
from __future__ import annotations

import base64
import math
import os
import re
import struct
from typing import Any, Iterable

import mutagen
from mutagen.asf import ASFTags
from mutagen.flac import Picture
from mutagen.id3 import ID3
from mutagen.mp4 import MP4Cover, MP4Tags

from musicsim.data.audio import file_duration

TAG_KEYS = ("title", "artist", "album", "album_artist", "track_number", "disc", "year", "genre", "duration_s")
# Vorbis-comment field names (lower case) of each tag, in order of preference.
_VORBIS_FIELDS = {
    "title": ("title",), "artist": ("artist",), "album": ("album",),
    "album_artist": ("albumartist", "album artist", "album_artist"),
    "track_number": ("tracknumber", "track"), "disc": ("discnumber", "disc"), "year": ("date", "year", "originaldate"),
    "genre": ("genre",),
}
_ID3_FRAMES = {"title": ("TIT2",), "artist": ("TPE1",), "album": ("TALB",), "album_artist": ("TPE2",),
               "track_number": ("TRCK",), "disc": ("TPOS",), "year": ("TDRC", "TYER", "TORY", "TDOR"),
               "genre": ("TCON",)}
_MP4_ATOMS = {"title": ("\xa9nam",), "artist": ("\xa9ART",), "album": ("\xa9alb",), "album_artist": ("aART",),
              "track_number": ("trkn",), "disc": ("disk",), "year": ("\xa9day",), "genre": ("\xa9gen", "gnre")}
_ASF_FIELDS = {"title": ("Title",), "artist": ("Author", "WM/Composer"), "album": ("WM/AlbumTitle",),
               "album_artist": ("WM/AlbumArtist",), "track_number": ("WM/TrackNumber", "WM/Track"),
               "disc": ("WM/PartOfSet",), "year": ("WM/Year", "WM/OriginalReleaseYear"), "genre": ("WM/Genre",)}
_INTEGER_KEYS = ("track_number", "disc", "year")
# The ID3 / FLAC picture type of a front cover.
_FRONT_COVER = 3
# Pictures bigger than this are not served (a damaged tag can claim anything).
MAX_COVER_BYTES = 16 * 1024 * 1024
_IMAGE_SIGNATURES = ((b"\x89PNG\r\n\x1a\n", "image/png"), (b"\xff\xd8\xff", "image/jpeg"), (b"GIF8", "image/gif"),
                     (b"BM", "image/bmp"))


def fallback_title(path: str) -> str:
    """The file name without its extension."""
    return os.path.splitext(os.path.basename(path))[0]


def fallback_album(path: str) -> str | None:
    """The name of the file's folder (None for a file at the file system's root)."""
    return os.path.basename(os.path.dirname(os.path.abspath(path))) or None


def _text(values: Any) -> str | None:
    """One string from a tag's value(s): stripped, several joined with '; ', None when empty."""
    if values is None:
        return None
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        values = [values]
    parts = []
    for value in values:
        if isinstance(value, bytes):
            value = value.decode("utf-8", errors="replace")
        text = str(value).replace("\x00", " ").strip()
        if text and text not in parts:
            parts.append(text)
    return "; ".join(parts) or None


def _leading_integer(value: Any) -> int | None:
    """``3`` of ``"3/12"``, ``"03"``, ``(3, 12)``; ``2001`` of ``"2001-05-03"``; None when there is none."""
    if isinstance(value, (list, tuple)):
        value = value[0] if value else None
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value > 0 else None
    match = re.match(r"\s*(\d+)", str(value))
    return int(match.group(1)) if match and int(match.group(1)) > 0 else None


def _raw_fields(audio: Any) -> dict[str, Any]:
    """Each tag's raw value(s) in a mutagen file object, by the format of its tags."""
    tags = getattr(audio, "tags", None)
    found: dict[str, Any] = {}
    if tags is None:
        return found
    if isinstance(tags, ID3):
        for key, frames in _ID3_FRAMES.items():
            for frame_id in frames:
                frame = tags.get(frame_id)
                if frame is None:
                    continue
                if frame_id == "TCON":
                    found[key] = list(frame.genres)  # "(17)" -> "Rock"
                else:
                    found[key] = [str(v) for v in frame.text]
                break
    elif isinstance(tags, MP4Tags):
        for key, atoms in _MP4_ATOMS.items():
            for atom in atoms:
                if atom in tags:
                    found[key] = tags[atom]
                    break
    elif isinstance(tags, ASFTags):
        for key, names in _ASF_FIELDS.items():
            for name in names:
                if name in tags:
                    found[key] = [getattr(v, "value", v) for v in tags[name]]
                    break
    else:  # Vorbis comments (Ogg Vorbis / Opus / FLAC) and APEv2: case-insensitive field names
        lowered: dict[str, Any] = {}
        for name, value in tags.items() if hasattr(tags, "items") else []:
            lowered.setdefault(str(name).lower(), []).extend(value if isinstance(value, list) else [value])
        for key, names in _VORBIS_FIELDS.items():
            for name in names:
                if lowered.get(name):
                    found[key] = [str(v) for v in lowered[name]]
                    break
    return found


def _open(path: str) -> Any:
    """mutagen's object for ``path``, or None when mutagen cannot read it (not tagged audio, damaged, missing)."""
    try:
        return mutagen.File(path)
    except Exception:  # noqa: BLE001 - mutagen raises MutagenError, struct.error, ValueError, OSError, ...
        return None


def read_tags(*, path: str, fallback: bool = True) -> dict[str, Any]:
    """The tags of an audio file (see the module docstring).

    Parameters
    ----------
    path : str
        An audio file of any format the decoder reads.
    fallback : bool
        Fill a missing title with the file name and a missing album with the folder name (False:
        None, to tell a tagged album from a folder).

    Returns
    -------
    dict
        ``title`` (str), ``artist``, ``album`` (str or None), ``album_artist``, ``genre`` (str or None),
        ``track_number``, ``disc``, ``year`` (int or None), ``duration_s`` (float or None). ``title``
        falls back to the file name, ``album`` to the folder name.
    """
    path = os.fspath(path)
    tags: dict[str, Any] = dict.fromkeys(TAG_KEYS)
    audio = _open(path)
    if audio is not None:
        for key, value in _raw_fields(audio).items():
            parsed = _leading_integer(value) if key in _INTEGER_KEYS else _text(value)
            if parsed is not None:
                tags[key] = parsed
        length = getattr(getattr(audio, "info", None), "length", None)
        if isinstance(length, (int, float)) and math.isfinite(length) and length > 0:
            tags["duration_s"] = float(length)
    if tags["duration_s"] is None and os.path.isfile(path):
        tags["duration_s"] = file_duration(path)
    if fallback:
        tags["title"] = tags["title"] or fallback_title(path)
        tags["album"] = tags["album"] or fallback_album(path)
    return tags


def _sniff_mime(data: bytes, declared: str | None) -> str:
    for signature, mime in _IMAGE_SIGNATURES:
        if data.startswith(signature):
            return mime
    if data[8:12] == b"WEBP" and data.startswith(b"RIFF"):
        return "image/webp"
    declared = (declared or "").strip().lower()
    if declared in ("png", "jpg", "jpeg"):  # some taggers write the bare format
        declared = "image/" + ("jpeg" if declared == "jpg" else declared)
    return declared if declared.startswith("image/") else "application/octet-stream"


def _pictures(audio: Any) -> list[tuple[int, bytes, str | None]]:
    """(picture type, bytes, declared mime) of every picture embedded in a mutagen file object."""
    found: list[tuple[int, bytes, str | None]] = []
    for picture in getattr(audio, "pictures", None) or []:  # FLAC's PICTURE blocks
        found.append((int(picture.type), bytes(picture.data), picture.mime))
    tags = getattr(audio, "tags", None)
    if tags is None:
        return found
    if isinstance(tags, ID3):
        for frame in tags.getall("APIC"):
            found.append((int(frame.type), bytes(frame.data), frame.mime))
    elif isinstance(tags, MP4Tags):
        for cover in tags.get("covr", []):
            mime = "image/png" if getattr(cover, "imageformat", None) == MP4Cover.FORMAT_PNG else "image/jpeg"
            found.append((_FRONT_COVER, bytes(cover), mime))
    elif isinstance(tags, ASFTags):
        for value in tags.get("WM/Picture", []):
            data = bytes(getattr(value, "value", b""))
            try:  # WM/Picture: type (1 byte), size (4), mime (UTF-16 z-string), description (z-string), data
                kind, size = struct.unpack_from("<bI", data)
                mime_end = data.index(b"\x00\x00", 5)
                mime_end += (mime_end - 5) % 2  # UTF-16 code units are 2 bytes
                description_end = data.index(b"\x00\x00", mime_end + 2)
                description_end += (description_end - mime_end - 2) % 2
                found.append((kind, data[description_end + 2: description_end + 2 + size],
                              data[5:mime_end].decode("utf-16-le", errors="replace")))
            except (struct.error, ValueError):
                continue
    elif hasattr(tags, "get"):  # Vorbis comments: base64 FLAC picture blocks (and the old COVERART field)
        for encoded in list(tags.get("metadata_block_picture", [])):
            try:
                picture = Picture(base64.b64decode(encoded))
            except Exception:  # noqa: BLE001 - a damaged block is skipped, not fatal
                continue
            found.append((int(picture.type), bytes(picture.data), picture.mime))
        for encoded in list(tags.get("coverart", [])):
            try:
                found.append((_FRONT_COVER, base64.b64decode(encoded), None))
            except ValueError:
                continue
    return found


def read_cover_art(*, path: str) -> tuple[bytes, str] | None:
    """The picture embedded in an audio file: the front cover if there is one, else the first.

    Parameters
    ----------
    path : str
        An audio file of any format the decoder reads.

    Returns
    -------
    (bytes, str) or None
        The image's bytes and its mime type (from the image's own signature when it has a known
        one, else as the tag declares it), or None when the file embeds no usable picture (or
        cannot be read).
    """
    audio = _open(os.fspath(path))
    if audio is None:
        return None
    pictures = [(kind, data, mime) for kind, data, mime in _pictures(audio) if 0 < len(data) <= MAX_COVER_BYTES]
    if not pictures:
        return None
    kind, data, mime = min(pictures, key=lambda picture: picture[0] != _FRONT_COVER)
    return data, _sniff_mime(data, mime)
