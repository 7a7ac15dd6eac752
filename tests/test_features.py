"""musicsim.features: the librosa feature vector, its statistics, and cached parallel extraction."""
from __future__ import annotations

import math
import os
import warnings

import numpy as np
import pytest
import soundfile as sf

from musicsim import features as F

SR = 22050


def _time(seconds: float) -> np.ndarray:
    return np.arange(int(seconds * SR)) / SR


def _render(kind: str, seconds: float = 5.0) -> np.ndarray:
    """A test signal, float32 ``[seconds * SR]``."""
    t = _time(seconds)
    rng = np.random.default_rng(abs(hash(kind)) % 2**32)
    if kind == "sine_a440":
        y = 0.5 * np.sin(2 * np.pi * 440.0 * t)
    elif kind == "harmonic_c3":  # a sawtooth-like tone on C3 (130.8 Hz)
        y = sum(0.3 / k * np.sin(2 * np.pi * 130.81 * k * t) for k in range(1, 12))
    elif kind == "white_noise":
        y = 0.2 * rng.standard_normal(t.size)
    elif kind == "chirp":  # 100 Hz rising to 2100 Hz
        y = 0.4 * np.sin(2 * np.pi * (100.0 * t + 200.0 * t ** 2))
    elif kind == "tone_then_silence":
        y = np.where(t < seconds / 2, 0.5 * np.sin(2 * np.pi * 261.63 * t), 0.0)
    elif kind == "digital_silence":
        y = np.zeros(t.size)
    elif kind == "dc_offset":
        y = np.full(t.size, 0.25)
    elif kind == "single_click":
        y = np.zeros(t.size)
        y[t.size // 2] = 0.9
    else:
        raise ValueError(kind)
    return np.asarray(y, dtype=np.float32)


# -- the feature vector ------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["sine_a440", "harmonic_c3", "white_noise", "chirp", "tone_then_silence"])
def test_shared_transforms_equal_one_call_per_feature(kind):
    audio = _render(kind)
    shared = F.librosa_features(audio=audio, sample_rate=SR)
    reference = F.reference_librosa_features(audio=audio, sample_rate=SR)
    names = np.array(F.feature_names())
    differing = ~np.isclose(shared, reference, rtol=1e-6, atol=1e-12)
    assert not differing.any(), f"differ: {names[differing][:10]}"


@pytest.mark.parametrize("kind, pitch_class", [("sine_a440", 9), ("harmonic_c3", 0)])
def test_chroma_from_the_shared_cqt_finds_the_played_pitch_class(kind, pitch_class):
    # Guards the bins_per_octave pitfall: a CQT read with the wrong bins per octave maps its
    # bins to the wrong pitch classes.
    vector = F.librosa_features(audio=_render(kind), sample_rate=SR)
    names = F.feature_names()
    for feature in ("chroma_cqt", "chroma_cens", "chroma_stft"):
        means = [vector[names.index(f"{feature}_{row:02d}_mean")] for row in range(12)]
        assert int(np.argmax(means)) == pitch_class, feature


def test_feature_names_match_the_vector():
    vector = F.librosa_features(audio=_render("chirp"), sample_rate=SR)
    names = F.feature_names()
    assert vector.shape == (len(names),)
    assert len(set(names)) == len(names)
    expected_rows = 1 + 12 + 12 + 6 + 12 + 1 + 1 + 1 + 7 + 1 + 128 + 20
    assert len(names) == 7 * expected_rows
    assert names[:7] == [f"zcr_00_{stat}" for stat in F.STATISTICS]
    assert names[-1] == "mfcc_19_kurtosis"


@pytest.mark.parametrize("kind", ["digital_silence", "dc_offset", "tone_then_silence", "single_click"])
def test_degenerate_signals_give_finite_features(kind):
    audio = _render(kind, seconds=3.0)
    with warnings.catch_warnings():
        # librosa warns that silence has no pitch to estimate the tuning from; that is expected.
        warnings.simplefilter("ignore", UserWarning)
        vector = F.librosa_features(audio=audio, sample_rate=SR)
        mfcc = F.mfcc_mean_std(audio=audio, sample_rate=SR)
    assert np.all(np.isfinite(vector))
    assert np.all(np.isfinite(mfcc))


def test_zero_crossing_rate_of_a_sine_is_twice_its_frequency():
    # A hand-checkable feature: a 441 Hz sine crosses zero 882 times a second.
    vector = F.librosa_features(audio=_render("sine_a440"), sample_rate=SR)
    names = F.feature_names()
    assert vector[names.index("zcr_00_median")] == pytest.approx(2 * 440.0 / SR, rel=0.03)


def test_mfcc_mean_std_shape_and_timbre():
    noise = F.mfcc_mean_std(audio=_render("white_noise"), sample_rate=SR)
    tone = F.mfcc_mean_std(audio=_render("harmonic_c3"), sample_rate=SR)
    assert noise.shape == tone.shape == (40,)
    assert not np.allclose(noise, tone)
    assert np.all(noise[20:] >= 0)  # the second half are standard deviations


@pytest.mark.parametrize("kwargs, message", [
    ({"audio": np.zeros((2, 4096), np.float32)}, "1-D"),
    ({"audio": np.zeros(100, np.float32)}, "too short"),
    ({"audio": np.zeros(4096, np.float32), "sample_rate": 0}, "sample_rate"),
    ({"audio": np.full(4096, np.nan, np.float32)}, "non-finite"),
])
def test_librosa_features_rejects_bad_audio(kwargs, message):
    with pytest.raises(ValueError, match=message):
        F.librosa_features(**kwargs)


def test_mfcc_mean_std_rejects_bad_n_mfcc():
    with pytest.raises(ValueError, match="n_mfcc"):
        F.mfcc_mean_std(audio=_render("chirp", 1.0), n_mfcc=0)


# -- summary statistics ------------------------------------------------------------------------

def test_summary_statistics_by_hand():
    frames = np.array([[1.0, 2.0, 3.0, 4.0],
                       [0.0, 0.0, 0.0, 3.0],
                       [5.0, 5.0, 5.0, 5.0]])
    # Row 0: symmetric, variance 1.25, m4 = 2.5625 -> excess kurtosis 2.5625 / 1.25**2 - 3.
    # Row 1: mean 3/4, variance 27/16, m3 = 81/32 -> skew 2/sqrt(3); m4 = 425.25/64 -> kurtosis 7/3 - 3.
    # Row 2: constant: std 0, skewness and kurtosis defined as 0.
    expected = np.array([
        [2.5, 2.5, 1.0, 4.0, math.sqrt(1.25), 0.0, 2.5625 / 1.25 ** 2 - 3.0],
        [0.75, 0.0, 0.0, 3.0, math.sqrt(27 / 16), 2 / math.sqrt(3), 7 / 3 - 3.0],
        [5.0, 5.0, 5.0, 5.0, 0.0, 0.0, 0.0],
    ])
    stats = F.summary_statistics(frames=frames)
    assert stats.shape == (21,)
    np.testing.assert_allclose(stats, expected.reshape(-1), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("frames, message", [
    (np.zeros(5), "2-D"),
    (np.zeros((3, 0)), "no time frames"),
    (np.array([[1.0, np.nan]]), "non-finite"),
])
def test_summary_statistics_rejects_bad_frames(frames, message):
    with pytest.raises(ValueError, match=message):
        F.summary_statistics(frames=frames)


# -- extract_many ------------------------------------------------------------------------------

def level_and_length(*, audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """A cheap top-level feature function (picklable for the worker pool): [seconds, mean, rms]."""
    return np.array([audio.size / sample_rate, float(audio.mean()), float(np.sqrt(np.mean(audio ** 2)))])


@pytest.fixture()
def corpus(tmp_path):
    """Three good files, a corrupt one and an empty one: (paths, good indices)."""
    paths = []
    for i, freq in enumerate([220.0, 330.0, 495.0]):
        path = tmp_path / f"tone{i}.wav"
        t = _time(2.0 + i)
        sf.write(path, (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32), SR)
        paths.append(str(path))
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x00\x01garbage" + bytes(range(256)) * 8)
    empty = tmp_path / "empty.ogg"
    empty.write_bytes(b"")
    paths.insert(1, str(corrupt))
    paths.append(str(empty))
    return paths, [0, 2, 3]


def test_extract_many_skips_bad_files_with_reasons(corpus):
    paths, good = corpus
    features, ok, skipped = F.extract_many(paths=paths, feature_fn=level_and_length, sample_rate=SR,
                                           workers=1, progress=False)
    assert ok == good
    assert features.shape == (3, 3)
    np.testing.assert_allclose(features[:, 0], [2.0, 3.0, 4.0], atol=1e-3)  # whole tracks
    assert [p for p, _ in skipped] == [paths[1], paths[4]]
    reasons = dict(skipped)
    assert "not audio" in reasons[paths[1]] or "corrupt" in reasons[paths[1]]
    assert "empty" in reasons[paths[4]]


def test_extract_many_is_the_same_with_one_or_two_workers(corpus):
    paths, _ = corpus
    one = F.extract_many(paths=paths, feature_fn="mfcc", sample_rate=SR, workers=1, progress=False)
    two = F.extract_many(paths=paths, feature_fn="mfcc", sample_rate=SR, workers=2, progress=False)
    np.testing.assert_array_equal(one[0], two[0])
    assert one[1] == two[1]
    assert one[2] == two[2]


def test_extract_many_cache_avoids_decoding_and_follows_file_changes(corpus, tmp_path, monkeypatch):
    paths, good = corpus
    cache = str(tmp_path / "cache")
    first = F.extract_many(paths=paths, feature_fn=level_and_length, sample_rate=SR, max_seconds=2.5,
                           workers=1, cache_dir=cache, progress=False)

    decoded = []
    real_load_excerpt = F.load_excerpt

    def counting_load_excerpt(*, path, **kwargs):
        decoded.append(os.path.basename(path))
        return real_load_excerpt(path=path, **kwargs)

    monkeypatch.setattr(F, "load_excerpt", counting_load_excerpt)
    second = F.extract_many(paths=paths, feature_fn=level_and_length, sample_rate=SR, max_seconds=2.5,
                            workers=1, cache_dir=cache, progress=False)
    assert decoded == []  # good and bad files both come from the cache
    np.testing.assert_array_equal(first[0], second[0])
    assert first[1:] == second[1:]

    # Another excerpt length is another cache entry.
    F.extract_many(paths=paths[:1], feature_fn=level_and_length, sample_rate=SR, max_seconds=1.5,
                   workers=1, cache_dir=cache, progress=False)
    assert decoded == ["tone0.wav"]

    # A rewritten file (new size and mtime) is decoded again; the others still are not.
    sf.write(paths[good[1]], np.full(SR * 3, 0.5, np.float32), SR)
    third = F.extract_many(paths=paths, feature_fn=level_and_length, sample_rate=SR, max_seconds=2.5,
                           workers=1, cache_dir=cache, progress=False)
    assert decoded == ["tone0.wav", os.path.basename(paths[good[1]])]
    assert third[0][1, 1] == pytest.approx(0.5)


def test_feature_cache_holds_what_extract_one_computed_and_misses_an_edited_file(corpus, tmp_path):
    paths, good = corpus
    cache = F.FeatureCache(cache_dir=str(tmp_path / "cache"), feature_name="level", sample_rate=SR, max_seconds=2.5)
    assert cache.read(paths[good[0]]) == (None, None)

    vector, reason = F.extract_one(path=paths[good[0]], feature_fn=level_and_length, sample_rate=SR,
                                   max_seconds=2.5, cache=cache)
    missing, why = F.extract_one(path=paths[1], feature_fn=level_and_length, sample_rate=SR, max_seconds=2.5,
                                 cache=cache)

    assert reason is None and vector[0] == pytest.approx(2.0, abs=1e-3)
    np.testing.assert_array_equal(cache.read(paths[good[0]])[0], vector)
    assert missing is None and cache.read(paths[1]) == (None, why)  # an unusable file is remembered
    with_window = F.FeatureCache(cache_dir=cache.cache_dir, feature_name="level", sample_rate=SR, max_seconds=2.5,
                                 window_seconds=1.0)
    assert with_window.read(paths[good[0]]) == (None, None)  # other settings, other entry
    sf.write(paths[good[0]], np.full(SR * 3, 0.5, np.float32), SR)
    assert cache.read(paths[good[0]]) == (None, None)  # edited: a miss
    assert cache.read(str(tmp_path / "absent.wav")) == (None, None)


def test_extract_many_takes_the_centred_excerpt(tmp_path):
    # The signal's value is its time / 10, so an excerpt's mean tells where it was cut.
    path = tmp_path / "ramp.flac"
    sf.write(path, (_time(8.0) / 10.0).astype(np.float32), SR)
    features, ok, skipped = F.extract_many(paths=[str(path)], feature_fn=level_and_length, sample_rate=SR,
                                           max_seconds=2.0, workers=1, progress=False)
    assert ok == [0] and skipped == []
    seconds, mean, _ = features[0]
    assert seconds == pytest.approx(2.0, abs=1e-3)
    assert mean == pytest.approx(0.4, abs=2e-3)  # times 3 s to 5 s


def test_extract_many_reports_feature_function_failures(corpus):
    paths, good = corpus
    features, ok, skipped = F.extract_many(paths=[paths[good[0]]], feature_fn=failing_features,
                                           sample_rate=SR, workers=1, progress=False)
    assert features.shape == (0, 0) and ok == []
    assert "RuntimeError" in skipped[0][1] and "boom" in skipped[0][1]


def failing_features(*, audio: np.ndarray, sample_rate: int) -> np.ndarray:
    raise RuntimeError("boom")


@pytest.mark.parametrize("kwargs, message", [
    ({"feature_fn": "nope"}, "unknown feature function"),
    ({"feature_fn": lambda *, audio, sample_rate: audio[:1]}, "top-level"),
    ({"workers": 0}, "workers"),
    ({"max_seconds": 0}, "max_seconds"),
    ({"sample_rate": -1}, "sample_rate"),
])
def test_extract_many_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        F.extract_many(paths=[], **{"feature_fn": "mfcc", **kwargs})


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux /proc to find the worker processes")
def test_extraction_workers_end_when_their_parent_is_killed(tmp_path):
    """A killed run that was extracting features leaves no worker (nor fork server) behind."""
    import sys

    from conftest import assert_workers_die_with

    rng = np.random.default_rng(0)
    paths = []
    for i in range(8):  # enough extraction that the parent is still working when it is killed
        paths.append(str(tmp_path / f"t{i}.wav"))
        sf.write(paths[-1], (0.1 * rng.standard_normal(22050 * 40)).astype(np.float32), 22050)
    script = ("import sys; from musicsim import features; "
              "features.extract_many(paths=sys.argv[1:], feature_fn='librosa', workers=2, progress=False)")
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    # the fork server, its 2 workers and multiprocessing's resource tracker
    assert_workers_die_with([sys.executable, "-c", script, *paths], cwd=repo, min_processes=4)
