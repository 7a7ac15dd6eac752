"""Contrastive pretraining: two augmented crops of a track are similar, crops of other tracks are not.

The query is an augmented random crop of a track, its one relevant candidate (label 1) another
augmented random crop of the same track, the other candidates (label 0) crops of *other tracks of
the same batch*. The elements follow the listwise contract of :mod:`musicsim.inputs`, so the
objective is the head's own ranking objective (LambdaLoss or the pairwise hinge), unchanged.
"""
from __future__ import annotations

from typing import Callable, Iterator, Sequence

import numpy as np
import tensorflow as tf

from musicsim import head
from musicsim.inputs import EVAL, TRAIN, TrackSet, batched_input_fn, crop
from musicsim.pretraining.augmentation import Augmentation, augment

# Scored by the head's metrics on the eval split's (fixed) contrastive lists.
EARLY_STOPPING = ("NDCG@6", "increase")


def objective() -> head.Objective:
    """The head's ranking objective (`musicsim.head.ranking_objective`): contrastive lists are lists."""
    return head.ranking_objective()


def _pad_stack(sequences: Sequence[np.ndarray], channels: int) -> tuple[np.ndarray, np.ndarray]:
    lengths = np.array([s.shape[0] for s in sequences], np.int32)
    out = np.zeros((len(sequences), max(1, int(lengths.max(initial=0))), channels), np.float32)
    for i, s in enumerate(sequences):
        out[i, : s.shape[0]] = s
    return out, lengths


def contrastive_batch(*, tracks: TrackSet, members: Sequence[int], n_negatives: int, frames: int | None,
                      settings: Augmentation, rng: np.random.Generator
                      ) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """One batch of contrastive lists over a group of distinct tracks.

    Each member ``i`` gets two independent augmented random crops: ``a_i`` is its query, ``b_i`` its
    positive. List ``i`` holds ``b_i`` (label 1) and ``b_j`` of ``n_negatives`` other members ``j``
    drawn at random (label 0), shuffled: the negatives are the other tracks of the batch.

    Parameters
    ----------
    tracks : the tracks (labels unused)
    members : ``B`` distinct track indices, ``B >= n_negatives + 1``
    frames : crop length in steps (None: whole tracks)

    Returns
    -------
    features (the listwise contract, with a batch axis): ``query_audio [B, T, C]``,
    ``query_length [B]``, ``candidate_audio [B, L, T, C]``, ``candidate_length [B, L]`` with
    ``L = n_negatives + 1``; labels float32 ``[B, L]``; the track index of every candidate int64
    ``[B, L]`` (for checks; not a feature)
    """
    members = np.asarray(members, np.int64)
    if len(set(members.tolist())) != members.size:
        raise ValueError(f"members must be distinct tracks, got {members.tolist()}")
    if members.size < n_negatives + 1:
        raise ValueError(f"{members.size} tracks in a batch give each list at most {members.size - 1} negatives, "
                         f"but n_negatives={n_negatives}")

    def view(track: int) -> np.ndarray:
        return augment(audio=crop(tracks.sequences[track], frames, rng), rng=rng, settings=settings,
                       frame_rate=tracks.frame_rate)

    queries = [view(int(t)) for t in members]
    positives = [view(int(t)) for t in members]
    size = n_negatives + 1
    slots = np.empty((members.size, size), np.int64)  # member slot of each candidate
    labels = np.zeros((members.size, size), np.float32)
    for i in range(members.size):
        others = np.delete(np.arange(members.size), i)
        order = np.concatenate([[i], rng.choice(others, n_negatives, replace=False)])
        permutation = rng.permutation(size)
        slots[i] = order[permutation]
        labels[i] = (permutation == 0).astype(np.float32)
    query_audio, query_length = _pad_stack(queries, tracks.channels)
    flat_audio, flat_length = _pad_stack([positives[s] for s in slots.ravel()], tracks.channels)
    time = max(query_audio.shape[1], flat_audio.shape[1])
    query_audio = np.pad(query_audio, [(0, 0), (0, time - query_audio.shape[1]), (0, 0)])
    flat_audio = np.pad(flat_audio, [(0, 0), (0, time - flat_audio.shape[1]), (0, 0)])
    features = {"query_audio": query_audio, "query_length": query_length,
                "candidate_audio": flat_audio.reshape(members.size, size, time, tracks.channels),
                "candidate_length": flat_length.reshape(members.size, size)}
    return features, labels, members[slots]


