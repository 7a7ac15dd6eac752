"""Tests of self-supervised pretraining (musicsim.pretraining): augmentations, contrastive lists,
the next-step predictor, and warm-starting a similarity run from a pretrained one.

Estimator runs are tiny (channels 8, 2 stacks x 3 layers, crops of a few hundred steps) and shared
through module-scoped fixtures so the file stays within its time budget.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.signal
import tensorflow as tf

from musicsim import head, pretraining
from musicsim.train import estimator as training
from musicsim.inputs import TrackSet, make_list_input_fn, make_predict_input_fn
from musicsim.models import wavenet
from musicsim.relevance import make_relevance

tf.compat.v1.logging.set_verbosity(tf.compat.v1.logging.ERROR)

RATE = 400.0  # steps per second of the synthetic tracks
TINY = dict(channels=8, skip_channels=8, filter_size=2, dilation_base=2, num_stacks=2, layers_per_stack=3,
            stack_pool_sizes=(3, 4), pooling="max", final_channels=8, final_filter_size=2, dense_layers=())
CONTRACT_KEYS = {"query_audio", "query_length", "candidate_audio", "candidate_length"}


def sine(*, frequency: float, seconds: float, amplitude: float = 0.5, phase: float = 0.0) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    return (amplitude * np.sin(2 * np.pi * frequency * t + phase)).astype(np.float32)


def sine_tracks(frequencies, *, seconds: float = 3.0, albums: int = 1) -> TrackSet:
    """One sine per track (a track is traced by its frequency); labels cycle over ``albums`` albums."""
    return TrackSet(track_ids=[f"t{i}" for i in range(len(frequencies))],
                    labels=[(f"album{i % albums}",) for i in range(len(frequencies))],
                    sequences=[sine(frequency=f, seconds=seconds, phase=i) for i, f in enumerate(frequencies)],
                    frame_rate=RATE)


def rms_db(x: np.ndarray) -> float:
    return 10.0 * math.log10(float(np.mean(np.asarray(x, np.float64) ** 2)))


def dominant_frequency(x: np.ndarray) -> float:
    """Frequency (Hz) of the largest FFT bin of the real steps of a ``[T, 1]`` crop."""
    spectrum = np.abs(np.fft.rfft(x[:, 0] * np.hanning(x.shape[0])))
    return float(np.fft.rfftfreq(x.shape[0], 1.0 / RATE)[np.argmax(spectrum)])


def only(name: str, value) -> pretraining.Augmentation:
    """Settings with one augmentation on."""
    return pretraining.Augmentation(**{**dict(gain_db=None, eq_db=None, noise_snr_db=None, max_shift_seconds=None),
                                       name: value})


def with_head(params: dict) -> dict:
    """``params`` with the head's keys (the optimizer's learning rate and clipping) filled by their defaults."""
    return {**head.HeadConfig().to_params(), **params}


def model_fn(kind: str, params: dict | None = None):
    """The model_fn of a pretraining run: the WaveNet under the one head, trained for the kind's objective."""
    return head.make_model_fn(wavenet.embed, objective=pretraining.objective(kind, params=params))


def estimator(kind: str, model_dir: str, params: dict, seed: int = 0) -> tf.estimator.Estimator:
    config = tf.estimator.RunConfig(model_dir=model_dir, tf_random_seed=seed, save_checkpoints_steps=10_000,
                                    save_summary_steps=10_000, log_step_count_steps=10_000)
    return tf.estimator.Estimator(model_fn=model_fn(kind, params), model_dir=model_dir, params=with_head(params),
                                  config=config)


# --------------------------------------------------------------------------- augmentations

NOISE_INPUT = np.random.default_rng(7).standard_normal((2000, 2)).astype(np.float32)


@pytest.mark.parametrize("shape", [(2000, 1), (257, 3), (5, 1), (0, 1)])
def test_augment_keeps_shape_and_dtype(shape):
    audio = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    out = pretraining.augment(audio=audio, rng=np.random.default_rng(1), settings=pretraining.Augmentation(),
                              frame_rate=RATE)
    assert out.shape == shape and out.dtype == np.float32 and np.isfinite(out).all()


@pytest.mark.parametrize("settings", [pretraining.Augmentation(), only("gain_db", (-6, 6)), only("eq_db", 6.0),
                                      only("noise_snr_db", (10, 20)), only("max_shift_seconds", 0.1)])
def test_augment_is_deterministic_under_a_seed_and_varies_across_seeds(settings):
    run = lambda seed: pretraining.augment(audio=NOISE_INPUT, rng=np.random.default_rng(seed),  # noqa: E731
                                           settings=settings, frame_rate=RATE)
    np.testing.assert_array_equal(run(3), run(3))
    assert not np.array_equal(run(3), run(4))


@pytest.mark.parametrize("name, value", [("gain_db", (-6, 6)), ("eq_db", 6.0), ("noise_snr_db", (10, 20)),
                                         ("max_shift_seconds", 0.1)])
def test_each_augmentation_changes_the_audio_and_is_identity_when_off(name, value):
    rng = lambda: np.random.default_rng(5)  # noqa: E731
    on = pretraining.augment(audio=NOISE_INPUT, rng=rng(), settings=only(name, value), frame_rate=RATE)
    assert not np.allclose(on, NOISE_INPUT)
    for off in (None, ()) if name in ("gain_db", "noise_snr_db") else (None, 0):
        settings = only(name, off)
        assert settings.enabled == ()
        out = pretraining.augment(audio=NOISE_INPUT, rng=rng(), settings=settings, frame_rate=RATE)
        np.testing.assert_array_equal(out, NOISE_INPUT)
    assert pretraining.Augmentation().enabled == ("shift", "eq", "gain", "noise")


@pytest.mark.parametrize("gain_db", [-6.0, 0.0, 3.5, 12.0])
def test_gain_changes_rms_by_the_drawn_decibels(gain_db):
    out = pretraining.augment(audio=NOISE_INPUT, rng=np.random.default_rng(0), settings=only("gain_db", (gain_db,) * 2),
                              frame_rate=RATE)
    assert rms_db(out) - rms_db(NOISE_INPUT) == pytest.approx(gain_db, abs=1e-4)


@pytest.mark.parametrize("snr_db", [0.0, 10.0, 30.0])
def test_noise_is_added_at_the_drawn_snr(snr_db):
    clean = sine(frequency=13.0, seconds=100.0)[:, None]  # 40000 steps: the noise power estimate is within 0.03 dB
    noisy = pretraining.augment(audio=clean, rng=np.random.default_rng(0), settings=only("noise_snr_db", (snr_db,) * 2),
                                frame_rate=RATE)
    assert rms_db(clean) - rms_db(noisy - clean) == pytest.approx(snr_db, abs=0.15)


