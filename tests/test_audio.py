"""musicsim.data.audio: decoding every format, downmix, resampling, excerpts, pooling and bad input."""
from __future__ import annotations

import ast
import os

import numpy as np
import pytest
import soundfile as sf
import soxr

import musicsim
from musicsim.data import audio, audio_files
from musicsim.data.audio import AudioDecodeError, audio_info, centred_excerpt, load_audio, mean_pool

# audioread (the fallback decoder) imports stdlib modules deprecated in 3.11.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:audioread")
# (extension, soundfile format, subtype, file rate, channels)
FORMATS = [
    ("wav", "WAV", "PCM_16", 44100, 2),
    ("flac", "FLAC", "PCM_16", 22050, 1),
    ("ogg", "OGG", "VORBIS", 48000, 2),
    ("opus", "OGG", "OPUS", 48000, 1),
    ("mp3", "MP3", "MPEG_LAYER_III", 44100, 2),
]
SECONDS = 2.0


def sine(frequency: float, rate: int, seconds: float, *, amplitude: float = 0.5, channels: int = 1) -> np.ndarray:
    """``[frames, channels]`` float32 sine."""
    t = np.arange(int(round(rate * seconds))) / rate
    wave = (amplitude * np.sin(2 * np.pi * frequency * t)).astype(np.float32)
    return np.repeat(wave[:, None], channels, axis=1)


def peak_frequency(signal: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(signal * np.hanning(signal.size)))
    return float(np.fft.rfftfreq(signal.size, 1.0 / rate)[np.argmax(spectrum)])


@pytest.fixture(scope="module")
def encoded(tmp_path_factory) -> dict[str, str]:
    """A 2 s 440 Hz sine in every supported format, at various rates and channel counts."""
    folder = tmp_path_factory.mktemp("formats")
    paths = {}
    for ext, fmt, subtype, rate, channels in FORMATS:
        path = str(folder / f"sine.{ext}")
        sf.write(path, sine(440.0, rate, SECONDS, channels=channels), rate, format=fmt, subtype=subtype)
        paths[ext] = path
    return paths


@pytest.mark.parametrize("ext,fmt,subtype,rate,channels", FORMATS, ids=[f[0] for f in FORMATS])
def test_every_format_decodes_to_mono_16k_keeping_the_pitch(encoded, ext, fmt, subtype, rate, channels):
    info = audio_info(encoded[ext])
    assert (info.sample_rate, info.channels) == (rate, channels)
    assert info.duration == pytest.approx(SECONDS, abs=0.06)  # lossy codecs pad a frame or so

    decoded = load_audio(encoded[ext], sample_rate=16000)

    assert decoded.dtype == np.float32 and decoded.ndim == 1
    assert decoded.size == pytest.approx(SECONDS * 16000, rel=0.03)
    assert peak_frequency(decoded, 16000) == pytest.approx(440.0, abs=1.0)
    assert np.sqrt(np.mean(decoded[4000:-4000] ** 2)) == pytest.approx(0.5 / np.sqrt(2), rel=0.1)


def test_resampling_44k_stereo_to_16k_mono_keeps_frequency_length_and_level(tmp_path):
    path = str(tmp_path / "a440.wav")
    sf.write(path, sine(440.0, 44100, 3.0, channels=2), 44100, subtype="FLOAT")

    decoded = load_audio(path, sample_rate=16000)

    assert abs(decoded.size - 3 * 16000) <= 1
    assert peak_frequency(decoded, 16000) == pytest.approx(440.0, abs=0.5)
    # Compare with the sine sampled directly at 16 kHz, away from the resampler's edge effects.
    assert np.max(np.abs(decoded[1000:-1000] - sine(440.0, 16000, 3.0)[1000:-1000, 0])) < 2e-3


@pytest.mark.parametrize("target_rate", [8000, 22050, 48000])
def test_resampling_to_other_rates(tmp_path, target_rate):
    path = str(tmp_path / "a1000.wav")
    sf.write(path, sine(1000.0, 32000, 1.0), 32000, subtype="FLOAT")

    decoded = load_audio(path, sample_rate=target_rate)

    assert abs(decoded.size - target_rate) <= 1
    assert peak_frequency(decoded, target_rate) == pytest.approx(1000.0, abs=1.5)


