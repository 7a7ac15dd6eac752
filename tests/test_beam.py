"""data_prep.beam_pipeline: the Beam build writes the local build's records, catalog, skip report and
feature cache."""
from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile as sf

from data_prep.build import prepare
from data_prep.beam_pipeline import pipeline_options
from data_prep.sources import list_source
from data_prep.splits import assign_splits
from musicsim import features
from musicsim.data.dataset import feature_cache_dir, read_catalog
from musicsim.data.tfrecords import SPLITS, iter_records, shard_paths

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RATE = 8000
# In-process Beam workers: the synthetic cases test the pipeline's logic, not its process pool
# (the tiny-corpus test runs the default multi_processing mode).
IN_MEMORY = ["--direct_running_mode=in_memory", "--direct_num_workers=1"]
QUIET = dict(progress=False, verbose=False)
PART_NAME = re.compile(r"part-\d{5}-of-(\d{5})\.tfrecord")


def records_by_split(dataset_dir: str) -> dict[str, list[bytes]]:
    """Every split's serialized records, sorted (shard order and names do not matter)."""
    return {split: sorted(iter_records(shard_paths(dataset_dir, split))) for split in SPLITS}


@pytest.fixture(scope="module")
def album_tree(tmp_path_factory) -> str:
    """3 albums x 4 tones (1.5-2.25 s, 8 kHz WAV) and one file that is not audio: ``ROOT/<album>/<track>``."""
    root = str(tmp_path_factory.mktemp("albums") / "src")
    rng = np.random.default_rng(0)
    for a, album in enumerate(("alpha", "beta", "gamma")):
        os.makedirs(os.path.join(root, album))
        for k in range(4):
            t = np.arange(int((1.5 + 0.25 * k) * RATE)) / RATE
            tone = 0.4 * np.sin(2 * np.pi * 110.0 * (a + 1) * (1 + 0.05 * k) * t) + 0.02 * rng.standard_normal(t.size)
            sf.write(os.path.join(root, album, f"t{k}.wav"), tone.astype(np.float32), RATE)
    with open(os.path.join(root, "alpha", "broken.wav"), "w") as f:
        f.write("RIFF? no: a text file named .wav\n" * 10)
    return root


@pytest.fixture(scope="module")
def both_builds(album_tree, tmp_path_factory) -> dict[str, tuple[str, dict]]:
    """The album tree built by each runner, with librosa features: runner -> (output, report)."""
    builds = {}
    for runner, beam_args in (("local", []), ("DirectRunner", IN_MEMORY)):
        output = str(tmp_path_factory.mktemp(runner) / "out")
        report = prepare(dataset="album_folders", input_path=album_tree, output=output, sample_rate=RATE,
                         shard_size=2, workers=1, runner=runner, beam_args=beam_args, features="librosa", **QUIET)
        builds[runner] = (output, report)
    return builds


def test_beam_writes_the_local_records_catalog_and_skip_report(both_builds):
    (local_dir, local), (beam_dir, beam) = both_builds["local"], both_builds["DirectRunner"]

    assert records_by_split(beam_dir) == records_by_split(local_dir)
    assert sum(len(r) for r in records_by_split(beam_dir).values()) == 12
    assert read_catalog(beam_dir) == read_catalog(local_dir)
    assert beam["skipped"] == local["skipped"]
    assert [(s["track_id"], "not audio" in s["reason"]) for s in beam["skipped"]] == [("alpha/broken", True)]
    for key in ("tracks", "seconds", "splits", "labels"):
        assert beam[key] == local[key], key
    assert (beam["runner"], local["runner"]) == ("DirectRunner", "local")
    assert beam["beam_options"] == IN_MEMORY + ["--default_sdk_harness_log_level=WARNING"]
    assert not os.path.exists(os.path.join(beam_dir, ".beam-side"))


