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
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Callable

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

import numpy as np
from absl import app, flags

from musicsim import evaluation, frontends, head, pretraining
from musicsim.cli import (ANY_FINITE, AT_LEAST_ONE, FRACTION, NON_NEGATIVE, POSITIVE, SEED, Bounds,
                          check_numeric_flags, global_flags_parser, usage_error)
from musicsim import models as registry
from musicsim.models import fusion, librosa_pca, musicnn, rnn, wavenet
from musicsim.params import settle_params
from musicsim.pretraining import distillation
from musicsim.similarity import SIMILARITIES
from musicsim.dataset import DatasetInfo, is_prepared, read_catalog
from musicsim.inputs import TrackSet
from musicsim.relevance import make_relevance
from musicsim.rundir import RunConfigMismatch, RunDir

# Every key of a run's params, and its default: one config per component.
RUN_PARAM_CONFIGS = (head.HeadConfig, frontends.FrontendConfig, wavenet.WaveNetConfig, rnn.RNNConfig,
                     pretraining.PredictiveConfig, pretraining.DistillConfig, librosa_pca.LibrosaConfig,
                     fusion.FusionConfig, musicnn.MusicnnConfig)


@dataclass
class RunConfig:
    """Everything one run needs; built from flags by ``main`` or directly by tests.

    ``params`` (the estimator's, one flat dict) is settled on construction: every component's
    default is filled in and a key no component knows is refused (``musicsim.params.settle_params``).
    """

    model: str
    dataset_dir: str
    model_dir: str
    relevance: str | None = None
    min_shared_tags: int | None = None
    params: dict = field(default_factory=dict)  # head + model hyperparameters, estimator ``params``
    list_kind: str | None = None
    n_similar: int = 3
    n_dissimilar: int = 3
    batch_size: int = 4
    crop_seconds: float = 4.0
    eval_seconds: float | None = 10.0
    predict_seconds: float | None = None
    window_seconds: float | None = None  # musicsim.embedder's window for long audio (None: its default)
    max_steps: int = 400
    max_minutes: float | None = 10.0
    save_checkpoints_steps: int = 50
    early_stopping_patience: int = 200
    seed: int = 0
    eval_repeats: int = 5
    workers: int | None = None
    pretrain: str | None = None  # contrastive | predictive | distill: self-supervised, labels unused
    pretrain_splits: tuple[str, ...] = ("train",)  # whose audio pretraining reads
    export_checkpoint: str = "best"  # best | last: the checkpoint that embeds
    early_stopping_metric: str = "NDCG@6"  # eval metric of similarity training's early stopping
    n_negatives: int = 3
    augmentation: dict = field(default_factory=dict)  # musicsim.pretraining.Augmentation settings
    warm_start_from: str | None = None
    warm_start_vars: str = "stacks"
    distribute: str | None = None
    num_cpu_replicas: int | None = None
    rerank: str = "none"  # none | auto | a musicsim.rerank setting: test split also scored re-ranked

    def __post_init__(self):
        self.params = settle_params(self.params, configs=RUN_PARAM_CONFIGS)


def _default(config, key: str):
    """The default of ``key`` in a dataclass (a config class or `RunConfig`)."""
    return {f.name: f.default for f in fields(config)}[key]


def _list_default(values) -> list[str]:
    return [f"{v:g}" if isinstance(v, float) else str(v) for v in (values or ())]


HEAD, FRONTEND, WAVENET, RNN = head.HeadConfig(), frontends.FrontendConfig(), wavenet.WaveNetConfig(), rnn.RNNConfig()
DISTILL, AUGMENTATION = pretraining.DistillConfig(), pretraining.Augmentation()
LIBROSA, FUSION, MUSICNN = librosa_pca.LibrosaConfig(), fusion.FusionConfig(), musicnn.MusicnnConfig()

FLAGS = flags.FLAGS
flags.DEFINE_enum("model", "wavenet", list(registry.names()), "Which model to run.")
flags.DEFINE_string("dataset", "demo", "A prepared dataset DIR (data_prep.build), or 'demo' for the demo corpus "
                    "(built and prepared on first use).")
flags.DEFINE_string("model_dir", None, "Run directory (default tensorboard_logs/<model>-<dataset>-<timestamp>). "
                    "Rerunning with the same directory resumes from its latest checkpoint.")
flags.DEFINE_string("relevance", None, "Label relevance definition (musicsim.relevance): album, genre, label, tags, "
                    "tags_graded (default: the dataset's).")
flags.DEFINE_integer("min_shared_tags", None, "Tags in common for two tracks to be similar (tag datasets).")
# The head.
flags.DEFINE_enum("loss", HEAD.loss, list(head.LOSSES), "LambdaLoss (listwise) or the pairwise hinge loss.")
flags.DEFINE_enum("similarity", HEAD.similarity, list(SIMILARITIES), "How embeddings are compared.")
flags.DEFINE_float("margin", HEAD.margin, "Margin of the pairwise hinge loss.")
flags.DEFINE_float("score_scale", HEAD.score_scale, "Multiply the similarity scores by this before the loss (an "
                   "inverse temperature: cosine scores span only [-1, 1]); rankings and metrics are unchanged.")
flags.DEFINE_float("learning_rate", HEAD.learning_rate, "Adam learning rate.")
flags.DEFINE_float("clip_norm", HEAD.clip_norm, "Clip gradients to this global norm (0: no clipping).")
flags.DEFINE_float("dropout", WAVENET.dropout, "Dropout rate (WaveNet: before each dense layer; LSTM: on its "
                   "outputs).")
