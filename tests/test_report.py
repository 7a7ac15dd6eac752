"""Tests for experiments.report: the results table, the recomputed skew set, the charts, the CLI."""
import json
import math
import os

import numpy as np
import pytest
from PIL import Image

from experiments import report
from musicsim import evaluation
from musicsim.data.dataset import CatalogEntry, DatasetInfo, write_catalog

ALBUMS = ("a", "b", "c", "d")
PER_ALBUM = 3  # test tracks per album: each query has 2 similar and 9 non-similar tracks
TEST_TRACKS = [(f"{album}{k}", album, k) for album in ALBUMS for k in range(PER_ALBUM)]
SEEDS = [0, 1]


def write_dataset(root) -> str:
    """A minimal prepared dataset directory (dataset.json + tracks.csv); the report reads no audio."""
    dataset_dir = os.path.join(root, "prepared")
    os.makedirs(dataset_dir)
    entries = [CatalogEntry(track_id=tid, split="test", labels=(album,), duration_s=1.0, path=f"/x/{tid}.wav")
               for tid, album, _ in TEST_TRACKS]
    entries += [CatalogEntry(track_id=f"train{i}", split="train", labels=(ALBUMS[i % 4],), duration_s=1.0,
                             path=f"/x/train{i}.wav") for i in range(8)]
    write_catalog(dataset_dir, entries)
    DatasetInfo(name="tiny", kind="album_folders", sample_rate=8000, pool_size=5, max_seconds=None,
                relevance="album").save(dataset_dir)
    return dataset_dir


def album_vectors(*, noise: float = 0.0, seed: int = 0) -> dict[str, np.ndarray]:
    """One-hot album embeddings (a perfect model), plus Gaussian noise."""
    rng = np.random.default_rng(seed)
    return {tid: np.eye(len(ALBUMS))[ALBUMS.index(album)] + noise * rng.standard_normal(len(ALBUMS))
            for tid, album, _ in TEST_TRACKS}


def confused_vectors() -> dict[str, np.ndarray]:
    """A reference that fails everywhere: track k of every album shares a one-hot vector with track k
    of the other albums, so all its similar tracks score 0 and 3 non-similar ones score 1."""
    return {tid: np.eye(PER_ALBUM)[k] for tid, _, k in TEST_TRACKS}


def protocol(track_ids):
    labels = {tid: album for tid, album, _ in TEST_TRACKS}
    albums = np.array([labels[t] for t in track_ids])
    relevance = (albums[:, None] == albums[None, :]).astype(np.float64)
    np.fill_diagonal(relevance, 0.0)
    return relevance


def as_json(table):
    return {k: {"mean": v[0], "std": v[1]} for k, v in table.items()}


def write_run(root, name, *, model, dataset_dir, vectors=None, similarity="cosine", seed=0,
              with_embeddings=True, test_ids=None) -> str:
    """A run directory as experiments.run writes it; its figures computed by musicsim.evaluation."""
    run_dir = os.path.join(root, name)
    os.makedirs(run_dir)
    test_ids = list(test_ids or (vectors or {}) or [t for t, _, _ in TEST_TRACKS])
    relevance = protocol(test_ids)
    common = dict(relevance_matrix=relevance, seeds=SEEDS)
    baselines = {b: evaluation.evaluate(baseline=b, **common) for b in ("random", "worst")}
    if model in baselines:
        test = baselines[model]
    else:
        test = evaluation.evaluate(embeddings=np.stack([vectors[t] for t in test_ids]), similarity=similarity,
                                   **common)
    config = {"model": model, "dataset_dir": dataset_dir, "model_dir": run_dir, "seed": seed, "eval_repeats": 2,
              "n_similar": 3, "n_dissimilar": 3, "params": {"similarity": similarity, "learning_rate": 0.001}}
    results = {"model": model, "dataset": "tiny", "dataset_dir": dataset_dir, "relevance": "album",
               "similarity": similarity, "test": as_json(test),
               "baselines": {b: as_json(t) for b, t in baselines.items()},
               "sizes": {"train": 8, "eval": 0, "test": len(test_ids)}, "config": config}
    with open(os.path.join(run_dir, "results.json"), "w") as f:
        json.dump(results, f)
    if with_embeddings and vectors is not None:
        # Train rows come first, with vectors that would spoil every figure if they leaked into the test set.
        train_ids = [f"train{i}" for i in range(8)]
        ids = train_ids + test_ids
        labels = {tid: album for tid, album, _ in TEST_TRACKS}
        np.savez(os.path.join(run_dir, "embeddings.npz"), track_ids=np.array(ids),
                 embeddings=np.concatenate([np.full((8, len(vectors[test_ids[0]])), 7.0),
                                            np.stack([vectors[t] for t in test_ids])]),
                 splits=np.array(["train"] * 8 + ["test"] * len(test_ids)),
                 labels=np.array([ALBUMS[i % 4] for i in range(8)] + [labels[t] for t in test_ids]))
    return run_dir


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
    return write_dataset(str(tmp_path_factory.mktemp("dataset")))


