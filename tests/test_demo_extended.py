"""The extended demo corpus: the 5 extra packages' specs and the curation done in code.

Offline: the packages are fake .deb files built here with ``dpkg-deb --build`` holding tones rendered
with soundfile; ``FakeApt`` stands in for ``apt-get download``.
"""
from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from data_prep import demo, demo_curation
from data_prep.build import prepare
from conftest import FakeApt, build_fake_deb

# audioread (the fallback decoder, tried on the file that is not audio) imports stdlib modules deprecated in 3.11.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:audioread")
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# shared/data/README.md is the spec: the 8 demo packages, and "these 5 Debian packages may be used".
README_DEMO_PACKAGES = {"colobot-common-sounds", "drascula-music", "fillets-ng-data", "marsshooter-data",
                        "nexuiz-music", "pushover-data", "singularity-music", "warzone2100-music"}
README_EXTRA_PACKAGES = {"berusky2-data", "freedroidrpg-data", "redeclipse-data", "warmux-data", "hyperrogue-music"}
RATE = 8000


def tone(seconds: float, *, frequency: float = 440.0, gain: float = 0.4, seed: int = 0) -> np.ndarray:
    """A sine plus a little noise, ``[round(seconds * RATE)]`` float32."""
    t = np.arange(int(round(seconds * RATE))) / RATE
    noise = 0.05 * np.random.default_rng(seed).standard_normal(t.size)
    return (gain * (np.sin(2 * np.pi * frequency * t) + noise)).astype(np.float32)


def ogg_bytes(folder, name: str, audio: np.ndarray) -> bytes:
    path = os.path.join(str(folder), name)
    sf.write(path, audio, RATE, format="OGG", subtype="VORBIS")
    return open(path, "rb").read()




GAME4_MUSIC = "/usr/share/games/game4/music/"
FAKE_SOURCES = (
    demo.DemoSource(key="game1", package="game1-music", license="GPL-2+",
                    member_pattern=r"^/usr/share/games/game1/music/([^/]+\.ogg)$",
                    tracks=(("one.ogg", "game1"), ("two.ogg", "game1"))),
    demo.CuratedSource(key="game4", package="game4-data", album="game4", license="GPL-2+",
                       member_pattern=r"^/usr/share/games/game4/music/(.+\.ogg)$",
                       exclude_patterns=(r"^menu_loop",)),
    demo.CuratedSource(key="game5", package="game5-music", album="game5", license="CC-BY-SA-3.0",
                       member_pattern=r"^/usr/share/game5/([^/]+\.ogg)$"),
)


@pytest.fixture(scope="module")
def fake_debs(tmp_path_factory) -> dict[str, str]:
    if not shutil.which("dpkg-deb"):
        pytest.skip("dpkg-deb is not installed: cannot build fake packages")
    folder, audio = tmp_path_factory.mktemp("debs"), tmp_path_factory.mktemp("oggs")
    theme = ogg_bytes(audio, "theme.ogg", tone(3.0, seed=1))
    other = ogg_bytes(audio, "other.ogg", tone(3.0, frequency=1234.0, seed=2))  # same length, other music
    game4 = {
        GAME4_MUSIC + "a_theme.ogg": theme,
        GAME4_MUSIC + "b_theme_copy.ogg": theme,  # the same bytes under another name
        GAME4_MUSIC + "c_sting.ogg": ogg_bytes(audio, "sting.ogg", tone(1.0, seed=3)),  # under 2 s
        GAME4_MUSIC + "d_broken.ogg": np.random.default_rng(4).bytes(5000),  # not audio
        # The same recording at another gain: other bytes, same decoded audio.
        GAME4_MUSIC + "e_theme_remaster.ogg": ogg_bytes(audio, "remaster.ogg", tone(3.0, gain=0.15, seed=1)),
        GAME4_MUSIC + "f_other.ogg": other,
        GAME4_MUSIC + "sfx/explosion.ogg": ogg_bytes(audio, "boom.ogg", tone(3.0, frequency=90.0, seed=5)),
        GAME4_MUSIC + "win_jingle.ogg": ogg_bytes(audio, "jingle.ogg", tone(3.0, frequency=660.0, seed=6)),
        GAME4_MUSIC + "menu_loop.ogg": ogg_bytes(audio, "loop.ogg", tone(3.0, frequency=550.0, seed=7)),
        "/usr/share/games/game4/sound/step.ogg": ogg_bytes(audio, "step.ogg", tone(3.0, frequency=70.0, seed=8)),
        "/usr/share/doc/game4-data/copyright": b"Copyright: someone\nLicense: GPL-2+\n",
    }
    game5 = {"/usr/share/game5/Level 1.ogg": ogg_bytes(audio, "level1.ogg", tone(2.5, frequency=300.0, seed=9)),
             "/usr/share/game5/zz_same_as_game4.ogg": other}  # the same bytes as another package's file
    game1 = {f"/usr/share/games/game1/music/{name}.ogg": ogg_bytes(audio, f"{name}.ogg", tone(2.5, seed=10 + i))
             for i, name in enumerate(["one", "two"])}
    return {package: build_fake_deb(folder, package=package, files=files)
            for package, files in [("game1-music", game1), ("game4-data", game4), ("game5-music", game5)]}


