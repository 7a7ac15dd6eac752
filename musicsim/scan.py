"""Scan a music library in place into an index, and keep the index up to date with it.

    python -m musicsim.scan --audio=DIR [--audio=DIR2 ...] --index=INDEX [--exclude=GLOB ...]
        [--workers=N] [--model_dir=RUN] [--rebuild] [--wait] [--noprogress]
        [--checkpoint_files=32] [--checkpoint_seconds=30]

(console script ``musicsim-scan``). No labels and no prepared dataset: the folders are walked as
they are, every file with an extension the decoder reads (``musicsim.data.audio.AUDIO_EXTENSIONS``) is
embedded by the default engine (``musicsim.embedder.default_embedder``; ``--model_dir=RUN`` embeds
with a run instead, e.g. a distilled WaveNet or a fusion) and its tags are read
(``musicsim.data.tags.read_tags``). The index is created, or updated in place:

- only what is new or changed is embedded: a file is known by its absolute path, size, modification
  time (ns) and the embedder's version, all recorded per track in the index's metadata (the index
  is the truth: what it holds was finished); a re-scan of an unchanged library only lists the
  folders and stats the files, it reads no audio;
- a file that moved (renamed, or reached from another ``--audio`` root) with the same inode, size and
  modification time keeps its vector under its new id (only its tags are read again);
- what was deleted, or is now excluded, is removed. Tracks of roots not given this time, tracks under
  a folder that could not be read, and tracks added by ``python -m musicsim.index add`` are kept;
- work is saved as it goes: the index and ``INDEX/scan-state.json`` are checkpointed every
  ``--checkpoint_files`` (32) embedded files or ``--checkpoint_seconds`` (30), never sooner than
  twice the last save took (saving stays under a third of the time), each index save atomic (``musicsim.index.storage``), so a scan killed at any
  moment (kill -9 included) leaves a loadable index, and run again embeds only what is left;
- the index records its engine (``model``: name, model_dir, engine ``default`` or ``run``, dim,
  version). A scan with another engine into an existing index is refused (exit 2) unless
  ``--rebuild``, which replaces the index (its tracks are dropped) with the new engine's;
  ``--rebuild`` into an index of the same engine changes nothing (it resumes);
- the default engine's vectors are kept raw and standardised by the index over its own catalog
  (``standardise=True`` with the engine's ``catalog_weights``); a run's vectors are indexed as the
  run makes them;
- files that cannot be used (corrupt, empty, silent, too short, not audio, unreadable) and folders
  that cannot be read, symlink loops and links to folders already scanned are listed with their
  reasons in ``INDEX/scan-report.json`` and counted in the summary line; they never end the scan.
  A bad file is not decoded again until it changes (``scan-state.json`` remembers it).

The walk follows links to folders outside the library (each real folder is read once: a link back
to a folder on its path is a loop, reported), and never links to folders inside the library (they
are scanned where they are; so are links to files). Hidden files and folders (``.name``) are left out. ``--exclude=GLOB``
(repeatable) leaves out every file or folder whose path relative to its root, or whose name,
matches (``fnmatch``: ``--exclude=Podcasts --exclude='*/Live*' --exclude='*.wma'``); an excluded
folder is never read.

Each track's id is ``sha1(root + '/' + relative path)[:16]`` (stable, opaque); its metadata holds
the tags (``title, artist, album, album_artist, track_number, disc, year, genre, duration_s``),
``path`` (absolute), ``relative_path`` (to its root, ``/``-separated), ``group`` (the album tag, else the
folder relative to its root: "exclude the same album"), and the scan's own ``library_root``,
``file_size``, ``file_mtime_ns``, ``file_inode``, ``embedder_version``.

One writer at a time: the scan holds the index's lock (``musicsim.index.lock``) from start to end;
another writer holding it makes the scan exit 2 naming it, or with ``--wait`` wait for it.

Exit status: 0 when the scan finished (bad files included), 2 on misuse or bad input (a missing
``--audio`` folder, a folder at ``--index`` that is not an index, another engine, a locked index),
130 when interrupted (the work of the last checkpoint is kept).
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from typing import Any, Iterable, NoReturn, Sequence

import numpy as np
from absl import flags
from tqdm.auto import tqdm

import musicsim.index
from musicsim import rerank as reranking
from musicsim.atomic import write_json_atomic
from musicsim.cli import parse_command_line, run_command
from musicsim.index import FaissIndex, IndexFileError
from musicsim.index.build import resolve_rerank
from musicsim.index.lock import IndexLockedError, index_lock
from musicsim.index.storage import check_output_directory
from musicsim.data.tags import TAG_KEYS, fallback_album, fallback_title, read_tags
from musicsim.walk import LibraryFile, Listing, ScanError, inside, track_id_for, walk_library

USAGE = ("usage: python -m musicsim.scan --audio=DIR [--audio=DIR2] --index=INDEX [--exclude=GLOB] [--workers=N] "
         "[--model_dir=RUN] [--rebuild] [--wait]")

FLAGS = flags.FlagValues()
flags.DEFINE_multi_string("audio", [], "A music folder to scan (searched recursively); repeat for several.",
                          flag_values=FLAGS)
flags.DEFINE_string("index", None, "The index directory to create or update.", flag_values=FLAGS)
flags.DEFINE_multi_string("exclude", [], "Leave out files and folders whose path relative to their --audio root, "
                          "or whose name, matches this glob (repeatable); excluded folders are never read.",
                          flag_values=FLAGS)
flags.DEFINE_integer("workers", None, "Decoding processes (default: every core).", lower_bound=1, flag_values=FLAGS)
flags.DEFINE_string("model_dir", None, "Embed with this run (experiments.run's model_dir) instead of the default "
                    "engine.", flag_values=FLAGS)
flags.DEFINE_bool("rebuild", False, "Allow replacing an index made by another engine (its tracks are dropped).",
                  flag_values=FLAGS)
flags.DEFINE_bool("wait", False, "When another writer holds the index, wait for it instead of exiting 2.",
                  flag_values=FLAGS)
flags.DEFINE_integer("checkpoint_files", 32, "Save the index after this many embedded files...", lower_bound=1,
                     flag_values=FLAGS)
flags.DEFINE_float("checkpoint_seconds", 30.0, "... or this many seconds, whichever comes first (never sooner than "
                   "twice the last save took).", lower_bound=0.0, flag_values=FLAGS)
flags.DEFINE_bool("progress", True, "Show a progress bar (counts and ETA) on stderr.", flag_values=FLAGS)

STATE_FILE = "scan-state.json"
REPORT_FILE = "scan-report.json"
STATE_FORMAT_VERSION = 1
# ... but never sooner than this many times the last save took (saving stays under a third of the time).
CHECKPOINT_SAVE_FACTOR = 2.0
# The scan's own metadata columns (besides the tags, path, relative_path and group).
FILE_COLUMNS = ("library_root", "file_size", "file_mtime_ns", "file_inode", "embedder_version")
LOCK_COMMAND = "musicsim-scan"


# ---------------------------------------------------------------------------------------------
# The engine, and what the index knows
# ---------------------------------------------------------------------------------------------

def engine_record(embedder: Any, *, default: bool) -> dict[str, Any]:
    """What an index records of the engine that embedded it (its ``model`` entry)."""
    # The default engine's model_dir names it ("builtin:pretrained"): no folder, so not made absolute.
    model_dir = str(embedder.model_dir) if default else os.path.abspath(embedder.model_dir)
    return {"name": str(embedder.name), "model_dir": model_dir,
            "engine": "default" if default else "run", "dim": int(embedder.dim), "version": str(embedder.version)}


def same_engine(recorded: dict[str, Any], engine: dict[str, Any]) -> bool:
    """Whether an index's ``model`` record names the engine ``engine`` (its version may differ: files re-embed)."""
    recorded_engine = recorded.get("engine") or ("run" if recorded.get("model_dir") else None)
    recorded_dir = recorded.get("model_dir")
    if recorded_dir and recorded_engine == "run":
        recorded_dir = os.path.abspath(recorded_dir)
    return (recorded.get("name") == engine["name"] and recorded_engine == engine["engine"]
            and recorded_dir == engine["model_dir"]
            and int(recorded.get("dim") or engine["dim"]) == engine["dim"])


