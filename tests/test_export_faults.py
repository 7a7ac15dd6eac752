"""experiments.export and musicsim.embedder on bad input and long audio: nothing good is lost, memory is bounded.

Windowed embedding is checked against the whole computation it replaces (real models, real audio).
"""
from __future__ import annotations

import csv
import json
import os
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf
import tensorflow as tf

from experiments import export
from experiments import export_embeddings as embeddings_module
from experiments.export import export_embeddings, export_saved_model, output_paths
from musicsim.data.audio import AudioDecodeError, load_audio, mean_pool
from musicsim.data.audio import iter_pooled_blocks
from musicsim.chroma import windowed_chroma
from musicsim.embedder import load_embedder
from musicsim.data.windows import iter_window_rows
from musicsim.models import wavenet
from test_export import SAMPLE_RATE, train_tiny_run


@pytest.fixture(scope="session")
def tiny_run(synthetic_dataset, tmp_path_factory) -> str:
    return train_tiny_run(dataset_dir=synthetic_dataset,
                          model_dir=str(tmp_path_factory.getbasetemp() / "tiny_wavenet_run"))


@pytest.fixture(scope="module")
def embedder(tiny_run):
    return load_embedder(tiny_run)


@pytest.fixture
def music(synthetic_dataset, tmp_path):
    """A folder of three good tracks in two albums."""
    audio = os.path.join(os.path.dirname(synthetic_dataset), "audio")
    root = tmp_path / "music"
    for album, track in (("low_sine", "t0"), ("low_sine", "t1"), ("noisy_mid", "t2")):
        os.makedirs(root / album, exist_ok=True)
        shutil.copy(os.path.join(audio, album, f"{track}.wav"), root / album / f"{track}.wav")
    return root


def _snapshot(paths: dict[str, str]) -> dict[str, bytes]:
    return {name: open(path, "rb").read() for name, path in paths.items() if os.path.exists(path)}


# ------------------------------------------------------------------------------------- SavedModel folder

def test_saved_model_refuses_a_folder_it_did_not_write(tiny_run, tmp_path, capsys):
    target = tmp_path / "V"
    (target / "sub").mkdir(parents=True)
    (target / "notes.txt").write_text("x\n")
    assert export.main(["export", f"--model_dir={tiny_run}", f"--saved_model={target}"]) == 2
    assert "not a SavedModel export of this project" in capsys.readouterr().err
    assert sorted(os.listdir(target)) == ["notes.txt", "sub"] and (target / "notes.txt").read_text() == "x\n"
    assert sorted(os.listdir(tmp_path)) == ["V"]  # no staging folder left behind


