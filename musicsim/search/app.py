"""The FastAPI application that serves an index: the JSON API, the web page and, optionally, OpenSubsonic.

``create_app`` puts the pieces together: the live-reload holder of the index's versions
(``musicsim.search.holder``), the JSON errors and HEAD handling (``musicsim.search.plumbing``), the
routes (``musicsim.search.routes``) and, with ``subsonic=True``, the ``/rest/`` router
(``musicsim.search.subsonic``). The endpoints are listed in ``musicsim.search.serve``'s docstring (the
command's ``--help``); the spec is at ``/openapi.json``, an offline page listing it at ``/docs``.
"""
from __future__ import annotations

import os
import threading
from contextlib import asynccontextmanager
from typing import AsyncIterator

from fastapi import FastAPI

from musicsim.index import IndexBackend
from musicsim.search.holder import DEFAULT_RELOAD_INTERVAL_S, ServiceHolder
from musicsim.search.plumbing import HeadAsGet, install_error_handlers, load_static_files
from musicsim.search.routes import add_catalog_routes, add_file_routes, add_page_routes, add_playlist_routes
from musicsim.search.subsonic import make_router
from musicsim.search.uploads import DEFAULT_MAX_UPLOAD_MB
from musicsim.search.users import default_users_file

DESCRIPTION = ("Content-based music similarity search: the catalog, neighbours of a track or of an uploaded "
               "file, audio streaming, cover art, playlists (JSON or M3U) and an embedding map. This document "
               "is the spec; /docs lists it offline. Every GET route answers HEAD.")


def create_app(*, index_dir: str, max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB, map_method: str = "pca",
               index: IndexBackend | None = None, warm_up: bool = False, m3u_root: str | None = None,
               reload_interval_s: float = DEFAULT_RELOAD_INTERVAL_S, subsonic: bool = False,
               users_file: str | None = None) -> FastAPI:
    """The FastAPI application serving ``index_dir`` (``musicsim.search.serve`` lists the endpoints).

    Parameters
    ----------
    index_dir, max_upload_mb, map_method, m3u_root : as for ``SearchService``
    index : the loaded index of ``index_dir``, to save loading it again
    warm_up : load the index's model in a background thread at start-up (``SearchService.warm_up``)
        instead of on the first file query
    reload_interval_s : seconds between two looks for a new index version (0: never reload)
    subsonic : also serve the OpenSubsonic API under ``/rest/``
    users_file : its users file (``musicsim.search.users``; the default location when None)

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
                  description=DESCRIPTION)
    app.state.holder = holder
    app.add_middleware(HeadAsGet)
    install_error_handlers(app)
    add_page_routes(app, static=static)
    add_catalog_routes(app, holder=holder)
    add_file_routes(app, holder=holder)
    add_playlist_routes(app, holder=holder)
    if subsonic:
        app.include_router(make_router(current_service=lambda: holder.current,
                                       users_file=users_file or default_users_file()), prefix="/rest")
    return app