def describe_engine(record: dict[str, Any]) -> str:
    if record.get("engine") == "default":
        return f"the default engine ({record.get('model_dir') or record.get('name')})"
    return f"{record.get('name') or 'an unknown model'} ({record.get('model_dir') or 'no run recorded'})"


@dataclasses.dataclass(frozen=True)
class Indexed:
    """A scanned track the index holds: how its file looked when it was embedded."""

    track_id: str
    path: str
    root: str
    size: int | None
    mtime_ns: int | None
    inode: int | None
    version: str | None


def indexed_tracks(index: Any) -> dict[str, Indexed]:
    """The index's scanned tracks by absolute path (tracks without a ``library_root`` were added otherwise)."""
    found = {}
    if index is None:
        return found
    for track_id in index.track_ids:
        meta = index.metadata(track_id=track_id)
        if not meta.get("library_root") or not meta.get("path"):
            continue
        found[str(meta["path"])] = Indexed(track_id=track_id, path=str(meta["path"]), root=str(meta["library_root"]),
                                           size=meta.get("file_size"), mtime_ns=meta.get("file_mtime_ns"),
                                           inode=meta.get("file_inode"), version=meta.get("embedder_version"))
    return found


def read_scan_state(index_dir: str, *, version: str) -> dict[str, dict[str, Any]]:
    """The bad files a previous scan with the embedder ``version`` recorded (path -> size, mtime_ns, reason)."""
    try:
        with open(os.path.join(index_dir, STATE_FILE), encoding="utf-8") as f:
            state = json.load(f)
        files = state["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    return {path: record for path, record in files.items()
            if isinstance(record, dict) and record.get("status") == "skipped" and record.get("version") == version}