@pytest.fixture(scope="module")
def runs(tmp_path_factory, dataset_dir):
    root = str(tmp_path_factory.mktemp("runs"))
    return {
        "librosa": write_run(root, "librosa", model="librosa", dataset_dir=dataset_dir, vectors=confused_vectors()),
        "wavenet0": write_run(root, "wavenet0", model="wavenet", dataset_dir=dataset_dir, seed=0,
                              vectors=album_vectors(noise=0.6, seed=0)),
        "wavenet1": write_run(root, "wavenet1", model="wavenet", dataset_dir=dataset_dir, seed=1,
                              vectors=album_vectors(noise=0.6, seed=1)),
        "wavenet_euclidean": write_run(root, "wavenet_euclidean", model="wavenet", dataset_dir=dataset_dir,
                                       similarity="euclidean", vectors=album_vectors()),
        "rnn": write_run(root, "rnn", model="rnn", dataset_dir=dataset_dir, vectors=album_vectors(noise=2.0),
                         with_embeddings=False),
        "random": write_run(root, "random", model="random", dataset_dir=dataset_dir),
    }


@pytest.fixture(scope="module")
def built(tmp_path_factory, runs):
    output_dir = str(tmp_path_factory.mktemp("report"))
    table = report.build_report(run_dirs=list(runs.values()), output_dir=output_dir)
    return table, output_dir


def row(table, model, variant=""):
    rows = table[(table["model"] == model) & (table["variant"] == variant)]
    assert len(rows) == 1, f"expected one row for {model} {variant!r}, got {len(rows)}"
    return rows.iloc[0]


def results_of(run_dir):
    with open(os.path.join(run_dir, "results.json")) as f:
        return json.load(f)


def test_table_rows_and_columns(built):
    table, _ = built
    assert list(zip(table["model"], table["variant"])) == [
        ("wavenet", "similarity=cosine"), ("wavenet", "similarity=euclidean"), ("rnn", ""), ("librosa", ""),
        ("random", ""), ("worst", "")]
    assert set(table["dataset"]) == {"tiny"} and set(table["relevance_def"]) == {"album"}
    for metric in report.METRICS + report.SKEW_METRICS:
        assert f"{metric} mean" in table.columns and f"{metric} std" in table.columns
    assert row(table, "wavenet", "similarity=cosine")["runs"] == 2
    assert row(table, "rnn")["runs"] == 1
    # The random model's own run and every run's random baseline are the same evaluation: counted once.
    assert row(table, "random")["runs"] == 1
    assert (table["test_tracks"] == len(TEST_TRACKS)).all()


@pytest.mark.parametrize("run_name, model, variant", [
    ("librosa", "librosa", ""), ("wavenet_euclidean", "wavenet", "similarity=euclidean"), ("rnn", "rnn", "")])
def test_single_run_rows_equal_results_json(built, runs, run_name, model, variant):
    table, _ = built
    expected = results_of(runs[run_name])["test"]
    for metric in report.METRICS:
        assert row(table, model, variant)[f"{metric} mean"] == expected[metric]["mean"]
        assert row(table, model, variant)[f"{metric} std"] == expected[metric]["std"]


