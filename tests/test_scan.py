"""musicsim.scan: a music folder scanned in place into an index, kept current, resumable, one writer at a time.

Most tests embed with a real MFCC model fitted here (``--model_dir``: fast); one runs the default engine.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile as sf

from conftest import render_track
from test_tags import tiny_png, write_tags

from musicsim import scan
import musicsim.index

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE_RATE = 8000
ALBUMS = ("low_sine", "bright_square", "noisy_mid")
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": REPO}


def write_track(path: str, *, album: str, index: int, seconds: float = 2.5, tags: dict | None = None,
                cover: bool = False) -> str:
    """A synthetic track of ``album``'s timbre in the format of ``path``'s extension, tagged with mutagen."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fmt = {".ogg": ("OGG", "VORBIS"), ".flac": ("FLAC", "PCM_16"), ".wav": ("WAV", "PCM_16")}[os.path.splitext(path)[1]]
    sf.write(path, render_track(album=album, index=index, seconds=seconds, sample_rate=SAMPLE_RATE,
                                seed=hash((album, index)) % 1000), SAMPLE_RATE, format=fmt[0], subtype=fmt[1])
    if tags is not None or cover:
        write_tags(path, tags or {}, cover=tiny_png() if cover else None)
    return path


def write_library(root: str, *, per_album: int = 2) -> list[str]:
    """ALBUMS x ``per_album`` tracks: ogg and flac with Unicode tags, one untagged WAV album folder."""
    paths = []
    for a, album in enumerate(ALBUMS):
        for k in range(per_album):
            if album == "noisy_mid":  # untagged: title and album fall back to file and folder names
                paths.append(write_track(os.path.join(root, "Untagged", album, f"track {k}.wav"), album=album, index=k))
                continue
            ext = ".ogg" if k % 2 == 0 else ".flac"
            paths.append(write_track(os.path.join(root, f"Альбом {a}", f"{k:02d} песня{ext}"), album=album, index=k,
                                     tags={"title": f"Песня {k} «{album}»", "artist": "Björk", "album": f"Альбом {a}",
                                           "track_number": k + 1, "year": 2000 + a}, cover=(k == 0)))
    return paths


@pytest.fixture(scope="module")
def mfcc_run(tmp_path_factory) -> str:
    """A real MFCC model fitted on tracks of the library's timbres: what --model_dir names."""
    from musicsim.models.mfcc import MFCCModel

    root = tmp_path_factory.mktemp("fit")
    paths = [write_track(str(root / "audio" / f"{album}{k}.wav"), album=album, index=k + 5)
             for album in ALBUMS for k in range(2)]
    model = MFCCModel(sample_rate=SAMPLE_RATE, max_seconds=None, workers=1, progress=False).fit(paths=paths)
    model.save(str(root / "mfcc"))
    return str(root / "mfcc")


class CountingEmbedder:
    """An embedder that records every file it is asked to embed (and is otherwise the one it wraps)."""

    def __init__(self, inner):
        self.inner, self.paths = inner, []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def iter_embeddings(self, *, paths, **kwargs):
        self.paths.extend(paths)
        yield from self.inner.iter_embeddings(paths=paths, **kwargs)


def scan_in_process(roots, index_dir, model_dir, **kwargs):
    """``scan_library`` with a counting wrapper of the run's embedder: (summary, the embedded paths)."""
    from musicsim.embedder import load_embedder

    embedder = CountingEmbedder(load_embedder(model_dir))
    summary = scan.scan_library(roots=[str(r) for r in roots], index_dir=str(index_dir), model_dir=model_dir,
                                workers=1, progress=False, embedder=embedder, **kwargs)
    return summary, embedder.paths


def run_cli(*args, timeout=240):
    return subprocess.run([sys.executable, "-m", "musicsim.scan", *map(str, args)], cwd=REPO, env=ENV,
                          capture_output=True, text=True, timeout=timeout)


def index_content(index_dir) -> dict:
    """track id -> (raw vector, metadata without the inode) of a saved index."""
    index = musicsim.index.open(str(index_dir))
    raw = getattr(index, "raw_vector", index.vector)
    return {t: (np.asarray(raw(track_id=t)), {k: v for k, v in index.metadata(track_id=t).items() if k != "file_inode"})
            for t in index.track_ids}


