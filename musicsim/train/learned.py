"""Train a learned model: `train_learned(entry, tracks, settings)`, then embed every split with it.

What a run trains on is declared, not branched on: the model's entry (``musicsim.models``) says
whether it reads its own inputs and objective (the LSTM's next-frame prediction), its early
stopping and its embedding variants; a pretraining kind (``--pretrain``) is an objective of
``musicsim.pretraining.OBJECTIVES`` with its own inputs and early stopping. Without either, the
model trains on the similarity lists of ``musicsim.inputs`` under the head's ranking objective.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

from musicsim import distribute, evaluation, pretraining
from musicsim.embedder import default_window_seconds
from musicsim.inputs import TrackSet, make_list_input_fn
from musicsim.models import LearnedEntry
from musicsim.rundir import RunDir
from musicsim.train import estimator as training
from musicsim.train.settings import RunConfig

SPLITS = ("train", "eval", "test")


class SettingsError(ValueError):
    """Settings a learned run cannot train with (pretraining splits, a model an objective does not train)."""


@dataclass(frozen=True)
class TrainingInputs:
    """What a learned run trains on: its input_fns, early stopping rule and objective.

    ``objective`` None: the model's own (its registry entry's, else the head's ranking objective).
    ``reported``: further EVAL input_fns scored once with the exported checkpoint and recorded in
    results.json (``held_out_metrics``), e.g. a distilled student's agreement with its teacher on test.
    """

    train: Callable
    eval: Callable
    early_stopping: tuple[str, str]
    objective: Any = None
    reported: dict = field(default_factory=dict)


def load_tracks(entry: LearnedEntry, settings: RunConfig, splits=SPLITS) -> dict[str, TrackSet]:
    """The run's tracks of every split: the model's own input features, else the dataset's pooled audio."""
    if entry.load_tracks is not None:  # the model's own input features (the LSTM's chromagrams)
        return entry.load_tracks(settings.dataset_dir, splits, params=settings.params, workers=settings.workers)
    return {split: TrackSet.from_dataset(settings.dataset_dir, split) for split in splits}


def estimator_kwargs(settings: RunConfig, **overrides) -> dict:
    """``make_estimator`` arguments of a run: model, directory, params, warm start, strategy."""
    keep = training.checkpoints_to_keep(early_stopping_patience=settings.early_stopping_patience,
                                        save_checkpoints_steps=settings.save_checkpoints_steps)
    kwargs = dict(model=settings.model, model_dir=settings.model_dir, params=settings.params, seed=settings.seed,
                  save_checkpoints_steps=settings.save_checkpoints_steps, distribute=settings.distribute,
                  num_cpu_replicas=settings.num_cpu_replicas, xla=bool(settings.params.get("xla")),
                  keep_checkpoint_max=keep)
    if settings.warm_start_from:
        # The checkpoint the pretraining run exported (its best), not merely its latest.
        source = RunDir(settings.warm_start_from).checkpoint() or settings.warm_start_from
        kwargs.update(warm_start_from=source, warm_start_vars=pretraining.warm_start_vars(
            settings.warm_start_vars, checkpoint=source))
    kwargs.update(overrides)
    return kwargs


def _pretraining_inputs(settings: RunConfig, tracks: dict, *, train_seed: int) -> TrainingInputs:
    """The inputs, early stopping and objective of a ``--pretrain`` run (``pretraining.OBJECTIVES``)."""
    kind = pretraining.objective_of(settings.pretrain)
    if settings.model not in kind.models:
        raise SettingsError(f"--pretrain={kind.name} trains {', '.join(kind.models)}; got --model={settings.model}")
    # Labels are never read: the audio of every split named can be learned from.
    train_tracks = TrackSet.concatenate([tracks[split] for split in settings.pretrain_splits])
    train_fn, eval_fn, reported = kind.run_inputs(settings=settings, tracks=tracks, train_tracks=train_tracks,
                                                  train_seed=train_seed)
    return TrainingInputs(train=train_fn, eval=eval_fn, early_stopping=kind.early_stopping,
                          objective=kind.objective(settings.params), reported=reported)


def training_inputs(settings: RunConfig, entry: LearnedEntry, tracks: dict, relevance_def, *,
                    train_seed: int) -> TrainingInputs:
    """The inputs, early stopping and objective of a run (pretraining, the model's own, or similarity lists)."""
    if settings.pretrain:
        return _pretraining_inputs(settings, tracks, train_seed=train_seed)
    if entry.make_input_fn is not None:  # an unsupervised model trains on its own inputs and objective
        own = dict(batch_size=settings.batch_size, params=settings.params)
        return TrainingInputs(train=entry.make_input_fn(tracks=tracks["train"], mode="train", seed=train_seed, **own),
                              eval=entry.make_input_fn(tracks=tracks["eval"], mode="eval", seed=settings.seed, **own),
                              early_stopping=entry.early_stopping)
    list_kind = settings.list_kind or ("pairwise" if settings.params.get("loss") == "pairwise" else "listwise")
    common = dict(relevance_def=relevance_def, kind=list_kind, n_similar=settings.n_similar,
                  n_dissimilar=settings.n_dissimilar, batch_size=settings.batch_size)
    metric = settings.early_stopping_metric
    early_stopping = entry.early_stopping or (metric, "decrease" if metric == "loss" else "increase")
    return TrainingInputs(
        train=make_list_input_fn(tracks=tracks["train"], mode="train", crop_seconds=settings.crop_seconds,
                                 seed=train_seed, **common),
        eval=make_list_input_fn(tracks=tracks["eval"], mode="eval", eval_seconds=settings.eval_crop_seconds,
                                seed=settings.seed, **common),
        early_stopping=early_stopping)


