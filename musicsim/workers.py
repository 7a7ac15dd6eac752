"""Worker processes that never outlive the process that started them, and decoding files in them.

A ``concurrent.futures`` pool worker waits on its task queue for ever once its parent is killed
(SIGKILL leaves no chance to shut the pool down). ``exit_with_parent`` is a pool initializer: a
daemon thread checks that the process that made the pool is still alive and ends the worker when
it is gone. It watches that process by pid rather than the worker's own parent, because a
``forkserver`` worker's parent is the fork server, which every worker keeps alive (each holds the
server's liveness pipe).

>>> import concurrent.futures, multiprocessing, os
>>> pool = concurrent.futures.ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn"),
...     initializer=exit_with_parent, initargs=(os.getpid(),))  # doctest: +SKIP
"""
from __future__ import annotations

import collections
import concurrent.futures
import multiprocessing
import os
import threading
import time
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Callable, Iterator, Sequence

from musicsim.data.audio import DecodeResult, decode_track

PARENT_POLL_SECONDS = 0.5


def process_alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie, killed but not yet reaped, is not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except OSError:  # no /proc: ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


def exit_with_parent(parent_pid: int) -> None:
    """Pool-worker initializer: end this process as soon as ``parent_pid`` (the pool's maker) is gone."""
    def watch() -> None:
        while process_alive(parent_pid):
            time.sleep(PARENT_POLL_SECONDS)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _decode_pool(workers: int) -> concurrent.futures.ProcessPoolExecutor:
    """A pool of ``workers`` spawned processes that end when this process does."""
    # fork is unsafe once TensorFlow has started threads
    return concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                                  initializer=exit_with_parent, initargs=(os.getpid(),))


def _run_alone(decode: Callable[[str, Any], DecodeResult], path: str, settings: Any) -> DecodeResult:
    """Decode one file in a fresh one-worker pool: tells which file kills its worker process."""
    with _decode_pool(1) as pool:
        try:
            return pool.submit(decode, path, settings).result()
        except BrokenProcessPool:
            return DecodeResult(pooled=None, seconds=0.0,
                                reason="the decoder crashed its worker process (BrokenProcessPool)")


def decode_in_order(paths: Sequence[str], *, settings: Any, workers: int,
                    decode: Callable[[str, Any], DecodeResult] | None = None) -> Iterator[DecodeResult]:
    """Decode ``paths`` in ``workers`` processes and yield the results in the order of ``paths``.

    At most ``4 * workers`` files are in flight, so memory stays bounded however many are left.
    A file that kills its worker process (a crashing decoder) is found by retrying the files that
    were in flight one by one, and reported; the pool is restarted and the run goes on.

    Parameters
    ----------
    paths : sequence of str
    settings : object
        Passed to ``decode`` with each path (``musicsim.data.audio.DecodeSettings`` for the default).
    workers : int
        Processes; 1 (or a single path) decodes in this process.
    decode : callable ``(path, settings) -> musicsim.data.audio.DecodeResult``, optional
        A module-level function (it is pickled to spawned workers) that never raises
        (``musicsim.chroma.decode_chroma``, ...); default ``musicsim.data.audio.decode_track``.

    Yields
    ------
    musicsim.data.audio.DecodeResult, one per path, in order
    """
    if decode is None:
        decode = decode_track
    if workers <= 1 or len(paths) <= 1:
        for path in paths:
            yield decode(path, settings)
        return
    workers = min(workers, len(paths))
    todo = collections.deque(paths)
    in_flight: collections.deque = collections.deque()
    pool = _decode_pool(workers)
    try:
        while todo or in_flight:
            while todo and len(in_flight) < 4 * workers:
                path = todo.popleft()
                in_flight.append((path, pool.submit(decode, path, settings)))
            path, future = in_flight.popleft()
            try:
                yield future.result()
            except BrokenProcessPool:
                suspects = [path] + [p for p, _ in in_flight]
                in_flight.clear()
                pool.shutdown(wait=False, cancel_futures=True)
                for suspect in suspects:
                    yield _run_alone(decode, suspect, settings)
                pool = _decode_pool(workers)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
