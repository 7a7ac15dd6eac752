"""MFCC baseline: the mean and standard deviation over time of 20 MFCCs, standardised.

The classic timbre descriptor (`musicsim.features.mfcc_mean_std`, 40-d), each dimension
standardised with the train split's mean and standard deviation, no reduction; tracks are
compared by Euclidean distance.
"""
from __future__ import annotations

import numpy as np
from sklearn.preprocessing import StandardScaler

from musicsim.features import N_MFCC
from musicsim.models.fitted import FittedModel


class MFCCModel(FittedModel):
    """MFCC mean/std (40-d) -> standardise with train statistics.

    Parameters
    ----------
    **settings
        `FittedModel`'s: sample_rate, max_seconds, workers, cache_dir, progress.
    """

    name = "mfcc"
    feature_fn = "mfcc"

    def __init__(self, **settings):
        super().__init__(**settings)
        self.scaler_mean: np.ndarray | None = None  # [40]
        self.scaler_scale: np.ndarray | None = None  # [40]

    @property
    def dim(self) -> int:
        return 2 * N_MFCC

    def _fit_features(self, features: np.ndarray) -> None:
        if features.shape[1] != self.dim:
            raise ValueError(f"mfcc: expected {self.dim}-d features, got {features.shape[1]}")
        # Zero-variance dimensions keep scale 1 (sklearn), so they map to 0 rather than NaN.
        scaler = StandardScaler().fit(features)
        self.scaler_mean = scaler.mean_.astype(np.float64)
        self.scaler_scale = scaler.scale_.astype(np.float64)

    def _transform(self, features: np.ndarray) -> np.ndarray:
        if features.shape[1] != self.dim:
            raise ValueError(f"mfcc: expected {self.dim}-d features, got {features.shape[1]}")
        return (features - self.scaler_mean) / self.scaler_scale

    def _arrays(self) -> dict[str, np.ndarray]:
        return {"scaler_mean": self.scaler_mean, "scaler_scale": self.scaler_scale}

    def _set_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        self.scaler_mean = arrays["scaler_mean"]
        self.scaler_scale = arrays["scaler_scale"]
