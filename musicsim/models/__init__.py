"""Model registry: ``--model`` names to implementations, shared by experiments.run, export and search.

Two kinds (see the architecture note):

- learned models (``wavenet``, ``rnn``) are an ``embed`` function plugged into the one ranking
  head (``musicsim.head.make_model_fn``) and trained with tf.estimator;
- fitted models (``librosa``, ``mfcc``, ``musicnn``, ``fusion``) offer ``fit`` / ``tune`` /
  ``embed_paths`` / ``save`` / ``load``;
- ``random`` and ``worst`` are baselines that only exist inside the evaluation protocol.
"""
from __future__ import annotations

import importlib

from musicsim import evaluation

LEARNED_MODELS = {"wavenet": "musicsim.models.wavenet", "rnn": "musicsim.models.rnn"}
FITTED_MODELS = {"librosa": ("musicsim.models.librosa_pca", "LibrosaPCAModel"),
                 "mfcc": ("musicsim.models.mfcc", "MFCCModel"),
                 "musicnn": ("musicsim.models.musicnn", "MusicnnModel"),
                 "fusion": ("musicsim.models.fusion", "FusionModel")}
BASELINES = evaluation.BASELINES  # the protocol owns its baselines
ALL_MODELS = tuple(LEARNED_MODELS) + tuple(FITTED_MODELS) + BASELINES


def learned_module(name: str):
    """The module of a learned model: it defines ``embed(audio, length, *, params, training)``."""
    if name not in LEARNED_MODELS:
        raise ValueError(f"{name!r} is not a learned model: expected one of {sorted(LEARNED_MODELS)}")
    return importlib.import_module(LEARNED_MODELS[name])


def fitted_class(name: str):
    """The class of a fitted model (a ``musicsim.models.fitted.FittedModel`` subclass)."""
    if name not in FITTED_MODELS:
        raise ValueError(f"{name!r} is not a fitted model: expected one of {sorted(FITTED_MODELS)}")
    module, cls = FITTED_MODELS[name]
    return getattr(importlib.import_module(module), cls)


def kind_of(name: str) -> str:
    """'learned', 'fitted' or 'baseline'."""
    if name in LEARNED_MODELS:
        return "learned"
    if name in FITTED_MODELS:
        return "fitted"
    if name in BASELINES:
        return "baseline"
    raise ValueError(f"unknown model {name!r}: expected one of {list(ALL_MODELS)}")