# Lists and batches.
flags.DEFINE_enum("list_kind", None, ["listwise", "pairwise"], "Training lists (default: pairwise for the pairwise "
                  "loss, listwise otherwise).")
flags.DEFINE_integer("n_similar", _default(RunConfig, "n_similar"), "Similar candidates per list.")
flags.DEFINE_integer("n_dissimilar", _default(RunConfig, "n_dissimilar"), "Non-similar candidates per list.")
flags.DEFINE_integer("batch_size", _default(RunConfig, "batch_size"), "Lists per training batch.")
flags.DEFINE_float("crop_seconds", _default(RunConfig, "crop_seconds"), "Random crop of each track while training.")
flags.DEFINE_float("eval_seconds", _default(RunConfig, "eval_seconds") or 0.0, "Centred crop for the estimator's "
                   "eval lists (0: whole tracks).")
flags.DEFINE_float("predict_seconds", _default(RunConfig, "predict_seconds") or 0.0, "Centred crop when exporting "
                   "embeddings (0: whole tracks).")
flags.DEFINE_float("window_seconds", _default(RunConfig, "window_seconds"), "Export and search embed long audio in "
                   "windows this long (default: the longer of --crop_seconds and --eval_seconds; 0: whole files).")
# WaveNet.
flags.DEFINE_integer("channels", WAVENET.channels, "WaveNet residual channels.")
flags.DEFINE_integer("skip_channels", WAVENET.skip_channels, "WaveNet skip channels.")
flags.DEFINE_integer("filter_size", WAVENET.filter_size, "WaveNet filter size.")
flags.DEFINE_integer("dilation_base", WAVENET.dilation_base, "Dilation growth per layer (2 with filter 2, 4 with "
                     "filter 4).")
flags.DEFINE_integer("num_stacks", WAVENET.num_stacks, "WaveNet stacks.")
flags.DEFINE_integer("layers_per_stack", WAVENET.layers_per_stack, "WaveNet layers per stack.")
flags.DEFINE_list("stack_pool_sizes", _list_default(WAVENET.stack_pool_sizes), "Pooling after each stack (one "
                  "value, or one per stack).")
flags.DEFINE_enum("pooling", WAVENET.pooling, ["max", "avg"], "Pooling function between stacks and at the end.")
flags.DEFINE_integer("final_channels", WAVENET.final_channels, "Channels of the final conv (embedding size without "
                     "dense layers).")
flags.DEFINE_list("dense_layers", _list_default(WAVENET.dense_layers), "Sizes of dense layers after the final "
                  "pooling, e.g. 64.")
flags.DEFINE_enum("frontend", FRONTEND.frontend, list(frontends.FRONTENDS), "WaveNet input: raw pooled audio (the "
                  "paper's), a log-mel spectrogram computed in the graph, or a learned strided conv (for "
                  "--pool_size=1 data).")
flags.DEFINE_float("frame_seconds", FRONTEND.frame_seconds, "logmel: STFT frame length in seconds.")
flags.DEFINE_float("hop_seconds", FRONTEND.hop_seconds, "logmel: hop between frames in seconds.")
flags.DEFINE_integer("n_mels", FRONTEND.n_mels, "logmel: mel bins (the stacks' input channels).")
flags.DEFINE_integer("frontend_stride", FRONTEND.frontend_stride, "strided: kernel = stride, in input samples.")
flags.DEFINE_enum("mixed_precision", FRONTEND.mixed_precision or "off",
                  ["off", "auto", *frontends.MIXED_PRECISION_DTYPES], "Compute the stacks in low precision (auto: "
                  "float16 on GPU with loss scaling, bfloat16 on CPU); variables stay float32.")
flags.DEFINE_boolean("xla", FRONTEND.xla, "Compile the graph with XLA (global JIT).")
# Pretraining and fine-tuning.
flags.DEFINE_enum("pretrain", None, list(pretraining.PRETRAINING_KINDS), "Self-supervised pretraining of the "
                  "WaveNet instead of similarity training: contrastive (two crops of a track are similar, other tracks "
                  "not), predictive (next-step prediction) or distill (reproduce the pretrained --musicnn_model's "
                  "--musicnn_layer vector of each crop; crops are rounded to whole 3 s patches). Labels are not used.")
flags.DEFINE_enum("distill_loss", DISTILL.distill_loss, list(distillation.LOSSES), "distill: loss against the "
                  "standardised teacher vector.")
flags.DEFINE_float("distill_hop_seconds", DISTILL.distill_hop_seconds, "distill: seconds between the fixed crops of "
                   "a track whose teacher targets are computed once and cached (in the dataset's teacher_cache).")
flags.DEFINE_boolean("distill_augment", DISTILL.distill_augment, "distill: the student reads randomly augmented "
                     "training crops (the --augment_* settings), the target staying the teacher's vector of the "
                     "clean crop.")
flags.DEFINE_integer("n_negatives", _default(RunConfig, "n_negatives"), "contrastive: other tracks of the batch per "
                     "list (batch_size must exceed it).")
flags.DEFINE_list("augment_gain_db", _list_default(AUGMENTATION.gain_db), "contrastive (and --distill_augment): "
                  "random gain range in dB (empty: off).")
flags.DEFINE_float("augment_eq_db", AUGMENTATION.eq_db or 0.0, "contrastive (and --distill_augment): random "
                   "equaliser band gains up to this many dB (0: off).")
flags.DEFINE_list("augment_snr_db", _list_default(AUGMENTATION.noise_snr_db), "contrastive (and --distill_augment): "
                  "additive noise SNR range in dB (empty: off).")
flags.DEFINE_float("augment_shift_seconds", AUGMENTATION.max_shift_seconds or 0.0, "contrastive (and "
                   "--distill_augment): random time shift up to this (0: off).")
