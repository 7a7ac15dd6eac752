"""Train, evaluate and export one model: ``python -m experiments.run --model=wavenet``.

Learned models (wavenet, rnn) train under ``tf.estimator.train_and_evaluate`` with early stopping
on the eval NDCG@6 and resume from ``--model_dir``; fitted models (librosa, mfcc) are fitted on
the train split; ``random`` and ``worst`` are baselines. Every model is then scored by the same
numpy protocol (``musicsim.evaluation``) on the test split, beside the random and worst baselines
on the same lists, and its embeddings are exported to ``model_dir/embeddings.npz``.
"""
from __future__ import annotations

import os
import sys
import time

# The same seed, the same model on any x86-64 machine with AVX2: three things change a run's numbers (by an
# ulp at first, a different table after 200 steps), measured: oneDNN's kernels (on by default in TensorFlow
# 2.15); the matrix products under TensorFlow's own kernels, which call oneDNN's sgemm, picked at run time by
# the CPU's instruction set (AVX-512 and AVX2 round differently); and the intra-op thread count (it splits the
# products differently). So a run uses TensorFlow's own kernels, oneDNN's AVX2 code and 2 intra-op threads,
# whatever the machine. TensorFlow and oneDNN read these once, when they load: set before the imports below.
# Each one set in the environment wins (e.g. TF_NUM_INTRAOP_THREADS=16 for speed, at the price of that). Only
# when this module is the program (python -m experiments.run, musicsim-run): a command importing it keeps its own.
REPRODUCIBLE_ENVIRONMENT = {"TF_ENABLE_ONEDNN_OPTS": "0", "ONEDNN_MAX_CPU_ISA": "AVX2", "TF_NUM_INTRAOP_THREADS": "2"}
if __name__ == "__main__" or os.path.basename(sys.argv[0] if sys.argv else "") == "musicsim-run":
    for _name, _value in REPRODUCIBLE_ENVIRONMENT.items():
        os.environ.setdefault(_name, _value)

import tensorflow as tf
from absl import app, flags
from absl import logging as absl_logging
from tensorflow.python.util import deprecation

from musicsim import distribute, evaluation, head, pretraining
from musicsim import models as registry
from musicsim.cli import config_values, define_config_flags, global_flags_parser, usage_error
from musicsim.data.dataset import is_prepared
from musicsim.index import build_index
from musicsim.pretraining import Augmentation
from musicsim.rundir import RunConfigMismatch, RunDir
from musicsim.train.learned import SettingsError
from musicsim.train.run import format_table, run
from musicsim.train.settings import MAX_EVAL_SECONDS, RunConfig, configs_for

__all__ = ["RunConfig", "run", "format_table", "build_serving_index", "quiet_tensorflow", "MAX_EVAL_SECONDS"]

FLAGS = flags.FLAGS
flags.DEFINE_enum("model", "wavenet", list(registry.names()), "Which model to run.")
flags.DEFINE_string("dataset", "demo", "A prepared dataset DIR (data_prep.build), or 'demo' for the demo corpus "
                    "(built and prepared on first use).")
flags.DEFINE_string("model_dir", None, "Run directory (default tensorboard_logs/<model>-<dataset>-<timestamp>). "
                    "Rerunning with the same directory resumes from its latest checkpoint.")
USAGE = "usage: python -m experiments.run [--model=wavenet] [--dataset=DIR] [--model_dir=DIR] [...]"


def flag_configs() -> tuple[type, ...]:
    """Every config a flag sets: the run's settings, the augmentation, the head's, every registered model's
    (and the configs they use), the pretraining objectives'. A hyperparameter is one config field."""
    models = [config for name in registry.names() for config in registry.configs(name)]
    return tuple(dict.fromkeys([RunConfig, Augmentation, head.HeadConfig, *models, *pretraining.CONFIGS]))


def define_flags() -> dict:
    """Define the flags of the configs not defined yet (a model registered since is one more call, and one
    more ``--model`` choice)."""
    FLAGS["model"].parser.enum_values = list(registry.names())
    # Filed under the module absl files this one's own flags under (the script's path under python -m).
    return define_config_flags(flag_configs(), module_name=FLAGS.find_module_defining_flag("model"))


define_flags()


def config_from_flags() -> RunConfig:
    """The run the command line asks for: the run's settings, and the params of its configs only."""
    config_flags = define_flags()
    dataset_dir = resolve_dataset(FLAGS.dataset)
    model_dir = FLAGS.model_dir or os.path.join(
        "tensorboard_logs", f"{FLAGS.model}-{os.path.basename(os.path.normpath(dataset_dir))}-"
                            f"{time.strftime('%Y%m%d-%H%M%S')}")
    settings = config_values(config_flags, [RunConfig])
    params = config_values(config_flags, configs_for(FLAGS.model, pretrain=settings["pretrain"]))
    augmentation = config_values(config_flags, [Augmentation])
    return RunConfig(model=FLAGS.model, dataset_dir=dataset_dir, model_dir=model_dir, params=params,
                     augmentation=augmentation, **settings)


DEMO_CORPUS_DIR = os.path.join("data", "demo_corpus")
DEMO_DATASET_DIR = os.path.join("data", "demo")


