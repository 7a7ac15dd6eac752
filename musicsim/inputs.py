"""``input_fn`` builders for tf.estimator (paper 2.2): listwise, pairwise and predict.

Tracks of a split are held as a :class:`TrackSet` of per-track sequences ``[time, channels]``
(pooled audio is ``[n, 1]``; the LSTM's chromagrams are ``[frames, 12]``). Lists are built from a
similarity definition; batches are right-padded and carry lengths, and every model masks by
those lengths, so padding never changes an embedding (paper Problem 5).

Features of TRAIN/EVAL elements::

    query_audio      float32 [batch, time, ch]       query_length     int32 [batch]
    candidate_audio  float32 [batch, list, time, ch] candidate_length int32 [batch, list]
    labels           float32 [batch, list]   relevance; -1 marks a padded (absent) candidate

PREDICT elements: ``audio`` [batch, time, ch], ``length`` [batch], ``track_id`` [batch] (string).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import tensorflow as tf

from musicsim.data import tfrecords
from musicsim.evaluation import make_ranking_lists
from musicsim.relevance import Relevance
from musicsim.data.windows import WindowRow

TRAIN, EVAL, PREDICT = "train", "eval", "predict"
PADDING_LABEL = -1.0


@dataclass
class TrackSet:
    """The tracks of one split as in-memory sequences.

    Attributes
    ----------
    track_ids : list of str, length ``n``
    labels : list of label tuples, length ``n``
    sequences : list of float32 arrays ``[time_i, channels]``
    frame_rate : frames per second of the sequences
    """

    track_ids: list[str]
    labels: list[tuple[str, ...]]
    sequences: list[np.ndarray]
    frame_rate: float

    def __post_init__(self):
        if not (len(self.track_ids) == len(self.labels) == len(self.sequences)):
            raise ValueError("track_ids, labels and sequences must have the same length")
        self.sequences = [s[:, None] if s.ndim == 1 else s for s in self.sequences]

    def __len__(self) -> int:
        return len(self.track_ids)

    @property
    def channels(self) -> int:
        return int(self.sequences[0].shape[1]) if self.sequences else 1

    @classmethod
    def from_dataset(cls, dataset_dir: str, split: str) -> "TrackSet":
        """Load the pooled audio of one split of a prepared dataset."""
        tracks = tfrecords.read_tracks(dataset_dir, split)
        if not tracks:
            raise ValueError(f"split {split!r} of {dataset_dir} holds no tracks")
        return cls(track_ids=[t.track_id for t in tracks], labels=[t.labels for t in tracks],
                   sequences=[t.audio for t in tracks], frame_rate=float(tracks[0].sample_rate))

    @classmethod
    def concatenate(cls, track_sets: Sequence["TrackSet"]) -> "TrackSet":
        """The tracks of several sets (e.g. splits) in one set, in order; they must share a frame rate."""
        if not track_sets:
            raise ValueError("concatenate needs at least one TrackSet")
        rates = {float(t.frame_rate) for t in track_sets}
        if len(rates) > 1:
            raise ValueError(f"cannot concatenate TrackSets of different frame rates: {sorted(rates)}")
        return cls(track_ids=[i for t in track_sets for i in t.track_ids],
                   labels=[l for t in track_sets for l in t.labels],
                   sequences=[s for t in track_sets for s in t.sequences], frame_rate=rates.pop())

    def relevance(self, relevance_def: Relevance) -> tuple[np.ndarray, np.ndarray]:
        """(relevance ``[n, n]`` float32, binary similar ``[n, n]`` bool), the diagonal excluded (0 / False)."""
        relevance = relevance_def.relevance_matrix(self.labels, self.labels)
        np.fill_diagonal(relevance, 0.0)
        return relevance, relevance_def.is_similar(relevance)

    def frames(self, seconds: float | None) -> int | None:
        return None if seconds is None else max(1, int(round(seconds * self.frame_rate)))


def batched_input_fn(*, generator: Callable[[], Iterator], signature, batch_size: int | None,
                     padding_values=None, prefetch: int = tf.data.AUTOTUNE) -> Callable[..., tf.data.Dataset]:
    """The one ``input_fn`` builder: ``generator()``'s elements streamed, right-padded into batches.

    Parameters
    ----------
    generator : called with no argument each time the estimator builds its input; yields elements
        matching ``signature`` (numpy arrays, tuples or dicts of them)
    signature : the elements' ``tf.TensorSpec`` structure (``output_signature`` of
        ``tf.data.Dataset.from_generator``)
    batch_size : elements per batch, each padded to the longest of its batch; None: the elements
        already are batches
    padding_values : the padding value of each component (default 0, and ``""`` for strings)
    prefetch : batches prepared ahead (default: tf.data's choice)

    Returns
    -------
    ``input_fn(params=None) -> tf.data.Dataset``

    >>> input_fn = batched_input_fn(generator=lambda: iter([np.ones(2, np.float32), np.ones(3, np.float32)]),
    ...                             signature=tf.TensorSpec([None], tf.float32), batch_size=2)
    >>> next(iter(input_fn())).numpy()
    array([[1., 1., 0.],
           [1., 1., 1.]], dtype=float32)
    """
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be >= 1 or None, got {batch_size}")

    def input_fn(params=None):
        dataset = tf.data.Dataset.from_generator(generator, output_signature=signature)
        if batch_size is not None:
            dataset = dataset.padded_batch(batch_size, padding_values=padding_values)
        return dataset.prefetch(prefetch)

    return input_fn


def window_rows_input_fn(*, rows: Callable[[], Iterable[WindowRow]], batch_size: int) -> Callable[..., tf.data.Dataset]:
    """The ``input_fn`` of a windowed embedding: each `musicsim.data.windows.WindowRow` of ``rows()`` as
    ``audio`` float32 ``[T, 1]``, ``length``, ``skip``, ``index`` int32 and ``last`` bool, ``batch_size``
    rows a batch. Every row is at most one window (with its context) long: a batch pads to that, not to a file.
    """
    def generate():
        # Runs in TF's input thread: whatever decodes the rows works ahead of the model.
        for row in rows():
            yield {"audio": row.audio[:, None], "length": np.int32(row.audio.size), "skip": np.int32(row.skip),
                   "index": np.int32(row.index), "last": np.bool_(row.last)}

    signature = {"audio": tf.TensorSpec([None, 1], tf.float32), "length": tf.TensorSpec([], tf.int32),
                 "skip": tf.TensorSpec([], tf.int32), "index": tf.TensorSpec([], tf.int32),
                 "last": tf.TensorSpec([], tf.bool)}
    return batched_input_fn(generator=generate, signature=signature, batch_size=int(batch_size), prefetch=2)


def crop(sequence: np.ndarray, frames: int | None, rng: np.random.Generator | None) -> np.ndarray:
    """A crop of ``frames`` steps: random when ``rng`` is given, else centred; whole when shorter."""
    if frames is None or sequence.shape[0] <= frames:
        return sequence
    start = int(rng.integers(0, sequence.shape[0] - frames + 1)) if rng is not None else \
        (sequence.shape[0] - frames) // 2
    return sequence[start:start + frames]


def crop_grid(*, length: int, frames: int | None, hop: int | None) -> np.ndarray:
    """Starts of a track's fixed crops: every ``hop`` steps, or the centred one; ``[0]`` when shorter.

    A finite set of crops lets what is computed per crop (a teacher's targets) be computed once.

    Parameters
    ----------
    length : int >= 0
        The track's steps.
    frames : int >= 1 or None
        Crop length in steps (None: the whole track).
    hop : int >= 1 or None
        Steps between crop starts; None: only the centred crop (as ``crop`` without ``rng``).

    Returns
    -------
    np.ndarray, int64, shape ``[n_crops]``, n_crops >= 1
    """
    if frames is None or length <= frames:
        return np.zeros(1, dtype=np.int64)
    if hop is None:
        return np.array([(length - frames) // 2], dtype=np.int64)
    if hop < 1:
        raise ValueError(f"hop must be >= 1 or None, got {hop}")
    return np.arange(0, length - frames + 1, hop, dtype=np.int64)


def _stack_padded(sequences: Sequence[np.ndarray], channels: int) -> tuple[np.ndarray, np.ndarray]:
    lengths = np.array([s.shape[0] for s in sequences], dtype=np.int32)
    out = np.zeros((len(sequences), max(1, lengths.max(initial=0)), channels), dtype=np.float32)
    for i, s in enumerate(sequences):
        out[i, : s.shape[0]] = s
    return out, lengths


def sample_train_lists(*, binary: np.ndarray, relevance: np.ndarray, n_similar: int, n_dissimilar: int,
                       seed: int) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Endless random (query, candidates ``[L]``, relevance ``[L]``) lists; -1 pads short lists.

    Only queries with at least one similar and one non-similar track are drawn.
    """
    rng = np.random.default_rng(seed)
    n = binary.shape[0]
    eligible = [q for q in range(n) if binary[q].any() and (~binary[q] & (np.arange(n) != q)).any()]
    if not eligible:
        raise ValueError("no track has both a similar and a non-similar track: cannot build training lists")
    size = n_similar + n_dissimilar
    while True:
        q = int(rng.choice(eligible))
        similar = np.flatnonzero(binary[q])
        others = np.flatnonzero(~binary[q] & (np.arange(n) != q))
        chosen = np.concatenate([rng.choice(similar, min(n_similar, similar.size), replace=False),
                                 rng.choice(others, min(n_dissimilar, others.size), replace=False)])
        rng.shuffle(chosen)
        candidates = np.full(size, -1, dtype=np.int64)
        labels = np.full(size, PADDING_LABEL, dtype=np.float32)
        candidates[: chosen.size] = chosen
        labels[: chosen.size] = relevance[q, chosen]
        yield q, candidates, labels


def _list_element(tracks: TrackSet, q: int, candidates: np.ndarray, labels: np.ndarray, frames: int | None,
                  rng: np.random.Generator | None):
    channels = tracks.channels
    query = crop(tracks.sequences[q], frames, rng)
    cands = [crop(tracks.sequences[c], frames, rng) if c >= 0 else np.zeros((0, channels), np.float32)
             for c in candidates]
    candidate_audio, candidate_length = _stack_padded(cands, channels)
    features = {"query_audio": query.astype(np.float32), "query_length": np.int32(query.shape[0]),
                "candidate_audio": candidate_audio, "candidate_length": candidate_length}
    return features, labels.astype(np.float32)


def _list_signature(channels: int):
    return ({"query_audio": tf.TensorSpec([None, channels], tf.float32),
             "query_length": tf.TensorSpec([], tf.int32),
             "candidate_audio": tf.TensorSpec([None, None, channels], tf.float32),
             "candidate_length": tf.TensorSpec([None], tf.int32)},
            tf.TensorSpec([None], tf.float32))


def make_list_input_fn(*, tracks: TrackSet, relevance_def: Relevance, mode: str, batch_size: int = 4,
                       kind: str = "listwise", n_similar: int = 3, n_dissimilar: int = 3,
                       crop_seconds: float | None = 3.0, eval_seconds: float | None = None, seed: int = 0,
                       lists=None) -> Callable[[], tf.data.Dataset]:
    """An ``input_fn`` yielding (features, labels) ranking lists for TRAIN or EVAL.

    Parameters
    ----------
    tracks : the split's tracks
    relevance_def : the label relevance definition (``musicsim.relevance``) giving each candidate's relevance
    mode : ``"train"`` (endless random lists of random crops, shuffled) or ``"eval"`` (one fixed,
        seeded list per eligible query, centred ``eval_seconds`` crops or whole tracks)
    kind : ``"listwise"`` (``n_similar`` + ``n_dissimilar`` candidates) or ``"pairwise"`` (a
        more-similar and a less-similar candidate, for the hinge loss)
    lists : optional fixed lists for EVAL, any object with ``query [Q]``, ``candidates [Q, L]`` and
        ``relevance [Q, L]`` (e.g. ``musicsim.evaluation.RankingLists``) so the estimator scores
        exactly the lists the numpy protocol scores
    """
    if mode not in (TRAIN, EVAL):
        raise ValueError(f"mode must be 'train' or 'eval', got {mode!r}")
    if kind not in ("listwise", "pairwise"):
        raise ValueError(f"kind must be 'listwise' or 'pairwise', got {kind!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if kind == "pairwise":
        n_similar, n_dissimilar = 1, 1
    relevance, binary = tracks.relevance(relevance_def)

    if mode == TRAIN:
        frames = tracks.frames(crop_seconds)

        def generate():
            rng = np.random.default_rng(seed + 1)
            for q, candidates, labels in sample_train_lists(binary=binary, relevance=relevance, n_similar=n_similar,
                                                            n_dissimilar=n_dissimilar, seed=seed):
                yield _list_element(tracks, q, candidates, labels, frames, rng)
    else:
        frames = tracks.frames(eval_seconds)
        if lists is None:
            # The same seeded lists as the numpy protocol, one per eligible query.
            lists = make_ranking_lists(relevance_matrix=relevance, binary=binary, n_similar=n_similar,
                                       n_dissimilar=n_dissimilar, seed=seed)
        fixed = [(int(q), np.asarray(c), np.asarray(r, np.float32))
                 for q, c, r in zip(lists.query, lists.candidates, lists.relevance)]

        def generate():
            for q, candidates, labels in fixed:
                yield _list_element(tracks, q, candidates, labels, frames, None)

    return batched_input_fn(generator=generate, signature=_list_signature(tracks.channels), batch_size=batch_size,
                            padding_values=({"query_audio": 0.0, "query_length": 0, "candidate_audio": 0.0,
                                             "candidate_length": 0}, PADDING_LABEL))


def make_predict_input_fn(*, tracks: TrackSet, batch_size: int = 8, seconds: float | None = None
                          ) -> Callable[[], tf.data.Dataset]:
    """An ``input_fn`` streaming each track once, in order, with its ``track_id`` (PREDICT)."""
    frames = tracks.frames(seconds)

    def generate():
        for track_id, sequence in zip(tracks.track_ids, tracks.sequences):
            sequence = crop(sequence, frames, None)
            yield {"audio": sequence.astype(np.float32), "length": np.int32(sequence.shape[0]),
                   "track_id": track_id}

    signature = {"audio": tf.TensorSpec([None, tracks.channels], tf.float32),
                 "length": tf.TensorSpec([], tf.int32), "track_id": tf.TensorSpec([], tf.string)}

    return batched_input_fn(generator=generate, signature=signature, batch_size=batch_size)