flags.DEFINE_list("pretrain_splits", list(_default(RunConfig, "pretrain_splits")), "Splits whose audio the "
                  "self-supervised pretraining reads (labels are never used): train, or e.g. train,eval,test to "
                  "learn from every track of the catalog.")
flags.DEFINE_string("warm_start_from", None, "Fine-tune from this run's exported checkpoint (a model_dir).")
flags.DEFINE_enum("warm_start_vars", _default(RunConfig, "warm_start_vars"), ["stacks", "all"], "What to "
                  "warm-start: the WaveNet stacks or every variable the checkpoint holds.")
flags.DEFINE_enum("distribute", None, ["mirrored", "multi_worker"], "Train under a tf.distribute strategy "
                  "(multi_worker reads TF_CONFIG).")
flags.DEFINE_integer("num_cpu_replicas", None, "mirrored without GPUs: split the CPU into this many replicas.")
# RNN.
flags.DEFINE_integer("rnn_units", RNN.rnn_units, "LSTM units.")
flags.DEFINE_integer("section_frames", RNN.section_frames, "LSTM input sections (frames).")
flags.DEFINE_enum("rnn_embedding", RNN.rnn_embedding, [*rnn.EMBEDDINGS, rnn.ALL_EMBEDDINGS], "LSTM embedding: "
                  "outputs or states; all: try the six outputs|states x mean|max|last readouts on the eval split and "
                  "keep the best.")
flags.DEFINE_enum("rnn_reduce", RNN.rnn_reduce, list(rnn.REDUCTIONS), "How sections are reduced to one vector.")
# Fitted models.
flags.DEFINE_float("variance_ratio", LIBROSA.variance_ratio, "librosa: PCA keeps the components explaining this share "
                   "of variance.")
flags.DEFINE_list("fusion_runs", list(FUSION.fusion_runs), "fusion: the runs (model_dirs, trained or fitted on this "
                  "dataset or any) whose standardised embeddings are concatenated; block weights are chosen on the "
                  "eval split.")
flags.DEFINE_enum("musicnn_model", MUSICNN.musicnn_model, list(musicnn.ARCHITECTURES),
                  "musicnn: which pretrained tagger (MSD: Million Song Dataset, MTT: MagnaTagATune).")
flags.DEFINE_enum("musicnn_layer", MUSICNN.musicnn_layer, list(musicnn.LAYERS), "musicnn: the layer "
                  "averaged over a track's 3 s patches (maxpool: musicnn networks only).")
# Training control.
flags.DEFINE_integer("max_steps", _default(RunConfig, "max_steps"), "Training steps (global).")
flags.DEFINE_float("max_minutes", _default(RunConfig, "max_minutes") or 0.0, "Stop training after this many minutes "
                   "(0: no limit).")
flags.DEFINE_integer("save_checkpoints_steps", _default(RunConfig, "save_checkpoints_steps"), "Checkpoint (and "
                     "evaluate) every N steps.")
flags.DEFINE_integer("early_stopping_patience", _default(RunConfig, "early_stopping_patience"), "Stop when the eval "
                     "--early_stopping_metric has not improved for N steps (0: off).")
flags.DEFINE_enum("early_stopping_metric", _default(RunConfig, "early_stopping_metric"),
                  [*head.METRIC_KEYS, "loss"], "Eval metric that early stopping and the best checkpoint follow "
                  "(similarity training; loss must fall, the others rise).")
flags.DEFINE_enum("export_checkpoint", _default(RunConfig, "export_checkpoint"), ["best", "last"], "Embed (export, "
                  "test, search) with the checkpoint that scored best on the early-stopping metric, or the last one.")
flags.DEFINE_integer("seed", _default(RunConfig, "seed"), "Random seed (lists, crops, initialisation).")
flags.DEFINE_integer("eval_repeats", _default(RunConfig, "eval_repeats"), "Seeds of the test protocol (mean and std "
                     "are reported).")
flags.DEFINE_integer("workers", None, "Processes for feature extraction / data prep (default: all cores).")
flags.DEFINE_string("rerank", _default(RunConfig, "rerank"), "Also score the test split re-ranked with the catalog "
                    "itself (no labels): 'auto' picks the re-ranking with the best catalog mAP on the eval split, or a "
                    "setting such as 'dba+aqe:k=3,alpha=3' or 'kreciprocal:k=10,k2=3' (musicsim.rerank).")
# Every number is finite and in range, or the command line is refused (exit 2) before anything runs.
_LAYER_SIZES = Bounds(lower=1, integer=True)
check_numeric_flags(FLAGS, module=sys.modules[__name__], bounds={
    "min_shared_tags": AT_LEAST_ONE, "margin": NON_NEGATIVE, "score_scale": POSITIVE, "learning_rate": POSITIVE,
    "clip_norm": NON_NEGATIVE, "dropout": Bounds(lower=0, upper=1, upper_open=True), "n_similar": AT_LEAST_ONE,
    "n_dissimilar": AT_LEAST_ONE, "batch_size": AT_LEAST_ONE, "crop_seconds": POSITIVE, "eval_seconds": NON_NEGATIVE,
    "predict_seconds": NON_NEGATIVE, "window_seconds": NON_NEGATIVE, "channels": AT_LEAST_ONE,
    "skip_channels": AT_LEAST_ONE, "filter_size": AT_LEAST_ONE, "dilation_base": AT_LEAST_ONE,
    "num_stacks": AT_LEAST_ONE, "layers_per_stack": AT_LEAST_ONE, "stack_pool_sizes": _LAYER_SIZES,
    "final_channels": AT_LEAST_ONE, "dense_layers": _LAYER_SIZES, "frame_seconds": POSITIVE,
    "hop_seconds": POSITIVE, "n_mels": AT_LEAST_ONE, "frontend_stride": AT_LEAST_ONE,
    "distill_hop_seconds": POSITIVE, "n_negatives": AT_LEAST_ONE, "augment_gain_db": ANY_FINITE,
    "augment_eq_db": NON_NEGATIVE, "augment_snr_db": ANY_FINITE, "augment_shift_seconds": NON_NEGATIVE,
    "num_cpu_replicas": AT_LEAST_ONE, "rnn_units": AT_LEAST_ONE, "section_frames": AT_LEAST_ONE,
    "variance_ratio": Bounds(lower=0, upper=1, lower_open=True), "max_steps": AT_LEAST_ONE,
    "max_minutes": NON_NEGATIVE, "save_checkpoints_steps": AT_LEAST_ONE, "early_stopping_patience": NON_NEGATIVE,
    "seed": SEED, "eval_repeats": AT_LEAST_ONE, "workers": AT_LEAST_ONE})
