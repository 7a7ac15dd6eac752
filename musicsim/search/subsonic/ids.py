"""Stable, opaque Subsonic ids for songs, albums, artists and cover art.

An id is a kind prefix and the first 20 hex digits of a SHA-1 of what identifies the thing:

* a song ``tr-``: its index track id (a scanned track's id comes from its path under its library root,
  so it survives a re-scan);
* an album ``al-``: its album artist and album title, case-folded (the same tags give the same id after a
  re-scan, a move or a re-encode);
* an artist ``ar-``: its name, case-folded;
* cover art ``co-`` + the song's or album's hex: the picture of that song (or of the album's first song
  that has one).

Nothing of a request's id is ever used but as a key of the catalog's tables: an id the catalog does
not hold is "not found" (error 70), whatever it contains.

>>> song_id("album1/take0.wav") == song_id("album1/take0.wav"), song_id("a").startswith("tr-")
(True, True)
>>> album_id(album_artist="The Band", album="First") == album_id(album_artist="the band ", album="FIRST")
True
"""
from __future__ import annotations

import hashlib
import unicodedata

SONG, ALBUM, ARTIST, COVER = "tr", "al", "ar", "co"
HEX_DIGITS = 20


def normalise(text: str) -> str:
    """Case-folded, NFC, inner white space collapsed: what two spellings of one name share."""
    return " ".join(unicodedata.normalize("NFC", text).casefold().split())


def _digest(*parts: str) -> str:
    return hashlib.sha1("\x1f".join(parts).encode("utf-8")).hexdigest()[:HEX_DIGITS]


def song_id(track_id: str) -> str:
    """The song id of an index track id."""
    return f"{SONG}-{_digest('track', track_id)}"


def album_id(*, album_artist: str, album: str) -> str:
    """The album id of (album artist, album title)."""
    return f"{ALBUM}-{_digest('album', normalise(album_artist), normalise(album))}"


def artist_id(name: str) -> str:
    """The artist id of an artist name."""
    return f"{ARTIST}-{_digest('artist', normalise(name))}"


def cover_id(owner_id: str) -> str:
    """The cover art id of a song or album id (``co-tr-…`` / ``co-al-…``)."""
    return f"{COVER}-{owner_id}"


def kind(identifier: str) -> str | None:
    """``'tr'``, ``'al'``, ``'ar'`` or ``'co'`` from an id's prefix (None for anything else)."""
    prefix = identifier[:2]
    return prefix if identifier[2:3] == "-" and prefix in (SONG, ALBUM, ARTIST, COVER) else None
