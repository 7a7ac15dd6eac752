"""data_prep faults a new user runs into: colliding track ids, unreadable folders, undecodable CSVs,
truncated Ogg files, concurrent builds into one folder, and decoding workers outliving their build."""
from __future__ import annotations

import csv
import json
import os
import shutil
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile as sf
from conftest import assert_workers_die_with

from data_prep import build, lock, sources
from data_prep.build import prepare
from musicsim.data.dataset import DATASET_INFO_FILE, is_prepared, read_catalog
from musicsim.owned import NotOurFolderError, owned_kind
from musicsim.data.tfrecords import SPLITS, iter_records, shard_paths

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAST = dict(sample_rate=8000, pool_size=5, workers=1, progress=False, verbose=False)
FORMATS = {"wav": dict(format="WAV", subtype="PCM_16"), "flac": dict(format="FLAC", subtype="PCM_16"),
           "ogg": dict(format="OGG", subtype="VORBIS")}


def write_tone(path, *, seconds: float = 1.5, frequency: float = 440.0, rate: int = 16000, seed: int = 0) -> str:
    """A sine plus seeded noise (no two files alike), in the format of ``path``'s extension."""
    path = str(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    t = np.arange(int(round(seconds * rate))) / rate
    noise = 0.05 * np.random.default_rng(seed).standard_normal(t.size)
    sf.write(path, (0.4 * np.sin(2 * np.pi * frequency * t) + noise).astype(np.float32), rate,
             **FORMATS[os.path.splitext(path)[1][1:]])
    return path


def records_per_split(output: str) -> dict[str, int]:
    return {split: sum(1 for _ in iter_records(shard_paths(output, split))) for split in SPLITS}


# ---------------------------------------------------------------- track ids


# Distinct files whose names the old sanitiser mapped to one id.
COLLIDING = ["Песни/01.ogg", "Музыка/01.ogg", "mix/my track.wav", "mix/my_track.wav", "mix/t.flac",
             "mix/t.ogg"]


@pytest.fixture
def colliding_tree(tmp_path) -> str:
    root = tmp_path / "albums"
    for i, relative in enumerate(COLLIDING):
        write_tone(root / relative, frequency=200 + 40 * i, seed=i)
    for i in range(3):  # every album needs a few tracks for the split
        for album in ("Песни", "Музыка"):
            write_tone(root / album / f"extra{i}.wav", frequency=700 + 30 * i, seed=100 + i + 10 * len(album))
    return str(root)


def test_album_folder_ids_keep_unicode_and_never_collide(colliding_tree):
    listing = sources.list_album_folders(root=colliding_tree)

    ids = {t.track_id: os.path.relpath(t.path, colliding_tree) for t in listing.tracks}
    assert listing.skipped == []
    assert len(ids) == len(listing.tracks) == len(COLLIDING) + 6
    assert ids["Песни/01"] == "Песни/01.ogg" and ids["Музыка/01"] == "Музыка/01.ogg"
    assert ids["mix/my track"] == "mix/my track.wav" and ids["mix/my_track"] == "mix/my_track.wav"
    # Same stem, two formats: the extension tells them apart.
    assert ids["mix/t.flac"] == "mix/t.flac" and ids["mix/t.ogg"] == "mix/t.ogg"


def test_album_folder_build_keeps_every_album(colliding_tree, tmp_path):
    output = str(tmp_path / "out")

    report = prepare(dataset="album_folders", input_path=colliding_tree, output=output, **FAST)

    catalog = read_catalog(output)
    assert report["skipped"] == [] and report["tracks"] == len(catalog) == len(COLLIDING) + 6
    assert {e.labels[0] for e in catalog} == {"Песни", "Музыка", "mix"}
    assert sum(records_per_split(output).values()) == len(catalog)
    with open(os.path.join(output, "tracks.csv"), encoding="utf-8") as f:
        assert "Песни/01" in {row["track_id"] for row in csv.DictReader(f)}


def test_a_real_duplicate_is_reported_as_the_same_content(colliding_tree, tmp_path):
    copy = os.path.join(colliding_tree, "mix", "copy.ogg")  # "mix" is listed before the Cyrillic albums
    shutil.copy(os.path.join(colliding_tree, "Песни", "01.ogg"), copy)
    output = str(tmp_path / "out")

    report = prepare(dataset="album_folders", input_path=colliding_tree, output=output, **FAST)

    assert [(s["track_id"], s["reason"]) for s in report["skipped"]] == [
        ("Песни/01", f"duplicate: the same content as {copy} (track_id 'mix/copy')")]
    assert report["tracks"] == len(COLLIDING) + 6


def test_labelled_csv_ids_derived_from_paths_never_collide(colliding_tree, tmp_path):
    csv_path = tmp_path / "songs.csv"  # beside the "albums" folder: paths relative to it
    rows = [(f"albums/{relative}", f"g{i % 3}") for i, relative in enumerate(COLLIDING)]
    rows.append((f"albums/{COLLIDING[0]}", "g0"))  # the same file twice
    with open(csv_path, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([("path", "genre")] + rows)

    listing = sources.list_labelled_csv(csv_path=str(csv_path), label_column="genre")

    expected = ["Песни/01", "Музыка/01", "mix/my track", "mix/my_track", "mix/t.flac", "mix/t.ogg"]
    assert sorted(t.track_id for t in listing.tracks) == sorted(f"albums/{relative}" for relative in expected)
    assert [s["reason"] for s in listing.skipped] == ["the same file is listed twice"]


def test_explicit_ids_repeated_for_another_file_are_reported_with_the_first(tmp_path):
    first = write_tone(tmp_path / "a.wav", seed=1)
    second = write_tone(tmp_path / "b.wav", seed=2)
    manifest = tmp_path / "manifest.csv"
    manifest.write_text(f"path,track_id,label_album\n{first},x,alpha\n{second},x,beta\n", encoding="utf-8")

    listing = sources.list_manifest(manifest=str(manifest))

    assert [t.path for t in listing.tracks] == [first]
    assert listing.skipped == [{"path": second, "track_id": "x",
                                "reason": f"duplicate track_id 'x' (first listed for {first})"}]


# ---------------------------------------------------------------- unreadable folders


def _deny_listing(monkeypatch, denied: str) -> None:
    """Make ``os.scandir`` of one folder fail as a permission error does (tests run as root)."""
    real_scandir = os.scandir

    def scandir(path="."):
        if os.path.abspath(os.fspath(path)) == denied:
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)


def test_an_unreadable_album_folder_is_reported_not_dropped(colliding_tree, tmp_path, monkeypatch):
    denied = os.path.join(colliding_tree, "mix")
    _deny_listing(monkeypatch, denied)
    output = str(tmp_path / "out")

    report = prepare(dataset="album_folders", input_path=colliding_tree, output=output,
                     **dict(FAST, verbose=True))

    assert report["tracks"] == 8  # the two readable albums
    assert report["skipped"] == [{"path": denied, "track_id": "",
                                  "reason": "folder could not be read (Permission denied); its files were left out"}]
    assert json.load(open(os.path.join(output, "report.json")))["skipped"] == report["skipped"]
    assert "skipped none" not in report["summary"]


def test_an_unreadable_root_is_an_error_naming_it(colliding_tree, monkeypatch):
    _deny_listing(monkeypatch, colliding_tree)
    with pytest.raises(ValueError, match=f"{colliding_tree} cannot be read: Permission denied"):
        sources.list_album_folders(root=colliding_tree)


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="root reads folders whatever their permissions: chmod cannot deny it")
def test_a_chmod_000_album_folder_is_reported(colliding_tree):
    denied = os.path.join(colliding_tree, "mix")
    os.chmod(denied, 0)
    try:
        listing = sources.list_album_folders(root=colliding_tree)
    finally:
        os.chmod(denied, 0o755)
    assert [s["path"] for s in listing.skipped] == [denied]


