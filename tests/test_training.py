"""End-to-end tests of the estimator plumbing (paper 2.2) on the synthetic dataset, and a learning test.

Tiny WaveNets (8 channels, 2 stacks x 3 layers) on 0.25-0.5 s crops keep every run to seconds on CPU.
"""
from __future__ import annotations

import time
from dataclasses import FrozenInstanceError

import numpy as np
import pytest
import tensorflow as tf

from tensorflow_estimator.python.estimator.early_stopping import read_eval_metrics

from musicsim import evaluation, frontends, head
from musicsim.train import estimator as training
from musicsim.inputs import EVAL, TRAIN, TrackSet, make_list_input_fn
from musicsim.relevance import SharedLabel

TINY = dict(channels=8, skip_channels=8, filter_size=2, dilation_base=2, num_stacks=2, layers_per_stack=3,
            stack_pool_sizes=(4, 4), pooling="max", final_channels=16, loss="lambda", similarity="cosine",
            learning_rate=3e-3)
METRICS = {"PC", "NDCG@1", "NDCG@6", "MAP"}


@pytest.fixture(scope="module")
def splits(synthetic_dataset) -> dict[str, TrackSet]:
    return {split: TrackSet.from_dataset(synthetic_dataset, split) for split in ("train", "eval", "test")}


def counted(input_fn, counter: list):
    """Wrap an input_fn so that every batch the estimator pulls appends to ``counter``."""

    def count(labels):
        counter.append(1)
        return labels

    def wrapped():
        def tally(features, labels):
            counted_labels = tf.numpy_function(count, [labels], tf.float32)
            counted_labels.set_shape(labels.shape)
            return features, counted_labels

        # No prefetch after the count (tf.data would inject one): one pulled batch, one count.
        options = tf.data.Options()
        options.experimental_optimization.inject_prefetch = False
        return input_fn().map(tally).with_options(options)

    return wrapped


def input_fns(splits, *, seed: int = 0, crop_seconds: float = 0.25):
    album = SharedLabel()
    train = make_list_input_fn(tracks=splits["train"], relevance_def=album, mode=TRAIN, batch_size=4,
                               crop_seconds=crop_seconds, seed=seed)
    evaluate = make_list_input_fn(tracks=splits["eval"], relevance_def=album, mode=EVAL, batch_size=8, eval_seconds=0.5)
    return train, evaluate


def test_train_evaluate_predict_then_resume(splits, tmp_path):
    estimator = training.make_estimator(model="wavenet", model_dir=str(tmp_path), params=TINY,
                                        save_checkpoints_steps=100)
    train_input_fn, eval_input_fn = input_fns(splits)
    batches: list = []
    result = training.train_and_evaluate(estimator=estimator, train_input_fn=counted(train_input_fn, batches),
                                         eval_input_fn=eval_input_fn, max_steps=6)
    assert METRICS <= set(result) and result["global_step"] == 6 and len(batches) == 6
    assert all(0.0 <= result[name] <= 1.0 for name in METRICS) and np.isfinite(result["loss"])
    assert estimator.latest_checkpoint().endswith("-6")

    # Whole tracks (3 to 5.4 s): batches of 8 pad the shorter ones; one track per batch pads nothing.
    embeddings = training.predict_embeddings(estimator=estimator, tracks=splits["test"])
    assert embeddings.shape == (8, 16) and embeddings.dtype == np.float32 and np.isfinite(embeddings).all()
    assert len({sequence.shape[0] for sequence in splits["test"].sequences}) > 1
    alone = training.predict_embeddings(estimator=estimator, tracks=splits["test"], batch_size=1)
    np.testing.assert_allclose(alone, embeddings, rtol=1e-4, atol=1e-5)
    assert np.abs(embeddings[0] - embeddings[1]).max() > 1e-4

    # A second run on the same model_dir resumes at step 6: it pulls only the 4 missing batches.
    batches.clear()
    result = training.train_and_evaluate(estimator=estimator, train_input_fn=counted(train_input_fn, batches),
                                         eval_input_fn=eval_input_fn, max_steps=10)
    assert result["global_step"] == 10 and len(batches) == 4
    assert estimator.latest_checkpoint().endswith("-10")


