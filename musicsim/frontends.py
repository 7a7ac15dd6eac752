"""Front ends of the WaveNet model, mixed precision and XLA settings (GPU readiness).

A front end turns the audio the model receives into the sequence its stacks read:

- ``raw`` (the paper's, default): the pooled audio itself, one channel per step;
- ``logmel``: a log-mel spectrogram computed in the graph (``tf.signal``), mel bins as channels,
  about ``hop`` times fewer steps than the audio (peers that do well on music similarity and tagging,
  musicnn and short-chunk CNNs, read log-mel input);
- ``strided``: a learned filterbank, a conv with kernel = stride, so unpooled 16 kHz audio
  (``--pool_size=1``) reaches the stacks already reduced and memory per example stays bounded.

Every front end keeps the padding invariance of the model (paper Problem 5): a step of a track only
reads that track's real samples (or zeros standing for samples past its end, the same zeros alone or
in a batch), steps past a track's new length are zero, and no statistic is taken across the batch.

Mixed precision (:func:`with_mixed_precision`, :func:`loss_scale_optimizer`) runs the model's layers
in float16 (GPU) or bfloat16 (CPU) with float32 variables and a float32 embedding; :func:`session_config`
turns on XLA auto-clustering for an estimator.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Mapping

import tensorflow as tf

from musicsim.params import ParamsConfig, ParamsError, fill_defaults, hyperparameter

FRONTENDS = ("raw", "logmel", "strided")
MIXED_PRECISION_DTYPES = ("float16", "bfloat16")

@dataclasses.dataclass(frozen=True)
class FrontendConfig(ParamsConfig):
    """The front end's hyperparameters, and the precision and compilation of the model's graph.

    Attributes
    ----------
    frontend : ``"raw"``, ``"logmel"`` or ``"strided"``
    input_sample_rate : Hz of the audio the model receives (decode rate / pool size); logmel needs it
    frame_seconds, hop_seconds : logmel: STFT frame (the FFT size is the next power of two in samples)
        and hop between frames
    n_mels, fmin, fmax : logmel: mel bins and their range in Hz (``fmax`` None: the Nyquist frequency)
    log_scale : logmel values are ``log1p(log_scale * mel magnitude)``: silence and padding are 0
    mel_affine : logmel: a learned per-bin scale and offset (a normalisation reading no batch statistic)
    frontend_stride : strided: kernel = stride, in input samples
    mixed_precision : False, True or ``"auto"`` (float16 on GPU, bfloat16 on CPU), ``"float16"`` or
        ``"bfloat16"`` (see :func:`mixed_precision_dtype`)
    xla : compile the estimator's graph with XLA (:func:`session_config`)
    """

    frontend: str = hyperparameter("raw", "WaveNet input: raw pooled audio (the paper's), a log-mel spectrogram "
                                   "computed in the graph, or a learned strided conv (for --pool_size=1 data).",
                                   choices=FRONTENDS)
    input_sample_rate: float | None = None  # set by the run: its input's frame rate
    frame_seconds: float = hyperparameter(0.064, "logmel: STFT frame length in seconds.", bounds="positive")
    hop_seconds: float = hyperparameter(0.032, "logmel: hop between frames in seconds.", bounds="positive")
    n_mels: int = hyperparameter(64, "logmel: mel bins (the stacks' input channels).", bounds="at_least_one")
    fmin: float = 0.0
    fmax: float | None = None
    log_scale: float = 10000.0
    mel_affine: bool = False
    frontend_stride: int = hyperparameter(8, "strided: kernel = stride, in input samples.", bounds="at_least_one")
    mixed_precision: bool | str = hyperparameter(False, "Compute the stacks in low precision (auto: float16 on GPU "
                                                 "with loss scaling, bfloat16 on CPU); variables stay float32.",
                                                 choices=("off", "auto", *MIXED_PRECISION_DTYPES), off="off",
                                                 off_value=False)
    xla: bool = hyperparameter(False, "Compile the graph with XLA (global JIT).")

    def __post_init__(self):
        if self.frontend not in FRONTENDS:
            raise ParamsError(f"params['frontend'] must be one of {FRONTENDS}, got {self.frontend!r}")


def config_of(params: Mapping) -> FrontendConfig:
    """The front end's config in ``params``; keys it lacks take :class:`FrontendConfig`'s defaults
    (a run's params are settled before training: this serves graph functions called on their own)."""
    return FrontendConfig.from_params(fill_defaults(params, configs=[FrontendConfig]))


def _zero_past(x: tf.Tensor, lengths: tf.Tensor) -> tf.Tensor:
    """Zero the steps of ``x`` ``[batch, time, ch]`` at or past each track's length (``where``: NaN garbage too)."""
    valid = tf.sequence_mask(lengths, tf.shape(x)[1])[:, :, None]
    return tf.where(valid, x, tf.zeros_like(x))


def _pad_time_to(x: tf.Tensor, minimum: tf.Tensor | int) -> tf.Tensor:
    """Right-pad ``x`` ``[batch, time, ch]`` with zeros to at least ``minimum`` steps."""
    return tf.pad(x, [[0, 0], [0, tf.maximum(minimum - tf.shape(x)[1], 0)], [0, 0]])


def logmel_settings(params: Mapping) -> dict:
    """The log-mel front end's sizes in samples and Hz, checked.

    Returns
    -------
    dict with ``sample_rate`` (Hz), ``frame_length``, ``hop_length``, ``fft_length`` (samples),
    ``n_mels``, ``fmin``, ``fmax`` (Hz)
    """
    config = config_of(params)
    sample_rate = config.input_sample_rate
    if sample_rate is None or float(sample_rate) <= 0:
        raise ValueError("frontend='logmel' needs params['input_sample_rate'] > 0, the rate of the audio the model "
                         f"receives (decode rate / pool size); got {sample_rate!r}")
    sample_rate = float(sample_rate)
    frame_seconds, hop_seconds = float(config.frame_seconds), float(config.hop_seconds)
    frame_length = int(round(frame_seconds * sample_rate))
    hop_length = int(round(hop_seconds * sample_rate))
    if frame_length < 2:
        raise ValueError(f"frame_seconds={frame_seconds} is {frame_length} samples at {sample_rate:g} Hz: need >= 2")
    if not 1 <= hop_length <= frame_length:
        raise ValueError(f"hop_seconds={hop_seconds} is {hop_length} samples at {sample_rate:g} Hz: "
                         f"need 1 <= hop <= frame ({frame_length} samples)")
    n_mels = int(config.n_mels)
    if n_mels < 1:
        raise ValueError(f"n_mels must be >= 1, got {n_mels}")
    nyquist = sample_rate / 2.0
    fmin, fmax = float(config.fmin), float(config.fmax or nyquist)
    if fmax > nyquist:
        raise ValueError(f"fmax={fmax:g} Hz is above the Nyquist frequency {nyquist:g} Hz of input_sample_rate")
    if not 0.0 <= fmin < fmax:
        raise ValueError(f"need 0 <= fmin < fmax, got fmin={fmin:g}, fmax={fmax:g}")
    return dict(sample_rate=sample_rate, frame_length=frame_length, hop_length=hop_length,
                fft_length=1 << (frame_length - 1).bit_length(), n_mels=n_mels, fmin=fmin, fmax=fmax)


def logmel_lengths(lengths: tf.Tensor, *, frame_length: int, hop_length: int) -> tf.Tensor:
    """Frames of each track: ``(n - frame) // hop + 1`` whole frames; 1 for a track shorter than a frame; 0 if empty."""
    whole = (lengths - frame_length) // hop_length + 1
    return tf.where(lengths >= frame_length, whole, tf.minimum(lengths, 1))


def logmel(audio: tf.Tensor, lengths: tf.Tensor, *, params: Mapping) -> tuple[tf.Tensor, tf.Tensor]:
    """Log-mel spectrogram of right-padded mono audio.

    Frames never straddle a track's end (``pad_end=False``), except that a track shorter than one
    frame gets one frame of its samples followed by zeros; samples past each length are zeroed first,
    so that frame is the same alone or in a batch.

    Parameters
    ----------
    audio : float32 ``[batch, time, 1]``
    lengths : int32 ``[batch]``, real samples
    params : ``input_sample_rate``, ``frame_seconds``, ``hop_seconds``, ``n_mels``, ``fmin``, ``fmax``,
        ``log_scale``, ``mel_affine``

    Returns
    -------
    float32 ``[batch, frames, n_mels]`` (``log1p(log_scale * mel)``; frames past a track's end are 0),
    int32 ``[batch]`` frames per track
    """
    if audio.shape[-1] != 1:
        raise ValueError(f"frontend='logmel' needs mono audio [batch, time, 1], got {audio.shape} channels")
    s = logmel_settings(params)
    audio = _pad_time_to(_zero_past(tf.cast(audio, tf.float32), lengths), s["frame_length"])
    spectrogram = tf.abs(tf.signal.stft(audio[:, :, 0], frame_length=s["frame_length"], frame_step=s["hop_length"],
                                        fft_length=s["fft_length"], pad_end=False))
    mel_matrix = tf.signal.linear_to_mel_weight_matrix(num_mel_bins=s["n_mels"],
                                                       num_spectrogram_bins=s["fft_length"] // 2 + 1,
                                                       sample_rate=s["sample_rate"], lower_edge_hertz=s["fmin"],
                                                       upper_edge_hertz=s["fmax"])
    mel = tf.tensordot(spectrogram, mel_matrix, axes=1)
    mel.set_shape([None, None, s["n_mels"]])
    config = config_of(params)
    features = tf.math.log1p(float(config.log_scale) * mel)
    if bool(config.mel_affine):
        # Per-bin scale and offset, learned: a normalisation that reads no batch statistic.
        features = tf.keras.layers.DepthwiseConv1D(1, depthwise_initializer="ones", name="frontend/mel_affine")(
            features)
    frame_lengths = logmel_lengths(lengths, frame_length=s["frame_length"], hop_length=s["hop_length"])
    return _zero_past(features, frame_lengths), frame_lengths


def strided(audio: tf.Tensor, lengths: tf.Tensor, *, params: Mapping) -> tuple[tf.Tensor, tf.Tensor]:
    """A learned filterbank: a conv of ``params["channels"]`` filters with kernel = stride = ``frontend_stride``.

    Step ``t`` reads samples ``[t * stride, (t + 1) * stride)``; a track's last partial window reads
    its last samples then zeros (samples past each length are zeroed first), so no audio is dropped
    and the new length is ``ceil(n / stride)``, the rule of the stacks' pooling.

    Parameters
    ----------
    audio : float32 ``[batch, time, ch]``
    lengths : int32 ``[batch]``

    Returns
    -------
    ``[batch, ceil(time / stride), channels]`` (steps past a track's end are 0), int32 ``[batch]``
    """
    stride = int(config_of(params).frontend_stride)
    if stride < 1:
        raise ValueError(f"frontend_stride must be >= 1, got {stride}")
    if params.get("channels") is None:
        raise ValueError("frontend='strided' needs params['channels'], the number of filters (the model's channels)")
    channels = int(params["channels"])
    time = tf.shape(audio)[1]
    # A multiple of the stride, and at least one window: a 'valid' conv shorter than its kernel fails.
    padded_time = tf.maximum((time + stride - 1) // stride, 1) * stride
    audio = _pad_time_to(_zero_past(audio, lengths), padded_time)
    features = tf.keras.layers.Conv1D(channels, stride, strides=stride, padding="valid",
                                      name="frontend/strided_conv")(audio)
    step_lengths = (lengths + stride - 1) // stride
    return _zero_past(features, step_lengths), step_lengths


def apply_frontend(audio: tf.Tensor, length: tf.Tensor, *, params: Mapping, training: bool
                   ) -> tuple[tf.Tensor, tf.Tensor]:
    """Turn right-padded audio into the sequence the stacks read.

    Parameters
    ----------
    audio : float ``[batch, time]`` or ``[batch, time, channels]``, right-padded
    length : int ``[batch]``, real samples of each track
    params : ``frontend`` (``raw`` | ``logmel`` | ``strided``) and that front end's settings
        (see :class:`FrontendConfig`)
    training : unused by the current front ends (kept for a front end with dropout or augmentation)

    Returns
    -------
    features ``[batch, steps, channels]``, int32 ``[batch]`` real steps of each track
    """
    del training
    if audio.shape.rank == 2:
        audio = audio[:, :, None]
    if audio.shape.rank != 3:
        raise ValueError(f"audio must be [batch, time] or [batch, time, channels], got rank {audio.shape.rank}")
    length = tf.cast(tf.reshape(length, [-1]), tf.int32)
    frontend = str(config_of(params).frontend)
    if frontend == "raw":
        return audio, length
    if frontend == "logmel":
        return logmel(audio, length, params=params)
    if frontend == "strided":
        return strided(audio, length, params=params)
    raise ValueError(f"params['frontend'] must be one of {FRONTENDS}, got {frontend!r}")


# --------------------------------------------------------------------------- mixed precision, XLA


def mixed_precision_dtype(params: Mapping) -> str | None:
    """The compute dtype asked for by ``params["mixed_precision"]``, or None for float32.

    ``True`` / ``"auto"`` pick float16 where a GPU is visible and bfloat16 on CPU (float16 convs are
    slow on CPU; bfloat16 has float32's range, so it needs no loss scaling).
    """
    value = config_of(params).mixed_precision
    if value in (False, None, "", "false", "False", "none", "off", 0):
        return None
    if value in (True, "true", "True", "auto", "on", 1):
        return "float16" if tf.config.list_physical_devices("GPU") else "bfloat16"
    if value in MIXED_PRECISION_DTYPES:
        return str(value)
    raise ValueError(f"params['mixed_precision'] must be a bool, 'auto' or one of {MIXED_PRECISION_DTYPES}, "
                     f"got {value!r}")


def with_mixed_precision(embed_fn: Callable[..., tf.Tensor]) -> Callable[..., tf.Tensor]:
    """Wrap ``embed_fn(audio, length, *, params, training)`` to honour ``params["mixed_precision"]``.

    The Keras layers created during the call compute in float16 / bfloat16 with float32 variables
    (a ``mixed_*`` policy); the embedding comes back float32. The policy is Keras' global one, set
    for the duration of the call only and restored afterwards, so it never leaks into another graph
    or test (graph construction is single-threaded in an estimator's ``model_fn``).
    """

    @functools.wraps(embed_fn)
    def embed(audio: tf.Tensor, length: tf.Tensor, *, params: Mapping, training: bool) -> tf.Tensor:
        dtype = mixed_precision_dtype(params)
        if dtype is None:
            return embed_fn(audio, length, params=params, training=training)
        previous = tf.keras.mixed_precision.global_policy()
        tf.keras.mixed_precision.set_global_policy(tf.keras.mixed_precision.Policy(f"mixed_{dtype}"))
        try:
            embedding = embed_fn(audio, length, params=params, training=training)
        finally:
            # None restores the default policy that follows keras.backend.floatx(), rather than pinning it.
            unset = previous.name == tf.keras.backend.floatx()
            tf.keras.mixed_precision.set_global_policy(None if unset else previous)
        return tf.cast(embedding, tf.float32)

    return embed


def loss_scale_optimizer(optimizer: tf.compat.v1.train.Optimizer, *, params: Mapping
                         ) -> tf.compat.v1.train.Optimizer:
    """Wrap a tf.compat.v1 optimizer in dynamic loss scaling when the model computes in float16.

    float16 gradients underflow without it; bfloat16 and float32 need none, so the optimizer is
    returned unchanged. The wrapper's ``compute_gradients`` returns unscaled gradients and its
    ``apply_gradients`` skips a step whose gradients are not finite (and lowers the scale), so
    clipping between the two stays valid.
    """
    if mixed_precision_dtype(params) != "float16":
        return optimizer
    return tf.compat.v1.mixed_precision.MixedPrecisionLossScaleOptimizer(optimizer, loss_scale="dynamic")


def session_config(*, xla: bool) -> tf.compat.v1.ConfigProto | None:
    """A session config turning on XLA auto-clustering (``global_jit_level=ON_1``), or None.

    For ``tf.estimator.RunConfig(session_config=...)``. XLA clusters GPU ops; on CPU auto-clustering
    only happens with ``TF_XLA_FLAGS=--tf_xla_cpu_global_jit``. Each new input shape compiles anew,
    so it pays with fixed-length training crops, not with whole tracks of varying length.
    """
    if not xla:
        return None
    config = tf.compat.v1.ConfigProto()
    config.graph_options.optimizer_options.global_jit_level = tf.compat.v1.OptimizerOptions.ON_1
    return config
