"""data_prep: source adapters, splits, the build (TFRecords, catalog, report, resume), the demo builder.

Every fixture is rendered here with soundfile (sines at various rates, channels and formats); the one
integration test builds the tiny dev corpus with the shared script when it is reachable.
"""
from __future__ import annotations

import collections
import csv
import dataclasses
import glob
import json
import os
import shutil
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import soundfile as sf

from data_prep import build, demo, sources, splits
from data_prep.build import prepare
from data_prep.sources import SourceTrack
from musicsim.data.audio import DecodeResult, DecodeSettings, audio_info, centred_excerpt, load_audio, mean_pool
from musicsim.data.dataset import DatasetInfo, read_catalog
from musicsim.data.tfrecords import SPLITS, read_tracks
from musicsim.workers import decode_in_order
from conftest import FakeApt, build_fake_deb

# audioread (the fallback decoder) imports stdlib modules deprecated in 3.11.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:audioread")
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FORMATS = {"wav": dict(format="WAV", subtype="PCM_16"), "flac": dict(format="FLAC", subtype="PCM_16"),
           "ogg": dict(format="OGG", subtype="VORBIS"), "opus": dict(format="OGG", subtype="OPUS"),
           "mp3": dict(format="MP3", subtype="MPEG_LAYER_III")}
# Small, quick builds: 8 kHz decode (a multiple of the pool size), one process unless a test says otherwise.
FAST = dict(sample_rate=8000, pool_size=5, workers=1, progress=False, verbose=False)


