"""The OpenSubsonic API (``musicsim.search.serve --subsonic``) over a real uvicorn server on 127.0.0.1, driven by
clients nobody here wrote (py-sonic; the npm package subsonic-api with node) and by raw HTTP: XML and
JSON say the same, authentication, errors, traversal, ids that survive a re-scan, the users file."""
from __future__ import annotations

import hashlib
import io
import json
import os
import random
import shutil
import stat
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import soundfile as sf

from conftest import ServerThread
import musicsim.index

libsonic = pytest.importorskip("libsonic")

NAMESPACE = "{http://subsonic.org/restapi}"
PASSWORD = "sésame ouvre-toi"
USER = "alice"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NODE_CLIENT = os.path.join(REPO, "tests", "js", "subsonic_client.mjs")
NODE_PACKAGE = os.path.join(REPO, "tests", "js", "node_modules", "subsonic-api")

# (album artist tag, album, artist of each track or None for the album artist, year, genre, with picture)
ALBUMS = [
    ("The Quiet Ones", "Morning Light", [None, None, None], 2001, "Ambient", True),
    ("The Quiet Ones", "Nachtmusik", [None, None], 2005, "Ambient", False),
    ("Bärbel Ürlich", "Café Öl", [None, None, None], 1999, "Jazz", True),
    (None, "Sampler Vol. 1", ["Zed", "Yolanda", "Xavier"], 2010, "Rock", False),  # a compilation, no album artist
    (None, "Lonely Tapes", ["Wanda", "Wanda"], None, None, False),  # no album artist, one artist
]


def _png(width: int, height: int, colour: tuple[int, int, int]) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(out, format="PNG")
    return out.getvalue()


def write_library(root: str) -> list[dict]:
    """Tagged FLAC files (2-2.5 s, 8 kHz) of ``ALBUMS`` under ``root``; one dict per track (path, tags, picture)."""
    from mutagen.flac import FLAC, Picture

    rate = 8000
    rng = np.random.default_rng(0)
    tracks = []
    for a, (album_artist, album, artists, year, genre, with_picture) in enumerate(ALBUMS):
        folder = os.path.join(root, f"{album_artist or 'various'}-{a}", album.replace(" ", "_"))
        os.makedirs(folder, exist_ok=True)
        picture = _png(64, 48, (40 * a, 200, 90)) if with_picture else None
        for k, artist in enumerate(artists):
            path = os.path.join(folder, f"{k + 1:02d}.flac")
            seconds = 2.0 + 0.25 * k
            t = np.arange(int(seconds * rate)) / rate
            signal = 0.3 * np.sin(2 * np.pi * (220 + 40 * a + 15 * k) * t) + 0.01 * rng.standard_normal(t.size)
            sf.write(path, signal.astype(np.float32), rate)
            audio = FLAC(path)
            title = f"Song {chr(65 + k)} of {album}"
            audio["title"] = title
            audio["artist"] = artist or album_artist
            audio["album"] = album
            if album_artist:
                audio["albumartist"] = album_artist
            audio["tracknumber"] = f"{k + 1}/{len(artists)}"
            audio["discnumber"] = "1"
            if year:
                audio["date"] = f"{year}-03-01"
            if genre:
                audio["genre"] = genre
            if picture:
                cover = Picture()
                cover.type, cover.mime, cover.data, cover.width, cover.height = 3, "image/png", picture, 64, 48
                audio.add_picture(cover)
            audio.save()
            tracks.append({"path": path, "title": title, "album": album, "artist": artist or album_artist,
                           "album_artist": album_artist, "album_number": a, "picture": picture, "year": year,
                           "genre": genre, "seconds": seconds})
    return tracks


def scan_into(*, music: str, index_dir: str, model_dir: str) -> None:
    """``musicsim.scan`` of the library folder into ``index_dir``, embedding with the fitted model."""
    from musicsim import scan
    from musicsim.embedder import load_embedder

    scan.scan_library(roots=[music], index_dir=index_dir, model_dir=model_dir, workers=1, progress=False,
                      embedder=load_embedder(model_dir))


