"""The search engine over HTTP: a JSON API and a web page to search, listen, explore and build playlists.

    python -m musicsim.serve --index=DIR [--host=127.0.0.1] [--port=8000] [--max_upload_mb=50]
        [--map=pca|umap] [--m3u_root=DIR] [--reload_interval_s=1] [--access_log]

Binds to localhost unless ``--host`` says otherwise. The model that embeds uploaded files is loaded
at start-up in the background (or on the first file query) and kept. Endpoints (the spec is at
``/openapi.json``, an offline page listing it at ``/docs``); every GET route answers HEAD too:

    GET  /                          the web page (static files of the package, no CDN)
    GET  /healthz                   liveness, the index version in use, its track count, the upload model
    GET  /api/info                  the index: size, similarity, model, groups, upload limit
    GET  /api/tracks?q=&limit=&offset=        the catalog, filtered by what it shows: id, tags, relative path
    GET  /api/similar/{track_id}?k=&diversity=&exclude_same_album=   neighbours of a track
    POST /api/similar?k=&diversity=  neighbours of an uploaded audio file (multipart ``file`` or raw body)
    GET  /api/audio/{track_id}      the track's audio file, with HTTP range requests
    GET  /api/art/{track_id}        the cover art embedded in the track's file (404 when none)
    GET  /api/playlist?seed=&n=&diversity=[&format=m3u8]    a radio walk from a seed
    GET  /api/playlist?from=&to=&n=[&format=m3u8]           a path morphing from one track to another
    GET  /api/map                   2-D coordinates of every track (PCA or UMAP, cached beside the index)

Tracks are described by their tags (title, artist, album, album_artist, track_number, disc, year,
genre, duration_s: the index's metadata columns, written by ``musicsim-scan``), with fallbacks for an
index without them: the title is the file name (or the id's last part) and the album the track's group.
"Same album" is the album tag with its album artist, or the group, or the file's folder.

The index is followed while serving: a background thread looks at its ``config.json`` every
``--reload_interval_s`` seconds (one ``stat``) and, when an index command or a scan has written a
new version, loads it and swaps it in (``ServiceHolder``). A request takes the service of the
version current when it starts and answers from it to the end; later requests see the new tracks,
and removed tracks (their audio and art included) are no longer served.

Only files the index lists are served: ``/api/audio`` and ``/api/art`` look the track id up in the
index's metadata (resolved once per index version) and no part of a request path is ever joined to
a file-system path. An upload is streamed into a private temporary directory (mode 0700, outside
anything served) with its size checked as it arrives, checked to be audio by decoding it, and
deleted after the query. Errors are JSON ``{"error": message, "status": code}``: 400 bad parameters,
404 unknown track or path, 405 method not allowed (with ``Allow``), 413 upload too large, 415 not
audio, 422 audio that cannot be embedded (too short, silent). No answer names a server-side path
except an M3U playlist, whose entries are the files' paths (absolute, or relative to ``--m3u_root``).
An unusable ``Range`` header (malformed or unsatisfiable) is ignored, as RFC 9110 allows: the whole file.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import mimetypes
import os
import re
import shutil
import stat
import sys
import tempfile
import threading
import time
import unicodedata
import warnings
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any, AsyncIterator, Callable, Iterator, Literal, NoReturn, Sequence
from urllib.parse import quote

import numpy as np
from absl import flags
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException, MultiPartParser

from musicsim.index import CONFIG_FILE, EmbeddingIndex, IndexBackend
from musicsim.cli import Bounds, check_numeric_flags, one_line, parse_command_line, run_command, usage_error

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
DEFAULT_MAX_UPLOAD_MB = 50.0
# Far above any audio file, and small enough that the limit in bytes stays an exact integer.
MAX_UPLOAD_MB_LIMIT = 1024.0 * 1024.0
DEFAULT_RELOAD_INTERVAL_S = 1.0
MAX_RELOAD_INTERVAL_S = 3600.0
MAX_RESULTS = 1000
MAX_PAGE = 1000
MAX_PLAYLIST = 500
# A replaced service is closed once no request holds it and it has been out of use this long (callers
# that took ``holder.current`` without a lease, such as a router's handler, finish well within it).
RETIRE_GRACE_S = 30.0
# Multipart framing (boundaries, part headers) on top of the file itself.
MULTIPART_OVERHEAD_BYTES = 64 * 1024
COPY_CHUNK_BYTES = 1 << 20
# Seconds decoded to check that an upload is audio before it is embedded.
DECODE_CHECK_SECONDS = 2.0
AUDIO_TYPES = {".wav": "audio/wav", ".flac": "audio/flac", ".ogg": "audio/ogg", ".oga": "audio/ogg",
               ".opus": "audio/ogg", ".mp3": "audio/mpeg", ".m4a": "audio/mp4", ".aac": "audio/aac",
               ".aif": "audio/aiff", ".aiff": "audio/aiff", ".wma": "audio/x-ms-wma", ".webm": "audio/webm"}
STATIC_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml", ".png": "image/png",
                ".ico": "image/x-icon"}
M3U_MEDIA_TYPE = "audio/x-mpegurl; charset=utf-8"
TAG_TEXT_COLUMNS = ("title", "artist", "album", "album_artist", "genre")
TAG_NUMBER_COLUMNS = ("track_number", "disc", "year")
SAFE_SUFFIX = re.compile(r"^\.[A-Za-z0-9]{1,8}$")
# The scope key under which HeadAsGet marks a HEAD request it routes as a GET.
HEAD_SCOPE_KEY = "musicsim.head"
USAGE = ("usage: python -m musicsim.serve --index=DIR [--host=127.0.0.1] [--port=8000] [--max_upload_mb=50] "
         "[--m3u_root=DIR] [...]")

# Flags of this command only (experiments.run's global FLAGS has some of the same names).
FLAGS = flags.FlagValues()
flags.DEFINE_string("index", None, "The index directory (musicsim.index build, or musicsim-scan --index).",
                    flag_values=FLAGS)
flags.DEFINE_string("host", DEFAULT_HOST, f"Address to bind (default {DEFAULT_HOST}: this machine only; 0.0.0.0 "
                    "exposes it to the network).", flag_values=FLAGS)
flags.DEFINE_integer("port", DEFAULT_PORT, "Port.", lower_bound=0, upper_bound=65535, flag_values=FLAGS)
flags.DEFINE_float("max_upload_mb", DEFAULT_MAX_UPLOAD_MB, "Largest accepted audio upload, in MiB (> 0).",
                   flag_values=FLAGS)
flags.DEFINE_enum("map", "pca", ["pca", "umap"], "Projection of the embedding map.", flag_values=FLAGS)
flags.DEFINE_string("m3u_root", None, "Write the paths of M3U playlists relative to this folder (default: "
                    "absolute paths).", flag_values=FLAGS)
flags.DEFINE_float("reload_interval_s", DEFAULT_RELOAD_INTERVAL_S, "Seconds between two looks at the index for "
                   "a new version (0: never reload).", flag_values=FLAGS)
flags.DEFINE_bool("access_log", False, "Log every request.", flag_values=FLAGS)
flags.DEFINE_bool("subsonic", False, "Also serve the library as a read-only OpenSubsonic server under /rest/ "
                  "(musicsim.subsonic; users from --users).", flag_values=FLAGS)
flags.DEFINE_string("users", None, "The Subsonic users file (default $XDG_CONFIG_HOME/musicsim/users.json, else "
                    "~/.config/musicsim/users.json; mode 0600, never inside the index folder).", flag_values=FLAGS)
flags.DEFINE_string("add_user", None, "Add a Subsonic user (or reset its password and API key) to --users, the "
                    "password read from stdin, and exit.", flag_values=FLAGS)


def _finite_in(low: float, high: float, *, low_open: bool) -> Callable[[float], bool]:
    def check(value: float) -> bool:
        return value is not None and math.isfinite(value) and (value > low if low_open else value >= low) \
            and value <= high
    return check


check_numeric_flags(FLAGS, bounds={"port": Bounds(lower=0, upper=65535),
                                   "max_upload_mb": Bounds(lower=0, lower_open=True, upper=MAX_UPLOAD_MB_LIMIT),
                                   "reload_interval_s": Bounds(lower=0, upper=MAX_RELOAD_INTERVAL_S)})


class ServiceError(Exception):
    """A request that cannot be answered: ``status`` is its HTTP status, the message says why."""

    def __init__(self, status: int, message: str, *, headers: dict[str, str] | None = None):
        self.status = status
        self.message = message
        self.headers = headers
        super().__init__(message)


def _is_loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")


def load_static_files() -> dict[str, tuple[bytes, str]]:
    """The web page's files, read once from the package: ``{name: (content, media type)}``."""
    folder = resources.files("musicsim") / "static"
    files = {}
    for entry in folder.iterdir():
        suffix = os.path.splitext(entry.name)[1].lower()
        if entry.is_file() and suffix in STATIC_TYPES:
            files[entry.name] = (entry.read_bytes(), STATIC_TYPES[suffix])
    return files