def best_variant(settings: RunConfig, entry: LearnedEntry, eval_tracks: TrackSet, relevance_def, *,
                 checkpoint: str) -> tuple[Any, dict]:
    """The paper's RNN optimisation: read the embedding every way (outputs/states x mean/max/last) from the
    same checkpoint, score each on the eval split, keep the best (by NDCG@6, then catalog mAP).

    Returns the best variant's estimator and the params it settles (``rnn_embedding``, ``rnn_reduce``).
    """
    relevance, _ = eval_tracks.relevance(relevance_def)
    scored = []
    for embedding, reduce in entry.embedding_variants():
        params = dict(settings.params, rnn_embedding=embedding, rnn_reduce=reduce)
        variant = training.make_estimator(**estimator_kwargs(settings, params=params))
        vectors = training.predict_embeddings(estimator=variant, tracks=eval_tracks, seconds=settings.predict_seconds,
                                              checkpoint_path=checkpoint)
        result = evaluation.evaluate(relevance_matrix=relevance, embeddings=vectors,
                                     similarity=params.get("similarity", "cosine"), seeds=[settings.seed])
        scored.append(((result["NDCG@6"][0], result["catalog_mAP"][0]), embedding, reduce, variant))
        print(f"  rnn embedding={embedding:<8} reduce={reduce:<5} eval NDCG@6={result['NDCG@6'][0]:.3f} "
              f"catalog mAP={result['catalog_mAP'][0]:.3f}")
    _, embedding, reduce, best = max(scored, key=lambda item: item[0])
    print(f"best rnn embedding: {embedding} reduced by {reduce}")
    return best, {"rnn_embedding": embedding, "rnn_reduce": reduce}


def check_pretrain_splits(settings: RunConfig, splits=SPLITS) -> None:
    """Raise `SettingsError` when a pretraining run names no split, or one the run does not have."""
    unknown = sorted(set(settings.pretrain_splits) - set(splits))
    if unknown or not settings.pretrain_splits:
        raise SettingsError(f"--pretrain_splits must name some of {list(splits)}, "
                            f"got {list(settings.pretrain_splits)}")


def train_learned(entry: LearnedEntry, tracks: dict[str, TrackSet], settings: RunConfig, *, relevance_def,
                  record_config: Callable[[RunConfig], None]) -> dict:
    """Train a learned model (resuming from ``settings.model_dir``), then embed every split of ``tracks``.

    ``record_config`` writes the run's config once its inputs have settled it, before training.
    Returns ``{"ids", "labels", "embeddings", "eval_metrics", "checkpoint", "settled_params",
    "held_out_metrics", "settings"}`` (``settings`` as recorded: the input's frame rate settled).
    """
    if settings.pretrain:
        check_pretrain_splits(settings, tuple(tracks))
    if "input_sample_rate" in settings.params:  # the front end sees the frame rate of its input (logmel)
        settings = settings.with_params(input_sample_rate=tracks["train"].frame_rate)
    record_config(settings)
    # A resumed run draws new training lists rather than replaying the first ones again.
    train_seed = settings.seed + training.resume_step(settings.model_dir)
    inputs = training_inputs(settings, entry, tracks, relevance_def, train_seed=train_seed)
    estimator = training.make_estimator(objective=inputs.objective, **estimator_kwargs(settings))
    eval_metrics = training.train_and_evaluate(
        estimator=estimator, train_input_fn=distribute.shard_input_fn(inputs.train),  # each worker its own lists
        eval_input_fn=inputs.eval, max_steps=settings.max_steps, max_minutes=settings.max_minutes,
        early_stopping_patience=settings.early_stopping_patience, eval_every_steps=settings.save_checkpoints_steps,
        early_stopping=inputs.early_stopping)
    print(f"training stopped at step {eval_metrics.get('global_step')}; last eval: "
          + ", ".join(f"{k}={v:.3f}" for k, v in sorted(eval_metrics.items()) if k != "global_step"))
    metric, direction = inputs.early_stopping
    checkpoint = training.export_checkpoint(settings.model_dir, which=settings.export_checkpoint, metric=metric,
                                            direction=direction)
    print(f"embedding with {os.path.basename(checkpoint)} (the {settings.export_checkpoint} checkpoint"
          + (f" by eval {metric})" if settings.export_checkpoint == "best" else ")"))
    settled_params = {}
    if entry.variant_key is not None and settings.params.get(entry.variant_key) == "all":
        estimator, settled_params = best_variant(settings, entry, tracks["eval"], relevance_def, checkpoint=checkpoint)
    # A window at a time (WaveNet), as export embeds long files: memory bounded whatever the tracks' length,
    # and each vector the one export gives the track's file.
    window_seconds = default_window_seconds(asdict(settings), exact=True)
    embeddings = {split: training.predict_embeddings(estimator=estimator, tracks=tracks[split],
                                                     seconds=settings.predict_seconds, checkpoint_path=checkpoint,
                                                     model=settings.model, window_seconds=window_seconds)
                  for split in tracks}
    held_out = {name: {key: float(value) for key, value in estimator.evaluate(
                    input_fn, checkpoint_path=checkpoint, name=name).items() if key != "global_step"}
                for name, input_fn in inputs.reported.items()}
    return {"ids": {s: tracks[s].track_ids for s in tracks}, "labels": {s: tracks[s].labels for s in tracks},
            "embeddings": embeddings, "eval_metrics": eval_metrics, "checkpoint": checkpoint,
            "settled_params": settled_params, "held_out_metrics": held_out, "settings": settings}