def build_index(*, tracks: list[dict], root: str, index_dir: str, order: list[int] | None = None) -> None:
    """An index of the tracks built directly, rows in ``order`` (tags read by musicsim.data.tags as a scan reads
    them; vectors: an album centre plus noise)."""
    from musicsim.index import FaissIndex
    from musicsim.data.tags import read_tags

    rng = np.random.default_rng(1)
    centres = rng.standard_normal((len(ALBUMS), 16))
    order = list(range(len(tracks))) if order is None else order
    columns: dict[str, list] = {key: [] for key in ("title", "artist", "album", "album_artist", "track_number", "disc",
                                                    "year", "genre", "duration_s", "path", "relative_path", "group")}
    ids, vectors = [], []
    for row in order:
        track = tracks[row]
        relative = os.path.relpath(track["path"], root)
        ids.append(hashlib.sha1(f"music/{relative}".encode()).hexdigest()[:16])
        vectors.append(centres[track["album_number"]] + 0.3 * np.random.default_rng(row).standard_normal(16))
        tags = read_tags(path=track["path"])
        for key in ("title", "artist", "album", "album_artist", "track_number", "disc", "year", "genre", "duration_s"):
            columns[key].append(tags[key])
        columns["path"].append(track["path"])
        columns["relative_path"].append(relative)
        columns["group"].append(track["album"])
    FaissIndex(track_ids=ids, vectors=np.array(vectors), similarity="cosine", metadata=columns,
                   model={"name": "test-vectors"}).save(index_dir, overwrite=True)


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    """Tagged files scanned into an index (MFCC fitted on them), a users file with ``alice``, and the server
    with ``--subsonic``."""
    from musicsim.models.mfcc import MFCCModel
    from musicsim.search.app import create_app
    from musicsim.search.users import add_user, load_users

    root = tmp_path_factory.mktemp("subsonic")
    music = str(root / "music")
    tracks = write_library(music)
    model_dir = str(root / "mfcc")
    MFCCModel(sample_rate=8000, max_seconds=None, workers=1, progress=False).fit(
        paths=[t["path"] for t in tracks]).save(model_dir)
    index_dir = str(root / "index")
    scan_into(music=music, index_dir=index_dir, model_dir=model_dir)
    users_file = str(root / "config" / "musicsim" / "users.json")
    add_user(users_file=users_file, name=USER, password=PASSWORD)
    api_key = load_users(users_file=users_file)[USER].api_keys[0]
    app = create_app(index_dir=index_dir, subsonic=True, users_file=users_file)
    server = ServerThread(app)
    yield {"root": root, "music": music, "tracks": tracks, "index_dir": index_dir, "users_file": users_file,
           "model_dir": model_dir,
           "api_key": api_key, "server": server, "base": server.base, "port": server.port, "app": app}
    server.stop()


def connection(library, *, password: str = PASSWORD, user: str = USER, **options) -> "libsonic.Connection":
    return libsonic.Connection("http://127.0.0.1", user, password, port=library["port"], appName="pytest", **options)


def auth_params(**extra) -> dict[str, str]:
    salt = "%08x" % random.getrandbits(32)
    return {"u": USER, "t": hashlib.md5((PASSWORD + salt).encode()).hexdigest(), "s": salt, "v": "1.16.1",
            "c": "pytest", **extra}


