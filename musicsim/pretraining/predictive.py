"""Predictive pretraining: the WaveNet stacks as a next-step predictor (the paper's original plan).

*Target and loss.* The output at step ``t`` predicts the input at step ``t + 1`` as WaveNet does:
each value mu-law companded and quantised to ``quantization_levels`` (256) classes, a softmax
cross-entropy per value. It trains on CPU in a few dozen steps (a 1x1 conv to 256 logits per value
is cheap); unlike an L1 regression its loss does not scale with loudness (mu-law spreads quiet
samples over as many classes as loud ones, so quiet tracks are not ignored), a predictor of the
marginal distribution alone stays well above zero, and it is the objective of the generative
WaveNet the paper meant to reuse. What "the input at step t + 1" is depends on the front end:

- ``raw``: the next pooled-audio sample (one value per channel);
- ``strided``: the next window of ``frontend_stride`` samples of the audio (the window the learned
  filterbank reads at step ``t + 1``), never the filterbank's own output, which could collapse;
- ``logmel``: the next log-mel frame (without the learned ``mel_affine``), an L1 regression per
  mel bin as for the paper's LSTM: log-mel values are not a waveform to mu-law quantise.

*Pooling.* The similarity WaveNet pools after each stack, which would leave one prediction per
``prod(pools)`` input steps and blur which step comes next. During pretraining the stacks run with
no pooling (every output step predicts the next input step), and with *atrous* dilations
(``predictive_atrous``, default): a layer of stack ``s`` gets the dilation ``d * prod(pools[:s])``.
A dilated conv on an unpooled sequence reads the steps the same conv reads after ``prod(pools[:s])``
poolings (the "algorithme a trous"), so each pretrained filter spans the same stretch of music it will
span when fine-tuned with pooling; only the max over each pooling window is missing. Variable shapes
do not depend on pooling or dilation, so the mapping onto the similarity model stays 1:1. With
``predictive_atrous=False`` the dilations are the similarity model's own (later stacks then learn
on a finer time scale than they are reused at).

*Checkpoint completeness.* The predictive graph also builds the embedding tail of ``wavenet.embed``
(``wavenet.embedding_tail``: ``final/conv``, ``dense{j}``) on its skips, never run and never trained, so the checkpoint holds
every variable ``wavenet.embed`` creates and PREDICT (the similarity embedding) restores from it;
the predictor's own layers live under ``predictive/``, a scope no similarity model has.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, Mapping

import numpy as np
import tensorflow as tf

from musicsim import frontends, head
from musicsim.inputs import EVAL, TRAIN, TrackSet, batched_input_fn, crop
from musicsim.models import wavenet
from musicsim.params import ParamsConfig, ParamsError, fill_defaults

# The eval loss must keep decreasing.
EARLY_STOPPING = ("loss", "decrease")


@dataclasses.dataclass(frozen=True)
class PredictiveConfig(ParamsConfig):
    """Predictive pretraining's hyperparameters (its optimizer's are the head's).

    Attributes
    ----------
    quantization_levels : mu-law classes per predicted value (``mu = levels - 1``), >= 2
    predictive_atrous : dilations scaled by the pooling the similarity model applies before each stack
    """

    quantization_levels: int = 256
    predictive_atrous: bool = True

    def __post_init__(self):
        if int(self.quantization_levels) < 2:
            raise ParamsError(f"quantization_levels must be >= 2, got {self.quantization_levels}")
        object.__setattr__(self, "quantization_levels", int(self.quantization_levels))
        object.__setattr__(self, "predictive_atrous", bool(self.predictive_atrous))


def config_of(params: Mapping) -> PredictiveConfig:
    """:class:`PredictiveConfig` of ``params``; keys it lacks take the defaults (graph functions called on
    their own; a run's params are settled before training)."""
    return PredictiveConfig.from_params(fill_defaults(params, configs=[PredictiveConfig]))


def mu_law_classes(x: tf.Tensor, *, levels: int) -> tf.Tensor:
    """Mu-law companding of ``x`` (clipped to [-1, 1]) quantised to ``levels`` classes: int32, same shape.

    ``y = sign(x) ln(1 + mu |x|) / ln(1 + mu)`` with ``mu = levels - 1``; class ``round((y + 1) / 2 * mu)``.
    """
    mu = float(levels - 1)
    x = tf.clip_by_value(tf.cast(x, tf.float32), -1.0, 1.0)
    companded = tf.sign(x) * tf.math.log1p(mu * tf.abs(x)) / math.log1p(mu)
    return tf.cast(tf.round((companded + 1.0) / 2.0 * mu), tf.int32)


def target_kind(params: Mapping) -> str:
    """The loss of the front end's targets: ``"mulaw"`` (waveform values, classes) or ``"l1"`` (log-mel)."""
    return "l1" if frontends.config_of(params).frontend == "logmel" else "mulaw"


def next_step_targets(audio: tf.Tensor, length: tf.Tensor, *, params: Mapping
                      ) -> tuple[tf.Tensor, tf.Tensor, str]:
    """What each step of the stacks' input sequence is made of, as fixed values to predict.

    Parameters
    ----------
    audio : float ``[batch, time]`` or ``[batch, time, channels]``, right-padded
    length : int ``[batch]``

    Returns
    -------
    targets float32 ``[batch, steps, values]`` (step ``t`` is what the stacks read at step ``t``:
    ``raw``: the sample, ``values = channels``; ``strided``: the window of ``frontend_stride`` samples,
    ``values = stride * channels``; ``logmel``: the frame without ``mel_affine``, ``values = n_mels``),
    valid bool ``[batch, steps, values]`` (the value is real audio, not padding), and the loss kind,
    ``"mulaw"`` (waveform values) or ``"l1"`` (log-mel)
    """
    if audio.shape.rank == 2:
        audio = audio[:, :, None]
    audio = tf.cast(audio, tf.float32)
    length = tf.cast(tf.reshape(length, [-1]), tf.int32)
    frontend = frontends.config_of(params)
    if frontend.frontend == "raw":
        valid = tf.sequence_mask(length, tf.shape(audio)[1])[:, :, None]
        return audio, tf.broadcast_to(valid, tf.shape(audio)), "mulaw"
    if frontend.frontend == "strided":
        stride, channels = int(frontend.frontend_stride), audio.shape[-1]
        steps = tf.maximum((tf.shape(audio)[1] + stride - 1) // stride, 1)
        padded = tf.pad(audio, [[0, 0], [0, steps * stride - tf.shape(audio)[1]], [0, 0]])
        valid = tf.sequence_mask(length, steps * stride)[:, :, None]
        valid = tf.broadcast_to(valid, tf.shape(padded))
        return (tf.reshape(padded, [-1, steps, stride * channels]),
                tf.reshape(valid, [-1, steps, stride * channels]), "mulaw")
    features, frames = frontends.logmel(audio, length, params={**params, "mel_affine": False})
    valid = tf.broadcast_to(tf.sequence_mask(frames, tf.shape(features)[1])[:, :, None], tf.shape(features))
    return features, valid, "l1"


def next_step_predictions(audio: tf.Tensor, length: tf.Tensor, *, params: Mapping, training: bool,
                          values: int, kind: str) -> tf.Tensor:
    """Predictions of the next step from the stacks' skips: ``relu(concat(skips))``, two 1x1 convs.

    The stacks are ``wavenet.stacks`` unpooled (atrous when ``predictive_atrous``), so they create the
    variables ``frontend/...``, ``input_projection/...`` and ``stack{s}/layer{i}/...`` under the names
    ``wavenet.embed`` gives them; ``wavenet.embedding_tail`` is built on their skips too (without
    dropout, never fetched) so the checkpoint holds every variable of ``wavenet.embed``.

    Parameters
    ----------
    audio : float ``[batch, time]`` or ``[batch, time, channels]``, right-padded
    length : int ``[batch]``
    params : the WaveNet's, the front end's and :class:`PredictiveConfig`'s hyperparameters
    values : values per step of :func:`next_step_targets`
    kind : ``"mulaw"`` or ``"l1"`` (:func:`next_step_targets`)

    Returns
    -------
    ``"mulaw"``: logits ``[batch, steps, values, quantization_levels]``; ``"l1"``: ``[batch, steps, values]``;
    step ``t`` predicts step ``t + 1`` of :func:`next_step_targets`. float32 (mixed precision computes
    inside, as ``wavenet.embed`` does).
    """
    levels = config_of(params).quantization_levels
    net = wavenet.config_of(params)

    @frontends.with_mixed_precision
    def predict(audio, length, *, params, training):
        skips, steps = wavenet.stacks(audio, length, params=params, training=training, pooled=False,
                                      atrous=config_of(params).predictive_atrous)
        wavenet.embedding_tail(skips, steps, config=dataclasses.replace(net, dropout=0.0), training=False)
        hidden = tf.keras.layers.Conv1D(net.skip_channels, 1, activation=tf.nn.relu,
                                        name="predictive/hidden")(tf.nn.relu(tf.concat(skips, axis=-1)))
        outputs = values * (levels if kind == "mulaw" else 1)
        return tf.keras.layers.Conv1D(outputs, 1, name="predictive/output")(hidden)

    outputs = predict(audio, length, params=params, training=training)
    if kind == "mulaw":
        shape = tf.shape(outputs)
        return tf.reshape(outputs, [shape[0], shape[1], values, levels])
    return outputs


def next_step_loss(*, predictions: tf.Tensor, targets: tf.Tensor, valid: tf.Tensor, kind: str, levels: int
                   ) -> tuple[tf.Tensor, tf.Tensor]:
    """Mean loss per real predicted value: step ``t``'s prediction against step ``t + 1``'s target.

    Parameters
    ----------
    predictions : ``[batch, steps, values, levels]`` logits (``"mulaw"``) or ``[batch, steps, values]`` (``"l1"``)
    targets, valid : ``[batch, steps, values]`` (:func:`next_step_targets`)

    Returns
    -------
    float32 scalar loss (cross-entropy in nats, or absolute error) averaged over the values whose
    target is real (0 when there is none), and the float32 weights ``[batch, steps - 1, values]`` used
    """
    weights = tf.cast(valid[:, 1:], tf.float32)
    if kind == "mulaw":
        per_value = tf.nn.sparse_softmax_cross_entropy_with_logits(
            labels=mu_law_classes(targets[:, 1:], levels=levels), logits=predictions[:, :-1])
    elif kind == "l1":
        per_value = tf.abs(predictions[:, :-1] - targets[:, 1:])
    else:
        raise ValueError(f"kind must be 'mulaw' or 'l1', got {kind!r}")
    return tf.math.divide_no_nan(tf.reduce_sum(per_value * weights), tf.reduce_sum(weights)), weights


def _next_step_logits(embed_fn: Callable, features: Mapping[str, tf.Tensor], labels: None, *, params: Mapping,
                      training: bool) -> tuple[dict[str, tf.Tensor], dict[str, tf.Tensor]]:
    """The objective's logits: next-step predictions, and the targets they are scored against."""
    del embed_fn, labels  # the stacks run unpooled here, not through the similarity embedding; no labels
    audio = tf.convert_to_tensor(features["audio"], tf.float32)
    length = tf.cast(features["length"], tf.int32)
    targets, valid, kind = next_step_targets(audio, length, params=params)
    predictions = next_step_predictions(audio, length, params=params, training=training,
                                        values=int(targets.shape[-1]), kind=kind)
    return {"predictions": predictions, "kind": kind}, {"targets": targets, "valid": valid}


def _next_step_loss(labels: Mapping[str, tf.Tensor], logits: Mapping, *, params: Mapping) -> tf.Tensor:
    loss, _ = next_step_loss(predictions=logits["predictions"], targets=labels["targets"], valid=labels["valid"],
                             kind=logits["kind"], levels=config_of(params).quantization_levels)
    return loss


def _next_step_accuracy(labels: Mapping[str, tf.Tensor], logits: Mapping, *, params: Mapping
                        ) -> tuple[tf.Tensor, tf.Operation]:
    """How often the most likely class is the next value's (waveform targets: classes)."""
    if logits["kind"] != "mulaw":
        raise ValueError("accuracy needs waveform targets (mu-law classes): build the objective with the run's "
                         "params, which leaves it out for the logmel front end")
    levels = config_of(params).quantization_levels
    predicted = tf.argmax(logits["predictions"][:, :-1], axis=-1, output_type=tf.int32)
    return tf.compat.v1.metrics.accuracy(labels=mu_law_classes(labels["targets"][:, 1:], levels=levels),
                                         predictions=predicted, weights=tf.cast(labels["valid"][:, 1:], tf.float32))


def objective(*, params: Mapping | None = None) -> head.Objective:
    """The WaveNet stacks trained as a next-step predictor (see the module note), for ``head.make_model_fn``.

    TRAIN / EVAL features: ``audio`` float32 ``[batch, time, channels]``, ``length`` int ``[batch]``;
    labels unused (None). Loss: :func:`next_step_loss`; EVAL adds ``accuracy`` (argmax class) for
    waveform targets. PREDICT is the head's: the ``embedding`` of ``wavenet.embed``.

    Parameters
    ----------
    params : the run's; their front end decides whether the targets are classes (``accuracy``) or
        log-mel values (no accuracy). None: waveform targets

    >>> sorted(objective().eval_metric_fns), sorted(objective(params={"frontend": "logmel"}).eval_metric_fns)
    (['accuracy'], [])
    """
    waveform = params is None or target_kind(params) == "mulaw"
    return head.Objective(name="next_step", logits_fn=_next_step_logits, loss_fn=_next_step_loss,
                          eval_metric_fns={"accuracy": _next_step_accuracy} if waveform else {})

def make_predictive_input_fn(*, tracks: TrackSet, mode: str, batch_size: int = 8, crop_seconds: float | None = 4.0,
                             seed: int = 0) -> Callable[..., tf.data.Dataset]:
    """An ``input_fn`` of audio batches for predictive pretraining (no labels).

    Elements: features ``{"audio": float32 [batch, time, channels], "length": int32 [batch]}``,
    right-padded; labels None.

    Parameters
    ----------
    tracks : any tracks (labels unused)
    mode : ``"train"``: endless random ``crop_seconds`` crops, every track (with 2 steps or more:
        something to predict) once per epoch in a seeded shuffled order; ``"eval"``: every track
        once, in order, its centred ``crop_seconds`` crop (None: whole tracks; the stacks then run
        at full resolution over whole tracks, which needs memory)
    """
    if mode not in (TRAIN, EVAL):
        raise ValueError(f"mode must be 'train' or 'eval', got {mode!r}")
    if crop_seconds is not None and not crop_seconds > 0:
        raise ValueError(f"crop_seconds must be positive or None, got {crop_seconds!r}")
    usable = [s for s in tracks.sequences if s.shape[0] >= 2]
    if not usable:
        raise ValueError(f"none of the {len(tracks)} tracks has 2 steps or more: nothing to predict")
    frames = tracks.frames(crop_seconds)

    def element(sequence: np.ndarray) -> dict:
        return {"audio": sequence.astype(np.float32), "length": np.int32(sequence.shape[0])}

    def generate():
        if mode == TRAIN:
            rng = np.random.default_rng(seed)
            while True:
                for i in rng.permutation(len(usable)):
                    yield element(crop(usable[i], frames, rng))
        else:
            for sequence in usable:
                yield element(crop(sequence, frames, None))

    signature = {"audio": tf.TensorSpec([None, tracks.channels], tf.float32), "length": tf.TensorSpec([], tf.int32)}

    return batched_input_fn(generator=generate, signature=signature, batch_size=batch_size)


def run_inputs(*, settings, tracks: dict, train_tracks: TrackSet, train_seed: int) -> tuple[Callable, Callable, dict]:
    """A run's next-step crops: ``(train input_fn, eval input_fn, reported input_fns)`` (as
    ``contrastive.run_inputs``). The stacks run unpooled: eval on crops too, whole tracks would not fit."""
    common = dict(batch_size=settings.batch_size, crop_seconds=settings.crop_seconds)
    train_fn = make_predictive_input_fn(tracks=train_tracks, mode="train", seed=train_seed, **common)
    eval_fn = make_predictive_input_fn(tracks=tracks["eval"], mode="eval", seed=settings.seed, **common)
    return train_fn, eval_fn, {}
