"""Export a run: embed a music collection for the index, or save the model for serving.

Embeddings of a whole collection (a folder, searched recursively, or a CSV manifest)::

    python -m experiments.export --model_dir=RUN --audio=DIR_or_manifest.csv --output=FILE.parquet
        [--batch_size=8] [--workers=N] [--group_column=auto]

writes ``FILE.parquet`` (columns ``track_id``, ``path``, ``embedding`` list<float32>, ``model``,
``duration_s``, and ``group``: the album folder or the manifest's label, for
``musicsim.search.query --exclude_same_group``), ``FILE.npy`` ``[N, D]`` + ``FILE.ids.json`` (a JSON array of
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

import logging
import sys
from typing import Sequence

from absl import flags

from data_prep.shards import BEAM_RUNNERS
from experiments.export_embeddings import (FLUSH_EVERY_SECONDS, STATE_FORMAT_VERSION, ExportSummary, export_embeddings,
                                           output_paths, provenance, read_state, write_outputs)
from experiments.export_listing import (AUTO_GROUP_COLUMNS, NULL_TRACK_IDS, AudioEntry, EmptyInputError, Listing,
                                        list_audio, list_folder, list_manifest)
from experiments.export_saved_model import (LEGACY_SAVED_MODEL_KIND, LEGACY_SAVED_MODEL_MANIFEST, SAVED_MODEL_KIND,
                                            SAVED_MODEL_MANIFEST, export_saved_model, is_legacy_saved_model_export)
from musicsim.cli import AT_LEAST_ONE, NON_NEGATIVE, check_numeric_flags, parse_command_line, usage_error

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



__all__ = ["AUTO_GROUP_COLUMNS", "AudioEntry", "EmptyInputError", "ExportSummary", "FLUSH_EVERY_SECONDS",
           "LEGACY_SAVED_MODEL_KIND", "LEGACY_SAVED_MODEL_MANIFEST", "Listing", "NULL_TRACK_IDS", "SAVED_MODEL_KIND",
           "SAVED_MODEL_MANIFEST", "STATE_FORMAT_VERSION", "cli", "export_embeddings", "export_saved_model",
           "is_legacy_saved_model_export", "list_audio", "list_folder", "list_manifest", "main", "output_paths",
           "provenance", "read_state", "split_beam_arguments", "write_outputs"]


if __name__ == "__main__":
    cli()
