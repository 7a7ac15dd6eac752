"""Distillation from whole tracks (musicsim.pretraining.stream, experiments.distill, benchmarks/distill_folds.py)."""
from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile as sf

from musicsim.data.audio import load_audio
from musicsim.pretraining import stream

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SR = 16000
# A small WaveNet: the tests check the plumbing, not the quality.
TINY_PARAMS = "channels=8,skip_channels=8,num_stacks=2,layers_per_stack=3,final_channels=16"
TINY_FLAGS = ["--teacher=MSD_musicnn", "--round_crops=8", "--round_steps=4", "--eval_every_steps=2",
              "--patience_steps=4", "--max_steps=8", "--batch_size=4", f"--params={TINY_PARAMS}"]


def _env() -> dict:
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": REPO_ROOT}


def _load_benchmark(name: str):
    folder = os.path.join(REPO_ROOT, "benchmarks")
    if folder not in sys.path:
        sys.path.insert(0, folder)
    spec = importlib.util.spec_from_file_location(name, os.path.join(folder, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def timed_tone(*, seconds: float, f0: float, seed: int) -> np.ndarray:
    """A tone whose pitch glides with time and a little noise: every crop of it differs from the others."""
    t = np.arange(int(seconds * SR)) / SR
    rng = np.random.default_rng(seed)
    glide = f0 * (1.0 + 0.5 * t / seconds)
    phase = 2 * np.pi * np.cumsum(glide) / SR
    return (0.3 * np.sin(phase) * (0.6 + 0.4 * np.sin(2 * np.pi * 0.7 * t)) + 0.01 * rng.standard_normal(t.size)
            ).astype(np.float32)


def write_track(path: str, *, seconds: float, f0: float, seed: int) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    sf.write(path, timed_tone(seconds=seconds, f0=f0, seed=seed), SR)
    return path


class BandTeacher:
    """A deterministic teacher computing on the crop itself: its energy in 8 frequency bands and its RMS.

    Counts the crops it is asked for (a cached crop must not reach it)."""

    dim = 9

    def __init__(self, key: str = "band-teacher-v1"):
        self.key = key
        self.computed = 0

    def __call__(self, *, crops, frame_rate):
        assert frame_rate == stream.TEACHER_RATE
        self.computed += len(crops)
        rows = []
        for crop in crops:
            spectrum = np.abs(np.fft.rfft(np.asarray(crop, np.float64)))
            bands = [band.mean() for band in np.array_split(spectrum, 8)]
            rows.append(np.log1p(bands + [np.sqrt(np.mean(np.square(crop)))]))
        return np.asarray(rows, np.float32)


@pytest.fixture(scope="module")
def long_tracks(tmp_path_factory) -> dict[str, str]:
    """A 75 s track in each format libsndfile seeks in, and a 20 s one."""
    root = tmp_path_factory.mktemp("long")
    audio = timed_tone(seconds=75.0, f0=220.0, seed=0)
    paths = {}
    for fmt, subtype in (("wav", "PCM_16"), ("flac", "PCM_16"), ("ogg", "VORBIS")):
        paths[fmt] = str(root / f"long.{fmt}")
        sf.write(paths[fmt], audio, SR, subtype=subtype)
    paths["short"] = write_track(str(root / "short.wav"), seconds=20.0, f0=440.0, seed=1)
    return paths


# -- crops --------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["wav", "flac", "ogg"])
def test_crops_are_drawn_from_the_whole_track(long_tracks, fmt):
    sources, skipped = stream.audio_sources(paths=[long_tracks[fmt]], min_seconds=3.0)
    assert not skipped and sources[0].seconds == pytest.approx(75.0, abs=0.01)
    crops = stream.draw_crops(sources=sources, crop_seconds=3.0, count=200, rng=np.random.default_rng(0))
    starts = np.array([c.start_seconds for c in crops])
    assert starts.min() >= 0 and (starts + 3.0).max() <= 75.0 + 1e-9
    late = [c for c in crops if c.start_seconds > 60.0]
    assert late, "no crop after the first 60 s"
    assert starts.min() < 10.0  # and the beginning too: uniform over the track, not an excerpt
    # The crop read by seeking is the track's own audio at that offset (decoded whole for comparison).
    whole = load_audio(long_tracks[fmt], sample_rate=SR, min_seconds=0.0)
    for crop in late[:3]:
        first = int(round(crop.start_ms * SR / 1000))
        samples = stream.read_crop(crop)
        assert samples.shape == (int(round(crop.crop_ms * SR / 1000)),)
        np.testing.assert_allclose(samples, whole[first:first + samples.size], atol=1e-3 if fmt == "ogg" else 1e-6)


def test_a_longer_track_gives_proportionally_more_crops(long_tracks):
    sources, _ = stream.audio_sources(paths=[long_tracks["wav"], long_tracks["short"]], min_seconds=3.0)
    crops = stream.draw_crops(sources=sources, crop_seconds=3.0, count=4000, rng=np.random.default_rng(1))
    share = np.mean([c.source.path == long_tracks["wav"] for c in crops])
    assert share == pytest.approx(72.0 / (72.0 + 17.0), abs=0.03)  # start positions, not tracks, are uniform


# -- pairing ------------------------------------------------------------------------------------
@pytest.mark.parametrize("use_cache", [False, True])
@pytest.mark.parametrize("batch_crops", [1, 3, 32])
def test_each_crop_is_paired_with_the_target_of_that_crop(long_tracks, tmp_path, use_cache, batch_crops):
    sources, _ = stream.audio_sources(paths=[long_tracks["wav"], long_tracks["short"]], min_seconds=3.0)
    crops = stream.draw_crops(sources=sources, crop_seconds=3.0, count=12, rng=np.random.default_rng(2))
    teacher = BandTeacher()
    cache = stream.TargetCache(root=str(tmp_path), teacher_key=teacher.key, dim=teacher.dim) if use_cache else None
    if use_cache:  # half the crops already cached, in another order and batch: the rest computed
        stream.crop_targets(crops=crops[::2][::-1], teacher=teacher, cache=cache, batch_crops=5)
        teacher.computed = 0
    audio, targets, failed = stream.crop_targets(crops=crops, teacher=teacher, cache=cache, batch_crops=batch_crops)
    assert not failed and len(audio) == len(crops) and targets.shape == (len(crops), teacher.dim)
    assert teacher.computed == (len(crops) - len(crops[::2]) if use_cache else len(crops))
    for crop, samples, target in zip(crops, audio, targets):
        alone = stream.read_crop(crop)
        np.testing.assert_array_equal(samples, alone)
        np.testing.assert_allclose(target, BandTeacher()(crops=[alone], frame_rate=SR)[0], rtol=1e-6)
    # The student reads the very crop whose target it is given, whatever the shuffle.
    student = stream.student_input("logmel8k")
    pairs = stream.iter_pairs(audio=audio, targets=targets, student=student, endless=True, seed=3)
    for _ in range(2 * len(crops)):
        features, target = next(pairs)
        (row,) = np.flatnonzero(np.all(targets == target, axis=1))
        np.testing.assert_array_equal(features["audio"], stream.student_audio(audio[row], student=student))
        assert features["length"] == features["audio"].shape[0] == len(audio[row]) // 2


def test_the_real_teacher_gives_each_crop_its_own_vector_in_a_batch(long_tracks):
    from musicsim.models.musicnn import MusicnnTeacher

    sources, _ = stream.audio_sources(paths=[long_tracks["wav"]], min_seconds=3.0)
    crops = stream.spread_crops(sources=sources, crop_seconds=float(stream.musicnn.PATCH_SECONDS), per_track=3)
    teacher = MusicnnTeacher(checkpoint="MSD_musicnn")
    audio, targets, _ = stream.crop_targets(crops=crops, teacher=teacher, cache=None, batch_crops=3)
    for samples, target in zip(audio, targets):
        np.testing.assert_allclose(target, teacher(crops=[samples], frame_rate=SR)[0], atol=1e-5)
    assert not np.allclose(targets[0], targets[-1], atol=1e-3)  # the first and last crops differ


# -- the cache ----------------------------------------------------------------------------------
def test_the_cache_is_keyed_by_teacher_track_content_and_crop(long_tracks, tmp_path):
    (source,), _ = stream.audio_sources(paths=[long_tracks["wav"]], min_seconds=3.0)
    crop = stream.Crop(source=source, start_ms=61_000, crop_ms=3000)
    value = np.arange(9, dtype=np.float32)
    first = stream.TargetCache(root=str(tmp_path), teacher_key="teacher-a", dim=9)
    assert first.get(crop) is None
    assert first.put(crop, value)
    np.testing.assert_array_equal(first.get(crop), value)
    other = stream.TargetCache(root=str(tmp_path), teacher_key="teacher-b", dim=9)
    assert other.get(crop) is None
    other.folder = first.folder  # even reading the same files, another teacher's entry is a miss
    assert other.get(crop) is None
    edited = stream.AudioSource(path=source.path, content_hash="0" * 40, seconds=source.seconds)
    moved = stream.AudioSource(path="/elsewhere/the-same.wav", content_hash=source.content_hash, seconds=source.seconds)
    assert first.get(stream.Crop(source=edited, start_ms=61_000, crop_ms=3000)) is None
    assert first.get(stream.Crop(source=source, start_ms=61_010, crop_ms=3000)) is None
    assert first.get(stream.Crop(source=source, start_ms=61_000, crop_ms=6000)) is None
    np.testing.assert_array_equal(first.get(stream.Crop(source=moved, start_ms=61_000, crop_ms=3000)), value)
    full = stream.TargetCache(root=str(tmp_path), teacher_key="teacher-c", dim=9, max_bytes=1)
    assert full.put(crop, value) and not full.put(stream.Crop(source=source, start_ms=0, crop_ms=3000), value)


WRITER = """
import sys, numpy as np
from musicsim.pretraining import stream
root, dim = sys.argv[1], int(sys.argv[2])
source = stream.AudioSource(path="x.wav", content_hash="ab" * 20, seconds=1e6)
cache = stream.TargetCache(root=root, teacher_key="killed-teacher", dim=dim)
for i in range(100000):
    cache.put(stream.Crop(source=source, start_ms=10 * i, crop_ms=3000), np.full(dim, i, np.float32))
    print(i, flush=True)
"""


@pytest.mark.parametrize("delay", [0.0, 0.013, 0.031])
def test_a_kill_mid_write_leaves_no_corrupt_entry(tmp_path, delay):
    dim = 1_000_000  # 4 MB an entry: a kill lands inside a write most of the time
    process = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), str(dim)], stdout=subprocess.PIPE,
                               env=_env(), cwd=REPO_ROOT, text=True)
    try:
        for _ in range(3):
            process.stdout.readline()
        time.sleep(delay)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait(timeout=30)
    cache = stream.TargetCache(root=str(tmp_path), teacher_key="killed-teacher", dim=dim)
    source = stream.AudioSource(path="x.wav", content_hash="ab" * 20, seconds=1e6)
    entries = [name for _, _, files in os.walk(cache.folder) for name in files if name.endswith(".npz")]
    assert len(entries) >= 3
    found = 0
    for i in range(len(entries) + 2):
        value = cache.get(stream.Crop(source=source, start_ms=10 * i, crop_ms=3000))
        if value is not None:
            found += 1
            assert np.all(value == i), f"entry {i} holds another crop's or a partial value"
    assert found == len(entries)  # every entry under its name is whole; a partial one only exists as a temporary