def test_repeated_runs_show_mean_and_std_across_runs(built, runs):
    table, _ = built
    both = [results_of(runs[name])["test"] for name in ("wavenet0", "wavenet1")]
    for metric in report.METRICS:
        means = [both[0][metric]["mean"], both[1][metric]["mean"]]
        assert row(table, "wavenet", "similarity=cosine")[f"{metric} mean"] == pytest.approx(sum(means) / 2)
        assert row(table, "wavenet", "similarity=cosine")[f"{metric} std"] == pytest.approx(
            abs(means[0] - means[1]) / 2)
    assert both[0]["PC"]["mean"] != both[1]["PC"]["mean"]  # the two seeds really differ


@pytest.mark.parametrize("baseline", ["random", "worst"])
def test_baseline_rows_equal_results_json(built, runs, baseline):
    table, _ = built
    expected = results_of(runs["wavenet0"])["baselines"][baseline]
    for metric in report.METRICS:
        assert row(table, baseline)[f"{metric} mean"] == expected[metric]["mean"]
        assert row(table, baseline)[f"{metric} std"] == expected[metric]["std"]
    if baseline == "worst":
        assert row(table, "worst")["PC mean"] == 0.0 and row(table, "worst")["NDCG@1 mean"] == 0.0


# The confused reference: per query its skew list holds 2 similar tracks (score 0) and the 3 non-similar
# tracks sharing its vector (score 1), so the similar ones rank 4th and 5th of 5; every pair is lost.
FAILED_AP = (1 / 4 + 2 / 5) / 2
FAILED_NDCG6 = (1 / math.log2(5) + 1 / math.log2(6)) / (1 + 1 / math.log2(3))


@pytest.mark.parametrize("model, variant, expected", [
    ("librosa", "", {"skew/PC": 0.0, "skew/NDCG@1": 0.0, "skew/NDCG@6": FAILED_NDCG6, "skew/MAP": FAILED_AP}),
    ("worst", "", {"skew/PC": 0.0, "skew/NDCG@1": 0.0, "skew/NDCG@6": FAILED_NDCG6, "skew/MAP": FAILED_AP}),
    ("wavenet", "similarity=euclidean", {"skew/PC": 1.0, "skew/NDCG@1": 1.0, "skew/NDCG@6": 1.0, "skew/MAP": 1.0}),
])
def test_skew_metrics_hand_computed(built, model, variant, expected):
    table, _ = built
    for metric, value in expected.items():
        assert row(table, model, variant)[f"{metric} mean"] == pytest.approx(value)
        assert row(table, model, variant)[f"{metric} std"] == pytest.approx(0.0)


def test_skew_of_repeated_runs_and_random(built, runs):
    table, _ = built
    reference_scores = evaluation.similarity_matrix(
        embeddings=np.stack([confused_vectors()[t] for t, _, _ in TEST_TRACKS]))
    relevance = protocol([t for t, _, _ in TEST_TRACKS])
    per_run = []
    for seed in (0, 1):
        vectors = album_vectors(noise=0.6, seed=seed)
        per_run.append(evaluation.evaluate(relevance_matrix=relevance, reference_scores=reference_scores, seeds=SEEDS,
                                           embeddings=np.stack([vectors[t] for t, _, _ in TEST_TRACKS])))
    wavenet = row(table, "wavenet", "similarity=cosine")
    assert wavenet["skew/PC mean"] == pytest.approx((per_run[0]["skew/PC"][0] + per_run[1]["skew/PC"][0]) / 2)
    assert wavenet["skew/PC mean"] > 0.5  # a model that knows the albums survives librosa's failures
    random_pc = row(table, "random")["skew/PC mean"]
    assert 0.0 < random_pc < 1.0 and row(table, "random")["skew/PC std"] > 0.0


def test_run_without_embeddings_has_no_skew(built):
    table, output_dir = built
    assert all(math.isnan(row(table, "rnn")[f"{m} mean"]) for m in report.SKEW_METRICS)
    assert not math.isnan(row(table, "rnn")["PC mean"])
    with open(os.path.join(output_dir, "results.md")) as f:
        markdown = f.read()
    assert "without embeddings.npz" in markdown