# ---------------------------------------------------------------- the spec


def test_extended_sources_are_exactly_the_readme_packages():
    plain, extended = demo.demo_sources(extended=False), demo.demo_sources(extended=True)
    assert {s.package for s in plain} == README_DEMO_PACKAGES and len(plain) == 8
    assert [s.package for s in extended[:8]] == [s.package for s in plain]
    extras = extended[8:]
    assert {s.package for s in extras} == README_EXTRA_PACKAGES and len(extras) == 5
    assert all(isinstance(s, demo.CuratedSource) for s in extras)
    # One game, one album label, none shared with the demo albums; keys (stamp names) unique.
    demo_albums = {album for s in plain for _, album in s.tracks}
    assert sorted(s.album for s in extras) == ["berusky2", "freedroidrpg", "hyperrogue", "redeclipse", "warmux"]
    assert not demo_albums & {s.album for s in extras}
    assert len({s.key for s in extended}) == 13


# Paths as `dpkg-deb -c` lists them in the bookworm packages: (package, path, track path or None).
PACKAGE_PATHS = [
    ("berusky2-data", "/usr/share/games/berusky2/music/Relax4.ogg", "Relax4.ogg"),
    ("berusky2-data", "/usr/share/games/berusky2/sound/sound/menu.ogg", None),
    ("freedroidrpg-data", "/usr/share/freedroidrpg/data/sound/music/TheBeginning.ogg", "TheBeginning.ogg"),
    ("freedroidrpg-data", "/usr/share/freedroidrpg/data/sound/effects/bot_sounds/voice_samples/a.ogg", None),
    ("freedroidrpg-data", "/usr/share/freedroidrpg/data/base/titles/StartOfGame.ogg", None),
    ("redeclipse-data", "/usr/share/games/redeclipse/data/sounds/music/track_07.ogg", "track_07.ogg"),
    ("redeclipse-data", "/usr/share/games/redeclipse/data/sounds/ambience/wind.ogg", None),
    ("redeclipse-data", "/usr/share/games/redeclipse/data/sounds/announcer/go.ogg", None),
    ("warmux-data", "/usr/share/games/warmux/music/ingame/circux.ogg", "ingame/circux.ogg"),
    ("warmux-data", "/usr/share/games/warmux/music/menu/Divertissement_pour_flute.ogg",
     "menu/Divertissement_pour_flute.ogg"),
    ("warmux-data", "/usr/share/games/warmux/sound/default/voices/bye.ogg", None),
    ("hyperrogue-music", "/usr/share/hyperrogue/music/hr3-rlyeh.ogg", "hr3-rlyeh.ogg"),
    ("hyperrogue-music", "/usr/share/hyperrogue/sounds/click.ogg", None),
]


