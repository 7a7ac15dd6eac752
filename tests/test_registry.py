"""The model registry: entries say what a model needs and offers; a new model is one module plus one entry."""
import json
import os

import numpy as np
import pytest

from musicsim import models as registry
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
    from musicsim.dataset import read_catalog
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
