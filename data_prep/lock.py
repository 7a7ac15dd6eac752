"""One build at a time per output folder: a lock file naming its owner, and the folder's claim mark.

``DIR/.build.lock`` holds the owning process's pid, host and start time (JSON). It is created with an
atomic hard link of a complete temp file, so a reader never sees half a lock and only one of two
racing builds wins. A lock whose owner is gone (same host, no such process, or a later process with
the same pid) is stale: the next build takes it over. A lock held on another host cannot be checked
from here, so it is refused with instructions.

``DIR/musicsim.json`` (``musicsim.owned``, kind ``"dataset"``) marks a folder as a dataset folder of
``data_prep.build`` from the start of its first build (``dataset.json`` only appears once a build
finishes), so a build refuses to write into, and never deletes from, a non-empty folder that is not one.
"""
from __future__ import annotations

import json
import os
import socket
import time
import uuid

from musicsim.data.dataset import DATASET_INFO_FILE
from musicsim.owned import check_replaceable, owned_kind, write_manifest

LOCK_NAME = ".build.lock"
DATASET_KIND = "dataset"  # the kind in the folder's musicsim.owned manifest
CLAIM_NAME = ".musicsim-dataset"  # the mark of dataset folders claimed before the manifest existed
# Keys every dataset.json that data_prep.build writes has (musicsim.data.dataset.DatasetInfo).
_DATASET_INFO_KEYS = {"name", "kind", "sample_rate", "pool_size"}


class OutputLockedError(Exception):
    """Another build holds the output folder's lock; the message names it and what to do."""


def _process_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux ``/proc``), or None when unknown."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            # The command name (field 2) may hold spaces and parentheses: split after its closing one.
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(pid: int, start: str | None) -> bool:
    """Whether ``pid`` is still the process that wrote the lock (a reused pid is not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by another user
    current = _process_start(pid)
    return start is None or current is None or current == start


def _read_owner(path: str) -> dict | None:
    try:
        with open(path) as f:
            owner = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}  # unreadable: treated as held, the message says so
    return owner if isinstance(owner, dict) else {}


def _describe(owner: dict) -> str:
    if not owner:
        return "an unreadable lock"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(owner.get("time", 0)))
    return f"pid {owner.get('pid')} on host {owner.get('host')}, since {since}"


class OutputLock:
    """The lock of one output folder, held from :meth:`acquire` to :meth:`release` (or the ``with`` block).

    Parameters
    ----------
    folder : str
        The output folder (created if missing).
    """

    def __init__(self, folder: str):
        self.folder = os.path.abspath(folder)
        self.path = os.path.join(self.folder, LOCK_NAME)
        self.token = uuid.uuid4().hex
        self.held = False

    def acquire(self) -> "OutputLock":
        """Take the lock, taking over a stale one.

        Raises
        ------
        OutputLockedError
            When a live build (or one on another host, or an unreadable lock) holds it.
        """
        os.makedirs(self.folder, exist_ok=True)
        pid = os.getpid()
        owner = {"pid": pid, "host": socket.gethostname(), "start": _process_start(pid), "time": time.time(),
                 "token": self.token}
        temp = f"{self.path}.{self.token}"
        with open(temp, "w") as f:
            json.dump(owner, f)
        try:
            for _ in range(3):  # a stale lock is moved aside, then the link is tried again
                try:
                    os.link(temp, self.path)
                    self.held = True
                    return self
                except FileExistsError:
                    pass
                current = _read_owner(self.path)
                if current is None:
                    continue  # released meanwhile
                if not self._is_stale(current):
                    raise OutputLockedError(
                        f"{self.folder} is being built by another data_prep.build ({_describe(current)}): wait "
                        f"for it to finish, or remove {self.path} if that build is no longer running")
                aside = f"{self.path}.stale-{self.token}"
                try:
                    os.rename(self.path, aside)  # only one of two racing builds moves it
                except FileNotFoundError:
                    continue
                moved = _read_owner(aside)
                if moved is not None and moved.get("token") != current.get("token"):
                    os.rename(aside, self.path)  # a live build's fresh lock: put it back, look again
                    continue
                os.remove(aside)
            raise OutputLockedError(f"{self.folder}: could not take the build lock {self.path}; try again")
        finally:
            os.remove(temp)

    @staticmethod
    def _is_stale(owner: dict) -> bool:
        if not owner or owner.get("host") != socket.gethostname():
            return False
        try:
            pid = int(owner["pid"])
        except (KeyError, TypeError, ValueError):
            return False
        return not _alive(pid, owner.get("start"))

    def release(self) -> None:
        """Remove the lock if this object still holds it."""
        if not self.held:
            return
        self.held = False
        current = _read_owner(self.path)
        if current and current.get("token") == self.token:
            os.remove(self.path)

    def __enter__(self) -> "OutputLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _is_legacy_dataset(folder: str) -> bool:
    """A dataset folder written before the manifest: the claim mark, or a complete ``dataset.json``."""
    if os.path.exists(os.path.join(folder, CLAIM_NAME)):
        return True
    try:
        with open(os.path.join(folder, DATASET_INFO_FILE)) as f:
            info = json.load(f)
    except (OSError, ValueError):
        return False
    return isinstance(info, dict) and _DATASET_INFO_KEYS <= set(info)


def _is_lock_file(name: str) -> bool:
    return name == LOCK_NAME or name.startswith(LOCK_NAME + ".")


def check_output_folder(folder: str) -> None:
    """Refuse a non-empty ``folder`` that is not a dataset folder; writes nothing.

    A folder is one when its manifest (``musicsim.owned``) says kind ``"dataset"``, or it holds the
    claim mark or a ``dataset.json`` of ``data_prep.build`` (datasets built before the manifest). A
    missing or empty folder (lock files aside) is fine.

    Raises
    ------
    musicsim.owned.NotOurFolderError
        Naming ``folder`` and a few of its entries.
    """
    check_replaceable(os.path.abspath(folder), kind=DATASET_KIND, overwrite=False, legacy=_is_legacy_dataset,
                      ignore=_is_lock_file, description="a dataset folder of data_prep.build",
                      remedy="choose a new or empty --output folder")


def claim_output_folder(folder: str) -> None:
    """:func:`check_output_folder`, then mark ``folder`` as a dataset folder (hold its lock)."""
    check_output_folder(folder)
    folder = os.path.abspath(folder)
    if owned_kind(folder) != DATASET_KIND:
        write_manifest(folder, kind=DATASET_KIND)
