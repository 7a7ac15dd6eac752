"""Self-supervised pretraining of the WaveNet, then fine-tuning on labelled similarity (paper 6, "future work").

Two ways to pretrain without labels, so every track of every corpus can be used:

- **contrastive** (:func:`make_contrastive_input_fn`): the query is an augmented random crop of a
  track, its one relevant candidate (label 1) another augmented random crop of the same track, the
  other candidates (label 0) crops of *other tracks of the same batch*. The elements follow the
  listwise contract of :mod:`musicsim.inputs`, so the one ranking head trains on them unchanged:
  ``head.make_model_fn(wavenet.embed)`` (LambdaLoss or the pairwise hinge).
- **predictive** (:func:`make_predictive_model_fn`, :func:`make_predictive_input_fn`): the paper's
  original plan, the WaveNet as a next-step predictor; its stacks are then reused.
- **distill** (:func:`distillation_set`, :func:`make_distillation_input_fn`,
  :func:`make_distillation_model_fn`): the WaveNet learns to reproduce a pretrained teacher's vector
  of the same crop (musicnn's, trained on far more music than the corpora hold), by cosine or MSE on
  the standardised teacher vector. Crops are drawn from a fixed grid per track (every
  ``hop_seconds``), so the teacher's targets are computed once and cached, keyed by track and crop.

Fine-tuning warm-starts a similarity run from a pretrained run with
``tf.estimator.WarmStartSettings``; :func:`warm_start_vars` gives the variable regex (the stacks
only, or all variables). Every variable keeps the name ``wavenet.embed`` gives it
(``frontend/...``, ``input_projection/...``, ``stack{s}/layer{i}/{filter,gate,residual,skip}``,
``final/conv``, ``dense{j}``), so the mapping is 1:1 by name.

Predictive pretraining, the choices
-----------------------------------
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
(``final/conv``, ``dense{j}``) on its skips, never run and never trained, so the checkpoint holds
every variable ``wavenet.embed`` creates and PREDICT (the similarity embedding) restores from it;
the predictor's own layers live under ``predictive/``, a scope no similarity model has.

Wiring into ``experiments.run`` (done by the lead): see :func:`pretraining_model_fn`,
:func:`pretraining_early_stopping` and :func:`warm_start_vars`.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
from dataclasses import dataclass
from typing import Callable, Iterator, Mapping, Protocol, Sequence

import numpy as np
import scipy.signal
import tensorflow as tf

from musicsim import frontends, head
from musicsim.features import _write_atomic
from musicsim.inputs import EVAL, TRAIN, TrackSet, crop, crop_grid
from musicsim.models import wavenet

PRETRAINING_KINDS = ("contrastive", "predictive", "distill")
DISTILL_LOSSES = ("cosine", "mse")
DISTILL_DEFAULT_LOSS = "cosine"
WARM_START_SCOPES = ("stacks", "all")
# The runner's early stopping of predictive pretraining: the eval loss must keep decreasing.
EARLY_STOPPING = ("loss", "decrease")
# Contrastive pretraining is scored by the head's metrics on the eval split's (fixed) contrastive lists.
CONTRASTIVE_EARLY_STOPPING = ("NDCG@6", "increase")

PREDICTIVE_DEFAULT_PARAMS = dict(
    quantization_levels=256,  # mu-law classes per predicted value (mu = levels - 1)
    predictive_atrous=True,  # dilations scaled by the pooling the similarity model applies before each stack
    learning_rate=1e-3,
    clip_norm=5.0,
)
# Warm-start "stacks": everything before the stacks' outputs. Variable names carry ":0" for get_collection.
STACK_VARIABLES = r"^(frontend|input_projection|stack\d+)/"


# --------------------------------------------------------------------------------------------
# Augmentations
# --------------------------------------------------------------------------------------------

def _range(value, name: str) -> tuple[float, float] | None:
    if value is None or (isinstance(value, (list, tuple)) and len(value) == 0):
        return None
    if not isinstance(value, (list, tuple)):  # a lone number would be ambiguous: 0 dB, or off?
        raise ValueError(f"Augmentation.{name} must be None, empty or a (low, high) pair, got {value!r}")
    values = tuple(float(v) for v in value)
    if len(values) != 2 or not values[0] <= values[1] or not all(math.isfinite(v) for v in values):
        raise ValueError(f"Augmentation.{name} must be None or a finite (low, high) with low <= high, got {value!r}")
    return values


@dataclass(frozen=True)
class Augmentation:
    """Random audio augmentations of a crop; each is off when its setting is None (or 0 / an empty range).

    Attributes
    ----------
    gain_db : (low, high) dB; the crop is scaled by ``10 ** (g / 20)``, ``g`` uniform in the range
    eq_db : largest band gain in dB; 2 or 3 bands (random) get gains uniform in ``[-eq_db, eq_db]``,
        applied by a linear-phase FIR of ``eq_taps`` taps (``scipy.signal.firwin2``, zero delay)
    eq_taps : odd FIR length (33 by default: cheap, coarse bands are all an EQ needs)
    noise_snr_db : (low, high) dB; white Gaussian noise at an SNR uniform in the range, relative to
        the crop's mean power (a silent crop gets no noise)
    max_shift_seconds : the crop's content moves by up to this much, either way; steps moved in are 0
    """

    gain_db: tuple[float, float] | None = (-6.0, 6.0)
    eq_db: float | None = 6.0
    eq_taps: int = 33
    noise_snr_db: tuple[float, float] | None = (20.0, 40.0)
    max_shift_seconds: float | None = 0.05

    def __post_init__(self):
        object.__setattr__(self, "gain_db", _range(self.gain_db, "gain_db"))
        object.__setattr__(self, "noise_snr_db", _range(self.noise_snr_db, "noise_snr_db"))
        for name in ("eq_db", "max_shift_seconds"):
            value = getattr(self, name)
            if value is not None:
                if not math.isfinite(float(value)) or float(value) < 0:
                    raise ValueError(f"Augmentation.{name} must be None or a finite value >= 0, got {value!r}")
                object.__setattr__(self, name, float(value) or None)
        if int(self.eq_taps) < 3 or int(self.eq_taps) % 2 == 0:
            raise ValueError(f"Augmentation.eq_taps must be an odd number >= 3, got {self.eq_taps!r}")

    @classmethod
    def none(cls) -> "Augmentation":
        """Every augmentation off: :func:`augment` returns its input unchanged."""
        return cls(gain_db=None, eq_db=None, noise_snr_db=None, max_shift_seconds=None)

    @property
    def enabled(self) -> tuple[str, ...]:
        """Names of the augmentations that are on, in the order they are applied."""
        on = dict(shift=self.max_shift_seconds, eq=self.eq_db, gain=self.gain_db, noise=self.noise_snr_db)
        return tuple(name for name, setting in on.items() if setting)


def shift(audio: np.ndarray, steps: int) -> np.ndarray:
    """Move ``audio`` ``[T, C]`` by ``steps`` (later if positive, earlier if negative); steps moved in are 0."""
    time = audio.shape[0]
    steps = int(np.clip(steps, -time, time))
    out = np.zeros_like(audio)
    if steps >= 0:
        out[steps:] = audio[: time - steps]
    else:
        out[: time + steps] = audio[-steps:]
    return out


def equaliser(*, band_gains_db: Sequence[float], taps: int) -> np.ndarray:
    """A zero-phase FIR (``[taps]``, odd) with the given gains at log-spaced band centres.

    Band ``k`` of ``K`` is centred at ``(1/16) ** (1 - k / (K - 1))`` of the Nyquist frequency
    (``1/16, 1/4, 1`` for 3 bands); the gain is flat below the first centre and linear in amplitude
    between centres.
    """
    gains = 10.0 ** (np.asarray(band_gains_db, np.float64) / 20.0)
    if gains.ndim != 1 or gains.size < 2:
        raise ValueError(f"band_gains_db needs 2 or more bands, got {band_gains_db!r}")
    centres = np.geomspace(1.0 / 16.0, 1.0, gains.size)
    return scipy.signal.firwin2(taps, np.concatenate([[0.0], centres]), np.concatenate([gains[:1], gains]))


def augment(*, audio: np.ndarray, rng: np.random.Generator, settings: Augmentation, frame_rate: float) -> np.ndarray:
    """One random augmentation of a crop: shift, EQ, gain, then noise (so the SNR is of the final signal).

    Parameters
    ----------
    audio : float ``[T, C]``
    rng : the only source of randomness: the same seed gives the same output
    settings : which augmentations, and how strong
    frame_rate : steps per second of ``audio`` (for ``max_shift_seconds``)

    Returns
    -------
    float32 ``[T, C]``; ``audio`` itself (as float32) when every augmentation is off
    """
    audio = np.asarray(audio)
    if audio.ndim != 2:
        raise ValueError(f"audio must be [time, channels], got shape {audio.shape}")
    if not frame_rate > 0:
        raise ValueError(f"frame_rate must be positive, got {frame_rate!r}")
    if audio.shape[0] == 0:
        return audio.astype(np.float32)
    out = audio.astype(np.float64)
    if settings.max_shift_seconds:
        most = int(round(settings.max_shift_seconds * frame_rate))
        out = shift(out, int(rng.integers(-most, most + 1)))
    if settings.eq_db:
        gains = rng.uniform(-settings.eq_db, settings.eq_db, size=int(rng.integers(2, 4)))
        kernel = equaliser(band_gains_db=gains, taps=int(settings.eq_taps))
        out = scipy.signal.convolve(out, kernel[:, None], mode="same")  # odd symmetric kernel: no delay
    if settings.gain_db:
        out = out * 10.0 ** (rng.uniform(*settings.gain_db) / 20.0)
    if settings.noise_snr_db:
        snr_db = rng.uniform(*settings.noise_snr_db)
        power = float(np.mean(out ** 2)) if out.size else 0.0
        out = out + rng.standard_normal(out.shape) * math.sqrt(power / 10.0 ** (snr_db / 10.0))
    return out.astype(np.float32)


# --------------------------------------------------------------------------------------------
# Contrastive lists
# --------------------------------------------------------------------------------------------

def _pad_stack(sequences: Sequence[np.ndarray], channels: int) -> tuple[np.ndarray, np.ndarray]:
    lengths = np.array([s.shape[0] for s in sequences], np.int32)
    out = np.zeros((len(sequences), max(1, int(lengths.max(initial=0))), channels), np.float32)
    for i, s in enumerate(sequences):
        out[i, : s.shape[0]] = s
    return out, lengths


def contrastive_batch(*, tracks: TrackSet, members: Sequence[int], n_negatives: int, frames: int | None,
                      settings: Augmentation, rng: np.random.Generator
                      ) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """One batch of contrastive lists over a group of distinct tracks.

    Each member ``i`` gets two independent augmented random crops: ``a_i`` is its query, ``b_i`` its
    positive. List ``i`` holds ``b_i`` (label 1) and ``b_j`` of ``n_negatives`` other members ``j``
    drawn at random (label 0), shuffled: the negatives are the other tracks of the batch.

    Parameters
    ----------
    tracks : the tracks (labels unused)
    members : ``B`` distinct track indices, ``B >= n_negatives + 1``
    frames : crop length in steps (None: whole tracks)

    Returns
    -------
    features (the listwise contract, with a batch axis): ``query_audio [B, T, C]``,
    ``query_length [B]``, ``candidate_audio [B, L, T, C]``, ``candidate_length [B, L]`` with
    ``L = n_negatives + 1``; labels float32 ``[B, L]``; the track index of every candidate int64
    ``[B, L]`` (for checks; not a feature)
    """
    members = np.asarray(members, np.int64)
    if len(set(members.tolist())) != members.size:
        raise ValueError(f"members must be distinct tracks, got {members.tolist()}")
    if members.size < n_negatives + 1:
        raise ValueError(f"{members.size} tracks in a batch give each list at most {members.size - 1} negatives, "
                         f"but n_negatives={n_negatives}")

    def view(track: int) -> np.ndarray:
        return augment(audio=crop(tracks.sequences[track], frames, rng), rng=rng, settings=settings,
                       frame_rate=tracks.frame_rate)

    queries = [view(int(t)) for t in members]
    positives = [view(int(t)) for t in members]
    size = n_negatives + 1
    slots = np.empty((members.size, size), np.int64)  # member slot of each candidate
    labels = np.zeros((members.size, size), np.float32)
    for i in range(members.size):
        others = np.delete(np.arange(members.size), i)
        order = np.concatenate([[i], rng.choice(others, n_negatives, replace=False)])
        permutation = rng.permutation(size)
        slots[i] = order[permutation]
        labels[i] = (permutation == 0).astype(np.float32)
    query_audio, query_length = _pad_stack(queries, tracks.channels)
    flat_audio, flat_length = _pad_stack([positives[s] for s in slots.ravel()], tracks.channels)
    time = max(query_audio.shape[1], flat_audio.shape[1])
    query_audio = np.pad(query_audio, [(0, 0), (0, time - query_audio.shape[1]), (0, 0)])
    flat_audio = np.pad(flat_audio, [(0, 0), (0, time - flat_audio.shape[1]), (0, 0)])
    features = {"query_audio": query_audio, "query_length": query_length,
                "candidate_audio": flat_audio.reshape(members.size, size, time, tracks.channels),
                "candidate_length": flat_length.reshape(members.size, size)}
    return features, labels, members[slots]


def make_contrastive_input_fn(*, tracks: TrackSet, batch_size: int, crop_seconds: float | None,
                              n_negatives: int = 5, settings: Augmentation | None = None, seed: int = 0,
                              mode: str = TRAIN) -> Callable[..., tf.data.Dataset]:
    """An ``input_fn`` of contrastive lists in the listwise contract, for ``head.make_model_fn(wavenet.embed)``.

    Each batch is ``batch_size`` distinct tracks; each list's negatives are crops of other tracks of
    the batch (:func:`contrastive_batch`), so no list ever holds its query's track as a negative.

    Parameters
    ----------
    tracks : any tracks (labels unused); every track with at least one step is used
    batch_size : lists (= distinct tracks) per batch, ``n_negatives + 1 <= batch_size <= tracks``
    crop_seconds : length of each random crop (None: whole tracks, the two views then differ only
        by their augmentations)
    n_negatives : negatives per list (list size ``n_negatives + 1``)
    settings : augmentations of every crop (default :class:`Augmentation` ``()``)
    mode : ``"train"``: endless batches of random distinct tracks; ``"eval"``: fixed seeded lists, the
        same at every call: a seeded permutation of the tracks cut into ``ceil(n / batch_size)``
        batches, the last one completed from the start of the permutation, so every track is a query

    Returns
    -------
    ``input_fn(params=None) -> tf.data.Dataset`` of (features, labels ``[B, L]``): ``query_audio``
    float32 ``[B, T, C]``, ``query_length`` int32 ``[B]``, ``candidate_audio`` float32
    ``[B, L, T, C]``, ``candidate_length`` int32 ``[B, L]``
    """
    if mode not in (TRAIN, EVAL):
        raise ValueError(f"mode must be 'train' or 'eval', got {mode!r}")
    if n_negatives < 1:
        raise ValueError(f"n_negatives must be >= 1, got {n_negatives}")
    if batch_size < n_negatives + 1:
        raise ValueError(f"batch_size={batch_size} is too small for n_negatives={n_negatives}: the negatives are "
                         f"the other tracks of the batch, so batch_size must be >= n_negatives + 1")
    if crop_seconds is not None and not crop_seconds > 0:
        raise ValueError(f"crop_seconds must be positive or None, got {crop_seconds!r}")
    usable = np.array([i for i, s in enumerate(tracks.sequences) if s.shape[0] > 0], np.int64)
    if usable.size < batch_size:
        raise ValueError(f"batch_size={batch_size} needs as many distinct tracks, but only {usable.size} of the "
                         f"{len(tracks)} tracks hold audio")
    settings = Augmentation() if settings is None else settings
    frames = tracks.frames(crop_seconds)

    def batches() -> Iterator[np.ndarray]:
        rng = np.random.default_rng(seed)
        if mode == TRAIN:
            while True:
                yield rng.choice(usable, batch_size, replace=False)
        else:
            order = rng.permutation(usable)
            for start in range(0, order.size, batch_size):
                yield order[np.arange(start, start + batch_size) % order.size]

    def generate():
        # A separate stream for crops and augmentations, so the batches do not depend on the crops drawn.
        rng = np.random.default_rng([seed, 1])
        for members in batches():
            features, labels, _ = contrastive_batch(tracks=tracks, members=members, n_negatives=n_negatives,
                                                    frames=frames, settings=settings, rng=rng)
            yield features, labels

    channels = tracks.channels
    signature = ({"query_audio": tf.TensorSpec([None, None, channels], tf.float32),
                  "query_length": tf.TensorSpec([None], tf.int32),
                  "candidate_audio": tf.TensorSpec([None, None, None, channels], tf.float32),
                  "candidate_length": tf.TensorSpec([None, None], tf.int32)},
                 tf.TensorSpec([None, None], tf.float32))

    def input_fn(params=None):
        return tf.data.Dataset.from_generator(generate, output_signature=signature).prefetch(tf.data.AUTOTUNE)

    return input_fn


# --------------------------------------------------------------------------------------------
# Predictive pretraining
# --------------------------------------------------------------------------------------------

def _param(params: Mapping, key: str):
    if key in PREDICTIVE_DEFAULT_PARAMS:
        return params.get(key, PREDICTIVE_DEFAULT_PARAMS[key])
    return params.get(key, wavenet.DEFAULT_PARAMS[key])


def mu_law_classes(x: tf.Tensor, *, levels: int) -> tf.Tensor:
    """Mu-law companding of ``x`` (clipped to [-1, 1]) quantised to ``levels`` classes: int32, same shape.

    ``y = sign(x) ln(1 + mu |x|) / ln(1 + mu)`` with ``mu = levels - 1``; class ``round((y + 1) / 2 * mu)``.
    """
    mu = float(levels - 1)
    x = tf.clip_by_value(tf.cast(x, tf.float32), -1.0, 1.0)
    companded = tf.sign(x) * tf.math.log1p(mu * tf.abs(x)) / math.log1p(mu)
    return tf.cast(tf.round((companded + 1.0) / 2.0 * mu), tf.int32)


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
    params = {**wavenet.DEFAULT_PARAMS, **params}
    if audio.shape.rank == 2:
        audio = audio[:, :, None]
    audio = tf.cast(audio, tf.float32)
    length = tf.cast(tf.reshape(length, [-1]), tf.int32)
    frontend = str(frontends._param(params, "frontend"))  # the front end's own reading (None: its default)
    if frontend == "raw":
        valid = tf.sequence_mask(length, tf.shape(audio)[1])[:, :, None]
        return audio, tf.broadcast_to(valid, tf.shape(audio)), "mulaw"
    if frontend == "strided":
        stride, channels = int(frontends._param(params, "frontend_stride")), audio.shape[-1]
        steps = tf.maximum((tf.shape(audio)[1] + stride - 1) // stride, 1)
        padded = tf.pad(audio, [[0, 0], [0, steps * stride - tf.shape(audio)[1]], [0, 0]])
        valid = tf.sequence_mask(length, steps * stride)[:, :, None]
        valid = tf.broadcast_to(valid, tf.shape(padded))
        return (tf.reshape(padded, [-1, steps, stride * channels]),
                tf.reshape(valid, [-1, steps, stride * channels]), "mulaw")
    if frontend == "logmel":
        features, frames = frontends.logmel(audio, length, params={**params, "mel_affine": False})
        valid = tf.broadcast_to(tf.sequence_mask(frames, tf.shape(features)[1])[:, :, None], tf.shape(features))
        return features, valid, "l1"
    raise ValueError(f"params['frontend'] must be one of {frontends.FRONTENDS}, got {frontend!r}")


def stack_skips(audio: tf.Tensor, length: tf.Tensor, *, params: Mapping, training: bool
                ) -> tuple[list[tf.Tensor], tf.Tensor]:
    """The front end, input projection and stacks of ``wavenet.embed`` with no pooling (see the module note).

    Creates the variables ``frontend/...`` (if the front end has any), ``input_projection/...`` and
    ``stack{s}/layer{i}/...`` under the names ``wavenet.embed`` gives them.

    Returns
    -------
    the skip output of every layer, each ``[batch, steps, skip_channels]`` at the front end's step rate
    (causal: step ``t`` reads only steps ``<= t``), and int32 ``[batch]`` real steps
    """
    params = {**wavenet.DEFAULT_PARAMS, **params}
    audio, length = frontends.apply_frontend(audio, length, params=params, training=training)
    x = tf.keras.layers.Conv1D(int(params["channels"]), 1, name="input_projection")(audio)
    atrous = bool(_param(params, "predictive_atrous"))
    skips, scale = [], 1
    for s, pool in enumerate(wavenet._pool_sizes(params)):
        for i, dilation in enumerate(wavenet.dilations(params)):
            x, skip = wavenet.wavenet_layer(x, dilation=dilation * scale, params=params, name=f"stack{s}/layer{i}")
            skips.append(skip)
        if atrous:
            scale *= pool  # the next stack reads steps `pool` times further apart in the similarity model
    return skips, length


def _embedding_tail(skips: list[tf.Tensor], length: tf.Tensor, *, params: Mapping) -> tf.Tensor:
    """``wavenet.embed`` after its stacks (``final/conv``, global pooling, ``dense{j}``), on unpooled skips.

    Built only so the checkpoint holds those variables: nothing fetches it, nothing trains it.
    """
    final = tf.keras.layers.Conv1D(int(_param(params, "final_channels")), int(_param(params, "final_filter_size")),
                                   padding="causal", name="final/conv")(tf.nn.relu(tf.concat(skips, axis=-1)))
    embedding = wavenet.global_pool(final, length, pooling=str(_param(params, "pooling")))
    sizes = wavenet._dense_sizes(params)
    for j, units in enumerate(sizes):
        embedding = tf.keras.layers.Dense(units, activation=tf.nn.relu if j < len(sizes) - 1 else None,
                                          name=f"dense{j}")(embedding)
    return embedding


def next_step_predictions(audio: tf.Tensor, length: tf.Tensor, *, params: Mapping, training: bool,
                          values: int, kind: str) -> tf.Tensor:
    """Predictions of the next step from the stacks' skips: ``relu(concat(skips))``, two 1x1 convs.

    Returns
    -------
    ``"mulaw"``: logits ``[batch, steps, values, quantization_levels]``; ``"l1"``: ``[batch, steps, values]``;
    step ``t`` predicts step ``t + 1`` of :func:`next_step_targets`. float32 (mixed precision computes
    inside, as ``wavenet.embed`` does).
    """

    @frontends.with_mixed_precision
    def predict(audio, length, *, params, training):
        skips, steps = stack_skips(audio, length, params=params, training=training)
        _embedding_tail(skips, steps, params=params)
        hidden = tf.keras.layers.Conv1D(int(_param(params, "skip_channels")), 1, activation=tf.nn.relu,
                                        name="predictive/hidden")(tf.nn.relu(tf.concat(skips, axis=-1)))
        outputs = values * (int(_param(params, "quantization_levels")) if kind == "mulaw" else 1)
        return tf.keras.layers.Conv1D(outputs, 1, name="predictive/output")(hidden)

    outputs = predict(audio, length, params=params, training=training)
    if kind == "mulaw":
        shape = tf.shape(outputs)
        return tf.reshape(outputs, [shape[0], shape[1], values, int(_param(params, "quantization_levels"))])
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


def make_predictive_model_fn() -> Callable:
    """A ``model_fn`` training the WaveNet stacks as a next-step predictor (see the module note).

    TRAIN / EVAL features: ``audio`` float32 ``[batch, time, channels]``, ``length`` int ``[batch]``;
    labels unused (None). TRAIN: Adam on the loss of :func:`next_step_loss`. EVAL: the loss, plus
    ``accuracy`` (argmax class) for waveform targets. PREDICT: ``embedding`` (``wavenet.embed`` under
    the estimator's params, the head's contract) and ``track_id`` when fed.
    """

    def model_fn(features, labels, mode, params):
        del labels
        params = dict(params or {})
        audio = tf.convert_to_tensor(features["audio"], tf.float32)
        length = tf.cast(features["length"], tf.int32)
        if mode == tf.estimator.ModeKeys.PREDICT:
            return head.predict_spec(wavenet.embed(audio, length, params=params, training=False), features)

        training = mode == tf.estimator.ModeKeys.TRAIN
        levels = int(_param(params, "quantization_levels"))
        if levels < 2:
            raise ValueError(f"quantization_levels must be >= 2, got {levels}")
        targets, valid, kind = next_step_targets(audio, length, params=params)
        predictions = next_step_predictions(audio, length, params=params, training=training,
                                            values=int(targets.shape[-1]), kind=kind)
        loss, weights = next_step_loss(predictions=predictions, targets=targets, valid=valid, kind=kind,
                                       levels=levels)
        if mode == tf.estimator.ModeKeys.EVAL:
            metrics = {}
            if kind == "mulaw":
                predicted = tf.argmax(predictions[:, :-1], axis=-1, output_type=tf.int32)
                metrics["accuracy"] = tf.compat.v1.metrics.accuracy(
                    labels=mu_law_classes(targets[:, 1:], levels=levels), predictions=predicted, weights=weights)
            return tf.estimator.EstimatorSpec(mode, loss=loss, eval_metric_ops=metrics)

        train_op = head.make_train_op(loss, learning_rate=float(_param(params, "learning_rate")),
                                      clip_norm=float(_param(params, "clip_norm")), params=params)
        return tf.estimator.EstimatorSpec(mode, loss=loss, train_op=train_op)

    return model_fn


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
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
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

    def input_fn(params=None):
        dataset = tf.data.Dataset.from_generator(generate, output_signature=signature)
        return dataset.padded_batch(batch_size).prefetch(tf.data.AUTOTUNE)

    return input_fn


# --------------------------------------------------------------------------------------------
# Distillation from a pretrained teacher
# --------------------------------------------------------------------------------------------

class Teacher(Protocol):
    """What distillation needs of a teacher (e.g. `musicsim.models.musicnn.MusicnnTeacher`)."""

    key: str  # names what it computes, for the cache
    dim: int

    def __call__(self, *, crops: Sequence[np.ndarray], frame_rate: float) -> np.ndarray:
        """``[len(crops), dim]`` float32 targets of crops ``[T_i, channels]`` at ``frame_rate``."""


@dataclass
class DistillationSet:
    """Tracks, their fixed crops and the teacher's standardised target of every crop.

    Attributes
    ----------
    tracks : TrackSet
        Labels unused.
    frames : int or None
        Crop length in steps (None: whole tracks).
    starts : list of np.ndarray, int64, shape ``[n_crops_i]``
        Each track's crop starts (`musicsim.inputs.crop_grid`).
    targets : list of np.ndarray, float32, shape ``[n_crops_i, dim]``
        The teacher's vector of each crop, standardised with ``mean`` and ``scale``.
    mean, scale : np.ndarray, float64, shape ``[dim]``
        The standardisation (of the pretraining crops' raw targets; zero variance keeps scale 1).
    """

    tracks: TrackSet
    frames: int | None
    starts: list[np.ndarray]
    targets: list[np.ndarray]
    mean: np.ndarray
    scale: np.ndarray

    @property
    def dim(self) -> int:
        return int(self.mean.shape[0])

    def crop(self, track: int, index: int) -> np.ndarray:
        """Crop ``index`` of track ``track``: ``[frames or T, channels]``."""
        start = int(self.starts[track][index])
        sequence = self.tracks.sequences[track]
        return sequence if self.frames is None else sequence[start:start + self.frames]


def _targets_cache_path(*, cache_dir: str, teacher_key: str, track_id: str, sequence: np.ndarray,
                        frame_rate: float, frames: int | None, starts: np.ndarray) -> str:
    """The cache file of one track's targets: keyed by the teacher, the track's audio and its crops."""
    digest = hashlib.sha1()
    digest.update(json.dumps([track_id, float(frame_rate), frames, list(sequence.shape)]).encode("utf-8"))
    digest.update(np.ascontiguousarray(sequence, dtype=np.float32).tobytes())
    digest.update(np.asarray(starts, dtype=np.int64).tobytes())
    folder = "".join(c if c.isalnum() or c in "._-" else "_" for c in teacher_key)
    return os.path.join(cache_dir, folder, digest.hexdigest() + ".npy")


def teacher_targets(*, tracks: TrackSet, frames: int | None, starts: Sequence[np.ndarray], teacher: Teacher,
                    cache_dir: str | None = None, progress: bool = False) -> list[np.ndarray]:
    """The teacher's raw target of every crop, computed once per (track, crop) and cached.

    Parameters
    ----------
    tracks : TrackSet
    frames : int or None
        Crop length in steps.
    starts : sequence of np.ndarray ``[n_crops_i]``
        Each track's crop starts.
    teacher : Teacher
    cache_dir : str or None
        One ``.npy`` per track under ``cache_dir/<teacher.key>/``, keyed on the track id, its audio,
        the frame rate and the crops; None computes without caching.
    progress : bool
        Show a progress bar.

    Returns
    -------
    list of np.ndarray, float32, shape ``[n_crops_i, teacher.dim]``
    """
    from tqdm.auto import tqdm

    out = []
    for track in tqdm(range(len(tracks)), disable=not progress, unit="track", desc=f"{teacher.key} targets"):
        sequence, track_starts = tracks.sequences[track], np.asarray(starts[track], dtype=np.int64)
        path = None
        if cache_dir is not None:
            path = _targets_cache_path(cache_dir=cache_dir, teacher_key=teacher.key, track_id=tracks.track_ids[track],
                                       sequence=sequence, frame_rate=tracks.frame_rate, frames=frames,
                                       starts=track_starts)
            try:
                cached = np.load(path, allow_pickle=False)
            except (OSError, ValueError):
                cached = None  # a miss, or a damaged entry: recomputed and replaced
            if cached is not None and cached.shape == (track_starts.size, teacher.dim):
                out.append(cached.astype(np.float32))
                continue
        crops = [sequence if frames is None else sequence[start:start + frames] for start in track_starts]
        values = np.asarray(teacher(crops=crops, frame_rate=tracks.frame_rate), dtype=np.float32)
        if values.shape != (track_starts.size, teacher.dim) or not np.all(np.isfinite(values)):
            raise ValueError(f"teacher {teacher.key} gave {values.shape} targets for track "
                             f"{tracks.track_ids[track]!r}, expected finite {(track_starts.size, teacher.dim)}")
        if path is not None:
            def write(tmp: str) -> None:
                with open(tmp, "wb") as f:
                    np.save(f, values, allow_pickle=False)

            _write_atomic(path, write)
        out.append(values)
    return out


def distillation_set(*, tracks: TrackSet, crop_seconds: float | None, hop_seconds: float | None, teacher: Teacher,
                     cache_dir: str | None = None, standardisation: tuple[np.ndarray, np.ndarray] | None = None,
                     progress: bool = False) -> DistillationSet:
    """Fixed crops of every track and the teacher's standardised target of each.

    Parameters
    ----------
    tracks : TrackSet
        Any audio: labels are never read.
    crop_seconds : float > 0 or None
        Crop length (None: whole tracks).
    hop_seconds : float > 0 or None
        Seconds between crop starts (None: each track's centred crop only, as for evaluation).
    teacher : Teacher
    cache_dir : str or None
        Where targets are cached (`teacher_targets`).
    standardisation : (mean ``[dim]``, scale ``[dim]``) or None
        Reuse another set's (the pretraining crops') standardisation; None fits it on these targets.
    """
    if crop_seconds is not None and not crop_seconds > 0:
        raise ValueError(f"crop_seconds must be positive or None, got {crop_seconds!r}")
    if hop_seconds is not None and not hop_seconds > 0:
        raise ValueError(f"hop_seconds must be positive or None, got {hop_seconds!r}")
    if len(tracks) == 0:
        raise ValueError("distillation needs at least one track")
    frames = tracks.frames(crop_seconds)
    hop = tracks.frames(hop_seconds)
    starts = [crop_grid(length=s.shape[0], frames=frames, hop=hop) for s in tracks.sequences]
    raw = teacher_targets(tracks=tracks, frames=frames, starts=starts, teacher=teacher, cache_dir=cache_dir,
                          progress=progress)
    if standardisation is None:
        stacked = np.concatenate(raw).astype(np.float64)
        mean, scale = stacked.mean(axis=0), stacked.std(axis=0)
        scale = np.where(scale > 1e-8, scale, 1.0)  # a dimension constant over the crops maps to 0
    else:
        mean, scale = (np.asarray(v, np.float64) for v in standardisation)
    targets = [((r - mean) / scale).astype(np.float32) for r in raw]
    return DistillationSet(tracks=tracks, frames=frames, starts=starts, targets=targets, mean=mean, scale=scale)


def make_distillation_input_fn(*, data: DistillationSet, mode: str, batch_size: int = 8, seed: int = 0
                               ) -> Callable[..., tf.data.Dataset]:
    """An ``input_fn`` of (crop, the teacher's target of that crop) batches; labels are the targets.

    Elements: features ``{"audio": float32 [batch, time, channels], "length": int32 [batch]}``,
    right-padded; labels float32 ``[batch, dim]``.

    Parameters
    ----------
    data : DistillationSet
    mode : ``"train"``: endless; every track once per epoch in a seeded shuffled order, each time one
        of its crops at random; ``"eval"``: every track once, in order, its first crop (the centred
        one of a set built with ``hop_seconds=None``)
    batch_size : int >= 1
    seed : int
    """
    if mode not in (TRAIN, EVAL):
        raise ValueError(f"mode must be 'train' or 'eval', got {mode!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")

    def element(track: int, index: int) -> tuple[dict, np.ndarray]:
        audio = data.crop(track, index).astype(np.float32)
        return {"audio": audio, "length": np.int32(audio.shape[0])}, data.targets[track][index]

    def generate():
        if mode == TRAIN:
            rng = np.random.default_rng(seed)
            while True:
                for track in rng.permutation(len(data.tracks)):
                    yield element(int(track), int(rng.integers(0, data.starts[track].size)))
        else:
            for track in range(len(data.tracks)):
                yield element(track, 0)

    signature = ({"audio": tf.TensorSpec([None, data.tracks.channels], tf.float32),
                  "length": tf.TensorSpec([], tf.int32)}, tf.TensorSpec([data.dim], tf.float32))

    def input_fn(params=None):
        dataset = tf.data.Dataset.from_generator(generate, output_signature=signature)
        return dataset.padded_batch(batch_size).prefetch(tf.data.AUTOTUNE)

    return input_fn


def make_distillation_input_fns(*, train_tracks: TrackSet, eval_tracks: TrackSet, teacher: Teacher,
                                crop_seconds: float | None, hop_seconds: float | None, batch_size: int,
                                cache_dir: str | None = None, seed: int = 0, eval_seed: int = 0,
                                progress: bool = True) -> tuple[Callable, Callable]:
    """(train, eval) ``input_fn`` of a distillation run: random grid crops of ``train_tracks``, the
    centred crop of each of ``eval_tracks``; both standardised with the train crops' statistics."""
    train = distillation_set(tracks=train_tracks, crop_seconds=crop_seconds, hop_seconds=hop_seconds,
                             teacher=teacher, cache_dir=cache_dir, progress=progress)
    held_out = distillation_set(tracks=eval_tracks, crop_seconds=crop_seconds, hop_seconds=None, teacher=teacher,
                                cache_dir=cache_dir, standardisation=(train.mean, train.scale), progress=progress)
    return (make_distillation_input_fn(data=train, mode=TRAIN, batch_size=batch_size, seed=seed),
            make_distillation_input_fn(data=held_out, mode=EVAL, batch_size=batch_size, seed=eval_seed))


def distillation_loss(*, predictions: tf.Tensor, targets: tf.Tensor, kind: str) -> tf.Tensor:
    """Mean loss of predicted teacher vectors.

    Parameters
    ----------
    predictions, targets : float32 ``[batch, dim]``
    kind : ``"cosine"``: ``1 - cos(prediction, target)``; ``"mse"``: the squared error per dimension

    Returns
    -------
    float32 scalar, the mean over the batch
    """
    predictions, targets = tf.cast(predictions, tf.float32), tf.cast(targets, tf.float32)
    if kind == "cosine":
        cosine = tf.reduce_sum(tf.math.l2_normalize(predictions, axis=-1) * tf.math.l2_normalize(targets, axis=-1),
                               axis=-1)
        return tf.reduce_mean(1.0 - cosine)
    if kind == "mse":
        return tf.reduce_mean(tf.square(predictions - targets))
    raise ValueError(f"distill_loss must be one of {DISTILL_LOSSES}, got {kind!r}")


def make_distillation_model_fn() -> Callable:
    """A ``model_fn`` training the WaveNet to reproduce a teacher's (standardised) vector of each crop.

    The student's embedding (``wavenet.embed``, every variable under its usual name) goes through a
    linear ``distill/projection`` to the teacher's size (a scope no similarity model has, so a
    warm start takes the WaveNet only). TRAIN / EVAL features: ``audio``, ``length``; labels: the
    targets ``[batch, dim]``; loss `distillation_loss` of ``params["distill_loss"]`` (cosine by
    default). EVAL adds ``cosine``, the mean cosine to the targets. PREDICT: ``embedding`` (the
    head's contract).
    """

    def model_fn(features, labels, mode, params):
        params = dict(params or {})
        audio = tf.convert_to_tensor(features["audio"], tf.float32)
        length = tf.cast(features["length"], tf.int32)
        if mode == tf.estimator.ModeKeys.PREDICT:
            return head.predict_spec(wavenet.embed(audio, length, params=params, training=False), features)
        training = mode == tf.estimator.ModeKeys.TRAIN
        targets = tf.convert_to_tensor(labels, tf.float32)
        student = wavenet.embed(audio, length, params=params, training=training)
        predictions = tf.keras.layers.Dense(int(targets.shape[-1]), name="distill/projection")(student)
        kind = str(params.get("distill_loss", DISTILL_DEFAULT_LOSS))
        loss = distillation_loss(predictions=predictions, targets=targets, kind=kind)
        if mode == tf.estimator.ModeKeys.EVAL:
            cosine = tf.reduce_sum(tf.math.l2_normalize(predictions, axis=-1) * tf.math.l2_normalize(targets, axis=-1),
                                   axis=-1)
            return tf.estimator.EstimatorSpec(mode, loss=loss,
                                              eval_metric_ops={"cosine": tf.compat.v1.metrics.mean(cosine)})
        train_op = head.make_train_op(loss, learning_rate=float(params.get("learning_rate", 1e-3)),
                                      clip_norm=float(params.get("clip_norm", 5.0)), params=params)
        return tf.estimator.EstimatorSpec(mode, loss=loss, train_op=train_op)

    return model_fn


# --------------------------------------------------------------------------------------------
# Runner hooks and warm start
# --------------------------------------------------------------------------------------------

def pretraining_model_fn(kind: str) -> Callable:
    """The ``model_fn`` of a pretraining run: the shared ranking head (contrastive), the next-step predictor,
    or the teacher's student (distill)."""
    if kind == "contrastive":
        return head.make_model_fn(wavenet.embed)
    if kind == "predictive":
        return make_predictive_model_fn()
    if kind == "distill":
        return make_distillation_model_fn()
    raise ValueError(f"pretrain must be one of {PRETRAINING_KINDS}, got {kind!r}")


def pretraining_early_stopping(kind: str) -> tuple[str, str]:
    """(eval metric, direction) for ``training.train_and_evaluate(early_stopping=...)``."""
    if kind not in PRETRAINING_KINDS:
        raise ValueError(f"pretrain must be one of {PRETRAINING_KINDS}, got {kind!r}")
    return CONTRASTIVE_EARLY_STOPPING if kind == "contrastive" else EARLY_STOPPING


def warm_start_vars(scope: str, *, checkpoint: str | None = None) -> str:
    """The ``vars_to_warm_start`` regex of a fine-tuning run.

    Parameters
    ----------
    scope : ``"stacks"``: the front end's variables (``frontend/...``, if any), ``input_projection``
        and ``stack{s}/...``; the final conv and dense layers start fresh. ``"all"``: every trainable
        variable (``.*``).
    checkpoint : optional pretrained model_dir or checkpoint; the regex then names exactly the chosen
        variables that it holds (``^(?:a|b)(?::0)?$``), so ``"all"`` also works from a run that lacks
        some of the fine-tuned model's variables. Raises ValueError when it holds none of them.

    The lead passes it as::

        training.make_estimator(model="wavenet", model_dir=FINE_TUNE_DIR, params=params,
                                warm_start_from=PRETRAINED_DIR,
                                warm_start_vars=pretraining.warm_start_vars(scope, checkpoint=PRETRAINED_DIR))

    ``WarmStartSettings`` matches the regex against trainable variables only (optimizer slots and the
    global step start fresh) and only at the first step of a new model_dir; once the fine-tuning run
    has a checkpoint of its own, resuming ignores the warm start.
    """
    if scope not in WARM_START_SCOPES:
        raise ValueError(f"warm start scope must be one of {WARM_START_SCOPES}, got {scope!r}")
    pattern = STACK_VARIABLES + ".*" if scope == "stacks" else ".*"
    if checkpoint is None:
        return pattern
    try:
        names = [name for name, _ in tf.train.list_variables(checkpoint)]
    except (ValueError, tf.errors.OpError) as error:
        raise ValueError(f"cannot read the variables of checkpoint {checkpoint!r}: {error}") from error
    # Optimizer slots are never trainable variables of the new graph: leave them out of the regex.
    chosen = sorted(name for name in names if re.match(pattern, name) and not re.search(r"/Adam(_\d+)?$", name))
    if not chosen:
        raise ValueError(f"checkpoint {checkpoint!r} holds no variable matching {pattern!r} (scope {scope!r})")
    return "^(?:" + "|".join(re.escape(name) for name in chosen) + r")(?::\d+)?$"
