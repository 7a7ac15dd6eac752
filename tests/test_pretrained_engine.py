"""The one-pass engine (``--model=pretrained``): one decode and one spectrogram per file, every
checkpoint on the same patches, each block equal to the single-checkpoint model, label-free fit."""
from __future__ import annotations

import os

import numpy as np
import pytest
import soundfile as sf

from musicsim.models import engine_patches, musicnn
from musicsim.models import pretrained_engine as engine_module
from musicsim.models.pretrained_engine import BLOCK_DIMS, PretrainedEngine, all_block_means, raw_engine
from test_musicnn import _clip, musicnn_files  # noqa: F401 - the weights fixture (wheel cache) and test signal

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# 31 s: ten patches, more than one network batch (8), so the padded last batch is exercised.
LONG_SECONDS = 31.0


def _write(path, seconds: float, *, seed: int, sample_rate: int = 22050) -> str:
    """A test clip written at ``sample_rate`` (the engine resamples to 16 kHz)."""
    subtype = "PCM_16" if str(path).endswith(".flac") else "FLOAT"
    sf.write(path, _clip(seconds * sample_rate / musicnn.SAMPLE_RATE, seed=seed), sample_rate, subtype=subtype)
    return str(path)


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("engine_clips")
    return {"long": _write(folder / "long.wav", LONG_SECONDS, seed=31),
            "short": _write(folder / "short.wav", 2.0, seed=32),
            "mid": _write(folder / "mid.flac", 7.0, seed=33, sample_rate=44100)}


@pytest.fixture(scope="module")
def long_means(musicnn_files, clips) -> dict:  # noqa: F811 - the imported fixture
    return all_block_means(path=clips["long"])


@pytest.mark.parametrize("checkpoint", engine_module.CHECKPOINTS)
def test_each_block_equals_the_single_checkpoint_musicnn_model(long_means, clips, checkpoint):
    for layer in musicnn.LAYER_DIMS[musicnn.ARCHITECTURES[checkpoint]]:
        single = musicnn.MusicnnModel(checkpoint=checkpoint, layer=layer, max_seconds=None, progress=False)
        expected = single.embed_file(path=clips["long"])
        block = long_means[(checkpoint, layer)]
        assert block.shape == expected.shape == (BLOCK_DIMS[(checkpoint, layer)],)
        np.testing.assert_allclose(block, expected, atol=1e-5, rtol=0, err_msg=f"{checkpoint}/{layer}")


def test_log_mel_statistics_are_the_bands_over_the_tracks_patches(long_means, clips):
    from musicsim.data.audio import load_audio

    patches = np.concatenate(list(musicnn.iter_patch_blocks(blocks=[load_audio(clips["long"], sample_rate=16000)])))
    frames = patches.reshape(-1, musicnn.N_MELS).astype(np.float64)
    np.testing.assert_allclose(long_means[("logmel", "mean")], frames.mean(axis=0), atol=1e-6)
    np.testing.assert_allclose(long_means[("logmel", "std")], frames.std(axis=0), atol=1e-5)


class _Counts:
    """Counts whole-excerpt decodes, seeked decodes and their samples, STFT frames and patches through
    the networks during one embedding."""

    def __init__(self, monkeypatch):
        import librosa

        self.decodes, self.seeks, self.seeked_samples, self.stft_frames, self.network_patches = 0, 0, 0, 0, 0
        decode, seek, stft = engine_patches.iter_excerpt_blocks, engine_patches.iter_audio_blocks, librosa.stft
        networks_call = engine_module.BlockNetworks.__call__

        def counting_decode(*args, **kwargs):
            self.decodes += 1
            return decode(*args, **kwargs)

        def counting_seek(*args, **kwargs):
            self.seeks += 1
            for block in seek(*args, **kwargs):
                self.seeked_samples += block.size
                yield block

        def counting_stft(*args, **kwargs):
            result = stft(*args, **kwargs)
            self.stft_frames += result.shape[-1]
            return result

        def counting_networks(networks, *, patches):
            self.network_patches += patches.shape[0]
            return networks_call(networks, patches=patches)

        monkeypatch.setattr(engine_patches, "iter_excerpt_blocks", counting_decode)
        monkeypatch.setattr(engine_patches, "iter_audio_blocks", counting_seek)
        monkeypatch.setattr(librosa, "stft", counting_stft)
        monkeypatch.setattr(engine_module.BlockNetworks, "__call__", counting_networks)


