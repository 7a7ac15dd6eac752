"""Album folds (benchmarks/album_folds.py and the rows of benchmarks/generalisation.py): every track a query
once, folds album-disjoint, and nothing that reads labels ever sees a test album."""
from __future__ import annotations

import importlib.util
import os
import sys

import numpy as np
import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO_ROOT, "benchmarks", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


album_folds = _load("album_folds")
generalisation = _load("generalisation")

# Album sizes of small corpora: uneven, one tiny album, many equal ones.
CORPORA = [(5, 7, 3, 9, 4, 6, 2, 8, 5, 6, 3), (10,) * 10, (2, 30, 3, 4, 5, 6, 7, 8, 4, 3),
           (12, 3, 3, 3, 3, 3, 3, 3, 3, 3), (28, 22, 18, 17, 17, 16, 16, 13, 13, 12, 12, 11, 10, 10, 3)]


def _albums(sizes) -> list[str]:
    return [f"album{a}" for a, size in enumerate(sizes) for _ in range(size)]


def _corpus(sizes, *, dim: int = 6, seed: int = 0):
    """Tracks near their album's centre: albums are findable, not trivially."""
    rng = np.random.default_rng(seed)
    albums = _albums(sizes)
    centres = {a: rng.standard_normal(dim) for a in set(albums)}
    vectors = np.stack([centres[a] + 0.9 * rng.standard_normal(dim) for a in albums])
    return albums, vectors


@pytest.mark.parametrize("sizes", CORPORA)
@pytest.mark.parametrize("n_folds", [2, 3, 5])
def test_folds_are_album_disjoint_balanced_and_seeded(sizes, n_folds):
    albums = _albums(sizes)
    folds = album_folds.assign_album_folds(albums=albums, n_folds=n_folds, seed=3)
    assert folds.shape == (len(albums),) and set(folds) == set(range(n_folds))
    for album in set(albums):
        assert len({f for f, a in zip(folds, albums) if a == album}) == 1, album
    counts = np.bincount(folds, minlength=n_folds)
    assert counts.max() - counts.min() <= max(sizes)
    assert all(len({a for a, f in zip(albums, folds) if f == fold}) >= 2 for fold in range(n_folds))
    np.testing.assert_array_equal(folds, album_folds.assign_album_folds(albums=albums, n_folds=n_folds, seed=3))
    # The track order does not matter: an album lands in the same fold however the tracks are listed.
    order = np.random.default_rng(0).permutation(len(albums))
    shuffled = album_folds.assign_album_folds(albums=[albums[i] for i in order], n_folds=n_folds, seed=3)
    assert {albums[i]: f for i, f in zip(order, shuffled)} == dict(zip(albums, folds))


def test_equal_albums_spread_differently_by_seed_and_too_few_albums_is_an_error():
    albums = _albums((4,) * 10)
    by_seed = {tuple(album_folds.assign_album_folds(albums=albums, n_folds=5, seed=s)) for s in range(6)}
    assert len(by_seed) > 1
    with pytest.raises(album_folds.AlbumFoldsError, match="at least 10 albums"):
        album_folds.assign_album_folds(albums=_albums((3,) * 9), n_folds=5)


@pytest.mark.parametrize("sizes", CORPORA[:3])
def test_every_track_is_a_query_once_and_choose_never_receives_a_test_row(sizes):
    albums, vectors = _corpus(sizes)
    folds = album_folds.assign_album_folds(albums=albums, n_folds=3, seed=0)
    ids = np.arange(len(albums), dtype=np.float64)[:, None]  # a block naming each row
    seen_by_choose, seen_by_search = [], []

    def choose(*, features, labels):
        seen_by_choose.append((features["id"][:, 0].astype(int), list(labels)))
        return "choice"

    def search(*, choice, features):
        assert choice == "choice"
        seen_by_search.append(features["id"][:, 0].astype(int))
        return -np.abs(features["v"][:, None, 0] - features["v"][None, :, 0])

    result = album_folds.run_album_folds(features={"v": vectors, "id": ids}, labels=albums, folds=folds,
                                         choose=choose, search=search, seeds=(0,))
    queried = np.concatenate(seen_by_search)
    assert sorted(queried) == list(range(len(albums)))  # every track a query exactly once
    assert sum(f.n_queries for f in result.folds) == len(albums)
    for (train_rows, train_labels), test_rows in zip(seen_by_choose, seen_by_search):
        assert not set(train_rows) & set(test_rows)
        assert sorted(train_rows) + sorted(test_rows) != [] and len(train_rows) + len(test_rows) == len(albums)
        assert train_labels == [albums[i] for i in train_rows]
        assert not {albums[i] for i in train_rows} & {albums[i] for i in test_rows}


