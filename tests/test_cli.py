"""Every entry point, as a console script and as ``python -m``: ``--help`` lists its own flags and exits 0,
misuse (an unknown flag, a missing required flag, a bad choice, a number that is not finite or out of
range) is one line on stderr and exit 2; real subprocesses. Also: a directory as a search query, the
demo-dataset notice of ``experiments.run``, and datasets too small for the evaluation protocol."""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from importlib import metadata

import numpy as np
import pytest
import soundfile as sf

from conftest import ALBUM_TIMBRES, render_track, write_fitted_model_config

BIN = os.path.dirname(sys.executable)
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
TIMEOUT_S = 180


@dataclass(frozen=True)
class EntryPoint:
    """One command: its console script, its ``python -m`` module, flags its ``--help`` must list, and
    misuse cases ``(case, arguments, what the one error line must name)``; IN/OUT/RUN stand for paths."""

    script: str
    module: str
    setup_module: str  # the module setup.py's console script names
    own_flags: tuple[str, ...]
    misuse: tuple[tuple[str, tuple[str, ...], str], ...] = field(default=())


ENTRY_POINTS = (
    EntryPoint("musicsim-prep", "data_prep.build", "data_prep.build", ("--dataset", "--output", "--max_seconds",
                                                                       "--split_by"), (
        ("unknown flag", ("--dataset=album_folders", "--input=IN", "--output=OUT", "--no_such_flag=1"),
         "no_such_flag"),
        ("missing required flag", ("--input=IN",), "--dataset"),
        ("bad choice", ("--dataset=nosuch", "--input=IN", "--output=OUT"), "nosuch"),
        ("not finite", ("--dataset=album_folders", "--input=IN", "--output=OUT", "--max_seconds=inf"),
         "max_seconds"),
        ("out of range", ("--dataset=album_folders", "--input=IN", "--output=OUT", "--shard_size=0"), "shard_size"))),
    EntryPoint("musicsim-run", "experiments.run", "experiments.run", ("--model", "--dataset", "--max_steps",
                                                                      "--learning_rate"), (
        ("unknown flag", ("--no_such_flag=1",), "no_such_flag"),
        ("bad choice", ("--model=nosuch",), "nosuch"),
        ("not finite", ("--learning_rate=nan",), "learning_rate"),
        ("out of range", ("--batch_size=0",), "batch_size"),
        ("list item out of range", ("--dense_layers=64,0",), "dense_layers"),
        ("not a dataset", ("--dataset=IN/nothing",), "--dataset"))),
    EntryPoint("musicsim-report", "experiments.report", "experiments.report", ("--runs", "--output", "--reference"), (
        ("unknown flag", ("--no_such_flag=1",), "no_such_flag"),
        ("missing required flag", ("--output=OUT",), "--runs"))),
    EntryPoint("musicsim-export", "experiments.export", "experiments.export", ("--model_dir", "--audio", "--output",
                                                                               "--batch_size"), (
        ("unknown flag", ("--model_dir=RUN", "--no_such_flag=1"), "no_such_flag"),
        ("missing required flag", ("--audio=IN", "--output=OUT"), "--model_dir"),
        ("not finite", ("--model_dir=RUN", "--audio=IN", "--output=OUT", "--window_seconds=inf"), "window_seconds"),
        ("out of range", ("--model_dir=RUN", "--audio=IN", "--output=OUT", "--batch_size=-1"), "batch_size"))),
    EntryPoint("musicsim-recommended", "experiments.recommended", "experiments.recommended",
               ("--dataset", "--output", "--eval_repeats"), (
        ("unknown flag", ("--no_such_flag=1",), "no_such_flag"),
        ("missing required flag", ("--output=OUT",), "--dataset"),
        ("out of range", ("--dataset=IN", "--output=OUT", "--eval_repeats=0"), "eval_repeats"))),
    EntryPoint("musicsim-index", "musicsim.index", "musicsim.index.cli", ("--embeddings", "--output", "--backend",
                                                                         "--approximate"), (
        ("unknown flag", ("build", "--no_such_flag=1"), "no_such_flag"),
        ("missing required flag", ("build", "--output=OUT"), "--embeddings"),
        ("bad choice", ("build", "--embeddings=IN", "--output=OUT", "--backend=nosuch"), "nosuch"))),
    EntryPoint("musicsim-search", "musicsim.search.query", "musicsim.search.query", ("--index", "--query",
                                                                                     "--track_id", "--diversity"), (
        ("unknown flag", ("--index=IN", "--track_id=t", "--no_such_flag=1"), "no_such_flag"),
        ("missing required flag", ("--track_id=t",), "index"),
        ("bad choice", ("--index=IN", "--track_id=t", "--rerank=nosuch"), "nosuch"),
        ("not finite", ("--index=IN", "--track_id=t", "--diversity=nan"), "diversity"),
        ("out of range", ("--index=IN", "--track_id=t", "-k", "0"), "k must be"))),
    EntryPoint("musicsim-serve", "musicsim.search.serve", "musicsim.search.serve", ("--index", "--port",
                                                                                     "--max_upload_mb"), (
        ("unknown flag", ("--index=IN", "--no_such_flag=1"), "no_such_flag"),
        ("missing required flag", ("--port=8000",), "index"),
        ("bad choice", ("--index=IN", "--map=nosuch"), "nosuch"),
        ("not finite", ("--index=IN", "--max_upload_mb=inf"), "max_upload_mb"),
        ("out of range", ("--index=IN", "--port=70000"), "port"))),
    EntryPoint("musicsim-scan", "musicsim.scan", "musicsim.scan", (), (
        ("unknown flag", ("--no_such_flag=1",), "no_such_flag"),)),
)
BY_SCRIPT = {entry.script: entry for entry in ENTRY_POINTS}


