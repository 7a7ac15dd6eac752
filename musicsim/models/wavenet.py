"""The WaveNet similarity model (paper 4.3, figures 11-13).

Only WaveNet's cascade of gated, dilated, causal convolutions is kept:

- a *wavenet layer* (figure 11): ``z = tanh(W_f * x) * sigmoid(W_g * x)``; a 1x1 conv of ``z``
  is added to ``x`` (the residual output, input of the next layer) and another 1x1 conv of ``z``
  is the layer's skip output;
- a *wavenet stack* (figure 12): ``layers_per_stack`` layers, then a pooling applied to the
  running input and to every skip output so far, so all skips share one time resolution;
- after the stacks (figure 13): the skips are concatenated, a final conv and a pooling over the
  whole time axis give a fixed-size embedding whatever the input length, then optional dense layers.

Every convolution is causal and every pooling is masked by the true lengths, so right padding in
a batch never changes an embedding (paper Problem 5).
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import tensorflow as tf

from musicsim import frontends

DEFAULT_PARAMS = dict(
    channels=32,  # residual channels
    skip_channels=32,
    filter_size=2,
    dilation_base=2,  # paper: 2 with filter 2, or 4 with filter 4
    num_stacks=3,
    layers_per_stack=6,
    stack_pool_sizes=(4, 4, 4),  # where reductions happen: one pooling after each stack
    pooling="max",  # max | avg, between stacks and at the end
    final_channels=64,  # the final conv: the embedding size before the dense layers
    final_filter_size=2,
    dense_layers=(),  # the paper's late improvement, e.g. (64,)
    dropout=0.0,
    **frontends.DEFAULT_FRONTEND_PARAMS,  # frontend (raw | logmel | strided), its sizes, mixed_precision
)


def _param(params: Mapping, key: str):
    return params.get(key, DEFAULT_PARAMS[key])


def _pool_sizes(params: Mapping) -> list[int]:
    sizes = _param(params, "stack_pool_sizes")
    sizes = [int(s) for s in (sizes if isinstance(sizes, (list, tuple)) else str(sizes).split(",")) if str(s)]
    num_stacks = int(_param(params, "num_stacks"))
    if len(sizes) == 1:
        sizes = sizes * num_stacks
    if len(sizes) != num_stacks:
        raise ValueError(f"stack_pool_sizes has {len(sizes)} entries for {num_stacks} stacks")
    if any(s < 1 for s in sizes):
        raise ValueError(f"stack_pool_sizes must be >= 1, got {sizes}")
    return sizes


def receptive_field(params: Mapping | None = None) -> int:
    """Receptive field, in input samples, of one output step after the stacks and the final conv.

    Each layer with filter ``f`` and dilation ``d`` widens the field by ``(f - 1) * d`` steps of its
    stack's resolution; a pooling of size ``p`` makes one step worth ``p`` earlier steps.
    """
    params = params or {}
    f, base = int(_param(params, "filter_size")), int(_param(params, "dilation_base"))
    n = int(_param(params, "layers_per_stack"))
    field, step = 1, 1  # field in input samples; input samples per step at the current resolution
    for pool in _pool_sizes(params):
        field += sum((f - 1) * base ** i for i in range(n)) * step
        field += (pool - 1) * step  # a pooling window covers pool steps
        step *= pool
    field += (int(_param(params, "final_filter_size")) - 1) * step
    return field


def lengths_after_pooling(lengths: tf.Tensor, pool: int) -> tf.Tensor:
    """Number of pooled steps holding real audio: ``ceil(length / pool)``."""
    return (lengths + pool - 1) // pool


def masked_pool(x: tf.Tensor, lengths: tf.Tensor, *, pool: int, pooling: str) -> tf.Tensor:
    """Pool ``x`` ``[batch, time, ch]`` by non-overlapping windows of ``pool`` steps, ignoring padding.

    The time axis is right-padded to a multiple of ``pool``; the last partial window of a track is
    pooled over its real steps only. Steps past a track's pooled length are zero.
    """
    if pool == 1:
        return x
    time = tf.shape(x)[1]
    padded_time = (time + pool - 1) // pool * pool
    x = tf.pad(x, [[0, 0], [0, padded_time - time], [0, 0]])
    mask = tf.sequence_mask(lengths, padded_time)[:, :, None]
    windows = tf.reshape(x, [tf.shape(x)[0], -1, pool, x.shape[-1]])
    window_mask = tf.reshape(mask, [tf.shape(x)[0], -1, pool, 1])
    if pooling == "max":
        pooled = tf.reduce_max(tf.where(window_mask, windows, x.dtype.min), axis=2)
    elif pooling == "avg":
        count = tf.reduce_sum(tf.cast(window_mask, x.dtype), axis=2)
        pooled = tf.reduce_sum(windows * tf.cast(window_mask, x.dtype), axis=2) / tf.maximum(count, 1.0)
    else:
        raise ValueError(f"pooling must be 'max' or 'avg', got {pooling!r}")
    valid = tf.sequence_mask(lengths_after_pooling(lengths, pool), tf.shape(pooled)[1])[:, :, None]
    return tf.where(valid, pooled, tf.zeros_like(pooled))


def global_pool(x: tf.Tensor, lengths: tf.Tensor, *, pooling: str) -> tf.Tensor:
    """Pool ``[batch, time, ch]`` over the whole real length of each track: ``[batch, ch]``."""
    mask = tf.sequence_mask(lengths, tf.shape(x)[1])[:, :, None]
    if pooling == "max":
        pooled = tf.reduce_max(tf.where(mask, x, x.dtype.min), axis=1)
        # An empty (length-0, padding) track embeds to zeros rather than -inf.
        return tf.where(lengths[:, None] > 0, pooled, tf.zeros_like(pooled))
    if pooling == "avg":
        count = tf.reduce_sum(tf.cast(mask, x.dtype), axis=1)
        return tf.reduce_sum(x * tf.cast(mask, x.dtype), axis=1) / tf.maximum(count, 1.0)
    raise ValueError(f"pooling must be 'max' or 'avg', got {pooling!r}")


def wavenet_layer(x: tf.Tensor, *, dilation: int, params: Mapping, name: str) -> tuple[tf.Tensor, tf.Tensor]:
    """One gated, dilated, causal conv layer (figure 11): returns (residual output, skip output)."""
    channels, f = int(_param(params, "channels")), int(_param(params, "filter_size"))
    conv = lambda units, size, n, d=1: tf.keras.layers.Conv1D(  # noqa: E731
        units, size, dilation_rate=d, padding="causal", name=f"{name}/{n}")
    gated = tf.tanh(conv(channels, f, "filter", dilation)(x)) * tf.sigmoid(conv(channels, f, "gate", dilation)(x))
    residual = x + conv(channels, 1, "residual")(gated)
    skip = conv(int(_param(params, "skip_channels")), 1, "skip")(gated)
    return residual, skip


def _final_sequence(audio: tf.Tensor, length: tf.Tensor, *, params: Mapping, training: bool
                    ) -> tuple[tf.Tensor, tf.Tensor]:
    """Front end, stacks and final conv: ``[batch, steps, final_channels]`` and the real steps ``[batch]``.

    Everything before the global pooling over time; each step sees only the audio before it.
    """
    # raw: the audio as one channel; logmel / strided: fewer steps, more channels, new lengths.
    audio, length = frontends.apply_frontend(audio, length, params={**DEFAULT_PARAMS, **params}, training=training)
    pooling = str(_param(params, "pooling"))
    n, base = int(_param(params, "layers_per_stack")), int(_param(params, "dilation_base"))
    x = tf.keras.layers.Conv1D(int(_param(params, "channels")), 1, name="input_projection")(audio)
    skips: list[tf.Tensor] = []
    for s, pool in enumerate(_pool_sizes(params)):
        for i in range(n):
            x, skip = wavenet_layer(x, dilation=base ** (i % n), params=params, name=f"stack{s}/layer{i}")
            skips.append(skip)
        # Pool the running input and every skip so far, so all skips end at one resolution.
        x = masked_pool(x, length, pool=pool, pooling=pooling)
        skips = [masked_pool(k, length, pool=pool, pooling=pooling) for k in skips]
        length = lengths_after_pooling(length, pool)
    features = tf.nn.relu(tf.concat(skips, axis=-1))
    final = tf.keras.layers.Conv1D(int(_param(params, "final_channels")), int(_param(params, "final_filter_size")),
                                   padding="causal", name="final/conv")(features)
    return final, length


def _dense_head(embedding: tf.Tensor, *, params: Mapping, training: bool) -> tf.Tensor:
    """The optional dense layers after the global pooling (the paper's late improvement)."""
    dropout = float(_param(params, "dropout"))
    sizes = _dense_sizes(params)
    for j, units in enumerate(sizes):
        if dropout > 0:
            embedding = tf.keras.layers.Dropout(dropout, name=f"dense{j}/dropout")(embedding, training=training)
        embedding = tf.keras.layers.Dense(units, activation=tf.nn.relu if j < len(sizes) - 1 else None,
                                          name=f"dense{j}")(embedding)
    return embedding


@frontends.with_mixed_precision
def embed(audio: tf.Tensor, length: tf.Tensor, *, params: Mapping, training: bool) -> tf.Tensor:
    """Embed pooled audio.

    Parameters
    ----------
    audio : float32 ``[batch, time]`` or ``[batch, time, channels]``, right-padded
    length : int ``[batch]``, real steps of each track
    params : hyperparameters (see ``DEFAULT_PARAMS``)
    training : enables dropout

    Returns
    -------
    float32 ``[batch, final_channels]`` (or the last dense layer's size)
    """
    final, length = _final_sequence(audio, length, params=params, training=training)
    embedding = global_pool(final, length, pooling=str(_param(params, "pooling")))
    return _dense_head(embedding, params=params, training=training)


# ---------------------------------------------------------------------------------------------
# Long audio in windows
# ---------------------------------------------------------------------------------------------

def window_geometry(params: Mapping) -> dict[str, int]:
    """How a long input can be cut into windows that embed exactly as the whole input does.

    All sizes are in input steps (the model's input samples, e.g. mean-pooled audio):

    - ``unit``: input steps per step of the final conv's output. Windows start and end on
      multiples of it, so every pooling window of the stacks falls where it falls in the whole input;
    - ``context``: steps of audio before a window that its first output steps depend on (the
      receptive field, rounded up to a ``unit``): the causal convolutions then see what they see
      in the whole input, and the context's own outputs are left out of the pooling;
    - ``lookahead``: steps after a window that its last frames read (logmel: a frame is longer
      than its hop; 0 otherwise).

    Returns
    -------
    dict with int ``unit``, ``context``, ``lookahead``
    """
    merged = {**DEFAULT_PARAMS, **params}
    frontend = str(merged["frontend"])
    if frontend == "raw":
        step, lookahead = 1, 0
    elif frontend == "strided":
        step, lookahead = int(merged["frontend_stride"]), 0
    elif frontend == "logmel":
        settings = frontends.logmel_settings(merged)
        step, lookahead = settings["hop_length"], settings["frame_length"] - settings["hop_length"]
    else:
        raise ValueError(f"unknown frontend {frontend!r}")
    reduction = min_length_steps(params)
    # One extra unit: the field of a final step reaches back from the end of its own unit.
    context_steps = (math.ceil(receptive_field(params) / reduction) + 1) * reduction
    return {"unit": step * reduction, "context": step * context_steps, "lookahead": lookahead}


def window_features(audio: tf.Tensor, length: tf.Tensor, skip: tf.Tensor, *, params: Mapping
                    ) -> tuple[tf.Tensor, tf.Tensor]:
    """The pre-dense pooled features of windows of a longer input, to be combined across windows.

    Each row is a window with its context before it (see `window_geometry`); the first ``skip``
    final-conv steps belong to the context and are left out. Combining the rows of one input by
    the elementwise max (``pooling="max"``) or the ``count``-weighted mean (``"avg"``), then
    `apply_dense_layers`, gives the embedding of the whole input.

    Parameters
    ----------
    audio : float32 ``[batch, time]`` or ``[batch, time, channels]``, right-padded
    length : int ``[batch]``, real steps of each row
    skip : int ``[batch]``, final-conv steps of each row's context
    params : hyperparameters (see ``DEFAULT_PARAMS``)

    Returns
    -------
    features : float32 ``[batch, final_channels]``, pooled over the window's own steps (zeros when
        it has none)
    count : int32 ``[batch]``, the window's own final-conv steps
    """
    lengths: dict[str, tf.Tensor] = {}

    def final_sequence(audio, length, *, params, training):
        final, lengths["final"] = _final_sequence(audio, length, params=params, training=training)
        return final

    final = frontends.with_mixed_precision(final_sequence)(audio, length, params=params, training=False)
    final_length = tf.cast(lengths["final"], tf.int32)
    skip = tf.cast(tf.reshape(skip, [-1]), tf.int32)
    steps = tf.range(tf.shape(final)[1])[None, :]
    own = (steps >= skip[:, None]) & (steps < final_length[:, None])
    count = tf.reduce_sum(tf.cast(own, tf.int32), axis=1)
    mask = own[:, :, None]
    if str(_param(params, "pooling")) == "max":
        pooled = tf.reduce_max(tf.where(mask, final, final.dtype.min), axis=1)
        pooled = tf.where(count[:, None] > 0, pooled, tf.zeros_like(pooled))
    else:
        total = tf.reduce_sum(tf.where(mask, final, tf.zeros_like(final)), axis=1)
        pooled = total / tf.maximum(tf.cast(count, final.dtype), 1.0)[:, None]
    return pooled, count


def combine_windows(features: "np.ndarray", counts: "np.ndarray", *, params: Mapping) -> "np.ndarray":
    """Pool the `window_features` of one input's windows into its pre-dense embedding.

    Parameters
    ----------
    features : float32 ``[windows, final_channels]``
    counts : int ``[windows]``

    Returns
    -------
    float32 ``[final_channels]``: the max over the windows that have steps (``pooling="max"``), or
    their ``counts``-weighted mean (``"avg"``), which is the pooling over the whole input.
    """
    import numpy as np

    features, counts = np.asarray(features, np.float32), np.asarray(counts, np.int64)
    if not np.any(counts > 0):
        return np.zeros(features.shape[1], np.float32)
    if str(_param(params, "pooling")) == "max":
        return features[counts > 0].max(axis=0)
    weights = counts.astype(np.float64) / counts.sum()
    return (weights @ features.astype(np.float64)).astype(np.float32)


def dense_weights(params: Mapping, *, checkpoint: str) -> list[tuple["np.ndarray", "np.ndarray"]]:
    """(kernel ``[in, out]``, bias ``[out]``) of each of `embed`'s dense layers in a checkpoint."""
    reader = tf.train.load_checkpoint(checkpoint)
    return [(reader.get_tensor(f"dense{j}/kernel"), reader.get_tensor(f"dense{j}/bias"))
            for j in range(len(_dense_sizes(params)))]


def apply_dense_layers(embedding: "np.ndarray", *, weights: Sequence[tuple["np.ndarray", "np.ndarray"]]
                       ) -> "np.ndarray":
    """`embed`'s dense layers at inference (no dropout) on pooled features, in numpy.

    Parameters
    ----------
    embedding : float32 ``[batch, final_channels]``
    weights : `dense_weights` of the run's checkpoint (empty: no dense layers)

    Returns
    -------
    float32 ``[batch, embedding_size(params)]`` (the input unchanged when there are no dense layers)
    """
    import numpy as np

    x = np.asarray(embedding, np.float32)
    for j, (kernel, bias) in enumerate(weights):
        x = x @ kernel + bias
        if j < len(weights) - 1:  # relu between the layers, the last one linear (as in embed)
            x = np.maximum(x, 0.0)
    return x.astype(np.float32)


def _dense_sizes(params: Mapping) -> list[int]:
    sizes = _param(params, "dense_layers")
    if isinstance(sizes, str):
        sizes = [s for s in sizes.split(",") if s.strip()]
    return [int(s) for s in sizes]


def dilations(params: Mapping | None = None) -> list[int]:
    """Dilation of each layer of a stack: ``base ** i`` (magenta's ``base ** (i % n)``)."""
    params = params or {}
    n, base = int(_param(params, "layers_per_stack")), int(_param(params, "dilation_base"))
    return [base ** (i % n) for i in range(n)]


def embedding_size(params: Mapping) -> int:
    dense = _dense_sizes(params)
    return dense[-1] if dense else int(_param(params, "final_channels"))


def min_length_steps(params: Mapping) -> int:
    """Total reduction before the final conv: input steps per output step."""
    return math.prod(_pool_sizes(params))
