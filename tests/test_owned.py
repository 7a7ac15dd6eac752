"""musicsim.owned: which folders this project may replace."""
from __future__ import annotations

import json
import os

import pytest

from musicsim.owned import MANIFEST_NAME, NotOurFolderError, check_replaceable, owned_kind, write_manifest


def test_an_absent_or_empty_folder_may_be_written(tmp_path):
    check_replaceable(str(tmp_path / "absent"), kind="index", overwrite=False)
    (tmp_path / "empty").mkdir()
    check_replaceable(str(tmp_path / "empty"), kind="index", overwrite=False)


def test_a_folder_with_our_manifest_of_the_same_kind_may_be_written(tmp_path):
    folder = tmp_path / "ours"
    folder.mkdir()
    (folder / "vectors.npy").write_bytes(b"x")
    write_manifest(str(folder), kind="index", extra={"note": "kept"})

    check_replaceable(str(folder), kind="index", overwrite=False)
    assert owned_kind(str(folder)) == "index"
    assert json.loads((folder / MANIFEST_NAME).read_text()) == {"format": "musicsim", "kind": "index",
                                                                "note": "kept"}
    assert sorted(os.listdir(folder)) == [MANIFEST_NAME, "vectors.npy"]  # no temp file left


def test_a_folder_of_another_kind_is_refused(tmp_path):
    folder = tmp_path / "dataset"
    folder.mkdir()
    (folder / "tracks.csv").write_text("track_id\n")
    write_manifest(str(folder), kind="dataset")

    with pytest.raises(NotOurFolderError, match="kind 'index'"):
        check_replaceable(str(folder), kind="index", overwrite=False)


def test_a_foreign_folder_is_refused_naming_it_and_its_files_and_overwrite_allows_it(tmp_path):
    folder = tmp_path / "my documents"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")

    with pytest.raises(NotOurFolderError) as raised:
        check_replaceable(str(folder), kind="saved_model", overwrite=False)

    message = str(raised.value)
    assert str(folder) in message and "notes.txt" in message and "--overwrite" in message
    assert isinstance(raised.value, ValueError)
    check_replaceable(str(folder), kind="saved_model", overwrite=True)
    assert (folder / "notes.txt").read_text() == "mine"  # the check writes nothing


def test_a_manifest_listing_its_entries_stops_counting_once_a_file_is_added(tmp_path):
    folder = tmp_path / "export"
    folder.mkdir()
    (folder / "pooled").mkdir()
    write_manifest(str(folder), kind="saved_model", extra={"entries": ["pooled"]})
    check_replaceable(str(folder), kind="saved_model", overwrite=False)

    (folder / "thesis.tex").write_text("not ours")

    with pytest.raises(NotOurFolderError, match="thesis.tex"):
        check_replaceable(str(folder), kind="saved_model", overwrite=False)


def test_a_legacy_folder_is_recognised_by_the_callers_test(tmp_path):
    folder = tmp_path / "old index"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"format": "musicsim.index"}))

    def is_old_index(path: str) -> bool:
        with open(os.path.join(path, "config.json")) as f:
            return json.load(f).get("format") == "musicsim.index"

    with pytest.raises(NotOurFolderError):
        check_replaceable(str(folder), kind="index", overwrite=False)
    check_replaceable(str(folder), kind="index", overwrite=False, legacy=is_old_index)
    assert owned_kind(str(folder)) is None


@pytest.mark.parametrize("manifest", ['{"format": "other", "kind": "index"}', '{"kind": "index"}',
                                      '["index"]', "{not json", '{"format": "musicsim", "kind": 3}'])
def test_a_manifest_that_is_not_ours_does_not_make_the_folder_ours(tmp_path, manifest):
    folder = tmp_path / "f"
    folder.mkdir()
    (folder / MANIFEST_NAME).write_text(manifest)

    assert owned_kind(str(folder)) is None
    with pytest.raises(NotOurFolderError):
        check_replaceable(str(folder), kind="index", overwrite=False)


def test_ignored_names_do_not_count_as_content(tmp_path):
    folder = tmp_path / "locked"
    folder.mkdir()
    (folder / ".build.lock").write_text("{}")

    check_replaceable(str(folder), kind="dataset", overwrite=False, ignore=lambda name: name == ".build.lock")
    with pytest.raises(NotOurFolderError, match=r"\.build\.lock"):
        check_replaceable(str(folder), kind="dataset", overwrite=False)


def test_a_file_is_refused_and_the_message_carries_the_remedy(tmp_path):
    path = tmp_path / "out.txt"
    path.write_text("a file")

    with pytest.raises(NotOurFolderError, match=r"out\.txt is a file, not a folder: choose a new or empty"):
        check_replaceable(str(path), kind="dataset", overwrite=False, remedy="choose a new or empty --output folder")
    assert path.read_text() == "a file"
