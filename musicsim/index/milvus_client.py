"""Milvus itself, for the milvus backend (``musicsim.index.milvus``): ``connect`` / ``disconnect``, the collection's
schema (``create_collection``, ``collection_problem``), the escaping of filter literals, and the quieting of
pymilvus's and Milvus Lite's logs.

pymilvus and milvus-lite are optional dependencies (only the milvus backend needs them), so they are
imported inside the functions that use them, never at import.

Milvus Lite and grpc log harmless internals at ERROR with tracebacks (grpc's Python server logs
``AllocTimestamp``, which milvus-lite does not implement and pymilvus calls after creating an index;
milvus-lite's server manager logs the ``DataDirLockedError`` that ``connect`` reports in one line);
``_silence_known_noise`` drops exactly those records.
"""
from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from collections import Counter
from typing import Any, Iterable, Iterator

from musicsim.index.errors import IndexFileError

MAX_STRING_LENGTH = 65_535
# The fields of a collection: the primary key, the searched vector, the metadata and the raw vector (JSON).
FIELDS = ("track_id", "vector", "group", "path", "model", "model_dir", "extra", "raw")
REMOTE_SCHEMES = ("http://", "https://", "tcp://", "grpc://", "unix:")
# Open MilvusIndex objects per Milvus Lite file in this process: the embedded server (and the file's
# lock) is released when the last one closes, so that another process can open the file.
_LITE_USERS: Counter = Counter()


def is_local_uri(uri: str) -> bool:
    """True for a Milvus Lite file path, False for a server URI."""
    return not uri.startswith(REMOTE_SCHEMES)


def milvus_string(value: str) -> str:
    """``value`` as a double-quoted Milvus filter literal (backslash, quote, newline, CR and tab escaped)."""
    escaped = (value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
               .replace("\t", "\\t"))
    return f'"{escaped}"'


def milvus_list(values: Iterable[str]) -> str:
    return "[" + ", ".join(milvus_string(v) for v in values) + "]"


@contextlib.contextmanager
def quiet_pymilvus() -> Iterator[None]:
    """pymilvus logs every failed call at ERROR (and iterators at WARNING); errors reach the caller
    as exceptions with their reason, so the log lines only repeat them."""
    logger = logging.getLogger("pymilvus")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


class _KnownNoise(logging.Filter):
    """Drops the log records of one logger whose exception is of ``error_type`` and whose text holds ``text``."""

    def __init__(self, *, error_type: str, text: str) -> None:
        super().__init__()
        self.error_type, self.text = error_type, text

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if error is not None:
            return not (type(error).__name__ == self.error_type and self.text in str(error))
        return self.text not in record.getMessage()


_NOISE = {
    # grpc's in-process server (milvus-lite) logs the traceback of every unimplemented method pymilvus calls:
    # AllocTimestamp, after each index creation, although the call's failure is handled.
    "grpc._server": _KnownNoise(error_type="NotImplementedError", text="Method not implemented"),
    # milvus-lite logs the lock conflict with its traceback before pymilvus raises it; connect() says it in one line.
    "milvus_lite.server_manager": _KnownNoise(error_type="DataDirLockedError", text="another process holds the lock"),
    # pymilvus logs a failed connection before raising it; connect() reports it.
    "pymilvus.milvus_client._utils": _KnownNoise(error_type="", text="Failed to create new connection"),
}


def _silence_known_noise() -> None:
    """Install the filters of ``_NOISE`` (once): each drops one known, handled error's log records only."""
    for name, noise_filter in _NOISE.items():
        logger = logging.getLogger(name)
        if noise_filter not in logger.filters:
            logger.addFilter(noise_filter)


def _lite_file_locked(path: str) -> bool:
    """Whether another process holds Milvus Lite's lock on the data directory ``path``."""
    lock_path = os.path.join(path, "LOCK")
    if not os.path.isfile(lock_path):
        return False
    with open(lock_path, "a") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(f.fileno(), fcntl.LOCK_UN)
    return False


