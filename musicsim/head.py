"""The one ranking head every learned model shares (paper 2.2, 3.3).

A model only says how it embeds audio (``embed_fn(audio, length, *, params, training)``); this
head scores candidates by the similarity of their embedding to the query's, and answers the three
estimator modes:

- TRAIN: the ranking loss (pairwise hinge, equation 2, or LambdaLoss) and an Adam train op;
- EVAL: the loss and the paper's metrics PC, NDCG@1, NDCG@6, MAP (TF-Ranking metric ops);
- PREDICT: ``embedding`` and ``track_id``.
"""
from __future__ import annotations

from typing import Callable, Mapping

import tensorflow as tf
import tensorflow_ranking as tfr

from musicsim import distribute
from musicsim.frontends import loss_scale_optimizer
from musicsim.similarity import SIMILARITIES

EmbedFn = Callable[..., tf.Tensor]
LOSSES = ("pairwise", "lambda")
METRIC_KEYS = {
    "PC": (tfr.metrics.RankingMetricKey.ORDERED_PAIR_ACCURACY, None),
    "NDCG@1": (tfr.metrics.RankingMetricKey.NDCG, 1),
    "NDCG@6": (tfr.metrics.RankingMetricKey.NDCG, 6),
    "MAP": (tfr.metrics.RankingMetricKey.MAP, None),
}
DEFAULT_HEAD_PARAMS = dict(loss="lambda", similarity="cosine", margin=1.0, learning_rate=1e-3, clip_norm=5.0,
                           score_scale=1.0)


def similarity_scores(query: tf.Tensor, candidates: tf.Tensor, *, similarity: str) -> tf.Tensor:
    """Score candidates against their query.

    Parameters
    ----------
    query : float32 ``[batch, dim]``
    candidates : float32 ``[batch, list, dim]``
    similarity : ``"cosine"`` or ``"euclidean"`` (``-||q - c||``, paper 5.2)

    Returns
    -------
    float32 ``[batch, list]``; higher means more similar
    """
    query = query[:, None, :]
    if similarity == "cosine":
        return tf.reduce_sum(tf.math.l2_normalize(query, -1, epsilon=1e-9)
                             * tf.math.l2_normalize(candidates, -1, epsilon=1e-9), axis=-1)
    if similarity == "euclidean":
        # sqrt has an infinite gradient at 0: keep the squared distance away from it.
        return -tf.sqrt(tf.reduce_sum(tf.square(query - candidates), axis=-1) + 1e-12)
    raise ValueError(f"similarity must be one of {SIMILARITIES}, got {similarity!r}")


def pairwise_hinge_loss(labels: tf.Tensor, scores: tf.Tensor, *, margin: float = 1.0) -> tf.Tensor:
    """Mean of ``max(0, margin - s(q, m+) + s(q, m-))`` over every pair with ``rel(m+) > rel(m-)``.

    With ``s = -d`` this is the paper's ``max(0, 1 - d(q, m-) + d(q, m+))`` (equation 2); candidates
    with a negative label are padding and form no pair.
    """
    valid = labels >= 0
    more_relevant = (labels[:, :, None] > labels[:, None, :]) & valid[:, :, None] & valid[:, None, :]
    hinge = tf.nn.relu(margin - scores[:, :, None] + scores[:, None, :])
    weights = tf.cast(more_relevant, scores.dtype)
    return tf.math.divide_no_nan(tf.reduce_sum(hinge * weights), tf.reduce_sum(weights))


def ranking_loss(labels: tf.Tensor, scores: tf.Tensor, *, loss: str, margin: float = 1.0) -> tf.Tensor:
    """The training loss: ``pairwise`` hinge or ``lambda`` (LambdaLoss, NDCG-weighted, TF-Ranking)."""
    if loss == "pairwise":
        return pairwise_hinge_loss(labels, scores, margin=margin)
    if loss == "lambda":
        loss_fn = tfr.losses.make_loss_fn(tfr.losses.RankingLossKey.PAIRWISE_LOGISTIC_LOSS,
                                          lambda_weight=tfr.losses.create_ndcg_lambda_weight())
        return loss_fn(labels, scores, None)
    raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")


def make_metric_fns() -> dict[str, Callable]:
    """The paper's metrics as named TF-Ranking metric fns ``(labels, predictions, features) -> (value, update)``."""
    return {name: tfr.metrics.make_ranking_metric_fn(key, topn=topn) for name, (key, topn) in METRIC_KEYS.items()}


def _hparam(params: Mapping, key: str):
    return params.get(key, DEFAULT_HEAD_PARAMS[key])


def score_scale(params: Mapping) -> float:
    """The factor on the similarity scores before the loss (``score_scale``, > 0; default 1)."""
    scale = float(_hparam(params, "score_scale"))
    if not scale > 0:
        raise ValueError(f"score_scale must be > 0, got {scale}")
    return scale


