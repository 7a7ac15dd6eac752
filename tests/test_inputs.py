"""Tests of the input_fns (paper 2.2): list construction, crops, padding, EVAL and PREDICT streams.

The in-memory tracks encode who they are in their samples: track ``k`` holds ``k * 1000 + t`` at
step ``t``, so any crop reveals its track (``value // 1000``) and its start (``value % 1000``).
"""
from __future__ import annotations

import os

import numpy as np
import pytest
import tensorflow as tf

from musicsim import inputs
from musicsim.data import tfrecords
from musicsim.evaluation import make_ranking_lists
from musicsim.inputs import EVAL, TRAIN, TrackSet, crop, make_list_input_fn, make_predict_input_fn, sample_train_lists
from musicsim.relevance import SharedLabel, TagOverlap

# Album A and B: 4 tracks, C: 2 (a query with 1 similar track, fewer than n_similar), D: 1 (never a query).
ALBUMS = ["A", "A", "A", "A", "B", "B", "B", "B", "C", "C", "D"]
TRACK_LENGTHS = [30, 45, 90, 61, 52, 24, 77, 88, 40, 66, 50]
FRAME_RATE = 100.0


def coded_tracks(albums=ALBUMS, lengths=TRACK_LENGTHS, channels: int = 1) -> TrackSet:
    sequences = []
    for k, n in enumerate(lengths):
        steps = (k * 1000 + np.arange(n)).astype(np.float32)
        sequences.append(steps if channels == 1 else np.repeat(steps[:, None], channels, axis=1))
    return TrackSet(track_ids=[f"t{k}" for k in range(len(lengths))], labels=[(a,) if isinstance(a, str) else a
                                                                             for a in albums],
                    sequences=sequences, frame_rate=FRAME_RATE)


def decode(audio: np.ndarray, length: int) -> tuple[int, int]:
    """(track index, start step) of a coded crop ``[time, ch]``; checks it is one contiguous slice."""
    values = audio[:length, 0].astype(np.int64)
    track, start = values[0] // 1000, values[0] % 1000
    np.testing.assert_array_equal(values, track * 1000 + start + np.arange(length))
    return int(track), int(start)


def list_elements(input_fn, n_batches: int | None = None):
    """Unbatch an input_fn's (features, labels) into per-list numpy dicts."""
    dataset = input_fn()
    if n_batches is not None:
        dataset = dataset.take(n_batches)
    elements = []
    for features, labels in dataset:
        features = {k: v.numpy() for k, v in features.items()}
        for b in range(labels.shape[0]):
            elements.append(({k: v[b] for k, v in features.items()}, labels.numpy()[b]))
    return elements


def check_list(tracks: TrackSet, features: dict, labels: np.ndarray, *, relevance: np.ndarray,
               frames: int | None, centred: bool) -> tuple[int, list[int]]:
    """Check one list against the tracks; return (query, candidates with -1 for padding)."""
    query, start = decode(features["query_audio"], features["query_length"])
    full = tracks.sequences[query].shape[0]
    assert features["query_length"] == (full if frames is None else min(frames, full))
    if centred:
        assert start == (full - features["query_length"]) // 2
    assert 0 <= start <= full - features["query_length"]
    candidates = []
    for audio, length, label in zip(features["candidate_audio"], features["candidate_length"], labels):
        if label == inputs.PADDING_LABEL:
            assert length == 0 and not audio.any()  # padding holds no audio
            candidates.append(-1)
            continue
        candidate, start = decode(audio, length)
        full = tracks.sequences[candidate].shape[0]
        assert length == (full if frames is None else min(frames, full))
        if centred:
            assert start == (full - length) // 2
        assert not audio[length:].any()  # right-padded with zeros
        assert label == relevance[query, candidate]
        candidates.append(candidate)
    return query, candidates


# --------------------------------------------------------------------------- TrackSet and crop


def test_trackset_shapes_relevance_and_frames():
    tracks = coded_tracks()
    assert len(tracks) == 11 and tracks.channels == 1 and tracks.sequences[0].shape == (30, 1)
    assert coded_tracks(channels=3).channels == 3
    relevance, binary = tracks.relevance(SharedLabel())
    assert relevance.shape == (11, 11) and binary.dtype == bool
    assert not binary.diagonal().any() and (relevance.diagonal() == 0).all()
    assert binary[0, 1] and not binary[0, 4] and not binary[10].any()
    assert tracks.frames(0.25) == 25 and tracks.frames(None) is None and tracks.frames(0.001) == 1


