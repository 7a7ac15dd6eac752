"""Export a run: embed a music collection for the index, or save the model for serving.

Embeddings of a whole collection (a folder, searched recursively, or a CSV manifest)::

    python -m experiments.export --model_dir=RUN --audio=DIR_or_manifest.csv --output=FILE.parquet
        [--batch_size=8] [--workers=N] [--group_column=auto]

writes ``FILE.parquet`` (columns ``track_id``, ``path``, ``embedding`` list<float32>, ``model``,
``duration_s``, and ``group``: the album folder or the manifest's label, for
``musicsim.search --exclude_same_group``), ``FILE.npy`` ``[N, D]`` + ``FILE.ids.json`` (a JSON array of
the N track ids) + ``FILE.meta.json`` (``model``, ``model_dir``, ``similarity``, ``version``) for numpy
users, and ``FILE.skipped.csv`` (each file or folder that could not be used, with the reason). They
are all written to temporary files first and renamed into place only when the export succeeded: a
failed export (nothing could be embedded) leaves the previous outputs as they were. Progress is
appended to ``FILE.state.jsonl`` as files are embedded, so an interrupted or repeated export embeds
only what is new or changed (a file is known by its path, size and modification time, and the state
by the model's checkpoint); the state is compacted only after a successful export. Long files are
embedded in windows of ``--window_seconds`` (default: what the run recorded, see
``musicsim.embedder``), so memory per file is bounded.
Then ``python -m musicsim.index build --embeddings=FILE.parquet --output=INDEX --model_dir=RUN``.

Past one machine, ``--runner=DirectRunner|FlinkRunner|SparkRunner|DataflowRunner`` embeds the files in an
Apache Beam pipeline (``experiments.export_beam``; the runners and options of ``data_prep.beam_pipeline``:
flags not defined here, given as ``--flag=value``, are Beam's pipeline options, e.g.
``--flink_master=host:8081``). Each worker loads the run's model once and embeds batches of files; this
machine then writes the very files the local export writes (same rows, same order, same state file, so a
later export of either kind resumes from it). The run folder and the audio must be readable from the
workers at the same paths (a shared mount). DirectRunner (this machine's processes, ``--workers`` of
them) gives the local export's files: the same rows, skips and order; the vectors of models that embed
file by file (mfcc, librosa) byte for byte, those of models that stack several files' windows into one
batch (WaveNet, the pretrained engine's patches) to float rounding (other batches, other sums).

A manifest is a CSV with a ``path`` column (relative to the CSV's folder, or absolute), an
optional ``track_id`` column (else the path relative to the CSV's folder, without extension) and
optional label columns (``group``, ``labels``, ``label_album``, ``album``: the first one found
becomes ``group``). A prepared dataset folder (``dataset.json`` + ``tracks.csv``) is read through
its ``tracks.csv``. In a folder, a track's id is its path relative to the folder without extension.

SavedModels for serving (learned models)::

    python -m experiments.export --model_dir=RUN --saved_model=DIR

writes ``DIR/pooled`` (inputs ``audio`` float32 ``[batch, time]`` of mean-pooled audio and
``length`` int32 ``[batch]``; for the rnn, ``audio`` is a chromagram ``[batch, frames, 12]``),
``DIR/raw`` (wavenet: ``raw_audio`` float32 ``[batch, samples]`` mono at the run's decode rate and
``raw_length`` int32 ``[batch]``, mean-pooled inside the graph) and ``DIR/serving.json`` (what
the inputs must be), plus ``DIR/musicsim.json`` (``musicsim.owned``), the manifest of what it wrote. An
existing ``DIR`` is replaced only when it holds such an export and nothing else; any other non-empty folder is
refused (exit 2) unless ``--overwrite`` is given. Both answer ``signatures["serving_default"]`` with ``embedding``
``[batch, D]``, callable with no project code: ``tf.saved_model.load(DIR + "/raw")``.
"""
from __future__ import annotations

import csv
import json
import logging
import os
import shutil
import sys
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
from absl import flags

from data_prep.shards import BEAM_RUNNERS
from data_prep.sources import track_ids_from_paths
from musicsim.atomic import atomic_open
from musicsim.audio import AUDIO_EXTENSIONS, file_duration
from musicsim.cli import AT_LEAST_ONE, NON_NEGATIVE, check_numeric_flags, parse_command_line, usage_error
from musicsim.dataset import TRACKS_FILE, is_prepared
from musicsim.embedder import Embedder, LearnedEmbedder, load_embedder
from musicsim.owned import MANIFEST_NAME, check_replaceable, write_manifest

