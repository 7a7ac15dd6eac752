"""experiments.recommended: one command fits the pretrained engine (no labels), scores test and indexes the catalog."""
from __future__ import annotations

import importlib.util
import os
import sys

import pytest

from experiments import recommended
import musicsim.index
from musicsim.data.dataset import read_catalog
from musicsim.rundir import RunDir

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def built(synthetic_dataset, tmp_path_factory) -> tuple[str, str]:
    output = str(tmp_path_factory.mktemp("recommended"))
    return output, recommended.build(dataset_dir=synthetic_dataset, output=output, workers=1, eval_repeats=2)


def test_the_engine_is_scored_and_its_whole_catalog_indexed_standardised(built, synthetic_dataset):
    from musicsim.models import pretrained_engine

    output, model_dir = built
    results = RunDir(model_dir).results()
    assert results["model"] == "pretrained"
    assert set(results["test"]) >= {"catalog_mAP", "PC"}
    index = musicsim.index.open(os.path.join(model_dir, "index"))
    assert sorted(index.track_ids) == sorted(entry.track_id for entry in read_catalog(synthetic_dataset))
    # The index standardises over its catalog with the engine's block weights, and re-ranks as the engine says.
    assert index.standardise
    weights = pretrained_engine.PretrainedEngine().dimension_weights()
    assert index.dim == weights.shape[0]


def test_a_rerun_reuses_the_finished_run(built, synthetic_dataset):
    output, model_dir = built
    finished = os.stat(os.path.join(model_dir, "results.json")).st_mtime_ns
    assert recommended.build(dataset_dir=synthetic_dataset, output=output, workers=1, eval_repeats=2) == model_dir
    assert os.stat(os.path.join(model_dir, "results.json")).st_mtime_ns == finished


@pytest.mark.parametrize("arguments, message", [
    ([], "give --dataset"), (["--dataset=/nowhere", "--output=/tmp/x"], "not a prepared dataset"),
    (["--dataset=d", "--output=o", "--workers=many"], "workers")])
def test_bad_arguments_exit_2_naming_the_problem(arguments, message, capsys):
    assert recommended.main(["musicsim-recommended", *arguments]) == 2
    assert message in capsys.readouterr().err


def test_the_former_fusion_parts_are_the_benchmarks_fusion_row(monkeypatch):
    spec = importlib.util.spec_from_file_location("generalisation", os.path.join(REPO_ROOT, "benchmarks",
                                                                               "generalisation.py"))
    benchmark = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, benchmark)  # its dataclasses look their module up
    spec.loader.exec_module(benchmark)
    assert benchmark.FUSIONS["fusion"] == tuple(recommended.PARTS)
    for name, (model, params) in recommended.PARTS.items():
        expected = {f"--model={model}", *(f"--{key}={value}" for key, value in params.items())}
        assert set(benchmark.FITTED[name]) == expected
