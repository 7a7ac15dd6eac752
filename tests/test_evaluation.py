"""Tests for musicsim.evaluation: list construction, skew set, scorers, protocol figures."""
import itertools
import math

import numpy as np
import pytest

from musicsim import evaluation, metrics


def album_relevance(albums):
    """Binary same-album relevance ``[N, N]`` from a list of album ids."""
    albums = np.asarray(albums)
    return (albums[:, None] == albums[None, :]).astype(np.float64)


# 3 albums of 5, one of 2 (1 similar each: padded lists), one singleton (no similar: skipped).
ALBUMS = [0] * 5 + [1] * 5 + [2] * 5 + [3] * 2 + [4]
RELEVANCE = album_relevance(ALBUMS)
BINARY = RELEVANCE > 0


@pytest.fixture(scope="module")
def lists():
    return evaluation.make_ranking_lists(relevance_matrix=RELEVANCE, binary=BINARY, seed=0)


@pytest.fixture(scope="module")
def pairs():
    return evaluation.make_pair_lists(binary=BINARY, n_pairs=15, seed=0)


# --------------------------------------------------------------------------- ranking lists


def test_ranking_lists_shape_query_and_skipped(lists):
    # Track 17 is alone in its album: no similar track, no list.
    assert lists.query.tolist() == list(range(17))
    assert lists.candidates.shape == (17, 6) and lists.relevance.shape == (17, 6)
    assert not (lists.candidates == lists.query[:, None]).any()


def test_ranking_lists_counts_relevance_and_distinct(lists):
    for query, candidates, relevance in zip(lists.query, lists.candidates, lists.relevance):
        valid = candidates[candidates >= 0]
        assert len(set(valid.tolist())) == len(valid)
        np.testing.assert_array_equal(relevance[candidates >= 0], RELEVANCE[query, valid])
        n_similar = int(BINARY[query, valid].sum())
        expected_similar = 3 if ALBUMS[query] < 3 else 1  # album of 2: one other track
        assert (n_similar, len(valid) - n_similar) == (expected_similar, 3)


def test_ranking_lists_padding_for_few_similar(lists):
    for row in np.flatnonzero(np.isin(lists.query, [15, 16])):
        # 1 similar + 3 non-similar, then 2 padding entries at the end.
        np.testing.assert_array_equal(lists.candidates[row, 4:], [-1, -1])
        np.testing.assert_array_equal(lists.relevance[row, 4:], [-1.0, -1.0])
        assert (lists.candidates[row, :4] >= 0).all()


def test_ranking_lists_deterministic_and_seed_dependent(lists):
    again = evaluation.make_ranking_lists(relevance_matrix=RELEVANCE, binary=BINARY, seed=0)
    other = evaluation.make_ranking_lists(relevance_matrix=RELEVANCE, binary=BINARY, seed=1)
    np.testing.assert_array_equal(again.candidates, lists.candidates)
    np.testing.assert_array_equal(again.relevance, lists.relevance)
    assert not np.array_equal(other.candidates, lists.candidates)


def test_ranking_lists_are_shuffled():
    relevance = album_relevance(np.repeat(np.arange(4), 50))
    lists = evaluation.make_ranking_lists(relevance_matrix=relevance, binary=relevance > 0, seed=3)
    # Each position holds a similar track half of the time (3 of 6), not always the first three.
    share_similar_by_position = (lists.relevance > 0).mean(axis=0)
    assert np.all(np.abs(share_similar_by_position - 0.5) < 0.15), share_similar_by_position


def test_no_query_with_both_kinds_gives_empty_lists_and_evaluate_lists_raises():
    relevance = np.ones((4, 4))  # everyone similar: no non-similar track anywhere
    lists = evaluation.make_ranking_lists(relevance_matrix=relevance, binary=relevance > 0, seed=0)
    pairs = evaluation.make_pair_lists(binary=relevance > 0, seed=0)
    assert lists.candidates.shape == (0, 6) and pairs.positive.shape == (0, 15)
    with pytest.raises(ValueError, match="no query"):
        evaluation.evaluate_lists(scorer=evaluation.random_scorer(seed=0), lists=lists, pairs=pairs)


