"""The collection an export embeds: a folder (searched recursively), a manifest CSV, or a prepared dataset.

`list_audio` gives each audio file's path, track id and group (`AudioEntry`), and what could not be used
(`Listing.skipped`: unreadable folders, manifest rows without a file). See `experiments.export` for the
manifest's columns and how ids and groups are chosen.
"""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field

from data_prep.sources import track_ids_from_paths
from musicsim.data.audio import AUDIO_EXTENSIONS
from musicsim.data.dataset import TRACKS_FILE, is_prepared

AUTO_GROUP_COLUMNS = ("group", "labels", "label_album", "album")
# Manifest track ids that stand for a missing value (spreadsheet and dataframe exports write these).
NULL_TRACK_IDS = ("", "null", "none", "nan", "na", "n/a")


class EmptyInputError(ValueError):
    """The collection holds nothing to embed (an empty or unmounted folder, a manifest without usable rows)."""


@dataclass(frozen=True)
class AudioEntry:
    """One file to embed."""

    track_id: str
    path: str  # absolute
    group: str | None = None


@dataclass
class Listing:
    """The files of a collection, and the rows or files that were not used (with reasons)."""

    entries: list[AudioEntry]
    skipped: list[dict] = field(default_factory=list)  # {"path", "track_id", "reason"}
    ignored: int = 0  # files without an audio extension (folder listings)


def _deduplicate(listing: Listing) -> Listing:
    """Keep the first entry of each track id; later ones are skipped with the reason."""
    first: dict[str, str] = {}
    kept = []
    for entry in listing.entries:
        if entry.track_id in first:
            listing.skipped.append({"path": entry.path, "track_id": entry.track_id,
                                    "reason": f"duplicate track_id {entry.track_id!r} (first: {first[entry.track_id]})"})
            continue
        first[entry.track_id] = entry.path
        kept.append(entry)
    listing.entries = kept
    return listing


def list_folder(root: str) -> Listing:
    """Audio files under ``root`` (recursive, hidden files and folders left out), sorted by path.

    ``group`` is the file's folder relative to ``root`` (None for files directly in ``root``).
    Two files that differ only by extension (``a.wav``, ``a.mp3``) keep the extension in their ids.
    A folder that cannot be listed (permission denied, I/O error) is skipped with its reason.

    Raises
    ------
    ValueError
        If ``root`` itself cannot be listed.
    """
    root = os.path.abspath(root)
    found, ignored, unreadable = [], 0, []

    def unlistable(err: OSError) -> None:
        folder = os.path.abspath(err.filename or root)
        if folder == root:
            raise ValueError(f"--audio={root} cannot be read: {err.strerror or err}") from err
        unreadable.append({"path": folder, "track_id": "", "unreadable_folder": True,
                           "reason": f"folder could not be read ({err.strerror or err}); its files were left out"})

    for dirpath, dirnames, filenames in os.walk(root, onerror=unlistable):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for filename in sorted(filenames):
            if filename.startswith("."):
                continue
            if os.path.splitext(filename)[1].lower() not in AUDIO_EXTENSIONS:
                ignored += 1
                continue
            found.append(os.path.join(dirpath, filename))
    entries = []
    for path, track_id in zip(found, track_ids_from_paths(found, base=root)):
        folder = os.path.relpath(os.path.dirname(path), root)
        entries.append(AudioEntry(track_id=track_id, path=path,
                                  group=None if folder == "." else folder.replace(os.sep, "/")))
    return Listing(entries=entries, skipped=unreadable, ignored=ignored)


def list_manifest(csv_path: str, *, group_column: str = "auto") -> Listing:
    """The files of a manifest CSV (see the module docstring).

    A row whose ``track_id`` is empty or a null spelling (``null``, ``NaN``, ...) is skipped with
    its line, as is a row without a path.

    Raises
    ------
    ValueError
        If the CSV cannot be read or is not UTF-8 text, has no ``path`` column, or ``group_column``
        names a column it lacks.
    """
    csv_path = os.path.abspath(csv_path)
    base = os.path.dirname(csv_path)
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            header_line = f.readline()
            f.seek(0)
            delimiter = max(("\t", ",", ";"), key=header_line.count)
            reader = csv.DictReader(f, delimiter=delimiter)
            header = [h.strip() for h in (reader.fieldnames or [])]
            rows = list(reader)
    except UnicodeDecodeError as err:
        raise ValueError(f"manifest {csv_path} is not UTF-8 text (byte {err.object[err.start:err.start + 1]!r} "
                         f"at offset {err.start}): save it as UTF-8") from None
    except (OSError, csv.Error) as err:
        raise ValueError(f"manifest {csv_path} cannot be read: {err}") from None
    if "path" not in header:
        raise ValueError(f"manifest {csv_path} has no 'path' column (columns: {header})")
    if group_column == "auto":
        group_column = next((c for c in AUTO_GROUP_COLUMNS if c in header), "none")
    elif group_column != "none" and group_column not in header:
        raise ValueError(f"manifest {csv_path} has no column {group_column!r} for --group_column "
                         f"(columns: {header})")
    listing = Listing(entries=[])
    for line, row in enumerate(rows, start=2):
        row = {(k or "").strip(): (v or "").strip() for k, v in row.items() if k is not None}
        if not row.get("path"):
            listing.skipped.append({"path": csv_path, "track_id": row.get("track_id", ""),
                                    "reason": f"line {line}: empty path"})
            continue
        path = os.path.normpath(row["path"] if os.path.isabs(row["path"]) else os.path.join(base, row["path"]))
        if "track_id" in header and row.get("track_id", "").lower() in NULL_TRACK_IDS:
            listing.skipped.append({"path": path, "track_id": row.get("track_id", ""),
                                    "reason": f"{csv_path} line {line}: empty or null track_id"})
            continue
        track_id = row.get("track_id") or track_ids_from_paths([path], base=base)[0]
        group = (row.get(group_column) or None) if group_column != "none" else None
        listing.entries.append(AudioEntry(track_id=track_id, path=path, group=group))
    return _deduplicate(listing)


def list_audio(audio: str, *, group_column: str = "auto") -> Listing:
    """A folder, a manifest CSV, or a prepared dataset folder (its ``tracks.csv``)."""
    if not os.path.exists(audio):
        raise FileNotFoundError(f"--audio={audio} does not exist")
    if os.path.isdir(audio):
        if is_prepared(audio):
            return list_manifest(os.path.join(audio, TRACKS_FILE), group_column=group_column)
        return list_folder(audio)
    if os.path.splitext(audio)[1].lower() not in (".csv", ".tsv"):
        raise ValueError(f"--audio={audio} is neither a folder nor a manifest .csv")
    return list_manifest(audio, group_column=group_column)
