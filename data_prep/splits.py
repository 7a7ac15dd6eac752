"""Deterministic 50/25/25 train/eval/test splits (paper 2.2: "50% for the training set, 25% for the
evaluation set and 25% for the test set").

``split_by="track"`` stratifies by label with iterative stratification (Sechidis et al., 2011):
labels are taken rarest first; each still unassigned track carrying the label goes to the split
owed the most tracks of that label (50/25/25 of the label's count); ties, and the fractions of a
track left at the end, go to the split furthest below its share overall. For one label per track
this guarantees that every label with at least ``MIN_TRACKS_TO_STRATIFY`` (4) tracks is in every
split, within one track of its share; for multi-label tags (MagnaTagATune) it is the usual best
effort, rare tags first. Tracks that share a group (the clips cut from one MTAT song) move
together, so no song is in two splits; a group is kept out of a split it would overfill.

``split_by="label"`` gives train, eval and test disjoint labels (albums, genres): whole labels go,
in a seeded order, to the split where they leave the track shares closest to 50/25/25; the first
seeded order within ``LABEL_SPLIT_TOLERANCE`` of the shares is kept (else the closest of
``LABEL_SPLIT_ATTEMPTS``). Every split gets at least one label. It needs one label per track.

Everything is a function of the track ids, labels, groups and ``seed``: the order tracks are listed
in does not matter.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Sequence

import numpy as np

from data_prep.sources import SourceTrack

SPLIT_FRACTIONS = {"train": 0.5, "eval": 0.25, "test": 0.25}
SPLIT_BY = ("track", "label")
# 50/25/25 of 4 tracks is 2/1/1: the fewest tracks a label needs to appear in every split.
MIN_TRACKS_TO_STRATIFY = 4
# split_by="label" tries up to this many seeded label orders; it keeps the first whose splits all
# miss their share by at most LABEL_SPLIT_TOLERANCE (relative, RMS), else the closest.
LABEL_SPLIT_ATTEMPTS = 64
LABEL_SPLIT_TOLERANCE = 0.1


def _units(tracks: Sequence[SourceTrack], seed: int) -> list[list[SourceTrack]]:
    """Tracks grouped into the units a split moves together, in a seeded order."""
    by_key: dict[tuple[str, str], list[SourceTrack]] = defaultdict(list)
    for track in tracks:
        by_key[("group", track.group) if track.group else ("track", track.track_id)].append(track)
    keys = sorted(by_key)
    order = np.random.default_rng(seed).permutation(len(keys))
    return [sorted(by_key[keys[i]], key=lambda t: t.track_id) for i in order]


def assign_splits(*, tracks: Sequence[SourceTrack], seed: int = 0, split_by: str = "track",
                  multi_label: bool = False) -> dict[str, str]:
    """Assign every track to ``train``, ``eval`` or ``test`` (50/25/25 of the tracks).

    Parameters
    ----------
    tracks : sequence of SourceTrack, length ``n``
        Track ids must be unique.
    seed : int
        The same seed gives the same assignment.
    split_by : {"track", "label"}
        Stratified tracks, or disjoint labels (see the module docstring).
    multi_label : bool
        Whether tracks carry several labels (tags); ``split_by="label"`` refuses them.

    Returns
    -------
    dict
        ``track_id -> split``, ``n`` entries.

    Raises
    ------
    ValueError
        For an unknown ``split_by``, duplicate track ids, ``split_by="label"`` on multi-label data,
        on tracks without exactly one label, or with fewer than 3 labels.
    """
    if split_by not in SPLIT_BY:
        raise ValueError(f"split_by must be one of {SPLIT_BY}, got {split_by!r}")
    ids = [t.track_id for t in tracks]
    if len(set(ids)) != len(ids):
        raise ValueError("track ids must be unique to assign splits")
    if split_by == "label":
        return _split_by_label(tracks, seed=seed, multi_label=multi_label)
    return _split_stratified(tracks, seed=seed)


class _Tally:
    """Tracks assigned so far, overall and per label."""

    def __init__(self, total: int):
        self.total = total
        self.overall = dict.fromkeys(SPLIT_FRACTIONS, 0)

    def overall_deficit(self, split: str) -> float:
        """Share of the split's target still missing: relative, so 25% splits are not starved by 50% ones."""
        target = SPLIT_FRACTIONS[split] * self.total
        return (target - self.overall[split]) / target

    def most_owed(self, candidates, label_deficit=None, weight: int = 1) -> str:
        """The candidate split owed the most (by label first when given), then by split order.

        A unit of several tracks (a group) is kept out of splits it would overfill by more than half
        of it while another candidate has room: without this, groups make the shares drift.
        """
        order = list(SPLIT_FRACTIONS)
        if weight > 1:
            roomy = [s for s in candidates
                     if self.overall[s] + weight / 2.0 <= SPLIT_FRACTIONS[s] * self.total]
            candidates = roomy or candidates

        def key(split):
            first = label_deficit[split] if label_deficit is not None else 0.0
            return (first, self.overall_deficit(split), -order.index(split))

        return max(candidates, key=key)