USAGE = "usage: python -m experiments.run [--model=wavenet] [--dataset=DIR] [--model_dir=DIR] [...]"


def config_from_flags() -> RunConfig:
    """The run the command line asks for (its params settled by `RunConfig`)."""
    dataset_dir = resolve_dataset(FLAGS.dataset)
    model_dir = FLAGS.model_dir or os.path.join(
        "tensorboard_logs", f"{FLAGS.model}-{os.path.basename(os.path.normpath(dataset_dir))}-"
                            f"{time.strftime('%Y%m%d-%H%M%S')}")
    params = dict(
        loss=FLAGS.loss, similarity=FLAGS.similarity, margin=FLAGS.margin, score_scale=FLAGS.score_scale,
        learning_rate=FLAGS.learning_rate, clip_norm=FLAGS.clip_norm, dropout=FLAGS.dropout,
        channels=FLAGS.channels, skip_channels=FLAGS.skip_channels, filter_size=FLAGS.filter_size,
        dilation_base=FLAGS.dilation_base, num_stacks=FLAGS.num_stacks, layers_per_stack=FLAGS.layers_per_stack,
        stack_pool_sizes=[int(s) for s in FLAGS.stack_pool_sizes], pooling=FLAGS.pooling,
        final_channels=FLAGS.final_channels, dense_layers=[int(s) for s in FLAGS.dense_layers],
        rnn_units=FLAGS.rnn_units, section_frames=FLAGS.section_frames, rnn_embedding=FLAGS.rnn_embedding,
        rnn_reduce=FLAGS.rnn_reduce, variance_ratio=FLAGS.variance_ratio, fusion_runs=list(FLAGS.fusion_runs),
        musicnn_model=FLAGS.musicnn_model, musicnn_layer=FLAGS.musicnn_layer, distill_loss=FLAGS.distill_loss,
        distill_hop_seconds=FLAGS.distill_hop_seconds, distill_augment=FLAGS.distill_augment, frontend=FLAGS.frontend,
        frame_seconds=FLAGS.frame_seconds, hop_seconds=FLAGS.hop_seconds, n_mels=FLAGS.n_mels,
        frontend_stride=FLAGS.frontend_stride,
        mixed_precision=False if FLAGS.mixed_precision == "off" else FLAGS.mixed_precision, xla=FLAGS.xla)
    return RunConfig(
        model=FLAGS.model, dataset_dir=dataset_dir, model_dir=model_dir, relevance=FLAGS.relevance,
        min_shared_tags=FLAGS.min_shared_tags, params=params, list_kind=FLAGS.list_kind,
        n_similar=FLAGS.n_similar, n_dissimilar=FLAGS.n_dissimilar, batch_size=FLAGS.batch_size,
        crop_seconds=FLAGS.crop_seconds, eval_seconds=FLAGS.eval_seconds or None,
        predict_seconds=FLAGS.predict_seconds or None, window_seconds=FLAGS.window_seconds,
        max_steps=FLAGS.max_steps,
        max_minutes=FLAGS.max_minutes or None, save_checkpoints_steps=FLAGS.save_checkpoints_steps,
        early_stopping_patience=FLAGS.early_stopping_patience, seed=FLAGS.seed, eval_repeats=FLAGS.eval_repeats,
        workers=FLAGS.workers, pretrain=FLAGS.pretrain, pretrain_splits=tuple(FLAGS.pretrain_splits),
        export_checkpoint=FLAGS.export_checkpoint, early_stopping_metric=FLAGS.early_stopping_metric,
        n_negatives=FLAGS.n_negatives,
        augmentation=dict(gain_db=[float(v) for v in FLAGS.augment_gain_db] or None, eq_db=FLAGS.augment_eq_db,
                          noise_snr_db=[float(v) for v in FLAGS.augment_snr_db] or None,
                          max_shift_seconds=FLAGS.augment_shift_seconds),
        warm_start_from=FLAGS.warm_start_from, warm_start_vars=FLAGS.warm_start_vars,
        distribute=FLAGS.distribute, num_cpu_replicas=FLAGS.num_cpu_replicas, rerank=FLAGS.rerank)


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
        from data_prep.build import prepare

        print(f"Preparing the demo corpus into {DEMO_DATASET_DIR} (first use; downloads Debian packages) ...")
        prepare(dataset="demo", input_path=DEMO_CORPUS_DIR, output=DEMO_DATASET_DIR, max_seconds=60.0)
    return DEMO_DATASET_DIR


