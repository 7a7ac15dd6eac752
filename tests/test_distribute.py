"""Distributed training (musicsim.distribute): strategies, their errors, two CPU replicas end to end.

TensorFlow fixes its devices when it initialises, so the two-replica runs happen in a fresh process:
this file run as a script (``python tests/test_distribute.py SYNTHETIC CORPUS WORKDIR REPORT``),
which splits the CPU into two logical devices before anything else touches TensorFlow and writes
what it measured to a JSON report that the tests below check.
"""
from __future__ import annotations

import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(channels=8, skip_channels=8, filter_size=2, dilation_base=2, num_stacks=2, layers_per_stack=3,
            stack_pool_sizes=(4, 4), pooling="max", final_channels=16, loss="lambda", similarity="cosine",
            learning_rate=3e-3)
METRICS = ("PC", "NDCG@1", "NDCG@6", "MAP")
TRAIN_STEPS = 3


# --------------------------------------------------------------------------- in-process: no devices needed

@pytest.mark.parametrize("name", [None, "", "none"])
def test_no_strategy(name):
    from musicsim import distribute

    assert distribute.make_strategy(name) is None


WORKERS = '"cluster": {"worker": ["localhost:20001", "localhost:20002"]}'


@pytest.mark.parametrize("name, kwargs, tf_config, match", [
    ("ring", {}, None, "distribute must be one of"),
    ("Mirrored", {}, None, "distribute must be one of"),
    ("mirrored", {"num_cpu_replicas": 0}, None, "num_cpu_replicas must be >= 1"),
    ("multi_worker", {}, None, "needs the TF_CONFIG environment variable"),
    ("multi_worker", {}, "  ", "needs the TF_CONFIG environment variable"),
    ("multi_worker", {}, "{cluster: worker}", "TF_CONFIG is not valid JSON"),
    ("multi_worker", {}, '["localhost:20001"]', "TF_CONFIG must be a JSON object"),
    ("multi_worker", {}, '{"task": {"type": "worker", "index": 0}}', "no cluster with a 'worker'"),
    ("multi_worker", {}, '{"cluster": {"worker": ["localhost"]}, "task": {"type": "worker", "index": 0}}',
     r"cluster\['worker'\] must be a list of 'host:port'"),
    ("multi_worker", {}, "{" + WORKERS + "}", "no task"),
    ("multi_worker", {}, "{" + WORKERS + ', "task": {"type": "ps", "index": 0}}', "task type 'ps' is not a job"),
    ("multi_worker", {}, "{" + WORKERS + ', "task": {"type": "worker", "index": 2}}', "index 2 is out of range"),
    ("multi_worker", {}, "{" + WORKERS + ', "task": {"type": "worker", "index": "0"}}', "index '0' is out of range"),
    ("multi_worker", {}, "{" + WORKERS + ', "task": {"type": "evaluator", "index": 0}}',
     "task type 'evaluator' is not a job"),
    ("multi_worker", {}, '{"cluster": {"worker": ["localhost:20001"], "evaluator": ["localhost:20003"]}, '
     '"task": {"type": "evaluator", "index": 1}}', "one evaluator, index 0"),
])
def test_make_strategy_rejects(monkeypatch, name, kwargs, tf_config, match):
    from musicsim import distribute

    if tf_config is None:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    else:
        monkeypatch.setenv("TF_CONFIG", tf_config)
    with pytest.raises(ValueError, match=match):
        distribute.make_strategy(name, **kwargs)


TWO_WORKERS = {"worker": ["localhost:20001", "localhost:20002"]}
WORKERS_AND_EVALUATOR = {"worker": ["localhost:20001", "localhost:20002"], "evaluator": ["localhost:20003"]}
CHIEF_AND_WORKER = {"chief": ["localhost:20000"], "worker": ["localhost:20001"]}


@pytest.mark.parametrize("cluster, task, chief", [
    (None, None, True),  # no TF_CONFIG: a single process
    (TWO_WORKERS, {"type": "worker", "index": 0}, True),
    (TWO_WORKERS, {"type": "worker", "index": 1}, False),
    (WORKERS_AND_EVALUATOR, {"type": "evaluator", "index": 0}, False),  # evaluates, does not train
    (CHIEF_AND_WORKER, {"type": "chief", "index": 0}, True),
    (CHIEF_AND_WORKER, {"type": "worker", "index": 0}, False),
])
def test_read_tf_config_and_is_chief(monkeypatch, cluster, task, chief):
    from musicsim import distribute

    if cluster is None:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    else:
        monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": task}))
        assert distribute.read_tf_config() == {"cluster": cluster, "task": task}
    assert distribute.is_chief() == chief