# ---------------------------------------------------------------------------------------------
# The scan
# ---------------------------------------------------------------------------------------------

@dataclasses.dataclass
class ScanSummary:
    """Counts of one scan (what the summary line and scan-report.json say)."""

    files: int = 0
    added: int = 0
    changed: int = 0
    moved: int = 0
    removed: int = 0
    unchanged: int = 0
    skipped: int = 0
    problems: int = 0  # folders and links that could not be (or were not) followed, files that could not be listed
    kept_unreadable: int = 0
    kept_other_roots: int = 0
    audio_seconds: float = 0.0
    embed_seconds: float = 0.0
    tracks: int = 0

    def line(self, *, index_dir: str) -> str:
        speed = (f" ({self.audio_seconds / self.embed_seconds:.1f} s of audio per second)"
                 if self.embed_seconds > 0 and self.audio_seconds > 0 else "")
        kept = "".join([f", kept {self.kept_unreadable} under unreadable folders" if self.kept_unreadable else "",
                        f", kept {self.kept_other_roots} of roots not scanned" if self.kept_other_roots else ""])
        return (f"scanned {self.files} files: {self.added} added, {self.changed} changed, {self.moved} moved, "
                f"{self.removed} removed, {self.unchanged} unchanged, {self.skipped} skipped"
                f"{f', {self.problems} folders or links not followed' if self.problems else ''} (see "
                f"{os.path.join(index_dir, REPORT_FILE)}){kept}{speed}; the index holds {self.tracks} tracks "
                f"-> {index_dir}")


def _metadata_row(file: LibraryFile, *, version: str) -> dict[str, Any]:
    """A scanned file's metadata (tags, paths, group, the scan's own columns); reads its tags, not its audio."""
    tags = read_tags(path=file.path, fallback=False)
    row = {key: tags[key] for key in TAG_KEYS}
    # "The same album" is the album tag; without one, the folder relative to its root (not just its name:
    # many artists' folders are called "CD1").
    row.update(title=tags["title"] or fallback_title(file.path), album=tags["album"] or fallback_album(file.path),
               path=file.path, relative_path=file.relative_path, group=tags["album"] or file.folder,
               library_root=file.root, file_size=file.size, file_mtime_ns=file.mtime_ns, file_inode=file.inode,
               embedder_version=version)
    return row


