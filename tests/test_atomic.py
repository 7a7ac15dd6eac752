"""musicsim.atomic: a file is replaced whole or not at all, and no temporary is left behind."""
from __future__ import annotations

import json
import os

import pytest

from musicsim.atomic import atomic_open, atomic_path, write_json_atomic


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "tracks.csv"
    path.write_text("good\n")
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_open(str(path)) as f:
            f.write("half a fi")
            raise RuntimeError("disk full")
    assert path.read_text() == "good\n"
    assert os.listdir(tmp_path) == ["tracks.csv"]


@pytest.mark.parametrize("mode, content", [("w", "whole text"), ("wb", b"\x00whole bytes")])
def test_a_write_replaces_the_file_whole(tmp_path, mode, content):
    path = tmp_path / "out"
    path.write_bytes(b"old")
    with atomic_open(str(path), mode) as f:
        f.write(content)
        assert path.read_bytes() == b"old"  # readers see the old file until the block ends
    assert (path.read_text() if mode == "w" else path.read_bytes()) == content
    assert os.listdir(tmp_path) == ["out"]


def test_atomic_path_makes_the_folder_and_renames_a_named_writer(tmp_path):
    path = tmp_path / "cache" / "deep" / "v.json"
    with atomic_path(str(path), make_dirs=True) as temporary:
        assert os.path.dirname(temporary) == os.path.dirname(str(path)) and ".tmp-" in temporary
        with open(temporary, "w") as f:
            f.write("{}")
    assert json.loads(path.read_text()) == {}


def test_json_is_sorted_and_non_json_values_become_strings(tmp_path):
    path = tmp_path / "run.json"
    write_json_atomic(str(path), {"b": 1, "a": tmp_path})
    assert list(json.loads(path.read_text())) == ["a", "b"] and json.loads(path.read_text())["a"] == str(tmp_path)


def test_only_whole_file_modes_are_allowed(tmp_path):
    with pytest.raises(ValueError, match="mode must be"):
        with atomic_open(str(tmp_path / "x"), "a"):
            pass