# --------------------------------------------------------------------------- pairs


def test_pair_lists_similar_and_not(pairs):
    assert pairs.query.tolist() == list(range(17))
    assert pairs.positive.shape == pairs.negative.shape == (17, 15)
    rows = pairs.query[:, None]
    assert BINARY[rows, pairs.positive].all() and not BINARY[rows, pairs.negative].any()
    assert not (pairs.positive == rows).any()


def test_pair_lists_without_replacement_when_enough(pairs):
    # Album of 5: 4 similar x 13 non-similar = 52 >= 15 combinations: all 15 pairs distinct.
    for row in range(15):
        assert len(set(zip(pairs.positive[row].tolist(), pairs.negative[row].tolist()))) == 15


def test_pair_lists_with_replacement_when_few(pairs):
    # Albums a a b: queries 0 and 1 have 1 similar x 1 non-similar = 1 combination, repeated; 2 is skipped.
    tiny = evaluation.make_pair_lists(binary=album_relevance([0, 0, 1]) > 0, n_pairs=4, seed=0)
    assert tiny.query.tolist() == [0, 1]
    np.testing.assert_array_equal(tiny.positive, [[1] * 4, [0] * 4])
    np.testing.assert_array_equal(tiny.negative, [[2] * 4, [2] * 4])
    # 2 similar x 3 non-similar = 6 < 15: every combination appears.
    binary = album_relevance([0, 0, 0, 1, 1, 1]) > 0
    few = evaluation.make_pair_lists(binary=binary, n_pairs=15, seed=0)
    assert set(zip(few.positive[0].tolist(), few.negative[0].tolist())) == set(itertools.product([1, 2], [3, 4, 5]))


def test_pair_lists_deterministic_and_seed_dependent(pairs):
    again = evaluation.make_pair_lists(binary=BINARY, seed=0)
    other = evaluation.make_pair_lists(binary=BINARY, seed=1)
    np.testing.assert_array_equal(again.positive, pairs.positive)
    np.testing.assert_array_equal(again.negative, pairs.negative)
    assert not np.array_equal(other.positive, pairs.positive)


# --------------------------------------------------------------------------- skew set


def test_skew_lists_take_reference_failures():
    # Query 0's album is 0..4; the reference scores track j by this row (other rows: track index).
    reference = np.tile(np.arange(8, dtype=float), (8, 1))
    reference[0] = [9.0, 0.5, 0.1, 0.9, 0.3, 0.2, 0.8, 0.7]
    relevance = album_relevance([0, 0, 0, 0, 0, 1, 1, 1])
    lists, pairs = evaluation.make_skew_lists(reference_scores=reference, relevance_matrix=relevance,
                                              binary=relevance > 0, n_pairs=5)
    # Similar 1..4 scored .5 .1 .9 .3 -> worst three: 2 (.1), 4 (.3), 1 (.5).
    # Non-similar 5..7 scored .2 .8 .7 -> best: 6 (.8), 7 (.7), 5 (.2).
    assert set(lists.candidates[0].tolist()) == {2, 4, 1, 6, 7, 5}
    # Pair n: n-th worst similar with n-th best non-similar, cycling (4 similar, 3 non-similar).
    np.testing.assert_array_equal(pairs.positive[0], [2, 4, 1, 3, 2])
    np.testing.assert_array_equal(pairs.negative[0], [6, 7, 5, 6, 7])
    # Query 5 (album of 3): similar 6, 7 (scored 6, 7) padded; best non-similar by score: 4, 3, 2.
    row = lists.query.tolist().index(5)
    assert set(lists.candidates[row].tolist()) == {6, 7, 4, 3, 2, -1}
    assert lists.candidates[row, -1] == -1


