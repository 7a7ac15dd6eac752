"""musicsim.serve (HTTP API), musicsim.playlist, musicsim.catalog_map and musicsim.projector."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile as sf
from fastapi.testclient import TestClient

from conftest import ALBUM_TIMBRES, SERVED_SAMPLE_RATE, album_track_ids, render_track
from musicsim import catalog_map, playlist
from musicsim.index import EmbeddingIndex
from musicsim.serve import create_app, main

ALBUMS = tuple(ALBUM_TIMBRES)


@pytest.fixture(scope="module")
def client(mfcc_catalog):
    with TestClient(create_app(index_dir=mfcc_catalog["index_dir"], max_upload_mb=1.0)) as test_client:
        yield test_client


def _copied_index(catalog, tmp_path, *, model: bool = False, extra: dict | None = None) -> tuple[str, list[str]]:
    """The catalog's audio copied under ``tmp_path`` and indexed with the same vectors; returns (index, paths)."""
    shutil.copytree(catalog["root"] / "audio", tmp_path / "audio")
    paths = [str(tmp_path / "audio" / os.path.relpath(p, catalog["root"] / "audio")) for p in catalog["paths"]]
    ids, vectors = album_track_ids(paths), catalog["vectors"]
    for track_id, (path, vector) in (extra or {}).items():
        ids, paths, vectors = ids + [track_id], paths + [path], np.vstack([vectors, vector[None, :]])
    index = EmbeddingIndex(track_ids=ids, vectors=vectors, similarity="euclidean",
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
    assert [t["track_id"] for t in page["tracks"]] == album_track_ids(mfcc_catalog["paths"])[3:8]
    track = page["tracks"][0]
    assert track["audio_url"] == "/api/audio/" + track["track_id"].replace("/", "%2F")
    assert track["duration_s"] == pytest.approx(sf.info(mfcc_catalog["paths"][3]).duration)


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
    index = EmbeddingIndex.load(mfcc_catalog["index_dir"])
    for diversity, exclude in ((0.0, False), (0.5, False), (0.0, True)):
        answer = client.get("/api/similar/low_sine/t1", params={"k": 6, "diversity": diversity,
                                                                "exclude_same_group": exclude}).json()
        expected = index.search_by_id(track_id="low_sine/t1", k=6, diversity=diversity, exclude_same_group=exclude)
        assert answer["query"]["track_id"] == "low_sine/t1"
        assert [(r["track_id"], r["rank"]) for r in answer["results"]] == [
            (t, i + 1) for i, (t, _) in enumerate(expected)]
        np.testing.assert_allclose([r["score"] for r in answer["results"]], [s for _, s in expected], rtol=1e-6)
        assert all(r["audio_url"] and r["group"] == r["track_id"].split("/")[0] for r in answer["results"])
        if exclude:
            assert all(r["group"] != "low_sine" for r in answer["results"])
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
    return client.app.state.service.upload_dir


def test_upload_finds_the_file_itself_first_and_leaves_nothing_behind(client, mfcc_catalog):
    path = mfcc_catalog["paths"][9]  # noisy_mid/t1
    with open(path, "rb") as f:
        multipart = client.post("/api/similar", params={"k": 4}, files={"file": ("mine.wav", f, "audio/wav")})
    assert multipart.status_code == 200, multipart.text
    results = multipart.json()["results"]
    assert results[0]["track_id"] == "noisy_mid/t1" and results[0]["score"] == pytest.approx(0.0, abs=1e-4)
    assert multipart.json()["query"] == {"file": "mine.wav"}
    with open(path, "rb") as f:
        raw = client.post("/api/similar?k=4", content=f.read(), headers={"Content-Type": "application/octet-stream"})
    assert [r["track_id"] for r in raw.json()["results"]] == [r["track_id"] for r in results]
    assert os.listdir(_upload_dir(client)) == []


def test_upload_content_is_checked_by_decoding_not_by_name(client, mfcc_catalog, tmp_path):
    # A real WAV named .txt is audio; text named .wav is not.
    with open(mfcc_catalog["paths"][0], "rb") as f:
        assert client.post("/api/similar", files={"file": ("notes.txt", f, "text/plain")}).status_code == 200
    response = client.post("/api/similar", files={"file": ("song.wav", b"just some text, " * 200, "audio/wav")})
    assert response.status_code == 415 and "song.wav" in response.json()["error"]
    assert client.post("/api/similar", files={"file": ("empty.wav", b"", "audio/wav")}).status_code == 415
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
        service = warm.app.state.service
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
    from musicsim import search

    model = {"name": "mfcc", "model_dir": str(mfcc_catalog["root"] / "mfcc")}
    wrong_dim = str(tmp_path / "wrong_dim")
    EmbeddingIndex(track_ids=["a", "b"], vectors=np.eye(2, 7) + 0.1, model=model).save(wrong_dim)
    with pytest.raises(ValueError, match="dimension mismatch") as searched:
        search.search(index_dir=wrong_dim, query_path=mfcc_catalog["paths"][0])
    with TestClient(create_app(index_dir=wrong_dim)) as served:
        with open(mfcc_catalog["paths"][0], "rb") as f:
            response = served.post("/api/similar", files={"file": ("a.wav", f)})
        assert response.status_code == 500 and str(searched.value) in response.json()["error"]
        assert served.get("/healthz").json()["model"] == f"failed: {searched.value}"
    # The run compares by euclidean distance, this index by cosine: a warning, not a refusal.
    cosine = str(tmp_path / "cosine")
    EmbeddingIndex(track_ids=album_track_ids(mfcc_catalog["paths"]), vectors=mfcc_catalog["vectors"],
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
    beyond = client.get("/api/audio/low_sine/t0", headers={"Range": f"bytes={len(data) + 10}-"})
    assert beyond.status_code == 416


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

def _random_index(*, count: int = 40, dim: int = 8, similarity: str = "cosine") -> EmbeddingIndex:
    rng = np.random.default_rng(3)
    return EmbeddingIndex(track_ids=[f"t{i:02d}" for i in range(count)], vectors=rng.standard_normal((count, dim)),
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
    vectors = EmbeddingIndex.load(index_dir).vectors.astype(np.float64)
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
    other = EmbeddingIndex(track_ids=index.track_ids, vectors=index.vectors[::-1], similarity="cosine")
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
    ([], "Flag --index must have a value other than None"),
    (["--index=I", "extra"], "unexpected arguments ['extra']"),
])
def test_cli_bad_flags_exit_2_before_loading_anything(mfcc_catalog, capsys, arguments, message):
    arguments = [a.replace("=I", f"={mfcc_catalog['index_dir']}") for a in arguments]
    assert main(["musicsim-serve", *arguments]) == 2
    error = capsys.readouterr().err
    assert message in error and "usage: python -m musicsim.serve --index=DIR" in error


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
    process = subprocess.Popen([sys.executable, "-m", "musicsim.serve", f"--index={mfcc_catalog['index_dir']}",
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
    assert f"python -m musicsim.serve --index={index_dir}" in capsys.readouterr().out
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
