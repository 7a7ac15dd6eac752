"""Whether a folder is this project's to replace: one manifest, one check.

Every folder this project writes whole (a prepared dataset, an index, a SavedModel export) carries
``FOLDER/musicsim.json``::

    {"format": "musicsim", "kind": "<dataset | index | saved_model | ...>", ...}

A command about to write into a folder calls :func:`check_replaceable` first: an absent or empty
folder, or one whose manifest records the same kind, may be written; any other folder is refused
untouched unless the user says ``--overwrite``. Folders written before the manifest existed carry
older markers; the caller recognises them with its ``legacy`` test.

When the manifest lists ``"entries"`` (the names the writer put in the folder), a folder that holds
anything else is no longer only ours, and is refused like a foreign one.
"""
from __future__ import annotations

import json
import os
from typing import Callable

from musicsim.atomic import write_json_atomic

MANIFEST_NAME = "musicsim.json"
MANIFEST_FORMAT = "musicsim"


class NotOurFolderError(ValueError):
    """A folder holds files this project did not write (or is not a folder): nothing was written to it."""


def write_manifest(folder: str, *, kind: str, extra: dict | None = None) -> None:
    """Mark ``folder`` as written by this project, as a folder of ``kind`` (atomically).

    Parameters
    ----------
    folder : str
        An existing folder.
    kind : str
        What the folder is (``"dataset"``, ``"index"``, ``"saved_model"``, ...).
    extra : dict, optional
        More entries for the manifest; ``"entries"`` (a list of names) makes :func:`check_replaceable`
        refuse the folder once it holds a name not listed.

    Examples
    --------
    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> write_manifest(folder, kind="index")
    >>> owned_kind(folder)
    'index'
    """
    if not kind:
        raise ValueError("kind must be a non-empty string")
    manifest = dict(extra or {})
    manifest.update(format=MANIFEST_FORMAT, kind=kind)
    write_json_atomic(os.path.join(folder, MANIFEST_NAME), manifest)


def _read_manifest(folder: str) -> dict | None:
    try:
        with open(os.path.join(folder, MANIFEST_NAME), encoding="utf-8") as f:
            manifest = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        return None
    return manifest if isinstance(manifest.get("kind"), str) else None


def owned_kind(folder: str) -> str | None:
    """The kind recorded in ``folder``'s manifest, or None (no manifest, unreadable, not ours).

    Parameters
    ----------
    folder : str
        Any path.

    Returns
    -------
    str or None
    """
    manifest = _read_manifest(folder)
    return None if manifest is None else manifest["kind"]


def _owned_by(folder: str, *, kind: str, entries: set[str]) -> bool:
    manifest = _read_manifest(folder)
    if manifest is None or manifest["kind"] != kind:
        return False
    listed = manifest.get("entries")
    if listed is None:
        return True
    return isinstance(listed, list) and entries <= set(map(str, listed)) | {MANIFEST_NAME}


def check_replaceable(folder: str, *, kind: str, overwrite: bool,
                      legacy: Callable[[str], bool] | None = None,
                      ignore: Callable[[str], bool] | None = None,
                      description: str | None = None,
                      remedy: str = "choose another folder, or pass --overwrite to replace it") -> None:
    """Raise unless ``folder`` may be written as a folder of ``kind``; writes nothing.

    ``folder`` may be written when it is absent, empty (names that ``ignore`` accepts do not count),
    owned by ``kind`` (its manifest says so and, if the manifest lists its entries, holds nothing
    else), or ``legacy(folder)`` says it is an older-format folder of ours; or when ``overwrite``.

    Parameters
    ----------
    folder : str
        Where something is about to be written.
    kind : str
        The kind the writer writes (as in :func:`write_manifest`).
    overwrite : bool
        Allow any existing folder (the user asked to replace it).
    legacy : callable of str -> bool, optional
        Recognises folders of this kind written before the manifest existed.
    ignore : callable of str -> bool, optional
        Entry names that are not content (e.g. a lock file of a build in progress).
    description : str, optional
        What such a folder is called in the error message (default: ``"a musicsim <kind> folder"``).
    remedy : str
        The last part of the error message: what the user may do.

    Raises
    ------
    NotOurFolderError
        Naming ``folder``, the reason, a few of its entries and ``remedy``.

    Examples
    --------
    >>> import os, tempfile
    >>> folder = tempfile.mkdtemp()
    >>> check_replaceable(folder, kind="index", overwrite=False)  # empty: fine
    >>> open(os.path.join(folder, "notes.txt"), "w").close()
    >>> check_replaceable(folder, kind="index", overwrite=False)
    Traceback (most recent call last):
    ...
    musicsim.owned.NotOurFolderError: ... is not empty and is not a musicsim index folder ...
    """
    if overwrite or not os.path.lexists(folder):
        return
    description = description or f"a musicsim {kind} folder"
    if not os.path.isdir(folder):
        raise NotOurFolderError(f"{folder} is a file, not a folder: {remedy}")
    try:
        names = os.listdir(folder)
    except OSError as err:
        raise NotOurFolderError(f"{folder} cannot be read ({err.strerror or err}): {remedy}") from None
    entries = sorted(name for name in names if ignore is None or not ignore(name))
    if not entries or _owned_by(folder, kind=kind, entries=set(entries)):
        return
    if legacy is not None and legacy(folder):
        return
    shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
    raise NotOurFolderError(f"{folder} is not empty and is not {description} (it holds {shown}; no "
                            f"{MANIFEST_NAME} of kind {kind!r} listing them): nothing was written; {remedy}")
