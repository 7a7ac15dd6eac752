"""Dataset adapters: turn each source layout into one list of labelled audio files (paper 5.1.1).

Every adapter returns a :class:`SourceListing`: the tracks to prepare, each with an id, its labels and
its absolute path, plus the rows it had to skip (missing file, duplicate id, no label, malformed row)
with the reason. Problems with one row never stop a listing; a missing or malformed index file does.

Kinds:

``magnatagatune``
    ``ROOT/annotations_final.csv`` (tab-separated: ``clip_id``, 188 tag columns of 0/1, ``mp3_path``;
    fields may be double-quoted) and the mp3s under ROOT (or ``audio_root``). Labels: the tags set
    to 1. The clips cut from one song share a group, so they land in one split.
``album_folders``
    ``ROOT/<album>/<track>.<ext>`` (FilmMusic). Label: the album folder.
``labelled_csv``
    A CSV with ``path`` (relative to the CSV's folder, or absolute), a label column and optionally
    ``track_id`` (zalo: ``genre``).
``manifest``
    The dev corpus' ``manifest.csv`` (``path`` relative to its folder, ``track_id``, ``label_album``).
"""
from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass, field

from musicsim.audio import AUDIO_EXTENSIONS  # what album_folders picks up; anything else is listed as ignored

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
    similarity: str  # musicsim.similarity name: album, genre, label or tags
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


def _finish(listing: SourceListing) -> SourceListing:
    """Skip tracks whose file is missing and repeated track ids (the first one listed wins)."""
    first_path: dict[str, str] = {}
    kept = []
    for track in listing.tracks:
        if track.track_id in first_path:
            listing.skipped.append(_skip(track.path, track.track_id,
                                         f"duplicate track_id {track.track_id!r} (first listed for "
                                         f"{first_path[track.track_id]})"))
        elif not os.path.isfile(track.path):
            reason = "is a directory, not an audio file" if os.path.isdir(track.path) else "file not found"
            listing.skipped.append(_skip(track.path, track.track_id, reason))
        else:
            first_path[track.track_id] = track.path
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
    """Header and ``(line number, fields)`` rows of a CSV whose fields may or may not be double-quoted."""
    with open(path, newline="", encoding="utf-8-sig") as f:
        first = f.readline()
        f.seek(0)
        reader = csv.reader(f, delimiter=_sniff_delimiter(first), quotechar='"')
        rows = [(reader.line_num, row) for row in reader]
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
    listing = SourceListing(kind="magnatagatune", tracks=[], similarity="tags", multi_label=True,
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


def list_album_folders(*, root: str) -> SourceListing:
    """FilmMusic layout ``ROOT/<album>/<track>.<ext>``: label = album, track id = ``<album>__<track>``.

    Files in sub-folders of an album belong to it (``<album>__<sub>__<track>``). Hidden files, files
    directly under ROOT and files without an audio extension are listed as ignored.
    """
    root = os.path.abspath(root)
    if not os.path.isdir(root):
        raise FileNotFoundError(f"album folder root not found or not a directory: {root}")
    listing = SourceListing(kind="album_folders", tracks=[], similarity="album", multi_label=False)
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel_dir = os.path.relpath(dirpath, root)
        for filename in sorted(filenames):
            path = os.path.join(dirpath, filename)
            stem, ext = os.path.splitext(filename)
            if filename.startswith("."):
                continue
            if rel_dir == ".":
                listing.ignored.append({"path": path, "reason": "not inside an album folder"})
                continue
            if ext.lower() not in AUDIO_EXTENSIONS:
                listing.ignored.append({"path": path, "reason": f"extension {ext or '(none)'!r} is not audio"})
                continue
            album, *sub = rel_dir.split(os.sep)
            track_id = "__".join([safe_name(album)] + [safe_name(s) for s in sub] + [safe_name(stem)])
            listing.tracks.append(SourceTrack(track_id=track_id, labels=(album,), path=path))
    return _finish(listing)


def _similarity_for_column(column: str) -> str:
    # musicsim.similarity knows album, genre and label: any other column is a generic shared label.
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
    listing = SourceListing(kind="labelled_csv", tracks=[], similarity=_similarity_for_column(label_column),
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
    listing = SourceListing(kind="manifest", tracks=[], similarity="album", multi_label=False,
                            extra={"manifest": manifest})
    _list_rows(listing, manifest, os.path.dirname(manifest), header, rows, label_column="label_album")
    return _finish(listing)


def _track_id_from_path(path: str, base: str) -> str:
    """``a/b/c.ogg`` -> ``a__b__c``, relative to ``base`` when the file is under it."""
    rel = os.path.relpath(path, base)
    if rel.startswith(os.pardir):
        rel = path.lstrip(os.sep)
    return "__".join(safe_name(part) for part in os.path.splitext(rel)[0].split(os.sep))


def _list_rows(listing: SourceListing, csv_path: str, base: str, header: list[str],
               rows: list[tuple[int, list[str]]], *, label_column: str) -> None:
    """Append the rows of a path/label CSV to ``listing``: one label per track."""
    for line, row in rows:
        if len(row) != len(header):
            listing.skipped.append(_skip(csv_path, "", f"line {line}: {len(row)} fields, header has {len(header)}"))
            continue
        record = {name: value.strip() for name, value in zip(header, row)}
        if not record["path"]:
            listing.skipped.append(_skip(csv_path, record.get("track_id", ""), f"line {line}: empty path"))
            continue
        path = _resolve(record["path"], base)
        track_id = record.get("track_id") or _track_id_from_path(path, base)
        if not record[label_column]:
            listing.skipped.append(_skip(path, track_id, f"line {line}: no label in column {label_column!r}"))
            continue
        listing.tracks.append(SourceTrack(track_id=track_id, labels=(record[label_column],), path=path))
