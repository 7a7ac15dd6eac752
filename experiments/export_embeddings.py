"""A run's embeddings of a collection, written for the index: resumable, swapped in only when complete.

`export_embeddings` lists the collection (`experiments.export_listing`), skips what the state file
(``FILE.state.jsonl``) already holds, embeds the rest (here, or on a Beam runner:
`experiments.export_beam`), then writes the Parquet, ``.npy``, ids, meta and skip list together
(`write_outputs`). The files and the command line are described in `experiments.export`.
"""
from __future__ import annotations

import csv
import json
import os
import sys
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
from tqdm.auto import tqdm

from data_prep.shards import BEAM_RUNNERS
from experiments.export_listing import AudioEntry, EmptyInputError, Listing, list_audio
from musicsim.atomic import atomic_open
from musicsim.data.audio import AUDIO_EXTENSIONS, file_duration
from musicsim.embedder import Embedder, load_embedder
from musicsim.index.embeddings_io import embedding_file_writers

STATE_FORMAT_VERSION = 1
# How often the state file is flushed to disk while embedding.
FLUSH_EVERY_SECONDS = 5.0


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
            # apache_beam is needed only with a Beam --runner (an optional dependency).
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
