"""Tests for musicsim.index: exact search against brute-force numpy, exclusions, diversity
re-ranking, updates, atomic persistence, embeddings files and the build CLI."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import write_fitted_model_config
import musicsim.index
from musicsim.index import storage
from musicsim.index import FaissIndex, embedding_file_writers, load_embeddings, main, read_provenance
from musicsim.index.embeddings_io import PROVENANCE_KEYS

from musicsim.similarity import SIMILARITIES


def random_catalogue(*, count: int = 300, dim: int = 24, seed: int = 0) -> tuple[list[str], np.ndarray]:
    rng = np.random.default_rng(seed)
    return [f"track{i:04d}" for i in range(count)], rng.standard_normal((count, dim)).astype(np.float32)


def clustered_catalogue(*, count: int, dim: int, clusters: int, seed: int,
                        spread: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    """Vectors [count, dim] around ``clusters`` random centres, and the cluster of each."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim))
    membership = rng.integers(0, clusters, size=count)
    vectors = centres[membership] + spread * rng.standard_normal((count, dim))
    return vectors.astype(np.float32), membership


def brute_force(*, vectors: np.ndarray, queries: np.ndarray, similarity: str, k: int,
                excluded: list[set[int]] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Reference top-k rows and scores [Q, k] in float64 numpy."""
    vectors = vectors.astype(np.float64)
    queries = queries.astype(np.float64)
    if similarity == "cosine":
        unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
        scores = (queries / np.linalg.norm(queries, axis=1, keepdims=True)) @ unit.T
    else:
        scores = -np.linalg.norm(vectors[None, :, :] - queries[:, None, :], axis=2)
    if excluded is not None:
        for q, rows in enumerate(excluded):
            scores[q, list(rows)] = -np.inf
    rows = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return rows, np.take_along_axis(scores, rows, axis=1)


# ---------------------------------------------------------------------------- exact search
@pytest.mark.parametrize("similarity", SIMILARITIES)
@pytest.mark.parametrize("k", [1, 7, 25])
@pytest.mark.parametrize("query_count", [1, 40])  # below and above the numpy/faiss switch
def test_exact_search_equals_brute_force(similarity, k, query_count):
    track_ids, vectors = random_catalogue()
    queries = np.random.default_rng(1).standard_normal((query_count, vectors.shape[1])).astype(np.float32)
    index = FaissIndex(track_ids=track_ids, vectors=vectors, similarity=similarity)
    results = index.search(queries=queries, k=k)
    rows, scores = brute_force(vectors=vectors, queries=queries, similarity=similarity, k=k)
    assert [[tid for tid, _ in r] for r in results] == [[track_ids[i] for i in row] for row in rows]
    np.testing.assert_allclose([[s for _, s in r] for r in results], scores, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("similarity", SIMILARITIES)
def test_euclidean_and_cosine_scores_by_hand(similarity):
    # 2-D points: the query (3, 4) against a = (3, 0) and b = (0, 8).
    index = FaissIndex(track_ids=["a", "b"], vectors=np.array([[3, 0], [0, 8]]), similarity=similarity)
    results = dict(index.search(queries=np.array([[3.0, 4.0]]), k=2)[0])
    if similarity == "cosine":
        assert results == pytest.approx({"a": 0.6, "b": 0.8})
    else:  # -||q - a|| = -4, -||q - b|| = -sqrt(9 + 16) = -5
        assert results == pytest.approx({"a": -4.0, "b": -5.0})


@pytest.mark.parametrize("similarity", SIMILARITIES)
@pytest.mark.parametrize("approximate", [None, "hnsw"])
def test_self_is_nearest_when_not_excluded(similarity, approximate):
    track_ids, vectors = random_catalogue(count=200)
    index = FaissIndex(track_ids=track_ids, vectors=vectors, similarity=similarity, approximate=approximate)
    for track_id in track_ids[::37]:
        first_id, first_score = index.search_by_id(track_id=track_id, k=3, exclude_self=False)[0]
        assert first_id == track_id
        assert first_score == pytest.approx(1.0 if similarity == "cosine" else 0.0, abs=1e-5)
        assert track_id not in [t for t, _ in index.search_by_id(track_id=track_id, k=3)]


def test_k_larger_than_catalogue_returns_everything_sorted():
    track_ids, vectors = random_catalogue(count=12)
    index = FaissIndex(track_ids=track_ids, vectors=vectors)
    results = index.search(queries=vectors[:2], k=50)
    assert [len(r) for r in results] == [12, 12]
    scores = [s for _, s in results[0]]
    assert scores == sorted(scores, reverse=True)


# ---------------------------------------------------------------------------- exclusions
@pytest.mark.parametrize("similarity", SIMILARITIES)
@pytest.mark.parametrize("query_count", [1, 20])
def test_exclusion_by_id_and_group_matches_brute_force(similarity, query_count):
    track_ids, vectors = random_catalogue(count=240)
    # one big group (half the catalogue) so that the exclusions need a deep over-fetch
    groups = ["big" if i % 2 == 0 else f"album{i % 7}" for i in range(len(track_ids))]
    index = FaissIndex(track_ids=track_ids, vectors=vectors, similarity=similarity, metadata={"group": groups})
    queries = np.random.default_rng(3).standard_normal((query_count, vectors.shape[1])).astype(np.float32)
    k = 15
    exclude_ids = [[track_ids[(5 * q + j) % 240] for j in range(4)] for q in range(query_count)]
    exclude_groups = [["big", f"album{q % 7}"] if q % 2 == 0 else "big" for q in range(query_count)]
    results = index.search(queries=queries, k=k, exclude_ids=exclude_ids, exclude_groups=exclude_groups)
    excluded = []
    for q in range(query_count):
        dropped = {track_ids.index(t) for t in exclude_ids[q]}
        dropped_groups = set(exclude_groups[q]) if isinstance(exclude_groups[q], list) else {exclude_groups[q]}
        dropped |= {i for i, g in enumerate(groups) if g in dropped_groups}
        excluded.append(dropped)
    rows, scores = brute_force(vectors=vectors, queries=queries, similarity=similarity, k=k, excluded=excluded)
    for q in range(query_count):
        assert len(results[q]) == k
        assert [t for t, _ in results[q]] == [track_ids[i] for i in rows[q]]
        np.testing.assert_allclose([s for _, s in results[q]], scores[q], rtol=1e-5, atol=1e-5)


def test_exclude_same_group_and_fewer_results_when_catalogue_runs_out():
    vectors, membership = clustered_catalogue(count=30, dim=8, clusters=3, seed=2)
    track_ids = [f"t{i}" for i in range(30)]
    groups = [f"album{m}" for m in membership]
    index = FaissIndex(track_ids=track_ids, vectors=vectors, metadata={"group": groups})
    own = groups[0]
    results = index.search_by_id(track_id="t0", k=100, exclude_same_group=True)
    assert len(results) == sum(g != own for g in groups)
    assert all(index.group(track_id=t) != own for t, _ in results)


# ---------------------------------------------------------------------------- diversity
def test_diversity_two_dimensional_example_by_hand():
    # query along x; a1 at 10 degrees, a2 at 11 degrees, b at -30 degrees.
    # lambda = 0.5: first a1 (highest cosine). Then
    #   a2: 0.5 cos 11 - 0.5 cos 1  = 0.5 (0.9816 - 0.9998) = -0.0091
    #   b : 0.5 cos 30 - 0.5 cos 40 = 0.5 (0.8660 - 0.7660) = +0.0500  -> b
    angles = np.radians([10.0, 11.0, -30.0])
    vectors = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    index = FaissIndex(track_ids=["a1", "a2", "b"], vectors=vectors)
    query = np.array([[1.0, 0.0]])
    assert [t for t, _ in index.search(queries=query, k=2)[0]] == ["a1", "a2"]
    diverse = index.search(queries=query, k=2, diversity=0.5)[0]
    assert [t for t, _ in diverse] == ["a1", "b"]
    assert diverse[1][1] == pytest.approx(np.cos(np.radians(30.0)), abs=1e-6)  # the plain similarity


@pytest.mark.parametrize("similarity", SIMILARITIES)
def test_diversity_spreads_results_over_albums(similarity):
    rng = np.random.default_rng(5)
    dim = 16
    query = rng.standard_normal(dim)
    query /= np.linalg.norm(query)
    # album "same": 12 near-duplicates right next to the query; 6 other albums a bit further away,
    # each in its own direction
    same = query + 0.02 * rng.standard_normal((12, dim))
    others = []
    for _ in range(6):
        direction = rng.standard_normal(dim)
        direction -= direction.dot(query) * query
        direction /= np.linalg.norm(direction)
        others.append(query + 0.5 * direction + 0.02 * rng.standard_normal((3, dim)))
    vectors = np.concatenate([same] + others)
    groups = ["same"] * 12 + [f"other{i}" for i in range(6) for _ in range(3)]
    track_ids = [f"t{i}" for i in range(len(vectors))]
    index = FaissIndex(track_ids=track_ids, vectors=vectors, similarity=similarity, metadata={"group": groups})
    queries = query[None, :]

    def albums(results):
        return [index.group(track_id=t) for t, _ in results[0]]

    plain = index.search(queries=queries, k=8)
    assert albums(plain).count("same") == 8
    assert index.search(queries=queries, k=8, diversity=0.0) == plain
    diverse = albums(index.search(queries=queries, k=8, diversity=0.7))
    assert diverse.count("same") < 4
    assert len(set(diverse)) >= 5


@pytest.mark.parametrize("similarity", SIMILARITIES)
def test_vanishing_diversity_keeps_the_plain_order(similarity):
    track_ids, vectors = random_catalogue(count=150)
    index = FaissIndex(track_ids=track_ids, vectors=vectors, similarity=similarity)
    queries = vectors[:5] + 0.1
    plain = index.search(queries=queries, k=10)
    almost = index.search(queries=queries, k=10, diversity=1e-9)
    assert [[t for t, _ in r] for r in almost] == [[t for t, _ in r] for r in plain]


# ---------------------------------------------------------------------------- updates
@pytest.mark.parametrize("approximate", [None, "ivf", "hnsw"])
def test_add_and_remove(approximate):
    vectors, _ = clustered_catalogue(count=400, dim=16, clusters=10, seed=4)
    track_ids = [f"t{i}" for i in range(400)]
    index = FaissIndex(track_ids=track_ids[:300], vectors=vectors[:300], approximate=approximate,
                           metadata={"group": ["old"] * 300})
    index.add(track_ids=track_ids[300:], vectors=vectors[300:], metadata={"path": [f"/x/{i}" for i in range(100)]})
    assert len(index) == 400
    assert index.metadata(track_id="t350") == {"group": None, "path": "/x/50"}
    assert index.metadata(track_id="t0") == {"group": "old", "path": None}
    assert index.search_by_id(track_id="t350", k=1, exclude_self=False)[0][0] == "t350"

    removed = track_ids[::3]
    index.remove(track_ids=removed)
    assert len(index) == 400 - len(removed)
    assert "t0" not in index and "t1" in index
    results = index.search(queries=vectors, k=10, nprobe=index.nlist)
    assert not {t for r in results for t, _ in r} & set(removed)
    # the rows kept still map to their own vectors
    for track_id in ("t1", "t299", "t301", "t398"):
        assert index.search_by_id(track_id=track_id, k=1, exclude_self=False,
                                  nprobe=index.nlist)[0] == (track_id, pytest.approx(1.0, abs=1e-5))


def test_add_and_remove_errors():
    track_ids, vectors = random_catalogue(count=20, dim=4)
    index = FaissIndex(track_ids=track_ids, vectors=vectors)
    with pytest.raises(ValueError, match="already in the index"):
        index.add(track_ids=["track0003"], vectors=vectors[:1])
    with pytest.raises(ValueError, match="duplicate ids"):
        index.add(track_ids=["new", "new"], vectors=vectors[:2])
    with pytest.raises(ValueError, match="expected 4 .* got 5"):
        index.add(track_ids=["new"], vectors=np.ones((1, 5)))
    with pytest.raises(ValueError, match="unknown track ids"):
        index.remove(track_ids=["track0001", "nope"])
    assert len(index) == 20  # nothing removed by the failed call


def test_ivf_index_built_empty_trains_on_first_add():
    vectors, _ = clustered_catalogue(count=200, dim=8, clusters=4, seed=1)
    index = FaissIndex(track_ids=[], vectors=np.zeros((0, 8)), approximate="ivf")
    assert index.search(queries=vectors[:2], k=3) == [[], []]
    index.add(track_ids=[f"t{i}" for i in range(200)], vectors=vectors)
    assert index.nlist == 5  # 200 // 39
    assert index.search_by_id(track_id="t7", k=1, exclude_self=False, nprobe=5)[0][0] == "t7"


# ---------------------------------------------------------------------------- approximate
@pytest.mark.parametrize("approximate", ["ivf", "hnsw"])
@pytest.mark.parametrize("similarity", SIMILARITIES)
def test_approximate_recall_on_clustered_data(approximate, similarity):
    # spread 1.0: the clusters overlap, so neighbours often lie in a neighbouring IVF list
    points, _ = clustered_catalogue(count=4100, dim=32, clusters=40, seed=6, spread=1.0)
    vectors, queries = points[:4000], points[4000:]  # queries: fresh points around the same centres
    track_ids = [f"t{i}" for i in range(len(vectors))]
    exact = FaissIndex(track_ids=track_ids, vectors=vectors, similarity=similarity)
    approx = FaissIndex(track_ids=track_ids, vectors=vectors, similarity=similarity, approximate=approximate)
    truth = exact.search(queries=queries, k=10)
    found = approx.search(queries=queries, k=10)
    recall = np.mean([len({t for t, _ in f} & {t for t, _ in t_}) / 10 for f, t_ in zip(found, truth)])
    assert recall >= 0.9


# ---------------------------------------------------------------------------- persistence
@pytest.mark.parametrize("approximate", [None, "ivf", "hnsw"])
@pytest.mark.parametrize("similarity", SIMILARITIES)
def test_save_load_round_trip(tmp_path, approximate, similarity):
    vectors, membership = clustered_catalogue(count=500, dim=12, clusters=8, seed=7)
    track_ids = [f"t{i}" for i in range(500)]
    metadata = {"group": [f"album{m}" for m in membership], "path": [f"/music/{i}.ogg" for i in range(500)],
                "duration_s": [30.0 + i for i in range(500)]}
    model = {"name": "wavenet", "model_dir": "/runs/w1"}
    index = FaissIndex(track_ids=track_ids, vectors=vectors, similarity=similarity, metadata=metadata,
                           model=model, approximate=approximate)
    index.remove(track_ids=["t3", "t4"])  # labels no longer contiguous
    directory = str(tmp_path / "idx")
    index.save(directory)
    loaded = musicsim.index.open(directory)
    assert loaded.summary() == index.summary()
    assert loaded.track_ids == index.track_ids and loaded.model == model
    assert loaded.metadata(track_id="t9") == {"group": f"album{membership[9]}", "path": "/music/9.ogg",
                                              "duration_s": 39.0}
    np.testing.assert_array_equal(loaded.vectors, index.vectors)
    queries = vectors[:30] + 0.01
    assert loaded.search(queries=queries, k=8) == index.search(queries=queries, k=8)
    assert sorted(os.listdir(tmp_path)) == ["idx"]  # no temp or backup left behind
    loaded.add(track_ids=["new"], vectors=-3 * vectors[:1])  # still updatable after a load
    assert loaded.search_by_id(track_id="new", k=1, exclude_self=False)[0][0] == "new"


def test_crash_during_swap_leaves_previous_index_loadable(tmp_path, monkeypatch):
    track_ids, vectors = random_catalogue(count=50, dim=6)
    directory = str(tmp_path / "idx")
    FaissIndex(track_ids=track_ids, vectors=vectors).save(directory)
    newer = FaissIndex(track_ids=track_ids[:10], vectors=vectors[:10])
    real_rename = os.rename

    def crash_on_rename_in(source, target):
        if ".tmp-" in str(source):  # the new directory taking the old one's place
            raise OSError("simulated crash")
        real_rename(source, target)

    monkeypatch.setattr(os, "rename", crash_on_rename_in)
    with pytest.raises(OSError, match="simulated crash"):
        newer.save(directory)
    monkeypatch.setattr(os, "rename", real_rename)
    assert not os.path.exists(directory)  # the old one was moved to the backup
    with pytest.warns(UserWarning, match="backup"):
        recovered = musicsim.index.open(directory)
    assert len(recovered) == 50
    # the next save replaces the backup with a complete index
    newer.save(directory)
    assert sorted(os.listdir(tmp_path)) == ["idx"]
    assert len(musicsim.index.open(directory)) == 10


def test_crash_while_writing_keeps_previous_index(tmp_path, monkeypatch):
    track_ids, vectors = random_catalogue(count=50, dim=6)
    directory = str(tmp_path / "idx")
    FaissIndex(track_ids=track_ids, vectors=vectors).save(directory)

    def failing_dump(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(storage.json, "dump", failing_dump)
    with pytest.raises(OSError, match="disk full"):
        FaissIndex(track_ids=track_ids[:5], vectors=vectors[:5]).save(directory)
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == ["idx"]
    assert len(musicsim.index.open(directory)) == 50


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no index at"):
        musicsim.index.open(str(tmp_path / "missing"))
    track_ids, vectors = random_catalogue(count=10, dim=3)
    directory = tmp_path / "idx"
    FaissIndex(track_ids=track_ids, vectors=vectors).save(str(directory))
    np.save(directory / "vectors.npy", vectors[:4])
    with pytest.raises(ValueError, match=r"vectors.npy holds float32 \(4, 3\), config.json says float32 \(10, 3\)"):
        musicsim.index.open(str(directory))
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file, not a folder"):
        FaissIndex(track_ids=track_ids, vectors=vectors).save(str(tmp_path / "file"))


# ---------------------------------------------------------------------------- invalid arguments
def test_query_dimension_and_model_mismatch():
    track_ids, vectors = random_catalogue(count=20, dim=8)
    index = FaissIndex(track_ids=track_ids, vectors=vectors, model={"name": "wavenet", "model_dir": "/runs/a"})
    with pytest.raises(ValueError, match=r"expected 8 \(embeddings of wavenet\), got 5"):
        index.search(queries=np.ones((2, 5)))
    with pytest.raises(ValueError, match="built from name='wavenet'.*name='rnn'"):
        index.search(queries=vectors[:1], query_model="rnn")
    with pytest.raises(ValueError, match="model_dir='/runs/a'.*model_dir='/runs/b'"):
        index.search(queries=vectors[:1], query_model={"name": "wavenet", "model_dir": "/runs/b"})
    assert len(index.search(queries=vectors[:1], k=2, query_model={"name": "wavenet", "model_dir": "/runs/a"})[0]) == 2


@pytest.mark.parametrize("arguments, message", [
    ({"similarity": "dot"}, "similarity must be one of"),
    ({"approximate": "lsh"}, "approximate must be None or one of"),
    ({"vectors": np.ones(10)}, r"shape \[N, D\]"),
    ({"vectors": np.ones((9, 3))}, "9 rows but 10 track ids"),
    ({"vectors": np.full((10, 3), np.nan)}, "non-finite"),
    ({"vectors": np.zeros((10, 3))}, "zero vectors"),
    ({"track_ids": ["a"] * 10}, "duplicate ids"),
    ({"track_ids": "abcdefghij"}, "single string"),
    ({"metadata": {"group": ["x"]}}, "1 values for 10 tracks"),
    ({"hnsw_m": 0}, "hnsw_m must be >= 1"),
    ({"approximate": "ivf", "nlist": 11}, "nlist=11 is more than the 10 vectors"),
])
def test_invalid_construction(arguments, message):
    defaults = {"track_ids": [f"t{i}" for i in range(10)], "vectors": np.eye(10, 3) + 0.1}
    with pytest.raises(ValueError, match=message):
        FaissIndex(**{**defaults, **arguments})


@pytest.mark.parametrize("arguments, message", [
    ({"k": 0}, "k must be a positive integer"),
    ({"k": 2.5}, "k must be a positive integer"),
    ({"diversity": 1.5}, r"diversity must be in \[0, 1\]"),
    ({"queries": np.ones(4)}, r"shape \[Q, D\]"),
    ({"queries": np.zeros((1, 4))}, "zero vectors"),
    ({"exclude_ids": [["t1"]]}, r"one entry per query \(2\), got 1"),
    ({"exclude_ids": "t1"}, "single string"),
    ({"exclude_groups": [["g"], ["g"]]}, "needs 'group' metadata"),
])
def test_invalid_search(arguments, message):
    index = FaissIndex(track_ids=[f"t{i}" for i in range(6)], vectors=np.eye(6, 4) + 0.1)
    with pytest.raises(ValueError, match=message):
        index.search(**{"queries": np.ones((2, 4)), **arguments})
    with pytest.raises(ValueError, match="unknown track id 'zz'"):
        index.search_by_id(track_id="zz")
    with pytest.raises(ValueError, match="needs 'group' metadata"):
        index.search_by_id(track_id="t1", exclude_same_group=True)


# ---------------------------------------------------------------------------- embeddings files
def write_npz(path, *, count=12, dim=5):
    vectors = np.random.default_rng(0).standard_normal((count, dim)).astype(np.float32)
    np.savez(path, track_ids=np.array([f"id{i}" for i in range(count)]), embeddings=vectors,
             paths=np.array([f"/m/{i}.ogg" for i in range(count)]),
             labels=np.array([f"album{i % 3}" for i in range(count)]),
             splits=np.array(["train", "eval", "test"] * (count // 3)))
    return vectors


def write_parquet(path, *, count=12, dim=5, model="wavenet", ragged=False):
    vectors = np.random.default_rng(1).standard_normal((count, dim)).astype(np.float32)
    embeddings = [list(v) for v in vectors]
    if ragged:
        embeddings[3] = embeddings[3][:-1]
    table = pa.table({"track_id": [f"id{i}" for i in range(count)], "path": [f"/m/{i}.ogg" for i in range(count)],
                      "embedding": pa.array(embeddings, type=pa.list_(pa.float32())),
                      "model": [model] * count, "duration_s": [float(i) for i in range(count)]})
    pq.write_table(table, path)
    return vectors


def test_load_embeddings_npz(tmp_path):
    vectors = write_npz(tmp_path / "e.npz")
    track_ids, loaded, metadata = load_embeddings(str(tmp_path / "e.npz"))
    assert track_ids == [f"id{i}" for i in range(12)]
    np.testing.assert_array_equal(loaded, vectors)
    assert metadata["path"][2] == "/m/2.ogg" and metadata["group"][:4] == ["album0", "album1", "album2", "album0"]
    assert metadata["split"][:4] == ["train", "eval", "test", "train"]


def test_load_embeddings_parquet(tmp_path):
    vectors = write_parquet(tmp_path / "e.parquet")
    track_ids, loaded, metadata = load_embeddings(str(tmp_path / "e.parquet"))
    assert track_ids[5] == "id5" and loaded.dtype == np.float32
    np.testing.assert_array_equal(loaded, vectors)
    assert metadata["model"] == ["wavenet"] * 12 and metadata["duration_s"][4] == 4.0
    assert metadata["path"][0] == "/m/0.ogg"


def test_load_embeddings_npy_with_ids(tmp_path):
    vectors = np.arange(12, dtype=np.float32).reshape(4, 3)
    np.save(tmp_path / "e.npy", vectors)
    (tmp_path / "e.ids.txt").write_text("a\nb\nc\nd\n")
    track_ids, loaded, metadata = load_embeddings(str(tmp_path / "e.npy"))
    assert track_ids == ["a", "b", "c", "d"] and metadata == {}
    np.testing.assert_array_equal(loaded, vectors)


def test_load_embeddings_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_embeddings(str(tmp_path / "nope.npz"))
    (tmp_path / "e.csv").write_text("x")
    with pytest.raises(ValueError, match="unknown embeddings format '.csv'"):
        load_embeddings(str(tmp_path / "e.csv"))
    np.savez(tmp_path / "bad.npz", embeddings=np.ones((2, 2)))
    with pytest.raises(ValueError, match=r"missing arrays \['track_ids'\]"):
        load_embeddings(str(tmp_path / "bad.npz"))
    np.save(tmp_path / "lonely.npy", np.ones((2, 2)))
    with pytest.raises(FileNotFoundError, match="lonely.ids.json"):
        load_embeddings(str(tmp_path / "lonely.npy"))
    (tmp_path / "short.ids.txt").write_text("a\n")
    np.save(tmp_path / "short.npy", np.ones((2, 2)))
    with pytest.raises(ValueError, match="N = 1 track ids"):
        load_embeddings(str(tmp_path / "short.npy"))
    write_parquet(tmp_path / "ragged.parquet", ragged=True)
    with pytest.raises(ValueError, match="different lengths"):
        load_embeddings(str(tmp_path / "ragged.parquet"))


# ---------------------------------------------------------------------------- CLI
def test_build_cli_from_npz_stores_groups_and_answers_queries(tmp_path, capsys):
    from musicsim.search import query as search

    write_npz(tmp_path / "e.npz", count=30)
    output = tmp_path / "index"
    run = write_fitted_model_config(tmp_path / "run", name="librosa", dim=5)
    assert main(["musicsim-index", "build", f"--embeddings={tmp_path / 'e.npz'}", f"--output={output}",
                 "--similarity=euclidean", f"--model_dir={run}", "--model=librosa"]) == 0
    summary = capsys.readouterr().out
    assert "30 tracks, dim 5, euclidean, exact, 3 groups, model librosa" in summary
    index = musicsim.index.open(str(output))
    assert index.model["model_dir"] == run and index.model["dim"] == 5 and index.group(track_id="id4") == "album1"
    config = json.loads((output / "config.json").read_text())
    assert config["similarity"] == "euclidean" and config["count"] == 30 and config["format"] == "musicsim.index"
    assert search.main(["musicsim-search", f"--index={output}", "--track_id=id4", "-k", "3", "--exclude_same_group",
                        "--json"]) == 0
    found = json.loads(capsys.readouterr().out)
    assert len(found) == 3 and all(r["group"] != "album1" for r in found)
    assert main(["musicsim-index", "query", f"--index={output}", "--track_id=id4"]) == 2  # musicsim.search.query's
    assert "expected a command, one of ['add', 'build', 'remove'], got 'query'" in capsys.readouterr().err


def test_build_cli_from_parquet_takes_model_name_and_approximate(tmp_path, capsys):
    write_parquet(tmp_path / "e.parquet", count=100)
    assert main(["musicsim-index", "build", f"--embeddings={tmp_path / 'e.parquet'}", f"--output={tmp_path / 'ix'}",
                 "--approximate=hnsw"]) == 0
    assert "100 tracks, dim 5, cosine, hnsw(M=32, efSearch=64), 0 groups, model wavenet" in capsys.readouterr().out
    assert musicsim.index.open(str(tmp_path / "ix")).metadata(track_id="id7")["duration_s"] == 7.0
    # a mismatching --model and a missing file are reported, not raised
    assert main(["musicsim-index", "build", f"--embeddings={tmp_path / 'e.parquet'}", f"--output={tmp_path / 'ix2'}",
                 "--model=rnn"]) == 2
    assert "--model=rnn but" in capsys.readouterr().err
    assert main(["musicsim-index", "build", f"--embeddings={tmp_path / 'none.npz'}",
                 f"--output={tmp_path / 'ix3'}"]) == 2


@pytest.mark.parametrize("arguments, message", [
    ([], "expected a command, one of ['add', 'build', 'remove'], got None"),
    (["build", "--output=OUT"], "build needs --embeddings"),
    (["add", "--index=OUT", "--embeddings=E", "--similarity=cosine"], "add does not take --similarity"),
    (["build", "--embeddings=E", "--output=OUT", "stray"], "build does not take arguments ['stray']"),
    (["build", "--embeddings=E", "--output=OUT", "--similarity=dot"], "flag --similarity=dot: value should be one of"),
    (["build", "--embeddings=E", "--output=OUT", "--no_such_flag"], "Unknown command line flag 'no_such_flag'"),
])
def test_cli_usage_errors_exit_2_naming_the_problem(tmp_path, capsys, arguments, message):
    arguments = [a.replace("OUT", str(tmp_path / "idx")).replace("=E", f"={tmp_path / 'e.npz'}") for a in arguments]
    assert main(["musicsim-index", *arguments]) == 2
    error = capsys.readouterr().err
    assert message in error and "usage: python -m musicsim.index build" in error
    assert not (tmp_path / "idx").exists()


def test_cli_help_and_module_entry_point(tmp_path, capsys):
    assert main(["musicsim-index", "--help"]) == 0
    assert "--embeddings" in capsys.readouterr().out
    write_npz(tmp_path / "e.npz", count=6)
    run = write_fitted_model_config(tmp_path / "run", name="librosa", dim=5)
    # python -m runs absl's app.run: a flag value it cannot parse is exit 2, a good build exit 0.
    command = [sys.executable, "-m", "musicsim.index", "build", f"--embeddings={tmp_path / 'e.npz'}",
               f"--output={tmp_path / 'idx'}", f"--model_dir={run}"]
    done = subprocess.run(command + ["--approximate=lsh"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "--approximate=lsh" in done.stderr and not (tmp_path / "idx").exists()
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "6 tracks, dim 5, euclidean" in done.stdout
    assert len(musicsim.index.open(str(tmp_path / "idx"))) == 6


def test_the_export_writer_and_the_reader_agree(tmp_path):
    """embedding_file_writers (what experiments.export writes) read back by load_embeddings and read_provenance."""
    rng = np.random.default_rng(3)
    vectors = rng.standard_normal((5, 4)).astype(np.float32)
    track_ids = ["a/1", "a/2", "b/1", "b/2", "c\n1"]
    provenance = {"model": "mfcc", "model_dir": str(tmp_path / "run"), "similarity": "euclidean", "version": "7"}
    writers = embedding_file_writers(parquet=str(tmp_path / "e.parquet"), npy=str(tmp_path / "e.npy"),
                                     track_ids=track_ids, vectors=vectors, paths=[f"/m/{i}.wav" for i in range(5)],
                                     durations=[1.0, 2.0, 3.0, 4.0, 5.5], groups=["a", "a", "b", "b", None],
                                     provenance=provenance)
    assert sorted(os.path.basename(p) for p in writers) == ["e.ids.json", "e.meta.json", "e.npy", "e.parquet"]
    for path, write in writers.items():
        write(path)
    for name in ("e.parquet", "e.npy"):
        ids, loaded, metadata = load_embeddings(str(tmp_path / name))
        assert ids == track_ids
        np.testing.assert_array_equal(loaded, vectors)
        assert read_provenance(str(tmp_path / name)) == {key: provenance[key] for key in PROVENANCE_KEYS}
    assert metadata == {}  # the .npy carries vectors and ids only
    _, _, metadata = load_embeddings(str(tmp_path / "e.parquet"))
    assert metadata == {"path": [f"/m/{i}.wav" for i in range(5)], "duration_s": [1.0, 2.0, 3.0, 4.0, 5.5],
                        "model": ["mfcc"] * 5, "group": ["a", "a", "b", "b", None]}


# ---------------------------------------------------------------------------- re-ranking by the catalog
def reranked_ranking(*, vectors: np.ndarray, settings, row: int, exclude_self: bool) -> tuple[np.ndarray, np.ndarray]:
    """Rows [M] and scores [M] of one track's query, best first, from the protocol's numpy path."""
    from musicsim import rerank

    scores = rerank.catalog_scores(vectors=vectors, settings=settings)[row].copy()
    if exclude_self:
        scores[row] = -np.inf
    order = np.argsort(-scores, kind="stable")
    order = order[np.isfinite(scores[order])]
    return order, scores[order]


def assert_track_queries_match_catalog_scores(index: FaissIndex, *, track_ids: list[str], vectors: np.ndarray,
                                              settings, exclude_self: bool = True) -> None:
    for row, track_id in enumerate(track_ids):
        expected_rows, expected_scores = reranked_ranking(vectors=vectors, settings=settings, row=row,
                                                          exclude_self=exclude_self)
        found = index.search_by_id(track_id=track_id, k=len(track_ids), exclude_self=exclude_self)
        # The same ranking up to exact ties (alpha=0 gives tracks of one tight cluster one augmented
        # vector): every track found, each with its protocol score, best first.
        expected = {track_ids[r]: float(s) for r, s in zip(expected_rows, expected_scores)}
        assert sorted(t for t, _ in found) == sorted(expected), track_id
        np.testing.assert_allclose([s for _, s in found], [expected[t] for t, _ in found], atol=2e-5)
        np.testing.assert_allclose([s for _, s in found], expected_scores, atol=2e-5)


RERANKED = ("aqe:k=3,alpha=3", "dba:k=3,alpha=0", "dba+aqe:k=3,alpha=3", "dba+aqe:k=2,alpha=0")


@pytest.mark.parametrize("setting", RERANKED)
@pytest.mark.parametrize("exclude_self", [True, False])
def test_a_reranking_index_ranks_track_queries_as_catalog_scores(setting, exclude_self):
    from musicsim import rerank

    vectors, _ = clustered_catalogue(count=40, dim=8, clusters=5, seed=3, spread=0.6)
    track_ids = [f"t{i:02d}" for i in range(len(vectors))]
    settings = rerank.parse_settings(setting)
    index = FaissIndex(track_ids=track_ids, vectors=vectors, rerank=settings)
    assert_track_queries_match_catalog_scores(index, track_ids=track_ids, vectors=vectors, settings=settings,
                                              exclude_self=exclude_self)
    # Re-ranking changes the ranking of this catalog: the check above is not plain cosine's.
    plain = FaissIndex(track_ids=track_ids, vectors=vectors)
    assert any([t for t, _ in index.search_by_id(track_id=t, k=10)] != [t for t, _ in plain.search_by_id(track_id=t, k=10)]
               for t in track_ids)
    # The tracks' own vectors stay what the catalog map and playlists read; the augmented ones are searched.
    np.testing.assert_allclose(index.vectors, plain.vectors, atol=1e-6)
    assert np.allclose(index.searched_vector(track_id="t00"), plain.vector(track_id="t00"), atol=1e-6) == \
        (settings.method == "aqe")


def test_query_expansion_of_an_outside_query_and_turning_it_off():
    from musicsim import rerank

    vectors, _ = clustered_catalogue(count=30, dim=6, clusters=4, seed=5, spread=0.6)
    track_ids = [f"t{i:02d}" for i in range(len(vectors))]
    settings = rerank.parse_settings("dba+aqe:k=3,alpha=3")
    index = FaissIndex(track_ids=track_ids, vectors=vectors, rerank=settings)
    query = np.random.default_rng(9).standard_normal((2, 6)).astype(np.float32)
    catalog = rerank.augment_database(vectors=vectors, k=3, alpha=3.0)
    expanded = rerank.expand_queries(queries=query, catalog=catalog, k=3, alpha=3.0)
    for found, wanted in zip(index.search(queries=query, k=30), expanded @ catalog.T):
        assert [t for t, _ in found] == [track_ids[r] for r in np.argsort(-wanted, kind="stable")]
    unit_query = query / np.linalg.norm(query, axis=1, keepdims=True)
    for found, wanted in zip(index.search(queries=query, k=30, rerank=False), unit_query @ catalog.T):
        assert [t for t, _ in found] == [track_ids[r] for r in np.argsort(-wanted, kind="stable")]


@pytest.mark.parametrize("approximate", [None, "hnsw"])
def test_add_and_remove_keep_the_catalog_scores_ranking(tmp_path, approximate):
    from musicsim import rerank

    vectors, _ = clustered_catalogue(count=40, dim=8, clusters=5, seed=4, spread=0.6)
    track_ids = [f"t{i:02d}" for i in range(len(vectors))]
    settings = rerank.parse_settings("dba+aqe:k=3,alpha=3")
    index = FaissIndex(track_ids=track_ids[:28], vectors=vectors[:28], rerank=settings, approximate=approximate,
                           ef_search=64)
    index.add(track_ids=track_ids[28:], vectors=vectors[28:])
    assert_track_queries_match_catalog_scores(index, track_ids=track_ids, vectors=vectors, settings=settings)
    removed = {"t03", "t17", "t30"}
    index.remove(track_ids=sorted(removed))
    kept = [row for row, t in enumerate(track_ids) if t not in removed]
    assert_track_queries_match_catalog_scores(index, track_ids=[track_ids[r] for r in kept], vectors=vectors[kept],
                                              settings=settings)
    index.save(str(tmp_path / "ix"))
    loaded = musicsim.index.open(str(tmp_path / "ix"))
    assert loaded.rerank == settings and "rerank dba+aqe(k=3, alpha=3.0)" in loaded.summary()
    assert_track_queries_match_catalog_scores(loaded, track_ids=[track_ids[r] for r in kept], vectors=vectors[kept],
                                              settings=settings)
    np.testing.assert_allclose(loaded.vectors, index.vectors)


def test_an_index_saved_before_reranking_loads_as_none(tmp_path):
    track_ids, vectors = random_catalogue(count=20, dim=4)
    FaissIndex(track_ids=track_ids, vectors=vectors).save(str(tmp_path / "ix"))
    config_path = tmp_path / "ix" / "config.json"
    config = json.loads(config_path.read_text())
    assert config["rerank"]["method"] == "none"
    del config["rerank"]  # what an index written before re-ranking holds
    config_path.write_text(json.dumps(config))
    loaded = musicsim.index.open(str(tmp_path / "ix"))
    assert loaded.rerank.method == "none" and "rerank none" in loaded.summary()
    expected, _ = brute_force(vectors=loaded.vectors, queries=loaded.vectors[:1], similarity="cosine", k=5)
    assert [t for t, _ in loaded.search(queries=vectors[:1], k=5)[0]] == [track_ids[r] for r in expected[0]]


@pytest.mark.parametrize("arguments, message", [
    ({"rerank_text": "kreciprocal:k=10"}, "needs the whole catalog's"),
    ({"rerank_text": "dba:k=2", "similarity": "euclidean"}, "euclidean index cannot apply it"),
])
def test_indexes_refuse_reranking_they_cannot_apply(arguments, message):
    from musicsim import rerank

    track_ids, vectors = random_catalogue(count=10, dim=4)
    with pytest.raises(ValueError, match=message):
        FaissIndex(track_ids=track_ids, vectors=vectors, similarity=arguments.get("similarity", "cosine"),
                       rerank=rerank.parse_settings(arguments["rerank_text"]))


def test_build_cli_refuses_kreciprocal_and_euclidean_reranking_with_exit_2(tmp_path, capsys):
    write_npz(tmp_path / "e.npz", count=30)
    run = write_fitted_model_config(tmp_path / "run", name="librosa", dim=5, similarity="cosine")
    base = ["musicsim-index", "build", f"--embeddings={tmp_path / 'e.npz'}", f"--model_dir={run}"]
    assert main(base + [f"--output={tmp_path / 'a'}", "--rerank=kreciprocal:k=10,k2=3"]) == 2
    err = capsys.readouterr().err
    assert "cannot apply re-ranking 'kreciprocal'" in err and "--rerank=dba+aqe" in err
    assert main(base + [f"--output={tmp_path / 'b'}", "--rerank=dba+aqe", "--similarity=euclidean"]) == 2
    assert "--similarity=cosine, or --rerank=none" in capsys.readouterr().err
    assert main(base + [f"--output={tmp_path / 'c'}", "--rerank=dba:q=3"]) == 2
    assert "--rerank=dba:q=3: bad re-ranking option 'q=3'" in capsys.readouterr().err
    assert not any((tmp_path / name).exists() for name in "abc")


def fake_engine_module(*, rerank_text: str, weights: np.ndarray):
    """A stand-in for musicsim.models.pretrained_engine: its fixed re-ranking and dimension weights."""
    import types

    module = types.ModuleType("musicsim.models.pretrained_engine")
    module.ENGINE_RERANK = rerank_text
    module.raw_engine = lambda: types.SimpleNamespace(dimension_weights=lambda: weights)
    return module


@pytest.mark.parametrize("recorded", ["dba+aqe:k=2,alpha=3", "dba:k=3,alpha=0", "kreciprocal"])
def test_build_cli_auto_no_longer_serves_the_runs_eval_split_choice(tmp_path, capsys, recorded):
    """issue 24 item 12: a run's --rerank=auto record (chosen on a small eval split) is not what the index
    serves; auto is the model's fixed setting, none for a non-engine run."""
    from musicsim import rerank
    from musicsim.rundir import RunDir

    vectors = write_npz(tmp_path / "e.npz", count=30)
    run = write_fitted_model_config(tmp_path / "run", name="librosa", dim=5, similarity="cosine")
    RunDir(run).write_results({"rerank": {"settings": rerank.parse_settings(recorded).to_json(), "chosen_on": "eval"}})
    base = ["musicsim-index", "build", f"--embeddings={tmp_path / 'e.npz'}", f"--model_dir={run}"]
    assert main(base + [f"--output={tmp_path / 'auto'}"]) == 0
    assert "rerank none" in capsys.readouterr().out
    assert musicsim.index.open(str(tmp_path / "auto")).rerank.method == "none"
    # Given explicitly, a setting is applied.
    assert main(base + [f"--output={tmp_path / 'given'}", "--rerank=dba+aqe:k=2,alpha=3"]) == 0
    index = musicsim.index.open(str(tmp_path / "given"))
    assert_track_queries_match_catalog_scores(index, track_ids=[f"id{i}" for i in range(30)], vectors=vectors,
                                              settings=rerank.parse_settings("dba+aqe:k=2,alpha=3"))


@pytest.mark.parametrize("engine_rerank", ["none", "dba+aqe:k=2,alpha=3"])
def test_auto_is_the_pretrained_engines_fixed_setting_and_it_standardises(tmp_path, monkeypatch, engine_rerank):
    import sys

    from musicsim import rerank
    from musicsim.index import build_index_from_vectors

    weights = np.linspace(0.5, 2.0, 5)
    monkeypatch.setitem(sys.modules, "musicsim.models.pretrained_engine",
                        fake_engine_module(rerank_text=engine_rerank, weights=weights))
    vectors, _ = clustered_catalogue(count=30, dim=5, clusters=3, seed=2, spread=0.3)
    ids = [f"t{i}" for i in range(30)]
    built = build_index_from_vectors(output=str(tmp_path / "idx"), track_ids=ids, vectors=vectors * 7 + 3,
                                     model={"name": "pretrained", "version": "v1"})
    index = musicsim.index.open(str(tmp_path / "idx"))
    assert index.rerank == rerank.parse_settings(engine_rerank) == built.rerank
    assert index.standardise and np.allclose(index.dimension_weights, weights)
    # Another model: no re-ranking, no standardisation, whatever the engine says.
    other = build_index_from_vectors(output=str(tmp_path / "other"), track_ids=ids, vectors=vectors,
                                     model={"name": "musicnn"})
    assert other.rerank.method == "none" and not other.standardise


@pytest.mark.parametrize("count", [1, 2, 4])
def test_reranking_tiny_catalogs_and_identical_tracks_match_catalog_scores(count):
    from musicsim import rerank

    vectors, _ = clustered_catalogue(count=count, dim=5, clusters=2, seed=1, spread=0.6)
    vectors = np.concatenate([vectors, vectors[:1]])  # an identical copy of the first track
    track_ids = [f"t{i}" for i in range(len(vectors))]
    settings = rerank.parse_settings("dba+aqe:k=3,alpha=3")
    index = FaissIndex(track_ids=track_ids[:1], vectors=vectors[:1], rerank=settings)
    assert index.search_by_id(track_id="t0", k=3, exclude_self=False)[0][0] == "t0"
    index.add(track_ids=track_ids[1:], vectors=vectors[1:])
    assert_track_queries_match_catalog_scores(index, track_ids=track_ids, vectors=vectors, settings=settings,
                                              exclude_self=False)