def _split_stratified(tracks: Sequence[SourceTrack], *, seed: int) -> dict[str, str]:
    units = _units(tracks, seed)
    # Per unit: how many of its tracks carry each label.
    unit_labels = []
    label_total: dict[str, int] = defaultdict(int)
    units_with_label: dict[str, list[int]] = defaultdict(list)
    for index, unit in enumerate(units):
        counts: dict[str, int] = defaultdict(int)
        for track in unit:
            for label in set(track.labels):
                counts[label] += 1
        unit_labels.append(counts)
        for label, count in counts.items():
            label_total[label] += count
            units_with_label[label].append(index)
    tally = _Tally(len(tracks))
    label_assigned: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(SPLIT_FRACTIONS, 0))
    split_of_unit: dict[int, str] = {}

    def assign(index: int, split: str) -> None:
        split_of_unit[index] = split
        tally.overall[split] += len(units[index])
        for label, count in unit_labels[index].items():
            label_assigned[label][split] += count

    for label in sorted(label_total, key=lambda l: (label_total[l], l)):  # rarest first
        for index in units_with_label[label]:
            if index in split_of_unit:
                continue
            deficit = {s: f * label_total[label] - label_assigned[label][s] for s, f in SPLIT_FRACTIONS.items()}
            # A split owed a whole track of this label gets it; the fractions left go to the splits owed a
            # fraction, whichever is furthest below its share overall.
            if label_total[label] >= MIN_TRACKS_TO_STRATIFY and max(deficit.values()) >= 1.0:
                assign(index, tally.most_owed(SPLIT_FRACTIONS, deficit, weight=len(units[index])))
            else:
                assign(index, tally.most_owed([s for s in SPLIT_FRACTIONS if deficit[s] > 1e-9],
                                              weight=len(units[index])))
    for index in range(len(units)):  # tracks without labels
        if index not in split_of_unit:
            assign(index, tally.most_owed(SPLIT_FRACTIONS, weight=len(units[index])))
    return {t.track_id: split_of_unit[i] for i, unit in enumerate(units) for t in unit}


def _split_by_label(tracks: Sequence[SourceTrack], *, seed: int, multi_label: bool) -> dict[str, str]:
    if multi_label:
        raise ValueError("split_by='label' needs one label per track (albums, genres); tag data such as "
                         "magnatagatune has several tags per track, so there are no disjoint label sets: "
                         "use split_by='track'")
    by_label: dict[str, list[SourceTrack]] = defaultdict(list)
    for track in tracks:
        if len(track.labels) != 1:
            raise ValueError(f"split_by='label' needs exactly one label per track; {track.track_id!r} has "
                             f"{list(track.labels)}")
        by_label[track.labels[0]].append(track)
    if len(by_label) < len(SPLIT_FRACTIONS):
        raise ValueError(f"split_by='label' needs at least {len(SPLIT_FRACTIONS)} labels to give train, eval "
                         f"and test disjoint labels; got {len(by_label)}: {sorted(by_label)}")
    labels = sorted(by_label)
    sizes = {label: len(members) for label, members in by_label.items()}
    rng = np.random.default_rng(seed)
    best, best_error = None, np.inf
    for _ in range(LABEL_SPLIT_ATTEMPTS):
        order = [labels[i] for i in rng.permutation(len(labels))]
        split_of_label, error = _greedy_label_split(order, sizes, total=len(tracks))
        if error < best_error - 1e-12:
            best, best_error = split_of_label, error
        # The first order close enough wins, so different seeds give different label sets.
        if error <= len(SPLIT_FRACTIONS) * LABEL_SPLIT_TOLERANCE ** 2:
            break
    return {track.track_id: best[track.labels[0]] for track in tracks}


def _greedy_label_split(order: Sequence[str], sizes: dict[str, int], *, total: int) -> tuple[dict[str, str], float]:
    """Give each label, in ``order``, to the split where it leaves the shares closest to 50/25/25.

    Returns the assignment and its error: the sum over splits of the squared relative miss of the target.
    """
    targets = {s: f * total for s, f in SPLIT_FRACTIONS.items()}
    counts = dict.fromkeys(SPLIT_FRACTIONS, 0)

    def error_if(split: str | None, size: int) -> float:
        return sum(((counts[s] + (size if s == split else 0) - t) / t) ** 2 for s, t in targets.items())

    split_of_label = {}
    for position, label in enumerate(order):
        empty = [s for s in SPLIT_FRACTIONS if counts[s] == 0]
        # Once the labels left are only enough for the empty splits, they must go there.
        candidates = empty if len(order) - position <= len(empty) else list(SPLIT_FRACTIONS)
        split = min(candidates, key=lambda s: (error_if(s, sizes[label]), list(SPLIT_FRACTIONS).index(s)))
        counts[split] += sizes[label]
        split_of_label[label] = split
    return split_of_label, error_if(None, 0)
