"""Catalog standardisation in the index (label-free), the index version, and the tags' metadata columns, on
both backends: search equals brute force over the catalog z-scored by hand, add / remove recompute the
statistics, a file query goes through the same statistics, old indexes load without it."""
from __future__ import annotations

import importlib.util
import json
import os

import numpy as np
import pytest

from musicsim.search import query as search_module
import musicsim.index
from musicsim.index import FaissIndex, IndexFileError, read_version
from test_index_backends import make_index, opened  # noqa: F401 - opened is a fixture

HAVE_MILVUS = importlib.util.find_spec("pymilvus") is not None and importlib.util.find_spec("milvus_lite") is not None
BACKENDS = ["faiss", pytest.param("milvus", marks=pytest.mark.skipif(not HAVE_MILVUS, reason="no Milvus Lite"))]


def skewed_catalogue(*, count: int, dim: int, seed: int) -> tuple[list[str], np.ndarray]:
    """Vectors whose dimensions have very different offsets and spreads (what standardisation undoes)."""
    rng = np.random.default_rng(seed)
    offsets, spreads = rng.uniform(-5, 5, dim), np.geomspace(0.01, 30.0, dim)
    vectors = rng.standard_normal((count, dim)) * spreads + offsets
    return [f"t{i:04d}" for i in range(count)], vectors.astype(np.float32)


def by_hand(*, catalogue: np.ndarray, vectors: np.ndarray, weights: np.ndarray | None, similarity: str) -> np.ndarray:
    """``vectors`` z-scored by the catalog's own mean and (population) std, weighted, unit rows for cosine."""
    catalogue = catalogue.astype(np.float64)
    rows = (vectors.astype(np.float64) - catalogue.mean(axis=0)) / catalogue.std(axis=0)
    if weights is not None:
        rows = rows * weights
    if similarity == "cosine":
        rows = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    return rows