def test_noise_leaves_silence_silent():
    silence = np.zeros((100, 1), np.float32)
    out = pretraining.augment(audio=silence, rng=np.random.default_rng(0), settings=only("noise_snr_db", (10, 10)),
                              frame_rate=RATE)
    np.testing.assert_array_equal(out, silence)


def test_shift_moves_the_audio_by_at_most_the_maximum_and_fills_zeros():
    most = int(round(0.05 * RATE))  # 20 steps
    seen = set()
    for seed in range(12):
        out = pretraining.augment(audio=NOISE_INPUT, rng=np.random.default_rng(seed),
                                  settings=only("max_shift_seconds", 0.05), frame_rate=RATE)
        matches = [k for k in range(-most, most + 1) if np.array_equal(out, pretraining.shift(NOISE_INPUT, k))]
        assert len(matches) == 1
        seen.add(matches[0])
    assert len(seen) > 3  # the shift is random


@pytest.mark.parametrize("steps, expected", [(2, [0, 0, 1, 2, 3]), (-1, [2, 3, 4, 5, 0]), (0, [1, 2, 3, 4, 5]),
                                             (9, [0, 0, 0, 0, 0]), (-9, [0, 0, 0, 0, 0])])
def test_shift_by_hand(steps, expected):
    audio = np.arange(1, 6, dtype=np.float32)[:, None]
    np.testing.assert_array_equal(pretraining.shift(audio, steps)[:, 0], expected)


@pytest.mark.parametrize("fraction_of_nyquist, expected_db", [(0.02, 6.0), (0.25, 0.0), (0.95, -6.0)])
def test_equaliser_applies_its_band_gains(fraction_of_nyquist, expected_db):
    # Bands centred at 1/16, 1/4 and 1 of Nyquist: a sine in a band is scaled by about that band's gain.
    kernel = pretraining.equaliser(band_gains_db=[6.0, 0.0, -6.0], taps=65)
    audio = sine(frequency=fraction_of_nyquist * RATE / 2, seconds=20.0)[:, None].astype(np.float64)
    out = scipy.signal.convolve(audio, kernel[:, None], mode="same")
    middle = slice(100, -100)  # away from the zero-padded edges
    assert rms_db(out[middle]) - rms_db(audio[middle]) == pytest.approx(expected_db, abs=0.7)


def test_eq_augmentation_stays_within_its_gain_range():
    audio = sine(frequency=40.0, seconds=10.0)[:, None]
    for seed in range(5):
        out = pretraining.augment(audio=audio, rng=np.random.default_rng(seed), settings=only("eq_db", 6.0),
                                  frame_rate=RATE)
        assert abs(rms_db(out[100:-100]) - rms_db(audio[100:-100])) <= 6.5


@pytest.mark.parametrize("kwargs", [dict(gain_db=(3, -3)), dict(noise_snr_db=(float("nan"), 1)), dict(eq_db=-1.0),
                                    dict(max_shift_seconds=-0.1), dict(eq_taps=4), dict(eq_taps=1),
                                    dict(gain_db=(1, 2, 3)), dict(noise_snr_db=20.0)])