@pytest.mark.parametrize("clip, seconds, max_patches, seek", [
    ("long", LONG_SECONDS, None, True), ("short", 2.0, None, True), ("mid", 7.0, None, True),
    ("long", LONG_SECONDS, 3, False), ("long", LONG_SECONDS, 3, True), ("mid", 7.0, 1, True)])
def test_one_decode_one_spectrogram_and_each_patch_through_the_networks_once(musicnn_files, clips, monkeypatch,
                                                                             clip, seconds, max_patches, seek):
    counts = _Counts(monkeypatch)
    engine = raw_engine(max_patches=max_patches, seek=seek)
    vectors, ok, skipped = engine.embed_paths(paths=[clips[clip]])
    assert ok == [0] and not skipped and vectors.shape == (1, engine.dim)
    patches = engine_module.expected_patches(seconds=seconds)
    used = patches if max_patches is None else min(patches, max_patches)
    if max_patches is not None and seek and used < patches:
        # Only around the sampled patches: one seek each, a patch and its margins, far less than the track.
        assert (counts.decodes, counts.seeks) == (0, used)
        around = musicnn.PATCH_SAMPLES + musicnn.N_FFT + 2 * engine_module.SEEK_MARGIN_SECONDS * musicnn.SAMPLE_RATE
        assert counts.seeked_samples <= used * around < seconds * musicnn.SAMPLE_RATE
    else:
        assert (counts.decodes, counts.seeks) == (1, 0)
    # Every frame of every patch used computed once (a sampled track: only the sampled patches' frames).
    assert counts.stft_frames == used * musicnn.PATCH_FRAMES
    assert counts.network_patches == used


@pytest.mark.parametrize("extension, subtype, sample_rate", [
    ("wav", "FLOAT", 22050), ("flac", "PCM_16", 44100), ("ogg", "VORBIS", 48000), ("ogg", "OPUS", 48000),
    ("mp3", "MPEG_LAYER_III", 44100)])
def test_seeking_to_the_sampled_patches_equals_the_whole_decode(musicnn_files, tmp_path, extension, subtype,
                                                               sample_rate):
    """Measured on real tracks (ogg, opus; 8 and 16 of 12-104 patches): every per-patch output within
    3.3e-4 of the whole decode's (track means within 1e-6 of their largest value). Asserted: 2e-3 per
    patch (so per mean), a margin for other formats and decoders."""
    if subtype not in sf.available_subtypes(extension.upper() if extension != "mp3" else "MP3"):
        pytest.skip(f"this libsndfile cannot write {extension}/{subtype}")
    path = str(tmp_path / f"track.{extension}")
    sf.write(path, _clip(40.0 * sample_rate / musicnn.SAMPLE_RATE, seed=70), sample_rate, subtype=subtype)
    for max_patches in (1, 5):
        whole = all_block_means(path=path, max_patches=max_patches, seek=False, per_patch=True)
        seeked = all_block_means(path=path, max_patches=max_patches, seek=True, per_patch=True)
        for block in whole:
            assert seeked[block].shape == whole[block].shape
            np.testing.assert_allclose(seeked[block], whole[block], atol=2e-3, rtol=0, err_msg=str(block))


@pytest.mark.parametrize("total, max_patches", [(10, 3), (80, 20), (81, 20), (5, 5), (4, 9), (1, 1), (1000, 7)])
def test_sampled_patches_are_spread_evenly_and_distinct(total, max_patches):
    chosen = engine_module.sampled_patches(total=total, max_patches=max_patches)
    if total <= max_patches:
        assert chosen is None
        return
    assert chosen.size == max_patches and len(set(chosen.tolist())) == max_patches
    assert np.all(np.diff(chosen) > 0) and chosen[0] >= 0 and chosen[-1] < total
    # Each lies in its own equal share of the track.
    shares = np.floor(chosen * max_patches / total)
    np.testing.assert_array_equal(shares, np.arange(max_patches))


