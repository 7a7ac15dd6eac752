"""Tests of the WaveNet front ends (raw, log-mel, strided), mixed precision and the XLA session config.

Keras layers create fresh variables on every call, so each comparison (a track alone vs padded in a
batch) runs through ONE graph built once on placeholders and fed several times.
"""
from __future__ import annotations

from typing import Mapping

import librosa
import numpy as np
import pytest
import tensorflow as tf

from graph_runner import GraphRunner
from musicsim import frontends, head
from musicsim.inputs import TrackSet, make_list_input_fn
from musicsim.models import wavenet
from musicsim.relevance import make_relevance

TINY = dict(channels=8, skip_channels=16, filter_size=2, dilation_base=2, num_stacks=2, layers_per_stack=3,
            stack_pool_sizes=(2, 3), pooling="max", final_channels=8, final_filter_size=2, dense_layers=())
# At 1.6 kHz: frame round(0.064 * 1600) = 102 samples, hop round(0.032 * 1600) = 51, FFT 128.
LOGMEL = dict(TINY, frontend="logmel", input_sample_rate=1600, n_mels=20)
STRIDED = dict(TINY, frontend="strided", frontend_stride=5)




def frontend_runner(params: Mapping, *, channels: int | None = None) -> GraphRunner:
    shape = [None, None] if channels is None else [None, None, channels]
    return GraphRunner(lambda audio, length: frontends.apply_frontend(audio, length, params=params, training=False),
                       [(tf.float32, shape), (tf.int32, [None])])


def embed_runner(params: Mapping) -> GraphRunner:
    return GraphRunner(lambda audio, length: wavenet.embed(audio, length, params=params, training=False),
                       [(tf.float32, [None, None]), (tf.int32, [None])])


def padded(tracks: list[np.ndarray], *, garbage: float, rng: np.random.Generator) -> np.ndarray:
    """Right-pad 1-D tracks into ``[batch, max_time]``; the padding is random garbage of scale ``garbage``."""
    batch = (garbage * rng.standard_normal((len(tracks), max(t.size for t in tracks)))).astype(np.float32)
    for i, track in enumerate(tracks):
        batch[i, : track.size] = track
    return batch


# --------------------------------------------------------------------------- shapes, lengths, errors


@pytest.mark.parametrize("channels", [None, 1, 3])
def test_raw_is_the_identity(channels):
    runner = frontend_runner({"frontend": "raw"}, channels=channels)
    audio = np.random.default_rng(0).standard_normal((2, 9) if channels is None else (2, 9, channels))
    features, lengths = runner(audio.astype(np.float32), np.array([9, 4], np.int32))
    np.testing.assert_array_equal(features, audio.reshape(2, 9, -1).astype(np.float32))
    np.testing.assert_array_equal(lengths, [9, 4])
    runner.close()


@pytest.mark.parametrize("params, lengths, expected_lengths", [
    # frame 102, hop 51: 0 -> none; shorter than a frame -> 1; (n - 102) // 51 + 1 otherwise
    # (not a 1-sample track here: the Hann window's first weight is 0, so its frame is silent)
    (LOGMEL, [0, 3, 101, 102, 152, 153, 1000], [0, 1, 1, 1, 1, 2, 18]),
    # frame round(0.05 * 1600) = 80, hop 40: (200 - 80) // 40 + 1 = 4, (239 - 80) // 40 + 1 = 4
    (dict(LOGMEL, frame_seconds=0.05, hop_seconds=0.025), [200, 239, 79, 80], [4, 4, 1, 1]),
    # kernel = stride = 5: ceil(n / 5), the partial last window kept
    (STRIDED, [0, 1, 4, 5, 6, 23], [0, 1, 1, 1, 2, 5]),
    (dict(STRIDED, frontend_stride=8), [64, 65, 7], [8, 9, 1]),
], ids=["logmel", "logmel-50ms", "strided5", "strided8"])
def test_frontend_shapes_and_lengths(params, lengths, expected_lengths):
    runner = frontend_runner(params)
    rng = np.random.default_rng(1)
    audio = rng.standard_normal((len(lengths), max(lengths))).astype(np.float32)
    features, new_lengths = runner(audio, np.array(lengths, np.int32))
    np.testing.assert_array_equal(new_lengths, expected_lengths)
    channels = params["n_mels"] if params["frontend"] == "logmel" else params["channels"]
    assert features.shape == (len(lengths), max(expected_lengths), channels)
    for row, n in zip(features, expected_lengths):
        assert not row[n:].any()  # steps past a track's end are zero
        assert np.abs(row[:n]).sum(axis=-1).min(initial=1.0) > 0  # real steps carry signal
    runner.close()