def test_trackset_rejects_mismatched_fields():
    with pytest.raises(ValueError, match="same length"):
        TrackSet(track_ids=["a", "b"], labels=[("x",)], sequences=[np.zeros(3), np.zeros(3)], frame_rate=1.0)


def test_trackset_from_dataset(synthetic_dataset):
    counts = {split: len(TrackSet.from_dataset(synthetic_dataset, split)) for split in ("train", "eval", "test")}
    assert counts == {"train": 16, "eval": 8, "test": 8}
    train = TrackSet.from_dataset(synthetic_dataset, "train")
    assert train.frame_rate == 1600.0 and train.channels == 1
    assert {labels for labels in train.labels} == {("low_sine",), ("bright_square",), ("noisy_mid",), ("high_pulse",)}
    assert all(t.startswith(labels[0]) for t, labels in zip(train.track_ids, train.labels))


def test_trackset_from_an_empty_split_raises(tmp_path):
    os.makedirs(tmp_path / "train")
    tfrecords.write_records(str(tmp_path / "train" / "shard-00000.tfrecord"), [])
    with pytest.raises(ValueError, match="holds no tracks"):
        TrackSet.from_dataset(str(tmp_path), "train")


def test_crop():
    sequence = np.arange(10, dtype=np.float32)[:, None]
    np.testing.assert_array_equal(crop(sequence, 4, None)[:, 0], [3, 4, 5, 6])  # centred
    np.testing.assert_array_equal(crop(sequence, 3, None)[:, 0], [3, 4, 5])
    assert crop(sequence, 20, None) is sequence and crop(sequence, None, None) is sequence
    rng = np.random.default_rng(0)
    starts = {int(crop(sequence, 4, rng)[0, 0]) for _ in range(200)}
    assert starts == set(range(7))  # every start, never past the end


# --------------------------------------------------------------------------- training lists


def test_sample_train_lists_properties():
    tracks = coded_tracks()
    relevance, binary = tracks.relevance(SharedLabel())
    lists = sample_train_lists(binary=binary, relevance=relevance, n_similar=3, n_dissimilar=3, seed=0)
    queries = set()
    for _ in range(300):
        q, candidates, labels = next(lists)
        queries.add(q)
        valid = candidates >= 0
        assert q not in candidates and len(set(candidates[valid])) == valid.sum()
        np.testing.assert_array_equal(labels[valid], relevance[q, candidates[valid]])
        assert (labels[~valid] == -1).all() and not valid[valid.sum():].any()  # padding at the end
        assert (labels == 1).sum() == min(3, binary[q].sum()) and (labels == 0).sum() == 3
    assert queries == set(range(10))  # every eligible track, never the singleton album's


def test_sample_train_lists_needs_an_eligible_query():
    tracks = coded_tracks(albums=["A", "B", "C"], lengths=[5, 5, 5])
    relevance, binary = tracks.relevance(SharedLabel())
    with pytest.raises(ValueError, match="no track has both a similar and a non-similar track"):
        next(sample_train_lists(binary=binary, relevance=relevance, n_similar=3, n_dissimilar=3, seed=0))


@pytest.mark.parametrize("kind, n_similar, n_dissimilar", [("listwise", 3, 3), ("listwise", 2, 4), ("pairwise", 5, 5)])
def test_train_lists(kind, n_similar, n_dissimilar):
    tracks = coded_tracks()
    relevance, binary = tracks.relevance(SharedLabel())
    input_fn = make_list_input_fn(tracks=tracks, relevance_def=SharedLabel(), mode=TRAIN, batch_size=4, kind=kind,
                                  n_similar=n_similar, n_dissimilar=n_dissimilar, crop_seconds=0.25, seed=3)
    size = 2 if kind == "pairwise" else n_similar + n_dissimilar  # pairwise: one similar, one not
    elements = list_elements(input_fn, n_batches=12)
    assert len(elements) == 48
    padded_queries = 0
    for features, labels in elements:
        assert labels.shape == (size,) and features["candidate_audio"].shape[0] == size
        query, candidates = check_list(tracks, features, labels, relevance=relevance, frames=25, centred=False)
        assert query != 10 and query not in candidates
        n_similar_here = n_similar if kind == "listwise" else 1
        assert (labels == 1).sum() == min(n_similar_here, binary[query].sum())
        assert (labels == 0).sum() == (n_dissimilar if kind == "listwise" else 1)
        padded_queries += (labels == -1).any()
        assert (labels == -1).any() == (binary[query].sum() < n_similar_here)  # padded only when short
    if kind == "listwise":
        assert padded_queries > 0  # album C's queries were drawn and padded


