"""Fusion: several runs' embeddings, standardised, weighted and concatenated into one vector.

Different models know different things (librosa's timbre statistics, a pretrained tagger's
knowledge of a million songs, a fine-tuned WaveNet's album similarity); a weighted concatenation
of their standardised embeddings, compared by cosine, adds their similarities::

    cos(f(a), f(b)) ~ sum_b  w_b^2 / sum_c w_c^2 * cos_b(a, b)      (each block scaled to unit length)

so one vector per track keeps export, index and search unchanged. The blocks are standardised on
the train split (each dimension to mean 0, std 1, then each block divided by the square root of
its size, so every block carries the same total variance before weighting) and the block weights
are chosen on the eval split by the catalog metric (``tune``); the test split never takes part.

>>> model = FusionModel(runs=["runs/librosa", "runs/musicnn"])   # doctest: +SKIP
>>> model.fit(paths=train_paths).tune(features=eval_features, binary=eval_binary)   # doctest: +SKIP
"""
from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from musicsim import evaluation
from musicsim.models.entry import FittedEntry
from musicsim.models.fitted import FittedModel
from musicsim.params import ParamsConfig, hyperparameter

# Weights tried for each block by the coordinate search of ``tune`` (0 drops a block).
WEIGHT_GRID = (0.0, 0.5, 1.0, 1.5, 2.0)
SEARCH_PASSES = 2