def test_markdown_and_csv(built):
    table, output_dir = built
    with open(os.path.join(output_dir, "results.md")) as f:
        markdown = f.read()
    assert "NDCG@6" in markdown and "0.775" in markdown and "catalog mAP" in markdown  # the floors note
    assert "| model | runs | test tracks | PC | NDCG@1 | NDCG@6 | MAP | catalog_mAP | P@10 |" in markdown
    assert "| model | runs | test tracks | skew/PC | skew/NDCG@1 | skew/NDCG@6 | skew/MAP |" in markdown
    librosa_pc = row(table, "librosa")["PC mean"]
    assert f"| librosa | 1 | {len(TEST_TRACKS)} | {librosa_pc:.3f} ± " in markdown
    assert "| wavenet (similarity=euclidean) | 1 |" in markdown
    import pandas as pd

    csv = pd.read_csv(os.path.join(output_dir, "results.csv"), keep_default_na=False, na_values=[""])
    assert csv.shape == table.shape
    np.testing.assert_allclose(csv["PC mean"].to_numpy(float), table["PC mean"].to_numpy(float))


@pytest.mark.parametrize("name", ["tiny_fig14_metrics.png", "tiny_fig15_skew.png"])
def test_charts_are_valid_pngs(built, name):
    _, output_dir = built
    path = os.path.join(output_dir, name)
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        width, height = image.size
        assert width > 600 and height > 400
        assert len(image.convert("L").getcolors(maxcolors=1 << 16) or range(1 << 16)) > 10  # not blank


def test_test_ids_aligned_by_id_not_position(tmp_path, dataset_dir):
    # An mfcc run that skipped one test file and stored the rest in another order, with perfect embeddings:
    # aligned by id, its skew figures are perfect; aligned by position they would not be.
    ids = [t for t, _, _ in TEST_TRACKS]
    shuffled = [ids[i] for i in np.random.default_rng(0).permutation(len(ids)) if ids[i] != "b1"]
    perfect = album_vectors()
    run_dirs = [write_run(str(tmp_path), "librosa", model="librosa", dataset_dir=dataset_dir,
                          vectors=confused_vectors()),
                write_run(str(tmp_path), "mfcc", model="mfcc", dataset_dir=dataset_dir,
                          vectors={t: perfect[t] for t in shuffled}, test_ids=shuffled)]
    table = report.build_report(run_dirs=run_dirs, output_dir=str(tmp_path / "report"))
    for metric in report.SKEW_METRICS:
        assert row(table, "mfcc")[f"{metric} mean"] == pytest.approx(1.0)
    assert row(table, "mfcc")["test_tracks"] == len(ids) - 1 and row(table, "mfcc")["skew_test_tracks"] == len(ids) - 1
    assert row(table, "worst")["skew_test_tracks"] == len(ids)  # the baselines run on the reference's tracks
    # The baselines were evaluated on 12 and on 11 tracks: two distinct evaluations, said so.
    assert row(table, "worst")["runs"] == 2
    with open(tmp_path / "report" / "results.md") as f:
        markdown = f.read()
    assert "use the 11 they share" in markdown and "different test lists" in markdown


@pytest.mark.parametrize("reference", ["librosa", None])
def test_no_reference_run_means_no_skew_set(tmp_path, dataset_dir, reference):
    run_dirs = [write_run(str(tmp_path), "wavenet", model="wavenet", dataset_dir=dataset_dir,
                          vectors=album_vectors(noise=0.3))]
    table = report.build_report(run_dirs=run_dirs, output_dir=str(tmp_path / "report"), reference=reference)
    assert list(table["model"]) == ["wavenet", "random", "worst"]
    assert table[[f"{m} mean" for m in report.SKEW_METRICS]].isna().all().all()
    assert os.path.exists(tmp_path / "report" / "tiny_fig14_metrics.png")
    assert not os.path.exists(tmp_path / "report" / "tiny_fig15_skew.png")