# -- album folds ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def album_corpus(tmp_path_factory) -> dict:
    """4 albums x 2 tracks of 8 s, WAV, with a manifest (labels only for the folds)."""
    import csv

    root = tmp_path_factory.mktemp("albums")
    rows = []
    for a, f0 in enumerate((220.0, 330.0, 495.0, 740.0)):
        for k in range(2):
            relative = f"audio/al{a}/t{k}.wav"
            write_track(str(root / relative), seconds=8.0, f0=f0 * (1 + 0.05 * k), seed=10 * a + k)
            rows.append({"path": relative, "track_id": f"al{a}__t{k}", "label_album": f"al{a}"})
    with open(root / "manifest.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["path", "track_id", "label_album"])
        writer.writeheader()
        writer.writerows(rows)
    return {"root": str(root), "manifest": str(root / "manifest.csv")}


def test_under_album_folds_no_test_album_audio_reaches_distillation(album_corpus, tmp_path, monkeypatch):
    from experiments import distill as distill_run

    folds_module = _load_benchmark("distill_folds")
    album_folds = _load_benchmark("album_folds")
    paths, albums = folds_module.load_corpus(album_corpus["manifest"])
    folds = album_folds.assign_album_folds(albums=albums, n_folds=2, seed=0)
    fold = 0
    train_paths = folds_module.fold_training_paths(paths=paths, folds=folds, fold=fold)
    test_paths = {p for p, f in zip(paths, folds) if f == fold}
    assert test_paths and not test_paths & set(train_paths)
    touched = []
    real_load, real_info = stream.load_audio, stream.audio_info
    monkeypatch.setattr(stream, "load_audio", lambda path, **kw: touched.append(path) or real_load(path, **kw))
    monkeypatch.setattr(stream, "audio_info", lambda path: touched.append(path) or real_info(path))
    decoded = []
    settings = distill_run.DistillSettings(teacher="MSD_musicnn", round_crops=8, round_steps=2, eval_every_steps=2,
                                           patience_steps=2, max_steps=4, batch_size=4, held_out_crops=2,
                                           params=distill_run.parse_params(TINY_PARAMS))
    results = distill_run.distill(paths=train_paths, output=str(tmp_path / "run"), settings=settings,
                                  cache_dir=str(tmp_path / "cache"), embed=False, progress=False,
                                  on_decode=decoded.append, teacher=BandTeacher())
    assert decoded and touched
    assert {c.source.path for c in decoded} <= set(train_paths)
    assert not set(touched) & test_paths, "a test album's file was read by distillation"
    assert results["distill"]["tracks"]["train"] + results["distill"]["tracks"]["held_out_stop"] \
        + results["distill"]["tracks"]["held_out_report"] == len(train_paths)
    # A teacher that now computes something else under the same name (the engine's blocks changed) does not
    # resume this run: its targets and standardisation would not match.
    with pytest.raises(distill_run.DistillRunError, match="use a new --output"):
        distill_run.distill(paths=train_paths, output=str(tmp_path / "run"), settings=settings,
                            cache_dir=str(tmp_path / "cache"), embed=False, progress=False,
                            teacher=BandTeacher(key="band-teacher-v2"))


# -- a make-distill-style run is a run like any other ---------------------------------------------------------
def _run(args: list[str], *, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=REPO_ROOT, env=_env(), capture_output=True, text=True,
                          timeout=timeout)


def test_a_distill_run_exports_indexes_searches_and_resumes(album_corpus, tmp_path):
    from musicsim.rundir import RunDir

    run_dir, cache = str(tmp_path / "distilled-wavenet"), str(tmp_path / "cache")
    command = ["-m", "experiments.distill", f"--audio={album_corpus['manifest']}", f"--output={run_dir}",
               f"--cache_dir={cache}", *TINY_FLAGS]
    first = _run(command)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "teacher agreement" in first.stdout and "took" in first.stdout
    results = RunDir(run_dir).results()
    assert -1.0 <= results["held_out_metrics"]["teacher_agreement_test"] <= 1.0
    assert results["distill"]["teacher"] == "MSD_musicnn" and results["distill"]["steps"] >= 2
    embeddings = RunDir(run_dir).embeddings()
    assert len(embeddings.track_ids) == 8 and set(embeddings.splits) >= {"train", "eval"}
    cached = sum(len(files) for _, _, files in os.walk(cache))
    assert cached > 0

    # Run again: it resumes (same checkpoint, nothing recomputed for the teacher) and reports again.
    again = _run(command)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "teacher agreement" in again.stdout
    assert RunDir(run_dir).results()["checkpoint"] == results["checkpoint"]
    assert sum(len(files) for _, _, files in os.walk(cache)) == cached
    # Another teacher into the same folder is refused (exit 2), not mixed in.
    refused = _run([*command, "--teacher=MSD_vgg"])
    assert refused.returncode == 2 and "another distillation" in refused.stderr

    export = str(tmp_path / "music.parquet")
    exported = _run(["-m", "experiments.export", f"--model_dir={run_dir}",
                     f"--audio={os.path.join(album_corpus['root'], 'audio')}", f"--output={export}"])
    assert exported.returncode == 0, exported.stderr[-3000:]
    vectors = np.load(export.replace(".parquet", ".npy"))
    with open(export.replace(".parquet", ".ids.json")) as f:
        ids = json.load(f)
    assert vectors.shape == (8, embeddings.vectors.shape[1])
    # The export embeds each file as the run embedded it.
    by_path = dict(zip(embeddings.paths, embeddings.vectors))
    import pandas as pd

    table = pd.read_parquet(export)
    path_column = "path" if "path" in table.columns else [c for c in table.columns if "path" in c][0]
    for row, path in enumerate(table[path_column]):
        np.testing.assert_allclose(vectors[row], by_path[os.path.abspath(path)], atol=1e-4)
    index = str(tmp_path / "index")
    built = _run(["-m", "musicsim.index", "build", f"--embeddings={export}", f"--output={index}"])
    assert built.returncode == 0, built.stderr[-3000:]
    query = os.path.join(album_corpus["root"], "audio", "al2", "t0.wav")
    searched = _run(["-m", "musicsim.search.query", f"--index={index}", f"--query={query}", "-k", "3", "--json"])
    assert searched.returncode == 0, searched.stderr[-3000:]
    hits = json.loads(searched.stdout[searched.stdout.index("["):])
    assert len(hits) == 3 and len(ids) == 8
    # A file query of an indexed file finds that file first (its own vector, cosine 1).
    assert os.path.samefile(hits[0]["path"], query) and hits[0]["score"] == pytest.approx(1.0, abs=1e-4)
