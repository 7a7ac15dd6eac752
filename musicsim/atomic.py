"""Files that readers never see half-written: write a temporary sibling, then rename it into place.

Every file this project writes in place (catalogs, configs, caches, manifests, records) goes through
here, so a crash or a full disk leaves the old file (or none), never a truncated one, and the
temporary is removed on failure. The temporary is ``PATH.tmp-<pid>-<8 hex>`` beside ``PATH`` (the
same file system, so the rename is atomic); a dataset build sweeps such leftovers of killed runs.
"""
from __future__ import annotations

import json
import os
import uuid
from contextlib import contextmanager
from typing import IO, Any, Iterator


def temporary_sibling(path: str) -> str:
    """A fresh temporary name beside ``path``: ``PATH.tmp-<pid>-<8 hex>`` (unique per process and call).

    >>> temporary_sibling("/data/tracks.csv").startswith("/data/tracks.csv.tmp-")
    True
    """
    return f"{path}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"


@contextmanager
def atomic_path(path: str, *, make_dirs: bool = False) -> Iterator[str]:
    """Yield a temporary path to write ``path`` through; renamed onto ``path`` when the block succeeds.

    For writers that want a file name (``np.save``, ``tf.io.TFRecordWriter``). On any exception the
    temporary is removed and ``path`` is left as it was.

    Parameters
    ----------
    path : the file to (re)place
    make_dirs : create ``path``'s folder first when it is missing
    """
    if make_dirs:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    temporary = temporary_sibling(path)
    try:
        yield temporary
        os.replace(temporary, path)
    except BaseException:
        if os.path.lexists(temporary):
            os.remove(temporary)
        raise


@contextmanager
def atomic_open(path: str, mode: str = "w", *, make_dirs: bool = False, **open_kwargs: Any) -> Iterator[IO]:
    """``open(path, mode)`` through a temporary sibling (see `atomic_path`); ``mode`` is ``"w"`` or ``"wb"``.

    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> with atomic_open(os.path.join(folder, "a.txt")) as f:
    ...     _ = f.write("whole")
    >>> open(os.path.join(folder, "a.txt")).read()
    'whole'
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes a whole file: mode must be 'w' or 'wb', got {mode!r}")
    if "b" not in mode:
        open_kwargs.setdefault("encoding", "utf-8")
    with atomic_path(path, make_dirs=make_dirs) as temporary:
        with open(temporary, mode, **open_kwargs) as f:
            yield f


def write_json_atomic(path: str, payload: Any, *, make_dirs: bool = False) -> None:
    """Write ``payload`` as indented, key-sorted JSON to ``path`` atomically (non-JSON values as ``str``)."""
    with atomic_open(path, make_dirs=make_dirs) as f:
        json.dump(payload, f, indent=1, sort_keys=True, default=str)