def _columns(rows: Sequence[dict[str, Any]]) -> dict[str, list[Any]]:
    names = list(dict.fromkeys(name for row in rows for name in row))
    return {name: [row.get(name) for row in rows] for name in names}


class _IndexWriter:
    """The index being updated: pending changes, applied and saved at each checkpoint."""

    def __init__(self, *, index_dir: str, index: Any, engine: dict[str, Any], embedder: Any, similarity: str):
        self.index_dir = index_dir
        self.index = index
        self.engine = engine
        self.embedder = embedder
        self.similarity = similarity
        self.removals: list[str] = []
        self.additions: list[tuple[str, np.ndarray, dict[str, Any]]] = []  # (track_id, raw vector, metadata)
        self.skipped: dict[str, dict[str, Any]] = {}  # path -> state record of a bad file
        self.last_save_seconds = 0.0
        self.unsaved = False  # changes applied in memory, not saved yet

    @property
    def pending(self) -> int:
        return len(self.removals) + len(self.additions)

    def _new_index(self, track_ids: list[str], vectors: np.ndarray, metadata: dict[str, list[Any]]) -> Any:
        arguments: dict[str, Any] = dict(track_ids=track_ids, vectors=vectors, similarity=self.similarity,
                                         metadata=metadata, model=self.engine, rerank=self._rerank())
        weights = getattr(self.embedder, "catalog_weights", None)
        if weights is not None:
            arguments.update(standardise=True, dimension_weights=np.asarray(weights, dtype=np.float32))
        return FaissIndex(**arguments)

    def _rerank(self) -> Any:
        if self.engine["engine"] == "default":
            try:
                from musicsim.models.pretrained_engine import ENGINE_RERANK  # why: imports TensorFlow
            except ImportError:
                return reranking.RerankSettings()
            return reranking.parse_settings(ENGINE_RERANK)
        return resolve_rerank(option=None, model=self.engine, similarity=self.similarity, backend="faiss")

    def apply(self) -> None:
        """Apply the pending changes to the index in memory."""
        if not self.pending:
            return
        removals = [t for t in dict.fromkeys(self.removals) if self.index is not None and t in self.index]
        additions = list({track_id: (track_id, vector, row) for track_id, vector, row in self.additions}.values())
        replaced = [t for t, _, _ in additions if self.index is not None and t in self.index and t not in removals]
        self.removals, self.additions = [], []
        if self.index is None:
            if additions:
                self.index = self._new_index([t for t, _, _ in additions], np.stack([v for _, v, _ in additions]),
                                             _columns([row for _, _, row in additions]))
                self.unsaved = True
            return
        if removals or replaced:
            self.index.remove(track_ids=removals + replaced)
        if additions:
            self.index.add(track_ids=[t for t, _, _ in additions], vectors=np.stack([v for _, v, _ in additions]),
                           metadata=_columns([row for _, _, row in additions]))
        self.unsaved = self.unsaved or bool(removals or additions)

    def checkpoint(self, *, summary: ScanSummary | None = None, listing: Listing | None = None) -> None:
        """Apply and save the pending changes (the index atomically), then the scan state and report."""
        started = time.monotonic()
        self.apply()
        if self.unsaved:
            self.index.save(self.index_dir)
            self.unsaved = False
        if self.index is not None:
            self.write_state()
            if summary is not None:
                self.write_report(summary=summary, listing=listing)
        self.last_save_seconds = time.monotonic() - started

    def write_state(self) -> None:
        files: dict[str, dict[str, Any]] = {}
        for record in indexed_tracks(self.index).values():
            files[record.path] = {"status": "indexed", "track_id": record.track_id, "size": record.size,
                                  "mtime_ns": record.mtime_ns, "version": record.version, "root": record.root}
        files.update(self.skipped)
        write_json_atomic(os.path.join(self.index_dir, STATE_FILE),
                          {"format_version": STATE_FORMAT_VERSION, "engine": self.engine, "files": files})

    def write_report(self, *, summary: ScanSummary, listing: Listing | None) -> None:
        skipped = [{"path": path, "reason": record["reason"]} for path, record in sorted(self.skipped.items())]
        write_json_atomic(os.path.join(self.index_dir, REPORT_FILE), {
            "counts": dataclasses.asdict(summary), "engine": self.engine,
            "skipped": skipped, "problems": list(listing.problems) if listing else [],
            "ignored_non_audio": listing.ignored if listing else 0, "excluded": listing.excluded if listing else 0,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})