def test_saved_model_replaces_its_own_export_but_not_one_a_user_added_to(tiny_run, tmp_path):
    target = tmp_path / "serving"
    export_saved_model(model_dir=tiny_run, export_dir=str(target))
    with open(target / export.SAVED_MODEL_MANIFEST) as f:
        manifest = json.load(f)
    assert manifest["kind"] == export.SAVED_MODEL_KIND and manifest["model_dir"] == os.path.abspath(tiny_run)
    assert set(manifest["entries"]) == {"pooled", "raw", "serving.json"}
    first = os.stat(target / "serving.json").st_mtime_ns
    export_saved_model(model_dir=tiny_run, export_dir=str(target))  # its own: replaced
    assert os.stat(target / "serving.json").st_mtime_ns != first
    (target / "my_notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="--overwrite"):
        export_saved_model(model_dir=tiny_run, export_dir=str(target))
    assert (target / "my_notes.txt").read_text() == "mine"
    export_saved_model(model_dir=tiny_run, export_dir=str(target), overwrite=True)
    assert sorted(os.listdir(target)) == sorted(manifest["entries"] + [export.SAVED_MODEL_MANIFEST])
    assert sorted(os.listdir(tmp_path)) == ["serving"]


def test_saved_model_replaces_an_export_written_before_the_one_manifest(tiny_run, tmp_path):
    """Exports of the earlier format (musicsim_export.json) stay ours: replaced, and given musicsim.json."""
    from musicsim.owned import owned_kind

    target = tmp_path / "serving"
    (target / "pooled").mkdir(parents=True)
    (target / "serving.json").write_text("{}")
    (target / export.LEGACY_SAVED_MODEL_MANIFEST).write_text(json.dumps(
        {"kind": export.LEGACY_SAVED_MODEL_KIND, "entries": ["pooled", "serving.json"]}))
    export_saved_model(model_dir=tiny_run, export_dir=str(target))
    assert owned_kind(str(target)) == export.SAVED_MODEL_KIND
    assert sorted(os.listdir(target)) == sorted(["pooled", "raw", "serving.json", export.SAVED_MODEL_MANIFEST])
    old = tmp_path / "old"
    (old / "pooled").mkdir(parents=True)
    (old / "extra.txt").write_text("mine")
    (old / export.LEGACY_SAVED_MODEL_MANIFEST).write_text(json.dumps(
        {"kind": export.LEGACY_SAVED_MODEL_KIND, "entries": ["pooled"]}))
    with pytest.raises(ValueError, match="not a SavedModel export of this project"):
        export_saved_model(model_dir=tiny_run, export_dir=str(old))
    assert (old / "extra.txt").read_text() == "mine"


# ------------------------------------------------------------------------------------- failed re-export

def test_a_failed_re_export_keeps_the_good_outputs_and_state(tiny_run, music, tmp_path, capsys):
    output = str(tmp_path / "lib.parquet")
    paths = output_paths(output)
    common = ["export", f"--model_dir={tiny_run}", f"--output={output}", "--workers=1", "--noprogress"]
    assert export.main(common + [f"--audio={music}"]) == 0
    good = _snapshot(paths)
    assert set(good) == {"parquet", "npy", "ids", "meta", "skipped", "state"}

    unmounted = tmp_path / "unmounted"
    unmounted.mkdir()
    capsys.readouterr()
    assert export.main(common + [f"--audio={unmounted}"]) == 2  # empty input is bad input
    assert "holds no audio file" in capsys.readouterr().err
    assert _snapshot(paths) == good

    broken = tmp_path / "broken"  # audio files that all fail: nothing embedded, nothing replaced
    broken.mkdir()
    (broken / "a.wav").write_bytes(b"")
    (broken / "b.mp3").write_text("not audio")
    assert export.main(common + [f"--audio={broken}"]) == 1
    assert "no file could be embedded" in capsys.readouterr().err
    for name in ("parquet", "npy", "ids", "meta", "skipped"):
        assert _snapshot(paths)[name] == good[name]
    state = export.read_state(paths["state"], header=embeddings_module._state_header(load_embedder(tiny_run)))
    kept = {os.path.join(str(music), p) for p in ("low_sine/t0.wav", "low_sine/t1.wav", "noisy_mid/t2.wav")}
    assert kept <= set(state)
    assert not [name for name in os.listdir(tmp_path) if ".tmp-" in name]


def test_another_models_state_survives_a_failed_export(tiny_run, tmp_path, embedder):
    output = str(tmp_path / "lib.parquet")
    state_path = output_paths(output)["state"]
    foreign = {"format_version": 1, "model": "wavenet", "model_dir": "/runs/other", "version": "model.ckpt-5",
               "dim": 16, "window_seconds": None}
    embeddings_module._write_state(state_path, foreign, [{"path": "/music/a.wav", "size": 1, "mtime_ns": 2,
                                               "embedding": [0.5] * 16, "reason": None, "duration_s": 3.0}])
    before = open(state_path, "rb").read()
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "a.wav").write_bytes(b"")
    summary = export_embeddings(model_dir=tiny_run, audio=str(broken), output=output, workers=1, progress=False,
                                embedder=embedder)
    assert not summary.written and open(state_path, "rb").read() == before
    assert sorted(os.listdir(tmp_path)) == ["broken", "lib.state.jsonl"]