def test_sampled_means_are_the_means_of_those_patches(musicnn_files, clips, long_means):  # noqa: F811
    every = all_block_means(path=clips["long"], per_patch=True)
    # The per-patch rows give the track's means, the log-mel std included (the docstring's formula).
    for block, rows in every.items():
        if block[0] != "logmel":
            np.testing.assert_allclose(rows.astype(np.float64).mean(axis=0), long_means[block], atol=1e-6)
    band_mean, band_std = every[("logmel", "mean")].astype(np.float64), every[("logmel", "std")].astype(np.float64)
    np.testing.assert_allclose(band_mean.mean(axis=0), long_means[("logmel", "mean")], atol=1e-5)
    np.testing.assert_allclose(np.sqrt((band_std ** 2 + band_mean ** 2).mean(axis=0) - band_mean.mean(axis=0) ** 2),
                               long_means[("logmel", "std")], atol=1e-4)
    sampled = all_block_means(path=clips["long"], max_patches=4, seek=False)
    chosen = engine_module.sampled_patches(total=engine_module.expected_patches(seconds=LONG_SECONDS), max_patches=4)
    for block in every:
        assert every[block].shape[0] == 10
        if block[0] != "logmel":
            np.testing.assert_allclose(sampled[block], every[block][chosen].astype(np.float64).mean(axis=0),
                                       atol=1e-6, err_msg=str(block))


def _bad_files(folder) -> dict[str, str]:
    """One file of each unusable kind -> a word its reason must hold."""
    corrupt = folder / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt " + os.urandom(64))
    silent = folder / "silent.wav"
    sf.write(silent, np.zeros(16000 * 4, np.float32), 16000)
    tiny = folder / "tiny.wav"
    sf.write(tiny, _clip(0.3, seed=40), 16000)
    text = folder / "notes.mp3"
    text.write_text("these are not the tracks you are looking for\n" * 20)
    empty = folder / "empty.ogg"
    empty.write_bytes(b"")
    return {str(corrupt): "", str(silent): "silent", str(tiny): "too short", str(text): "", str(empty): ""}


def test_a_track_embeds_the_same_alone_or_in_a_batch_and_bad_files_are_skipped(musicnn_files, clips, tmp_path):
    bad = _bad_files(tmp_path)
    engine = raw_engine()
    alone, ok_alone, _ = engine.embed_paths(paths=[clips["mid"]])
    order = [clips["short"], *bad, clips["mid"], clips["long"], str(tmp_path / "missing.wav")]
    batch, ok, skipped = engine.embed_paths(paths=order)
    assert ok_alone == [0] and ok == [0, len(bad) + 1, len(bad) + 2]
    np.testing.assert_array_equal(batch[1], alone[0])
    reasons = dict(skipped)
    assert set(reasons) == set(bad) | {str(tmp_path / "missing.wav")}
    for path, word in bad.items():
        assert reasons[path] and word in reasons[path], (path, reasons[path])


@pytest.mark.parametrize("blocks", [None, [("MSD_musicnn", "penultimate", 2.0), ("logmel", "mean", 0.5)],
                                    [("MTT_vgg", "taggram", 1.0)]])
def test_fit_learns_only_standardisation_on_a_bare_folder(musicnn_files, tmp_path, blocks):  # noqa: F811
    from musicsim.models.fitted import FittedModel

    folder = tmp_path / "music"
    folder.mkdir()
    paths = [_write(folder / f"song {i}.wav", 3.0 + 1.5 * i, seed=50 + i) for i in range(4)]
    cache = str(tmp_path / "features")
    engine = PretrainedEngine(blocks=blocks, cache_dir=cache, progress=False)
    engine.fit(paths=sorted(str(folder / name) for name in os.listdir(folder)))
    raw, ok, _ = engine.extract(paths=paths)
    assert ok == [0, 1, 2, 3] and raw.shape == (4, engine.dim)
    np.testing.assert_allclose(engine.scaler_mean, raw.mean(axis=0), atol=1e-9)
    embedded, _, _ = engine.embed_paths(paths=paths)
    expected = (raw - engine.scaler_mean) / engine.scaler_scale * engine.dimension_weights()
    np.testing.assert_allclose(embedded, expected, atol=1e-5)
    np.testing.assert_allclose(embedded.mean(axis=0), 0.0, atol=1e-5)
    # Each block carries its weight: the weights' squares add up over its dimensions.
    for (checkpoint, layer, weight), part in zip(engine.blocks, engine.block_slices().values()):
        assert np.sum(engine.dimension_weights()[part] ** 2) == pytest.approx(weight ** 2)
    engine.save(str(tmp_path / "run"))
    loaded = FittedModel.load(str(tmp_path / "run"))
    assert isinstance(loaded, PretrainedEngine) and loaded.blocks == engine.blocks
    again, _, _ = loaded.embed_paths(paths=paths)  # served by the feature cache
    np.testing.assert_allclose(again, embedded, atol=1e-6)
    # The raw engine needs no fit: weighted raw vectors.
    plain, _, _ = raw_engine(blocks=blocks).embed_paths(paths=paths[:1])
    np.testing.assert_allclose(plain[0], raw[0] * engine.dimension_weights(), rtol=1e-5, atol=1e-6)


