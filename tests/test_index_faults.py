"""musicsim.index under bad input: folders that are not indexes, damaged index files, embeddings
files with bad ids or from another run, killed saves, bounded diversity re-ranking, and the
add / remove commands."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tracemalloc

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import write_fitted_model_config
from musicsim import index as index_module
from musicsim.search import query as search_module
import musicsim.index
from musicsim.index import FaissIndex, IndexFileError, load_embeddings, main, read_provenance


def catalogue(*, count: int = 40, dim: int = 6, seed: int = 0) -> tuple[list[str], np.ndarray]:
    rng = np.random.default_rng(seed)
    return [f"t{i:03d}" for i in range(count)], rng.standard_normal((count, dim)).astype(np.float32)


def write_parquet(path, *, track_ids, vectors, schema_metadata=None) -> str:
    table = pa.table({"track_id": pa.array(track_ids, type=pa.string()),
                      "embedding": pa.array([list(v) for v in vectors], type=pa.list_(pa.float32())),
                      "group": [f"g{i % 4}" for i in range(len(track_ids))]})
    if schema_metadata:
        table = table.replace_schema_metadata(schema_metadata)
    pq.write_table(table, str(path))
    return str(path)


# ---------------------------------------------------------------------------- output folders
def test_build_refuses_a_folder_that_is_not_an_index_and_keeps_its_files(tmp_path, capsys):
    ids, vectors = catalogue()
    embeddings = write_parquet(tmp_path / "e.parquet", track_ids=ids, vectors=vectors)
    folder = tmp_path / "V"
    (folder / "sub").mkdir(parents=True)
    (folder / "notes.txt").write_text("x")
    assert main(["musicsim-index", "build", f"--embeddings={embeddings}", f"--output={folder}"]) == 2
    assert "is not empty and is not an index (it holds notes.txt, sub;" in capsys.readouterr().err
    assert sorted(os.listdir(folder)) == ["notes.txt", "sub"] and (folder / "notes.txt").read_text() == "x"
    # An index with a stray file of someone else's is not replaced either.
    assert main(["musicsim-index", "build", f"--embeddings={embeddings}", f"--output={tmp_path / 'I'}"]) == 0
    (tmp_path / "I" / "mine.txt").write_text("keep")
    assert main(["musicsim-index", "build", f"--embeddings={embeddings}", f"--output={tmp_path / 'I'}"]) == 2
    assert (tmp_path / "I" / "mine.txt").read_text() == "keep"
    # --overwrite allows it.
    assert main(["musicsim-index", "build", f"--embeddings={embeddings}", f"--output={folder}", "--overwrite"]) == 0
    assert len(musicsim.index.open(str(folder))) == len(ids) and not (folder / "notes.txt").exists()


def test_build_replaces_its_own_index_and_an_empty_folder(tmp_path):
    ids, vectors = catalogue()
    (tmp_path / "empty").mkdir()
    for output in (tmp_path / "empty", tmp_path / "new"):
        FaissIndex(track_ids=ids, vectors=vectors).save(str(output))
        FaissIndex(track_ids=ids[:5], vectors=vectors[:5]).save(str(output))  # its own index: replaced
        assert len(musicsim.index.open(str(output))) == 5


def test_an_index_is_marked_as_ours_and_stays_replaceable_with_its_map_cache(tmp_path):
    from musicsim.search.catalog_map import catalog_map
    from musicsim.owned import owned_kind, write_manifest

    ids, vectors = catalogue()
    directory = str(tmp_path / "idx")
    FaissIndex(track_ids=ids, vectors=vectors).save(directory)
    assert owned_kind(directory) == "index"
    # A served index caches its map inside; the index is still its own to replace, and to add to.
    catalog_map(index=musicsim.index.open(directory), index_dir=directory)
    assert any(name.startswith("map-pca-") for name in os.listdir(directory))
    FaissIndex(track_ids=ids[:5], vectors=vectors[:5]).save(directory)
    assert len(musicsim.index.open(directory)) == 5 and owned_kind(directory) == "index"
    # An index written before the manifest (config.json marked, no musicsim.json) is replaced too.
    os.remove(os.path.join(directory, "musicsim.json"))
    FaissIndex(track_ids=ids, vectors=vectors).save(directory)
    assert len(musicsim.index.open(directory)) == len(ids)
    # Another kind of this project's folder is not an index.
    (tmp_path / "prepared").mkdir()
    (tmp_path / "prepared" / "tracks.csv").write_text("track_id\n")
    write_manifest(str(tmp_path / "prepared"), kind="dataset")
    with pytest.raises(IndexFileError, match="is not empty and is not an index"):
        FaissIndex(track_ids=ids, vectors=vectors).save(str(tmp_path / "prepared"))
    assert sorted(os.listdir(tmp_path / "prepared")) == ["musicsim.json", "tracks.csv"]


def test_save_never_deletes_a_backup_path_that_is_not_an_index(tmp_path):
    ids, vectors = catalogue()
    (tmp_path / "idx.bak").mkdir()
    (tmp_path / "idx.bak" / "photo.jpg").write_bytes(b"\xff\xd8")
    with pytest.raises(IndexFileError, match="idx.bak exists and is not an index"):
        FaissIndex(track_ids=ids, vectors=vectors).save(str(tmp_path / "idx"))
    assert (tmp_path / "idx.bak" / "photo.jpg").exists()


def test_a_killed_save_leaves_temporaries_that_the_next_save_removes(tmp_path):
    ids, vectors = catalogue()
    directory = tmp_path / "idx"
    FaissIndex(track_ids=ids, vectors=vectors).save(str(directory))
    # A save killed mid-write: a child process that is gone by now.
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(done.stdout)
    stale = tmp_path / f"idx.tmp-{dead_pid}-0123abcd"
    stale.mkdir()
    (stale / "vectors.npy").write_bytes(b"\0" * 1000)
    alive = tmp_path / f"idx.tmp-{os.getppid()}-89abcdef"  # a live process's save in progress
    alive.mkdir()
    unrelated = tmp_path / f"idx.tmp-{dead_pid}-notmine"  # not a name this code writes
    unrelated.mkdir()
    FaissIndex(track_ids=ids[:3], vectors=vectors[:3]).save(str(directory))
    assert sorted(os.listdir(tmp_path)) == sorted(["idx", alive.name, unrelated.name])


def test_a_save_killed_while_deleting_the_backup_never_blocks_the_next_save(tmp_path, monkeypatch):
    # A kill -9 in the middle of deleting the old version (seen once in a scan killed at a checkpoint) must not
    # leave a half-deleted idx.bak that no longer looks like an index: the next save would refuse it.
    from musicsim.index import storage

    ids, vectors = catalogue()
    directory = tmp_path / "idx"
    FaissIndex(track_ids=ids, vectors=vectors).save(str(directory))
    real_rmtree = storage.shutil.rmtree

    def killed_midway(path, *args, **kwargs):  # the manifest goes first, then the process dies
        for name in sorted(os.listdir(path)):
            if name.endswith(".json"):
                os.remove(os.path.join(path, name))
        raise KeyboardInterrupt

    monkeypatch.setattr(storage.shutil, "rmtree", killed_midway)
    with pytest.raises(KeyboardInterrupt):
        FaissIndex(track_ids=ids[:5], vectors=vectors[:5]).save(str(directory))
    monkeypatch.setattr(storage.shutil, "rmtree", real_rmtree)
    assert len(musicsim.index.open(str(directory))) == 5
    FaissIndex(track_ids=ids[:4], vectors=vectors[:4]).save(str(directory))
    assert len(musicsim.index.open(str(directory))) == 4


# ---------------------------------------------------------------------------- damaged index files
def _damage(directory, case: str) -> str:
    """Damage one file of a saved IVF index; returns the name of the damaged file."""
    if case == "empty vectors":
        (directory / "vectors.npy").write_bytes(b"")
        return "vectors.npy"
    if case == "overwritten vectors body":
        data = bytearray((directory / "vectors.npy").read_bytes())
        data[200:] = b"\xff" * (len(data) - 200)  # nan bit patterns after the header
        (directory / "vectors.npy").write_bytes(bytes(data))
        return "vectors.npy"
    if case == "rescaled vectors":
        vectors = np.load(directory / "vectors.npy")
        np.save(directory / "vectors.npy", vectors * 3.0)
        return "vectors.npy"
    if case == "corrupt faiss":
        data = bytearray((directory / "faiss.index").read_bytes())
        (directory / "faiss.index").write_bytes(bytes(data[:40]) + b"garbage" * 20)
        return "faiss.index"
    if case == "garbage config":
        (directory / "config.json").write_bytes(b"\x00\x01garbage{")
        return "config.json"
    if case == "config without count":
        config = json.loads((directory / "config.json").read_text())
        del config["count"]
        (directory / "config.json").write_text(json.dumps(config))
        return "config.json"
    if case == "garbage tracks":
        (directory / "tracks.json").write_text("[1, 2")
        return "tracks.json"
    if case == "tracks without ids":
        (directory / "tracks.json").write_text(json.dumps({"metadata": {}}))
        return "tracks.json"
    if case == "garbage labels":
        (directory / "labels.npy").write_bytes(b"not numpy at all")
        return "labels.npy"
    raise AssertionError(case)


@pytest.mark.parametrize("case, damage", [
    ("missing augmented vectors", lambda d: (d / "augmented_vectors.npy").unlink()),
    ("rescaled augmented vectors", lambda d: np.save(d / "augmented_vectors.npy",
                                                     np.load(d / "augmented_vectors.npy") * 2.0)),
    ("unknown method", lambda d: (d / "config.json").write_text(json.dumps(
        {**json.loads((d / "config.json").read_text()), "rerank": {"method": "kreciprocal"}}))),
])
def test_a_damaged_reranking_index_fails_on_load_naming_the_file(tmp_path, capsys, case, damage):
    from musicsim import rerank

    ids, vectors = catalogue(count=40, dim=8)
    directory = tmp_path / "idx"
    FaissIndex(track_ids=ids, vectors=vectors, rerank=rerank.parse_settings("dba:k=2")).save(str(directory))
    damage(directory)
    name = "config.json" if case == "unknown method" else "augmented_vectors.npy"
    with pytest.raises(IndexFileError, match=str(directory / name)):
        musicsim.index.open(str(directory))
    assert search_module.main(["musicsim-search", f"--index={directory}", f"--track_id={ids[0]}"]) == 2
    assert name in capsys.readouterr().err


@pytest.mark.parametrize("case", ["empty vectors", "overwritten vectors body", "rescaled vectors", "corrupt faiss",
                                  "garbage config", "config without count", "garbage tracks",
                                  "tracks without ids", "garbage labels"])
def test_a_damaged_index_fails_on_load_naming_the_file(tmp_path, capsys, case):
    ids, vectors = catalogue(count=200, dim=8)
    directory = tmp_path / "idx"
    FaissIndex(track_ids=ids, vectors=vectors, metadata={"group": [i % 5 for i in range(200)]},
                   approximate="ivf", nlist=4).save(str(directory))
    name = _damage(directory, case)
    with pytest.raises(IndexFileError, match=str(directory / name)):
        musicsim.index.open(str(directory))
    assert search_module.main(["musicsim-search", f"--index={directory}", f"--track_id={ids[0]}"]) == 2
    assert f"error: " in (err := capsys.readouterr().err) and name in err and "Traceback" not in err


def test_an_index_whose_model_makes_other_dimensions_is_refused(tmp_path):
    ids, vectors = catalogue()
    FaissIndex(track_ids=ids, vectors=vectors, model={"name": "mfcc", "dim": 40}).save(str(tmp_path / "i"))
    with pytest.raises(IndexFileError, match="makes 40-d embeddings"):
        musicsim.index.open(str(tmp_path / "i"))


# ---------------------------------------------------------------------------- embeddings files
def test_a_null_track_id_in_a_parquet_is_refused(tmp_path, capsys):
    ids, vectors = catalogue(count=5)
    path = write_parquet(tmp_path / "e.parquet", track_ids=[ids[0], None, *ids[2:]], vectors=vectors)
    with pytest.raises(ValueError, match=r"e.parquet: 1 rows have a null track_id \(first at row 1\)"):
        load_embeddings(path)
    assert main(["musicsim-index", "build", f"--embeddings={path}", f"--output={tmp_path / 'idx'}"]) == 2
    assert "null track_id" in capsys.readouterr().err and not (tmp_path / "idx").exists()


@pytest.mark.parametrize("ids, message", [(["a", "", "c"], "1 track ids are empty"),
                                          (["a", "b", "a"], "1 track ids appear more than once")])
def test_empty_or_duplicate_ids_are_refused_with_the_file(tmp_path, ids, message):
    vectors = np.ones((3, 2), dtype=np.float32)
    write_parquet(tmp_path / "e.parquet", track_ids=ids, vectors=vectors)
    np.save(tmp_path / "e.npy", vectors)
    (tmp_path / "e.ids.json").write_text(json.dumps(ids))
    for name in ("e.parquet", "e.npy"):
        with pytest.raises(ValueError, match=f"{name}: {message}"):
            load_embeddings(str(tmp_path / name))


def test_npy_ids_come_from_the_json_array_and_legacy_text_only_without_it(tmp_path):
    vectors = np.arange(6, dtype=np.float32).reshape(3, 2)
    np.save(tmp_path / "e.npy", vectors)
    (tmp_path / "e.ids.txt").write_text("x\ny\nz\n")
    assert load_embeddings(str(tmp_path / "e.npy"))[0] == ["x", "y", "z"]
    (tmp_path / "e.ids.json").write_text(json.dumps(["one", "two\nlines", "three"]))  # a newline in an id
    track_ids, loaded, _ = load_embeddings(str(tmp_path / "e.npy"))
    assert track_ids == ["one", "two\nlines", "three"]
    np.testing.assert_array_equal(loaded, vectors)
    (tmp_path / "e.ids.json").write_text(json.dumps(["one", 2, "three"]))
    with pytest.raises(ValueError, match="e.ids.json: expected a JSON array of track id strings"):
        load_embeddings(str(tmp_path / "e.npy"))


def test_build_takes_the_run_from_the_npy_meta_file_and_checks_its_dimension(tmp_path, capsys):
    ids, vectors = catalogue(dim=6)
    np.save(tmp_path / "e.npy", vectors)
    (tmp_path / "e.ids.json").write_text(json.dumps(ids))
    run = write_fitted_model_config(tmp_path / "run", name="mfcc", dim=6)
    (tmp_path / "e.meta.json").write_text(json.dumps({"model": "mfcc", "model_dir": run,
                                                      "similarity": "euclidean", "version": "1"}))
    assert read_provenance(str(tmp_path / "e.npy"))["model_dir"] == run
    assert main(["musicsim-index", "build", f"--embeddings={tmp_path / 'e.npy'}", f"--output={tmp_path / 'idx'}"]) == 0
    index = musicsim.index.open(str(tmp_path / "idx"))
    assert (index.model["model_dir"], index.model["name"], index.similarity) == (run, "mfcc", "euclidean")
    other = write_fitted_model_config(tmp_path / "run40", name="mfcc", dim=40)
    assert main(["musicsim-index", "build", f"--embeddings={tmp_path / 'e.npy'}", f"--output={tmp_path / 'idx2'}",
                 f"--model_dir={other}"]) == 2
    assert "holds 6-d embeddings but the run" in capsys.readouterr().err and not (tmp_path / "idx2").exists()


def test_build_refuses_a_run_that_does_not_exist(tmp_path, capsys):
    ids, vectors = catalogue()
    path = write_parquet(tmp_path / "e.parquet", track_ids=ids, vectors=vectors,
                         schema_metadata={"musicsim.model": "mfcc", "musicsim.model_dir": str(tmp_path / "gone")})
    assert main(["musicsim-index", "build", f"--embeddings={path}", f"--output={tmp_path / 'idx'}"]) == 2
    err = capsys.readouterr().err
    assert f"the run {tmp_path / 'gone'} (from the metadata of {path}) cannot be used" in err


def test_build_refuses_a_run_of_another_model(tmp_path, capsys):
    ids, vectors = catalogue()
    path = write_parquet(tmp_path / "e.parquet", track_ids=ids, vectors=vectors,
                         schema_metadata={"musicsim.model": "mfcc"})
    run = write_fitted_model_config(tmp_path / "run", name="librosa", dim=6)
    assert main(["musicsim-index", "build", f"--embeddings={path}", f"--output={tmp_path / 'idx'}",
                 f"--model_dir={run}"]) == 2
    assert "holds 'mfcc' embeddings but" in capsys.readouterr().err


# ---------------------------------------------------------------------------- diversity
def test_diversity_reranking_memory_is_linear_in_the_candidates():
    ids, vectors = catalogue(count=3000, dim=8)
    index = FaissIndex(track_ids=ids, vectors=vectors, similarity="euclidean")
    tracemalloc.start()
    try:
        results = index.search(queries=vectors[:1], k=3000, diversity=0.3)[0]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(results) == 3000 and len({t for t, _ in results}) == 3000
    # A [3000, 3000] similarity matrix alone is 36 MB (float32) or 72 MB (float64).
    assert peak < 8_000_000, f"peak {peak / 1e6:.1f} MB"


def test_diversity_with_k_beyond_the_pool_cap_is_a_clear_error(tmp_path, capsys):
    ids, vectors = catalogue(count=index_module.MAX_DIVERSITY_POOL + 5, dim=4)
    index = FaissIndex(track_ids=ids, vectors=vectors)
    with pytest.raises(ValueError, match="diversity re-ranking returns at most"):
        index.search(queries=vectors[:1], k=1_000_000, diversity=0.3)
    # k beyond a small catalogue is fine: every track, diversified
    assert len(index.search(queries=vectors[:1], k=10, diversity=0.3)[0]) == 10
    index.save(str(tmp_path / "idx"))
    assert search_module.main(["musicsim-search", f"--index={tmp_path / 'idx'}", f"--track_id={ids[0]}",
                               "-k", "1000000", "--diversity=0.3"]) == 2
    assert "at most" in capsys.readouterr().err


@pytest.mark.parametrize("arguments, message", [(["-k", "0"], "k must be a positive integer"),
                                                (["--diversity=1.5"], "diversity must be in"),
                                                (["--diversity=-0.1"], "diversity must be in"),
                                                (["--track_id=nope"], "unknown track id 'nope'"),
                                                (["-k", "ten"], "flag --k=ten: invalid literal"),
                                                (["--query=/no/such.wav"], "Exactly one of (query, track_id)"),
                                                (["--no_such_flag"], "Unknown command line flag")])
def test_search_cli_bad_parameters_exit_2(tmp_path, capsys, arguments, message):
    ids, vectors = catalogue()
    FaissIndex(track_ids=ids, vectors=vectors).save(str(tmp_path / "idx"))
    if not any(a.startswith("--track_id") for a in arguments):
        arguments = [f"--track_id={ids[0]}", *arguments]
    assert search_module.main(["musicsim-search", f"--index={tmp_path / 'idx'}", *arguments]) == 2
    assert message in capsys.readouterr().err


# ---------------------------------------------------------------------------- add / remove
def test_add_and_remove_commands(tmp_path, capsys):
    ids, vectors = catalogue(count=30)
    run = write_fitted_model_config(tmp_path / "run", name="mfcc", dim=6)
    metadata = {"musicsim.model": "mfcc", "musicsim.model_dir": run}
    first = write_parquet(tmp_path / "a.parquet", track_ids=ids[:20], vectors=vectors[:20], schema_metadata=metadata)
    more = write_parquet(tmp_path / "b.parquet", track_ids=ids[15:], vectors=vectors[15:] + 1.0,
                         schema_metadata=metadata)
    directory = tmp_path / "idx"
    assert main(["musicsim-index", "build", f"--embeddings={first}", f"--output={directory}"]) == 0
    assert main(["musicsim-index", "add", f"--index={directory}", f"--embeddings={more}"]) == 2
    assert "5 track ids are already in the index" in capsys.readouterr().err
    assert len(musicsim.index.open(str(directory))) == 20  # nothing changed
    assert main(["musicsim-index", "add", f"--index={directory}", f"--embeddings={more}", "--replace"]) == 0
    assert "added 10, replaced 5" in capsys.readouterr().out
    index = musicsim.index.open(str(directory))
    assert len(index) == 30
    np.testing.assert_allclose(index.vector(track_id=ids[16]), vectors[16] + 1.0)
    assert index.search(queries=vectors[25:26] + 1.0, k=1)[0][0][0] == ids[25]  # the new track is found
    assert main(["musicsim-index", "remove", f"--index={directory}", "--track_id", ids[25], ids[3]]) == 0
    index = musicsim.index.open(str(directory))
    assert len(index) == 28 and ids[25] not in index and ids[3] not in index
    assert ids[25] not in [t for t, _ in index.search(queries=vectors[25:26] + 1.0, k=28)[0]]
    assert main(["musicsim-index", "remove", f"--index={directory}", "--track_id=nope"]) == 2
    assert "unknown track ids: ['nope']" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path / "idx")) == ["config.json", "musicsim.json", "tracks.json", "vectors.npy"]


def test_add_refuses_another_model_or_dimension(tmp_path, capsys):
    ids, vectors = catalogue(count=10)
    run = write_fitted_model_config(tmp_path / "run", name="mfcc", dim=6)
    first = write_parquet(tmp_path / "a.parquet", track_ids=ids, vectors=vectors,
                          schema_metadata={"musicsim.model": "mfcc", "musicsim.model_dir": run})
    assert main(["musicsim-index", "build", f"--embeddings={first}", f"--output={tmp_path / 'idx'}"]) == 0
    other = write_fitted_model_config(tmp_path / "other", name="mfcc", dim=6)
    wrong_run = write_parquet(tmp_path / "b.parquet", track_ids=["n1"], vectors=vectors[:1],
                              schema_metadata={"musicsim.model": "mfcc", "musicsim.model_dir": other})
    assert main(["musicsim-index", "add", f"--index={tmp_path / 'idx'}", f"--embeddings={wrong_run}"]) == 2
    assert "but the index" in capsys.readouterr().err
    wrong_dim = write_parquet(tmp_path / "c.parquet", track_ids=["n2"], vectors=np.ones((1, 3), np.float32))
    assert main(["musicsim-index", "add", f"--index={tmp_path / 'idx'}", f"--embeddings={wrong_dim}"]) == 2
    assert "dimension mismatch" in capsys.readouterr().err
    assert len(musicsim.index.open(str(tmp_path / "idx"))) == 10