# Private flag values: experiments.run defines flags of the same names on the global FLAGS, and
# both modules are imported together by tests and notebooks.
FLAGS = flags.FlagValues()
flags.DEFINE_string("model_dir", None, "The run to export (experiments.run's model_dir).", flag_values=FLAGS)
flags.DEFINE_string("audio", None, "A folder of audio files (searched recursively), a manifest CSV with a "
                    "'path' column, or a prepared dataset folder.", flag_values=FLAGS)
flags.DEFINE_string("output", None, "Embeddings file to write, FILE.parquet (also FILE.npy, FILE.ids.json, "
                    "FILE.meta.json, FILE.skipped.csv).", flag_values=FLAGS)
flags.DEFINE_string("saved_model", None, "Write SavedModels for serving into this folder (learned models).",
                    flag_values=FLAGS)
flags.DEFINE_bool("overwrite", False, "Let --saved_model replace a non-empty folder that is not this project's "
                  "own export.", flag_values=FLAGS)
flags.DEFINE_float("window_seconds", None, "Embed long audio in windows of this many seconds (default: what the "
                   "run recorded; 0: whole files).", flag_values=FLAGS)
flags.DEFINE_integer("batch_size", 8, "Tracks (or windows of long tracks) per prediction batch.", flag_values=FLAGS)
flags.DEFINE_integer("workers", None, "Decoding processes (default: all cores).", flag_values=FLAGS)
flags.DEFINE_string("group_column", "auto", "Manifest column that becomes 'group' ('auto': group, labels, "
                    "label_album or album; 'none': no group).", flag_values=FLAGS)
flags.DEFINE_bool("progress", True, "Show a progress bar.", flag_values=FLAGS)
flags.DEFINE_enum("runner", "local", ["local", *BEAM_RUNNERS], "local: embed in this process (decoding in "
                  "--workers processes); a Beam runner: embed in an Apache Beam pipeline (see the module docstring); "
                  "flags not defined here (--flag=value) go to Beam's PipelineOptions.", flag_values=FLAGS)
flags.DEFINE_bool("help", False, "Show this help.", flag_values=FLAGS)
check_numeric_flags(FLAGS, bounds={"window_seconds": NON_NEGATIVE, "batch_size": AT_LEAST_ONE,
                                   "workers": AT_LEAST_ONE})
USAGE = ("usage: python -m experiments.export --model_dir=RUN (--audio=DIR|CSV --output=FILE.parquet | "
         "--saved_model=DIR)")

AUTO_GROUP_COLUMNS = ("group", "labels", "label_album", "album")
STATE_FORMAT_VERSION = 1
# How often the state file is flushed to disk while embedding.
FLUSH_EVERY_SECONDS = 5.0
# Written into a SavedModel export folder: what it holds, so a later export knows the folder is its own.
SAVED_MODEL_MANIFEST = MANIFEST_NAME
SAVED_MODEL_KIND = "saved_model"
# What exports recorded before the one manifest of musicsim.owned: still recognised as ours.
LEGACY_SAVED_MODEL_MANIFEST = "musicsim_export.json"
LEGACY_SAVED_MODEL_KIND = "musicsim.saved_model"
# Manifest track ids that stand for a missing value (spreadsheet and dataframe exports write these).
NULL_TRACK_IDS = ("", "null", "none", "nan", "na", "n/a")


class EmptyInputError(ValueError):
    """The collection holds nothing to embed (an empty or unmounted folder, a manifest without usable rows)."""


# ---------------------------------------------------------------------------------------------
# Listing the collection
# ---------------------------------------------------------------------------------------------

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


# ---------------------------------------------------------------------------------------------
# The state file: what has been embedded already
# ---------------------------------------------------------------------------------------------

def output_paths(output: str) -> dict[str, str]:
    """The files an export writes for ``output`` (``.parquet`` added when missing)."""
    if not output.lower().endswith(".parquet"):
        output += ".parquet"
    stem = output[: -len(".parquet")]
    return {"parquet": output, "npy": stem + ".npy", "ids": stem + ".ids.json", "meta": stem + ".meta.json",
            "skipped": stem + ".skipped.csv", "state": stem + ".state.jsonl"}