def _learned_embeddings(config: RunConfig, model: registry.LearnedEntry, relevance_def, splits, *,
                        record_config: Callable[[], None]) -> dict:
    """Train a learned model (resuming from model_dir), then embed every split.

    ``record_config`` writes the run's config once its inputs have settled it, before training.
    """
    from musicsim import training

    if model.load_tracks is not None:  # the model's own input features (the LSTM's chromagrams)
        tracks = model.load_tracks(config.dataset_dir, splits, params=config.params, workers=config.workers)
    else:
        tracks = {split: TrackSet.from_dataset(config.dataset_dir, split) for split in splits}
    if config.pretrain:
        unknown = sorted(set(config.pretrain_splits) - set(splits))
        if unknown or not config.pretrain_splits:
            raise app.UsageError(f"--pretrain_splits must name some of {list(splits)}, "
                                 f"got {list(config.pretrain_splits)}")
    # The models see the frame rate of their input (logmel needs it to place its mel bands).
    config.params["input_sample_rate"] = tracks["train"].frame_rate
    record_config()
    # A resumed run draws new training lists rather than replaying the first ones again.
    train_seed = config.seed + training.resume_step(config.model_dir)
    inputs = _training_inputs(config, model, tracks, relevance_def, train_seed=train_seed)
    from musicsim import distribute

    train_input_fn = distribute.shard_input_fn(inputs.train)  # each worker its own lists
    estimator = training.make_estimator(objective=inputs.objective, **_estimator_kwargs(config))
    eval_metrics = training.train_and_evaluate(
        estimator=estimator, train_input_fn=train_input_fn, eval_input_fn=inputs.eval, max_steps=config.max_steps,
        max_minutes=config.max_minutes, early_stopping_patience=config.early_stopping_patience,
        eval_every_steps=config.save_checkpoints_steps, early_stopping=inputs.early_stopping)
    early_stopping = inputs.early_stopping
    print(f"training stopped at step {eval_metrics.get('global_step')}; last eval: "
          + ", ".join(f"{k}={v:.3f}" for k, v in sorted(eval_metrics.items()) if k != "global_step"))
    metric, direction = early_stopping
    checkpoint = training.export_checkpoint(config.model_dir, which=config.export_checkpoint, metric=metric,
                                            direction=direction)
    print(f"embedding with {os.path.basename(checkpoint)} (the {config.export_checkpoint} checkpoint"
          + (f" by eval {metric})" if config.export_checkpoint == "best" else ")"))
    settled_params = {}
    if model.embedding_variants is not None and config.params.get("rnn_embedding") == "all":
        estimator, settled_params = _best_variant(config, model, tracks["eval"], relevance_def,
                                                  checkpoint=checkpoint)
    # A window at a time (WaveNet), as export embeds long files: memory bounded whatever the tracks' length,
    # and each vector the one export gives the track's file.
    from musicsim.embedder import default_window_seconds

    window_seconds = default_window_seconds(asdict(config), exact=True)
    embeddings = {split: training.predict_embeddings(estimator=estimator, tracks=tracks[split],
                                                     seconds=config.predict_seconds, checkpoint_path=checkpoint,
                                                     model=config.model, window_seconds=window_seconds)
                  for split in splits}
    held_out = {name: {key: float(value) for key, value in estimator.evaluate(
                    input_fn, checkpoint_path=checkpoint, name=name).items() if key != "global_step"}
                for name, input_fn in inputs.reported.items()}
    return {"ids": {s: tracks[s].track_ids for s in splits}, "labels": {s: tracks[s].labels for s in splits},
            "embeddings": embeddings, "eval_metrics": eval_metrics, "checkpoint": checkpoint,
            "settled_params": settled_params, "held_out_metrics": held_out}


def _estimator_kwargs(config: RunConfig, **overrides) -> dict:
    """``training.make_estimator`` arguments of a run: model, directory, params, warm start, strategy."""
    from musicsim import pretraining, training

    keep = training.checkpoints_to_keep(early_stopping_patience=config.early_stopping_patience,
                                        save_checkpoints_steps=config.save_checkpoints_steps)
    kwargs = dict(model=config.model, model_dir=config.model_dir, params=config.params, seed=config.seed,
                  save_checkpoints_steps=config.save_checkpoints_steps, distribute=config.distribute,
                  num_cpu_replicas=config.num_cpu_replicas, xla=bool(config.params.get("xla")),
                  keep_checkpoint_max=keep)
    if config.warm_start_from:
        # The checkpoint the pretraining run exported (its best), not merely its latest.
        source = RunDir(config.warm_start_from).checkpoint() or config.warm_start_from
        kwargs.update(warm_start_from=source, warm_start_vars=pretraining.warm_start_vars(
            config.warm_start_vars, checkpoint=source))
    kwargs.update(overrides)
    return kwargs


@dataclass(frozen=True)
class TrainingInputs:
    """What a learned run trains on: its input_fns, early stopping rule and objective.

    ``objective`` None: the model's own (its registry entry's, else the head's ranking objective).
    ``reported``: further EVAL input_fns scored once with the exported checkpoint and recorded in
    results.json (``held_out_metrics``), e.g. a distilled student's agreement with its teacher on test.
    """

    train: Callable
    eval: Callable
    early_stopping: tuple[str, str]
    objective: Any = None
    reported: dict = field(default_factory=dict)


# "Whole-track" evaluation lists (--eval_seconds=0) are still cropped to their centred MAX_EVAL_SECONDS: a list
# holds its tracks' activations at once, and an hour-long recording would take gigabytes (the run's own
# embedding of each track goes window by window instead, see training.predict_embeddings).
MAX_EVAL_SECONDS = 120.0


