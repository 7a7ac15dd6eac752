"""The README's commands run as written: every command of its ```sh blocks, in order, in one working folder.

Those that need no network and are cheap run for real, shortened by documented substitutions:

- ``experiments.run`` gets `TINY_RUN_FLAGS` appended (2 steps of a small WaveNet, one protocol seed; absl
  keeps a flag's last value, so they override the README's);
- ``make demo`` runs the Makefile's own demo recipe with the same flags, in a folder whose ``data/demo`` is
  the tests' synthetic prepared dataset (so nothing is downloaded and the run folder is
  ``tensorboard_logs/wavenet-demo-<time>``, as ``make demo``'s);
- the user's music (``/music/albums``, ``/music``, ``songs.csv``, ``song.ogg``) is a generated tree of 4
  albums x 8 short tracks; ``tensorboard_logs/wavenet-demo-...`` is the folder the demo run wrote,
  ``<id>`` / ``ID`` are tracks of that tree, ``exports/new.parquet`` is the export already made (added with
  ``--replace``).

The others (`HELP_ONLY`: the network, a server, hours of training, the whole test suite) must at least
answer ``--help`` with exit 0 (``make -n`` for make targets).
"""
from __future__ import annotations

import csv
import glob
import os
import re
import shutil
import subprocess
import sys

import pytest
import soundfile as sf

from conftest import ALBUM_TIMBRES, render_track

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(REPO_ROOT, "README.md")
VENV_BIN = os.path.dirname(sys.executable)
TIMEOUT_S = 600

TINY_RUN_FLAGS = ("--max_steps=2 --max_minutes=0 --save_checkpoints_steps=2 --early_stopping_patience=0 "
                  "--eval_repeats=1 --workers=1 --channels=8 --skip_channels=8 --num_stacks=2 --layers_per_stack=3 "
                  "--stack_pool_sizes=4,4 --final_channels=16 --crop_seconds=0.5 --eval_seconds=1 --rnn_units=8")
TRACK_IDS = ("low_sine/t1", "low_sine/t2")

# Commands that only answer --help here, and why.
HELP_ONLY = (
    (r"^make test\b", "the whole test suite"),
    (r"--dataset=magnatagatune", "the MagnaTagATune download"),
    (r"/tmp/devcorpus", "the development corpus, built from Debian packages (network)"),
    (r"musicsim\.search\.serve\b|musicsim-serve\b", "a server that runs until stopped, or a prompt for a password "
     "(tests/test_serve.py and tests/test_subsonic.py run them)"),
    (r"musicsim-scan\b", "the default engine's musicnn wheel from the package index (network; tests/test_scan.py "
     "runs the scan)"),
    (r"--uri=http://", "a Milvus server on the network"),
    (r"benchmarks/generalisation\.py", "hours of training"),
    (r"experiments\.recommended\b", "the musicnn wheel from the package index (network)"),
)


def readme_commands(text: str) -> list[tuple[int, str]]:
    """``(line number, command)`` of every command in the ```sh blocks: continuation lines joined,
    comment-only and blank lines dropped."""
    commands, in_block, pending, start = [], False, "", 0
    for number, line in enumerate(text.splitlines(), start=1):
        if line.startswith("```"):
            in_block = line.strip() == "```sh" and not in_block
            continue
        if not in_block or (not pending and (not line.strip() or line.lstrip().startswith("#"))):
            continue
        start = start if pending else number
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1].strip() + " "
            continue
        commands.append((start, (pending + line.strip()).strip()))
        pending = ""
    return commands


COMMANDS = readme_commands(open(README).read())


def help_only_reason(command: str) -> str | None:
    return next((reason for pattern, reason in HELP_ONLY if re.search(pattern, command)), None)


def without_comment(command: str) -> str:
    return re.sub(r"\s+#.*$", "", command)


def help_command(command: str) -> tuple[str, str]:
    """The command's ``--help`` form (``make -n TARGET`` for make), and the folder it runs in."""
    command = without_comment(command)
    loop = re.search(r"\bdo (.*?); done", command)
    command = loop.group(1) if loop else command
    make = re.match(r"make (\S+)", command)
    if make:
        return f"make -n {make.group(1)}", REPO_ROOT
    script = re.match(r"(musicsim-[a-z]+)\b", command)
    if script:  # a console script
        return f"{script.group(1)} --help", REPO_ROOT
    module = re.match(r"python (-m musicsim\.index (?:build|add|remove)|-m \S+|benchmarks/\S+\.py)", command)
    assert module, f"no --help form for {command!r}"
    return f"python {module.group(1)} --help", REPO_ROOT


def demo_recipe() -> str:
    """The command of the Makefile's ``demo`` target (``$(VENV)`` is the venv)."""
    with open(os.path.join(REPO_ROOT, "Makefile")) as f:
        makefile = f.read()
    recipe = re.search(r"^demo:.*\n((?:\t.*\n|#.*\n)+)", makefile, re.MULTILINE)
    assert recipe, "the Makefile has no demo target"
    (line,) = [line.strip() for line in recipe.group(1).splitlines() if line.startswith("\t")]
    return line.replace("$(VENV)", ".venv")


