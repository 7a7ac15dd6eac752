"""``experiments.export --runner=...``: a run's embedding of a collection as an Apache Beam pipeline.

The driver (``experiments.export.export_embeddings``) lists the collection and decides which files
still need embedding (its state file), as the local export does; this module embeds them on a Beam
runner::

    Create([(index, path), ...]) | Reshuffle | BatchElements(<= FILES_PER_BATCH files)
        | ParDo(EmbedFilesFn)  -> one JSON row per file: {"index", "embedding" or null, "reason", "duration_s"}
        | WriteToText(WORK/embedded-*.jsonl)   (read back by the driver, then removed)

Each worker loads the run's model once (``DoFn.setup``: ``musicsim.embedder.load_embedder``, with
the window the driver resolved) and embeds a batch of files with the same ``iter_embeddings`` the
local export calls, so a file's vector is the one the local export gives it (float32 values travel
as JSON numbers, which hold them exactly; a model that stacks several files into one batch rounds a
little differently in other company). The driver then writes the Parquet, ``.npy``, ids, meta, skip
list and state with the local export's own code.

The runners and options are data prep's (``data_prep.beam_pipeline.pipeline_options`` and
``make_runner``): DirectRunner is Beam's portable engine in ``multi_processing`` mode with
``--workers`` processes unless the options say otherwise; other runners get their name and the
options as given, and their workers must read the run folder and the audio at the same paths, and
write ``WORK`` (a folder beside the output): a shared mount.
"""
from __future__ import annotations

import json
import os
import shutil
import uuid
from typing import Any, Iterator, Sequence

import apache_beam as beam
import numpy as np
from apache_beam.runners.runner import PipelineState

from data_prep.beam_pipeline import make_runner, pipeline_options
from musicsim.data.audio import file_duration
from musicsim.embedder import Embedder, load_embedder

# Files one worker embeds in one call (one estimator.predict, one fitted model's embed_paths chunk).
FILES_PER_BATCH = 16
EMBEDDED = "embedded"


class EmbedFilesFn(beam.DoFn):
    """A batch of ``(index, path)`` -> one JSON row per file: its vector, or why it has none.

    Parameters
    ----------
    model_dir : the run (readable by the workers)
    window_seconds : the window the driver's embedder uses (0: whole files), so every worker embeds alike
    batch_size : tracks (or windows) per prediction batch
    """

    def __init__(self, *, model_dir: str, window_seconds: float, batch_size: int):
        super().__init__()
        self.model_dir = model_dir
        self.window_seconds = window_seconds
        self.batch_size = batch_size
        self.embedder: Embedder | None = None
        self.embedded = beam.metrics.Metrics.counter("export", "files_embedded")
        self.skipped = beam.metrics.Metrics.counter("export", "files_skipped")

    def setup(self):
        self.embedder = load_embedder(self.model_dir, window_seconds=self.window_seconds)

    def process(self, batch: Sequence[tuple[int, str]]) -> Iterator[str]:
        batch = list(batch)
        paths = [path for _, path in batch]
        # One process per worker already: decoding in this process (workers=1), not in a pool of its own.
        for offset, vector, reason in self.embedder.iter_embeddings(paths=paths, batch_size=self.batch_size,
                                                                    workers=1):
            index, path = batch[offset]
            if vector is None:
                self.skipped.inc()
                yield json.dumps({"index": index, "embedding": None, "reason": str(reason), "duration_s": None})
            else:
                self.embedded.inc()
                yield json.dumps({"index": index, "embedding": [float(x) for x in np.asarray(vector, np.float32)],
                                  "reason": None, "duration_s": file_duration(path)})


