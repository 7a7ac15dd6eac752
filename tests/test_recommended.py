"""experiments.recommended: one command fits the parts, fuses them, re-ranks by eval and indexes the catalog."""
from __future__ import annotations

import importlib.util
import os
import sys

import pytest

from experiments import recommended
from musicsim.dataset import read_catalog
from musicsim.rundir import RunDir

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAST_PARTS = {"mfcc": ("mfcc", {}), "librosa": ("librosa", {})}


@pytest.fixture(scope="module")
def built(synthetic_dataset, tmp_path_factory) -> tuple[str, str]:
    output = str(tmp_path_factory.mktemp("recommended"))
    return output, recommended.build(dataset_dir=synthetic_dataset, output=output, parts=FAST_PARTS, workers=1,
                                     eval_repeats=2)


def test_the_fusion_is_scored_re_ranked_by_eval_and_its_whole_catalog_indexed(built, synthetic_dataset):
    from musicsim.index import EmbeddingIndex

    output, fusion_dir = built
    results = RunDir(fusion_dir).results()
    assert results["model"] == "fusion" and results["rerank"]["chosen_on"] == "eval"
    assert set(results["test"]) >= {"catalog_mAP", "PC"}
    index = EmbeddingIndex.load(os.path.join(fusion_dir, "index"))
    assert sorted(index.track_ids) == sorted(entry.track_id for entry in read_catalog(synthetic_dataset))
    assert {os.path.basename(p) for p in RunDir(fusion_dir).config()["params"]["fusion_runs"]} == set(FAST_PARTS)


def test_a_rerun_reuses_the_finished_runs(built, synthetic_dataset):
    output, fusion_dir = built
    finished = {name: os.stat(os.path.join(output, name, "results.json")).st_mtime_ns
                for name in (*FAST_PARTS, recommended.FUSION_RUN)}
    assert recommended.build(dataset_dir=synthetic_dataset, output=output, parts=FAST_PARTS, workers=1,
                             eval_repeats=2) == fusion_dir
    assert finished == {name: os.stat(os.path.join(output, name, "results.json")).st_mtime_ns for name in finished}


@pytest.mark.parametrize("arguments, message", [
    ([], "give --dataset"), (["--dataset=/nowhere", "--output=/tmp/x"], "not a prepared dataset"),
    (["--dataset=d", "--output=o", "--workers=many"], "workers")])
def test_bad_arguments_exit_2_naming_the_problem(arguments, message, capsys):
    assert recommended.main(["musicsim-recommended", *arguments]) == 2
    assert message in capsys.readouterr().err


def test_the_recommended_parts_are_the_benchmarks_fusion_row(monkeypatch):
    spec = importlib.util.spec_from_file_location("generalisation", os.path.join(REPO_ROOT, "benchmarks",
                                                                               "generalisation.py"))
    benchmark = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, benchmark)  # its dataclasses look their module up
    spec.loader.exec_module(benchmark)
    assert benchmark.FUSIONS["fusion"] == tuple(recommended.PARTS)
    for name, (model, params) in recommended.PARTS.items():
        expected = {f"--model={model}", *(f"--{key}={value}" for key, value in params.items())}
        assert set(benchmark.FITTED[name]) == expected
