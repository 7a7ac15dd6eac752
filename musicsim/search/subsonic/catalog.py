"""The indexed library as Subsonic sees it: songs, albums and artists from the index's tag columns.

Built once per loaded index (``SearchService``) from its metadata columns (``title, artist, album,
album_artist, track_number, disc, year, genre, duration_s, path, relative_path, group``; see
``musicsim.scan``), and never from a request. Albums are keyed by (album artist, album title); a track
without an album artist takes its artist, or "Various Artists" when the tracks of its album (same title,
same folder) have several artists. Missing tags fall back: a title to the file name (or the track id),
an album to the folder name (or the track's group), an artist to "[Unknown Artist]".

Answers are plain data for ``musicsim.search.subsonic.responses`` (``Child``, ``AlbumID3``, ``ArtistID3`` of
the Subsonic API). The server-side absolute path of a song is never part of an answer: a song's ``path``
is its path relative to its library root (or ``artist/album/file``).
"""
from __future__ import annotations

import datetime
import functools
import itertools
import os
import random
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Sequence

from musicsim.search.subsonic import ids
from musicsim.search.tracks import text_tag

UNKNOWN_ARTIST = "[Unknown Artist]"
UNKNOWN_ALBUM = "[Unknown Album]"
VARIOUS_ARTISTS = "Various Artists"
IGNORED_ARTICLES = ("The", "El", "La", "Los", "Las", "Le", "Les")
CONTENT_TYPES = {".mp3": "audio/mpeg", ".flac": "audio/flac", ".ogg": "audio/ogg", ".oga": "audio/ogg",
                 ".opus": "audio/ogg", ".wav": "audio/wav", ".m4a": "audio/mp4", ".aac": "audio/aac",
                 ".aif": "audio/aiff", ".aiff": "audio/aiff", ".wma": "audio/x-ms-wma", ".webm": "audio/webm",
                 ".au": "audio/basic"}


