"""What a model declares at the end of its module: a `LearnedEntry` or a `FittedEntry`.

Each entry carries only the fields its kind has, and its own frozen config class (a
``musicsim.params.ParamsConfig`` dataclass: each field one hyperparameter, its default and its
help text). The registry (``musicsim.models``) lists the modules' entries; this module imports no
model, so a model module can import it.

>>> from dataclasses import dataclass
>>> @dataclass(frozen=True)
... class ToyConfig(ParamsConfig):
...     width: int = 3
>>> FittedEntry(name="toy", fitted_class=object, config=ToyConfig, keywords={"size": "width"}).default_params()
{'width': 3}
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from musicsim.params import ParamsConfig

FEATURES = ("pooled_audio", "chroma")
KINDS = ("learned", "fitted", "baseline")


@dataclass(frozen=True)
class NoConfig(ParamsConfig):
    """The config of a model without hyperparameters of its own."""


@dataclass(frozen=True)
class InputSpec:
    """What a learned model reads from a file.

    Attributes
    ----------
    features : ``"pooled_audio"`` (the decoded excerpt mean-pooled, as ``data_prep`` prepares a
        dataset) or ``"chroma"`` (the chromagram of the excerpt, ``hop_length`` samples a frame)
    channels : values per step of the sequence (1 for audio, 12 for a chromagram)
    decode_rate : the decode rate in Hz; None: the dataset's; a str: the params key that holds it
    pool_size : the mean-pooling window; None: the dataset's
    """

    features: str
    channels: int
    decode_rate: int | str | None = None
    pool_size: int | None = None

    def __post_init__(self):
        if self.features not in FEATURES:
            raise ValueError(f"features must be one of {FEATURES}, got {self.features!r}")
        if int(self.channels) < 1:
            raise ValueError(f"channels must be >= 1, got {self.channels}")

    def sample_rate(self, *, params: Mapping, dataset: Mapping) -> int:
        """The decode rate in Hz of a run with these ``params`` on ``dataset`` (``dataset.json``'s record)."""
        if self.decode_rate is None:
            return int(dataset["sample_rate"])
        if isinstance(self.decode_rate, str):
            return int(params[self.decode_rate])
        return int(self.decode_rate)

    def pool(self, *, dataset: Mapping) -> int:
        """The mean-pooling window of a run on ``dataset``."""
        return int(dataset["pool_size"]) if self.pool_size is None else int(self.pool_size)

    def frame_rate(self, *, params: Mapping, dataset: Mapping) -> float:
        """Steps per second of the model's input sequence."""
        rate = self.sample_rate(params=params, dataset=dataset)
        if self.features == "chroma":
            return rate / float(params["hop_length"])
        return rate / float(self.pool(dataset=dataset))


@dataclass(frozen=True)
class WindowFunctions:
    """How a learned model embeds a long file window by window, exactly (``musicsim.models.wavenet``'s).

    Attributes
    ----------
    window_geometry : ``(params) -> {"context", "lookahead", "unit"}`` in input steps
    window_features : ``(audio, length, skip, *, params) -> (pooled, count)``, graph side
    combine_windows : ``(features [n, dim], counts [n], *, params) -> [dim]``
    dense_weights : ``(params, *, checkpoint) -> [(kernel, bias), ...]``
    apply_dense_layers : ``(embedding [batch, dim], *, weights) -> [batch, out]``
    """

    window_geometry: Callable
    window_features: Callable
    combine_windows: Callable
    dense_weights: Callable
    apply_dense_layers: Callable


def _defaults(configs) -> dict:
    params: dict = {}
    for config in configs:
        params.update(config().to_params())
    return params


@dataclass(frozen=True)
class LearnedEntry:
    """A learned model: an ``embed`` function under the one head, trained with tf.estimator.

    Attributes
    ----------
    name : the ``--model`` name
    input : what it reads from a file (`InputSpec`)
    embed : ``embed(audio [batch, time, channels], length [batch], *, params, training) -> [batch, dim]``
    embedding_size : ``embedding_size(params) -> dim``
    config : its own hyperparameters (a frozen ``ParamsConfig`` dataclass)
    uses : the configs of shared components it reads too (the WaveNet's front end)
    objective : None for the paper's ranking objective of the head, else a factory
        ``objective() -> musicsim.head.Objective``
    early_stopping : ``(eval metric, "increase" | "decrease")``; None: the run's
        ``--early_stopping_metric`` on the similarity lists
    embedding_variants : None, or ``() -> [(rnn_embedding, rnn_reduce), ...]``: readouts of one
        checkpoint, the best chosen on the eval split when ``variant_key`` is ``"all"``
    variant_key : the params key whose value ``"all"`` asks for the choice among the variants
    load_tracks : None for the pooled-audio ``TrackSet`` s of the dataset, else
        ``load_tracks(dataset_dir, splits, *, params, workers) -> {split: TrackSet}``
    make_input_fn : None to train on the similarity lists of ``musicsim.inputs``; else the model's own
        training inputs ``make_input_fn(*, tracks, mode, seed, batch_size, params)``
    windows : `WindowFunctions`: long files are embedded window by window, exactly; None: each file's
        sequence whole
    """

    name: str
    input: InputSpec
    embed: Callable
    embedding_size: Callable[[Mapping], int]
    config: type[ParamsConfig] = NoConfig
    uses: tuple[type[ParamsConfig], ...] = ()
    objective: Callable[[], Any] | None = None
    early_stopping: tuple[str, str] | None = None
    embedding_variants: Callable[[], list[tuple[str, str]]] | None = None
    variant_key: str | None = None
    load_tracks: Callable | None = None
    make_input_fn: Callable | None = None
    windows: WindowFunctions | None = None

    kind = "learned"

    def __post_init__(self):
        if not isinstance(self.input, InputSpec) or not callable(self.embed) or not callable(self.embedding_size):
            raise ValueError(f"learned model {self.name!r} needs an input, embed and embedding_size")
        if (self.embedding_variants is None) != (self.variant_key is None):
            raise ValueError(f"learned model {self.name!r}: embedding_variants and variant_key go together")

    @property
    def configs(self) -> tuple[type[ParamsConfig], ...]:
        """Its own config, then the shared ones it reads."""
        return (self.config, *self.uses)

    def default_params(self) -> dict:
        """The defaults of every config it reads."""
        return _defaults(self.configs)


@dataclass(frozen=True)
class FittedEntry:
    """A fitted model: a ``musicsim.models.fitted.FittedModel`` class, fitted on the train split.

    Attributes
    ----------
    name : the ``--model`` name
    fitted_class : the ``FittedModel`` subclass
    config : its settings a run passes on (a frozen ``ParamsConfig`` dataclass)
    keywords : constructor keyword -> config field, the settings the class takes
    """

    name: str
    fitted_class: type
    config: type[ParamsConfig] = NoConfig
    keywords: Mapping[str, str] = field(default_factory=dict)

    kind = "fitted"

    def __post_init__(self):
        if not isinstance(self.fitted_class, type):
            raise ValueError(f"fitted model {self.name!r} needs its fitted_class")
        unknown = sorted(set(self.keywords.values()) - set(self.config.keys()))
        if unknown:
            raise ValueError(f"fitted model {self.name!r}: keywords name {unknown}, not fields of "
                             f"{self.config.__name__}")

    @property
    def configs(self) -> tuple[type[ParamsConfig], ...]:
        return (self.config,)

    def default_params(self) -> dict:
        return _defaults(self.configs)

    def make_fitted(self, *, params: Mapping, dataset_dir: str, max_seconds: float | None,
                    workers: int | None, load_run: Callable | None = None):
        """A new, unfitted instance for a run (see ``FittedModel.for_run``); ``load_run``: how it opens
        another run, for models built on runs (``FittedModel.load_run``)."""
        model = self.fitted_class.for_run(params=params, run_params=self.keywords, dataset_dir=dataset_dir,
                                          max_seconds=max_seconds, workers=workers)
        model.load_run = load_run
        return model


@dataclass(frozen=True)
class BaselineEntry:
    """A baseline of the evaluation protocol (``random``, ``worst``): it embeds nothing."""

    name: str

    kind = "baseline"

    @property
    def configs(self) -> tuple[type[ParamsConfig], ...]:
        return ()

    def default_params(self) -> dict:
        return {}


Entry = LearnedEntry | FittedEntry | BaselineEntry