def _load_embedder(model_dir: str | None) -> tuple[Any, bool]:
    """(embedder, whether it is the default engine)."""
    from musicsim import embedder as embedders  # why: imports TensorFlow; --help and bad flags answer without it

    if model_dir is None:
        return embedders.default_embedder(), True
    try:
        return embedders.load_embedder(model_dir), False
    except (FileNotFoundError, ValueError) as error:
        raise ScanError(f"--model_dir={model_dir}: {error}") from None


def _open_index(index_dir: str) -> Any:
    """The index at ``index_dir``, or None when there is none yet (absent or empty folder)."""
    try:
        check_output_directory(directory=index_dir)
    except IndexFileError as error:
        raise ScanError(str(error)) from None
    if not os.path.isdir(index_dir) and not os.path.isdir(index_dir + ".bak"):
        return None
    try:
        return musicsim.index.open(index_dir)
    except FileNotFoundError:
        return None
    except (IndexFileError, ValueError) as error:
        raise ScanError(f"--index={index_dir} cannot be loaded: {error}") from None


def scan_library(*, roots: Sequence[str], index_dir: str, excludes: Sequence[str] = (), workers: int | None = None,
                 model_dir: str | None = None, rebuild: bool = False, progress: bool = True,
                 checkpoint_files: int = 32, checkpoint_seconds: float = 30.0, embedder: Any = None) -> ScanSummary:
    """Scan ``roots`` into the index at ``index_dir`` (see the module docstring). The caller holds the lock.

    Parameters
    ----------
    roots : sequence of str
        Library folders.
    index_dir : str
        The index to create or update.
    excludes : sequence of str
        ``fnmatch`` patterns of files and folders to leave out.
    workers : int or None
        Decoding processes (None: every core).
    model_dir : str or None
        A run to embed with instead of the default engine.
    rebuild : bool
        Allow replacing an index made by another engine.
    progress : bool
        Show a progress bar.
    checkpoint_files, checkpoint_seconds : int, float
        Save the index after this many embedded files or seconds, whichever comes first.
    embedder : Embedder, optional
        Embed with this one (tests); ``model_dir`` then only names it.

    Returns
    -------
    ScanSummary

    Raises
    ------
    ScanError
        Bad input, a folder at ``index_dir`` that is not an index, or another engine without ``rebuild``.
    """
    index_dir = os.path.abspath(index_dir)
    roots = [os.path.abspath(r) for r in roots]
    if not roots:
        raise ScanError("give at least one --audio=DIR")
    listing = walk_library(roots=roots, excludes=excludes)
    index = _open_index(index_dir)
    default = model_dir is None
    if embedder is None:
        embedder, default = _load_embedder(model_dir)
    engine = engine_record(embedder, default=default)
    index = _same_engine_index(index, engine=engine, index_dir=index_dir, rebuild=rebuild)
    version = engine["version"]
    if index is not None and dict(index.model).get("version") != version:
        index.model = {**dict(index.model), "version": version}  # files embedded before re-embed below
    writer = _IndexWriter(index_dir=index_dir, index=index, engine=engine, embedder=embedder,
                          similarity=str(getattr(embedder, "similarity", "cosine")))
    summary = ScanSummary(files=len(listing.files), problems=len(listing.problems))
    todo = _plan_changes(listing=listing, writer=writer, summary=summary, roots=roots, version=version,
                         bad_before=read_scan_state(index_dir, version=version) if index is not None else {})
    if writer.pending:  # removals and moves first: cheap, and a server stops serving deleted files at once
        writer.checkpoint()

    _embed(writer=writer, todo=todo, summary=summary, workers=workers, progress=progress, version=version,
           every_files=checkpoint_files, every_seconds=checkpoint_seconds)
    writer.apply()
    summary.skipped = len(writer.skipped)
    summary.tracks = len(writer.index) if writer.index is not None else 0
    if writer.index is None:
        reasons = "; ".join(f"{p}: {r['reason']}" for p, r in list(writer.skipped.items())[:5])
        raise ScanError(f"no usable audio under {', '.join(roots)} ({len(listing.files)} audio files, "
                        f"{len(writer.skipped)} skipped{': ' + reasons if reasons else ''}); no index was written")
    writer.checkpoint(summary=summary, listing=listing)
    return summary