def test_outputs_name_the_run_and_ids_survive_any_file_name(tiny_run, music, tmp_path, embedder):
    odd = music / "low_sine" / "two\nlines, \"quoted\".wav"
    shutil.copy(music / "low_sine" / "t0.wav", odd)
    output = str(tmp_path / "out.parquet")
    export_embeddings(model_dir=tiny_run, audio=str(music), output=output, workers=1, progress=False,
                      embedder=embedder)
    paths = output_paths(output)
    with open(paths["ids"]) as f:
        ids = json.load(f)
    assert ids == pq.read_table(output).column("track_id").to_pylist() and "low_sine/two\nlines, \"quoted\"" in ids
    assert np.load(paths["npy"]).shape == (len(ids), embedder.dim)
    with open(paths["meta"]) as f:
        meta = json.load(f)
    run = os.path.abspath(tiny_run)
    assert meta == {"model": "wavenet", "model_dir": run, "similarity": "cosine", "version": embedder.version}
    assert pq.read_schema(output).metadata[b"musicsim.model_dir"].decode() == run
    with open(paths["state"]) as f:
        assert json.loads(f.readline())["model_dir"] == run
    from musicsim.index import load_embeddings, read_provenance

    assert load_embeddings(paths["npy"])[0] == ids
    assert read_provenance(paths["npy"])["model_dir"] == run


# ------------------------------------------------------------------------------------- listings

def test_au_files_are_exported(tmp_path):
    (tmp_path / "a.au").write_bytes(b"")
    (tmp_path / "b.wav").write_bytes(b"")
    assert sorted(e.track_id for e in export.list_folder(str(tmp_path)).entries) == ["a", "b"]


