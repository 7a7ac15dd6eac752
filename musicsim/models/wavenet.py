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

One `WaveNetConfig` builds the graph, as magenta's NSynth ``Config.build`` does: `stacks` (front end,
input projection, the stacks, with switches for the pooling between stacks and *atrous* dilations)
and `embedding_tail` (final conv, global pooling, dense layers) are the two halves of `embed`, and
predictive pretraining (`musicsim.pretraining.predictive`) builds the same stacks unpooled. Variable
names are ``frontend/...``, ``input_projection``, ``stack{s}/layer{i}/{filter,gate,residual,skip}``,
``final/conv`` and ``dense{j}``, whichever graph creates them, so checkpoints map 1:1 by name.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import tensorflow as tf

from musicsim import frontends
from musicsim.models.entry import InputSpec, LearnedEntry, WindowFunctions
from musicsim.params import DROPOUT_HELP, ParamsConfig, ParamsError, fill_defaults, hyperparameter


def _sizes(value: Any) -> tuple[int, ...]:
    """A sequence of sizes from a tuple, a list or a comma-separated string (as flags give them)."""
    if isinstance(value, str):
        value = [s for s in value.split(",") if s.strip()]
    elif not isinstance(value, (list, tuple)):
        value = [value]
    return tuple(int(s) for s in value)


@dataclasses.dataclass(frozen=True)
class WaveNetConfig(ParamsConfig):
    """The WaveNet's hyperparameters (the front end's are `musicsim.frontends`').

    Attributes
    ----------
    channels : residual channels (also the strided front end's filters)
    skip_channels : channels of each layer's skip output
    filter_size : taps of the dilated convolutions
    dilation_base : layer ``i`` of a stack has dilation ``dilation_base ** i`` (paper: 2 with filter 2,
        or 4 with filter 4)
    num_stacks, layers_per_stack : the cascade's size
    stack_pool_sizes : the pooling after each stack, where the time reductions happen: one size for
        every stack, or one per stack (a comma-separated string is read too); see `pool_sizes`
    pooling : ``"max"`` or ``"avg"``, between stacks and at the end
    final_channels : the final conv's channels, the embedding size before the dense layers
    final_filter_size : taps of the final conv
    dense_layers : sizes of the dense layers after the global pooling (the paper's late improvement,
        e.g. ``(64,)``); relu between them, the last one linear
    dropout : dropout rate before each dense layer, while training

    >>> WaveNetConfig(num_stacks=2, stack_pool_sizes="4").pool_sizes
    (4, 4)
    """

    channels: int = hyperparameter(32, "WaveNet residual channels.", bounds="at_least_one")
    skip_channels: int = hyperparameter(32, "WaveNet skip channels.", bounds="at_least_one")
    filter_size: int = hyperparameter(2, "WaveNet filter size.", bounds="at_least_one")
    dilation_base: int = hyperparameter(2, "Dilation growth per layer (2 with filter 2, 4 with filter 4).",
                                        bounds="at_least_one")
    num_stacks: int = hyperparameter(3, "WaveNet stacks.", bounds="at_least_one")
    layers_per_stack: int = hyperparameter(6, "WaveNet layers per stack.", bounds="at_least_one")
    stack_pool_sizes: tuple[int, ...] = hyperparameter((4,), "Pooling after each stack (one value, or one per "
                                                       "stack).", bounds="sizes", item=int)
    pooling: str = hyperparameter("max", "Pooling function between stacks and at the end.", choices=("max", "avg"))
    final_channels: int = hyperparameter(64, "Channels of the final conv (embedding size without dense layers).",
                                         bounds="at_least_one")
    final_filter_size: int = 2
    dense_layers: tuple[int, ...] = hyperparameter((), "Sizes of dense layers after the final pooling, e.g. 64.",
                                                   bounds="sizes", item=int)
    dropout: float = hyperparameter(0.0, DROPOUT_HELP, bounds="open_fraction")

    def __post_init__(self):
        for name in ("channels", "skip_channels", "filter_size", "dilation_base", "num_stacks", "layers_per_stack",
                     "final_channels", "final_filter_size"):
            object.__setattr__(self, name, int(getattr(self, name)))
        object.__setattr__(self, "dropout", float(self.dropout))
        object.__setattr__(self, "pooling", str(self.pooling))
        # Kept as given (one size stays one size, for any num_stacks); `pool_sizes` spells it out per stack.
        sizes = _sizes(self.stack_pool_sizes)
        if len(sizes) not in (1, self.num_stacks):
            raise ParamsError(f"stack_pool_sizes has {len(sizes)} entries for {self.num_stacks} stacks")
        if any(s < 1 for s in sizes):
            raise ParamsError(f"stack_pool_sizes must be >= 1, got {list(sizes)}")
        object.__setattr__(self, "stack_pool_sizes", sizes)
        object.__setattr__(self, "dense_layers", _sizes(self.dense_layers))

    @property
    def pool_sizes(self) -> tuple[int, ...]:
        """The pooling after each stack, one per stack."""
        sizes = self.stack_pool_sizes
        return sizes * self.num_stacks if len(sizes) == 1 else sizes

    @property
    def dilations(self) -> tuple[int, ...]:
        """Dilation of each layer of a stack: ``base ** i``."""
        return tuple(self.dilation_base ** i for i in range(self.layers_per_stack))

    @property
    def reduction(self) -> int:
        """Total reduction before the final conv: input steps (after the front end) per output step."""
        return math.prod(self.pool_sizes)

    @property
    def receptive_field(self) -> int:
        """Receptive field, in front-end steps, of one output step after the stacks and the final conv.

        Each layer with filter ``f`` and dilation ``d`` widens the field by ``(f - 1) * d`` steps of its
        stack's resolution; a pooling of size ``p`` makes one step worth ``p`` earlier steps.
        """
        field, step = 1, 1  # field in input steps; input steps per step at the current resolution
        for pool in self.pool_sizes:
            field += sum((self.filter_size - 1) * d for d in self.dilations) * step
            field += (pool - 1) * step  # a pooling window covers pool steps
            step *= pool
        return field + (self.final_filter_size - 1) * step

    @property
    def embedding_size(self) -> int:
        """Size of `embed`'s output: the last dense layer's, or ``final_channels``."""
        return self.dense_layers[-1] if self.dense_layers else self.final_channels


