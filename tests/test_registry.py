"""The model registry: entries say what a model needs and offers; a new model is one module plus one entry."""
import json
import os
from dataclasses import dataclass

import numpy as np
import pytest

from musicsim import models as registry
from musicsim.models.fitted import StandardisedModel
from musicsim.params import ParamsConfig, hyperparameter
from musicsim.models import BaselineEntry, FittedEntry, InputSpec, LearnedEntry

TINY_DIM = 4


def tiny_embed(audio, length, *, params, training):
    """A per-step dense layer, averaged over each track's real steps: ``[batch, TINY_DIM]``."""
    import tensorflow as tf

    del params, training
    steps = tf.compat.v1.layers.dense(audio, TINY_DIM, activation=tf.tanh, name="tiny_dense")
    mask = tf.sequence_mask(length, tf.shape(audio)[1], dtype=tf.float32)[:, :, None]
    return tf.reduce_sum(steps * mask, axis=1) / tf.maximum(tf.reduce_sum(mask, axis=1), 1.0)


def tiny_embedding_size(params):
    del params
    return TINY_DIM


@pytest.fixture
def tiny_model():
    """A learned model that exists only in this test: registered, then removed."""
    entry = LearnedEntry(name="tiny_mean", input=InputSpec(features="pooled_audio", channels=1),
                         embed=tiny_embed, embedding_size=tiny_embedding_size)
    registry.register(entry)
    yield entry
    registry.unregister("tiny_mean")


def test_entries_declare_what_each_model_needs():
    wavenet, rnn = registry.entry("wavenet"), registry.entry("rnn")
    assert wavenet.input == InputSpec(features="pooled_audio", channels=1)  # the dataset's rate and pooling
    assert wavenet.windows is not None and wavenet.load_tracks is None and wavenet.early_stopping is None
    assert (rnn.input.features, rnn.input.channels, rnn.input.pool_size) == ("chroma", 12, 1)
    assert rnn.early_stopping == ("loss", "decrease") and len(rnn.embedding_variants()) == 6
    assert rnn.windows is None and rnn.load_tracks is not None and rnn.make_input_fn is not None
    dataset = {"sample_rate": 8000, "pool_size": 5}
    assert wavenet.input.frame_rate(params={}, dataset=dataset) == 1600.0
    params = {"chroma_sample_rate": 22050, "hop_length": 512}
    assert rnn.input.sample_rate(params=params, dataset=dataset) == 22050
    assert rnn.input.frame_rate(params=params, dataset=dataset) == pytest.approx(22050 / 512)
    assert registry.entry("librosa").keywords == {"variance_ratio": "variance_ratio"}
    assert registry.entry("librosa").default_params() == {"variance_ratio": 0.99}
    assert registry.entry("musicnn").default_params() == {"musicnn_model": "MSD_musicnn", "musicnn_layer": "penultimate"}
    assert [registry.kind_of(n) for n in ("wavenet", "mfcc", "random")] == ["learned", "fitted", "baseline"]
    assert set(registry.BASELINES) <= set(registry.names())


def test_the_registry_refuses_unknown_names_and_incomplete_entries():
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        registry.entry("nope")
    with pytest.raises(ValueError, match="already registered"):
        registry.register(BaselineEntry(name="wavenet"))
    with pytest.raises(ValueError, match="needs an input, embed and embedding_size"):
        LearnedEntry(name="half", input=None, embed=tiny_embed, embedding_size=tiny_embedding_size)
    with pytest.raises(ValueError, match="needs its fitted_class"):
        FittedEntry(name="half", fitted_class=None)
    with pytest.raises(ValueError, match="not fields of"):
        FittedEntry(name="half", fitted_class=object, keywords={"size": "width"})
    with pytest.raises(ValueError, match="features must be one of"):
        InputSpec(features="spectrogram", channels=1)
    with pytest.raises(ValueError, match="was not added with register"):
        registry.unregister("wavenet")
    assert registry.kind_of("wavenet") == "learned"