def _file_key(path: str) -> tuple[int, int] | None:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return int(stat.st_size), int(stat.st_mtime_ns)


def _state_header(embedder: Embedder) -> dict[str, Any]:
    # The window length is part of it: a model that is not exact over windows embeds differently.
    return {"format_version": STATE_FORMAT_VERSION, "model": embedder.name,
            "model_dir": os.path.abspath(embedder.model_dir), "version": embedder.version, "dim": embedder.dim,
            "window_seconds": embedder.window_seconds}


def read_state(state_path: str, *, header: dict[str, Any]) -> dict[str, dict]:
    """Records of a previous export by the same model, by absolute path (the last record wins).

    A state written by another model or checkpoint is not used. A torn last line (the export
    was killed mid-write) is ignored.
    """
    if not os.path.exists(state_path):
        return {}
    records: dict[str, dict] = {}
    with open(state_path) as f:
        lines = f.read().split("\n")
    try:
        first = json.loads(lines[0])
    except (json.JSONDecodeError, IndexError):
        return {}
    if {k: first.get(k) for k in header} != header:
        print(f"note: {state_path} was written by another model or checkpoint "
              f"({first.get('model_dir')}, {first.get('version')}); embedding everything again", file=sys.stderr)
        return {}
    for line in lines[1:]:
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line torn by an interrupted write
        records[record["path"]] = record
    return records


def _reusable(record: dict | None, path: str) -> bool:
    return record is not None and _file_key(path) == (record.get("size"), record.get("mtime_ns"))


def _write_state(state_path: str, header: dict[str, Any], records: Sequence[dict]) -> None:
    with atomic_open(state_path) as f:
        f.write(json.dumps(header) + "\n")
        for record in records:
            f.write(json.dumps(record) + "\n")


# ---------------------------------------------------------------------------------------------
# Writing the outputs
# ---------------------------------------------------------------------------------------------

def _temporary_sibling(path: str) -> str:
    """A fresh hidden name beside ``path`` with the same extension (renamed onto ``path`` when complete)."""
    directory = os.path.dirname(os.path.abspath(path))
    base, ext = os.path.splitext(os.path.basename(path))
    return os.path.join(directory, f".{base}.tmp-{os.getpid()}-{uuid.uuid4().hex[:6]}{ext}")


def _replace_all(writers: dict[str, Callable[[str], None]]) -> None:
    """Write every file to a temporary sibling, then rename them all into place.

    Nothing is renamed until every file was written, so a failure part way leaves the previous
    files as they were (and no temporary file behind).
    """
    written: dict[str, str] = {}
    try:
        for path, write in writers.items():
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            written[path] = _temporary_sibling(path)
            write(written[path])
        for path, tmp in written.items():
            os.replace(tmp, path)
    except BaseException:
        for tmp in written.values():
            if os.path.exists(tmp):
                os.remove(tmp)
        raise


def provenance(embedder: Embedder) -> dict[str, str]:
    """What made an export: ``model``, ``model_dir`` (absolute), ``similarity``, ``version``."""
    return {"model": embedder.name, "model_dir": os.path.abspath(embedder.model_dir),
            "similarity": embedder.similarity, "version": embedder.version}


def write_outputs(*, paths: dict[str, str], rows: Sequence[dict], skipped: Sequence[dict], embedder: Embedder
                  ) -> None:
    """Parquet, .npy + .ids.json + .meta.json and .skipped.csv of an export, swapped in together."""
    from musicsim.index.embeddings_io import embedding_file_writers

    matrix = (np.stack([np.asarray(r["embedding"], dtype=np.float32) for r in rows]) if rows
              else np.zeros((0, embedder.dim), dtype=np.float32))
    writers = embedding_file_writers(parquet=paths["parquet"], npy=paths["npy"],
                                     track_ids=[r["track_id"] for r in rows], vectors=matrix,
                                     paths=[r["path"] for r in rows], durations=[r["duration_s"] for r in rows],
                                     groups=[r["group"] for r in rows], provenance=provenance(embedder))

    def write_skipped(tmp: str) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["path", "track_id", "reason"])
            for s in skipped:
                writer.writerow([s["path"], s.get("track_id", ""), s["reason"]])

    _replace_all({**writers, paths["skipped"]: write_skipped})