def test_mirrored_strategy_is_made_once():
    from musicsim import distribute

    strategy = distribute.make_strategy("mirrored")
    assert strategy is distribute.make_strategy("mirrored") and strategy.num_replicas_in_sync >= 1


def test_multi_worker_evaluator_gets_a_one_device_strategy(monkeypatch):
    import tensorflow as tf

    from musicsim import distribute

    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": WORKERS_AND_EVALUATOR,
                                                "task": {"type": "evaluator", "index": 0}}))
    assert isinstance(distribute.make_strategy("multi_worker"), tf.distribute.OneDeviceStrategy)


def test_multi_worker_strategy_made_too_late_says_why(monkeypatch):
    import tensorflow as tf

    from musicsim import distribute

    tf.constant(1.0) + 1.0  # TensorFlow has initialised in this process
    monkeypatch.setenv("TF_CONFIG", "{" + WORKERS + ', "task": {"type": "worker", "index": 1}}')
    with pytest.raises(RuntimeError, match="must be made before TensorFlow initialises"):
        distribute.make_strategy("multi_worker")


@pytest.mark.parametrize("pipelines, pipeline_id, expected", [
    (None, None, list(range(7))),  # no input context: one worker
    (1, 0, list(range(7))),
    (2, 0, [0, 2, 4, 6]),
    (2, 1, [1, 3, 5]),
    (3, 2, [2, 5]),
])
def test_shard_input_fn_gives_each_worker_its_share(pipelines, pipeline_id, expected):
    import tensorflow as tf

    from musicsim import distribute

    sharded = distribute.shard_input_fn(lambda params=None: tf.data.Dataset.range(7))
    context = None if pipelines is None else tf.distribute.InputContext(
        num_input_pipelines=pipelines, input_pipeline_id=pipeline_id, num_replicas_in_sync=pipelines)
    assert [int(x) for x in sharded(params={}, input_context=context)] == expected


def test_split_cpu_after_initialisation_says_why():
    import tensorflow as tf

    from musicsim import distribute

    tf.constant(1.0) + 1.0  # TensorFlow has initialised its devices (one CPU) in this process
    assert len(distribute.split_cpu(num_replicas=1)) == 1
    with pytest.raises(RuntimeError, match="cannot split the CPU into 3 replicas: TensorFlow has already"):
        distribute.split_cpu(num_replicas=3)


@pytest.mark.parametrize("evaluations, direction, patience, min_steps, stops", [
    ({50: 0.5, 100: 0.6, 150: 0.6, 200: 0.55}, "increase", 100, 50, True),  # best 0.6 at 100, 200 - 100 >= 100
    ({50: 0.5, 100: 0.6, 150: 0.6, 200: 0.55}, "increase", 150, 50, False),
    ({50: 1.0, 100: 0.9, 150: 0.95}, "decrease", 50, 50, True),  # best 0.9 at 100
    ({50: 1.0, 100: 0.9, 150: 0.85}, "decrease", 50, 50, False),
    ({0: 0.9, 50: 0.5, 100: 0.6}, "increase", 50, 50, False),  # step 0 ignored: best 0.6 at 100
    ({0: 0.9, 50: 0.5, 100: 0.6}, "increase", 50, 0, True),  # best 0.9 at 0
    ({}, "increase", 1, 0, False),
])
def test_stop_without_improvement(monkeypatch, evaluations, direction, patience, min_steps, stops):
    from musicsim import distribute

    monkeypatch.setattr(distribute, "read_eval_metrics",
                        lambda eval_dir: {step: {"NDCG@6": value} for step, value in evaluations.items()})
    hook = distribute.StopWithoutImprovementHook(eval_dir="unused", metric="NDCG@6", direction=direction,
                                                 patience=patience, min_steps=min_steps, every_steps=1)
    assert hook.should_stop() == stops


def test_stop_without_improvement_needs_its_metric(monkeypatch):
    from musicsim import distribute

    monkeypatch.setattr(distribute, "read_eval_metrics", lambda eval_dir: {10: {"NDCG@6": 0.5}})
    hook = distribute.StopWithoutImprovementHook(eval_dir="unused", metric="NDCG@7", direction="increase",
                                                 patience=1, min_steps=0, every_steps=1)
    with pytest.raises(KeyError, match="NDCG@7"):
        hook.should_stop()