def config_of(params: Mapping) -> WaveNetConfig:
    """The WaveNet's config in ``params``; keys it lacks take :class:`WaveNetConfig`'s defaults
    (a run's params are settled before training: this serves graph functions called on their own)."""
    return WaveNetConfig.from_params(fill_defaults(params, configs=[WaveNetConfig]))


def receptive_field(params: Mapping | None = None) -> int:
    """`WaveNetConfig.receptive_field` of ``params``."""
    return config_of(params or {}).receptive_field


def dilations(params: Mapping | None = None) -> list[int]:
    """`WaveNetConfig.dilations` of ``params``."""
    return list(config_of(params or {}).dilations)


def embedding_size(params: Mapping) -> int:
    """`WaveNetConfig.embedding_size` of ``params``."""
    return config_of(params).embedding_size


def min_length_steps(params: Mapping) -> int:
    """`WaveNetConfig.reduction` of ``params``: input steps per output step."""
    return config_of(params).reduction


# ---------------------------------------------------------------------------------------------
# Causal, masked primitives
# ---------------------------------------------------------------------------------------------

def lengths_after_pooling(lengths: tf.Tensor, pool: int) -> tf.Tensor:
    """Number of pooled steps holding real audio: ``ceil(length / pool)``."""
    return (lengths + pool - 1) // pool


