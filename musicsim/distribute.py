"""Distributed training of the estimator: ``tf.distribute`` strategies for ``RunConfig``.

``make_strategy`` builds the strategy that ``musicsim.train.estimator.make_estimator(distribute=...)``
passes to ``tf.estimator.RunConfig(train_distribute=...)``:

- ``"mirrored"``: synchronous data parallelism on one machine, one replica per GPU, or over
  ``num_cpu_replicas`` logical CPU devices when there is no GPU (tests, CPU-only machines);
- ``"multi_worker"``: synchronous data parallelism over the workers of the cluster described by
  the ``TF_CONFIG`` environment variable (``MultiWorkerMirroredStrategy``), each with its devices.
  Worker 0 (or the ``chief``) writes the checkpoints; an optional ``evaluator`` task (listed in the
  cluster too, but not training) evaluates them as they appear; without one, nothing evaluates
  during training.

Both must be made before TensorFlow initialises (splitting the CPU and configuring collective ops
are only possible then): call ``make_strategy`` first thing in the program; ``make_estimator``
asks for the same strategy again later and gets the same object back.

Every replica runs ``input_fn``'s dataset on its own: one element (one ``batch_size`` batch) per
replica per step, so a step consumes ``num_replicas_in_sync * batch_size`` lists. The tf.compat.v1
optimizer scales each replica's loss by ``1 / num_replicas_in_sync`` and sums the replicas'
gradients, so the update is the mean gradient over all replicas' batches, as on one replica, and
the logged loss is the mean of the replicas' losses; ``clip_by_global_norm`` below clips that whole
gradient (not each replica's share). Evaluation and prediction run on one device.
"""
from __future__ import annotations

import json
import operator
import os
from typing import Callable, Sequence

import tensorflow as tf
# TF's reader of the estimator's evaluations (what its own early-stopping hooks use); not in the public API.
from tensorflow_estimator.python.estimator.early_stopping import read_eval_metrics

STRATEGIES = ("mirrored", "multi_worker")
TF_CONFIG_EXAMPLE = ('{"cluster": {"worker": ["localhost:12345", "localhost:12346"]}, '
                     '"task": {"type": "worker", "index": 0}}')
EVALUATOR = "evaluator"
_made: dict[tuple, tf.distribute.Strategy | None] = {}  # one strategy per (name, CPU replicas, TF_CONFIG)


def make_strategy(name: str | None, *, num_cpu_replicas: int | None = None) -> tf.distribute.Strategy | None:
    """The ``tf.distribute`` strategy called ``name``, or None for no strategy.

    Repeated calls with the same arguments (and ``TF_CONFIG``) return the same strategy.

    Parameters
    ----------
    name : ``"mirrored"``, ``"multi_worker"``, or None / ``""`` / ``"none"`` (no strategy)
    num_cpu_replicas : ``"mirrored"`` without a GPU only: split the CPU into this many logical
        devices, one replica each. Must be set before TensorFlow initialises its devices (before the
        first op or device listing of the process). None: one replica per logical CPU device (one,
        unless the CPU was split earlier in the process). Ignored when there are GPUs.

    Returns
    -------
    ``tf.distribute.MirroredStrategy``, ``tf.distribute.MultiWorkerMirroredStrategy`` (a
    ``OneDeviceStrategy`` on the multi-worker ``evaluator`` task), or None

    Raises
    ------
    ValueError
        An unknown ``name``, ``num_cpu_replicas < 1``, or for ``"multi_worker"`` a missing or
        malformed ``TF_CONFIG``.
    RuntimeError
        Made too late: the CPU split or the multi-worker strategy after TensorFlow has initialised.
    """
    if name is None or name in ("", "none"):
        return None
    if name not in STRATEGIES:
        raise ValueError(f"distribute must be one of {STRATEGIES} (or None), got {name!r}")
    if num_cpu_replicas is not None and num_cpu_replicas < 1:
        raise ValueError(f"num_cpu_replicas must be >= 1, got {num_cpu_replicas}")
    key = (name, num_cpu_replicas, os.environ.get("TF_CONFIG", "") if name == "multi_worker" else "")
    if key not in _made:
        _made[key] = _mirrored(num_cpu_replicas) if name == "mirrored" else _multi_worker()
    return _made[key]


