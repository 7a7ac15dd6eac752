"""Dataset adapters: turn each source layout into one list of labelled audio files (paper 5.1.1).

Every adapter returns a :class:`SourceListing`: the tracks to prepare, each with an id, its labels and
its absolute path, plus the rows it had to skip (missing file, a file listed twice, duplicate id, the
same content as another file, no label, malformed row, unreadable folder) with the reason. Problems
with one row never stop a listing; a missing, malformed or undecodable (not UTF-8) index file does.
Ids an adapter derives from paths (:func:`track_ids_from_paths`) are the relative paths, Unicode kept,
so distinct files never share one.

Kinds:

``magnatagatune``
    ``ROOT/annotations_final.csv`` (tab-separated: ``clip_id``, 188 tag columns of 0/1, ``mp3_path``;
    fields may be double-quoted) and the mp3s under ROOT (or ``audio_root``). Labels: the tags set
    to 1. The clips cut from one song share a group, so they land in one split.
``album_folders``
    ``ROOT/<album>/<track>.<ext>`` (FilmMusic). Label: the album folder; id ``<album>/<track>``.
``labelled_csv``
    A CSV with ``path`` (relative to the CSV's folder, or absolute), a label column and optionally
    ``track_id`` (zalo: ``genre``).
``manifest``
    The dev corpus' ``manifest.csv`` (``path`` relative to its folder, ``track_id``, ``label_album``).
"""
from __future__ import annotations

import collections
import csv
import hashlib
import os
import re
from dataclasses import dataclass, field
from typing import Sequence

from musicsim.data.audio import AUDIO_EXTENSIONS  # what album_folders picks up; anything else is listed as ignored

KINDS = ("magnatagatune", "album_folders", "labelled_csv", "manifest")
MTAT_ANNOTATIONS = "annotations_final.csv"
MTAT_FIXED_COLUMNS = ("clip_id", "mp3_path")
MANIFEST_NAME = "manifest.csv"
# MTAT clip files end in "-<start>-<end>.mp3"; the rest of the path names the song the clip was cut from.
_MTAT_SEGMENT = re.compile(r"-\d+-\d+\.mp3$", re.IGNORECASE)


@dataclass(frozen=True)
class SourceTrack:
    """One audio file to prepare."""

    track_id: str
    labels: tuple[str, ...]
    path: str  # absolute
    group: str = ""  # tracks sharing a non-empty group go to the same split


@dataclass
class SourceListing:
    """What an adapter found: tracks, rows it skipped and files it ignored (each with a reason)."""

    kind: str
    tracks: list[SourceTrack]
    relevance: str  # musicsim.relevance name: album, genre, label or tags
    multi_label: bool
    skipped: list[dict] = field(default_factory=list)  # {"path", "track_id", "reason"}
    ignored: list[dict] = field(default_factory=list)  # {"path", "reason"}: not audio, never a track
    extra: dict = field(default_factory=dict)


def list_source(kind: str, *, input_path: str, audio_root: str | None = None,
                label_column: str = "genre") -> SourceListing:
    """List the tracks of a dataset of one ``kind`` (see the module docstring).

    Raises
    ------
    ValueError
        For an unknown kind or an index file without its required columns.
    FileNotFoundError
        When ``input_path`` (or the index file in it) does not exist.
    """
    if kind == "magnatagatune":
        return list_magnatagatune(root=input_path, audio_root=audio_root)
    if kind == "album_folders":
        return list_album_folders(root=input_path)
    if kind == "labelled_csv":
        return list_labelled_csv(csv_path=input_path, label_column=label_column)
    if kind == "manifest":
        return list_manifest(manifest=input_path)
    raise ValueError(f"unknown dataset kind {kind!r}: expected one of {KINDS}")


def safe_name(text: str) -> str:
    """``text`` with every run of characters outside ``[A-Za-z0-9._-]`` replaced by ``_``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")


def _skip(path: str, track_id: str, reason: str) -> dict:
    return {"path": path, "track_id": track_id, "reason": reason}


def file_sha256(path: str) -> str:
    """The sha256 hex digest of a file's bytes (read in chunks: memory stays small)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def repeated_content(paths: Sequence[str]) -> dict[str, tuple[str, str]]:
    """Files whose bytes repeat those of a file earlier in ``paths``.

    Only files whose size another one shares are hashed, so a listing without duplicates costs a
    ``stat`` per file. Empty and unreadable files are left to the decoder to report.

    Returns
    -------
    dict
        ``path -> (the first path with the same bytes, their sha256)`` for each repeat.
    """
    sizes = {}
    for path in paths:
        try:
            sizes[path] = os.path.getsize(path)
        except OSError:
            continue
    counts = collections.Counter(sizes.values())
    first_of: dict[str, str] = {}
    repeats = {}
    for path in paths:
        if not sizes.get(path) or counts[sizes[path]] < 2:
            continue
        try:
            digest = file_sha256(path)
        except OSError:
            continue
        if digest in first_of:
            repeats[path] = (first_of[digest], digest)
        else:
            first_of[digest] = path
    return repeats