def test_train_crops_vary_and_keep_whole_short_tracks():
    tracks = coded_tracks()
    input_fn = make_list_input_fn(tracks=tracks, relevance_def=SharedLabel(), mode=TRAIN, batch_size=8,
                                  crop_seconds=0.4, seed=0)
    starts, lengths = set(), {}
    for features, _ in list_elements(input_fn, n_batches=10):
        query, start = decode(features["query_audio"], features["query_length"])
        starts.add((query, start))
        lengths[query] = features["query_length"]
    assert all(length == min(40, TRACK_LENGTHS[q]) for q, length in lengths.items())
    assert len(starts) > len(lengths)  # random crops: a query seen twice is cut at different places


def test_graded_relevance_reaches_the_labels():
    tags = [("rock", "guitar", "loud"), ("rock", "guitar", "loud"), ("rock", "guitar", "fast"), ("rock", "guitar"),
            ("piano", "calm"), ("piano", "calm", "slow"), ("piano", "slow", "calm"), ("drums",)]
    similarity = TagOverlap(min_shared_tags=2, graded=True)
    tracks = coded_tracks(albums=tags, lengths=[20] * len(tags))
    relevance, _ = tracks.relevance(similarity)
    input_fn = make_list_input_fn(tracks=tracks, relevance_def=similarity, mode=TRAIN, batch_size=4, crop_seconds=None)
    seen = set()
    for features, labels in list_elements(input_fn, n_batches=8):
        check_list(tracks, features, labels, relevance=relevance, frames=None, centred=True)
        seen |= set(labels.tolist())
    assert {2.0, 3.0} <= seen  # graded relevance, not just 0/1


# --------------------------------------------------------------------------- EVAL lists


def test_eval_lists_equal_the_given_lists_and_are_fixed():
    tracks = coded_tracks()
    relevance, binary = tracks.relevance(SharedLabel())
    lists = make_ranking_lists(relevance_matrix=relevance, binary=binary, n_similar=3, n_dissimilar=3, seed=11)
    input_fn = make_list_input_fn(tracks=tracks, relevance_def=SharedLabel(), mode=EVAL, batch_size=3,
                                  eval_seconds=None, lists=lists)
    first, second = list_elements(input_fn), list_elements(input_fn)
    assert len(first) == len(lists.query) == 10
    for (features, labels), (again, labels_again), q, candidates, expected in zip(
            first, second, lists.query, lists.candidates, lists.relevance):
        for key in features:
            np.testing.assert_array_equal(features[key], again[key])
        np.testing.assert_array_equal(labels, labels_again)
        query, decoded = check_list(tracks, features, labels, relevance=relevance, frames=None, centred=True)
        assert query == q and decoded == list(candidates)
        np.testing.assert_array_equal(labels, expected)


@pytest.mark.parametrize("kind", ["listwise", "pairwise"])
def test_default_eval_lists_are_the_protocol_lists(kind):
    tracks = coded_tracks()
    relevance, binary = tracks.relevance(SharedLabel())
    n = 1 if kind == "pairwise" else 3
    lists = make_ranking_lists(relevance_matrix=relevance, binary=binary, n_similar=n, n_dissimilar=n, seed=5)
    input_fn = make_list_input_fn(tracks=tracks, relevance_def=SharedLabel(), mode=EVAL, kind=kind, batch_size=4,
                                  eval_seconds=0.2, seed=5)
    elements = list_elements(input_fn)
    assert len(elements) == len(lists.query)
    for (features, labels), q, candidates in zip(elements, lists.query, lists.candidates):
        query, decoded = check_list(tracks, features, labels, relevance=relevance, frames=20, centred=True)
        assert query == q and decoded == list(candidates)


