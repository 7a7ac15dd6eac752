"""Live reload: the service of the index version in use, replaced when the index gets a new version.

The index is followed while serving: a background thread looks at its ``config.json`` every
``reload_interval_s`` seconds (one ``stat``) and, when an index command or a scan has written a
new version, loads it and swaps it in (``ServiceHolder``). A request takes the service of the
version current when it starts and answers from it to the end; later requests see the new tracks,
and removed tracks (their audio and art included) are no longer served.
"""
from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import warnings
from typing import Iterator

from musicsim.index import CONFIG_FILE, IndexBackend
from musicsim.index.storage import read_version
from musicsim.search.service import SearchService, ServingResources
from musicsim.search.uploads import DEFAULT_MAX_UPLOAD_MB, check_upload_limit, finite_in

LOG = logging.getLogger("musicsim.search")
DEFAULT_RELOAD_INTERVAL_S = 1.0
MAX_RELOAD_INTERVAL_S = 3600.0
# A replaced service is closed once no request holds it and it has been out of use this long (callers
# that took ``holder.current`` without a lease, such as a router's handler, finish well within it).
RETIRE_GRACE_S = 30.0


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
                or not finite_in(0.0, MAX_RELOAD_INTERVAL_S, low_open=False)(float(reload_interval_s)):
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
                    LOG.warning("the index %s changed but cannot be loaded (still serving the previous version): %s",
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
            LOG.info("serving index version %s: %d tracks", service.version, len(service.track_ids))
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
            shared = service.index.shares_connection_with(current.index)
            if shared and service is not current:
                service.close(release_index=False)
            else:
                service.close()

    def _watch(self) -> None:
        while not self._stop.wait(self.reload_interval_s):
            try:
                self.check_now()
            except Exception:  # noqa: BLE001 - the watcher must outlive any one failure
                LOG.exception("looking for a new index version failed")

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