def test_an_album_on_both_sides_is_refused():
    albums, vectors = _corpus((4, 4, 4))
    folds = np.arange(len(albums)) % 2  # splits albums across folds
    with pytest.raises(album_folds.AlbumFoldsError, match="both sides"):
        album_folds.run_album_folds(features={"v": vectors}, labels=albums, folds=folds,
                                    choose=lambda **_: None, search=lambda **kw: np.zeros((6, 6)))


@pytest.mark.parametrize("sizes", CORPORA[:2])
def test_perfect_vectors_score_one_and_pooled_is_the_mean_over_queries(sizes):
    albums = _albums(sizes)
    onehot = np.eye(len(set(albums)))[[int(a.removeprefix("album")) for a in albums]]
    folds = album_folds.assign_album_folds(albums=albums, n_folds=2, seed=1)
    result = album_folds.run_album_folds(
        features={"v": onehot}, labels=albums, folds=folds, choose=lambda **_: None,
        search=lambda *, choice, features: features["v"] @ features["v"].T + 1e-9 * np.random.default_rng(
            0).random((len(features["v"]),) * 2), seeds=(0, 1))
    summary = result.summary()
    for metric in ("catalog_mAP", "PC"):  # P@10 is below 1 for albums under 11 tracks
        assert summary[metric]["mean"] == pytest.approx(1.0) and summary[metric]["pooled"] == pytest.approx(1.0)
    # A weaker row: the pooled mAP is the mean of the per-query APs of every fold.
    albums2, vectors = _corpus(sizes, seed=4)
    weak = album_folds.run_album_folds(
        features={"v": vectors}, labels=albums2, folds=folds, choose=lambda **_: None,
        search=lambda *, choice, features: -np.linalg.norm(features["v"][:, None] - features["v"][None], axis=2),
        seeds=(0,))
    aps = np.concatenate([f.ap for f in weak.folds])
    assert weak.summary()["catalog_mAP"]["pooled"] == pytest.approx(float(np.nanmean(aps)))
    assert weak.summary()["catalog_mAP"]["mean"] == pytest.approx(np.mean([np.nanmean(f.ap) for f in weak.folds]))


def _permuted_test_labels(albums: list[str], folds: np.ndarray, fold: int, seed: int) -> list[str]:
    """The test fold's labels shuffled among its tracks (and renamed): what a leak would notice."""
    labels = np.asarray(albums, dtype=object)
    rows = np.flatnonzero(folds == fold)
    labels[rows] = [f"x{label}" for label in labels[rows][np.random.default_rng(seed).permutation(len(rows))]]
    return list(labels)


def _choices(result, fold):
    choice = result.folds[fold].choice
    return {key: (value.tolist() if isinstance(value, np.ndarray) else value) for key, value in choice.items()
            if key in ("weights", "rerank")}


@pytest.mark.parametrize("variant", [
    dict(weights="search", rerank="choose"),
    dict(weights="search", standardise="train"),
    dict(weights=(1.0, 0.5, 2.0), rerank="choose")])
def test_permuting_the_test_labels_changes_no_choice(variant):
    albums, base = _corpus((6, 5, 7, 4, 6, 5, 8), dim=4, seed=2)
    rng = np.random.default_rng(5)
    features = {"a": base, "b": base[:, :2] + rng.standard_normal((len(albums), 2)),
                "c": rng.standard_normal((len(albums), 3))}
    folds = album_folds.assign_album_folds(albums=albums, n_folds=3, seed=0)
    choose, search = generalisation.engine_row(generalisation.EngineVariant(blocks=("a", "b", "c"), **variant),
                                               n_catalogs=2)
    original = album_folds.run_album_folds(features=features, labels=albums, folds=folds, choose=choose,
                                           search=search, seeds=(0,))
    for fold in range(3):
        permuted = album_folds.run_album_folds(features=features, labels=_permuted_test_labels(albums, folds, fold, 1),
                                               folds=folds, choose=choose, search=search, seeds=(0,))
        assert _choices(permuted, fold) == _choices(original, fold)


