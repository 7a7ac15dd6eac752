"""musicsim.embedder and experiments.export: embed files with a trained run, batch export, SavedModels."""
from __future__ import annotations

import csv
import json
import os
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from experiments import export
from experiments import export_embeddings as embeddings_module
from experiments.export import export_embeddings, export_saved_model, output_paths
from musicsim.data.audio import load_audio, mean_pool
from musicsim.data.dataset import read_catalog
from musicsim.embedder import LearnedEmbedder, load_embedder
from musicsim.index import load_embeddings
from test_musicnn import musicnn_files  # noqa: F401 - the musicnn weights (wheel cache), for the pretrained engine

TINY_WAVENET = dict(channels=8, skip_channels=8, num_stacks=2, layers_per_stack=3, stack_pool_sizes=[4],
                    final_channels=16)
SAMPLE_RATE = 8000  # the synthetic dataset's decode rate
POOL_SIZE = 5
REAL_ITER_EMBEDDINGS = LearnedEmbedder.iter_embeddings  # the tests spy on it


def train_tiny_run(*, dataset_dir: str, model_dir: str) -> str:
    """A tiny wavenet run on the synthetic dataset (about 15 s); reused when it already finished.

    test_search.py trains into the same session folder, so the suite trains it once.
    """
    if not os.path.exists(os.path.join(model_dir, "results.json")):
        from experiments.run import RunConfig, run

        run(RunConfig(model="wavenet", dataset_dir=dataset_dir, model_dir=model_dir, params=dict(TINY_WAVENET),
                      max_steps=20, crop_seconds=1.0, eval_seconds=None, save_checkpoints_steps=10,
                      early_stopping_patience=0, max_minutes=2, eval_repeats=1, workers=1))
    return model_dir


@pytest.fixture(scope="session")
def tiny_run(synthetic_dataset, tmp_path_factory) -> str:
    return train_tiny_run(dataset_dir=synthetic_dataset,
                          model_dir=str(tmp_path_factory.getbasetemp() / "tiny_wavenet_run"))


@pytest.fixture(scope="module")
def embedder(tiny_run) -> LearnedEmbedder:
    return load_embedder(tiny_run)


@pytest.fixture(scope="module")
def run_vectors(tiny_run) -> dict[str, np.ndarray]:
    """The run's own embeddings (embeddings.npz), by track id."""
    with np.load(os.path.join(tiny_run, "embeddings.npz")) as npz:
        return dict(zip(npz["track_ids"].tolist(), npz["embeddings"]))


