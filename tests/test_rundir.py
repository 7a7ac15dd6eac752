"""musicsim.rundir: run.json written once, results and embeddings swapped in whole, older runs still read."""
import json
import os

import numpy as np
import pytest

from musicsim import rundir
from musicsim.rundir import RunConfigMismatch, RunDir, read_run_info

CONFIG = {"model": "wavenet", "dataset_dir": "data/tiny", "seed": 0, "max_steps": 20, "workers": 1,
          "params": {"similarity": "cosine", "channels": 8, "stack_pool_sizes": [4], "rnn_embedding": "all"}}
DATASET = {"name": "tiny", "sample_rate": 8000, "pool_size": 5}


def _write(run_dir: RunDir, config=None) -> None:
    run_dir.write_config(config or CONFIG, model="wavenet", kind="learned", dataset=DATASET)


def test_config_is_written_once_and_a_same_config_resume_leaves_it(tmp_path):
    run_dir = RunDir(tmp_path / "run")
    assert not run_dir.exists()
    _write(run_dir)
    assert run_dir.record() == {"model": "wavenet", "kind": "learned", "config": CONFIG, "dataset": DATASET}
    before = os.stat(run_dir.run_path).st_mtime_ns
    os.utime(run_dir.run_path, ns=(before - 10**9, before - 10**9))  # a rewrite would move the time on
    _write(run_dir, config=json.loads(json.dumps(CONFIG)))
    assert os.stat(run_dir.run_path).st_mtime_ns == before - 10**9


@pytest.mark.parametrize("change, key", [
    (dict(seed=1), "seed"),
    (dict(params={**CONFIG["params"], "channels": 16}), "params"),
    (dict(dataset_dir="data/other"), "dataset_dir"),
])
def test_a_different_config_is_refused_and_the_record_kept(tmp_path, change, key):
    run_dir = RunDir(tmp_path)
    _write(run_dir)
    text = open(run_dir.run_path).read()
    with pytest.raises(RunConfigMismatch, match=rf"run\.json records another run \(it differs in {key}\)"):
        _write(run_dir, config={**CONFIG, **change})
    assert open(run_dir.run_path).read() == text
    with pytest.raises(RunConfigMismatch, match="differs in model"):
        run_dir.write_config(CONFIG, model="rnn", kind="learned", dataset=DATASET)


def test_a_resume_may_change_training_controls(tmp_path):
    run_dir = RunDir(tmp_path)
    _write(run_dir)
    _write(run_dir, config={**CONFIG, "max_steps": 400, "workers": 2})
    assert run_dir.config()["max_steps"] == 400 and run_dir.config()["workers"] == 2
    assert rundir.RESUMABLE_KEYS >= {"max_steps", "workers"} and "seed" not in rundir.RESUMABLE_KEYS


def test_a_run_recorded_before_its_defaults_were_settled_resumes(tmp_path):
    """Earlier runs recorded only the params they were given: filling in the defaults is the same run."""
    run_dir = RunDir(tmp_path)
    _write(run_dir)
    settled = {**CONFIG, "params": {**CONFIG["params"], "skip_channels": 8, "pooling": "max"}}
    _write(run_dir, config=settled)
    assert run_dir.config()["params"]["pooling"] == "max"
    with pytest.raises(RunConfigMismatch, match="differs in params"):  # a recorded value changed: another run
        _write(run_dir, config={**settled, "params": {**settled["params"], "channels": 16}})


def test_settled_params_overlay_the_config_and_the_checkpoint_is_recorded(tmp_path):
    run_dir = RunDir(tmp_path)
    _write(run_dir)
    (tmp_path / "model.ckpt-20.index").write_bytes(b"")
    run_dir.record_checkpoint(str(tmp_path / "model.ckpt-20"))
    assert not run_dir.finished()  # the pending checkpoint does not mark the run finished
    run_dir.write_results({"model": "wavenet", "test": {}, "settled_params": {"rnn_embedding": "states"}})
    assert RunDir(tmp_path).results()["checkpoint"] == "model.ckpt-20"
    assert RunDir(tmp_path).checkpoint() == os.path.join(os.path.abspath(tmp_path), "model.ckpt-20")
    info = read_run_info(str(tmp_path))
    assert info["config"]["params"] == {**CONFIG["params"], "rnn_embedding": "states"}
    assert RunDir(tmp_path).record()["config"] == CONFIG  # run.json itself is untouched
    RunDir(tmp_path).record_checkpoint("model.ckpt-999")  # after the results: rewritten there, gone from disk
    assert RunDir(tmp_path).results()["checkpoint"] == "model.ckpt-999"
    assert RunDir(tmp_path).checkpoint() is None


