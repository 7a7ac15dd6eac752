"""MFCC baseline: the mean and standard deviation over time of 20 MFCCs, standardised.

The classic timbre descriptor (`musicsim.features.mfcc_mean_std`, 40-d), each dimension
standardised with the train split's mean and standard deviation, no reduction; tracks are
compared by Euclidean distance.
"""
from __future__ import annotations

from musicsim.features import N_MFCC
from musicsim.models.entry import FittedEntry
from musicsim.models.fitted import StandardisedModel


class MFCCModel(StandardisedModel):
    """MFCC mean/std (40-d) -> standardise with train statistics.

    Parameters
    ----------
    **settings
        `FittedModel`'s: sample_rate, max_seconds, workers, cache_dir, progress.
    """

    name = "mfcc"
    feature_fn = "mfcc"

    @property
    def dim(self) -> int:
        return 2 * N_MFCC


ENTRY = FittedEntry(name="mfcc", fitted_class=MFCCModel)
