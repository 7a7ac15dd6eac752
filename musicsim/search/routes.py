"""The routes of the service: the web page, and the JSON API a request answers from one index version.

Every handler takes the service of the index version current when the request starts
(``holder.current``, or ``holder.lease()`` to keep it open to the end) and answers from it; errors are
``ServiceError`` (``musicsim.search.plumbing`` turns them into JSON). The catalog and track queries are
``add_catalog_routes``; what reads or receives files (audio, cover art, uploads) ``add_file_routes``.
"""
from __future__ import annotations

import hashlib
import os
from typing import Literal

from fastapi import FastAPI, Query, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from musicsim.search.errors import ServiceError
from musicsim.search.holder import ServiceHolder
from musicsim.search.plumbing import AudioFileResponse, content_disposition

MAX_RESULTS = 1000
MAX_PAGE = 1000
MAX_PLAYLIST = 500
M3U_MEDIA_TYPE = "audio/x-mpegurl; charset=utf-8"


def add_page_routes(app: FastAPI, *, static: dict[str, tuple[bytes, str]]) -> None:
    """The web page (``/``), the offline API listing (``/docs``) and their files (``/static/NAME``),
    from ``static`` (``{name: (content, media type)}``, read once): no request names a file on disk."""

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


def add_catalog_routes(app: FastAPI, *, holder: ServiceHolder) -> None:
    """``/healthz``, ``/api/info``, ``/api/tracks`` and ``/api/similar/{id}`` (neighbours of a track)."""

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


def add_file_routes(app: FastAPI, *, holder: ServiceHolder) -> None:
    """``POST /api/similar`` (an uploaded file), ``/api/audio/{id}`` (ranges) and ``/api/art/{id}`` (ETag)."""

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


def add_playlist_routes(app: FastAPI, *, holder: ServiceHolder) -> None:
    """``/api/playlist`` (a radio or a morph, JSON or M3U) and ``/api/map`` (the catalog in 2-D)."""

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
                            headers={"Content-Disposition": content_disposition(name=answer["name"],
                                                                                suffix=".m3u8")})

    @app.get("/api/map", summary="2-D coordinates of every track (PCA, or UMAP with --map=umap)")
    def catalog_map() -> JSONResponse:
        with holder.lease() as service:
            return JSONResponse(service.catalog_map())
