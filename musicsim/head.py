"""The one head every learned model trains under (paper 2.2, 3.3), its objective injected.

A model only says how it embeds audio (``embed_fn(audio, length, *, params, training)``); an
:class:`Objective` says what it is trained for (as TF-Ranking's ``create_ranking_head(loss_fn,
eval_metric_fns, optimizer)``): its logits, loss, eval metrics and optimizer. The head answers the
three estimator modes the same way for every objective:

- TRAIN: the objective's loss and its optimizer's train op (global-norm clipping, loss scaling);
- EVAL: the loss and the objective's metrics;
- PREDICT: ``embedding`` (``embed_fn``) and ``track_id``.

The paper's objective (:func:`ranking_objective`, the default) scores candidates by the
similarity of their embedding to the query's: the ranking loss (pairwise hinge, equation 2, or
LambdaLoss) and the paper's metrics PC, NDCG@1, NDCG@6, MAP (TF-Ranking metric ops).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import tensorflow as tf
import tensorflow_ranking as tfr

from musicsim import distribute
from musicsim.frontends import loss_scale_optimizer
from musicsim.params import ParamsConfig, ParamsError, hyperparameter
from musicsim.similarity import SIMILARITIES, check_similarity

EmbedFn = Callable[..., tf.Tensor]
LOSSES = ("pairwise", "lambda")
METRIC_KEYS = {
    "PC": (tfr.metrics.RankingMetricKey.ORDERED_PAIR_ACCURACY, None),
    "NDCG@1": (tfr.metrics.RankingMetricKey.NDCG, 1),
    "NDCG@6": (tfr.metrics.RankingMetricKey.NDCG, 6),
    "MAP": (tfr.metrics.RankingMetricKey.MAP, None),
}


@dataclass(frozen=True)
class HeadConfig(ParamsConfig):
    """The head's hyperparameters: the ranking objective's and the optimizer every objective shares.

    Attributes
    ----------
    loss : ``"lambda"`` (LambdaLoss) or ``"pairwise"`` (hinge, equation 2)
    similarity : ``"cosine"`` or ``"euclidean"``, how embeddings are compared
    margin : margin of the pairwise hinge loss
    learning_rate : Adam's learning rate
    clip_norm : clip gradients to this global norm (<= 0: no clipping)
    score_scale : factor (> 0) on the similarity scores before the loss
    """

    loss: str = hyperparameter("lambda", "LambdaLoss (listwise) or the pairwise hinge loss.", choices=LOSSES)
    similarity: str = hyperparameter("cosine", "How embeddings are compared.", choices=SIMILARITIES)
    margin: float = hyperparameter(1.0, "Margin of the pairwise hinge loss.", bounds="non_negative")
    learning_rate: float = hyperparameter(1e-3, "Adam learning rate.", bounds="positive")
    clip_norm: float = hyperparameter(5.0, "Clip gradients to this global norm (0: no clipping).",
                                      bounds="non_negative")
    score_scale: float = hyperparameter(1.0, "Multiply the similarity scores by this before the loss (an inverse "
                                        "temperature: cosine scores span only [-1, 1]); rankings and metrics are "
                                        "unchanged.", bounds="positive")

    def __post_init__(self):
        if self.loss not in LOSSES:
            raise ParamsError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        try:
            check_similarity(self.similarity)
        except ValueError as err:
            raise ParamsError(str(err)) from None
        if not float(self.score_scale) > 0:
            raise ParamsError(f"score_scale must be > 0, got {self.score_scale}")


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

    Parameters
    ----------
    labels, scores : float32 ``[batch, list]``

    Returns
    -------
    float32 scalar (0 when no pair is ordered)
    """
    valid = labels >= 0
    more_relevant = (labels[:, :, None] > labels[:, None, :]) & valid[:, :, None] & valid[:, None, :]
    hinge = tf.nn.relu(margin - scores[:, :, None] + scores[:, None, :])
    weights = tf.cast(more_relevant, scores.dtype)
    return tf.math.divide_no_nan(tf.reduce_sum(hinge * weights), tf.reduce_sum(weights))


def ranking_loss(labels: tf.Tensor, scores: tf.Tensor, *, loss: str, margin: float = 1.0) -> tf.Tensor:
    """The training loss: ``pairwise`` hinge or ``lambda`` (LambdaLoss, NDCG-weighted, TF-Ranking).

    Parameters
    ----------
    labels, scores : float32 ``[batch, list]``; a negative label marks padding
    """
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


def make_train_op(loss: tf.Tensor, *, learning_rate: float, clip_norm: float, params: Mapping,
                  optimizer_fn: Callable[[float], tf.compat.v1.train.Optimizer] | None = None) -> tf.Operation:
    """The train op of every objective: ``optimizer_fn(learning_rate)`` (default Adam, tf.compat.v1) on
    ``loss`` with global-norm clipping.

    Loss scaling is added for float16 mixed precision; variables the loss does not reach (layers kept
    only for the checkpoint) are left alone. Summaries: learning rate and gradient norm.
    """
    tf.compat.v1.summary.scalar("learning_rate", learning_rate)
    optimizer_fn = optimizer_fn or tf.compat.v1.train.AdamOptimizer
    optimizer = loss_scale_optimizer(optimizer_fn(learning_rate), params=params)
    gradients, variables = zip(*[(g, v) for g, v in optimizer.compute_gradients(loss) if g is not None])
    if clip_norm > 0:
        # Under a multi-replica strategy: clip the whole (all-reduced) gradient, not each replica's share.
        gradients, global_norm = distribute.clip_by_global_norm(gradients, clip_norm=clip_norm)
        tf.compat.v1.summary.scalar("gradient_norm", global_norm)
    return optimizer.apply_gradients(zip(gradients, variables), global_step=tf.compat.v1.train.get_global_step())