def test_skew_lists_defeat_the_reference_model():
    rng = np.random.default_rng(0)
    relevance = album_relevance(np.repeat(np.arange(5), 12))
    reference = rng.normal(size=relevance.shape)
    # 3 pairs: the 3 worst similars against the 3 best non-similars, all in the lists below.
    lists, pairs = evaluation.make_skew_lists(reference_scores=reference, relevance_matrix=relevance,
                                              binary=relevance > 0, n_pairs=3)
    skew = evaluation.evaluate_lists(scorer=evaluation.matrix_scorer(scores=reference), lists=lists, pairs=pairs)
    # The reference ranks all its worst similars below its best non-similars: minimum of every metric.
    worst = _minimum_over_permutations(lists.relevance)
    assert skew == pytest.approx(worst, abs=1e-12)


# --------------------------------------------------------------------------- baselines and bounds


def _minimum_over_permutations(relevance):
    """Mean over lists of each metric's minimum over all orderings of the valid candidates (brute force)."""
    minima = {"NDCG@1": [], "NDCG@6": [], "MAP": []}
    for row in relevance:
        valid = row[row >= 0]
        orderings = np.array(list(itertools.permutations(range(len(valid)))), dtype=float)  # scores
        stacked = np.tile(valid, (len(orderings), 1))
        minima["NDCG@1"].append(metrics.ndcg(scores=orderings, relevance=stacked, topn=1).min())
        minima["NDCG@6"].append(metrics.ndcg(scores=orderings, relevance=stacked, topn=6).min())
        minima["MAP"].append(metrics.average_precision(scores=orderings, relevance=(stacked > 0) * 1.0).min())
    return {"PC": 0.0, **{name: float(np.mean(values)) for name, values in minima.items()}}


GRADED = np.array([[3, 2, 0, 1, 0, 2, 0],
                   [2, 3, 1, 0, 2, 0, 0],
                   [0, 1, 3, 2, 0, 0, 1],
                   [1, 0, 2, 3, 0, 1, 0],
                   [0, 2, 0, 0, 3, 1, 2],
                   [2, 0, 0, 1, 1, 3, 0],
                   [0, 0, 1, 0, 2, 0, 3]], dtype=float)


@pytest.mark.parametrize("relevance", [pytest.param(RELEVANCE, id="binary"), pytest.param(GRADED, id="graded")])
def test_worst_scorer_gives_the_minimum_and_perfect_scorer_one(relevance):
    lists = evaluation.make_ranking_lists(relevance_matrix=relevance, binary=relevance > 0, seed=2)
    pairs = evaluation.make_pair_lists(binary=relevance > 0, seed=2)
    worst = evaluation.evaluate_lists(scorer=evaluation.worst_scorer(relevance_matrix=relevance),
                                      lists=lists, pairs=pairs)
    assert worst == pytest.approx(_minimum_over_permutations(lists.relevance), abs=1e-12)
    perfect = evaluation.evaluate_lists(scorer=evaluation.matrix_scorer(scores=relevance), lists=lists, pairs=pairs)
    assert perfect == pytest.approx({"PC": 1.0, "NDCG@1": 1.0, "NDCG@6": 1.0, "MAP": 1.0}, abs=1e-12)


def test_worst_on_3_plus_3_lists_matches_hand_computation():
    relevance = album_relevance(np.repeat(np.arange(3), 4))
    lists = evaluation.make_ranking_lists(relevance_matrix=relevance, binary=relevance > 0, seed=0)
    pairs = evaluation.make_pair_lists(binary=relevance > 0, seed=0)
    worst = evaluation.evaluate_lists(scorer=evaluation.worst_scorer(relevance_matrix=relevance),
                                      lists=lists, pairs=pairs)
    # Ranked y = 0 0 0 1 1 1. NDCG@6 = (1/log2 5 + 1/log2 6 + 1/log2 7) / (1 + 1/log2 3 + 1/log2 4);
    # AP = (1/4 + 2/5 + 3/6) / 3.
    log2 = math.log2
    assert worst["NDCG@6"] == pytest.approx((1 / log2(5) + 1 / log2(6) + 1 / log2(7)) / (1 + 1 / log2(3) + 0.5))
    assert worst["MAP"] == pytest.approx((1 / 4 + 2 / 5 + 3 / 6) / 3)
    assert (worst["PC"], worst["NDCG@1"]) == (0.0, 0.0)