def _finish(listing: SourceListing) -> SourceListing:
    """Skip tracks whose file is missing, files listed twice, repeated track ids and files whose content
    repeats an earlier one (the first one listed wins).

    Identical content is found by hashing only the files whose size another listed file shares.
    """
    first_id: dict[str, str] = {}  # track_id -> its path
    first_path: dict[str, str] = {}  # real path -> its track_id
    present = []
    for track in listing.tracks:
        real = os.path.realpath(track.path)
        if not os.path.isfile(track.path):
            reason = "is a directory, not an audio file" if os.path.isdir(track.path) else "file not found"
            listing.skipped.append(_skip(track.path, track.track_id, reason))
        elif track.track_id in first_id and os.path.realpath(first_id[track.track_id]) == real:
            listing.skipped.append(_skip(track.path, track.track_id, "the same file is listed twice"))
        elif track.track_id in first_id:
            listing.skipped.append(_skip(track.path, track.track_id,
                                         f"duplicate track_id {track.track_id!r} (first listed for "
                                         f"{first_id[track.track_id]})"))
        elif real in first_path:
            listing.skipped.append(_skip(track.path, track.track_id, f"the same file is listed twice (first as "
                                                                     f"track_id {first_path[real]!r})"))
        else:
            first_id[track.track_id] = track.path
            first_path[real] = track.track_id
            present.append(track)
    repeats = repeated_content([t.path for t in present])
    id_of = {t.path: t.track_id for t in present}
    kept = []
    for track in present:
        if track.path in repeats:
            original = repeats[track.path][0]
            listing.skipped.append(_skip(track.path, track.track_id, f"duplicate: the same content as {original} "
                                                                     f"(track_id {id_of[original]!r})"))
        else:
            kept.append(track)
    listing.tracks = kept
    return listing


def _require_file(path: str, what: str) -> str:
    path = os.path.abspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{what} not found: {path}")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} is not a file: {path}")
    return path


def _sniff_delimiter(header_line: str) -> str:
    """The delimiter of a CSV from its header line: tab, comma or semicolon, whichever splits it most."""
    return max(("\t", ",", ";"), key=header_line.count)


def _read_csv_rows(path: str) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """Header and ``(line number, fields)`` rows of a CSV whose fields may or may not be double-quoted.

    Raises
    ------
    ValueError
        Naming ``path``: empty, binary, not UTF-8 text, or not parseable as CSV.
    """
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            first = f.readline()
            f.seek(0)
            reader = csv.reader(f, delimiter=_sniff_delimiter(first), quotechar='"')
            rows = [(reader.line_num, row) for row in reader]
    except UnicodeDecodeError as err:
        with open(path, "rb") as f:
            binary = b"\0" in f.read(1 << 16)
        what = "a binary file, not a CSV" if binary else "not UTF-8 text"
        raise ValueError(f"{path}: {what} (byte 0x{err.object[err.start]:02x} at offset {err.start} is not "
                         "UTF-8); save the CSV as UTF-8") from None
    except csv.Error as err:
        detail = "a binary file, not a CSV" if "NUL" in str(err) else "not a readable CSV"
        raise ValueError(f"{path}: {detail} ({err})") from None
    except OSError as err:
        raise ValueError(f"{path}: cannot be read ({err.strerror or err})") from None
    if not rows:
        raise ValueError(f"{path}: empty file, expected a header row")
    header = [h.strip() for h in rows[0][1]]
    return header, [(n, r) for n, r in rows[1:] if any(v.strip() for v in r)]


def _resolve(path: str, base: str) -> str:
    return os.path.normpath(path if os.path.isabs(path) else os.path.join(base, path))


def mtat_song_key(mp3_path: str) -> str:
    """The song an MTAT clip was cut from: its ``mp3_path`` without the ``-<start>-<end>.mp3`` suffix."""
    return _MTAT_SEGMENT.sub("", mp3_path)


