"""Fitted models (paper 4.1 librosa + PCA, MFCC baseline): fit, embed, save/load, behaviour."""
from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
from sklearn.decomposition import PCA
from sklearn.preprocessing import StandardScaler

from musicsim.models.fitted import FittedModel
from musicsim.models.librosa_pca import LibrosaPCAModel, n_components_for
from musicsim.models.mfcc import MFCCModel

SR = 22050
SECONDS = 4.0
ALBUMS = ("organ", "pluck", "drums")
TRACKS_PER_ALBUM = 4
SCALE = np.array([0, 2, 4, 5, 7, 9, 11, 12])  # major scale, semitones


def _render_track(album: str, seed: int) -> np.ndarray:
    """A synthetic track: an album is a timbre (instrument, register, envelope); a track is a
    random melody (notes, note length) in it. float32 ``[SECONDS * SR]``."""
    rng = np.random.default_rng(seed)
    n = int(SECONDS * SR)
    out = np.zeros(n)
    note_seconds = rng.uniform(0.2, 0.45)
    note_samples = int(note_seconds * SR)
    t = np.arange(note_samples) / SR
    base = {"organ": 196.0, "pluck": 784.0, "drums": 55.0}[album]
    for start in range(0, n - note_samples, note_samples):
        freq = base * 2 ** (rng.choice(SCALE) / 12.0)
        if album == "organ":  # sustained odd harmonics (a square-ish tone)
            note = sum(np.sin(2 * np.pi * freq * k * t) / k for k in (1, 3, 5, 7, 9))
            note *= np.minimum(1.0, t / 0.02)
        elif album == "pluck":  # bright, fast-decaying harmonics
            note = sum(np.sin(2 * np.pi * freq * k * t) / k ** 0.5 for k in range(1, 8))
            note *= np.exp(-t / 0.08)
        else:  # a noise burst over a bass note
            note = 0.7 * rng.standard_normal(t.size) * np.exp(-t / 0.03)
            note += np.sin(2 * np.pi * freq * t) * np.exp(-t / 0.2)
        out[start:start + note_samples] += note
    out *= rng.uniform(0.3, 0.6) / np.max(np.abs(out))
    return out.astype(np.float32)


@pytest.fixture(scope="module")
def albums(tmp_path_factory):
    """{"paths": [...], "albums": [...], "cache": dir}, TRACKS_PER_ALBUM tracks per album."""
    root = tmp_path_factory.mktemp("albums")
    paths, labels = [], []
    for a, album in enumerate(ALBUMS):
        for track in range(TRACKS_PER_ALBUM):
            path = root / f"{album}_{track}.wav"
            # Float samples: 16-bit rounding of the decays would add noise to the spectral minima.
            sf.write(path, _render_track(album, seed=100 * a + track), SR, subtype="FLOAT")
            paths.append(str(path))
            labels.append(album)
    return {"paths": paths, "albums": labels, "cache": str(root / "cache")}


def _settings(albums) -> dict:
    return {"max_seconds": None, "workers": 1, "cache_dir": albums["cache"], "progress": False}