def test_the_fitted_choice_never_receives_test_rows_through_a_row_function(monkeypatch):
    """The engine rows' label-reading search (weights, re-ranking) is given training rows only; the test rows
    reach only the search step (catalog standardisation, re-ranking)."""
    albums, base = _corpus((5, 6, 4, 7, 5, 6), dim=3, seed=7)
    ids = np.arange(len(albums), dtype=np.float64)[:, None] * 1e-6
    features = {"a": base, "id": ids}
    folds = album_folds.assign_album_folds(albums=albums, n_folds=3, seed=0)
    seen_while_choosing: list[set] = []
    catalog_map = album_folds.mean_catalog_map

    def spying(*, catalogs, labels, scores_of):
        seen_while_choosing.append(set(labels))
        return catalog_map(catalogs=catalogs, labels=labels, scores_of=scores_of)

    monkeypatch.setattr(album_folds, "mean_catalog_map", spying)
    choose, search = generalisation.engine_row(
        generalisation.EngineVariant(blocks=("a", "id"), weights="search", rerank="choose"), n_catalogs=2)
    seen_in_search = []

    def recording_search(*, choice, features):
        seen_in_search.append({albums[int(round(i * 1e6))] for i in features["id"][:, 0]})
        return search(choice=choice, features=features)

    def recording_choose(*, features, labels):
        seen_while_choosing.clear()
        choice = choose(features=features, labels=labels)
        choice["seen"] = set().union(*seen_while_choosing)
        return choice

    result = album_folds.run_album_folds(features=features, labels=albums, folds=folds, choose=recording_choose,
                                         search=recording_search, seeds=(0,))
    for fold, test_albums in zip(result.folds, seen_in_search):
        assert fold.choice["seen"] and not fold.choice["seen"] & test_albums


@pytest.mark.parametrize("n, most, expected", [(10, None, list(range(10))), (5, 8, [0, 1, 2, 3, 4]),
                                               (10, 5, [1, 3, 5, 7, 9]), (100, 4, [12, 37, 62, 87]),
                                               (7, 7, list(range(7)))])
def test_patches_are_sampled_evenly_spread(n, most, expected):
    assert album_folds.evenly_spread(n, most).tolist() == expected


def test_block_vectors_weigh_blocks_by_weight_over_sqrt_dim_after_a_zscore():
    rng = np.random.default_rng(0)
    features = {"a": rng.standard_normal((20, 4)) * 5 + 3, "b": rng.standard_normal((20, 9))}
    vectors = album_folds.block_vectors(features=features, blocks=("a", "b"), weights=(2.0, 1.0))
    np.testing.assert_allclose(vectors[:, :4].std(axis=0), 2.0 / 2.0)
    np.testing.assert_allclose(vectors[:, 4:].std(axis=0), 1.0 / 3.0)
    np.testing.assert_allclose(vectors.mean(axis=0), 0.0, atol=1e-12)
    dropped = album_folds.block_vectors(features=features, blocks=("a", "b"), weights=(0.0, 1.0))
    assert dropped.shape == (20, 9)


@pytest.mark.parametrize("sizes, wanted, expected", [((5, 6, 4, 7, 5, 6, 3, 8, 4, 6, 5, 7), 4, 4),
                                                     ((5, 6, 4, 7, 5), 4, 2), ((5, 6, 4), 4, 1)])
def test_inner_catalogs_are_album_disjoint_with_two_albums_each(sizes, wanted, expected):
    albums = np.asarray(_albums(sizes))
    catalogs = album_folds.inner_catalogs(labels=albums, n_catalogs=wanted)
    assert len(catalogs) == expected
    assert sorted(np.concatenate(catalogs).tolist()) == list(range(len(albums)))
    for i, rows in enumerate(catalogs):
        assert expected == 1 or len(set(albums[rows])) >= 2
        for other in catalogs[i + 1:]:
            assert not set(albums[rows]) & set(albums[other])