# --------------------------------------------------------------------------- PREDICT


@pytest.mark.parametrize("seconds, channels", [(None, 1), (0.3, 1), (None, 2)])
def test_predict_streams_every_track_once_in_order(seconds, channels):
    tracks = coded_tracks(channels=channels)
    ids, batches = [], 0
    for features in make_predict_input_fn(tracks=tracks, batch_size=4, seconds=seconds)():
        batches += 1
        assert features["audio"].shape[2] == channels
        for audio, length, track_id in zip(features["audio"].numpy(), features["length"].numpy(),
                                           features["track_id"].numpy()):
            ids.append(track_id.decode())
            k = int(ids[-1][1:])
            full = TRACK_LENGTHS[k]
            assert length == (full if seconds is None else min(30, full))
            track, start = decode(audio, length)
            assert track == k and start == (full - length) // 2
            assert not audio[length:].any()
    assert ids == tracks.track_ids and batches == 3


# --------------------------------------------------------------------------- invalid arguments


@pytest.mark.parametrize("arguments, message", [
    (dict(mode="predict"), "mode must be 'train' or 'eval', got 'predict'"),
    (dict(mode="test"), "mode must be 'train' or 'eval', got 'test'"),
    (dict(mode=TRAIN, kind="listmle"), "kind must be 'listwise' or 'pairwise', got 'listmle'"),
    (dict(mode=TRAIN, batch_size=0), "batch_size must be >= 1, got 0"),
    (dict(mode=EVAL, batch_size=-2), "batch_size must be >= 1, got -2"),
])
def test_invalid_arguments_raise(arguments, message):
    with pytest.raises(ValueError, match=message):
        make_list_input_fn(tracks=coded_tracks(), relevance_def=SharedLabel(), **arguments)


def test_concatenate_track_sets_keeps_order_and_refuses_mixed_rates():
    first = TrackSet(track_ids=["a", "b"], labels=[("x",), ("y",)],
                     sequences=[np.zeros(4, np.float32), np.ones(6, np.float32)], frame_rate=100.0)
    second = TrackSet(track_ids=["c"], labels=[("x",)], sequences=[np.full(5, 2.0, np.float32)], frame_rate=100.0)
    both = TrackSet.concatenate([first, second])
    assert both.track_ids == ["a", "b", "c"] and both.labels == [("x",), ("y",), ("x",)]
    assert [s.shape for s in both.sequences] == [(4, 1), (6, 1), (5, 1)] and both.frame_rate == 100.0
    assert np.array_equal(both.sequences[2], second.sequences[0])
    with pytest.raises(ValueError, match="different frame rates"):
        TrackSet.concatenate([first, TrackSet(track_ids=["d"], labels=[("x",)], sequences=[np.zeros(3)],
                                              frame_rate=50.0)])
    with pytest.raises(ValueError, match="at least one TrackSet"):
        TrackSet.concatenate([])


def test_batched_input_fn_pads_each_batch_to_its_longest_element_and_streams_batches_as_they_are():
    elements = [(np.arange(n, dtype=np.float32) + 1, np.int32(n)) for n in (2, 4, 1)]
    signature = (tf.TensorSpec([None], tf.float32), tf.TensorSpec([], tf.int32))
    batches = list(inputs.batched_input_fn(generator=lambda: iter(elements), signature=signature, batch_size=2,
                                           padding_values=(-1.0, 0))().as_numpy_iterator())
    np.testing.assert_array_equal(batches[0][0], [[1, 2, -1, -1], [1, 2, 3, 4]])
    np.testing.assert_array_equal(batches[1][0], [[1]])  # the last, partial batch pads to its own longest
    assert [b[1].tolist() for b in batches] == [[2, 4], [1]]
    # batch_size None: the generator's elements already are batches.
    unbatched = inputs.batched_input_fn(generator=lambda: iter([np.ones((3, 2), np.float32)]),
                                        signature=tf.TensorSpec([None, 2], tf.float32), batch_size=None)
    assert [b.shape for b in unbatched().as_numpy_iterator()] == [(3, 2)]
    with pytest.raises(ValueError, match="batch_size must be >= 1 or None"):
        inputs.batched_input_fn(generator=lambda: iter(elements), signature=signature, batch_size=0)
