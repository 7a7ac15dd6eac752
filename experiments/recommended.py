"""The engine to use on your own music: the one-pass pretrained engine, scored and indexed in one command.

``--model=pretrained`` (`musicsim.models.pretrained_engine`): each file decoded once, musicnn's log-mel
spectrogram computed once, the four musicnn taggers (MSD and MTT, musicnn and vgg: knowledge of a million
songs) run on the same patches, one vector per track. It reads no label: fitting learns only the
standardisation of each dimension, and the index standardises over its own catalog again. Its blocks,
patch sampling and re-ranking are fixed in the code, chosen by album folds over the extended corpus
(``benchmarks/generalisation.py --protocol=album_folds``: every album a test album once, whatever reads labels
sees the other albums only); see ``docs/engine-choice.md``. The fusion of librosa with the four taggers
(`PARTS`, earlier versions' default) stays a benchmark row.

One command builds it on a prepared dataset: the engine is fitted on the train split's files (no labels),
the test split is scored (labels only report figures) and the whole catalog is indexed::

    python -m experiments.recommended --dataset=data/mymusic --output=runs/mymusic
    python -m musicsim.search.serve --index=runs/mymusic/pretrained/index

For a music folder with no labels at all, ``python -m musicsim.scan --audio=DIR --index=INDEX`` indexes the
same engine in place. The run is a run directory of its own under ``--output``, reused when it has finished:
rerunning resumes. The musicnn weights come from the musicnn wheel on the package index, fetched once into
the project's cache (``musicsim.pretrained``).
"""
from __future__ import annotations

import os
import sys
from typing import NoReturn

from absl import flags

from musicsim.cli import AT_LEAST_ONE, check_numeric_flags, parse_command_line, run_command, usage_error
from musicsim.data.dataset import is_prepared
from musicsim.evaluation import dataset_query_problems
from musicsim.rundir import RunDir

# The fusion of earlier versions (librosa + the four taggers): run name -> (model, params). No longer
# built here; the benchmarks compare the engine with it (its rows in benchmarks/generalisation.py).
PARTS: dict[str, tuple[str, dict]] = {
    "librosa": ("librosa", {}),
    "musicnn_msd": ("musicnn", {"musicnn_model": "MSD_musicnn"}),
    "musicnn_mtt": ("musicnn", {"musicnn_model": "MTT_musicnn"}),
    "vgg_msd": ("musicnn", {"musicnn_model": "MSD_vgg"}),
    "vgg_mtt": ("musicnn", {"musicnn_model": "MTT_vgg"}),
}
ENGINE_MODEL = "pretrained"
ENGINE_RUN = "pretrained"

FLAGS = flags.FlagValues()
flags.DEFINE_string("dataset", None, "A prepared dataset folder (python -m data_prep.build).", flag_values=FLAGS)
flags.DEFINE_string("output", None, "Folder of the engine's run and its index.", flag_values=FLAGS)
flags.DEFINE_integer("workers", None, "Feature-extraction processes (default: all cores).", flag_values=FLAGS)
flags.DEFINE_integer("eval_repeats", 5, "Protocol seeds of the test lists.", flag_values=FLAGS)
check_numeric_flags(FLAGS, bounds={"workers": AT_LEAST_ONE, "eval_repeats": AT_LEAST_ONE})
USAGE = "usage: python -m experiments.recommended --dataset=DIR --output=DIR [--workers=N] [--eval_repeats=5]"


def build(*, dataset_dir: str, output: str, workers: int | None = None, eval_repeats: int = 5) -> str:
    """Fit the engine's standardisation, score the test split and index the whole catalog; returns the run directory.

    Parameters
    ----------
    dataset_dir : a prepared dataset (its train split's files fit the standardisation, no label read; test is
        scored)
    output : the parent of the engine's run directory (``output/pretrained``, with ``index/``)
    workers, eval_repeats : as ``experiments.run``
    """
    from experiments.run import RunConfig, build_serving_index, run  # why: TensorFlow loads only for a valid command

    model_dir = os.path.join(output, ENGINE_RUN)
    if RunDir(model_dir).finished():
        print(f"{ENGINE_RUN}: {model_dir} has finished, reused")
    else:
        run(RunConfig(model=ENGINE_MODEL, model_dir=model_dir, dataset_dir=dataset_dir, workers=workers,
                      eval_repeats=eval_repeats))
    build_serving_index(model_dir=model_dir)
    return model_dir


def main(argv) -> int:
    """``python -m experiments.recommended --dataset=DIR --output=DIR`` (``argv`` program name first); returns
    the exit status: 0 after ``--help``, 2 (one line on stderr) on misuse or a dataset it cannot use."""
    status = parse_command_line(FLAGS, argv, doc=__doc__, usage=USAGE)
    if isinstance(status, int):
        return status
    if not FLAGS.dataset or not FLAGS.output:
        return usage_error("give --dataset (a prepared dataset) and --output", usage=USAGE)
    if not is_prepared(FLAGS.dataset):
        print(f"error: --dataset={FLAGS.dataset} is not a prepared dataset (no dataset.json and tracks.csv): "
              "prepare it with `python -m data_prep.build`", file=sys.stderr)
        return 2
    problems = dataset_query_problems(dataset_dir=FLAGS.dataset, splits=("eval", "test"))
    if problems:  # the run scores eval and test: each needs queries
        print(f"error: {FLAGS.dataset} is too small for the evaluation protocol: {'; '.join(problems)}",
              file=sys.stderr)
        return 2
    from experiments.run import quiet_tensorflow  # why: TensorFlow loads only for a valid command
    quiet_tensorflow()
    try:
        build(dataset_dir=FLAGS.dataset, output=FLAGS.output, workers=FLAGS.workers, eval_repeats=FLAGS.eval_repeats)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


def cli() -> NoReturn:
    """``python -m experiments.recommended`` and the ``musicsim-recommended`` console script."""
    run_command(main)


if __name__ == "__main__":
    cli()