class FusionModel(FittedModel):
    """A weighted concatenation of other runs' standardised embeddings.

    Parameters
    ----------
    runs : sequence of str
        Run directories (``experiments.run``) whose models embed each block; at least two.
    weights : sequence of float or None
        One weight >= 0 per run (default all 1, until ``tune`` chooses them).
    tuning : sequence of dict or None
        The eval search that chose the weights (kept with the model).
    workers, progress : as ``FittedModel``; the other base settings are the runs' own.
    """

    name = "fusion"
    similarity = "cosine"

    def __init__(self, *, runs: Sequence[str] = (), weights: Sequence[float] | None = None,
                 tuning: Sequence[dict] | None = None, **base: Any):
        super().__init__(**base)
        self.runs = [os.path.abspath(run) for run in runs]
        if len(self.runs) < 2:
            raise ValueError(f"fusion needs at least two runs (--fusion_runs=RUN1,RUN2,...), got {len(self.runs)}")
        missing = [run for run in self.runs if not os.path.isdir(run)]
        if missing:
            raise ValueError(f"fusion: run directories {missing} do not exist")
        self.weights = np.ones(len(self.runs)) if weights is None else np.asarray(weights, dtype=np.float64)
        self._check_weights(self.weights)
        self.window_seconds: float | None = None
        self._embedders: list | None = None
        self.block_dims: list[int] = []
        self.tuning = list(tuning or [])  # the eval search: [{"weights", "catalog_mAP"}]

    @classmethod
    def for_run(cls, *, params: Mapping[str, Any], run_params: Mapping[str, str], dataset_dir: str,
                max_seconds: float | None, workers: int | None) -> "FusionModel":
        """A fusion of the runs ``params["fusion_runs"]``: each run decodes its own way, so neither the
        dataset's excerpt nor its feature cache applies."""
        del run_params, dataset_dir, max_seconds
        return cls(runs=params.get("fusion_runs") or [], workers=workers)

    def _check_weights(self, weights: np.ndarray) -> None:
        if weights.shape != (len(self.runs),) or not np.all(weights >= 0) or not weights.any():
            raise ValueError(f"fusion weights must be {len(self.runs)} values >= 0, not all 0; got {weights.tolist()}")

    def _extra_settings(self) -> dict[str, Any]:
        return {"runs": list(self.runs), "weights": [float(w) for w in self.weights], "tuning": self.tuning}

    def embedders(self) -> list:
        """The runs' embedders, loaded once."""
        if self._embedders is None:
            if self.load_run is None:
                raise ValueError("a fusion model embeds through its runs: load or make it with load_run= "
                                 "(musicsim.embedder.load_embedder)")
            self._embedders = [self.load_run(run, window_seconds=self.window_seconds) for run in self.runs]
        return self._embedders

    @property
    def dim(self) -> int:
        return int(sum(self.block_dims))

    # -- features: each run's embedding of the file, side by side -------------------------------
    def extract(self, *, paths: list[str]) -> tuple[np.ndarray, list[int], list[tuple[str, str]]]:
        """Every run's embedding of each file: ``(features [n_ok, sum of dims], ok_indices, skipped)``.

        A file any run cannot embed is skipped, with that run's reason.
        """
        blocks, reasons = [], {}
        usable = set(range(len(paths)))
        for run, embedder in zip(self.runs, self.embedders()):
            vectors, ok_indices, skipped = embedder.embed_paths(paths=paths, workers=self.workers,
                                                                progress=self.progress)
            blocks.append(dict(zip(ok_indices, vectors)))
            usable &= set(ok_indices)
            for path, reason in skipped:
                reasons.setdefault(path, f"{os.path.basename(run)}: {reason}")
        dims = [embedder.dim for embedder in self.embedders()]
        if self.block_dims and dims != self.block_dims:
            raise ValueError(f"fusion: the runs now embed {dims} dimensions, the model was fitted on {self.block_dims}")
        self.block_dims = dims
        ok_indices = sorted(usable)
        features = (np.stack([np.concatenate([block[i] for block in blocks]) for i in ok_indices])
                    if ok_indices else np.zeros((0, sum(dims)), np.float32))
        skipped = [(path, reasons.get(path, "could not be embedded by every run"))
                   for i, path in enumerate(paths) if i not in usable]
        return features.astype(np.float32), ok_indices, skipped

    def _fit_features(self, features: np.ndarray) -> None:
        if not self.block_dims:
            raise ValueError("fusion: fit through extract (it learns the runs' block sizes)")
        self.mean = features.mean(axis=0)
        # A constant dimension carries nothing: std 1 leaves it at 0 after centring.
        std = features.std(axis=0)
        self.std = np.where(std > 1e-8, std, 1.0)

    def _block_scale(self, weights: np.ndarray) -> np.ndarray:
        """Per-dimension factor: each block's weight over the square root of its size."""
        return np.concatenate([np.full(d, w / np.sqrt(d)) for w, d in zip(weights, self.block_dims)])

    def _transform(self, features: np.ndarray) -> np.ndarray:
        return (features - self.mean) / self.std * self._block_scale(self.weights)

    def tune(self, *, features: np.ndarray, binary: np.ndarray) -> "FusionModel":
        """Choose the block weights with the best catalog mAP on the eval split.

        A coordinate search over ``WEIGHT_GRID`` from equal weights; ties keep the current weight.

        Parameters
        ----------
        features : float array ``[n, sum of dims]``, ``extract`` of the eval split's files.
        binary : bool array ``[n, n]``, similar or not (eval split only).
        """
        self._check_fitted()
        standardised = (np.asarray(features, np.float64) - self.mean) / self.std

        def catalog_map(weights: np.ndarray) -> float:
            vectors = standardised * self._block_scale(weights)
            scores = evaluation.similarity_matrix(embeddings=vectors, similarity="cosine")
            return evaluation.catalog_retrieval(scores=scores, binary=binary)["catalog_mAP"]

        weights = np.ones(len(self.runs))
        best = catalog_map(weights)
        self.tuning = [{"weights": weights.tolist(), "catalog_mAP": best}]
        for _, block in itertools.product(range(SEARCH_PASSES), range(len(self.runs))):
            for value in WEIGHT_GRID:
                trial = weights.copy()
                trial[block] = value
                if not trial.any() or value == weights[block]:
                    continue
                score = catalog_map(trial)
                self.tuning.append({"weights": trial.tolist(), "catalog_mAP": score})
                if score > best + 1e-12:
                    best, weights = score, trial
        self.weights = weights
        return self

    def _arrays(self) -> dict[str, np.ndarray]:
        return {"mean": self.mean, "std": self.std, "block_dims": np.asarray(self.block_dims, np.int64)}

    def _set_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        self.mean, self.std = arrays["mean"], arrays["std"]
        self.block_dims = [int(d) for d in arrays["block_dims"]]


@dataclass(frozen=True)
class FusionConfig(ParamsConfig):
    """The fusion's setting a run passes on."""

    fusion_runs: tuple[str, ...] = hyperparameter((), "fusion: the runs (model_dirs, trained or fitted on this "
                                                  "dataset or any) whose standardised embeddings are concatenated; "
                                                  "block weights are chosen on the eval split.", item=str)


ENTRY = FittedEntry(name="fusion", fitted_class=FusionModel, config=FusionConfig)
