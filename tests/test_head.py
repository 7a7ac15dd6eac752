"""Tests of the shared ranking head (paper 2.2, 3.3): scores, losses, metric ops, model_fn."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import tensorflow as tf

from musicsim import head, metrics


def run_graph(build, *inputs):
    """Build ``build(*constants)`` in a fresh graph and return its value (numpy)."""
    graph = tf.Graph()
    with graph.as_default():
        outputs = build(*[tf.constant(np.asarray(x)) for x in inputs])
        with tf.compat.v1.Session(graph=graph) as session:
            session.run(tf.compat.v1.global_variables_initializer())
            return session.run(outputs)


# --------------------------------------------------------------------------- similarity_scores

QUERY = np.array([[1.0, 0.0, 2.0], [0.5, -1.0, 0.0]], np.float32)
CANDIDATES = np.array([[[1.0, 0.0, 2.0], [-1.0, 0.0, -2.0], [0.0, 3.0, 0.0], [2.0, 1.0, 1.0]],
                       [[0.5, -1.0, 0.1], [1.0, 1.0, 1.0], [-3.0, 0.0, 4.0], [0.0, 0.0, 0.5]]], np.float32)


def _numpy_scores(query, candidates, similarity):
    if similarity == "cosine":
        q = query / np.linalg.norm(query, axis=-1, keepdims=True)
        c = candidates / np.linalg.norm(candidates, axis=-1, keepdims=True)
        return np.einsum("bd,bld->bl", q, c)
    return -np.linalg.norm(query[:, None, :] - candidates, axis=-1)


@pytest.mark.parametrize("similarity", ["cosine", "euclidean"])
def test_similarity_scores_match_numpy(similarity):
    scores = run_graph(lambda q, c: head.similarity_scores(q, c, similarity=similarity), QUERY, CANDIDATES)
    assert scores.shape == (2, 4)
    np.testing.assert_allclose(scores, _numpy_scores(QUERY, CANDIDATES, similarity), rtol=1e-5, atol=1e-5)


def test_similarity_scores_by_hand():
    cosine = run_graph(lambda q, c: head.similarity_scores(q, c, similarity="cosine"), QUERY[:1], CANDIDATES[:1])
    np.testing.assert_allclose(cosine[0, :3], [1.0, -1.0, 0.0], atol=1e-6)
    euclidean = run_graph(lambda q, c: head.similarity_scores(q, c, similarity="euclidean"), QUERY[:1],
                          CANDIDATES[:1])
    np.testing.assert_allclose(euclidean[0], [0.0, -np.sqrt(20.0), -np.sqrt(14.0), -np.sqrt(3.0)], atol=1e-5)


def test_invalid_similarity_raises():
    with pytest.raises(ValueError, match="similarity must be one of .* got 'dot'"):
        head.similarity_scores(tf.zeros([1, 2]), tf.zeros([1, 3, 2]), similarity="dot")


# --------------------------------------------------------------------------- pairwise hinge loss


@pytest.mark.parametrize("labels, scores, margin, expected", [
    # one pair (0, 1): 1 - 0.5 + 0.2; the padded candidate (-1) forms no pair whatever its score
    ([[1, 0, -1]], [[0.5, 0.2, 9.0]], 1.0, 0.7),
    # graded: pairs (0,1) 1.5, (0,2) 1.2, (1,2) 0.7
    ([[2, 1, 0]], [[0.0, 0.5, 0.2]], 1.0, 3.4 / 3),
    # a batch is averaged over all its pairs, not over lists
    ([[1, 0, -1], [2, 1, 0]], [[0.5, 0.2, 9.0], [0.0, 0.5, 0.2]], 1.0, (0.7 + 1.5 + 1.2 + 0.7) / 4),
    # a small margin: satisfied pairs cost nothing
    ([[1, 0, -1], [2, 1, 0]], [[0.5, 0.2, 9.0], [0.0, 0.5, 0.2]], 0.1, (0.0 + 0.6 + 0.3 + 0.0) / 4),
    # two similar, two not: 4 pairs, scores well apart
    ([[1, 1, 0, 0]], [[3.0, 1.5, 0.0, 1.0]], 1.0, (0 + 0 + 0 + 0.5) / 4),
    # no pair at all: 0, not NaN
    ([[1, 1, -1]], [[0.1, 0.3, 0.0]], 1.0, 0.0),
])
def test_pairwise_hinge_loss_by_hand(labels, scores, margin, expected):
    labels, scores = np.array(labels, np.float32), np.array(scores, np.float32)
    loss = run_graph(lambda l, s: head.pairwise_hinge_loss(l, s, margin=margin), labels, scores)
    np.testing.assert_allclose(loss, expected, rtol=1e-5, atol=1e-6)
    via_ranking_loss = run_graph(lambda l, s: head.ranking_loss(l, s, loss="pairwise", margin=margin),
                                 labels, scores)
    np.testing.assert_allclose(via_ranking_loss, expected, rtol=1e-5, atol=1e-6)


def test_pairwise_hinge_matches_equation_2_with_negative_distances():
    """With ``s = -d``: ``max(0, 1 - d(q, m-) + d(q, m+))`` (paper equation 2)."""
    distance_positive, distance_negative = 0.8, 1.3
    loss = run_graph(lambda l, s: head.pairwise_hinge_loss(l, s), np.array([[1.0, 0.0]], np.float32),
                     np.array([[-distance_positive, -distance_negative]], np.float32))
    np.testing.assert_allclose(loss, max(0.0, 1.0 - distance_negative + distance_positive), rtol=1e-6)


# --------------------------------------------------------------------------- LambdaLoss


def lambda_loss_reference(labels: np.ndarray, scores: np.ndarray) -> float:
    """TF-Ranking 0.5.5's pairwise logistic loss with its NDCG lambda weight, written out.

    For each pair ``l_i > l_j`` of valid candidates (label >= 0):
    ``w_ij * log(1 + exp(-(s_i - s_j)))`` with
    ``w_ij = |G_i - G_j| * |D(|r_i - r_j|) - D(|r_i - r_j| + 1)| * list_width``,
    ``G = (2^l - 1) / maxDCG``, ``D(r) = 1 / ln(1 + r)``, ``r`` the 1-based rank by score among the
    valid candidates; the batch loss is the sum over pairs divided by the number of pairs
    (``SUM_BY_NONZERO_WEIGHTS``).
    """
    labels, scores = np.asarray(labels, np.float64), np.asarray(scores, np.float64)
    width = labels.shape[1]

    def discount(rank):
        return 1.0 / np.log1p(rank)

    total, pairs = 0.0, 0
    for label, score in zip(labels, scores):
        valid = label >= 0
        clean = np.where(valid, label, 0.0)
        order = sorted(range(width), key=lambda k: (not valid[k], -score[k]))
        rank = np.empty(width)
        rank[order] = np.arange(1, width + 1)
        max_dcg = np.sum((2.0 ** np.sort(clean)[::-1] - 1.0) * discount(np.arange(1, width + 1)))
        gain = (2.0 ** clean - 1.0) / max_dcg if max_dcg > 0 else np.zeros(width)
        for i, j in itertools.product(range(width), repeat=2):
            if valid[i] and valid[j] and label[i] > label[j]:
                gap = abs(rank[i] - rank[j])
                weight = abs(gain[i] - gain[j]) * abs(discount(gap) - discount(gap + 1)) * width
                total += weight * np.log1p(np.exp(-(score[i] - score[j])))
                pairs += 1
    return total / pairs if pairs else 0.0


def lambda_loss(labels, scores) -> float:
    return float(run_graph(lambda l, s: head.ranking_loss(l, s, loss="lambda"), np.asarray(labels, np.float32),
                           np.asarray(scores, np.float32)))


@pytest.mark.parametrize("labels, scores", [
    ([[1, 0, 0, 1]], [[0.3, 0.9, -0.2, 0.1]]),
    ([[2, 1, 0, 0]], [[0.1, 0.7, 0.4, -0.5]]),
    ([[1, 0, -1, -1], [0, 1, 1, 0]], [[0.2, 0.5, 3.0, -3.0], [0.9, 0.1, 0.4, -0.3]]),
    ([[3, 0, 1, 2, 0, -1]], [[0.0, 0.2, 0.4, 0.6, 0.8, 1.0]]),
])
def test_lambda_loss_matches_the_tf_ranking_formula(labels, scores):
    np.testing.assert_allclose(lambda_loss(labels, scores), lambda_loss_reference(labels, scores), rtol=1e-5)


@pytest.mark.parametrize("labels", [[1, 1, 0, 0, 0], [2, 1, 1, 0, 0]])
def test_lambda_loss_prefers_the_right_order(labels):
    right = np.sort(np.array(labels, np.float32))[::-1][None]
    order = np.linspace(1.0, -1.0, right.shape[1], dtype=np.float32)[None]  # descending scores
    assert lambda_loss(right, 20 * order) < 1e-3  # far apart and well ordered: next to nothing
    assert lambda_loss(right, order) < lambda_loss(right, -order)  # reversed costs more


@pytest.mark.parametrize("padded_score", [-50.0, 0.0, 0.35, 50.0])
def test_lambda_loss_ignores_the_score_of_padding(padded_score):
    labels = [[1, 0, 1, 0, -1]]
    scores = [[0.3, 0.6, -0.1, 0.2, padded_score]]
    reference = lambda_loss([[1, 0, 1, 0, -1]], [[0.3, 0.6, -0.1, 0.2, 0.0]])
    np.testing.assert_allclose(lambda_loss(labels, scores), reference, rtol=1e-6)


def test_lambda_loss_padding_only_rescales_by_the_list_width():
    """TF-Ranking scales pair weights by the list *width* (padding included), a heuristic: a padded
    column multiplies the loss by (L + 1) / L and changes nothing else. Every list the input_fns
    build has the same width (n_similar + n_dissimilar), so this is one constant factor in training."""
    labels, scores = [[1, 0, 1, 0]], [[0.3, 0.6, -0.1, 0.2]]
    padded = lambda_loss([[1, 0, 1, 0, -1]], [[0.3, 0.6, -0.1, 0.2, 7.0]])
    np.testing.assert_allclose(padded, lambda_loss(labels, scores) * 5 / 4, rtol=1e-6)
    # Within one batch (one width), padding one list does not touch the other list's share.
    batch = lambda_loss([[1, 0, 1, 0], [1, 0, -1, -1]], [[0.3, 0.6, -0.1, 0.2], [0.5, 0.1, 4.0, -4.0]])
    np.testing.assert_allclose(batch, lambda_loss_reference([[1, 0, 1, 0], [1, 0, -1, -1]],
                                                            [[0.3, 0.6, -0.1, 0.2], [0.5, 0.1, 0.0, 0.0]]), rtol=1e-5)


def test_invalid_loss_raises():
    with pytest.raises(ValueError, match="loss must be one of .* got 'softmax'"):
        head.ranking_loss(tf.zeros([1, 2]), tf.zeros([1, 2]), loss="softmax")


# --------------------------------------------------------------------------- metric ops vs numpy

# Fixed lists without score ties; graded labels in list 2, padding in list 3.
METRIC_LABELS = np.array([[1, 0, 0, 1, 0, 1],
                          [0, 0, 1, 0, 1, 0],
                          [2, 0, 1, 0, 0, 1],
                          [1, 0, 0, 1, -1, -1]], np.float32)
METRIC_SCORES = np.array([[0.9, 0.8, 0.1, 0.4, 0.3, 0.2],
                          [0.5, 0.6, 0.1, 0.9, 0.2, 0.3],
                          [0.2, 0.9, 0.8, 0.1, 0.4, 0.7],
                          [0.3, 0.6, 0.5, 0.9, 0.8, 0.0]], np.float32)


def _numpy_metrics(labels: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    valid = labels >= 0
    pair_counts = ((labels[:, :, None] > labels[:, None, :]) & valid[:, :, None] & valid[:, None, :]).sum(axis=(1, 2))
    # TF-Ranking's mean of ORDERED_PAIR_ACCURACY weights each list by its number of pairs.
    return {"PC": np.average(metrics.pairwise_accuracy(scores=scores, relevance=labels), weights=pair_counts),
            "NDCG@1": metrics.ndcg(scores=scores, relevance=labels, topn=1).mean(),
            "NDCG@6": metrics.ndcg(scores=scores, relevance=labels, topn=6).mean(),
            "MAP": metrics.average_precision(scores=scores, relevance=labels).mean()}


@pytest.mark.parametrize("batches", [[[0]], [[1]], [[2]], [[3]], [[0, 1, 2, 3]], [[0, 1], [2, 3]], [[3], [0, 2], [1]]],
                         ids=["binary", "binary2", "graded", "padded", "all", "all-in-2-batches", "all-in-3-batches"])
def test_metric_ops_match_numpy_metrics(batches):
    """The metric ops, streamed over one or more eval batches, against the numpy metrics of all lists."""
    rows = sum(batches, [])
    labels, scores = METRIC_LABELS[rows], METRIC_SCORES[rows]
    graph = tf.Graph()
    with graph.as_default():
        labels_input, scores_input = (tf.compat.v1.placeholder(tf.float32, [None, 6]) for _ in range(2))
        ops = {name: fn(labels_input, scores_input, {}) for name, fn in head.make_metric_fns().items()}
        with tf.compat.v1.Session(graph=graph) as session:
            session.run(tf.compat.v1.local_variables_initializer())
            for batch in batches:
                session.run([update for _, update in ops.values()],
                            {labels_input: METRIC_LABELS[batch], scores_input: METRIC_SCORES[batch]})
            # Read in a separate run: a value read in the run that updates may see the old totals.
            got = session.run({name: value for name, (value, _) in ops.items()})
    assert set(got) == {"PC", "NDCG@1", "NDCG@6", "MAP"}
    expected = _numpy_metrics(labels, scores)
    for name in got:
        np.testing.assert_allclose(got[name], expected[name], rtol=1e-5, err_msg=name)


def test_numpy_metrics_by_hand_on_the_first_list():
    """Anchor the comparison above: list 0 ranked by score is 1, 0, 1, 0, 1, 0 (labels)."""
    expected = _numpy_metrics(METRIC_LABELS[:1], METRIC_SCORES[:1])
    assert expected["NDCG@1"] == pytest.approx(1.0)
    assert expected["MAP"] == pytest.approx((1 + 2 / 3 + 3 / 5) / 3)
    assert expected["PC"] == pytest.approx(6 / 9)  # each similar beats the non-similar ranked below it


# --------------------------------------------------------------------------- embed_lists and model_fn


def summary_embed(audio, length, *, params, training):
    """A weightless embedding: (sum of the real samples, length, first sample) ``[batch, 3]``."""
    mask = tf.sequence_mask(length, tf.shape(audio)[1], dtype=audio.dtype)
    return tf.stack([tf.reduce_sum(audio[:, :, 0] * mask, axis=1), tf.cast(length, audio.dtype), audio[:, 0, 0]], -1)


@pytest.mark.parametrize("query_time, candidate_time", [(5, 9), (9, 5), (7, 7)])
def test_embed_lists_embeds_query_and_candidates_in_order(query_time, candidate_time):
    rng = np.random.default_rng(0)
    query = rng.standard_normal((2, query_time, 1)).astype(np.float32)
    candidates = rng.standard_normal((2, 3, candidate_time, 1)).astype(np.float32)
    query_length = np.array([query_time, 2], np.int32)
    candidate_length = np.array([[candidate_time, 1, 0], [3, candidate_time, 2]], np.int32)
    features = dict(query_audio=query, query_length=query_length, candidate_audio=candidates,
                    candidate_length=candidate_length)
    query_embedding, candidate_embedding = run_graph(
        lambda *values: head.embed_lists(summary_embed, dict(zip(features, values)), params={}, training=False),
        *features.values())
    assert query_embedding.shape == (2, 3) and candidate_embedding.shape == (2, 3, 3)
    for b in range(2):
        n = query_length[b]
        np.testing.assert_allclose(query_embedding[b], [query[b, :n, 0].sum(), n, query[b, 0, 0]], rtol=1e-5)
        for c in range(3):
            n = candidate_length[b, c]
            np.testing.assert_allclose(candidate_embedding[b, c], [candidates[b, c, :n, 0].sum(), n,
                                                                   candidates[b, c, 0, 0]], rtol=1e-5, atol=1e-6)


def linear_embed(audio, length, *, params, training):
    """Masked mean over time, then a learned linear map: ``[batch, 4]``."""
    mask = tf.sequence_mask(length, tf.shape(audio)[1], dtype=audio.dtype)[:, :, None]
    mean = tf.reduce_sum(audio * mask, axis=1) / tf.maximum(tf.reduce_sum(mask, axis=1), 1.0)
    # A seeded initialiser: the tests that train it must not depend on the random state earlier tests left.
    return tf.keras.layers.Dense(4, name="linear", kernel_initializer=tf.keras.initializers.GlorotUniform(seed=0))(mean)


def _list_batch(seed: int):
    """Two lists whose similar candidates share the query's channel profile (two close profiles)."""
    rng = np.random.default_rng(seed)
    profiles = np.array([[1.0, 0.3, 0.2], [0.9, 0.4, 0.2]], np.float32)

    def clip(profile):
        return (profile + 0.01 * rng.standard_normal((6, 3))).astype(np.float32)

    query = np.stack([clip(profiles[0]), clip(profiles[1])])
    candidates = np.stack([np.stack([clip(profiles[k]) for k in (0, 1, 1, 0)]),
                           np.stack([clip(profiles[k]) for k in (0, 1, 0, 1)])])
    labels = np.array([[1, 0, 0, 1], [0, 1, 0, 1]], np.float32)
    features = dict(query_audio=query, query_length=np.array([6, 4], np.int32), candidate_audio=candidates,
                    candidate_length=np.array([[6, 5, 6, 3], [6, 6, 2, 6]], np.int32))
    return features, labels