def eval_crop_seconds(config: RunConfig) -> float:
    """Seconds of each track the estimator's evaluation lists read: ``eval_seconds``, or `MAX_EVAL_SECONDS`
    for whole tracks (``eval_seconds`` None)."""
    return float(config.eval_seconds or MAX_EVAL_SECONDS)


def _training_inputs(config: RunConfig, model: registry.LearnedEntry, tracks: dict, relevance_def, *,
                     train_seed: int) -> TrainingInputs:
    """The inputs, early stopping and objective of a run (similarity training, its own, or pretraining)."""
    from musicsim import pretraining
    from musicsim.inputs import make_list_input_fn

    if config.pretrain:
        if config.model != "wavenet":
            raise app.UsageError(f"--pretrain trains the WaveNet; got --model={config.model}")
        # Labels are never read: the audio of every split named can be learned from.
        pretrain_tracks = TrackSet.concatenate([tracks[split] for split in config.pretrain_splits])
        reported = {}
        # The run's augmentation settings (empty: the defaults): contrastive's views, --distill_augment's crops.
        augmentation = pretraining.Augmentation(**config.augmentation)
        if config.pretrain == "contrastive":
            common = dict(batch_size=config.batch_size, n_negatives=config.n_negatives, settings=augmentation)
            train_fn = pretraining.make_contrastive_input_fn(tracks=pretrain_tracks, crop_seconds=config.crop_seconds,
                                                             mode="train", seed=train_seed, **common)
            eval_fn = pretraining.make_contrastive_input_fn(tracks=tracks["eval"], mode="eval", seed=config.seed,
                                                            crop_seconds=eval_crop_seconds(config), **common)
        elif config.pretrain == "distill":
            teacher = musicnn.MusicnnConfig.from_params(config.params).teacher()
            train_fn, held_out = pretraining.make_distillation_input_fns(
                train_tracks=pretrain_tracks, held_out={"eval": tracks["eval"], "test": tracks["test"]},
                teacher=teacher,
                crop_seconds=None if config.crop_seconds is None else teacher.whole_patches(config.crop_seconds),
                hop_seconds=float(config.params.get("distill_hop_seconds", 1.0)), batch_size=config.batch_size,
                cache_dir=os.path.join(config.dataset_dir, "teacher_cache"), seed=train_seed, eval_seed=config.seed,
                augmentation=augmentation if config.params.get("distill_augment") else None)
            # The student's mean cosine to its teacher on test crops (never trained on): teacher agreement.
            eval_fn, reported = held_out["eval"], {"teacher_agreement_test": held_out["test"]}
        else:
            # The stacks run unpooled while pretraining: eval on crops too, whole tracks would not fit.
            common = dict(batch_size=config.batch_size, crop_seconds=config.crop_seconds)
            train_fn = pretraining.make_predictive_input_fn(tracks=pretrain_tracks, mode="train", seed=train_seed,
                                                            **common)
            eval_fn = pretraining.make_predictive_input_fn(tracks=tracks["eval"], mode="eval", seed=config.seed,
                                                           **common)
        return TrainingInputs(train=train_fn, eval=eval_fn,
                              early_stopping=pretraining.pretraining_early_stopping(config.pretrain),
                              objective=pretraining.objective(config.pretrain, params=config.params),
                              reported=reported)
    if model.make_input_fn is not None:  # an unsupervised model trains on its own inputs and objective
        own = dict(batch_size=config.batch_size, params=config.params)
        return TrainingInputs(train=model.make_input_fn(tracks=tracks["train"], mode="train", seed=train_seed, **own),
                              eval=model.make_input_fn(tracks=tracks["eval"], mode="eval", seed=config.seed, **own),
                              early_stopping=model.early_stopping)
    list_kind = config.list_kind or ("pairwise" if config.params.get("loss") == "pairwise" else "listwise")
    common = dict(relevance_def=relevance_def, kind=list_kind, n_similar=config.n_similar,
                  n_dissimilar=config.n_dissimilar, batch_size=config.batch_size)
    early_stopping = model.early_stopping or (
        config.early_stopping_metric, "decrease" if config.early_stopping_metric == "loss" else "increase")
    return TrainingInputs(
        train=make_list_input_fn(tracks=tracks["train"], mode="train", crop_seconds=config.crop_seconds,
                                 seed=train_seed, **common),
        eval=make_list_input_fn(tracks=tracks["eval"], mode="eval", eval_seconds=eval_crop_seconds(config),
                                seed=config.seed, **common),
        early_stopping=early_stopping)


def _best_variant(config: RunConfig, model: registry.LearnedEntry, eval_tracks, relevance_def, *,
                  checkpoint: str) -> tuple[Any, dict]:
    """The paper's RNN optimisation: read the embedding every way (outputs/states x mean/max/last) from the
    same checkpoint, score each on the eval split, keep the best (by NDCG@6, then catalog mAP).

    Returns the best variant's estimator and the params it settles (``rnn_embedding``, ``rnn_reduce``).
    """
    from musicsim import training

    relevance, _ = eval_tracks.relevance(relevance_def)
    scored = []
    for embedding, reduce in model.embedding_variants():
        params = dict(config.params, rnn_embedding=embedding, rnn_reduce=reduce)
        variant = training.make_estimator(**_estimator_kwargs(config, params=params))
        vectors = training.predict_embeddings(estimator=variant, tracks=eval_tracks, seconds=config.predict_seconds,
                                              checkpoint_path=checkpoint)
        result = evaluation.evaluate(relevance_matrix=relevance, embeddings=vectors,
                                     similarity=params.get("similarity", "cosine"), seeds=[config.seed])
        scored.append(((result["NDCG@6"][0], result["catalog_mAP"][0]), embedding, reduce, variant))
        print(f"  rnn embedding={embedding:<8} reduce={reduce:<5} eval NDCG@6={result['NDCG@6'][0]:.3f} "
              f"catalog mAP={result['catalog_mAP'][0]:.3f}")
    _, embedding, reduce, best = max(scored, key=lambda item: item[0])
    print(f"best rnn embedding: {embedding} reduced by {reduce}")
    return best, {"rnn_embedding": embedding, "rnn_reduce": reduce}