@dataclass
class ExportSummary:
    """What an export did."""

    output: str
    embedded: int  # tracks in the output
    newly_embedded: int  # of which embedded by this call (the rest came from the state file)
    skipped: list[dict]  # {"path", "track_id", "reason"}
    ignored: int  # files without an audio extension
    seconds: float
    written: bool = True  # False: nothing could be embedded, and the outputs were left as they were

    def __str__(self) -> str:
        if self.written:
            lines = [f"{self.embedded} tracks in {self.output} ({self.newly_embedded} embedded now, "
                     f"{self.embedded - self.newly_embedded} reused from a previous run) in {self.seconds:.1f}s"]
        else:
            lines = [f"no file could be embedded in {self.seconds:.1f}s: {self.output} and the files beside it "
                     "were left as they were"]
        if self.ignored:
            lines.append(f"{self.ignored} files without an audio extension were ignored")
        if self.skipped:
            listed = f" (listed in {output_paths(self.output)['skipped']})" if self.written else ""
            lines.append(f"{len(self.skipped)} skipped{listed}:")
            lines += [f"  {s['path']}: {s['reason']}" for s in self.skipped[:20]]
            if len(self.skipped) > 20:
                lines.append(f"  ... and {len(self.skipped) - 20} more")
        return "\n".join(lines)


def export_embeddings(*, model_dir: str, audio: str, output: str, batch_size: int = 8,
                      workers: int | None = None, group_column: str = "auto", progress: bool = True,
                      embedder: Embedder | None = None, window_seconds: float | None = None,
                      runner: str = "local", beam_args: Sequence[str] = ()) -> ExportSummary:
    """Embed every file of a folder or manifest with a run's model; resumable.

    The outputs are replaced only when at least one file was embedded; otherwise they, and the
    state's earlier records, are kept as they were (``ExportSummary.written`` is False).

    Parameters
    ----------
    model_dir : the run (``experiments.run``'s model_dir)
    audio : a folder (recursive), a manifest CSV, or a prepared dataset folder
    output : ``FILE.parquet`` (see the module docstring for the files written beside it)
    batch_size, workers : see ``Embedder.embed_paths``
    group_column : manifest column that becomes ``group`` (``auto`` or ``none``)
    progress : show a progress bar
    embedder : an already loaded embedder of ``model_dir`` (saves loading it again)
    window_seconds : window length for long audio, overriding the run's (0: whole files; see
        ``musicsim.embedder.load_embedder``); ignored when ``embedder`` is given
    runner : ``"local"``, or a Beam runner (``data_prep.shards.BEAM_RUNNERS``): the files still to embed
        go through ``experiments.export_beam.embed_with_beam``, and the outputs are written here as
        the local export writes them
    beam_args : Beam pipeline options (``["--direct_num_workers=2", ...]``); Beam runners only

    Returns
    -------
    ExportSummary

    Raises
    ------
    EmptyInputError
        If the collection holds no audio file to embed (nothing is written).
    ValueError, FileNotFoundError
        For a missing or unreadable collection.
    """
    started = time.time()
    if runner != "local" and runner not in BEAM_RUNNERS:
        raise ValueError(f"runner must be 'local' or one of {list(BEAM_RUNNERS)}, got {runner!r}")
    if beam_args and runner == "local":
        raise ValueError(f"unknown arguments {list(beam_args)}: Beam pipeline options need a Beam --runner")
    paths = output_paths(output)
    # Listed before the model is loaded: bad input is told at once and touches no output.
    listing = list_audio(audio, group_column=group_column)
    if not listing.entries:
        reasons = "; ".join(f"{s['path']}: {s['reason']}" for s in listing.skipped[:5])
        raise EmptyInputError(
            f"--audio={audio} holds no audio file to embed (extensions: {' '.join(AUDIO_EXTENSIONS)}"
            + (f"; {listing.ignored} other files ignored" if listing.ignored else "")
            + (f"; {reasons}" if reasons else "") + "): is it the right folder, and is it mounted?")
    embedder = embedder or load_embedder(model_dir, window_seconds=window_seconds)
    header = _state_header(embedder)
    state = read_state(paths["state"], header=header)
    todo = [e for e in listing.entries if not _reusable(state.get(e.path), e.path)]
    reused = len(listing.entries) - len(todo)

    os.makedirs(os.path.dirname(os.path.abspath(paths["state"])), exist_ok=True)
    # A state this export cannot use (another model's, or unreadable) is kept until the export succeeds.
    progress_path = paths["state"]
    if not state:
        if os.path.exists(paths["state"]):
            progress_path = _temporary_sibling(paths["state"])
        _write_state(progress_path, header, [])
    try:
        embedded = durations = None
        if runner != "local" and todo:
            from experiments.export_beam import embed_with_beam

            embedded, durations = embed_with_beam(
                embedder=embedder, paths=[e.path for e in todo], runner=runner, beam_args=beam_args,
                batch_size=batch_size, workers=workers, work_dir=os.path.dirname(os.path.abspath(paths["state"])))
        return _embed_and_write(embedder=embedder, listing=listing, todo=todo, state=state, header=header,
                                paths=paths, progress_path=progress_path, reused=reused, batch_size=batch_size,
                                workers=workers, progress=progress, started=started, embedded=embedded,
                                durations=durations)
    finally:
        if progress_path != paths["state"] and os.path.exists(progress_path):
            os.remove(progress_path)