@pytest.mark.parametrize("loss, similarity", [("lambda", "cosine"), ("pairwise", "euclidean"),
                                              ("pairwise", "cosine")])
def test_model_fn_train_op_lowers_the_loss(loss, similarity):
    features, labels = _list_batch(0)
    model_fn = head.make_model_fn(linear_embed)
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.set_random_seed(0)
        tf.compat.v1.train.get_or_create_global_step()
        spec = model_fn({k: tf.constant(v) for k, v in features.items()}, tf.constant(labels),
                        tf.estimator.ModeKeys.TRAIN,
                        head.HeadConfig(loss=loss, similarity=similarity, learning_rate=0.05).to_params())
        with tf.compat.v1.Session(graph=graph) as session:
            session.run(tf.compat.v1.global_variables_initializer())
            first = session.run(spec.loss)
            for _ in range(40):
                session.run(spec.train_op)
            last, step = session.run([spec.loss, tf.compat.v1.train.get_global_step()])
    assert step == 40
    assert first > 0.1 and last < 0.5 * first


def test_model_fn_eval_and_predict_specs():
    features, labels = _list_batch(1)
    model_fn = head.make_model_fn(linear_embed)
    with tf.Graph().as_default():
        spec = model_fn({k: tf.constant(v) for k, v in features.items()}, tf.constant(labels),
                        tf.estimator.ModeKeys.EVAL, head.HeadConfig().to_params())
        assert set(spec.eval_metric_ops) == {"PC", "NDCG@1", "NDCG@6", "MAP"}
        assert spec.train_op is None
    with tf.Graph().as_default():
        predict_features = dict(audio=tf.constant(features["query_audio"]), length=tf.constant([6, 4]),
                                track_id=tf.constant(["a", "b"]))
        spec = model_fn(predict_features, None, tf.estimator.ModeKeys.PREDICT, head.HeadConfig().to_params())
        assert set(spec.predictions) == {"embedding", "track_id"}
        assert spec.predictions["embedding"].shape.as_list() == [2, 4]