@pytest.mark.parametrize("params, channels, message", [
    ({"frontend": "mfcc"}, 1, "must be one of"),
    ({"frontend": "logmel"}, 1, "input_sample_rate"),
    ({"frontend": "logmel", "input_sample_rate": 1600, "fmax": 1000}, 1, "above the Nyquist"),
    ({"frontend": "logmel", "input_sample_rate": 1600, "fmin": 500, "fmax": 400}, 1, "fmin < fmax"),
    ({"frontend": "logmel", "input_sample_rate": 1600, "hop_seconds": 0.1}, 1, "hop <= frame"),
    ({"frontend": "logmel", "input_sample_rate": 1600, "n_mels": 0}, 1, "n_mels"),
    ({"frontend": "logmel", "input_sample_rate": 1600}, 2, "mono"),
    ({"frontend": "strided", "channels": 4, "frontend_stride": 0}, 1, "frontend_stride"),
    ({"frontend": "strided"}, 1, "channels"),
])
def test_invalid_frontend_settings_raise(params, channels, message):
    with tf.Graph().as_default():
        with pytest.raises(ValueError, match=message):
            frontends.apply_frontend(tf.zeros([1, 400, channels]), tf.constant([400]), params=params, training=False)


def test_invalid_mixed_precision_raises_and_policy_never_leaks():
    assert frontends.mixed_precision_dtype({"mixed_precision": False}) is None
    assert frontends.mixed_precision_dtype({"mixed_precision": True}) == "bfloat16"  # no GPU in the test run
    with pytest.raises(ValueError, match="mixed_precision"):
        frontends.mixed_precision_dtype({"mixed_precision": "float8"})
    with tf.Graph().as_default():
        with pytest.raises(ValueError, match="must be one of"):
            wavenet.embed(tf.zeros([1, 50]), tf.constant([50]),
                          params=dict(TINY, frontend="bad", mixed_precision="bfloat16"), training=False)
    assert tf.keras.mixed_precision.global_policy().name == "float32"


@pytest.mark.parametrize("xla", [True, False])
def test_session_config_turns_on_xla_auto_clustering(xla):
    config = frontends.session_config(xla=xla)
    if xla:
        assert config.graph_options.optimizer_options.global_jit_level == tf.compat.v1.OptimizerOptions.ON_1
    else:
        assert config is None


# --------------------------------------------------------------------------- what the front ends compute


def mel_centres_hz(*, n_mels: int, fmin: float, fmax: float) -> np.ndarray:
    """Centre of each HTK mel band (tf.signal's mel scale): ``n_mels + 2`` evenly spaced mel edges."""
    return librosa.mel_frequencies(n_mels + 2, fmin=fmin, fmax=fmax, htk=True)[1:-1]


@pytest.mark.parametrize("sample_rate, n_mels, band", [(3200, 64, 20), (3200, 64, 45), (8000, 40, 30),
                                                       (16000, 64, 55)])
def test_logmel_of_a_sine_peaks_in_its_mel_band(sample_rate, n_mels, band):
    frequency = float(mel_centres_hz(n_mels=n_mels, fmin=0.0, fmax=sample_rate / 2)[band])
    params = dict(frontend="logmel", input_sample_rate=sample_rate, n_mels=n_mels)
    runner = frontend_runner(params)
    t = np.arange(sample_rate) / sample_rate
    features, lengths = runner(np.sin(2 * np.pi * frequency * t)[None].astype(np.float32),
                               np.array([sample_rate], np.int32))
    peaks = features[0, : lengths[0]].argmax(axis=-1)
    np.testing.assert_array_equal(peaks, band)
    runner.close()


