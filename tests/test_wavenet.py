"""Tests of the WaveNet embedding (paper 4.3): layer shapes, masking, padding invariance, causality, field.

Keras layers create fresh variables on every call, so each comparison (a track alone vs padded
in a batch, an input before vs after a change) runs through ONE graph built once on placeholders
and fed several times.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np
import pytest
import tensorflow as tf

from graph_runner import GraphRunner
from musicsim.models import wavenet

TINY = dict(channels=8, skip_channels=16, filter_size=2, dilation_base=2, num_stacks=2, layers_per_stack=3,
            stack_pool_sizes=(3, 4), pooling="max", final_channels=8, final_filter_size=2, dense_layers=())




def embed_runner(params: Mapping, *, channels: int | None = None, dtype: tf.DType = tf.float32) -> GraphRunner:
    """``embed`` on audio ``[batch, time]`` (``channels=None``) or ``[batch, time, channels]`` and lengths ``[batch]``.

    ``dtype=tf.float64`` builds the keras layers in double precision (for measurements that
    subtract large, nearly equal numbers).
    """
    audio_shape = [None, None] if channels is None else [None, None, channels]
    floatx = tf.keras.backend.floatx()
    tf.keras.backend.set_floatx(dtype.name)
    try:
        return GraphRunner(lambda audio, length: wavenet.embed(audio, length, params=params, training=False),
                           [(dtype, audio_shape), (tf.int32, [None])])
    finally:
        tf.keras.backend.set_floatx(floatx)


def pad_batch(tracks: list[np.ndarray], *, garbage: float | None, rng: np.random.Generator) -> np.ndarray:
    """Right-pad tracks ``[time_i, ...]`` into ``[batch, max_time, ...]``; padding is zeros or random garbage."""
    time = max(t.shape[0] for t in tracks)
    batch = np.zeros((len(tracks), time) + tracks[0].shape[1:], np.float32)
    if garbage is not None:
        batch[:] = garbage * rng.standard_normal(batch.shape)
    for i, track in enumerate(tracks):
        batch[i, : track.shape[0]] = track
    return batch


# --------------------------------------------------------------------------- small pieces


@pytest.mark.parametrize("params, expected", [
    ({}, [1, 2, 4, 8, 16, 32]),
    ({"layers_per_stack": 4, "dilation_base": 4}, [1, 4, 16, 64]),
    ({"layers_per_stack": 3, "dilation_base": 3}, [1, 3, 9]),
    ({"layers_per_stack": 1, "dilation_base": 2}, [1]),
])
def test_dilations_are_powers_of_the_base(params, expected):
    assert wavenet.dilations(params) == expected


@pytest.mark.parametrize("params, expected", [
    # 1 + stacks * (f - 1) * (1 + b + b^2) + (final_f - 1), pools of 1 keep the resolution
    (dict(filter_size=2, dilation_base=2, layers_per_stack=3, num_stacks=2, stack_pool_sizes=(1, 1)), 1 + 2 * 7 + 1),
    (dict(filter_size=4, dilation_base=4, layers_per_stack=3, num_stacks=2, stack_pool_sizes=(1, 1)),
     1 + 2 * 3 * 21 + 1),
    # stack 1: 1 + 7 + (2 - 1) = 9, step 2; stack 2: + 7*2 + (3 - 1)*2 = 27, step 6; final (3 - 1) * 6 = 39
    (dict(filter_size=2, dilation_base=2, layers_per_stack=3, num_stacks=2, stack_pool_sizes=(2, 3),
          final_filter_size=3), 39),
    # defaults: per stack 63 steps of its resolution + the pool; 67, 331, 1387, then the final conv + 64
    ({}, 1451),
])
def test_receptive_field_formula_by_hand(params, expected):
    assert wavenet.receptive_field(params) == expected


@pytest.mark.parametrize("params, message", [
    (dict(num_stacks=2, stack_pool_sizes=(4, 4, 4)), "3 entries for 2 stacks"),
    (dict(num_stacks=2, stack_pool_sizes=(4, 0)), ">= 1"),
])
def test_invalid_pool_sizes_raise(params, message):
    with pytest.raises(ValueError, match=message):
        wavenet.receptive_field(params)


def test_pool_sizes_accept_a_single_size_and_a_comma_string():
    assert wavenet.min_length_steps(dict(num_stacks=3, stack_pool_sizes=(2,))) == 8
    assert wavenet.min_length_steps(dict(num_stacks=2, stack_pool_sizes="2,5")) == 10


def test_config_reads_its_own_keys_and_names_the_missing_ones():
    params = {**wavenet.WaveNetConfig(channels=8, dense_layers="6,4").to_params(), "loss": "lambda", "n_mels": 3}
    config = wavenet.WaveNetConfig.from_params(params)
    assert config.channels == 8 and config.dense_layers == (6, 4) and config.embedding_size == 4
    assert wavenet.WaveNetConfig.from_params(config.to_params()) == config
    del params["final_channels"], params["pooling"]
    with pytest.raises(ValueError, match=r"\['pooling', 'final_channels'\]"):
        wavenet.WaveNetConfig.from_params(params)


def test_one_pool_size_serves_any_number_of_stacks():
    # The default is one size, as the --stack_pool_sizes flag gives it: any num_stacks pools 4 after each stack.
    assert wavenet.WaveNetConfig(num_stacks=2).pool_sizes == (4, 4)
    assert wavenet.min_length_steps({"num_stacks": 5}) == 4 ** 5
    assert wavenet.WaveNetConfig(num_stacks=2).to_params()["stack_pool_sizes"] == (4,)
    runner = embed_runner({"num_stacks": 2, "layers_per_stack": 2, "channels": 4, "skip_channels": 4})
    assert runner(np.ones((1, 40), np.float32), np.array([40], np.int32)).shape == (1, 64)
    runner.close()


@pytest.mark.parametrize("atrous", [False, True])
def test_unpooled_stacks_keep_the_step_rate_and_the_variables_of_the_pooled_ones(atrous):
    def variables(build) -> dict[str, list[int]]:
        graph = tf.Graph()
        with graph.as_default():
            build()
            return {v.op.name: v.shape.as_list() for v in tf.compat.v1.global_variables()}

    audio, length = np.zeros((2, 50, 1), np.float32), np.array([50, 31], np.int32)
    outputs = {}

    def stacks(pooled):
        def build():
            outputs[pooled] = wavenet.stacks(tf.constant(audio), tf.constant(length), params=TINY, training=False,
                                             pooled=pooled, atrous=atrous and not pooled)
        return build

    assert variables(stacks(True)) == variables(stacks(False))
    (pooled_skips, pooled_length), (skips, steps) = outputs[True], outputs[False]
    assert len(skips) == len(pooled_skips) == 2 * 3
    assert all(k.shape[-1] == 16 for k in skips)
    with tf.compat.v1.Session(graph=skips[0].graph) as session:
        session.run(tf.compat.v1.global_variables_initializer())
        values, lengths = session.run([skips, steps])
    assert all(v.shape[1] == 50 for v in values)  # one output step per input step
    np.testing.assert_array_equal(lengths, length)
    with tf.compat.v1.Session(graph=pooled_skips[0].graph) as session:
        session.run(tf.compat.v1.global_variables_initializer())
        np.testing.assert_array_equal(session.run(pooled_length), -(-length // 12))  # ceil(n / (3 * 4))


@pytest.mark.parametrize("dilation, filter_size", [(1, 2), (4, 2), (4, 4)])
def test_wavenet_layer_shapes_and_causality(dilation, filter_size):
    params = dict(TINY, channels=6, skip_channels=5, filter_size=filter_size)
    runner = GraphRunner(lambda x: wavenet.wavenet_layer(x, dilation=dilation, config=wavenet.config_of(params),
                                                         name="layer"),
                         [(tf.float32, [None, None, 6])])
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 40, 6)).astype(np.float32)
    residual, skip = runner(x)
    assert residual.shape == (3, 40, 6) and skip.shape == (3, 40, 5)
    for t in (0, 7, 25):
        changed = x.copy()
        changed[:, t + 1:] = rng.standard_normal(changed[:, t + 1:].shape)
        residual_changed, skip_changed = runner(changed)
        np.testing.assert_array_equal(residual_changed[:, : t + 1], residual[:, : t + 1])
        np.testing.assert_array_equal(skip_changed[:, : t + 1], skip[:, : t + 1])
        assert not np.allclose(skip_changed[:, t + 1], skip[:, t + 1])
    # The field of one layer is (filter - 1) * dilation + 1 steps: step t reads t - (f - 1) d.
    reach = (filter_size - 1) * dilation
    t = 30
    changed = x.copy()
    changed[:, t - reach] += 1.0
    assert not np.allclose(runner(changed)[1][:, t], skip[:, t])
    changed = x.copy()
    changed[:, t - reach - 1] += 1.0
    np.testing.assert_array_equal(runner(changed)[1][:, t], skip[:, t])
    runner.close()


def _pool_runner(*, pool: int, pooling: str) -> GraphRunner:
    return GraphRunner(lambda x, length: wavenet.masked_pool(x, length, pool=pool, pooling=pooling),
                       [(tf.float32, [None, None, 1]), (tf.int32, [None])])


# Track 0 fills all 7 steps (last window partial: 1 of 3 steps); track 1 has 5 real steps, then
# padding holding large garbage that must never win a max or enter a mean.
POOL_INPUT = np.array([[1, 5, 2, 7, 3, 9, 4], [-1, -5, -2, -7, -3, 100, 100]], np.float32)[:, :, None]
POOL_LENGTHS = np.array([7, 5], np.int32)


@pytest.mark.parametrize("pooling, expected", [
    ("max", [[5, 9, 4], [-1, -3, 0]]),
    ("avg", [[8 / 3, 19 / 3, 4], [-8 / 3, -5, 0]]),
])
def test_masked_pool_partial_windows_and_padding(pooling, expected):
    runner = _pool_runner(pool=3, pooling=pooling)
    pooled = runner(POOL_INPUT, POOL_LENGTHS)
    assert pooled.shape == (2, 3, 1)
    np.testing.assert_allclose(pooled[:, :, 0], expected, rtol=1e-6)
    runner.close()


@pytest.mark.parametrize("pooling", ["max", "avg"])
def test_masked_pool_of_an_empty_track_is_zero(pooling):
    runner = _pool_runner(pool=2, pooling=pooling)
    pooled = runner(np.full((1, 4, 1), 3.0, np.float32), np.array([0], np.int32))
    np.testing.assert_array_equal(pooled, np.zeros((1, 2, 1)))
    runner.close()


def test_masked_pool_of_size_one_keeps_the_real_steps():
    runner = _pool_runner(pool=1, pooling="max")
    np.testing.assert_array_equal(runner(POOL_INPUT, POOL_LENGTHS)[:, :5], POOL_INPUT[:, :5])
    runner.close()


@pytest.mark.parametrize("pooling, expected", [
    ("max", [[9], [-1], [0]]),
    ("avg", [[31 / 7], [-18 / 5], [0]]),
])
def test_global_pool_masks_padding(pooling, expected):
    runner = GraphRunner(lambda x, length: wavenet.global_pool(x, length, pooling=pooling),
                         [(tf.float32, [None, None, 1]), (tf.int32, [None])])
    x = np.concatenate([POOL_INPUT, np.full((1, 7, 1), 50.0, np.float32)])
    pooled = runner(x, np.array([7, 5, 0], np.int32))
    np.testing.assert_allclose(pooled, expected, rtol=1e-6)
    runner.close()


@pytest.mark.parametrize("function", ["masked_pool", "global_pool"])
def test_invalid_pooling_raises(function):
    x, length = tf.zeros([1, 4, 1]), tf.constant([4])
    with pytest.raises(ValueError, match="pooling must be 'max' or 'avg', got 'median'"):
        if function == "masked_pool":
            wavenet.masked_pool(x, length, pool=2, pooling="median")
        else:
            wavenet.global_pool(x, length, pooling="median")


# --------------------------------------------------------------------------- the whole embedding


@pytest.mark.parametrize("params, channels, size", [
    (TINY, None, 8),
    (dict(TINY, dense_layers=(12, 5)), None, 5),
    (dict(TINY, dense_layers="6", dropout=0.5, pooling="avg"), 2, 6),
    (dict(TINY, final_channels=11), 3, 11),
])
def test_embed_shapes(params, channels, size):
    runner = embed_runner(params, channels=channels)
    rng = np.random.default_rng(0)
    shape = (5, 61) if channels is None else (5, 61, channels)
    embedding = runner(rng.standard_normal(shape).astype(np.float32), np.array([61, 60, 13, 2, 1], np.int32))
    assert embedding.shape == (5, size) and wavenet.embedding_size(params) == size
    assert np.isfinite(embedding).all()
    runner.close()


# Lengths around the total reduction (3 * 4 = 12): shorter than one pooled step, exact multiples
# and not, and the longest setting the padded width of the batch.
LENGTHS = [131, 120, 97, 48, 25, 12, 11, 5, 1]


@pytest.mark.parametrize("garbage", [None, 10.0], ids=["zero-padding", "garbage-padding"])
@pytest.mark.parametrize("params, channels", [
    (dict(TINY, pooling="max"), None),
    (dict(TINY, pooling="avg"), None),
    (dict(TINY, pooling="avg", dense_layers=(8, 4)), 2),
    (dict(TINY, pooling="max", filter_size=4, dilation_base=4, stack_pool_sizes=(5, 2)), 3),
], ids=["max", "avg", "avg-dense-3d", "max-f4b4"])
def test_padding_never_changes_an_embedding(params, channels, garbage):
    runner = embed_runner(params, channels=channels)
    rng = np.random.default_rng(3)
    tracks = [rng.standard_normal((n,) if channels is None else (n, channels)).astype(np.float32) for n in LENGTHS]
    batch = runner(pad_batch(tracks, garbage=garbage, rng=rng), np.array(LENGTHS, np.int32))
    alone = np.concatenate([runner(track[None], np.array([track.shape[0]], np.int32)) for track in tracks])
    np.testing.assert_allclose(batch, alone, rtol=1e-5, atol=1e-6)
    # Distinct tracks get distinct embeddings: the check above is not comparing constants.
    assert np.abs(alone[0] - alone[1]).max() > 1e-4
    runner.close()


def _final_steps(runner: GraphRunner, audio: np.ndarray, *, last_step: int, step: int) -> np.ndarray:
    """Output ``[batch, dim]`` of the final conv at pooled step ``last_step`` (avg pooling everywhere).

    With global *average* pooling the embedding of a track cut at ``(j + 1) * step`` input samples is
    the mean of the final conv's first ``j + 1`` outputs, so output ``j`` is
    ``(j + 1) * E(j + 1) - j * E(j)`` (causal convolutions: later samples never enter either).
    """
    n = audio.shape[0]
    lengths = np.array([(last_step + 1) * step] * n + [last_step * step] * n, np.int32)
    embedding = runner(np.concatenate([audio, audio]), lengths).astype(np.float64)
    return (last_step + 1) * embedding[:n] - last_step * embedding[n:]


CAUSAL = dict(TINY, pooling="avg", stack_pool_sizes=(1, 1), final_channels=16)


def test_final_outputs_before_global_pooling_are_causal():
    runner = embed_runner(CAUSAL, dtype=tf.float64)
    rng = np.random.default_rng(5)
    audio = rng.standard_normal((1, 40))
    steps = np.stack([_final_steps(runner, audio, last_step=j, step=1)[0] for j in range(40)])
    for t in (0, 10, 30):
        changed = audio.copy()
        changed[:, t + 1:] = rng.standard_normal(changed[:, t + 1:].shape)
        steps_changed = np.stack([_final_steps(runner, changed, last_step=j, step=1)[0] for j in range(40)])
        np.testing.assert_allclose(steps_changed[: t + 1], steps[: t + 1], rtol=0, atol=1e-10)
        assert np.abs(steps_changed[t + 1] - steps[t + 1]).max() > 1e-3
    runner.close()


@pytest.mark.parametrize("params", [
    dict(CAUSAL, filter_size=2, dilation_base=2),
    dict(CAUSAL, filter_size=4, dilation_base=4),
    dict(CAUSAL, filter_size=2, dilation_base=2, stack_pool_sizes=(2, 3), final_filter_size=3),
    dict(CAUSAL, filter_size=3, dilation_base=2, stack_pool_sizes=(4, 1), final_filter_size=2),
], ids=["f2b2", "f4b4", "f2b2-pools2x3", "f3b2-pools4x1"])
def test_receptive_field_matches_measurement(params):
    """Perturb each input sample in turn; the earliest one that moves the last output gives the field."""
    field = wavenet.receptive_field(params)
    step = wavenet.min_length_steps(params)
    last_step = -(-(field + 8) // step)  # leave some samples outside the field
    time = (last_step + 1) * step
    # Double precision: the far taps of a deep random net move the output by only ~1e-5.
    runner = embed_runner(params, dtype=tf.float64)
    rng = np.random.default_rng(7)
    audio = rng.standard_normal(time)
    perturbed = np.repeat(audio[None], time + 1, axis=0)
    perturbed[np.arange(time), np.arange(time)] += 1.0  # row i moves sample i; the last row is untouched
    outputs = _final_steps(runner, perturbed, last_step=last_step, step=step)
    change = np.abs(outputs[:-1] - outputs[-1]).max(axis=1)
    moved = np.flatnonzero(change > 1e-9)
    assert moved.size and change[: moved[0]].max() < 1e-12  # a clear gap between rounding and effect
    assert time - moved[0] == field
    assert moved[-1] == time - 1
    runner.close()


def _training_gradients() -> tuple[dict[str, np.ndarray], int]:
    """The optimizer's gradients (tf.compat.v1, as ``head.make_train_op`` computes them) of a loss on a
    3-stack TINY training embedding, by variable name; and the number of ops of the recomputation."""
    rng = np.random.default_rng(3)
    graph = tf.Graph()
    with graph.as_default():
        tf.keras.utils.set_random_seed(0)
        audio = tf.constant(rng.standard_normal((3, 400)).astype(np.float32))
        params = {**TINY, "num_stacks": 3, "stack_pool_sizes": (3, 2, 2)}
        embedding = wavenet.embed(audio, tf.constant([400, 250, 333]), params=params, training=True)
        loss = tf.reduce_sum(tf.sin(3.0 * embedding))
        pairs = [(g, v) for g, v in tf.compat.v1.train.AdamOptimizer(0.01).compute_gradients(loss) if g is not None]
        recomputed_ops = sum(op.name.startswith("recomputed/") for op in graph.get_operations())
        with tf.compat.v1.Session() as session:
            session.run(tf.compat.v1.global_variables_initializer())
            return session.run({v.name: g for g, v in pairs}), recomputed_ops


def test_recomputed_layers_give_the_plain_gradients_bit_for_bit(monkeypatch):
    # Training recomputes the long stacks' activations in the backward pass (memory): the same numbers.
    layer = wavenet.wavenet_layer
    with monkeypatch.context() as patch:
        patch.setattr(wavenet, "wavenet_layer", lambda x, **kw: layer(x, **{**kw, "recompute": False}))
        plain, plain_ops = _training_gradients()
    recomputed, recomputed_ops = _training_gradients()
    assert plain_ops == 0 and recomputed_ops > 0
    assert sorted(recomputed) == sorted(plain)  # the last stack's unused residual conv still gets no gradient
    assert any(name.startswith("stack0/") for name in plain)
    for name, gradient in plain.items():
        assert np.array_equal(recomputed[name], gradient), name
        assert np.any(gradient != 0), name


@pytest.mark.parametrize("training", [False, True])
def test_a_layer_builds_its_convolutions_in_the_order_of_its_initial_weights(training):
    # Keras draws a layer's initial weights from Python's random when it builds: the order of the builds is
    # what a seed's initial weights (and so a run's results) depend on: filter, gate, residual, skip.
    graph = tf.Graph()
    with graph.as_default():
        wavenet.embed(tf.zeros([1, 400]), tf.constant([400]), params={**TINY, "num_stacks": 2}, training=training)
        names = [v.name for v in tf.compat.v1.global_variables() if v.name.startswith("stack0/layer1/")]
    assert names == [f"stack0/layer1/{part}/{kind}:0" for part in ("filter", "gate", "residual", "skip")
                     for kind in ("kernel", "bias")]