@pytest.mark.parametrize("early_stopping, metric", [(None, "NDCG@6"), (("loss", "decrease"), "loss")],
                         ids=["default-ndcg6-increase", "loss-decrease"])
def test_early_stopping(splits, tmp_path, early_stopping, metric):
    """With a learning rate of 0 the eval metrics never move: training must stop after the patience."""
    estimator = training.make_estimator(model="wavenet", model_dir=str(tmp_path),
                                        params=dict(TINY, learning_rate=0.0), save_checkpoints_steps=5)
    train_input_fn, eval_input_fn = input_fns(splits)
    chosen = {} if early_stopping is None else {"early_stopping": early_stopping}
    result = training.train_and_evaluate(estimator=estimator, train_input_fn=train_input_fn,
                                         eval_input_fn=eval_input_fn, max_steps=2000, early_stopping_patience=5,
                                         eval_every_steps=5, **chosen)
    stopped_at = result["global_step"]
    assert stopped_at <= 25  # evaluations at 5 and 10 are enough to see no improvement
    evaluations = read_eval_metrics(estimator.eval_dir())  # what the hook reads
    assert evaluations and all(metric in values for values in evaluations.values())
    assert len({round(float(values[metric]), 5) for values in evaluations.values()}) == 1
    assert max(evaluations) == stopped_at and stopped_at - min(step for step in evaluations if step >= 5) >= 5


def test_early_stopping_reads_its_metric_by_name(splits, tmp_path):
    """The hook looks its metric up in the eval results: a name the head does not report fails loudly,
    so the runs above really read "NDCG@6" (the '@' survives the event files) and "loss"."""
    estimator = training.make_estimator(model="wavenet", model_dir=str(tmp_path),
                                        params=dict(TINY, learning_rate=0.0), save_checkpoints_steps=2)
    train_input_fn, eval_input_fn = input_fns(splits)
    with pytest.raises(KeyError, match="NDCG@7"):
        training.train_and_evaluate(estimator=estimator, train_input_fn=train_input_fn, eval_input_fn=eval_input_fn,
                                    max_steps=100, early_stopping_patience=2, eval_every_steps=2,
                                    early_stopping=("NDCG@7", "increase"))


def test_time_limit_stops_training(splits, tmp_path):
    estimator = training.make_estimator(model="wavenet", model_dir=str(tmp_path), params=TINY,
                                        save_checkpoints_steps=1000)
    train_input_fn, eval_input_fn = input_fns(splits)
    # The clock starts when the hook is made, before the graph is built: the limit is over at step 1.
    result = training.train_and_evaluate(estimator=estimator, train_input_fn=train_input_fn,
                                         eval_input_fn=eval_input_fn, max_steps=100_000, max_minutes=1e-4)
    assert 1 <= result["global_step"] <= 3
    assert estimator.latest_checkpoint().endswith(f"-{result['global_step']}")  # stopped cleanly, checkpointed


class FakeRunContext:
    def __init__(self):
        self.stop_requested = False

    def request_stop(self):
        self.stop_requested = True


@pytest.mark.parametrize("minutes, stops", [(1e-6, True), (10.0, False)])
def test_time_limit_hook(minutes, stops):
    hook = training.TimeLimitHook(minutes)
    context = FakeRunContext()
    time.sleep(0.01)
    hook.after_run(context, None)
    assert context.stop_requested == stops


def test_make_estimator_rejects_a_fitted_model(tmp_path):
    with pytest.raises(ValueError, match="'librosa' is not a learned model"):
        training.make_estimator(model="librosa", model_dir=str(tmp_path), params={})


class ForgetfulEstimator:
    """Stands in for an estimator whose PREDICT loses every track after the first."""

    def predict(self, input_fn, checkpoint_path=None, yield_single_examples=True):
        features = next(iter(input_fn()))
        yield {"track_id": features["track_id"].numpy()[0], "embedding": np.ones(3, np.float32)}


