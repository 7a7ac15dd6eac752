"""Model registry: ``--model`` names to what each model needs and offers.

Three kinds (see the architecture note):

- learned models (``wavenet``, ``rnn``) are an ``embed`` function plugged into the one head
  (``musicsim.head.make_model_fn``, with the model's objective) and trained with tf.estimator
  (`LearnedEntry`);
- fitted models (``librosa``, ``mfcc``, ``musicnn``, ``fusion``, ``pretrained``) are a
  ``musicsim.models.fitted.FittedModel`` class: ``fit`` / ``tune`` / ``embed_paths`` / ``save`` /
  ``load`` (`FittedEntry`);
- ``random`` and ``worst`` are baselines that only exist inside the evaluation protocol
  (``musicsim.evaluation.BASELINES``).

Each model module declares its ``ENTRY`` at its end, with its own frozen config class (its
hyperparameters, defaults and help: ``experiments.run`` makes them flags). Adding a model is one
module plus one name in `_MODULES` below (or a `register` call).

>>> entry("mfcc").default_params()
{}
>>> kind_of("wavenet")
'learned'
>>> kind_of("mfcc")
'fitted'
"""
from __future__ import annotations

from musicsim import evaluation
from musicsim.models import fusion, librosa_pca, mfcc, musicnn, pretrained_engine, rnn, wavenet
from musicsim.models.entry import (FEATURES, KINDS, BaselineEntry, Entry, FittedEntry, InputSpec, LearnedEntry,
                                   NoConfig, WindowFunctions)

# The registry's own models, in --model order; the protocol owns its baselines.
_MODULES = (wavenet, rnn, librosa_pca, mfcc, musicnn, fusion, pretrained_engine)
_ENTRIES: dict[str, Entry] = {
    **{module.ENTRY.name: module.ENTRY for module in _MODULES},
    **{name: BaselineEntry(name=name) for name in evaluation.BASELINES},
}
_REGISTERED: set[str] = set()  # names added by register(), which unregister() may remove

BASELINES = evaluation.BASELINES


def names(kind: str | None = None) -> tuple[str, ...]:
    """Registered model names, in registry order; of one kind when ``kind`` is given."""
    return tuple(name for name, found in _ENTRIES.items() if kind is None or found.kind == kind)


def entry(name: str) -> Entry:
    """The registry entry of ``name``.

    Raises
    ------
    ValueError
        For a name no model is registered under.
    """
    if name not in _ENTRIES:
        raise ValueError(f"unknown model {name!r}: expected one of {list(names())}")
    return _ENTRIES[name]


def kind_of(name: str) -> str:
    """'learned', 'fitted' or 'baseline'."""
    return entry(name).kind


def register(model: Entry, *, replace_existing: bool = False) -> None:
    """Add a model to the registry (a new model: one module plus this call, or a name in `_MODULES`).

    ``experiments.run`` builds its flags from the registry when it parses a command line, so a model
    registered before that is a ``--model`` choice with its config's flags.

    Raises
    ------
    ValueError
        When ``model.name`` is taken (``replace_existing`` replaces only a model added here).
    """
    if not isinstance(model, (LearnedEntry, FittedEntry, BaselineEntry)):
        raise ValueError(f"register takes a LearnedEntry, FittedEntry or BaselineEntry, got {type(model).__name__}")
    if model.name in _ENTRIES and not (replace_existing and model.name in _REGISTERED):
        raise ValueError(f"a model named {model.name!r} is already registered")
    _ENTRIES[model.name] = model
    _REGISTERED.add(model.name)


def unregister(name: str) -> None:
    """Remove a model added with `register` (the registry's own entries stay).

    Raises
    ------
    ValueError
        For a name `register` did not add.
    """
    if name not in _REGISTERED:
        raise ValueError(f"{name!r} was not added with register()")
    _REGISTERED.discard(name)
    _ENTRIES.pop(name, None)


def fitted_class(name: str):
    """The class of a fitted model (a ``musicsim.models.fitted.FittedModel`` subclass)."""
    if kind_of(name) != "fitted":
        raise ValueError(f"{name!r} is not a fitted model: expected one of {list(names('fitted'))}")
    return entry(name).fitted_class


def configs(name: str) -> tuple:
    """The config classes of model ``name`` (its own first)."""
    return entry(name).configs


__all__ = ["BASELINES", "FEATURES", "KINDS", "BaselineEntry", "Entry", "FittedEntry", "InputSpec", "LearnedEntry",
           "NoConfig", "WindowFunctions", "configs", "entry", "fitted_class", "kind_of", "names", "register",
           "unregister"]