def _embed_and_write(*, embedder: Embedder, listing: Listing, todo: list[AudioEntry], state: dict[str, dict],
                     header: dict[str, Any], paths: dict[str, str], progress_path: str, reused: int,
                     batch_size: int, workers: int | None, progress: bool, started: float,
                     embedded: Sequence[tuple[int, Any, Any]] | None = None,
                     durations: dict[int, float | None] | None = None) -> ExportSummary:
    """Embed ``todo`` (appending each record to ``progress_path``), then write the outputs when any file
    was embedded and compact the state into ``paths["state"]``.

    ``embedded``: the ``(index into todo, vector or None, reason)`` of every file, already computed
    elsewhere (a Beam pipeline), with each embedded file's ``durations`` as its workers read them;
    None embeds here with ``embedder.iter_embeddings``.
    """
    from tqdm.auto import tqdm

    newly_embedded = 0
    if embedded is None:
        embedded = embedder.iter_embeddings(paths=[e.path for e in todo], batch_size=batch_size, workers=workers)
    with open(progress_path, "a") as f, tqdm(total=len(listing.entries), initial=reused, disable=not progress,
                                             unit="track", desc=f"export ({embedder.name})") as bar:
        last_flush = time.monotonic()
        for index, vector, reason in embedded:
            entry = todo[index]
            key = _file_key(entry.path) or (None, None)
            duration = None
            if vector is not None:
                duration = durations[index] if durations is not None else file_duration(entry.path)
            record = {"path": entry.path, "size": key[0], "mtime_ns": key[1],
                      "embedding": None if vector is None else [float(x) for x in vector],
                      "reason": None if vector is not None else str(reason), "duration_s": duration}
            state[entry.path] = record
            f.write(json.dumps(record) + "\n")
            newly_embedded += vector is not None
            bar.update(1)
            if time.monotonic() - last_flush > FLUSH_EVERY_SECONDS:
                f.flush()
                last_flush = time.monotonic()

    rows, skipped = [], list(listing.skipped)
    for entry in listing.entries:
        record = state[entry.path]
        if record["embedding"] is None:
            skipped.append({"path": entry.path, "track_id": entry.track_id, "reason": record["reason"]})
        else:
            rows.append({"track_id": entry.track_id, "path": entry.path, "embedding": record["embedding"],
                         "duration_s": record["duration_s"], "group": entry.group})
    if not rows:  # a failed export replaces nothing and keeps every record it had
        return ExportSummary(output=paths["parquet"], embedded=0, newly_embedded=0, skipped=skipped,
                             ignored=listing.ignored, seconds=time.time() - started, written=False)
    write_outputs(paths=paths, rows=rows, skipped=skipped, embedder=embedder)
    # Compact: keep the files of this collection, one record each, and those under folders that could
    # not be read this time (they are still there, only out of reach).
    unreadable = tuple(s["path"].rstrip(os.sep) + os.sep for s in listing.skipped if s.get("unreadable_folder"))
    listed = {e.path for e in listing.entries}
    kept = [state[e.path] for e in listing.entries]
    kept += [r for p, r in state.items() if p not in listed and unreadable and p.startswith(unreadable)]
    _write_state(paths["state"], header, kept)
    return ExportSummary(output=paths["parquet"], embedded=len(rows), newly_embedded=newly_embedded,
                         skipped=skipped, ignored=listing.ignored, seconds=time.time() - started)


