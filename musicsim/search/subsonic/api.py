"""The ``/rest/`` router: Subsonic 1.16.1 and OpenSubsonic endpoints over the served index, read-only.

One route takes ``/rest/<method>`` and ``/rest/<method>.view`` by GET or POST (form parameters,
OpenSubsonic ``formPost``) and answers in ``f=xml`` (default), ``json`` or ``jsonp``. Every request but
``getOpenSubsonicExtensions`` (public, as the OpenSubsonic spec requires; it lists only what this server
supports) is authenticated first (``musicsim.search.subsonic.auth``): without valid credentials a request gets
error 10 or 40 (43/44 for API keys) and nothing else, whatever method it names. Any failure is a
Subsonic error in the asked format (HTTP 200): never an HTML page or a traceback.

Endpoints: ping, getLicense, getOpenSubsonicExtensions, getMusicFolders, getIndexes, getArtists,
getArtist, getAlbum, getAlbumList2, getSong, getGenres, search3, getRandomSongs, stream, download,
getCoverArt, getSimilarSongs, getSimilarSongs2, getSonicSimilarTracks, findSonicPath, getTopSongs
(always empty: this server keeps no play counts). Methods that would change something (scrobble, star,
playlists, ...) answer error 50 (this server is read-only); other names error 0.

``stream``/``download`` send the original file of a song, with HTTP ranges, and only a file the index
lists (``SearchService.audio_file``): an id is only ever a key of the catalog's tables, never part of a
file-system path. Similar songs are the index's neighbours (``search_by_id``), their ``similarity``
mapped into [0, 1] (cosine ``c``: ``(1 + c) / 2``; Euclidean distance ``d``: ``1 / (1 + d)``);
``findSonicPath`` is ``musicsim.search.playlist.morph`` between the two songs, each step's similarity to the
start song.
"""
from __future__ import annotations

import io
import logging
import os
import threading
import weakref
from collections import OrderedDict
from typing import Any, Callable
from urllib.parse import parse_qsl

import numpy as np
from PIL import Image
from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, Response
from starlette.concurrency import run_in_threadpool

from musicsim.search import playlist
from musicsim.search.errors import ServiceError
from musicsim.search.service import SearchService
from musicsim.search.subsonic import ids
from musicsim.search.subsonic.auth import authenticate
from musicsim.search.subsonic.catalog import IGNORED_ARTICLES, Album, Artist, Catalog, Song
from musicsim.search.subsonic.responses import (GENERIC, MISSING_PARAMETER, NOT_AUTHORIZED, NOT_FOUND,
                                                SubsonicError, check_callback, render, render_error,
                                                response_format)
from musicsim.search.users import UsersFile, UsersFileError, check_outside
from musicsim.data.tags import read_cover_art

LOG = logging.getLogger("musicsim.search.subsonic")
MAX_FORM_BYTES = 1 << 20
MAX_LIST = 500
MAX_SEARCH_PAGE = 5000
MAX_SIMILAR = 500
# Songs of an album or artist whose neighbours are merged for getSimilarSongs of that album / artist.
MAX_SEED_SONGS = 10
MAX_COVER_SIZE = 4096
COVER_CACHE_ENTRIES = 256
# Album covers: the first songs of the album that are looked at for a picture.
COVER_CANDIDATES = 10
EXTENSIONS = [{"name": "sonicSimilarity", "versions": [1]}, {"name": "apiKeyAuthentication", "versions": [1]},
              {"name": "formPost", "versions": [1]}]
ALBUM_LIST_TYPES = ("random", "newest", "alphabeticalByName", "alphabeticalByArtist", "byGenre", "byYear",
                    "highest", "frequent", "recent", "starred")
WRITE_METHODS = frozenset((
    "star", "unstar", "setRating", "scrobble", "createPlaylist", "updatePlaylist", "deletePlaylist", "createShare",
    "updateShare", "deleteShare", "createBookmark", "deleteBookmark", "savePlayQueue", "savePlayQueueByIndex",
    "changePassword", "createUser", "updateUser", "deleteUser", "startScan", "createInternetRadioStation",
    "updateInternetRadioStation", "deleteInternetRadioStation", "createPodcastChannel", "deletePodcastChannel",
    "deletePodcastEpisode", "downloadPodcastEpisode", "refreshPodcasts", "addChatMessage", "jukeboxControl",
    "reportPlayback"))