def test_predict_embeddings_reports_missing_tracks(splits):
    with pytest.raises(RuntimeError, match="no embedding for 7 tracks"):
        training.predict_embeddings(estimator=ForgetfulEstimator(), tracks=splits["test"], seconds=0.25)


# --------------------------------------------------------------------------- learning

# Two groups of two albums each, so similarity is not just "same timbre": an untrained random
# WaveNet, which already separates the four albums, scores only PC ~0.63-0.71 on these groups
# (measured over 4 seeds); random scores give ~0.5.
GROUPS = {"low_sine": "group_a", "bright_square": "group_a", "noisy_mid": "group_b", "high_pulse": "group_b"}


def _grouped(tracks: TrackSet) -> TrackSet:
    return TrackSet(track_ids=tracks.track_ids, labels=[(GROUPS[labels[0]],) for labels in tracks.labels],
                    sequences=tracks.sequences, frame_rate=tracks.frame_rate)


def test_training_learns_the_similarity(splits, tmp_path):
    grouped = {split: _grouped(tracks) for split, tracks in splits.items()}
    held_out = TrackSet(track_ids=grouped["eval"].track_ids + grouped["test"].track_ids,
                        labels=grouped["eval"].labels + grouped["test"].labels,
                        sequences=grouped["eval"].sequences + grouped["test"].sequences, frame_rate=1600.0)
    relevance, _ = held_out.relevance(SharedLabel())
    estimator = training.make_estimator(model="wavenet", model_dir=str(tmp_path), params=TINY,
                                        save_checkpoints_steps=1000)
    untrained = evaluation.evaluate(relevance_matrix=relevance, embeddings=training.predict_embeddings(
        estimator=estimator, tracks=held_out, seconds=2.0))
    train_input_fn, eval_input_fn = input_fns(grouped, crop_seconds=0.5)
    training.train_and_evaluate(estimator=estimator, train_input_fn=train_input_fn, eval_input_fn=eval_input_fn,
                                max_steps=200)
    trained = evaluation.evaluate(relevance_matrix=relevance, embeddings=training.predict_embeddings(
        estimator=estimator, tracks=held_out, seconds=2.0))
    random = evaluation.evaluate(relevance_matrix=relevance, baseline="random")
    print({name: (round(untrained[name][0], 3), round(trained[name][0], 3), round(random[name][0], 3))
           for name in ("PC", "NDCG@6", "MAP")})
    assert random["PC"][0] < 0.6
    assert trained["PC"][0] >= 0.9 and trained["PC"][0] >= untrained["PC"][0] + 0.15
    assert trained["NDCG@6"][0] >= random["NDCG@6"][0] + 0.15
    assert trained["MAP"][0] >= random["MAP"][0] + 0.2


# ------------------------------------------------------------------------------ best checkpoint

def _fake_run(model_dir, *, evaluations: dict[int, dict[str, float]], kept: tuple[int, ...]) -> None:
    """A run directory with these evaluations in ``eval/`` and checkpoint files for the ``kept`` steps."""
    with tf.Graph().as_default():  # the estimator's own (v1) event writer, as its evaluations are written
        writer = tf.compat.v1.summary.FileWriter(str(model_dir / "eval"))
        for step, metrics in evaluations.items():
            summary = tf.compat.v1.Summary(value=[tf.compat.v1.Summary.Value(tag=name, simple_value=value)
                                                  for name, value in metrics.items()])
            writer.add_summary(summary, global_step=step)
        writer.close()
    for step in kept:
        (model_dir / f"model.ckpt-{step}.index").write_bytes(b"")
    if kept:
        (model_dir / "checkpoint").write_text(f'model_checkpoint_path: "model.ckpt-{max(kept)}"\n')


CURVE = {10: {"NDCG@6": 0.5, "loss": 0.9}, 20: {"NDCG@6": 0.8, "loss": 0.4}, 30: {"NDCG@6": 0.7, "loss": 0.3},
         40: {"NDCG@6": 0.8, "loss": 0.5}}