def test_strided_step_reads_its_own_window_only():
    runner = frontend_runner(dict(STRIDED, channels=4))
    audio = np.random.default_rng(2).standard_normal((1, 30)).astype(np.float32)
    features, _ = runner(audio, np.array([30], np.int32))
    changed = audio.copy()
    changed[0, 10:15] += 1.0  # window 2 only
    features_changed, _ = runner(changed, np.array([30], np.int32))
    moved = np.abs(features_changed - features).max(axis=-1)[0]
    assert moved[2] > 1e-3 and np.delete(moved, 2).max() == 0.0
    runner.close()


# Several lengths, none a multiple of the hop (51) or the stride (5), one shorter than a frame (102).
LENGTHS = [1303, 1000, 707, 260, 153, 97, 33]


@pytest.mark.parametrize("params", [
    LOGMEL,
    dict(LOGMEL, mel_affine=True, pooling="avg", frame_seconds=0.05, hop_seconds=0.02),
    STRIDED,
    dict(STRIDED, frontend_stride=8, pooling="avg", dense_layers=(6,)),
], ids=["logmel", "logmel-affine-avg", "strided5", "strided8-avg-dense"])
def test_padding_never_changes_an_embedding(params):
    runner = embed_runner(params)
    rng = np.random.default_rng(3)
    tracks = [rng.standard_normal(n).astype(np.float32) for n in LENGTHS]
    # Large garbage padding (zero padding is the easier case): it must never reach an embedding.
    batch = runner(padded(tracks, garbage=10.0, rng=rng), np.array(LENGTHS, np.int32))
    alone = np.concatenate([runner(track[None], np.array([track.size], np.int32)) for track in tracks])
    np.testing.assert_allclose(batch, alone, rtol=1e-5, atol=1e-6)
    assert np.abs(alone[0] - alone[1]).max() > 1e-4  # distinct tracks, distinct embeddings
    runner.close()