def _same_engine_index(index: Any, *, engine: dict[str, Any], index_dir: str, rebuild: bool) -> Any:
    """``index``, or None when it was made by another engine and ``rebuild`` replaces it (else ScanError)."""
    if index is None or same_engine(dict(index.model), engine):
        return index
    if not rebuild:
        raise ScanError(f"the index {index_dir} was made by {describe_engine(dict(index.model))}, not "
                        f"{describe_engine(engine)}: pass --rebuild to replace it with this engine's, or "
                        "choose another --index")
    print(f"note: --rebuild: replacing the index of {describe_engine(dict(index.model))} with "
          f"{describe_engine(engine)}'s", file=sys.stderr)
    return None


def _plan_changes(*, listing: Listing, writer: _IndexWriter, summary: ScanSummary, roots: Sequence[str],
                  version: str, bad_before: dict[str, dict[str, Any]]) -> list[tuple[LibraryFile, bool]]:
    """Queue on ``writer`` what changed without reading audio (moves, removals, known bad files), count it in
    ``summary``, and return the files to embed: (file, whether it replaces an indexed version), in order.

    Unchanged files are known by their stat alone; a file that moved keeps its vector under its new id.
    """
    known = indexed_tracks(writer.index)
    listed = {f.path for f in listing.files}
    vanished = {path: record for path, record in known.items() if path not in listed}
    movable = {(r.inode, r.size, r.mtime_ns, r.version): r for r in vanished.values() if r.inode is not None}
    todo: list[tuple[LibraryFile, bool]] = []  # (file, whether it replaces an indexed version)
    moved: set[str] = set()
    for file in listing.files:
        record = known.get(file.path)
        if (record is not None and (record.size, record.mtime_ns, record.version) == (file.size, file.mtime_ns, version)
                and record.track_id == file.track_id):
            summary.unchanged += 1
            continue
        if record is not None and record.track_id != file.track_id:
            # The same path under another root (roots nested or renamed): the old id goes.
            source, record = record, None
        else:
            source = None if record is not None else movable.pop((file.inode, file.size, file.mtime_ns, version), None)
        if source is not None and (source.size, source.mtime_ns, source.version) == (file.size, file.mtime_ns,
                                                                                    version):
            # The same file under a new id (renamed, or reached from another root): keep its vector.
            raw = (writer.index.raw_vector(track_id=source.track_id) if hasattr(writer.index, "raw_vector")
                   else writer.index.vector(track_id=source.track_id))
            writer.removals.append(source.track_id)
            writer.additions.append((file.track_id, np.asarray(raw, np.float32), _metadata_row(file, version=version)))
            moved.add(source.path)
            summary.moved += 1
            continue
        if source is not None:
            writer.removals.append(source.track_id)
            moved.add(source.path)
        bad = bad_before.get(file.path)
        if bad is not None and (bad.get("size"), bad.get("mtime_ns")) == (file.size, file.mtime_ns):
            writer.skipped[file.path] = bad
            if record is not None:
                writer.removals.append(record.track_id)
            continue
        todo.append((file, record is not None))
    for path, record in vanished.items():
        if path in moved:
            continue
        if inside(path, listing.unreadable_folders):
            summary.kept_unreadable += 1
        elif record.root not in roots:
            summary.kept_other_roots += 1
        else:
            writer.removals.append(record.track_id)
            summary.removed += 1
    return todo