@dataclass(frozen=True)
class Objective:
    """What a learned model is trained for, injected into :func:`make_model_fn`.

    The three callables play the parts of TF-Ranking's ``logits_fn``, ``loss_fn`` and
    ``eval_metric_fns``; ``logits`` and ``labels`` are whatever the objective needs (tensors or
    dicts of tensors), passed unchanged from ``logits_fn`` to the loss and the metrics.

    Attributes
    ----------
    name : a short name (``"ranking"``, ``"next_frame"``, ...)
    logits_fn : ``(embed_fn, features, labels, *, params, training) -> (logits, labels)``; builds the
        model's outputs for TRAIN and EVAL (it may add TRAIN summaries when ``training``)
    loss_fn : ``(labels, logits, *, params) -> float32 scalar``
    eval_metric_fns : ``{name: (labels, logits, *, params) -> (value, update_op)}``, the EVAL metrics
    optimizer_fn : ``learning_rate -> tf.compat.v1.train.Optimizer`` (default Adam); the learning rate
        and the clipping norm are the head's (:class:`HeadConfig`)
    """

    name: str
    logits_fn: Callable[..., tuple[Any, Any]]
    loss_fn: Callable[..., tf.Tensor]
    eval_metric_fns: Mapping[str, Callable[..., tuple[tf.Tensor, tf.Operation]]] = field(default_factory=dict)
    optimizer_fn: Callable[[float], tf.compat.v1.train.Optimizer] = tf.compat.v1.train.AdamOptimizer


def _ranking_logits(embed_fn: EmbedFn, features: Mapping[str, tf.Tensor], labels: tf.Tensor, *, params: Mapping,
                    training: bool) -> tuple[tf.Tensor, tf.Tensor]:
    config = HeadConfig.from_params(params)
    query_embedding, candidate_embedding = embed_lists(embed_fn, features, params=params, training=training)
    scores = similarity_scores(query_embedding, candidate_embedding, similarity=config.similarity)
    # Cosine scores lie in [-1, 1]: a logistic loss on them cannot separate pairs by more than 2 logits and
    # never saturates; a scale (an inverse temperature) lets it. Rankings, so the metrics, are unchanged.
    scores = scores * float(config.score_scale)
    if training:
        tf.compat.v1.summary.scalar("embedding_norm", tf.reduce_mean(tf.norm(query_embedding, axis=-1)))
    return scores, labels


def _ranking_loss(labels: tf.Tensor, scores: tf.Tensor, *, params: Mapping) -> tf.Tensor:
    config = HeadConfig.from_params(params)
    return ranking_loss(labels, scores, loss=config.loss, margin=float(config.margin))


def _ranking_metric(metric_fn: Callable) -> Callable:
    def metric(labels: tf.Tensor, scores: tf.Tensor, *, params: Mapping):
        del params
        return metric_fn(labels, scores, None)

    return metric


def ranking_objective() -> Objective:
    """The paper's objective: lists ranked by the similarity of embeddings to the query's.

    Features are the listwise contract of ``musicsim.inputs`` (``query_audio``, ``query_length``,
    ``candidate_audio``, ``candidate_length``), labels the candidates' relevance ``[batch, list]``
    (-1: padding). Loss: :func:`ranking_loss` of ``params["loss"]`` on the scaled similarity scores;
    EVAL metrics: PC, NDCG@1, NDCG@6, MAP (TF-Ranking).

    >>> sorted(ranking_objective().eval_metric_fns)
    ['MAP', 'NDCG@1', 'NDCG@6', 'PC']
    """
    return Objective(name="ranking", logits_fn=_ranking_logits, loss_fn=_ranking_loss,
                     eval_metric_fns={name: _ranking_metric(fn) for name, fn in make_metric_fns().items()})


def make_model_fn(embed_fn: EmbedFn, *, objective: Objective | None = None) -> Callable:
    """The ``model_fn`` for ``tf.estimator.Estimator`` of a model's ``embed_fn`` trained for ``objective``.

    Parameters
    ----------
    embed_fn : ``embed_fn(audio [batch, time, ch], length [batch], *, params, training) -> [batch, dim]``
    objective : what TRAIN and EVAL compute (default :func:`ranking_objective`); PREDICT always
        returns ``embed_fn``'s ``embedding`` of ``features["audio"]`` and the ``track_id``

    Hyperparameters come in the estimator's ``params``, settled: the head's (:class:`HeadConfig`),
    the model's and the objective's own.
    """
    objective = objective or ranking_objective()

    def model_fn(features, labels, mode, params):
        params = dict(params or {})
        if mode == tf.estimator.ModeKeys.PREDICT:
            return predict_spec(embed_fn(features["audio"], features["length"], params=params, training=False),
                                features)

        training = mode == tf.estimator.ModeKeys.TRAIN
        logits, labels = objective.logits_fn(embed_fn, features, labels, params=params, training=training)
        loss = objective.loss_fn(labels, logits, params=params)
        if mode == tf.estimator.ModeKeys.EVAL:
            metric_ops = {name: fn(labels, logits, params=params) for name, fn in objective.eval_metric_fns.items()}
            return tf.estimator.EstimatorSpec(mode, loss=loss, eval_metric_ops=metric_ops)

        config = HeadConfig.from_params(params)
        train_op = make_train_op(loss, learning_rate=float(config.learning_rate), clip_norm=float(config.clip_norm),
                                 params=params, optimizer_fn=objective.optimizer_fn)
        return tf.estimator.EstimatorSpec(mode, loss=loss, train_op=train_op)

    return model_fn
