"""Uploaded audio: the size limit, a request's file streamed into a private folder, checked to be audio.

An upload is streamed into a private temporary directory (mode 0700, outside anything served) with
its size checked as it arrives (past the limit: 413), checked to be audio by decoding it (415), and
deleted after the query by its caller. The client's file name is kept only to answer with it: the
server-side path never reaches an answer (``private_paths_out``).
"""
from __future__ import annotations

import math
import os
import re
import tempfile
from typing import AsyncIterator, BinaryIO, Callable

from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request

from musicsim.data.audio import AudioDecodeError, load_audio
from musicsim.search.errors import ServiceError

DEFAULT_MAX_UPLOAD_MB = 50.0
# Far above any audio file, and small enough that the limit in bytes stays an exact integer.
MAX_UPLOAD_MB_LIMIT = 1024.0 * 1024.0
# Multipart framing (boundaries, part headers) on top of the file itself.
MULTIPART_OVERHEAD_BYTES = 64 * 1024
COPY_CHUNK_BYTES = 1 << 20
# Seconds decoded to check that an upload is audio before it is embedded.
DECODE_CHECK_SECONDS = 2.0
SAFE_SUFFIX = re.compile(r"^\.[A-Za-z0-9]{1,8}$")


def finite_in(low: float, high: float, *, low_open: bool) -> Callable[[float], bool]:
    """A check that a value is finite and in ``(low, high]`` (``low_open``) or ``[low, high]``."""
    def check(value: float) -> bool:
        return value is not None and math.isfinite(value) and (value > low if low_open else value >= low) \
            and value <= high
    return check


def check_upload_limit(max_upload_mb: float) -> int:
    """The upload limit in bytes; ValueError unless ``max_upload_mb`` is finite and in (0, MAX_UPLOAD_MB_LIMIT]."""
    if isinstance(max_upload_mb, bool) or not isinstance(max_upload_mb, (int, float)) \
            or not finite_in(0.0, MAX_UPLOAD_MB_LIMIT, low_open=True)(float(max_upload_mb)):
        raise ValueError(f"max_upload_mb must be a finite number of MiB in (0, {MAX_UPLOAD_MB_LIMIT:g}], "
                         f"got {max_upload_mb!r}")
    return int(max_upload_mb * 1024 * 1024)


def private_paths_out(text: str, *, path: str, name: str, upload_dir: str) -> str:
    """``text`` (a decoder's message) with the upload's server-side path replaced by the client's name."""
    text = text.replace(path, name).replace(upload_dir, "")
    # libsndfile's message for a format it does not know is misleading ("possibly a pipe?").
    return text.replace("File does not exist or is not a regular file (possibly a pipe?)",
                        "not a format this server decodes")


def check_decodes(*, path: str, name: str, upload_dir: str) -> None:
    """Raise a 415 ``ServiceError`` (naming the upload by the client's ``name``) unless the file at
    ``path`` decodes as audio: decoding, not the name or the declared type, says whether it is audio."""
    try:
        load_audio(path, duration=DECODE_CHECK_SECONDS, min_seconds=0.0, reject_silence=False)
    except AudioDecodeError as error:
        reason = private_paths_out(error.reason, path=path, name=name, upload_dir=upload_dir)
        raise ServiceError(415, f"the upload {name!r} is not audio this server can decode: {reason}") from None


def _limit_error(limit: int, *, what: str) -> ServiceError:
    return ServiceError(413, f"{what} exceeds the limit of {limit} bytes ({limit / 2 ** 20:g} MiB, --max_upload_mb)")


async def receive_upload(request: Request, *, upload_dir: str, limit: int) -> tuple[str, str]:
    """Stream a request's audio into a private temporary file in ``upload_dir``: ``(path, client's name)``.

    Multipart (the file in a ``file`` field, or the first file field) or a raw body (its name in an
    ``X-Filename`` header). The size is counted as the bytes arrive: past ``limit`` bytes the upload
    is dropped with 413. The file keeps a plain suffix of the client's name (the decoders may look at
    it), never the client's path.
    """
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit + MULTIPART_OVERHEAD_BYTES:
        raise ServiceError(413, f"upload of {int(declared)} bytes exceeds the limit of {limit} bytes "
                                f"({limit / 2 ** 20:g} MiB, --max_upload_mb)")
    name = request.headers.get("x-filename") or "upload"
    handle, path = tempfile.mkstemp(dir=upload_dir, prefix="upload-")
    try:
        with os.fdopen(handle, "wb") as out:
            if request.headers.get("content-type", "").startswith("multipart/form-data"):
                name, written = await _copy_multipart(request, out=out, name=name, limit=limit)
            else:
                written = await _copy_body(_counted(request, limit=limit), out=out, limit=limit)
        name = os.path.basename(name.rstrip("/\\")) or name
        if written == 0:
            # A folder dropped on a browser's file field arrives as an empty file of its name.
            raise ServiceError(415, f"the upload {name!r} is empty (0 bytes; a folder arrives so): "
                                    "send one audio file")
        suffix = os.path.splitext(name)[1]
        if SAFE_SUFFIX.match(suffix):
            os.replace(path, path + suffix.lower())
            path += suffix.lower()
    except BaseException:
        os.unlink(path)
        raise
    return path, name


async def _counted(request: Request, *, limit: int) -> AsyncIterator[bytes]:
    """The request's body, dropped with 413 once it is past the limit and the multipart framing."""
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > limit + MULTIPART_OVERHEAD_BYTES:
            raise _limit_error(limit, what="upload")
        yield chunk


async def _copy_body(chunks: AsyncIterator[bytes], *, out: BinaryIO, limit: int) -> int:
    """Write a raw body to ``out``; the bytes written (413 past ``limit``)."""
    written = 0
    async for chunk in chunks:
        written += len(chunk)
        if written > limit:
            raise _limit_error(limit, what="the upload")
        out.write(chunk)
    return written


async def _copy_multipart(request: Request, *, out: BinaryIO, name: str, limit: int) -> tuple[str, int]:
    """Write a multipart upload's file to ``out``: ``(its name, the bytes written)`` (400 without a file)."""
    try:
        form = await MultiPartParser(request.headers, _counted(request, limit=limit), max_files=1,
                                     max_fields=10).parse()
    except MultiPartException as error:
        raise ServiceError(400, f"malformed multipart upload: {error.message}") from None
    try:
        files = [v for key, v in form.multi_items() if isinstance(v, UploadFile)]
        upload = next((form[key] for key in ("file",) if isinstance(form.get(key), UploadFile)),
                      files[0] if files else None)
        if upload is None:
            raise ServiceError(400, "the multipart upload holds no file (send it as field 'file')")
        name = upload.filename or name
        written = 0
        while chunk := await upload.read(COPY_CHUNK_BYTES):
            written += len(chunk)
            if written > limit:
                raise ServiceError(413, f"the file {name!r} exceeds the upload limit of "
                                        f"{limit} bytes ({limit / 2 ** 20:g} MiB)")
            out.write(chunk)
        return name, written
    finally:
        await form.close()