def _embed(*, writer: _IndexWriter, todo: list[tuple[LibraryFile, bool]], summary: ScanSummary,
           workers: int | None, progress: bool, version: str, every_files: int, every_seconds: float) -> None:
    """Embed ``todo`` in order, checkpointing the index as it goes."""
    if not todo:
        return
    paths = [file.path for file, _ in todo]
    started = last_checkpoint = time.monotonic()
    since_checkpoint = 0
    counts = {"ok": 0, "bad": 0}
    with tqdm(total=len(todo), unit="file", desc="scan", disable=not progress, file=sys.stderr,
              dynamic_ncols=True) as bar:
        for position, vector, reason in writer.embedder.iter_embeddings(paths=paths, workers=workers):
            file, replaces = todo[position]
            if vector is None:
                writer.skipped[file.path] = {"status": "skipped", "size": file.size, "mtime_ns": file.mtime_ns,
                                             "version": version, "reason": str(reason or "could not be embedded")}
                if replaces:  # its old version no longer stands for the file
                    writer.removals.append(file.track_id)
                counts["bad"] += 1
            else:
                row = _metadata_row(file, version=version)
                summary.audio_seconds += float(row.get("duration_s") or 0.0)
                writer.additions.append((file.track_id, np.asarray(vector, np.float32), row))
                writer.skipped.pop(file.path, None)
                if replaces:
                    summary.changed += 1
                else:
                    summary.added += 1
                counts["ok"] += 1
            since_checkpoint += 1
            bar.update(1)
            bar.set_postfix(counts, refresh=False)
            now = time.monotonic()
            due = since_checkpoint >= every_files or now - last_checkpoint >= every_seconds
            if due and now - last_checkpoint >= CHECKPOINT_SAVE_FACTOR * writer.last_save_seconds:
                summary.embed_seconds = now - started
                writer.checkpoint()
                last_checkpoint, since_checkpoint = time.monotonic(), 0
    summary.embed_seconds = time.monotonic() - started


# ---------------------------------------------------------------------------------------------
# The command line
# ---------------------------------------------------------------------------------------------

def _usage_error(message: str) -> int:
    print(f"error: {message} ({USAGE})", file=sys.stderr)
    return 2


def main(argv: Sequence[str]) -> int:
    """``python -m musicsim.scan ...`` (``argv`` program name first); returns the exit status."""
    status = parse_command_line(FLAGS, argv, doc=__doc__, usage=USAGE)
    if isinstance(status, int):
        return status
    if not FLAGS.audio:
        return _usage_error("--audio=DIR is required")
    if not FLAGS.index:
        return _usage_error("--index=INDEX is required")
    index_dir = os.path.abspath(FLAGS.index)
    for root in FLAGS.audio:
        if not os.path.isdir(root):
            return _usage_error(f"--audio={root} is not a folder" if os.path.exists(root)
                                else f"--audio={root} does not exist")
        if inside(index_dir, [os.path.abspath(root)]):
            return _usage_error(f"--index={index_dir} lies inside --audio={root}: keep the index outside the library")
    try:
        with index_lock(index_dir, wait=FLAGS.wait, command=LOCK_COMMAND):
            summary = scan_library(roots=FLAGS.audio, index_dir=index_dir, excludes=FLAGS.exclude,
                                   workers=FLAGS.workers, model_dir=FLAGS.model_dir, rebuild=FLAGS.rebuild,
                                   progress=FLAGS.progress, checkpoint_files=FLAGS.checkpoint_files,
                                   checkpoint_seconds=FLAGS.checkpoint_seconds)
    except IndexLockedError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except ScanError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: the work of the last checkpoint is kept; run the same command again to resume",
              file=sys.stderr)
        return 130
    print(summary.line(index_dir=index_dir))
    return 0


def cli() -> NoReturn:
    """The ``musicsim-scan`` console script."""
    run_command(main)


if __name__ == "__main__":
    cli()