# ---------------------------------------------------------------- CSVs that are not UTF-8 text


def _latin1_labelled_csv(folder) -> str:
    write_tone(folder / "café.wav")
    path = folder / "songs.csv"
    path.write_bytes("path,genre\ncafé.wav,chanson\n".encode("latin-1"))
    return str(path)


def _binary_manifest(folder) -> str:
    path = folder / "manifest.csv"
    path.write_bytes(b"path,track_id,label_album\n" + bytes(range(256)) * 4)
    return str(path)


def _latin1_mtat(folder) -> str:
    path = folder / sources.MTAT_ANNOTATIONS
    path.write_bytes("clip_id\tguitar\tmp3_path\n1\t1\t0/café-0-29.mp3\n".encode("latin-1"))
    return str(folder)


@pytest.mark.parametrize("kind,make,file_name,what", [
    ("labelled_csv", _latin1_labelled_csv, "songs.csv", "not UTF-8 text (byte 0xe9"),
    ("manifest", _binary_manifest, "manifest.csv", "a binary file, not a CSV"),
    ("magnatagatune", _latin1_mtat, sources.MTAT_ANNOTATIONS, "not UTF-8 text (byte 0xe9"),
])
def test_an_undecodable_csv_is_an_error_naming_the_file(tmp_path, kind, make, file_name, what):
    input_path = make(tmp_path)
    with pytest.raises(ValueError) as caught:
        sources.list_source(kind, input_path=input_path)
    assert str(caught.value).startswith(f"{tmp_path / file_name}: {what}")

    command = [sys.executable, "-m", "data_prep.build", f"--dataset={kind}", f"--input={input_path}",
               f"--output={tmp_path / 'out'}", "--noprogress"]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr
    assert f"data_prep.build: error: {tmp_path / file_name}: {what}" in result.stderr
    assert "Traceback" not in result.stderr