@pytest.mark.parametrize("metric, direction, kept, expected", [
    ("NDCG@6", "increase", (10, 20, 30, 40), 20),  # a tie goes to the earliest step, as in early stopping
    ("loss", "decrease", (10, 20, 30, 40), 30),
    ("NDCG@6", "increase", (30, 40), 40),  # the best (20) was deleted: the best of those kept
    ("NDCG@6", "increase", (10, 30), 30),
    ("MAP", "increase", (10, 20, 30, 40), 40),  # never evaluated: the latest
])
def test_best_checkpoint_follows_the_metric_among_kept_checkpoints(tmp_path, metric, direction, kept, expected):
    _fake_run(tmp_path, evaluations=CURVE, kept=kept)
    best = training.best_checkpoint(str(tmp_path), metric=metric, direction=direction)
    assert best == str(tmp_path / f"model.ckpt-{expected}")


def test_export_checkpoint_best_or_last(tmp_path):
    _fake_run(tmp_path, evaluations=CURVE, kept=(10, 20, 30, 40))
    assert training.export_checkpoint(str(tmp_path), which="best").endswith("model.ckpt-20")
    assert training.export_checkpoint(str(tmp_path), which="last").endswith("model.ckpt-40")
    with pytest.raises(ValueError, match="export checkpoint must be one of"):
        training.export_checkpoint(str(tmp_path), which="median")
    with pytest.raises(ValueError, match="direction must be"):
        training.best_checkpoint(str(tmp_path), direction="up")


def test_best_checkpoint_of_a_run_without_checkpoints_is_none(tmp_path):
    assert training.best_checkpoint(str(tmp_path)) is None
    _fake_run(tmp_path, evaluations=CURVE, kept=())
    assert training.best_checkpoint(str(tmp_path)) is None


@pytest.mark.parametrize("patience, every, expected", [(0, 50, 3), (100, 50, 4), (400, 100, 6), (450, 100, 7),
                                                       (10, 100, 3)])
def test_checkpoints_to_keep_covers_the_patience(patience, every, expected):
    assert training.checkpoints_to_keep(early_stopping_patience=patience, save_checkpoints_steps=every) == expected


def test_checkpoints_to_keep_refuses_a_bad_interval():
    with pytest.raises(ValueError, match="save_checkpoints_steps must be >= 1"):
        training.checkpoints_to_keep(early_stopping_patience=100, save_checkpoints_steps=0)


def test_a_trained_run_keeps_and_embeds_with_its_best_checkpoint(splits, tmp_path):
    """Early stopping with patience: the best evaluated checkpoint is still on disk at the stop, and
    embedding with it differs from embedding with the last one whenever they differ."""
    keep = training.checkpoints_to_keep(early_stopping_patience=20, save_checkpoints_steps=5)
    estimator = training.make_estimator(model="wavenet", model_dir=str(tmp_path), params=TINY, seed=0,
                                        save_checkpoints_steps=5, keep_checkpoint_max=keep)
    train, evaluate = input_fns(splits)
    training.train_and_evaluate(estimator=estimator, train_input_fn=train, eval_input_fn=evaluate, max_steps=40,
                                early_stopping_patience=20, eval_every_steps=5)
    evaluations = read_eval_metrics(str(tmp_path / "eval"))
    best_step = max(sorted(evaluations), key=lambda step: (evaluations[step]["NDCG@6"], -step))
    best = training.best_checkpoint(str(tmp_path))
    assert best == str(tmp_path / f"model.ckpt-{best_step}")
    last = estimator.latest_checkpoint()
    from_best = training.predict_embeddings(estimator=estimator, tracks=splits["test"], checkpoint_path=best)
    from_last = training.predict_embeddings(estimator=estimator, tracks=splits["test"])
    assert np.array_equal(from_best, from_last) == (best == last)