@pytest.mark.parametrize("distribute_name, ours", [(None, False), ("mirrored", True)])
def test_early_stopping_hook_under_a_one_machine_strategy_is_ours(tmp_path, distribute_name, ours):
    from musicsim import distribute
    from musicsim.train import estimator as training

    estimator = training.make_estimator(model="wavenet", model_dir=str(tmp_path), params=TINY,
                                        distribute=distribute_name)
    hook = distribute.early_stopping_hook(estimator, metric="NDCG@6", direction="increase", patience=10,
                                          every_steps=5)
    assert isinstance(hook, distribute.StopWithoutImprovementHook) == ours
    with pytest.raises(ValueError, match="direction must be 'increase' or 'decrease', got 'up'"):
        distribute.early_stopping_hook(estimator, metric="NDCG@6", direction="up", patience=10, every_steps=5)


# --------------------------------------------------------------------------- two CPU replicas, in a subprocess

@pytest.fixture(scope="module")
def corpus(tmp_path_factory, synthetic_dataset) -> str:
    """The real tiny corpus, prepared with 5 s excerpts, when it is built here; else the synthetic set."""
    from data_prep import dev_corpus
    from data_prep.build import prepare

    if not os.path.isfile(os.path.join(dev_corpus.TINY_CORPUS_CACHE, "manifest.csv")):
        return synthetic_dataset  # building it downloads ~180 MB: test_data_prep's business, not ours
    output = str(tmp_path_factory.mktemp("tiny") / "prepared")
    prepare(dataset="manifest", input_path=dev_corpus.tiny_dev_corpus(), output=output, max_seconds=5.0, workers=1,
            progress=False, verbose=False)
    return output