def fixed_embed(audio, length, *, params, training):
    """Masked mean over time, then a constant map: ``[batch, 2]``.

    The first coordinate (channel 1 - 0.35 channel 0) separates `_list_batch`'s two profiles, the
    second (channel 2) is shared by both, so the two profiles' embeddings are about 37 degrees apart
    (cosine ~0.8): the ranking is right but the score gaps are moderate, so scaling the scores changes
    both losses by a wide margin whatever weights other tests created before.
    """
    mask = tf.sequence_mask(length, tf.shape(audio)[1], dtype=audio.dtype)[:, :, None]
    mean = tf.reduce_sum(audio * mask, axis=1) / tf.maximum(tf.reduce_sum(mask, axis=1), 1.0)
    kernel = tf.constant([[-0.35, 0.0], [1.0, 0.0], [0.0, 1.0]], dtype=audio.dtype)
    return tf.matmul(mean, kernel)


def _eval_loss_and_metrics(params: dict) -> tuple[float, dict[str, float]]:
    """EVAL of the head on `_list_batch` with constant weights: the loss and the metric values."""
    features, labels = _list_batch(2)
    model_fn = head.make_model_fn(fixed_embed)
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.set_random_seed(0)
        spec = model_fn({k: tf.constant(v) for k, v in features.items()}, tf.constant(labels),
                        tf.estimator.ModeKeys.EVAL, {**head.HeadConfig().to_params(), **params})
        with tf.compat.v1.Session(graph=graph) as session:
            session.run([tf.compat.v1.global_variables_initializer(), tf.compat.v1.local_variables_initializer()])
            session.run({name: update for name, (_, update) in spec.eval_metric_ops.items()})
            values = session.run({name: value for name, (value, _) in spec.eval_metric_ops.items()})
            return float(session.run(spec.loss)), values