def test_a_runs_params_are_settled_by_the_configs_and_the_flags_default_to_them():
    from absl import flags

    from experiments import run as run_module
    from musicsim.models import rnn, wavenet

    config = run_module.RunConfig(model="rnn", dataset_dir="data", model_dir="run", params={"rnn_units": 8})
    assert config.params["rnn_units"] == 8
    assert config.params["rnn_embedding"] == rnn.RNNConfig().rnn_embedding == "all"  # every readout, best on eval
    assert config.params["hop_length"] == rnn.RNNConfig().hop_length
    # Only the head's and the LSTM's keys: run.json records the chosen model's config, not every model's.
    assert set(config.params) == set(head.HeadConfig.keys()) | set(rnn.RNNConfig.keys())
    assert "channels" not in config.params
    with pytest.raises(FrozenInstanceError):
        config.seed = 1  # a run's settings are frozen: a settled value is a new config
    assert config.with_params(rnn_units=4).params["rnn_units"] == 4 and config.params["rnn_units"] == 8
    with pytest.raises(ValueError, match=r"unknown params \['rnn_unit'\]"):
        run_module.RunConfig(model="rnn", dataset_dir="data", model_dir="run", params={"rnn_unit": 8})
    defaults = {name: flags.FLAGS[name].default for name in ("rnn_embedding", "learning_rate", "channels", "n_mels")}
    assert defaults == {"rnn_embedding": rnn.RNNConfig().rnn_embedding,
                        "learning_rate": head.HeadConfig().learning_rate,
                        "channels": wavenet.WaveNetConfig().channels, "n_mels": frontends.FrontendConfig().n_mels}


def test_make_estimator_fills_the_defaults_and_runs_the_entrys_objective(tmp_path):
    """The rnn's entry brings its next-frame objective: EVAL reports its mae, not the ranking metrics."""
    from musicsim.models import rnn

    estimator = training.make_estimator(model="rnn", model_dir=str(tmp_path), params={"rnn_units": 4,
                                                                                       "section_frames": 20})
    assert estimator.params["rnn_units"] == 4 and estimator.params["loss"] == head.HeadConfig().loss
    rng = np.random.default_rng(0)
    tracks = TrackSet(track_ids=["a", "b"], labels=[("x",), ("y",)], frame_rate=10.0,
                      sequences=[rng.random((30, 12), np.float32), rng.random((25, 12), np.float32)])
    estimator.train(rnn.make_input_fn(tracks=tracks, mode=TRAIN, batch_size=2, section_frames=20), max_steps=1)
    metrics = estimator.evaluate(rnn.make_input_fn(tracks=tracks, mode=EVAL, batch_size=2))
    assert {"loss", "mae"} <= set(metrics) and "NDCG@6" not in metrics


def test_the_same_seed_gives_the_same_model_whatever_ran_before(splits, tmp_path):
    """Keras draws initialiser seeds from Python's random: a seed must fix them, in any process state."""
    import random

    def trained_embeddings(name: str, seed: int) -> np.ndarray:
        estimator = training.make_estimator(model="wavenet", model_dir=str(tmp_path / name), params=TINY, seed=seed)
        train_input_fn, eval_input_fn = input_fns(splits)
        estimator.train(train_input_fn, max_steps=2)
        return training.predict_embeddings(estimator=estimator, tracks=splits["test"])

    random.seed(1)
    first = trained_embeddings("first", seed=0)
    random.seed(2)  # another process, or other work before: another Python random state
    again = trained_embeddings("again", seed=0)
    other = trained_embeddings("other", seed=1)
    np.testing.assert_array_equal(first, again)
    assert np.abs(first - other).max() > 1e-3


# ---------------------------------------------------------------------------------------------
# What a run prints (issue 24 item 10) and what it holds at once (item 13)
# ---------------------------------------------------------------------------------------------

REPO_ROOT = __import__("os").path.dirname(__import__("os").path.dirname(__import__("os").path.abspath(__file__)))
TINY_FLAGS = ["--channels=8", "--skip_channels=8", "--num_stacks=2", "--layers_per_stack=3", "--stack_pool_sizes=4,4",
              "--final_channels=16", "--crop_seconds=0.5", "--eval_seconds=1", "--max_steps=4",
              "--save_checkpoints_steps=2", "--eval_repeats=1", "--workers=1", "--early_stopping_patience=0"]


# Two machines in one: one core (taskset) against all of them with a bigger inter-op pool. TensorFlow sizes
# its thread pools by the cores it may use; experiments.run pins what changes the numbers.
MACHINES = {"default": {"cores": "0", "env": {}}, "verbose": {"cores": None, "env": {"TF_NUM_INTEROP_THREADS": "3"}}}
PINNED = ("TF_ENABLE_ONEDNN_OPTS", "ONEDNN_MAX_CPU_ISA", "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS")