def test_invalid_augmentation_settings_are_refused(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        pretraining.Augmentation(**kwargs)


@pytest.mark.parametrize("audio, frame_rate, match", [(np.zeros(10, np.float32), RATE, "time, channels"),
                                                      (np.zeros((10, 1), np.float32), 0.0, "frame_rate")])
def test_augment_refuses_bad_input(audio, frame_rate, match):
    with pytest.raises(ValueError, match=match):
        pretraining.augment(audio=audio, rng=np.random.default_rng(0), settings=pretraining.Augmentation(),
                            frame_rate=frame_rate)


# --------------------------------------------------------------------------- contrastive lists

FREQUENCIES = [10.3 * (i + 1) for i in range(8)]  # 10.3 .. 82.4 Hz; FFT bins of a 0.5 s crop are 2 Hz apart


@pytest.mark.parametrize("n_negatives", [1, 3, 5])
def test_contrastive_batch_pairs_own_crops_and_draws_negatives_from_the_other_members(n_negatives):
    tracks = sine_tracks(FREQUENCIES)
    members = [6, 1, 3, 0, 7, 4]
    for seed in range(4):
        features, labels, candidates = pretraining.contrastive_batch(
            tracks=tracks, members=members, n_negatives=n_negatives, frames=200,
            settings=pretraining.Augmentation(), rng=np.random.default_rng(seed))
        assert set(features) == CONTRACT_KEYS
        assert features["candidate_audio"].shape == (6, n_negatives + 1, 200, 1)
        np.testing.assert_array_equal(labels.sum(axis=1), 1.0)
        for query, row, row_labels in zip(members, candidates, labels):
            assert row[row_labels == 1].tolist() == [query]
            negatives = row[row_labels == 0]
            assert query not in negatives and len(set(negatives)) == n_negatives
            assert set(negatives) <= set(members)


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_contrastive_input_fn_positive_is_a_crop_of_the_query_track_and_negatives_never_are(mode):
    tracks = sine_tracks(FREQUENCIES)
    input_fn = pretraining.make_contrastive_input_fn(tracks=tracks, batch_size=4, crop_seconds=0.5, n_negatives=3,
                                                     settings=pretraining.Augmentation(), seed=2, mode=mode)
    queried = []
    for features, labels in input_fn().take(3):
        features, labels = {k: v.numpy() for k, v in features.items()}, labels.numpy()
        assert set(features) == CONTRACT_KEYS
        assert features["query_audio"].shape == (4, 200, 1) and features["candidate_audio"].shape == (4, 4, 200, 1)
        np.testing.assert_array_equal(features["query_length"], 200)
        np.testing.assert_array_equal(labels.sum(axis=1), 1.0)
        assert set(np.unique(labels)) == {0.0, 1.0}
        for query, candidates, row_labels in zip(features["query_audio"], features["candidate_audio"], labels):
            query_frequency = dominant_frequency(query)
            track = int(np.argmin(np.abs(np.array(FREQUENCIES) - query_frequency)))
            queried.append(track)
            candidate_frequencies = [dominant_frequency(c) for c in candidates]
            assert candidate_frequencies[int(np.argmax(row_labels))] == pytest.approx(query_frequency, abs=2.5)
            negatives = [f for f, label in zip(candidate_frequencies, row_labels) if label == 0]
            assert all(abs(f - query_frequency) > 5.0 for f in negatives)
            assert len({round(f) for f in negatives}) == 3  # three different tracks
    if mode == "eval":  # 8 tracks in batches of 4: the two eval batches query every track once
        assert sorted(queried[:8]) == list(range(8))


def test_contrastive_views_are_different_random_crops_of_the_track():
    tracks = sine_tracks(FREQUENCIES)
    input_fn = pretraining.make_contrastive_input_fn(tracks=tracks, batch_size=4, crop_seconds=0.5, n_negatives=3,
                                                     settings=pretraining.Augmentation.none(), seed=0)
    differ = 0
    for features, labels in input_fn().take(2):
        positives = features["candidate_audio"].numpy()[labels.numpy() == 1]
        differ += sum(not np.allclose(q, p) for q, p in zip(features["query_audio"].numpy(), positives))
    assert differ >= 6  # 8 lists; two random 200-step crops of a 1200-step track rarely coincide


def test_contrastive_eval_lists_are_fixed_and_train_lists_are_seeded():
    tracks = sine_tracks(FREQUENCIES)
    make = lambda mode, seed: pretraining.make_contrastive_input_fn(  # noqa: E731
        tracks=tracks, batch_size=4, crop_seconds=0.5, n_negatives=2, seed=seed, mode=mode)
    first = lambda input_fn: next(iter(input_fn()))[0]["candidate_audio"].numpy()  # noqa: E731
    evaluation = make("eval", 0)
    np.testing.assert_array_equal(first(evaluation), first(evaluation))
    np.testing.assert_array_equal(first(make("train", 1)), first(make("train", 1)))
    assert not np.array_equal(first(make("train", 1)), first(make("train", 2)))
    assert len(list(evaluation())) == 2  # ceil(8 / 4) batches, then the eval set ends


def test_contrastive_crops_of_short_tracks_are_whole_and_padded():
    tracks = TrackSet(track_ids=list("abcd"), labels=[()] * 4, frame_rate=RATE,
                      sequences=[np.ones(n, np.float32) for n in (50, 300, 120, 300)])
    features, labels = next(iter(pretraining.make_contrastive_input_fn(
        tracks=tracks, batch_size=4, crop_seconds=0.5, n_negatives=3, settings=pretraining.Augmentation.none())()))
    lengths = sorted(features["query_length"].numpy().tolist())
    assert lengths == [50, 120, 200, 200]
    audio, length = features["candidate_audio"].numpy(), features["candidate_length"].numpy()
    for b in range(4):
        for c in range(4):
            assert (audio[b, c, : length[b, c]] == 1).all() and (audio[b, c, length[b, c]:] == 0).all()


@pytest.mark.parametrize("kwargs, match", [
    (dict(batch_size=3, n_negatives=3), "batch_size"),
    (dict(batch_size=9, n_negatives=3), "distinct tracks"),
    (dict(batch_size=4, n_negatives=0), "n_negatives"),
    (dict(batch_size=4, n_negatives=3, mode="predict"), "mode"),
    (dict(batch_size=4, n_negatives=3, crop_seconds=0.0), "crop_seconds"),
])
def test_contrastive_input_fn_refuses_bad_arguments(kwargs, match):
    kwargs = {"crop_seconds": 0.5, **kwargs}
    with pytest.raises(ValueError, match=match):
        pretraining.make_contrastive_input_fn(tracks=sine_tracks(FREQUENCIES), **kwargs)


@pytest.mark.parametrize("members, match", [([1, 1, 2, 3], "distinct"), ([1, 2], "n_negatives")])
def test_contrastive_batch_refuses_bad_members(members, match):
    with pytest.raises(ValueError, match=match):
        pretraining.contrastive_batch(tracks=sine_tracks(FREQUENCIES), members=members, n_negatives=2, frames=10,
                                      settings=pretraining.Augmentation.none(), rng=np.random.default_rng(0))


# --------------------------------------------------------------------------- predictive: pieces


def test_mu_law_classes_by_hand():
    # mu = 255; x = (16 - 1) / 255 compands to 0.5, class round(0.75 * 255) = 191; 0 lies at 127.5 (rounds to even).
    x = tf.constant([-1.0, 1.0, 3.0, -2.0, 15.0 / 255.0, -15.0 / 255.0, 0.0])
    np.testing.assert_array_equal(pretraining.mu_law_classes(x, levels=256).numpy(), [0, 255, 255, 0, 191, 64, 128])


def test_next_step_targets_of_the_strided_front_end_are_its_windows():
    audio = tf.constant(np.arange(1, 11, dtype=np.float32)[None, :, None])  # one track of 10 samples
    targets, valid, kind = pretraining.next_step_targets(audio, tf.constant([9]),
                                                         params={"frontend": "strided", "frontend_stride": 4})
    assert kind == "mulaw"
    np.testing.assert_array_equal(targets.numpy()[0], [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 0, 0]])
    np.testing.assert_array_equal(valid.numpy()[0], [[1, 1, 1, 1], [1, 1, 1, 1], [1, 0, 0, 0]])


def test_next_step_targets_of_the_raw_front_end_are_the_samples():
    audio = np.random.default_rng(0).standard_normal((2, 6, 1)).astype(np.float32)
    targets, valid, kind = pretraining.next_step_targets(tf.constant(audio), tf.constant([6, 4]), params={})
    assert kind == "mulaw"
    np.testing.assert_array_equal(targets.numpy(), audio)
    np.testing.assert_array_equal(valid.numpy()[:, :, 0], [[1] * 6, [1, 1, 1, 1, 0, 0]])


def test_next_step_loss_by_hand():
    # Two steps of one value; only the first transition is real. Uniform logits over 4 classes: ln 4 per value.
    logits = tf.zeros([1, 3, 1, 4])
    targets = tf.constant([[[0.0], [0.5], [9.0]]])
    valid = tf.constant([[[True], [True], [False]]])
    loss, weights = pretraining.next_step_loss(predictions=logits, targets=targets, valid=valid, kind="mulaw", levels=4)
    assert float(loss) == pytest.approx(math.log(4.0))
    np.testing.assert_array_equal(weights.numpy()[0, :, 0], [1, 0])
    l1, _ = pretraining.next_step_loss(predictions=tf.constant([[[1.0], [7.0], [0.0]]]), targets=targets, valid=valid,
                                       kind="l1", levels=4)
    assert float(l1) == pytest.approx(0.5)  # |1.0 - 0.5|; the step predicting padding is not counted


