"""Worker processes that never outlive the process that started them.

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

import os
import threading
import time

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