def write_tone(path, *, seconds: float = 2.0, frequency: float = 440.0, rate: int = 16000, channels: int = 1,
               amplitude: float = 0.4, seed: int = 0) -> str:
    """A sine plus a little noise (so no two files are alike), in the format of ``path``'s extension."""
    path = str(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    t = np.arange(int(round(seconds * rate))) / rate
    wave = amplitude * np.sin(2 * np.pi * frequency * t)
    noise = 0.05 * np.random.default_rng(seed).standard_normal((t.size, channels))
    data = (wave[:, None] + noise).astype(np.float32)
    sf.write(path, data, rate, **FORMATS[os.path.splitext(path)[1][1:]])
    return path


def expected_pooled(path: str, *, sample_rate: int, pool_size: int, max_seconds: float | None) -> np.ndarray:
    """The pooled excerpt computed directly with musicsim.data.audio, for the round-trip checks."""
    offset, duration = centred_excerpt(audio_info(path).duration, max_seconds)
    return mean_pool(load_audio(path, sample_rate=sample_rate, offset=offset, duration=duration), size=pool_size)


def shard_bytes(output: str) -> dict[str, bytes]:
    return {os.path.relpath(p, output): open(p, "rb").read()
            for p in sorted(glob.glob(os.path.join(output, "*", "shard-*.tfrecord")))}


# ---------------------------------------------------------------- fixtures: source layouts


ALBUMS = {  # album -> (format, file rate, channels, tracks)
    "Epic Trailer": ("wav", 44100, 2, 5),
    "calm_piano": ("flac", 22050, 1, 4),
    "Strings-3": ("ogg", 48000, 2, 4),
}


@pytest.fixture(scope="module")
def album_tree(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("albums")
    for a, (album, (ext, rate, channels, count)) in enumerate(ALBUMS.items()):
        for i in range(count):
            write_tone(root / album / f"Track {i:02d}.{ext}", seconds=1.5 + 0.25 * i, frequency=200 + 100 * a + 10 * i,
                       rate=rate, channels=channels, seed=10 * a + i)
    (root / "Epic Trailer" / "cover.jpg").write_bytes(b"\xff\xd8\xff not audio")
    (root / "README.txt").write_text("not an album")
    return str(root)


def test_album_folders_listing(album_tree):
    listing = sources.list_album_folders(root=album_tree)

    assert listing.relevance == "album" and not listing.multi_label
    assert len(listing.tracks) == 13 and listing.skipped == []
    by_id = {t.track_id: t for t in listing.tracks}
    assert by_id["Epic Trailer/Track 03"].labels == ("Epic Trailer",)
    assert by_id["Epic Trailer/Track 03"].path == os.path.join(album_tree, "Epic Trailer", "Track 03.wav")
    assert sorted(os.path.basename(i["path"]) for i in listing.ignored) == ["README.txt", "cover.jpg"]


def test_album_folders_build_round_trip_is_bit_exact(album_tree, tmp_path):
    output = str(tmp_path / "films")

    report = prepare(dataset="album_folders", input_path=album_tree, output=output, max_seconds=1.0, **FAST)

    info = DatasetInfo.load(output)
    assert (info.name, info.kind, info.relevance, info.sample_rate, info.pool_size, info.max_seconds) == (
        "films", "album_folders", "album", 8000, 5, 1.0)
    catalog = read_catalog(output)
    assert report["tracks"] == len(catalog) == 13 and report["skipped"] == []
    per_split = collections.Counter(e.split for e in catalog)
    assert per_split["train"] in (6, 7) and {per_split["eval"], per_split["test"]} <= {3, 4}
    for split in SPLITS:
        for track in read_tracks(output, split):
            entry = next(e for e in catalog if e.track_id == track.track_id)
            assert entry.split == split and track.labels == entry.labels
            assert (track.sample_rate, track.pool_size) == (1600, 5)
            np.testing.assert_array_equal(track.audio, expected_pooled(entry.path, sample_rate=8000, pool_size=5,
                                                                       max_seconds=1.0))
            assert entry.duration_s == pytest.approx(1.0, abs=1e-3)
    assert report["splits"]["train"]["seconds"] == pytest.approx(7.0, abs=0.01)


def test_excerpt_is_the_centre_and_pooling_averages_blocks_of_five(tmp_path):
    # A 16 kHz ramp: the pooled excerpt can be written down without musicsim.data.audio. Each album's ramp
    # starts higher (identical files would be skipped as duplicates).
    ramp = (np.arange(4 * 16000) / 2.0 ** 17).astype(np.float32)
    starts = {"a": 0.0, "b": 0.125, "c": 0.25}
    for album, start in starts.items():
        os.makedirs(tmp_path / "src" / album)
        sf.write(str(tmp_path / "src" / album / "ramp.wav"), ramp + np.float32(start), 16000, subtype="FLOAT")
    output = str(tmp_path / "out")

    prepare(dataset="album_folders", input_path=str(tmp_path / "src"), output=output, max_seconds=2.0,
            sample_rate=16000, pool_size=5, workers=1, progress=False, verbose=False)

    centre = ramp[16000:48000].astype(np.float64)
    expected = centre.reshape(-1, 5).mean(axis=1)
    tracks = [t for split in SPLITS for t in read_tracks(output, split)]
    assert sorted(t.track_id for t in tracks) == ["a/ramp", "b/ramp", "c/ramp"]
    for track in tracks:
        assert track.audio.shape == (6400,)
        np.testing.assert_allclose(track.audio, expected + starts[track.labels[0]], rtol=1e-6)


MTAT_TAGS = ["guitar", "classical", "slow", "techno", "strings", "drums", "electronic", "rock", "fast", "piano"]
# 188 tag columns as in the real file: the named ones first, then fillers nobody sets.
MTAT_HEADER = ["clip_id"] + MTAT_TAGS + [f"tag{i:03d}" for i in range(188 - len(MTAT_TAGS))] + ["mp3_path"]
MTAT_CLIPS = [  # clip_id, song, segment, tags
    (2, "0/artist_a-album_x-01-song_one", "0-29", ["guitar", "classical", "slow"]),
    (6, "0/artist_a-album_x-01-song_one", "30-59", ["guitar", "slow"]),
    (10, "0/artist_a-album_x-01-song_one", "59-88", ["classical", "strings", "slow"]),
    (14, "1/artist_b-album_y-03-song_two", "0-29", ["techno", "drums", "electronic", "fast"]),
    (19, "1/artist_b-album_y-03-song_two", "30-59", ["techno", "electronic"]),
    (25, "1/artist_c-album_z-02-song_three", "0-29", ["rock", "guitar", "drums", "fast"]),
    (31, "1/artist_c-album_z-02-song_three", "30-59", ["rock", "guitar", "fast"]),
    (40, "2/artist_d-album_w-05-song_four", "0-29", ["piano", "classical", "slow"]),
    (47, "2/artist_d-album_w-05-song_four", "30-59", []),
    (52, "3/artist_e-album_v-01-song_five", "0-29", ["piano", "slow"]),
]


def make_mtat(root, *, quoted: bool) -> str:
    root = str(root)
    rows = [MTAT_HEADER]
    for n, (clip_id, song, segment, tags) in enumerate(MTAT_CLIPS):
        mp3_path = f"{song}-{segment}.mp3"
        write_tone(os.path.join(root, mp3_path), seconds=1.5, rate=16000, frequency=300 + 40 * n, seed=n)
        rows.append([str(clip_id)] + ["1" if t in tags else "0" for t in MTAT_HEADER[1:-1]] + [mp3_path])
    rows.append(["99"] + ["0"] * 188 + ["f/gone-00-99-0-29.mp3"])  # annotated, but no mp3
    with open(os.path.join(root, "annotations_final.csv"), "w", newline="") as f:
        csv.writer(f, delimiter="\t", quoting=csv.QUOTE_ALL if quoted else csv.QUOTE_MINIMAL).writerows(rows)
    return root


@pytest.mark.parametrize("quoted", [True, False], ids=["quoted", "bare"])
def test_magnatagatune_listing(tmp_path, quoted):
    root = make_mtat(tmp_path / "mtat", quoted=quoted)

    listing = sources.list_magnatagatune(root=root)

    assert listing.relevance == "tags" and listing.multi_label
    assert {t.track_id: set(t.labels) for t in listing.tracks} == {str(c): set(tags) for c, _, _, tags in MTAT_CLIPS}
    assert listing.extra["tags"] == 188
    assert [(s["track_id"], s["reason"]) for s in listing.skipped] == [("99", "file not found")]
    groups = {t.track_id: t.group for t in listing.tracks}
    assert groups["2"] == groups["6"] == groups["10"] != groups["14"]


def test_magnatagatune_build_keeps_songs_in_one_split_and_refuses_split_by_label(tmp_path):
    root = make_mtat(tmp_path / "mtat", quoted=True)
    output = str(tmp_path / "mtat_prepared")

    report = prepare(dataset="magnatagatune", input_path=root, output=output, min_shared_tags=3, **FAST)

    info = DatasetInfo.load(output)
    assert (info.relevance, info.min_shared_tags, info.kind) == ("tags", 3, "magnatagatune")
    catalog = {e.track_id: e for e in read_catalog(output)}
    assert len(catalog) == 10 and catalog["14"].labels == ("techno", "drums", "electronic", "fast")
    assert catalog["47"].labels == ()
    for _, song, _, _ in MTAT_CLIPS:
        assert len({catalog[str(c)].split for c, s, _, _ in MTAT_CLIPS if s == song}) == 1
    assert [s["track_id"] for s in report["skipped"]] == ["99"]
    with pytest.raises(ValueError, match="one label per track"):
        prepare(dataset="magnatagatune", input_path=root, output=str(tmp_path / "x"), split_by="label", **FAST)


def test_magnatagatune_audio_root_and_missing_columns(tmp_path):
    root = make_mtat(tmp_path / "mtat", quoted=False)
    annotations_only = tmp_path / "annotations"
    annotations_only.mkdir()
    shutil.copy(os.path.join(root, "annotations_final.csv"), annotations_only)
    listing = sources.list_magnatagatune(root=str(annotations_only), audio_root=root)
    assert len(listing.tracks) == 10

    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "annotations_final.csv").write_text("clip_id\tguitar\tpath\n1\t1\ta.mp3\n")
    with pytest.raises(ValueError, match="mp3_path"):
        sources.list_magnatagatune(root=str(tmp_path / "bad"))
    with pytest.raises(FileNotFoundError, match="annotations"):
        sources.list_magnatagatune(root=str(tmp_path / "nowhere"))


@pytest.fixture
def genre_csv(tmp_path) -> str:
    """zalo-like: paths relative to the CSV's folder, one absolute path elsewhere, a missing file, no label."""
    rows = [("path", "genre", "mood")]
    for g, genre in enumerate(["pop", "rap", "bolero"]):
        for i in range(4):
            rows.append((f"audio/{genre}_{i}.wav", genre, "happy" if i % 2 else "sad"))
            write_tone(tmp_path / "zalo" / "audio" / f"{genre}_{i}.wav", seconds=1.2,
                       frequency=250 + 60 * g + 7 * i, seed=g * 4 + i)
    outside = write_tone(tmp_path / "elsewhere" / "abs.wav", seconds=1.2, seed=99)
    rows += [(outside, "pop", "sad"), ("audio/missing.wav", "rap", "sad"), ("audio/pop_0.wav", "", "sad")]
    path = tmp_path / "zalo" / "train.csv"
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows(rows)
    return str(path)


def test_labelled_csv_listing(genre_csv):
    listing = sources.list_labelled_csv(csv_path=genre_csv, label_column="genre")

    assert listing.relevance == "genre"
    ids = {t.track_id: t for t in listing.tracks}
    assert ids["audio/rap_2"].labels == ("rap",)
    assert ids["audio/rap_2"].path == os.path.join(os.path.dirname(genre_csv), "audio", "rap_2.wav")
    assert any(t.path.endswith("elsewhere/abs.wav") for t in listing.tracks)
    reasons = sorted(s["reason"] for s in listing.skipped)
    assert reasons[0] == "file not found" and "no label in column 'genre'" in reasons[1]

    by_mood = sources.list_labelled_csv(csv_path=genre_csv, label_column="mood")
    assert by_mood.relevance == "label" and {t.labels for t in by_mood.tracks} == {("happy",), ("sad",)}
    with pytest.raises(ValueError, match="no column 'style'"):
        sources.list_labelled_csv(csv_path=genre_csv, label_column="style")


def test_labelled_csv_build_by_genre(genre_csv, tmp_path):
    output = str(tmp_path / "zalo_prepared")  # not the source folder: that is not a dataset folder
    report = prepare(dataset="labelled_csv", input_path=genre_csv, output=output, label_column="genre", **FAST)

    assert DatasetInfo.load(output).relevance == "genre"
    assert report["tracks"] == 13 and len(report["skipped"]) == 2
    for genre in ("pop", "rap", "bolero"):  # 4+ tracks each: in every split
        assert all(report["labels"][genre][split] >= 1 for split in SPLITS)


def make_manifest(root, *, albums: dict[str, int]) -> str:
    root = str(root)
    rows = []
    for a, (album, count) in enumerate(albums.items()):
        for i in range(count):
            relative = f"audio/{album}/track{i}.ogg"
            write_tone(os.path.join(root, relative), seconds=2.0, rate=22050, frequency=220 + 50 * a + 5 * i,
                       seed=a * 10 + i)
            rows.append({"path": relative, "track_id": f"{album}__track{i}", "label_album": album,
                         "duration_s": "2.00", "source_package": "fake"})
    with open(os.path.join(root, "manifest.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=demo.MANIFEST_COLUMNS, restval="")
        writer.writeheader()
        writer.writerows(rows)
    return root


@pytest.mark.parametrize("as_file", [False, True], ids=["folder", "file"])
def test_manifest_build(tmp_path, as_file):
    root = make_manifest(tmp_path / "corpus", albums={"alpha": 4, "beta": 5, "gamma": 4})
    output = str(tmp_path / "prepared")

    report = prepare(dataset="manifest", input_path=os.path.join(root, "manifest.csv") if as_file else root,
                     output=output, **FAST)

    catalog = read_catalog(output)
    assert report["tracks"] == 13 and DatasetInfo.load(output).relevance == "album"
    assert {e.track_id for e in catalog} == {f"{a}__track{i}" for a, n in [("alpha", 4), ("beta", 5), ("gamma", 4)]
                                             for i in range(n)}
    assert all(os.path.isabs(e.path) and os.path.isfile(e.path) for e in catalog)
    with open(os.path.join(output, "tracks.csv")) as f:
        assert next(csv.reader(f)) == ["track_id", "split", "labels", "duration_s", "path"]


# ---------------------------------------------------------------- splits


def synthetic_tracks(label_sizes: dict[str, int]) -> list[SourceTrack]:
    return [SourceTrack(track_id=f"{label}-{i}", labels=(label,), path=f"/x/{label}/{i}.wav")
            for label, size in label_sizes.items() for i in range(size)]


LABEL_SIZES = {"a": 4, "b": 5, "c": 6, "d": 7, "e": 13, "f": 40, "g": 1, "h": 2, "i": 3, "j": 4}


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_stratified_split_puts_every_label_with_4_tracks_in_every_split(seed):
    tracks = synthetic_tracks(LABEL_SIZES)

    split_of = splits.assign_splits(tracks=tracks, seed=seed)

    counts = collections.Counter(split_of.values())
    assert abs(counts["train"] - 42.5) <= 1 and abs(counts["eval"] - 21.25) <= 1 and abs(counts["test"] - 21.25) <= 1
    for label, size in LABEL_SIZES.items():
        per_split = collections.Counter(split_of[t.track_id] for t in tracks if t.labels[0] == label)
        if size >= 4:
            assert set(per_split) == set(SPLITS), (label, per_split)
            for split, fraction in splits.SPLIT_FRACTIONS.items():
                assert abs(per_split[split] - fraction * size) < 1.0


def test_split_is_deterministic_and_independent_of_listing_order():
    tracks = synthetic_tracks(LABEL_SIZES)
    shuffled = [tracks[i] for i in np.random.default_rng(3).permutation(len(tracks))]

    first = splits.assign_splits(tracks=tracks, seed=5)

    assert splits.assign_splits(tracks=shuffled, seed=5) == first
    assert splits.assign_splits(tracks=tracks, seed=6) != first


def test_multi_label_split_is_stratified_on_rare_tags_and_keeps_groups_together():
    rng = np.random.default_rng(0)
    tags = [f"t{i}" for i in range(12)]
    tracks = [SourceTrack(track_id=f"c{n}", path=f"/c{n}.mp3", group=f"song{n // 3}",
                          labels=tuple(sorted(rng.choice(tags, size=rng.integers(0, 4), replace=False))))
              for n in range(300)]

    split_of = splits.assign_splits(tracks=tracks, seed=0, multi_label=True)

    counts = collections.Counter(split_of.values())
    assert counts["train"] == pytest.approx(150, abs=6) and counts["eval"] == pytest.approx(75, abs=6)
    for song in {t.group for t in tracks}:
        assert len({split_of[t.track_id] for t in tracks if t.group == song}) == 1
    for tag in tags:
        assert {split_of[t.track_id] for t in tracks if tag in t.labels} == set(SPLITS)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_split_by_label_gives_disjoint_labels(seed):
    tracks = synthetic_tracks({"a": 18, "b": 28, "c": 13, "d": 10, "e": 17, "f": 10, "g": 16, "h": 11, "i": 13,
                               "j": 3})

    split_of = splits.assign_splits(tracks=tracks, seed=seed, split_by="label")

    labels_in = {s: {t.labels[0] for t in tracks if split_of[t.track_id] == s} for s in SPLITS}
    assert all(labels_in[s] for s in SPLITS)
    assert not (labels_in["train"] & labels_in["eval"] or labels_in["train"] & labels_in["test"]
                or labels_in["eval"] & labels_in["test"])
    counts = collections.Counter(split_of.values())
    for split, fraction in splits.SPLIT_FRACTIONS.items():
        assert abs(counts[split] / len(tracks) - fraction) < 0.05 * (1 + fraction)
    assert splits.assign_splits(tracks=tracks, seed=seed, split_by="label") == split_of


def test_split_by_label_differs_between_seeds():
    tracks = synthetic_tracks({f"album{i}": 8 + i for i in range(12)})
    assignments = {json.dumps(sorted(splits.assign_splits(tracks=tracks, seed=s, split_by="label").items()))
                   for s in range(6)}
    assert len(assignments) > 1


def test_split_by_label_with_few_labels_still_fills_every_split():
    tracks = synthetic_tracks({"big": 30, "x": 1, "y": 1})
    split_of = splits.assign_splits(tracks=tracks, seed=0, split_by="label")
    assert set(split_of.values()) == set(SPLITS)


@pytest.mark.parametrize("kwargs,message", [
    (dict(split_by="album"), "split_by"),
    (dict(split_by="label", multi_label=True), "one label per track"),
    (dict(split_by="label", tracks=synthetic_tracks({"a": 5, "b": 5})), "at least 3 labels"),
    (dict(tracks=synthetic_tracks({"a": 2}) * 2), "unique"),
    (dict(split_by="label", tracks=[SourceTrack("x", ("a", "b"), "/x"), *synthetic_tracks({"a": 1, "b": 1, "c": 1})]),
     "exactly one label"),
])
def test_assign_splits_invalid_arguments(kwargs, message):
    kwargs.setdefault("tracks", synthetic_tracks({"a": 4, "b": 4, "c": 4}))
    with pytest.raises(ValueError, match=message):
        splits.assign_splits(**kwargs)


# ---------------------------------------------------------------- bad input, resume, parallel


def _write_first_half(path: str, good: str) -> None:
    data = open(good, "rb").read()
    open(path, "wb").write(data[:len(data) // 2])


BAD_FILES = {  # track -> (writer(path, a good 3 s flac), words of the expected reason)
    "corrupt": (_write_first_half, ("truncated", "corrupt")),
    "empty": (lambda path, good: open(path, "wb").close(), ("empty",)),
    "silent": (lambda path, good: sf.write(path, np.zeros(32000, np.float32), 16000, format="FLAC"), ("silent",)),
    "tiny": (lambda path, good: sf.write(path, 0.3 * np.ones(2000, np.float32), 16000, format="FLAC"),
             ("too short",)),
    "nonaudio": (lambda path, good: open(path, "w").write("#EXTM3U\nsong.mp3\n" * 20), ("not audio",)),
}


def test_every_bad_input_is_skipped_and_reported(tmp_path, capsys):
    root = make_manifest(tmp_path / "corpus", albums={"alpha": 4, "beta": 4, "gamma": 4})
    good = os.path.join(root, "audio", "alpha", "track0.ogg")
    extra = []
    for name, (writer, _) in BAD_FILES.items():
        path = os.path.join(root, "audio", "bad", f"{name}.flac")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        writer(path, write_tone(tmp_path / "good.flac", seconds=3.0))
        extra.append({"path": os.path.relpath(path, root), "track_id": f"bad__{name}", "label_album": "alpha"})
    extra.append({"path": "audio/bad/never_downloaded.ogg", "track_id": "bad__missing", "label_album": "beta"})
    extra.append({"path": os.path.relpath(good, root), "track_id": "alpha__track1", "label_album": "beta"})  # dup
    with open(os.path.join(root, "manifest.csv"), "a", newline="") as f:
        csv.DictWriter(f, fieldnames=demo.MANIFEST_COLUMNS, restval="").writerows(extra)
    output = str(tmp_path / "out")

    report = prepare(dataset="manifest", input_path=root, output=output,
                     **dict(FAST, verbose=True))

    reasons = {s["track_id"]: s["reason"] for s in report["skipped"]}
    assert set(reasons) == {f"bad__{n}" for n in BAD_FILES} | {"bad__missing", "alpha__track1"}
    for name, (_, words) in BAD_FILES.items():
        assert any(w in reasons[f"bad__{name}"] for w in words), (name, reasons[f"bad__{name}"])
    assert reasons["bad__missing"] == "file not found"
    assert "duplicate track_id" in reasons["alpha__track1"]
    assert all(s["path"] for s in report["skipped"])
    assert report["tracks"] == 12 and len(read_catalog(output)) == 12
    assert json.load(open(os.path.join(output, "report.json")))["skipped"] == report["skipped"]
    assert f"prepared 12 tracks (0.4 min of audio) into {output}; skipped 7 files: see report.json" in \
        capsys.readouterr().out


@pytest.fixture(scope="module")
def clean_build(album_tree, tmp_path_factory) -> tuple[str, dict[str, bytes], str]:
    output = str(tmp_path_factory.mktemp("clean") / "out")
    prepare(dataset="album_folders", input_path=album_tree, output=output, shard_size=2, **FAST)
    with open(os.path.join(output, "tracks.csv")) as f:
        return output, shard_bytes(output), f.read()


def test_rerun_reuses_every_shard(album_tree, clean_build, tmp_path):
    output = str(tmp_path / "out")
    shutil.copytree(clean_build[0], output)

    report = prepare(dataset="album_folders", input_path=album_tree, output=output, shard_size=2, **FAST)

    assert report["shards"] == {"total": 8, "written": 0, "reused": 8}
    assert shard_bytes(output) == clean_build[1]


def test_deleted_shard_is_rewritten_alone(album_tree, clean_build, tmp_path):
    output = str(tmp_path / "out")
    shutil.copytree(clean_build[0], output)
    os.remove(os.path.join(output, "eval", "shard-00001.tfrecord"))
    before = {p: os.stat(p).st_mtime_ns for p in glob.glob(os.path.join(output, "*", "shard-*.tfrecord"))}

    report = prepare(dataset="album_folders", input_path=album_tree, output=output, shard_size=2, **FAST)

    assert report["shards"]["written"] == 1
    assert all(os.stat(p).st_mtime_ns == m for p, m in before.items())
    assert shard_bytes(output) == clean_build[1]


def test_crash_between_shards_resumes_to_identical_content(album_tree, clean_build, tmp_path, monkeypatch):
    output = str(tmp_path / "out")
    real_write = build.write_records
    written = []

    def crash_after_three(path, records):
        if len(written) == 3:
            raise KeyboardInterrupt("simulated crash")
        written.append(path)
        return real_write(path, records)

    monkeypatch.setattr(build, "write_records", crash_after_three)
    with pytest.raises(KeyboardInterrupt):
        prepare(dataset="album_folders", input_path=album_tree, output=output, shard_size=2, **FAST)
    assert not os.path.exists(os.path.join(output, "dataset.json"))  # not a finished dataset
    monkeypatch.setattr(build, "write_records", real_write)

    report = prepare(dataset="album_folders", input_path=album_tree, output=output, shard_size=2, **FAST)

    assert report["shards"] == {"total": 8, "written": 5, "reused": 3}
    assert shard_bytes(output) == clean_build[1]
    assert open(os.path.join(output, "tracks.csv")).read() == clean_build[2]
    assert glob.glob(os.path.join(output, "**", "*.tmp-*"), recursive=True) == []


def test_changed_settings_rewrite_and_drop_stale_shards(album_tree, clean_build, tmp_path):
    output = str(tmp_path / "out")
    shutil.copytree(clean_build[0], output)

    report = prepare(dataset="album_folders", input_path=album_tree, output=output, shard_size=4,
                     **dict(FAST, pool_size=4))

    assert report["shards"] == {"total": 4, "written": 4, "reused": 0}
    assert sorted(shard_bytes(output)) == ["eval/shard-00000.tfrecord", "test/shard-00000.tfrecord",
                                           "train/shard-00000.tfrecord", "train/shard-00001.tfrecord"]
    assert {t.pool_size for t in read_tracks(output, "train")} == {4}


def test_two_workers_write_the_same_bytes_as_one(album_tree, clean_build, tmp_path):
    output = str(tmp_path / "out")
    prepare(dataset="album_folders", input_path=album_tree, output=output, shard_size=2, **dict(FAST, workers=2))
    assert shard_bytes(output) == clean_build[1]


def crash_on_marked_files(path: str, settings: DecodeSettings) -> DecodeResult:
    """A decoder that kills its process on files named 'crash': stands in for a segfaulting codec."""
    if "crash" in os.path.basename(path):
        os._exit(3)
    return DecodeResult(pooled=np.full(2, len(path), np.float32), seconds=1.0)


def test_a_file_that_kills_its_worker_is_reported_and_the_rest_decoded():
    paths = [f"/f/{name}.wav" for name in ("a", "b", "crash", "c", "d", "e")]
    settings = DecodeSettings(sample_rate=8000, pool_size=5, max_seconds=None, min_seconds=1.0)

    results = list(decode_in_order(paths, settings=settings, workers=2, decode=crash_on_marked_files))

    assert [r.pooled is None for r in results] == [False, False, True, False, False, False]
    assert "crashed its worker" in results[2].reason
    assert [r.pooled[0] for r in results if r.pooled is not None] == [len(p) for p in paths if "crash" not in p]


@pytest.mark.parametrize("kwargs,error,message", [
    (dict(dataset="mp3_folder"), ValueError, "dataset must be one of"),
    (dict(input_path=None), ValueError, "needs an input path"),
    (dict(sample_rate=0), ValueError, "sample_rate must be positive"),
    (dict(pool_size=0), ValueError, "pool_size"),
    (dict(sample_rate=16000, pool_size=7), ValueError, "multiple of pool_size"),
    (dict(workers=0), ValueError, "workers"),
    (dict(shard_size=0), ValueError, "shard_size"),
    (dict(min_seconds=-1.0), ValueError, "min_seconds"),
    (dict(min_shared_tags=0), ValueError, "min_shared_tags"),
    (dict(split_by="album"), ValueError, "split_by"),
    (dict(max_seconds=0.5), ValueError, "under min_seconds"),
    (dict(input_path="/nonexistent/albums"), FileNotFoundError, "/nonexistent/albums"),
])
def test_prepare_invalid_arguments(tmp_path, album_tree, kwargs, error, message):
    arguments = dict(dataset="album_folders", input_path=album_tree, output=str(tmp_path / "out"), progress=False)
    arguments.update(kwargs)
    with pytest.raises(error, match=message):
        prepare(**arguments)


def test_empty_source_is_an_error(tmp_path):
    (tmp_path / "albums" / "empty_album").mkdir(parents=True)
    with pytest.raises(ValueError, match="lists no usable track"):
        prepare(dataset="album_folders", input_path=str(tmp_path / "albums"), output=str(tmp_path / "o"), **FAST)


def test_command_line(tmp_path):
    root = make_manifest(tmp_path / "corpus", albums={"alpha": 4, "beta": 4, "gamma": 4})
    output = str(tmp_path / "cli")
    result = subprocess.run([sys.executable, "-m", "data_prep.build", "--dataset=manifest", f"--input={root}",
                             f"--output={output}", "--max_seconds=1.5", "--sample_rate=8000", "--workers=1",
                             "--split_by=label", "--split_seed=3", "--noprogress"],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"prepared 12 tracks (0.3 min of audio) into {output}; skipped none" in result.stdout
    info = DatasetInfo.load(output)
    assert (info.split_by, info.split_seed, info.max_seconds, info.sample_rate) == ("label", 3, 1.5, 8000)
    assert len({e.labels for e in read_catalog(output, split="eval")}) == 1


def test_command_line_reports_bad_input_without_a_traceback(tmp_path):
    result = subprocess.run([sys.executable, "-m", "data_prep.build", "--dataset=album_folders",
                             f"--input={tmp_path / 'nowhere'}", f"--output={tmp_path / 'out'}"],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert f"error: album folder root not found or not a directory: {tmp_path / 'nowhere'}" in result.stderr
    assert "Traceback" not in result.stderr


# ---------------------------------------------------------------- demo corpus builder (offline, fake packages)




def ogg_bytes(tmp_path, seconds: float, seed: int) -> bytes:
    return open(write_tone(tmp_path / f"tmp{seed}.ogg", seconds=seconds, rate=16000, seed=seed), "rb").read()


FAKE_SOURCES = (
    demo.DemoSource(key="game1", package="game1-music", license="GPL-2+",
                    member_pattern=r"^/usr/share/games/game1/music/(.+\.ogg)$",
                    tracks=(("Title Theme.ogg", "game1"), ("lose/Sad End.ogg", "game1"), ("jingle.ogg", "game1"),
                            ("not_shipped.ogg", "game1"), ("battle.ogg", "game1"))),
    demo.DemoSource(key="game2", package="game2-data", license="CC-BY-SA-3.0",
                    archive_pattern=r"^/usr/share/games/game2/data/music\.pk3$",
                    member_pattern=r"^sound/cdtracks/([^/]+\.ogg)$",
                    tracks=(("one.ogg", "game2-ost"), ("two.ogg", "game2-ost"), ("three.ogg", "game2-ost"))),
    demo.DemoSource(key="game3", package="game3-music", license="GPL-3+",
                    member_pattern=r"^/usr/share/game3/([^/]+\.ogg)$",
                    tracks=tuple((f"t{i}.ogg", "game3") for i in range(3))),
)


@pytest.fixture(scope="module")
def fake_debs(tmp_path_factory) -> dict[str, str]:
    if not shutil.which("dpkg-deb"):
        pytest.skip("dpkg-deb is not installed: cannot build fake packages")
    folder = tmp_path_factory.mktemp("debs")
    audio = tmp_path_factory.mktemp("oggs")
    game1 = {f"/usr/share/games/game1/music/{name}": ogg_bytes(audio, seconds, seed)
             for seed, (name, seconds) in enumerate([("Title Theme.ogg", 3.0), ("lose/Sad End.ogg", 2.5),
                                                     ("jingle.ogg", 1.0), ("battle.ogg", 3.5),
                                                     ("unlisted_ambience.ogg", 3.0)])}
    game1["/usr/share/doc/game1-music/copyright"] = b"Copyright: someone\nLicense: GPL-2+\n"
    pk3 = os.path.join(str(audio), "music.pk3")
    with zipfile.ZipFile(pk3, "w") as archive:
        for seed, name in enumerate(["one", "two", "three", "thunder"]):
            archive.writestr(f"sound/cdtracks/{name}.ogg", ogg_bytes(audio, 2.5, 10 + seed))
        archive.writestr("maps/level1.bsp", b"not music")
    game2 = {"/usr/share/games/game2/data/music.pk3": open(pk3, "rb").read()}
    game3 = {f"/usr/share/game3/t{i}.ogg": ogg_bytes(audio, 2.2, 20 + i) for i in range(3)}
    return {"game1-music": build_fake_deb(folder, package="game1-music", files=game1),
            "game2-data": build_fake_deb(folder, package="game2-data", files=game2),
            "game3-music": build_fake_deb(folder, package="game3-music", files=game3)}


def test_demo_builder_unpacks_curates_and_writes_the_manifest(fake_debs, tmp_path):
    apt = FakeApt(fake_debs)
    cache = str(tmp_path / "demo_cache")

    manifest = demo.build_demo_corpus(cache_dir=cache, sources=FAKE_SOURCES, fetch=apt, min_track_seconds=2.0,
                                      verbose=False)

    with open(manifest) as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == demo.MANIFEST_COLUMNS
        rows = {r["track_id"]: r for r in reader}
    assert sorted(rows) == ["game1__Title_Theme", "game1__battle", "game1__lose__Sad_End", "game2-ost__one",
                            "game2-ost__three", "game2-ost__two", "game3__t0", "game3__t1", "game3__t2"]
    sad = rows["game1__lose__Sad_End"]
    assert sad["path"] == "audio/game1/lose__Sad_End.ogg" and sad["label_album"] == "game1"
    assert float(sad["duration_s"]) == pytest.approx(2.5, abs=0.02)
    assert sad["source_member"] == "/usr/share/games/game1/music/lose/Sad End.ogg"
    assert sad["source_package"] == "game1-music" and sad["source_version"] == "1.0-1"
    assert rows["game2-ost__two"]["source_member"] == "/usr/share/games/game2/data/music.pk3:sound/cdtracks/two.ogg"
    assert sorted(os.path.relpath(p, cache) for p in glob.glob(os.path.join(cache, "audio", "*", "*"))) == sorted(
        r["path"] for r in rows.values())
    assert open(os.path.join(cache, "licenses", "game1-music.copyright")).read().startswith("Copyright: someone")
    build_info = json.load(open(os.path.join(cache, "BUILD_INFO.json")))
    assert build_info["sources"]["game1"]["too_short"] == ["jingle.ogg (1.0s)"]
    assert build_info["sources"]["game1"]["missing"] == ["not_shipped.ogg"]
    assert build_info["albums"]["game2-ost"]["tracks"] == 3
    assert not os.path.exists(os.path.join(cache, ".work"))

    # Rerun: nothing fetched, same manifest. A changed spec refetches that source alone and drops its old files.
    first = open(manifest).read()
    apt.calls.clear()
    demo.build_demo_corpus(cache_dir=cache, sources=FAKE_SOURCES, fetch=apt, min_track_seconds=2.0, verbose=False)
    assert apt.calls == [] and open(manifest).read() == first
    fewer = (*FAKE_SOURCES[:2], dataclasses.replace(FAKE_SOURCES[2], tracks=FAKE_SOURCES[2].tracks[:2]))
    demo.build_demo_corpus(cache_dir=cache, sources=fewer, fetch=apt, min_track_seconds=2.0, verbose=False)
    assert apt.calls == ["game3-music"]
    assert not os.path.exists(os.path.join(cache, "audio", "game3", "t2.ogg"))


def test_demo_build_fails_clearly_when_the_package_is_broken(tmp_path):
    broken = tmp_path / "broken_1.0_all.deb"
    broken.write_bytes(b"!<arch>\nnot really a deb")
    with pytest.raises(demo.DemoBuildError, match="broken_1.0_all.deb"):
        demo.build_demo_corpus(cache_dir=str(tmp_path / "c"), sources=FAKE_SOURCES[:1],
                               fetch=lambda package, workdir: (shutil.copy(broken, workdir), "1"), verbose=False)


def test_prepare_demo_defaults_to_60_second_excerpts(fake_debs, tmp_path, monkeypatch):
    monkeypatch.setattr(demo, "DEMO_SOURCES", FAKE_SOURCES)
    monkeypatch.setattr(demo, "download_package", FakeApt(fake_debs))
    monkeypatch.setattr(demo, "MIN_TRACK_SECONDS", 2.0)
    cache = str(tmp_path / "cache")
    demo.build_demo_corpus(cache_dir=cache, min_track_seconds=2.0, verbose=False)

    report = prepare(dataset="demo", input_path=cache, output=str(tmp_path / "demo"), **FAST)

    info = DatasetInfo.load(str(tmp_path / "demo"))
    assert (info.kind, info.max_seconds, info.relevance) == ("demo", 60.0, "album")
    assert report["tracks"] == 9 and report["skipped"] == []


def test_demo_spec_has_the_dev_corpus_size():
    assert len(demo.DEMO_SOURCES) == 8
    tracks = [(s.package, t) for s in demo.DEMO_SOURCES for t in s.tracks]
    assert len(tracks) == 139 and len({album for _, (_, album) in tracks}) == 10
    ids = [demo.demo_track_id(album=album, track=name) for _, (name, album) in tracks]
    assert len(set(ids)) == 139
    assert "singularity__lose__Chimes_They_Fade" in ids and "warzone2100-legacy__legacy_soundtrack__track4" in ids
    assert not any("enhanced" in name or "thunder" in name or name in ("music010.ogg", "music011.ogg")
                   for _, (name, _) in tracks)


# ---------------------------------------------------------------- integration: the tiny dev corpus




def test_tiny_dev_corpus_end_to_end(tiny_corpus, tmp_path):
    output = str(tmp_path / "tiny")

    report = prepare(dataset="manifest", input_path=tiny_corpus, output=output, max_seconds=10, workers=2,
                     progress=False, verbose=False)

    assert report["skipped"] == [] and report["tracks"] == 20
    assert sorted(report["labels"]) == ["colobot", "drascula", "pushover", "singularity"]
    for counts in report["labels"].values():  # 5 tracks per album: 2-3 train, 1-2 eval, 1-2 test
        assert all(counts[s] >= 1 for s in SPLITS) and counts["total"] == 5
    tracks = {t.track_id: t for s in SPLITS for t in read_tracks(output, s)}
    assert len(tracks) == 20
    assert {t.audio.size for t in tracks.values()} == {10 * 3200}
    # Music, not silence; lossy decoding and resampling may overshoot full scale a little.
    assert all(0.05 < np.abs(t.audio).max() < 1.5 for t in tracks.values())