def test_a_new_learned_model_trains_embeds_and_exports_through_the_normal_paths(tiny_model, synthetic_dataset,
                                                                                 tmp_path):
    """One entry, no other file changed: experiments.run trains and tests it, the embedder embeds files
    as the run did, export writes its embeddings and SavedModels."""
    from experiments.export import export_embeddings, export_saved_model
    from experiments.run import RunConfig, run
    from musicsim.data.dataset import read_catalog
    from musicsim.embedder import load_embedder
    from musicsim.rundir import RunDir

    model_dir = str(tmp_path / "run")
    results = run(RunConfig(model="tiny_mean", dataset_dir=synthetic_dataset, model_dir=model_dir, max_steps=4,
                            crop_seconds=1.0, eval_seconds=None, save_checkpoints_steps=2,
                            early_stopping_patience=0, max_minutes=2, eval_repeats=1, workers=1))
    assert results["model"] == "tiny_mean" and results["sizes"] == {"train": 16, "eval": 8, "test": 8}
    assert 0.0 <= results["test"]["PC"]["mean"] <= 1.0
    run_dir = RunDir(model_dir)
    assert run_dir.record()["kind"] == "learned" and run_dir.checkpoint() is not None
    stored = run_dir.embeddings()
    assert stored.vectors.shape == (32, TINY_DIM)

    embedder = load_embedder(model_dir)
    assert (embedder.name, embedder.dim, embedder.channels) == ("tiny_mean", TINY_DIM, 1)
    assert embedder.model.windows is None  # no window functions: each file's sequence whole
    entries = read_catalog(synthetic_dataset, split="test")[:3]
    vectors, ok, skipped = embedder.embed_paths(paths=[e.path for e in entries], workers=1, progress=False)
    assert ok == [0, 1, 2] and not skipped
    expected = np.stack([stored.vectors[stored.track_ids.index(e.track_id)] for e in entries])
    np.testing.assert_allclose(vectors, expected, atol=1e-5)  # a file embeds as the run embedded it

    summary = export_embeddings(model_dir=model_dir, audio=os.path.dirname(entries[0].path),
                                output=str(tmp_path / "out.parquet"), workers=1, progress=False)
    assert summary.embedded >= 3 and not summary.skipped
    with open(tmp_path / "out.meta.json") as f:
        assert json.load(f)["model"] == "tiny_mean"
    written = export_saved_model(model_dir=model_dir, export_dir=str(tmp_path / "serving"))
    assert sorted(written) == ["pooled", "raw"]  # pooled-audio input: the graph can pool raw audio too
    with open(tmp_path / "serving" / "serving.json") as f:
        assert json.load(f)["pooled"]["rate_hz"] == embedder.frame_rate


# ---------------------------------------------------------------- a new model: one module and one registry line

@dataclass(frozen=True)
class TinyScaleConfig(ParamsConfig):
    """The test's learned model's own hyperparameter (a flag of experiments.run once registered)."""

    tiny_scale: float = hyperparameter(1.0, "tiny_scaled: the input is multiplied by this before the dense layer.",
                                       bounds="positive")


def tiny_scaled_embed(audio, length, *, params, training):
    scale = TinyScaleConfig.from_params(params).tiny_scale
    return tiny_embed(audio * scale, length, params=params, training=training)


class TinyKeepModel(StandardisedModel):
    """The test's fitted model: the first ``keep`` MFCC statistics, standardised."""

    name = "tiny_keep"
    feature_fn = "mfcc"

    def __init__(self, *, keep: int = 40, **settings):
        super().__init__(**settings)
        self.keep = int(keep)

    @property
    def dim(self) -> int:
        return self.keep

    def _extra_settings(self) -> dict:
        return {"keep": self.keep}

    def _fit_features(self, features: np.ndarray) -> None:
        super()._fit_features(features[:, :self.keep])

    def _transform(self, features: np.ndarray) -> np.ndarray:
        return super()._transform(features[:, :self.keep])


@dataclass(frozen=True)
class TinyKeepConfig(ParamsConfig):
    tiny_keep: int = hyperparameter(40, "tiny_keep: the MFCC statistics kept.", bounds="at_least_one")