def assert_same_index(actual_dir, expected_dir):
    actual, expected = index_content(actual_dir), index_content(expected_dir)
    assert sorted(actual) == sorted(expected)
    for track_id, (vector, metadata) in expected.items():
        assert actual[track_id][1] == metadata, track_id
        np.testing.assert_allclose(actual[track_id][0], vector, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------- tags and ids

def test_first_scan_indexes_tags_paths_groups_and_records_its_engine(tmp_path, mfcc_run):
    paths = write_library(str(tmp_path / "lib"))
    summary, embedded = scan_in_process([tmp_path / "lib"], tmp_path / "index", mfcc_run)

    assert (summary.added, summary.skipped, summary.tracks) == (len(paths), 0, len(paths))
    assert sorted(embedded) == sorted(paths)
    index = musicsim.index.open(str(tmp_path / "index"))
    assert index.model["engine"] == "run" and index.model["model_dir"] == mfcc_run and index.model["name"] == "mfcc"
    by_path = {index.metadata(track_id=t)["path"]: (t, index.metadata(track_id=t)) for t in index.track_ids}
    tagged = by_path[paths[0]][1]
    assert (tagged["title"], tagged["artist"], tagged["album"], tagged["group"], tagged["track_number"],
            tagged["year"]) == ("Песня 0 «low_sine»", "Björk", "Альбом 0", "Альбом 0", 1, 2000)
    assert tagged["relative_path"] == "Альбом 0/00 песня.ogg" and tagged["duration_s"] == pytest.approx(2.5, abs=0.05)
    untagged = by_path[os.path.join(str(tmp_path / "lib"), "Untagged", "noisy_mid", "track 1.wav")]
    assert (untagged[1]["title"], untagged[1]["album"], untagged[1]["group"], untagged[1]["artist"]) == (
        "track 1", "noisy_mid", "Untagged/noisy_mid", None)
    assert untagged[0] == scan.track_id_for(root=str(tmp_path / "lib"), relative_path="Untagged/noisy_mid/track 1.wav")
    state = json.load(open(tmp_path / "index" / scan.STATE_FILE))
    assert {p for p, r in state["files"].items() if r["status"] == "indexed"} == set(paths)


# ------------------------------------------------------------------------------------ incremental updates

def test_rescan_after_add_change_rename_delete_equals_a_fresh_scan(tmp_path, mfcc_run):
    lib = tmp_path / "lib"
    paths = write_library(str(lib))
    scan_in_process([lib], tmp_path / "index", mfcc_run)

    added = write_track(str(lib / "New album" / "new.ogg"), album="bright_square", index=7, tags={"title": "Новая"})
    changed = paths[1]
    write_track(changed, album="noisy_mid", index=9, seconds=3.0, tags={"title": "changed"})
    os.utime(changed, ns=(time.time_ns(), os.stat(changed).st_mtime_ns + 10**9))  # a new mtime, whatever the clock
    renamed = str(lib / "Альбом 2 renamed" / "moved.ogg")
    os.makedirs(os.path.dirname(renamed))
    os.rename(paths[4], renamed)
    os.remove(paths[2])
    summary, embedded = scan_in_process([lib], tmp_path / "index", mfcc_run)

    assert (summary.added, summary.changed, summary.moved, summary.removed, summary.unchanged) == (1, 1, 1, 1, 3)
    assert sorted(embedded) == sorted([added, changed])  # the renamed file keeps its vector: no audio read
    scan_in_process([lib], tmp_path / "fresh", mfcc_run)
    assert_same_index(tmp_path / "index", tmp_path / "fresh")


def test_rescan_of_an_unchanged_library_reads_no_audio(tmp_path, mfcc_run, monkeypatch):
    lib = tmp_path / "lib"
    paths = write_library(str(lib))
    (lib / "broken.ogg").write_bytes(b"OggS" + os.urandom(300))
    scan_in_process([lib], tmp_path / "index", mfcc_run)
    before = index_content(tmp_path / "index")
    version = json.load(open(tmp_path / "index" / "config.json")).get("version")
    # Every file's content is replaced by noise of the same size, its mtime kept: reading any would show.
    for path in paths:
        stat = os.stat(path)
        with open(path, "r+b") as f:
            f.write(os.urandom(stat.st_size))
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    opened = []
    import mutagen
    monkeypatch.setattr(sf, "info", lambda *a, **k: opened.append(a) or pytest.fail("sf.info called"))
    monkeypatch.setattr(sf.SoundFile, "__init__", lambda *a, **k: opened.append(a) or pytest.fail("decoded"))
    monkeypatch.setattr(mutagen, "File", lambda *a, **k: opened.append(a) or pytest.fail("tags read"))

    summary, embedded = scan_in_process([lib], tmp_path / "index", mfcc_run)
    assert (embedded, opened) == ([], [])
    assert (summary.unchanged, summary.skipped, summary.added, summary.removed) == (len(paths), 1, 0, 0)
    assert json.load(open(tmp_path / "index" / "config.json")).get("version") == version  # not even rewritten
    after = index_content(tmp_path / "index")
    assert sorted(after) == sorted(before)


# -------------------------------------------------------------------------------- kill -9, then resume

# The real command in a subprocess, its embedder slowed to one file per SLOW_SECONDS (the fitted model embeds
# 64 files at once), so that a kill falls between its checkpoints.
SLOW_SECONDS = 0.25
SLOW_SCAN = f"""
import sys, time
from musicsim import embedder, scan
inner = embedder.FittedEmbedder.iter_embeddings
def slow(self, **kwargs):
    for result in inner(self, **kwargs):
        time.sleep({SLOW_SECONDS})
        yield result
embedder.FittedEmbedder.iter_embeddings = slow
sys.exit(scan.main(sys.argv))
"""


def _saving(index_dir) -> bool:
    parent, name = os.path.split(str(index_dir))
    return any(entry.startswith(name + ".tmp-") or entry == name + ".bak" for entry in os.listdir(parent))


@pytest.mark.parametrize("kill_at", ["start", "checkpoint 1", "checkpoint 4", "during a save"])
def test_kill_9_at_any_point_then_resume(tmp_path, mfcc_run, kill_at):
    lib = tmp_path / "lib"
    paths = write_library(str(lib), per_album=4)
    index_dir = tmp_path / "index"
    process = subprocess.Popen([sys.executable, "-c", SLOW_SCAN, f"--audio={lib}", f"--index={index_dir}",
                                f"--model_dir={mfcc_run}", "--workers=1", "--checkpoint_files=1", "--noprogress"],
                               cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while kill_at != "start" and time.monotonic() < deadline and process.poll() is None:
        if kill_at == "during a save":  # a save after the first (a killed first save leaves no index: as "start")
            if (index_dir / "config.json").exists() and _saving(index_dir):
                break
        else:
            config = index_dir / "config.json"
            try:
                version = json.load(open(config)).get("version", 0) if config.exists() else 0
            except (OSError, ValueError):
                version = 0
            if version >= int(kill_at.split()[1]):
                break
        time.sleep(0.002)
    process.send_signal(signal.SIGKILL)
    process.communicate()
    assert process.returncode == -signal.SIGKILL, "the scan ended before it could be killed"
    indexed = 0
    if kill_at != "start":  # what was saved loads, whatever moment the kill came
        indexed = len(musicsim.index.open(str(index_dir)))
        assert 1 <= indexed < len(paths)

    resumed = run_cli(f"--audio={lib}", f"--index={index_dir}", f"--model_dir={mfcc_run}", "--workers=1", "--noprogress")
    assert resumed.returncode == 0, resumed.stderr
    assert f"{len(paths) - indexed} added" in resumed.stdout and f"{indexed} unchanged" in resumed.stdout
    scan_in_process([lib], tmp_path / "fresh", mfcc_run)
    assert_same_index(index_dir, tmp_path / "fresh")
    assert not [name for name in os.listdir(tmp_path) if ".tmp-" in name or name.endswith(".bak")]


# ------------------------------------------------------------------------------- the walk: exclude, links

@pytest.mark.parametrize("pattern", ["Podcasts", "*/Podcasts/", "Lib*/Pod*"])
def test_an_excluded_folder_is_never_read_and_its_tracks_leave_the_index(tmp_path, mfcc_run, monkeypatch, pattern):
    lib = tmp_path / "lib"
    write_library(str(lib), per_album=1)
    podcast = write_track(str(lib / "Library" / "Podcasts" / "episode.ogg"), album="low_sine", index=3)
    scan_in_process([lib], tmp_path / "index", mfcc_run)
    index = musicsim.index.open(str(tmp_path / "index"))
    assert podcast in {index.metadata(track_id=t)["path"] for t in index.track_ids}
    os.mkfifo(lib / "Library" / "Podcasts" / "blocks-if-opened.wav")  # reading it would hang the scan
    listed = []
    real_scandir = os.scandir
    monkeypatch.setattr(os, "scandir", lambda path=".": (isinstance(path, int) or listed.append(os.fspath(path)))
                        and real_scandir(path) or real_scandir(path))

    summary, embedded = scan_in_process([lib], tmp_path / "index", mfcc_run, excludes=[pattern])
    assert str(lib / "Library" / "Podcasts") not in listed and str(lib / "Library") in listed
    assert embedded == [] and summary.removed == 1
    index = musicsim.index.open(str(tmp_path / "index"))
    assert podcast not in {index.metadata(track_id=t)["path"] for t in index.track_ids}


def test_symlink_loops_and_links_are_reported_and_never_followed_for_ever(tmp_path, mfcc_run):
    lib, outside = tmp_path / "lib", tmp_path / "elsewhere"
    paths = write_library(str(lib), per_album=1)
    outside_track = write_track(str(outside / "sub" / "outside.flac"), album="bright_square", index=5)
    os.symlink(lib, lib / "Untagged" / "loop-to-root")  # a loop through an ancestor
    os.symlink(outside, lib / "linked")  # a folder outside the library: followed
    os.symlink(outside, outside / "sub" / "back")  # a loop outside the library
    os.symlink(paths[0], lib / "Untagged" / "same-file.ogg")  # a second name of an indexed file

    summary, _ = scan_in_process([lib], tmp_path / "index", mfcc_run)
    assert summary.added == len(paths) + 1
    index = musicsim.index.open(str(tmp_path / "index"))
    relative = sorted(index.metadata(track_id=t)["relative_path"] for t in index.track_ids)
    assert "linked/sub/outside.flac" in relative and len(relative) == len(set(relative)) == len(paths) + 1
    report = json.load(open(tmp_path / "index" / scan.REPORT_FILE))
    reasons = {os.path.relpath(p["path"], lib): p["reason"] for p in report["problems"]}
    assert "inside the library" in reasons["Untagged/loop-to-root"]
    assert "symlink loop" in reasons["linked/sub/back"]
    assert "indexed there" in reasons["Untagged/same-file.ogg"]
    assert outside_track  # written, and indexed through the link above


def test_tracks_under_a_folder_that_cannot_be_read_are_kept_and_reported(tmp_path, mfcc_run, monkeypatch):
    lib = tmp_path / "lib"
    paths = write_library(str(lib), per_album=2)
    scan_in_process([lib], tmp_path / "index", mfcc_run)
    before = index_content(tmp_path / "index")
    unreadable = str(lib / "Альбом 0")
    real_scandir = os.scandir

    def scandir(path="."):
        if not isinstance(path, int) and os.fspath(path) == unreadable:  # root reads anything: refuse it here
            raise PermissionError(13, "Permission denied", unreadable)
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    summary, embedded = scan_in_process([lib], tmp_path / "index", mfcc_run)
    assert (summary.kept_unreadable, summary.removed, summary.problems, embedded) == (2, 0, 1, [])
    assert sorted(index_content(tmp_path / "index")) == sorted(before) and len(before) == len(paths)
    report = json.load(open(tmp_path / "index" / scan.REPORT_FILE))
    assert [p["path"] for p in report["problems"]] == [unreadable]
    assert "Permission denied" in report["problems"][0]["reason"]


# ------------------------------------------------------------------------------------------- bad files

BAD_FILES = {
    "corrupt.flac": (lambda p, good: open(p, "wb").write(open(good, "rb").read()[:200]), ""),
    "empty.ogg": (lambda p, good: open(p, "wb").close(), "empty"),
    "silent.wav": (lambda p, good: sf.write(p, np.zeros(3 * SAMPLE_RATE, np.float32), SAMPLE_RATE), "silent"),
    "tiny.wav": (lambda p, good: sf.write(p, np.full(80, 0.3, np.float32), SAMPLE_RATE), "too short"),
    "notes.mp3": (lambda p, good: open(p, "w").write("these are my notes, not audio\n" * 20), "not audio"),
}


def test_bad_files_are_reported_with_reasons_and_never_end_the_scan(tmp_path, mfcc_run):
    lib = tmp_path / "lib"
    paths = write_library(str(lib), per_album=1)
    good = write_track(str(tmp_path / "good.flac"), album="low_sine", index=1)
    (lib / "Bad").mkdir()
    for name, (make, _) in BAD_FILES.items():
        make(str(lib / "Bad" / name), good)

    result = run_cli(f"--audio={lib}", f"--index={tmp_path / 'index'}", f"--model_dir={mfcc_run}", "--workers=1",
                     "--noprogress")
    assert result.returncode == 0, result.stderr
    assert f"{len(paths)} added" in result.stdout and f"{len(BAD_FILES)} skipped" in result.stdout
    report = json.load(open(tmp_path / "index" / scan.REPORT_FILE))
    reasons = {os.path.basename(s["path"]): s["reason"] for s in report["skipped"]}
    assert sorted(reasons) == sorted(BAD_FILES)
    for name, (_, expected) in BAD_FILES.items():
        assert expected in reasons[name] and reasons[name], (name, reasons[name])
    assert len(musicsim.index.open(str(tmp_path / "index"))) == len(paths)

    summary, embedded = scan_in_process([lib], tmp_path / "index", mfcc_run)  # bad files are not decoded again
    assert embedded == [] and summary.skipped == len(BAD_FILES)


# ------------------------------------------------------------------------------- engines and the CLI

def test_another_engine_is_refused_unless_rebuild(tmp_path, mfcc_run):
    from musicsim.models.mfcc import MFCCModel

    lib = tmp_path / "lib"
    paths = write_library(str(lib), per_album=1)
    other = MFCCModel(sample_rate=SAMPLE_RATE, max_seconds=None, workers=1, progress=False).fit(paths=paths)
    other.save(str(tmp_path / "other"))
    scan_in_process([lib], tmp_path / "index", mfcc_run)
    before = index_content(tmp_path / "index")

    refused = run_cli(f"--audio={lib}", f"--index={tmp_path / 'index'}", f"--model_dir={tmp_path / 'other'}")
    assert refused.returncode == 2 and "--rebuild" in refused.stderr and mfcc_run in refused.stderr
    assert sorted(index_content(tmp_path / "index")) == sorted(before)

    rebuilt = run_cli(f"--audio={lib}", f"--index={tmp_path / 'index'}", f"--model_dir={tmp_path / 'other'}",
                      "--rebuild", "--workers=1", "--noprogress")
    assert rebuilt.returncode == 0, rebuilt.stderr
    index = musicsim.index.open(str(tmp_path / "index"))
    assert index.model["model_dir"] == str(tmp_path / "other") and len(index) == len(paths)


@pytest.mark.parametrize("arguments,expected", [
    ([], "--audio"), (["--audio=/no/such/folder", "--index=/tmp/x"], "does not exist"),
    (["--audio=.", "--index=./inside"], "inside"), (["--audio=.", "--index=/tmp/x", "--workers=0"], "workers"),
])
def test_misuse_exits_2_with_one_line(arguments, expected):
    result = run_cli(*arguments, timeout=60)
    assert result.returncode == 2 and expected in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_help_exits_0():
    result = run_cli("--help", timeout=60)
    assert result.returncode == 0 and "--exclude" in result.stdout and "--rebuild" in result.stdout


def test_a_folder_that_is_not_an_index_is_refused_untouched(tmp_path, mfcc_run):
    lib = tmp_path / "lib"
    write_library(str(lib), per_album=1)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    result = run_cli(f"--audio={lib}", f"--index={tmp_path / 'mine'}", f"--model_dir={mfcc_run}")
    assert result.returncode == 2 and "not" in result.stderr
    assert os.listdir(tmp_path / "mine") == ["notes.txt"]


# ------------------------------------------------------------------------------- two writers at once

def test_scan_and_index_add_at_once_lose_nothing(tmp_path, mfcc_run):
    lib = tmp_path / "lib"
    paths = write_library(str(lib), per_album=4)
    index_dir = tmp_path / "index"
    scan_in_process([lib / "Альбом 0"], index_dir, mfcc_run)  # an index of this run to add to
    dim = musicsim.index.open(str(index_dir)).dim
    extra_ids = ["added-by-hand-1", "added-by-hand-2"]
    np.save(tmp_path / "extra.npy", np.random.default_rng(0).standard_normal((2, dim)).astype(np.float32))
    json.dump(extra_ids, open(tmp_path / "extra.ids.json", "w"))
    json.dump({"model": "mfcc", "model_dir": mfcc_run}, open(tmp_path / "extra.meta.json", "w"))

    process = subprocess.Popen([sys.executable, "-m", "musicsim.scan", f"--audio={lib}", f"--index={index_dir}",
                                f"--model_dir={mfcc_run}", "--workers=1", "--noprogress"],
                               cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    holder = str(index_dir) + ".lock.json"
    deadline = time.monotonic() + 60
    while not (os.path.exists(holder) and "scan" in open(holder).read()) and time.monotonic() < deadline:
        time.sleep(0.01)
    add = subprocess.run([sys.executable, "-m", "musicsim.index", "add", f"--index={index_dir}",
                          f"--embeddings={tmp_path / 'extra.npy'}"], cwd=REPO, env=ENV, capture_output=True,
                         text=True, timeout=120)
    out, err = process.communicate(timeout=240)
    assert process.returncode == 0, err
    if add.returncode == 2:  # refused while the scan held the lock, naming it: add again once it is done
        assert "musicsim-scan" in add.stderr
        add = subprocess.run([sys.executable, "-m", "musicsim.index", "add", f"--index={index_dir}",
                              f"--embeddings={tmp_path / 'extra.npy'}"], cwd=REPO, env=ENV, capture_output=True,
                             text=True, timeout=120)
    assert add.returncode == 0, add.stderr
    index = musicsim.index.open(str(index_dir))
    assert set(index.track_ids) == set(extra_ids) | {scan.track_id_for(root=str(lib), relative_path=os.path.relpath(
        p, lib)) for p in paths} | {scan.track_id_for(root=str(lib / "Альбом 0"), relative_path=os.path.basename(p))
                                    for p in paths if "Альбом 0" in p}
    # A later scan keeps the tracks it did not add.
    summary, _ = scan_in_process([lib], index_dir, mfcc_run)
    assert set(extra_ids) <= set(musicsim.index.open(str(index_dir)).track_ids) and summary.removed == 0


# ------------------------------------------------------------------------------- the default engine

def test_the_default_engine_scans_into_a_standardised_index(tmp_path, mfcc_run):
    lib = tmp_path / "lib"
    paths = [write_track(str(lib / album / "t.ogg"), album=album, index=0, seconds=4.0) for album in ALBUMS]
    result = run_cli(f"--audio={lib}", f"--index={tmp_path / 'index'}", "--workers=1", "--noprogress", timeout=600)
    assert result.returncode == 0, result.stderr
    index = musicsim.index.open(str(tmp_path / "index"))
    assert index.model["engine"] == "default" and len(index) == len(paths)
    config = json.load(open(tmp_path / "index" / "config.json"))
    assert config["standardise"] is True and len(config["dimension_weights"]) == index.dim
    # A file query embeds with the same engine (the index names it, no run folder) and finds the file itself.
    from musicsim.search.query import search

    found = search(index_dir=str(tmp_path / "index"), query_path=paths[1], k=1)
    assert found[0]["track_id"] == index.track_id_of_path(path=os.path.abspath(paths[1]))
    refused = run_cli(f"--audio={lib}", f"--index={tmp_path / 'index'}", f"--model_dir={mfcc_run}", timeout=120)
    assert refused.returncode == 2 and "the default engine" in refused.stderr and "--rebuild" in refused.stderr