@pytest.mark.parametrize("loss", ["lambda", "pairwise"])
def test_score_scale_changes_the_loss_but_not_the_metrics(loss):
    """The scale multiplies the scores before the loss: the same ranking, a different loss."""
    plain_loss, plain_metrics = _eval_loss_and_metrics(dict(loss=loss))
    scaled_loss, scaled_metrics = _eval_loss_and_metrics(dict(loss=loss, score_scale=10.0))
    assert scaled_metrics == pytest.approx(plain_metrics)
    assert plain_metrics["PC"] == 1.0  # the constant embedding ranks every list right
    assert abs(scaled_loss - plain_loss) > 0.05


@pytest.mark.parametrize("scale", [0.0, -1.0])
def test_score_scale_must_be_positive(scale):
    with pytest.raises(ValueError, match="score_scale must be > 0"):
        _eval_loss_and_metrics(dict(score_scale=scale))


def test_head_config_refuses_a_bad_value():
    with pytest.raises(ValueError, match="score_scale must be > 0"):
        head.HeadConfig(score_scale=0.0)
    with pytest.raises(ValueError, match="loss must be one of"):
        head.HeadConfig(loss="hinge")
    with pytest.raises(ValueError, match="similarity must be one of"):
        head.HeadConfig(similarity="dot")


