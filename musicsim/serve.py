"""The search engine over HTTP: a JSON API and a web page to search, listen, explore and build playlists.

    python -m musicsim.serve --index=DIR [--host=127.0.0.1] [--port=8000] [--max_upload_mb=50]
        [--map=pca|umap] [--access_log]

Binds to localhost unless ``--host`` says otherwise. The index is loaded once at start-up; the model
that embeds uploaded files is loaded on the first file query and kept. Endpoints (the spec is at
``/openapi.json``, an offline page listing it at ``/docs``):

    GET  /                          the web page (static files of the package, no CDN)
    GET  /healthz                   liveness and the track count
    GET  /api/info                  the index: size, similarity, model, groups, upload limit
    GET  /api/tracks?q=&limit=&offset=        the catalog, filtered by id / path / group substring
    GET  /api/similar/{track_id}?k=&diversity=&exclude_same_group=   neighbours of a track
    POST /api/similar?k=&diversity=  neighbours of an uploaded audio file (multipart ``file`` or raw body)
    GET  /api/audio/{track_id}      the track's audio file, with HTTP range requests
    GET  /api/playlist?seed=&n=&diversity=    a radio walk from a seed
    GET  /api/playlist?from=&to=&n=           a path morphing from one track to another
    GET  /api/map                   2-D coordinates of every track (PCA or UMAP, cached beside the index)

Only files the index lists are served: ``/api/audio`` looks the track id up in the index's metadata
(resolved once at start-up) and no part of a request path is ever joined to a file-system path. An
upload is streamed into a private temporary directory (mode 0700, outside anything served) with its
size checked as it arrives, checked to be audio by decoding it, and deleted after the query. Errors
are JSON ``{"error": message, "status": code}``: 400 bad parameters, 404 unknown track or path,
413 upload too large, 415 not audio, 422 audio that cannot be embedded (too short, silent).
"""
from __future__ import annotations

import logging
import mimetypes
import os
import re
import shutil
import stat
import sys
import tempfile
import threading
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any, AsyncIterator, NoReturn, Sequence
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

from musicsim.index import EmbeddingIndex
from musicsim.index.cli import parse_command_line, run_command

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
DEFAULT_MAX_UPLOAD_MB = 50.0
MAX_RESULTS = 1000
MAX_PAGE = 1000
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
SAFE_SUFFIX = re.compile(r"^\.[A-Za-z0-9]{1,8}$")
USAGE = "usage: python -m musicsim.serve --index=DIR [--host=127.0.0.1] [--port=8000] [--max_upload_mb=50] [...]"

# Flags of this command only (experiments.run's global FLAGS has some of the same names).
FLAGS = flags.FlagValues()
flags.DEFINE_string("index", None, "The index directory (musicsim.index build).", flag_values=FLAGS)
flags.DEFINE_string("host", DEFAULT_HOST, f"Address to bind (default {DEFAULT_HOST}: this machine only; 0.0.0.0 "
                    "exposes it to the network).", flag_values=FLAGS)
flags.DEFINE_integer("port", DEFAULT_PORT, "Port.", lower_bound=0, upper_bound=65535, flag_values=FLAGS)
flags.DEFINE_float("max_upload_mb", DEFAULT_MAX_UPLOAD_MB, "Largest accepted audio upload, in MiB.",
                   flag_values=FLAGS)
flags.DEFINE_enum("map", "pca", ["pca", "umap"], "Projection of the embedding map.", flag_values=FLAGS)
flags.DEFINE_bool("access_log", False, "Log every request.", flag_values=FLAGS)
flags.DEFINE_bool("subsonic", False, "Also serve the library as a read-only OpenSubsonic server under /rest/ "
                  "(musicsim.subsonic; users from --users).", flag_values=FLAGS)
flags.DEFINE_string("users", None, "The Subsonic users file (default $XDG_CONFIG_HOME/musicsim/users.json, else "
                    "~/.config/musicsim/users.json; mode 0600, never inside the index folder).", flag_values=FLAGS)
flags.DEFINE_string("add_user", None, "Add a Subsonic user (or reset its password and API key) to --users, the "
                    "password read from stdin, and exit.", flag_values=FLAGS)


class ServiceError(Exception):
    """A request that cannot be answered: ``status`` is its HTTP status, the message says why."""

    def __init__(self, status: int, message: str):
        self.status = status
        self.message = message
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