def test_version_follows_the_blocks_and_settings():
    default = PretrainedEngine()
    assert default.version == engine_module.ENGINE_VERSION
    assert PretrainedEngine(blocks=[("MSD_musicnn", "penultimate", 1.0)]).version != default.version
    reweighted = [(c, l, 2.0 if i == 0 else w) for i, (c, l, w) in enumerate(engine_module.BLOCKS)]
    assert PretrainedEngine(blocks=reweighted).version != default.version
    assert PretrainedEngine(max_patches=7).version != default.version


@pytest.mark.parametrize("settings, message", [
    ({"blocks": [("MSD_vgg", "maxpool", 1.0)]}, "unknown block"),
    ({"blocks": [("MSD_musicnn", "taggram", 0.0)]}, "weight > 0"),
    ({"blocks": [("MSD_musicnn", "taggram", 1.0)] * 2}, "distinct"),
    ({"max_patches": 0}, "max_patches"),
    ({"precision": "float8"}, "precision"),
    ({"sample_rate": 22050}, "16000 Hz"),
])
def test_bad_settings_are_refused(settings, message):
    with pytest.raises(engine_module.EngineError, match=message):
        PretrainedEngine(**settings)


def test_default_embedder_is_the_raw_engine_with_its_catalog_weights(musicnn_files, clips, tmp_path):  # noqa: F811
    from musicsim import models as registry
    from musicsim.embedder import default_embedder

    assert registry.kind_of("pretrained") == "fitted"
    assert registry.fitted_class("pretrained") is PretrainedEngine
    embedder = default_embedder()
    assert (embedder.name, embedder.similarity, embedder.dim) == ("pretrained", "cosine", PretrainedEngine().dim)
    assert embedder.version == engine_module.ENGINE_VERSION and embedder.describe()["version"] == embedder.version
    np.testing.assert_array_equal(embedder.catalog_weights, PretrainedEngine().dimension_weights())
    results = list(embedder.iter_embeddings(paths=[clips["short"], str(tmp_path / "missing.wav")]))
    assert [index for index, _, _ in results] == [0, 1]
    assert results[0][1].shape == (embedder.dim,) and results[1][1] is None and results[1][2]
    direct, _, _ = raw_engine().embed_paths(paths=[clips["short"]])
    np.testing.assert_array_equal(results[0][1], direct[0])


@pytest.mark.parametrize("seconds, keep, cuts", [
    (31.0, [0, 3, 9], [0, 1000, 200000, None]),
    (31.0, [1, 2, 3, 4, 5, 6, 7, 8, 9], [0, 47872, 47873, None]),  # more than one block of patches
    (31.0, [9, 10, 14], [0, None]),  # past the end: dropped
    (29.9, [8, 9], [0, 333, None]),  # the last patch is zero padded at the end (the centred frames)
    (20.0, [12, 40], [0, None]),  # none exists: the last whole patch
    (1.5, [3], [0, None]),  # shorter than a patch: its one padded patch
])
def test_selected_patches_are_those_of_the_whole_signal(seconds, keep, cuts):
    audio = _clip(seconds, seed=60)
    cuts = [audio.size if c is None else c for c in cuts]
    pieces = [audio[a:b] for a, b in zip(cuts[:-1], cuts[1:])]
    every = np.concatenate(list(musicnn.iter_patch_blocks(blocks=[audio])))
    chosen = np.concatenate(list(engine_module.iter_selected_patches(blocks=iter(pieces), keep=np.array(keep),
                                                                     block_patches=4)))
    existing = [k for k in keep if k < every.shape[0]] or [every.shape[0] - 1]
    assert chosen.shape == (len(existing), musicnn.PATCH_FRAMES, musicnn.N_MELS)
    np.testing.assert_allclose(chosen, every[existing], atol=1e-5, rtol=0)


