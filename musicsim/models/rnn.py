"""The unsupervised LSTM model (paper 4.2, figure 7).

Input: a chromagram ``[frames, 12]`` of each track, from the STFT (``librosa.feature.chroma_stft``)
at ``chroma_sample_rate`` with ``hop_length`` samples per frame: 22050 / 512 = 43.07 frames per
second by default, so a section of 1000 frames is 23.2 s of music.

Each sequence is split into sections of ``section_frames`` frames (the last one right-padded), and
every section is an independent sequence for one LSTM (the state starts at zero in each section).

- Training (unsupervised): a ``Dense(12)`` on the LSTM outputs predicts frame ``t + 1`` from frames
  ``<= t`` of the section; the loss is the sum over the 12 bins of ``|prediction - next frame|``,
  averaged over the real frame transitions (:func:`next_frame_loss`).
- Embedding (:func:`embed`): per section either ``states`` (the final ``concat(h, c)``, ``2 *
  rnn_units``) or ``outputs`` (the LSTM outputs averaged over the section's real frames,
  ``rnn_units``: the last output alone would only repeat ``h``), then reduced over the real
  sections of the track by ``mean``, ``max`` or ``last``. The variables do not depend on these two
  choices, so one checkpoint serves all six :func:`embedding_variants` (the paper's optimisation).

What the registry entry points at: :class:`RNNConfig`, :func:`embed`, :func:`objective` (trained
under the one head), :func:`load_splits` (:func:`load_tracks` of several splits with one process
pool), :func:`make_input_fn`, ``EARLY_STOPPING`` and :func:`embedding_variants`.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import multiprocessing
import os
import sys
from typing import Callable, Mapping, Sequence

import numpy as np
import tensorflow as tf
from tqdm.auto import tqdm

from musicsim import head
from musicsim.atomic import atomic_open, write_json_atomic
from musicsim.chroma import chroma_of_file
from musicsim.data.dataset import DatasetInfo, feature_cache_dir, read_catalog
from musicsim.inputs import EVAL, TRAIN, TrackSet, batched_input_fn, crop
from musicsim.models.entry import InputSpec, LearnedEntry
from musicsim.params import DROPOUT_HELP, ParamsConfig, ParamsError, hyperparameter

EMBEDDINGS = ("states", "outputs")
ALL_EMBEDDINGS = "all"  # the run reads every variant on the eval split and keeps the best
REDUCTIONS = ("mean", "max", "last")
# The runner's early stopping: the unsupervised loss on the eval split must keep decreasing.
EARLY_STOPPING = ("loss", "decrease")
# Bump when the chromagram computation changes, so cached sequences from the old code are not reused.
CHROMA_VERSION = 1


@dataclasses.dataclass(frozen=True)
class RNNConfig(ParamsConfig):
    """The LSTM's hyperparameters (its optimizer's are the head's, `musicsim.head.HeadConfig`).

    Attributes
    ----------
    rnn_units : LSTM units
    section_frames : frames per section (paper: 1000, 23.2 s at the default frame rate)
    rnn_embedding : ``"states"``, ``"outputs"``, or ``"all"``: the run reads the six
        :func:`embedding_variants` of its checkpoint on the eval split and keeps the best (the
        paper's optimisation); :func:`embed` needs one of the two
    rnn_reduce : ``"mean"``, ``"max"`` or ``"last"``, how a track's sections are reduced
    dropout : on the LSTM outputs, before the next-frame prediction (training only), in [0, 1)
    chroma_sample_rate : decode rate of the source file for the chromagram
    hop_length : STFT hop: frame rate = chroma_sample_rate / hop_length (43.07 frames/s)
    """

    rnn_units: int = hyperparameter(64, "LSTM units.", bounds="at_least_one")
    section_frames: int = hyperparameter(1000, "LSTM input sections (frames).", bounds="at_least_one")
    rnn_embedding: str = hyperparameter(ALL_EMBEDDINGS, "LSTM embedding: outputs or states; all: try the six "
                                        "outputs|states x mean|max|last readouts on the eval split and keep the "
                                        "best.", choices=(*EMBEDDINGS, ALL_EMBEDDINGS))
    rnn_reduce: str = hyperparameter("mean", "How sections are reduced to one vector.", choices=REDUCTIONS)
    dropout: float = hyperparameter(0.0, DROPOUT_HELP, bounds="open_fraction")
    chroma_sample_rate: int = 22050
    hop_length: int = 512

    def __post_init__(self):
        for key in ("rnn_units", "section_frames", "chroma_sample_rate", "hop_length"):
            if int(getattr(self, key)) < 1:
                raise ParamsError(f"{key} must be >= 1, got {getattr(self, key)}")
        for key, allowed in (("rnn_embedding", EMBEDDINGS + (ALL_EMBEDDINGS,)), ("rnn_reduce", REDUCTIONS)):
            if str(getattr(self, key)) not in allowed:
                raise ParamsError(f"{key} must be one of {allowed}, got {getattr(self, key)!r}")
        if not 0.0 <= float(self.dropout) < 1.0:
            raise ParamsError(f"dropout must be in [0, 1), got {self.dropout}")

    @property
    def embedding(self) -> str:
        """The readout :func:`embed` computes: ``"states"`` or ``"outputs"`` (``"all"`` is the run's choice)."""
        if self.rnn_embedding not in EMBEDDINGS:
            raise ParamsError(f"rnn_embedding must be one of {EMBEDDINGS} to embed, got {self.rnn_embedding!r} "
                              "(the run replaces 'all' by the best of embedding_variants on the eval split)")
        return str(self.rnn_embedding)


def embedding_variants() -> list[tuple[str, str]]:
    """The six ``(rnn_embedding, rnn_reduce)`` combinations the paper compares on one trained model."""
    return [(embedding, reduce) for embedding in EMBEDDINGS for reduce in REDUCTIONS]


def embedding_size(params: Mapping) -> int:
    """Size of :func:`embed`'s vectors: ``2 * rnn_units`` for states, ``rnn_units`` for outputs."""
    config = RNNConfig.from_params(params)
    return 2 * int(config.rnn_units) if config.embedding == "states" else int(config.rnn_units)


def frame_rate(params: Mapping | None = None) -> float:
    """Chromagram frames per second: ``chroma_sample_rate / hop_length`` (None: the defaults')."""
    config = RNNConfig() if params is None else RNNConfig.from_params(params)
    return float(config.chroma_sample_rate) / float(config.hop_length)


# --------------------------------------------------------------------------------------------
# Chromagrams
# --------------------------------------------------------------------------------------------

def _cache_stem(*, cache_dir: str, track_id: str, path: str, sample_rate: int, hop_length: int,
                max_seconds: float | None) -> str | None:
    """Cache path without extension of one track; None when the source file cannot be stat'ed.

    The key holds the file's size and mtime, so an edited source file is decoded again.
    """
    try:
        stat = os.stat(path)
    except OSError:
        return None
    key = json.dumps([os.path.abspath(path), stat.st_size, stat.st_mtime_ns, int(sample_rate), int(hop_length),
                      None if max_seconds is None else float(max_seconds), CHROMA_VERSION])
    digest = hashlib.sha1(key.encode("utf-8")).hexdigest()[:16]
    safe_id = "".join(c if c.isalnum() or c in "._-" else "_" for c in track_id)[:80]
    return os.path.join(cache_dir, f"{safe_id}-{digest}")


def _read_cached(stem: str) -> tuple[np.ndarray | None, str | None]:
    """(chromagram, failure reason) from the cache; both None on a miss or a damaged entry."""
    try:
        if os.path.exists(stem + ".npy"):
            return np.load(stem + ".npy", allow_pickle=False), None
        if os.path.exists(stem + ".failed.json"):
            with open(stem + ".failed.json") as f:
                return None, str(json.load(f)["reason"])
    except (OSError, ValueError, KeyError):
        pass  # a damaged entry is recomputed and overwritten
    return None, None


def _write_cached(stem: str, chroma: np.ndarray | None, reason: str | None) -> None:
    if chroma is not None:
        with atomic_open(stem + ".npy", "wb", make_dirs=True) as f:
            np.save(f, chroma, allow_pickle=False)
    else:
        write_json_atomic(stem + ".failed.json", {"reason": reason}, make_dirs=True)


def load_tracks(dataset_dir: str, split: str, *, params: Mapping | None = None, workers: int | None = None,
                progress: bool = True) -> TrackSet:
    """Chromagrams of one split, computed from each track's source file, in parallel and cached.

    Each file listed in ``tracks.csv`` is decoded at ``chroma_sample_rate`` (its centred excerpt of
    the dataset's ``max_seconds``) and turned into a chromagram, cached as
    ``DIR/feature_cache/chroma/<track_id>-<key>.npy`` so a rerun decodes nothing; files that cannot
    be decoded are skipped and reported on stderr (and remembered, until they change).

    Parameters
    ----------
    dataset_dir : a prepared dataset (``dataset.json`` and ``tracks.csv``)
    split : ``"train"``, ``"eval"`` or ``"test"``
    params : settled params holding :class:`RNNConfig`'s ``chroma_sample_rate`` and ``hop_length``
        (None: its defaults)
    workers : processes for decoding; ``None`` uses every core, 1 decodes in this process
    progress : show a tqdm progress bar

    Returns
    -------
    TrackSet of float32 ``[frames_i, 12]`` sequences, ``frame_rate = chroma_sample_rate / hop_length``,
    in ``tracks.csv`` order (by track id)

    Raises
    ------
    ValueError
        For invalid arguments, an empty split, or a split none of whose files could be decoded.
    """
    return load_splits(dataset_dir, (split,), params=params, workers=workers, progress=progress)[split]


def load_splits(dataset_dir: str, splits: Sequence[str] = ("train", "eval", "test"), *,
                params: Mapping | None = None, workers: int | None = None,
                progress: bool = True) -> dict[str, TrackSet]:
    """:func:`load_tracks` of several splits with one process pool (each worker starts once).

    Returns
    -------
    dict split -> TrackSet, for every split in ``splits``
    """
    config = RNNConfig() if params is None else RNNConfig.from_params(params)
    sample_rate, hop_length = int(config.chroma_sample_rate), int(config.hop_length)
    if workers is not None and workers < 1:
        raise ValueError(f"workers must be >= 1 or None, got {workers}")
    max_seconds = DatasetInfo.load(dataset_dir).max_seconds
    catalog = read_catalog(dataset_dir)
    entries = {split: [e for e in catalog if e.split == split] for split in splits}
    for split, listed in entries.items():
        if not listed:
            raise ValueError(f"split {split!r} of {dataset_dir} lists no tracks in tracks.csv")
    todo = [e for split in splits for e in entries[split]]
    cache_dir = feature_cache_dir(dataset_dir, kind="chroma")

    results: dict[int, tuple[np.ndarray | None, str | None]] = {}
    stems: dict[int, str] = {}
    for i, entry in enumerate(todo):
        stem = _cache_stem(cache_dir=cache_dir, track_id=entry.track_id, path=entry.path, sample_rate=sample_rate,
                           hop_length=hop_length, max_seconds=max_seconds)
        if stem is None:
            results[i] = (None, "file not found")
            continue
        stems[i] = stem
        chroma, reason = _read_cached(stem)
        if chroma is not None or reason is not None:
            results[i] = (chroma, reason)
    pending = [i for i in range(len(todo)) if i not in results]

    workers = min(workers or os.cpu_count() or 1, max(1, len(pending)))
    with tqdm(total=len(todo), initial=len(todo) - len(pending), disable=not progress, unit="track",
              desc=f"chroma {'+'.join(splits)}") as bar:
        def done(i: int, chroma: np.ndarray | None, reason: str | None) -> None:
            results[i] = (chroma, reason)
            _write_cached(stems[i], chroma, reason)
            bar.update(1)

        args = {i: (todo[i].path, sample_rate, hop_length, max_seconds) for i in pending}
        if workers == 1:
            for i in pending:
                done(i, *chroma_of_file(*args[i]))
        else:
            # spawn, not fork: this process may hold TensorFlow threads that a fork would break.
            context = multiprocessing.get_context("spawn")
            with concurrent.futures.ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
                futures = {pool.submit(chroma_of_file, *args[i]): i for i in pending}
                for future in concurrent.futures.as_completed(futures):
                    try:
                        chroma, reason = future.result()
                    except Exception as err:  # noqa: BLE001 - a worker that died (e.g. out of memory)
                        results[futures[future]] = (None, f"worker failed ({type(err).__name__}: {err})")
                        bar.update(1)
                        continue
                    done(futures[future], chroma, reason)

    track_sets, first = {}, 0
    for split in splits:
        indices = range(first, first + len(entries[split]))
        first += len(entries[split])
        skipped = [(todo[i].path, results[i][1]) for i in indices if results[i][0] is None]
        if skipped:
            lines = "\n".join(f"  {path}: {reason}" for path, reason in skipped)
            print(f"rnn.load_tracks: skipped {len(skipped)} of {len(indices)} {split} tracks that could not be "
                  f"decoded:\n{lines}", file=sys.stderr)
        kept = [i for i in indices if results[i][0] is not None]
        if not kept:
            raise ValueError(f"none of the {len(indices)} {split} tracks of {dataset_dir} could be decoded")
        track_sets[split] = TrackSet(track_ids=[todo[i].track_id for i in kept], labels=[todo[i].labels for i in kept],
                                     sequences=[results[i][0] for i in kept],
                                     frame_rate=sample_rate / float(hop_length))
    return track_sets


# --------------------------------------------------------------------------------------------
# The network
# --------------------------------------------------------------------------------------------

def split_sections(audio: tf.Tensor, length: tf.Tensor, *, section_frames: int
                   ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
    """Cut right-padded sequences into sections and keep the sections that hold real frames.

    Parameters
    ----------
    audio : float32 ``[batch, time, channels]``
    length : int32 ``[batch]``, real frames of each sequence
    section_frames : frames per section

    Returns
    -------
    sections : float32 ``[real, section_frames, channels]``, the real sections in (track, section) order
    section_length : int32 ``[real]``, real frames of each (1 to ``section_frames``)
    real_index : int64 ``[real]``, position of each in the flattened ``[batch * n_sections]`` grid
    real_mask : bool ``[batch, n_sections]``, which sections of each track hold real frames
    """
    batch, time, channels = tf.shape(audio)[0], tf.shape(audio)[1], audio.shape[-1]
    n_sections = tf.maximum((time + section_frames - 1) // section_frames, 1)
    padded = tf.pad(audio, [[0, 0], [0, n_sections * section_frames - time], [0, 0]])
    grid = tf.reshape(padded, [batch * n_sections, section_frames, channels])
    starts = tf.range(n_sections, dtype=tf.int32) * section_frames
    lengths = tf.clip_by_value(length[:, None] - starts[None, :], 0, section_frames)  # [batch, n_sections]
    flat_lengths = tf.reshape(lengths, [-1])
    # Only real sections go through the LSTM: an all-padding one would cost time and, on cuDNN,
    # is not a valid masked sequence.
    real_index = tf.where(flat_lengths > 0)[:, 0]
    return tf.gather(grid, real_index), tf.gather(flat_lengths, real_index), real_index, lengths > 0


def run_lstm(sections: tf.Tensor, section_length: tf.Tensor, *, units: int, training: bool
             ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """The LSTM over independent, masked sections.

    Parameters
    ----------
    sections : float32 ``[real, section_frames, channels]``
    section_length : int32 ``[real]``
    units : LSTM units (``rnn_units``)

    Returns
    -------
    outputs : float32 ``[real, section_frames, units]``, zero past each section's length
    h, c : float32 ``[real, units]``, the states after each section's last real frame
    """
    mask = tf.sequence_mask(section_length, tf.shape(sections)[1])
    # One fixed name: the variables must not depend on rnn_embedding / rnn_reduce or on the mode.
    lstm = tf.keras.layers.LSTM(units, return_sequences=True, return_state=True, name="rnn/lstm")
    outputs, h, c = lstm(sections, mask=mask, training=training)
    outputs = outputs * tf.cast(mask, outputs.dtype)[:, :, None]
    return outputs, h, c


def reduce_sections(per_section: tf.Tensor, real_index: tf.Tensor, real_mask: tf.Tensor, *, reduce: str
                    ) -> tf.Tensor:
    """Reduce each track's real sections to one vector.

    Parameters
    ----------
    per_section : float32 ``[real, dim]``, one vector per real section
    real_index, real_mask : from :func:`split_sections`
    reduce : ``"mean"``, ``"max"`` or ``"last"`` (the track's last real section)

    Returns
    -------
    float32 ``[batch, dim]``; zeros for a track with no real frame
    """
    batch, n_sections = tf.shape(real_mask)[0], tf.shape(real_mask)[1]
    dim = per_section.shape[-1]
    grid = tf.scatter_nd(real_index[:, None], per_section, tf.cast(tf.stack([batch * n_sections, dim]), tf.int64))
    grid = tf.reshape(grid, [batch, n_sections, dim])
    mask = real_mask[:, :, None]
    count = tf.reduce_sum(tf.cast(real_mask, tf.int32), axis=1)
    if reduce == "mean":
        return tf.reduce_sum(grid * tf.cast(mask, grid.dtype), axis=1) / tf.maximum(tf.cast(count, grid.dtype),
                                                                                    1.0)[:, None]
    if reduce == "max":
        pooled = tf.reduce_max(tf.where(mask, grid, grid.dtype.min), axis=1)
        return tf.where(count[:, None] > 0, pooled, tf.zeros_like(pooled))
    if reduce == "last":
        # Real sections are the first `count` of a track; the grid is zero where none is real.
        return tf.gather(grid, tf.maximum(count - 1, 0), batch_dims=1)
    raise ValueError(f"rnn_reduce must be one of {REDUCTIONS}, got {reduce!r}")


def embed(audio: tf.Tensor, length: tf.Tensor, *, params: Mapping, training: bool) -> tf.Tensor:
    """Embed chromagrams with the LSTM.

    Parameters
    ----------
    audio : float32 ``[batch, frames, 12]``, right-padded chromagrams
    length : int ``[batch]``, real frames of each track
    params : settled params: :class:`RNNConfig`'s (``rnn_embedding`` ``states`` or ``outputs``)
    training : passed to the LSTM

    Returns
    -------
    float32 ``[batch, 2 * rnn_units]`` for ``states`` (``concat(h, c)`` of each section), or
    ``[batch, rnn_units]`` for ``outputs`` (each section's outputs averaged over its real frames),
    reduced over the track's real sections. Padding never changes a track's vector.
    """
    config = RNNConfig.from_params(params)
    embedding = config.embedding
    if audio.shape.rank != 3:
        raise ValueError(f"audio must be [batch, frames, channels], got shape {audio.shape}")
    sections, section_length, real_index, real_mask = split_sections(
        audio, tf.cast(length, tf.int32), section_frames=int(config.section_frames))
    outputs, h, c = run_lstm(sections, section_length, units=int(config.rnn_units), training=training)
    if embedding == "states":
        per_section = tf.concat([h, c], axis=-1)
    else:
        per_section = tf.reduce_sum(outputs, axis=1) / tf.cast(section_length, outputs.dtype)[:, None]
    return reduce_sections(per_section, real_index, real_mask, reduce=str(config.rnn_reduce))


def next_frame_loss(*, predictions: tf.Tensor, frames: tf.Tensor, lengths: tf.Tensor) -> tf.Tensor:
    """The paper's loss: the sum of absolute differences between each next frame and its prediction.

    Parameters
    ----------
    predictions : float32 ``[batch, time, bins]``; ``predictions[:, t]`` predicts ``frames[:, t + 1]``
    frames : float32 ``[batch, time, bins]``, the sequences themselves
    lengths : int ``[batch]``, real frames of each sequence (``length - 1`` transitions)

    Returns
    -------
    float32 scalar: ``sum_{b, t < length_b - 1} sum_k |predictions[b, t, k] - frames[b, t + 1, k]|``
    divided by the number of real transitions (0 when there is none)
    """
    absolute = tf.reduce_sum(tf.abs(predictions[:, :-1] - frames[:, 1:]), axis=-1)  # [batch, time - 1]
    transitions = tf.sequence_mask(tf.cast(lengths, tf.int32) - 1, tf.shape(absolute)[1], dtype=absolute.dtype)
    return tf.math.divide_no_nan(tf.reduce_sum(absolute * transitions), tf.reduce_sum(transitions))


def _next_frame_logits(embed_fn, features, labels, *, params: Mapping, training: bool
                       ) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
    """The LSTM's next-frame predictions of each section, and the sections they predict (its labels)."""
    del embed_fn, labels  # trained through its own layers (embed reads the same LSTM); no labels
    config = RNNConfig.from_params(params)
    audio = tf.convert_to_tensor(features["audio"], tf.float32)
    length = tf.cast(features["length"], tf.int32)
    sections, section_length, _, _ = split_sections(audio, length, section_frames=int(config.section_frames))
    outputs, _, _ = run_lstm(sections, section_length, units=int(config.rnn_units), training=training)
    if float(config.dropout) > 0:
        outputs = tf.keras.layers.Dropout(float(config.dropout), name="rnn/dropout")(outputs, training=training)
    predictions = tf.keras.layers.Dense(audio.shape[-1], name="rnn/next_frame")(outputs)
    return predictions, {"sections": sections, "section_length": section_length}


def _next_frame_loss(labels: Mapping[str, tf.Tensor], predictions: tf.Tensor, *, params: Mapping) -> tf.Tensor:
    del params
    return next_frame_loss(predictions=predictions, frames=labels["sections"], lengths=labels["section_length"])


def _next_frame_mae(labels: Mapping[str, tf.Tensor], predictions: tf.Tensor, *, params: Mapping):
    del params
    sections, section_length = labels["sections"], labels["section_length"]
    transitions = tf.sequence_mask(section_length - 1, tf.shape(sections)[1] - 1)[:, :, None]
    weights = tf.broadcast_to(tf.cast(transitions, tf.float32), tf.shape(sections[:, 1:]))
    return tf.compat.v1.metrics.mean_absolute_error(labels=sections[:, 1:], predictions=predictions[:, :-1],
                                                    weights=weights)


def objective() -> head.Objective:
    """The LSTM's unsupervised objective, under the one head (``head.make_model_fn(embed, objective=...)``).

    TRAIN / EVAL features: ``audio`` float32 ``[batch, frames, 12]``, ``length`` int ``[batch]``;
    labels are not used (may be None). A ``Dense(12)`` on the LSTM outputs of each section predicts
    its next frame; loss :func:`next_frame_loss`; EVAL adds ``mae`` (mean absolute error per bin).
    PREDICT is the head's: :func:`embed` under the estimator's params.
    """
    return head.Objective(name="next_frame", logits_fn=_next_frame_logits, loss_fn=_next_frame_loss,
                          eval_metric_fns={"mae": _next_frame_mae})


# --------------------------------------------------------------------------------------------
# Input
# --------------------------------------------------------------------------------------------

def make_input_fn(*, tracks: TrackSet, mode: str, batch_size: int = 8, crop_seconds: float | None = None,
                  section_frames: int = RNNConfig.section_frames, sections_per_crop: int = 1,
                  seed: int = 0) -> Callable[[], tf.data.Dataset]:
    """An ``input_fn`` of chromagram batches for TRAIN or EVAL (no labels: the model is unsupervised).

    Elements: features ``{"audio": float32 [batch, frames, 12], "length": int32 [batch]}``, right-padded.

    Parameters
    ----------
    tracks : the split's chromagrams (:func:`load_tracks`)
    mode : ``"train"``: endless random crops of ``crop_seconds`` (default ``section_frames *
        sections_per_crop`` frames), every track once per epoch in a seeded shuffled order, tracks
        with fewer than 2 frames (nothing to predict) left out; ``"eval"``: every track once, in
        order, its centred ``crop_seconds`` crop or whole when ``crop_seconds`` is None
    batch_size : sequences per batch
    """
    if mode not in (TRAIN, EVAL):
        raise ValueError(f"mode must be 'train' or 'eval', got {mode!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if section_frames < 1 or sections_per_crop < 1:
        raise ValueError(f"section_frames and sections_per_crop must be >= 1, got {section_frames}, "
                         f"{sections_per_crop}")
    if crop_seconds is not None and crop_seconds <= 0:
        raise ValueError(f"crop_seconds must be positive or None, got {crop_seconds}")
    if len(tracks) == 0:
        raise ValueError("tracks is empty")
    channels = tracks.channels

    def element(sequence: np.ndarray) -> dict:
        return {"audio": sequence.astype(np.float32), "length": np.int32(sequence.shape[0])}

    if mode == TRAIN:
        frames = tracks.frames(crop_seconds) if crop_seconds is not None else section_frames * sections_per_crop
        usable = [s for s in tracks.sequences if s.shape[0] >= 2]
        if not usable:
            raise ValueError("no track has 2 frames or more: nothing to train on")

        def generate():
            rng = np.random.default_rng(seed)
            while True:
                for i in rng.permutation(len(usable)):
                    yield element(crop(usable[i], frames, rng))
    else:
        frames = tracks.frames(crop_seconds)

        def generate():
            for sequence in tracks.sequences:
                yield element(crop(sequence, frames, None))

    signature = {"audio": tf.TensorSpec([None, channels], tf.float32), "length": tf.TensorSpec([], tf.int32)}
    return batched_input_fn(generator=generate, signature=signature, batch_size=batch_size)


def run_input_fn(*, tracks: TrackSet, mode: str, seed: int, batch_size: int, params: Mapping
                 ) -> Callable[[], tf.data.Dataset]:
    """`make_input_fn` of a run: its section length taken from the run's params."""
    return make_input_fn(tracks=tracks, mode=mode, seed=seed, batch_size=batch_size,
                         section_frames=int(RNNConfig.from_params(params).section_frames))


ENTRY = LearnedEntry(name="rnn", input=InputSpec(features="chroma", channels=12, decode_rate="chroma_sample_rate",
                                                 pool_size=1),
                     embed=embed, embedding_size=embedding_size, config=RNNConfig, objective=objective,
                     early_stopping=EARLY_STOPPING, embedding_variants=embedding_variants, variant_key="rnn_embedding",
                     load_tracks=load_splits, make_input_fn=run_input_fn)