class SearchService:
    """What the HTTP handlers answer from: one loaded index, its audio files, its model, its map.

    Parameters
    ----------
    index_dir : an index written by ``musicsim.index``
    max_upload_mb : largest accepted upload, in MiB
    map_method : 'pca' or 'umap', the projection of ``/api/map``
    index : the loaded index of ``index_dir``, to save loading it again
    """

    def __init__(self, *, index_dir: str, max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB, map_method: str = "pca",
                 index: EmbeddingIndex | None = None):
        from musicsim.catalog_map import METHODS

        if not max_upload_mb > 0:
            raise ValueError(f"max_upload_mb must be > 0, got {max_upload_mb}")
        if map_method not in METHODS:
            raise ValueError(f"map must be one of {METHODS}, got {map_method!r}")
        self.index_dir = os.path.abspath(index_dir)
        self.index = index or EmbeddingIndex.load(self.index_dir)
        self.max_upload_bytes = int(max_upload_mb * 1024 * 1024)
        self.map_method = map_method
        self.track_ids = self.index.track_ids
        columns = set(self.index.metadata_columns)
        self._tracks = [self._describe(track_id, self.index.metadata(track_id=track_id) if columns else {})
                        for track_id in self.track_ids]
        self._track_of = {t["track_id"]: t for t in self._tracks}
        self._haystacks = ["\n".join((t["track_id"], t.pop("_path") or "", str(t["group"] or ""))).lower()
                           for t in self._tracks]
        self.groups = sorted({str(t["group"]) for t in self._tracks if t["group"] is not None})
        self._embedder = None
        self._embed_lock = threading.Lock()
        # What /healthz says of the upload model: none, not loaded, loading, ready, or failed: why.
        self.model_state = "not loaded" if self.index.model.get("model_dir") else "none"
        self._map: np.ndarray | None = None
        self._map_lock = threading.Lock()
        # Uploads live here, readable by this user only, removed with the service.
        self.upload_dir = tempfile.mkdtemp(prefix="musicsim-uploads-")
        os.chmod(self.upload_dir, 0o700)

    def close(self) -> None:
        """Remove the upload directory."""
        shutil.rmtree(self.upload_dir, ignore_errors=True)

    # ------------------------------------------------------------------ catalog
    def _describe(self, track_id: str, metadata: dict[str, Any]) -> dict[str, Any]:
        path = metadata.get("path") or None
        audio_file = None
        if path:
            # Resolved once: requests are answered from this table, never from a path they carry.
            audio_file = os.path.realpath(str(path))
        title = os.path.splitext(os.path.basename(str(path)))[0] if path else track_id.rsplit("/", 1)[-1]
        duration = metadata.get("duration_s")
        return {"track_id": track_id, "title": title or track_id, "group": metadata.get("group"),
                "file": os.path.basename(str(path)) if path else None,
                "duration_s": float(duration) if isinstance(duration, (int, float)) else None,
                "audio_url": f"/api/audio/{quote(track_id, safe='')}" if audio_file else None,
                "_audio_file": audio_file, "_path": str(path) if path else None}

    def _entry(self, track_id: str) -> dict[str, Any]:
        """The start-up record of one track, private entries included (404 when unknown)."""
        entry = self._track_of.get(track_id)
        if entry is None:
            raise ServiceError(404, f"unknown track id {track_id!r}: the index holds {len(self.track_ids)} tracks")
        return entry

    def track(self, track_id: str) -> dict[str, Any]:
        """The public description of one track (404 when unknown)."""
        return {key: value for key, value in self._entry(track_id).items() if not key.startswith("_")}

    def tracks(self, *, query: str = "", limit: int = 50, offset: int = 0) -> dict[str, Any]:
        """Tracks whose id, path or group contains ``query`` (case-insensitive), a page of them."""
        needle = query.strip().lower()
        rows = (range(len(self._tracks)) if not needle
                else [row for row, haystack in enumerate(self._haystacks) if needle in haystack])
        page = rows[offset:offset + limit]
        return {"total": len(rows), "offset": offset, "limit": limit, "query": query,
                "tracks": [self.track(self.track_ids[row]) for row in page]}

    def info(self) -> dict[str, Any]:
        """The index at a glance, for the page's header."""
        return {"summary": self.index.summary(), "tracks": len(self.track_ids), "dim": self.index.dim,
                "similarity": self.index.similarity, "model": self.index.model.get("name"),
                "file_queries": bool(self.index.model.get("model_dir")), "groups": self.groups,
                "max_upload_mb": self.max_upload_bytes / (1024 * 1024), "map": self.map_method,
                "with_audio": sum(1 for t in self._tracks if t["_audio_file"])}

    def _results(self, found: Sequence[tuple[str, float]]) -> list[dict[str, Any]]:
        return [{"rank": rank, "score": float(score), **self.track(track_id)}
                for rank, (track_id, score) in enumerate(found, start=1)]

    # ------------------------------------------------------------------ queries
    def similar(self, *, track_id: str, k: int, diversity: float, exclude_same_group: bool) -> dict[str, Any]:
        """Neighbours of a track of the index, itself left out."""
        query = self.track(track_id)
        if exclude_same_group and "group" not in self.index.metadata_columns:
            raise ServiceError(400, "exclude_same_group needs group metadata, and this index has none")
        found = self.index.search_by_id(track_id=track_id, k=k, exclude_same_group=exclude_same_group,
                                        diversity=diversity)
        return {"query": query, "results": self._results(found)}

    def embedder(self):
        """The index's model (loaded once, on first use), checked against the index
        (``musicsim.search.load_query_embedder``)."""
        from musicsim.search import load_query_embedder, query_model_dir

        try:
            model_dir = query_model_dir(index=self.index, index_dir=self.index_dir)
        except ValueError as error:
            raise ServiceError(400, f"uploaded files cannot be embedded: {error}") from None
        with self._embed_lock:
            if self._embedder is None:
                self.model_state = "loading"
                try:
                    embedder = load_query_embedder(index=self.index, index_dir=self.index_dir)
                except (OSError, ValueError) as error:
                    self.model_state = f"failed: {error}"
                    raise ServiceError(500, f"cannot load the index's model {model_dir}: {error}") from error
                self._embedder = embedder
                self.model_state = "ready"
            return self._embedder

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
                with self._embed_lock:
                    embedder.embed_paths(paths=[path], workers=1, progress=False)
            finally:
                os.unlink(path)
            self.model_state = "ready"
        except Exception as error:  # noqa: BLE001 - the first real upload reports the problem
            logging.getLogger("musicsim.serve").warning("model warm-up failed: %s", error)
            if self._embedder is not None:
                self.model_state = "ready"  # loaded; only the warm-up embedding failed

    def similar_to_file(self, *, path: str, name: str, k: int, diversity: float) -> dict[str, Any]:
        """Neighbours of an audio file (an upload saved at ``path``; ``name`` is what the client called it)."""
        from musicsim.audio import AudioDecodeError, load_audio

        embedder = self.embedder()
        try:
            # Decoding, not the name or the declared type, says whether it is audio.
            load_audio(path, duration=DECODE_CHECK_SECONDS, min_seconds=0.0, reject_silence=False)
        except AudioDecodeError as error:
            raise ServiceError(415, f"the upload {name!r} is not audio this server can decode: {error.reason}")
        from musicsim.search import UnembeddableQueryError, embed_query_file

        with self._embed_lock:  # one model, one query at a time (estimators and workers are not shared)
            try:
                vectors = embed_query_file(embedder=embedder, query_path=path)
            except UnembeddableQueryError as error:
                raise ServiceError(422, f"the upload {name!r} cannot be embedded: {error.reason}") from None
        found = self.index.search(queries=vectors, k=k, diversity=diversity)[0]
        return {"query": {"file": name}, "results": self._results(found)}

    def playlist(self, *, seed: str | None, source: str | None, target: str | None, n: int,
                 diversity: float) -> dict[str, Any]:
        """A radio from ``seed``, or a morph from ``source`` to ``target``."""
        from musicsim import playlist

        if seed is not None and (source is None and target is None):
            self.track(seed)
            entries = playlist.radio(index=self.index, seed=seed, n=n, diversity=diversity)
            kind = "radio"
        elif seed is None and source is not None and target is not None:
            self.track(source), self.track(target)
            entries = playlist.morph(index=self.index, source=source, target=target, n=n)
            kind = "morph"
        else:
            raise ServiceError(400, "give either seed=ID (a radio) or both from=ID and to=ID (a morph)")
        return {"kind": kind, "tracks": [{**entry, **self.track(entry["track_id"])} for entry in entries]}

    def catalog_map(self) -> dict[str, Any]:
        """2-D coordinates of every track, computed once (and cached beside the index)."""
        from musicsim.catalog_map import catalog_map

        with self._map_lock:
            if self._map is None:
                self._map = catalog_map(index=self.index, index_dir=self.index_dir, method=self.map_method)
        coordinates = np.round(self._map.astype(np.float64), 5)
        return {"method": self.map_method, "track_ids": self.track_ids,
                "x": coordinates[:, 0].tolist(), "y": coordinates[:, 1].tolist(),
                "groups": [t["group"] for t in self._tracks], "titles": [t["title"] for t in self._tracks]}

    # ------------------------------------------------------------------ audio and uploads
    def audio_file(self, track_id: str) -> tuple[str, str]:
        """``(path, media type)`` of a track's audio, as resolved at start-up (404 otherwise)."""
        path = self._entry(track_id)["_audio_file"]
        if not path:
            raise ServiceError(404, f"the index lists no audio file for track {track_id!r}")
        try:
            status = os.lstat(path)
        except OSError:
            raise ServiceError(404, f"the audio file of track {track_id!r} is gone") from None
        # Replaced by a symlink (or a folder in its path by one) since start-up: not what was indexed.
        if not stat.S_ISREG(status.st_mode) or os.path.realpath(path) != path:
            raise ServiceError(404, f"the audio file of track {track_id!r} is no longer a regular file")
        suffix = os.path.splitext(path)[1].lower()
        return path, AUDIO_TYPES.get(suffix) or mimetypes.guess_type(path)[0] or "application/octet-stream"

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
            if written == 0:
                raise ServiceError(415, f"the upload {name!r} is empty (0 bytes): not audio")
            # The decoders may look at the name's extension; keep a plain one, never the client's path.
            suffix = os.path.splitext(os.path.basename(name))[1]
            if SAFE_SUFFIX.match(suffix):
                os.replace(path, path + suffix.lower())
                path += suffix.lower()
        except BaseException:
            os.unlink(path)
            raise
        return path, os.path.basename(name)


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message, "status": status}, status_code=status)


