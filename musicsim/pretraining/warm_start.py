"""Warm-starting a similarity run from a pretrained one (``tf.estimator.WarmStartSettings``).

Every pretraining objective builds the WaveNet's variables under the names ``wavenet.embed`` gives
them (``frontend/...``, ``input_projection/...``, ``stack{s}/layer{i}/{filter,gate,residual,skip}``,
``final/conv``, ``dense{j}``), its own layers under a scope no similarity model has
(``predictive/``, ``distill/``), so the mapping is 1:1 by name.
"""
from __future__ import annotations

import re

import tensorflow as tf

SCOPES = ("stacks", "all")
# Warm-start "stacks": everything before the stacks' outputs. Variable names carry ":0" for get_collection.
STACK_VARIABLES = r"^(frontend|input_projection|stack\d+)/"


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

    A fine-tuning run passes it as::

        training.make_estimator(model="wavenet", model_dir=FINE_TUNE_DIR, params=params,
                                warm_start_from=PRETRAINED_DIR,
                                warm_start_vars=pretraining.warm_start_vars(scope, checkpoint=PRETRAINED_DIR))

    ``WarmStartSettings`` matches the regex against trainable variables only (optimizer slots and the
    global step start fresh) and only at the first step of a new model_dir; once the fine-tuning run
    has a checkpoint of its own, resuming ignores the warm start.
    """
    if scope not in SCOPES:
        raise ValueError(f"warm start scope must be one of {SCOPES}, got {scope!r}")
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
