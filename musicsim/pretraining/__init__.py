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

from typing import Mapping

from musicsim import head
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
    "PRETRAINING_KINDS", "CONFIGS", "objective", "pretraining_early_stopping",
    "Augmentation", "augment", "equaliser", "shift",
    "contrastive_batch", "make_contrastive_input_fn",
    "PredictiveConfig", "make_predictive_input_fn", "mu_law_classes", "next_step_loss", "next_step_predictions",
    "next_step_targets",
    "DistillConfig", "DistillationSet", "Teacher", "distillation_loss", "distillation_set",
    "make_distillation_input_fn", "make_distillation_input_fns", "teacher_targets",
    "STACK_VARIABLES", "WARM_START_SCOPES", "warm_start_vars",
]

_KINDS = {"contrastive": contrastive, "predictive": predictive, "distill": distillation}
PRETRAINING_KINDS = tuple(_KINDS)
# The typed configs of the pretraining objectives' own params keys.
CONFIGS = (PredictiveConfig, DistillConfig)


def _kind(kind: str):
    if kind not in _KINDS:
        raise ValueError(f"pretrain must be one of {PRETRAINING_KINDS}, got {kind!r}")
    return _KINDS[kind]


def objective(kind: str, *, params: Mapping | None = None) -> head.Objective:
    """The objective of a pretraining run, for ``head.make_model_fn(wavenet.embed, objective=...)``.

    Parameters
    ----------
    kind : ``"contrastive"`` (the head's ranking objective on contrastive lists), ``"predictive"``
        (the next-step predictor) or ``"distill"`` (the teacher's student)
    params : the run's (predictive: its front end decides the EVAL metrics)
    """
    module = _kind(kind)
    return module.objective(params=params) if module is predictive else module.objective()


def pretraining_early_stopping(kind: str) -> tuple[str, str]:
    """(eval metric, direction) for ``training.train_and_evaluate(early_stopping=...)``."""
    return _kind(kind).EARLY_STOPPING