def _split(albums):
    """Half of each album's tracks for fitting, the other half held out."""
    train = [i for i in range(len(albums["paths"])) if i % TRACKS_PER_ALBUM < TRACKS_PER_ALBUM // 2]
    test = [i for i in range(len(albums["paths"])) if i not in train]
    return train, test


@pytest.fixture(scope="module")
def librosa_model(albums):
    train, _ = _split(albums)
    return LibrosaPCAModel(**_settings(albums)).fit(paths=[albums["paths"][i] for i in train])


# -- the librosa + PCA model ---------------------------------------------------------------------

@pytest.mark.parametrize("model_class", [LibrosaPCAModel, MFCCModel])
def test_held_out_tracks_are_nearest_to_their_own_album(albums, model_class):
    train, test = _split(albums)
    model = model_class(**_settings(albums)).fit(paths=[albums["paths"][i] for i in train])
    train_emb, train_ok, _ = model.embed_paths(paths=[albums["paths"][i] for i in train])
    test_emb, test_ok, _ = model.embed_paths(paths=[albums["paths"][i] for i in test])
    assert train_ok == list(range(len(train))) and test_ok == list(range(len(test)))
    distances = np.linalg.norm(test_emb[:, None, :] - train_emb[None, :, :], axis=-1)  # [test, train]
    train_albums = np.array([albums["albums"][j] for j in train])
    for row, i in enumerate(test):
        album = albums["albums"][i]
        nearest = train_albums[np.argmin(distances[row])]
        assert nearest == album, f"{albums['paths'][i]}: nearest train track is from {nearest}"
        own, other = distances[row][train_albums == album], distances[row][train_albums != album]
        assert own.mean() < other.mean(), f"{albums['paths'][i]}: own album {own}, others {other}"


@pytest.mark.parametrize("variance_ratio", [0.3, 0.6, 0.9, 0.99, 1.0])
def test_pca_keeps_the_fewest_components_reaching_the_ratio(albums, variance_ratio):
    model = LibrosaPCAModel(variance_ratio=variance_ratio, **_settings(albums))
    features, _, _ = model.extract(paths=albums["paths"])
    model.fit_features(features=features)
    # An independent fit of the textbook pipeline.
    cumulative = np.cumsum(PCA(svd_solver="full").fit(StandardScaler().fit_transform(features))
                           .explained_variance_ratio_)
    k = model.dim
    assert cumulative[k - 1] >= variance_ratio - 1e-9
    if k > 1:
        assert cumulative[k - 2] < variance_ratio
    assert k < features.shape[0]  # 12 tracks span at most 11 directions


def test_embeddings_are_the_standardised_pca_projection(albums, librosa_model):
    features, _, _ = librosa_model.extract(paths=albums["paths"])
    train, _ = _split(albums)
    scaler = StandardScaler().fit(features[train])
    pca = PCA(n_components=librosa_model.dim, svd_solver="full").fit(scaler.transform(features[train]))
    expected = pca.transform(scaler.transform(features))
    embeddings = librosa_model.embed_features(features=features)
    assert embeddings.dtype == np.float32 and embeddings.shape == (12, librosa_model.dim)
    np.testing.assert_allclose(embeddings, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


@pytest.mark.parametrize("model_class", [LibrosaPCAModel, MFCCModel])
def test_save_load_round_trip(albums, tmp_path, model_class):
    train, _ = _split(albums)
    model = model_class(**_settings(albums)).fit(paths=[albums["paths"][i] for i in train])
    before, ok_before, _ = model.embed_paths(paths=albums["paths"])
    model.save(str(tmp_path))
    config = json.loads((tmp_path / "fitted_model.json").read_text())
    assert config["name"] == model.name and config["dim"] == model.dim
    assert config["settings"]["sample_rate"] == 22050 and config["similarity"] == "euclidean"
    for loader in (model_class, FittedModel):
        loaded = loader.load(str(tmp_path))
        assert type(loaded) is model_class and loaded.dim == model.dim
        assert loaded.settings() == model.settings()
        after, ok_after, _ = loaded.embed_paths(paths=albums["paths"])
        np.testing.assert_array_equal(before, after)
        assert ok_before == ok_after


def test_load_refuses_another_model_and_missing_dirs(albums, librosa_model, tmp_path):
    librosa_model.save(str(tmp_path / "librosa"))
    with pytest.raises(ValueError, match="'librosa' model, not 'mfcc'"):
        MFCCModel.load(str(tmp_path / "librosa"))
    with pytest.raises(FileNotFoundError, match="no fitted_model.json"):
        LibrosaPCAModel.load(str(tmp_path / "nothing"))


def test_zero_variance_features_do_not_make_nan():
    rng = np.random.default_rng(0)
    train = rng.standard_normal((10, 6))
    train[:, 2] = 3.0  # constant over the train split
    model = LibrosaPCAModel(variance_ratio=0.99).fit_features(features=train)
    test = rng.standard_normal((4, 6))  # varies where the train split did not
    embeddings = model.embed_features(features=test)
    assert np.all(np.isfinite(embeddings))
    mfcc = MFCCModel().fit_features(features=np.tile(rng.standard_normal(40), (5, 1)))  # all constant
    assert np.all(np.isfinite(mfcc.embed_features(features=rng.standard_normal((3, 40)))))


def test_bad_files_are_skipped_when_embedding(albums, librosa_model, tmp_path):
    broken = tmp_path / "broken.mp3"
    broken.write_bytes(b"\xff\xfb not really mp3" * 10)
    paths = [albums["paths"][0], str(broken), albums["paths"][5]]
    embeddings, ok, skipped = librosa_model.embed_paths(paths=paths)
    assert embeddings.shape == (2, librosa_model.dim) and ok == [0, 2]
    assert skipped[0][0] == str(broken) and skipped[0][1]


@pytest.mark.parametrize("variance_ratio", [0, 1.5, -0.2])
def test_invalid_variance_ratio(variance_ratio):
    with pytest.raises(ValueError, match="variance_ratio"):
        LibrosaPCAModel(variance_ratio=variance_ratio)


@pytest.mark.parametrize("kwargs, message", [
    ({"sample_rate": 0}, "sample_rate"), ({"max_seconds": -1}, "max_seconds"), ({"workers": 0}, "workers")])
def test_invalid_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MFCCModel(**kwargs)


def test_unfitted_models_refuse_to_embed(tmp_path):
    with pytest.raises(RuntimeError, match="not fitted"):
        LibrosaPCAModel().embed_features(features=np.zeros((1, 1414)))
    with pytest.raises(RuntimeError, match="not fitted"):
        MFCCModel().save(str(tmp_path))


def test_fit_needs_two_usable_tracks(tmp_path):
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="at least 2 usable.*empty"):
        MFCCModel(workers=1, progress=False).fit(paths=[str(empty)])


def test_mfcc_embeddings_are_standardised_on_the_train_split(albums):
    model = MFCCModel(**_settings(albums)).fit(paths=albums["paths"])
    embeddings, _, _ = model.embed_paths(paths=albums["paths"])
    assert model.dim == 40 and embeddings.shape == (12, 40)
    np.testing.assert_allclose(embeddings.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(embeddings.std(axis=0), 1.0, atol=1e-4)


@pytest.mark.parametrize("ratios, variance_ratio, expected", [
    ([0.5, 0.3, 0.2], 0.5, 1), ([0.5, 0.3, 0.2], 0.51, 2), ([0.5, 0.3, 0.2], 0.8, 2),
    ([0.5, 0.3, 0.2], 1.0, 3), ([0.9, 0.1], 0.99, 2)])
def test_n_components_for_by_hand(ratios, variance_ratio, expected):
    assert n_components_for(explained_variance_ratio=np.array(ratios), variance_ratio=variance_ratio) == expected
