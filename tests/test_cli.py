"""The console scripts: every product command is also ``musicsim-<name>``, with absl flags and exit 2 on misuse."""
from __future__ import annotations

import os
import subprocess
import sys
from importlib import metadata

import pytest

COMMANDS = {"musicsim-prep": "data_prep.build", "musicsim-run": "experiments.run",
            "musicsim-report": "experiments.report", "musicsim-export": "experiments.export",
            "musicsim-recommended": "experiments.recommended",
            "musicsim-index": "musicsim.index.cli", "musicsim-search": "musicsim.search",
            "musicsim-serve": "musicsim.serve"}


def test_every_command_has_a_console_script_of_its_module():
    scripts = {entry.name: entry for entry in metadata.entry_points(group="console_scripts")
               if entry.name.startswith("musicsim-")}
    assert set(scripts) == set(COMMANDS)
    for name, entry in scripts.items():
        assert entry.module == COMMANDS[name] and callable(entry.load())


@pytest.mark.parametrize("name, bad_flag, named", [
    ("musicsim-search", "--no_such_flag=1", "no_such_flag"), ("musicsim-index", "--no_such_flag=1", "no_such_flag"),
    ("musicsim-prep", "--workers=many", "workers")])  # prep hands unknown flags to Beam's options
def test_a_console_script_runs_and_refuses_a_bad_flag(name, bad_flag, named):
    script = os.path.join(os.path.dirname(sys.executable), name)
    if not os.path.exists(script):
        pytest.skip(f"{script} is not installed (pip install -e . writes it)")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    helped = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=120, env=env)
    assert helped.returncode == 0 and "--" in helped.stdout + helped.stderr
    refused = subprocess.run([script, bad_flag], capture_output=True, text=True, timeout=120, env=env)
    assert refused.returncode != 0 and named in refused.stderr