# ---------------------------------------------------------------------- parameters
def required(params: dict[str, str], name: str) -> str:
    """A parameter that must be there (error 10 otherwise)."""
    value = params.get(name)
    if value is None or value == "":
        raise SubsonicError(MISSING_PARAMETER, f"Required parameter is missing: {name}")
    return value


def integer(params: dict[str, str], name: str, *, default: int | None, low: int, high: int | None = None
            ) -> int | None:
    """An integer parameter, clamped to ``high``; below ``low`` or not a number is error 0."""
    text = params.get(name)
    if text is None or text == "":
        return default
    try:
        value = int(text)
    except ValueError:
        raise SubsonicError(GENERIC, f"parameter {name} must be an integer, got {text!r}") from None
    if value < low:
        raise SubsonicError(GENERIC, f"parameter {name} must be >= {low}, got {value}")
    return value if high is None else min(value, high)


# ---------------------------------------------------------------------- the catalog of the current index
class CatalogCache:
    """The catalog of the service in use, built once per service (a reloaded index gets a new one)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._service: weakref.ref | None = None
        self._catalog: Catalog | None = None

    def get(self, service: SearchService) -> Catalog:
        with self._lock:
            if self._catalog is None or self._service is None or self._service() is not service:
                index = service.index
                track_ids = list(index.track_ids)
                metadata = ([index.metadata(track_id=t) for t in track_ids] if index.metadata_columns
                            else [{} for _ in track_ids])
                self._catalog = Catalog(track_ids=track_ids, metadata=metadata,
                                        index_dir=getattr(service, "index_dir", None))
                self._service = weakref.ref(service)
            return self._catalog


class CoverCache:
    """Recently sent cover images, ``(service, cover id, size) -> (bytes, mime) or None``."""

    def __init__(self, entries: int = COVER_CACHE_ENTRIES):
        self._entries = entries
        self._lock = threading.Lock()
        self._images: OrderedDict[tuple, tuple[bytes, str] | None] = OrderedDict()

    def get(self, key: tuple) -> tuple[bool, tuple[bytes, str] | None]:
        with self._lock:
            if key in self._images:
                self._images.move_to_end(key)
                return True, self._images[key]
            return False, None

    def put(self, key: tuple, value: tuple[bytes, str] | None) -> None:
        with self._lock:
            self._images[key] = value
            while len(self._images) > self._entries:
                self._images.popitem(last=False)


# ---------------------------------------------------------------------- the handlers' context
class Context:
    """What a handler answers from: the parameters, the service and its catalog."""

    def __init__(self, *, params: dict[str, str], service: SearchService, catalog: Catalog, covers: CoverCache):
        self.params = params
        self.service = service
        self.catalog = catalog
        self.covers = covers

    def song(self, name: str = "id") -> Song:
        identifier = required(self.params, name)
        song = self.catalog.song_of.get(identifier)
        if song is None:
            raise SubsonicError(NOT_FOUND, f"Song not found: {identifier!r}")
        return song

    def album(self, identifier: str) -> Album:
        album = self.catalog.albums.get(identifier)
        if album is None:
            raise SubsonicError(NOT_FOUND, f"Album not found: {identifier!r}")
        return album

    def artist(self, identifier: str) -> Artist:
        artist = self.catalog.artists.get(identifier)
        if artist is None:
            raise SubsonicError(NOT_FOUND, f"Artist not found: {identifier!r}")
        return artist


# ---------------------------------------------------------------------- similarity
def normalised_similarity(score: float, *, similarity: str) -> float:
    """An index score in [0, 1]: cosine ``(1 + c) / 2``; Euclidean (score ``-d``) ``1 / (1 + d)``."""
    value = (1.0 + score) / 2.0 if similarity == "cosine" else 1.0 / (1.0 + max(-score, 0.0))
    return round(min(max(float(value), 0.0), 1.0), 6)


def _neighbours(context: Context, seeds: list[Song], *, count: int, exclude: set[str]) -> list[tuple[Song, float]]:
    """The songs nearest to any of ``seeds`` (best score each), none of ``exclude`` (track ids)."""
    index = context.service.index
    if len(seeds) > MAX_SEED_SONGS:  # spread over the album / artist, not its first songs only
        picks = np.linspace(0, len(seeds) - 1, MAX_SEED_SONGS).round().astype(int)
        seeds = [seeds[i] for i in picks]
    fetch = min(count + len(exclude), len(index))
    best: dict[str, float] = {}
    for seed in seeds:
        for track_id, score in index.search_by_id(track_id=seed.track_id, k=fetch):
            if track_id not in exclude and score > best.get(track_id, -np.inf):
                best[track_id] = score
    ranked = sorted(best.items(), key=lambda item: -item[1])[:count]
    song_of = context.catalog.song_of_track
    return [(song_of[track_id], normalised_similarity(score, similarity=index.similarity))
            for track_id, score in ranked if track_id in song_of]


def _seeds(context: Context, identifier: str) -> tuple[list[Song], set[str]]:
    """The songs of a song, album or artist id, and the track ids to leave out of its similar songs."""
    catalog = context.catalog
    kind = ids.kind(identifier)
    if kind == ids.SONG and identifier in catalog.song_of:
        song = catalog.song_of[identifier]
        return [song], {song.track_id}
    if kind == ids.ALBUM and identifier in catalog.albums:
        songs = catalog.albums[identifier].songs
    elif kind == ids.ARTIST and identifier in catalog.artists:
        artist = catalog.artists[identifier]
        songs = [s for album in catalog.albums_of(artist) for s in album.songs
                 if s.artist_id == artist.id or album.artist_id == artist.id]
    else:
        raise SubsonicError(NOT_FOUND, f"Song, album or artist not found: {identifier!r}")
    return songs, {s.track_id for s in songs}


def _similar_songs(context: Context) -> list[dict[str, Any]]:
    songs, exclude = _seeds(context, required(context.params, "id"))
    count = integer(context.params, "count", default=50, low=0, high=MAX_SIMILAR)
    if count == 0 or not songs:
        return []
    return [context.catalog.child(song) for song, _ in _neighbours(context, songs, count=count, exclude=exclude)]


def _similarity_to(context: Context, start: Song, songs: list[Song]) -> list[float]:
    """Each song's similarity to ``start`` in the index's searched space, in [0, 1]."""
    index = context.service.index
    a = np.asarray(index.searched_vector(track_id=start.track_id), dtype=np.float64)
    b = np.stack([np.asarray(index.searched_vector(track_id=s.track_id), dtype=np.float64) for s in songs])
    if index.similarity == "cosine":
        norms = np.maximum(np.linalg.norm(b, axis=1) * max(float(np.linalg.norm(a)), 1e-12), 1e-12)
        scores = (b @ a) / norms
    else:
        scores = -np.linalg.norm(b - a[None, :], axis=1)
    return [normalised_similarity(float(score), similarity=index.similarity) for score in scores]


# ---------------------------------------------------------------------- handlers (sync; run in a thread)
def ping(context: Context) -> dict[str, Any]:
    return {}


def get_license(context: Context) -> dict[str, Any]:
    return {"license": {"valid": True}}


def get_open_subsonic_extensions(context: Context | None = None) -> dict[str, Any]:
    return {"openSubsonicExtensions": EXTENSIONS}


def get_music_folders(context: Context) -> dict[str, Any]:
    return {"musicFolders": {"musicFolder": [{"id": 1, "name": "Music"}]}}


def get_indexes(context: Context) -> dict[str, Any]:
    catalog = context.catalog
    since = integer(context.params, "ifModifiedSince", default=None, low=0)
    answer: dict[str, Any] = {"lastModified": catalog.last_modified_ms, "ignoredArticles": " ".join(IGNORED_ARTICLES)}
    if since is None or since < catalog.last_modified_ms:
        answer["index"] = catalog.artist_index(id3=False)
    return {"indexes": answer}


def get_artists(context: Context) -> dict[str, Any]:
    return {"artists": {"ignoredArticles": " ".join(IGNORED_ARTICLES),
                        "index": context.catalog.artist_index(id3=True)}}


def get_artist(context: Context) -> dict[str, Any]:
    artist = context.artist(required(context.params, "id"))
    albums = context.catalog.albums_of(artist)
    return {"artist": {**context.catalog.artist_entry(artist), "albumCount": len(albums),
                       "album": [context.catalog.album_entry(a) for a in albums]}}


def get_album(context: Context) -> dict[str, Any]:
    album = context.album(required(context.params, "id"))
    return {"album": {**context.catalog.album_entry(album), "song": [context.catalog.child(s) for s in album.songs]}}


def get_song(context: Context) -> dict[str, Any]:
    return {"song": context.catalog.child(context.song())}


def get_genres(context: Context) -> dict[str, Any]:
    genres = context.catalog.genres
    return {"genres": {"genre": [{"value": name, "songCount": songs, "albumCount": albums}
                                 for name, (songs, albums) in sorted(genres.items(), key=lambda g: g[0].casefold())]}}


def get_album_list2(context: Context) -> dict[str, Any]:
    params = context.params
    kind = required(params, "type")
    if kind not in ALBUM_LIST_TYPES:
        raise SubsonicError(GENERIC, f"unknown list type {kind!r}: one of {', '.join(ALBUM_LIST_TYPES)}")
    size = integer(params, "size", default=10, low=0, high=MAX_LIST)
    offset = integer(params, "offset", default=0, low=0)
    genre = required(params, "genre") if kind == "byGenre" else None
    from_year = to_year = None
    if kind == "byYear":
        from_year = integer(params, "fromYear", default=None, low=0)
        to_year = integer(params, "toYear", default=None, low=0)
        if from_year is None or to_year is None:
            raise SubsonicError(MISSING_PARAMETER, "Required parameter is missing: "
                                                   f"{'fromYear' if from_year is None else 'toYear'}")
    albums = context.catalog.album_list(kind=kind, size=size, offset=offset, genre=genre, from_year=from_year,
                                        to_year=to_year)
    return {"albumList2": {"album": [context.catalog.album_entry(a) for a in albums]}}


def search3(context: Context) -> dict[str, Any]:
    params = context.params
    query = params.get("query")
    if query is None:
        raise SubsonicError(MISSING_PARAMETER, "Required parameter is missing: query")

    def count(name: str) -> int:
        return integer(params, name, default=20, low=0, high=MAX_SEARCH_PAGE)

    def offset(name: str) -> int:
        return integer(params, name, default=0, low=0)

    found = context.catalog.search(query=query, artist_count=count("artistCount"), artist_offset=offset("artistOffset"),
                                   album_count=count("albumCount"), album_offset=offset("albumOffset"),
                                   song_count=count("songCount"), song_offset=offset("songOffset"))
    return {"searchResult3": found}


def get_random_songs(context: Context) -> dict[str, Any]:
    params = context.params
    songs = context.catalog.random_songs(size=integer(params, "size", default=10, low=0, high=MAX_LIST),
                                         genre=params.get("genre") or None,
                                         from_year=integer(params, "fromYear", default=None, low=0),
                                         to_year=integer(params, "toYear", default=None, low=0))
    return {"randomSongs": {"song": [context.catalog.child(s) for s in songs]}}


def get_similar_songs(context: Context) -> dict[str, Any]:
    return {"similarSongs": {"song": _similar_songs(context)}}


def get_similar_songs2(context: Context) -> dict[str, Any]:
    return {"similarSongs2": {"song": _similar_songs(context)}}


def get_sonic_similar_tracks(context: Context) -> dict[str, Any]:
    song = context.song()
    count = integer(context.params, "count", default=10, low=0, high=MAX_SIMILAR)
    found = _neighbours(context, [song], count=count, exclude={song.track_id}) if count else []
    return {"sonicMatch": [{"entry": context.catalog.child(s), "similarity": similarity} for s, similarity in found]}


def find_sonic_path(context: Context) -> dict[str, Any]:
    start, end = context.song("startSongId"), context.song("endSongId")
    count = integer(context.params, "count", default=25, low=1, high=playlist.MAX_PLAYLIST_LENGTH)
    if start.id == end.id:
        path = [start]
    else:
        entries = playlist.morph(index=context.service.index, source=start.track_id, target=end.track_id,
                                 n=max(count, 2))
        path = [context.catalog.song_of_track[e["track_id"]] for e in entries
                if e["track_id"] in context.catalog.song_of_track]
    similarities = _similarity_to(context, start, path)
    return {"sonicMatch": [{"entry": context.catalog.child(s), "similarity": similarity}
                           for s, similarity in zip(path, similarities)]}


def get_top_songs(context: Context) -> dict[str, Any]:
    if not context.params.get("artist") and not context.params.get("id"):
        raise SubsonicError(MISSING_PARAMETER, "Required parameter is missing: artist")
    return {"topSongs": {}}


class SongFileResponse(FileResponse):
    """A song's file with HTTP ranges for GET and for a form POST too (players may POST ``stream``); an
    unusable ``Range`` (malformed, beyond the file) is ignored and the whole file sent, as RFC 9110 allows."""

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope.get("method", "").upper() == "POST":
            scope = {**scope, "method": "GET"}  # the form was read; starlette serves ranges to GET and HEAD only
        http_range = next((v.decode("latin-1") for k, v in scope.get("headers", ()) if k.lower() == b"range"), None)
        if http_range is not None:
            try:
                usable = bool(self._parse_range_header(http_range, os.stat(self.path).st_size))
            except Exception:  # noqa: BLE001 - starlette's MalformedRangeHeader, RangeNotSatisfiable, OSError
                usable = False
            if not usable:
                scope = {**scope, "headers": [(k, v) for k, v in scope["headers"] if k.lower() != b"range"]}
        await super().__call__(scope, receive, send)


def _audio(context: Context, *, disposition: str) -> Response:
    song = context.song()
    try:
        path, media_type = context.service.audio_file(song.track_id)
    except ServiceError as error:
        raise SubsonicError(NOT_FOUND, f"No audio file for song {song.id!r}: {error.message}") from None
    name = f"{song.title}.{song.suffix}" if song.suffix else song.title
    return SongFileResponse(path, media_type=media_type, content_disposition_type=disposition,
                        filename=name if disposition == "attachment" else None)


def stream(context: Context) -> Response:
    return _audio(context, disposition="inline")


def download(context: Context) -> Response:
    return _audio(context, disposition="attachment")


def _embedded_picture(context: Context, song: Song) -> tuple[bytes, str] | None:
    reader = getattr(context.service, "cover_art", None)
    if callable(reader):
        try:
            return reader(song.track_id)
        except ServiceError:
            return None
    try:
        path, _ = context.service.audio_file(song.track_id)
    except ServiceError:
        return None
    try:
        return read_cover_art(path=path)
    except Exception as error:  # noqa: BLE001 - a damaged tag is a song without a picture
        LOG.warning("cannot read the picture of %s: %s", song.id, error)
        return None


def _resized(image: tuple[bytes, str], size: int) -> tuple[bytes, str]:
    data, mime = image
    try:
        with Image.open(io.BytesIO(data)) as picture:
            if max(picture.size) <= size:
                return image
            picture.thumbnail((size, size))
            out = io.BytesIO()
            if picture.mode in ("RGBA", "LA", "P"):
                picture.save(out, format="PNG")
                return out.getvalue(), "image/png"
            picture.convert("RGB").save(out, format="JPEG", quality=88)
            return out.getvalue(), "image/jpeg"
    except Exception as error:  # noqa: BLE001 - Pillow raises many kinds for a damaged picture
        raise SubsonicError(GENERIC, f"the cover image cannot be read: {error}") from None


def get_cover_art(context: Context) -> Response:
    identifier = required(context.params, "id")
    size = integer(context.params, "size", default=None, low=1, high=MAX_COVER_SIZE)
    owner = identifier[3:] if ids.kind(identifier) == ids.COVER else identifier
    catalog = context.catalog
    if owner in catalog.song_of:
        candidates = [catalog.song_of[owner]]
    elif owner in catalog.albums:
        candidates = catalog.albums[owner].songs[:COVER_CANDIDATES]
    elif owner in catalog.artists and catalog.artists[owner].albums:
        candidates = catalog.albums_of(catalog.artists[owner])[0].songs[:COVER_CANDIDATES]
    else:
        raise SubsonicError(NOT_FOUND, f"Cover art not found: {identifier!r}")
    key = (id(context.service), owner, size)
    cached, image = context.covers.get(key)
    if not cached:
        image = next((picture for song in candidates if (picture := _embedded_picture(context, song))), None)
        if image is not None and size is not None:
            image = _resized(image, size)
        context.covers.put(key, image)
    if image is None:
        raise SubsonicError(NOT_FOUND, f"Cover art not found: {identifier!r} has no embedded picture")
    return Response(image[0], media_type=image[1], headers={"Cache-Control": "private, max-age=3600"})


HANDLERS: dict[str, Callable[[Context], Any]] = {
    "ping": ping, "getLicense": get_license, "getOpenSubsonicExtensions": get_open_subsonic_extensions,
    "getMusicFolders": get_music_folders, "getIndexes": get_indexes, "getArtists": get_artists,
    "getArtist": get_artist, "getAlbum": get_album, "getAlbumList2": get_album_list2, "getSong": get_song,
    "getGenres": get_genres, "search3": search3, "getRandomSongs": get_random_songs, "stream": stream,
    "download": download, "getCoverArt": get_cover_art, "getSimilarSongs": get_similar_songs,
    "getSimilarSongs2": get_similar_songs2, "getSonicSimilarTracks": get_sonic_similar_tracks,
    "findSonicPath": find_sonic_path, "getTopSongs": get_top_songs}


# ---------------------------------------------------------------------- the router
async def _parameters(request: Request) -> dict[str, str]:
    """Query parameters, with form parameters of a POST (``application/x-www-form-urlencoded``) over them."""
    params = dict(request.query_params)
    if request.method == "POST":
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type == "application/x-www-form-urlencoded":
            body = bytearray()
            async for chunk in request.stream():
                body += chunk
                if len(body) > MAX_FORM_BYTES:
                    raise SubsonicError(GENERIC, f"the form is larger than {MAX_FORM_BYTES} bytes")
            try:
                params.update(parse_qsl(body.decode("utf-8"), keep_blank_values=True))
            except UnicodeDecodeError:
                raise SubsonicError(GENERIC, "the form is not UTF-8") from None
    return params


def make_router(*, current_service: Callable[[], SearchService], users_file: str) -> APIRouter:
    """The Subsonic API's router, to mount under ``/rest`` (``app.include_router(router, prefix="/rest")``).

    Parameters
    ----------
    current_service : returns the service of the index in use; called once per request, whose answer
        comes from that service to its end (a reloaded index serves the next request)
    users_file : the users file (``musicsim.search.users``); read again whenever it changes

    Returns
    -------
    fastapi.APIRouter

    Raises
    ------
    musicsim.search.users.UsersFileError (a ValueError)
        When the users file is missing, unreadable, not private or inside the index folder. (Should it
        go bad later, requests are refused, error 40, until it is fixed.)
    """
    users = UsersFile(users_file=users_file)
    if users.problem:
        raise UsersFileError(users.problem)
    index_dir = getattr(current_service(), "index_dir", None)
    if index_dir:
        check_outside(users_file=users_file, folder=index_dir)
    catalogs = CatalogCache()
    covers = CoverCache()
    # Built now, in the background, so the first player request does not wait for it (a reloaded index's
    # catalog is built by its first request).
    threading.Thread(target=catalogs.get, args=(current_service(),), name="subsonic-catalog", daemon=True).start()
    router = APIRouter()

    def answer(method: str, params: dict[str, str]) -> Any:
        name = method[:-len(".view")] if method.endswith(".view") else method
        if name == "getOpenSubsonicExtensions":
            return get_open_subsonic_extensions()
        authenticate(params, users)
        handler = HANDLERS.get(name)
        if handler is None:
            if name in WRITE_METHODS:
                raise SubsonicError(NOT_AUTHORIZED, f"{name} is not allowed: this server is read-only")
            raise SubsonicError(GENERIC, f"unknown method {name!r}: this server answers "
                                         f"{', '.join(sorted(HANDLERS))}")
        service = current_service()
        context = Context(params=params, service=service, catalog=catalogs.get(service), covers=covers)
        return handler(context)

    @router.api_route("/{method:path}", methods=["GET", "POST", "HEAD"], include_in_schema=False)
    async def subsonic(method: str, request: Request) -> Response:
        fmt, callback = response_format(dict(request.query_params))
        try:
            params = await _parameters(request)
            fmt, callback = response_format(params)
            check_callback(params)
            result = await run_in_threadpool(answer, method, params)
        except SubsonicError as error:
            return render_error(error, fmt=fmt, callback=callback)
        except Exception:  # noqa: BLE001 - a client gets a Subsonic error, the log gets the traceback
            LOG.exception("Subsonic request %s failed", method)
            return render_error(SubsonicError(GENERIC, "internal error (see the server log)"), fmt=fmt,
                                callback=callback)
        if isinstance(result, Response):
            return result
        return render(result, fmt=fmt, callback=callback)

    return router