def call(library, method: str, params: dict[str, str] | None = None, *, post: bool = False,
         headers: dict[str, str] | None = None) -> tuple[int, str, bytes]:
    """(HTTP status, content type, body) of ``/rest/<method>``; GET unless ``post`` (form)."""
    query = urllib.parse.urlencode(params or {})
    url = f"{library['base']}/rest/{method}"
    if post:
        request = urllib.request.Request(url, data=query.encode(), headers={
            "Content-Type": "application/x-www-form-urlencoded", **(headers or {})})
    else:
        request = urllib.request.Request(f"{url}?{query}" if query else url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.headers.get("Content-Type", ""), response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers.get("Content-Type", ""), error.read()


def json_answer(library, method: str, **params) -> dict:
    status, content_type, body = call(library, method, auth_params(f="json", **params))
    assert status == 200 and content_type.startswith("application/json"), (status, content_type, body[:300])
    return json.loads(body)["subsonic-response"]


def xml_answer(library, method: str, **params) -> ET.Element:
    status, content_type, body = call(library, method, auth_params(**params))
    assert status == 200 and content_type.startswith("text/xml"), (status, content_type, body[:300])
    return ET.fromstring(body)


# ------------------------------------------------------------------------------ canonical forms of XML and JSON
def canonical_json(node) -> dict:
    """An object as (attributes as strings, children as lists), the form XML parses to."""
    attributes, children = {}, {}
    for key, value in node.items():
        if isinstance(value, dict):
            children.setdefault(key, []).append(canonical_json(value))
        elif isinstance(value, list):
            for item in value:
                children.setdefault(key, []).append(canonical_json(item) if isinstance(item, dict)
                                                    else {"attributes": {"value": _scalar(item)}, "children": {}})
        else:
            attributes[key] = _scalar(value)
    return {"attributes": attributes, "children": children}


def _scalar(value) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def canonical_xml(element: ET.Element) -> dict:
    assert element.tag.startswith(NAMESPACE), f"{element.tag} is not in the Subsonic namespace"
    attributes = dict(element.attrib)
    if element.text and element.text.strip():
        attributes["value"] = element.text
    children: dict[str, list] = {}
    for child in element:
        children.setdefault(child.tag[len(NAMESPACE):], []).append(canonical_xml(child))
    return {"attributes": attributes, "children": children}


# ------------------------------------------------------------------------------ py-sonic
def test_pysonic_ping_and_browse_artists_albums_songs(library):
    client = connection(library)
    assert client.ping() is True
    artists = client.getArtists()["artists"]["index"]
    names = {artist["name"]: artist for group in artists for artist in group["artist"]}
    expected_album_artists = {"The Quiet Ones", "Bärbel Ürlich", "Various Artists", "Wanda"}
    assert set(names) == expected_album_artists
    # Listed under its name without "The"; everything under a letter or '#'.
    letters = {artist["name"]: group["name"] for group in artists for artist in group["artist"]}
    assert letters["The Quiet Ones"] == "Q" and letters["Bärbel Ürlich"] == "B"
    seen_titles = []
    for name, entry in names.items():
        artist = client.getArtist(entry["id"])["artist"]
        expected_albums = {album for album_artist, album, artists_, *_ in ALBUMS
                           if (album_artist or ("Various Artists" if len(set(artists_)) > 1 else artists_[0])) == name}
        assert {a["name"] for a in artist["album"]} == expected_albums and artist["albumCount"] == len(expected_albums)
        for album_entry in artist["album"]:
            album = client.getAlbum(album_entry["id"])["album"]
            songs = album["song"]
            tracks = [t for t in library["tracks"] if t["album"] == album["name"]]
            assert album["songCount"] == len(songs) == len(tracks)
            assert [s["track"] for s in songs] == list(range(1, len(songs) + 1))  # disc and track order
            assert album["duration"] == sum(s["duration"] for s in songs)
            assert {s["title"] for s in songs} == {t["title"] for t in tracks}
            assert all(s["albumId"] == album["id"] and s["parent"] == album["id"] for s in songs)
            assert album.get("year") == tracks[0]["year"] and album.get("genre") == tracks[0]["genre"]
            for song in songs:
                assert client.getSong(song["id"])["song"] == song
                assert not os.path.isabs(song["path"]) and library["music"] not in json.dumps(song)
            seen_titles += [s["title"] for s in songs]
    assert sorted(seen_titles) == sorted(t["title"] for t in library["tracks"])


def test_pysonic_search3_finds_words_and_pages_the_whole_library(library):
    client = connection(library)
    found = client.search3("café", artistCount=5, albumCount=5, songCount=10)["searchResult3"]
    assert [a["name"] for a in found["album"]] == ["Café Öl"]
    assert {s["title"] for s in found["song"]} == {t["title"] for t in library["tracks"] if t["album"] == "Café Öl"}
    found = client.search3("song b sampler")["searchResult3"]
    assert [s["title"] for s in found["song"]] == ["Song B of Sampler Vol. 1"]
    pages, offset = [], 0
    while True:
        page = client.search3("", artistCount=0, albumCount=0, songCount=4, songOffset=offset)["searchResult3"]
        assert "artist" not in page or not page["artist"]
        songs = page.get("song", [])
        pages += songs
        offset += 4
        if len(songs) < 4:
            break
    assert len(pages) == len(library["tracks"]) == len({s["id"] for s in pages})


def test_pysonic_stream_a_range_and_download(library):
    client = connection(library)
    song = client.search3("Song B of Morning Light")["searchResult3"]["song"][0]
    original = open(next(t["path"] for t in library["tracks"] if t["title"] == song["title"]), "rb").read()
    assert song["size"] == len(original) and song["suffix"] == "flac" and song["contentType"] == "audio/flac"
    ranged = connection(library, customHeaders={"Range": "bytes=100-1099"}).stream(song["id"])
    assert ranged.status == 206 and ranged.read() == original[100:1100]
    assert client.stream(song["id"]).read() == original
    downloaded = client.download(song["id"])
    assert "attachment" in downloaded.headers["Content-Disposition"] and downloaded.read() == original


def test_pysonic_cover_art_and_its_size(library):
    from PIL import Image

    client = connection(library)
    album = client.search3("Morning Light", songCount=0)["searchResult3"]["album"][0]
    picture = next(t["picture"] for t in library["tracks"] if t["album"] == "Morning Light")
    assert client.getCoverArt(album["coverArt"]).read() == picture
    small = Image.open(io.BytesIO(client.getCoverArt(album["coverArt"], size=16).read()))
    assert max(small.size) == 16 and small.size == (16, 12)
    song = client.getAlbum(album["id"])["album"]["song"][1]
    assert client.getCoverArt(song["coverArt"]).read() == picture
    bare = client.search3("Nachtmusik", songCount=0)["searchResult3"]["album"][0]
    with pytest.raises(libsonic.errors.DataNotFoundError):
        client.getCoverArt(bare["coverArt"])


def test_pysonic_similar_songs2_are_the_index_neighbours(library):
    from musicsim.search.subsonic.ids import song_id

    client = connection(library)
    index = musicsim.index.open(library["index_dir"])
    track_of_song = {song_id(t): t for t in index.track_ids}
    songs = client.search3("", songCount=100)["searchResult3"]["song"]
    for song in songs[:4]:
        similar = client.getSimilarSongs2(song["id"], count=3)["similarSongs2"]["song"]
        neighbours = [t for t, _ in index.search_by_id(track_id=track_of_song[song["id"]], k=3)]
        assert [s["id"] for s in similar] == [song_id(t) for t in neighbours]
        assert song["id"] not in {s["id"] for s in similar}
    # An album's similar songs leave the album out.
    album = client.getAlbum(songs[0]["albumId"])["album"]
    similar = client.getSimilarSongs2(album["id"], count=5)["similarSongs2"]["song"]
    assert len(similar) == 5 and not {s["id"] for s in similar} & {s["id"] for s in album["song"]}


def test_pysonic_random_songs(library):
    client = connection(library)
    songs = client.getRandomSongs(size=6)["randomSongs"]["song"]
    assert len(songs) == 6 == len({s["id"] for s in songs})
    assert {s["title"] for s in songs} <= {t["title"] for t in library["tracks"]}
    jazz = client.getRandomSongs(size=50, genre="Jazz")["randomSongs"]["song"]
    assert {s["album"] for s in jazz} == {"Café Öl"} and len(jazz) == 3
    ranged = client.getRandomSongs(size=50, fromYear=2000, toYear=2006)["randomSongs"]["song"]
    assert {s["year"] for s in ranged} == {2001, 2005}


@pytest.mark.parametrize("mistake, error", [
    ({"password": "wrong"}, "CredentialError"),
    ({"user": "mallory"}, "CredentialError"),
])
def test_pysonic_bad_credentials_answer_40(library, mistake, error):
    with pytest.raises(getattr(libsonic.errors, error)):
        connection(library, **mistake).ping()


def test_pysonic_unknown_ids_answer_70(library):
    client = connection(library)
    for call_ in (lambda: client.getSong("tr-0000"), lambda: client.getAlbum("al-nope"),
                  lambda: client.getArtist("whatever"), lambda: client.getSimilarSongs2("tr-1234")):
        with pytest.raises(libsonic.errors.DataNotFoundError):
            call_()


# ------------------------------------------------------------------------------ every endpoint, XML and JSON
def _endpoint_calls(library) -> list[tuple[str, dict]]:
    songs = json_answer(library, "search3", query="", songCount=100)["searchResult3"]["song"]
    first, last = songs[0], songs[-1]
    album = first["albumId"]
    artist = json_answer(library, "getAlbum", id=album)["album"]["artistId"]
    return [("ping", {}), ("getLicense", {}), ("getOpenSubsonicExtensions", {}), ("getMusicFolders", {}),
            ("getIndexes", {}), ("getArtists", {}), ("getArtist", {"id": artist}), ("getAlbum", {"id": album}),
            ("getAlbumList2", {"type": "alphabeticalByName", "size": "50"}),
            ("getAlbumList2", {"type": "newest"}), ("getAlbumList2", {"type": "byGenre", "genre": "Ambient"}),
            ("getAlbumList2", {"type": "byYear", "fromYear": "2010", "toYear": "1990"}),
            ("getSong", {"id": first["id"]}), ("getGenres", {}), ("search3", {"query": "song"}),
            ("getSimilarSongs", {"id": first["id"], "count": "4"}), ("getSimilarSongs", {"id": artist}),
            ("getSimilarSongs2", {"id": first["id"]}), ("getSonicSimilarTracks", {"id": first["id"], "count": "5"}),
            ("findSonicPath", {"startSongId": first["id"], "endSongId": last["id"], "count": "6"}),
            ("getTopSongs", {"artist": "Wanda"}), ("getSong", {"id": "tr-missing"}),
            ("stream", {"id": "tr-missing"}), ("download", {"id": "nothing"}), ("getCoverArt", {"id": "co-x"}),
            ("getAlbum", {}), ("getAlbumList2", {"type": "sideways"}), ("star", {"id": first["id"]}),
            ("noSuchMethod", {})]


def test_every_endpoint_says_the_same_in_xml_and_json(library):
    for method, params in _endpoint_calls(library):
        answer = json_answer(library, method, **params)
        root = xml_answer(library, method, **params)
        assert root.tag == f"{NAMESPACE}subsonic-response", method
        assert canonical_xml(root) == canonical_json(answer), (method, params)
        assert answer["version"] == "1.16.1" and answer["type"] == "musicsim" and answer["openSubsonic"] is True
        assert answer["serverVersion"]


def test_answers_of_each_kind(library):
    assert json_answer(library, "getOpenSubsonicExtensions")["openSubsonicExtensions"] == [
        {"name": "sonicSimilarity", "versions": [1]}, {"name": "apiKeyAuthentication", "versions": [1]},
        {"name": "formPost", "versions": [1]}]
    genres = {g["value"]: g for g in json_answer(library, "getGenres")["genres"]["genre"]}
    assert genres == {"Ambient": {"value": "Ambient", "songCount": 5, "albumCount": 2},
                      "Jazz": {"value": "Jazz", "songCount": 3, "albumCount": 1},
                      "Rock": {"value": "Rock", "songCount": 3, "albumCount": 1}}
    by_name = json_answer(library, "getAlbumList2", type="alphabeticalByName")["albumList2"]["album"]
    assert [a["name"] for a in by_name] == ["Café Öl", "Lonely Tapes", "Morning Light", "Nachtmusik", "Sampler Vol. 1"]
    by_year = json_answer(library, "getAlbumList2", type="byYear", fromYear="2010", toYear="2000")["albumList2"]
    assert [a["year"] for a in by_year["album"]] == [2010, 2005, 2001]
    paged = json_answer(library, "getAlbumList2", type="alphabeticalByName", size="2", offset="2")["albumList2"]
    assert [a["name"] for a in paged["album"]] == ["Morning Light", "Nachtmusik"]
    assert json_answer(library, "getTopSongs", artist="Wanda")["topSongs"] == {}
    assert json_answer(library, "getLicense")["license"] == {"valid": True}
    indexes = json_answer(library, "getIndexes")["indexes"]
    assert indexes["lastModified"] > 0 and {a["name"] for i in indexes["index"] for a in i["artist"]} == {
        "The Quiet Ones", "Bärbel Ürlich", "Various Artists", "Wanda"}
    unchanged = json_answer(library, "getIndexes", ifModifiedSince=str(indexes["lastModified"]))["indexes"]
    assert "index" not in unchanged
    assert json_answer(library, "getAlbumList2")["error"]["code"] == 10
    assert json_answer(library, "getAlbumList2", type="sideways")["error"]["code"] == 0
    assert json_answer(library, "getAlbumList2", type="byYear", fromYear="2000")["error"]["code"] == 10
    assert json_answer(library, "star", id="x")["error"]["code"] == 50
    assert json_answer(library, "noSuchMethod")["error"]["code"] == 0


def test_sonic_similarity_and_path(library):
    songs = json_answer(library, "search3", query="", songCount=100)["searchResult3"]["song"]
    for song in songs[:3]:
        matches = json_answer(library, "getSonicSimilarTracks", id=song["id"], count="5")["sonicMatch"]
        similarities = [m["similarity"] for m in matches]
        assert len(matches) == 5 and all(0.0 <= s <= 1.0 for s in similarities)
        assert similarities == sorted(similarities, reverse=True) and song["id"] not in [m["entry"]["id"] for m in matches]
    start, end = songs[0], songs[-1]
    for count in (2, 5, 40):
        path = json_answer(library, "findSonicPath", startSongId=start["id"], endSongId=end["id"],
                           count=str(count))["sonicMatch"]
        ids_ = [m["entry"]["id"] for m in path]
        assert ids_[0] == start["id"] and ids_[-1] == end["id"] and len(ids_) == min(count, len(songs))
        assert len(set(ids_)) == len(ids_) and path[0]["similarity"] == 1.0
        assert all(0.0 <= m["similarity"] <= 1.0 for m in path)
    assert json_answer(library, "findSonicPath", startSongId=start["id"])["error"]["code"] == 10
    assert json_answer(library, "findSonicPath", startSongId=start["id"], endSongId="tr-x")["error"]["code"] == 70


def test_formats_jsonp_post_and_view_suffix(library):
    params = auth_params(f="json")
    _, _, plain = call(library, "getGenres", params)
    for method, post in (("getGenres.view", False), ("getGenres", True), ("getGenres.view", True)):
        status, content_type, body = call(library, method, params, post=post)
        assert status == 200 and json.loads(body) == json.loads(plain), (method, post)
    status, content_type, body = call(library, "getGenres", auth_params(f="jsonp", callback="handle.genres"))
    assert content_type.startswith("application/javascript")
    assert body.startswith(b"handle.genres(") and body.endswith(b");")
    assert json.loads(body[len(b"handle.genres("):-2]) == json.loads(plain)
    for callback, code in (("alert(1)//", 0), ("", 10)):
        status, content_type, body = call(library, "getGenres", auth_params(f="jsonp", callback=callback))
        assert content_type.startswith("application/json") and json.loads(body)["subsonic-response"]["error"][
            "code"] == code
    # Credentials in the form body, the rest in the query.
    status, _, body = call(library, "getGenres?f=json", auth_params(), post=True)
    assert json.loads(body) == json.loads(plain)


# ------------------------------------------------------------------------------ authentication
def _error_code(library, params: dict, method: str = "ping") -> int | None:
    status, _, body = call(library, method, {**params, "f": "json", "v": "1.16.1", "c": "pytest"})
    answer = json.loads(body)["subsonic-response"]
    return answer["error"]["code"] if answer["status"] == "failed" else None


@pytest.mark.parametrize("credentials, code", [
    ({}, 10),
    ({"u": USER}, 10),
    ({"u": USER, "t": "0" * 32}, 10),
    ({"u": USER, "p": "wrong"}, 40),
    ({"u": USER, "p": PASSWORD}, None),
    ({"u": USER, "p": "enc:" + PASSWORD.encode().hex()}, None),
    ({"u": USER, "p": "enc:" + PASSWORD.encode().hex().upper()}, None),
    ({"u": USER, "p": "enc:zz"}, 40),
    ({"u": "bob", "p": PASSWORD}, 40),
    ({"u": USER, "t": hashlib.md5((PASSWORD + "abcdef").encode()).hexdigest(), "s": "abcdef"}, None),
    ({"u": USER, "t": hashlib.md5((PASSWORD + "abcdef").encode()).hexdigest(), "s": "abcdeg"}, 40),
    ({"u": USER, "t": hashlib.md5(("x" + "abcdef").encode()).hexdigest(), "s": "abcdef"}, 40),
    ({"u": USER, "p": PASSWORD, "t": "x", "s": "y"}, 43),
    ({"apiKey": "KEY"}, None),
    ({"apiKey": "not-a-key"}, 44),
    ({"apiKey": "KEY", "u": USER}, 43),
])
def test_authentication(library, credentials, code):
    credentials = {k: (library["api_key"] if v == "KEY" else v) for k, v in credentials.items()}
    assert _error_code(library, credentials) == code


def test_unauthenticated_requests_get_nothing_but_error_10_or_40(library):
    from musicsim.search.subsonic.api import HANDLERS

    song = json_answer(library, "search3", query="", songCount=1)["searchResult3"]["song"][0]
    methods = sorted(set(HANDLERS) - {"getOpenSubsonicExtensions"}) + ["star", "noSuchMethod", "a/b",
                                                                       "..%2F..%2Fetc%2Fpasswd"]
    for method in methods:
        for credentials in ({}, {"u": USER}, {"u": USER, "p": "wrong"}, {"u": "x", "t": "y", "s": "z"}):
            for fmt in ("json", "xml"):
                params = {**credentials, "id": song["id"], "query": "", "type": "random", "f": fmt}
                status, content_type, body = call(library, f"{method}.view", params)
                assert status == 200, (method, status)
                if fmt == "xml":
                    root = ET.fromstring(body)
                    assert root.get("status") == "failed" and [c.tag for c in root] == [f"{NAMESPACE}error"]
                    assert root[0].get("code") in ("10", "40")
                else:
                    answer = json.loads(body)["subsonic-response"]
                    assert answer["status"] == "failed" and answer["error"]["code"] in (10, 40), (method, credentials)
                    assert set(answer) == {"status", "version", "type", "serverVersion", "openSubsonic", "error"}
                assert song["title"].encode() not in body and b"Traceback" not in body
    # The one public method (the OpenSubsonic spec requires it): what this server supports, nothing of the library.
    status, _, body = call(library, "getOpenSubsonicExtensions", {"f": "json"})
    assert set(json.loads(body)["subsonic-response"]) == {"status", "version", "type", "serverVersion", "openSubsonic",
                                                           "openSubsonicExtensions"}


# ------------------------------------------------------------------------------ traversal and files
def test_only_files_the_index_lists_are_served(library, tmp_path):

    index = musicsim.index.open(library["index_dir"])
    track_id = index.track_ids[0]
    path = index.metadata(track_id=track_id)["path"]
    secret = tmp_path / "secret.txt"
    secret.write_text("top secret")
    for identifier in ("../../../../etc/passwd", "/etc/passwd", str(secret), path, track_id,
                       os.path.relpath(path, library["music"]), "tr-../../etc/passwd", "co-" + path, "%2e%2e%2f"):
        for method in ("stream", "download", "getCoverArt", "getSong"):
            status, content_type, body = call(library, method, auth_params(id=identifier, f="json"))
            assert json.loads(body)["subsonic-response"]["error"]["code"] == 70, (method, identifier)
    for raw in ("/rest/../../etc/passwd", "/rest/stream/../../../etc/passwd", "/rest/%2e%2e/%2e%2e/etc/passwd",
                "/rest/stream.view/..%2F..%2Fetc%2Fpasswd"):
        request = urllib.request.Request(library["base"] + raw + "?" + urllib.parse.urlencode(auth_params()))
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                body = response.read()
        except urllib.error.HTTPError as error:
            body = error.read()
        assert b"root:" not in body and b"Traceback" not in body and b"<html" not in body.lower(), raw


def test_a_file_replaced_by_a_symlink_is_not_served(library, tmp_path):
    tracks = library["tracks"]
    victim = tracks[-1]["path"]
    songs = json_answer(library, "search3", query=tracks[-1]["title"])["searchResult3"]["song"]
    backup = str(tmp_path / "backup.flac")
    shutil.move(victim, backup)
    secret = tmp_path / "secret.txt"
    secret.write_text("top secret")
    os.symlink(secret, victim)
    try:
        status, _, body = call(library, "stream", auth_params(id=songs[0]["id"], f="json"))
        assert json.loads(body)["subsonic-response"]["error"]["code"] == 70 and b"top secret" not in body
    finally:
        os.unlink(victim)
        shutil.move(backup, victim)


def test_a_failing_handler_answers_error_0_without_a_traceback(library, monkeypatch):
    from musicsim.search.subsonic import api

    def broken(context):
        raise RuntimeError("secret internal detail /home/someone")

    monkeypatch.setitem(api.HANDLERS, "getGenres", broken)
    for fmt in ("json", "xml"):
        status, content_type, body = call(library, "getGenres", auth_params(f=fmt))
        assert status == 200 and b"secret internal detail" not in body and b"Traceback" not in body
        if fmt == "json":
            assert json.loads(body)["subsonic-response"]["error"]["code"] == 0
        else:
            assert ET.fromstring(body)[0].get("code") == "0"


# ------------------------------------------------------------------------------ ids survive a re-scan
def test_ids_survive_a_rescan_and_another_row_order(library, tmp_path):
    from musicsim.search.subsonic.catalog import Catalog

    def identities(index_dir):
        index = musicsim.index.open(index_dir)
        catalog = Catalog(track_ids=index.track_ids, metadata=[index.metadata(track_id=t) for t in index.track_ids])
        assert all(len(x) == 23 for x in list(catalog.song_of) + list(catalog.albums) + list(catalog.artists))
        return ({s.id: (s.title, s.album_id, s.artist_id) for s in catalog.songs},
                {a.id: (a.name, a.artist_id, len(a.songs)) for a in catalog.albums.values()},
                {a.id: a.name for a in catalog.artists.values()})

    # A fresh scan of the same folder (every file embedded again) into another index.
    rescanned = str(tmp_path / "rescanned")
    scan_into(music=library["music"], index_dir=rescanned, model_dir=library["model_dir"])
    first = identities(library["index_dir"])
    assert identities(rescanned) == first and len(first[0]) == len(library["tracks"]) and len(first[1]) == len(ALBUMS)
    # The same tags in another row order.
    order = list(range(len(library["tracks"])))
    random.Random(3).shuffle(order)
    build_index(tracks=library["tracks"], root=library["music"], index_dir=str(tmp_path / "a"))
    build_index(tracks=library["tracks"], root=library["music"], index_dir=str(tmp_path / "b"), order=order)
    assert identities(str(tmp_path / "a")) == identities(str(tmp_path / "b"))
    assert identities(str(tmp_path / "a"))[1] == first[1]  # albums come from tags alone


def test_a_rescan_while_serving_reaches_the_players(library, tmp_path):
    """The router answers from the service of the index version in use: songs a scan adds appear, songs it
    removes are no longer listed or streamed."""
    from musicsim.search.app import create_app

    music = str(tmp_path / "music")
    shutil.copytree(library["music"], music)
    index_dir = str(tmp_path / "index")
    scan_into(music=music, index_dir=index_dir, model_dir=library["model_dir"])
    server = ServerThread(create_app(index_dir=index_dir, subsonic=True, users_file=library["users_file"],
                                     reload_interval_s=0.2))
    try:
        view = {"base": server.base}
        songs = json_answer(view, "search3", query="", songCount=100)["searchResult3"]["song"]
        assert len(songs) == len(library["tracks"])
        gone = next(s for s in songs if s["album"] == "Nachtmusik")
        os.unlink(os.path.join(music, gone["path"]))
        extra = os.path.join(music, "The Quiet Ones-0", "Morning_Light", "04.flac")
        shutil.copy(os.path.join(music, "The Quiet Ones-0", "Morning_Light", "01.flac"), extra)
        from mutagen.flac import FLAC

        audio = FLAC(extra)
        audio["title"], audio["tracknumber"] = "Song D of Morning Light", "4"
        audio.save()
        scan_into(music=music, index_dir=index_dir, model_dir=library["model_dir"])
        deadline = time.time() + 30
        while time.time() < deadline:
            titles = {s["title"] for s in json_answer(view, "search3", query="", songCount=100)["searchResult3"]["song"]}
            if "Song D of Morning Light" in titles:
                break
            time.sleep(0.2)
        assert "Song D of Morning Light" in titles and gone["title"] not in titles
        assert json_answer(view, "stream", id=gone["id"])["error"]["code"] == 70
        album = json_answer(view, "getAlbum", id=gone["albumId"])["album"]
        assert album["songCount"] == 1 and gone["id"] not in {s["id"] for s in album["song"]}
    finally:
        server.stop()


# ------------------------------------------------------------------------------ the users file
def test_add_user_from_the_command_line_and_the_server_reads_it(library, monkeypatch, capsys):
    from musicsim.search.serve import main

    users_file = library["users_file"]
    monkeypatch.setattr("sys.stdin", io.StringIO("n3w pässword\n"))
    assert main(["musicsim-serve", "--add_user=bob", f"--users={users_file}"]) == 0
    out = capsys.readouterr().out
    api_key = out.split("api key: ")[1].strip()
    assert stat.S_IMODE(os.stat(users_file).st_mode) == 0o600
    time.sleep(0.01)
    assert _error_code(library, {"u": "bob", "p": "n3w pässword"}) is None
    assert _error_code(library, {"apiKey": api_key}) is None
    assert _error_code(library, {"u": USER, "p": PASSWORD}) is None  # alice kept
    # Again: a new password and key; the old ones are revoked.
    monkeypatch.setattr("sys.stdin", io.StringIO("other\n"))
    assert main(["musicsim-serve", "--add_user=bob", f"--users={users_file}"]) == 0
    assert _error_code(library, {"u": "bob", "p": "n3w pässword"}) == 40
    assert _error_code(library, {"apiKey": api_key}) == 44


@pytest.mark.parametrize("arguments, stdin, message", [
    (["--add_user= bob"], "pw\n", "user name"),
    (["--add_user=bob"], "\n", "password is empty"),
    (["--add_user=bob", "--index=INDEX"], "pw\n", "inside the index folder"),
])
def test_add_user_refusals_exit_2(library, tmp_path, monkeypatch, capsys, arguments, stdin, message):
    from musicsim.search.serve import main

    index_dir = library["index_dir"]
    users_file = os.path.join(index_dir, "users.json") if "--index=INDEX" in arguments else str(tmp_path / "u.json")
    arguments = [a.replace("INDEX", index_dir) for a in arguments]
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    assert main(["musicsim-serve", *arguments, f"--users={users_file}"]) == 2
    assert message in capsys.readouterr().err and not os.path.exists(users_file)


def test_the_server_refuses_an_insecure_missing_or_misplaced_users_file(library, tmp_path, capsys):
    from musicsim.search.app import create_app
    from musicsim.search.serve import main
    from musicsim.search.users import UsersFileError, add_user

    loose = str(tmp_path / "loose.json")
    add_user(users_file=loose, name="x", password="y")
    os.chmod(loose, 0o644)
    inside = os.path.join(library["index_dir"], "users.json")
    for users_file, message in ((loose, "mode 0644"), (str(tmp_path / "none.json"), "no users file"),
                                (inside, "inside the index folder")):
        if users_file == inside:
            shutil.copy(library["users_file"], inside)
            os.chmod(inside, 0o600)
        try:
            with pytest.raises(UsersFileError, match=message):
                create_app(index_dir=library["index_dir"], subsonic=True, users_file=users_file)
            assert main(["musicsim-serve", f"--index={library['index_dir']}", "--subsonic",
                         f"--users={users_file}"]) == 2
            assert message in capsys.readouterr().err
        finally:
            if users_file == inside:
                os.unlink(inside)


def test_default_users_file_follows_xdg():
    from musicsim.search.users import default_users_file

    assert default_users_file(environ={"XDG_CONFIG_HOME": "/cfg"}) == "/cfg/musicsim/users.json"
    assert default_users_file(environ={}) == os.path.join(os.path.expanduser("~"), ".config", "musicsim",
                                                          "users.json")


def test_subsonic_is_off_by_default(library):
    from musicsim.search.app import create_app

    server = ServerThread(create_app(index_dir=library["index_dir"]))
    try:
        request = urllib.request.Request(f"{server.base}/rest/ping?" + urllib.parse.urlencode(auth_params()))
        with pytest.raises(urllib.error.HTTPError) as error:
            urllib.request.urlopen(request, timeout=30)
        assert error.value.code == 404
    finally:
        server.stop()


# ------------------------------------------------------------------------------ the npm client (node)
def test_node_subsonic_api_client(library):
    node = shutil.which("node") or shutil.which("nodejs")
    if node is None:
        pytest.skip("node is not installed (apt-get install nodejs npm): the subsonic-api client test needs it")
    if not os.path.isdir(NODE_PACKAGE):
        pytest.skip(f"the npm package subsonic-api is not installed in {os.path.dirname(NODE_PACKAGE)} "
                    "(make test installs it: npm install --prefix tests/js)")
    from musicsim.search.users import add_user

    # subsonic-api 3.3.1 hashes a password's characters as Latin-1, not UTF-8 as the spec says: an ASCII one.
    add_user(users_file=library["users_file"], name="node", password="open-sesame-42")
    songs = json_answer(library, "search3", query="", songCount=100)["searchResult3"]["song"]
    start, end = songs[0], songs[-1]
    result = subprocess.run([node, NODE_CLIENT], capture_output=True, text=True, timeout=60, env={
        **os.environ, "SUBSONIC_URL": library["base"], "SUBSONIC_USER": "node", "SUBSONIC_PASSWORD": "open-sesame-42",
        "SUBSONIC_API_KEY": library["api_key"], "START_ID": start["id"], "END_ID": end["id"],
        "ALBUM_ID": start["albumId"]})
    assert result.returncode == 0, result.stderr
    answers = json.loads(result.stdout)
    assert answers["ping"]["status"] == "ok" and answers["ping"]["openSubsonic"] is True, answers["ping"]
    assert {e["name"] for e in answers["extensions"]["openSubsonicExtensions"]} == {
        "sonicSimilarity", "apiKeyAuthentication", "formPost"}
    similar = answers["similar"]["sonicMatch"]
    assert len(similar) == 4 and all(0 <= m["similarity"] <= 1 for m in similar)
    assert [m["entry"]["id"] for m in similar] == [
        m["entry"]["id"] for m in json_answer(library, "getSonicSimilarTracks", id=start["id"], count="4")["sonicMatch"]]
    path = [m["entry"]["id"] for m in answers["path"]["sonicMatch"]]
    assert path[0] == start["id"] and path[-1] == end["id"] and len(path) == 5
    album = answers["album"]["album"]
    assert album["id"] == start["albumId"] and [s["id"] for s in album["song"]] == [
        s["id"] for s in json_answer(library, "getAlbum", id=start["albumId"])["album"]["song"]]
    assert answers["post_album"]["album"]["id"] == start["albumId"]
    assert answers["api_key_ping"]["status"] == "ok"
    assert answers["bad_password"]["error"]["code"] == 40