def brute_force_ids(*, catalogue_ids, searched: np.ndarray, query: np.ndarray, similarity: str, k: int,
                    exclude: str | None = None) -> list[str]:
    scores = searched @ query if similarity == "cosine" else -np.linalg.norm(searched - query, axis=1)
    order = [i for i in np.argsort(-scores, kind="stable") if catalogue_ids[i] != exclude]
    return [catalogue_ids[i] for i in order[:k]]


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("similarity", ["cosine", "euclidean"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_search_ranks_by_the_catalogs_own_standardisation_through_add_and_remove(backend, similarity, weighted,
                                                                                   tmp_path, opened):
    ids, vectors = skewed_catalogue(count=120, dim=6, seed=1)
    weights = np.array([1.0, 0.5, 2.0, 1.0, 0.0, 3.0]) if weighted else None
    index = make_index(backend, tmp_path, track_ids=ids[:80], vectors=vectors[:80], similarity=similarity,
                       standardise=True, dimension_weights=weights)
    opened(index)
    queries = skewed_catalogue(count=5, dim=6, seed=9)[1]

    def check(held: list[int]) -> None:
        held_ids = [ids[i] for i in held]
        mean, scale = index.catalog_statistics()
        np.testing.assert_allclose(mean, vectors[held].astype(np.float64).mean(axis=0), rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(scale, vectors[held].astype(np.float64).std(axis=0), rtol=1e-5)
        searched = by_hand(catalogue=vectors[held], vectors=vectors[held], weights=weights, similarity=similarity)
        for query in queries:  # a raw query (an uploaded file) goes through prepare_query
            expected = brute_force_ids(catalogue_ids=held_ids, searched=searched, similarity=similarity, k=5,
                                       query=by_hand(catalogue=vectors[held], vectors=query[None], weights=weights,
                                                     similarity=similarity)[0])
            found = index.search(queries=index.prepare_query(query[None]), k=5)[0]
            assert [t for t, _ in found] == expected
        for row in (held[0], held[-1]):  # a track of the catalog, by id
            expected = brute_force_ids(catalogue_ids=held_ids, searched=searched, similarity=similarity, k=5,
                                       query=searched[held.index(row)], exclude=ids[row])
            assert [t for t, _ in index.search_by_id(track_id=ids[row], k=5)] == expected
            np.testing.assert_allclose(index.raw_vector(track_id=ids[row]), vectors[row], rtol=1e-6)
        np.testing.assert_allclose(index.vectors[[index.track_ids.index(t) for t in held_ids]], searched,
                                   rtol=1e-4, atol=1e-5)

    check(list(range(80)))
    index.add(track_ids=ids[80:], vectors=vectors[80:])  # the statistics move with the catalog
    check(list(range(120)))
    index.remove(track_ids=ids[:50])
    check(list(range(50, 120)))
    index.save(str(tmp_path / "idx"))
    index.close()
    reopened = musicsim.index.open(str(tmp_path / "idx"))
    opened(reopened)
    assert reopened.standardise and len(reopened) == 70
    index = reopened
    check(list(range(50, 120)))


def test_without_standardisation_the_skewed_dimensions_rank_and_prepare_query_changes_nothing():
    ids, vectors = skewed_catalogue(count=60, dim=6, seed=2)
    plain = FaissIndex(track_ids=ids, vectors=vectors, similarity="euclidean")
    standardised = FaissIndex(track_ids=ids, vectors=vectors, similarity="euclidean", standardise=True)
    query = vectors[:1] + 0.5
    np.testing.assert_array_equal(plain.prepare_query(query), query)
    assert [t for t, _ in plain.search(queries=plain.prepare_query(query), k=10)[0]] != \
        [t for t, _ in standardised.search(queries=standardised.prepare_query(query), k=10)[0]]


@pytest.mark.parametrize("count", [0, 1, 2])
def test_tiny_and_constant_catalogs_stay_searchable(count):
    """Fewer than two tracks: nothing to standardise by (vectors stay as given); a constant dimension is centred,
    not divided by 0."""
    ids, vectors = skewed_catalogue(count=count, dim=4, seed=3)
    vectors[:, 2] = 7.0
    index = FaissIndex(track_ids=ids, vectors=vectors.reshape(count, 4), standardise=True)
    mean, scale = index.catalog_statistics()
    assert np.isfinite(mean).all() and np.all(scale > 0)
    index.add(track_ids=["new"], vectors=np.array([[1.0, 2.0, 7.0, 4.0]], np.float32))
    assert index.search_by_id(track_id="new", k=1, exclude_self=False)[0][0] == "new"
    assert np.isfinite(index.vectors).all()


def test_dimension_weights_need_standardisation_and_the_right_shape():
    ids, vectors = skewed_catalogue(count=10, dim=4, seed=4)
    with pytest.raises(ValueError, match="pass standardise=True too"):
        FaissIndex(track_ids=ids, vectors=vectors, dimension_weights=np.ones(4))
    with pytest.raises(ValueError, match=r"shape \[4\]"):
        FaissIndex(track_ids=ids, vectors=vectors, standardise=True, dimension_weights=np.ones(3))
    with pytest.raises(ValueError, match="finite, >= 0"):
        FaissIndex(track_ids=ids, vectors=vectors, standardise=True, dimension_weights=[1, -1, 1, 1])


def test_an_index_saved_before_standardisation_loads_without_it(tmp_path):
    ids, vectors = skewed_catalogue(count=20, dim=4, seed=5)
    FaissIndex(track_ids=ids, vectors=vectors).save(str(tmp_path / "idx"))
    config_path = tmp_path / "idx" / "config.json"
    config = json.loads(config_path.read_text())
    for key in ("standardise", "dimension_weights", "version", "generation"):
        config.pop(key)
    config_path.write_text(json.dumps(config))
    index = musicsim.index.open(str(tmp_path / "idx"))
    assert not index.standardise and index.version == 0 and read_version(str(tmp_path / "idx")) == 0
    index.save(str(tmp_path / "idx"))
    assert read_version(str(tmp_path / "idx")) == 1


def test_a_damaged_standardising_index_fails_on_load_naming_the_file(tmp_path):
    ids, vectors = skewed_catalogue(count=20, dim=4, seed=6)
    FaissIndex(track_ids=ids, vectors=vectors, standardise=True).save(str(tmp_path / "idx"))
    assert not (tmp_path / "idx" / "vectors.npy").exists()
    np.save(tmp_path / "idx" / "raw_vectors.npy", vectors[:5])
    with pytest.raises(IndexFileError, match="raw_vectors.npy holds float32 \\(5, 4\\)"):
        musicsim.index.open(str(tmp_path / "idx"))
    config_path = tmp_path / "idx" / "config.json"
    config_path.write_text(json.dumps(dict(json.loads(config_path.read_text()), dimension_weights=[1, 2])))
    with pytest.raises(IndexFileError, match="config.json: bad 'dimension_weights'"):
        musicsim.index.open(str(tmp_path / "idx"))


def test_a_file_query_of_the_search_command_uses_the_catalogs_statistics(tmp_path, monkeypatch):
    """musicsim.search.query embeds the file, then prepare_query: the same ranking as searching the catalog's
    standardised copy of the raw vector."""
    ids, vectors = skewed_catalogue(count=40, dim=5, seed=7)
    index = FaissIndex(track_ids=ids, vectors=vectors, similarity="cosine", standardise=True,
                       model={"name": "fake", "model_dir": str(tmp_path / "run")})
    index.save(str(tmp_path / "idx"))
    raw_query = (vectors[3] * 1.01 + 0.02)[None, :]
    query_file = tmp_path / "q.wav"
    query_file.write_bytes(b"not read")
    monkeypatch.setattr(search_module, "load_query_embedder", lambda **_: object())
    monkeypatch.setattr(search_module, "embed_query_file", lambda **_: raw_query)
    results = search_module.search(index_dir=str(tmp_path / "idx"), query_path=str(query_file), k=6)
    searched = by_hand(catalogue=vectors, vectors=vectors, weights=None, similarity="cosine")
    expected = brute_force_ids(catalogue_ids=ids, searched=searched, similarity="cosine", k=6,
                               query=by_hand(catalogue=vectors, vectors=raw_query, weights=None,
                                             similarity="cosine")[0])
    assert [r["track_id"] for r in results] == expected
    assert expected != [t for t, _ in FaissIndex(track_ids=ids, vectors=vectors).search(queries=raw_query, k=6)[0]]


TAGS = {"title": ["Été", None, "夜"], "artist": ["Ané", "B", None], "album": ["A1", "A1", None],
        "album_artist": [None, "B", "C"], "track_number": [1, 2, None], "disc": [1, None, 2],
        "year": [1999, None, 2024], "genre": ["Jazz", None, "Ambient"], "duration_s": [201.5, 3.0, None],
        "path": ["/m/a.flac", "/m/b.ogg", None], "group": ["A1", "A1", None], "relative_path": ["a.flac", "b.ogg", None]}


@pytest.mark.parametrize("backend", BACKENDS)
def test_tag_columns_are_stored_and_returned_per_track(backend, tmp_path, opened):
    ids, vectors = skewed_catalogue(count=3, dim=4, seed=8)
    index = make_index(backend, tmp_path, track_ids=ids, vectors=vectors, metadata=TAGS, standardise=True)
    opened(index)
    index.save(str(tmp_path / "idx"))
    index.close()
    reopened = musicsim.index.open(str(tmp_path / "idx"))
    opened(reopened)
    for row, track_id in enumerate(ids):
        assert reopened.metadata(track_id=track_id) == {column: values[row] for column, values in TAGS.items()}
    assert set(reopened.metadata_columns) == set(TAGS)
    reopened.add(track_ids=["x"], vectors=vectors[:1] + 1, metadata={"title": ["Neu"]})
    assert reopened.metadata(track_id="x") == {column: ("Neu" if column == "title" else None) for column in TAGS}
    assert reopened.metadata(track_id=ids[0])["title"] == "Été"


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_save_bumps_the_version_that_read_version_reads_from_config_alone(backend, tmp_path, opened):
    ids, vectors = skewed_catalogue(count=10, dim=4, seed=9)
    folder = str(tmp_path / "idx")
    assert read_version(folder) is None
    index = make_index(backend, tmp_path, track_ids=ids[:5], vectors=vectors[:5])
    opened(index)
    generations = set()
    for expected in (1, 2, 3):
        index.save(folder)
        assert read_version(folder) == expected == index.version
        generations.add(json.loads((tmp_path / "idx" / "config.json").read_text())["generation"])
        if expected < 3:
            index.add(track_ids=[ids[4 + expected]], vectors=vectors[4 + expected:5 + expected])
    assert len(generations) == 3
    index.close()
    reopened = musicsim.index.open(folder)
    opened(reopened)
    assert reopened.version == 3
    if backend == "faiss":  # read_version needs config.json only
        os.remove(os.path.join(folder, "vectors.npy"))
        assert read_version(folder) == 3


def test_the_scans_files_in_an_index_folder_survive_every_write(tmp_path):
    ids, vectors = skewed_catalogue(count=10, dim=4, seed=10)
    folder = tmp_path / "idx"
    FaissIndex(track_ids=ids[:5], vectors=vectors[:5], standardise=True).save(str(folder))
    (folder / "scan-state.json").write_text('{"files": {}}')
    (folder / "scan-report.json").write_text('{"skipped": []}')
    index = musicsim.index.open(str(folder))
    index.add(track_ids=ids[5:], vectors=vectors[5:], replace=True)
    index.save(str(folder))
    assert (folder / "scan-state.json").read_text() == '{"files": {}}'
    assert (folder / "scan-report.json").read_text() == '{"skipped": []}'
    assert len(musicsim.index.open(str(folder))) == 10


@pytest.mark.parametrize("flag, expected", [([], False), (["--standardise"], True), (["--nostandardise"], False)])
def test_build_command_standardise_flag(tmp_path, capsys, flag, expected):
    from musicsim.index import main

    ids, vectors = skewed_catalogue(count=12, dim=4, seed=11)
    np.savez(tmp_path / "e.npz", track_ids=np.array(ids), embeddings=vectors)
    assert main(["musicsim-index", "build", f"--embeddings={tmp_path / 'e.npz'}", f"--output={tmp_path / 'idx'}",
                 "--model=mfcc", *flag]) == 0
    assert ("standardised" in capsys.readouterr().out) == expected
    index = musicsim.index.open(str(tmp_path / "idx"))
    assert index.standardise == expected
    np.testing.assert_allclose(index.raw_vector(track_id=ids[0]),
                               vectors[0] if expected else vectors[0] / np.linalg.norm(vectors[0]), rtol=1e-6)


def test_a_backend_is_added_by_its_class_and_one_registry_line(tmp_path, monkeypatch):
    """issue 23: backends live in one table; build, open and the rerank check look them up there."""
    from musicsim.index import build_index_from_vectors, registry

    class MemoryIndex(FaissIndex):
        backend = "memory"
        reranks = False

    monkeypatch.setitem(registry.BACKENDS, "memory", MemoryIndex)
    ids, vectors = skewed_catalogue(count=12, dim=4, seed=12)
    build_index_from_vectors(output=str(tmp_path / "idx"), track_ids=ids, vectors=vectors, backend="memory")
    assert json.loads((tmp_path / "idx" / "config.json").read_text())["backend"] == "memory"
    index = musicsim.index.open(str(tmp_path / "idx"))
    assert type(index) is MemoryIndex and len(index) == 12
    with pytest.raises(ValueError, match="the memory backend does not re-rank"):
        build_index_from_vectors(output=str(tmp_path / "b"), track_ids=ids, vectors=vectors, backend="memory",
                                 rerank="dba:k=2")
    with pytest.raises(ValueError, match="--uri and --collection are not for the memory backend"):
        build_index_from_vectors(output=str(tmp_path / "c"), track_ids=ids, vectors=vectors, backend="memory",
                                 uri="x.db")
    with pytest.raises(ValueError, match="backend must be one of"):
        build_index_from_vectors(output=str(tmp_path / "d"), track_ids=ids, vectors=vectors, backend="nosuch")