def test_the_sampled_default_stays_close_to_every_patch_on_real_music(musicnn_files, tiny_corpus):  # noqa: F811
    """The default path samples patches (``DEFAULT_MAX_PATCHES``); checked against every patch on real music.

    Measured (8 tracks, 2 per album of the tiny corpus, 60 s excerpts of 18-20 patches, 8 patches
    sampled, the default blocks standardised over the 8 full vectors): cosine to the full vector
    min 0.880, mean 0.926, every track nearest its own full vector. The asserted bounds leave a
    margin for other decoders. (At 16 of 12-204 patches on 16 whole tracks: min 0.916, mean 0.969.)
    """
    import csv

    with open(os.path.join(tiny_corpus, "manifest.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    albums: dict[str, list[str]] = {}
    for row in rows:
        albums.setdefault(row["label_album"], []).append(os.path.join(tiny_corpus, row["path"]))
    paths = [path for album in sorted(albums) for path in albums[album][:2]]
    blocks = [(c, l) for c, l, _ in engine_module.BLOCKS]
    every = [all_block_means(path=path, per_patch=True, max_seconds=60.0) for path in paths]
    full = np.stack([np.concatenate([track[b].astype(np.float64).mean(axis=0) for b in blocks]) for track in every])
    # The engine's sampled path, for real (not the per-patch rows): each file seeked to its 8 patches.
    engine = PretrainedEngine(max_patches=8, max_seconds=60.0, progress=False)
    sampled, ok, _ = engine.extract(paths=paths)
    assert ok == list(range(len(paths)))
    for track, vector in zip(every, sampled):
        chosen = engine_module.sampled_patches(total=track[blocks[0]].shape[0], max_patches=8)
        expected = np.concatenate([track[b][chosen].astype(np.float64).mean(axis=0) for b in blocks])
        np.testing.assert_allclose(vector, expected, atol=2e-3)  # the seeked decode's tolerance (test above)
    mean, std = full.mean(axis=0), np.where(full.std(axis=0) > 1e-8, full.std(axis=0), 1.0)

    def unit(vectors):
        scaled = (vectors - mean) / std * engine.dimension_weights()
        return scaled / np.linalg.norm(scaled, axis=1, keepdims=True)

    similarity = unit(sampled) @ unit(full).T
    own = np.diag(similarity)
    assert own.min() >= 0.80 and own.mean() >= 0.88, own
    assert np.all(similarity.argmax(axis=1) == np.arange(len(paths)))


def test_a_run_fits_scores_and_exports_through_the_registry(musicnn_files, tmp_path):  # noqa: F811
    from conftest import write_synthetic_dataset
    from experiments.run import RunConfig, run
    from musicsim.embedder import load_embedder

    dataset_dir = write_synthetic_dataset(str(tmp_path / "data"), per_album=8, seconds=3.0)
    model_dir = str(tmp_path / "run")
    results = run(RunConfig(model="pretrained", dataset_dir=dataset_dir, model_dir=model_dir, eval_repeats=2))
    assert results["similarity"] == "cosine" and results["sizes"]["test"] == 8
    with np.load(os.path.join(model_dir, "embeddings.npz")) as npz:
        embeddings, paths = npz["embeddings"], npz["paths"]
    assert embeddings.shape == (32, PretrainedEngine().dim)
    embedder = load_embedder(model_dir)
    assert (embedder.kind, embedder.name, embedder.similarity) == ("fitted", "pretrained", "cosine")
    vectors, ok, _ = embedder.embed_paths(paths=[str(paths[5])], progress=False)
    assert ok == [0]
    np.testing.assert_allclose(vectors[0], embeddings[5], atol=1e-5)