def _mirrored(num_cpu_replicas: int | None) -> tf.distribute.MirroredStrategy:
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        if num_cpu_replicas not in (None, 1):
            tf.compat.v1.logging.warning("num_cpu_replicas=%d ignored: mirroring over the %d GPUs",
                                         num_cpu_replicas, len(gpus))
        return tf.distribute.MirroredStrategy()
    if num_cpu_replicas is None:  # every logical CPU: one, unless split_cpu ran earlier in this process
        devices = [device.name for device in tf.config.list_logical_devices("CPU")]
    else:
        devices = split_cpu(num_replicas=num_cpu_replicas)
    # Not the default collective all-reduce: on a CPU with few cores its ops each block an inter-op
    # thread waiting for their peers and the first step deadlocks (seen with 2 cores).
    return tf.distribute.MirroredStrategy(devices=devices, cross_device_ops=tf.distribute.ReductionToOneDevice())


def _multi_worker() -> tf.distribute.MultiWorkerMirroredStrategy | None:
    config = read_tf_config()  # fail here, clearly, rather than inside the strategy or the estimator
    if config["task"]["type"] == EVALUATOR:
        # The evaluator trains nothing (it evaluates each new checkpoint on one device), but the estimator
        # only runs the multi-worker roles when RunConfig has a train_distribute: any local strategy will do.
        return tf.distribute.OneDeviceStrategy("/cpu:0")
    try:
        # Made eagerly it configures collective ops and starts this worker's server in the eager context,
        # which the estimator relies on (a graph-mode strategy fails when the estimator copies it).
        return tf.distribute.MultiWorkerMirroredStrategy()
    except RuntimeError as err:
        raise RuntimeError("the multi_worker strategy must be made before TensorFlow initialises: call "
                           "musicsim.distribute.make_strategy('multi_worker') first thing in the program") from err


def is_chief() -> bool:
    """Whether this process writes the checkpoints (and should export the results).

    True without ``TF_CONFIG``; with it, for the ``chief`` task, or for worker 0 when the cluster
    has no chief. False for the other workers and the evaluator.
    """
    if not os.environ.get("TF_CONFIG", "").strip():
        return True
    config = read_tf_config()
    task, cluster = config["task"], config["cluster"]
    if "chief" in cluster:
        return task["type"] == "chief"
    return task["type"] == "worker" and task["index"] == 0


def split_cpu(*, num_replicas: int) -> list[str]:
    """Split the first physical CPU into ``num_replicas`` logical devices; return their names.

    Raises
    ------
    RuntimeError
        When TensorFlow has already initialised its devices with another number of logical CPUs
        (device configuration is fixed at initialisation: call this first, or in a fresh process).
    """
    cpu = tf.config.list_physical_devices("CPU")[0]
    configured = tf.config.get_logical_device_configuration(cpu)
    if num_replicas > 1 and len(configured or []) != num_replicas:
        try:
            tf.config.set_logical_device_configuration(
                cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(num_replicas)])
        except RuntimeError as err:
            raise RuntimeError(
                f"cannot split the CPU into {num_replicas} replicas: TensorFlow has already initialised its "
                f"devices ({len(tf.config.list_logical_devices('CPU'))} logical CPU). Make the strategy before "
                "any TensorFlow op runs, or run in a fresh process") from err
    names = [device.name for device in tf.config.list_logical_devices("CPU")]
    return names[:num_replicas]


