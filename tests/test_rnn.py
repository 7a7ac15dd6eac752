"""The unsupervised LSTM model (paper 4.2): chromagrams, cached loading, embedding, loss, estimator."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from musicsim import head
from musicsim.data.audio import load_audio
from musicsim.chroma import chroma_sequence
from musicsim.data.dataset import CatalogEntry, read_catalog, write_catalog
from musicsim.inputs import TrackSet, make_predict_input_fn
from musicsim.models import rnn

SMALL = rnn.RNNConfig(rnn_units=8, section_frames=50, rnn_embedding="states").to_params()


# ----------------------------------------------------------------------------- chromagrams

@pytest.mark.parametrize("frequency, pitch_class", [(261.63, 0), (392.0, 7), (440.0, 9)])  # C4, G4, A4
@pytest.mark.parametrize("hop_length", [512, 256])
def test_chroma_sequence_shape_and_pitch(frequency, pitch_class, hop_length):
    sample_rate, seconds = 22050, 1.5
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    tone = (0.5 * np.sin(2 * np.pi * frequency * t)).astype(np.float32)
    chroma = chroma_sequence(audio=tone, sample_rate=sample_rate, hop_length=hop_length)
    assert chroma.shape == (1 + tone.size // hop_length, 12)
    assert chroma.dtype == np.float32
    # librosa scales each frame to a maximum of 1; a pure tone lights its own pitch class.
    np.testing.assert_allclose(chroma.max(axis=1), 1.0, atol=1e-6)
    assert int(np.argmax(chroma.mean(axis=0))) == pitch_class


def test_frame_rate_of_default_params():
    assert rnn.frame_rate() == pytest.approx(22050 / 512)
    assert rnn.frame_rate(rnn.RNNConfig(chroma_sample_rate=16000, hop_length=256).to_params()) == pytest.approx(62.5)


@pytest.mark.parametrize("kwargs, message", [
    (dict(audio=np.zeros(0, np.float32), sample_rate=22050, hop_length=512), "non-empty 1-D"),
    (dict(audio=np.zeros((2, 100), np.float32), sample_rate=22050, hop_length=512), "non-empty 1-D"),
    (dict(audio=np.ones(4096, np.float32), sample_rate=0, hop_length=512), "sample_rate"),
    (dict(audio=np.ones(4096, np.float32), sample_rate=22050, hop_length=0), "hop_length"),
])
def test_chroma_sequence_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        chroma_sequence(**kwargs)


# ----------------------------------------------------------------------------- load_tracks

def _copy_dataset(source: str, target: str, *, max_seconds: float | None = None,
                  replace_paths: dict[str, str] | None = None) -> str:
    """A copy of a prepared dataset's catalog (sources stay where they are), optionally edited."""
    os.makedirs(target)
    with open(os.path.join(source, "dataset.json")) as f:
        info = json.load(f)
    info["max_seconds"] = max_seconds
    with open(os.path.join(target, "dataset.json"), "w") as f:
        json.dump(info, f)
    entries = [CatalogEntry(e.track_id, e.split, e.labels, e.duration_s, (replace_paths or {}).get(e.track_id, e.path))
               for e in read_catalog(source)]
    write_catalog(target, entries)
    return target