@pytest.fixture(scope="module")
def report(tmp_path_factory, synthetic_dataset, corpus) -> dict:
    work = tmp_path_factory.mktemp("distribute")
    out = str(work / "report.json")
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=REPO_ROOT)
    env.pop("TF_CONFIG", None)
    result = subprocess.run([sys.executable, os.path.abspath(__file__), synthetic_dataset, corpus, str(work), out],
                            cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    with open(out) as f:
        return json.load(f)


def test_two_cpu_replicas_train_evaluate_predict(report):
    run = report["run"]
    assert run["num_replicas_in_sync"] == 2
    assert run["global_step"] == TRAIN_STEPS and run["latest_checkpoint"].endswith(f"-{TRAIN_STEPS}")
    # Each replica takes its own input_fn batch every step (prefetching may pull a few more).
    assert run["batches_pulled"] >= 2 * TRAIN_STEPS
    assert set(METRICS) <= set(run["eval"]) and all(0.0 <= run["eval"][m] <= 1.0 for m in METRICS)
    assert np.isfinite(run["eval"]["loss"])
    embeddings = np.asarray(run["embeddings"])
    assert embeddings.shape == (run["test_tracks"], 16) and np.isfinite(embeddings).all()
    assert np.abs(embeddings[0] - embeddings[1]).max() > 1e-4


def test_two_replicas_step_like_one_replica_on_their_joint_batch(report):
    """One step of 2 replicas x 4 lists from the same weights as one replica x the same 8 lists: the
    logged loss and gradient norm agree (a sum of the two replicas' means would double them) and so
    do the new weights. The clip norm is small enough to act: clipping each replica's share instead
    of the whole gradient moved the weights up to 5e-3 away (tried), here they agree to 5e-8."""
    one, two = report["one_replica"], report["two_replicas"]
    assert one["num_replicas_in_sync"] == 1 and two["num_replicas_in_sync"] == 2
    assert two["loss"] == pytest.approx(one["loss"], rel=1e-5)
    assert two["gradient_norm"] == pytest.approx(one["gradient_norm"], rel=1e-4)
    assert one["gradient_norm"] > report["clip_norm"]  # clipping acted
    assert one["largest_update"] > 1e-4  # the step moved the weights...
    assert report["largest_weight_difference"] < 1e-3 * one["largest_update"]  # ...the same way on 2 replicas


# --------------------------------------------------------------------------- the subprocess

def _first_scalars(model_dir: str) -> dict[str, float]:
    """The first value of every scalar summary the run wrote."""
    import tensorflow as tf

    values: dict[str, float] = {}
    for path in sorted(glob.glob(os.path.join(model_dir, "events.out.tfevents.*"))):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                values.setdefault(value.tag, float(value.simple_value))
    return values


def _counted(input_fn, counter: list):
    """``input_fn`` whose every pulled batch appends to ``counter``."""
    import tensorflow as tf

    def count(labels):
        counter.append(1)
        return labels

    def tally(features, labels):
        counted_labels = tf.numpy_function(count, [labels], tf.float32)
        counted_labels.set_shape(labels.shape)
        return features, counted_labels

    return lambda params=None: input_fn().map(tally)


def _one_step_against_one_replica(synthetic_dir: str, work: str) -> dict:
    """One step on one replica with 8 lists, then on two replicas with 4 lists each, from the same weights."""
    from musicsim.train import estimator as training
    from musicsim.inputs import TRAIN, TrackSet, make_list_input_fn
    from musicsim.relevance import SharedLabel

    # Synthetic albums of 4 training tracks: every list has 3 similar and 3 other candidates, 9 pairs,
    # so the mean over 8 lists is the mean of two 4-list means. The hinge loss is that mean over pairs.
    tracks = TrackSet.from_dataset(synthetic_dir, "train")
    clip_norm = 1e-3
    params = dict(TINY, loss="pairwise", clip_norm=clip_norm)

    def lists(batch_size: int):
        return make_list_input_fn(tracks=tracks, relevance_def=SharedLabel(), mode=TRAIN, batch_size=batch_size,
                                  crop_seconds=0.25, seed=0)

    one_dir, two_dir = os.path.join(work, "one"), os.path.join(work, "two")
    one = training.make_estimator(model="wavenet", model_dir=one_dir, params=params, save_checkpoints_steps=1000)
    one.train(lists(8), max_steps=1)
    initial = os.path.join(one_dir, "model.ckpt-0")  # saved before the first step
    two = training.make_estimator(model="wavenet", model_dir=two_dir, params=params, distribute="mirrored",
                                  save_checkpoints_steps=1000, warm_start_from=initial)
    two.train(lists(4), max_steps=1)

    import tensorflow as tf

    start = tf.train.load_checkpoint(initial)
    names = [n for n in one.get_variable_names() if n.startswith(("input_projection", "stack", "final"))
             and "Adam" not in n]
    update = max(float(np.abs(one.get_variable_value(n) - start.get_tensor(n)).max()) for n in names)
    difference = max(float(np.abs(one.get_variable_value(n) - two.get_variable_value(n)).max()) for n in names)
    summaries = {"one_replica": (one, one_dir), "two_replicas": (two, two_dir)}
    out = {"clip_norm": clip_norm, "largest_weight_difference": difference}
    for key, (estimator, model_dir) in summaries.items():
        scalars = _first_scalars(model_dir)
        strategy = estimator.config.train_distribute
        out[key] = {"loss": scalars["loss"], "gradient_norm": scalars["gradient_norm"],
                    "num_replicas_in_sync": strategy.num_replicas_in_sync if strategy else 1}
    out["one_replica"]["largest_update"] = update
    return out


def _train_evaluate_predict(corpus_dir: str, work: str) -> dict:
    """Two replicas train for a few steps on the corpus, evaluate, and embed the test split."""
    from musicsim.train import estimator as training
    from musicsim.inputs import EVAL, TRAIN, TrackSet, make_list_input_fn
    from musicsim.relevance import SharedLabel

    splits = {split: TrackSet.from_dataset(corpus_dir, split) for split in ("train", "eval", "test")}
    album = SharedLabel()
    pulled: list = []
    train_input_fn = _counted(make_list_input_fn(tracks=splits["train"], relevance_def=album, mode=TRAIN,
                                                 batch_size=2, crop_seconds=0.25), pulled)
    eval_input_fn = make_list_input_fn(tracks=splits["eval"], relevance_def=album, mode=EVAL, batch_size=4,
                                       eval_seconds=0.5)
    estimator = training.make_estimator(model="wavenet", model_dir=os.path.join(work, "run"), params=TINY,
                                        distribute="mirrored", save_checkpoints_steps=1000)
    # Early stopping too: TF's own hook fails under MirroredStrategy (it never stops in 3 steps).
    metrics = training.train_and_evaluate(estimator=estimator, train_input_fn=train_input_fn,
                                          eval_input_fn=eval_input_fn, max_steps=TRAIN_STEPS,
                                          early_stopping_patience=100, eval_every_steps=1)
    embeddings = training.predict_embeddings(estimator=estimator, tracks=splits["test"], seconds=1.0)
    return {"num_replicas_in_sync": estimator.config.train_distribute.num_replicas_in_sync,
            "global_step": metrics.get("global_step"), "latest_checkpoint": estimator.latest_checkpoint(),
            "batches_pulled": len(pulled), "eval": {k: float(v) for k, v in metrics.items()},
            "embeddings": embeddings.tolist(), "test_tracks": len(splits["test"])}


def main(argv: list[str]) -> None:
    synthetic_dir, corpus_dir, work, out = argv
    from musicsim import distribute

    distribute.split_cpu(num_replicas=2)  # first: before anything initialises TensorFlow's devices
    report = _one_step_against_one_replica(synthetic_dir, work)
    report["run"] = _train_evaluate_predict(corpus_dir, work)
    with open(out, "w") as f:
        json.dump(report, f)


if __name__ == "__main__":
    main(sys.argv[1:])