def list_magnatagatune(*, root: str, audio_root: str | None = None) -> SourceListing:
    """MagnaTagATune: labels are the tags set to 1 in ``annotations_final.csv``.

    Clips with no tag are kept (they are part of the dataset, similar to nothing under the tag
    similarity). Each clip's group is its song (:func:`mtat_song_key`), so the ~16 clips cut from one
    song never straddle train and test.
    """
    root = os.path.abspath(root)
    annotations = _require_file(os.path.join(root, MTAT_ANNOTATIONS) if os.path.isdir(root) else root,
                                "MagnaTagATune annotations")
    root = os.path.dirname(annotations)
    audio_root = os.path.abspath(audio_root) if audio_root else root
    header, rows = _read_csv_rows(annotations)
    missing = [c for c in MTAT_FIXED_COLUMNS if c not in header]
    if missing:
        raise ValueError(f"{annotations}: missing column(s) {missing}; header starts {header[:4]}")
    id_col, path_col = header.index("clip_id"), header.index("mp3_path")
    tag_cols = [(i, name) for i, name in enumerate(header) if name not in MTAT_FIXED_COLUMNS]
    listing = SourceListing(kind="magnatagatune", tracks=[], relevance="tags", multi_label=True,
                            extra={"tags": len(tag_cols), "annotations": annotations, "audio_root": audio_root,
                                   "groups": "song (mp3_path without -<start>-<end>.mp3)"})
    for line, row in rows:
        if len(row) != len(header):
            listing.skipped.append(_skip(annotations, "", f"line {line}: {len(row)} fields, header has "
                                                          f"{len(header)}"))
            continue
        clip_id, mp3_path = row[id_col].strip(), row[path_col].strip()
        if not clip_id or not mp3_path:
            listing.skipped.append(_skip(annotations, clip_id, f"line {line}: empty clip_id or mp3_path"))
            continue
        tags = tuple(name for i, name in tag_cols if row[i].strip() == "1")
        listing.tracks.append(SourceTrack(track_id=clip_id, labels=tags, path=_resolve(mp3_path, audio_root),
                                          group="song:" + mtat_song_key(mp3_path)))
    return _finish(listing)


def track_ids_from_paths(paths: Sequence[str], *, base: str) -> list[str]:
    """Unique, readable track ids of distinct files: each path relative to ``base``, ``/``-separated.

    ``base/Песни/01.ogg`` -> ``Песни/01``: Unicode, spaces and punctuation are kept, so distinct files
    never share an id. Files that would share one because they differ only by extension
    (``t.flac``, ``t.ogg``) keep their extensions (``t.flac``). A file outside ``base`` is named by
    its absolute path.

    Parameters
    ----------
    paths : sequence of str
        Absolute paths of distinct files.
    base : str
        The folder ids are relative to.

    Returns
    -------
    list of str, one id per path
    """
    def relative(path: str) -> str:
        rel = os.path.relpath(path, base)
        return (path if rel.startswith(os.pardir) else rel).replace(os.sep, "/")

    stems = [os.path.splitext(relative(path))[0] for path in paths]
    counts = collections.Counter(os.path.splitext(rel)[0] for rel in {relative(path) for path in paths})
    return [relative(path) if counts[stem] > 1 else stem for path, stem in zip(paths, stems)]