def test_random_scorer_near_analytic_expectation():
    # E[NDCG@6] of a random ordering of 3 relevant + 3 irrelevant: average over the C(6,3) = 20
    # equally likely sets of relevant positions of DCG / IDCG.
    discount = [1 / math.log2(rank + 1) for rank in range(1, 7)]
    expected_ndcg = np.mean([sum(discount[p] for p in positions) / sum(discount[:3])
                             for positions in itertools.combinations(range(6), 3)])
    assert expected_ndcg == pytest.approx(0.775, abs=1e-3)
    relevance = album_relevance(np.repeat(np.arange(6), 100))  # 600 queries, all 3 + 3
    lists = evaluation.make_ranking_lists(relevance_matrix=relevance, binary=relevance > 0, seed=0)
    pairs = evaluation.make_pair_lists(binary=relevance > 0, seed=0)
    result = evaluation.evaluate_lists(scorer=evaluation.random_scorer(seed=0), lists=lists, pairs=pairs)
    # Per-query NDCG@6 has std ~0.13, so the mean of 600 has std ~0.006: 0.03 is a 5-sigma band.
    assert result["NDCG@6"] == pytest.approx(expected_ndcg, abs=0.03)
    assert result["NDCG@1"] == pytest.approx(0.5, abs=0.08)  # first item similar with probability 1/2
    assert result["PC"] == pytest.approx(0.5, abs=0.03)


# --------------------------------------------------------------------------- catalogue retrieval


def test_catalog_retrieval_hand_computed():
    # Albums a a a b c: query 4 (c) has no similar track and is skipped.
    binary = album_relevance([0, 0, 0, 1, 2]) > 0
    scores = np.array([[9, .9, .1, .5, .3],    # 0 ranks 1 3 4 2: y = 1 0 0 1 -> AP (1 + 2/4)/2 = .75, P@2 = 1/2
                       [.2, 9, .8, .1, .9],    # 1 ranks 4 2 0 3: y = 0 1 1 0 -> AP (1/2 + 2/3)/2 = 7/12, P@2 = 1/2
                       [.1, .2, 9, .3, .4],    # 2 ranks 4 3 1 0: y = 0 0 1 1 -> AP (1/3 + 2/4)/2 = 5/12, P@2 = 0
                       [.9, .1, .1, 9, .1],    # 3 ranks 0 1 2 4 (tie: list order): y = 0 0 0 0 -> skipped
                       [.1, .1, .1, .1, 9]])
    result = evaluation.catalog_retrieval(scores=scores, binary=binary, k=2)
    assert set(result) == {"catalog_mAP", "P@2"}
    assert result["catalog_mAP"] == pytest.approx((0.75 + 7 / 12 + 5 / 12) / 3)
    assert result["P@2"] == pytest.approx((1 / 2 + 1 / 2 + 0) / 3)


def test_catalog_retrieval_excludes_the_query_itself():
    # Every query scores itself highest; if it counted, P@1 would be 1. Its best other track is non-similar.
    binary = album_relevance([0, 0, 1, 1]) > 0
    scores = np.array([[9, 0, 1, 0], [0, 9, 1, 0], [1, 0, 9, 0], [1, 0, 0, 9]], dtype=float)
    assert evaluation.catalog_retrieval(scores=scores, binary=binary, k=1)["P@1"] == 0.0


# --------------------------------------------------------------------------- scorers


EMBEDDINGS = np.array([[1.0, 0.0], [10.0, 0.0], [0.0, 1.0], [0.0, 0.0]])