def check_upload_limit(max_upload_mb: float) -> int:
    """The upload limit in bytes; ValueError unless ``max_upload_mb`` is finite and in (0, MAX_UPLOAD_MB_LIMIT]."""
    if isinstance(max_upload_mb, bool) or not isinstance(max_upload_mb, (int, float)) \
            or not _finite_in(0.0, MAX_UPLOAD_MB_LIMIT, low_open=True)(float(max_upload_mb)):
        raise ValueError(f"max_upload_mb must be a finite number of MiB in (0, {MAX_UPLOAD_MB_LIMIT:g}], "
                         f"got {max_upload_mb!r}")
    return int(max_upload_mb * 1024 * 1024)


def _folded(text: str) -> str:
    """``text`` for case- and composition-insensitive matching."""
    return unicodedata.normalize("NFC", text).casefold()


def _text_tag(value: Any) -> str | None:
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


def _shown_root(paths: Sequence[str]) -> str | None:
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


class ServingResources:
    """What the services of successive index versions share: the upload directory, the upload model
    and which audio files embed cover art.

    Parameters
    ----------
    upload_dir : where uploads are written; a private temporary directory by default (removed by
        ``close``)
    """

    def __init__(self, *, upload_dir: str | None = None):
        self._own_upload_dir = upload_dir is None
        if upload_dir is None:
            # Uploads live here, readable by this user only, removed with the service.
            upload_dir = tempfile.mkdtemp(prefix="musicsim-uploads-")
            os.chmod(upload_dir, 0o700)
        self.upload_dir = upload_dir
        self._embedders: dict[tuple, Any] = {}
        self.embed_lock = threading.Lock()
        # What /healthz says of the upload model: none, not loaded, loading, ready, or failed: why.
        self.model_states: dict[tuple, str] = {}
        self._art: dict[tuple, bool] = {}
        self._art_lock = threading.Lock()

    def close(self) -> None:
        """Remove the upload directory (when it is this object's own)."""
        if self._own_upload_dir:
            shutil.rmtree(self.upload_dir, ignore_errors=True)

    @staticmethod
    def model_key(index: IndexBackend) -> tuple:
        """What identifies an index's upload model: a new index version with the same run keeps its model."""
        return (index.model.get("model_dir"), index.model.get("name"), index.dim, index.similarity)

    def has_art(self, path: str) -> bool:
        """Whether the audio file at ``path`` embeds a picture (looked at once per file version)."""
        try:
            status = os.stat(path)
        except OSError:
            return False
        key = (path, status.st_mtime_ns, status.st_size)
        with self._art_lock:
            known = self._art.get(key)
        if known is None:
            known = read_cover_art_of(path) is not None
            with self._art_lock:
                self._art[key] = known
        return known


def read_cover_art_of(path: str) -> tuple[bytes, str] | None:
    """``musicsim.tags.read_cover_art``, or None when this installation has no tag reader."""
    try:
        from musicsim.tags import read_cover_art
    except ImportError:  # an installation without mutagen: no cover art, everything else works
        return None
    return read_cover_art(path=path)


