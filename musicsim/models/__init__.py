"""Model registry: ``--model`` names to what each model needs and offers (`ModelEntry`).

Three kinds (see the architecture note):

- learned models (``wavenet``, ``rnn``) are an ``embed`` function plugged into the one head
  (``musicsim.head.make_model_fn``, with the model's objective) and trained with tf.estimator;
- fitted models (``librosa``, ``mfcc``, ``musicnn``, ``fusion``) are a
  ``musicsim.models.fitted.FittedModel`` class: ``fit`` / ``tune`` / ``embed_paths`` / ``save`` /
  ``load``;
- ``random`` and ``worst`` are baselines that only exist inside the evaluation protocol.

Callers read the entry (``entry(name)``) instead of probing a model's module: its input, how its
tracks load, its objective, early stopping and embedding variants. Adding a model is one module
plus one line below (or a `register` call). A line names the module and the attributes of it the
entry points at; the module is imported when the entry is first asked for, so importing the
registry imports no model (nor TensorFlow).

>>> entry("mfcc").fitted_params
{}
>>> kind_of("wavenet")
'learned'
>>> kind_of("mfcc")
'fitted'
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from musicsim import evaluation

FEATURES = ("pooled_audio", "chroma")
KINDS = ("learned", "fitted", "baseline")


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
class ModelEntry:
    """One model: what it needs and what it offers.

    Attributes
    ----------
    name, kind : the ``--model`` name; ``"learned"``, ``"fitted"`` or ``"baseline"``
    input : learned models: what they read from a file (`InputSpec`)
    embed : learned: ``embed(audio [batch, time, channels], length [batch], *, params, training)
        -> [batch, dim]``
    embedding_size : learned: ``embedding_size(params) -> dim``
    objective : learned: None for the paper's ranking objective of the head, else a factory
        ``objective() -> musicsim.head.Objective``
    early_stopping : learned: ``(eval metric, "increase" | "decrease")``; None: the run's
        ``--early_stopping_metric`` on the similarity lists
    embedding_variants : learned: None, or ``() -> [(rnn_embedding, rnn_reduce), ...]``: readouts of
        one checkpoint, the best chosen on the eval split
    load_tracks : learned: None for the pooled-audio ``TrackSet`` s of the dataset, else
        ``load_tracks(dataset_dir, splits, *, params, workers) -> {split: TrackSet}``
    make_input_fn : learned: None to train on the similarity lists of ``musicsim.inputs``; else the
        model's own training inputs ``make_input_fn(*, tracks, mode, seed, batch_size, params)``
    windows : learned: an object offering ``window_geometry``, ``window_features``,
        ``combine_windows``, ``dense_weights``, ``apply_dense_layers`` (``musicsim.models.wavenet``):
        long files are embedded window by window, exactly; None: each file's sequence whole
    defaults : learned: ``() -> params`` the model's defaults, for runs that did not record them
    fitted_class : fitted: the ``FittedModel`` subclass
    fitted_params : fitted: constructor keyword -> params key, the run settings the class takes
    """

    name: str
    kind: str
    input: InputSpec | None = None
    embed: Callable | None = None
    embedding_size: Callable[[Mapping], int] | None = None
    objective: Callable[[], Any] | None = None
    early_stopping: tuple[str, str] | None = None
    embedding_variants: Callable[[], list[tuple[str, str]]] | None = None
    load_tracks: Callable | None = None
    make_input_fn: Callable | None = None
    windows: Any = None
    defaults: Callable[[], Mapping] | None = None
    fitted_class: type | None = None
    fitted_params: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"{self.name}: kind must be one of {KINDS}, got {self.kind!r}")
        if self.kind == "learned" and (self.input is None or self.embed is None or self.embedding_size is None):
            raise ValueError(f"learned model {self.name!r} needs an input, embed and embedding_size")
        if self.kind == "fitted" and self.fitted_class is None:
            raise ValueError(f"fitted model {self.name!r} needs its fitted_class")

    def default_params(self) -> dict:
        """The model's default params (empty when it declares none)."""
        return dict(self.defaults()) if self.defaults is not None else {}

    def make_fitted(self, *, params: Mapping, dataset_dir: str, max_seconds: float | None,
                    workers: int | None):
        """A new, unfitted instance of a fitted model for a run (see ``FittedModel.for_run``)."""
        return self.fitted_class.for_run(params=params, run_params=self.fitted_params, dataset_dir=dataset_dir,
                                         max_seconds=max_seconds, workers=workers)


def _reference(module, value):
    """An attribute named by a str in a registry line, else the value itself."""
    return getattr(module, value) if isinstance(value, str) else value


def _learned(name: str, module: str, *, input: InputSpec, embed: str = "embed",
             embedding_size: str = "embedding_size", **attributes: Any) -> Callable[[], ModelEntry]:
    """A learned model's line: ``attributes`` name the module's attributes (or give values)."""

    def build() -> ModelEntry:
        found = importlib.import_module(module)
        resolved = {key: _reference(found, value) for key, value in attributes.items()}
        if isinstance(resolved.get("defaults"), type):  # the model's typed config: its defaults
            config = resolved["defaults"]
            resolved["defaults"] = lambda: config().to_params()
        if resolved.get("windows") is True:  # the module itself offers the window functions
            resolved["windows"] = found
        return ModelEntry(name=name, kind="learned", input=input, embed=getattr(found, embed),
                          embedding_size=getattr(found, embedding_size), **resolved)

    return build