@pytest.mark.parametrize("channels", [2, 3, 6])
def test_downmix_averages_the_channels_and_mono_false_keeps_them(tmp_path, channels):
    waves = np.stack([sine(200.0 + 150 * c, 16000, 1.5, amplitude=0.6 / (c + 1))[:, 0] for c in range(channels)],
                     axis=1)
    path = str(tmp_path / "multichannel.wav")
    sf.write(path, waves, 16000, subtype="FLOAT")

    mono = load_audio(path, sample_rate=16000)
    kept = load_audio(path, sample_rate=16000, mono=False)

    np.testing.assert_allclose(mono, waves.astype(np.float64).mean(axis=1), atol=1e-7)
    assert kept.shape == (channels, waves.shape[0])
    np.testing.assert_array_equal(kept, waves.T)


@pytest.fixture
def ramp_wav(tmp_path) -> tuple[str, np.ndarray]:
    """4 s at 16 kHz whose sample i is ``i / 2**17``: any sample names its position exactly."""
    ramp = (np.arange(4 * 16000) / 2.0 ** 17).astype(np.float32)
    path = str(tmp_path / "ramp.wav")
    sf.write(path, ramp, 16000, subtype="FLOAT")
    return path, ramp


@pytest.mark.parametrize("offset,duration,start,stop", [
    (0.5, 1.25, 8000, 28000),
    (0.0, 1.0, 0, 16000),
    (3.0, None, 48000, 64000),
    (3.5, 2.0, 56000, 64000),  # runs past the end: what there is
])
def test_offset_and_duration_read_exactly_the_excerpt(ramp_wav, offset, duration, start, stop):
    path, ramp = ramp_wav
    excerpt = load_audio(path, sample_rate=16000, offset=offset, duration=duration, min_seconds=0.1)
    np.testing.assert_array_equal(excerpt, ramp[start:stop])


def test_an_excerpt_seeks_and_reads_only_its_frames(ramp_wav, monkeypatch):
    path, _ = ramp_wav
    calls = {"seek": [], "read": []}
    real_read_frames = audio_files._read_frames

    class SpySoundFile(sf.SoundFile):
        def seek(self, frames, whence=sf.SEEK_SET):
            if whence == sf.SEEK_SET:  # soundfile's tell() is a relative seek: not a position we asked for
                calls["seek"].append(frames)
            return super().seek(frames, whence)

    def spy_read_frames(f, frames):
        calls["read"].append(frames)
        return real_read_frames(f, frames)

    monkeypatch.setattr(audio_files.sf, "SoundFile", SpySoundFile)
    monkeypatch.setattr(audio_files, "_read_frames", spy_read_frames)
    load_audio(path, sample_rate=16000, offset=2.0, duration=1.5)
    # Seeks to the offset, then asks for the excerpt's frames only.
    assert calls["seek"] == [32000]
    assert calls["read"] == [24000]


def test_offset_past_the_end_is_a_decode_error(ramp_wav):
    path, _ = ramp_wav
    with pytest.raises(AudioDecodeError, match="past the end"):
        load_audio(path, offset=10.0)


@pytest.mark.parametrize("track_seconds,max_seconds,expected", [
    (100.0, 60.0, (20.0, 60.0)),
    (61.0, 60.0, (0.5, 60.0)),
    (60.0, 60.0, (0.0, None)),
    (29.0, 60.0, (0.0, None)),
    (100.0, None, (0.0, None)),
])
def test_centred_excerpt(track_seconds, max_seconds, expected):
    assert centred_excerpt(track_seconds, max_seconds) == expected


@pytest.mark.parametrize("signal,size,expected", [
    ([1, 2, 3, 4, 5, 6], 3, [2, 5]),
    ([1, 2, 3, 4, 5, 6, 7], 3, [2, 5, 7]),  # partial last window: mean of what it has
    ([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11], 5, [3, 8, 11]),
    ([2, 4, 6, 8], 4, [5]),
    ([1, 3], 5, [2]),  # shorter than one window
    ([0.5, -0.5, 2.0], 1, [0.5, -0.5, 2.0]),  # size 1: unchanged
])
def test_mean_pool_values_and_partial_window(signal, size, expected):
    pooled = mean_pool(np.asarray(signal, dtype=np.float32), size=size)
    assert pooled.dtype == np.float32
    np.testing.assert_allclose(pooled, expected, rtol=1e-6)