def masked_pool(x: tf.Tensor, lengths: tf.Tensor, *, pool: int, pooling: str) -> tf.Tensor:
    """Pool ``x`` ``[batch, time, ch]`` by non-overlapping windows of ``pool`` steps, ignoring padding.

    The time axis is right-padded to a multiple of ``pool``; the last partial window of a track is
    pooled over its real steps only. Steps past a track's pooled length are zero.

    Returns
    -------
    ``[batch, ceil(time / pool), ch]``
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


def recomputed(layer: Callable[[tf.Tensor], tuple[tf.Tensor, tf.Tensor]]
               ) -> Callable[[tf.Tensor], tuple[tf.Tensor, tf.Tensor]]:
    """``layer`` (``x -> (residual, skip)``) whose activations are recomputed in the backward pass.

    Training keeps only the layer's input for its gradient instead of its seven activations of the
    input's length: the first stacks at full length dominate a training step's memory. The gradients
    equal the plain graph's bit for bit (the same ops on the same values): the recomputation's ops sit
    under an absolute ``recomputed/`` name scope, so Grappler, which orders a sum's terms by name,
    adds a layer input's three gradient terms in the plain graph's order (tested).
    """

    @tf.custom_gradient
    def forward(x):
        def gradient(d_residual, d_skip, variables=None):
            # A data dependency on the incoming gradient (as tf.recompute_grad's: a control one XLA
            # ignores) runs the recomputation in the backward pass; adding 0 leaves the values unchanged.
            first = tf.cast(tf.reduce_max(tf.reshape(d_residual, [-1])[:1]), tf.bool)
            zero = tf.cast(tf.where(tf.equal(first, first), 0.0, float("nan")), x.dtype)
            with tf.compat.v1.get_default_graph().name_scope("recomputed/"):
                again = x + zero
                grads = tf.gradients(list(layer(again)), [again, *variables], grad_ys=[d_residual, d_skip])
            return grads[0], grads[1:]

        return layer(x), gradient

    return forward


def wavenet_layer(x: tf.Tensor, *, dilation: int, config: WaveNetConfig, name: str, recompute: bool = False,
                  skip_pool: Callable[[tf.Tensor], tf.Tensor] | None = None) -> tuple[tf.Tensor, tf.Tensor]:
    """One gated, dilated, causal conv layer (figure 11).

    Parameters
    ----------
    x : ``[batch, time, channels]``
    dilation : of the filter and gate convolutions
    config : ``channels``, ``skip_channels``, ``filter_size``
    name : variable scope of the layer's four convolutions
    recompute : recompute the layer's activations in the backward pass (`recomputed`); same values
    skip_pool : applied to the skip output inside the layer (so recomputed with it): the stack's pooling

    Returns
    -------
    residual output ``[batch, time, channels]``, skip output ``[batch, time, skip_channels]`` (pooled by
    ``skip_pool``)
    """
    def conv(units: int, size: int, part: str, rate: int = 1) -> tf.keras.layers.Conv1D:
        return tf.keras.layers.Conv1D(units, size, dilation_rate=rate, padding="causal", name=f"{name}/{part}")

    f = config.filter_size
    # Built at their first call, in this order (their initial weights are drawn then).
    filter_conv, gate_conv = conv(config.channels, f, "filter", dilation), conv(config.channels, f, "gate", dilation)
    residual_conv, skip_conv = conv(config.channels, 1, "residual"), conv(config.skip_channels, 1, "skip")

    def layer(x: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        gated = tf.tanh(filter_conv(x)) * tf.sigmoid(gate_conv(x))
        residual = x + residual_conv(gated)
        skip = skip_conv(gated)
        return residual, skip if skip_pool is None else skip_pool(skip)

    return recomputed(layer)(x) if recompute else layer(x)


# ---------------------------------------------------------------------------------------------
# The graph
# ---------------------------------------------------------------------------------------------

def stacks(audio: tf.Tensor, length: tf.Tensor, *, params: Mapping, training: bool, pooled: bool = True,
           atrous: bool = False) -> tuple[list[tf.Tensor], tf.Tensor]:
    """Front end, input projection and the stacks: every layer's skip output, at one time resolution.

    Parameters
    ----------
    audio : float ``[batch, time]`` or ``[batch, time, channels]``, right-padded
    length : int ``[batch]``, real steps of each track
    params : the WaveNet's and the front end's hyperparameters (`WaveNetConfig`, `musicsim.frontends`)
    training : passed to the front end
    pooled : pool the running input and every skip so far after each stack (the similarity model);
        False keeps the front end's step rate throughout (predictive pretraining)
    atrous : with ``pooled=False``, the layers of stack ``s`` get dilations multiplied by
        ``prod(stack_pool_sizes[:s])``, so each filter spans what it spans in the pooled model

    Returns
    -------
    skips : ``num_stacks * layers_per_stack`` tensors ``[batch, steps, skip_channels]``; causal (step
        ``t`` reads only steps ``<= t``); steps past a track's length are zero when pooled
    length : int32 ``[batch]``, real steps of the skips
    """
    config = config_of(params)
    # raw: the audio as one channel; logmel / strided: fewer steps, more channels, new lengths.
    audio, length = frontends.apply_frontend(audio, length, params={**params, "channels": config.channels},
                                             training=training)
    x = tf.keras.layers.Conv1D(config.channels, 1, name="input_projection")(audio)
    skips: list[tf.Tensor] = []
    scale = 1  # dilation multiplier of the current stack (atrous)
    for s, pool in enumerate(config.pool_sizes):
        earlier = len(skips)
        # Pooled, each skip takes its stack's pooling inside its layer (recomputed with it when training).
        skip_pool = functools.partial(masked_pool, lengths=length, pool=pool, pooling=config.pooling)
        for i, dilation in enumerate(config.dilations):
            # Training recomputes the long stacks' activations; the last (shortest) stack's last residual
            # output is unused, which a recomputed layer would give a zero gradient rather than none.
            x, skip = wavenet_layer(x, dilation=dilation * scale, config=config, name=f"stack{s}/layer{i}",
                                    recompute=training and s < config.num_stacks - 1,
                                    skip_pool=skip_pool if pooled else None)
            skips.append(skip)
        if pooled:
            # Pool the running input and the earlier stacks' skips too, so all skips end at one resolution.
            x = skip_pool(x)
            skips = [skip_pool(k) for k in skips[:earlier]] + skips[earlier:]
            length = lengths_after_pooling(length, pool)
        elif atrous:
            scale *= pool  # the next stack reads steps `pool` times further apart in the pooled model
    return skips, length


def final_sequence(skips: Sequence[tf.Tensor], *, config: WaveNetConfig) -> tf.Tensor:
    """The final conv on ``relu(concat(skips))``: ``[batch, steps, final_channels]``, causal."""
    features = tf.nn.relu(tf.concat(list(skips), axis=-1))
    return tf.keras.layers.Conv1D(config.final_channels, config.final_filter_size, padding="causal",
                                  name="final/conv")(features)


def dense_layers(embedding: tf.Tensor, *, config: WaveNetConfig, training: bool) -> tf.Tensor:
    """The optional dense layers after the global pooling (the paper's late improvement).

    ``[batch, final_channels]`` to ``[batch, embedding_size]``; dropout before each while training.
    """
    sizes = config.dense_layers
    for j, units in enumerate(sizes):
        if config.dropout > 0:
            embedding = tf.keras.layers.Dropout(config.dropout, name=f"dense{j}/dropout")(embedding,
                                                                                         training=training)
        embedding = tf.keras.layers.Dense(units, activation=tf.nn.relu if j < len(sizes) - 1 else None,
                                          name=f"dense{j}")(embedding)
    return embedding


def embedding_tail(skips: Sequence[tf.Tensor], length: tf.Tensor, *, config: WaveNetConfig, training: bool
                   ) -> tf.Tensor:
    """`embed` after its stacks: final conv, global pooling over the real steps, dense layers.

    Parameters
    ----------
    skips : `stacks`' output, each ``[batch, steps, skip_channels]``
    length : int ``[batch]``, real steps of the skips

    Returns
    -------
    float ``[batch, config.embedding_size]``
    """
    embedding = global_pool(final_sequence(skips, config=config), length, pooling=config.pooling)
    return dense_layers(embedding, config=config, training=training)


@frontends.with_mixed_precision
def embed(audio: tf.Tensor, length: tf.Tensor, *, params: Mapping, training: bool) -> tf.Tensor:
    """Embed pooled audio.

    Parameters
    ----------
    audio : float32 ``[batch, time]`` or ``[batch, time, channels]``, right-padded
    length : int ``[batch]``, real steps of each track
    params : hyperparameters (`WaveNetConfig` and the front end's)
    training : enables dropout

    Returns
    -------
    float32 ``[batch, final_channels]`` (or the last dense layer's size)
    """
    skips, length = stacks(audio, length, params=params, training=training)
    return embedding_tail(skips, length, config=config_of(params), training=training)


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
    frontend = frontends.config_of(params)
    if frontend.frontend == "raw":
        step, lookahead = 1, 0
    elif frontend.frontend == "strided":
        step, lookahead = int(frontend.frontend_stride), 0
    else:  # logmel
        settings = frontends.logmel_settings(params)
        step, lookahead = settings["hop_length"], settings["frame_length"] - settings["hop_length"]
    config = config_of(params)
    reduction = config.reduction
    # One extra unit: the field of a final step reaches back from the end of its own unit.
    context_steps = (math.ceil(config.receptive_field / reduction) + 1) * reduction
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
    params : hyperparameters (`WaveNetConfig` and the front end's)

    Returns
    -------
    features : float32 ``[batch, final_channels]``, pooled over the window's own steps (zeros when
        it has none)
    count : int32 ``[batch]``, the window's own final-conv steps
    """
    config = config_of(params)
    lengths: dict[str, tf.Tensor] = {}

    def final_steps(audio, length, *, params, training):
        # with_mixed_precision casts one tensor back to float32: the lengths leave through `lengths`.
        skips, lengths["final"] = stacks(audio, length, params=params, training=training)
        return final_sequence(skips, config=config)

    final = frontends.with_mixed_precision(final_steps)(audio, length, params=params, training=False)
    final_length = tf.cast(lengths["final"], tf.int32)
    skip = tf.cast(tf.reshape(skip, [-1]), tf.int32)
    steps = tf.range(tf.shape(final)[1])[None, :]
    own = (steps >= skip[:, None]) & (steps < final_length[:, None])
    count = tf.reduce_sum(tf.cast(own, tf.int32), axis=1)
    mask = own[:, :, None]
    if config.pooling == "max":
        pooled = tf.reduce_max(tf.where(mask, final, final.dtype.min), axis=1)
        pooled = tf.where(count[:, None] > 0, pooled, tf.zeros_like(pooled))
    else:
        total = tf.reduce_sum(tf.where(mask, final, tf.zeros_like(final)), axis=1)
        pooled = total / tf.maximum(tf.cast(count, final.dtype), 1.0)[:, None]
    return pooled, count


def combine_windows(features: np.ndarray, counts: np.ndarray, *, params: Mapping) -> np.ndarray:
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
    features, counts = np.asarray(features, np.float32), np.asarray(counts, np.int64)
    if not np.any(counts > 0):
        return np.zeros(features.shape[1], np.float32)
    if config_of(params).pooling == "max":
        return features[counts > 0].max(axis=0)
    weights = counts.astype(np.float64) / counts.sum()
    return (weights @ features.astype(np.float64)).astype(np.float32)


def dense_weights(params: Mapping, *, checkpoint: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """(kernel ``[in, out]``, bias ``[out]``) of each of `embed`'s dense layers in a checkpoint."""
    reader = tf.train.load_checkpoint(checkpoint)
    return [(reader.get_tensor(f"dense{j}/kernel"), reader.get_tensor(f"dense{j}/bias"))
            for j in range(len(config_of(params).dense_layers))]


def apply_dense_layers(embedding: np.ndarray, *, weights: Sequence[tuple[np.ndarray, np.ndarray]]
                       ) -> np.ndarray:
    """`embed`'s dense layers at inference (no dropout) on pooled features, in numpy.

    Parameters
    ----------
    embedding : float32 ``[batch, final_channels]``
    weights : `dense_weights` of the run's checkpoint (empty: no dense layers)

    Returns
    -------
    float32 ``[batch, embedding_size(params)]`` (the input unchanged when there are no dense layers)
    """
    x = np.asarray(embedding, np.float32)
    for j, (kernel, bias) in enumerate(weights):
        x = x @ kernel + bias
        if j < len(weights) - 1:  # relu between the layers, the last one linear (as in embed)
            x = np.maximum(x, 0.0)
    return x.astype(np.float32)


# Long files embed window by window, exactly (musicsim.embedder, training.predict_embeddings).
WINDOWS = WindowFunctions(window_geometry=window_geometry, window_features=window_features,
                          combine_windows=combine_windows, dense_weights=dense_weights,
                          apply_dense_layers=apply_dense_layers)
ENTRY = LearnedEntry(name="wavenet", input=InputSpec(features="pooled_audio", channels=1), embed=embed,
                     embedding_size=embedding_size, config=WaveNetConfig, uses=(frontends.FrontendConfig,),
                     windows=WINDOWS)