@pytest.mark.parametrize("package, path, track", PACKAGE_PATHS)
def test_extra_patterns_take_the_music_folder_only(package, path, track):
    source = next(s for s in demo.EXTRA_SOURCES if s.package == package)
    match = re.match(source.member_pattern, path)
    assert (match.group(1) if match else None) == track


# ---------------------------------------------------------------- curation on fake packages


def test_extended_build_curates_and_reports(fake_debs, tmp_path, capsys):
    apt = FakeApt(fake_debs)
    cache = str(tmp_path / "cache")

    manifest = demo.build_demo_corpus(cache_dir=cache, sources=FAKE_SOURCES, fetch=apt, min_track_seconds=2.0,
                                      extended=True, verbose=True)

    with open(manifest) as f:
        rows = {r["track_id"]: r for r in csv.DictReader(f)}
    assert sorted(rows) == ["game1__one", "game1__two", "game4__a_theme", "game4__f_other", "game5__Level_1"]
    assert {r["label_album"] for r in rows.values()} == {"game1", "game4", "game5"}
    assert rows["game4__a_theme"]["label_album"] == "game4"
    assert rows["game4__a_theme"]["source_member"] == GAME4_MUSIC + "a_theme.ogg"
    assert float(rows["game4__a_theme"]["duration_s"]) == pytest.approx(3.0, abs=0.02)
    assert sorted(os.listdir(os.path.join(cache, "audio", "game4"))) == ["a_theme.ogg", "f_other.ogg"]

    info = json.load(open(os.path.join(cache, "BUILD_INFO.json")))
    assert info["corpus"] == "demo_extended"
    game4 = info["sources"]["game4"]
    assert game4["matched"] == 9 and game4["tracks"] == 2  # sound/step.ogg is outside the music folder
    assert game4["too_short"] == ["c_sting.ogg (1.0s)"]
    assert [e.split(": ")[0] for e in game4["undecodable"]] == ["d_broken.ogg"]
    assert [e.split(": ")[0] for e in game4["excluded"]] == ["menu_loop.ogg", "sfx/explosion.ogg", "win_jingle.ogg"]
    duplicate = dict(e.split(": ", 1) for e in game4["duplicate"])
    assert sorted(duplicate) == ["b_theme_copy.ogg", "e_theme_remaster.ogg"]
    assert duplicate["b_theme_copy.ogg"].startswith("same bytes as a_theme.ogg (sha256 ")
    assert duplicate["e_theme_remaster.ogg"].startswith("same audio as a_theme.ogg (decoded")
    # Across packages: game5's copy of game4's f_other is dropped, the first by corpus path kept.
    assert [(d["path"], d["same_as"]) for d in info["duplicates_across_sources"]] == [
        ("audio/game5/zz_same_as_game4.ogg", "audio/game4/f_other.ogg")]
    assert info["left_out"]["game4"] == {"excluded": 3, "undecodable": 1, "too_short": 1, "duplicate": 2}
    assert info["albums"]["game4"]["tracks"] == 2 and info["tracks"] == 5
    printed = capsys.readouterr().out
    assert "game4-data 1.0-1: 2 tracks" in printed and "1 undecodable (d_broken.ogg)" in printed
    assert "left out: 3 duplicate, 3 excluded, 1 too short, 1 undecodable" in printed

    # Rerun: nothing fetched, the same manifest, the dropped cross-package copy not refetched.
    first = open(manifest).read()
    apt.calls.clear()
    demo.build_demo_corpus(cache_dir=cache, sources=FAKE_SOURCES, fetch=apt, min_track_seconds=2.0,
                           extended=True, verbose=False)
    assert apt.calls == [] and open(manifest).read() == first