def connect(*, uri: str) -> Any:
    """A ``pymilvus.MilvusClient`` for ``uri``.

    Raises
    ------
    IndexFileError
        If pymilvus is missing, a local path does not end in ``.db``, another process holds the
        Milvus Lite file, or the server cannot be reached.
    """
    try:
        from pymilvus import MilvusClient  # optional: only the milvus backend needs it
    except ImportError as error:
        raise IndexFileError("the milvus backend needs pymilvus (and milvus-lite for a local file): "
                             f"{error}") from error
    _silence_known_noise()
    if is_local_uri(uri):
        if not uri.endswith(".db"):
            raise IndexFileError(f"a Milvus Lite file path must end in .db, got {uri!r} (or give http://host:19530)")
        uri = os.path.abspath(uri)
        os.makedirs(os.path.dirname(uri), exist_ok=True)
    try:
        with quiet_pymilvus():
            client = MilvusClient(uri=uri)
        if is_local_uri(uri):
            _LITE_USERS[uri] += 1
        return client
    except Exception as error:  # noqa: BLE001 - pymilvus raises several unrelated types here
        if is_local_uri(uri) and _lite_file_locked(uri):
            raise IndexFileError(f"cannot open the Milvus Lite file {uri}: another process has it open "
                                 "(Milvus Lite allows one process at a time on a file)") from error
        raise IndexFileError(f"cannot open Milvus at {uri}: {error}") from error


def disconnect(*, client: Any, uri: str) -> None:
    """Close a client of ``connect``; for Milvus Lite, the last one of a file in this process stops its embedded
    server, which frees the file for other processes.

    pymilvus shares one connection between the clients of one address: closing it while another index of
    this process still uses the file would break that index (``ConnectionNotExistException``), so only the
    file's last client closes it.
    """
    if not is_local_uri(uri):
        with quiet_pymilvus():
            client.close()
        return
    uri = os.path.abspath(uri)
    _LITE_USERS[uri] -= 1
    if _LITE_USERS[uri] > 0:
        return
    del _LITE_USERS[uri]
    with quiet_pymilvus():
        client.close()
    from milvus_lite.server_manager import server_manager_instance  # optional, as pymilvus

    server_manager_instance.release_server(uri)


def create_collection(client: Any, *, name: str, uri: str, dim: int, metric: str, approximate: str | None,
                      nlist: int | None, hnsw_m: int, ef_construction: int) -> None:
    """Create the collection ``name`` of ``FIELDS`` for ``dim``-d vectors, searched by ``metric`` (``IP`` or
    ``L2``) through a FLAT, IVF_FLAT (``nlist``) or HNSW (``hnsw_m``, ``ef_construction``) index."""
    from pymilvus import DataType  # optional: only the milvus backend needs it

    schema = client.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("track_id", DataType.VARCHAR, is_primary=True, max_length=MAX_STRING_LENGTH)
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)
    for field in ("group", "path", "model", "model_dir"):
        schema.add_field(field, DataType.VARCHAR, max_length=MAX_STRING_LENGTH, nullable=True)
    schema.add_field("extra", DataType.JSON, nullable=True)
    schema.add_field("raw", DataType.JSON, nullable=True)  # the raw vector, when the index standardises
    index_type, build = {"ivf": ("IVF_FLAT", {"nlist": int(nlist or 1)}),
                         "hnsw": ("HNSW", {"M": hnsw_m, "efConstruction": ef_construction})
                         }.get(approximate, ("FLAT", {}))
    if build and is_local_uri(uri):
        # pymilvus 2.5 sends each build parameter as its own key; milvus-lite 3.2 reads only a
        # "params" key (and would silently build 128 IVF lists instead of nlist).
        build = dict(build, params=dict(build))
    index_params = client.prepare_index_params()
    index_params.add_index(field_name="vector", index_type=index_type, metric_type=metric, params=build)
    client.create_collection(name, schema=schema, index_params=index_params, consistency_level="Strong")


def collection_fields(client: Any, *, name: str) -> dict[str, dict[str, Any]]:
    """The fields of the collection ``name``, by field name."""
    return {field["name"]: field for field in client.describe_collection(name)["fields"]}


def collection_problem(fields: dict[str, dict[str, Any]], *, name: str, uri: str, dim: int,
                       standardise: bool) -> str | None:
    """Why a collection of ``fields`` cannot be an index of ``dim``-d vectors (that ``standardise``s), or None."""
    stored_dim = (fields.get("vector") or {}).get("params", {}).get("dim")
    if stored_dim is None or int(stored_dim) != dim or "track_id" not in fields:
        return f"the collection {name!r} at {uri} holds {stored_dim}-d vectors, the index {dim}-d ones"
    if standardise and "raw" not in fields:
        return f"a standardising index, but the collection {name!r} keeps no raw vectors"
    return None