FRONTEND_CASES = {
    # front end params, input samples read by output step t: step t reads samples < last_sample(t) + 1
    "raw": ({}, lambda t: t),
    "strided": ({"frontend": "strided", "frontend_stride": 4}, lambda t: 4 * t + 3),
    "logmel": ({"frontend": "logmel", "input_sample_rate": RATE, "frame_seconds": 0.04, "hop_seconds": 0.02,
                "n_mels": 4, "mel_affine": True}, lambda t: 8 * t + 15),
}


def predictive_graph(params: dict, *, steps: int):
    """Build the predictor once on placeholders: (graph, session, audio, length, predictions, loss)."""
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.set_random_seed(0)
        audio = tf.compat.v1.placeholder(tf.float32, [None, steps, 1])
        length = tf.compat.v1.placeholder(tf.int32, [None])
        targets, valid, kind = pretraining.next_step_targets(audio, length, params=params)
        predictions = pretraining.next_step_predictions(audio, length, params=params, training=False,
                                                        values=int(targets.shape[-1]), kind=kind)
        loss, _ = pretraining.next_step_loss(predictions=predictions, targets=targets, valid=valid, kind=kind,
                                             levels=256)
        session = tf.compat.v1.Session(graph=graph)
        session.run(tf.compat.v1.global_variables_initializer())
    return graph, session, audio, length, predictions, loss


@pytest.mark.parametrize("frontend", sorted(FRONTEND_CASES))
def test_predictions_are_causal_and_the_loss_ignores_padding(frontend):
    extra, last_sample = FRONTEND_CASES[frontend]
    params = {**TINY, **extra}
    rng = np.random.default_rng(0)
    _, session, audio, length, predictions, loss = predictive_graph(params, steps=160)
    signal = 0.3 * rng.standard_normal((1, 160, 1)).astype(np.float32)
    cut = 100
    changed = signal.copy()
    changed[:, cut:] = 0.3 * rng.standard_normal((1, 60, 1))
    before, after = (session.run(predictions, {audio: x, length: [160]}) for x in (signal, changed))
    steps = before.shape[1]
    reads_only_the_past = [t for t in range(steps) if last_sample(t) < cut]
    reads_the_change = [t for t in range(steps) if last_sample(t) >= cut]
    np.testing.assert_allclose(before[:, reads_only_the_past], after[:, reads_only_the_past], rtol=0, atol=1e-6)
    assert not np.allclose(before[:, reads_the_change], after[:, reads_the_change])
    # The same track in a batch, padded past its length with zeros or garbage: the same loss.
    zero_padded = np.where(np.arange(160)[None, :, None] < cut, signal, 0.0)
    garbage_padded = np.where(np.arange(160)[None, :, None] < cut, signal, 5.0)
    losses = [session.run(loss, {audio: x, length: [cut]}) for x in (zero_padded, garbage_padded)]
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)
    session.close()


@pytest.mark.parametrize("atrous, field", [
    (True, 1 + (1 + 2 + 4) + 3 * (1 + 2 + 4)),  # stack 1 dilations scaled by stack 0's pooling (3): 1 + 7 + 21
    (False, 1 + 2 * (1 + 2 + 4)),
])
def test_atrous_dilations_give_the_stacks_the_time_span_of_the_pooled_model(atrous, field):
    params = {**TINY, "predictive_atrous": atrous}
    graph, session, audio, length, predictions, _ = predictive_graph(params, steps=64)
    with graph.as_default():
        gradient = tf.gradients(tf.reduce_sum(predictions[:, -1]), audio)[0]
    values = np.abs(session.run(gradient, {audio: np.random.default_rng(0).standard_normal((1, 64, 1)),
                                           length: [64]}))[0, :, 0]
    assert 64 - int(np.flatnonzero(values > 0)[0]) == field
    session.close()


def variable_shapes(build) -> dict[str, list[int]]:
    graph = tf.Graph()
    with graph.as_default():
        build()
        return {v.op.name: v.shape.as_list() for v in tf.compat.v1.global_variables()}


@pytest.mark.parametrize("extra", [{"dense_layers": (16, 8)}, FRONTEND_CASES["logmel"][0]])
def test_predictive_checkpoint_holds_every_variable_of_the_similarity_model(extra):
    params = {**TINY, **extra}
    features = lambda: {"audio": tf.zeros([2, 200, 1]), "length": tf.constant([200, 150])}  # noqa: E731

    def similarity():
        wavenet.embed(features()["audio"], features()["length"], params=params, training=False)

    def predictive():
        tf.compat.v1.train.create_global_step()
        model_fn("predictive")(features(), None, tf.estimator.ModeKeys.TRAIN, with_head(params))

    embed_variables, predictive_variables = variable_shapes(similarity), variable_shapes(predictive)
    for name, shape in embed_variables.items():
        assert predictive_variables.get(name) == shape, name
    own = {n for n in predictive_variables if n not in embed_variables and "Adam" not in n and "power" not in n}
    assert own and all(n.startswith("predictive/") or n == "global_step" for n in own), own


@pytest.mark.parametrize("atrous", [True, False])
def test_the_predictor_builds_the_wavenet_stacks_unpooled(atrous, monkeypatch):
    calls = []
    stacks = wavenet.stacks

    def spy(*args, **kwargs):
        calls.append({k: kwargs[k] for k in ("pooled", "atrous")})
        return stacks(*args, **kwargs)

    monkeypatch.setattr(wavenet, "stacks", spy)
    predictive_graph({**TINY, "predictive_atrous": atrous}, steps=32)[1].close()
    assert calls == [{"pooled": False, "atrous": atrous}]


def eval_metrics(kind: str, params: dict, features: dict, labels=None) -> dict[str, float]:
    """EVAL of a pretraining objective on one batch of fixed features, from fresh variables (seeded)."""
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.set_random_seed(0)
        spec = model_fn(kind, params)({k: tf.constant(v) for k, v in features.items()},
                              None if labels is None else tf.constant(labels), tf.estimator.ModeKeys.EVAL,
                              with_head(params))
        with tf.compat.v1.Session(graph=graph) as session:
            session.run([tf.compat.v1.global_variables_initializer(), tf.compat.v1.local_variables_initializer()])
            session.run([update for _, update in spec.eval_metric_ops.values()])
            return {"loss": session.run(spec.loss),
                    **{name: session.run(value) for name, (value, _) in spec.eval_metric_ops.items()}}


AUDIO_BATCH = {"audio": 0.3 * np.random.default_rng(1).standard_normal((2, 160, 1)).astype(np.float32),
               "length": np.array([160, 97], np.int32)}