# ---------------------------------------------------------------------------------------------
# SavedModels for serving
# ---------------------------------------------------------------------------------------------

def is_legacy_saved_model_export(folder: str) -> bool:
    """Whether ``folder`` holds a SavedModel export written before the ``musicsim.json`` manifest, and
    nothing else: its ``LEGACY_SAVED_MODEL_MANIFEST`` lists what it wrote."""
    try:
        with open(os.path.join(folder, LEGACY_SAVED_MODEL_MANIFEST), encoding="utf-8") as f:
            manifest = json.load(f)
        present = set(os.listdir(folder))
    except (OSError, ValueError):
        return False
    if not isinstance(manifest, dict) or manifest.get("kind") != LEGACY_SAVED_MODEL_KIND:
        return False
    return present <= set(manifest.get("entries") or []) | {LEGACY_SAVED_MODEL_MANIFEST}


def export_saved_model(*, model_dir: str, export_dir: str, overwrite: bool = False) -> dict[str, str]:
    """Write SavedModels of a learned run for serving: ``export_dir/pooled`` and (wavenet) ``export_dir/raw``.

    The export is written into a temporary sibling folder, then swapped in for ``export_dir``, with
    ``serving.json`` describing the inputs and ``SAVED_MODEL_MANIFEST`` listing what was written.
    An existing ``export_dir`` is replaced only when it is empty or holds such an export and
    nothing else, or when ``overwrite`` is given.

    Returns
    -------
    dict of name (``pooled``, ``raw``) to SavedModel folder

    Raises
    ------
    ValueError
        For a fitted model (they are not TensorFlow graphs), or an ``export_dir`` that is not
        this project's to replace.
    """
    import tensorflow as tf

    from musicsim.models.wavenet import lengths_after_pooling, masked_pool

    export_dir = os.path.abspath(export_dir)
    check_replaceable(export_dir, kind=SAVED_MODEL_KIND, overwrite=overwrite, legacy=is_legacy_saved_model_export,
                      description="a SavedModel export of this project",
                      remedy="choose another folder, or give --overwrite to replace it")
    embedder = load_embedder(model_dir)
    if not isinstance(embedder, LearnedEmbedder):
        raise ValueError(f"{model_dir} holds a {embedder.kind} {embedder.name!r} model: only learned models "
                         "(wavenet, rnn) export a SavedModel; serve fitted models with musicsim.embedder")
    estimator, channels = embedder.estimator, embedder.channels

    def pooled_receiver():
        # Placeholders are made here, inside the graph the estimator builds for the export.
        shape = [None, None] if channels == 1 else [None, None, channels]
        audio = tf.compat.v1.placeholder(tf.float32, shape, name="audio")
        length = tf.compat.v1.placeholder(tf.int32, [None], name="length")
        features = {"audio": audio[:, :, None] if channels == 1 else audio, "length": length}
        return tf.estimator.export.ServingInputReceiver(features, {"audio": audio, "length": length})

    def raw_receiver():
        raw = tf.compat.v1.placeholder(tf.float32, [None, None], name="raw_audio")
        raw_length = tf.compat.v1.placeholder(tf.int32, [None], name="raw_length")
        # The dataset's mean pooling (musicsim.audio.mean_pool), in the graph: an average over real samples.
        pooled = masked_pool(raw[:, :, None], raw_length, pool=embedder.pool_size, pooling="avg")
        length = lengths_after_pooling(raw_length, embedder.pool_size)
        return tf.estimator.export.ServingInputReceiver({"audio": pooled, "length": length},
                                                        {"raw_audio": raw, "raw_length": raw_length})

    receivers = {"pooled": pooled_receiver}
    if embedder.model.input.features == "pooled_audio":  # the graph can pool decoded audio itself
        receivers["raw"] = raw_receiver
    staging = f"{export_dir}.tmp-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    os.makedirs(staging)
    try:
        for name, receiver in receivers.items():
            base = os.path.join(staging, f".{name}-base")
            written = estimator.export_saved_model(base, receiver, checkpoint_path=embedder.checkpoint)
            os.rename(written.decode() if isinstance(written, bytes) else written, os.path.join(staging, name))
            shutil.rmtree(base)
        serving = {**embedder.describe(), "checkpoint": embedder.checkpoint, "signature": "serving_default",
                   "output": "embedding",
                   "pooled": {"inputs": {"audio": "float32 [batch, time]" if channels == 1 else
                                         f"float32 [batch, frames, {channels}] chromagram",
                                         "length": "int32 [batch]"},
                              "rate_hz": embedder.frame_rate},
                   "sample_rate": embedder.sample_rate, "pool_size": embedder.pool_size,
                   "max_seconds": embedder.max_seconds}
        if "raw" in receivers:
            serving["raw"] = {"inputs": {"raw_audio": "float32 [batch, samples] mono", "raw_length": "int32 [batch]"},
                              "rate_hz": embedder.sample_rate}
        with open(os.path.join(staging, "serving.json"), "w") as f:
            json.dump(serving, f, indent=1)
        entries = sorted(os.listdir(staging))  # before the manifest itself exists
        write_manifest(staging, kind=SAVED_MODEL_KIND, extra={"entries": entries, **provenance(embedder)})
        old = None
        if os.path.isdir(export_dir):
            old = f"{export_dir}.old-{os.getpid()}-{uuid.uuid4().hex[:6]}"
            os.rename(export_dir, old)
        os.rename(staging, export_dir)
        if old:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return {name: os.path.join(export_dir, name) for name in receivers}


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------

