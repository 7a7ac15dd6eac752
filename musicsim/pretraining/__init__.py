"""Self-supervised pretraining of the WaveNet, then fine-tuning on labelled similarity (paper 6, "future work").

Three ways to pretrain without labels, so every track of every corpus can be used; each is an
objective of the one head (``head.make_model_fn(wavenet.embed, objective=objective(kind))``) with
its own input_fn:

- **contrastive** (:mod:`.contrastive`, :func:`make_contrastive_input_fn`): two augmented random crops
  (:mod:`.augmentation`) of a track are similar, crops of the other tracks of the batch are not;
  the lists follow the listwise contract, so the objective is the head's ranking objective;
- **predictive** (:mod:`.predictive`, :func:`make_predictive_input_fn`): the paper's original plan, the
  WaveNet stacks (``wavenet.stacks``, unpooled) as a next-step predictor;
- **distill** (:mod:`.distillation`, :func:`distillation_set`, :func:`make_distillation_input_fns`): the
  WaveNet reproduces a pretrained teacher's vector of the same crop.

Fine-tuning warm-starts a similarity run from a pretrained run (:mod:`.warm_start`,
:func:`warm_start_vars`): every objective keeps the WaveNet's variable names, so the mapping is 1:1.

>>> objective("predictive").name
'next_step'
>>> pretraining_early_stopping("contrastive")
('NDCG@6', 'increase')
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

from musicsim import head
from musicsim.models.musicnn import MusicnnConfig
from musicsim.params import ParamsConfig
from musicsim.pretraining import contrastive, distillation, predictive
from musicsim.pretraining.augmentation import Augmentation, augment, equaliser, shift
from musicsim.pretraining.contrastive import contrastive_batch, make_contrastive_input_fn
from musicsim.pretraining.distillation import (DistillationSet, DistillConfig, Teacher, distillation_loss,
                                               distillation_set, make_distillation_input_fn,
                                               make_distillation_input_fns, teacher_targets)
from musicsim.pretraining.predictive import (PredictiveConfig, make_predictive_input_fn, mu_law_classes,
                                             next_step_loss, next_step_predictions, next_step_targets)
from musicsim.pretraining.warm_start import SCOPES as WARM_START_SCOPES
from musicsim.pretraining.warm_start import STACK_VARIABLES, warm_start_vars

__all__ = [
    "PRETRAINING_KINDS", "CONFIGS", "OBJECTIVES", "PretrainingObjective", "objective", "objective_of",
    "pretraining_early_stopping",
    "Augmentation", "augment", "equaliser", "shift",
    "contrastive_batch", "make_contrastive_input_fn",
    "PredictiveConfig", "make_predictive_input_fn", "mu_law_classes", "next_step_loss", "next_step_predictions",
    "next_step_targets",
    "DistillConfig", "DistillationSet", "Teacher", "distillation_loss", "distillation_set",
    "make_distillation_input_fn", "make_distillation_input_fns", "teacher_targets",
    "STACK_VARIABLES", "WARM_START_SCOPES", "warm_start_vars",
]

@dataclass(frozen=True)
class PretrainingObjective:
    """A pretraining kind: its objective, its inputs, its early stopping and its configs.

    Attributes
    ----------
    name : the ``--pretrain`` value
    objective : ``objective(params) -> musicsim.head.Objective``
    run_inputs : ``run_inputs(*, settings, tracks, train_tracks, train_seed) -> (train input_fn, eval
        input_fn, {name: reported eval input_fn})`` (``contrastive.run_inputs``)
    early_stopping : ``(eval metric, "increase" | "decrease")``
    configs : the configs of its own params keys
    models : the learned models it trains
    """

    name: str
    objective: Callable[[Mapping], head.Objective]
    run_inputs: Callable
    early_stopping: tuple[str, str]
    configs: tuple[type[ParamsConfig], ...] = ()
    models: tuple[str, ...] = ("wavenet",)


OBJECTIVES = {
    "contrastive": PretrainingObjective(name="contrastive", objective=lambda params: contrastive.objective(),
                                        run_inputs=contrastive.run_inputs,
                                        early_stopping=contrastive.EARLY_STOPPING),
    "predictive": PretrainingObjective(name="predictive", objective=lambda params: predictive.objective(params=params),
                                       run_inputs=predictive.run_inputs, early_stopping=predictive.EARLY_STOPPING,
                                       configs=(PredictiveConfig,)),
    "distill": PretrainingObjective(name="distill", objective=lambda params: distillation.objective(),
                                    run_inputs=distillation.run_inputs, early_stopping=distillation.EARLY_STOPPING,
                                    configs=(DistillConfig, MusicnnConfig)),
}
PRETRAINING_KINDS = tuple(OBJECTIVES)
# The typed configs of the pretraining objectives' own params keys.
CONFIGS = tuple(dict.fromkeys(config for kind in OBJECTIVES.values() for config in kind.configs))


def objective_of(kind: str) -> PretrainingObjective:
    """The pretraining kind ``kind`` (`OBJECTIVES`).

    Raises
    ------
    ValueError
        For a kind not in the table.
    """
    if kind not in OBJECTIVES:
        raise ValueError(f"pretrain must be one of {PRETRAINING_KINDS}, got {kind!r}")
    return OBJECTIVES[kind]


def objective(kind: str, *, params: Mapping | None = None) -> head.Objective:
    """The objective of a pretraining run, for ``head.make_model_fn(wavenet.embed, objective=...)``.

    Parameters
    ----------
    kind : ``"contrastive"`` (the head's ranking objective on contrastive lists), ``"predictive"``
        (the next-step predictor) or ``"distill"`` (the teacher's student)
    params : the run's (predictive: its front end decides the EVAL metrics)
    """
    return objective_of(kind).objective(params)


def pretraining_early_stopping(kind: str) -> tuple[str, str]:
    """(eval metric, direction) for ``training.train_and_evaluate(early_stopping=...)``."""
    return objective_of(kind).early_stopping
