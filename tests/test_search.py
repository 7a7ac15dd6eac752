"""musicsim.search.query: the k most similar tracks to a track of the index or to an audio file."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from experiments.export import export_embeddings
from musicsim.embedder import load_embedder
import musicsim.index
from musicsim.index import FaissIndex, build_index
from musicsim.search.query import main, search
from test_export import train_tiny_run

TRACK = "low_sine/t3"  # ids of a folder export: the path under the audio folder, without extension
ALBUMS = ("low_sine", "bright_square", "noisy_mid", "high_pulse")


@pytest.fixture(scope="session")
def tiny_run(synthetic_dataset, tmp_path_factory) -> str:
    return train_tiny_run(dataset_dir=synthetic_dataset,
                          model_dir=str(tmp_path_factory.getbasetemp() / "tiny_wavenet_run"))


@pytest.fixture(scope="module")
def audio_dir(synthetic_dataset) -> str:
    return os.path.join(os.path.dirname(synthetic_dataset), "audio")


@pytest.fixture(scope="module")
def index_dir(tiny_run, audio_dir, tmp_path_factory) -> str:
    """The synthetic albums exported with the tiny run and indexed (cosine), with its model_dir."""
    folder = tmp_path_factory.mktemp("search")
    export_embeddings(model_dir=tiny_run, audio=audio_dir, output=str(folder / "emb.parquet"), workers=1,
                      progress=False)
    build_index(embeddings=str(folder / "emb.parquet"), output=str(folder / "index"), model_dir=tiny_run)
    return str(folder / "index")


@pytest.mark.parametrize("track_id", [TRACK, "noisy_mid/t0", "high_pulse/t7"])
def test_a_track_is_its_own_nearest_neighbour_when_not_excluded(index_dir, track_id):
    results = search(index_dir=index_dir, track_id=track_id, k=3, exclude_self=False)
    assert results[0]["track_id"] == track_id
    assert results[0]["score"] == pytest.approx(1.0, abs=1e-5)


def test_query_by_id_excludes_itself_and_ranks_by_score(index_dir, audio_dir):
    results = search(index_dir=index_dir, track_id=TRACK, k=5)
    assert len(results) == 5 and TRACK not in [r["track_id"] for r in results]
    assert [r["rank"] for r in results] == [1, 2, 3, 4, 5]
    scores = [r["score"] for r in results]
    assert scores == sorted(scores, reverse=True)
    for r in results:
        assert r["path"] == os.path.join(audio_dir, r["track_id"] + ".wav")
        assert r["group"] == r["track_id"].split("/")[0]
    # The scores are the cosine similarities of the stored vectors.
    index = musicsim.index.open(index_dir)
    query = index.vector(track_id=TRACK)
    for r in results:
        assert r["score"] == pytest.approx(float(query @ index.vector(track_id=r["track_id"])), abs=1e-5)


def test_exclude_same_group_leaves_out_the_album(index_dir):
    results = search(index_dir=index_dir, track_id=TRACK, k=10, exclude_same_group=True)
    assert len(results) == 10 and all(r["group"] != "low_sine" for r in results)


def test_query_by_file_finds_the_file_first(index_dir, audio_dir):
    path = os.path.join(audio_dir, TRACK + ".wav")
    results = search(index_dir=index_dir, query_path=path, k=4)
    assert results[0]["track_id"] == TRACK and results[0]["score"] == pytest.approx(1.0, abs=1e-5)
    by_id = search(index_dir=index_dir, track_id=TRACK, k=4, exclude_self=False)
    assert [r["track_id"] for r in results] == [r["track_id"] for r in by_id]
    np.testing.assert_allclose([r["score"] for r in results], [r["score"] for r in by_id], atol=1e-5)


def test_cli_json_lists_k_results_best_first(index_dir, capsys):
    assert main(["musicsim-search", "--index", index_dir, "--track_id", TRACK, "-k", "6", "--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert len(results) == 6
    assert all(set(r) == {"rank", "track_id", "score", "path", "group"} for r in results)
    scores = [r["score"] for r in results]
    assert scores == sorted(scores, reverse=True)


def test_cli_table_by_file_without_its_album(index_dir, audio_dir, capsys):
    query = os.path.join(audio_dir, TRACK + ".wav")
    assert main(["musicsim-search", "--index", index_dir, "--query", query, "-k", "3", "--exclude_same_group"]) == 0
    lines = capsys.readouterr().out.strip().split("\n")
    assert lines[0].split() == ["rank", "score", "track_id", "group", "path"] and len(lines) == 4
    for rank, line in enumerate(lines[1:], start=1):
        fields = line.split()
        assert fields[0] == str(rank) and fields[3] != "low_sine" and fields[3] in ALBUMS
        assert fields[4] == os.path.join(audio_dir, fields[2] + ".wav")


def test_cli_runs_as_a_module(index_dir):
    done = subprocess.run([sys.executable, "-m", "musicsim.search.query", f"--index={index_dir}", "--track_id=nope"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "unknown track id 'nope'" in done.stderr


@pytest.fixture(scope="module")
def bare_index(index_dir, tmp_path_factory) -> str:
    """The same vectors, indexed without a model_dir."""
    index = musicsim.index.open(index_dir)
    path = str(tmp_path_factory.mktemp("bare") / "index")
    FaissIndex(track_ids=index.track_ids, vectors=index.vectors).save(path)
    return path


@pytest.fixture(scope="module")
def wrong_dim_index(tiny_run, tmp_path_factory) -> str:
    """7-d vectors indexed as if they came from the tiny (16-d) run."""
    path = str(tmp_path_factory.mktemp("wrong_dim") / "index")
    vectors = np.random.default_rng(0).standard_normal((5, 7))
    FaissIndex(track_ids=[f"t{i}" for i in range(5)], vectors=vectors,
                   model={"name": "wavenet", "model_dir": tiny_run}).save(path)
    return path


@pytest.mark.parametrize("case, kwargs, error, message", [
    ("unknown id", dict(track_id="no/such"), ValueError, "unknown track id 'no/such'"),
    ("two queries", dict(track_id=TRACK, query_path="QUERY"), ValueError, "exactly one query"),
    ("no query", dict(), ValueError, "exactly one query"),
    ("no model_dir", dict(index="bare", query_path="QUERY"), ValueError, "without a model_dir"),
    ("dimension", dict(index="wrong_dim", query_path="QUERY"), ValueError, "dimension mismatch"),
    ("missing file", dict(query_path="/no/such.wav"), FileNotFoundError, "does not exist"),
    ("not audio", dict(query_path="TEXT"), ValueError, "cannot embed the query"),
    ("group of an outside file", dict(query_path="OUTSIDE", exclude_same_group=True), ValueError,
     "needs the file to be in the index"),
    ("bad k", dict(track_id=TRACK, k=0), ValueError, "k must be a positive integer"),
    ("bad diversity", dict(track_id=TRACK, diversity=1.5), ValueError, "diversity must be in"),
])
def test_search_errors(index_dir, bare_index, wrong_dim_index, audio_dir, tmp_path, case, kwargs, error, message):
    text = tmp_path / "notes.wav"
    text.write_text("not audio\n" * 100)
    outside = tmp_path / "outside.wav"
    outside.write_bytes(open(os.path.join(audio_dir, "low_sine", "t0.wav"), "rb").read())
    files = {"QUERY": os.path.join(audio_dir, TRACK + ".wav"), "TEXT": str(text), "OUTSIDE": str(outside)}
    kwargs = {k: files.get(v, v) if isinstance(v, str) else v for k, v in kwargs.items()}
    index = {"bare": bare_index, "wrong_dim": wrong_dim_index}.get(kwargs.pop("index", None), index_dir)
    with pytest.raises(error, match=message):
        search(index_dir=index, **kwargs)


def test_cli_reports_errors_on_stderr(index_dir, capsys):
    assert main(["musicsim-search", "--index", index_dir, "--track_id", "no/such"]) == 2
    assert "error: unknown track id 'no/such'" in capsys.readouterr().err
    assert main(["musicsim-search", "--index", index_dir]) == 2
    assert "Exactly one of (query, track_id) must have a value" in capsys.readouterr().err


def test_the_index_and_the_runs_embedder_agree(index_dir, tiny_run):
    index = musicsim.index.open(index_dir)
    embedder = load_embedder(index.model["model_dir"])
    assert (embedder.dim, embedder.similarity, embedder.name) == (index.dim, index.similarity, index.model["name"])
    assert sorted({index.group(track_id=t) for t in index.track_ids}) == sorted(ALBUMS)


def test_the_readme_search_flow_runs_as_written(synthetic_dataset, audio_dir, tmp_path):
    """export CLI -> index build CLI (no --model_dir: the export names its run) -> search CLI by file."""
    from musicsim.data.dataset import read_catalog
    from musicsim.models.mfcc import MFCCModel

    paths = [e.path for e in read_catalog(synthetic_dataset, split="train")][:4]
    run = str(tmp_path / "mfcc_run")
    MFCCModel(sample_rate=8000, max_seconds=None, workers=1, progress=False).fit(paths=paths).save(run)
    environment = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=300,
                              env=environment, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

    exported = str(tmp_path / "exports" / "music.parquet")
    index = str(tmp_path / "indexes" / "music")
    done = cli("experiments.export", f"--model_dir={run}", f"--audio={audio_dir}", f"--output={exported}",
               "--workers=1", "--noprogress")
    assert done.returncode == 0, done.stderr
    done = cli("musicsim.index", "build", f"--embeddings={exported}", f"--output={index}")
    assert done.returncode == 0, done.stderr
    query = os.path.join(audio_dir, TRACK + ".wav")
    done = cli("musicsim.search.query", f"--index={index}", f"--query={query}", "-k", "10", "--json")
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout)
    assert len(results) == 10 and results[0]["track_id"] == TRACK
    assert results[0]["score"] == pytest.approx(0.0, abs=1e-3)  # mfcc: euclidean, the file itself at distance 0
    assert [r["score"] for r in results] == sorted((r["score"] for r in results), reverse=True)


def test_rerank_flag_applies_the_index_reranking_or_turns_query_expansion_off(tmp_path, capsys):
    from musicsim import rerank

    rng = np.random.default_rng(2)
    centres = rng.standard_normal((4, 6))
    vectors = (centres[rng.integers(0, 4, size=24)] + 0.6 * rng.standard_normal((24, 6))).astype(np.float32)
    track_ids = [f"t{i:02d}" for i in range(len(vectors))]
    np.savez(tmp_path / "e.npz", track_ids=np.array(track_ids), embeddings=vectors)
    build_index(embeddings=str(tmp_path / "e.npz"), output=str(tmp_path / "index"), rerank="dba+aqe:k=3,alpha=3")

    def ranking(method: str) -> list[str]:
        scores = rerank.catalog_scores(vectors=vectors, settings=rerank.RerankSettings(method=method, k=3, alpha=3.0))
        row = scores[5].copy()
        row[5] = -np.inf
        return [track_ids[r] for r in np.argsort(-row, kind="stable")[:8]]

    command = ["musicsim-search", f"--index={tmp_path / 'index'}", "--track_id=t05", "-k", "8", "--json"]
    found = {}
    for mode in ("index", "none"):
        assert main(command + [f"--rerank={mode}"]) == 0
        found[mode] = [r["track_id"] for r in json.loads(capsys.readouterr().out)]
    assert main(command) == 0  # the default is the index's
    assert [r["track_id"] for r in json.loads(capsys.readouterr().out)] == found["index"]
    assert found["index"] == ranking("dba+aqe") and found["none"] == ranking("dba")
    assert found["index"] != found["none"]
    assert main(command + ["--rerank=aqe"]) == 2
    assert "--rerank" in capsys.readouterr().err