def test_logmel_gives_the_stacks_about_hop_times_fewer_steps():
    params = dict(TINY, frontend="logmel", input_sample_rate=3200)  # hop round(0.032 * 3200) = 102 samples
    audio, lengths = np.zeros((1, 4 * 3200), np.float32), np.array([4 * 3200], np.int32)  # 4 s at 3.2 kHz
    steps = {}
    for frontend in ("raw", "logmel"):
        runner = frontend_runner(dict(params, frontend=frontend))
        steps[frontend] = runner(audio, lengths)[0].shape[1]
        runner.close()
    assert steps == {"raw": 12800, "logmel": (12800 - 205) // 102 + 1}
    assert steps["raw"] / steps["logmel"] > 100


# --------------------------------------------------------------------------- mixed precision


# Track 0 fills its 7 steps; track 1 has 5, then padding garbage that must never win a max.
POOL_INPUT = np.array([[1, 5, 2, 7, 3, 9, 4], [-1, -5, -2, -7, -3, 100, 100]], np.float32)[:, :, None]


@pytest.mark.parametrize("dtype", [tf.bfloat16, tf.float16])
@pytest.mark.parametrize("pooling, expected_pooled, expected_global", [
    ("max", [[5, 9, 4], [-1, -3, 0]], [[9], [-1]]),
    ("avg", [[8 / 3, 19 / 3, 4], [-8 / 3, -5, 0]], [[31 / 7], [-18 / 5]]),
])
def test_masked_pooling_stays_correct_in_low_precision(dtype, pooling, expected_pooled, expected_global):
    runner = GraphRunner(lambda x, length: [
        tf.cast(wavenet.masked_pool(tf.cast(x, dtype), length, pool=3, pooling=pooling), tf.float32),
        tf.cast(wavenet.global_pool(tf.cast(x, dtype), length, pooling=pooling), tf.float32)],
        [(tf.float32, [None, None, 1]), (tf.int32, [None])])
    pooled, global_pooled = runner(POOL_INPUT, np.array([7, 5], np.int32))
    np.testing.assert_allclose(pooled[:, :, 0], expected_pooled, rtol=1e-2)
    np.testing.assert_allclose(global_pooled, expected_global, rtol=1e-2)
    runner.close()


@pytest.mark.parametrize("params", [STRIDED, LOGMEL], ids=["strided", "logmel"])
def test_bfloat16_embedding_is_float32_and_close_to_the_float32_model(params):
    reference = embed_runner(params)
    mixed = embed_runner(dict(params, mixed_precision="bfloat16"))
    with reference.graph.as_default():
        weights = {v.name: reference.session.run(v) for v in tf.compat.v1.global_variables()}
    with mixed.graph.as_default():
        variables = tf.compat.v1.global_variables()
        assert sorted(v.name for v in variables) == sorted(weights)  # same variables, all float32
        assert all(v.dtype.base_dtype == tf.float32 for v in variables)
        for v in variables:
            v.load(weights[v.name], mixed.session)
    convs = [op for op in mixed.graph.get_operations() if op.type == "Conv2D"]
    assert convs and all(op.get_attr("T") == tf.bfloat16 for op in convs)
    rng = np.random.default_rng(4)
    audio, lengths = 0.3 * rng.standard_normal((3, 900)).astype(np.float32), np.array([900, 650, 300], np.int32)
    expected, embedding = reference(audio, lengths), mixed(audio, lengths)
    assert embedding.dtype == np.float32
    assert np.abs(embedding - expected).max() <= 0.05 * np.abs(expected).max()
    reference.close(), mixed.close()


# --------------------------------------------------------------------------- estimator TRAIN steps


def sine_tracks(*, sample_rate: int, seconds: float, per_album: int = 3) -> TrackSet:
    """4 albums of sines (one base pitch each) with noise, of varied lengths."""
    rng = np.random.default_rng(5)
    ids, labels, sequences = [], [], []
    for a, pitch in enumerate((110.0, 220.0, 440.0, 660.0)):
        for k in range(per_album):
            t = np.arange(int(seconds * sample_rate * (1 + 0.3 * k))) / sample_rate
            sequences.append((0.4 * np.sin(2 * np.pi * pitch * (1 + 0.05 * k) * t)
                              + 0.05 * rng.standard_normal(t.size)).astype(np.float32))
            ids.append(f"a{a}t{k}")
            labels.append((f"album{a}",))
    return TrackSet(track_ids=ids, labels=labels, sequences=sequences, frame_rate=float(sample_rate))


@pytest.mark.parametrize("sample_rate, params, xla", [
    (1600, LOGMEL, True),
    (8000, dict(STRIDED, frontend_stride=8, mixed_precision="bfloat16"), False),  # unpooled (pool_size=1-like)
    (8000, dict(STRIDED, frontend_stride=8, mixed_precision="float16"), False),  # dynamic loss scaling
], ids=["logmel-xla", "strided-pool1-bfloat16", "strided-pool1-float16"])
def test_estimator_train_steps_run(tmp_path, sample_rate, params, xla):
    tracks = sine_tracks(sample_rate=sample_rate, seconds=0.5)
    input_fn = make_list_input_fn(tracks=tracks, relevance_def=make_relevance("album"), mode="train", batch_size=2,
                                  n_similar=2, n_dissimilar=2, crop_seconds=0.5)
    params = {**head.HeadConfig(loss="pairwise").to_params(), **params, "input_sample_rate": sample_rate}
    config = tf.estimator.RunConfig(tf_random_seed=0, session_config=frontends.session_config(xla=xla))
    estimator = tf.estimator.Estimator(model_fn=head.make_model_fn(wavenet.embed), model_dir=str(tmp_path),
                                       params=params, config=config)
    estimator.train(input_fn, max_steps=2)
    names = dict(tf.train.list_variables(str(tmp_path)))
    assert estimator.get_variable_value("global_step") == 2
    projection = estimator.get_variable_value("input_projection/kernel")
    assert projection.dtype == np.float32 and np.isfinite(projection).all()
    frontend_variables = [n for n in names if n.startswith("frontend/")]
    assert bool(frontend_variables) == (params["frontend"] == "strided")
    # float16 trains under a dynamic loss scale; the other precisions need none.
    assert any("loss_scale" in n for n in names) == (params.get("mixed_precision") == "float16")


def test_frontend_config_holds_the_defaults_and_refuses_bad_values():
    assert frontends.config_of({}) == frontends.FrontendConfig()
    assert frontends.config_of({"n_mels": 32, "channels": 9}) == frontends.FrontendConfig(n_mels=32)
    with pytest.raises(ValueError, match=r"FrontendConfig needs params \['frontend', 'input_sample_rate'"):
        frontends.FrontendConfig.from_params({"channels": 9})
    with pytest.raises(ValueError, match="params\\['frontend'\\] must be one of"):
        frontends.FrontendConfig(frontend="cqt")
