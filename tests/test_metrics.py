"""Tests for musicsim.metrics: hand-computed cases, padding, NaN conventions, errors, TF-Ranking agreement."""
import math

import numpy as np
import pytest

from musicsim import metrics

LOG2 = math.log2


# --------------------------------------------------------------------------- hand-computed values

NDCG_CASES = [
    # binary, ranked rel = 0 1 0 1: DCG = 1/log2(3) + 1/log2(5); IDCG = 1/log2(2) + 1/log2(3)
    pytest.param([0.9, 0.8, 0.7, 0.6], [0, 1, 0, 1], None,
                 (1 / LOG2(3) + 1 / LOG2(5)) / (1 + 1 / LOG2(3)), id="binary-full"),
    # same list at 2: DCG@2 = 1/log2(3); IDCG@2 = 1 + 1/log2(3)
    pytest.param([0.9, 0.8, 0.7, 0.6], [0, 1, 0, 1], 2, (1 / LOG2(3)) / (1 + 1 / LOG2(3)), id="binary-top2"),
    # top 1 is irrelevant: 0
    pytest.param([0.9, 0.8, 0.7, 0.6], [0, 1, 0, 1], 1, 0.0, id="binary-top1-miss"),
    # graded rel [2, 0, 1], scores rank items 1, 2, 0 -> ranked rel 0 1 2:
    # DCG = 0 + (2^1-1)/log2(3) + (2^2-1)/log2(4) = 1/log2(3) + 3/2; IDCG = 3/1 + 1/log2(3)
    pytest.param([0.1, 0.5, 0.3], [2, 0, 1], None, (1 / LOG2(3) + 1.5) / (3 + 1 / LOG2(3)), id="graded-full"),
    # graded top 1: DCG@1 = 0... ranked first is rel 0 -> 0
    pytest.param([0.1, 0.5, 0.3], [2, 0, 1], 1, 0.0, id="graded-top1"),
    # graded, best first: ranked rel 2 1 0 -> perfect
    pytest.param([0.9, 0.1, 0.5], [2, 0, 1], None, 1.0, id="graded-perfect"),
    # graded, ranked rel 1 2 0: DCG = 1 + 3/log2(3); IDCG = 3 + 1/log2(3)
    pytest.param([0.5, 0.1, 0.9], [2, 0, 1], None, (1 + 3 / LOG2(3)) / (3 + 1 / LOG2(3)), id="graded-swap"),
]


@pytest.mark.parametrize("scores, relevance, topn, expected", NDCG_CASES)
def test_ndcg_hand_computed(scores, relevance, topn, expected):
    result = metrics.ndcg(scores=np.array([scores]), relevance=np.array([relevance], float), topn=topn)
    assert result.shape == (1,)
    assert result[0] == pytest.approx(expected, abs=1e-12)


AP_CASES = [
    # ranked y = 0 1 0 1: P(2) = 1/2, P(4) = 2/4 -> AP = (1/2 + 1/2) / 2
    pytest.param([0.9, 0.8, 0.7, 0.6], [0, 1, 0, 1], 0.5, id="0101"),
    # ranked y = 1 0 1: P(1) = 1, P(3) = 2/3 -> AP = (1 + 2/3) / 2 = 5/6
    pytest.param([3.0, 2.0, 1.0], [1, 0, 1], 5 / 6, id="101"),
    # unsorted input: scores rank items 2, 0, 1 -> ranked y = 0 1 1: (1/2 + 2/3) / 2 = 7/12
    pytest.param([0.5, 0.2, 0.9], [1, 1, 0], 7 / 12, id="unsorted"),
    # graded relevance is binarised (> 0): ranked y = 1 0 1 -> 5/6 as above
    pytest.param([3.0, 2.0, 1.0], [2.5, 0, 0.5], 5 / 6, id="graded-binarised"),
]


@pytest.mark.parametrize("scores, relevance, expected", AP_CASES)
def test_average_precision_hand_computed(scores, relevance, expected):
    result = metrics.average_precision(scores=np.array([scores]), relevance=np.array([relevance], float))
    assert result[0] == pytest.approx(expected, abs=1e-12)


PC_CASES = [
    # rel [2, 1, 0]: ordered pairs (0,1), (0,2), (1,2); scores .5 .9 .1 -> (0,1) wrong, others right: 2/3
    pytest.param([0.5, 0.9, 0.1], [2, 1, 0], 2 / 3, id="graded"),
    # a score tie counts as wrong (TF-Ranking OPA): (0,1) tied -> 2/3
    pytest.param([0.5, 0.5, 0.1], [2, 1, 0], 2 / 3, id="tie-is-wrong"),
    # binary rel [1, 1, 0, 0]: 4 pairs; scores put item 2 above item 1 -> (1,2) wrong: 3/4
    pytest.param([0.9, 0.3, 0.5, 0.1], [1, 1, 0, 0], 3 / 4, id="binary"),
    # equal relevance is no pair: only (0,1) counts, and it is right
    pytest.param([0.2, 0.1, 0.9], [1, 0, 0], 1 / 2, id="only-ordered-pairs"),
]