class SearchService:
    """What the HTTP handlers answer from: one loaded index version, its audio files, its model, its map.

    Parameters
    ----------
    index_dir : an index written by ``musicsim.index`` or ``musicsim-scan``
    max_upload_mb : largest accepted upload, in MiB
    map_method : 'pca' or 'umap', the projection of ``/api/map``
    index : the loaded index of ``index_dir``, to save loading it again
    resources : what successive services share (upload directory, model, art); a new one by default
    m3u_root : M3U playlists give paths relative to this folder (absolute paths when None)
    version : the index version (config.json's write counter) this service answers from

    Attributes
    ----------
    track_ids : list of str, the index's tracks in index order
    version : int or None

    The public description of a track (``track``) has ``track_id, title, artist, album, album_artist,
    track_number, disc, year, genre, duration_s, group, relative_path, file, audio_url, art_url``; its
    absolute path stays server-side (``audio_file``).
    """

    def __init__(self, *, index_dir: str, max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB, map_method: str = "pca",
                 index: IndexBackend | None = None, resources: ServingResources | None = None,
                 m3u_root: str | None = None, version: int | None = None):
        from musicsim.catalog_map import METHODS

        self.max_upload_bytes = check_upload_limit(max_upload_mb)
        if map_method not in METHODS:
            raise ValueError(f"map must be one of {METHODS}, got {map_method!r}")
        self.index_dir = os.path.abspath(index_dir)
        self.index = index or EmbeddingIndex.load(self.index_dir)
        self.version = version if version is not None else getattr(self.index, "version", None)
        self.map_method = map_method
        self.m3u_root = os.path.abspath(m3u_root) if m3u_root else None
        self._own_resources = resources is None
        self.resources = resources or ServingResources()
        self.upload_dir = self.resources.upload_dir
        self._model_key = ServingResources.model_key(self.index)
        self.resources.model_states.setdefault(
            self._model_key, "not loaded" if self.index.model.get("model_dir") else "none")
        self.track_ids = list(self.index.track_ids)
        self._columns = set(self.index.metadata_columns)
        self.metadata_rows = [self.index.metadata(track_id=t) if self._columns else {} for t in self.track_ids]
        paths = [str(row["path"]) for row in self.metadata_rows if row.get("path")]
        shown_root = _shown_root(paths) if "relative_path" not in self._columns else None
        real_folders: dict[str, str] = {}
        self._tracks = [self._describe(track_id, row, shown_root=shown_root, real_folders=real_folders)
                        for track_id, row in zip(self.track_ids, self.metadata_rows)]
        self._track_of = {t["track_id"]: t for t in self._tracks}
        self._album_members: dict[Any, list[str]] = {}
        for entry in self._tracks:
            if entry["_album_key"] is not None:
                self._album_members.setdefault(entry["_album_key"], []).append(entry["track_id"])
        self.groups = sorted({str(t["group"]) for t in self._tracks if t["group"] is not None})
        self._map: np.ndarray | None = None
        self._map_lock = threading.Lock()
        self._derived: dict[str, Any] = {}
        self._derived_lock = threading.Lock()

    def close(self, *, release_index: bool = True) -> None:
        """Release the index (a database connection; not with ``release_index=False``) and, when they are
        this service's own, the uploads."""
        if release_index:
            self.index.close()
        if self._own_resources:
            self.resources.close()

    @property
    def model_state(self) -> str:
        """The upload model's state: none, not loaded, loading, ready, or failed: why."""
        return self.resources.model_states.get(self._model_key, "none")

    @model_state.setter
    def model_state(self, value: str) -> None:
        self.resources.model_states[self._model_key] = value

    def derived(self, name: str, build: Callable[[], Any]) -> Any:
        """``build()``'s result, computed once for this index version (e.g. a router's view of the catalog)."""
        with self._derived_lock:
            if name not in self._derived:
                self._derived[name] = build()
            return self._derived[name]

    # ------------------------------------------------------------------ catalog
    def _describe(self, track_id: str, metadata: dict[str, Any], *, shown_root: str | None,
                  real_folders: dict[str, str]) -> dict[str, Any]:
        """The record of one track: its public fields, and privately its file, album key and search text.
        Built for every track of every version (100k tracks in about a second): no per-track work that
        can wait until the track is asked for (its URLs, its art)."""
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
        columns = self._columns
        tags = {name: _text_tag(metadata.get(name)) if name in columns else None for name in TAG_TEXT_COLUMNS}
        tags.update({name: _number_tag(metadata.get(name)) if name in columns else None
                     for name in TAG_NUMBER_COLUMNS})
        group = _json_value(metadata.get("group"))
        relative = _text_tag(metadata.get("relative_path"))
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
            album_key = ("album", _folded(tags["album"]), _folded(tags["album_artist"] or ""))
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
        entry["_haystack"] = _folded("\n".join([str(value) for value in shown if value is not None]))
        return entry

    def _entry(self, track_id: str) -> dict[str, Any]:
        """The record of one track, private entries included (404 when unknown)."""
        entry = self._track_of.get(track_id)
        if entry is None:
            raise ServiceError(404, f"unknown track id {track_id!r}: the index holds {len(self.track_ids)} tracks")
        return entry

    def track(self, track_id: str) -> dict[str, Any]:
        """The public description of one track (404 when unknown); ``art_url`` is set when its file embeds art."""
        entry = self._entry(track_id)
        public = {key: value for key, value in entry.items() if not key.startswith("_")}
        quoted = quote(track_id, safe="")
        public["audio_url"] = f"/api/audio/{quoted}" if entry["_audio_file"] else None
        has_art = bool(entry["_audio_file"]) and self.resources.has_art(entry["_audio_file"])
        public["art_url"] = f"/api/art/{quoted}" if has_art else None
        return public

    def tracks(self, *, query: str = "", limit: int = 50, offset: int = 0) -> dict[str, Any]:
        """Tracks whose shown fields (id, tags, relative path, group) contain every word of ``query``
        (case-insensitive), a page of them."""
        words = _folded(query).split()
        rows = (range(len(self._tracks)) if not words
                else [row for row, entry in enumerate(self._tracks) if all(w in entry["_haystack"] for w in words)])
        page = rows[offset:offset + limit]
        return {"total": len(rows), "offset": offset, "limit": limit, "query": query,
                "tracks": [self.track(self.track_ids[row]) for row in page]}

    def info(self) -> dict[str, Any]:
        """The index at a glance, for the page's header."""
        return {"summary": self.index.summary(), "tracks": len(self.track_ids), "dim": self.index.dim,
                "similarity": self.index.similarity, "model": self.index.model.get("name"),
                "file_queries": bool(self.index.model.get("model_dir")), "groups": self.groups,
                "max_upload_mb": self.max_upload_bytes / (1024 * 1024), "map": self.map_method,
                "with_audio": sum(1 for t in self._tracks if t["_audio_file"]), "version": self.version}

    def _results(self, found: Sequence[tuple[str, float]]) -> list[dict[str, Any]]:
        return [{"rank": rank, "score": float(score), **self.track(track_id)}
                for rank, (track_id, score) in enumerate(found, start=1)]

    # ------------------------------------------------------------------ queries
    def same_album(self, track_id: str) -> list[str]:
        """The tracks of ``track_id``'s album, itself included (the album tag, else group, else folder)."""
        key = self._entry(track_id)["_album_key"]
        return list(self._album_members.get(key, [track_id])) if key is not None else [track_id]

    def similar(self, *, track_id: str, k: int, diversity: float, exclude_same_album: bool) -> dict[str, Any]:
        """Neighbours of a track of the index, itself (and with ``exclude_same_album`` its album) left out."""
        query = self.track(track_id)
        if exclude_same_album:
            if self._entry(track_id)["_album_key"] is None:
                raise ServiceError(400, "exclude_same_album needs album tags, groups or paths, and this index "
                                        "has none")
            found = self.index.search(queries=self.index.searched_vector(track_id=track_id)[None, :], k=k,
                                      exclude_ids=[self.same_album(track_id)], diversity=diversity,
                                      query_track_ids=[track_id])[0]
        else:
            found = self.index.search_by_id(track_id=track_id, k=k, diversity=diversity)
        return {"query": query, "results": self._results(found)}

    def embedder(self):
        """The index's model (loaded once, on first use, and kept across index versions made by the same
        run), checked against the index (``musicsim.search.load_query_embedder``)."""
        from musicsim.search import load_query_embedder, query_model_dir

        try:
            model_dir = query_model_dir(index=self.index, index_dir=self.index_dir)
        except ValueError as error:
            raise ServiceError(400, f"uploaded files cannot be embedded: {error}") from None
        with self.resources.embed_lock:
            embedder = self.resources._embedders.get(self._model_key)
            if embedder is None:
                self.model_state = "loading"
                try:
                    embedder = load_query_embedder(index=self.index, index_dir=self.index_dir)
                except (OSError, ValueError) as error:
                    self.model_state = f"failed: {error}"
                    raise ServiceError(500, f"cannot load the index's model {model_dir}: {error}") from error
                self.resources._embedders[self._model_key] = embedder
                self.model_state = "ready"
            return embedder

    @property
    def _embedder(self):
        """The loaded upload model, or None."""
        return self.resources._embedders.get(self._model_key)

    def warm_up(self) -> None:
        """Load the model and embed a generated tone once, so the first upload does not pay for the
        model's loading and its libraries' first-call compilation; failures are logged, not raised."""
        import soundfile as sf

        try:
            embedder = self.embedder()
            self.model_state = "loading"
            rate = 22050
            tone = 0.3 * np.sin(2 * np.pi * 440.0 * np.arange(3 * rate) / rate) * np.linspace(0.2, 1.0, 3 * rate)
            handle, path = tempfile.mkstemp(dir=self.upload_dir, prefix="warm-up-", suffix=".wav")
            os.close(handle)
            try:
                sf.write(path, tone.astype(np.float32), rate)
                with self.resources.embed_lock:
                    embedder.embed_paths(paths=[path], workers=1, progress=False)
            finally:
                os.unlink(path)
            self.model_state = "ready"
        except Exception as error:  # noqa: BLE001 - the first real upload reports the problem
            logging.getLogger("musicsim.serve").warning("model warm-up failed: %s", error)
            if self._embedder is not None:
                self.model_state = "ready"  # loaded; only the warm-up embedding failed

    def _private_paths_out(self, text: str, *, path: str, name: str) -> str:
        """``text`` (a decoder's message) with the upload's server-side path replaced by the client's name."""
        text = text.replace(path, name).replace(self.upload_dir, "")
        # libsndfile's message for a format it does not know is misleading ("possibly a pipe?").
        return text.replace("File does not exist or is not a regular file (possibly a pipe?)",
                            "not a format this server decodes")

    def similar_to_file(self, *, path: str, name: str, k: int, diversity: float) -> dict[str, Any]:
        """Neighbours of an audio file (an upload saved at ``path``; ``name`` is what the client called it)."""
        from musicsim.audio import AudioDecodeError, load_audio

        embedder = self.embedder()
        try:
            # Decoding, not the name or the declared type, says whether it is audio.
            load_audio(path, duration=DECODE_CHECK_SECONDS, min_seconds=0.0, reject_silence=False)
        except AudioDecodeError as error:
            reason = self._private_paths_out(error.reason, path=path, name=name)
            raise ServiceError(415, f"the upload {name!r} is not audio this server can decode: {reason}") from None
        from musicsim.search import UnembeddableQueryError, embed_query_file

        with self.resources.embed_lock:  # one model, one query at a time (estimators and workers are not shared)
            try:
                vectors = embed_query_file(embedder=embedder, query_path=path)
            except UnembeddableQueryError as error:
                reason = self._private_paths_out(error.reason, path=path, name=name)
                raise ServiceError(422, f"the upload {name!r} cannot be embedded: {reason}") from None
        # A file's raw embedding goes through the index's catalog standardisation (indexes without one
        # return it as given); indexes older than ``prepare_query`` search it as it is.
        prepare = getattr(self.index, "prepare_query", None)
        found = self.index.search(queries=prepare(vectors) if prepare else vectors, k=k, diversity=diversity)[0]
        return {"query": {"file": name}, "results": self._results(found)}

    def playlist(self, *, seed: str | None, source: str | None, target: str | None, n: int,
                 diversity: float) -> dict[str, Any]:
        """A radio from ``seed``, or a morph from ``source`` to ``target``."""
        from musicsim import playlist

        if seed is not None and (source is None and target is None):
            self.track(seed)
            entries = playlist.radio(index=self.index, seed=seed, n=n, diversity=diversity)
            kind, name = "radio", f"radio from {self._entry(seed)['title']}"
        elif seed is None and source is not None and target is not None:
            self.track(source), self.track(target)
            entries = playlist.morph(index=self.index, source=source, target=target, n=n)
            kind, name = "morph", f"{self._entry(source)['title']} to {self._entry(target)['title']}"
        else:
            raise ServiceError(400, "give either seed=ID (a radio) or both from=ID and to=ID (a morph)")
        return {"kind": kind, "name": name,
                "tracks": [{**entry, **self.track(entry["track_id"])} for entry in entries]}

    def playlist_m3u8(self, answer: dict[str, Any]) -> str:
        """A playlist answer (``playlist``) as an extended M3U in UTF-8: its tracks' files, absolute or
        relative to ``m3u_root``."""
        from musicsim.playlist import M3UEntry, to_m3u8

        entries = []
        for track in answer["tracks"]:
            path = self._entry(track["track_id"])["_path"]
            if path:
                entries.append(M3UEntry(path=os.path.abspath(path), title=track["title"], artist=track["artist"],
                                        duration_s=track["duration_s"]))
        return to_m3u8(entries=entries, root=self.m3u_root, name=answer.get("name"))

    def catalog_map(self) -> dict[str, Any]:
        """2-D coordinates of every track, computed once per index version (and cached beside the index)."""
        from musicsim.catalog_map import catalog_map

        with self._map_lock:
            if self._map is None:
                self._map = catalog_map(index=self.index, index_dir=self.index_dir, method=self.map_method)
        coordinates = np.round(self._map.astype(np.float64), 5)
        return {"method": self.map_method, "track_ids": self.track_ids,
                "x": coordinates[:, 0].tolist(), "y": coordinates[:, 1].tolist(),
                "groups": [t["group"] for t in self._tracks], "titles": [t["title"] for t in self._tracks]}

    # ------------------------------------------------------------------ audio, art and uploads
    def audio_file(self, track_id: str) -> tuple[str, str]:
        """``(path, media type)`` of a track's audio, as resolved for this index version (404 otherwise)."""
        path = self._entry(track_id)["_audio_file"]
        if not path:
            raise ServiceError(404, f"the index lists no audio file for track {track_id!r}")
        try:
            status = os.lstat(path)
        except OSError:
            raise ServiceError(404, f"the audio file of track {track_id!r} is gone") from None
        # Replaced by a symlink (or a folder in its path by one) since it was indexed: not what was indexed.
        if not stat.S_ISREG(status.st_mode) or os.path.realpath(path) != path:
            raise ServiceError(404, f"the audio file of track {track_id!r} is no longer a regular file")
        suffix = os.path.splitext(path)[1].lower()
        return path, AUDIO_TYPES.get(suffix) or mimetypes.guess_type(path)[0] or "application/octet-stream"

    def cover_art(self, track_id: str) -> tuple[bytes, str] | None:
        """The picture embedded in the track's indexed file, ``(image bytes, mime type)``, or None
        (404 for an unknown track or a file that is gone)."""
        path, _ = self.audio_file(track_id)
        return read_cover_art_of(path)

    async def receive_upload(self, request: Request) -> tuple[str, str]:
        """Stream a request's audio into a private temporary file: ``(path, client's name)``.

        Multipart (the file in a ``file`` field, or the first file field) or a raw body. The size is
        counted as the bytes arrive: past ``max_upload_bytes`` the upload is dropped with 413.
        """
        limit = self.max_upload_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit + MULTIPART_OVERHEAD_BYTES:
            raise ServiceError(413, f"upload of {int(declared)} bytes exceeds the limit of {limit} bytes "
                                    f"({limit / 2 ** 20:g} MiB, --max_upload_mb)")
        received = 0

        async def counted() -> AsyncIterator[bytes]:
            nonlocal received
            async for chunk in request.stream():
                received += len(chunk)
                if received > limit + MULTIPART_OVERHEAD_BYTES:
                    raise ServiceError(413, f"upload exceeds the limit of {limit} bytes "
                                            f"({limit / 2 ** 20:g} MiB, --max_upload_mb)")
                yield chunk

        content_type = request.headers.get("content-type", "")
        name = request.headers.get("x-filename") or "upload"
        handle, path = tempfile.mkstemp(dir=self.upload_dir, prefix="upload-")
        written = 0
        try:
            with os.fdopen(handle, "wb") as out:
                if content_type.startswith("multipart/form-data"):
                    try:
                        form = await MultiPartParser(request.headers, counted(), max_files=1, max_fields=10).parse()
                    except MultiPartException as error:
                        raise ServiceError(400, f"malformed multipart upload: {error.message}") from None
                    try:
                        files = [v for key, v in form.multi_items() if isinstance(v, UploadFile)]
                        upload = next((form[key] for key in ("file",) if isinstance(form.get(key), UploadFile)),
                                      files[0] if files else None)
                        if upload is None:
                            raise ServiceError(400, "the multipart upload holds no file (send it as field 'file')")
                        name = upload.filename or name
                        while chunk := await upload.read(COPY_CHUNK_BYTES):
                            written += len(chunk)
                            if written > limit:
                                raise ServiceError(413, f"the file {name!r} exceeds the upload limit of "
                                                        f"{limit} bytes ({limit / 2 ** 20:g} MiB)")
                            out.write(chunk)
                    finally:
                        await form.close()
                else:
                    async for chunk in counted():
                        written += len(chunk)
                        if written > limit:
                            raise ServiceError(413, f"the upload exceeds the limit of {limit} bytes "
                                                    f"({limit / 2 ** 20:g} MiB, --max_upload_mb)")
                        out.write(chunk)
            name = os.path.basename(name.rstrip("/\\")) or name
            if written == 0:
                # A folder dropped on a browser's file field arrives as an empty file of its name.
                raise ServiceError(415, f"the upload {name!r} is empty (0 bytes; a folder arrives so): "
                                        "send one audio file")
            # The decoders may look at the name's extension; keep a plain one, never the client's path.
            suffix = os.path.splitext(name)[1]
            if SAFE_SUFFIX.match(suffix):
                os.replace(path, path + suffix.lower())
                path += suffix.lower()
        except BaseException:
            os.unlink(path)
            raise
        return path, name