def _positive_int(value: Any) -> int | None:
    """An int from a number or a tag string ('3', '3/12', '2007-05-01'); None unless > 0."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return int(value) if value == value and value > 0 else None
    digits = "".join(itertools.takewhile(str.isdigit, str(value).strip()))
    return int(digits) if digits and int(digits) > 0 else None


def _iso(seconds: float | None) -> str:
    stamp = datetime.datetime.fromtimestamp(seconds or 0, tz=datetime.timezone.utc)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.000Z")


@functools.lru_cache(maxsize=1 << 16)
def name_key(name: str) -> str:
    """``ids.normalise`` of an artist or album name, cached (a library repeats them on every track)."""
    return ids.normalise(name)


@functools.lru_cache(maxsize=1 << 16)
def sort_key(name: str) -> str:
    """A name for alphabetical order: case-folded, a leading ignored article ("The", ...) moved out."""
    folded = name_key(name)
    for article in IGNORED_ARTICLES:
        prefix = article.casefold() + " "
        if folded.startswith(prefix) and len(folded) > len(prefix):
            return folded[len(prefix):]
    return folded


def index_letter(name: str) -> str:
    """The letter an artist is listed under (A-Z, else '#')."""
    key = sort_key(name)
    first = key[:1].upper()
    return first if "A" <= first <= "Z" else "#"


@dataclass(slots=True)
class Song:
    """One indexed track as a Subsonic song (the absolute ``file`` is server-side only)."""

    id: str
    track_id: str
    title: str
    artist: str
    album: str
    album_artist: str
    track: int | None
    disc: int | None
    year: int | None
    genre: str | None
    duration: int | None
    size: int | None
    suffix: str | None
    content_type: str | None
    created: float | None
    shown_path: str | None
    file: str | None
    folder: str
    album_id: str = ""
    artist_id: str = ""
    haystack: str = ""


@dataclass(slots=True)
class Album:
    """An album: its songs in disc and track order."""

    id: str
    name: str
    artist: str
    artist_id: str
    songs: list[Song] = field(default_factory=list)
    duration: int = 0
    year: int | None = None
    genre: str | None = None
    created: float | None = None
    haystack: str = ""


@dataclass(slots=True)
class Artist:
    """An artist: the albums it is the album artist of, and those it only appears on."""

    id: str
    name: str
    albums: list[Album] = field(default_factory=list)
    appears_on: list[Album] = field(default_factory=list)
    listed: bool = False
    haystack: str = ""


def _file_facts(path: str | None) -> tuple[int | None, float | None]:
    if not path:
        return None, None
    try:
        status = os.stat(path)
    except OSError:
        return None, None
    return status.st_size, status.st_mtime


class Catalog:
    """Songs, albums, artists and genres of one loaded index.

    Parameters
    ----------
    track_ids : the index's track ids, in row order
    metadata : one dict of metadata columns per track (same order)
    index_dir : the index folder (its config.json's time is the library's ``lastModified``)
    """

    def __init__(self, *, track_ids: Sequence[str], metadata: Sequence[dict[str, Any]], index_dir: str | None = None):
        songs = [self._song(track_id, columns) for track_id, columns in zip(track_ids, metadata)]
        # Album artist of tracks without one: the artist of their album's tracks, or "Various Artists".
        artists_of_folder_album: dict[tuple[str, str], set[str]] = defaultdict(set)
        for song in songs:
            if not song.album_artist:
                artists_of_folder_album[(name_key(song.album), song.folder)].add(name_key(song.artist))
        for song in songs:
            if not song.album_artist:
                names = artists_of_folder_album[(name_key(song.album), song.folder)]
                song.album_artist = song.artist if len(names) == 1 else VARIOUS_ARTISTS
        songs.sort(key=lambda s: (sort_key(s.album_artist), sort_key(s.album), s.disc or 0, s.track or 0,
                                  s.haystack, s.track_id))
        self.songs = songs
        self.albums: dict[str, Album] = {}
        self.artists: dict[str, Artist] = {}
        self._artist_ids: dict[str, str] = {}
        album_ids: dict[tuple[str, str], str] = {}
        for song in songs:
            album_id = album_ids.get((song.album_artist, song.album))
            if album_id is None:
                album_id = album_ids[(song.album_artist, song.album)] = ids.album_id(album_artist=song.album_artist,
                                                                                     album=song.album)
            album = self.albums.get(album_id)
            if album is None:
                album_artist = self._artist(song.album_artist)
                album_artist.listed = True
                album = self.albums[album_id] = Album(id=album_id, name=song.album, artist=song.album_artist,
                                                      artist_id=album_artist.id)
                album_artist.albums.append(album)
            song.album_id = album_id
            song.artist_id = self._artist(song.artist).id
            album.songs.append(song)
        for album in self.albums.values():
            album.duration = sum(s.duration or 0 for s in album.songs)
            years = Counter(s.year for s in album.songs if s.year)
            album.year = years.most_common(1)[0][0] if years else None
            genres = Counter(s.genre for s in album.songs if s.genre)
            album.genre = genres.most_common(1)[0][0] if genres else None
            created = [s.created for s in album.songs if s.created]
            album.created = max(created) if created else None
            album.haystack = ids.normalise(f"{album.name}\n{album.artist}")
            for artist_id in {s.artist_id for s in album.songs} - {album.artist_id}:
                self.artists[artist_id].appears_on.append(album)
        for artist in self.artists.values():
            artist.haystack = ids.normalise(artist.name)
        self.song_of = {s.id: s for s in songs}
        self.song_of_track = {s.track_id: s for s in songs}
        self.listed_artists = sorted((a for a in self.artists.values() if a.listed), key=lambda a: sort_key(a.name))
        self.albums_by_name = sorted(self.albums.values(), key=lambda a: (sort_key(a.name), sort_key(a.artist)))
        self.albums_by_artist = sorted(self.albums.values(), key=lambda a: (sort_key(a.artist), a.year or 0,
                                                                             sort_key(a.name)))
        self.genres: dict[str, tuple[int, int]] = {}
        song_counts = Counter(s.genre for s in songs if s.genre)
        album_counts = Counter(g for a in self.albums.values() for g in {s.genre for s in a.songs if s.genre})
        for genre, count in song_counts.items():
            self.genres[genre] = (count, album_counts[genre])
        self._song_haystacks = [s.haystack for s in songs]
        modified = None
        if index_dir:
            try:
                modified = os.stat(os.path.join(index_dir, "config.json")).st_mtime
            except OSError:
                pass
        created = [s.created for s in songs if s.created]
        self.last_modified_ms = int(1000 * (modified or (max(created) if created else 0)))

    # ------------------------------------------------------------------ building
    @staticmethod
    def _song(track_id: str, columns: dict[str, Any]) -> Song:
        file = text_tag(columns.get("path"))
        shown = text_tag(columns.get("relative_path"))
        group = text_tag(columns.get("group"))
        title = text_tag(columns.get("title")) or (os.path.splitext(os.path.basename(file))[0] if file else None) \
            or track_id.rsplit("/", 1)[-1] or track_id
        artist = text_tag(columns.get("artist")) or UNKNOWN_ARTIST
        folder = os.path.dirname(file) if file else (group or "")
        album = text_tag(columns.get("album")) or (os.path.basename(folder) if file and folder else None) or group \
            or UNKNOWN_ALBUM
        duration = columns.get("duration_s")
        duration = int(round(float(duration))) if isinstance(duration, (int, float)) and duration == duration \
            and not isinstance(duration, bool) else None
        suffix = os.path.splitext(file)[1].lower() if file else ""
        size, created = _file_facts(file)
        if not shown and file:
            shown = f"{artist}/{album}/{os.path.basename(file)}"
        song = Song(id=ids.song_id(track_id), track_id=track_id, title=title, artist=artist, album=album,
                    album_artist=text_tag(columns.get("album_artist")) or "",
                    track=_positive_int(columns.get("track_number")), disc=_positive_int(columns.get("disc")),
                    year=_positive_int(columns.get("year")), genre=text_tag(columns.get("genre")), duration=duration,
                    size=size, suffix=suffix[1:] or None, content_type=CONTENT_TYPES.get(suffix),
                    created=created, shown_path=shown, file=file, folder=folder)
        song.haystack = f"{ids.normalise(title)}\n{name_key(artist)}\n{name_key(album)}"
        return song

    def _artist(self, name: str) -> Artist:
        artist_id = self._artist_ids.get(name)
        if artist_id is None:
            artist_id = self._artist_ids[name] = ids.artist_id(name)
        artist = self.artists.get(artist_id)
        if artist is None:
            artist = self.artists[artist_id] = Artist(id=artist_id, name=name)
        return artist

    # ------------------------------------------------------------------ answers
    @staticmethod
    def child(song: Song) -> dict[str, Any]:
        """The ``Child`` of a song."""
        bit_rate = (int(round(song.size * 8 / song.duration / 1000)) if song.size and song.duration else None)
        return {"id": song.id, "parent": song.album_id, "isDir": False, "title": song.title, "album": song.album,
                "artist": song.artist, "track": song.track, "year": song.year, "genre": song.genre,
                "coverArt": ids.cover_id(song.id), "size": song.size, "contentType": song.content_type,
                "suffix": song.suffix, "duration": song.duration, "bitRate": bit_rate, "path": song.shown_path,
                "isVideo": False, "discNumber": song.disc,
                "created": _iso(song.created) if song.created else None, "albumId": song.album_id,
                "artistId": song.artist_id, "type": "music"}

    @staticmethod
    def album_entry(album: Album) -> dict[str, Any]:
        """The ``AlbumID3`` of an album."""
        return {"id": album.id, "name": album.name, "artist": album.artist, "artistId": album.artist_id,
                "coverArt": ids.cover_id(album.id), "songCount": len(album.songs), "duration": album.duration,
                "created": _iso(album.created), "year": album.year, "genre": album.genre}

    @staticmethod
    def artist_entry(artist: Artist) -> dict[str, Any]:
        """The ``ArtistID3`` of an artist."""
        cover = ids.cover_id(artist.albums[0].id) if artist.albums else None
        return {"id": artist.id, "name": artist.name, "coverArt": cover, "albumCount": len(artist.albums)}

    def artist_index(self, *, id3: bool) -> list[dict[str, Any]]:
        """The listed artists (album artists) by letter: ``IndexID3`` (or the folder view's ``Index``)."""
        groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for artist in self.listed_artists:
            entry = self.artist_entry(artist) if id3 else {"id": artist.id, "name": artist.name}
            groups[index_letter(artist.name)].append(entry)
        return [{"name": letter, "artist": groups[letter]} for letter in sorted(groups, key=lambda l: (l == "#", l))]

    def albums_of(self, artist: Artist) -> list[Album]:
        """An artist's albums, then the albums it only appears on (by year, then name)."""
        order = sorted(artist.albums, key=lambda a: (a.year or 0, sort_key(a.name)))
        return order + sorted(artist.appears_on, key=lambda a: (a.year or 0, sort_key(a.name)))

    def search(self, *, query: str, artist_count: int, artist_offset: int, album_count: int, album_offset: int,
               song_count: int, song_offset: int) -> dict[str, list]:
        """Artists, albums and songs whose names hold every word of ``query`` (an empty query: all of them)."""
        words = ids.normalise(query.strip().strip('"')).split()

        def matching(items: Iterable[Any], haystack: Any) -> Iterator[Any]:
            if not words:
                return iter(items)
            return (item for item in items if all(word in haystack(item) for word in words))

        def page(found: Iterator[Any], offset: int, count: int) -> list[Any]:
            return list(itertools.islice(found, offset, offset + count)) if count > 0 else []

        artists = page(matching(self.listed_artists, lambda a: a.haystack), artist_offset, artist_count)
        albums = page(matching(self.albums_by_name, lambda a: a.haystack), album_offset, album_count)
        if words:
            # The longest word first, over the strings alone (no Python call per song); the others on its matches.
            first, *others = sorted(words, key=len, reverse=True)
            rows = (row for row, text in enumerate(self._song_haystacks) if first in text
                    and all(word in text for word in others))
            songs = [self.songs[row] for row in page(rows, song_offset, song_count)]
        else:
            songs = page(iter(self.songs), song_offset, song_count)
        return {"artist": [self.artist_entry(a) for a in artists], "album": [self.album_entry(a) for a in albums],
                "song": [self.child(s) for s in songs]}

    def album_list(self, *, kind: str, size: int, offset: int, genre: str | None = None,
                   from_year: int | None = None, to_year: int | None = None) -> list[Album]:
        """A page of albums for ``getAlbumList2`` (``kind`` checked by the caller)."""
        albums: list[Album]
        if kind == "random":
            pool = list(self.albums.values())
            return random.sample(pool, min(size, len(pool)))
        if kind == "newest":
            albums = sorted(self.albums.values(), key=lambda a: (-(a.created or 0), sort_key(a.name)))
        elif kind == "alphabeticalByName":
            albums = self.albums_by_name
        elif kind == "alphabeticalByArtist":
            albums = self.albums_by_artist
        elif kind == "byGenre":
            wanted = ids.normalise(genre or "")
            albums = [a for a in self.albums_by_name
                      if any(s.genre and ids.normalise(s.genre) == wanted for s in a.songs)]
        elif kind == "byYear":
            low, high = sorted((from_year, to_year))
            albums = sorted((a for a in self.albums.values() if a.year and low <= a.year <= high),
                            key=lambda a: (a.year, sort_key(a.name)), reverse=from_year > to_year)
        else:  # highest, frequent, recent, starred: this server keeps no ratings, plays or stars
            albums = []
        return albums[offset:offset + size]

    def random_songs(self, *, size: int, genre: str | None, from_year: int | None, to_year: int | None) -> list[Song]:
        """Up to ``size`` distinct random songs, filtered by genre and year range."""
        if genre is None and from_year is None and to_year is None:
            return random.sample(self.songs, min(size, len(self.songs)))
        wanted = ids.normalise(genre) if genre is not None else None
        pool = [s for s in self.songs
                if (wanted is None or (s.genre is not None and ids.normalise(s.genre) == wanted))
                and (from_year is None or (s.year is not None and s.year >= from_year))
                and (to_year is None or (s.year is not None and s.year <= to_year))]
        return random.sample(pool, min(size, len(pool)))