def shortened(command: str, *, cwd: str, albums: str) -> str:
    """The runnable form of a README command here (see the module docstring)."""
    command = without_comment(command)
    if command == "make demo":
        command = demo_recipe()
    demo_runs = sorted(glob.glob(os.path.join(cwd, "tensorboard_logs", "wavenet-demo-2*")))
    if "wavenet-demo-..." in command:
        assert demo_runs, "make demo's run folder tensorboard_logs/wavenet-demo-<time> is missing"
        command = command.replace("tensorboard_logs/wavenet-demo-...", os.path.relpath(demo_runs[-1], cwd))
    for old, new in (("/music/albums", albums), ("--audio=/music ", f"--audio={albums} "),
                     ("<id>", TRACK_IDS[0]), ("[--replace]", "--replace"),
                     ("exports/new.parquet", "exports/music.parquet"),
                     ("--track_id ID [ID ...]", "--track_id " + " ".join(TRACK_IDS))):
        command = command.replace(old, new)
    return re.sub(r"((?:python|\.venv/bin/python) -m experiments\.run\b[^;]*)", rf"\1 {TINY_RUN_FLAGS}", command)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, synthetic_dataset) -> dict:
    """The folder the README's commands run in: ``.venv`` (the venv), ``data/demo`` (the synthetic dataset),
    ``songs.csv`` and ``song.ogg``, and the album tree (outside it, as a user's music is)."""
    root = tmp_path_factory.mktemp("readme")
    albums = root / "music" / "albums"
    for a, album in enumerate(ALBUM_TIMBRES):
        os.makedirs(albums / album)
        for k in range(8):
            sf.write(str(albums / album / f"t{k}.wav"), render_track(album=album, index=k, seconds=2.0,
                                                                     sample_rate=8000, seed=a * 10 + k), 8000)
    cwd = root / "work"
    os.makedirs(cwd / "data")
    os.symlink(os.path.dirname(VENV_BIN), cwd / ".venv")
    shutil.copytree(synthetic_dataset, cwd / "data" / "demo")
    with open(cwd / "songs.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "genre"])
        for album in ALBUM_TIMBRES:
            for k in range(8):
                writer.writerow([str(albums / album / f"t{k}.wav"), album])
    sf.write(str(cwd / "song.ogg"), render_track(album="low_sine", index=9, seconds=3.0, sample_rate=8000, seed=99),
             8000, format="OGG", subtype="VORBIS")
    return {"cwd": str(cwd), "albums": str(albums)}


def _run(command: str, *, cwd: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PATH=f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}")
    return subprocess.run(["bash", "-c", command], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=TIMEOUT_S)


def test_the_readme_has_commands_of_every_kind():
    assert len(COMMANDS) >= 20
    assert any(without_comment(c) == "make demo" for _, c in COMMANDS)
    assert any(help_only_reason(c) is None and "musicsim.search.query" in c for _, c in COMMANDS)


@pytest.mark.parametrize("line, command", COMMANDS,
                         ids=[f"L{line}-{re.sub(r'[^A-Za-z0-9_.=-]+', '_', c)[:48]}" for line, c in COMMANDS])
def test_readme_command_runs(workdir, line, command):
    """In README order: later commands use what earlier ones wrote (the demo run, the export, the index)."""
    reason = help_only_reason(command)
    if reason:
        runnable, cwd = help_command(command)
    else:
        runnable, cwd = shortened(command, cwd=workdir["cwd"], albums=workdir["albums"]), workdir["cwd"]
    done = _run(runnable, cwd=cwd)
    assert done.returncode == 0, (f"README line {line}: {runnable}\n" + (f"(only --help here: {reason})\n" if reason
                                  else "") + done.stdout[-3000:] + done.stderr[-3000:])
    if reason and not runnable.startswith("make"):
        assert "--" in done.stdout


def test_the_paper_table_report_has_the_loops_runs_and_make_demos(workdir):
    """The report's --runs glob takes make demo's wavenet-demo-<time> folder beside the loop's <model>-demo ones."""
    with open(os.path.join(workdir["cwd"], "reports", "demo", "results.csv")) as f:
        rows = list(csv.DictReader(f))
    models = {row["model"] for row in rows}
    assert {"librosa", "rnn", "wavenet", "mfcc"} <= models
    demo_run = glob.glob(os.path.join(workdir["cwd"], "tensorboard_logs", "wavenet-demo-2*"))
    assert len(demo_run) == 1
    with open(os.path.join(workdir["cwd"], "reports", "demo", "results.md")) as f:
        assert "| wavenet | 2 |" in f.read()  # the loop's wavenet-demo and make demo's run
