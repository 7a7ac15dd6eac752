"""Train, evaluate and export one model: ``python -m experiments.run --model=wavenet``.

Learned models (wavenet, rnn) train under ``tf.estimator.train_and_evaluate`` with early stopping
on the eval NDCG@6 and resume from ``--model_dir``; fitted models (librosa, mfcc) are fitted on
the train split; ``random`` and ``worst`` are baselines. Every model is then scored by the same
numpy protocol (``musicsim.evaluation``) on the test split, beside the random and worst baselines
on the same lists, and its embeddings are exported to ``model_dir/embeddings.npz``.
"""
from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field

from absl import app, flags

from musicsim import models as registry

FLAGS = flags.FLAGS
flags.DEFINE_enum("model", "wavenet", list(registry.ALL_MODELS), "Which model to run.")
flags.DEFINE_string("dataset", "demo", "A prepared dataset DIR (data_prep.build), or 'demo' for the demo corpus "
                    "(built and prepared on first use).")
flags.DEFINE_string("model_dir", None, "Run directory (default tensorboard_logs/<model>-<dataset>-<timestamp>). "
                    "Rerunning with the same directory resumes from its latest checkpoint.")
flags.DEFINE_string("similarity_def", None, "Similarity definition: album, genre, label, tags, tags_graded "
                    "(default: the dataset's).")
flags.DEFINE_integer("min_shared_tags", None, "Tags in common for two tracks to be similar (tag datasets).")
# The head.
flags.DEFINE_enum("loss", "lambda", ["lambda", "pairwise"], "LambdaLoss (listwise) or the pairwise hinge loss.")
flags.DEFINE_enum("similarity", "cosine", ["cosine", "euclidean"], "How embeddings are compared.")
flags.DEFINE_float("margin", 1.0, "Margin of the pairwise hinge loss.")
flags.DEFINE_float("learning_rate", 1e-3, "Adam learning rate.")
flags.DEFINE_float("clip_norm", 5.0, "Clip gradients to this global norm (0: no clipping).")
flags.DEFINE_float("dropout", 0.0, "Dropout rate.")
# Lists and batches.
flags.DEFINE_enum("list_kind", None, ["listwise", "pairwise"], "Training lists (default: pairwise for the pairwise "
                  "loss, listwise otherwise).")
flags.DEFINE_integer("n_similar", 3, "Similar candidates per list.")
flags.DEFINE_integer("n_dissimilar", 3, "Non-similar candidates per list.")
flags.DEFINE_integer("batch_size", 4, "Lists per training batch.")
flags.DEFINE_float("crop_seconds", 4.0, "Random crop of each track while training.")
flags.DEFINE_float("eval_seconds", 10.0, "Centred crop for the estimator's eval lists (0: whole tracks).")
flags.DEFINE_float("predict_seconds", 0.0, "Centred crop when exporting embeddings (0: whole tracks).")
# WaveNet.
flags.DEFINE_integer("channels", 32, "WaveNet residual channels.")
flags.DEFINE_integer("skip_channels", 32, "WaveNet skip channels.")
flags.DEFINE_integer("filter_size", 2, "WaveNet filter size.")
flags.DEFINE_integer("dilation_base", 2, "Dilation growth per layer (2 with filter 2, 4 with filter 4).")
flags.DEFINE_integer("num_stacks", 3, "WaveNet stacks.")
flags.DEFINE_integer("layers_per_stack", 6, "WaveNet layers per stack.")
flags.DEFINE_list("stack_pool_sizes", ["4"], "Pooling after each stack (one value, or one per stack).")
flags.DEFINE_enum("pooling", "max", ["max", "avg"], "Pooling function between stacks and at the end.")
flags.DEFINE_integer("final_channels", 64, "Channels of the final conv (embedding size without dense layers).")
flags.DEFINE_list("dense_layers", [], "Sizes of dense layers after the final pooling, e.g. 64.")
# RNN.
flags.DEFINE_integer("rnn_units", 64, "LSTM units.")
flags.DEFINE_integer("section_frames", 1000, "LSTM input sections (frames).")
flags.DEFINE_enum("rnn_embedding", "states", ["outputs", "states"], "LSTM embedding: outputs or states.")
flags.DEFINE_enum("rnn_reduce", "mean", ["mean", "max", "last"], "How sections are reduced to one vector.")
# Fitted models.
flags.DEFINE_float("variance_ratio", 0.99, "librosa: PCA keeps the components explaining this share of variance.")
# Training control.
flags.DEFINE_integer("max_steps", 400, "Training steps (global).")
flags.DEFINE_float("max_minutes", 10.0, "Stop training after this many minutes (0: no limit).")
flags.DEFINE_integer("save_checkpoints_steps", 50, "Checkpoint (and evaluate) every N steps.")
flags.DEFINE_integer("early_stopping_patience", 200, "Stop when eval NDCG@6 has not risen for N steps (0: off).")
flags.DEFINE_integer("seed", 0, "Random seed (lists, crops, initialisation).")
flags.DEFINE_integer("eval_repeats", 5, "Seeds of the test protocol (mean and std are reported).")
flags.DEFINE_integer("workers", None, "Processes for feature extraction / data prep (default: all cores).")


