"""experiments.run --rerank: the test split also scored re-ranked, settings chosen on eval only."""
import json
import os

import numpy as np
import pytest
from conftest import copy_with_test_labels_permuted

from musicsim import evaluation, rerank


def _run(dataset_dir: str, model_dir: str, *, rerank_setting: str) -> dict:
    from experiments.run import RunConfig, run

    return run(RunConfig(model="mfcc", dataset_dir=dataset_dir, model_dir=model_dir, workers=1, eval_repeats=2,
                         rerank=rerank_setting))


@pytest.fixture(scope="module")
def auto_run(synthetic_dataset, tmp_path_factory) -> tuple[str, dict]:
    model_dir = str(tmp_path_factory.mktemp("rerank") / "mfcc")
    return model_dir, _run(synthetic_dataset, model_dir, rerank_setting="auto")


def test_auto_rerank_is_chosen_on_eval_and_scored_on_test(auto_run):
    model_dir, results = auto_run
    record = results["rerank"]
    assert record["chosen_on"] == "eval"
    chosen = rerank.settings_from_json(record["settings"])
    table = record["eval_table"]
    assert len(table) == len(rerank.default_grid())
    best = max(table, key=lambda row: row["catalog_mAP"])
    # The best of the grid only when its gain over none beats the eval split's noise (issue 24 item 12).
    beats_noise = best["gain"] > rerank.NOISE_Z * best["gain_standard_error"]
    assert chosen.to_json() == (best["settings"] if beats_noise else rerank.RerankSettings().to_json())
    with open(os.path.join(model_dir, "results.json")) as f:
        assert json.load(f)["rerank"]["settings"] == record["settings"]
    # The reported test figures are the protocol's, on the re-ranked scores of the exported vectors.
    with np.load(os.path.join(model_dir, "embeddings.npz")) as npz:
        test_rows = npz["splits"] == "test"
        vectors, labels = npz["embeddings"][test_rows], npz["labels"][test_rows]
    binary = labels[:, None] == labels[None, :]
    np.fill_diagonal(binary, False)
    scores = rerank.catalog_scores(vectors=vectors, settings=chosen)
    expected = evaluation.catalog_retrieval(scores=scores, binary=binary)["catalog_mAP"]
    assert record["test"]["catalog_mAP"]["mean"] == pytest.approx(expected)


def test_test_labels_never_reach_the_choice(auto_run, synthetic_dataset, tmp_path):
    """Permuting the test split's labels changes the test figures, never the chosen settings."""
    _, results = auto_run
    dataset_dir = copy_with_test_labels_permuted(synthetic_dataset, str(tmp_path / "prepared"), seed=0)
    shuffled = _run(dataset_dir, str(tmp_path / "mfcc"), rerank_setting="auto")
    assert shuffled["rerank"]["settings"] == results["rerank"]["settings"]
    assert shuffled["rerank"]["eval_table"] == results["rerank"]["eval_table"]
    assert shuffled["rerank"]["test"] != results["rerank"]["test"]


def test_given_settings_are_used_as_given(synthetic_dataset, tmp_path):
    results = _run(synthetic_dataset, str(tmp_path / "mfcc"), rerank_setting="dba:k=2,alpha=0")
    assert results["rerank"]["chosen_on"] == "given"
    assert results["rerank"]["settings"] == rerank.RerankSettings(method="dba", k=2, alpha=0.0).to_json()
    assert results["rerank"]["eval_table"] == []