def test_model_fn_refuses_params_missing_a_head_key():
    """A missing head key is an error naming it, not a silent default."""
    features, labels = _list_batch(1)
    params = head.HeadConfig().to_params()
    del params["margin"]
    with tf.Graph().as_default():
        with pytest.raises(ValueError, match=r"HeadConfig needs params \['margin'\]"):
            head.make_model_fn(linear_embed)({k: tf.constant(v) for k, v in features.items()}, tf.constant(labels),
                                             tf.estimator.ModeKeys.EVAL, params)


def _mean_square_objective(optimizer_calls: list) -> head.Objective:
    """Embed the query only; loss: the mean square of its embedding minus 1; metric: that mean."""

    def logits_fn(embed_fn, features, labels, *, params, training):
        return embed_fn(features["query_audio"], features["query_length"], params=params, training=training), labels

    def loss_fn(labels, logits, *, params):
        return tf.reduce_mean(tf.square(logits - 1.0))

    def optimizer_fn(learning_rate):
        optimizer_calls.append(learning_rate)
        return tf.compat.v1.train.GradientDescentOptimizer(learning_rate)

    return head.Objective(name="mean_square", logits_fn=logits_fn, loss_fn=loss_fn, optimizer_fn=optimizer_fn,
                          eval_metric_fns={"mean": lambda labels, logits, *, params: tf.compat.v1.metrics.mean(
                              logits)})