def read_tf_config() -> dict:
    """The ``TF_CONFIG`` cluster description of a multi-worker run, checked.

    Returns
    -------
    dict with ``cluster`` (``{"worker": [host:port, ...], ...}``) and ``task`` (``{"type", "index"}``)

    Raises
    ------
    ValueError
        When ``TF_CONFIG`` is unset, not JSON, or does not name this task within a cluster of workers
        (the ``evaluator`` too must be listed, ``"evaluator": ["host:port"]``).
    """
    raw = os.environ.get("TF_CONFIG", "").strip()
    example = f"e.g. TF_CONFIG='{TF_CONFIG_EXAMPLE}'"
    if not raw:
        raise ValueError(f"distribute='multi_worker' needs the TF_CONFIG environment variable; {example}")
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as err:
        raise ValueError(f"TF_CONFIG is not valid JSON ({err}); {example}") from err
    if not isinstance(config, dict):
        raise ValueError(f"TF_CONFIG must be a JSON object, got {type(config).__name__}; {example}")
    cluster, task = config.get("cluster"), config.get("task")
    if not isinstance(cluster, dict) or not cluster.get("worker") and not cluster.get("chief"):
        raise ValueError(f"TF_CONFIG has no cluster with a 'worker' (or 'chief') list of host:port; {example}")
    for job, addresses in cluster.items():
        if not isinstance(addresses, list) or not all(isinstance(a, str) and ":" in a for a in addresses):
            raise ValueError(f"TF_CONFIG cluster[{job!r}] must be a list of 'host:port' strings, got {addresses!r}")
    if not isinstance(task, dict) or "type" not in task or "index" not in task:
        raise ValueError(f"TF_CONFIG has no task {{'type': ..., 'index': ...}} naming this process; {example}")
    if task["type"] == EVALUATOR and task["index"] != 0:
        raise ValueError(f"TF_CONFIG task index {task['index']!r}: there is one evaluator, index 0")
    if task["type"] not in cluster:
        raise ValueError(f"TF_CONFIG task type {task['type']!r} is not a job of the cluster {sorted(cluster)}")
    if not isinstance(task["index"], int) or not 0 <= task["index"] < len(cluster[task["type"]]):
        raise ValueError(f"TF_CONFIG task index {task['index']!r} is out of range for the "
                         f"{len(cluster[task['type']])} {task['type']!r} tasks")
    return config


def shard_input_fn(input_fn: Callable[..., tf.data.Dataset]) -> Callable[..., tf.data.Dataset]:
    """An ``input_fn`` giving each worker of a multi-worker run its own share of ``input_fn``'s batches.

    Every worker runs the same seeded ``input_fn`` (called with no arguments); without sharding
    they would all train on the same lists. Worker ``i`` of ``n`` keeps batches ``i, i + n, ...``
    (each worker still generates every batch: cheap next to the model). Unchanged on one worker.
    """

    def sharded(params=None, input_context: tf.distribute.InputContext | None = None) -> tf.data.Dataset:
        dataset = input_fn()
        if input_context is not None and input_context.num_input_pipelines > 1:
            dataset = dataset.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
        return dataset

    return sharded


def clip_by_global_norm(gradients: Sequence[tf.Tensor | None], *, clip_norm: float
                        ) -> tuple[list[tf.Tensor | None], tf.Tensor]:
    """``tf.clip_by_global_norm`` of the whole gradient, also under a multi-replica strategy.

    Inside a replica of a strategy with ``n > 1`` replicas, each replica's gradient is only its
    share (its loss was scaled by ``1 / n``) and the optimizer sums the shares when it applies
    them. Clipping the shares would clip at ``n`` times the intended norm: the shares are summed
    first (an all-reduce), the sum clipped, and each replica returns ``1 / n`` of the clipped sum,
    so the optimizer's own sum is the clipped mean gradient, as on one replica.

    Parameters
    ----------
    gradients : the optimizer's gradients, one per variable (None where a variable has none)
    clip_norm : the largest global norm

    Returns
    -------
    (gradients to pass to ``apply_gradients``, global norm of the whole gradient before clipping)
    """
    replica = tf.distribute.get_replica_context()
    replicas = replica.num_replicas_in_sync if replica is not None else 1
    gradients = list(gradients)
    if replicas == 1:
        clipped, global_norm = tf.clip_by_global_norm(gradients, clip_norm)
        return list(clipped), global_norm
    present = [i for i, gradient in enumerate(gradients) if gradient is not None]
    # merge_call + batch_reduce_to rather than replica.all_reduce: the latter wraps the reduction in a
    # custom_gradient that fails in the estimator's graph ("Unsuccessful at finding variable"); no
    # gradient flows through this sum anyway.
    summed = replica.merge_call(_sum_over_replicas, args=tuple(gradients[i] for i in present))
    clipped, global_norm = tf.clip_by_global_norm(summed, clip_norm)
    for i, gradient in zip(present, clipped):
        gradients[i] = gradient / replicas
    return gradients, global_norm


def _sum_over_replicas(strategy: tf.distribute.Strategy, *per_replica: tf.Tensor) -> list:
    """Cross-replica: the sum of each per-replica value, mirrored back onto every replica."""
    return strategy.extended.batch_reduce_to(tf.distribute.ReduceOp.SUM, [(value, value) for value in per_replica])