def _fitted(name: str, module: str, cls: str, **fitted_params: str) -> Callable[[], ModelEntry]:
    """A fitted model's line: its class, and the run params its constructor takes (keyword=params key)."""

    def build() -> ModelEntry:
        return ModelEntry(name=name, kind="fitted", fitted_class=getattr(importlib.import_module(module), cls),
                          fitted_params=dict(fitted_params))

    return build


def _baseline(name: str) -> Callable[[], ModelEntry]:
    return lambda: ModelEntry(name=name, kind="baseline")


def _rnn_input_fn(*, tracks, mode: str, seed: int, batch_size: int, params: Mapping):
    """The LSTM's own training inputs, with its section length taken from the run's params."""
    from musicsim.models import rnn

    return rnn.make_input_fn(tracks=tracks, mode=mode, seed=seed, batch_size=batch_size,
                             section_frames=int(rnn.RNNConfig.from_params(params).section_frames))


_LINES: dict[str, tuple[str, Callable[[], ModelEntry]]] = {
    "wavenet": ("learned", _learned("wavenet", "musicsim.models.wavenet",
                                    input=InputSpec(features="pooled_audio", channels=1), windows=True)),
    "rnn": ("learned", _learned("rnn", "musicsim.models.rnn",
                                input=InputSpec(features="chroma", channels=12, decode_rate="chroma_sample_rate",
                                                pool_size=1),
                                objective="objective", early_stopping="EARLY_STOPPING",
                                embedding_variants="embedding_variants",
                                load_tracks="load_splits", make_input_fn=_rnn_input_fn,
                                defaults="RNNConfig")),
    "librosa": ("fitted", _fitted("librosa", "musicsim.models.librosa_pca", "LibrosaPCAModel",
                                  variance_ratio="variance_ratio")),
    "mfcc": ("fitted", _fitted("mfcc", "musicsim.models.mfcc", "MFCCModel")),
    "musicnn": ("fitted", _fitted("musicnn", "musicsim.models.musicnn", "MusicnnModel",
                                  checkpoint="musicnn_model", layer="musicnn_layer")),
    "fusion": ("fitted", _fitted("fusion", "musicsim.models.fusion", "FusionModel")),
    "pretrained": ("fitted", _fitted("pretrained", "musicsim.models.pretrained_engine", "PretrainedEngine")),
    **{name: ("baseline", _baseline(name)) for name in evaluation.BASELINES},  # the protocol owns its baselines
}
_ENTRIES: dict[str, ModelEntry] = {}
_REGISTERED: set[str] = set()  # names added by register(), which unregister() may remove

BASELINES = evaluation.BASELINES
ALL_MODELS = tuple(_LINES)  # the --model choices (fixed when the flags are defined)


def names(kind: str | None = None) -> tuple[str, ...]:
    """Registered model names, in registry order; of one kind when ``kind`` is given."""
    return tuple(name for name, (line_kind, _) in _LINES.items() if kind is None or line_kind == kind)


def entry(name: str) -> ModelEntry:
    """The registry entry of ``name`` (its module is imported on the first call).

    Raises
    ------
    ValueError
        For a name no model is registered under.
    """
    if name not in _LINES:
        raise ValueError(f"unknown model {name!r}: expected one of {list(names())}")
    if name not in _ENTRIES:
        _ENTRIES[name] = _LINES[name][1]()
    return _ENTRIES[name]


def kind_of(name: str) -> str:
    """'learned', 'fitted' or 'baseline' (without importing the model)."""
    if name not in _LINES:
        raise ValueError(f"unknown model {name!r}: expected one of {list(names())}")
    return _LINES[name][0]


def register(model: ModelEntry, *, replace_existing: bool = False) -> None:
    """Add a model to the registry (a new model: one module plus this call, or a line in ``_LINES``).

    ``--model`` flags are defined on import of ``experiments.run``: a model registered later is run
    through ``experiments.run.run`` (or a line in ``_LINES`` makes it a flag choice).

    Raises
    ------
    ValueError
        When ``model.name`` is taken (``replace_existing`` replaces only a model added here).
    """
    if model.name in _LINES and not (replace_existing and model.name in _REGISTERED):
        raise ValueError(f"a model named {model.name!r} is already registered")
    _LINES[model.name] = (model.kind, lambda: model)
    _ENTRIES[model.name] = model
    _REGISTERED.add(model.name)


def unregister(name: str) -> None:
    """Remove a model added with `register` (the registry's own lines stay).

    Raises
    ------
    ValueError
        For a name `register` did not add.
    """
    if name not in _REGISTERED:
        raise ValueError(f"{name!r} was not added with register()")
    _REGISTERED.discard(name)
    _LINES.pop(name, None)
    _ENTRIES.pop(name, None)


def fitted_class(name: str):
    """The class of a fitted model (a ``musicsim.models.fitted.FittedModel`` subclass)."""
    if kind_of(name) != "fitted":
        raise ValueError(f"{name!r} is not a fitted model: expected one of {list(names('fitted'))}")
    return entry(name).fitted_class


__all__ = ["ALL_MODELS", "BASELINES", "InputSpec", "ModelEntry", "entry", "fitted_class", "kind_of", "names",
           "register", "unregister"]