def _write_bad_files(folder) -> dict[str, str]:
    """Files that cannot be embedded, by name, with a phrase their skip reason must hold."""
    os.makedirs(folder, exist_ok=True)
    (folder / "empty.wav").write_bytes(b"")
    (folder / "notes.mp3").write_text("this is a text file, not an mp3\n" * 20)
    (folder / "corrupt.flac").write_bytes(np.random.default_rng(0).bytes(20000))
    sf.write(str(folder / "short.wav"), 0.3 * np.ones(SAMPLE_RATE // 4, np.float32), SAMPLE_RATE)
    return {"empty.wav": "empty file", "notes.mp3": "not audio", "corrupt.flac": "not audio",
            "short.wav": "too short"}


# ------------------------------------------------------------------------------------- embedder

def test_embedder_describes_the_run(embedder, tiny_run, run_vectors):
    assert (embedder.name, embedder.kind, embedder.similarity) == ("wavenet", "learned", "cosine")
    assert embedder.dim == TINY_WAVENET["final_channels"] == next(iter(run_vectors.values())).shape[0]
    assert embedder.model_dir == os.path.abspath(tiny_run)
    assert (embedder.sample_rate, embedder.pool_size, embedder.max_seconds) == (SAMPLE_RATE, POOL_SIZE, None)
    with open(os.path.join(tiny_run, "results.json")) as f:
        exported = json.load(f)["checkpoint"]
    assert embedder.version == exported and exported in ("model.ckpt-10", "model.ckpt-20")


def test_embedder_uses_the_checkpoint_the_run_exported_with(tiny_run, tmp_path, synthetic_dataset):
    """A copy of the run recording either checkpoint embeds with that one; without a record (or when the
    recorded checkpoint is gone) it falls back to the latest."""
    copy = tmp_path / "run"
    shutil.copytree(tiny_run, copy)
    results_path = copy / "results.json"
    results = json.loads(results_path.read_text())
    paths = [e.path for e in read_catalog(synthetic_dataset)[:2]]
    vectors = {}
    for recorded, expected in (("model.ckpt-10", "model.ckpt-10"), ("model.ckpt-20", "model.ckpt-20"),
                               (None, "model.ckpt-20"), ("model.ckpt-999", "model.ckpt-20")):
        results_path.write_text(json.dumps(dict(results, checkpoint=recorded)))
        embedder = load_embedder(str(copy))
        assert embedder.version == expected
        vectors[recorded] = embedder.embed_paths(paths=paths, workers=1, progress=False)[0]
    assert not np.allclose(vectors["model.ckpt-10"], vectors["model.ckpt-20"])  # each checkpoint its own vectors
    for fallback in (None, "model.ckpt-999"):
        np.testing.assert_allclose(vectors[fallback], vectors["model.ckpt-20"], atol=1e-6)


@pytest.mark.parametrize("workers, batch_size, count", [(1, 8, None), (2, 3, 7)])
def test_embed_paths_equals_the_runs_own_embeddings(embedder, synthetic_dataset, run_vectors, workers, batch_size,
                                                    count):
    catalog = read_catalog(synthetic_dataset)[:count]
    vectors, ok_indices, skipped = embedder.embed_paths(paths=[e.path for e in catalog], batch_size=batch_size,
                                                        workers=workers, progress=False)
    assert skipped == [] and ok_indices == list(range(len(catalog)))
    expected = np.stack([run_vectors[e.track_id] for e in catalog])
    np.testing.assert_allclose(vectors, expected, rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def mixed_batch(embedder, synthetic_dataset, tmp_path_factory):
    """embed_paths over good files with every kind of bad file between them."""
    folder = tmp_path_factory.mktemp("bad_files")
    reasons = _write_bad_files(folder)
    good = [e.path for e in read_catalog(synthetic_dataset)[:3]]
    paths = [good[0], *(str(folder / name) for name in reasons), good[1], str(folder / "missing.ogg"), good[2]]
    reasons["missing.ogg"] = "file not found"
    return paths, reasons, embedder.embed_paths(paths=paths, batch_size=2, workers=1, progress=False)


def test_embed_paths_keeps_the_good_files_in_order(mixed_batch, run_vectors, synthetic_dataset):
    paths, _, (vectors, ok_indices, skipped) = mixed_batch
    assert ok_indices == [0, 5, 7]
    assert [p for p, _ in skipped] == [p for i, p in enumerate(paths) if i not in ok_indices]
    ids = {e.path: e.track_id for e in read_catalog(synthetic_dataset)}
    np.testing.assert_allclose(vectors, np.stack([run_vectors[ids[paths[i]]] for i in ok_indices]), atol=1e-6)


@pytest.mark.parametrize("name", ["empty.wav", "notes.mp3", "corrupt.flac", "short.wav", "missing.ogg"])
def test_embed_paths_skips_bad_files_with_their_reason(mixed_batch, name):
    _, reasons, (_, _, skipped) = mixed_batch
    reason = dict((os.path.basename(p), r) for p, r in skipped)[name]
    assert reasons[name] in reason


def test_load_embedder_errors(tmp_path, tiny_run):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_embedder(str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="no run"):
        load_embedder(str(tmp_path))
    baseline = tmp_path / "baseline"
    baseline.mkdir()
    (baseline / "run.json").write_text(json.dumps({"model": "random", "kind": "baseline", "config": {}}))
    with pytest.raises(ValueError, match="baseline"):
        load_embedder(str(baseline))
    untrained = tmp_path / "untrained"
    untrained.mkdir()
    shutil.copy(os.path.join(tiny_run, "run.json"), untrained / "run.json")
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        load_embedder(str(untrained))


@pytest.mark.parametrize("kwargs, message", [
    (dict(paths="one.wav"), "single path"),
    (dict(paths=["a.wav"], batch_size=0), "batch_size"),
    (dict(paths=["a.wav"], workers=0), "workers"),
])
def test_embed_paths_rejects_invalid_arguments(embedder, kwargs, message):
    with pytest.raises(ValueError, match=message):
        embedder.embed_paths(progress=False, **kwargs)


def test_fitted_run_embeds_through_its_model(synthetic_dataset, tmp_path):
    from musicsim.models.mfcc import MFCCModel

    paths = [e.path for e in read_catalog(synthetic_dataset, split="train")][:3]
    model = MFCCModel(sample_rate=SAMPLE_RATE, max_seconds=None, workers=1, progress=False).fit(paths=paths)
    model.save(str(tmp_path / "mfcc"))
    fitted = load_embedder(str(tmp_path / "mfcc"))
    assert (fitted.name, fitted.kind, fitted.similarity, fitted.dim) == ("mfcc", "fitted", "euclidean", 40)
    vectors, ok_indices, skipped = fitted.embed_paths(paths=[paths[0], str(tmp_path / "none.wav"), paths[1]],
                                                      workers=1, progress=False)
    assert ok_indices == [0, 2] and skipped == [(str(tmp_path / "none.wav"), "file not found")]
    np.testing.assert_allclose(vectors, model.embed_paths(paths=[paths[0], paths[1]])[0], atol=1e-6)
    with pytest.raises(ValueError, match="only learned models"):
        export_saved_model(model_dir=str(tmp_path / "mfcc"), export_dir=str(tmp_path / "serving"))


# ------------------------------------------------------------------------------------- export

@pytest.fixture
def collection(synthetic_dataset, tmp_path):
    """A folder of 4 good tracks (two albums + one at the top), bad files and a non-audio file."""
    root = tmp_path / "collection"
    audio = os.path.join(os.path.dirname(synthetic_dataset), "audio")
    good = {"low/t0": "low_sine/t0.wav", "low/t1": "low_sine/t1.wav", "noisy/sub/t2": "noisy_mid/t2.wav",
            "top": "high_pulse/t3.wav"}
    for track_id, source in good.items():
        os.makedirs(root / os.path.dirname(track_id), exist_ok=True)
        shutil.copy(os.path.join(audio, source), root / f"{track_id}.wav")
    bad = _write_bad_files(root / "low")
    (root / "cover.txt").write_text("not audio at all")
    source_ids = {track_id: source.replace(".wav", "").replace("/", "__") for track_id, source in good.items()}
    return root, source_ids, {f"low/{os.path.splitext(n)[0]}": r for n, r in bad.items()}


def test_export_folder_writes_parquet_npy_and_skipped(embedder, collection, run_vectors, tmp_path, tiny_run):
    root, source_ids, bad = collection
    output = str(tmp_path / "out" / "emb.parquet")
    summary = export_embeddings(model_dir=tiny_run, audio=str(root), output=output, workers=1, progress=False,
                                embedder=embedder)
    assert (summary.embedded, summary.newly_embedded, summary.ignored) == (4, 4, 1)

    table = pq.read_table(output)
    assert table.column_names == ["track_id", "path", "embedding", "model", "duration_s", "group"]
    assert str(table.schema.field("embedding").type) == "list<element: float>"
    rows = table.to_pylist()
    assert sorted(r["track_id"] for r in rows) == sorted(source_ids)
    for row in rows:
        assert row["path"] == str(root / f"{row['track_id']}.wav")
        assert row["model"] == "wavenet"
        assert row["group"] == (os.path.dirname(row["track_id"]) or None)
        assert row["duration_s"] == pytest.approx(sf.info(row["path"]).duration)
        np.testing.assert_allclose(row["embedding"], run_vectors[source_ids[row["track_id"]]], atol=1e-6)

    with open(output_paths(output)["skipped"], newline="") as f:
        skipped = {r["track_id"]: r["reason"] for r in csv.DictReader(f)}
    assert set(skipped) == set(bad)
    for track_id, phrase in bad.items():
        assert phrase in skipped[track_id]

    ids, vectors, metadata = load_embeddings(output)
    npy_ids, npy_vectors, _ = load_embeddings(output_paths(output)["npy"])
    assert ids == npy_ids == [r["track_id"] for r in rows]
    assert vectors.shape == (4, embedder.dim)
    np.testing.assert_array_equal(vectors, npy_vectors)
    assert metadata["group"] == [r["group"] for r in rows]


def _spy_on_embedding(monkeypatch) -> list[list[str]]:
    """Record the paths each export hands to the embedder."""
    calls: list[list[str]] = []
    original = REAL_ITER_EMBEDDINGS

    def spy(self, *, paths, **kwargs):
        calls.append(list(paths))
        yield from original(self, paths=paths, **kwargs)

    monkeypatch.setattr(LearnedEmbedder, "iter_embeddings", spy)
    return calls


def test_export_resumes_and_embeds_only_new_or_changed_files(embedder, collection, tmp_path, tiny_run,
                                                             monkeypatch, synthetic_dataset):
    root, source_ids, _ = collection
    output = str(tmp_path / "emb.parquet")
    common = dict(model_dir=tiny_run, audio=str(root), output=output, workers=1, progress=False, embedder=embedder)
    calls = _spy_on_embedding(monkeypatch)
    export_embeddings(**common)
    first = pq.read_table(output).to_pylist()
    assert len(calls[0]) == 4 + 4  # good and bad audio files; the .txt is never handed over

    summary = export_embeddings(**common)
    assert calls[1] == [] and (summary.embedded, summary.newly_embedded) == (4, 0)
    assert pq.read_table(output).to_pylist() == first

    new = root / "low" / "t5.wav"
    shutil.copy(os.path.join(os.path.dirname(synthetic_dataset), "audio", "low_sine", "t5.wav"), new)
    changed = root / "top.wav"
    shutil.copy(os.path.join(os.path.dirname(synthetic_dataset), "audio", "noisy_mid", "t6.wav"), changed)
    os.remove(root / "low" / "t1.wav")
    summary = export_embeddings(**common)
    assert sorted(calls[2]) == sorted([str(new), str(changed)])
    assert (summary.embedded, summary.newly_embedded) == (4, 2)
    rows = {r["track_id"]: r for r in pq.read_table(output).to_pylist()}
    assert sorted(rows) == ["low/t0", "low/t5", "noisy/sub/t2", "top"]
    old_top = next(r for r in first if r["track_id"] == "top")
    assert not np.allclose(rows["top"]["embedding"], old_top["embedding"])

    os.remove(output)  # the outputs are rebuilt from the state file alone
    export_embeddings(**common)
    assert calls[3] == [] and {r["track_id"]: r for r in pq.read_table(output).to_pylist()} == rows


def test_interrupted_export_resumes_where_it_stopped(embedder, collection, tmp_path, tiny_run, monkeypatch):
    root, _, _ = collection
    output = str(tmp_path / "emb.parquet")

    class Crash(Exception):
        pass

    def interrupted(self, *, paths, **kwargs):
        for count, result in enumerate(REAL_ITER_EMBEDDINGS(self, paths=paths, **kwargs)):
            if count == 3:
                raise Crash("killed after 3 files")
            yield result

    monkeypatch.setattr(LearnedEmbedder, "iter_embeddings", interrupted)
    with pytest.raises(Crash):
        export_embeddings(model_dir=tiny_run, audio=str(root), output=output, workers=1, progress=False,
                          embedder=embedder)
    assert not os.path.exists(output)
    with open(output_paths(output)["state"], "a") as f:
        f.write('{"path": "torn by a crash')  # a half-written last line is ignored
    calls = _spy_on_embedding(monkeypatch)
    summary = export_embeddings(model_dir=tiny_run, audio=str(root), output=output, workers=1, progress=False,
                                embedder=embedder)
    assert len(calls[0]) == 8 - 3 and summary.embedded == 4


def test_state_of_another_model_or_checkpoint_is_not_reused(tmp_path):
    header = {"format_version": 1, "model": "wavenet", "model_dir": "/runs/a", "version": "model.ckpt-20", "dim": 16}
    record = {"path": "/music/a.wav", "size": 10, "mtime_ns": 5, "embedding": [0.5] * 16, "reason": None,
              "duration_s": 3.0}
    state = str(tmp_path / "emb.state.jsonl")
    embeddings_module._write_state(state, header, [record, dict(record, path="/music/b.wav")])
    assert sorted(export.read_state(state, header=header)) == ["/music/a.wav", "/music/b.wav"]
    for key, value in (("version", "model.ckpt-10"), ("model_dir", "/runs/b"), ("dim", 8)):
        assert export.read_state(state, header=dict(header, **{key: value})) == {}
    assert export.read_state(str(tmp_path / "none.jsonl"), header=header) == {}


def test_folder_and_manifest_listings(tmp_path):
    for name in ("a/x.wav", "a/x.mp3", "a/b/y.FLAC", "top.ogg", "a/cover.jpg", ".hidden/z.wav", "a/.z.wav"):
        os.makedirs(tmp_path / "music" / os.path.dirname(name), exist_ok=True)
        (tmp_path / "music" / name).write_bytes(b"")
    listing = export.list_audio(str(tmp_path / "music"))
    assert [(e.track_id, e.group) for e in listing.entries] == [
        ("top", None), ("a/x.mp3", "a"), ("a/x.wav", "a"), ("a/b/y", "a/b")]
    assert listing.ignored == 1

    manifest = tmp_path / "music" / "list.csv"
    manifest.write_text("path,labels\na/x.wav,rock|pop\n/abs/song.mp3,\n,jazz\n")
    listing = export.list_audio(str(manifest))
    assert [(e.track_id, e.path, e.group) for e in listing.entries] == [
        ("a/x", str(tmp_path / "music" / "a/x.wav"), "rock|pop"), ("/abs/song", "/abs/song.mp3", None)]
    assert [s["reason"] for s in listing.skipped] == ["line 4: empty path"]
    assert [e.group for e in export.list_audio(str(manifest), group_column="none").entries] == [None, None]
    with pytest.raises(ValueError, match="no column 'genre'"):
        export.list_audio(str(manifest), group_column="genre")


def test_export_from_a_manifest(embedder, synthetic_dataset, tmp_path, tiny_run, run_vectors):
    audio = os.path.join(os.path.dirname(synthetic_dataset), "audio")
    for source in ("low_sine/t0.wav", "noisy_mid/t1.wav"):
        os.makedirs(tmp_path / os.path.dirname(source), exist_ok=True)
        shutil.copy(os.path.join(audio, source), tmp_path / source)
    manifest = str(tmp_path / "manifest.csv")  # paths relative to the manifest's folder
    with open(manifest, "w", newline="") as f:
        csv.writer(f).writerows([("path", "label_album", "track_id"), ("low_sine/t0.wav", "low_sine", "id0"),
                                 ("noisy_mid/t1.wav", "noisy_mid", "id1"), ("missing/t9.wav", "missing", "id2"),
                                 ("noisy_mid/t1.wav", "noisy_mid", "id0")])
    output = str(tmp_path / "manifest.parquet")
    summary = export_embeddings(model_dir=tiny_run, audio=manifest, output=output, workers=1, progress=False,
                                embedder=embedder)
    exported = pq.read_table(output).to_pylist()
    assert [(r["track_id"], r["group"]) for r in exported] == [("id0", "low_sine"), ("id1", "noisy_mid")]
    assert [r["path"] for r in exported] == [str(tmp_path / "low_sine/t0.wav"), str(tmp_path / "noisy_mid/t1.wav")]
    np.testing.assert_allclose([r["embedding"] for r in exported],
                               [run_vectors["low_sine__t0"], run_vectors["noisy_mid__t1"]], atol=1e-6)
    reasons = sorted(s["reason"].split(" (")[0] for s in summary.skipped)
    assert reasons == ["duplicate track_id 'id0'", "file not found"]


def test_export_cli(tiny_run, collection, tmp_path, capsys):
    root, _, _ = collection
    output = str(tmp_path / "cli")  # .parquet is added
    status = export.main(["export", f"--model_dir={tiny_run}", f"--audio={root}", f"--output={output}",
                          "--workers=1", "--batch_size=4", "--noprogress"])
    assert status == 0
    printed = capsys.readouterr().out
    assert "4 tracks in" in printed and "4 skipped" in printed and "empty file (0 bytes)" in printed
    assert len(load_embeddings(output + ".parquet")[0]) == 4


@pytest.mark.parametrize("args, message", [
    ([], "--model_dir is required"),
    (["--model_dir=RUN"], "give --audio and --output"),
    (["--model_dir=RUN", "--audio=/no/such/folder", "--output=x.parquet"], "does not exist"),
    (["--model_dir=RUN", "--bogus=1"], "Unknown command line flag"),
])
def test_export_cli_errors(tiny_run, tmp_path, capsys, args, message):
    args = [a.replace("RUN", tiny_run) for a in args]
    assert export.main(["export", *args]) == 2
    assert message in capsys.readouterr().err


def test_export_rejects_a_file_that_is_not_a_manifest(tiny_run, tmp_path, embedder):
    wav = tmp_path / "a.wav"
    wav.write_bytes(b"")
    with pytest.raises(ValueError, match="neither a folder nor a manifest"):
        export_embeddings(model_dir=tiny_run, audio=str(wav), output=str(tmp_path / "o.parquet"), embedder=embedder)
    bad_csv = tmp_path / "m.csv"
    bad_csv.write_text("file,album\na.wav,x\n")
    with pytest.raises(ValueError, match="no 'path' column"):
        export_embeddings(model_dir=tiny_run, audio=str(bad_csv), output=str(tmp_path / "o.parquet"),
                          embedder=embedder)


# ------------------------------------------------------------------------------------- SavedModel

def _padded(signals: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    batch = np.zeros((len(signals), max(s.size for s in signals)), np.float32)
    for i, s in enumerate(signals):
        batch[i, : s.size] = s
    return batch, np.array([s.size for s in signals], np.int32)


@pytest.mark.parametrize("lengths, pool_size", [([12, 7, 10], 5), ([5, 1], 5), ([9, 3], 1), ([8, 8], 4)])
def test_the_raw_receivers_pooling_is_the_datasets_mean_pool(lengths, pool_size):
    """The raw SavedModel pools in the graph with wavenet.masked_pool(avg): data_prep's mean pool exactly."""
    import tensorflow as tf

    from musicsim.models.wavenet import lengths_after_pooling, masked_pool

    rng = np.random.default_rng(len(lengths) + pool_size)
    signals = [rng.standard_normal(n).astype(np.float32) for n in lengths]
    batch, length = _padded(signals)
    for i, n in enumerate(lengths):
        batch[i, n:] = 99.0  # padding must not leak into a track's last window
    pooled = masked_pool(tf.constant(batch[:, :, None]), tf.constant(length), pool=pool_size,
                         pooling="avg").numpy()[:, :, 0]
    pooled_length = lengths_after_pooling(tf.constant(length), pool_size).numpy()
    for i, signal in enumerate(signals):
        expected = mean_pool(signal, size=pool_size)
        assert int(pooled_length[i]) == expected.size
        np.testing.assert_allclose(pooled[i, : expected.size], expected, rtol=1e-6)
        if pool_size > 1:
            assert np.all(pooled[i, expected.size:] == 0)


def test_saved_models_answer_like_predict(embedder, tiny_run, synthetic_dataset, tmp_path):
    import tensorflow as tf

    written = export_saved_model(model_dir=tiny_run, export_dir=str(tmp_path / "serving"))
    assert set(written) == {"pooled", "raw"}
    with open(tmp_path / "serving" / "serving.json") as f:
        serving = json.load(f)
    assert (serving["sample_rate"], serving["pool_size"], serving["dim"]) == (SAMPLE_RATE, POOL_SIZE, embedder.dim)

    # Tracks of different lengths, so padding is exercised in both graphs.
    paths = [e.path for e in read_catalog(synthetic_dataset)][:4]
    expected, _, _ = embedder.embed_paths(paths=paths, workers=1, progress=False)
    raw = [load_audio(p, sample_rate=SAMPLE_RATE) for p in paths]
    assert len({r.size for r in raw}) > 1

    pooled_fn = tf.saved_model.load(written["pooled"]).signatures["serving_default"]
    audio, length = _padded([mean_pool(r, size=POOL_SIZE) for r in raw])
    got = pooled_fn(audio=tf.constant(audio), length=tf.constant(length))["embedding"].numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)

    raw_fn = tf.saved_model.load(written["raw"]).signatures["serving_default"]
    audio, length = _padded(raw)
    got = raw_fn(raw_audio=tf.constant(audio), raw_length=tf.constant(length))["embedding"].numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert sorted(os.listdir(tmp_path)) == ["serving"]  # no staging folder left behind


# ------------------------------------------------------------------------------------- Beam (issue 20 item 5)

def _fitted_run(model: str, *, synthetic_dataset: str, folder: str, tiny_run: str, request) -> str:
    """A run folder of ``model``: the tiny WaveNet run, or a fitted model saved on three train files."""
    if model == "wavenet":
        return tiny_run
    paths = [e.path for e in read_catalog(synthetic_dataset, split="train")][:3]
    if model == "mfcc":
        from musicsim.models.mfcc import MFCCModel

        fitted = MFCCModel(sample_rate=SAMPLE_RATE, max_seconds=None, workers=1, progress=False)
    else:
        request.getfixturevalue("musicnn_files")  # the weights, or a skip where they cannot be fetched
        from musicsim.models.pretrained_engine import PretrainedEngine

        fitted = PretrainedEngine()
        fitted.workers, fitted.progress = 1, False
    fitted.fit(paths=paths).save(folder)
    return folder


@pytest.mark.parametrize("model, workers", [("mfcc", 2), ("wavenet", 2), ("pretrained", 1)])
def test_beam_export_writes_what_the_local_export_writes(model, workers, collection, synthetic_dataset, tiny_run,
                                                         tmp_path, request):
    root, source_ids, bad = collection
    model_dir = _fitted_run(model, synthetic_dataset=synthetic_dataset, folder=str(tmp_path / model),
                            tiny_run=tiny_run, request=request)
    outputs = {}
    for runner, beam_args in (("local", []), ("DirectRunner", [f"--direct_num_workers={workers}"])):
        output = str(tmp_path / runner / "emb.parquet")
        summary = export_embeddings(model_dir=model_dir, audio=str(root), output=output, workers=1, progress=False,
                                    runner=runner, beam_args=beam_args, batch_size=4)
        assert (summary.embedded, summary.newly_embedded, len(summary.skipped)) == (4, 4, len(bad))
        outputs[runner] = output_paths(output)
    local, beam = outputs["local"], outputs["DirectRunner"]
    local_table, beam_table = pq.read_table(local["parquet"]).to_pylist(), pq.read_table(beam["parquet"]).to_pylist()
    assert [{k: v for k, v in r.items() if k != "embedding"} for r in beam_table] == \
        [{k: v for k, v in r.items() if k != "embedding"} for r in local_table]
    assert sorted(r["track_id"] for r in beam_table) == sorted(source_ids)
    local_vectors, beam_vectors = np.load(local["npy"]), np.load(beam["npy"])
    if model == "mfcc":  # file by file: nothing to round differently
        np.testing.assert_array_equal(beam_vectors, local_vectors)
    else:  # files stacked into batches: other company, other rounding
        np.testing.assert_allclose(beam_vectors, local_vectors, rtol=1e-4, atol=2e-5)
    np.testing.assert_array_equal(np.array([r["embedding"] for r in beam_table], np.float32), beam_vectors)
    for name in ("ids", "meta", "skipped"):
        with open(local[name]) as a, open(beam[name]) as b:
            assert a.read() == b.read(), name
    # The state files hold the same records: a later export of either kind resumes from the other's.
    with open(local["state"]) as a, open(beam["state"]) as b:
        local_state, beam_state = [json.loads(l) for l in a], [json.loads(l) for l in b]
    assert local_state[0] == beam_state[0]
    assert [{k: v for k, v in r.items() if k != "embedding"} for r in beam_state[1:]] == \
        [{k: v for k, v in r.items() if k != "embedding"} for r in local_state[1:]]
    again = export_embeddings(model_dir=model_dir, audio=str(root), output=beam["parquet"], workers=1, progress=False)
    assert (again.embedded, again.newly_embedded) == (4, 0)


@pytest.mark.parametrize("args, message", [
    (["--runner=DirectRunner", "--no_such_beam_option=1"], "unknown Beam pipeline options"),
    (["--runner=NoSuchRunner"], "runner"),
    (["--direct_num_workers=2"], "Unknown command line flag"),
])
def test_beam_export_cli_errors(tiny_run, collection, tmp_path, capsys, args, message):
    root, _, _ = collection
    status = export.main(["export", f"--model_dir={tiny_run}", f"--audio={root}",
                          f"--output={tmp_path / 'x.parquet'}", "--noprogress", *args])
    assert status == 2
    assert message in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "x.parquet")


def test_beam_export_cli(tiny_run, collection, tmp_path, capsys):
    root, _, _ = collection
    output = str(tmp_path / "cli.parquet")
    status = export.main(["export", f"--model_dir={tiny_run}", f"--audio={root}", f"--output={output}",
                          "--noprogress", "--runner=DirectRunner", "--direct_running_mode=in_memory",
                          "--direct_num_workers=1"])
    assert status == 0, capsys.readouterr().err
    assert "4 tracks in" in capsys.readouterr().out
    assert len(load_embeddings(output)[0]) == 4
