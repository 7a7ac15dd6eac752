"""Distillation: the WaveNet learns to reproduce a pretrained teacher's vector of the same crop.

The teacher (e.g. musicnn's, `musicsim.models.musicnn.MusicnnTeacher`, trained on far more music than
the corpora hold) gives a vector per crop; the student is scored by cosine or MSE on the
standardised teacher vector. Crops are drawn from a fixed grid per track (every ``hop_seconds``),
so the teacher's targets are computed once and cached, keyed by track and crop.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from typing import Callable, Mapping, Protocol, Sequence

import numpy as np
import tensorflow as tf
from tqdm.auto import tqdm

from musicsim import head
from musicsim.atomic import atomic_open
from musicsim.inputs import EVAL, TRAIN, TrackSet, batched_input_fn, crop_grid
from musicsim.params import ParamsConfig, ParamsError, fill_defaults, hyperparameter
from musicsim.models.musicnn import MusicnnConfig
from musicsim.pretraining.augmentation import Augmentation, augment

LOSSES = ("cosine", "mse")
# The runner's early stopping of distillation: the eval loss must keep decreasing.
EARLY_STOPPING = ("loss", "decrease")


@dataclass(frozen=True)
class DistillConfig(ParamsConfig):
    """Distillation's hyperparameters (its optimizer's are the head's).

    Attributes
    ----------
    distill_loss : ``"cosine"`` or ``"mse"``, against the standardised teacher vector
    distill_hop_seconds : seconds between the fixed crops of a track whose targets are cached
    distill_augment : the student reads a randomly augmented copy of each training crop (the run's
        augmentation settings) while its target stays the teacher's vector of the clean crop
    """

    distill_loss: str = hyperparameter("cosine", "distill: loss against the standardised teacher vector.",
                                       choices=LOSSES)
    distill_hop_seconds: float = hyperparameter(1.0, "distill: seconds between the fixed crops of a track whose "
                                                "teacher targets are computed once and cached (in the dataset's "
                                                "teacher_cache).", bounds="positive")
    distill_augment: bool = hyperparameter(False, "distill: the student reads randomly augmented training crops "
                                           "(the --augment_* settings), the target staying the teacher's vector of "
                                           "the clean crop.")

    def __post_init__(self):
        if self.distill_loss not in LOSSES:
            raise ParamsError(f"distill_loss must be one of {LOSSES}, got {self.distill_loss!r}")
        if not float(self.distill_hop_seconds) > 0:
            raise ParamsError(f"distill_hop_seconds must be positive, got {self.distill_hop_seconds!r}")


def config_of(params: Mapping) -> DistillConfig:
    """:class:`DistillConfig` of ``params``; keys it lacks take the defaults (graph functions called on their
    own; a run's params are settled before training)."""
    return DistillConfig.from_params(fill_defaults(params, configs=[DistillConfig]))


class Teacher(Protocol):
    """What distillation needs of a teacher (e.g. `musicsim.models.musicnn.MusicnnTeacher`)."""

    key: str  # names what it computes, for the cache
    dim: int

    def __call__(self, *, crops: Sequence[np.ndarray], frame_rate: float) -> np.ndarray:
        """``[len(crops), dim]`` float32 targets of crops ``[T_i, channels]`` at ``frame_rate``."""


@dataclass
class DistillationSet:
    """Tracks, their fixed crops and the teacher's standardised target of every crop.

    Attributes
    ----------
    tracks : TrackSet
        Labels unused.
    frames : int or None
        Crop length in steps (None: whole tracks).
    starts : list of np.ndarray, int64, shape ``[n_crops_i]``
        Each track's crop starts (`musicsim.inputs.crop_grid`).
    targets : list of np.ndarray, float32, shape ``[n_crops_i, dim]``
        The teacher's vector of each crop, standardised with ``mean`` and ``scale``.
    mean, scale : np.ndarray, float64, shape ``[dim]``
        The standardisation (of the pretraining crops' raw targets; zero variance keeps scale 1).
    """

    tracks: TrackSet
    frames: int | None
    starts: list[np.ndarray]
    targets: list[np.ndarray]
    mean: np.ndarray
    scale: np.ndarray

    @property
    def dim(self) -> int:
        return int(self.mean.shape[0])

    def crop(self, track: int, index: int) -> np.ndarray:
        """Crop ``index`` of track ``track``: ``[frames or T, channels]``."""
        start = int(self.starts[track][index])
        sequence = self.tracks.sequences[track]
        return sequence if self.frames is None else sequence[start:start + self.frames]


def _targets_cache_path(*, cache_dir: str, teacher_key: str, track_id: str, sequence: np.ndarray,
                        frame_rate: float, frames: int | None, starts: np.ndarray) -> str:
    """The cache file of one track's targets: keyed by the teacher, the track's audio and its crops."""
    digest = hashlib.sha1()
    digest.update(json.dumps([track_id, float(frame_rate), frames, list(sequence.shape)]).encode("utf-8"))
    digest.update(np.ascontiguousarray(sequence, dtype=np.float32).tobytes())
    digest.update(np.asarray(starts, dtype=np.int64).tobytes())
    folder = "".join(c if c.isalnum() or c in "._-" else "_" for c in teacher_key)
    return os.path.join(cache_dir, folder, digest.hexdigest() + ".npy")


def teacher_targets(*, tracks: TrackSet, frames: int | None, starts: Sequence[np.ndarray], teacher: Teacher,
                    cache_dir: str | None = None, progress: bool = False) -> list[np.ndarray]:
    """The teacher's raw target of every crop, computed once per (track, crop) and cached.

    Parameters
    ----------
    tracks : TrackSet
    frames : int or None
        Crop length in steps.
    starts : sequence of np.ndarray ``[n_crops_i]``
        Each track's crop starts.
    teacher : Teacher
    cache_dir : str or None
        One ``.npy`` per track under ``cache_dir/<teacher.key>/``, keyed on the track id, its audio,
        the frame rate and the crops; None computes without caching.
    progress : bool
        Show a progress bar.

    Returns
    -------
    list of np.ndarray, float32, shape ``[n_crops_i, teacher.dim]``
    """
    out = []
    for track in tqdm(range(len(tracks)), disable=not progress, unit="track", desc=f"{teacher.key} targets"):
        sequence, track_starts = tracks.sequences[track], np.asarray(starts[track], dtype=np.int64)
        path = None
        if cache_dir is not None:
            path = _targets_cache_path(cache_dir=cache_dir, teacher_key=teacher.key, track_id=tracks.track_ids[track],
                                       sequence=sequence, frame_rate=tracks.frame_rate, frames=frames,
                                       starts=track_starts)
            try:
                cached = np.load(path, allow_pickle=False)
            except (OSError, ValueError):
                cached = None  # a miss, or a damaged entry: recomputed and replaced
            if cached is not None and cached.shape == (track_starts.size, teacher.dim):
                out.append(cached.astype(np.float32))
                continue
        crops = [sequence if frames is None else sequence[start:start + frames] for start in track_starts]
        values = np.asarray(teacher(crops=crops, frame_rate=tracks.frame_rate), dtype=np.float32)
        if values.shape != (track_starts.size, teacher.dim) or not np.all(np.isfinite(values)):
            raise ValueError(f"teacher {teacher.key} gave {values.shape} targets for track "
                             f"{tracks.track_ids[track]!r}, expected finite {(track_starts.size, teacher.dim)}")
        if path is not None:
            with atomic_open(path, "wb", make_dirs=True) as f:
                np.save(f, values, allow_pickle=False)
        out.append(values)
    return out


def distillation_set(*, tracks: TrackSet, crop_seconds: float | None, hop_seconds: float | None, teacher: Teacher,
                     cache_dir: str | None = None, standardisation: tuple[np.ndarray, np.ndarray] | None = None,
                     progress: bool = False) -> DistillationSet:
    """Fixed crops of every track and the teacher's standardised target of each.

    Parameters
    ----------
    tracks : TrackSet
        Any audio: labels are never read.
    crop_seconds : float > 0 or None
        Crop length (None: whole tracks).
    hop_seconds : float > 0 or None
        Seconds between crop starts (None: each track's centred crop only, as for evaluation).
    teacher : Teacher
    cache_dir : str or None
        Where targets are cached (`teacher_targets`).
    standardisation : (mean ``[dim]``, scale ``[dim]``) or None
        Reuse another set's (the pretraining crops') standardisation; None fits it on these targets.
    """
    if crop_seconds is not None and not crop_seconds > 0:
        raise ValueError(f"crop_seconds must be positive or None, got {crop_seconds!r}")
    if hop_seconds is not None and not hop_seconds > 0:
        raise ValueError(f"hop_seconds must be positive or None, got {hop_seconds!r}")
    if len(tracks) == 0:
        raise ValueError("distillation needs at least one track")
    frames = tracks.frames(crop_seconds)
    hop = tracks.frames(hop_seconds)
    starts = [crop_grid(length=s.shape[0], frames=frames, hop=hop) for s in tracks.sequences]
    raw = teacher_targets(tracks=tracks, frames=frames, starts=starts, teacher=teacher, cache_dir=cache_dir,
                          progress=progress)
    if standardisation is None:
        stacked = np.concatenate(raw).astype(np.float64)
        mean, scale = stacked.mean(axis=0), stacked.std(axis=0)
        scale = np.where(scale > 1e-8, scale, 1.0)  # a dimension constant over the crops maps to 0
    else:
        mean, scale = (np.asarray(v, np.float64) for v in standardisation)
    targets = [((r - mean) / scale).astype(np.float32) for r in raw]
    return DistillationSet(tracks=tracks, frames=frames, starts=starts, targets=targets, mean=mean, scale=scale)


def make_distillation_input_fn(*, data: DistillationSet, mode: str, batch_size: int = 8, seed: int = 0,
                               augmentation: Augmentation | None = None) -> Callable[..., tf.data.Dataset]:
    """An ``input_fn`` of (crop, the teacher's target of that crop) batches; labels are the targets.

    Elements: features ``{"audio": float32 [batch, time, channels], "length": int32 [batch]}``,
    right-padded; labels float32 ``[batch, dim]``.

    Parameters
    ----------
    data : DistillationSet
    mode : ``"train"``: endless; every track once per epoch in a seeded shuffled order, each time one
        of its crops at random; ``"eval"``: every track once, in order, its first crop (the centred
        one of a set built with ``hop_seconds=None``)
    batch_size : int >= 1
    seed : int
    augmentation : Augmentation or None
        ``"train"`` only: each crop the student reads is augmented (its own seeded stream), the target
        being the teacher's vector of the clean crop, so the student cannot learn the crops by heart.
    """
    if mode not in (TRAIN, EVAL):
        raise ValueError(f"mode must be 'train' or 'eval', got {mode!r}")
    if augmentation is not None and mode != TRAIN:
        raise ValueError("augmentation applies to mode 'train' only: held-out crops are the teacher's own")

    def element(track: int, index: int, rng: np.random.Generator | None = None) -> tuple[dict, np.ndarray]:
        audio = data.crop(track, index).astype(np.float32)
        if augmentation is not None:
            audio = augment(audio=audio, rng=rng, settings=augmentation, frame_rate=data.tracks.frame_rate)
        return {"audio": audio, "length": np.int32(audio.shape[0])}, data.targets[track][index]

    def generate():
        if mode == TRAIN:
            rng = np.random.default_rng(seed)
            # A separate stream, so the crops drawn do not depend on whether they are augmented.
            augment_rng = np.random.default_rng([seed, 1])
            while True:
                for track in rng.permutation(len(data.tracks)):
                    yield element(int(track), int(rng.integers(0, data.starts[track].size)), augment_rng)
        else:
            for track in range(len(data.tracks)):
                yield element(track, 0)

    signature = ({"audio": tf.TensorSpec([None, data.tracks.channels], tf.float32),
                  "length": tf.TensorSpec([], tf.int32)}, tf.TensorSpec([data.dim], tf.float32))

    return batched_input_fn(generator=generate, signature=signature, batch_size=batch_size)


def make_distillation_input_fns(*, train_tracks: TrackSet, held_out: Mapping[str, TrackSet], teacher: Teacher,
                                crop_seconds: float | None, hop_seconds: float | None, batch_size: int,
                                cache_dir: str | None = None, seed: int = 0, eval_seed: int = 0,
                                augmentation: Augmentation | None = None, progress: bool = True
                                ) -> tuple[Callable, dict[str, Callable]]:
    """The ``input_fn`` s of a distillation run: (TRAIN on random grid crops of ``train_tracks``,
    ``{name: EVAL on the centred crop of each track of held_out[name]}``), every target standardised
    with the train crops' statistics. EVAL's ``cosine`` on a held-out split is the student's agreement
    with its teacher there (e.g. ``{"eval": ..., "test": ...}``: eval drives early stopping, test is
    reported). ``augmentation`` applies to the TRAIN crops only."""
    train = distillation_set(tracks=train_tracks, crop_seconds=crop_seconds, hop_seconds=hop_seconds,
                             teacher=teacher, cache_dir=cache_dir, progress=progress)
    evaluations = {}
    for name, tracks in held_out.items():
        data = distillation_set(tracks=tracks, crop_seconds=crop_seconds, hop_seconds=None, teacher=teacher,
                                cache_dir=cache_dir, standardisation=(train.mean, train.scale), progress=progress)
        evaluations[name] = make_distillation_input_fn(data=data, mode=EVAL, batch_size=batch_size, seed=eval_seed)
    return make_distillation_input_fn(data=train, mode=TRAIN, batch_size=batch_size, seed=seed,
                                      augmentation=augmentation), evaluations


def distillation_loss(*, predictions: tf.Tensor, targets: tf.Tensor, kind: str) -> tf.Tensor:
    """Mean loss of predicted teacher vectors.

    Parameters
    ----------
    predictions, targets : float32 ``[batch, dim]``
    kind : ``"cosine"``: ``1 - cos(prediction, target)``; ``"mse"``: the squared error per dimension

    Returns
    -------
    float32 scalar, the mean over the batch
    """
    if kind == "cosine":
        return tf.reduce_mean(1.0 - _cosine(predictions, targets))
    if kind == "mse":
        return tf.reduce_mean(tf.square(tf.cast(predictions, tf.float32) - tf.cast(targets, tf.float32)))
    raise ValueError(f"distill_loss must be one of {LOSSES}, got {kind!r}")


def _cosine(predictions: tf.Tensor, targets: tf.Tensor) -> tf.Tensor:
    """``cos(prediction, target)`` of each row: float32 ``[batch]``."""
    predictions, targets = tf.cast(predictions, tf.float32), tf.cast(targets, tf.float32)
    return tf.reduce_sum(tf.math.l2_normalize(predictions, axis=-1) * tf.math.l2_normalize(targets, axis=-1), axis=-1)


def _student_logits(embed_fn: Callable, features: Mapping[str, tf.Tensor], labels: tf.Tensor, *, params: Mapping,
                    training: bool) -> tuple[tf.Tensor, tf.Tensor]:
    """The student's prediction of the teacher's vector: its embedding through ``distill/projection``."""
    audio = tf.convert_to_tensor(features["audio"], tf.float32)
    length = tf.cast(features["length"], tf.int32)
    targets = tf.convert_to_tensor(labels, tf.float32)
    student = embed_fn(audio, length, params=params, training=training)
    return tf.keras.layers.Dense(int(targets.shape[-1]), name="distill/projection")(student), targets


def _student_loss(targets: tf.Tensor, predictions: tf.Tensor, *, params: Mapping) -> tf.Tensor:
    return distillation_loss(predictions=predictions, targets=targets, kind=config_of(params).distill_loss)


def _mean_cosine(targets: tf.Tensor, predictions: tf.Tensor, *, params: Mapping) -> tuple[tf.Tensor, tf.Operation]:
    del params
    return tf.compat.v1.metrics.mean(_cosine(predictions, targets))


def objective() -> head.Objective:
    """The WaveNet trained to reproduce a teacher's (standardised) vector of each crop, for ``head.make_model_fn``.

    The student's embedding (``embed_fn``, ``wavenet.embed``: every variable under its usual name) goes
    through a linear ``distill/projection`` to the teacher's size (a scope no similarity model has, so
    a warm start takes the WaveNet only). TRAIN / EVAL features: ``audio``, ``length``; labels: the
    targets ``[batch, dim]``; loss `distillation_loss` of ``params["distill_loss"]``. EVAL adds
    ``cosine``, the mean cosine to the targets. PREDICT is the head's: the ``embedding``.

    >>> sorted(objective().eval_metric_fns)
    ['cosine']
    """
    return head.Objective(name="distill", logits_fn=_student_logits, loss_fn=_student_loss,
                          eval_metric_fns={"cosine": _mean_cosine})


def run_inputs(*, settings, tracks: dict, train_tracks: TrackSet, train_seed: int) -> tuple[Callable, Callable, dict]:
    """A run's distillation crops (as ``contrastive.run_inputs``): the teacher is the run's musicnn
    (``MusicnnConfig``), its targets cached in the dataset's ``teacher_cache``; the student's mean cosine
    to its teacher on test crops (never trained on) is reported as ``teacher_agreement_test``."""
    teacher = MusicnnConfig.from_params(settings.params).teacher()
    config = config_of(settings.params)
    crop_seconds = None if settings.crop_seconds is None else teacher.whole_patches(settings.crop_seconds)
    train_fn, held_out = make_distillation_input_fns(
        train_tracks=train_tracks, held_out={"eval": tracks["eval"], "test": tracks["test"]}, teacher=teacher,
        crop_seconds=crop_seconds, hop_seconds=float(config.distill_hop_seconds), batch_size=settings.batch_size,
        cache_dir=os.path.join(settings.dataset_dir, "teacher_cache"), seed=train_seed, eval_seed=settings.seed,
        augmentation=Augmentation(**settings.augmentation) if config.distill_augment else None)
    return train_fn, held_out["eval"], {"teacher_agreement_test": held_out["test"]}