def embed_lists(embed_fn: EmbedFn, features: Mapping[str, tf.Tensor], *, params: Mapping, training: bool
                ) -> tuple[tf.Tensor, tf.Tensor]:
    """Embed the query and candidates in one call (one set of weights): ``[batch, dim]``, ``[batch, list, dim]``."""
    query_audio, candidate_audio = features["query_audio"], features["candidate_audio"]
    batch, list_size = tf.shape(candidate_audio)[0], tf.shape(candidate_audio)[1]
    time = tf.maximum(tf.shape(query_audio)[1], tf.shape(candidate_audio)[2])
    channels = query_audio.shape[-1]
    query_audio = tf.pad(query_audio, [[0, 0], [0, time - tf.shape(query_audio)[1]], [0, 0]])
    flat_candidates = tf.reshape(candidate_audio, [batch * list_size, tf.shape(candidate_audio)[2], channels])
    flat_candidates = tf.pad(flat_candidates, [[0, 0], [0, time - tf.shape(flat_candidates)[1]], [0, 0]])
    audio = tf.concat([query_audio, flat_candidates], axis=0)
    length = tf.concat([tf.reshape(features["query_length"], [-1]),
                        tf.reshape(features["candidate_length"], [-1])], axis=0)
    embedding = embed_fn(audio, length, params=params, training=training)
    query_embedding = embedding[:batch]
    candidate_embedding = tf.reshape(embedding[batch:], [batch, list_size, -1])
    return query_embedding, candidate_embedding


def predict_spec(embedding: tf.Tensor, features: Mapping[str, tf.Tensor]) -> tf.estimator.EstimatorSpec:
    """PREDICT: ``embedding`` (and ``track_id`` when fed), with a serving signature returning the embedding."""
    predictions = {"embedding": embedding}
    if "track_id" in features:
        predictions["track_id"] = features["track_id"]
    return tf.estimator.EstimatorSpec(tf.estimator.ModeKeys.PREDICT, predictions=predictions, export_outputs={
        "serving_default": tf.estimator.export.PredictOutput({"embedding": embedding})})


def make_train_op(loss: tf.Tensor, *, learning_rate: float, clip_norm: float, params: Mapping) -> tf.Operation:
    """Adam (tf.compat.v1) on ``loss`` with global-norm clipping: the train op of every model_fn here.

    Loss scaling is added for float16 mixed precision; variables the loss does not reach (layers kept
    only for the checkpoint) are left alone. Summaries: learning rate and gradient norm.
    """
    tf.compat.v1.summary.scalar("learning_rate", learning_rate)
    optimizer = loss_scale_optimizer(tf.compat.v1.train.AdamOptimizer(learning_rate), params=params)
    gradients, variables = zip(*[(g, v) for g, v in optimizer.compute_gradients(loss) if g is not None])
    if clip_norm > 0:
        # Under a multi-replica strategy: clip the whole (all-reduced) gradient, not each replica's share.
        gradients, global_norm = distribute.clip_by_global_norm(gradients, clip_norm=clip_norm)
        tf.compat.v1.summary.scalar("gradient_norm", global_norm)
    return optimizer.apply_gradients(zip(gradients, variables), global_step=tf.compat.v1.train.get_global_step())


def make_model_fn(embed_fn: EmbedFn) -> Callable:
    """A ``model_fn`` for ``tf.estimator.Estimator`` around a model's ``embed_fn``.

    Hyperparameters come in the estimator's ``params``: the head's (``loss``, ``similarity``,
    ``margin``, ``learning_rate``, ``clip_norm``) and the model's own.
    """

    def model_fn(features, labels, mode, params):
        params = dict(params or {})
        training = mode == tf.estimator.ModeKeys.TRAIN
        if mode == tf.estimator.ModeKeys.PREDICT:
            return predict_spec(embed_fn(features["audio"], features["length"], params=params, training=False),
                                features)

        query_embedding, candidate_embedding = embed_lists(embed_fn, features, params=params, training=training)
        scores = similarity_scores(query_embedding, candidate_embedding, similarity=_hparam(params, "similarity"))
        # Cosine scores lie in [-1, 1]: a logistic loss on them cannot separate pairs by more than 2 logits and
        # never saturates; a scale (an inverse temperature) lets it. Rankings, so the metrics, are unchanged.
        scores = scores * score_scale(params)
        loss = ranking_loss(labels, scores, loss=_hparam(params, "loss"), margin=float(_hparam(params, "margin")))
        if mode == tf.estimator.ModeKeys.EVAL:
            metric_ops = {name: fn(labels, scores, features) for name, fn in make_metric_fns().items()}
            return tf.estimator.EstimatorSpec(mode, loss=loss, eval_metric_ops=metric_ops)

        tf.compat.v1.summary.scalar("embedding_norm", tf.reduce_mean(tf.norm(query_embedding, axis=-1)))
        train_op = make_train_op(loss, learning_rate=float(_hparam(params, "learning_rate")),
                                 clip_norm=float(_hparam(params, "clip_norm")), params=params)
        return tf.estimator.EstimatorSpec(mode, loss=loss, train_op=train_op)

    return model_fn