def _fitted_embeddings(config: RunConfig, entry: registry.FittedEntry, relevance_def, splits, *,
                       record_config: Callable[[], None]) -> dict:
    """Fit a fitted model on the train split's source files, tune it on eval, then embed every split."""
    config.params["similarity"] = entry.fitted_class.similarity
    record_config()
    model = entry.make_fitted(params=config.params, dataset_dir=config.dataset_dir,
                              max_seconds=DatasetInfo.load(config.dataset_dir).max_seconds, workers=config.workers)
    catalog = {split: read_catalog(config.dataset_dir, split=split) for split in splits}
    # One pass over every split's files: the worker pool starts once.
    entries = [e for split in splits for e in catalog[split]]
    features, ok, skipped = model.extract(paths=[e.path for e in entries])
    for path, reason in skipped:
        print(f"skipped {path}: {reason}", file=sys.stderr)
    kept = [entries[i] for i in ok]
    rows = {split: [j for j, e in enumerate(kept) if e.split == split] for split in splits}
    if len(rows["train"]) < 2:
        reasons = "; ".join(f"{p}: {r}" for p, r in skipped[:5])
        raise ValueError(f"{config.model}: need at least 2 usable train tracks, got {len(rows['train'])}"
                         + (f" (skipped: {reasons})" if reasons else ""))
    model.fit_features(features=features[rows["train"]])
    eval_labels = [kept[j].labels for j in rows["eval"]]
    eval_binary = relevance_def.relevance_matrix(eval_labels, eval_labels) > 0
    np.fill_diagonal(eval_binary, False)
    model.tune(features=features[rows["eval"]], binary=eval_binary)  # eval only: test never takes part
    model.save(config.model_dir)
    vectors = model.embed_features(features=features)
    out = {"ids": {}, "labels": {}, "embeddings": {}, "eval_metrics": {}}
    for split in splits:
        out["ids"][split] = [kept[j].track_id for j in rows[split]]
        out["labels"][split] = [kept[j].labels for j in rows[split]]
        out["embeddings"][split] = vectors[rows[split]]
    return out


def _baseline_lists(config: RunConfig, model: registry.BaselineEntry, relevance_def, splits, *,
                    record_config: Callable[[], None]) -> dict:
    """A baseline embeds nothing: only the test split's tracks and labels, for the protocol's lists."""
    del model, relevance_def, splits
    record_config()
    test = read_catalog(config.dataset_dir, split="test")
    return {"ids": {"test": [e.track_id for e in test]}, "labels": {"test": [e.labels for e in test]},
            "embeddings": {}, "eval_metrics": {}}


def _rerank(config: RunConfig, out: dict, relevance_def) -> dict:
    """The test split's re-ranked score matrix; 'auto' settings are chosen on the eval split only."""
    from musicsim import rerank

    eval_table, chosen_on = [], "given"
    if config.rerank == "auto":
        eval_labels = out["labels"]["eval"]
        eval_binary = relevance_def.relevance_matrix(eval_labels, eval_labels) > 0
        np.fill_diagonal(eval_binary, False)
        settings, eval_table = rerank.choose_settings(eval_vectors=out["embeddings"]["eval"], eval_binary=eval_binary)
        chosen_on = "eval"
    else:
        settings = rerank.parse_settings(config.rerank)
    return {"settings": settings, "chosen_on": chosen_on, "eval_table": eval_table,
            "test_scores": rerank.catalog_scores(vectors=out["embeddings"]["test"], settings=settings)}