NEW_MODELS = {
    "tiny_scaled": (LearnedEntry(name="tiny_scaled", input=InputSpec(features="pooled_audio", channels=1),
                                 embed=tiny_scaled_embed, embedding_size=tiny_embedding_size, config=TinyScaleConfig),
                    "--tiny_scale=0.5", ("tiny_scale", 0.5), TINY_DIM),
    "tiny_keep": (FittedEntry(name="tiny_keep", fitted_class=TinyKeepModel, config=TinyKeepConfig,
                              keywords={"keep": "tiny_keep"}),
                  "--tiny_keep=7", ("tiny_keep", 7), 7),
}


@pytest.mark.parametrize("name", list(NEW_MODELS))
def test_a_model_added_in_one_module_trains_scores_exports_and_searches_from_the_command_line(
        name, synthetic_dataset, tmp_path, capsys):
    """A learned and a fitted model, each with a hyperparameter of its own, defined here and registered: the
    command lines take its flag (built from the registry when they parse), record it alone, and export and
    search with the model."""
    from experiments import export, run as run_module
    from musicsim.data.dataset import read_catalog
    from musicsim.index import build_index
    from musicsim.rundir import RunDir
    from musicsim.search import query

    entry, flag, (key, value), dim = NEW_MODELS[name]
    registry.register(entry)
    try:
        model_dir = str(tmp_path / "run")
        results = run_module.main_argv([
            "experiments.run", f"--model={name}", f"--dataset={synthetic_dataset}", f"--model_dir={model_dir}",
            flag, "--max_steps=2", "--save_checkpoints_steps=2", "--early_stopping_patience=0",
            "--crop_seconds=1", "--eval_seconds=0", "--eval_repeats=1", "--workers=1"])
        assert results["model"] == name and 0.0 <= results["test"]["PC"]["mean"] <= 1.0
        params = RunDir(model_dir).record()["config"]["params"]
        assert params[key] == value  # its flag reached the model, and run.json records its config
        assert not {"channels", "rnn_units", "variance_ratio"} & set(params)  # and no other model's

        audio = os.path.dirname(read_catalog(synthetic_dataset, split="test")[0].path)
        exported = str(tmp_path / "out.parquet")
        assert export.main(["experiments.export", f"--model_dir={model_dir}", f"--audio={audio}",
                            f"--output={exported}", "--workers=1", "--noprogress"]) == 0
        with open(tmp_path / "out.meta.json") as f:
            assert json.load(f)["model"] == name
        index_dir = str(tmp_path / "index")
        build_index(embeddings=exported, output=index_dir, model_dir=model_dir)
        path = read_catalog(synthetic_dataset, split="test")[0].path
        capsys.readouterr()
        assert query.main(["musicsim.search.query", f"--index={index_dir}", f"--query={path}", "-k", "3",
                           "--json"]) == 0
        found = json.loads(capsys.readouterr().out)
        assert len(found) == 3 and found[0]["path"] == path  # the file finds itself first
        assert RunDir(model_dir).embeddings().vectors.shape[1] == dim
    finally:
        registry.unregister(name)


def test_a_run_json_recording_every_models_params_still_loads(synthetic_dataset, tmp_path):
    """Runs written before run.json recorded only the chosen model's config (every model's params, then)
    still embed with the same vectors."""
    from experiments.run import RunConfig, run
    from musicsim.data.dataset import read_catalog
    from musicsim.embedder import load_embedder
    from musicsim.rundir import RunDir
    from musicsim.train.estimator import param_configs

    model_dir = str(tmp_path / "run")
    run(RunConfig(model="mfcc", dataset_dir=synthetic_dataset, model_dir=model_dir, workers=1, eval_repeats=1))
    run_path = RunDir(model_dir).run_path
    with open(run_path) as f:
        record = json.load(f)
    assert "channels" not in record["config"]["params"]
    every = {}
    for config in (*param_configs(), *(c for n in registry.names("fitted") for c in registry.configs(n))):
        every.update(config().to_params())
    record["config"]["params"] = {**every, **record["config"]["params"]}
    with open(run_path, "w") as f:
        json.dump(record, f)
    stored = RunDir(model_dir).embeddings()
    entry = read_catalog(synthetic_dataset, split="test")[0]
    vectors, ok, _ = load_embedder(model_dir).embed_paths(paths=[entry.path], workers=1, progress=False)
    assert ok == [0]
    np.testing.assert_allclose(vectors[0], stored.vectors[stored.track_ids.index(entry.track_id)], atol=1e-6)