@pytest.fixture(scope="module")
def run_outputs(synthetic_dataset, tmp_path_factory) -> dict:
    """A tiny ``experiments.run`` quiet (default) and with ``-v 1``, each on one of `MACHINES`: its combined
    stdout+stderr lines (``lines``) and its exported embeddings (``embeddings``)."""
    import os
    import shutil
    import subprocess
    import sys

    outputs = {}
    for name, extra in (("default", []), ("verbose", ["-v", "1"])):
        model_dir = str(tmp_path_factory.mktemp(f"run-{name}"))
        env = {k: v for k, v in os.environ.items() if k not in PINNED}
        machine = MACHINES[name]
        cores = ["taskset", "-c", machine["cores"]] if machine["cores"] and shutil.which("taskset") else []
        done = subprocess.run([*cores, sys.executable, "-m", "experiments.run", f"--dataset={synthetic_dataset}",
                               f"--model_dir={model_dir}", *TINY_FLAGS, *extra], cwd=REPO_ROOT,
                              env=dict(env, TF_CPP_MIN_LOG_LEVEL="3", **machine["env"]), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, timeout=300)
        assert done.returncode == 0, done.stdout[-3000:]
        # A progress bar redraws itself with carriage returns: each redraw is a screen line of its own.
        lines = [line for line in done.stdout.replace("\r", "\n").split("\n") if line.strip()]
        with np.load(os.path.join(model_dir, "embeddings.npz")) as exported:
            outputs[name] = {"lines": lines, "embeddings": exported["embeddings"].copy(),
                             "track_ids": list(exported["track_ids"])}
    return outputs


def test_a_run_prints_progress_evals_and_the_table_not_the_estimators_internals(run_outputs):
    lines = run_outputs["default"]["lines"]
    text = "\n".join(lines)
    assert not [line for line in lines if "INFO:tensorflow" in line], text
    assert "RunConfig" not in text and "graph_options" not in text and "Calling model_fn" not in text
    bar = [line for line in lines if line.startswith("training:")]
    assert bar and any("4/4" in line and "loss=" in line for line in bar), text
    evals = [line for line in lines if line.startswith("eval @ step")]
    assert [line.split(":")[0] for line in evals] == ["eval @ step 2", "eval @ step 4"], text
    assert all(len(line) < 100 and "PC " in line and "NDCG@6 " in line for line in evals)
    assert any(line.startswith("wavenet ") for line in lines) and any("TensorBoard" in line for line in lines)
    # Without the bar's redraws: a handful of lines, not the estimator's hundred.
    assert len([line for line in lines if not line.startswith("training:")]) <= 15, text


def test_verbosity_brings_the_estimators_internals_back(run_outputs):
    verbose = run_outputs["verbose"]["lines"]
    assert len([line for line in verbose if line.startswith("INFO:tensorflow:")]) > 20
    assert any("Calling model_fn" in line for line in verbose)
    assert any(line.startswith("wavenet ") for line in verbose)  # the run's own lines are still there


def test_the_same_seed_trains_the_same_model_whatever_the_cores(run_outputs):
    """Issue 24 item 11: bit for bit, not merely close (a few ulps become another table after 200 steps).

    The CPU's extensions cannot be changed here: experiments.run pins oneDNN's to AVX2 (see
    ``REPRODUCIBLE_ENVIRONMENT``), which is what ``ONEDNN_MAX_CPU_ISA`` would vary.
    """
    one, other = run_outputs["default"], run_outputs["verbose"]
    assert one["track_ids"] == other["track_ids"]
    assert np.array_equal(one["embeddings"], other["embeddings"]), np.abs(one["embeddings"] - other["embeddings"]).max()