@pytest.mark.parametrize("scores, relevance, expected", PC_CASES)
def test_pairwise_accuracy_hand_computed(scores, relevance, expected):
    result = metrics.pairwise_accuracy(scores=np.array([scores]), relevance=np.array([relevance], float))
    assert result[0] == pytest.approx(expected, abs=1e-12)


PRECISION_CASES = [
    # ranked y = 0 1 0 1
    pytest.param([0.9, 0.8, 0.7, 0.6], [0, 1, 0, 1], 1, 0.0, id="p@1"),
    pytest.param([0.9, 0.8, 0.7, 0.6], [0, 1, 0, 1], 2, 1 / 2, id="p@2"),
    pytest.param([0.9, 0.8, 0.7, 0.6], [0, 1, 0, 1], 3, 1 / 3, id="p@3"),
    # k beyond the list: divided by the 2 valid items (the padding does not count): 1/2
    pytest.param([0.9, 0.8, 5.0], [1, 0, -1], 5, 1 / 2, id="k-beyond-valid"),
]


@pytest.mark.parametrize("scores, relevance, k, expected", PRECISION_CASES)
def test_precision_at_k_hand_computed(scores, relevance, k, expected):
    result = metrics.precision_at_k(scores=np.array([scores]), relevance=np.array([relevance], float), k=k)
    assert result[0] == pytest.approx(expected, abs=1e-12)


ALL_METRICS = {
    "ndcg": lambda s, r: metrics.ndcg(scores=s, relevance=r),
    "ndcg@1": lambda s, r: metrics.ndcg(scores=s, relevance=r, topn=1),
    "ap": lambda s, r: metrics.average_precision(scores=s, relevance=r),
    "pc": lambda s, r: metrics.pairwise_accuracy(scores=s, relevance=r),
    "p@2": lambda s, r: metrics.precision_at_k(scores=s, relevance=r, k=2),
}


@pytest.mark.parametrize("name", ALL_METRICS)
def test_padding_is_ignored(name):
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(20, 5))
    relevance = rng.integers(0, 3, size=(20, 5)).astype(float)
    relevance[:, 0] = 1.0  # every list has a relevant item and an ordered pair
    relevance[:, 1] = 0.0
    # Padding with the best scores, interleaved with the real items, must change nothing.
    padded_scores = np.concatenate([scores, np.full((20, 3), 100.0)], axis=1)[:, [5, 0, 1, 6, 2, 3, 7, 4]]
    padded_relevance = np.concatenate([relevance, np.full((20, 3), -1.0)], axis=1)[:, [5, 0, 1, 6, 2, 3, 7, 4]]
    metric = ALL_METRICS[name]
    np.testing.assert_allclose(metric(padded_scores, padded_relevance), metric(scores, relevance), atol=1e-12)


@pytest.mark.parametrize("name, relevance, expect_nan", [
    ("ndcg", [0, 0, -1], True),  # nothing relevant
    ("ap", [0, 0, -1], True),
    ("pc", [1, 1, -1], True),  # no ordered pair
    ("pc", [0, 0, 0], True),
    ("p@2", [-1, -1, -1], True),  # nothing valid
    ("p@2", [0, 0, -1], False),  # nothing relevant but defined: 0
])
def test_undefined_queries_are_nan(name, relevance, expect_nan):
    result = ALL_METRICS[name](np.array([[0.3, 0.2, 0.1]]), np.array([relevance], float))
    assert np.isnan(result[0]) == expect_nan
    if not expect_nan:
        assert result[0] == 0.0


@pytest.mark.parametrize("relevance, expected_ndcg_at_1", [([0, 1], 0.0), ([1, 0], 1.0)])
def test_ties_keep_list_order(relevance, expected_ndcg_at_1):
    # Equal scores: the stable sort keeps the first item of the list on top.
    result = metrics.ndcg(scores=np.array([[0.5, 0.5]]), relevance=np.array([relevance], float), topn=1)
    assert result[0] == expected_ndcg_at_1


def test_nan_score_allowed_only_in_padding():
    assert metrics.ndcg(scores=np.array([[1.0, np.nan]]), relevance=np.array([[1.0, -1.0]]))[0] == 1.0
    with pytest.raises(ValueError, match="NaN"):
        metrics.ndcg(scores=np.array([[1.0, np.nan]]), relevance=np.array([[1.0, 0.0]]))


