"""Paper 4.1 "Librosa Model": hand-made MIR features, standardised, reduced by PCA.

Each track's 1414-d librosa feature vector (`musicsim.features.librosa_features`) is standardised
with the train split's mean and standard deviation, then projected on the principal components
that explain ``variance_ratio`` (99 % in the paper) of the train split's variance. The same fitted
transform is applied to every split; tracks are compared by Euclidean distance in that space.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.decomposition import PCA
from sklearn.preprocessing import StandardScaler

from musicsim.models.entry import FittedEntry
from musicsim.models.fitted import FittedModel
from musicsim.params import ParamsConfig, hyperparameter


def n_components_for(*, explained_variance_ratio: np.ndarray, variance_ratio: float) -> int:
    """The fewest leading components whose explained variance reaches ``variance_ratio``.

    Parameters
    ----------
    explained_variance_ratio : np.ndarray, shape ``[k]``
        Each component's share of the variance, in decreasing order.
    variance_ratio : float in (0, 1]

    Returns
    -------
    int in [1, k]
    """
    cumulative = np.cumsum(explained_variance_ratio)
    # The tolerance keeps ratio 1.0 reachable despite rounding in the cumulative sum.
    reached = np.flatnonzero(cumulative >= variance_ratio - 1e-9)
    return int(reached[0]) + 1 if reached.size else int(cumulative.size)


class LibrosaPCAModel(FittedModel):
    """Librosa features -> standardise -> PCA keeping ``variance_ratio`` of the variance.

    Parameters
    ----------
    variance_ratio : float in (0, 1]
        Share of the train split's (standardised) variance the kept components explain.
    **settings
        `FittedModel`'s: sample_rate, max_seconds, workers, cache_dir, progress.
    """

    name = "librosa"
    feature_fn = "librosa"

    def __init__(self, *, variance_ratio: float = 0.99, **settings: Any):
        if not 0.0 < float(variance_ratio) <= 1.0:
            raise ValueError(f"variance_ratio must be in (0, 1], got {variance_ratio}")
        super().__init__(**settings)
        self.variance_ratio = float(variance_ratio)
        self.scaler_mean: np.ndarray | None = None  # [feature_dim]
        self.scaler_scale: np.ndarray | None = None  # [feature_dim]
        self.pca_mean: np.ndarray | None = None  # [feature_dim]
        self.components: np.ndarray | None = None  # [dim, feature_dim]
        self.explained_variance_ratio: np.ndarray | None = None  # [dim]

    def _extra_settings(self) -> dict[str, Any]:
        return {"variance_ratio": self.variance_ratio}

    @property
    def dim(self) -> int:
        self._check_fitted()
        return int(self.components.shape[0])

    def _fit_features(self, features: np.ndarray) -> None:
        # StandardScaler leaves zero-variance features unscaled (scale 1): they become 0, not NaN.
        scaler = StandardScaler().fit(features)
        standardised = scaler.transform(features)
        pca = PCA(svd_solver="full").fit(standardised)
        ratio = pca.explained_variance_ratio_
        if not np.all(np.isfinite(ratio)):  # every feature constant over the train split
            raise ValueError("librosa: train features have no variance; cannot fit PCA")
        keep = n_components_for(explained_variance_ratio=ratio, variance_ratio=self.variance_ratio)
        self.scaler_mean = scaler.mean_.astype(np.float64)
        self.scaler_scale = scaler.scale_.astype(np.float64)
        self.pca_mean = pca.mean_.astype(np.float64)
        self.components = pca.components_[:keep].astype(np.float64)
        self.explained_variance_ratio = ratio[:keep].astype(np.float64)

    def _transform(self, features: np.ndarray) -> np.ndarray:
        if features.shape[1] != self.scaler_mean.shape[0]:
            raise ValueError(f"librosa: features have {features.shape[1]} dimensions, the model was "
                             f"fitted on {self.scaler_mean.shape[0]}")
        standardised = (features - self.scaler_mean) / self.scaler_scale
        return (standardised - self.pca_mean) @ self.components.T

    def _arrays(self) -> dict[str, np.ndarray]:
        return {"scaler_mean": self.scaler_mean, "scaler_scale": self.scaler_scale, "pca_mean": self.pca_mean,
                "components": self.components, "explained_variance_ratio": self.explained_variance_ratio}

    def _set_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        self.scaler_mean = arrays["scaler_mean"]
        self.scaler_scale = arrays["scaler_scale"]
        self.pca_mean = arrays["pca_mean"]
        self.components = arrays["components"]
        self.explained_variance_ratio = arrays["explained_variance_ratio"]


@dataclass(frozen=True)
class LibrosaConfig(ParamsConfig):
    """The librosa model's setting a run passes on."""

    variance_ratio: float = hyperparameter(0.99, "librosa: PCA keeps the components explaining this share of "
                                           "variance.", bounds="ratio")


ENTRY = FittedEntry(name="librosa", fitted_class=LibrosaPCAModel, config=LibrosaConfig,
                    keywords={"variance_ratio": "variance_ratio"})
