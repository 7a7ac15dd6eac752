"""The demo corpus' Debian packages and their tracks: the curated table ``data_prep.demo`` builds from.

``DEMO_SOURCES``: the 8 packages of the demo corpus (10 album labels, 139 tracks), each with its
curated track list (music only, at least 30 s; jingles are left out, and so are colobot's
``music010``/``music011`` (20 s of music, then 64 s of silence), nexuiz's ``thunder`` (ambience) and
warzone2100's ``*_enhanced`` remasters, which duplicate tracks of the other warzone2100 albums;
warzone2100 ships three soundtrack albums: three labels). ``EXTRA_SOURCES``: the 5 extra packages
``shared/data/README.md`` allows, one album label per game, curated in code (``data_prep.demo.curate_tracks``).
Only these 8 + 5 packages may be used: the others are reserved for a held-out evaluation corpus.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence


@dataclass(frozen=True)
class DemoSource:
    """One Debian package and the tracks taken from it.

    ``member_pattern`` matches a file's path in the package (or, with ``archive_pattern``, inside
    the zip archive that pattern names); its group 1 is the track path listed in ``tracks``.
    """

    key: str
    package: str
    member_pattern: str
    tracks: tuple[tuple[str, str], ...]  # (track path, album label)
    license: str
    archive_pattern: str | None = None


@dataclass(frozen=True)
class CuratedSource:
    """One Debian package whose music files are found by pattern and curated in code.

    ``member_pattern`` matches a music file's path in the package; its group 1 is the track path
    (the track id's second part). Track paths matching ``NON_MUSIC_PATTERNS`` or one of
    ``exclude_patterns`` are left out; the rest go through ``curate_tracks``. Every kept track gets
    the label ``album`` (the game).
    """

    key: str
    package: str
    album: str
    member_pattern: str
    license: str
    exclude_patterns: tuple[str, ...] = ()


def _album(album: str, *names: str) -> tuple[tuple[str, str], ...]:
    return tuple((name, album) for name in names)


def _numbered(template: str, numbers: Sequence[int]) -> list[str]:
    return [template % n for n in numbers]


DEMO_SOURCES: tuple[DemoSource, ...] = (
    DemoSource(
        key="colobot", package="colobot-common-sounds", license="GPL-3+ (see licenses/)",
        member_pattern=r"^/usr/share/games/colobot/music/([^/]+\.ogg)$",
        tracks=_album("colobot", "Constructive.ogg", "Humanitarian.ogg", "Hv2.ogg", "Infinite.ogg", "Intro2.ogg",
                      "Proton.ogg", "Prototype.ogg", "Quite.ogg",
                      *_numbered("music%03d.ogg", [2, 3, 4, 5, 6, 7, 8, 9, 12, 13]))),
    DemoSource(
        key="nexuiz", package="nexuiz-music", license="GPL-2+ (see licenses/)",
        archive_pattern=r"^/usr/share/games/nexuiz/data/music\.pk3$",
        member_pattern=r"^sound/cdtracks/([^/]+\.ogg)$",
        tracks=_album("nexuiz", *(name + ".ogg" for name in (
            "beast-of-insanity", "brainsukker", "breakdown-easy", "brokenlight", "calling-bogus", "chaos-fog",
            "desert3", "digital-pursuit", "infight", "neuronal-diving", "ninesix", "northern-lights",
            "sixtyfour_", "sixtyfour_revisited", "stairs", "subcities", "thru-the-mirror")))),
    DemoSource(
        key="singularity", package="singularity-music", license="CC-BY-SA-3.0 (Max McCracken; see licenses/)",
        member_pattern=r"^/usr/share/games/singularity/music/(.+\.ogg)$",
        tracks=_album("singularity", *(name + ".ogg" for name in (
            "A New Journey", "Aberrations", "Advanced Simulacra", "Awakening", "By-Product", "Coherence",
            "Deprecation", "Enemy Unknown", "Inevitable", "Media Threat", "Nebula", "Orbital Elevator",
            "Through Space", "lose/Chimes They Fade", "lose/March Thee to Dis", "win/Apex Aleph")))),
    DemoSource(
        key="drascula", package="drascula-music",
        license="Drascula-License, BSD-like, DFSG-free (Alcachofa Soft; see licenses/)",
        member_pattern=r"^/usr/share/scummvm/drascula/audio/([^/]+\.ogg)$",
        tracks=_album("drascula", *_numbered("track%d.ogg", [1, *range(2, 12), *range(13, 17), *range(18, 28),
                                                             29, 30, 31]))),
    DemoSource(
        key="pushover", package="pushover-data", license="GPL-3+ (see licenses/)",
        member_pattern=r"^/usr/share/pushover/themes/([^/]+\.ogg)$",
        tracks=_album("pushover", *(name + ".ogg" for name in (
            "aztec", "castle", "dungeon", "electro", "greek", "japanese", "mechanic", "option", "space",
            "toxcity")))),
    DemoSource(
        key="marsshooter", package="marsshooter-data", license="CC-BY-SA-3.0 (see licenses/)",
        member_pattern=r"^/usr/share/games/marsshooter/audio/music/([^/]+\.ogg)$",
        tracks=_album("marsshooter", *(name + ".ogg" for name in (
            "01_-_Ezer_Ev", "02_orphanage", "03_fear", "06_-_Elveszett_Lelkek", "06_starfall", "07_-_Vermocsar",
            "08_second_birth", "09_wings_of_cruelty", "10_farewell", "12_-_Misanthropia")))),
    DemoSource(
        key="fillets-ng", package="fillets-ng-data", license="GPL-2+ (see licenses/)",
        member_pattern=r"^/usr/share/games/fillets-ng/music/([^/]+\.ogg)$",
        tracks=_album("fillets-ng", "menu.ogg", *_numbered("rybky%02d.ogg", [1, 2, 3, 4, 5, 6, 7, 9, 10, 13, 14,
                                                                               15]))),
    DemoSource(
        key="warzone2100", package="warzone2100-music", license="GPL-2+ (see licenses/)",
        member_pattern=r"^/usr/share/games/warzone2100/music/albums/(.+\.opus)$",
        tracks=(_album("warzone2100-aftermath", *_numbered("aftermath_soundtrack/track%d.opus", range(17, 28)))
                + _album("warzone2100-legacy", *_numbered("legacy_soundtrack/track%d.opus", range(4, 17)))
                + _album("warzone2100-original", *_numbered("original_soundtrack/track%d.opus", [1, 2, 3])))),
)

# The 5 extra packages of shared/data/README.md ("Extra packages allowed for training"), no others.
# Each pattern takes the package's music folder alone: the sound effects, voices and ambience live in
# other folders (berusky2 sound/, freedroidrpg sound/effects/, redeclipse sounds/*/ but music/,
# warmux sound/, hyperrogue sounds/). Left out on purpose, though music: freedroidrpg's title-screen
# pieces (base/titles/, storyline/*/titles/, 39-49 s) and redeclipse's theme.ogg, original.ogg,
# theme_chip.ogg and maps/tonatiuh.ogg, which are not in the credited music folder.
# (game: its key and album label, package, its music files' pattern, license)
_EXTRA_GAMES = (
    ("berusky2", "berusky2-data", r"^/usr/share/games/berusky2/music/([^/]+\.ogg)$", "GPL-2+ (see licenses/)"),
    ("freedroidrpg", "freedroidrpg-data", r"^/usr/share/freedroidrpg/data/sound/music/([^/]+\.ogg)$",
     "GPL-2+ (see licenses/)"),
    ("redeclipse", "redeclipse-data", r"^/usr/share/games/redeclipse/data/sounds/music/([^/]+\.ogg)$",
     "CC-BY-SA-3.0 (Derek Stegall; see licenses/)"),
    ("warmux", "warmux-data", r"^/usr/share/games/warmux/music/((?:ingame|menu)/[^/]+\.ogg)$",
     "GPL-2+ (see licenses/)"),
    ("hyperrogue", "hyperrogue-music", r"^/usr/share/hyperrogue/music/([^/]+\.ogg)$",
     "CC-BY-SA-3.0 (Shawn Parrotte, Lincoln Domina, Will Savino; see licenses/)"),
)
EXTRA_SOURCES: tuple[CuratedSource, ...] = tuple(
    CuratedSource(key=game, package=package, album=game, member_pattern=pattern, license=license)
    for game, package, pattern, license in _EXTRA_GAMES)