def test_model_fn_trains_the_injected_objective():
    features, labels = _list_batch(0)
    calls = []
    model_fn = head.make_model_fn(linear_embed, objective=_mean_square_objective(calls))
    params = head.HeadConfig(learning_rate=0.1, clip_norm=0.0).to_params()
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.set_random_seed(0)
        tf.compat.v1.train.get_or_create_global_step()
        spec = model_fn({k: tf.constant(v) for k, v in features.items()}, tf.constant(labels),
                        tf.estimator.ModeKeys.TRAIN, params)
        with tf.compat.v1.Session(graph=graph) as session:
            session.run(tf.compat.v1.global_variables_initializer())
            first = session.run(spec.loss)
            for _ in range(60):
                session.run(spec.train_op)
            last = session.run(spec.loss)
    assert calls == [0.1]  # the optimizer is the objective's, the learning rate the head's
    assert first > 0.1 and last < 1e-2 * first  # a hundredfold fall in 60 steps (seeded weights: deterministic)


def test_model_fn_evaluates_the_injected_objective():
    features, labels = _list_batch(2)
    model_fn = head.make_model_fn(fixed_embed, objective=_mean_square_objective([]))
    with tf.Graph().as_default():
        spec = model_fn({k: tf.constant(v) for k, v in features.items()}, tf.constant(labels),
                        tf.estimator.ModeKeys.EVAL, head.HeadConfig().to_params())
        assert set(spec.eval_metric_ops) == {"mean"}
        with tf.compat.v1.Session() as session:
            session.run(tf.compat.v1.local_variables_initializer())
            session.run(spec.eval_metric_ops["mean"][1])
            loss, mean = session.run([spec.loss, spec.eval_metric_ops["mean"][0]])
    lengths = features["query_length"]
    means = np.stack([features["query_audio"][b, :n].mean(axis=0) for b, n in enumerate(lengths)])
    embedding = means @ np.array([[-0.35, 0.0], [1.0, 0.0], [0.0, 1.0]], np.float32)
    assert mean == pytest.approx(embedding.mean(), rel=1e-5)
    assert loss == pytest.approx(np.mean((embedding - 1.0) ** 2), rel=1e-5)
