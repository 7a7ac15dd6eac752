"""--model=fusion: runs' standardised embeddings, weighted on eval, one vector per track."""
import os

import numpy as np
import pytest
from conftest import copy_with_test_labels_permuted

from musicsim.data.dataset import read_catalog


def _run(model: str, dataset_dir: str, model_dir: str, **overrides) -> dict:
    from experiments.run import RunConfig, run

    return run(RunConfig(model=model, dataset_dir=dataset_dir, model_dir=model_dir, workers=1, eval_repeats=2,
                         **overrides))


@pytest.fixture(scope="module")
def component_runs(synthetic_dataset, tmp_path_factory) -> list[str]:
    root = tmp_path_factory.mktemp("fusion_parts")
    runs = []
    for model in ("mfcc", "librosa"):
        runs.append(str(root / model))
        _run(model, synthetic_dataset, runs[-1])
    return runs


@pytest.fixture(scope="module")
def fusion_run(component_runs, synthetic_dataset, tmp_path_factory) -> tuple[str, dict]:
    model_dir = str(tmp_path_factory.mktemp("fusion") / "fusion")
    return model_dir, _run("fusion", synthetic_dataset, model_dir, params={"fusion_runs": component_runs})


def test_fusion_embeds_the_weighted_standardised_blocks(fusion_run, component_runs, synthetic_dataset):
    from musicsim.embedder import load_embedder
    from musicsim.models.fitted import FittedModel

    model_dir, results = fusion_run
    model = FittedModel.load(model_dir)
    parts = [load_embedder(run) for run in component_runs]
    assert model.dim == sum(part.dim for part in parts)
    paths = [e.path for e in read_catalog(synthetic_dataset, split="test")][:3]
    fused, ok, skipped = load_embedder(model_dir).embed_paths(paths=paths, workers=1, progress=False)
    assert ok == [0, 1, 2] and not skipped
    raw = np.concatenate([part.embed_paths(paths=paths, workers=1, progress=False)[0] for part in parts], axis=1)
    offsets = np.cumsum([0] + [part.dim for part in parts])
    for block, weight in enumerate(model.weights):
        columns = slice(offsets[block], offsets[block + 1])
        expected = (raw[:, columns] - model.mean[columns]) / model.std[columns] * weight / np.sqrt(parts[block].dim)
        np.testing.assert_allclose(fused[:, columns], expected, rtol=1e-4, atol=1e-5)
    # The run's exported test vectors are the same model's.
    with np.load(os.path.join(model_dir, "embeddings.npz")) as npz:
        assert npz["embeddings"].shape[1] == model.dim
    assert results["similarity"] == "cosine"


def test_weights_are_chosen_on_eval_never_test(fusion_run, component_runs, synthetic_dataset, tmp_path):
    from musicsim.models.fitted import FittedModel

    model_dir, _ = fusion_run
    weights = FittedModel.load(model_dir).weights
    dataset_dir = copy_with_test_labels_permuted(synthetic_dataset, str(tmp_path / "prepared"), seed=1)
    shuffled_dir = str(tmp_path / "fusion")
    _run("fusion", dataset_dir, shuffled_dir, params={"fusion_runs": component_runs})
    np.testing.assert_array_equal(FittedModel.load(shuffled_dir).weights, weights)


def test_tune_never_lowers_the_eval_catalog_map(fusion_run):
    from musicsim.models.fitted import FittedModel

    model = FittedModel.load(fusion_run[0])
    assert model.tuning, "the tuning table is saved with the model"
    first, best = model.tuning[0]["catalog_mAP"], max(row["catalog_mAP"] for row in model.tuning)
    chosen = [row["catalog_mAP"] for row in model.tuning if row["weights"] == list(model.weights)]
    assert chosen and max(chosen) == best >= first


@pytest.mark.parametrize("runs, message", [([], "at least two runs"), (["/nonexistent/a", "/nonexistent/b"],
                                                                        "do not exist")])
def test_bad_runs_are_refused(runs, message):
    from musicsim.models.fusion import FusionModel

    with pytest.raises(ValueError, match=message):
        FusionModel(runs=runs)


def test_a_fusion_model_opens_its_runs_only_through_the_loader_it_is_given(fusion_run):
    """The model never imports the embedder (that would close a circle): how it opens a run is injected."""
    from musicsim.embedder import load_embedder
    from musicsim.models.fitted import FittedModel

    bare = FittedModel.load(fusion_run[0])
    with pytest.raises(ValueError, match="load_run"):
        bare.embedders()
    opened = []

    def recording_loader(model_dir, *, window_seconds=None):
        opened.append(model_dir)
        return load_embedder(model_dir, window_seconds=window_seconds)

    model = FittedModel.load(fusion_run[0], load_run=recording_loader)
    assert [e.dim for e in model.embedders()] == list(model.block_dims)
    assert opened == list(model.runs)