def run(config: RunConfig) -> dict:
    """Train or fit ``config.model``, evaluate it on the test split, export its embeddings.

    Writes ``model_dir/run.json`` (what was run, so export and search can rebuild the model),
    ``model_dir/results.json`` and ``model_dir/embeddings.npz``; returns the results.
    """
    started = time.time()
    os.makedirs(config.model_dir, exist_ok=True)
    info = DatasetInfo.load(config.dataset_dir)
    relevance_def = make_relevance(config.relevance or info.relevance,
                                 min_shared_tags=config.min_shared_tags or info.min_shared_tags)
    kind = registry.kind_of(config.model)
    splits = ("train", "eval", "test")
    run_dir = RunDir(config.model_dir)

    def record_config() -> None:
        run_dir.write_config(asdict(config), model=config.model, kind=kind, dataset=asdict(info))

    model = registry.entry(config.model)
    # Learned and fitted runs alike: settle and record the config, train or fit, embed every split.
    make_embeddings = {"learned": _learned_embeddings, "fitted": _fitted_embeddings,
                       "baseline": _baseline_lists}[kind]
    out = make_embeddings(config, model, relevance_def, splits, record_config=record_config)

    from musicsim import distribute

    if not distribute.is_chief():  # multi-worker: worker 0 writes the results, the others only train
        return {}
    test_labels = out["labels"]["test"]
    relevance = relevance_def.relevance_matrix(test_labels, test_labels)
    np.fill_diagonal(relevance, 0.0)
    seeds = list(range(config.eval_repeats))
    protocol = dict(relevance_matrix=relevance, seeds=seeds, n_similar=config.n_similar,
                    n_dissimilar=config.n_dissimilar)
    table = {name: evaluation.evaluate(baseline=name, **protocol) for name in registry.BASELINES}
    if kind != "baseline":
        table[config.model] = evaluation.evaluate(embeddings=out["embeddings"]["test"],
                                                  similarity=config.params.get("similarity", "cosine"), **protocol)
    reranked = None
    if kind != "baseline" and config.rerank != "none":
        reranked = _rerank(config, out, relevance_def)
        table[f"{config.model}+rerank"] = evaluation.evaluate(scores=reranked["test_scores"], **protocol)
    results = {
        "model": config.model, "dataset": info.name, "dataset_dir": os.path.abspath(config.dataset_dir),
        "relevance": relevance_def.name, "similarity": config.params.get("similarity", "cosine"),
        "test": {k: {"mean": v[0], "std": v[1]} for k, v in table[config.model].items()},
        "baselines": {name: {k: {"mean": v[0], "std": v[1]} for k, v in table[name].items()}
                      for name in registry.BASELINES},
        "eval_metrics": out["eval_metrics"], "eval_repeats": config.eval_repeats,
        "checkpoint": os.path.basename(out["checkpoint"]) if out.get("checkpoint") else None,
        "sizes": {split: len(ids) for split, ids in out["ids"].items()},
        "wall_seconds": round(time.time() - started, 1),
        # Chosen once trained (the LSTM's readout): run.json holds the config as it was before training.
        "settled_params": out.get("settled_params") or {},
        "held_out_metrics": out.get("held_out_metrics") or {},
    }
    if reranked is not None:
        results["rerank"] = {"settings": reranked["settings"].to_json(), "chosen_on": reranked["chosen_on"],
                             "eval_table": reranked["eval_table"],
                             "test": {k: {"mean": v[0], "std": v[1]}
                                      for k, v in table[f"{config.model}+rerank"].items()}}
    run_dir.write_results(results)
    if out["embeddings"]:
        ids = [i for s in splits for i in out["ids"][s]]
        source_paths = {e.track_id: e.path for e in read_catalog(config.dataset_dir)}
        vectors = np.concatenate([out["embeddings"][s] for s in splits])
        labels = ["|".join(l) for s in splits for l in out["labels"][s]]
        run_dir.write_embeddings(track_ids=ids, vectors=vectors, splits=[s for s in splits for _ in out["ids"][s]],
                                 labels=labels, paths=[source_paths.get(i, "") for i in ids])
        from musicsim.projector import write_projector

        # The run's embedding map in TensorBoard's projector tab.
        write_projector(log_dir=config.model_dir, track_ids=ids, embeddings=vectors, groups=labels)
    print(format_table(table, title=f"{info.name} test split ({results['sizes']['test']} tracks, "
                                    f"similarity={relevance_def.name}, {config.eval_repeats} seeds)"))
    written = "results.json, embeddings.npz and projector files" if out["embeddings"] else "results.json"
    print(f"wrote {written} to {config.model_dir} in {results['wall_seconds']:.0f}s; "
          f"TensorBoard: tensorboard --logdir {os.path.dirname(os.path.abspath(config.model_dir))}")
    return results


def format_table(table: dict, *, title: str) -> str:
    """Models x metrics as mean ± std."""
    metrics = [m for m in ("PC", "NDCG@1", "NDCG@6", "MAP", "catalog_mAP", "P@10") if any(m in r for r in table.values())]
    lines = [title, f"{'model':<10}" + "".join(f"{m:>16}" for m in metrics)]
    for name, row in table.items():
        lines.append(f"{name:<10}" + "".join(
            f"{row[m][0]:>10.3f} ±{row[m][1]:.3f}" if m in row else f"{'-':>16}" for m in metrics))
    return "\n".join(lines)


def quiet_tensorflow(*, verbosity: int | None = None) -> None:
    """TensorFlow's and the estimator's INFO logs only when asked: absl's ``--verbosity`` (``-v``) 0 or more.

    By default (absl's -1) a run shows its own lines (a progress bar of the steps with the loss, one line
    per evaluation, the table) and TensorFlow's warnings and errors; ``--verbosity=0`` (or ``-v 1``) brings
    back the estimator's internals (``Calling model_fn``, the RunConfig, ``loss = ..., step = ...``).
    Deprecation chatter is dropped either way. ``verbosity`` None reads absl's flag when it was given.
    """
    import tensorflow as tf
    from absl import logging as absl_logging
    from tensorflow.python.util import deprecation

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


def main(argv):
    del argv
    from musicsim import distribute

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
    except RunConfigMismatch as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    if results and FLAGS.dataset == "demo":
        build_serving_index(model_dir=config.model_dir)


def build_serving_index(*, model_dir: str) -> str | None:
    """Index a run's ``embeddings.npz`` into ``model_dir/index`` and print the command that serves it.

    Returns the index directory, or None when the run exported no embeddings (a baseline).
    """
    from musicsim.index import build_index

    run_dir = RunDir(model_dir)
    if not run_dir.has_embeddings():
        return None
    embeddings = run_dir.embeddings_path
    output = os.path.join(model_dir, "index")
    index = build_index(embeddings=embeddings, output=output, model_dir=model_dir)
    print(f"indexed {len(index)} tracks into {output}; search them in a browser with:\n"
          f"  python -m musicsim.search.serve --index={output}")
    return output


def cli() -> None:
    """``python -m experiments.run`` and the ``musicsim-run`` console script: ``--help`` lists this command's
    flags (exit 0), a bad flag or value is one line and exit 2 (``musicsim.cli``)."""
    app.run(main, flags_parser=global_flags_parser(module=sys.modules[__name__], doc=__doc__, usage=USAGE))


if __name__ == "__main__":
    cli()