@pytest.mark.parametrize("seconds, kept", [(29.0, False), (31.0, True)])
def test_default_rule_keeps_tracks_of_30_seconds_or_more(tmp_path, seconds, kept):
    path = str(tmp_path / "track.ogg")
    sf.write(path, tone(seconds), RATE, format="OGG", subtype="VORBIS")
    tracks, left_out = demo.curate_tracks(files={"track.ogg": path})
    assert [t for t, _ in tracks] == (["track.ogg"] if kept else [])
    assert left_out["too_short"] == ([] if kept else [f"track.ogg ({seconds:.1f}s)"])


@pytest.mark.parametrize("other, alike", [
    (dict(gain=0.1), True),  # the same recording, quieter
    (dict(frequency=1234.0, seed=2), False),  # other music of the same length
])
def test_decoded_correlation_ignores_gain_only(tmp_path, other, alike):
    first, second = str(tmp_path / "a.ogg"), str(tmp_path / "b.ogg")
    sf.write(first, tone(12.0, seed=1), RATE, format="OGG", subtype="VORBIS")
    sf.write(second, tone(12.0, **{"seed": 1, **other}), RATE, format="OGG", subtype="VORBIS")
    correlation = demo_curation.decoded_correlation(first, second)
    assert (correlation >= demo_curation.NEAR_DUPLICATE_CORRELATION) == alike
    assert correlation > 0.99 if alike else abs(correlation) < 0.2


def test_curate_tracks_rejects_a_negative_minimum():
    with pytest.raises(ValueError, match="min_track_seconds must be >= 0, got -1"):
        demo.curate_tracks(files={}, min_track_seconds=-1.0)


def test_a_curated_package_without_its_music_folder_fails_clearly(fake_debs, tmp_path):
    moved = demo.CuratedSource(key="game5", package="game5-music", album="game5", license="x",
                               member_pattern=r"^/usr/share/game5/music/(.+\.ogg)$")
    with pytest.raises(demo.DemoBuildError, match=r"game5-music: no file matches .*update its CuratedSource"):
        demo.build_demo_corpus(cache_dir=str(tmp_path / "c"), sources=(moved,), fetch=FakeApt(fake_debs),
                               verbose=False)


# ---------------------------------------------------------------- build.py


def test_prepare_extended_uses_the_extra_packages_and_its_own_cache(fake_debs, tmp_path, monkeypatch):
    monkeypatch.setattr(demo, "DEMO_SOURCES", FAKE_SOURCES[:1])
    monkeypatch.setattr(demo, "EXTRA_SOURCES", FAKE_SOURCES[1:])
    monkeypatch.setattr(demo, "download_package", FakeApt(fake_debs))
    monkeypatch.setattr(demo, "MIN_TRACK_SECONDS", 2.0)
    monkeypatch.setattr(demo, "DEFAULT_CACHE_DIR", str(tmp_path / "demo_corpus"))
    monkeypatch.setattr(demo, "DEFAULT_EXTENDED_CACHE_DIR", str(tmp_path / "demo_extended_corpus"))

    report = prepare(dataset="demo", extended=True, output=str(tmp_path / "prepared"), sample_rate=8000,
                     workers=1, progress=False, verbose=False, split_by="label")

    assert report["tracks"] == 5 and report["skipped"] == []
    assert sorted(report["labels"]) == ["game1", "game4", "game5"]
    assert os.path.isfile(tmp_path / "demo_extended_corpus" / "manifest.csv")
    assert not os.path.exists(tmp_path / "demo_corpus")  # the plain demo's cache is left alone


def test_extended_with_another_dataset_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="extended applies to the demo dataset only .*got dataset 'manifest'"):
        prepare(dataset="manifest", extended=True, input_path=str(tmp_path), output=str(tmp_path / "o"),
                progress=False, verbose=False)


def test_command_line_refuses_extended_without_demo(tmp_path):
    result = subprocess.run([sys.executable, "-m", "data_prep.build", "--dataset=album_folders", "--extended",
                             f"--input={tmp_path}", f"--output={tmp_path / 'out'}"],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert result.returncode == 2
    assert "error: extended applies to the demo dataset only" in result.stderr
    assert "Traceback" not in result.stderr
