"""musicsim.data.tags: tags and cover art of every format the decoder reads, written here with mutagen."""
from __future__ import annotations

import base64
import os
import struct
import zlib

import numpy as np
import pytest
import soundfile as sf

from musicsim.data.tags import TAG_KEYS, read_cover_art, read_tags

SAMPLE_RATE = 16000
SECONDS = 1.5
# (extension, soundfile format, subtype)
FORMATS = [(".ogg", "OGG", "VORBIS"), (".opus", "OGG", "OPUS"), (".flac", "FLAC", "PCM_16"),
           (".mp3", "MP3", "MPEG_LAYER_III"), (".wav", "WAV", "PCM_16"), (".aiff", "AIFF", "PCM_16")]
FORMAT_IDS = [ext.lstrip(".") for ext, _, _ in FORMATS]
UNICODE_TAGS = {"title": "Песня № 5 — «Ünïcødé» 雨", "artist": "Björk & Æ", "album": "Ōkami 大神",
                "album_artist": "Various Ärtists", "track_number": 5, "disc": 2, "year": 2001, "genre": "Ambient"}


def tiny_png(*, width: int = 2, height: int = 3) -> bytes:
    """A real PNG image (red pixels), built by hand."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    rows = b"".join(b"\x00" + b"\xff\x00\x00" * width for _ in range(height))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def write_audio(path: str, *, fmt: str, subtype: str, seconds: float = SECONDS) -> str:
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    sf.write(path, (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), SAMPLE_RATE, format=fmt, subtype=subtype)
    return path


def write_tags(path: str, tags: dict, *, cover: bytes | None = None) -> None:
    """Tag ``path`` with mutagen in its format's native tag type (what real taggers write)."""
    import mutagen
    from mutagen import id3
    from mutagen.flac import Picture

    audio = mutagen.File(path)
    ext = os.path.splitext(path)[1]
    if ext in (".mp3", ".wav", ".aiff"):
        if audio.tags is None:
            audio.add_tags()
        frames = audio.tags
        for key, frame in (("title", id3.TIT2), ("artist", id3.TPE1), ("album", id3.TALB),
                           ("album_artist", id3.TPE2), ("genre", id3.TCON)):
            if key in tags:
                frames.add(frame(encoding=3, text=[tags[key]]))
        if "track_number" in tags:
            frames.add(id3.TRCK(encoding=3, text=[f"{tags['track_number']}/12"]))
        if "disc" in tags:
            frames.add(id3.TPOS(encoding=3, text=[f"{tags['disc']}/2"]))
        if "year" in tags:
            frames.add(id3.TDRC(encoding=3, text=[f"{tags['year']}-05-03"]))
        if cover is not None:
            frames.add(id3.APIC(encoding=3, mime="image/png", type=0, desc="other", data=b"\x89PNG not the cover"))
            frames.add(id3.APIC(encoding=3, mime="image/png", type=3, desc="front", data=cover))
        audio.save()
        return
    # Vorbis comments: Ogg Vorbis, Ogg Opus, FLAC
    if audio.tags is None:
        audio.add_tags()
    names = {"title": "TITLE", "artist": "ARTIST", "album": "ALBUM", "album_artist": "ALBUMARTIST",
             "genre": "GENRE", "track_number": "TRACKNUMBER", "disc": "DISCNUMBER", "year": "DATE"}
    for key, name in names.items():
        if key in tags:
            value = tags[key]
            audio.tags[name] = [f"{value:02d}" if key == "track_number" else
                                f"{value}-05-03" if key == "year" else str(value)]
    if cover is not None:
        picture = Picture()
        picture.type, picture.mime, picture.width, picture.height, picture.data = 3, "image/png", 2, 3, cover
        if ext == ".flac":
            audio.add_picture(picture)
        else:
            audio.tags["METADATA_BLOCK_PICTURE"] = [base64.b64encode(picture.write()).decode("ascii")]
    audio.save()


@pytest.mark.parametrize("ext,fmt,subtype", FORMATS, ids=FORMAT_IDS)
def test_unicode_tags_and_cover_are_read_from_every_format(tmp_path, ext, fmt, subtype):
    folder = tmp_path / "Folder name"
    folder.mkdir()
    path = write_audio(str(folder / f"file name{ext}"), fmt=fmt, subtype=subtype)
    cover = tiny_png()
    write_tags(path, UNICODE_TAGS, cover=cover)

    tags = read_tags(path=path)
    assert set(tags) == set(TAG_KEYS)
    assert {key: tags[key] for key in UNICODE_TAGS} == UNICODE_TAGS
    assert tags["duration_s"] == pytest.approx(SECONDS, abs=0.1)
    assert read_cover_art(path=path) == (cover, "image/png")


@pytest.mark.parametrize("ext,fmt,subtype", FORMATS, ids=FORMAT_IDS)
def test_missing_tags_fall_back_to_file_and_folder_names(tmp_path, ext, fmt, subtype):
    folder = tmp_path / "Альбом без тегов"
    folder.mkdir()
    path = write_audio(str(folder / f"07 Безымянная{ext}"), fmt=fmt, subtype=subtype)

    tags = read_tags(path=path)
    assert tags["title"] == "07 Безымянная" and tags["album"] == "Альбом без тегов"
    assert all(tags[key] is None for key in ("artist", "album_artist", "track_number", "disc", "year", "genre"))
    assert tags["duration_s"] == pytest.approx(SECONDS, abs=0.1)
    assert read_cover_art(path=path) is None
    untagged = read_tags(path=path, fallback=False)  # what tells a tagged album from a folder
    assert untagged["title"] is None and untagged["album"] is None


@pytest.mark.parametrize("ext,fmt,subtype", FORMATS, ids=FORMAT_IDS)
def test_partial_tags_keep_the_fallbacks_for_the_rest(tmp_path, ext, fmt, subtype):
    path = write_audio(str(tmp_path / f"song{ext}"), fmt=fmt, subtype=subtype)
    write_tags(path, {"artist": "Only Artist", "track_number": 3})

    tags = read_tags(path=path)
    assert (tags["title"], tags["artist"], tags["album"], tags["track_number"]) == (
        "song", "Only Artist", tmp_path.name, 3)
    assert tags["year"] is None and tags["genre"] is None


@pytest.mark.parametrize("content", [b"", b"this is not audio at all" * 10, b"OggS" + b"\x00" * 40],
                         ids=["empty", "text", "damaged-ogg"])
def test_unreadable_files_get_the_fallbacks_not_an_error(tmp_path, content):
    path = tmp_path / "Album" / "broken.ogg"
    path.parent.mkdir()
    path.write_bytes(content)

    tags = read_tags(path=str(path))
    assert tags["title"] == "broken" and tags["album"] == "Album"
    assert all(tags[key] is None for key in TAG_KEYS if key not in ("title", "album"))
    assert read_cover_art(path=str(path)) is None


def test_id3_numeric_genre_and_whitespace_are_cleaned(tmp_path):
    from mutagen import id3

    path = write_audio(str(tmp_path / "g.mp3"), fmt="MP3", subtype="MPEG_LAYER_III")
    frames = id3.ID3()
    frames.add(id3.TCON(encoding=3, text=["(17)"]))
    frames.add(id3.TIT2(encoding=3, text=["  padded title  "]))
    frames.save(path)

    tags = read_tags(path=path)
    assert (tags["genre"], tags["title"]) == ("Rock", "padded title")
