"""One writer at a time on an index directory.

Every command that writes an index (``index build / add / remove``, ``musicsim.scan``) runs inside
``index_lock(INDEX_DIR, wait=..., command=...)``. The lock is an OS lock (``flock`` through
``filelock``) on the sibling file ``INDEX_DIR.lock``: a sibling, so a writer may create, replace or
swap the index folder itself while it holds the lock, and an OS lock, so the kernel frees it when its
holder dies (kill -9 included) and the next writer takes it over with no stale-lock cleanup.

Who holds it (command, pid, host, start time) is written to ``INDEX_DIR.lock.json`` once the lock is
taken, and removed when it is released; only the message of a refused or waiting writer reads it (a
record left by a killed holder is ignored once its pid is gone: the lock itself is what counts).

>>> import tempfile, os
>>> folder = os.path.join(tempfile.mkdtemp(), "idx")
>>> with index_lock(folder, wait=False, command="index add"):
...     holder_of(folder)["command"]
'index add'
"""
from __future__ import annotations

import contextlib
import datetime
import json
import os
import socket
import sys
from typing import Any, Iterator

from filelock import FileLock, Timeout

from musicsim.index.errors import IndexFileError
from musicsim.workers import process_alive

LOCK_SUFFIX = ".lock"
HOLDER_SUFFIX = ".lock.json"


class IndexLockedError(IndexFileError):
    """Another writer holds the index's lock; the message names it (command, pid, host, since when)."""


def lock_path(index_dir: str) -> str:
    """The lock file of ``index_dir``: its sibling ``INDEX_DIR.lock``."""
    return os.path.abspath(index_dir).rstrip(os.sep) + LOCK_SUFFIX


def holder_path(index_dir: str) -> str:
    """The holder record of ``index_dir``'s lock: ``INDEX_DIR.lock.json``."""
    return os.path.abspath(index_dir).rstrip(os.sep) + HOLDER_SUFFIX


def holder_of(index_dir: str) -> dict[str, Any] | None:
    """The last recorded holder of ``index_dir``'s lock (``command``, ``pid``, ``host``, ``since``), or None
    when no record can be read. It is only a description: whether the lock is held is the OS lock's say."""
    try:
        with open(holder_path(index_dir)) as f:
            record = json.load(f)
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def describe_holder(index_dir: str) -> str:
    """``'index add' (pid 123 on host, since 2026-01-01T10:00:00Z)``, or ``another process`` when unknown (no
    record yet, or one a dead process of this host left)."""
    record = holder_of(index_dir)
    if not record:
        return "another process"
    pid = record.get("pid")
    if record.get("host") == socket.gethostname() and isinstance(pid, int) and not process_alive(pid):
        return "another process"
    return (f"{record.get('command', 'a writer')!r} (pid {record.get('pid', '?')} on {record.get('host', '?')}, "
            f"since {record.get('since', '?')})")


def _write_holder(index_dir: str, *, command: str) -> None:
    record = {"command": command, "pid": os.getpid(), "host": socket.gethostname(),
              "since": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
    path = holder_path(index_dir)
    temp = f"{path}.tmp-{os.getpid()}"
    with open(temp, "w") as f:
        json.dump(record, f)
    os.replace(temp, path)  # a reader never sees half a record


@contextlib.contextmanager
def index_lock(index_dir: str, *, wait: bool, command: str) -> Iterator[None]:
    """Hold the write lock of ``index_dir`` for the body of the ``with``.

    Parameters
    ----------
    index_dir : str
        The index directory (it need not exist yet; its parent is created).
    wait : bool
        Held by another process: False raises ``IndexLockedError`` at once; True prints
        ``waiting for <holder>`` once on stderr and blocks until the lock is free.
    command : str
        What this writer is (e.g. ``index add``), recorded for the message of the next one.

    Raises
    ------
    IndexLockedError
        ``wait=False`` and another process holds the lock (the message names the holder).
    """
    index_dir = os.path.abspath(index_dir)
    os.makedirs(os.path.dirname(index_dir) or ".", exist_ok=True)
    # thread_local=False: the lock belongs to the process (a writer may finish in another thread);
    # fallback_to_soft=False: a soft (file-exists) lock would outlive a killed holder.
    lock = FileLock(lock_path(index_dir), thread_local=False, fallback_to_soft=False, preserve_lock_file=True)
    try:
        lock.acquire(blocking=False)
    except Timeout:
        holder = describe_holder(index_dir)
        if not wait:
            raise IndexLockedError(f"the index {index_dir} is being written by {holder}; try again when it "
                                   "finishes, or pass --wait to wait for it") from None
        print(f"waiting for {holder} to finish writing {index_dir} ...", file=sys.stderr, flush=True)
        lock.acquire()
    try:
        _write_holder(index_dir, command=command)
        yield
    finally:
        record = holder_of(index_dir)
        if record and record.get("pid") == os.getpid():
            with contextlib.suppress(OSError):
                os.remove(holder_path(index_dir))
        lock.release()


__all__ = ["IndexLockedError", "describe_holder", "holder_of", "holder_path", "index_lock", "lock_path"]