def test_beam_shards_are_named_and_counted_like_the_local_plan(both_builds, album_tree):
    (local_dir, local), (beam_dir, beam) = both_builds["local"], both_builds["DirectRunner"]
    for split in SPLITS:
        names = sorted(os.listdir(os.path.join(beam_dir, split)))  # nothing else: no sidecar, no temp folder
        matches = [PART_NAME.fullmatch(n) for n in names]
        assert all(matches), names
        # ceil(planned tracks / shard_size) shards, as the local plan cut them; each name says how many.
        assert {int(m.group(1)) for m in matches} == {len(names)} == {len(shard_paths(local_dir, split))}
    assert beam["shards"] == {"total": local["shards"]["total"], "written": local["shards"]["total"], "reused": 0}
    listing = list_source("album_folders", input_path=album_tree)
    split_of = assign_splits(tracks=listing.tracks, seed=0)
    assert len(split_of) == 13  # 12 tones and broken.wav: planned, then skipped
    for split in SPLITS:
        assert len(shard_paths(beam_dir, split)) == math.ceil(sum(s == split for s in split_of.values()) / 2)


@pytest.fixture(scope="module")
def fresh_librosa_features(both_builds) -> tuple[list[str], np.ndarray]:
    """The kept tracks' paths and their librosa vectors ``[12, 1414]``, extracted without any cache."""
    paths = [e.path for e in read_catalog(both_builds["local"][0])]
    vectors, ok, skipped = features.extract_many(paths=paths, feature_fn="librosa", max_seconds=None, workers=1,
                                                 cache_dir=None, progress=False)
    assert ok == list(range(len(paths))) and skipped == []
    return paths, vectors


@pytest.mark.parametrize("runner", ["local", "DirectRunner"])
def test_feature_cache_makes_extraction_free(both_builds, fresh_librosa_features, runner, monkeypatch):
    output, report = both_builds[runner]
    paths, reference = fresh_librosa_features
    assert [e.path for e in read_catalog(output)] == paths

    def no_decoding(*args, **kwargs):
        raise AssertionError("extract_many decoded a file the build should have cached")

    monkeypatch.setattr(features, "load_excerpt", no_decoding)
    cached, ok, skipped = features.extract_many(paths=paths, feature_fn="librosa", max_seconds=None, workers=1,
                                                cache_dir=feature_cache_dir(output),
                                                progress=False)

    assert ok == list(range(len(paths))) and skipped == []
    np.testing.assert_allclose(cached, reference, rtol=1e-9, atol=1e-12)
    assert report["features"]["tracks"] == len(paths) == 12 and report["features"]["failed"] == []


@pytest.mark.parametrize("first, second", [("DirectRunner", "local"), ("local", "DirectRunner")])
def test_switching_runners_in_one_folder_keeps_only_the_new_shards(album_tree, tmp_path, first, second):
    output = str(tmp_path / "out")
    args = {"local": [], "DirectRunner": IN_MEMORY}
    prepare(dataset="album_folders", input_path=album_tree, output=output, sample_rate=RATE, shard_size=3,
            workers=1, runner=first, beam_args=args[first], **QUIET)
    records = records_by_split(output)

    report = prepare(dataset="album_folders", input_path=album_tree, output=output, sample_rate=RATE, shard_size=3,
                     workers=1, runner=second, beam_args=args[second], **QUIET)

    stale = "shard-" if second == "DirectRunner" else "part-"  # the first runner's files
    for split in SPLITS:
        assert not [n for n in os.listdir(os.path.join(output, split)) if n.startswith(stale)], split
    assert records_by_split(output) == records
    assert report["tracks"] == 12


@pytest.mark.parametrize("kwargs, match", [
    (dict(runner="SpamRunner"), "runner must be one of"),
    (dict(runner="local", beam_args=["--direct_num_workers=2"]), "not flags of data_prep.build"),
    (dict(features="chroma"), "features must be one of"),
    (dict(runner="DirectRunner", beam_args=["--direct_num_wrokers=2"]),
     r"unknown Beam pipeline options \['--direct_num_wrokers'\]"),
    (dict(runner="DirectRunner", beam_args=["--direct_num_workers=2", "stray"]), r"unexpected arguments \['stray'\]"),
    (dict(output="gs://bucket/prepared"), "must be a local"),
])
def test_invalid_arguments_raise(album_tree, tmp_path, kwargs, match):
    kwargs = dict(dict(output=str(tmp_path / "out")), **kwargs)
    with pytest.raises(ValueError, match=match):
        prepare(dataset="album_folders", input_path=album_tree, sample_rate=RATE, **QUIET, **kwargs)
    assert not os.path.exists(os.path.join(str(tmp_path / "out"), "dataset.json"))