def test_a_failed_write_never_replaces_a_good_file(tmp_path, monkeypatch):
    run_dir = RunDir(tmp_path)
    run_dir.write_results({"model": "mfcc", "test": {"PC": {"mean": 0.5, "std": 0.0}}})
    vectors = np.arange(6, dtype=np.float32).reshape(3, 2)
    good = dict(track_ids=["a", "b", "c"], vectors=vectors, splits=["train", "eval", "test"],
                labels=["x", "y", "x"], paths=["a.wav", "b.wav", ""])
    run_dir.write_embeddings(**good)
    results_text = open(run_dir.results_path).read()
    embeddings_bytes = open(run_dir.embeddings_path, "rb").read()

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", fail)
    with pytest.raises(OSError, match="disk full"):
        run_dir.write_embeddings(**good)
    monkeypatch.setattr(json, "dump", fail)
    with pytest.raises(OSError, match="disk full"):
        run_dir.write_results({"model": "mfcc", "test": {}})
    assert open(run_dir.results_path).read() == results_text
    assert open(run_dir.embeddings_path, "rb").read() == embeddings_bytes
    assert sorted(os.listdir(tmp_path)) == ["embeddings.npz", "results.json"]  # no temporary left behind


def test_embeddings_round_trip_and_bad_shapes_are_refused(tmp_path):
    run_dir = RunDir(tmp_path)
    vectors = np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32)
    run_dir.write_embeddings(track_ids=["a", "b", "c"], vectors=vectors, splits=["train", "test", "test"],
                             labels=["x", "y|z", "x"], paths=["a.wav", "b.wav", "c.wav"])
    found = run_dir.embeddings()
    np.testing.assert_array_equal(found.vectors, vectors)
    assert (found.track_ids, found.splits, found.labels) == (["a", "b", "c"], ["train", "test", "test"],
                                                             ["x", "y|z", "x"])
    test = found.split("test")
    assert test.track_ids == ["b", "c"] and test.paths == ["b.wav", "c.wav"]
    np.testing.assert_array_equal(test.vectors, vectors[1:])
    assert run_dir.embedding_dim() == 4
    with pytest.raises(ValueError, match="2 track ids"):
        run_dir.write_embeddings(track_ids=["a", "b"], vectors=vectors, splits=["t"] * 3, labels=["x"] * 3,
                                 paths=[""] * 3)
    with pytest.raises(FileNotFoundError, match="no embeddings.npz"):
        RunDir(tmp_path / "other").embeddings()


def test_a_run_written_by_the_earlier_format_still_reads(tmp_path):
    """Earlier runs wrote run.json at the start (and again at the end) and their final config in results.json."""
    started = {**CONFIG, "params": {**CONFIG["params"]}}
    final = {**CONFIG, "params": {**CONFIG["params"], "rnn_embedding": "outputs", "rnn_reduce": "max"}}
    (tmp_path / "run.json").write_text(json.dumps({"model": "rnn", "kind": "learned", "config": started,
                                                   "dataset": DATASET}))
    (tmp_path / "results.json").write_text(json.dumps({"model": "rnn", "test": {}, "config": final,
                                                       "checkpoint": "model.ckpt-10"}))
    (tmp_path / "model.ckpt-10.index").write_bytes(b"")
    info = read_run_info(str(tmp_path))
    assert info["config"] == final and info["model"] == "rnn" and info["dataset"] == DATASET
    assert RunDir(tmp_path).checkpoint().endswith("model.ckpt-10")
    np.savez(tmp_path / "embeddings.npz", track_ids=np.array(["a"]), embeddings=np.ones((1, 3)),
             splits=np.array(["test"]), labels=np.array(["x"]))  # no paths: earlier runs did not write them
    assert RunDir(tmp_path).embeddings().paths == [""]