def test_runs_by_glob_skip_unfinished(tmp_path, dataset_dir, capsys):
    write_run(str(tmp_path), "wavenet-a", model="wavenet", dataset_dir=dataset_dir, vectors=album_vectors())
    os.makedirs(tmp_path / "wavenet-unfinished")
    table = report.build_report(run_dirs=[str(tmp_path / "wavenet-*")], output_dir=str(tmp_path / "report"))
    assert list(table["model"]) == ["wavenet", "random", "worst"]
    assert "wavenet-unfinished: no results.json" in capsys.readouterr().err


def test_cli_prints_markdown(tmp_path, runs, capsys):
    from absl import flags

    flags.FLAGS(["report", f"--runs={runs['librosa']},{runs['wavenet_euclidean']}",
                 f"--output={tmp_path / 'cli'}"])
    try:
        report.main([])
    finally:
        flags.FLAGS.unparse_flags()
    printed = capsys.readouterr().out
    assert printed.startswith("# Results") and "| wavenet | 1 |" in printed and "| librosa | 1 |" in printed
    assert os.path.exists(tmp_path / "cli" / "results.csv")


def _no_results(tmp_path):
    os.makedirs(tmp_path / "run")
    return [str(tmp_path / "run")]


def _bad_json(tmp_path):
    os.makedirs(tmp_path / "run")
    (tmp_path / "run" / "results.json").write_text("{not json")
    return [str(tmp_path / "run")]


def _incomplete(tmp_path):
    os.makedirs(tmp_path / "run")
    (tmp_path / "run" / "results.json").write_text(json.dumps({"model": "wavenet"}))
    return [str(tmp_path / "run")]


def _bad_metric(tmp_path):
    os.makedirs(tmp_path / "run")
    (tmp_path / "run" / "results.json").write_text(json.dumps(
        {"model": "wavenet", "dataset_dir": str(tmp_path), "relevance": "album", "test": {"PC": 0.5}}))
    return [str(tmp_path / "run")]


@pytest.mark.parametrize("make_run_dirs, error, match", [
    (lambda tmp_path: [str(tmp_path / "nowhere")], FileNotFoundError, "does not exist"),
    (_no_results, FileNotFoundError, "has no results.json"),
    (_bad_json, ValueError, "not valid JSON"),
    (_incomplete, ValueError, r"lacks \['dataset_dir', 'test'\]"),
    (_bad_metric, ValueError, "'test/PC' must be"),
    (lambda tmp_path: [], ValueError, "run_dirs is empty"),
    (lambda tmp_path: str(tmp_path), ValueError, "must be a list"),
    (lambda tmp_path: [str(tmp_path / "none-*")], FileNotFoundError, "matches no run directory"),
])
def test_bad_run_dirs_raise_clear_errors(tmp_path, make_run_dirs, error, match):
    with pytest.raises(error, match=match):
        report.build_report(run_dirs=make_run_dirs(tmp_path), output_dir=str(tmp_path / "report"))


def test_embeddings_that_do_not_reproduce_results_json_are_noted(tmp_path, dataset_dir):
    run_dirs = [write_run(str(tmp_path), name, model=name, dataset_dir=dataset_dir, vectors=vectors)
                for name, vectors in (("librosa", confused_vectors()), ("wavenet", album_vectors(noise=0.6)))]
    report.build_report(run_dirs=run_dirs, output_dir=str(tmp_path / "consistent"))
    with open(tmp_path / "consistent" / "results.md") as f:
        assert "does not reproduce" not in f.read()
    # Overwrite wavenet's embeddings with another model's: results.json no longer matches them.
    with np.load(os.path.join(run_dirs[1], "embeddings.npz")) as npz:
        arrays = dict(npz)
    arrays["embeddings"] = np.random.default_rng(5).standard_normal(arrays["embeddings"].shape)
    np.savez(os.path.join(run_dirs[1], "embeddings.npz"), **arrays)
    report.build_report(run_dirs=run_dirs, output_dir=str(tmp_path / "stale"))
    with open(tmp_path / "stale" / "results.md") as f:
        assert "wavenet: embeddings.npz does not reproduce results.json (PC " in f.read()