def create_app(*, index_dir: str, max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB, map_method: str = "pca",
               index: EmbeddingIndex | None = None, warm_up: bool = False, subsonic: bool = False,
               users_file: str | None = None) -> FastAPI:
    """The FastAPI application serving ``index_dir`` (see the module docstring for the endpoints).

    ``warm_up`` loads the index's model in a background thread at start-up (``SearchService.warm_up``)
    instead of on the first file query.

    Raises
    ------
    FileNotFoundError, ValueError
        When the index cannot be loaded or a setting is invalid.
    """
    service = SearchService(index_dir=index_dir, max_upload_mb=max_upload_mb, map_method=map_method, index=index)
    static = load_static_files()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if warm_up and service.index.model.get("model_dir"):
            threading.Thread(target=service.warm_up, name="model-warm-up", daemon=True).start()
        yield
        service.close()

    app = FastAPI(title="musicsim", version="0.1.0", lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Content-based music similarity search: the catalog, neighbours of a track or "
                              "of an uploaded file, audio streaming, playlists and an embedding map. "
                              "This document is the spec; /docs lists it offline.")
    app.state.service = service

    @app.exception_handler(ServiceError)
    async def service_error(request: Request, error: ServiceError):
        return _error(error.status, error.message)

    @app.exception_handler(RequestValidationError)
    async def bad_parameters(request: Request, error: RequestValidationError):
        problems = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ())[1:]) or 'request'}: {e.get('msg')}"
                             for e in error.errors())
        return _error(400, f"bad parameters: {problems}")

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException):
        return _error(error.status_code, str(error.detail))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception):
        logging.getLogger("musicsim.serve").exception("request %s failed", request.url.path)
        return _error(500, f"internal error: {type(error).__name__}: {error}")

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

    @app.get("/healthz", summary="Liveness, the number of tracks and the state of the upload model")
    def healthz() -> JSONResponse:
        return JSONResponse({"status": "ok", "tracks": len(service.track_ids), "model": service.model_state})

    @app.get("/api/info", summary="The index: size, similarity, model, groups, upload limit")
    def info() -> JSONResponse:
        return JSONResponse(service.info())

    @app.get("/api/tracks", summary="The catalog, filtered by a case-insensitive substring of id, path or group")
    def tracks(q: str = Query("", max_length=200, description="substring of the id, path or group"),
               limit: int = Query(50, ge=1, le=MAX_PAGE), offset: int = Query(0, ge=0)) -> JSONResponse:
        return JSONResponse(service.tracks(query=q, limit=limit, offset=offset))

    @app.get("/api/similar/{track_id:path}", summary="The tracks most similar to a track of the index")
    def similar(track_id: str, k: int = Query(10, ge=1, le=MAX_RESULTS),
                diversity: float = Query(0.0, ge=0.0, le=1.0, description="0: by similarity only; up to 1: MMR"),
                exclude_same_group: bool = Query(False, description="leave out the track's own group (album)")
                ) -> JSONResponse:
        return JSONResponse(service.similar(track_id=track_id, k=k, diversity=diversity,
                                            exclude_same_group=exclude_same_group))

    @app.post("/api/similar", summary="The tracks most similar to an uploaded audio file",
              description="Multipart with the file in field `file`, or the raw file as the body (its name in "
                          "an `X-Filename` header). Checked to be audio by decoding; deleted after the query.")
    async def similar_to_upload(request: Request, k: int = Query(10, ge=1, le=MAX_RESULTS),
                                diversity: float = Query(0.0, ge=0.0, le=1.0)) -> JSONResponse:
        if not service.index.model.get("model_dir"):
            service.embedder()  # raises the 400 that says why, before reading the upload
        path, name = await service.receive_upload(request)
        try:
            answer = await run_in_threadpool(service.similar_to_file, path=path, name=name, k=k, diversity=diversity)
        finally:
            os.unlink(path)
        return JSONResponse(answer)

    @app.get("/api/audio/{track_id:path}", summary="A track's audio file (HTTP range requests supported)")
    def audio(track_id: str) -> Response:
        path, media_type = service.audio_file(track_id)
        return FileResponse(path, media_type=media_type, content_disposition_type="inline")

    @app.get("/api/playlist", summary="A radio from a seed (seed=), or a morph between two tracks (from=, to=)")
    def playlist(seed: str | None = Query(None, description="radio: the first track"),
                 source: str | None = Query(None, alias="from", description="morph: the first track"),
                 target: str | None = Query(None, alias="to", description="morph: the last track"),
                 n: int = Query(20, ge=1, le=500), diversity: float = Query(0.0, ge=0.0, le=1.0)) -> JSONResponse:
        try:
            return JSONResponse(service.playlist(seed=seed, source=source, target=target, n=n, diversity=diversity))
        except ValueError as error:
            raise ServiceError(400, str(error)) from None

    @app.get("/api/map", summary="2-D coordinates of every track (PCA, or UMAP with --map=umap)")
    def catalog_map() -> JSONResponse:
        return JSONResponse(service.catalog_map())

    if subsonic:  # the OpenSubsonic API under /rest/ (musicsim.subsonic; users_file: musicsim.users)
        from musicsim.subsonic import make_router
        from musicsim.users import default_users_file

        app.include_router(make_router(current_service=lambda: service, users_file=users_file or default_users_file()),
                           prefix="/rest")
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
        print(f"error: Flag --index must have a value other than None.\n{USAGE}", file=sys.stderr)
        return 2
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    from threadpoolctl import threadpool_limits

    # Requests run concurrently on the server's threads: BLAS threads of their own would only fight
    # them for the cores (and spin), which costs both latency and throughput on a busy machine. The
    # limit is lifted when serving ends, so a caller of main() keeps its own BLAS threads.
    with threadpool_limits(limits=1, user_api="blas"):
        try:
            app = create_app(index_dir=FLAGS.index, max_upload_mb=FLAGS.max_upload_mb, map_method=FLAGS.map,
                             warm_up=True, subsonic=FLAGS.subsonic, users_file=FLAGS.users)
        except (ValueError, FileNotFoundError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        import uvicorn

        if not _is_loopback(FLAGS.host):
            print(f"warning: binding to {FLAGS.host}: the service is reachable from other machines", file=sys.stderr)
        service = app.state.service
        print(f"{service.index.summary()}\nserving {service.index_dir} on http://{FLAGS.host}:{FLAGS.port}/ "
              f"(API spec: /openapi.json)", flush=True)
        uvicorn.run(app, host=FLAGS.host, port=FLAGS.port, access_log=FLAGS.access_log, log_level="info")
    return 0


def cli() -> NoReturn:
    """The ``musicsim-serve`` console script."""
    run_command(main)


if __name__ == "__main__":
    cli()
