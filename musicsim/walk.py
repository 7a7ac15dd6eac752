"""Listing a music library: the audio files under its folders, and what could not be listed.

:func:`walk_library` reads folders and ``stat``s files, nothing more (no audio, no tags), so a
re-scan of an unchanged library costs a listing. It follows links to folders outside the library
(each real folder is read once: a link back to a folder on its path is a loop, reported), never
links into the library (those folders and files are listed where they are); hidden entries
(``.name``) are left out, and so is whatever an ``--exclude`` glob matches (an excluded folder is
never read). What it cannot list is reported in :attr:`Listing.problems`, never raised, except a
root that cannot be read (:class:`ScanError`). ``musicsim.scan`` embeds what it lists.
"""
from __future__ import annotations

import dataclasses
import fnmatch
import hashlib
import os
import stat
from typing import Sequence

from musicsim.data.audio import AUDIO_EXTENSIONS


class ScanError(ValueError):
    """The scan cannot run: bad flags or input, another engine, a folder that is not an index (exit 2)."""


@dataclasses.dataclass(frozen=True)
class LibraryFile:
    """One audio file of the library, as the walk found it (nothing read but its ``stat``)."""

    path: str  # absolute, as reached (through links outside the library)
    root: str  # its --audio root, absolute
    relative_path: str  # to the root, '/'-separated
    size: int
    mtime_ns: int
    inode: int

    @property
    def track_id(self) -> str:
        return track_id_for(root=self.root, relative_path=self.relative_path)

    @property
    def folder(self) -> str:
        """The file's folder relative to its root ('/'-separated), or the root's name for a file at the top."""
        folder = self.relative_path.rpartition("/")[0]
        return folder or os.path.basename(self.root) or self.root


@dataclasses.dataclass
class Listing:
    """What the walk of the library found."""

    files: list[LibraryFile]
    problems: list[dict[str, str]]  # {"path", "reason"}: folders and files that could not be listed
    unreadable_folders: list[str]  # absolute: their tracks already indexed are kept
    ignored: int = 0  # files without an audio extension
    excluded: int = 0  # files and folders left out by --exclude


def track_id_for(*, root: str, relative_path: str) -> str:
    """The id of the file at ``relative_path`` under the library root ``root``: 16 hex digits of sha1.

    >>> track_id_for(root="/music", relative_path="Album/01.ogg")
    '36f82da5347c3ce4'
    """
    key = f"{os.path.abspath(root)}/{relative_path}"
    return hashlib.sha1(key.encode("utf-8", errors="surrogateescape")).hexdigest()[:16]


def _excluded(relative_path: str, name: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(relative_path, p) or fnmatch.fnmatchcase(name, p) for p in patterns)


def inside(path: str, folders: Sequence[str]) -> bool:
    """Whether ``path`` is one of ``folders`` or lies under one."""
    return any(path == folder or path.startswith(folder.rstrip(os.sep) + os.sep) for folder in folders)


def walk_library(*, roots: Sequence[str], excludes: Sequence[str] = ()) -> Listing:
    """The audio files under ``roots``, sorted by root then path (see ``musicsim.scan`` for the rules).

    Parameters
    ----------
    roots : sequence of str
        Library folders; each must be a readable folder.
    excludes : sequence of str
        ``fnmatch`` patterns matched against each entry's path relative to its root and its name.

    Returns
    -------
    Listing

    Raises
    ------
    ScanError
        If a root is missing, not a folder or cannot be listed.
    """
    roots = [os.path.abspath(r) for r in roots]
    walk = _Walk(real_roots=[os.path.realpath(r) for r in roots],
                 excludes=[pattern.rstrip("/") or pattern for pattern in excludes])  # "Podcasts/": the folder too
    for root in roots:
        try:
            root_stat = os.stat(root)
        except OSError as error:
            raise ScanError(f"--audio={root} cannot be read: {error.strerror or error}") from None
        if not stat.S_ISDIR(root_stat.st_mode):
            raise ScanError(f"--audio={root} is not a folder")
        # (folder, its path relative to the root, the (dev, inode) of the folders on its path)
        stack: list[tuple[str, str, frozenset]] = [(root, "", frozenset())]
        while stack:
            folder, relative, ancestors = stack.pop()
            opened = walk.open_folder(folder, root=root, ancestors=ancestors)
            if opened is not None:
                key, entries = opened
                stack.extend(reversed(walk.list_entries(entries, root=root, relative=relative,
                                                        ancestors=ancestors | {key})))
    return walk.listing


