"""HTTP plumbing of the service: HEAD as GET, audio files with forgiving ranges, JSON errors, static files.

Errors are JSON ``{"error": message, "status": code}`` (``install_error_handlers``): 400 bad
parameters, 404 unknown track or path, 405 method not allowed (with ``Allow``), 413 upload too large,
415 not audio, 422 audio that cannot be embedded (too short, silent), 500 with only the error's type.
An unusable ``Range`` header (malformed or unsatisfiable) is ignored, as RFC 9110 allows: the whole file.
"""
from __future__ import annotations

import logging
import os
import re
from importlib import resources
from typing import Any, Callable
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from starlette.exceptions import HTTPException

from musicsim.search.errors import ServiceError

LOG = logging.getLogger("musicsim.search")
STATIC_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml", ".png": "image/png",
                ".ico": "image/x-icon"}
# The scope key under which HeadAsGet marks a HEAD request it routes as a GET.
HEAD_SCOPE_KEY = "musicsim.head"


def load_static_files() -> dict[str, tuple[bytes, str]]:
    """The web page's files, read once from the package: ``{name: (content, media type)}``."""
    folder = resources.files("musicsim.search") / "static"
    files = {}
    for entry in folder.iterdir():
        suffix = os.path.splitext(entry.name)[1].lower()
        if entry.is_file() and suffix in STATIC_TYPES:
            files[entry.name] = (entry.read_bytes(), STATIC_TYPES[suffix])
    return files


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


def error_response(status: int, message: str, *, headers: dict[str, str] | None = None) -> JSONResponse:
    """The JSON error answer ``{"error": message, "status": status}``."""
    return JSONResponse({"error": message, "status": status}, status_code=status, headers=headers)


def content_disposition(*, name: str, suffix: str) -> str:
    """An attachment header carrying a Unicode file name (RFC 6266), with an ASCII fallback."""
    base = re.sub(r"[\x00-\x1f\\/:*?\"<>|]+", " ", name).strip()[:80] or "playlist"
    ascii_name = re.sub(r"[^A-Za-z0-9._ -]+", "_", base) or "playlist"
    return f"attachment; filename=\"{ascii_name}{suffix}\"; filename*=UTF-8''{quote(base + suffix, safe='')}"


def install_error_handlers(app: FastAPI) -> None:
    """Answer every error of ``app`` as JSON ``{"error", "status"}``: a ``ServiceError`` with its status,
    bad parameters 400, a 405 with its ``Allow`` (HEAD wherever GET is), anything unexpected 500."""

    @app.exception_handler(ServiceError)
    async def service_error(request: Request, error: ServiceError):
        return error_response(error.status, error.message, headers=error.headers)

    @app.exception_handler(RequestValidationError)
    async def bad_parameters(request: Request, error: RequestValidationError):
        problems = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ())[1:]) or 'request'}: {e.get('msg')}"
                             for e in error.errors())
        return error_response(400, f"bad parameters: {problems}")

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException):
        headers = dict(error.headers or {})
        if error.status_code == 405:
            allowed = [m.strip() for m in headers.get("Allow", headers.get("allow", "")).split(",") if m.strip()]
            if "GET" in allowed and "HEAD" not in allowed:
                allowed.append("HEAD")
            headers = {"Allow": ", ".join(allowed)}
            return error_response(405, f"method {request.method} not allowed on {request.url.path} (allowed: "
                                       f"{', '.join(allowed)})", headers=headers)
        return error_response(error.status_code, str(error.detail), headers=headers or None)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception):
        LOG.exception("request %s failed", request.url.path)
        return error_response(500, f"internal error: {type(error).__name__}")