def _available(entry: EntryPoint) -> None:
    """Skip a command whose module is not in this tree yet (musicsim-scan is written alongside)."""
    if importlib.util.find_spec(entry.module.split(".")[0]) is None or importlib.util.find_spec(entry.module) is None:
        pytest.skip(f"{entry.module} is not in this tree")


def _command(entry: EntryPoint, form: str) -> list[str]:
    if form == "script":
        script = os.path.join(BIN, entry.script)
        if not os.path.exists(script):
            pytest.skip(f"{script} is not installed (pip install -e . writes it)")
        return [script]
    return [sys.executable, "-m", entry.module]


def _run(command: list[str], *, cwd: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_S, env=ENV, cwd=cwd)


def _one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{stderr}"
    assert "Traceback" not in stderr and "FATAL" not in stderr
    return lines[0]


def test_every_command_has_a_console_script_of_its_module():
    scripts = {entry.name: entry for entry in metadata.entry_points(group="console_scripts")
               if entry.name.startswith("musicsim-")}
    assert set(scripts) == set(BY_SCRIPT)
    for name, entry in scripts.items():
        assert entry.module == BY_SCRIPT[name].setup_module and entry.attr == "cli"


@pytest.mark.parametrize("form", ["script", "module"])
@pytest.mark.parametrize("entry", ENTRY_POINTS, ids=lambda e: e.script)
def test_help_lists_the_commands_own_flags_and_exits_0(entry, form):
    _available(entry)
    done = _run(_command(entry, form) + ["--help"])
    assert done.returncode == 0, done.stderr
    for flag in entry.own_flags:
        assert f"{flag}:" in done.stdout or f"{flag}=" in done.stdout, f"{flag} missing from --help"
    assert "--" in done.stdout and "Traceback" not in done.stderr
    # Its own flags, not absl's (a command on absl's global FLAGS used to list only those, or nothing).
    assert "--only_check_args" not in done.stdout and "--run_with_pdb" not in done.stdout


def _paths(arguments, tmp_path) -> list[str]:
    return [a.replace("IN", str(tmp_path / "in")).replace("OUT", str(tmp_path / "out")).replace(
        "RUN", str(tmp_path / "run")) for a in arguments]


@pytest.mark.parametrize("entry, case, arguments, named", [
    pytest.param(entry, case, arguments, named, id=f"{entry.script}-{case}")
    for entry in ENTRY_POINTS for case, arguments, named in entry.misuse])
def test_misuse_is_one_line_and_exit_2(entry, case, arguments, named, tmp_path):
    _available(entry)
    (tmp_path / "in").mkdir()
    done = _run(_command(entry, "script") + _paths(arguments, tmp_path))
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    assert named in _one_line(done.stderr)
    assert not (tmp_path / "out").exists()  # nothing was written


@pytest.mark.parametrize("entry", ENTRY_POINTS, ids=lambda e: e.script)
def test_python_m_form_refuses_an_unknown_flag_in_one_line(entry, tmp_path):
    _available(entry)
    (tmp_path / "in").mkdir()
    case, arguments, named = entry.misuse[0]
    assert case == "unknown flag"
    done = _run(_command(entry, "module") + _paths(arguments, tmp_path))
    assert done.returncode == 2 and named in _one_line(done.stderr)


# ------------------------------------------------------------------------------------ search: a directory query

def test_a_directory_query_is_named_a_directory(tmp_path):
    from musicsim.index import FaissIndex
    from musicsim.search.query import search

    run = write_fitted_model_config(tmp_path / "run", name="mfcc", dim=4)
    FaissIndex(track_ids=["a", "b", "c"], vectors=np.eye(3, 4, dtype=np.float32),
                   model={"name": "mfcc", "model_dir": run}).save(str(tmp_path / "index"))
    folder = tmp_path / "album"
    folder.mkdir()
    with pytest.raises(ValueError, match="is a directory"):
        search(index_dir=str(tmp_path / "index"), query_path=str(folder))
    done = _run([os.path.join(BIN, "musicsim-search"), f"--index={tmp_path / 'index'}", f"--query={folder}"])
    line = _one_line(done.stderr)
    assert done.returncode == 2 and "is a directory" in line and "does not exist" not in line