def resolve_dataset(name_or_dir: str) -> str:
    """A prepared dataset directory; ``demo`` builds and prepares the demo corpus on first use."""
    if name_or_dir != "demo":
        if not is_prepared(name_or_dir):
            raise app.UsageError(f"--dataset={name_or_dir} is not a prepared dataset (no dataset.json): "
                                 "prepare it with `python -m data_prep.build` or use --dataset=demo")
        return name_or_dir
    if not is_prepared(DEMO_DATASET_DIR):
        from data_prep.build import prepare  # why: it defines its own flags on absl's global FLAGS, as this does

        print(f"Preparing the demo corpus into {DEMO_DATASET_DIR} (first use; downloads Debian packages) ...")
        prepare(dataset="demo", input_path=DEMO_CORPUS_DIR, output=DEMO_DATASET_DIR, max_seconds=60.0)
    return DEMO_DATASET_DIR


def quiet_tensorflow(*, verbosity: int | None = None) -> None:
    """TensorFlow's and the estimator's INFO logs only when asked: absl's ``--verbosity`` (``-v``) 0 or more.

    By default (absl's -1) a run shows its own lines (a progress bar of the steps with the loss, one line
    per evaluation, the table) and TensorFlow's warnings and errors; ``--verbosity=0`` (or ``-v 1``) brings
    back the estimator's internals (``Calling model_fn``, the RunConfig, ``loss = ..., step = ...``).
    Deprecation chatter is dropped either way. ``verbosity`` None reads absl's flag when it was given.
    """
    if verbosity is None:
        # absl.app.run sets the verbosity to 0 (INFO) when the flag is not given: only a given flag counts.
        given = flags.FLAGS.is_parsed() and "verbosity" in flags.FLAGS and flags.FLAGS["verbosity"].present
        verbosity = absl_logging.get_verbosity() if given else -1
    deprecation._PRINT_DEPRECATION_WARNINGS = False
    level = tf.compat.v1.logging.INFO if verbosity >= 0 else tf.compat.v1.logging.WARN
    if verbosity >= 1:
        level = tf.compat.v1.logging.DEBUG
    tf.compat.v1.logging.set_verbosity(level)
    tf.get_logger().propagate = False  # absl's root handler would print every line a second time


def main(argv) -> None:
    """The command, once absl parsed its flags."""
    del argv
    run_from_flags()


def run_from_flags() -> dict:
    """The run the parsed flags ask for; its results (exits 2 on a usage error or a dataset too small)."""
    # Splitting the CPU into replicas and joining a multi-worker cluster only work before TF initialises.
    distribute.make_strategy(FLAGS.distribute, num_cpu_replicas=FLAGS.num_cpu_replicas)
    quiet_tensorflow()
    if not FLAGS["dataset"].present:
        print(f"no --dataset given: training on the demo corpus ({DEMO_DATASET_DIR}, prepared on first use)")
    try:
        config = config_from_flags()
    except app.UsageError as err:
        sys.exit(usage_error(str(err), usage=USAGE))
    # Before training: a split where no track has a similar and a non-similar track cannot be scored.
    evaluated = ("eval", "test") if registry.kind_of(config.model) != "learned" or config.pretrain else (
        "train", "eval", "test")
    problems = evaluation.dataset_query_problems(dataset_dir=config.dataset_dir, splits=evaluated,
                                                 relevance=config.relevance,
                                                 min_shared_tags=config.min_shared_tags)
    if problems:
        print(f"error: {config.dataset_dir} is too small for the evaluation protocol: {'; '.join(problems)}",
              file=sys.stderr)
        sys.exit(2)
    try:
        results = run(config)
    except SettingsError as err:
        sys.exit(usage_error(str(err), usage=USAGE))
    except RunConfigMismatch as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    if results and FLAGS.dataset == "demo":
        build_serving_index(model_dir=config.model_dir)
    return results


def build_serving_index(*, model_dir: str) -> str | None:
    """Index a run's ``embeddings.npz`` into ``model_dir/index`` and print the command that serves it.

    Returns the index directory, or None when the run exported no embeddings (a baseline).
    """
    run_dir = RunDir(model_dir)
    if not run_dir.has_embeddings():
        return None
    output = os.path.join(model_dir, "index")
    index = build_index(embeddings=run_dir.embeddings_path, output=output, model_dir=model_dir)
    print(f"indexed {len(index)} tracks into {output}; search them in a browser with:\n"
          f"  python -m musicsim.search.serve --index={output}")
    return output


def parse_flags(argv: list[str]) -> list[str]:
    """Parse ``argv`` (program name first) into the flags, defined from the registry as it is now (a model
    registered after this module was imported has its ``--model`` and its config's flags)."""
    define_flags()
    FLAGS.unparse_flags()
    return global_flags_parser(module=sys.modules[__name__], doc=__doc__, usage=USAGE)(argv)


def main_argv(argv: list[str]) -> dict:
    """The command in-process: ``argv`` parsed (`parse_flags`), then `main`; its results."""
    parse_flags(argv)
    return run_from_flags()


def cli() -> None:
    """``python -m experiments.run`` and the ``musicsim-run`` console script: ``--help`` lists this command's
    flags (exit 0), a bad flag or value is one line and exit 2 (``musicsim.cli``)."""
    app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
    cli()
