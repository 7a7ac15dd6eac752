"""Estimator plumbing shared by the learned models: build, train with early stopping, embed.

``experiments.run`` drives it; tests call it directly on tiny data.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import math
import operator
import os
import random
import sys
import time
from typing import Callable, Iterator, Mapping

import numpy as np
import tensorflow as tf
from keras.src import backend as keras_backend  # Keras 2.15's backend: its seed generator (below)
from tqdm.auto import tqdm
from tensorflow_estimator.python.estimator.early_stopping import read_eval_metrics

from musicsim import distribute as distribute_lib
from musicsim import frontends, head, pretraining
from musicsim import models as registry
from musicsim.inputs import TrackSet, crop, make_predict_input_fn, window_rows_input_fn
from musicsim.params import ParamsConfig, fill_defaults
from musicsim.data.windows import iter_window_rows

EARLY_STOPPING_METRIC = "NDCG@6"
EXPORT_CHECKPOINTS = ("best", "last")
# The graph collection where every model_fn built here puts its TRAIN loss, for `ProgressHook`.
TRAIN_LOSS_COLLECTION = "musicsim_train_loss"
# The eval metrics `EvalPrinter` shows, in this order (the others stay in TensorBoard and results.json).
EVAL_LINE_METRICS = ("PC", "NDCG@1", "NDCG@6", "MAP", "loss")
# glibc's mallopt parameter M_MMAP_THRESHOLD, and the size from which `return_freed_memory` maps each allocation.
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 128 * 1024


def return_freed_memory() -> bool:
    """Make glibc's malloc map each allocation of `MMAP_THRESHOLD_BYTES` or more on its own
    (``mallopt(M_MMAP_THRESHOLD)``), so a tensor TensorFlow frees goes back to the system at once.

    By default glibc raises that threshold to the largest block freed so far (up to 32 MiB); the activations
    of the next steps are then carved from its heaps, which stay in the process: on the 60-minute run of
    ``benchmarks/memory.py`` that was 0.35 GB more peak RSS in training and 0.4 GB in evaluation. Only
    where memory comes from changes, never a value. Returns False where the C library has no mallopt.
    """
    mallopt = getattr(ctypes.CDLL(ctypes.util.find_library("c")), "mallopt", None)
    return bool(mallopt and mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))


class TimeLimitHook(tf.estimator.SessionRunHook):
    """Ask training to stop (and checkpoint) once ``minutes`` of wall time have passed."""

    def __init__(self, minutes: float):
        self._deadline = time.monotonic() + 60.0 * minutes

    def after_run(self, run_context, run_values):
        if time.monotonic() > self._deadline:
            run_context.request_stop()


class ProgressHook(tf.estimator.SessionRunHook):
    """A tqdm bar of the training steps with the latest loss: what a person watches instead of the
    estimator's INFO lines (``loss = ..., step = ...``), which are hidden unless ``--verbosity`` asks.

    The loss is read from `TRAIN_LOSS_COLLECTION` (the mean over replicas under a strategy), where
    `make_estimator`'s model_fn puts it; without it the bar shows steps only.

    Parameters
    ----------
    max_steps : the global step training stops at (the bar's total)
    file : where the bar is drawn (default: stderr)
    enabled : False draws nothing
    """

    def __init__(self, *, max_steps: int, file=None, enabled: bool = True):
        self._max_steps = int(max_steps)
        self._file = file
        self._enabled = enabled
        self._bar = None
        self._fetches = None

    def begin(self):
        global_step = tf.compat.v1.train.get_global_step()
        losses = tf.compat.v1.get_collection(TRAIN_LOSS_COLLECTION)
        self._fetches = {"step": global_step}
        if losses:
            self._fetches["loss"] = tf.reduce_mean(tf.stack([tf.cast(tf.reduce_mean(l), tf.float32) for l in losses]))

    def after_create_session(self, session, coord):
        step = int(session.run(self._fetches["step"]))
        self._bar = tqdm(total=self._max_steps, initial=min(step, self._max_steps), unit="step", desc="training",
                         file=self._file or sys.stderr, disable=not self._enabled, dynamic_ncols=True,
                         mininterval=0.5)

    def before_run(self, run_context):
        return tf.estimator.SessionRunArgs(self._fetches)

    def after_run(self, run_context, run_values):
        if self._bar is None:
            return
        values = run_values.results
        # The global step read in the same run as the train op may or may not count it: one run, one step.
        done = min(self._max_steps, max(int(values["step"]) + 1, self._bar.n + 1)) - self._bar.n
        if "loss" in values:
            self._bar.set_postfix(loss=f"{float(values['loss']):.4f}", refresh=False)
        self._bar.update(max(0, done))

    def end(self, session):
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def format_eval_line(metrics: Mapping) -> str:
    """One short line of an evaluation: ``eval @ step 50: PC 0.612  NDCG@1 0.400 ...``."""
    shown = [f"{name} {float(metrics[name]):.3f}" for name in EVAL_LINE_METRICS if name in metrics]
    step = metrics.get("global_step")
    return f"eval @ step {int(step) if step is not None else '?'}: " + "  ".join(shown)


class EvalPrinter(tf.estimator.Exporter):
    """Prints each evaluation of ``train_and_evaluate`` as one `format_eval_line` (above the progress
    bar), replacing the estimator's ``Saving dict for global step ...`` INFO line; exports nothing."""

    def __init__(self, *, file=None):
        self._file = file

    @property
    def name(self) -> str:
        return "eval_printer"

    def export(self, estimator, export_path, checkpoint_path, eval_result, is_the_final_export):
        tqdm.write(format_eval_line(eval_result or {}), file=self._file or sys.stderr)
        return None


def param_configs() -> tuple[type[ParamsConfig], ...]:
    """The configs of every learned component's hyperparameters: the head, each learned model's (the
    registry's) and the pretraining objectives'."""
    found = [head.HeadConfig]
    for name in registry.names("learned"):
        found.extend(config for config in registry.entry(name).configs if config not in found)
    found.extend(config for config in pretraining.CONFIGS if config not in found)
    return tuple(found)


def seeded_model_fn(model_fn: Callable, *, seed: int) -> Callable:
    """``model_fn`` building every graph from the same Python random state, so a seed gives one model.

    Keras initialisers without an explicit seed draw theirs from Python's ``random`` module, which the
    estimator's ``tf_random_seed`` does not reach: without this, two runs of the same seed start from
    different weights. Seeding at each graph build (not once per process) also makes the weights
    independent of what the process built before.
    """

    def model_fn_seeded(features, labels, mode, params):
        random.seed(seed)
        # After tf.keras.utils.set_random_seed (a caller's, or a test's), Keras draws from its own generator
        # instead: seed it the same way, so the weights do not depend on whether it was ever called.
        if getattr(keras_backend._SEED_GENERATOR, "generator", None) is not None:
            keras_backend._SEED_GENERATOR.generator = random.Random(seed)
        spec = model_fn(features, labels, mode, params)
        if mode == tf.estimator.ModeKeys.TRAIN and getattr(spec, "loss", None) is not None:
            tf.compat.v1.add_to_collection(TRAIN_LOSS_COLLECTION, spec.loss)  # for ProgressHook
        return spec

    return model_fn_seeded


def make_estimator(*, model: str, model_dir: str, params: Mapping, seed: int = 0,
                   save_checkpoints_steps: int = 50, warm_start_from: str | None = None,
                   warm_start_vars: str = ".*", distribute: str | None = None,
                   num_cpu_replicas: int | None = None, objective: head.Objective | None = None,
                   model_fn: Callable | None = None, xla: bool = False,
                   keep_checkpoint_max: int = 3) -> tf.estimator.Estimator:
    """An estimator for a learned model: its ``embed`` under the one head, trained for its objective.

    ``objective`` (a ``musicsim.head.Objective``) replaces the model's own (its registry entry's;
    else the paper's ranking objective), e.g. a pretraining objective; ``model_fn`` replaces the
    whole model_fn (a model outside the registry). ``params`` may leave out keys: each learned
    component's default fills them (`param_configs`), so the estimator's params are complete.
    ``distribute`` (``"mirrored"``, ``"multi_worker"`` or None) trains under that
    ``tf.distribute`` strategy (see ``musicsim.distribute.make_strategy``, which also takes
    ``num_cpu_replicas``); each replica takes one ``input_fn`` batch per step. ``xla`` compiles the
    graph with XLA. ``keep_checkpoint_max`` checkpoints are kept (see `checkpoints_to_keep`: enough
    to still hold the best one).
    """
    if model_fn is None:
        model_entry = registry.entry(model)
        if model_entry.kind != "learned":
            raise ValueError(f"{model!r} is not a learned model: expected one of {list(registry.names('learned'))}")
        if objective is None and model_entry.objective is not None:
            objective = model_entry.objective()
        model_fn = head.make_model_fn(model_entry.embed, objective=objective)
    elif objective is not None:
        raise ValueError("pass an objective or a model_fn, not both")
    params = fill_defaults(params, configs=param_configs())
    return_freed_memory()  # a training step's activations leave the process with the step
    model_fn = seeded_model_fn(model_fn, seed=seed)
    strategy = distribute_lib.make_strategy(distribute, num_cpu_replicas=num_cpu_replicas)
    if strategy is not None:
        # Strategies run the model_fn through autograph: slow, and useless here (see without_autograph).
        model_fn = distribute_lib.without_autograph(model_fn)
    # Evaluation runs without the strategy, on one device, exactly as in a one-replica run: the estimator's
    # distributed input has no partial-batch handling, so when the eval batches do not divide among the
    # replicas the last step ends in OutOfRange on some of them and whether the others' metric updates
    # count is a race; and the estimator refuses a multi-worker eval_distribute.
    config = tf.estimator.RunConfig(model_dir=model_dir, tf_random_seed=seed,
                                    save_checkpoints_steps=save_checkpoints_steps, save_checkpoints_secs=None,
                                    keep_checkpoint_max=keep_checkpoint_max, log_step_count_steps=25,
                                    save_summary_steps=10,
                                    train_distribute=strategy, eval_distribute=None,
                                    session_config=frontends.session_config(xla=xla))
    warm_start = None
    if warm_start_from:
        warm_start = tf.estimator.WarmStartSettings(ckpt_to_initialize_from=warm_start_from,
                                                    vars_to_warm_start=warm_start_vars)
    return tf.estimator.Estimator(model_fn=model_fn, model_dir=model_dir,
                                  params=dict(params), config=config, warm_start_from=warm_start)


def train_and_evaluate(*, estimator: tf.estimator.Estimator, train_input_fn: Callable, eval_input_fn: Callable,
                       max_steps: int, max_minutes: float | None = None, early_stopping_patience: int = 0,
                       eval_every_steps: int = 50,
                       early_stopping: tuple[str, str] = (EARLY_STOPPING_METRIC, "increase"), progress: bool = True
                       ) -> dict:
    """``tf.estimator.train_and_evaluate`` with early stopping and a wall-time limit.

    ``early_stopping`` = (eval metric, ``"increase"`` or ``"decrease"``): stop once the metric has not
    improved for ``early_stopping_patience`` steps (default: eval NDCG@6 must rise). ``progress``
    draws a bar of the steps with the loss (`ProgressHook`) and prints one line per evaluation
    (`EvalPrinter`) on stderr.

    Resumes from the latest checkpoint in the estimator's model_dir. Returns the last eval metrics.
    """
    metric, direction = early_stopping
    if direction not in ("increase", "decrease"):
        raise ValueError(f"early_stopping direction must be 'increase' or 'decrease', got {direction!r}")
    hooks = []
    if early_stopping_patience > 0:
        # TF's early-stopping hooks fail under a one-machine strategy: this picks one that works.
        hooks.append(distribute_lib.early_stopping_hook(estimator, metric=metric, direction=direction,
                                                        patience=early_stopping_patience, every_steps=eval_every_steps))
    if max_minutes:
        hooks.append(TimeLimitHook(max_minutes))
    hooks.append(ProgressHook(max_steps=max_steps, enabled=progress))
    train_spec = tf.estimator.TrainSpec(train_input_fn, max_steps=max_steps, hooks=hooks)
    eval_spec = tf.estimator.EvalSpec(eval_input_fn, steps=None, throttle_secs=0, start_delay_secs=0,
                                      exporters=[EvalPrinter()] if progress else None)
    result = tf.estimator.train_and_evaluate(estimator, train_spec, eval_spec)
    metrics = result[0] if result and result[0] else {}
    return {k: (v.item() if hasattr(v, "item") else v) for k, v in metrics.items()}


def checkpoints_to_keep(*, early_stopping_patience: int, save_checkpoints_steps: int) -> int:
    """How many checkpoints a run keeps so its best one is still on disk when training stops.

    Early stopping fires ``patience`` steps after the best evaluation, and a time limit stops within
    ``patience`` steps of it too (otherwise early stopping would have fired first), so the best
    checkpoint is at most ``patience / save_checkpoints_steps`` checkpoints back; one more for the
    checkpoint written at the stop. Without early stopping: 3.
    """
    if save_checkpoints_steps < 1:
        raise ValueError(f"save_checkpoints_steps must be >= 1, got {save_checkpoints_steps}")
    if early_stopping_patience <= 0:
        return 3
    return max(3, -(-early_stopping_patience // save_checkpoints_steps) + 2)


def best_checkpoint(model_dir: str, *, metric: str = EARLY_STOPPING_METRIC, direction: str = "increase"
                    ) -> str | None:
    """The checkpoint of ``model_dir`` whose evaluation scored best on ``metric``.

    Only evaluations whose checkpoint is still on disk count; ties go to the earliest step (the same
    rule as early stopping). Falls back to the latest checkpoint when no evaluation of a kept checkpoint
    names ``metric``; None when there is no checkpoint at all.

    Parameters
    ----------
    model_dir : a run directory (its ``eval/`` holds the estimator's evaluations)
    metric : eval metric name, e.g. ``"NDCG@6"``
    direction : ``"increase"`` (higher is better) or ``"decrease"``
    """
    if direction not in ("increase", "decrease"):
        raise ValueError(f"direction must be 'increase' or 'decrease', got {direction!r}")
    better = operator.gt if direction == "increase" else operator.lt
    eval_dir = os.path.join(model_dir, "eval")
    evaluations = read_eval_metrics(eval_dir) if os.path.isdir(eval_dir) else {}
    best = best_path = None
    for step, metrics in sorted(evaluations.items()):
        path = os.path.join(model_dir, f"model.ckpt-{step}")
        if metric not in metrics or not os.path.exists(path + ".index"):
            continue
        if best is None or better(float(metrics[metric]), best):
            best, best_path = float(metrics[metric]), path
    return best_path or tf.train.latest_checkpoint(model_dir)


def export_checkpoint(model_dir: str, *, which: str, metric: str = EARLY_STOPPING_METRIC,
                      direction: str = "increase") -> str | None:
    """The checkpoint a run embeds with: ``"best"`` (`best_checkpoint`) or ``"last"`` (the latest)."""
    if which not in EXPORT_CHECKPOINTS:
        raise ValueError(f"export checkpoint must be one of {EXPORT_CHECKPOINTS}, got {which!r}")
    if which == "last":
        return tf.train.latest_checkpoint(model_dir)
    return best_checkpoint(model_dir, metric=metric, direction=direction)


def resume_step(model_dir: str) -> int:
    """Global step of the latest checkpoint in ``model_dir`` (0 for a new run)."""
    checkpoint = tf.train.latest_checkpoint(model_dir)
    return int(checkpoint.rsplit("-", 1)[1]) if checkpoint else 0


def predict_embeddings(*, estimator: tf.estimator.Estimator, tracks: TrackSet, batch_size: int = 8,
                       seconds: float | None = None, checkpoint_path: str | None = None, model: str | None = None,
                       window_seconds: float | None = None) -> np.ndarray:
    """Embeddings of every track, in ``tracks`` order: float32 ``[n, dim]``, from ``checkpoint_path``
    (default: the latest checkpoint).

    ``seconds``: each track's centred crop (None: whole tracks). With ``model`` (its registry name)
    and ``window_seconds``, a model that embeds exactly over windows (WaveNet: its registry entry's
    ``windows``) reads each track a window at a time, each with its receptive field of context, as
    ``musicsim.embedder`` embeds long files (`iter_track_window_rows`): what the model holds at
    once is bounded by a window, whatever the track's length, and the vector equals the whole
    track's up to float rounding. Other models read each track whole.
    """
    windows = registry.entry(model).windows if model is not None else None
    if windows is not None and window_seconds:
        return _predict_windowed(estimator=estimator, tracks=tracks, batch_size=batch_size, seconds=seconds,
                                 checkpoint_path=checkpoint_path, model=model, window_seconds=window_seconds)
    input_fn = make_predict_input_fn(tracks=tracks, batch_size=batch_size, seconds=seconds)
    by_id = {}
    for prediction in estimator.predict(input_fn, checkpoint_path=checkpoint_path, yield_single_examples=True):
        by_id[prediction["track_id"].decode()] = prediction["embedding"]
    missing = [t for t in tracks.track_ids if t not in by_id]
    if missing:
        raise RuntimeError(f"PREDICT returned no embedding for {len(missing)} tracks, e.g. {missing[:3]}")
    return np.stack([by_id[t] for t in tracks.track_ids]).astype(np.float32)


def window_sizes(*, model: str, params: Mapping, frame_rate: float, window_seconds: float) -> dict[str, int]:
    """``window``, ``context``, ``lookahead``, ``unit`` in input steps of a windowed model (see
    ``musicsim.models.wavenet.window_geometry``); ``window`` is ``window_seconds`` rounded up to a unit.

    Parameters
    ----------
    model : registry name of a model with ``windows``
    params : the run's params
    frame_rate : input steps per second (``TrackSet.frame_rate``)
    window_seconds : > 0
    """
    windows = registry.entry(model).windows
    if windows is None:
        raise ValueError(f"{model!r} does not embed in windows")
    if not (window_seconds and math.isfinite(window_seconds) and window_seconds > 0):
        raise ValueError(f"window_seconds must be a positive number, got {window_seconds!r}")
    params = dict(params)
    params.setdefault("input_sample_rate", frame_rate)
    geometry = windows.window_geometry(params)
    unit = int(geometry["unit"])
    window = max(1, math.ceil(window_seconds * frame_rate / unit)) * unit
    return {**{k: int(v) for k, v in geometry.items()}, "window": window}


def iter_track_window_rows(*, tracks: TrackSet, sizes: Mapping[str, int], seconds: float | None = None
                           ) -> Iterator:
    """The rows (``musicsim.data.windows.WindowRow``: a window with its context) of every track, in order.

    Each track (its centred ``seconds`` crop, or whole) is handed to ``musicsim.data.windows.iter_window_rows``
    a window at a time, so no row is longer than ``context + window + lookahead`` steps.
    """
    frames = tracks.frames(seconds)
    step = int(sizes["window"])
    for index, sequence in enumerate(tracks.sequences):
        flat = crop(sequence, frames, None).reshape(-1)
        chunks = (flat[start:start + step] for start in range(0, flat.size, step))
        yield from iter_window_rows(index=index, chunks=chunks, window=step, context=int(sizes["context"]),
                                    lookahead=int(sizes["lookahead"]), unit=int(sizes["unit"]))


def make_window_estimator(*, model: str, model_dir: str, params: Mapping, seed: int = 0) -> tf.estimator.Estimator:
    """An estimator over ``model_dir``'s checkpoints whose PREDICT gives a windowed model's
    ``window_features`` of each row (``features``, ``count``) with the row's ``index`` and ``last``."""
    windows = registry.entry(model).windows

    def model_fn(features, labels, mode, params):
        pooled, count = windows.window_features(features["audio"], features["length"], features["skip"],
                                                params=dict(params))
        return tf.estimator.EstimatorSpec(mode, predictions={
            "features": pooled, "count": count, "index": features["index"], "last": features["last"]})

    return make_estimator(model=model, model_dir=model_dir, params=params, model_fn=model_fn, seed=seed)


def _predict_windowed(*, estimator: tf.estimator.Estimator, tracks: TrackSet, batch_size: int,
                      seconds: float | None, checkpoint_path: str | None, model: str,
                      window_seconds: float) -> np.ndarray:
    """`predict_embeddings` window by window: rows of `iter_track_window_rows`, combined per track."""
    windows = registry.entry(model).windows
    params = dict(estimator.params)
    sizes = window_sizes(model=model, params=params, frame_rate=tracks.frame_rate, window_seconds=window_seconds)
    checkpoint = checkpoint_path or estimator.latest_checkpoint()
    if checkpoint is None:
        raise ValueError(f"{estimator.model_dir} holds no checkpoint to embed with")
    window_estimator = make_window_estimator(model=model, model_dir=estimator.model_dir, params=params,
                                             seed=int(estimator.config.tf_random_seed or 0))

    input_fn = window_rows_input_fn(rows=lambda: iter_track_window_rows(tracks=tracks, sizes=sizes, seconds=seconds),
                                    batch_size=batch_size)
    dense = windows.dense_weights(params, checkpoint=checkpoint)
    vectors: dict[int, np.ndarray] = {}
    parts: list[tuple[np.ndarray, int]] = []
    for prediction in window_estimator.predict(input_fn, checkpoint_path=checkpoint, yield_single_examples=True):
        parts.append((np.asarray(prediction["features"], np.float32), int(prediction["count"])))
        if bool(prediction["last"]):
            pooled = windows.combine_windows(np.stack([f for f, _ in parts]), np.array([c for _, c in parts]),
                                             params=params)
            vectors[int(prediction["index"])] = windows.apply_dense_layers(pooled[None, :], weights=dense)[0]
            parts = []
    missing = [tracks.track_ids[i] for i in range(len(tracks)) if i not in vectors]
    if missing:
        raise RuntimeError(f"PREDICT returned no embedding for {len(missing)} tracks (empty?), e.g. {missing[:3]}")
    return np.stack([vectors[i] for i in range(len(tracks))]).astype(np.float32)