# ---------------------------------------------------------------------------- datasets too small for the protocol

def write_album_tree(root, *, albums: int, per_album: int, sample_rate: int = 8000) -> str:
    """``root/<album>/t<k>.wav``: ``albums`` x ``per_album`` synthetic tracks of 2 s."""
    for a, album in enumerate(list(ALBUM_TIMBRES)[:albums]):
        os.makedirs(os.path.join(root, album), exist_ok=True)
        for k in range(per_album):
            sf.write(os.path.join(root, album, f"t{k}.wav"),
                     render_track(album=album, index=k, seconds=2.0, sample_rate=sample_rate, seed=a * 10 + k),
                     sample_rate)
    return str(root)


@pytest.fixture(scope="module")
def too_small_dataset(tmp_path_factory) -> tuple[str, subprocess.CompletedProcess]:
    """3 albums x 4 files, prepared by the real command: 2 / 1 / 1 tracks of each album per split."""
    root = tmp_path_factory.mktemp("small")
    albums = write_album_tree(root / "albums", albums=3, per_album=4)
    output = str(root / "data")
    done = _run([sys.executable, "-m", "data_prep.build", "--dataset=album_folders", f"--input={albums}",
                 f"--output={output}", "--sample_rate=8000", "--workers=1", "--progress=false"])
    return output, done


def test_build_warns_when_a_split_cannot_form_a_query(too_small_dataset):
    output, done = too_small_dataset
    assert done.returncode == 0, done.stderr
    warnings = [line for line in done.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 2
    for split, line in zip(("eval", "test"), warnings):
        assert f"the {split} split cannot form a query (3 tracks, 3 labels, at most 1 track per label)" in line
        assert "8 tracks per label" in line
    with open(os.path.join(output, "report.json")) as f:
        assert len(json.load(f)["warnings"]) == 2


def test_run_refuses_a_dataset_too_small_before_training(too_small_dataset, tmp_path):
    output, _ = too_small_dataset
    run_dir = tmp_path / "run"
    done = _run([os.path.join(BIN, "musicsim-run"), "--model=wavenet", f"--dataset={output}",
                 f"--model_dir={run_dir}", "--max_steps=2"])
    line = _one_line(done.stderr)
    assert done.returncode == 2
    assert "too small for the evaluation protocol" in line and "the eval split" in line and "the test split" in line
    assert "at most 1 track per label" in line and "8 tracks per label" in line
    assert not run_dir.exists()  # refused before anything was trained or written


def test_run_without_dataset_says_it_uses_the_demo_corpus(too_small_dataset, tmp_path):
    """``data/demo`` relative to the working folder: here a copy of the small dataset, refused, so nothing trains."""
    output, _ = too_small_dataset
    shutil.copytree(output, tmp_path / "data" / "demo")
    done = _run([os.path.join(BIN, "musicsim-run"), "--model=random"], cwd=str(tmp_path))
    notice = [line for line in done.stdout.splitlines() if "--dataset" in line]
    assert len(notice) == 1 and "demo corpus" in notice[0] and os.path.join("data", "demo") in notice[0]
    assert done.returncode == 2 and "too small" in _one_line(done.stderr)
    given = _run([os.path.join(BIN, "musicsim-run"), "--model=random", f"--dataset={output}"], cwd=str(tmp_path))
    assert given.returncode == 2 and "demo" not in given.stdout


@pytest.mark.parametrize("labels, relevance, queries", [
    ([("a",), ("a",), ("b",)], "album", 2),          # a, a: each has a similar and a non-similar track
    ([("a",), ("b",), ("c",)], "album", 0),          # nobody has a similar track
    ([("a",), ("a",), ("a",)], "album", 0),          # nobody has a non-similar track
    ([("x", "y"), ("x", "y"), ("x", "z")], "tags", 2),  # 2 shared tags needed: only the first two are similar
    ([("x", "y"), ("x", "z"), ("y", "z")], "tags", 0),
])
def test_query_tracks_counted_as_the_protocol_draws_them(labels, relevance, queries):
    from musicsim import evaluation
    from musicsim.relevance import make_relevance

    relevance_def = make_relevance(relevance, min_shared_tags=2)
    matrix = relevance_def.relevance_matrix(labels, labels)
    np.fill_diagonal(matrix, 0.0)
    drawn = evaluation.make_ranking_lists(relevance_matrix=matrix, binary=matrix > 0, seed=0)
    assert evaluation.count_query_tracks(labels=labels, relevance=relevance_def, block_rows=2) == queries
    assert len(drawn.query) == queries
    problem = evaluation.split_query_problem(split="test", labels=labels, relevance=relevance_def)
    assert (problem is None) == (queries > 0)


def test_a_dataset_big_enough_has_no_problem(synthetic_dataset):
    from musicsim.evaluation import dataset_query_problems

    assert dataset_query_problems(dataset_dir=synthetic_dataset) == []
