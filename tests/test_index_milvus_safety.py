"""The Milvus backend loses nothing and says one clear line (issue 24 items 2, 3, 9), with Milvus Lite: a killed
--overwrite rebuild leaves the folder on its old, intact collection; a folder whose collection does not match its
config fails on load; the catalog's vectors are readable (the map); no grpc / milvus-lite traceback reaches the
user; a standardising index's writes go to a new collection, switched to on save."""
from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

import musicsim.index
from musicsim.index import FaissIndex, IndexFileError

pytestmark = pytest.mark.skipif(importlib.util.find_spec("pymilvus") is None
                                or importlib.util.find_spec("milvus_lite") is None, reason="no Milvus Lite")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
# The index command line, saying on stdout each batch it inserts into Milvus (so a test can kill it midway).
TRACED_CLI = ("import sys\nimport pymilvus\nfrom musicsim.index.cli import main\n"
              "insert = pymilvus.MilvusClient.insert\n"
              "def traced(self, collection_name, data, *args, **kwargs):\n"
              "    answer = insert(self, collection_name, data, *args, **kwargs)\n"
              "    print('inserted', collection_name, len(data), flush=True)\n"
              "    return answer\n"
              "pymilvus.MilvusClient.insert = traced\n"
              "sys.exit(main(['musicsim-index'] + sys.argv[1:]))\n")


def write_embeddings(path, *, count: int, dim: int = 8, seed: int = 0, prefix: str = "t") -> tuple[list[str], np.ndarray]:
    ids = [f"{prefix}{i:06d}" for i in range(count)]
    vectors = np.random.default_rng(seed).standard_normal((count, dim)).astype(np.float32)
    np.savez(path, track_ids=np.array(ids), embeddings=vectors)
    return ids, vectors


def run_cli(*arguments: str, traced: bool = False) -> subprocess.CompletedProcess:
    command = [sys.executable, "-c", TRACED_CLI, *arguments] if traced else [sys.executable, "-m", "musicsim.index",
                                                                            *arguments]
    return subprocess.run(command, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)


def collections(uri: str, names: list[str]) -> dict[str, int]:
    """The row count of each of ``names`` that is a collection of the Milvus Lite file (milvus-lite 3.2.2 cannot
    list its collections)."""
    from musicsim.index.milvus_client import connect, disconnect

    client = connect(uri=uri)
    try:
        return {name: int(client.query(name, filter="", output_fields=["count(*)"])[0]["count(*)"])
                for name in names if client.has_collection(name)}
    finally:
        disconnect(client=client, uri=uri)


def top_ids(index_dir: str, query: np.ndarray) -> list[str]:
    index = musicsim.index.open(index_dir)
    try:
        return [t for t, _ in index.search(queries=index.prepare_query(query[None]), k=5)[0]]
    finally:
        index.close()


