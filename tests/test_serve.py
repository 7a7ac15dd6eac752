"""The HTTP service (musicsim.search: app, routes, service, holder), playlists, the catalog map, musicsim.projector.

The service's tests run over both index backends (faiss, and Milvus Lite in-process where pymilvus and
milvus-lite import): the ``client`` and ``tagged`` fixtures are parametrized by backend.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib

import numpy as np
import pytest
import soundfile as sf
from fastapi.testclient import TestClient

from conftest import ALBUM_TIMBRES, SERVED_SAMPLE_RATE, album_track_ids, render_track
from musicsim.search import catalog_map, playlist
import musicsim.index
from musicsim.index import FaissIndex
from musicsim.search.app import create_app
from musicsim.search.serve import main

ALBUMS = tuple(ALBUM_TIMBRES)
HAVE_MILVUS = importlib.util.find_spec("pymilvus") is not None and importlib.util.find_spec("milvus_lite") is not None
BACKENDS = ["faiss", pytest.param("milvus", marks=pytest.mark.skipif(
    not HAVE_MILVUS, reason="pymilvus / milvus-lite cannot be imported here"))]


def query_until_stopped(*, get, urls, stop, failures: list) -> None:
    """Request each of ``urls`` with ``get`` (a test client's or httpx's) in turn until ``stop`` is set; every
    error or non-200 answer goes into ``failures``."""
    while not stop.is_set():
        for url in urls:
            try:
                response = get(url)
            except Exception as error:  # noqa: BLE001 - the test client re-raises the server's errors
                failures.append(f"{url}: {type(error).__name__}: {error}")
                continue
            if response.status_code != 200:
                failures.append(f"{url}: {response.status_code} {response.text[:200]}")


def save_index(backend: str, directory, *, track_ids, vectors, similarity, metadata, model=None) -> str:
    """An index of ``backend`` saved at ``directory`` (Milvus Lite's file beside it); returns the directory."""
    arguments = dict(track_ids=track_ids, vectors=vectors, similarity=similarity, metadata=metadata, model=model)
    if backend == "milvus":
        from musicsim.index.milvus import MilvusIndex

        index = MilvusIndex(uri=f"{directory}-milvus.db", collection="tracks", **arguments)
    else:
        index = FaissIndex(**arguments)
    index.save(str(directory))
    index.close()
    return str(directory)


@pytest.fixture(scope="module", params=BACKENDS)
def client(request, mfcc_catalog, tmp_path_factory):
    index_dir = mfcc_catalog["index_dir"]
    if request.param == "milvus":
        faiss = musicsim.index.open(index_dir)
        columns = {c: [faiss.metadata(track_id=t)[c] for t in faiss.track_ids] for c in faiss.metadata_columns}
        index_dir = save_index("milvus", tmp_path_factory.mktemp("milvus") / "index", track_ids=faiss.track_ids,
                               vectors=faiss.vectors, similarity=faiss.similarity, metadata=columns, model=faiss.model)
    with TestClient(create_app(index_dir=index_dir, max_upload_mb=1.0)) as test_client:
        test_client.backend = request.param
        yield test_client


def served(test_client):
    """The service a test client's app answers from now."""
    return test_client.app.state.holder.current


def _copied_index(catalog, tmp_path, *, model: bool = False, extra: dict | None = None) -> tuple[str, list[str]]:
    """The catalog's audio copied under ``tmp_path`` and indexed with the same vectors; returns (index, paths)."""
    shutil.copytree(catalog["root"] / "audio", tmp_path / "audio")
    paths = [str(tmp_path / "audio" / os.path.relpath(p, catalog["root"] / "audio")) for p in catalog["paths"]]
    ids, vectors = album_track_ids(paths), catalog["vectors"]
    for track_id, (path, vector) in (extra or {}).items():
        ids, paths, vectors = ids + [track_id], paths + [path], np.vstack([vectors, vector[None, :]])
    index = FaissIndex(track_ids=ids, vectors=vectors, similarity="euclidean",
                           metadata={"path": paths, "group": [i.split("/")[0] for i in ids]},
                           model={"name": "mfcc", "model_dir": str(catalog["root"] / "mfcc")} if model else None)
    index.save(str(tmp_path / "index"))
    return str(tmp_path / "index"), paths


# ------------------------------------------------------------------------------------- catalog

def test_health_info_and_catalog(client, mfcc_catalog):
    assert client.get("/healthz").json()["status"] == "ok" and client.get("/healthz").json()["tracks"] == 16
    info = client.get("/api/info").json()
    assert (info["tracks"], info["dim"], info["similarity"], info["model"]) == (16, 40, "euclidean", "mfcc")
    assert info["groups"] == sorted(ALBUMS) and info["file_queries"] and info["with_audio"] == 16
    page = client.get("/api/tracks", params={"limit": 5, "offset": 3}).json()
    assert page["total"] == 16
    # The index's order (Milvus keeps its primary keys sorted).
    assert [t["track_id"] for t in page["tracks"]] == served(client).track_ids[3:8]
    assert sorted(served(client).track_ids) == sorted(album_track_ids(mfcc_catalog["paths"]))
    track = page["tracks"][0]
    assert track["audio_url"] == "/api/audio/" + track["track_id"].replace("/", "%2F")
    path = dict(zip(album_track_ids(mfcc_catalog["paths"]), mfcc_catalog["paths"]))[track["track_id"]]
    assert track["duration_s"] == pytest.approx(sf.info(path).duration)


@pytest.mark.parametrize("query, expected", [
    ("LOW_SINE", [f"low_sine/t{k}" for k in range(4)]),        # group, any case
    ("t3", [f"{album}/t3" for album in ALBUMS]),                # id
    ("noisy_mid/t1.wav", ["noisy_mid/t1"]),                     # path
    ("no such thing", []),
])
def test_catalog_search_matches_id_path_or_group(client, query, expected):
    answer = client.get("/api/tracks", params={"q": query}).json()
    assert answer["total"] == len(expected) and sorted(t["track_id"] for t in answer["tracks"]) == sorted(expected)


@pytest.mark.parametrize("params", [{"limit": 0}, {"limit": 5000}, {"offset": -1}, {"limit": "many"}])
def test_catalog_rejects_bad_parameters(client, params):
    response = client.get("/api/tracks", params=params)
    assert response.status_code == 400 and "bad parameters" in response.json()["error"]


# ------------------------------------------------------------------------------------- similar

def test_similar_by_id_answers_like_the_index(client, mfcc_catalog):
    index = served(client).index
    for diversity, exclude in ((0.0, False), (0.5, False), (0.0, True)):
        answer = client.get("/api/similar/low_sine/t1", params={"k": 6, "diversity": diversity,
                                                                "exclude_same_album": exclude}).json()
        expected = index.search_by_id(track_id="low_sine/t1", k=6, diversity=diversity, exclude_same_group=exclude)
        assert answer["query"]["track_id"] == "low_sine/t1"
        assert [(r["track_id"], r["rank"]) for r in answer["results"]] == [
            (t, i + 1) for i, (t, _) in enumerate(expected)]
        np.testing.assert_allclose([r["score"] for r in answer["results"]], [s for _, s in expected], rtol=1e-6)
        assert all(r["audio_url"] and r["group"] == r["track_id"].split("/")[0] for r in answer["results"])
        if exclude:  # no album tags: the group is the album
            assert all(r["group"] != "low_sine" for r in answer["results"])
            older = client.get("/api/similar/low_sine/t1", params={"k": 6, "exclude_same_group": True}).json()
            assert [r["track_id"] for r in older["results"]] == [r["track_id"] for r in answer["results"]]
    # Timbre is what the MFCCs see: the nearest track shares the album.
    assert client.get("/api/similar/low_sine/t1?k=1").json()["results"][0]["group"] == "low_sine"
    # An encoded slash is the same id.
    assert client.get("/api/similar/low_sine%2Ft1?k=3").json()["query"]["track_id"] == "low_sine/t1"


@pytest.mark.parametrize("url, status", [
    ("/api/similar/low_sine/t99", 404), ("/api/similar/nothing", 404),
    ("/api/similar/low_sine/t1?k=0", 400), ("/api/similar/low_sine/t1?k=x", 400),
    ("/api/similar/low_sine/t1?diversity=1.5", 400), ("/api/no/such/route", 404),
])
def test_errors_are_json_with_their_status(client, url, status):
    response = client.get(url)
    assert response.status_code == status and response.headers["content-type"] == "application/json"
    assert response.json()["status"] == status and response.json()["error"]
    assert client.get("/healthz").status_code == 200  # and the server still answers


# ------------------------------------------------------------------------------------- uploads

def _upload_dir(client) -> str:
    return client.app.state.holder.upload_dir


def test_upload_finds_the_file_itself_first_and_leaves_nothing_behind(client, mfcc_catalog):
    path = mfcc_catalog["paths"][9]  # noisy_mid/t1
    with open(path, "rb") as f:
        multipart = client.post("/api/similar", params={"k": 4}, files={"file": ("mine.wav", f, "audio/wav")})
    assert multipart.status_code == 200, multipart.text
    results = multipart.json()["results"]
    # Milvus computes distances in float32 from squared norms: a few thousandths from 0 for the same vector.
    assert results[0]["track_id"] == "noisy_mid/t1" and results[0]["score"] == pytest.approx(0.0, abs=1e-2)
    assert multipart.json()["query"] == {"file": "mine.wav"}
    with open(path, "rb") as f:
        raw = client.post("/api/similar?k=4", content=f.read(), headers={"Content-Type": "application/octet-stream"})
    assert [r["track_id"] for r in raw.json()["results"]] == [r["track_id"] for r in results]
    assert os.listdir(_upload_dir(client)) == []


def test_upload_content_is_checked_by_decoding_not_by_name(client, mfcc_catalog, tmp_path):
    # A real WAV named .txt is audio; text named .wav is not.
    with open(mfcc_catalog["paths"][0], "rb") as f:
        assert client.post("/api/similar", files={"file": ("notes.txt", f, "text/plain")}).status_code == 200
    for name in ("song.wav", "song", "notes.txt"):
        response = client.post("/api/similar", files={"file": (name, b"just some text, " * 200, "audio/wav")})
        error = response.json()["error"]
        assert response.status_code == 415 and name in error
        # The message names the client's file, never the server's temporary copy.
        assert _upload_dir(client) not in error and "upload-" not in error and "/tmp" not in error, error
    empty = client.post("/api/similar", files={"file": ("My Album", b"", "application/octet-stream")})
    assert empty.status_code == 415 and "a folder" in empty.json()["error"]
    # Real audio the model cannot use (too short to embed) is 422.
    sf.write(tmp_path / "short.wav", np.sin(np.arange(400) / 3.0).astype(np.float32) * 0.5, SERVED_SAMPLE_RATE)
    response = client.post("/api/similar", files={"file": ("short.wav", (tmp_path / "short.wav").read_bytes())})
    assert response.status_code == 422 and "short.wav" in response.json()["error"]
    assert os.listdir(_upload_dir(client)) == []


def test_upload_over_the_limit_is_413(mfcc_catalog):
    with TestClient(create_app(index_dir=mfcc_catalog["index_dir"], max_upload_mb=0.01)) as small:
        body = b"\0" * 20_000  # over 10 KiB
        assert small.post("/api/similar", files={"file": ("big.wav", body)}).status_code == 413
        response = small.post("/api/similar", content=body, headers={"Content-Type": "audio/wav"})
        assert response.status_code == 413 and "limit" in response.json()["error"]
        huge = small.post("/api/similar", content=b"\0" * 200_000, headers={"Content-Type": "audio/wav"})
        assert huge.status_code == 413
        assert os.listdir(_upload_dir(small)) == []
        assert small.get("/api/similar/low_sine/t0").status_code == 200


def test_warm_up_loads_the_model_in_the_background_once(mfcc_catalog):
    with TestClient(create_app(index_dir=mfcc_catalog["index_dir"], warm_up=True)) as warm:
        service = served(warm)
        deadline = time.time() + 60
        while warm.get("/healthz").json()["model"] != "ready" and time.time() < deadline:
            time.sleep(0.1)
        loaded = service._embedder
        assert loaded is not None and loaded.name == "mfcc" and not os.listdir(service.upload_dir)
        with open(mfcc_catalog["paths"][4], "rb") as f:
            answer = warm.post("/api/similar", files={"file": ("a.wav", f)}).json()
        assert answer["results"][0]["track_id"] == "bright_square/t0"
        assert service._embedder is loaded  # kept, not reloaded per request
        deadline = time.time() + 30
        while os.listdir(service.upload_dir) and time.time() < deadline:
            time.sleep(0.1)
        assert os.listdir(service.upload_dir) == []


def test_upload_to_an_index_without_a_model_is_400(mfcc_catalog, tmp_path):
    index_dir, paths = _copied_index(mfcc_catalog, tmp_path)
    with TestClient(create_app(index_dir=index_dir)) as no_model:
        with open(paths[0], "rb") as f:
            response = no_model.post("/api/similar", files={"file": ("a.wav", f)})
        assert response.status_code == 400 and "model_dir" in response.json()["error"]
        assert no_model.get("/api/info").json()["file_queries"] is False
        assert no_model.get("/healthz").json()["model"] == "none"


def test_uploads_and_search_check_the_model_alike(mfcc_catalog, tmp_path):
    """An index whose model makes other embeddings: the upload fails with search's own message."""
    from musicsim.search import query as search

    model = {"name": "mfcc", "model_dir": str(mfcc_catalog["root"] / "mfcc")}
    wrong_dim = str(tmp_path / "wrong_dim")
    FaissIndex(track_ids=["a", "b"], vectors=np.eye(2, 7) + 0.1, model=model).save(wrong_dim)
    with pytest.raises(ValueError, match="dimension mismatch") as searched:
        search.search(index_dir=wrong_dim, query_path=mfcc_catalog["paths"][0])
    with TestClient(create_app(index_dir=wrong_dim)) as served:
        with open(mfcc_catalog["paths"][0], "rb") as f:
            response = served.post("/api/similar", files={"file": ("a.wav", f)})
        assert response.status_code == 500 and str(searched.value) in response.json()["error"]
        assert served.get("/healthz").json()["model"] == f"failed: {searched.value}"
    # The run compares by euclidean distance, this index by cosine: a warning, not a refusal.
    cosine = str(tmp_path / "cosine")
    FaissIndex(track_ids=album_track_ids(mfcc_catalog["paths"]), vectors=mfcc_catalog["vectors"],
                   similarity="cosine", model=model).save(cosine)
    with pytest.warns(UserWarning, match="compares embeddings by euclidean but the index uses cosine"):
        with TestClient(create_app(index_dir=cosine)) as served:
            with open(mfcc_catalog["paths"][0], "rb") as f:
                assert served.post("/api/similar", files={"file": ("a.wav", f)}).status_code == 200


# ------------------------------------------------------------------------------------- audio

def test_audio_streams_with_ranges(client, mfcc_catalog):
    data = open(mfcc_catalog["paths"][0], "rb").read()
    whole = client.get("/api/audio/low_sine%2Ft0")
    assert whole.status_code == 200 and whole.content == data
    assert whole.headers["content-type"] == "audio/wav" and whole.headers["accept-ranges"] == "bytes"
    part = client.get("/api/audio/low_sine/t0", headers={"Range": "bytes=100-1099"})
    assert part.status_code == 206 and part.content == data[100:1100]
    assert part.headers["content-range"] == f"bytes 100-1099/{len(data)}"
    tail = client.get("/api/audio/low_sine/t0", headers={"Range": "bytes=-64"})
    assert tail.status_code == 206 and tail.content == data[-64:]
    head = client.head("/api/audio/low_sine/t0")
    assert head.status_code == 200 and head.content == b"" and head.headers["content-length"] == str(len(data))


@pytest.mark.parametrize("header", ["bytes=5-1", "garbage", "bytes=abc-def", "items=0-10", "bytes=", "bytes=-0",
                                    "bytes=99999999-", "bytes=99999999-100000000", "bytes=0-1,99999999-"])
def test_an_unusable_range_is_ignored_and_the_whole_file_sent(client, mfcc_catalog, header):
    """RFC 9110 14.2: a server may ignore a Range it cannot satisfy or parse; this one does, so a
    player always gets the audio (never a text/plain 400 or 416)."""
    data = open(mfcc_catalog["paths"][0], "rb").read()
    response = client.get("/api/audio/low_sine/t0", headers={"Range": header})
    assert response.status_code == 200 and response.content == data
    assert "content-range" not in response.headers


def test_audio_content_type_follows_the_indexed_file(mfcc_catalog, tmp_path):
    flac = str(tmp_path / "extra.flac")
    sf.write(flac, render_track(album="low_sine", index=1, seconds=1.0, sample_rate=SERVED_SAMPLE_RATE, seed=5),
             SERVED_SAMPLE_RATE)
    index_dir, _ = _copied_index(mfcc_catalog, tmp_path, extra={"low_sine/flac": (flac, mfcc_catalog["vectors"][0])})
    with TestClient(create_app(index_dir=index_dir)) as served:
        response = served.get("/api/audio/low_sine/flac")
        assert response.headers["content-type"] == "audio/flac" and response.content == open(flac, "rb").read()


def test_any_track_id_round_trips_through_its_urls(mfcc_catalog, tmp_path):
    odd = "Åland/sång #1 ?&+.flac"  # ids are relative paths: Unicode, spaces, URL delimiters
    flac = str(tmp_path / "odd.flac")
    sf.write(flac, render_track(album="noisy_mid", index=2, seconds=1.0, sample_rate=SERVED_SAMPLE_RATE, seed=6),
             SERVED_SAMPLE_RATE)
    index_dir, _ = _copied_index(mfcc_catalog, tmp_path, extra={odd: (flac, mfcc_catalog["vectors"][8])})
    with TestClient(create_app(index_dir=index_dir)) as served:
        (track,) = served.get("/api/tracks", params={"q": "sång"}).json()["tracks"]
        assert track["track_id"] == odd and track["title"] == "odd"
        assert served.get(track["audio_url"]).content == open(flac, "rb").read()
        answer = served.get("/api/similar/" + track["audio_url"].rsplit("/", 1)[1], params={"k": 2}).json()
        assert answer["query"]["track_id"] == odd
        assert served.get("/api/playlist", params={"seed": odd, "n": 3}).json()["tracks"][0]["track_id"] == odd


def test_no_request_path_reaches_the_file_system(mfcc_catalog, tmp_path):
    secret = tmp_path / "secret.wav"
    secret.write_bytes(b"RIFF private bytes, never to be served")
    index_dir, paths = _copied_index(mfcc_catalog, tmp_path)
    audio = tmp_path / "audio"
    os.symlink(secret, audio / "low_sine" / "planted.wav")  # beside the indexed audio, not in the index
    with TestClient(create_app(index_dir=index_dir)) as served:
        attempts = ["/api/audio/low_sine/planted", "/api/audio/low_sine%2Fplanted", "/api/audio/..%2F..%2Fsecret",
                    "/api/audio/../secret.wav", f"/api/audio/{secret}", f"/api/audio/{str(secret).replace('/', '%2F')}",
                    "/api/audio/low_sine/t0/../../../secret.wav", "/api/audio/low_sine/t0.wav",
                    f"/api/audio/{paths[0]}", "/api/audio/%2E%2E%2Fsecret.wav", "/static/..%2Fserve.py",
                    "/static/../serve.py", "/api/audio/"]
        for url in attempts:
            response = served.get(url)
            assert response.status_code == 404, url
            assert b"private bytes" not in response.content and b"import" not in response.content, url
        # An indexed file replaced by a symlink after start-up is not what was indexed: refused.
        os.unlink(paths[1])
        os.symlink(secret, paths[1])
        response = served.get("/api/audio/low_sine/t1")
        assert response.status_code == 404 and b"private bytes" not in response.content
        assert served.get("/api/audio/low_sine/t0").status_code == 200


# ------------------------------------------------------------------------------------- playlists

def _random_index(*, count: int = 40, dim: int = 8, similarity: str = "cosine") -> FaissIndex:
    rng = np.random.default_rng(3)
    return FaissIndex(track_ids=[f"t{i:02d}" for i in range(count)], vectors=rng.standard_normal((count, dim)),
                          similarity=similarity, metadata={"group": [f"g{i % 5}" for i in range(count)]})


def _sim(index, a, b):
    return float(a @ b) if index.similarity == "cosine" else -float(np.linalg.norm(a - b))


@pytest.mark.parametrize("similarity", ["cosine", "euclidean"])
def test_radio_walks_to_the_nearest_unused_blend_of_last_and_seed(similarity):
    index = _random_index(similarity=similarity)
    walk = playlist.radio(index=index, seed="t07", n=12)
    ids = [entry["track_id"] for entry in walk]
    assert ids[0] == "t07" and len(ids) == 12 and len(set(ids)) == 12
    vectors = {t: index.vector(track_id=t) for t in index.track_ids}
    for step in range(1, 12):
        blend = 0.6 * vectors[ids[step - 1]] + 0.4 * vectors["t07"]
        if similarity == "cosine":
            blend = blend / np.linalg.norm(blend)
        unused = [t for t in index.track_ids if t not in ids[:step]]
        assert ids[step] == max(unused, key=lambda t: _sim(index, blend, vectors[t]))
        assert walk[step]["score_to_last"] == pytest.approx(_sim(index, vectors[ids[step - 1]], vectors[ids[step]]),
                                                            abs=1e-5)


def test_radio_diversity_moves_away_from_what_was_played():
    index = _random_index()
    plain = [e["track_id"] for e in playlist.radio(index=index, seed="t00", n=6)]
    diverse = [e["track_id"] for e in playlist.radio(index=index, seed="t00", n=6, diversity=1.0)]
    assert len(set(diverse)) == 6 and diverse != plain
    # At diversity 1 the second track is, of the 20 nearest, the least like the seed.
    seed = index.vector(track_id="t00")
    candidates = [t for t, _ in index.search_by_id(track_id="t00", k=20)]
    assert diverse[1] == min(candidates, key=lambda t: float(seed @ index.vector(track_id=t)))
    assert len(playlist.radio(index=index, seed="t00", n=500)) == 40  # never more than the catalog


def test_morph_goes_from_one_track_to_the_other_through_interpolated_targets():
    index = _random_index()
    path = playlist.morph(index=index, source="t01", target="t30", n=8)
    ids = [entry["track_id"] for entry in path]
    assert ids[0] == "t01" and ids[-1] == "t30" and len(ids) == 8 and len(set(ids)) == 8
    start, end = index.vector(track_id="t01"), index.vector(track_id="t30")
    for step in range(1, 7):
        aim = (1 - step / 7) * start + step / 7 * end
        aim = aim / np.linalg.norm(aim)
        unused = [t for t in index.track_ids if t not in ids[:step] and t != "t30"]
        assert ids[step] == max(unused, key=lambda t: float(aim @ index.vector(track_id=t)))
        assert path[step]["alpha"] == pytest.approx(step / 7)


def test_playlist_endpoint(client):
    radio = client.get("/api/playlist", params={"seed": "high_pulse/t2", "n": 10}).json()
    ids = [t["track_id"] for t in radio["tracks"]]
    assert radio["kind"] == "radio" and ids[0] == "high_pulse/t2" and len(set(ids)) == 10
    assert all(t["audio_url"] for t in radio["tracks"])
    morph = client.get("/api/playlist", params={"from": "low_sine/t0", "to": "high_pulse/t3", "n": 6}).json()
    ids = [t["track_id"] for t in morph["tracks"]]
    assert morph["kind"] == "morph" and (ids[0], ids[-1]) == ("low_sine/t0", "high_pulse/t3") and len(set(ids)) == 6
    for params, status in (({"seed": "nope"}, 404), ({}, 400), ({"from": "low_sine/t0"}, 400),
                           ({"from": "low_sine/t0", "to": "low_sine/t0"}, 400),
                           ({"seed": "low_sine/t0", "from": "low_sine/t1", "to": "low_sine/t2"}, 400),
                           ({"seed": "low_sine/t0", "n": 0}, 400), ({"seed": "low_sine/t0", "diversity": -1}, 400)):
        response = client.get("/api/playlist", params=params)
        assert response.status_code == status, params
        assert response.json()["error"]


# ------------------------------------------------------------------------------------- map

def test_map_is_computed_once_and_cached_beside_the_index(mfcc_catalog, tmp_path, monkeypatch):
    index_dir, _ = _copied_index(mfcc_catalog, tmp_path)
    with TestClient(create_app(index_dir=index_dir)) as served:
        answer = served.get("/api/map").json()
    assert answer["method"] == "pca" and answer["track_ids"] == album_track_ids(mfcc_catalog["paths"])
    coordinates = np.column_stack([answer["x"], answer["y"]])
    assert coordinates.shape == (16, 2) and np.abs(coordinates).max() == pytest.approx(1.0)
    # PCA: the first axis is the direction of largest variance of the vectors.
    vectors = musicsim.index.open(index_dir).vectors.astype(np.float64)
    centred = vectors - vectors.mean(axis=0)
    first = centred @ np.linalg.svd(centred, full_matrices=False)[2][0]
    assert abs(np.corrcoef(first, coordinates[:, 0])[0, 1]) == pytest.approx(1.0, abs=1e-4)
    cached = [name for name in os.listdir(index_dir) if name.startswith("map-pca-")]
    assert len(cached) == 1 and not [n for n in os.listdir(index_dir) if ".tmp" in n]

    def no_recomputation(**kwargs):
        raise AssertionError("the cached map should have been read")

    monkeypatch.setattr(catalog_map, "project", no_recomputation)
    with TestClient(create_app(index_dir=index_dir)) as again:
        np.testing.assert_allclose(again.get("/api/map").json()["x"], answer["x"], atol=1e-5)


def test_map_cache_is_named_for_the_content_and_only_written_into_an_index(tmp_path, monkeypatch):
    index = _random_index(count=12)
    other = FaissIndex(track_ids=index.track_ids, vectors=index.vectors[::-1], similarity="cosine")
    index.save(str(tmp_path / "index"))
    first = catalog_map.cache_path(index=index, index_dir=str(tmp_path / "index"), method="pca")
    assert first != catalog_map.cache_path(index=other, index_dir=str(tmp_path / "index"), method="pca")
    assert first != catalog_map.cache_path(index=index, index_dir=str(tmp_path / "index"), method="umap")
    (tmp_path / "plain").mkdir()
    coordinates = catalog_map.catalog_map(index=index, index_dir=str(tmp_path / "plain"))
    assert coordinates.shape == (12, 2) and os.listdir(tmp_path / "plain") == []

    def read_only(path, *args, **kwargs):
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(catalog_map, "atomic_open", read_only)  # as on a read-only file system
    with pytest.warns(UserWarning, match="cannot cache"):
        uncached = catalog_map.catalog_map(index=index, index_dir=str(tmp_path / "index"))
    np.testing.assert_allclose(uncached, coordinates, atol=1e-6)
    assert not [n for n in os.listdir(tmp_path / "index") if n.startswith(("map-", ".map-"))]


def test_umap_map_keeps_groups_apart():
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((3, 16)) * 6
    vectors = np.vstack([centre + rng.standard_normal((15, 16)) for centre in centres])
    coordinates = catalog_map.project(vectors=vectors, method="umap")
    assert coordinates.shape == (45, 2) and np.isfinite(coordinates).all()
    groups = np.repeat(np.arange(3), 15)
    means = np.stack([coordinates[groups == g].mean(axis=0) for g in range(3)])
    spread = max(np.linalg.norm(coordinates[groups == g] - means[g], axis=1).mean() for g in range(3))
    gaps = min(np.linalg.norm(means[a] - means[b]) for a in range(3) for b in range(a + 1, 3))
    assert gaps > 2 * spread


# ------------------------------------------------------------------------------------- page and spec

def test_page_static_files_and_offline_docs(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert '<script src="/static/app.js">' in page.text and "/static/style.css" in page.text
    for name, media in (("app.js", "text/javascript"), ("style.css", "text/css"), ("docs.js", "text/javascript")):
        response = client.get(f"/static/{name}")
        assert response.status_code == 200 and response.headers["content-type"].startswith(media)
    docs = client.get("/docs")
    assert docs.status_code == 200 and "/openapi.json" in docs.text
    for text in (page.text, docs.text, client.get("/static/app.js").text):
        assert "http://" not in text and "https://" not in text and "cdn" not in text.lower()
    spec = client.get("/openapi.json").json()
    for path in ("/api/tracks", "/api/similar/{track_id}", "/api/similar", "/api/audio/{track_id}",
                 "/api/playlist", "/api/map", "/healthz"):
        assert path in spec["paths"], path


# ------------------------------------------------------------------------------------- CLI

@pytest.mark.parametrize("arguments, message", [
    (["--port=70000"], "flag --port=70000: 70000 is not an integer in the range [0, 65535]"),
    (["--map=tsne"], "flag --map=tsne: value should be one of <pca|umap>"),
    (["--max_upload_mb=lots"], "flag --max_upload_mb=lots"),
    (["--max_upload_mb=inf"], "max_upload_mb must be a finite number (in (0, 1.04858e+06]), got inf"),
    (["--max_upload_mb=nan"], "max_upload_mb must be a finite number (in (0, 1.04858e+06]), got nan"),
    (["--max_upload_mb=-1"], "max_upload_mb must be in (0, 1.04858e+06], got -1"),
    (["--max_upload_mb=0"], "max_upload_mb must be in (0, 1.04858e+06], got 0"),
    (["--max_upload_mb=1e300"], "max_upload_mb must be in (0, 1.04858e+06], got 1e+300"),
    (["--reload_interval_s=-1"], "reload_interval_s must be in [0, 3600], got -1"),
    (["--reload_interval_s=inf"], "reload_interval_s must be a finite number (in [0, 3600]), got inf"),
    (["--port=-1"], "flag --port=-1: -1 is not an integer in the range [0, 65535]"),
    ([], "Flag --index must have a value other than None"),
    (["--index=I", "extra"], "unexpected arguments ['extra']"),
])
def test_cli_bad_flags_exit_2_before_loading_anything(mfcc_catalog, capsys, arguments, message):
    arguments = [a.replace("=I", f"={mfcc_catalog['index_dir']}") for a in arguments]
    assert main(["musicsim-serve", *arguments]) == 2
    error = capsys.readouterr().err
    assert message in error and "usage: python -m musicsim.search.serve --index=DIR" in error
    assert "Traceback" not in error and len(error.strip().splitlines()) == 1, error


def test_cli_says_what_a_path_is(mfcc_catalog, tmp_path, capsys):
    (tmp_path / "file").write_text("not an index")
    index = f"--index={mfcc_catalog['index_dir']}"
    for arguments, message in (([f"--index={tmp_path / 'file'}"], "is a file, not a folder"),
                               ([index, f"--m3u_root={tmp_path / 'file'}"], "is a file, not a folder"),
                               ([index, f"--m3u_root={tmp_path / 'none'}"], "does not exist")):
        assert main(["musicsim-serve", *arguments]) == 2
        error = capsys.readouterr().err
        assert message in error and len(error.strip().splitlines()) == 1, error


def test_cli_errors_exit_2(tmp_path, capsys):
    assert main(["musicsim-serve", f"--index={tmp_path / 'none'}"]) == 2
    assert "no index at" in capsys.readouterr().err
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{not json")
    assert main(["musicsim-serve", f"--index={tmp_path / 'broken'}"]) == 2
    assert "cannot read index file" in capsys.readouterr().err


def _listening_addresses(port: int) -> set[str]:
    """Local addresses with a listening TCP socket on ``port`` (from /proc/net/tcp)."""
    found = set()
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:
                found.add(socket.inet_ntoa(bytes.fromhex(address)[::-1]))
    return found


def test_cli_serves_on_localhost_by_default(mfcc_catalog):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    process = subprocess.Popen([sys.executable, "-m", "musicsim.search.serve", f"--index={mfcc_catalog['index_dir']}",
                                f"--port={port}"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        import httpx

        deadline = time.time() + 90
        while time.time() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        else:
            pytest.fail("the server did not start")
        assert _listening_addresses(port) == {"127.0.0.1"}
        assert httpx.get(f"http://127.0.0.1:{port}/api/similar/low_sine%2Ft0?k=2", timeout=5).status_code == 200
    finally:
        process.terminate()
        process.wait(timeout=20)


# ------------------------------------------------------------------------------------- TensorBoard projector

def test_projector_files_are_what_the_tensorboard_plugin_reads(tmp_path):
    from google.protobuf import text_format
    from tensorboard.plugins.projector import projector_plugin
    from tensorboard.plugins.projector.projector_config_pb2 import ProjectorConfig

    from musicsim.projector import write_projector

    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((7, 5)).astype(np.float32)
    ids = [f"album{i % 2}__t{i}" for i in range(7)]
    groups = ["album0", "album1|live", "album0", "album1|live", "album0", "with\ttab", "album0"]
    config_path = write_projector(log_dir=str(tmp_path), track_ids=ids, embeddings=vectors, groups=groups)
    config = text_format.Parse(open(config_path).read(), ProjectorConfig())
    (embedding,) = config.embeddings
    assert list(embedding.tensor_shape) == [7, 5]
    tensor_path = projector_plugin._rel_to_abs_asset_path(embedding.tensor_path, config_path)
    np.testing.assert_allclose(projector_plugin._read_tensor_tsv_file(tensor_path), vectors, rtol=1e-6)
    rows = open(projector_plugin._rel_to_abs_asset_path(embedding.metadata_path, config_path)).read().splitlines()
    assert rows[0] == "track\tgroup" and len(rows) == 8
    assert [row.split("\t") for row in rows[1:3]] == [[ids[0], "album0"], [ids[1], "album1|live"]]
    assert rows[6] == f"{ids[5]}\twith tab"  # a tab inside a value would add a column
    # A run without event files (a fitted model) gets one, so the plugin lists it as a run.
    assert [n for n in os.listdir(tmp_path) if n.startswith("events.out.tfevents.")]
    with pytest.raises(ValueError, match="7 embeddings but 6 track ids"):
        write_projector(log_dir=str(tmp_path), track_ids=ids[:6], embeddings=vectors)


def test_a_run_writes_its_projector_files_and_the_demo_index_it_serves(synthetic_dataset, tmp_path, capsys):
    from tensorboard.plugins.projector import projector_plugin

    from experiments.run import RunConfig, build_serving_index, run

    model_dir = str(tmp_path / "mfcc-run")
    run(RunConfig(model="mfcc", dataset_dir=synthetic_dataset, model_dir=model_dir, workers=1, eval_repeats=2))
    with np.load(os.path.join(model_dir, "embeddings.npz")) as saved:
        ids, vectors, labels = saved["track_ids"].tolist(), saved["embeddings"], saved["labels"].tolist()
    tensor = projector_plugin._read_tensor_tsv_file(os.path.join(model_dir, "projector", "embeddings.tsv"))
    np.testing.assert_allclose(tensor, vectors, rtol=1e-5, atol=1e-6)
    rows = open(os.path.join(model_dir, "projector", "metadata.tsv")).read().splitlines()[1:]
    assert [row.split("\t") for row in rows] == [[i, label] for i, label in zip(ids, labels)]
    assert os.path.isfile(os.path.join(model_dir, "projector_config.pbtxt"))

    index_dir = build_serving_index(model_dir=model_dir)
    assert f"python -m musicsim.search.serve --index={index_dir}" in capsys.readouterr().out
    with TestClient(create_app(index_dir=index_dir)) as served:
        answer = served.get(f"/api/similar/{ids[0]}", params={"k": 3}).json()
        assert len(answer["results"]) == 3 and served.get(answer["results"][0]["audio_url"]).status_code == 200
        assert served.get("/api/info").json()["file_queries"] is True


def test_main_leaves_the_callers_blas_threads_as_they_were(tmp_path):
    """The one-BLAS-thread limit is the server's: a failed main() must not keep it for its caller."""
    from threadpoolctl import threadpool_info

    def blas_threads() -> list[int]:
        return sorted(pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas")

    before = blas_threads()
    assert main(["musicsim-serve", f"--index={tmp_path / 'none'}"]) == 2
    assert blas_threads() == before


# ------------------------------------------------------------------------------------- a tagged library

def png_image(*, width: int, height: int, colour: tuple[int, int, int]) -> bytes:
    """A real PNG (8-bit RGB, a vertical gradient of ``colour``), written without an imaging library."""
    rows = b"".join(b"\0" + bytes(int(c * (0.45 + 0.55 * y / (height - 1))) for c in colour) * width
                    for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


# The albums of the tagged library, from the synthetic catalog's four timbres: tags as people write
# them (Unicode, an album over two disc folders, a compilation without cover, files without tags).
TAGGED_ALBUMS = {
    "low_sine": {"folder": ["Åsa Öberg/Låga toner"] * 4, "album": "Låga toner", "artist": "Åsa Öberg",
                 "album_artist": "Åsa Öberg", "titles": ["Sång för en ton", "Djup", "Vågor", "Stilla"],
                 "year": 2019, "genre": "Ambient", "cover": (70, 130, 230)},
    "bright_square": {"folder": ["The Squares/Square Waves/CD1"] * 2 + ["The Squares/Square Waves/CD2"] * 2,
                      "album": "Square Waves", "artist": "The Squares", "album_artist": "The Squares",
                      "titles": ["Edges", "Harmonics, Odd", "Pulse Width", "Clipped"], "year": 2004,
                      "genre": "Chiptune", "cover": (240, 150, 40)},
    "noisy_mid": {"folder": ["Compilations/Noise, Mostly"] * 4, "album": "Noise, Mostly", "artist": None,
                  "album_artist": "Various Artists", "titles": ["Hiss", "Static", "Rain", "Fan"], "year": 2011,
                  "genre": "Noise", "cover": None, "artists": ["Kim", "Lee", "Park", "Choi"]},
    "high_pulse": {"folder": ["untagged"] * 4, "album": None, "artist": None, "album_artist": None, "titles": None,
                   "year": None, "genre": None, "cover": None},
}


def write_tagged_library(catalog, root) -> dict:
    """The synthetic catalog's audio as tagged FLAC files under ``root/library`` (same samples, so the same
    MFCC vectors), and the metadata a scan writes for them; returns ``root``, ``library``, ``ids``,
    ``vectors``, ``metadata`` (columns), ``covers`` (track id -> PNG bytes) and ``model``."""
    from mutagen.flac import FLAC, Picture

    library = root / "library"
    columns = {name: [] for name in ("path", "relative_path", "group", "title", "artist", "album", "album_artist",
                                     "track_number", "disc", "year", "genre", "duration_s")}
    ids, covers = [], {}
    for path in catalog["paths"]:
        album_key, number = os.path.basename(os.path.dirname(path)), int(os.path.basename(path)[1])
        album = TAGGED_ALBUMS[album_key]
        folder = album["folder"][number]
        name = f"{number + 1:02d} {album['titles'][number]}.flac" if album["titles"] else f"track{number}.flac"
        relative = f"{folder}/{name}"
        target = library / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        samples, rate = sf.read(path)
        sf.write(str(target), samples, rate, format="FLAC")
        artist = album.get("artists", [album["artist"]] * 4)[number]
        disc = 1 + number // 2 if album_key == "bright_square" else 1
        tags = {"title": album["titles"][number] if album["titles"] else None, "artist": artist,
                "album": album["album"], "albumartist": album["album_artist"],
                "tracknumber": str(number + 1) if album["titles"] else None, "discnumber": str(disc),
                "date": str(album["year"]) if album["year"] else None, "genre": album["genre"]}
        flac = FLAC(str(target))
        if album["titles"]:
            for key, value in tags.items():
                if value is not None:
                    flac[key] = value
        track_id = hashlib.sha1(f"library/{relative}".encode()).hexdigest()[:16]
        if album["cover"]:
            picture = Picture()
            picture.type, picture.mime, picture.width, picture.height, picture.depth = 3, "image/png", 24, 24, 24
            picture.data = png_image(width=24, height=24, colour=album["cover"])
            flac.add_picture(picture)
            covers[track_id] = picture.data
        flac.save()
        ids.append(track_id)
        tagged = bool(album["titles"])
        for column, value in (("path", str(target)), ("relative_path", relative), ("group", folder),
                              ("title", tags["title"]), ("artist", artist), ("album", album["album"]),
                              ("album_artist", album["album_artist"]), ("track_number", number + 1 if tagged else None),
                              ("disc", disc if tagged else None), ("year", album["year"]), ("genre", album["genre"]),
                              ("duration_s", sf.info(str(target)).duration)):
            columns[column].append(value)
    return {"root": root, "library": library, "ids": ids, "vectors": catalog["vectors"], "metadata": columns,
            "covers": covers, "model": {"name": "mfcc", "model_dir": str(catalog["root"] / "mfcc")}}


@pytest.fixture(scope="module")
def tagged_library(mfcc_catalog, tmp_path_factory) -> dict:
    return write_tagged_library(mfcc_catalog, tmp_path_factory.mktemp("tagged"))


@pytest.fixture(scope="module", params=BACKENDS)
def tagged(request, tagged_library):
    """A test client serving the tagged library's index on each backend; ``.library`` is the fixture's dict."""
    index_dir = save_index(request.param, tagged_library["root"] / f"index-{request.param}",
                           track_ids=tagged_library["ids"], vectors=tagged_library["vectors"], similarity="euclidean",
                           metadata=tagged_library["metadata"], model=tagged_library["model"])
    with TestClient(create_app(index_dir=index_dir, m3u_root=str(tagged_library["library"]))) as test_client:
        test_client.library = tagged_library
        test_client.backend = request.param
        yield test_client


def _by_title(client) -> dict[str, dict]:
    return {t["title"]: t for t in client.get("/api/tracks", params={"limit": 100}).json()["tracks"]}


def test_tracks_carry_their_tags_with_fallbacks(tagged):
    tracks = _by_title(tagged)
    assert len(tracks) == 16
    song = tracks["Sång för en ton"]
    assert {key: song[key] for key in ("artist", "album", "album_artist", "track_number", "disc", "year", "genre")} == {
        "artist": "Åsa Öberg", "album": "Låga toner", "album_artist": "Åsa Öberg", "track_number": 1, "disc": 1,
        "year": 2019, "genre": "Ambient"}
    assert song["relative_path"] == "Åsa Öberg/Låga toner/01 Sång för en ton.flac"
    assert song["duration_s"] == pytest.approx(2.0, abs=0.01) and song["file"] == "01 Sång för en ton.flac"
    assert tracks["Clipped"]["disc"] == 2 and tracks["Static"]["artist"] == "Lee"
    # No tags at all: the file name is the title and the group (its folder) the album.
    bare = tracks["track2"]
    assert (bare["artist"], bare["album"], bare["year"], bare["group"]) == (None, "untagged", None, "untagged")
    # No response carries the server's absolute paths.
    body = tagged.get("/api/tracks", params={"limit": 100}).text + tagged.get(
        f"/api/similar/{song['track_id']}", params={"k": 15}).text + tagged.get("/api/map").text
    assert str(tagged.library["library"]) not in body and str(tagged.library["root"]) not in body


@pytest.mark.parametrize("query, titles", [
    ("åsa", ["Sång för en ton", "Djup", "Vågor", "Stilla"]),                          # artist, any case
    ("SQUARE waves", ["Edges", "Harmonics, Odd", "Pulse Width", "Clipped"]),         # album, every word
    ("harmonics, odd", ["Harmonics, Odd"]),                                           # title
    ("chiptune", ["Edges", "Harmonics, Odd", "Pulse Width", "Clipped"]),              # genre
    ("2011 lee", ["Static"]),                                                         # year and artist
    ("CD2/", ["Pulse Width", "Clipped"]),                                             # relative path
    ("untagged/track1", ["track1"]),
    ("various", ["Hiss", "Static", "Rain", "Fan"]),                                   # album artist
    ("library", []),                                                                  # the root's name is not shown
])
def test_catalog_search_looks_only_at_what_is_shown(tagged, query, titles):
    answer = tagged.get("/api/tracks", params={"q": query, "limit": 100}).json()
    assert sorted(t["title"] for t in answer["tracks"]) == sorted(titles) and answer["total"] == len(titles)


def _search_never_matches_server_paths(test_client) -> None:
    """Issue 24: q=/tmp/... matched the absolute paths the server reads (and told where they are)."""
    service = served(test_client)
    some_path = service._entry(service.track_ids[0])["_path"]
    folder = os.path.dirname(os.path.dirname(some_path))
    for query in (folder, folder + "/", os.path.dirname(folder), "/tmp/", "/home/", str(service.index_dir)):
        assert test_client.get("/api/tracks", params={"q": query}).json()["total"] == 0, query


def test_catalog_search_never_matches_server_paths_of_a_scanned_library(tagged):
    _search_never_matches_server_paths(tagged)


def test_catalog_search_never_matches_server_paths_of_an_exported_index(client):
    _search_never_matches_server_paths(client)


def test_cover_art_comes_from_the_indexed_file_only(tagged):
    tracks = _by_title(tagged)
    covers = tagged.library["covers"]
    for title in ("Sång för en ton", "Clipped"):
        track = tracks[title]
        assert track["art_url"] == f"/api/art/{track['track_id']}"
        response = tagged.get(track["art_url"])
        assert response.status_code == 200 and response.headers["content-type"] == "image/png"
        assert response.content == covers[track["track_id"]] and response.content.startswith(b"\x89PNG")
        again = tagged.get(track["art_url"], headers={"If-None-Match": response.headers["etag"]})
        assert again.status_code == 304
        head = tagged.head(track["art_url"])
        assert head.status_code == 200 and head.content == b"" and head.headers["content-type"] == "image/png"
    for title in ("Hiss", "track0"):  # files without a picture
        track = tracks[title]
        assert track["art_url"] is None
        response = tagged.get(f"/api/art/{track['track_id']}")
        assert response.status_code == 404 and "embeds no cover art" in response.json()["error"]
    for url in ("/api/art/nope", "/api/art/..%2F..%2Fetc%2Fpasswd", "/api/art/"):
        assert tagged.get(url).status_code == 404


def test_exclude_same_album_uses_the_album_tag_across_folders(tagged):
    tracks = _by_title(tagged)
    edges = tracks["Edges"]  # CD1 of an album over two disc folders
    plain = tagged.get(f"/api/similar/{edges['track_id']}", params={"k": 15}).json()["results"]
    assert {r["group"] for r in plain if r["album"] == "Square Waves"} == {
        "The Squares/Square Waves/CD1", "The Squares/Square Waves/CD2"}
    other = tagged.get(f"/api/similar/{edges['track_id']}", params={"k": 15, "exclude_same_album": True}).json()
    assert len(other["results"]) == 12 and all(r["album"] != "Square Waves" for r in other["results"])
    # The rest keep their order: only the album's tracks are left out.
    assert [r["track_id"] for r in other["results"]] == [r["track_id"] for r in plain if r["album"] != "Square Waves"]
    # Without an album tag, the group (the folder) is the album.
    bare = tagged.get(f"/api/similar/{tracks['track0']['track_id']}", params={"k": 15,
                                                                             "exclude_same_album": True}).json()
    assert len(bare["results"]) == 12 and all(r["group"] != "untagged" for r in bare["results"])


# ------------------------------------------------------------------------------------- M3U playlists

def parse_m3u8(text: str) -> list[dict]:
    """An extended M3U's entries: ``{"seconds", "label", "path"}`` each (a reader written from the format)."""
    lines = text.split("\n")
    assert lines[0] == "#EXTM3U" and lines[-1] == ""
    entries, info = [], None
    for line in lines[1:-1]:
        if line.startswith("#EXTINF:"):
            seconds, label = line[len("#EXTINF:"):].split(",", 1)
            info = {"seconds": int(seconds), "label": label}
        elif line and not line.startswith("#"):
            assert info is not None, "a path without its #EXTINF line"
            entries.append({**info, "path": line})
            info = None
    return entries


def test_playlist_as_m3u8_for_a_player(tagged):
    library = tagged.library["library"]
    seed = _by_title(tagged)["Sång för en ton"]["track_id"]
    as_json = tagged.get("/api/playlist", params={"seed": seed, "n": 8}).json()
    response = tagged.get("/api/playlist", params={"seed": seed, "n": 8, "format": "m3u8"})
    assert response.status_code == 200 and response.headers["content-type"] == "audio/x-mpegurl; charset=utf-8"
    disposition = response.headers["content-disposition"]
    assert disposition.startswith("attachment;") and ".m3u8" in disposition
    text = response.content.decode("utf-8")
    assert text.splitlines()[1] == "#PLAYLIST:radio from Sång för en ton"
    entries = parse_m3u8(text)
    assert len(entries) == 8
    for entry, track in zip(entries, as_json["tracks"]):
        assert not os.path.isabs(entry["path"])  # relative to --m3u_root (the library)
        assert entry["path"] == track["relative_path"] and (library / entry["path"]).is_file()
        assert entry["seconds"] == round(track["duration_s"])
        assert entry["label"] == (f"{track['artist']} - {track['title']}" if track["artist"] else track["title"])
    morph = tagged.get("/api/playlist", params={"from": seed, "to": as_json["tracks"][-1]["track_id"], "n": 5,
                                                "format": "m3u8"})
    assert [e["path"] for e in parse_m3u8(morph.text)][0] == as_json["tracks"][0]["relative_path"]
    bad = tagged.get("/api/playlist", params={"seed": seed, "format": "pls"})
    assert bad.status_code == 400 and bad.headers["content-type"] == "application/json"


def test_m3u8_paths_are_absolute_without_a_root(client, mfcc_catalog):
    response = client.get("/api/playlist", params={"seed": "low_sine/t0", "n": 4, "format": "m3u8"})
    entries = parse_m3u8(response.text)
    by_id = dict(zip(album_track_ids(mfcc_catalog["paths"]), mfcc_catalog["paths"]))
    ids = [t["track_id"] for t in client.get("/api/playlist", params={"seed": "low_sine/t0", "n": 4}).json()["tracks"]]
    assert [e["path"] for e in entries] == [by_id[i] for i in ids] and all(os.path.isabs(e["path"]) for e in entries)
    assert [e["label"] for e in entries] == [i.split("/")[1] + "" for i in ids]  # no artist: the title alone
    assert entries[0]["seconds"] == round(sf.info(by_id[ids[0]]).duration)


def test_to_m3u8_writes_one_line_per_field(tmp_path):
    entries = [playlist.M3UEntry(path=str(tmp_path / "a" / "Å b.flac"), title="Line\nbreak", artist="X, Y",
                                 duration_s=61.6),
               playlist.M3UEntry(path=str(tmp_path / "c.ogg"), title="No artist", duration_s=None),
               playlist.M3UEntry(path=str(tmp_path / "new\nline.ogg"), title="unwritable")]
    text = playlist.to_m3u8(entries=entries, root=str(tmp_path / "a"))
    assert parse_m3u8(text) == [{"seconds": 62, "label": "X, Y - Line break", "path": "Å b.flac"},
                                {"seconds": -1, "label": "No artist", "path": "../c.ogg"}]
    assert parse_m3u8(playlist.to_m3u8(entries=entries[:1]))[0]["path"] == str(tmp_path / "a" / "Å b.flac")


# ------------------------------------------------------------------------------------- HTTP details

def test_every_get_route_answers_head_and_other_methods_get_405_with_allow(client):
    service = served(client)
    track = service.track_ids[0]
    for url in ("/", "/healthz", "/api/info", "/api/tracks?q=t1", f"/api/similar/{track}", f"/api/audio/{track}",
                "/api/playlist?seed=low_sine/t0&n=3", "/api/playlist?seed=low_sine/t0&n=3&format=m3u8", "/api/map",
                "/docs", "/static/app.js", "/openapi.json", "/api/similar/nope", "/no/such/route"):
        get, head = client.get(url), client.head(url)
        assert head.status_code == get.status_code, url
        assert head.content == b"" and head.headers["content-type"] == get.headers["content-type"], url
        if "content-length" in get.headers and get.status_code == 200:
            assert head.headers["content-length"] == get.headers["content-length"], url
    for method, url, allowed in (("PUT", "/healthz", "GET, HEAD"), ("DELETE", f"/api/audio/{track}", "GET, HEAD"),
                                 ("HEAD", "/api/similar", "POST"), ("POST", "/api/map", "GET, HEAD")):
        response = client.request(method, url)
        assert response.status_code == 405 and response.headers["allow"] == allowed, (method, url)
        if method != "HEAD":
            assert response.headers["content-type"] == "application/json" and response.json()["status"] == 405


def test_map_answers_on_both_backends(client):
    answer = client.get("/api/map").json()
    assert answer["track_ids"] == served(client).track_ids and len(answer["x"]) == 16
    assert np.isfinite(answer["x"]).all() and max(np.abs(answer["x"])) == pytest.approx(1.0)


# ------------------------------------------------------------------------------------- live reload

@pytest.mark.parametrize("backend", BACKENDS)
def test_a_serving_app_follows_its_index_while_a_client_keeps_querying(tagged_library, tmp_path, backend):
    """Add and remove tracks in the index while a client queries: new versions are swapped in, no
    request fails, new tracks are served, removed ones (their audio too) are not, and a request that
    took the old version finishes on it."""
    library = tagged_library
    keep = 12  # the first 12 tracks are indexed at first; 4 are added, then 4 others removed
    index_dir = save_index(backend, tmp_path / "index", track_ids=library["ids"][:keep],
                           vectors=library["vectors"][:keep], similarity="euclidean",
                           metadata={c: v[:keep] for c, v in library["metadata"].items()}, model=library["model"])
    steady = library["ids"][0]
    failures: list[str] = []

    def release(index) -> None:
        # pymilvus shares one connection per Milvus Lite file in a process: closing this writer's index
        # would close the server's too (a writer in another process cannot open the file while it is served).
        if backend == "faiss":
            index.close()

    stop = threading.Event()
    with TestClient(create_app(index_dir=index_dir, reload_interval_s=0.05)) as app_client:
        holder = app_client.app.state.holder
        first_version = app_client.get("/healthz").json()["index_version"]

        urls = (f"/api/similar/{steady}?k=5", f"/api/audio/{steady}", "/api/tracks?q=a", "/healthz", "/api/map",
                f"/api/playlist?seed={steady}&n=4")
        querying = threading.Thread(target=query_until_stopped,
                                    kwargs=dict(get=app_client.get, urls=urls, stop=stop, failures=failures))
        querying.start()
        try:
            def wait_for(tracks: int) -> dict:
                deadline = time.time() + 60
                while time.time() < deadline:
                    health = app_client.get("/healthz").json()
                    if health["tracks"] == tracks:
                        return health
                    time.sleep(0.05)
                pytest.fail(f"the server did not take in the index of {tracks} tracks")

            time.sleep(0.3)
            index = musicsim.index.open(index_dir)
            index.add(track_ids=library["ids"][keep:], vectors=library["vectors"][keep:],
                      metadata={c: v[keep:] for c, v in library["metadata"].items()})
            index.save(index_dir)
            release(index)
            added = wait_for(16)
            assert added["reload_error"] is None
            if first_version is not None:
                assert added["index_version"] > first_version
            new = library["ids"][-1]
            assert app_client.get(f"/api/similar/{new}").status_code == 200
            assert app_client.get(f"/api/audio/{new}").content == open(library["metadata"]["path"][-1], "rb").read()
            assert app_client.get("/api/tracks", params={"limit": 100}).json()["total"] == 16

            gone = library["ids"][4:8]  # the two-disc album
            with holder.lease() as old:  # a request in flight when the version changes
                time.sleep(0.3)
                index = musicsim.index.open(index_dir)
                index.remove(track_ids=gone)
                index.save(index_dir)
                release(index)
                wait_for(12)
                assert holder.current is not old
                assert old.track(gone[0])["track_id"] == gone[0] and old.audio_file(gone[0])[0]
                if backend == "faiss":  # a Milvus index's collection is changed in place: no old copy to search
                    assert old.similar(track_id=gone[0], k=3, diversity=0.0, exclude_same_album=False)["results"]
            time.sleep(0.3)
        finally:
            stop.set()
            querying.join(timeout=60)
        for track_id in gone:
            for url in (f"/api/similar/{track_id}", f"/api/audio/{track_id}", f"/api/art/{track_id}"):
                response = app_client.get(url)
                assert response.status_code == 404 and "unknown track id" in response.json()["error"], url
        assert not {t["track_id"] for t in app_client.get("/api/tracks?limit=100").json()["tracks"]} & set(gone)
        assert not set(app_client.get("/api/map").json()["track_ids"]) & set(gone)
        assert holder.reloads == 2
    assert failures == []


def test_a_broken_new_version_keeps_the_old_one_serving(mfcc_catalog, tmp_path):
    index_dir, _ = _copied_index(mfcc_catalog, tmp_path)
    with TestClient(create_app(index_dir=index_dir, reload_interval_s=0)) as app_client:
        holder = app_client.app.state.holder
        with open(os.path.join(index_dir, "config.json"), "a") as f:
            f.write("garbage")
        assert holder.check_now() is False
        health = app_client.get("/healthz").json()
        assert health["tracks"] == 16 and "cannot read index file" in health["reload_error"]
        assert app_client.get("/api/similar/low_sine/t0").status_code == 200


def test_a_served_index_follows_index_commands_of_other_processes(mfcc_catalog, tmp_path):
    """The real thing: ``musicsim.search.serve`` in a subprocess, ``musicsim.index add`` and ``remove`` in others
    (under the index lock), and a client querying throughout: no failed request, the new tracks served,
    the removed ones (their audio too) not."""
    import httpx
    import pyarrow as pa
    import pyarrow.parquet as pq

    index_dir, paths = _copied_index(mfcc_catalog, tmp_path)
    extra_ids = [f"extra/{i}" for i in range(3)]
    extra_vectors = mfcc_catalog["vectors"][:3] + 0.5
    parquet = str(tmp_path / "extra.parquet")
    table = pa.table({"track_id": extra_ids, "embedding": pa.array([list(map(float, v)) for v in extra_vectors],
                                                                   type=pa.list_(pa.float32())),
                      "group": ["extra"] * 3, "path": paths[:3], "duration_s": [2.0, 2.5, 3.0]})
    pq.write_table(table.replace_schema_metadata({"musicsim.model": "mfcc"}), parquet)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base = f"http://127.0.0.1:{port}"
    environment = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    server = subprocess.Popen([sys.executable, "-m", "musicsim.search.serve", f"--index={index_dir}", f"--port={port}",
                               "--reload_interval_s=0.2"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              env=environment)
    failures: list[str] = []
    stop = threading.Event()

    def keep_querying() -> None:
        with httpx.Client(base_url=base, timeout=30) as http:
            query_until_stopped(get=http.get, urls=("/api/similar/low_sine%2Ft0?k=5", "/api/audio/low_sine%2Ft0",
                                                    "/api/tracks?q=t", "/healthz"), stop=stop, failures=failures)

    def wait_for_tracks(count: int) -> None:
        deadline = time.time() + 90
        while time.time() < deadline:
            try:
                if httpx.get(f"{base}/healthz", timeout=5).json()["tracks"] == count:
                    return
            except httpx.HTTPError:
                pass
            assert server.poll() is None, server.stderr.read().decode()[-2000:]
            time.sleep(0.1)
        pytest.fail(f"the server did not serve the index of {count} tracks")

    def index_command(*arguments: str) -> None:
        done = subprocess.run([sys.executable, "-m", "musicsim.index", *arguments, f"--index={index_dir}"],
                              capture_output=True, text=True, env=environment, timeout=300)
        assert done.returncode == 0, done.stderr

    querying = threading.Thread(target=keep_querying)
    try:
        wait_for_tracks(16)
        querying.start()
        index_command("add", f"--embeddings={parquet}")
        wait_for_tracks(19)
        assert httpx.get(f"{base}/api/similar/extra%2F1?k=3").status_code == 200
        assert httpx.get(f"{base}/api/audio/extra%2F1").content == open(paths[1], "rb").read()
        index_command("remove", "--track_id", "low_sine/t3", "extra/2")
        wait_for_tracks(17)
        for url in ("/api/similar/low_sine%2Ft3", "/api/audio/low_sine%2Ft3", "/api/audio/extra%2F2"):
            assert httpx.get(base + url).status_code == 404, url
        health = httpx.get(f"{base}/healthz").json()
        assert health["reloads"] == 2 and health["reload_error"] is None
    finally:
        stop.set()
        if querying.is_alive():
            querying.join(timeout=60)
        server.terminate()
        server.wait(timeout=30)
    assert failures == []


def test_a_served_library_follows_its_scans(tagged_library, tmp_path):
    """Scan a tagged library (``musicsim.scan`` in another process, the MFCC run as its engine), serve it,
    then add, retag and delete files and scan again while a client queries: the scan's tags and cover
    art are served, the new track appears, the deleted one is no longer served; no request fails."""
    library = tmp_path / "music"
    shutil.copytree(tagged_library["library"], library)
    spare = tmp_path / "spare.flac"
    shutil.move(str(library / "untagged" / "track3.flac"), spare)  # added by the second scan
    index_dir = str(tmp_path / "index")
    environment = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")

    def scan() -> None:
        done = subprocess.run([sys.executable, "-m", "musicsim.scan", f"--audio={library}", f"--index={index_dir}",
                               f"--model_dir={tagged_library['model']['model_dir']}", "--workers=1", "--noprogress"],
                              capture_output=True, text=True, env=environment, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]

    scan()
    failures: list[str] = []
    stop = threading.Event()
    with TestClient(create_app(index_dir=index_dir, reload_interval_s=0.1)) as app_client:
        tracks = _by_title(app_client)
        assert len(tracks) == 15
        song = tracks["Sång för en ton"]
        assert (song["artist"], song["album"], song["year"]) == ("Åsa Öberg", "Låga toner", 2019)
        assert song["relative_path"] == "Åsa Öberg/Låga toner/01 Sång för en ton.flac"
        assert app_client.get(song["art_url"]).content == tagged_library["covers"][tagged_library["ids"][0]]
        steady, gone = song["track_id"], tracks["Fan"]

        urls = (f"/api/similar/{steady}?k=5", f"/api/audio/{steady}", f"/api/art/{steady}", "/api/tracks?q=noise",
                "/healthz")
        querying = threading.Thread(target=query_until_stopped,
                                    kwargs=dict(get=app_client.get, urls=urls, stop=stop, failures=failures))
        querying.start()
        try:
            version = app_client.get("/healthz").json()["index_version"]
            shutil.move(str(spare), library / "untagged" / "track3.flac")
            os.unlink(library / "Compilations" / "Noise, Mostly" / "04 Fan.flac")
            scan()
            deadline = time.time() + 60
            while app_client.get("/healthz").json()["index_version"] == version and time.time() < deadline:
                time.sleep(0.1)
            time.sleep(0.5)
        finally:
            stop.set()
            querying.join(timeout=60)
        after = _by_title(app_client)
        assert "track3" in after and "Fan" not in after and len(after) == 15
        assert app_client.get(f"/api/audio/{after['track3']['track_id']}").status_code == 200
        for url in (f"/api/similar/{gone['track_id']}", f"/api/audio/{gone['track_id']}"):
            assert app_client.get(url).status_code == 404, url
    assert failures == []