def split_beam_arguments(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """(``argv`` without the ``--flag[=value]`` arguments no flag here defines, those arguments): the latter
    are Beam's pipeline options (``--runner`` other than local). The program name stays in the first."""
    ours, beam_args = [argv[0]] if argv else [], []
    for arg in list(argv)[1:]:
        name = arg[2:].split("=", 1)[0] if arg.startswith("--") else None
        known = name is None or name in FLAGS or (name.startswith("no") and name[2:] in FLAGS) or name in (
            "help", "helpfull", "helpshort")
        (ours if known else beam_args).append(arg)
    return ours, beam_args


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m experiments.export ...``; returns the exit status."""
    argv = list(sys.argv if argv is None else argv)
    ours, beam_args = split_beam_arguments(argv)
    # --help lists the flags (exit 0); a bad flag or value is one line, exit 2 (musicsim.cli).
    status = parse_command_line(FLAGS, ours, doc=__doc__, usage=USAGE)
    if isinstance(status, int):
        return status
    if beam_args and FLAGS.runner == "local":
        return usage_error(f"Unknown command line flag(s) {beam_args} (with a Beam --runner they would be Beam "
                           "pipeline options)", usage=USAGE)
    if FLAGS.help:
        print(__doc__)
        print(FLAGS.get_help(include_special_flags=False))
        return 0
    if not FLAGS.model_dir:
        return usage_error("--model_dir is required", usage=USAGE)
    if not FLAGS.saved_model and not (FLAGS.audio and FLAGS.output):
        return usage_error("give --audio and --output (embeddings), or --saved_model (serving)", usage=USAGE)
    logging.getLogger("tensorflow").setLevel(logging.ERROR)  # estimator INFO lines
    status = 0
    try:
        if FLAGS.saved_model:
            written = export_saved_model(model_dir=FLAGS.model_dir, export_dir=FLAGS.saved_model,
                                         overwrite=FLAGS.overwrite)
            for name, path in written.items():
                print(f"saved model ({name}): {path}")
        if FLAGS.audio:
            summary = export_embeddings(model_dir=FLAGS.model_dir, audio=FLAGS.audio, output=FLAGS.output,
                                        batch_size=FLAGS.batch_size, workers=FLAGS.workers,
                                        group_column=FLAGS.group_column, progress=FLAGS.progress,
                                        window_seconds=FLAGS.window_seconds, runner=FLAGS.runner,
                                        beam_args=beam_args)
            print(summary)
            if not summary.written:
                print(f"error: no file could be embedded; {summary.output} was left as it was", file=sys.stderr)
                status = 1
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return status


def cli() -> None:
    """``python -m experiments.export`` and the ``musicsim-export`` console script."""
    sys.exit(main())


if __name__ == "__main__":
    cli()