def test_cosine_and_euclidean_on_hand_made_embeddings():
    cosine = evaluation.similarity_matrix(embeddings=EMBEDDINGS, similarity="cosine")
    euclidean = evaluation.similarity_matrix(embeddings=EMBEDDINGS, similarity="euclidean")
    # [1,0] vs [10,0]: same direction (cosine 1) but 9 apart; vs [0,1]: orthogonal, sqrt(2) apart.
    assert cosine[0, 1] == pytest.approx(1.0) and cosine[0, 2] == pytest.approx(0.0)
    assert euclidean[0, 1] == pytest.approx(-9.0) and euclidean[0, 2] == pytest.approx(-math.sqrt(2))
    assert cosine[0, 3] == 0.0 and euclidean[0, 3] == pytest.approx(-1.0)  # zero vector: cosine 0
    np.testing.assert_allclose(np.diag(euclidean), 0.0)
    # The two similarities rank track 0's candidates 1 and 2 in opposite orders.
    candidates = np.array([[1, 2]])
    assert np.argmax(evaluation.embedding_scorer(embeddings=EMBEDDINGS, similarity="cosine")(
        np.array([0]), candidates)) == 0
    assert np.argmax(evaluation.embedding_scorer(embeddings=EMBEDDINGS, similarity="euclidean")(
        np.array([0]), candidates)) == 1


@pytest.mark.parametrize("similarity", ["cosine", "euclidean"])
def test_embedding_scorer_matches_similarity_matrix(similarity):
    embeddings = np.random.default_rng(0).normal(size=(30, 8))
    matrix = evaluation.similarity_matrix(embeddings=embeddings, similarity=similarity)
    lists = evaluation.make_ranking_lists(relevance_matrix=album_relevance(np.repeat(np.arange(3), 10)),
                                          binary=album_relevance(np.repeat(np.arange(3), 10)) > 0, seed=0)
    scores = evaluation.embedding_scorer(embeddings=embeddings, similarity=similarity)(lists.query, lists.candidates)
    np.testing.assert_allclose(scores, matrix[lists.query[:, None], lists.candidates], atol=1e-9)


def test_random_scorer_is_seeded():
    query, candidates = np.arange(3), np.zeros((3, 4), dtype=int)
    first = evaluation.random_scorer(seed=5)(query, candidates)
    np.testing.assert_array_equal(evaluation.random_scorer(seed=5)(query, candidates), first)
    assert not np.array_equal(evaluation.random_scorer(seed=6)(query, candidates), first)


# --------------------------------------------------------------------------- evaluate()


def _clustered_embeddings(albums, spread, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(max(albums) + 1, 4))
    return centres[albums] + spread * rng.normal(size=(len(albums), 4))


def test_evaluate_keys_and_spread():
    albums = np.repeat(np.arange(4), 10)
    relevance = album_relevance(albums)
    embeddings = _clustered_embeddings(albums, 0.5)
    # A reference that shares the model's errors (its embeddings plus noise): its failures are hard for the model.
    noisy = embeddings + np.random.default_rng(1).normal(scale=0.5, size=embeddings.shape)
    reference = evaluation.similarity_matrix(embeddings=noisy)
    result = evaluation.evaluate(relevance_matrix=relevance, embeddings=embeddings,
                                 reference_scores=reference, seeds=(0, 1, 2))
    assert list(result) == ["PC", "NDCG@1", "NDCG@6", "MAP", "catalog_mAP", "P@10",
                            "skew/PC", "skew/NDCG@1", "skew/NDCG@6", "skew/MAP"]
    assert all(0.0 <= mean <= 1.0 and std >= 0.0 for mean, std in result.values())
    assert result["NDCG@6"][1] > 0  # new lists per seed
    assert result["catalog_mAP"][1] == pytest.approx(0.0, abs=1e-12)  # seed-free
    assert result["skew/MAP"][1] == pytest.approx(0.0, abs=1e-12)
    assert result["skew/MAP"][0] < result["MAP"][0]  # lists built against a reference are harder
    scorer_result = evaluation.evaluate(relevance_matrix=relevance,
                                        scorer=evaluation.random_scorer(seed=0), seeds=(0,))
    assert list(scorer_result) == ["PC", "NDCG@1", "NDCG@6", "MAP"]