def test_mean_pool_shape_is_ceil_n_over_size():
    pooled = mean_pool(np.random.default_rng(0).standard_normal(16003).astype(np.float32), size=5)
    assert pooled.shape == (3201,)


@pytest.mark.parametrize("signal,size,message", [
    (np.zeros(10, np.float32), 0, "pool size"),
    (np.zeros(10, np.float32), -3, "pool size"),
    (np.zeros((2, 10), np.float32), 5, "1-D"),
])
def test_mean_pool_invalid_arguments(signal, size, message):
    with pytest.raises(ValueError, match=message):
        mean_pool(signal, size=size)


@pytest.mark.parametrize("kwargs,message", [
    (dict(sample_rate=0), "sample_rate"),
    (dict(sample_rate=-16000), "sample_rate"),
    (dict(offset=-1.0), "offset"),
    (dict(duration=0.0), "duration"),
    (dict(duration=-2.0), "duration"),
])
def test_load_audio_invalid_arguments(ramp_wav, kwargs, message):
    with pytest.raises(ValueError, match=message):
        load_audio(ramp_wav[0], **kwargs)


def _cut_in_half(source: str, destination: str) -> None:
    data = open(source, "rb").read()
    open(destination, "wb").write(data[:len(data) // 2])


def _garbage_after_header(source: str, destination: str) -> None:
    data = open(source, "rb").read()
    noise = np.random.default_rng(0).integers(0, 256, len(data) - 64, dtype=np.uint8).tobytes()
    open(destination, "wb").write(data[:64] + noise)


def _make_bad(kind: str, folder: str, encoded: dict[str, str]) -> str:
    """Write one kind of bad input under ``folder``; returns its path."""
    if kind == "missing":
        return os.path.join(folder, "nowhere.wav")
    if kind == "directory":
        path = os.path.join(folder, "album.wav")
        os.makedirs(path)
        return path
    path = os.path.join(folder, "bad." + {"text_mp3": "mp3", "silent": "flac"}.get(kind, kind.split("_")[-1]))
    if kind == "empty_wav":
        open(path, "wb").close()
    elif kind in ("text_wav", "text_mp3"):
        open(path, "w").write("this is a playlist, not audio\n" * 40)
    elif kind.startswith("cut_"):
        _cut_in_half(encoded[kind.split("_")[1]], path)
    elif kind.startswith("garbage_"):
        _garbage_after_header(encoded[kind.split("_")[1]], path)
    elif kind == "short_wav":
        sf.write(path, sine(440.0, 16000, 0.5), 16000)
    elif kind == "silent":
        sf.write(path, np.zeros((3 * 22050, 2), np.float32), 22050)
    return path


BAD_INPUTS = [  # (kind, words the reason must contain: any of them)
    ("missing", ["not found"]),
    ("directory", ["directory"]),
    ("empty_wav", ["empty"]),
    ("text_wav", ["not audio"]),
    ("text_mp3", ["not audio"]),
    ("cut_flac", ["truncated", "corrupt"]),
    ("cut_ogg", ["truncated", "corrupt"]),
    ("cut_mp3", ["truncated", "corrupt"]),
    ("garbage_flac", ["truncated", "corrupt"]),
    ("garbage_ogg", ["not audio", "corrupt"]),
    ("short_wav", ["too short"]),
    ("silent", ["silent"]),
]


@pytest.mark.parametrize("kind,reasons", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_raises_decode_error_naming_the_file_and_reason(tmp_path, encoded, kind, reasons):
    path = _make_bad(kind, str(tmp_path), encoded)

    with pytest.raises(AudioDecodeError) as caught:
        load_audio(path)

    assert caught.value.path == path
    assert path in str(caught.value)
    assert any(word in caught.value.reason for word in reasons), caught.value.reason


@pytest.mark.parametrize("kind", ["missing", "directory", "empty_wav", "text_wav"])
def test_audio_info_rejects_what_has_no_header(tmp_path, encoded, kind):
    path = _make_bad(kind, str(tmp_path), encoded)
    with pytest.raises(AudioDecodeError, match=os.path.basename(path)):
        audio_info(path)


def test_short_and_silent_pass_when_allowed(tmp_path, encoded):
    short = _make_bad("short_wav", str(tmp_path), encoded)
    silent = _make_bad("silent", str(tmp_path), encoded)
    assert load_audio(short, min_seconds=0.25).size == 8000
    assert not np.any(load_audio(silent, reject_silence=False))


def _decode_whole_at_once(path: str, sample_rate: int) -> np.ndarray:
    """The reference: the whole file read, averaged over channels and resampled in one call."""
    data, rate = sf.read(path, dtype="float32", always_2d=True)
    mono = data.mean(axis=1, dtype=np.float32)
    return mono if rate == sample_rate else soxr.resample(mono, rate, sample_rate, quality="HQ")


@pytest.mark.parametrize("ext", ["wav", "flac", "ogg", "mp3"])
@pytest.mark.parametrize("block_seconds", [0.13, 0.5, 10.0])
def test_blocks_joined_equal_the_whole_file_resampled_at_once(encoded, ext, block_seconds):
    expected = _decode_whole_at_once(encoded[ext], 16000)

    blocks = list(audio.iter_audio_blocks(encoded[ext], sample_rate=16000, block_seconds=block_seconds))

    assert all(b.dtype == np.float32 and b.ndim == 1 and b.size for b in blocks)
    if block_seconds < 1.0:
        assert len(blocks) > 3
    joined = np.concatenate(blocks)
    assert joined.shape == expected.shape
    np.testing.assert_allclose(joined, expected, atol=1e-6)
    np.testing.assert_allclose(load_audio(encoded[ext], sample_rate=16000), expected, atol=1e-6)


def test_blocks_keep_the_channels_when_asked(encoded):
    blocks = list(audio.iter_audio_blocks(encoded["wav"], sample_rate=16000, block_seconds=0.3, mono=False))
    data, rate = sf.read(encoded["wav"], dtype="float32", always_2d=True)
    expected = soxr.resample(data, rate, 16000, quality="HQ").T
    joined = np.concatenate(blocks, axis=1)
    assert all(b.shape[0] == 2 for b in blocks)
    np.testing.assert_allclose(joined, expected, atol=1e-6)


def test_blocks_read_at_most_one_block_of_source_frames_at_a_time(tmp_path, monkeypatch):
    path = str(tmp_path / "long.wav")
    sf.write(path, sine(300.0, 44100, 12.0, channels=2), 44100, subtype="FLOAT")
    asked = []
    real_read_frames = audio_files._read_frames

    def spy_read_frames(f, frames):
        asked.append(frames)
        return real_read_frames(f, frames)

    monkeypatch.setattr(audio_files, "_read_frames", spy_read_frames)
    total = sum(b.size for b in audio.iter_audio_blocks(path, sample_rate=16000, block_seconds=2.0))

    assert len(asked) >= 6 and all(0 < frames <= 2 * 44100 for frames in asked)
    assert abs(total - 12 * 16000) <= 1


def test_blocks_follow_offset_and_duration(ramp_wav):
    path, ramp = ramp_wav
    blocks = list(audio.iter_audio_blocks(path, sample_rate=16000, block_seconds=0.25, offset_seconds=0.5,
                                          duration_seconds=2.0))
    assert [b.size for b in blocks] == [4000] * 8
    np.testing.assert_array_equal(np.concatenate(blocks), ramp[8000:40000])


@pytest.mark.parametrize("kwargs,message", [
    (dict(block_seconds=0.0), "block_seconds"),
    (dict(sample_rate=0), "sample_rate"),
    (dict(offset_seconds=-1.0), "offset"),
    (dict(duration_seconds=0.0), "duration"),
])
def test_iter_audio_blocks_invalid_arguments(ramp_wav, kwargs, message):
    with pytest.raises(ValueError, match=message):
        next(audio.iter_audio_blocks(ramp_wav[0], **kwargs))


def _long_ogg(folder, *, seconds: float = 15.0) -> tuple[str, bytes]:
    """A ``seconds`` long stereo Ogg Vorbis file written by soundfile; returns its path and bytes."""
    rng = np.random.default_rng(0)
    wave = sine(440.0, 44100, seconds, amplitude=0.3, channels=2)
    wave += 0.02 * rng.standard_normal(wave.shape).astype(np.float32)
    path = str(folder / "whole.ogg")
    sf.write(path, wave, 44100, format="OGG", subtype="VORBIS")
    return path, open(path, "rb").read()


def test_a_truncated_ogg_is_a_decode_error_not_a_shorter_track(tmp_path):
    whole, data = _long_ogg(tmp_path)
    cut = str(tmp_path / "cut.ogg")
    open(cut, "wb").write(data[:len(data) * 45 // 100])
    # libsndfile reads the cut file's length from its last page: it promises only what is there.
    assert audio_info(cut).duration < 0.6 * audio_info(whole).duration

    with pytest.raises(AudioDecodeError, match="truncated") as caught:
        load_audio(cut)

    assert caught.value.path == cut
    assert load_audio(whole).size == pytest.approx(15 * 16000, abs=2)


def test_an_ogg_cut_exactly_at_a_page_boundary_is_truncated_too(tmp_path):
    _, data = _long_ogg(tmp_path)
    cut = str(tmp_path / "cut_at_page.ogg")
    open(cut, "wb").write(data[:data.rfind(b"OggS", 0, len(data) // 2)])
    with pytest.raises(AudioDecodeError, match="end-of-stream"):
        load_audio(cut)


def test_an_ogg_with_trailing_bytes_after_its_last_page_still_decodes(tmp_path):
    whole, data = _long_ogg(tmp_path, seconds=3.0)
    padded = str(tmp_path / "padded.ogg")
    open(padded, "wb").write(data + b"\0" * 100)
    np.testing.assert_array_equal(load_audio(padded), load_audio(whole))


@pytest.mark.parametrize("size", [1, 3, 5, 7])
def test_pooling_blocks_equals_pooling_the_joined_signal(size):
    rng = np.random.default_rng(size)
    signal = rng.standard_normal(10007).astype(np.float32)
    cuts = np.sort(rng.choice(np.arange(1, signal.size), 40, replace=False))
    blocks = audio.MeasuredBlocks(np.split(signal, cuts) + [np.zeros(0, np.float32)])

    pooled = np.concatenate(list(audio.iter_mean_pooled(blocks, size=size)))

    np.testing.assert_array_equal(pooled, mean_pool(signal, size=size))
    assert blocks.samples == signal.size
    assert blocks.peak == float(np.max(np.abs(signal)))


def test_pooling_no_blocks_is_empty():
    blocks = audio.MeasuredBlocks([])
    assert list(audio.iter_mean_pooled(blocks, size=5)) == [] and blocks.samples == 0 and blocks.peak == 0.0


def test_measured_blocks_check_the_excerpt_before_the_consumer_sees_its_end(tmp_path):
    quiet = [np.full(4000, 1e-6, np.float32), np.full(4000, 1e-6, np.float32)]
    seen = []
    with pytest.raises(AudioDecodeError, match="silent"):
        for block in audio.MeasuredBlocks(quiet, path=str(tmp_path / "quiet.wav"), sample_rate=8000, min_seconds=0.5):
            seen.append(block)
    assert len(seen) == 2  # every block passed through; the end raised
    short = audio.MeasuredBlocks([np.ones(100, np.float32)], path="short.wav", sample_rate=8000, min_seconds=0.5)
    with pytest.raises(AudioDecodeError, match="short.wav: too short"):
        list(audio.iter_mean_pooled(short, size=5))  # the partial last window is never yielded


def test_the_excerpt_decoders_agree_on_the_centred_excerpt(tmp_path):
    path = str(tmp_path / "tone.wav")
    rate = 8000
    t = np.arange(int(12.3 * rate)) / rate
    sf.write(path, (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), rate)
    offset, duration = centred_excerpt(12.3, 5.0)
    expected = load_audio(path, sample_rate=rate, offset=offset, duration=duration)

    excerpt = audio.load_excerpt(path=path, sample_rate=rate, max_seconds=5.0)
    settings = audio.DecodeSettings(sample_rate=rate, pool_size=5, max_seconds=5.0, min_seconds=1.0)
    pooled, seconds = audio.pooled_excerpt(path, settings=settings)
    streamed = np.concatenate(list(audio.iter_pooled_blocks(path, sample_rate=rate, pool_size=5, max_seconds=5.0,
                                                            min_seconds=1.0, block_seconds=0.7)))

    np.testing.assert_array_equal(excerpt, expected)
    np.testing.assert_array_equal(pooled, mean_pool(expected, size=5))
    np.testing.assert_array_equal(streamed, pooled)
    assert seconds == expected.size / rate
    assert audio.decode_track(path, settings).seconds == seconds
    assert "too short" in audio.decode_track(path, audio.DecodeSettings(
        sample_rate=rate, pool_size=5, max_seconds=5.0, min_seconds=6.0)).reason


class _RawPcmBackend:
    """audioread's interface over a headerless 16-bit PCM file: what a backend (ffmpeg, gstreamer)
    hands back for a format libsndfile does not read, in audioread's small buffers."""

    def __init__(self, path: str, *, samplerate: int, channels: int):
        self.path, self.samplerate, self.channels = path, samplerate, channels

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def __iter__(self):
        with open(self.path, "rb") as f:
            while chunk := f.read(4098):  # not a whole number of frames: blocks must re-align them
                yield chunk


def test_the_audioread_fallback_streams_the_same_excerpt(tmp_path, monkeypatch):
    import audioread

    rate, channels = 22050, 2
    wave = sine(440.0, rate, 3.0, amplitude=0.5, channels=channels)
    wave[:, 1] *= 0.5
    pcm = np.round(wave * 32767).astype("<i2")
    path = str(tmp_path / "song.m4a")  # libsndfile cannot read headerless PCM: the fallback decodes it
    pcm.tofile(path)
    monkeypatch.setattr(audioread, "audio_open", lambda p: _RawPcmBackend(p, samplerate=rate, channels=channels))
    as_float = pcm.astype(np.float32) / np.float32(32768.0)

    blocks = list(audio.iter_audio_blocks(path, sample_rate=16000, block_seconds=0.2, offset_seconds=0.5,
                                          duration_seconds=2.0))

    excerpt = as_float[int(0.5 * rate):int(0.5 * rate) + int(2.0 * rate)]
    expected = soxr.resample(excerpt.mean(axis=1, dtype=np.float32), rate, 16000, quality="HQ")
    assert len(blocks) >= 8
    np.testing.assert_allclose(np.concatenate(blocks), expected, atol=1e-6)
    np.testing.assert_allclose(load_audio(path, sample_rate=16000, offset=0.5, duration=2.0), expected, atol=1e-6)


def test_an_unreadable_file_says_so_rather_than_not_audio(encoded, monkeypatch):
    real_open = open

    def denying_open(path, *args, **kwargs):  # tests run as root: chmod cannot deny a read
        if os.fspath(path) == encoded["flac"]:
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(audio_files, "open", denying_open, raising=False)
    for read in (audio_info, load_audio):
        with pytest.raises(AudioDecodeError, match=r"cannot be read \(Permission denied\)") as caught:
            read(encoded["flac"])
        assert caught.value.path == encoded["flac"]


def test_the_search_side_decodes_without_data_prep():
    # Embedding, serving and the fitted models decode through musicsim.data.audio alone: no module of the
    # package imports data_prep, at the top or inside a function.
    package = os.path.dirname(os.path.abspath(musicsim.__file__))  # the whole package, wherever audio lives
    importers = []
    for folder, _, names in os.walk(package):
        for name in (n for n in names if n.endswith(".py")):
            path = os.path.join(folder, name)
            with open(path, encoding="utf-8") as f:
                tree = ast.parse(f.read(), filename=path)
            for node in ast.walk(tree):
                modules = ([a.name for a in node.names] if isinstance(node, ast.Import)
                           else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
                importers += [f"{os.path.relpath(path, package)}:{node.lineno}" for m in modules
                              if m.split(".")[0] == "data_prep"]
    assert importers == []