def test_read_run_info_errors_name_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_run_info(str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match=r"holds no run \(no run.json\)"):
        read_run_info(str(tmp_path))
    (tmp_path / "run.json").write_text("{not json")
    with pytest.raises(ValueError, match="run.json is not valid JSON"):
        read_run_info(str(tmp_path))
    (tmp_path / "run.json").write_text(json.dumps({"model": "mfcc", "kind": "fitted"}))
    with pytest.raises(ValueError, match="has no 'config' entry"):
        read_run_info(str(tmp_path))
    fitted = tmp_path / "fitted"
    fitted.mkdir()
    (fitted / "fitted_model.json").write_text(json.dumps({"name": "librosa"}))
    assert read_run_info(str(fitted)) == {"model": "librosa", "kind": "fitted", "config": {"params": {}},
                                          "dataset": {}}


# ------------------------------------------------------------------------------ through experiments.run

def test_an_rnn_run_records_its_config_before_training_and_its_readout_in_the_results(synthetic_dataset,
                                                                                        tmp_path):
    """run.json is the config as it was before training ('all' readouts); the readout the run chose on
    eval is in results.json, and the embedder reads the run as it ended."""
    from experiments.run import RunConfig, run
    from musicsim.data.dataset import read_catalog
    from musicsim.embedder import load_embedder
    from musicsim.models.rnn import RNNConfig

    model_dir = str(tmp_path / "rnn")
    results = run(RunConfig(model="rnn", dataset_dir=synthetic_dataset, model_dir=model_dir, max_steps=2,
                            params=RNNConfig(rnn_units=4, section_frames=20, rnn_embedding="all").to_params(),
                            crop_seconds=1.0,
                            eval_seconds=None, save_checkpoints_steps=2, early_stopping_patience=0, eval_repeats=1,
                            workers=1))
    run_dir = RunDir(model_dir)
    assert run_dir.record()["config"]["params"]["rnn_embedding"] == "all"
    settled = results["settled_params"]
    assert settled["rnn_embedding"] in ("states", "outputs") and settled["rnn_reduce"] in ("mean", "max", "last")
    assert run_dir.config()["params"]["rnn_embedding"] == settled["rnn_embedding"]
    embedder = load_embedder(model_dir)
    assert embedder.dim == (8 if settled["rnn_embedding"] == "states" else 4) == run_dir.embedding_dim()
    stored = run_dir.embeddings()
    entry = read_catalog(synthetic_dataset, split="test")[0]
    vectors, ok, _ = embedder.embed_paths(paths=[entry.path], workers=1, progress=False)
    np.testing.assert_allclose(vectors[0], stored.vectors[stored.track_ids.index(entry.track_id)], atol=1e-5)


def test_a_rerun_with_another_config_is_refused_before_it_writes(synthetic_dataset, tmp_path):
    from experiments.run import RunConfig, run

    model_dir = str(tmp_path / "mfcc")
    settings = dict(model="mfcc", dataset_dir=synthetic_dataset, model_dir=model_dir, workers=1, eval_repeats=1)
    run(RunConfig(**settings))
    before = {name: open(os.path.join(model_dir, name), "rb").read() for name in ("run.json", "results.json")}
    run(RunConfig(**settings, rerank="dba:k=2,alpha=0"))  # a training control: the same run, its results redone
    with pytest.raises(RunConfigMismatch, match=r"differs in eval_repeats, rerank, seed\)"):
        run(RunConfig(**{**settings, "eval_repeats": 2}, seed=1))
    assert open(os.path.join(model_dir, "run.json"), "rb").read() != before["run.json"]  # rerank recorded
    assert RunDir(model_dir).config()["rerank"] == "dba:k=2,alpha=0" and RunDir(model_dir).config()["seed"] == 0
    assert "rerank" in RunDir(model_dir).results()