def test_load_tracks_computes_caches_and_reuses(synthetic_dataset, tmp_path, monkeypatch):
    dataset = _copy_dataset(synthetic_dataset, str(tmp_path / "ds"))
    entries = read_catalog(dataset, split="eval")
    # Two splits through one process pool.
    splits = rnn.load_splits(dataset, ("eval", "test"), workers=2, progress=False)
    assert sorted(splits) == ["eval", "test"]
    assert splits["test"].track_ids == [e.track_id for e in read_catalog(dataset, split="test")]
    tracks = splits["eval"]
    assert tracks.track_ids == [e.track_id for e in entries]
    assert tracks.labels == [e.labels for e in entries]
    assert tracks.frame_rate == pytest.approx(22050 / 512)
    assert tracks.channels == 12
    for entry, sequence in zip(entries, tracks.sequences):
        # The synthetic sources are 8 kHz WAVs; decoded at 22050 Hz they give 1 + n // 512 frames.
        assert sequence.shape == (1 + int(round(entry.duration_s * 22050)) // 512, 12)
    expected = chroma_sequence(audio=load_audio(entries[0].path, sample_rate=22050), sample_rate=22050,
                                   hop_length=512)
    np.testing.assert_allclose(tracks.sequences[0], expected, atol=1e-5)
    cached = os.listdir(os.path.join(dataset, "feature_cache", "chroma"))
    assert len([name for name in cached if name.endswith(".npy")]) == len(entries) + len(splits["test"])

    decoded = []
    monkeypatch.setattr(rnn, "chroma_of_file", lambda *a, **k: decoded.append(a) or (None, "decoded again"))
    again = rnn.load_tracks(dataset, "eval", workers=1, progress=False)
    assert decoded == []
    assert again.track_ids == tracks.track_ids
    for first, second in zip(tracks.sequences, again.sequences):
        np.testing.assert_array_equal(first, second)


def test_load_tracks_skips_broken_sources_and_uses_max_seconds(synthetic_dataset, tmp_path, capsys):
    entries = read_catalog(synthetic_dataset, split="test")
    garbage = tmp_path / "garbage.wav"
    garbage.write_bytes(b"this is not audio" * 100)
    broken = {entries[0].track_id: str(garbage), entries[1].track_id: str(tmp_path / "missing.wav")}
    dataset = _copy_dataset(synthetic_dataset, str(tmp_path / "ds"), max_seconds=2.0, replace_paths=broken)
    tracks = rnn.load_tracks(dataset, "test", workers=1, progress=False)
    assert tracks.track_ids == [e.track_id for e in entries[2:]]
    # Every source is at least 3 s long: each chromagram is of the centred 2 s excerpt.
    assert {s.shape for s in tracks.sequences} == {(1 + 2 * 22050 // 512, 12)}
    report = capsys.readouterr().err
    assert "skipped 2 of" in report
    assert str(garbage) in report and "not audio" in report
    assert "missing.wav: file not found" in report


def test_load_tracks_rejects_a_split_with_nothing_usable(synthetic_dataset, tmp_path):
    entries = read_catalog(synthetic_dataset, split="eval")
    missing = {e.track_id: str(tmp_path / f"{e.track_id}.wav") for e in entries}
    dataset = _copy_dataset(synthetic_dataset, str(tmp_path / "ds"), replace_paths=missing)
    with pytest.raises(ValueError, match="none of the .* eval tracks"):
        rnn.load_tracks(dataset, "eval", workers=1, progress=False)
    with pytest.raises(ValueError, match="lists no tracks"):
        rnn.load_tracks(dataset, "validation", workers=1, progress=False)
    with pytest.raises(ValueError, match="workers"):
        rnn.load_tracks(dataset, "eval", workers=0)


# ----------------------------------------------------------------------------- embedding

class EmbedGraph:
    """``embed`` built once in its own graph, so every run uses the same weights."""

    def __init__(self, params: dict, *, seed: int = 0):
        self.graph = tf.Graph()
        with self.graph.as_default():
            tf.compat.v1.set_random_seed(seed)
            self.audio = tf.compat.v1.placeholder(tf.float32, [None, None, 12])
            self.length = tf.compat.v1.placeholder(tf.int32, [None])
            self.embedding = rnn.embed(self.audio, self.length, params=params, training=False)
            self.session = tf.compat.v1.Session(graph=self.graph)
            self.session.run(tf.compat.v1.global_variables_initializer())

    def __call__(self, sequences: list[np.ndarray], *, pad_to: int | None = None) -> np.ndarray:
        time = max(pad_to or 0, max(s.shape[0] for s in sequences))
        audio = np.zeros((len(sequences), time, 12), np.float32)
        for i, s in enumerate(sequences):
            audio[i, : s.shape[0]] = s
        return self.session.run(self.embedding, {self.audio: audio, self.length: [s.shape[0] for s in sequences]})


def _random_chroma(frames: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random((frames, 12)).astype(np.float32)


def test_embedding_variants_are_the_six_combinations():
    assert sorted(rnn.embedding_variants()) == sorted(
        (e, r) for e in ("states", "outputs") for r in ("mean", "max", "last"))


@pytest.mark.parametrize("embedding, reduce", rnn.embedding_variants())
def test_embed_shape_and_padding_does_not_change_it(embedding, reduce):
    units = 8
    model = EmbedGraph(dict(SMALL, rnn_units=units, rnn_embedding=embedding, rnn_reduce=reduce))
    assert model.embedding.shape[-1] == (2 * units if embedding == "states" else units)
    track = _random_chroma(130, seed=1)
    alone = model([track])
    # In a batch beside a longer and a much shorter track, with extra padding sections.
    batch = model([_random_chroma(260, seed=2), track, _random_chroma(7, seed=3)], pad_to=320)
    assert alone.shape == (1, 2 * units if embedding == "states" else units)
    assert batch.shape == (3, alone.shape[1])
    np.testing.assert_allclose(batch[1], alone[0], atol=1e-5)
    assert not np.allclose(batch[0], batch[1], atol=1e-3)  # a different track embeds differently


@pytest.mark.parametrize("embedding, reduce", rnn.embedding_variants())
def test_sections_are_independent_and_reduced(embedding, reduce):
    # 130 frames in sections of 50: sections of 50, 50 and 30 frames, each a sequence of its own.
    model = EmbedGraph(dict(SMALL, rnn_embedding=embedding, rnn_reduce=reduce))
    track = _random_chroma(130, seed=4)
    whole = model([track])[0]
    per_section = model([track[:50], track[50:100], track[100:]])
    expected = {"mean": per_section.mean(axis=0), "max": per_section.max(axis=0), "last": per_section[-1]}[reduce]
    np.testing.assert_allclose(whole, expected, atol=1e-5)


def _numpy_lstm(frames: np.ndarray, kernel: np.ndarray, recurrent: np.ndarray, bias: np.ndarray):
    """Keras' LSTM by hand (gates i, f, c, o) from a zero state: outputs ``[t, units]``, final h, c."""
    units = recurrent.shape[0]
    sigmoid = lambda x: 1.0 / (1.0 + np.exp(-x))  # noqa: E731
    h, c, outputs = np.zeros(units), np.zeros(units), []
    for x in frames:
        z = x @ kernel + h @ recurrent + bias
        i, f, g, o = (z[k * units:(k + 1) * units] for k in range(4))
        c = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
        h = sigmoid(o) * np.tanh(c)
        outputs.append(h)
    return np.array(outputs), h, c


@pytest.mark.parametrize("embedding, reduce", rnn.embedding_variants())
def test_embed_matches_an_lstm_over_the_real_frames_of_each_section(embedding, reduce):
    # 80 frames: a full section of 50 and one of 30 real frames padded to 50; the padding must not
    # reach the states (masking), and each section starts from a zero state.
    model = EmbedGraph(dict(SMALL, rnn_embedding=embedding, rnn_reduce=reduce))
    track = _random_chroma(80, seed=5)
    with model.graph.as_default():
        kernel, recurrent, bias = model.session.run(tf.compat.v1.trainable_variables())
    per_section = []
    for section in (track[:50], track[50:]):
        outputs, h, c = _numpy_lstm(section.astype(np.float64), kernel, recurrent, bias)
        per_section.append(np.concatenate([h, c]) if embedding == "states" else outputs.mean(axis=0))
    per_section = np.array(per_section)
    expected = {"mean": per_section.mean(axis=0), "max": per_section.max(axis=0), "last": per_section[-1]}[reduce]
    np.testing.assert_allclose(model([track])[0], expected, atol=1e-5)


@pytest.mark.parametrize("length, expected_sections", [(1, 1), (50, 1), (51, 2), (130, 3), (150, 3)])
def test_split_sections_counts_real_sections(length, expected_sections):
    audio = tf.zeros([2, 200, 12])
    sections, section_length, _, real_mask = rnn.split_sections(audio, tf.constant([length, 0]), section_frames=50)
    assert sections.shape[0] == expected_sections
    assert real_mask.numpy()[0].sum() == expected_sections and real_mask.numpy()[1].sum() == 0
    expected_lengths = [50] * (expected_sections - 1) + [length - 50 * (expected_sections - 1)]
    assert section_length.numpy().tolist() == expected_lengths


@pytest.mark.parametrize("params, message", [
    (dict(rnn_embedding="memory"), "rnn_embedding"),
    (dict(rnn_reduce="median"), "rnn_reduce"),
    (dict(section_frames=0), "section_frames"),
    (dict(rnn_units=0), "rnn_units"),
])
def test_embed_rejects_bad_params(params, message):
    with pytest.raises(ValueError, match=message):
        rnn.embed(tf.zeros([1, 10, 12]), tf.constant([10]), params=dict(SMALL, **params), training=False)


def test_embed_needs_every_rnn_key():
    with pytest.raises(ValueError, match=r"RNNConfig needs params \['section_frames', 'rnn_embedding'"):
        rnn.embed(tf.zeros([1, 10, 12]), tf.constant([10]), params={"rnn_units": 8}, training=False)


def test_the_default_readout_is_the_runs_choice_and_embed_needs_one():
    """By default a run reads every variant on the eval split ('all'); embed computes one of them."""
    assert rnn.RNNConfig().rnn_embedding == "all"
    with pytest.raises(ValueError, match=r"rnn_embedding must be one of \('states', 'outputs'\) to embed"):
        rnn.embed(tf.zeros([1, 10, 12]), tf.constant([10]), params=dict(SMALL, rnn_embedding="all"), training=False)
    with pytest.raises(ValueError, match=r"dropout must be in \[0, 1\)"):
        rnn.RNNConfig(dropout=1.0)


# ----------------------------------------------------------------------------- loss

def test_next_frame_loss_by_hand():
    frames = np.array([[[0, 1], [1, 0], [2, 2]],
                       [[1, 1], [0, 0], [9, 9]]], np.float32)  # the second track has 2 real frames
    predictions = np.array([[[1, 0], [1, 1], [5, 5]],
                            [[0, 1], [7, 7], [7, 7]]], np.float32)
    # Transitions: track 0: t=0 |[1,0]-[1,0]| = 0, t=1 |[1,1]-[2,2]| = 2; track 1: t=0 |[0,1]-[0,0]| = 1.
    loss = rnn.next_frame_loss(predictions=tf.constant(predictions), frames=tf.constant(frames),
                               lengths=tf.constant([3, 2]))
    assert float(loss) == pytest.approx((0 + 2 + 1) / 3)


def test_next_frame_loss_without_transitions_is_zero():
    loss = rnn.next_frame_loss(predictions=tf.ones([2, 3, 12]), frames=tf.zeros([2, 3, 12]),
                               lengths=tf.constant([1, 0]))
    assert float(loss) == 0.0


# ----------------------------------------------------------------------------- input_fn

def _tracks(lengths, *, seed: int = 0) -> TrackSet:
    return TrackSet(track_ids=[f"t{i}" for i in range(len(lengths))], labels=[("a",)] * len(lengths),
                    sequences=[_random_chroma(n, seed + i) for i, n in enumerate(lengths)], frame_rate=22050 / 512)


def test_train_input_fn_crops_sections_and_eval_input_fn_is_each_track_once():
    tracks = _tracks([130, 40, 300, 1])
    train = rnn.make_input_fn(tracks=tracks, mode="train", batch_size=3, section_frames=50, sections_per_crop=2)
    batches = list(train().take(4).as_numpy_iterator())
    for batch in batches:
        # Crops of 100 frames; the 40-frame track stays whole; the 1-frame track is never drawn.
        assert set(batch["length"].tolist()) <= {100, 40}
        assert batch["audio"].shape[1] == batch["length"].max()
    lengths = np.concatenate([b["length"] for b in batches])
    assert (lengths == 40).sum() == 4  # one epoch of the 3 usable tracks every 3 draws
    evaluated = list(rnn.make_input_fn(tracks=tracks, mode="eval", batch_size=3)().as_numpy_iterator())
    assert np.concatenate([b["length"] for b in evaluated]).tolist() == [130, 40, 300, 1]
    np.testing.assert_array_equal(evaluated[0]["audio"][2], tracks.sequences[2])


@pytest.mark.parametrize("kwargs, message", [
    (dict(mode="predict"), "mode"),
    (dict(mode="train", batch_size=0), "batch_size"),
    (dict(mode="train", crop_seconds=0.0), "crop_seconds"),
    (dict(mode="train", section_frames=0), "section_frames"),
])
def test_make_input_fn_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        rnn.make_input_fn(tracks=_tracks([10]), **kwargs)


# ----------------------------------------------------------------------------- estimator

def _periodic_tracks(n: int, *, period: int = 4) -> TrackSet:
    """One-hot chroma cycling through ``period`` pitch classes, a random phase and length per track."""
    rng = np.random.default_rng(0)
    sequences = []
    for _ in range(n):
        frames = int(rng.integers(80, 140))
        steps = (np.arange(frames) + int(rng.integers(period))) % period
        sequences.append(np.eye(12, dtype=np.float32)[steps * 3])
    return TrackSet(track_ids=[f"p{i}" for i in range(n)], labels=[("a",)] * n, sequences=sequences,
                    frame_rate=22050 / 512)


def test_estimator_learns_the_next_frame_and_predicts_every_variant(tmp_path):
    tracks = _periodic_tracks(8)
    params = {**head.HeadConfig(learning_rate=0.02).to_params(),
              **rnn.RNNConfig(rnn_units=16, section_frames=50, rnn_embedding="states").to_params()}
    model_dir = str(tmp_path / "model")
    config = tf.estimator.RunConfig(tf_random_seed=0, save_summary_steps=1000, log_step_count_steps=1000)

    def estimator(**overrides):
        return tf.estimator.Estimator(head.make_model_fn(rnn.embed, objective=rnn.objective()), model_dir=model_dir,
                                      params=dict(params, **overrides),
                                      config=config)

    train = rnn.make_input_fn(tracks=tracks, mode="train", batch_size=8, section_frames=50)
    evaluate = rnn.make_input_fn(tracks=tracks, mode="eval", batch_size=8)
    estimator().train(train, steps=1)
    before = estimator().evaluate(evaluate)
    estimator().train(train, steps=120)
    after = estimator().evaluate(evaluate)
    assert rnn.EARLY_STOPPING == ("loss", "decrease")
    # A period-4 one-hot sequence: predicting the previous pattern is learnable; loss must fall a lot.
    assert after["loss"] < 0.4 * before["loss"], (before, after)
    assert after["mae"] == pytest.approx(after["loss"] / 12, rel=0.05)

    # The embedding choice does not touch the variables: one checkpoint serves every variant.
    for embedding, reduce, size in [("states", "last", 32), ("outputs", "max", 16)]:
        predictions = list(estimator(rnn_embedding=embedding, rnn_reduce=reduce).predict(
            make_predict_input_fn(tracks=tracks, batch_size=3)))
        assert [p["track_id"].decode() for p in predictions] == tracks.track_ids
        assert {p["embedding"].shape for p in predictions} == {(size,)}
        assert all(np.all(np.isfinite(p["embedding"])) for p in predictions)