@pytest.mark.parametrize("metrics, expected", [
    ({"global_step": 50, "PC": 0.6123, "NDCG@1": 0.4, "NDCG@6": 0.71, "MAP": 0.5, "loss": 1.25, "catalog_mAP": 0.3},
     "eval @ step 50: PC 0.612  NDCG@1 0.400  NDCG@6 0.710  MAP 0.500  loss 1.250"),
    ({"global_step": 7, "loss": 0.5}, "eval @ step 7: loss 0.500"),
])
def test_eval_line_is_short(metrics, expected):
    assert training.format_eval_line(metrics) == expected


def long_track_set(splits, *, seconds: float) -> TrackSet:
    """The test split plus one track ``seconds`` long (the split's tracks end to end, repeated)."""
    test = splits["test"]
    pieces = np.concatenate([s[:, 0] for s in test.sequences])
    steps = int(seconds * test.frame_rate)
    long = np.tile(pieces, steps // pieces.size + 1)[:steps]
    return TrackSet(track_ids=[*test.track_ids, "long"], labels=[*test.labels, ("long",)],
                    sequences=[*test.sequences, long[:, None]], frame_rate=test.frame_rate)


@pytest.fixture(scope="module")
def trained_tiny(splits, tmp_path_factory) -> tf.estimator.Estimator:
    estimator = training.make_estimator(model="wavenet", model_dir=str(tmp_path_factory.mktemp("tiny")),
                                        params=TINY, save_checkpoints_steps=100)
    train_input_fn, _ = input_fns(splits)
    estimator.train(train_input_fn, max_steps=3)
    return estimator


@pytest.mark.parametrize("window_seconds, seconds", [(1.0, None), (2.5, None), (1.0, 20.0)])
def test_a_runs_embedding_goes_window_by_window_and_equals_the_whole_track(splits, trained_tiny, monkeypatch,
                                                                           window_seconds, seconds):
    tracks = long_track_set(splits, seconds=90.0)
    whole = training.predict_embeddings(estimator=trained_tiny, tracks=tracks, seconds=seconds)
    handed: list[int] = []
    rows_of = training.iter_track_window_rows

    def counting(**kwargs):
        for row in rows_of(**kwargs):
            handed.append(row.audio.size)
            yield row

    monkeypatch.setattr(training, "iter_track_window_rows", counting)
    windowed = training.predict_embeddings(estimator=trained_tiny, tracks=tracks, seconds=seconds, model="wavenet",
                                           window_seconds=window_seconds)
    np.testing.assert_allclose(windowed, whole, rtol=1e-5, atol=1e-6)
    sizes = training.window_sizes(model="wavenet", params=trained_tiny.params, frame_rate=tracks.frame_rate,
                                  window_seconds=window_seconds)
    bound = sizes["context"] + sizes["window"] + sizes["lookahead"]
    assert handed and max(handed) <= bound < tracks.frames(90.0)
    # Every step is read, and only its window's context again: the work is linear in the audio.
    total = sum(min(s.shape[0], tracks.frames(seconds) or s.shape[0]) for s in tracks.sequences)
    assert total <= sum(handed) <= total * (1 + sizes["context"] / sizes["window"]) + len(tracks) * bound


def test_whole_track_evaluation_lists_are_cropped(splits):
    from experiments import run as run_module
    from musicsim import models as registry
    from musicsim.train.learned import training_inputs

    eval_tracks = long_track_set({"test": splits["eval"]}, seconds=run_module.MAX_EVAL_SECONDS + 60)
    # The long track is similar to one of the split's own tracks, so it is a query and a candidate.
    eval_tracks.labels[-1] = eval_tracks.labels[0]
    config = run_module.RunConfig(model="wavenet", dataset_dir="unused", model_dir="unused", eval_seconds=None,
                                  params=dict(TINY), batch_size=4)
    inputs = training_inputs(config, registry.entry("wavenet"), {"train": splits["train"], "eval": eval_tracks},
                             SharedLabel(), train_seed=0)
    cap = eval_tracks.frames(run_module.MAX_EVAL_SECONDS)
    longest = 0
    for features, _ in inputs.eval():
        longest = max(longest, int(features["query_length"].numpy().max()),
                      int(features["candidate_length"].numpy().max()))
    assert longest == cap < eval_tracks.sequences[-1].shape[0]
