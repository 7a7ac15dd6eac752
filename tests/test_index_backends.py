"""The same behaviour from every index backend: faiss (FaissIndex) and Milvus (MilvusIndex on a
Milvus Lite file). Exact search must agree with faiss, exclusions, updates and persistence must act
alike, and bad input must get the same errors."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from musicsim.search import query as search_module
import musicsim.index
from musicsim.index import FaissIndex, IndexBackend, IndexFileError, main, registry, storage
from musicsim.index.vectors import as_group_set, similarities_to

HAVE_MILVUS = importlib.util.find_spec("pymilvus") is not None and importlib.util.find_spec("milvus_lite") is not None
BACKENDS = ["faiss", pytest.param("milvus", marks=pytest.mark.skipif(
    not HAVE_MILVUS, reason="pymilvus / milvus-lite cannot be imported here"))]


def catalogue(*, count: int, dim: int, seed: int = 0, groups: int = 25) -> tuple[list[str], np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    return ([f"track{i:05d}" for i in range(count)], rng.standard_normal((count, dim)).astype(np.float32),
            [f"album{i % groups}" for i in range(count)])


def make_index(backend: str, folder, **arguments):
    """An index of ``backend`` over ``arguments`` (FaissIndex's); Milvus's lives in folder/milvus.db."""
    if backend == "faiss":
        return FaissIndex(**arguments)
    from musicsim.index.milvus import MilvusIndex

    return MilvusIndex(uri=str(folder / "milvus.db"), collection="tracks", **arguments)


@pytest.fixture
def opened():
    """Closes the indexes a test opens (Milvus Lite keeps its file locked while open)."""
    indexes = []
    yield indexes.append
    for index in indexes:
        index.close()


def ids_of(results):
    return [[track_id for track_id, _ in result] for result in results]


@pytest.mark.parametrize("similarity", ["cosine", "euclidean"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_exact_search_gives_the_same_top_k_as_faiss(backend, similarity, tmp_path, opened):
    ids, vectors, groups = catalogue(count=3000, dim=16)
    queries = np.random.default_rng(1).standard_normal((20, 16)).astype(np.float32)
    reference = FaissIndex(track_ids=ids, vectors=vectors, similarity=similarity)
    index = make_index(backend, tmp_path, track_ids=ids, vectors=vectors, similarity=similarity,
                       metadata={"group": groups})
    opened(index)
    assert len(index) == 3000 and index.dim == 16
    expected = reference.search(queries=queries, k=10)
    found = index.search(queries=queries, k=10)
    assert ids_of(found) == ids_of(expected)
    np.testing.assert_allclose([[s for _, s in r] for r in found], [[s for _, s in r] for r in expected],
                               rtol=1e-5, atol=1e-5)
    # Diversity re-ranks the same candidate pool the same way.
    assert ids_of(index.search(queries=queries[:3], k=5, diversity=0.5)) == \
        ids_of(reference.search(queries=queries[:3], k=5, diversity=0.5))


@pytest.mark.parametrize("backend", BACKENDS)
def test_ivf_takes_the_same_parameters_and_visiting_every_list_is_exact(backend, tmp_path, opened):
    ids, vectors, _ = catalogue(count=2000, dim=8)
    queries = np.random.default_rng(2).standard_normal((10, 8)).astype(np.float32)
    index = make_index(backend, tmp_path, track_ids=ids, vectors=vectors, approximate="ivf", nlist=8, nprobe=2)
    index.save(str(tmp_path / "idx"))
    index.close()
    reopened = musicsim.index.open(str(tmp_path / "idx"))  # Milvus Lite searches its IVF lists once reopened
    opened(reopened)
    assert (reopened.approximate, reopened.nlist, reopened.nprobe) == ("ivf", 8, 2)
    exact = FaissIndex(track_ids=ids, vectors=vectors).search(queries=queries, k=10)
    assert ids_of(reopened.search(queries=queries, k=10, nprobe=8)) == ids_of(exact)
    narrow = ids_of(reopened.search(queries=queries, k=10, nprobe=1))
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(narrow, ids_of(exact))])
    assert recall < 1.0  # one list of eight: the IVF lists are really used


@pytest.mark.parametrize("backend", BACKENDS)
def test_exclusion_by_id_and_by_group(backend, tmp_path, opened):
    ids, vectors, groups = catalogue(count=500, dim=8, groups=10)
    groups[7] = None  # a track without a group is never excluded by a group
    reference = FaissIndex(track_ids=ids, vectors=vectors, metadata={"group": groups})
    index = make_index(backend, tmp_path, track_ids=ids, vectors=vectors, metadata={"group": groups})
    opened(index)
    queries = vectors[[0, 1, 7]]
    exclude_ids = [[ids[0], ids[3]], [ids[1]], []]
    exclude_groups = [["album0"], ["album1", "album2"], ["album3"]]
    found = index.search(queries=queries, k=20, exclude_ids=exclude_ids, exclude_groups=exclude_groups)
    assert ids_of(found) == ids_of(reference.search(queries=queries, k=20, exclude_ids=exclude_ids,
                                                    exclude_groups=exclude_groups))
    for result, excluded, excluded_groups in zip(found, exclude_ids, exclude_groups):
        assert len(result) == 20
        assert not {t for t, _ in result} & set(excluded)
        assert all(groups[ids.index(t)] not in excluded_groups for t, _ in result)
    assert found[2][0][0] == ids[7]  # the group-less query track itself, first
    by_id = index.search_by_id(track_id=ids[5], k=10, exclude_same_group=True)
    assert ids_of([by_id]) == ids_of([reference.search_by_id(track_id=ids[5], k=10, exclude_same_group=True)])
    assert ids[5] not in ids_of([by_id])[0] and all(groups[ids.index(t)] != "album5" for t, _ in by_id)


@pytest.mark.parametrize("backend", BACKENDS)
def test_add_then_search_finds_the_track_and_remove_then_never_returns_it(backend, tmp_path, opened):
    ids, vectors, groups = catalogue(count=400, dim=8)
    index = make_index(backend, tmp_path, track_ids=ids[:300], vectors=vectors[:300],
                       metadata={"group": groups[:300]})
    opened(index)
    index.add(track_ids=ids[300:], vectors=vectors[300:], metadata={"group": groups[300:], "path": ["/a.ogg"] * 100})
    assert len(index) == 400 and ids[350] in index
    assert index.search(queries=vectors[350:351], k=1)[0][0][0] == ids[350]
    assert index.metadata(track_id=ids[350]) == {"group": groups[350], "path": "/a.ogg"}
    assert index.metadata(track_id=ids[3])["path"] is None
    index.remove(track_ids=[ids[350], ids[10]])
    assert len(index) == 398 and ids[350] not in index and ids[10] not in index
    everything = index.search(queries=vectors[[350, 10]], k=400)
    assert all(len(r) == 398 and ids[350] not in [t for t, _ in r] and ids[10] not in [t for t, _ in r]
               for r in everything)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_saved_index_reopens_with_the_same_answers(backend, tmp_path, opened):
    ids, vectors, groups = catalogue(count=600, dim=12)
    index = make_index(backend, tmp_path, track_ids=ids, vectors=vectors, similarity="euclidean",
                       metadata={"group": groups, "path": [f"/m/{t}.ogg" for t in ids]},
                       model={"name": "mfcc", "dim": 12})
    before = index.search(queries=vectors[:5], k=7, exclude_groups=[["album1"]] * 5)
    index.save(str(tmp_path / "idx"))
    index.close()
    config = json.loads((tmp_path / "idx" / "config.json").read_text())
    assert config["backend"] == backend and config["format"] == "musicsim.index"
    reopened = musicsim.index.open(str(tmp_path / "idx"))
    opened(reopened)
    assert (type(reopened).__name__, reopened.backend) == (type(index).__name__, backend)
    assert (len(reopened), reopened.dim, reopened.similarity, reopened.model) == (600, 12, "euclidean", index.model)
    assert reopened.search(queries=vectors[:5], k=7, exclude_groups=[["album1"]] * 5) == before
    assert reopened.track_id_of_path(path=f"/m/{ids[9]}.ogg") == ids[9]
    assert sorted(reopened.track_ids) == ids
    assert reopened.metadata_columns == ["group", "path"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_unknown_ids_and_wrong_dimensions_get_the_same_errors(backend, tmp_path, opened):
    ids, vectors, groups = catalogue(count=50, dim=6)
    index = make_index(backend, tmp_path, track_ids=ids, vectors=vectors, metadata={"group": groups})
    opened(index)
    with pytest.raises(ValueError, match=r"unknown track id 'nope' \(index holds 50 tracks\)"):
        index.search_by_id(track_id="nope")
    with pytest.raises(ValueError, match=r"unknown track ids: \['nope'\]"):
        index.remove(track_ids=[ids[0], "nope"])
    assert ids[0] in index  # nothing was removed
    with pytest.raises(ValueError, match="query dimension mismatch: expected 6"):
        index.search(queries=np.ones((1, 5)))
    with pytest.raises(ValueError, match="vectors dimension mismatch: expected 6"):
        index.add(track_ids=["new"], vectors=np.ones((1, 7)))
    with pytest.raises(ValueError, match=r"track ids already in the index: \['track00001'\]"):
        index.add(track_ids=[ids[1]], vectors=np.ones((1, 6)))
    with pytest.raises(ValueError, match="k must be a positive integer"):
        index.search(queries=vectors[:1], k=0)
    with pytest.raises(ValueError, match="diversity must be in"):
        index.search(queries=vectors[:1], diversity=2.0)
    assert len(index) == 50


# ---------------------------------------------------------------------------- milvus only
needs_milvus = pytest.mark.skipif(not HAVE_MILVUS, reason="pymilvus / milvus-lite cannot be imported here")


def write_parquet(path, *, ids, vectors, groups) -> str:
    table = pa.table({"track_id": ids, "embedding": pa.array([list(v) for v in vectors], type=pa.list_(pa.float32())),
                      "group": groups, "path": [f"/music/{t}.ogg" for t in ids]})
    pq.write_table(table.replace_schema_metadata({"musicsim.model": "mfcc"}), str(path))
    return str(path)


@needs_milvus
def test_milvus_through_the_command_lines(tmp_path, capsys):
    ids, vectors, groups = catalogue(count=200, dim=8)
    first = write_parquet(tmp_path / "a.parquet", ids=ids[:150], vectors=vectors[:150], groups=groups[:150])
    more = write_parquet(tmp_path / "b.parquet", ids=ids[150:], vectors=vectors[150:], groups=groups[150:])
    uri, directory = str(tmp_path / "db" / "music.db"), str(tmp_path / "idx")
    assert main(["musicsim-index", "build", f"--embeddings={first}", f"--output={directory}", "--backend=milvus",
                 f"--uri={uri}", "--collection=music"]) == 0
    assert "MilvusIndex: 150 tracks, dim 8, cosine, exact, collection music" in capsys.readouterr().out
    # a second build into the same collection is refused
    assert main(["musicsim-index", "build", f"--embeddings={first}", f"--output={tmp_path / 'idx2'}",
                 "--backend=milvus", f"--uri={uri}", "--collection=music"]) == 2
    assert "the collection 'music' already exists" in capsys.readouterr().err
    assert main(["musicsim-index", "add", f"--index={directory}", f"--embeddings={more}"]) == 0
    assert main(["musicsim-index", "remove", f"--index={directory}", "--track_id", ids[160]]) == 0
    capsys.readouterr()
    assert search_module.main(["musicsim-search", f"--index={directory}", f"--track_id={ids[170]}", "-k", "5",
                               "--exclude_same_group", "--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    reference = FaissIndex(track_ids=[t for t in ids if t != ids[160]],
                               vectors=np.delete(vectors, 160, axis=0),
                               metadata={"group": [g for i, g in enumerate(groups) if i != 160]})
    assert [r["track_id"] for r in results] == \
        [t for t, _ in reference.search_by_id(track_id=ids[170], k=5, exclude_same_group=True)]
    assert all(r["group"] != groups[170] and r["path"] == f"/music/{r['track_id']}.ogg" for r in results)
    assert json.loads((tmp_path / "idx" / "config.json").read_text())["count"] == 199


@needs_milvus
def test_a_second_process_on_a_milvus_lite_file_fails_clearly(tmp_path, opened):
    ids, vectors, _ = catalogue(count=20, dim=4)
    index = make_index("milvus", tmp_path, track_ids=ids, vectors=vectors)
    opened(index)
    index.save(str(tmp_path / "idx"))
    code = ("import sys\nimport musicsim.index\n"
            "try:\n    musicsim.index.open(sys.argv[1])\nexcept ValueError as error:\n    print(error)\n")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "idx")], capture_output=True, text=True,
                          timeout=120, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert "another process has it open (Milvus Lite allows one process at a time" in done.stdout, done.stderr
    index.close()  # frees the file: now the other process can open it
    code = "import sys\nimport musicsim.index\nprint(len(musicsim.index.open(sys.argv[1])))\n"
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "idx")], capture_output=True, text=True,
                          timeout=120, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert done.stdout.strip() == "20", done.stderr


@needs_milvus
def test_milvus_index_errors(tmp_path, opened):
    from musicsim.index.milvus import MilvusIndex

    ids, vectors, _ = catalogue(count=20, dim=4)
    with pytest.raises(IndexFileError, match="must end in .db"):
        MilvusIndex(uri=str(tmp_path / "milvus"), collection="c", track_ids=ids, vectors=vectors)
    index = make_index("milvus", tmp_path, track_ids=ids, vectors=vectors)
    opened(index)
    with pytest.raises(IndexFileError, match="lies inside it"):
        index.save(str(tmp_path))
    index.save(str(tmp_path / "idx"))
    index.close()
    config = json.loads((tmp_path / "idx" / "config.json").read_text())
    (tmp_path / "idx" / "config.json").write_text(json.dumps(dict(config, collection="gone")))
    with pytest.raises(IndexFileError, match="names the collection 'gone', which does not exist"):
        musicsim.index.open(str(tmp_path / "idx"))


def test_the_milvus_backend_refuses_reranking_with_exit_2(tmp_path, capsys):
    ids, vectors, groups = catalogue(count=30, dim=8)
    embeddings = write_parquet(tmp_path / "a.parquet", ids=ids, vectors=vectors, groups=groups)
    uri = str(tmp_path / "db" / "music.db")
    assert main(["musicsim-index", "build", f"--embeddings={embeddings}", f"--output={tmp_path / 'idx'}",
                 "--backend=milvus", f"--uri={uri}", "--collection=music", "--rerank=dba+aqe:k=3"]) == 2
    assert "the milvus backend does not re-rank" in capsys.readouterr().err
    assert not (tmp_path / "idx").exists() and not os.path.exists(uri)
    # The same file and setting make a re-ranking faiss index.
    assert main(["musicsim-index", "build", f"--embeddings={embeddings}", f"--output={tmp_path / 'faiss'}",
                 "--rerank=dba+aqe:k=3"]) == 0
    assert musicsim.index.open(str(tmp_path / "faiss")).rerank.method == "dba+aqe"


@needs_milvus
def test_closing_one_milvus_index_leaves_another_on_the_same_file_working(tmp_path, opened):
    # pymilvus shares one connection per address: serve's live reload closes the old version while the new one
    # (same file, another collection) keeps answering.
    from musicsim.index.milvus import MilvusIndex

    ids, vectors, _ = catalogue(count=30, dim=8)
    first = make_index("milvus", tmp_path, track_ids=ids, vectors=vectors)
    second = MilvusIndex(uri=str(tmp_path / "milvus.db"), collection="other", track_ids=ids[:10], vectors=vectors[:10])
    opened(second)
    first.close()
    assert ids_of(second.search(queries=vectors[:1], k=3))[0][0] == ids[0]


# ---------------------------------------------------------------------- a backend added by a test
class BruteForceIndex(IndexBackend):
    """A whole backend in one class, as a new backend's module would hold it: exact search by a numpy matrix
    product, its vectors and tracks in the index folder (vectors.npy, tracks.json, config.json). Added to the
    table by one line (``registry.BACKENDS["brute"] = BruteForceIndex``), nothing else."""

    backend = "brute"
    searches = 0  # searches answered by this class, so a test sees the table was used

    def __init__(self, *, track_ids, vectors, similarity="cosine", metadata=None, model=None, approximate=None,
                 standardise=False, dimension_weights=None):
        if approximate is not None or standardise or dimension_weights is not None:
            raise ValueError("the brute backend searches exactly and does not standardise")
        self.similarity, self.approximate, self.model = similarity, None, dict(model or {})
        self._ids = self._check_ids(track_ids, name="track_ids")
        self._vectors = self._check_vectors(vectors, count=len(self._ids), dim=None, name="vectors", ids=self._ids)
        self._dim = int(self._vectors.shape[1])
        self._metadata = self._check_metadata(metadata, count=len(self._ids))

    def __len__(self):
        return len(self._ids)

    def __contains__(self, track_id):
        return track_id in self._ids

    @property
    def track_ids(self):
        return list(self._ids)

    @property
    def metadata_columns(self):
        return sorted(self._metadata)

    @property
    def vectors(self):
        return self._vectors.copy()

    def _row(self, track_id):
        if track_id not in self._ids:
            raise ValueError(f"unknown track id {track_id!r}")
        return self._ids.index(track_id)

    def vector(self, *, track_id):
        return self._vectors[self._row(track_id)].copy()

    def metadata(self, *, track_id):
        row = self._row(track_id)
        return {column: values[row] for column, values in self._metadata.items()}

    def track_id_of_path(self, *, path):
        paths = self._metadata.get("path", [])
        return next((t for t, p in zip(self._ids, paths) if p and os.path.realpath(p) == os.path.realpath(path)), None)

    def summary(self):
        return f"BruteForceIndex: {len(self)} tracks, dim {self._dim}, {self.similarity}"

    def search(self, *, queries, k=10, exclude_ids=None, exclude_groups=None, diversity=0.0, candidate_pool=None,
               nprobe=None, ef_search=None, query_model=None, rerank=True, query_track_ids=None):
        k, matrix = self._check_search_arguments(queries=queries, k=k, exclude_ids=exclude_ids,
                                                 exclude_groups=exclude_groups, diversity=diversity,
                                                 candidate_pool=candidate_pool, query_model=query_model)
        type(self).searches += 1
        groups = self._metadata.get("group", [None] * len(self._ids))
        results = []
        for q, query in enumerate(matrix):
            scores = similarities_to(vectors=self._vectors, vector=query, similarity=self.similarity)
            left_out = as_group_set(None if exclude_ids is None else exclude_ids[q])
            left_out_groups = as_group_set(None if exclude_groups is None else exclude_groups[q])
            kept = [row for row in np.argsort(-scores, kind="stable").tolist()
                    if self._ids[row] not in left_out and groups[row] not in left_out_groups]
            results.append([(self._ids[row], float(scores[row])) for row in kept[:k]])
        return results

    def add(self, *, track_ids, vectors, metadata=None, replace=False):
        ids = self._check_ids(track_ids, name="track_ids")
        if replace:
            self.remove(track_ids=[t for t in ids if t in self])
        elif any(t in self for t in ids):
            raise ValueError("track ids already in the index")
        matrix = self._check_vectors(vectors, count=len(ids), dim=self._dim, name="vectors", ids=ids)
        columns = self._check_metadata(metadata, count=len(ids))
        for column in set(self._metadata) | set(columns):
            self._metadata[column] = (self._metadata.get(column, [None] * len(self._ids))
                                      + columns.get(column, [None] * len(ids)))
        self._ids, self._vectors = self._ids + ids, np.concatenate([self._vectors, matrix])

    def remove(self, *, track_ids):
        keep = [row for row, t in enumerate(self._ids) if t not in set(track_ids)]
        self._ids, self._vectors = [self._ids[row] for row in keep], self._vectors[keep]
        self._metadata = {c: [values[row] for row in keep] for c, values in self._metadata.items()}

    def save(self, directory, *, overwrite=False):
        def write_files(temp, version):
            np.save(os.path.join(temp, "vectors.npy"), self._vectors)
            storage.write_json_synced(os.path.join(temp, "tracks.json"),
                                      {"track_ids": self._ids, "metadata": self._metadata})
            storage.write_json_synced(os.path.join(temp, storage.CONFIG_FILE), storage.config_entries(
                backend=self.backend, similarity=self.similarity, dim=self._dim, count=len(self), model=self.model,
                version=version))

        self.version = storage.save_index_directory(directory=directory, write_files=write_files, overwrite=overwrite)

    @classmethod
    def open_directory(cls, *, source, config):
        with open(os.path.join(source, "tracks.json")) as f:
            tracks = json.load(f)
        index = cls(track_ids=tracks["track_ids"], vectors=np.load(os.path.join(source, "vectors.npy")),
                    similarity=config["similarity"], metadata=tracks["metadata"], model=config["model"])
        index.version = config["version"]
        return index


def test_a_backend_added_to_the_table_builds_opens_and_searches_from_the_command_lines(tmp_path, capsys,
                                                                                       monkeypatch):
    """issue 23: a new backend is its class and one line in the table; the command lines, ``musicsim.index.open``
    and search then use it, and nothing else names it."""
    ids, vectors, groups = catalogue(count=60, dim=6, seed=3, groups=6)
    first = write_parquet(tmp_path / "a.parquet", ids=ids[:50], vectors=vectors[:50], groups=groups[:50])
    more = write_parquet(tmp_path / "b.parquet", ids=ids[50:], vectors=vectors[50:], groups=groups[50:])
    directory = str(tmp_path / "idx")
    build = ["musicsim-index", "build", f"--embeddings={first}", f"--output={directory}", "--backend=brute"]
    assert main(build) == 2  # not in the table yet: refused like any unknown backend, and nothing written
    assert "--backend=brute" in capsys.readouterr().err and not os.path.exists(directory)

    monkeypatch.setitem(registry.BACKENDS, "brute", BruteForceIndex)  # the table line
    assert main(build) == 0
    assert "BruteForceIndex: 50 tracks, dim 6, cosine" in capsys.readouterr().out
    assert json.loads((tmp_path / "idx" / "config.json").read_text())["backend"] == "brute"
    assert main(["musicsim-index", "add", f"--index={directory}", f"--embeddings={more}"]) == 0
    assert main(["musicsim-index", "remove", f"--index={directory}", "--track_id", ids[7]]) == 0
    opened = musicsim.index.open(directory)
    assert type(opened) is BruteForceIndex and len(opened) == 59 and ids[7] not in opened

    capsys.readouterr()
    searches = BruteForceIndex.searches
    assert search_module.main(["musicsim-search", f"--index={directory}", f"--track_id={ids[55]}", "-k", "5",
                               "--exclude_same_group", "--json"]) == 0
    assert BruteForceIndex.searches == searches + 1
    results = json.loads(capsys.readouterr().out)
    kept = [row for row in range(60) if row != 7]
    reference = FaissIndex(track_ids=[ids[row] for row in kept], vectors=vectors[kept],
                           metadata={"group": [groups[row] for row in kept]})
    assert [r["track_id"] for r in results] == \
        [t for t, _ in reference.search_by_id(track_id=ids[55], k=5, exclude_same_group=True)]
    assert all(r["group"] != groups[55] and r["path"] == f"/music/{r['track_id']}.ogg" for r in results)

    monkeypatch.delitem(registry.BACKENDS, "brute")  # a folder of a backend this code lacks: a clear error
    with pytest.raises(IndexFileError, match="unknown backend 'brute'"):
        musicsim.index.open(directory)