def list_album_folders(*, root: str) -> SourceListing:
    """FilmMusic layout ``ROOT/<album>/<track>.<ext>``: label = album, track id = ``<album>/<track>``
    (:func:`track_ids_from_paths`).

    Files in sub-folders of an album belong to it (``<album>/<sub>/<track>``). Hidden files, files
    directly under ROOT and files without an audio extension are listed as ignored; a folder that
    cannot be read (permission denied, I/O error) is listed as skipped, with the reason.

    Raises
    ------
    FileNotFoundError
        When ``root`` is not a folder.
    ValueError
        When ``root`` itself cannot be read.
    """
    root = os.path.abspath(root)
    if not os.path.isdir(root):
        raise FileNotFoundError(f"album folder root not found or not a directory: {root}")
    listing = SourceListing(kind="album_folders", tracks=[], relevance="album", multi_label=False)

    def unreadable(err: OSError) -> None:
        folder = os.path.abspath(err.filename or root)
        if folder == root:
            raise ValueError(f"album folder root {root} cannot be read: {err.strerror or err}") from err
        listing.skipped.append(_skip(folder, "", f"folder could not be read ({err.strerror or err}); "
                                                 "its files were left out"))

    found: list[tuple[str, str]] = []  # (path, album)
    for dirpath, dirnames, filenames in os.walk(root, onerror=unreadable):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel_dir = os.path.relpath(dirpath, root)
        for filename in sorted(filenames):
            path = os.path.join(dirpath, filename)
            ext = os.path.splitext(filename)[1]
            if filename.startswith("."):
                continue
            if rel_dir == ".":
                listing.ignored.append({"path": path, "reason": "not inside an album folder"})
                continue
            if ext.lower() not in AUDIO_EXTENSIONS:
                listing.ignored.append({"path": path, "reason": f"extension {ext or '(none)'!r} is not audio"})
                continue
            found.append((path, rel_dir.split(os.sep)[0]))
    ids = track_ids_from_paths([path for path, _ in found], base=root)
    listing.tracks = [SourceTrack(track_id=track_id, labels=(album,), path=path)
                      for (path, album), track_id in zip(found, ids)]
    return _finish(listing)


def _relevance_for_column(column: str) -> str:
    # musicsim.relevance knows album, genre and label: any other column is a generic shared label.
    return column.lower() if column.lower() in ("album", "genre") else "label"


def list_labelled_csv(*, csv_path: str, label_column: str = "genre") -> SourceListing:
    """A CSV of ``path`` and a label column (``track_id`` optional; else derived from the path).

    Raises
    ------
    ValueError
        When the CSV lacks ``path`` or ``label_column``.
    """
    csv_path = _require_file(csv_path, "labelled CSV")
    base = os.path.dirname(csv_path)
    header, rows = _read_csv_rows(csv_path)
    for column in ("path", label_column):
        if column not in header:
            raise ValueError(f"{csv_path}: no column {column!r} (columns: {header}); "
                             "set --label_column to the column holding the labels")
    listing = SourceListing(kind="labelled_csv", tracks=[], relevance=_relevance_for_column(label_column),
                            multi_label=False, extra={"label_column": label_column, "csv": csv_path})
    _list_rows(listing, csv_path, base, header, rows, label_column=label_column)
    return _finish(listing)


def list_manifest(*, manifest: str) -> SourceListing:
    """The dev corpus' ``manifest.csv`` (or its folder): label = ``label_album``."""
    manifest = os.path.abspath(manifest)
    if os.path.isdir(manifest):
        manifest = os.path.join(manifest, MANIFEST_NAME)
    manifest = _require_file(manifest, "manifest")
    header, rows = _read_csv_rows(manifest)
    missing = [c for c in ("path", "track_id", "label_album") if c not in header]
    if missing:
        raise ValueError(f"{manifest}: missing column(s) {missing} (columns: {header})")
    listing = SourceListing(kind="manifest", tracks=[], relevance="album", multi_label=False,
                            extra={"manifest": manifest})
    _list_rows(listing, manifest, os.path.dirname(manifest), header, rows, label_column="label_album")
    return _finish(listing)


def _list_rows(listing: SourceListing, csv_path: str, base: str, header: list[str],
               rows: list[tuple[int, list[str]]], *, label_column: str) -> None:
    """Append the rows of a path/label CSV to ``listing``: one label per track.

    A row without a ``track_id`` is named by its path (:func:`track_ids_from_paths`, relative to ``base``).
    """
    pending: list[tuple[str, str, str, int]] = []  # (path, track_id or "" to derive, label, line)
    for line, row in rows:
        if len(row) != len(header):
            listing.skipped.append(_skip(csv_path, "", f"line {line}: {len(row)} fields, header has {len(header)}"))
            continue
        record = {name: value.strip() for name, value in zip(header, row)}
        if not record["path"]:
            listing.skipped.append(_skip(csv_path, record.get("track_id", ""), f"line {line}: empty path"))
            continue
        path = _resolve(record["path"], base)
        pending.append((path, record.get("track_id", ""), record[label_column], line))
    derived = iter(track_ids_from_paths([path for path, track_id, _, _ in pending if not track_id], base=base))
    for path, track_id, label, line in pending:
        track_id = track_id or next(derived)
        if not label:
            listing.skipped.append(_skip(path, track_id, f"line {line}: no label in column {label_column!r}"))
            continue
        listing.tracks.append(SourceTrack(track_id=track_id, labels=(label,), path=path))