def build_pipeline(pipeline: beam.Pipeline, *, paths: Sequence[str], model_dir: str, window_seconds: float,
                   batch_size: int, work_dir: str) -> None:
    """Add the embedding transforms to ``pipeline`` (see the module docstring)."""
    _ = (pipeline
         | "ListFiles" >> beam.Create(list(enumerate(paths)))
         | "SpreadOverWorkers" >> beam.Reshuffle()
         | "Batch" >> beam.BatchElements(min_batch_size=1, max_batch_size=FILES_PER_BATCH)
         | "Embed" >> beam.ParDo(EmbedFilesFn(model_dir=model_dir, window_seconds=window_seconds,
                                              batch_size=batch_size))
         | "WriteRows" >> beam.io.WriteToText(os.path.join(work_dir, EMBEDDED), file_name_suffix=".jsonl"))


def embed_with_beam(*, embedder: Embedder, paths: Sequence[str], runner: str, beam_args: Sequence[str] = (),
                    batch_size: int = 8, workers: int | None = None, work_dir: str
                    ) -> tuple[list[tuple[int, Any, Any]], dict[int, float | None]]:
    """Embed ``paths`` with ``embedder``'s run on a Beam runner.

    Parameters
    ----------
    embedder : the driver's embedder of the run (its ``model_dir`` and ``window_seconds`` go to the workers)
    paths : sequence of str, length n, absolute
    runner : one of ``data_prep.shards.BEAM_RUNNERS``
    beam_args : Beam pipeline options
    batch_size : tracks per prediction batch in a worker
    workers : DirectRunner's worker processes (default: all cores)
    work_dir : a folder the workers can write; the pipeline's rows go to a fresh folder in it, removed after

    Returns
    -------
    embedded : list of ``(index into paths, vector float32 [D] or None, reason or None)``, in ``paths`` order
    durations : index -> the file's duration in seconds as the worker read it (embedded files)

    Raises
    ------
    ValueError
        For bad Beam options, a runner Beam cannot start, or a model Beam cannot take (the built-in engine
        without a run folder).
    RuntimeError
        When the pipeline does not finish, or leaves a file without a row.
    """
    options, _ = pipeline_options(runner=runner, beam_args=beam_args, workers=int(workers or os.cpu_count() or 1),
                                  command="experiments.export")
    model_dir = embedder.model_dir
    if not os.path.isdir(model_dir):
        raise ValueError(f"--runner={runner} needs a run folder the workers can load the model from; "
                         f"{model_dir!r} is not one")
    rows_dir = os.path.join(work_dir, f".export-beam-{os.getpid()}-{uuid.uuid4().hex[:6]}")
    os.makedirs(rows_dir)
    try:
        try:
            pipeline = beam.Pipeline(runner=make_runner(runner, options), options=options)
        except (ImportError, ValueError) as err:  # e.g. DataflowRunner without apache-beam[gcp]
            raise ValueError(f"cannot start Beam runner {runner}: {err}") from err
        build_pipeline(pipeline, paths=paths, model_dir=model_dir, window_seconds=float(embedder.window_seconds or 0),
                       batch_size=batch_size, work_dir=rows_dir)
        state = pipeline.run().wait_until_finish()
        if state != PipelineState.DONE:
            raise RuntimeError(f"Beam pipeline on {runner} ended in state {state}; nothing was written")
        rows: dict[int, dict] = {}
        for name in sorted(os.listdir(rows_dir)):
            if name.startswith(EMBEDDED) and name.endswith(".jsonl"):
                with open(os.path.join(rows_dir, name), encoding="utf-8") as f:
                    for line in f:
                        if line.strip():
                            row = json.loads(line)
                            rows[int(row["index"])] = row  # a retried bundle writes its rows once more
    finally:
        shutil.rmtree(rows_dir, ignore_errors=True)
    missing = [paths[i] for i in range(len(paths)) if i not in rows]
    if missing:
        raise RuntimeError(f"the Beam pipeline returned no row for {len(missing)} files, e.g. {missing[:3]}")
    embedded = [(i, None if rows[i]["embedding"] is None else np.asarray(rows[i]["embedding"], np.float32),
                 rows[i]["reason"]) for i in range(len(paths))]
    durations = {i: rows[i]["duration_s"] for i in range(len(paths))}
    return embedded, durations