@pytest.mark.parametrize("frontend, metrics", [("raw", {"loss", "accuracy"}), ("logmel", {"loss"})])
def test_predictive_objective_scores_classes_only_for_waveform_targets(frontend, metrics):
    result = eval_metrics("predictive", {**TINY, **FRONTEND_CASES[frontend][0]}, AUDIO_BATCH)
    assert set(result) == metrics and all(np.isfinite(v) for v in result.values())


def test_distill_objective_reports_the_mean_cosine_to_the_targets():
    targets = np.random.default_rng(2).standard_normal((2, 5)).astype(np.float32)
    cosine = eval_metrics("distill", dict(TINY, distill_loss="cosine"), AUDIO_BATCH, targets)
    np.testing.assert_allclose(cosine["cosine"], 1.0 - cosine["loss"], atol=1e-6)
    mse = eval_metrics("distill", dict(TINY, distill_loss="mse"), AUDIO_BATCH, targets)
    assert mse["loss"] > 0 and -1.0 <= mse["cosine"] <= 1.0


@pytest.mark.parametrize("build, match", [
    (lambda: pretraining.PredictiveConfig(quantization_levels=1), "quantization_levels must be >= 2"),
    (lambda: pretraining.DistillConfig(distill_loss="l1"), "distill_loss must be one of"),
    (lambda: pretraining.DistillConfig(distill_hop_seconds=0), "distill_hop_seconds must be positive"),
    (lambda: pretraining.PredictiveConfig.from_params({"quantization_levels": 8}), "predictive_atrous"),
])
def test_pretraining_configs_refuse_bad_or_missing_values(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_predictive_input_fn_crops_and_orders():
    tracks = TrackSet(track_ids=list("abcd"), labels=[()] * 4, frame_rate=RATE,
                      sequences=[np.full(n, i + 1, np.float32) for i, n in enumerate((1000, 1, 150, 600))])
    train = next(iter(pretraining.make_predictive_input_fn(tracks=tracks, mode="train", batch_size=3,
                                                           crop_seconds=0.5, seed=0)()))
    assert set(train) == {"audio", "length"}
    assert sorted(train["length"].numpy().tolist()) == [150, 200, 200]  # the 1-step track has nothing to predict
    evaluation = list(pretraining.make_predictive_input_fn(tracks=tracks, mode="eval", batch_size=2,
                                                           crop_seconds=None)())
    lengths = np.concatenate([batch["length"].numpy() for batch in evaluation])
    np.testing.assert_array_equal(lengths, [1000, 150, 600])
    np.testing.assert_array_equal(evaluation[0]["audio"].numpy()[1, :150, 0], 3.0)


@pytest.mark.parametrize("kwargs, match", [(dict(mode="predict"), "mode"), (dict(batch_size=0), "batch_size"),
                                           (dict(crop_seconds=-1.0), "crop_seconds")])
def test_predictive_input_fn_refuses_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        pretraining.make_predictive_input_fn(tracks=sine_tracks(FREQUENCIES), **{"mode": "train", **kwargs})


def test_predictive_input_fn_refuses_tracks_with_nothing_to_predict():
    tracks = TrackSet(track_ids=["a"], labels=[()], sequences=[np.zeros(1, np.float32)], frame_rate=RATE)
    with pytest.raises(ValueError, match="nothing to predict"):
        pretraining.make_predictive_input_fn(tracks=tracks, mode="train")


# --------------------------------------------------------------------------- estimator runs

PREDICTABLE = [5.0 * (1 + 0.1 * i) for i in range(6)]  # slow sines: each step is predictable from the last ones


def marginal_entropy(tracks: TrackSet) -> float:
    """Entropy (nats) of the mu-law classes of every predicted step: the least loss of a predictor that ignores
    the past (any fixed distribution has at least this cross-entropy on these targets)."""
    classes = np.concatenate([pretraining.mu_law_classes(tf.constant(s[1:, 0]), levels=256).numpy()
                              for s in tracks.sequences])
    p = np.bincount(classes, minlength=256) / classes.size
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


@pytest.fixture(scope="module")
def predictive_run(tmp_path_factory):
    """A tiny predictive run of 30 steps: its eval metrics, estimator, model_dir and tracks."""
    tracks = sine_tracks(PREDICTABLE, seconds=2.0)
    model_dir = str(tmp_path_factory.mktemp("predictive"))
    run = estimator("predictive", model_dir, dict(TINY, learning_rate=3e-2))
    run.train(pretraining.make_predictive_input_fn(tracks=tracks, mode="train", batch_size=6, crop_seconds=0.5),
              steps=30)
    metrics = run.evaluate(pretraining.make_predictive_input_fn(tracks=tracks, mode="eval", batch_size=6,
                                                                crop_seconds=None))
    return dict(metrics=metrics, estimator=run, model_dir=model_dir, tracks=tracks)


def test_predictive_pretraining_learns_to_predict_the_next_step(predictive_run):
    metrics = predictive_run["metrics"]
    assert metrics["global_step"] == 30
    # An untrained predictor is near uniform over the 256 classes, ln 256 = 5.5 nats per value.
    assert metrics["loss"] < math.log(256) - 1.5
    # Below what any predictor ignoring the past can reach: the stacks use the context.
    assert metrics["loss"] < marginal_entropy(predictive_run["tracks"]) - 0.5
    assert metrics["accuracy"] > 10 / 256


def test_predictive_run_predicts_the_similarity_embedding(predictive_run):
    tracks = predictive_run["tracks"]
    predictions = list(predictive_run["estimator"].predict(make_predict_input_fn(tracks=tracks, batch_size=4)))
    assert [p["track_id"].decode() for p in predictions] == tracks.track_ids
    assert all(p["embedding"].shape == (wavenet.embedding_size(TINY),) and np.isfinite(p["embedding"]).all()
               for p in predictions)


@pytest.fixture(scope="module")
def contrastive_run(tmp_path_factory):
    """A tiny contrastive run under the shared ranking head: a few steps, one evaluation."""
    tracks = sine_tracks(FREQUENCIES, seconds=2.0)
    model_dir = str(tmp_path_factory.mktemp("contrastive"))
    run = estimator("contrastive", model_dir, dict(TINY, learning_rate=1e-2))
    common = dict(tracks=tracks, batch_size=4, crop_seconds=0.5, n_negatives=3)
    run.train(pretraining.make_contrastive_input_fn(**common, mode="train"), steps=3)
    metrics = run.evaluate(pretraining.make_contrastive_input_fn(**common, mode="eval"))
    return dict(model_dir=model_dir, metrics=metrics)


def test_the_ranking_head_trains_and_evaluates_on_contrastive_lists(contrastive_run):
    metrics = contrastive_run["metrics"]
    assert metrics["global_step"] == 3
    for name in ("loss", "PC", "NDCG@1", "NDCG@6", "MAP"):
        assert np.isfinite(metrics[name]), name
    assert 0.0 <= metrics["NDCG@6"] <= 1.0


def fine_tune(model_dir: str, *, pretrained: str, vars_regex: str, params: dict | None = None
              ) -> tf.estimator.Estimator:
    """One fine-tuning step with learning rate 0 (Adam then moves nothing) on labelled lists."""
    tracks = sine_tracks(FREQUENCIES, seconds=2.0, albums=2)
    run = training.make_estimator(model="wavenet", model_dir=model_dir, params=dict(params or TINY, learning_rate=0.0),
                                  seed=1, warm_start_from=pretrained, warm_start_vars=vars_regex)
    run.train(make_list_input_fn(tracks=tracks, relevance_def=make_relevance("album"), mode="train", batch_size=2,
                                 n_similar=1, n_dissimilar=1, crop_seconds=0.5), steps=1)
    return run


def trainable_names(model_dir: str) -> list[str]:
    return [n for n, _ in tf.train.list_variables(model_dir)
            if "Adam" not in n and n not in ("global_step", "beta1_power", "beta2_power")]


def stack_names(model_dir: str) -> list[str]:
    names = [n for n in trainable_names(model_dir) if n.startswith(("input_projection/", "stack"))]
    assert len(names) == 2 + 2 * 3 * 8  # the projection, and filter/gate/residual/skip kernels and biases
    return names


def test_warm_start_with_stacks_loads_the_pretrained_stacks_only(predictive_run, tmp_path):
    pretrained = predictive_run["model_dir"]
    run = fine_tune(str(tmp_path), pretrained=pretrained, vars_regex=pretraining.warm_start_vars("stacks"))
    assert run.get_variable_value("global_step") == 1  # it trained
    for name in stack_names(pretrained):
        np.testing.assert_array_equal(run.get_variable_value(name), tf.train.load_variable(pretrained, name))
    assert not np.array_equal(run.get_variable_value("final/conv/kernel"),
                              tf.train.load_variable(pretrained, "final/conv/kernel"))


def test_warm_start_with_all_loads_every_variable_the_pretrained_run_holds(contrastive_run, tmp_path):
    pretrained = contrastive_run["model_dir"]
    # The fine-tuned model has a dense layer the pretrained run lacks: "all", limited to what the checkpoint holds.
    run = fine_tune(str(tmp_path), pretrained=pretrained, params=dict(TINY, dense_layers=(8,)),
                    vars_regex=pretraining.warm_start_vars("all", checkpoint=pretrained))
    assert run.get_variable_value("global_step") == 1
    for name in stack_names(pretrained) + ["final/conv/kernel", "final/conv/bias"]:
        np.testing.assert_array_equal(run.get_variable_value(name), tf.train.load_variable(pretrained, name))
    assert run.get_variable_value("dense0/kernel").shape == (8, 8)


@pytest.mark.parametrize("name, stacks", [
    ("input_projection/kernel:0", True), ("stack0/layer0/filter/kernel:0", True), ("stack12/layer3/skip/bias:0", True),
    ("frontend/strided_conv/kernel:0", True), ("final/conv/kernel:0", False), ("dense0/kernel:0", False),
    ("predictive/output/kernel:0", False), ("stacks/kernel:0", False), ("my_stack0/kernel:0", False),
])
def test_warm_start_regex_names_the_stacks(name, stacks):
    import re

    assert bool(re.match(pretraining.warm_start_vars("stacks"), name)) == stacks
    assert re.match(pretraining.warm_start_vars("all"), name)


def test_warm_start_regex_limited_to_a_checkpoint(contrastive_run):
    import re

    regex = pretraining.warm_start_vars("all", checkpoint=contrastive_run["model_dir"])
    assert re.match(regex, "final/conv/kernel:0") and re.match(regex, "stack1/layer2/gate/bias:0")
    assert not re.match(regex, "dense0/kernel:0") and not re.match(regex, "final/conv/kernel/Adam:0")
    stacks = pretraining.warm_start_vars("stacks", checkpoint=contrastive_run["model_dir"])
    assert re.match(stacks, "input_projection/bias:0") and not re.match(stacks, "final/conv/bias:0")


@pytest.mark.parametrize("call, match", [
    (lambda: pretraining.warm_start_vars("heads"), "scope"),
    (lambda: pretraining.warm_start_vars("all", checkpoint="/nonexistent/run"), "/nonexistent/run"),
    (lambda: pretraining.objective("masked"), "pretrain"),
    (lambda: pretraining.pretraining_early_stopping("masked"), "pretrain"),
])
def test_runner_hooks_refuse_unknown_names(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_early_stopping_of_each_kind():
    assert pretraining.pretraining_early_stopping("predictive") == ("loss", "decrease")
    assert pretraining.pretraining_early_stopping("distill") == ("loss", "decrease")
    assert pretraining.pretraining_early_stopping("contrastive") == ("NDCG@6", "increase")


# ------------------------------------------------------------------ experiments.run: pretrain, then fine-tune

def run_config(dataset_dir: str, model_dir: str, **overrides):
    from experiments.run import RunConfig

    settings = dict(model="wavenet", dataset_dir=dataset_dir, model_dir=model_dir, params=dict(TINY),
                    batch_size=4, crop_seconds=0.5, eval_seconds=1.0, max_steps=6, save_checkpoints_steps=3,
                    early_stopping_patience=0, max_minutes=2, eval_repeats=1, workers=1)
    return RunConfig(**{**settings, **overrides})


@pytest.fixture(scope="module")
def pretrained_on_every_split(synthetic_dataset, tmp_path_factory, request):
    """experiments.run --pretrain=contrastive --pretrain_splits=train,eval,test: the tracks it read."""
    from experiments.run import run

    seen = []
    original = pretraining.make_contrastive_input_fn

    def spy(*, tracks, mode, **kwargs):
        seen.append((mode, list(tracks.track_ids)))
        return original(tracks=tracks, mode=mode, **kwargs)

    patch = pytest.MonkeyPatch()
    request.addfinalizer(patch.undo)
    patch.setattr(pretraining.contrastive, "make_contrastive_input_fn", spy)
    model_dir = str(tmp_path_factory.mktemp("pretrained_all"))
    run(run_config(synthetic_dataset, model_dir, pretrain="contrastive", pretrain_splits=("train", "eval", "test"),
                   n_negatives=3))
    patch.undo()
    return dict(model_dir=model_dir, seen=dict(seen))


def test_contrastive_pretraining_reads_the_audio_of_every_split_named(pretrained_on_every_split, synthetic_dataset):
    from musicsim.data.dataset import read_catalog

    by_split = {s: [e.track_id for e in read_catalog(synthetic_dataset, split=s)] for s in ("train", "eval", "test")}
    seen = pretrained_on_every_split["seen"]
    assert seen["train"] == by_split["train"] + by_split["eval"] + by_split["test"]
    assert seen["eval"] == by_split["eval"]  # the monitor stays on the eval split


def test_fine_tuning_warm_starts_from_the_checkpoint_the_pretraining_run_exported(pretrained_on_every_split,
                                                                                 synthetic_dataset, tmp_path):
    import json
    import os

    from experiments.run import run

    pretrained = pretrained_on_every_split["model_dir"]
    with open(os.path.join(pretrained, "results.json")) as f:
        exported = os.path.join(pretrained, json.load(f)["checkpoint"])
    assert os.path.exists(exported + ".index")
    model_dir = str(tmp_path / "fine_tuned")
    run(run_config(synthetic_dataset, model_dir, params=dict(TINY, learning_rate=0.0), max_steps=1,
                   warm_start_from=pretrained, warm_start_vars="stacks"))
    for name in stack_names(exported):
        np.testing.assert_array_equal(tf.train.load_variable(model_dir, name), tf.train.load_variable(exported, name))


def test_pretraining_refuses_unknown_splits(synthetic_dataset, tmp_path):
    from experiments.run import run
    from musicsim.train.learned import SettingsError

    with pytest.raises(SettingsError, match="--pretrain_splits must name some of"):
        run(run_config(synthetic_dataset, str(tmp_path), pretrain="contrastive", pretrain_splits=("train", "valid")))


# ------------------------------------------------------------------ distillation from the musicnn teacher

DISTILL_RATE = 3200.0  # the pooled rate of a 16 kHz dataset


@pytest.fixture(scope="module")
def teacher():
    """The real MSD_musicnn teacher (penultimate layer); skipped where its wheel cannot be fetched."""
    from musicsim.models.musicnn import MusicnnTeacher
    from musicsim.pretrained import PretrainedFetchError

    teacher = MusicnnTeacher()
    try:
        teacher.network
    except PretrainedFetchError as err:
        pytest.skip(f"the musicnn wheel cannot be fetched from the package index here: {err}")
    return teacher


def chord_tracks(count: int, *, seconds: float, rate: float = DISTILL_RATE) -> TrackSet:
    """Tracks whose content changes over time (a chord whose root steps every second), so crops differ."""
    rng = np.random.default_rng(5)
    t = np.arange(int(seconds * rate)) / rate
    sequences = []
    for _ in range(count):
        roots = 110.0 * 2 ** (rng.integers(0, 12, size=int(seconds) + 1) / 12.0)
        root = roots[np.minimum(t.astype(int), roots.size - 1)]
        phase = 2 * np.pi * np.cumsum(root) / rate
        audio = sum(np.sin(k * phase) / k for k in (1, 2, 3, 5)) + 0.02 * rng.standard_normal(t.size)
        sequences.append((0.4 * audio / np.max(np.abs(audio))).astype(np.float32))
    return TrackSet(track_ids=[f"c{i}" for i in range(count)], labels=[("x",)] * count, sequences=sequences,
                    frame_rate=rate)


class CountingTeacher:
    """Passes crops to a real teacher and counts them."""

    def __init__(self, teacher):
        self.teacher, self.key, self.dim, self.crops = teacher, teacher.key, teacher.dim, 0

    def __call__(self, *, crops, frame_rate):
        self.crops += len(crops)
        return self.teacher(crops=crops, frame_rate=frame_rate)


def test_crop_grid_by_hand():
    from musicsim.inputs import crop_grid

    assert crop_grid(length=10, frames=4, hop=3).tolist() == [0, 3, 6]
    assert crop_grid(length=10, frames=4, hop=None).tolist() == [3]
    assert crop_grid(length=3, frames=4, hop=1).tolist() == [0]
    assert crop_grid(length=10, frames=None, hop=2).tolist() == [0]


def test_distillation_input_fn_pairs_each_crop_with_the_teacher_target_of_that_crop(teacher):
    tracks = chord_tracks(3, seconds=6.0)
    crop_seconds = teacher.whole_patches(3.0)
    data = pretraining.distillation_set(tracks=tracks, crop_seconds=crop_seconds, hop_seconds=1.0, teacher=teacher)
    assert [s.size for s in data.starts] == [4, 4, 4]
    batches = pretraining.make_distillation_input_fn(data=data, mode="train", batch_size=3, seed=0)().take(4)
    drawn = set()
    for features, labels in batches:
        audio, length = features["audio"].numpy(), features["length"].numpy()
        crops = [audio[i, :length[i]] for i in range(len(length))]
        expected = (teacher(crops=crops, frame_rate=DISTILL_RATE) - data.mean) / data.scale
        np.testing.assert_allclose(labels.numpy(), expected, atol=1e-4)
        for crop_audio in crops:  # which track and start each crop is
            matches = [(t, int(s)) for t in range(3) for s in data.starts[t]
                       if np.array_equal(tracks.sequences[t][s:s + data.frames], crop_audio)]
            assert len(matches) == 1
            drawn.add(matches[0])
    assert len(drawn) > 3  # random crops, not one per track
    # Crops of one track differ, so their targets do: pairing crop and target is not vacuous.
    assert np.abs(data.targets[0][0] - data.targets[0][3]).max() > 0.1
    # The standardisation is the crops' own: mean 0 over every crop.
    np.testing.assert_allclose(np.concatenate(data.targets).mean(axis=0), 0.0, atol=1e-4)


def test_augmented_distillation_changes_the_crops_never_their_targets(teacher):
    tracks = chord_tracks(3, seconds=6.0)
    data = pretraining.distillation_set(tracks=tracks, crop_seconds=teacher.whole_patches(3.0), hop_seconds=1.0,
                                        teacher=teacher)
    settings = pretraining.Augmentation(gain_db=(-6.0, 6.0), eq_db=None, noise_snr_db=(20.0, 30.0),
                                        max_shift_seconds=None)
    clean, augmented = (list(pretraining.make_distillation_input_fn(data=data, mode="train", batch_size=3, seed=0,
                                                                    augmentation=a)().take(3))
                        for a in (None, settings))
    for (clean_features, clean_labels), (features, labels) in zip(clean, augmented):
        # The same crops are drawn (the augmentation has its own stream) and keep the clean crops' targets.
        np.testing.assert_array_equal(labels.numpy(), clean_labels.numpy())
        np.testing.assert_array_equal(features["length"].numpy(), clean_features["length"].numpy())
        difference = features["audio"].numpy() - clean_features["audio"].numpy()
        assert np.abs(difference).max() > 1e-3  # but the student reads other audio
    again = list(pretraining.make_distillation_input_fn(data=data, mode="train", batch_size=3, seed=0,
                                                        augmentation=settings)().take(3))
    for (a, _), (b, _) in zip(augmented, again):  # seeded
        np.testing.assert_array_equal(a["audio"].numpy(), b["audio"].numpy())
    with pytest.raises(ValueError, match="'train' only"):
        pretraining.make_distillation_input_fn(data=data, mode="eval", augmentation=settings)


def test_teacher_targets_are_computed_once_and_cached_by_track_and_crop(teacher, tmp_path):
    tracks = chord_tracks(2, seconds=5.0)
    counting = CountingTeacher(teacher)
    settings = dict(tracks=tracks, crop_seconds=teacher.whole_patches(3.0), teacher=counting, cache_dir=str(tmp_path))
    first = pretraining.distillation_set(hop_seconds=1.0, **settings)
    assert counting.crops == 6
    again = pretraining.distillation_set(hop_seconds=1.0, **settings)
    assert counting.crops == 6  # every target came from the cache
    for a, b in zip(first.targets, again.targets):
        np.testing.assert_array_equal(a, b)
    pretraining.distillation_set(hop_seconds=None, **settings)  # other crops: computed
    assert counting.crops == 8
    changed = TrackSet(track_ids=tracks.track_ids, labels=tracks.labels, frame_rate=tracks.frame_rate,
                       sequences=[tracks.sequences[0] * 0.5, tracks.sequences[1]])
    pretraining.distillation_set(hop_seconds=1.0, **{**settings, "tracks": changed})  # other audio: computed
    assert counting.crops == 11


def test_distillation_loss_by_hand():
    predictions = tf.constant([[1.0, 0.0], [0.0, 2.0]])
    targets = tf.constant([[1.0, 1.0], [0.0, -1.0]])
    cosine = pretraining.distillation_loss(predictions=predictions, targets=targets, kind="cosine")
    np.testing.assert_allclose(cosine.numpy(), ((1 - 1 / math.sqrt(2)) + 2.0) / 2, rtol=1e-6)
    mse = pretraining.distillation_loss(predictions=predictions, targets=targets, kind="mse")
    np.testing.assert_allclose(mse.numpy(), (0 + 1 + 0 + 9) / 4, rtol=1e-6)
    with pytest.raises(ValueError, match="distill_loss"):
        pretraining.distillation_loss(predictions=predictions, targets=targets, kind="l1")


@pytest.fixture(scope="module")
def distilled_run(teacher, tmp_path_factory):
    """A tiny distillation run: 40 steps on 400 Hz tracks, evaluated before and after."""
    tracks = chord_tracks(4, seconds=5.0, rate=RATE)
    crop_seconds = teacher.whole_patches(3.0)
    train_fn, held_out = pretraining.make_distillation_input_fns(
        train_tracks=tracks, held_out={"eval": tracks}, teacher=teacher, crop_seconds=crop_seconds, hop_seconds=0.5,
        batch_size=4, progress=False)
    eval_fn = held_out["eval"]
    model_dir = str(tmp_path_factory.mktemp("distilled"))
    run = estimator("distill", model_dir, dict(TINY, learning_rate=1e-2, distill_loss="cosine"))
    run.train(train_fn, steps=1)
    before = run.evaluate(eval_fn)
    run.train(train_fn, steps=39)
    return dict(model_dir=model_dir, before=before, after=run.evaluate(eval_fn))


def test_distillation_brings_the_student_towards_the_teacher(distilled_run):
    before, after = distilled_run["before"], distilled_run["after"]
    assert after["global_step"] == 40
    assert after["loss"] < before["loss"] - 0.1
    np.testing.assert_allclose(after["cosine"], 1.0 - after["loss"], atol=1e-5)


def test_warm_start_from_a_distilled_run_loads_the_stacks(distilled_run, tmp_path):
    pretrained = distilled_run["model_dir"]
    assert any(n.startswith("distill/projection/") for n in trainable_names(pretrained))
    run = fine_tune(str(tmp_path), pretrained=pretrained,
                    vars_regex=pretraining.warm_start_vars("stacks", checkpoint=pretrained))
    assert run.get_variable_value("global_step") == 1
    for name in stack_names(pretrained):
        np.testing.assert_array_equal(run.get_variable_value(name), tf.train.load_variable(pretrained, name))
    assert not np.array_equal(run.get_variable_value("final/conv/kernel"),
                              tf.train.load_variable(pretrained, "final/conv/kernel"))
    assert not any(n.startswith("distill/") for n in trainable_names(str(tmp_path)))


def test_run_distills_from_every_split_named_and_caches_the_targets(teacher, tmp_path):
    import os

    from conftest import write_synthetic_dataset
    from experiments.run import run
    from musicsim.data.dataset import read_catalog

    dataset_dir = write_synthetic_dataset(str(tmp_path / "data"))  # its own: the run writes a cache there
    results = run(run_config(dataset_dir, str(tmp_path / "distilled"), pretrain="distill", crop_seconds=3.0,
                             pretrain_splits=("train", "eval", "test"),
                             params=dict(TINY, distill_loss="mse", distill_hop_seconds=1.0)))
    assert results["eval_metrics"]["global_step"] == 6 and np.isfinite(results["eval_metrics"]["loss"])
    assert results["sizes"] == {"train": 16, "eval": 8, "test": 8}  # the student embeds and is scored
    # One cache entry per track of every split (its grid crops), plus one per eval and test track (its
    # centred crop: early stopping on eval, the teacher agreement reported on test).
    cached = os.listdir(os.path.join(dataset_dir, "teacher_cache", teacher.key))
    assert len(cached) == len(read_catalog(dataset_dir)) + 8 + 8
    agreement = results["held_out_metrics"]["teacher_agreement_test"]
    assert set(agreement) == {"cosine", "loss"} and -1.0 <= agreement["cosine"] <= 1.0
    assert agreement["cosine"] != results["eval_metrics"]["cosine"]  # test crops, not the eval split's