def test_a_killed_overwrite_rebuild_keeps_the_old_catalog(tmp_path):
    uri, folder = str(tmp_path / "db" / "music.db"), str(tmp_path / "idx")
    small_ids, small = write_embeddings(tmp_path / "small.npz", count=24, seed=1, prefix="old")
    write_embeddings(tmp_path / "big.npz", count=40_000, seed=2, prefix="new")
    build = ["build", f"--output={folder}", "--backend=milvus", f"--uri={uri}", "--collection=music", "--model=x"]
    done = run_cli(*build, f"--embeddings={tmp_path / 'small.npz'}")
    assert done.returncode == 0, done.stderr
    before = top_ids(folder, small[3])
    rebuild = subprocess.Popen([sys.executable, "-c", TRACED_CLI, *build, f"--embeddings={tmp_path / 'big.npz'}",
                                "--overwrite"], cwd=ROOT, env=ENV, text=True, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    lines = [rebuild.stdout.readline() for _ in range(3)]  # three batches of the new catalog are in
    assert all(line.startswith("inserted music__g") for line in lines), (lines, rebuild.stderr.read())
    orphan = lines[0].split()[1]
    os.kill(rebuild.pid, signal.SIGKILL)
    assert rebuild.wait(timeout=60) == -signal.SIGKILL
    config = json.loads((tmp_path / "idx" / "config.json").read_text())
    assert config["collection"] == "music" and config["count"] == 24
    counts = collections(uri, ["music", orphan])
    assert counts["music"] == 24 and 0 < counts[orphan] < 40_000  # killed midway
    assert top_ids(folder, small[3]) == before and before[0] == small_ids[3]
    # A complete rebuild switches the folder to the new collection, then drops the old one.
    done = run_cli(*build, f"--embeddings={tmp_path / 'small.npz'}", "--overwrite")
    assert done.returncode == 0, done.stderr
    config = json.loads((tmp_path / "idx" / "config.json").read_text())
    assert config["collection"].startswith("music__g") and config["version"] == 2
    counts = collections(uri, ["music", config["collection"]])
    assert "music" not in counts and counts[config["collection"]] == 24
    assert top_ids(folder, small[3]) == before


@pytest.mark.parametrize("damage", ["rows deleted", "rows added", "collection dropped"])
def test_a_folder_whose_collection_does_not_match_its_config_fails_on_load(tmp_path, damage):
    from musicsim.index.milvus import MilvusIndex

    ids, vectors = write_embeddings(tmp_path / "e.npz", count=30)
    index = MilvusIndex(uri=str(tmp_path / "m.db"), collection="music", track_ids=ids, vectors=vectors)
    index.save(str(tmp_path / "idx"))
    client = index._client
    if damage == "rows deleted":
        client.delete("music", ids=ids[:4])
    elif damage == "rows added":
        index._insert(["extra"], vectors[:1] / np.linalg.norm(vectors[0]), {})
    else:
        client.drop_collection("music")
    index.close()
    message = "does not exist" if damage == "collection dropped" else \
        f"says the collection 'music' at {tmp_path / 'm.db'} holds 30 tracks, but it holds {26 if 'deleted' in damage else 31}"
    with pytest.raises(IndexFileError, match=message):
        musicsim.index.open(str(tmp_path / "idx"))
    searched = subprocess.run([sys.executable, "-m", "musicsim.search.query", f"--index={tmp_path / 'idx'}",
                               f"--track_id={ids[5]}"], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120)
    assert searched.returncode == 2 and searched.stdout == ""
    assert len(searched.stderr.splitlines()) == 1
    assert ("does not exist" if damage == "collection dropped" else "a write to it was interrupted") in searched.stderr


def test_the_catalog_vectors_of_milvus_are_the_faiss_ones_in_track_order(tmp_path):
    from musicsim.search import catalog_map
    from musicsim.index.milvus import MilvusIndex

    ids, vectors = write_embeddings(tmp_path / "e.npz", count=300)
    for standardise in (False, True):
        reference = FaissIndex(track_ids=ids, vectors=vectors, standardise=standardise)
        index = MilvusIndex(uri=str(tmp_path / f"m{standardise}.db"), collection="music", track_ids=ids,
                            vectors=vectors, standardise=standardise)
        try:
            order = [reference.track_ids.index(t) for t in index.track_ids]
            assert sorted(index.track_ids) == sorted(ids)
            np.testing.assert_allclose(index.vectors, reference.vectors[order], rtol=1e-5, atol=1e-6)
            assert len(catalog_map.content_digest(index=index, method="pca")) == 16
            index.remove(track_ids=ids[:10])
            assert len(index.vectors) == len(index.track_ids) == 290
        finally:
            index.close()


def test_builds_adds_and_lock_conflicts_say_one_clear_line(tmp_path):
    uri, folder = str(tmp_path / "m.db"), str(tmp_path / "idx")
    write_embeddings(tmp_path / "a.npz", count=50)
    write_embeddings(tmp_path / "b.npz", count=5, prefix="b")
    for arguments in (["build", f"--output={folder}", f"--embeddings={tmp_path / 'a.npz'}", "--backend=milvus",
                       f"--uri={uri}", "--collection=music", "--model=x"],
                      ["add", f"--index={folder}", f"--embeddings={tmp_path / 'b.npz'}"]):
        done = run_cli(*arguments)
        assert done.returncode == 0 and done.stderr == "", done.stderr
    holder = subprocess.Popen([sys.executable, "-c", "import sys\nimport musicsim.index\n"
                               "index = musicsim.index.open(sys.argv[1]); print('open', flush=True); sys.stdin.read()", folder],
                              cwd=ROOT, env=ENV, text=True, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline().strip() == "open"
        done = run_cli("remove", f"--index={folder}", "--track_id", "b0")
    finally:
        holder.communicate(input="", timeout=60)
    assert done.returncode == 2
    assert done.stderr.splitlines() == [f"error: cannot open the Milvus Lite file {uri}: another process has it open "
                                        "(Milvus Lite allows one process at a time on a file)"]


def test_a_standardising_milvus_index_writes_a_new_collection_and_drops_the_old_on_save(tmp_path):
    from musicsim.index.milvus import MilvusIndex

    ids, vectors = write_embeddings(tmp_path / "e.npz", count=60)
    uri = str(tmp_path / "m.db")
    index = MilvusIndex(uri=uri, collection="music", track_ids=ids[:40], vectors=vectors[:40], standardise=True)
    index.save(str(tmp_path / "idx"))
    index.add(track_ids=ids[40:], vectors=vectors[40:])
    assert index.collection.startswith("music__g") and index._client.has_collection("music")  # old kept until save
    index.save(str(tmp_path / "idx"))
    assert not index._client.has_collection("music")
    index.close()
    reopened = musicsim.index.open(str(tmp_path / "idx"))
    try:
        reference = FaissIndex(track_ids=ids, vectors=vectors, standardise=True)
        assert [t for t, _ in reopened.search_by_id(track_id=ids[7], k=8)] == \
            [t for t, _ in reference.search_by_id(track_id=ids[7], k=8)]
        np.testing.assert_allclose(reopened.catalog_statistics()[0], reference.catalog_statistics()[0], rtol=1e-6)
    finally:
        reopened.close()


def test_a_killed_add_to_a_standardising_milvus_index_keeps_the_old_catalog(tmp_path):
    uri, folder = str(tmp_path / "m.db"), str(tmp_path / "idx")
    ids, vectors = write_embeddings(tmp_path / "a.npz", count=30, seed=3)
    write_embeddings(tmp_path / "b.npz", count=20_000, seed=4, prefix="b")
    done = run_cli("build", f"--output={folder}", f"--embeddings={tmp_path / 'a.npz'}", "--backend=milvus",
                   f"--uri={uri}", "--collection=music", "--model=x", "--standardise")
    assert done.returncode == 0 and "standardised" in done.stdout, done.stderr
    before = top_ids(folder, vectors[2])
    adding = subprocess.Popen([sys.executable, "-c", TRACED_CLI, "add", f"--index={folder}",
                               f"--embeddings={tmp_path / 'b.npz'}"], cwd=ROOT, env=ENV, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    lines = [adding.stdout.readline() for _ in range(3)]
    assert all(line.startswith("inserted music__g") for line in lines), (lines, adding.stderr.read())
    os.kill(adding.pid, signal.SIGKILL)
    adding.wait(timeout=60)
    assert json.loads((tmp_path / "idx" / "config.json").read_text())["collection"] == "music"
    assert collections(uri, ["music"]) == {"music": 30}
    assert top_ids(folder, vectors[2]) == before