def without_autograph(model_fn: Callable) -> Callable:
    """``model_fn(features, labels, mode, params)`` marked for autograph to call as it is.

    Under a strategy the estimator calls the model_fn through autograph, which would convert the
    model, TF-Ranking and Keras code (about 10 s per replica and mode) for nothing: the model_fns
    have no tensor-dependent Python control flow. (A ``do_not_convert`` function hides the arguments
    the estimator checks for: the plain wrapper keeps them, and autograph leaves the marked call as is.)
    """
    unconverted = tf.autograph.experimental.do_not_convert(model_fn)

    def model_fn_as_is(features, labels, mode, params):
        return unconverted(features, labels, mode, params)

    return model_fn_as_is


def early_stopping_hook(estimator: tf.estimator.Estimator, *, metric: str, direction: str, patience: int,
                        every_steps: int) -> tf.estimator.SessionRunHook:
    """A hook stopping training once eval ``metric`` has not improved for ``patience`` steps.

    TF's own hooks (``stop_if_no_increase_hook`` ...) serve no strategy and multi-worker runs; under
    a one-machine strategy they fail (TF 2.15's ``make_early_stopping_hook`` tests a generator's
    truth, so it picks its multi-worker hook for every strategy, whose stop op is then per-replica),
    and ``StopWithoutImprovementHook`` does the same job there.

    Parameters
    ----------
    estimator : the estimator being trained (its eval_dir holds the evaluations)
    metric : eval metric name, e.g. ``"NDCG@6"``
    direction : ``"increase"`` (higher is better) or ``"decrease"``
    patience : steps without improvement before stopping
    every_steps : look at the evaluations every this many steps, and ignore those before this step
    """
    if direction not in ("increase", "decrease"):
        raise ValueError(f"direction must be 'increase' or 'decrease', got {direction!r}")
    strategy = estimator.config.train_distribute
    multi_worker = (tf.distribute.MultiWorkerMirroredStrategy,
                    tf.compat.v1.distribute.experimental.MultiWorkerMirroredStrategy)
    if strategy is None or isinstance(strategy, multi_worker):
        make_hook = (tf.estimator.experimental.stop_if_no_increase_hook if direction == "increase"
                     else tf.estimator.experimental.stop_if_no_decrease_hook)
        return make_hook(estimator, metric, min_steps=every_steps, run_every_secs=None, run_every_steps=every_steps,
                         **{f"max_steps_without_{direction}": patience})
    return StopWithoutImprovementHook(eval_dir=estimator.eval_dir(), metric=metric, direction=direction,
                                      patience=patience, min_steps=every_steps, every_steps=every_steps)


class StopWithoutImprovementHook(tf.estimator.SessionRunHook):
    """Request a stop once eval ``metric`` has not improved for ``patience`` steps (one process).

    The rule of TF's ``stop_if_no_increase_hook``: going through the evaluations at step ``>=
    min_steps`` in order, stop when one comes ``patience`` or more steps after the best so far.
    """

    def __init__(self, *, eval_dir: str, metric: str, direction: str, patience: int, min_steps: int,
                 every_steps: int):
        self._eval_dir, self._metric, self._patience, self._min_steps = eval_dir, metric, patience, min_steps
        self._better = operator.gt if direction == "increase" else operator.lt
        self._timer = tf.compat.v1.train.SecondOrStepTimer(every_steps=every_steps)
        self._global_step = None

    def should_stop(self) -> bool:
        """Whether the evaluations so far say stop."""
        best = best_step = None
        for step, metrics in sorted(read_eval_metrics(self._eval_dir).items()):
            if step < self._min_steps:
                continue
            value = metrics[self._metric]
            if best is None or self._better(value, best):
                best, best_step = value, step
            if step - best_step >= self._patience:
                tf.compat.v1.logging.info("early stopping: %s has not improved for %d steps (best %s at step %d)",
                                          self._metric, step - best_step, best, best_step)
                return True
        return False

    def begin(self):
        self._global_step = tf.compat.v1.train.get_global_step()

    def before_run(self, run_context):
        return tf.compat.v1.train.SessionRunArgs(self._global_step)

    def after_run(self, run_context, run_values):
        step = int(run_values.results)
        if self._timer.should_trigger_for_step(step):
            self._timer.update_last_triggered_step(step)
            if self.should_stop():
                run_context.request_stop()