# ---------------------------------------------------------------- truncated Ogg


def test_a_truncated_ogg_is_skipped_with_its_reason(tmp_path):
    root = tmp_path / "albums"
    for album in ("a", "b"):
        for i in range(4):
            write_tone(root / album / f"t{i}.wav", frequency=300 + 50 * i, seed=i + (10 if album == "b" else 0))
    whole = write_tone(tmp_path / "whole.ogg", seconds=15.0, rate=44100, seed=7)
    data = open(whole, "rb").read()
    cut = root / "a" / "cut.ogg"
    cut.write_bytes(data[:len(data) * 45 // 100])  # libsndfile reads this as a complete 6-7 s file

    report = prepare(dataset="album_folders", input_path=str(root), output=str(tmp_path / "out"), **FAST)

    assert report["tracks"] == 8
    assert [(s["track_id"], s["reason"].split(" (")[0]) for s in report["skipped"]] == [("a/cut", "truncated audio")]


# ---------------------------------------------------------------- one build per output folder


@pytest.fixture
def small_tree(tmp_path) -> str:
    root = tmp_path / "small"
    for a, album in enumerate(("a", "b", "c")):
        for i in range(4):
            write_tone(root / album / f"t{i}.wav", frequency=250 + 60 * a + 15 * i, seed=10 * a + i)
    return str(root)


def _build_command(tree: str, output: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "data_prep.build", "--dataset=album_folders", f"--input={tree}",
            f"--output={output}", "--noprogress", "--sample_rate=8000", *extra]


def test_a_second_build_into_a_locked_folder_refuses_with_exit_2(small_tree, tmp_path):
    output = str(tmp_path / "out")
    with lock.OutputLock(output) as held:  # as a build running in this process holds it
        owner = json.load(open(held.path))
        assert (owner["pid"], owner["host"]) == (os.getpid(), socket.gethostname())

        result = subprocess.run(_build_command(small_tree, output), cwd=REPO_ROOT, capture_output=True, text=True,
                                timeout=300)

        assert result.returncode == 2, result.stderr
        assert (f"data_prep.build: error: {output} is being built by another data_prep.build (pid {os.getpid()} "
                f"on host {socket.gethostname()}") in result.stderr
        assert "Traceback" not in result.stderr
        assert sorted(os.listdir(output)) == [lock.LOCK_NAME]  # the refused build wrote nothing
    assert not os.path.exists(held.path)


def test_the_lock_is_held_while_the_build_writes(small_tree, tmp_path, monkeypatch):
    output = str(tmp_path / "out")
    seen = []
    real_write_catalog = build.write_catalog

    def write_catalog(dataset_dir, entries):
        seen.append(json.load(open(os.path.join(dataset_dir, lock.LOCK_NAME)))["pid"])
        with pytest.raises(lock.OutputLockedError, match="is being built by another"):
            lock.OutputLock(dataset_dir).acquire()
        real_write_catalog(dataset_dir, entries)

    monkeypatch.setattr(build, "write_catalog", write_catalog)
    prepare(dataset="album_folders", input_path=small_tree, output=output, **FAST)

    assert seen == [os.getpid()]
    assert not os.path.exists(os.path.join(output, lock.LOCK_NAME))


def test_a_stale_lock_of_a_dead_process_is_taken_over(small_tree, tmp_path):
    output = str(tmp_path / "out")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    os.makedirs(output)
    with open(os.path.join(output, lock.LOCK_NAME), "w") as f:
        json.dump({"pid": dead.pid, "host": socket.gethostname(), "start": None, "time": time.time() - 60,
                   "token": "old"}, f)

    report = prepare(dataset="album_folders", input_path=small_tree, output=output, **FAST)

    assert report["tracks"] == 12
    assert not os.path.exists(os.path.join(output, lock.LOCK_NAME))


def test_a_lock_of_a_live_pid_reused_by_another_process_is_stale(tmp_path):
    # This process is alive, but it did not write the lock: its start time differs.
    output = str(tmp_path / "out")
    os.makedirs(output)
    with open(os.path.join(output, lock.LOCK_NAME), "w") as f:
        json.dump({"pid": os.getpid(), "host": socket.gethostname(), "start": "1", "time": 0, "token": "old"}, f)
    if lock._process_start(os.getpid()) is None:
        pytest.skip("no /proc: process start times are unknown here")
    with lock.OutputLock(output) as held:
        assert json.load(open(held.path))["token"] == held.token


def test_a_lock_held_on_another_host_is_refused(tmp_path):
    output = str(tmp_path / "out")
    os.makedirs(output)
    with open(os.path.join(output, lock.LOCK_NAME), "w") as f:
        json.dump({"pid": 1, "host": "elsewhere.example", "start": None, "time": 0, "token": "x"}, f)
    with pytest.raises(lock.OutputLockedError, match="pid 1 on host elsewhere.example"):
        lock.OutputLock(output).acquire()


def test_a_folder_of_other_files_is_refused_and_left_untouched(small_tree, tmp_path):
    output = tmp_path / "my documents"
    (output / "train").mkdir(parents=True)
    (output / "notes.txt").write_text("mine")
    (output / "train" / "shard-00007.json").write_text("also mine")
    (output / "x.tmp-1").write_text("mine too")
    before = {p: p.read_bytes() for p in output.rglob("*") if p.is_file()}

    with pytest.raises(NotOurFolderError, match="is not empty and is not a dataset folder"):
        prepare(dataset="album_folders", input_path=small_tree, output=str(output), **FAST)

    assert {p: p.read_bytes() for p in output.rglob("*") if p.is_file()} == before
    result = subprocess.run(_build_command(small_tree, str(output)), cwd=REPO_ROOT, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 2 and f"{output} is not empty and is not a dataset folder" in result.stderr


@pytest.mark.parametrize("legacy_mark", [lock.CLAIM_NAME, DATASET_INFO_FILE])
def test_a_dataset_folder_marked_before_the_manifest_is_still_ours(tmp_path, legacy_mark):
    output = tmp_path / "old"
    (output / "train").mkdir(parents=True)
    (output / "train" / "shard-00000.tfrecord").write_bytes(b"")
    mark = {"name": "old", "kind": "album_folders", "sample_rate": 16000, "pool_size": 5}
    (output / legacy_mark).write_text(json.dumps(mark) if legacy_mark == DATASET_INFO_FILE else "claimed")

    lock.claim_output_folder(str(output))

    assert owned_kind(str(output)) == lock.DATASET_KIND
    lock.check_output_folder(str(output))


def test_an_interrupted_build_is_still_ours_and_resumes(small_tree, tmp_path, monkeypatch):
    output = str(tmp_path / "out")
    monkeypatch.setattr(build, "write_catalog", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        prepare(dataset="album_folders", input_path=small_tree, output=output, **FAST)
    assert not os.path.exists(os.path.join(output, "dataset.json")) and not is_prepared(output)
    monkeypatch.undo()

    report = prepare(dataset="album_folders", input_path=small_tree, output=output, **FAST)

    assert report["tracks"] == 12 and report["shards"]["reused"] == report["shards"]["total"]
    assert is_prepared(output)


# ---------------------------------------------------------------- workers end with their build


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux /proc to find the worker processes")
def test_workers_end_when_the_build_is_killed(tmp_path):
    tree = tmp_path / "long"
    for a, album in enumerate(("a", "b")):
        for i in range(8):  # enough decoding that the build is still running when it is killed
            write_tone(tree / album / f"t{i}.wav", seconds=40.0, rate=22050, frequency=300 + 40 * i + 7 * a,
                       seed=10 * a + i)
    # 2 workers and multiprocessing's resource tracker
    assert_workers_die_with(_build_command(str(tree), str(tmp_path / "out"), "--workers=2"), cwd=REPO_ROOT,
                            min_processes=3)


# ---------------------------------------------------------------- memory bounded by a track, not a shard


def test_a_shard_is_written_as_its_tracks_decode_not_held_whole(small_tree, tmp_path, monkeypatch):
    import gc
    import weakref

    alive, most_alive = set(), [0]
    real_decode_in_order = build.decode_in_order

    def watched_decode_in_order(paths, **kwargs):
        for result in real_decode_in_order(paths, **kwargs):
            gc.collect()
            most_alive[0] = max(most_alive[0], len(alive) + 1)
            if result.pooled is not None:
                key = id(result.pooled)
                alive.add(key)
                weakref.finalize(result.pooled, alive.discard, key)
            yield result

    monkeypatch.setattr(build, "decode_in_order", watched_decode_in_order)
    report = prepare(dataset="album_folders", input_path=small_tree, output=str(tmp_path / "out"), shard_size=6,
                     **FAST)

    assert report["tracks"] == 12 and report["shards"]["total"] >= 2
    assert most_alive[0] <= 2  # the track being written and the next one: never the shard's 6


def test_an_output_that_is_a_file_is_refused_untouched(small_tree, tmp_path):
    output = tmp_path / "out.txt"
    output.write_text("a file")
    with pytest.raises(NotOurFolderError, match="is a file, not a folder"):
        prepare(dataset="album_folders", input_path=small_tree, output=str(output), **FAST)
    assert output.read_text() == "a file"