def make_contrastive_input_fn(*, tracks: TrackSet, batch_size: int, crop_seconds: float | None,
                              n_negatives: int = 5, settings: Augmentation | None = None, seed: int = 0,
                              mode: str = TRAIN) -> Callable[..., tf.data.Dataset]:
    """An ``input_fn`` of contrastive lists in the listwise contract, for the ranking `objective`.

    Each batch is ``batch_size`` distinct tracks; each list's negatives are crops of other tracks of
    the batch (:func:`contrastive_batch`), so no list ever holds its query's track as a negative.

    Parameters
    ----------
    tracks : any tracks (labels unused); every track with at least one step is used
    batch_size : lists (= distinct tracks) per batch, ``n_negatives + 1 <= batch_size <= tracks``
    crop_seconds : length of each random crop (None: whole tracks, the two views then differ only
        by their augmentations)
    n_negatives : negatives per list (list size ``n_negatives + 1``)
    settings : augmentations of every crop (default :class:`Augmentation` ``()``)
    mode : ``"train"``: endless batches of random distinct tracks; ``"eval"``: fixed seeded lists, the
        same at every call: a seeded permutation of the tracks cut into ``ceil(n / batch_size)``
        batches, the last one completed from the start of the permutation, so every track is a query

    Returns
    -------
    ``input_fn(params=None) -> tf.data.Dataset`` of (features, labels ``[B, L]``): ``query_audio``
    float32 ``[B, T, C]``, ``query_length`` int32 ``[B]``, ``candidate_audio`` float32
    ``[B, L, T, C]``, ``candidate_length`` int32 ``[B, L]``
    """
    if mode not in (TRAIN, EVAL):
        raise ValueError(f"mode must be 'train' or 'eval', got {mode!r}")
    if n_negatives < 1:
        raise ValueError(f"n_negatives must be >= 1, got {n_negatives}")
    if batch_size < n_negatives + 1:
        raise ValueError(f"batch_size={batch_size} is too small for n_negatives={n_negatives}: the negatives are "
                         f"the other tracks of the batch, so batch_size must be >= n_negatives + 1")
    if crop_seconds is not None and not crop_seconds > 0:
        raise ValueError(f"crop_seconds must be positive or None, got {crop_seconds!r}")
    usable = np.array([i for i, s in enumerate(tracks.sequences) if s.shape[0] > 0], np.int64)
    if usable.size < batch_size:
        raise ValueError(f"batch_size={batch_size} needs as many distinct tracks, but only {usable.size} of the "
                         f"{len(tracks)} tracks hold audio")
    settings = Augmentation() if settings is None else settings
    frames = tracks.frames(crop_seconds)

    def batches() -> Iterator[np.ndarray]:
        rng = np.random.default_rng(seed)
        if mode == TRAIN:
            while True:
                yield rng.choice(usable, batch_size, replace=False)
        else:
            order = rng.permutation(usable)
            for start in range(0, order.size, batch_size):
                yield order[np.arange(start, start + batch_size) % order.size]

    def generate():
        # A separate stream for crops and augmentations, so the batches do not depend on the crops drawn.
        rng = np.random.default_rng([seed, 1])
        for members in batches():
            features, labels, _ = contrastive_batch(tracks=tracks, members=members, n_negatives=n_negatives,
                                                    frames=frames, settings=settings, rng=rng)
            yield features, labels

    channels = tracks.channels
    signature = ({"query_audio": tf.TensorSpec([None, None, channels], tf.float32),
                  "query_length": tf.TensorSpec([None], tf.int32),
                  "candidate_audio": tf.TensorSpec([None, None, None, channels], tf.float32),
                  "candidate_length": tf.TensorSpec([None, None], tf.int32)},
                 tf.TensorSpec([None, None], tf.float32))

    return batched_input_fn(generator=generate, signature=signature, batch_size=None)  # elements are batches


def run_inputs(*, settings, tracks: dict, train_tracks: TrackSet, train_seed: int) -> tuple[Callable, Callable, dict]:
    """A run's contrastive lists: ``(train input_fn, eval input_fn, reported input_fns)``.

    ``settings`` is the run's (``musicsim.train.settings.RunConfig``); ``train_tracks`` the audio of
    its ``pretrain_splits``; ``tracks`` its splits.
    """
    common = dict(batch_size=settings.batch_size, n_negatives=settings.n_negatives,
                  settings=Augmentation(**settings.augmentation))
    train_fn = make_contrastive_input_fn(tracks=train_tracks, crop_seconds=settings.crop_seconds, mode="train",
                                         seed=train_seed, **common)
    eval_fn = make_contrastive_input_fn(tracks=tracks["eval"], mode="eval", seed=settings.seed,
                                        crop_seconds=settings.eval_crop_seconds, **common)
    return train_fn, eval_fn, {}