# ---------------------------------------------------------------------------------- live reload

def index_signature(index_dir: str) -> tuple | None:
    """What changes whenever an index directory is written: its config.json's inode, modification
    time and size (a save swaps the whole directory in) and its version counter; None while there is
    no config.json (between the two renames of a save)."""
    try:
        status = os.stat(os.path.join(index_dir, CONFIG_FILE))
    except OSError:
        return None
    return (status.st_ino, status.st_mtime_ns, status.st_size, read_index_version(index_dir))


def read_index_version(index_dir: str) -> int | None:
    """The index's write counter (``musicsim.index.storage.read_version``), None when unknown."""
    try:
        from musicsim.index.storage import read_version
    except ImportError:  # an index package without versions: the signature's stat still sees writes
        return None
    try:
        return read_version(index_dir)
    except (OSError, ValueError):
        return None


class ServiceHolder:
    """The service of the index version in use, replaced when the index directory gets a new version.

    ``current`` is the service to answer a request from: take it once per request and use it to the
    end (``lease`` also keeps it open until the request is done). ``check_now`` loads a new version when
    the directory's signature (``index_signature``) changed; ``start`` runs it every
    ``reload_interval_s`` seconds in a background thread. A version that cannot be loaded (a
    half-written or damaged directory) is logged and retried at the next look; the current one keeps
    serving. A replaced service is closed once no lease holds it and ``RETIRE_GRACE_S`` have passed.

    Parameters
    ----------
    index_dir, max_upload_mb, map_method, m3u_root : as for ``SearchService``
    index : the already loaded first version, if any
    reload_interval_s : seconds between two looks at the index (0: never reload)
    """

    def __init__(self, *, index_dir: str, max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB, map_method: str = "pca",
                 index: IndexBackend | None = None, m3u_root: str | None = None,
                 reload_interval_s: float = DEFAULT_RELOAD_INTERVAL_S):
        if isinstance(reload_interval_s, bool) or not isinstance(reload_interval_s, (int, float)) \
                or not _finite_in(0.0, MAX_RELOAD_INTERVAL_S, low_open=False)(float(reload_interval_s)):
            raise ValueError(f"reload_interval_s must be a finite number of seconds in [0, {MAX_RELOAD_INTERVAL_S:g}]"
                             f", got {reload_interval_s!r}")
        check_upload_limit(max_upload_mb)
        self.index_dir = os.path.abspath(index_dir)
        self.reload_interval_s = float(reload_interval_s)
        self._settings = {"index_dir": self.index_dir, "max_upload_mb": max_upload_mb, "map_method": map_method,
                          "m3u_root": m3u_root}
        self.resources = ServingResources()
        self.upload_dir = self.resources.upload_dir
        self._lock = threading.Lock()
        self._reload_lock = threading.Lock()
        self._leases: dict[int, int] = {}
        self._retired: list[tuple[SearchService, float]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.reloads = 0
        self.last_reload_error: str | None = None
        try:
            self._signature = index_signature(self.index_dir)
            self._current = SearchService(index=index, resources=self.resources,
                                          version=read_index_version(self.index_dir), **self._settings)
        except BaseException:
            self.resources.close()
            raise

    @property
    def current(self) -> SearchService:
        """The service of the index version in use."""
        return self._current

    @contextlib.contextmanager
    def lease(self) -> Iterator[SearchService]:
        """The current service, kept open until the block ends even if a new version replaces it."""
        with self._lock:
            service = self._current
            self._leases[id(service)] = self._leases.get(id(service), 0) + 1
        try:
            yield service
        finally:
            with self._lock:
                self._leases[id(service)] -= 1
                if not self._leases[id(service)]:
                    del self._leases[id(service)]

    def check_now(self) -> bool:
        """Load and swap in the index's new version if it has one; True when it did."""
        with self._reload_lock:
            signature = index_signature(self.index_dir)
            if signature is None or signature == self._signature:
                self._close_retired()
                return False
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # e.g. "loading the backup": the next look sees the new one
                    version = signature[-1]
                    service = SearchService(resources=self.resources, version=version, **self._settings)
            except Exception as error:  # noqa: BLE001 - any failure: keep serving the version in use
                # /healthz shows it: the index's location stays server-side.
                message = f"{type(error).__name__}: {error}".replace(self.index_dir, "INDEX")
                if message != self.last_reload_error:
                    logging.getLogger("musicsim.serve").warning("the index %s changed but cannot be loaded "
                                                                "(still serving the previous version): %s",
                                                                self.index_dir, message)
                self.last_reload_error = message
                return False
            if index_signature(self.index_dir) != signature:  # written again while loading: look again
                service.close()
                return False
            with self._lock:
                old, self._current = self._current, service
                self._retired.append((old, time.monotonic()))
            self._signature = signature
            self.reloads += 1
            self.last_reload_error = None
            logging.getLogger("musicsim.serve").info("serving index version %s: %d tracks", service.version,
                                                     len(service.track_ids))
            self._close_retired()
            return True

    def _close_retired(self, *, force: bool = False) -> None:
        now = time.monotonic()
        with self._lock:
            done = [(s, t) for s, t in self._retired
                    if force or (id(s) not in self._leases and now - t >= RETIRE_GRACE_S)]
            self._retired = [(s, t) for s, t in self._retired if (s, t) not in done]
            current = self._current
        for service, _ in done:
            # pymilvus shares one connection per Milvus URI in a process: closing an old version's client
            # would close the current version's too. Its connection is then closed with the current one.
            shared = (getattr(service.index, "backend", None) == "milvus"
                      and getattr(service.index, "uri", None) == getattr(current.index, "uri", None))
            if shared and service is not current:
                service.close(release_index=False)
            else:
                service.close()

    def _watch(self) -> None:
        while not self._stop.wait(self.reload_interval_s):
            try:
                self.check_now()
            except Exception:  # noqa: BLE001 - the watcher must outlive any one failure
                logging.getLogger("musicsim.serve").exception("looking for a new index version failed")

    def start(self) -> None:
        """Look for new index versions every ``reload_interval_s`` seconds in a daemon thread (not at 0)."""
        if self.reload_interval_s > 0 and self._thread is None:
            self._thread = threading.Thread(target=self._watch, name="index-reload", daemon=True)
            self._thread.start()

    def close(self) -> None:
        """Stop watching, close every service and remove the upload directory."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=max(5.0, self.reload_interval_s + 1))
            self._thread = None
        self._close_retired(force=True)
        self._current.close()
        self.resources.close()


# ---------------------------------------------------------------------------------- HTTP plumbing

class HeadAsGet:
    """ASGI middleware: a HEAD request is routed as the GET it mirrors (RFC 9110 9.3.2) and its body dropped.

    The request is marked in its scope (``HEAD_SCOPE_KEY``) so a file response can skip reading the file.
    """

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def headers_only(message: dict) -> None:
            if message["type"] == "http.response.body":
                if message.get("more_body", False):
                    return
                message = {"type": "http.response.body", "body": b"", "more_body": False}
            await send(message)

        await self.app({**scope, "method": "GET", HEAD_SCOPE_KEY: True}, receive, headers_only)


class AudioFileResponse(FileResponse):
    """A file with range requests, where an unusable ``Range`` (malformed, or beyond the file) is
    ignored and the whole file sent (RFC 9110 14.2 allows it), and a HEAD reads nothing."""

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope.get(HEAD_SCOPE_KEY):
            scope = {**scope, "method": "HEAD"}
        http_range = next((value.decode("latin-1") for key, value in scope.get("headers", ())
                           if key.lower() == b"range"), None)
        if http_range is not None:
            try:
                size = self.stat_result.st_size if self.stat_result else os.stat(self.path).st_size
                usable = bool(self._parse_range_header(http_range, size))
            except Exception:  # noqa: BLE001 - starlette's MalformedRangeHeader, RangeNotSatisfiable, ValueError
                usable = False
            if not usable:
                scope = {**scope, "headers": [(k, v) for k, v in scope["headers"] if k.lower() != b"range"]}
        await super().__call__(scope, receive, send)


def _error(status: int, message: str, *, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message, "status": status}, status_code=status, headers=headers)


def _content_disposition(*, name: str, suffix: str) -> str:
    """An attachment header carrying a Unicode file name (RFC 6266), with an ASCII fallback."""
    base = re.sub(r"[\x00-\x1f\\/:*?\"<>|]+", " ", name).strip()[:80] or "playlist"
    ascii_name = re.sub(r"[^A-Za-z0-9._ -]+", "_", base) or "playlist"
    return f"attachment; filename=\"{ascii_name}{suffix}\"; filename*=UTF-8''{quote(base + suffix, safe='')}"


def create_app(*, index_dir: str, max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB, map_method: str = "pca",
               index: IndexBackend | None = None, warm_up: bool = False, m3u_root: str | None = None,
               reload_interval_s: float = DEFAULT_RELOAD_INTERVAL_S, subsonic: bool = False,
               users_file: str | None = None) -> FastAPI:
    """The FastAPI application serving ``index_dir`` (see the module docstring for the endpoints).

    Parameters
    ----------
    index_dir, max_upload_mb, map_method, m3u_root : as for ``SearchService``
    index : the loaded index of ``index_dir``, to save loading it again
    warm_up : load the index's model in a background thread at start-up (``SearchService.warm_up``)
        instead of on the first file query
    reload_interval_s : seconds between two looks for a new index version (0: never reload)

    ``app.state.holder`` is the ``ServiceHolder``: ``app.state.holder.current`` the service of the
    index version in use (what a router mounted on the app answers from).

    Raises
    ------
    FileNotFoundError, ValueError
        When the index cannot be loaded or a setting is invalid.
    """
    if m3u_root is not None and not os.path.isdir(m3u_root):
        raise ValueError(f"m3u_root {m3u_root} is " + ("a file, not a folder" if os.path.exists(m3u_root)
                                                       else "not an existing folder"))
    holder = ServiceHolder(index_dir=index_dir, max_upload_mb=max_upload_mb, map_method=map_method, index=index,
                           m3u_root=m3u_root, reload_interval_s=reload_interval_s)
    static = load_static_files()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service = holder.current
        if warm_up and service.index.model.get("model_dir"):
            threading.Thread(target=service.warm_up, name="model-warm-up", daemon=True).start()
        holder.start()
        yield
        holder.close()

    app = FastAPI(title="musicsim", version="0.1.0", lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Content-based music similarity search: the catalog, neighbours of a track or "
                              "of an uploaded file, audio streaming, cover art, playlists (JSON or M3U) and "
                              "an embedding map. This document is the spec; /docs lists it offline. Every GET "
                              "route answers HEAD.")
    app.state.holder = holder
    app.add_middleware(HeadAsGet)

    @app.exception_handler(ServiceError)
    async def service_error(request: Request, error: ServiceError):
        return _error(error.status, error.message, headers=error.headers)

    @app.exception_handler(RequestValidationError)
    async def bad_parameters(request: Request, error: RequestValidationError):
        problems = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ())[1:]) or 'request'}: {e.get('msg')}"
                             for e in error.errors())
        return _error(400, f"bad parameters: {problems}")

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException):
        headers = dict(error.headers or {})
        if error.status_code == 405:
            allowed = [m.strip() for m in headers.get("Allow", headers.get("allow", "")).split(",") if m.strip()]
            if "GET" in allowed and "HEAD" not in allowed:
                allowed.append("HEAD")
            headers = {"Allow": ", ".join(allowed)}
            return _error(405, f"method {request.method} not allowed on {request.url.path} (allowed: "
                               f"{', '.join(allowed)})", headers=headers)
        return _error(error.status_code, str(error.detail), headers=headers or None)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception):
        logging.getLogger("musicsim.serve").exception("request %s failed", request.url.path)
        return _error(500, f"internal error: {type(error).__name__}")

    def static_response(name: str) -> Response:
        if name not in static:
            raise ServiceError(404, f"no such page {name!r}")
        content, media_type = static[name]
        return Response(content, media_type=media_type, headers={"Cache-Control": "no-cache"})

    @app.get("/", include_in_schema=False)
    def page() -> Response:
        return static_response("index.html")

    @app.get("/docs", include_in_schema=False)
    def docs() -> Response:
        return static_response("docs.html")

    @app.get("/static/{name}", include_in_schema=False)
    def static_file(name: str) -> Response:
        return static_response(name)

    @app.get("/healthz", summary="Liveness, the index version in use, its track count and the upload model")
    def healthz() -> JSONResponse:
        service = holder.current
        return JSONResponse({"status": "ok", "index_version": service.version, "tracks": len(service.track_ids),
                             "model": service.model_state, "reloads": holder.reloads,
                             "reload_error": holder.last_reload_error})

    @app.get("/api/info", summary="The index: size, similarity, model, groups, upload limit, version")
    def info() -> JSONResponse:
        return JSONResponse(holder.current.info())

    @app.get("/api/tracks", summary="The catalog, filtered by what it shows: id, tags, relative path, group")
    def tracks(q: str = Query("", max_length=200, description="words each found in the id, a tag (title, artist, "
                                                               "album, ...), the relative path or the group"),
               limit: int = Query(50, ge=1, le=MAX_PAGE), offset: int = Query(0, ge=0)) -> JSONResponse:
        with holder.lease() as service:
            return JSONResponse(service.tracks(query=q, limit=limit, offset=offset))

    @app.get("/api/similar/{track_id:path}", summary="The tracks most similar to a track of the index")
    def similar(track_id: str, k: int = Query(10, ge=1, le=MAX_RESULTS),
                diversity: float = Query(0.0, ge=0.0, le=1.0, description="0: by similarity only; up to 1: MMR"),
                exclude_same_album: bool = Query(False, description="leave out the track's album (its album tag "
                                                                    "and album artist; else its group or folder)"),
                exclude_same_group: bool = Query(False, description="the same as exclude_same_album (older name)")
                ) -> JSONResponse:
        with holder.lease() as service:
            return JSONResponse(service.similar(track_id=track_id, k=k, diversity=diversity,
                                                exclude_same_album=exclude_same_album or exclude_same_group))

    @app.post("/api/similar", summary="The tracks most similar to an uploaded audio file",
              description="Multipart with the file in field `file`, or the raw file as the body (its name in "
                          "an `X-Filename` header). Checked to be audio by decoding; deleted after the query.")
    async def similar_to_upload(request: Request, k: int = Query(10, ge=1, le=MAX_RESULTS),
                                diversity: float = Query(0.0, ge=0.0, le=1.0)) -> JSONResponse:
        with holder.lease() as service:
            if not service.index.model.get("model_dir"):
                service.embedder()  # raises the 400 that says why, before reading the upload
            path, name = await service.receive_upload(request)
            try:
                answer = await run_in_threadpool(service.similar_to_file, path=path, name=name, k=k,
                                                 diversity=diversity)
            finally:
                os.unlink(path)
            return JSONResponse(answer)

    @app.get("/api/audio/{track_id:path}", summary="A track's audio file (HTTP range requests supported)")
    def audio(track_id: str) -> Response:
        path, media_type = holder.current.audio_file(track_id)
        return AudioFileResponse(path, media_type=media_type, content_disposition_type="inline")

    @app.get("/api/art/{track_id:path}", summary="The cover art embedded in a track's file (404 when none)")
    def art(track_id: str, request: Request) -> Response:
        service = holder.current
        path, _ = service.audio_file(track_id)
        status = os.stat(path)
        tag = '"' + hashlib.sha1(f"{path}\0{status.st_mtime_ns}\0{status.st_size}".encode()).hexdigest()[:20] + '"'
        if request.headers.get("if-none-match") == tag:
            return Response(status_code=304, headers={"ETag": tag})
        found = service.cover_art(track_id)
        if found is None:
            raise ServiceError(404, f"the file of track {track_id!r} embeds no cover art")
        image, mime = found
        return Response(image, media_type=mime, headers={"ETag": tag, "Cache-Control": "no-cache"})

    @app.get("/api/playlist", summary="A radio from a seed (seed=), or a morph between two tracks (from=, to=); "
                                      "JSON, or with format=m3u8 an M3U playlist file")
    def playlist(seed: str | None = Query(None, description="radio: the first track"),
                 source: str | None = Query(None, alias="from", description="morph: the first track"),
                 target: str | None = Query(None, alias="to", description="morph: the last track"),
                 n: int = Query(20, ge=1, le=MAX_PLAYLIST), diversity: float = Query(0.0, ge=0.0, le=1.0),
                 format: Literal["json", "m3u8", "m3u"] = Query(
                     "json", description="json, or m3u8 (an extended M3U in UTF-8: #EXTINF durations and "
                                         "'artist - title', the files' paths, relative to --m3u_root when set)")
                 ) -> Response:
        with holder.lease() as service:
            try:
                answer = service.playlist(seed=seed, source=source, target=target, n=n, diversity=diversity)
            except ValueError as error:
                raise ServiceError(400, str(error)) from None
            if format == "json":
                return JSONResponse(answer)
            return Response(service.playlist_m3u8(answer).encode("utf-8"), media_type=M3U_MEDIA_TYPE,
                            headers={"Content-Disposition": _content_disposition(name=answer["name"],
                                                                                 suffix=".m3u8")})

    @app.get("/api/map", summary="2-D coordinates of every track (PCA, or UMAP with --map=umap)")
    def catalog_map() -> JSONResponse:
        with holder.lease() as service:
            return JSONResponse(service.catalog_map())

    if subsonic:  # the OpenSubsonic API under /rest/ (musicsim.subsonic; users_file: musicsim.users)
        from musicsim.subsonic import make_router
        from musicsim.users import default_users_file

        app.include_router(make_router(current_service=lambda: holder.current,
                                       users_file=users_file or default_users_file()), prefix="/rest")
    return app


def main(argv: Sequence[str]) -> int:
    """``python -m musicsim.serve ...`` (``argv`` program name first); returns the exit status (2 on a
    usage or input error)."""
    status = parse_command_line(FLAGS, argv, doc=__doc__, usage=USAGE)
    if isinstance(status, int):
        return status
    if FLAGS.add_user is not None:
        from musicsim.users import add_user_command

        return add_user_command(name=FLAGS.add_user, users_file=FLAGS.users, index_dir=FLAGS.index)
    if FLAGS.index is None:
        return usage_error("Flag --index must have a value other than None.", usage=USAGE)
    for name in ("index", "m3u_root"):
        value = FLAGS[name].value
        if value is not None and os.path.exists(value) and not os.path.isdir(value):
            print(f"error: --{name}={value} is a file, not a folder" + (
                " (an index is the folder musicsim.index build --output or musicsim-scan --index wrote)"
                if name == "index" else ""), file=sys.stderr)
            return 2
    if FLAGS.m3u_root is not None and not os.path.isdir(FLAGS.m3u_root):
        print(f"error: --m3u_root={FLAGS.m3u_root} does not exist", file=sys.stderr)
        return 2
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    from threadpoolctl import threadpool_limits

    # Requests run concurrently on the server's threads: BLAS threads of their own would only fight
    # them for the cores (and spin), which costs both latency and throughput on a busy machine. The
    # limit is lifted when serving ends, so a caller of main() keeps its own BLAS threads.
    with threadpool_limits(limits=1, user_api="blas"):
        try:
            app = create_app(index_dir=FLAGS.index, max_upload_mb=FLAGS.max_upload_mb, map_method=FLAGS.map,
                             warm_up=True, m3u_root=FLAGS.m3u_root, reload_interval_s=FLAGS.reload_interval_s,
                             subsonic=FLAGS.subsonic, users_file=FLAGS.users)
        except (ValueError, FileNotFoundError) as error:
            print(f"error: {one_line(str(error))}", file=sys.stderr)
            return 2
        import uvicorn

        if not _is_loopback(FLAGS.host):
            print(f"warning: binding to {FLAGS.host}: the service is reachable from other machines", file=sys.stderr)
        service = app.state.holder.current
        follows = (f"; following its new versions (every {FLAGS.reload_interval_s:g} s)"
                   if FLAGS.reload_interval_s > 0 else "")
        print(f"{service.index.summary()}\nserving {service.index_dir} (version {service.version}{follows}) on "
              f"http://{FLAGS.host}:{FLAGS.port}/ (API spec: /openapi.json)", flush=True)
        uvicorn.run(app, host=FLAGS.host, port=FLAGS.port, access_log=FLAGS.access_log, log_level="info")
    return 0


def cli() -> NoReturn:
    """The ``musicsim-serve`` console script."""
    run_command(main)


if __name__ == "__main__":
    cli()