@pytest.mark.parametrize("call, match", [
    (lambda: metrics.precision_at_k(scores=np.zeros((1, 3)), relevance=np.zeros((1, 3)), k=0), "k must"),
    (lambda: metrics.precision_at_k(scores=np.zeros((1, 3)), relevance=np.zeros((1, 3)), k=1.5), "k must"),
    (lambda: metrics.precision_at_k(scores=np.zeros((1, 3)), relevance=np.zeros((1, 3)), k=True), "k must"),
    (lambda: metrics.ndcg(scores=np.zeros((1, 3)), relevance=np.zeros((1, 3)), topn=0), "topn must"),
    (lambda: metrics.ndcg(scores=np.zeros((1, 3)), relevance=np.zeros((1, 4))), "does not match"),
    (lambda: metrics.average_precision(scores=np.zeros((2, 3)), relevance=np.zeros((3, 3))), "does not match"),
    (lambda: metrics.pairwise_accuracy(scores=np.zeros(3), relevance=np.zeros(3)), r"shape \[Q, L\]"),
    (lambda: metrics.average_precision(scores=np.zeros((1, 2)), relevance=np.array([[np.nan, 1.0]])), "NaN"),
])
def test_invalid_arguments_raise(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# --------------------------------------------------------------------------- TF-Ranking 0.5.5 agreement


def _random_lists(seed: int, n_lists: int = 24, list_size: int = 8):
    """Random untied scores, graded labels 0..2 with padding; each list has a relevant item and a pair."""
    rng = np.random.default_rng(seed)
    scores = rng.normal(size=(n_lists, list_size))
    relevance = rng.integers(0, 3, size=(n_lists, list_size)).astype(float)
    relevance[:, 0] = rng.integers(1, 3, size=n_lists)
    relevance[:, 1] = 0.0
    padding = rng.random((n_lists, list_size)) < 0.25
    padding[:, :2] = False
    relevance[padding] = -1.0
    return scores, relevance


@pytest.fixture(scope="module")
def tfr():
    tf = pytest.importorskip("tensorflow")
    tfr = pytest.importorskip("tensorflow_ranking")
    return tf, tfr


def _tfr_value(tf, metric, scores, relevance):
    metric.update_state(tf.constant(relevance, tf.float32), tf.constant(scores, tf.float32))
    return float(metric.result())


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("make_tfr_metric, ours", [
    pytest.param(lambda k: k.NDCGMetric(topn=1), lambda s, r: metrics.ndcg(scores=s, relevance=r, topn=1), id="NDCG@1"),
    pytest.param(lambda k: k.NDCGMetric(topn=6), lambda s, r: metrics.ndcg(scores=s, relevance=r, topn=6), id="NDCG@6"),
    pytest.param(lambda k: k.MeanAveragePrecisionMetric(),
                 lambda s, r: metrics.average_precision(scores=s, relevance=r), id="MAP"),
    pytest.param(lambda k: k.OPAMetric(), lambda s, r: metrics.pairwise_accuracy(scores=s, relevance=r), id="OPA"),
    pytest.param(lambda k: k.PrecisionMetric(topn=3),
                 lambda s, r: metrics.precision_at_k(scores=s, relevance=r, k=3), id="P@3"),
])
def test_agrees_with_tf_ranking_per_list(tfr, seed, make_tfr_metric, ours):
    tf, tfr_module = tfr
    scores, relevance = _random_lists(seed, n_lists=12)
    expected = [_tfr_value(tf, make_tfr_metric(tfr_module.keras.metrics), scores[i:i + 1], relevance[i:i + 1])
                for i in range(len(scores))]
    # TF-Ranking computes in float32.
    np.testing.assert_allclose(ours(scores, relevance), expected, atol=2e-6)


def test_tf_ranking_batch_means(tfr):
    """TF-Ranking averages NDCG/MAP per list but weights OPA by each list's number of pairs."""
    tf, tfr_module = tfr
    keras_metrics = tfr_module.keras.metrics
    scores, relevance = _random_lists(7)
    assert _tfr_value(tf, keras_metrics.NDCGMetric(topn=6), scores, relevance) == pytest.approx(
        metrics.ndcg(scores=scores, relevance=relevance, topn=6).mean(), abs=2e-6)
    assert _tfr_value(tf, keras_metrics.MeanAveragePrecisionMetric(), scores, relevance) == pytest.approx(
        metrics.average_precision(scores=scores, relevance=relevance).mean(), abs=2e-6)
    valid = relevance >= 0
    n_pairs = ((relevance[:, :, None] > relevance[:, None, :]) & valid[:, :, None] & valid[:, None, :]).sum(axis=(1, 2))
    per_list = metrics.pairwise_accuracy(scores=scores, relevance=relevance)
    assert _tfr_value(tf, keras_metrics.OPAMetric(), scores, relevance) == pytest.approx(
        np.average(per_list, weights=n_pairs), abs=2e-6)