@pytest.mark.parametrize("beam_args, direct", [
    ([], {"direct_running_mode": "multi_processing", "direct_num_workers": 3}),
    (["--direct_num_workers=1"], {"direct_running_mode": "multi_processing", "direct_num_workers": 1}),
    (["--direct_running_mode", "multi_threading"], {"direct_running_mode": "multi_threading", "direct_num_workers": 3}),
])
def test_direct_runner_defaults_yield_to_given_options(beam_args, direct):
    options, effective = pipeline_options(runner="DirectRunner", beam_args=beam_args, workers=3)
    values = options.get_all_options()
    assert {key: values[key] for key in direct} == direct
    assert effective[:len(beam_args)] == beam_args
    assert values["runner"] == "DirectRunner"


def test_command_line_passes_beam_options_through(album_tree, tmp_path):
    output = str(tmp_path / "cli")
    command = [sys.executable, "-m", "data_prep.build", "--dataset=album_folders", f"--input={album_tree}",
               f"--output={output}", f"--sample_rate={RATE}", "--noprogress", "--runner=DirectRunner", *IN_MEMORY]

    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT, timeout=120)

    assert result.returncode == 0, result.stderr[-2000:]
    assert "prepared 12 tracks" in result.stdout and "skipped 1 files" in result.stdout
    with open(os.path.join(output, "report.json")) as f:
        assert json.load(f)["beam_options"][:2] == IN_MEMORY


# ---------------------------------------------------------------- integration: the tiny dev corpus




def test_multiprocessing_direct_runner_matches_local_build_on_tiny_corpus(tiny_corpus, tmp_path, monkeypatch):
    common = dict(dataset="manifest", input_path=tiny_corpus, max_seconds=8, workers=2, **QUIET)
    started = time.perf_counter()
    local = prepare(output=str(tmp_path / "local"), **common)
    local_seconds = time.perf_counter() - started
    started = time.perf_counter()
    beam = prepare(output=str(tmp_path / "beam"), runner="DirectRunner", features="mfcc", **common)
    beam_seconds = time.perf_counter() - started
    print(f"\ntiny corpus, 20 tracks x 8 s: local {local_seconds:.1f} s, DirectRunner multi_processing x2 "
          f"(+ mfcc features) {beam_seconds:.1f} s")

    assert beam["beam_options"][:2] == ["--direct_running_mode=multi_processing", "--direct_num_workers=2"]
    by_split = records_by_split(str(tmp_path / "beam"))
    assert by_split == records_by_split(str(tmp_path / "local"))
    assert sum(len(r) for r in by_split.values()) == 20
    assert read_catalog(str(tmp_path / "beam")) == read_catalog(str(tmp_path / "local"))
    assert beam["skipped"] == local["skipped"] == []

    # The workers filled the mfcc cache: extract_many decodes nothing and agrees with a fresh extraction.
    paths = [e.path for e in read_catalog(str(tmp_path / "beam"))]
    fresh, _, _ = features.extract_many(paths=paths[:2], feature_fn="mfcc", max_seconds=8.0, workers=1,
                                        progress=False)
    monkeypatch.setattr(features, "load_excerpt", lambda *a, **k: pytest.fail("decoded a cached track"))
    cached, ok, skipped = features.extract_many(
        paths=paths, feature_fn="mfcc", max_seconds=8.0, workers=1, progress=False,
        cache_dir=feature_cache_dir(str(tmp_path / "beam")))
    assert cached.shape == (20, 2 * features.N_MFCC) and skipped == []
    np.testing.assert_allclose(cached[:2], fresh, rtol=1e-9, atol=1e-12)


def test_the_beam_pipeline_does_not_import_the_local_build():
    # The types both runners share live in data_prep.shards: no import circle between build and beam.
    code = ("import sys, data_prep.beam_pipeline; "
            "print(sorted(m for m in sys.modules if m.startswith('data_prep.')))")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    assert "data_prep.build" not in result.stdout and "data_prep.shards" in result.stdout