def test_an_unreadable_folder_is_reported_not_lost(tmp_path, monkeypatch):
    for name in ("ok/a.wav", "locked/b.wav"):
        os.makedirs(tmp_path / os.path.dirname(name), exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    real_scandir = os.scandir

    def scandir(path="."):  # root defeats chmod: the permission failure os.walk would meet
        if os.path.basename(os.fspath(path)) == "locked":
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    listing = export.list_folder(str(tmp_path))
    assert [e.track_id for e in listing.entries] == ["ok/a"]
    assert [(s["path"], "Permission denied" in s["reason"]) for s in listing.skipped] == [
        (str(tmp_path / "locked"), True)]


def test_an_unreadable_folder_lands_in_skipped_csv_and_keeps_its_state(tiny_run, music, tmp_path, monkeypatch,
                                                                       embedder):
    output = str(tmp_path / "lib.parquet")
    common = dict(model_dir=tiny_run, audio=str(music), output=output, workers=1, progress=False, embedder=embedder)
    export_embeddings(**common)
    real_scandir = os.scandir

    def scandir(path="."):
        if os.path.basename(os.fspath(path)) == "noisy_mid":
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    summary = export_embeddings(**common)
    assert summary.embedded == 2
    with open(output_paths(output)["skipped"], newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["path"] for r in rows] == [str(music / "noisy_mid")] and "Permission denied" in rows[0]["reason"]
    state = export.read_state(output_paths(output)["state"], header=embeddings_module._state_header(embedder))
    assert str(music / "noisy_mid" / "t2.wav") in state  # out of reach this time, not gone


def test_a_root_that_cannot_be_read_is_an_error(tmp_path, monkeypatch, tiny_run, capsys):
    (tmp_path / "music").mkdir()
    real_scandir = os.scandir

    def scandir(path="."):
        if os.path.basename(os.fspath(path)) == "music":
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    assert export.main(["export", f"--model_dir={tiny_run}", f"--audio={tmp_path / 'music'}",
                        f"--output={tmp_path / 'o.parquet'}"]) == 2
    assert "cannot be read: Permission denied" in capsys.readouterr().err


def test_manifest_that_is_not_utf8_is_an_error_naming_it(tmp_path, tiny_run, capsys):
    manifest = tmp_path / "songs.csv"
    manifest.write_bytes("path,album\nBj\u00f6rk.wav,x\n".encode("latin-1"))
    assert export.main(["export", f"--model_dir={tiny_run}", f"--audio={manifest}",
                        f"--output={tmp_path / 'o.parquet'}"]) == 2
    err = capsys.readouterr().err
    assert str(manifest) in err and "not UTF-8" in err
    assert not os.path.exists(tmp_path / "o.parquet")


def test_manifest_rows_without_a_track_id_are_refused_with_their_line(tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,track_id\na.wav,A\nb.wav,\nc.wav,null\nd.wav,D\ne.wav\n")
    listing = export.list_manifest(str(manifest))
    assert [e.track_id for e in listing.entries] == ["A", "D"]
    assert [s["reason"] for s in listing.skipped] == [f"{manifest} line {n}: empty or null track_id" for n in (3, 4, 6)]


# ------------------------------------------------------------------------------------- windows

def test_window_rows_cover_the_sequence_once():
    sequence = np.arange(1000, dtype=np.float32)
    chunks = (sequence[i:i + 77] for i in range(0, sequence.size, 77))
    rows = list(iter_window_rows(index=3, chunks=chunks, window=160, context=48, lookahead=5, unit=16))
    assert [r.last for r in rows] == [False] * (len(rows) - 1) + [True] and {r.index for r in rows} == {3}
    own = []
    for k, row in enumerate(rows):
        start = int(row.audio[0])  # each row holds consecutive values: its first is where it starts
        assert start == max(0, 160 * k - 48) and row.skip == (160 * k - start) // 16
        end = None if row.last else 160 + (160 * k - start)
        own.append(row.audio[160 * k - start:end])
        assert row.audio.size <= 48 + 160 + 5 or row.last
    np.testing.assert_array_equal(np.concatenate(own), sequence)


def _embed_in_windows(params, audio: np.ndarray, checkpoint: str, *, window: int, context: int | None = None):
    geometry = wavenet.window_geometry(params)
    context = geometry["context"] if context is None else context
    rows = list(iter_window_rows(index=0, chunks=iter([audio]), window=window, context=context,
                                 lookahead=geometry["lookahead"], unit=geometry["unit"]))
    graph = tf.Graph()
    with graph.as_default():
        batch = np.zeros((len(rows), max(r.audio.size for r in rows)), np.float32)
        for i, row in enumerate(rows):
            batch[i, :row.audio.size] = row.audio
        features, counts = wavenet.window_features(tf.constant(batch), tf.constant([r.audio.size for r in rows]),
                                                   tf.constant([r.skip for r in rows]), params=params)
        with tf.compat.v1.Session(graph=graph) as session:
            tf.compat.v1.train.Saver().restore(session, checkpoint)
            features, counts = session.run([features, counts])
    pooled = wavenet.combine_windows(features, counts, params=params)
    return wavenet.apply_dense_layers(pooled[None], weights=wavenet.dense_weights(params, checkpoint=checkpoint))[0]


WINDOW_CASES = {
    "max": dict(),
    "avg_dense": dict(pooling="avg", dense_layers=[12, 6]),
    "strided": dict(pooling="avg", frontend="strided", frontend_stride=4),
    "logmel": dict(pooling="avg", frontend="logmel", input_sample_rate=1600, frame_seconds=0.04, hop_seconds=0.02,
                   n_mels=8),
}


@pytest.mark.parametrize("case", sorted(WINDOW_CASES))
def test_wavenet_in_windows_equals_the_whole_input(case, tmp_path):
    """Random weights, a real signal several windows long: the windows combine to the whole embedding."""
    params = dict(channels=8, skip_channels=8, num_stacks=2, layers_per_stack=3, stack_pool_sizes=[4],
                  final_channels=16, **WINDOW_CASES[case])
    signal = np.random.default_rng(0).standard_normal(9001).astype(np.float32)
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.set_random_seed(1)
        whole = wavenet.embed(tf.constant(signal[None]), tf.constant([signal.size]), params=params, training=False)
        with tf.compat.v1.Session(graph=graph) as session:
            session.run(tf.compat.v1.global_variables_initializer())
            expected = session.run(whole)[0]
            checkpoint = tf.compat.v1.train.Saver().save(session, str(tmp_path / "model.ckpt"))
    unit = wavenet.window_geometry(params)["unit"]
    got = _embed_in_windows(params, signal, checkpoint, window=4 * unit)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    if params.get("pooling") == "avg":  # (a max over the whole input rarely falls at a window's start)
        # Without its context a window's first steps see zeros instead of the audio before them.
        blind = _embed_in_windows(params, signal, checkpoint, window=4 * unit, context=0)
        assert not np.allclose(blind, expected, rtol=1e-5, atol=1e-5)


def test_long_file_streamed_in_windows_equals_whole(embedder, tmp_path, monkeypatch):
    """A file over the streaming threshold is decoded block by block and embedded in windows, and gives
    the vector of the whole excerpt embedded at once."""
    from musicsim import embedder as embedder_module

    rng = np.random.default_rng(3)
    seconds = 7.0
    t = np.arange(int(seconds * 44100)) / 44100
    stereo = np.stack([np.sin(2 * np.pi * 220 * t) * (0.5 + 0.4 * np.sin(t)), 0.1 * rng.standard_normal(t.size)], 1)
    path = str(tmp_path / "long.wav")
    sf.write(path, stereo.astype(np.float32), 44100)
    pooled = mean_pool(load_audio(path, sample_rate=SAMPLE_RATE), size=embedder.pool_size)
    streamed = np.concatenate(list(iter_pooled_blocks(path, sample_rate=SAMPLE_RATE, pool_size=embedder.pool_size,
                                                      max_seconds=None, min_seconds=1.0, block_seconds=0.77)))
    np.testing.assert_allclose(streamed, pooled, atol=1e-6)

    whole = load_embedder(embedder.model_dir, window_seconds=0)
    expected, _, _ = whole.embed_paths(paths=[path], workers=1, progress=False)
    monkeypatch.setattr(embedder_module, "STREAM_ABOVE_SECONDS", 2.0)
    windowed = load_embedder(embedder.model_dir, window_seconds=0.5)
    got, ok, skipped = windowed.embed_paths(paths=[path, str(tmp_path / "none.wav")], workers=1, progress=False)
    assert ok == [0] and skipped == [(str(tmp_path / "none.wav"), "file not found")]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_a_silent_long_file_is_skipped_after_its_windows(embedder, tmp_path, monkeypatch):
    from musicsim import embedder as embedder_module

    path = str(tmp_path / "silent.wav")
    sf.write(path, np.zeros(SAMPLE_RATE * 4, np.float32), SAMPLE_RATE)
    monkeypatch.setattr(embedder_module, "STREAM_ABOVE_SECONDS", 1.0)
    windowed = load_embedder(embedder.model_dir, window_seconds=0.5)
    _, ok, skipped = windowed.embed_paths(paths=[path], workers=1, progress=False)
    assert ok == [] and "silent" in skipped[0][1]
    with pytest.raises(AudioDecodeError, match="silent"):
        list(iter_pooled_blocks(path, sample_rate=SAMPLE_RATE, pool_size=5, max_seconds=None, min_seconds=1.0))


def test_chromagram_in_windows_has_the_whole_files_frames():
    """With the tuning fixed (a tone at A440 estimates 0 everywhere) the windowed frames are the whole ones."""
    from musicsim.chroma import chroma_sequence

    rate, hop = 11025, 512
    t = np.arange(int(9.3 * rate)) / rate
    signal = (np.sin(2 * np.pi * 440 * t) + 0.5 * np.sin(2 * np.pi * 660 * t * (1 + (t > 4)))).astype(np.float32)
    whole = chroma_sequence(audio=signal, sample_rate=rate, hop_length=hop)
    blocks = (signal[i:i + 3000] for i in range(0, signal.size, 3000))
    windowed, samples, peak = windowed_chroma(blocks=blocks, sample_rate=rate, hop_length=hop, window_samples=2 * rate)
    assert samples == signal.size and peak == pytest.approx(float(np.max(np.abs(signal))))
    assert windowed.shape == whole.shape
    np.testing.assert_allclose(windowed, whole, atol=1e-5)


def test_fitted_features_in_windows_are_bounded_and_exact_under_two_windows(tmp_path):
    """Under two windows the features are the whole excerpt's; longer, the means over frames still agree
    while the other statistics are the windows' (so the vectors differ)."""
    from musicsim import features as F

    rate = 8000
    t = np.arange(int(7.0 * rate)) / rate
    signal = (0.4 * np.sin(2 * np.pi * (200 + 40 * np.floor(t)) * t)
              + 0.05 * np.random.default_rng(0).standard_normal(t.size)).astype(np.float32)
    path = str(tmp_path / "track.wav")
    sf.write(path, signal, rate)
    audio = load_audio(path, sample_rate=rate)
    whole = F.mfcc_mean_std(audio=audio, sample_rate=rate)
    same = F.windowed_features(path=path, feature_fn=F.mfcc_mean_std, sample_rate=rate, max_seconds=None,
                               window_seconds=4.0)
    np.testing.assert_allclose(same, whole, rtol=1e-6, atol=1e-6)
    windowed = F.windowed_features(path=path, feature_fn=F.mfcc_mean_std, sample_rate=rate, max_seconds=None,
                                   window_seconds=2.0)
    half = whole.size // 2  # mfcc_mean_std: the means, then the standard deviations
    np.testing.assert_allclose(windowed[:half], whole[:half], rtol=0.05, atol=0.5)
    assert not np.allclose(windowed[half:], whole[half:], rtol=1e-3)
    vectors, ok, skipped = F.extract_many(paths=[path, str(tmp_path / "none.wav")], feature_fn="mfcc",
                                          sample_rate=rate, workers=1, progress=False, window_seconds=2.0)
    assert ok == [0] and skipped == [(str(tmp_path / "none.wav"), "file not found")]
    np.testing.assert_allclose(vectors[0], windowed, rtol=1e-6)


def test_rnn_decoding_streams_and_matches_the_runs_chromagram(tmp_path):
    """The rnn's input decoded block by block equals rnn.load_tracks' chromagram for a track under two windows."""
    from musicsim.data.audio import load_excerpt
    from musicsim.chroma import ChromaSettings, chroma_sequence, decode_chroma

    rate = 11025
    t = np.arange(int(25.0 * 44100)) / 44100
    path = str(tmp_path / "song.wav")
    sf.write(path, (0.3 * np.sin(2 * np.pi * 330 * t)).astype(np.float32), 44100)
    settings = ChromaSettings(sample_rate=rate, hop_length=512, max_seconds=20.0, window_seconds=15.0, min_seconds=1.0)
    result = decode_chroma(path, settings)
    expected = chroma_sequence(audio=load_excerpt(path=path, sample_rate=rate, max_seconds=20.0), sample_rate=rate,
                               hop_length=512)
    np.testing.assert_allclose(result.pooled, expected, atol=1e-5)
    assert result.seconds == pytest.approx(20.0, abs=1e-3)
    (tmp_path / "empty.wav").write_bytes(b"")
    assert "empty file" in decode_chroma(str(tmp_path / "empty.wav"), settings).reason


def test_export_window_flag_overrides_the_runs_window(tiny_run, music, tmp_path):
    """--window_seconds=0 embeds whole files; WaveNet gives the same vectors as in the run's 1 s windows, and
    the state records the window, so a changed window is not mixed with the old one's vectors."""
    vectors = {}
    for flag in ("", "--window_seconds=0"):
        output = str(tmp_path / f"out{flag.replace('-', '_').replace('=', '')}.parquet")
        assert export.main(["export", f"--model_dir={tiny_run}", f"--audio={music}", f"--output={output}",
                            "--workers=1", "--noprogress", *filter(None, [flag])]) == 0
        with open(output_paths(output)["state"]) as f:
            header = json.loads(f.readline())
        vectors[header["window_seconds"]] = np.load(output_paths(output)["npy"])
    assert sorted(vectors, key=str) == [1.0, None]
    np.testing.assert_allclose(vectors[1.0], vectors[None], rtol=1e-5, atol=1e-6)