@dataclass
class RunConfig:
    """Everything one run needs; built from flags by ``main`` or directly by tests."""

    model: str
    dataset_dir: str
    model_dir: str
    similarity_def: str | None = None
    min_shared_tags: int | None = None
    params: dict = field(default_factory=dict)  # head + model hyperparameters, estimator ``params``
    list_kind: str | None = None
    n_similar: int = 3
    n_dissimilar: int = 3
    batch_size: int = 4
    crop_seconds: float = 4.0
    eval_seconds: float | None = 10.0
    predict_seconds: float | None = None
    max_steps: int = 400
    max_minutes: float | None = 10.0
    save_checkpoints_steps: int = 50
    early_stopping_patience: int = 200
    seed: int = 0
    eval_repeats: int = 5
    workers: int | None = None


def config_from_flags() -> RunConfig:
    dataset_dir = resolve_dataset(FLAGS.dataset)
    model_dir = FLAGS.model_dir or os.path.join(
        "tensorboard_logs", f"{FLAGS.model}-{os.path.basename(os.path.normpath(dataset_dir))}-"
                            f"{time.strftime('%Y%m%d-%H%M%S')}")
    params = dict(
        loss=FLAGS.loss, similarity=FLAGS.similarity, margin=FLAGS.margin, learning_rate=FLAGS.learning_rate,
        clip_norm=FLAGS.clip_norm, dropout=FLAGS.dropout,
        channels=FLAGS.channels, skip_channels=FLAGS.skip_channels, filter_size=FLAGS.filter_size,
        dilation_base=FLAGS.dilation_base, num_stacks=FLAGS.num_stacks, layers_per_stack=FLAGS.layers_per_stack,
        stack_pool_sizes=[int(s) for s in FLAGS.stack_pool_sizes], pooling=FLAGS.pooling,
        final_channels=FLAGS.final_channels, dense_layers=[int(s) for s in FLAGS.dense_layers],
        rnn_units=FLAGS.rnn_units, section_frames=FLAGS.section_frames, rnn_embedding=FLAGS.rnn_embedding,
        rnn_reduce=FLAGS.rnn_reduce, variance_ratio=FLAGS.variance_ratio)
    return RunConfig(
        model=FLAGS.model, dataset_dir=dataset_dir, model_dir=model_dir, similarity_def=FLAGS.similarity_def,
        min_shared_tags=FLAGS.min_shared_tags, params=params, list_kind=FLAGS.list_kind,
        n_similar=FLAGS.n_similar, n_dissimilar=FLAGS.n_dissimilar, batch_size=FLAGS.batch_size,
        crop_seconds=FLAGS.crop_seconds, eval_seconds=FLAGS.eval_seconds or None,
        predict_seconds=FLAGS.predict_seconds or None, max_steps=FLAGS.max_steps,
        max_minutes=FLAGS.max_minutes or None, save_checkpoints_steps=FLAGS.save_checkpoints_steps,
        early_stopping_patience=FLAGS.early_stopping_patience, seed=FLAGS.seed, eval_repeats=FLAGS.eval_repeats,
        workers=FLAGS.workers)


DEMO_CORPUS_DIR = os.path.join("data", "demo_corpus")
DEMO_DATASET_DIR = os.path.join("data", "demo")


def resolve_dataset(name_or_dir: str) -> str:
    """A prepared dataset directory; ``demo`` builds and prepares the demo corpus on first use."""
    if name_or_dir != "demo":
        if not os.path.exists(os.path.join(name_or_dir, "dataset.json")):
            raise app.UsageError(f"--dataset={name_or_dir} is not a prepared dataset (no dataset.json): "
                                 "prepare it with `python -m data_prep.build` or use --dataset=demo")
        return name_or_dir
    if not os.path.exists(os.path.join(DEMO_DATASET_DIR, "dataset.json")):
        from data_prep.build import prepare

        print(f"Preparing the demo corpus into {DEMO_DATASET_DIR} (first use; downloads Debian packages) ...")
        prepare(dataset="demo", input=DEMO_CORPUS_DIR, output=DEMO_DATASET_DIR, max_seconds=60.0)
    return DEMO_DATASET_DIR


def main(argv):
    del argv
    from experiments.runner import run

    results = run(config_from_flags())
    return 0 if results else 1


if __name__ == "__main__":
    app.run(main)