@pytest.mark.parametrize("baseline, expected", [
    ("worst", {"PC": 0.0, "NDCG@1": 0.0, "P@10": 0.0}),
    ("random", {"PC": 0.5, "NDCG@1": 0.5}),
])
def test_evaluate_baselines(baseline, expected):
    relevance = album_relevance(np.repeat(np.arange(5), 40))
    result = evaluation.evaluate(relevance_matrix=relevance, baseline=baseline, seeds=(0, 1))
    for name, value in expected.items():
        assert result[name][0] == pytest.approx(value, abs=0.06), name
    if baseline == "random":
        assert result["PC"][1] > 0.0  # new random scores per seed
        # 39 similar of 199 others: random precision is about 39/199.
        assert result["P@10"][0] == pytest.approx(39 / 199, abs=0.03)


def test_evaluate_euclidean_differs_from_cosine():
    albums = np.repeat(np.arange(2), 6)
    # Same album = same direction at different lengths; euclidean sees the lengths, cosine does not.
    directions = np.array([[1.0, 0.0], [0.0, 1.0]])[albums]
    lengths = np.tile([1.0, 2.0, 4.0, 8.0, 16.0, 32.0], 2)[:, None]
    embeddings = directions * lengths
    relevance = album_relevance(albums)
    cosine = evaluation.evaluate(relevance_matrix=relevance, embeddings=embeddings, similarity="cosine", seeds=(0,))
    euclidean = evaluation.evaluate(relevance_matrix=relevance, embeddings=embeddings, similarity="euclidean",
                                    seeds=(0,))
    assert cosine["MAP"][0] == 1.0 and cosine["catalog_mAP"][0] == 1.0
    assert euclidean["catalog_mAP"][0] < 1.0


@pytest.mark.parametrize("kwargs, match", [
    (dict(), "exactly one"),
    (dict(baseline="random", embeddings=np.zeros((3, 2))), "exactly one"),
    (dict(baseline="best"), "baseline must be"),
    (dict(embeddings=np.zeros((3, 2)), similarity="manhattan"), "similarity must be"),
    (dict(embeddings=np.zeros((4, 2))), "scores 4 tracks"),
    (dict(baseline="random", seeds=()), "seeds must not be empty"),
    (dict(baseline="random", seeds=(-1,)), "seeds must be"),
    (dict(baseline="random", binary=np.ones((3, 3), dtype=bool)), "binary view"),
    (dict(baseline="random", n_similar=0), "n_similar must be"),
    (dict(baseline="random", reference_scores=np.zeros((2, 2))), "does not match"),
])
def test_evaluate_invalid_arguments(kwargs, match):
    relevance = album_relevance([0, 0, 1])
    with pytest.raises(ValueError, match=match):
        evaluation.evaluate(relevance_matrix=relevance, **kwargs)


@pytest.mark.parametrize("call, match", [
    (lambda: evaluation.make_ranking_lists(relevance_matrix=np.zeros((2, 3)), binary=np.zeros((2, 3), bool), seed=0),
     "square"),
    (lambda: evaluation.make_ranking_lists(relevance_matrix=-np.ones((2, 2)), binary=np.zeros((2, 2), bool), seed=0),
     ">= 0"),
    (lambda: evaluation.make_pair_lists(binary=np.zeros((2, 2)), seed=0), "bool"),
    (lambda: evaluation.make_pair_lists(binary=np.zeros((2, 2), bool), n_pairs=0, seed=0), "n_pairs must be"),
    (lambda: evaluation.catalog_retrieval(scores=np.zeros((2, 2)), binary=np.eye(2, dtype=bool), k=0), "k must be"),
    (lambda: evaluation.catalog_retrieval(scores=np.zeros((3, 3)), binary=np.eye(2, dtype=bool)), "does not match"),
    (lambda: evaluation.similarity_matrix(embeddings=np.array([[np.nan, 1.0]])), "NaN"),
    (lambda: evaluation.matrix_scorer(scores=np.zeros((2, 2)))(np.array([0]), np.array([[5]])), "out of range"),
])
def test_invalid_arguments_raise(call, match):
    with pytest.raises(ValueError, match=match):
        call()