class _Walk:
    """One walk of the library: what it found so far, and the folders and files it has seen."""

    def __init__(self, *, real_roots: list[str], excludes: list[str]):
        self.real_roots = real_roots
        self.excludes = excludes
        self.listing = Listing(files=[], problems=[], unreadable_folders=[])
        self.seen_folders: dict[tuple[int, int], str] = {}
        self.seen_files: dict[tuple[int, int], str] = {}

    def open_folder(self, folder: str, *, root: str, ancestors: frozenset
                    ) -> tuple[tuple[int, int], list[os.DirEntry]] | None:
        """(the folder's (dev, inode), its entries by name), or None for a folder not to read (reported)."""
        listing, seen_folders = self.listing, self.seen_folders
        try:
            folder_stat = os.stat(folder)
            key = (folder_stat.st_dev, folder_stat.st_ino)
        except OSError as error:
            listing.problems.append({"path": folder, "reason": f"folder could not be read ({error.strerror})"})
            listing.unreadable_folders.append(folder)
            return None
        if key in ancestors:
            listing.problems.append({"path": folder, "reason": f"symlink loop: leads back to {seen_folders[key]}; "
                                                               "not followed"})
            return None
        if key in seen_folders:
            if folder == root:
                raise ScanError(f"--audio={root} was already scanned as {seen_folders[key]}")
            listing.problems.append({"path": folder, "reason": f"the same folder as {seen_folders[key]}, "
                                                               "already scanned; not followed"})
            return None
        seen_folders[key] = folder
        try:
            with os.scandir(folder) as iterator:
                return key, sorted(iterator, key=lambda e: e.name)
        except OSError as error:
            if folder == root:
                raise ScanError(f"--audio={root} cannot be read: {error.strerror or error}") from None
            listing.problems.append({"path": folder, "reason": f"folder could not be read ({error.strerror}); "
                                                               "its tracks already indexed are kept"})
            listing.unreadable_folders.append(folder)
            return None

    def list_entries(self, entries: list[os.DirEntry], *, root: str, relative: str, ancestors: frozenset
                     ) -> list[tuple[str, str, frozenset]]:
        """Add a folder's audio files to the listing; its subfolders to walk, in order."""
        listing = self.listing
        subfolders = []
        for entry in entries:
            name = entry.name
            if name.startswith("."):
                continue
            child_relative = f"{relative}/{name}" if relative else name
            if _excluded(child_relative, name, self.excludes):
                listing.excluded += 1
                continue
            try:
                is_folder = entry.is_dir()  # follows links
                is_link = entry.is_symlink()
            except OSError:
                is_folder, is_link = False, False
            if is_folder:
                if is_link and inside(os.path.realpath(entry.path), self.real_roots):
                    listing.problems.append({"path": entry.path, "reason": "link to a folder inside the library "
                                             f"({os.path.realpath(entry.path)}), scanned there; not followed"})
                    continue
                subfolders.append((entry.path, child_relative, ancestors))
                continue
            if os.path.splitext(name)[1].lower() not in AUDIO_EXTENSIONS:
                listing.ignored += 1
                continue
            self._add_file(entry, root=root, relative_path=child_relative, is_link=is_link)
        return subfolders

    def _add_file(self, entry: os.DirEntry, *, root: str, relative_path: str, is_link: bool) -> None:
        listing = self.listing
        try:
            file_stat = entry.stat()  # follows links
        except OSError as error:
            listing.problems.append({"path": entry.path, "reason": f"cannot be read ({error.strerror}"
                                     f"{'; a broken link' if is_link else ''})"})
            return
        if is_link and inside(os.path.realpath(entry.path), self.real_roots):
            listing.problems.append({"path": entry.path, "reason": "link to a file inside the library "
                                     f"({os.path.realpath(entry.path)}), indexed there; not followed"})
            return
        if not stat.S_ISREG(file_stat.st_mode):
            listing.problems.append({"path": entry.path, "reason": "not a regular file"})
            return
        file_key = (file_stat.st_dev, file_stat.st_ino)
        if file_key in self.seen_files:
            listing.problems.append({"path": entry.path, "reason": f"the same file as {self.seen_files[file_key]} "
                                                                   "(a link); indexed once"})
            return
        self.seen_files[file_key] = entry.path
        listing.files.append(LibraryFile(path=entry.path, root=root, relative_path=relative_path,
                                         size=int(file_stat.st_size), mtime_ns=int(file_stat.st_mtime_ns),
                                         inode=int(file_stat.st_ino)))
