"""The engine to use on your own music: the configuration that ranked best on albums no model had heard.

On the album-disjoint split of the extended corpus (``benchmarks/generalisation.py``: the test albums are
never seen in training), the standardised librosa features fused with the four pretrained musicnn
taggers, with weights chosen on the eval split and the test split re-ranked by the catalog
(``musicsim.rerank``, settings chosen on eval), ranked best: catalog mAP 0.676 and PC 0.774, against 0.654
/ 0.772 for librosa alone, 0.494 / 0.690 for musicnn MSD alone and 0.525 / 0.672 for MFCC statistics. The
paper's WaveNet (``make demo``) stays the reproduction; this is the search default.

One command builds it on a prepared dataset (an album-folder tree prepared with ``data_prep.build`` is
one: same album = similar, which is all the fusion weights and the re-ranking are chosen by), fits every
part, fuses them, scores the test split and indexes the whole catalog:

    python -m experiments.recommended --dataset=data/mymusic --output=runs/mymusic
    python -m musicsim.serve --index=runs/mymusic/fusion/index

Every part is a run directory of its own under ``--output`` (``librosa/``, ``musicnn_msd/``, ...), reused
when it has finished: rerunning resumes. The musicnn weights come from the musicnn wheel on the package
index, fetched once into the project's cache (``musicsim.pretrained``).
"""
from __future__ import annotations

import os
import sys
from typing import Mapping, NoReturn

from absl import flags

from musicsim.cli import AT_LEAST_ONE, check_numeric_flags, parse_command_line, run_command, usage_error

# The fusion's parts: run name -> (model, params). These are the benchmark's fitted rows of its "fusion".
PARTS: dict[str, tuple[str, dict]] = {
    "librosa": ("librosa", {}),
    "musicnn_msd": ("musicnn", {"musicnn_model": "MSD_musicnn"}),
    "musicnn_mtt": ("musicnn", {"musicnn_model": "MTT_musicnn"}),
    "vgg_msd": ("musicnn", {"musicnn_model": "MSD_vgg"}),
    "vgg_mtt": ("musicnn", {"musicnn_model": "MTT_vgg"}),
}
FUSION_RUN = "fusion"
RERANK = "auto"  # chosen on the eval split by the catalog metric, never on test

FLAGS = flags.FlagValues()
flags.DEFINE_string("dataset", None, "A prepared dataset folder (python -m data_prep.build).", flag_values=FLAGS)
flags.DEFINE_string("output", None, "Folder of the part runs, the fusion run and its index.", flag_values=FLAGS)
flags.DEFINE_integer("workers", None, "Feature-extraction processes (default: all cores).", flag_values=FLAGS)
flags.DEFINE_integer("eval_repeats", 5, "Protocol seeds of the test lists.", flag_values=FLAGS)
check_numeric_flags(FLAGS, bounds={"workers": AT_LEAST_ONE, "eval_repeats": AT_LEAST_ONE})
USAGE = "usage: python -m experiments.recommended --dataset=DIR --output=DIR [--workers=N] [--eval_repeats=5]"


def build(*, dataset_dir: str, output: str, parts: Mapping[str, tuple[str, dict]] = PARTS,
          workers: int | None = None, eval_repeats: int = 5) -> str:
    """Fit every part, fuse them and index the catalog; returns the fusion's run directory.

    Parameters
    ----------
    dataset_dir : a prepared dataset (its train split fits, eval chooses the weights and re-ranking,
        test is scored)
    output : the parent of one run directory per part and ``fusion/`` (with ``fusion/index``)
    parts : run name -> (``--model``, its params); default `PARTS`
    workers, eval_repeats : as ``experiments.run``
    """
    from experiments.run import RunConfig, build_serving_index, run
    from musicsim.rundir import RunDir

    if len(parts) < 2:
        raise ValueError(f"a fusion needs at least two parts, got {list(parts)}")
    common = dict(dataset_dir=dataset_dir, workers=workers, eval_repeats=eval_repeats)
    part_dirs = []
    for name, (model, params) in parts.items():
        model_dir = os.path.join(output, name)
        part_dirs.append(model_dir)
        if RunDir(model_dir).finished():
            print(f"{name}: {model_dir} has finished, reused")
            continue
        print(f"{name}: fitting --model={model} {params or ''} into {model_dir}")
        run(RunConfig(model=model, model_dir=model_dir, params=dict(params), **common))
    fusion_dir = os.path.join(output, FUSION_RUN)
    if not RunDir(fusion_dir).finished():
        run(RunConfig(model="fusion", model_dir=fusion_dir, params={"fusion_runs": tuple(part_dirs)},
                      rerank=RERANK, **common))
    build_serving_index(model_dir=fusion_dir)
    return fusion_dir


def main(argv) -> int:
    """``python -m experiments.recommended --dataset=DIR --output=DIR`` (``argv`` program name first); returns
    the exit status: 0 after ``--help``, 2 (one line on stderr) on misuse or a dataset it cannot use."""
    status = parse_command_line(FLAGS, argv, doc=__doc__, usage=USAGE)
    if isinstance(status, int):
        return status
    if not FLAGS.dataset or not FLAGS.output:
        return usage_error("give --dataset (a prepared dataset) and --output", usage=USAGE)
    from musicsim.dataset import is_prepared
    from musicsim.evaluation import dataset_query_problems

    if not is_prepared(FLAGS.dataset):
        print(f"error: --dataset={FLAGS.dataset} is not a prepared dataset (no dataset.json and tracks.csv): "
              "prepare it with `python -m data_prep.build`", file=sys.stderr)
        return 2
    problems = dataset_query_problems(dataset_dir=FLAGS.dataset, splits=("eval", "test"))
    if problems:  # the fusion's weights are chosen on eval, its figures are test's
        print(f"error: {FLAGS.dataset} is too small for the evaluation protocol: {'; '.join(problems)}",
              file=sys.stderr)
        return 2
    from experiments.run import quiet_tensorflow
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
