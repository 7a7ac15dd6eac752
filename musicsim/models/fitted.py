"""Fitted (non-estimator) models: the small interface they share with a trained run.

A fitted model is fitted once on the train split's files, then embeds any file; it is saved into
a model directory like a trained run, so evaluation, export and search need not know its kind::

    model = LibrosaPCAModel(max_seconds=30).fit(paths=train_paths)
    embeddings, ok_indices, skipped = model.embed_paths(paths=test_paths)
    model.save(model_dir)
    model = FittedModel.load(model_dir)       # the right subclass, from fitted_model.json

``model_dir/fitted_model.json`` holds the name, settings and shapes; ``model_dir/fitted_model.npz``
the fitted arrays (read without pickle).
"""
from __future__ import annotations

import json
import os
import sys
from typing import Any, Callable, ClassVar, Mapping

import numpy as np
from sklearn.preprocessing import StandardScaler
from tqdm.auto import tqdm

from musicsim.atomic import atomic_open, write_json_atomic
from musicsim.data.dataset import feature_cache_dir
from musicsim.data.audio import AudioDecodeError
from musicsim.features import DEFAULT_SAMPLE_RATE, FeatureCache, check_extraction_settings, extract_many

CONFIG_FILE = "fitted_model.json"
ARRAYS_FILE = "fitted_model.npz"
FORMAT_VERSION = 1
DEFAULT_MAX_SECONDS = 30.0


class FittedModel:
    """Base class: features from `musicsim.features.extract_many`, then a fitted transform.

    Subclasses set `name` and `feature_fn`, and implement `_fit_features`, `_transform`,
    `_arrays`, `_set_arrays` and, for settings of their own, `_extra_settings`.

    Parameters
    ----------
    sample_rate : int > 0
        Decode rate in Hz.
    max_seconds : float > 0 or None
        Each track's centred excerpt this long is used; ``None`` uses whole tracks.
    workers : int >= 1 or None
        Feature-extraction processes; ``None`` uses every core.
    cache_dir : str or None
        Per-track feature cache (see `extract_many`); reruns and other splits reuse it.
    progress : bool
        Show progress bars while extracting.
    """

    name: ClassVar[str] = ""
    feature_fn: ClassVar[str] = ""
    # Embeddings are points of a standardised (and rotated) feature space: compare by distance.
    similarity: ClassVar[str] = "euclidean"
    # How a model built on other runs (fusion) opens one: ``load_run(model_dir, *, window_seconds) -> Embedder``.
    # Injected by whoever loads or fits the model (musicsim.embedder.load_embedder, the trainer), because the
    # embedder sits above the models: a model importing it would close a circle. Not a saved setting.
    load_run: Callable[..., Any] | None = None

    def __init__(self, *, sample_rate: int = DEFAULT_SAMPLE_RATE, max_seconds: float | None = DEFAULT_MAX_SECONDS,
                 workers: int | None = None, cache_dir: str | None = None, progress: bool = True):
        check_extraction_settings(sample_rate=sample_rate, max_seconds=max_seconds, workers=workers)
        self.sample_rate = int(sample_rate)
        self.max_seconds = None if max_seconds is None else float(max_seconds)
        self.workers = workers
        self.cache_dir = cache_dir
        self.progress = progress
        # Embedding only (not a saved setting): compute long excerpts a window at a time, in bounded memory.
        self.window_seconds: float | None = None
        self.fitted = False

    @classmethod
    def for_run(cls, *, params: Mapping[str, Any], run_params: Mapping[str, str], dataset_dir: str,
                max_seconds: float | None, workers: int | None) -> "FittedModel":
        """A new model for an ``experiments.run`` run on a prepared dataset.

        Parameters
        ----------
        params : the run's hyperparameters
        run_params : constructor keyword -> params key, the settings of this class a run passes (the
            registry entry's ``keywords``); keys absent from ``params`` keep the class default
        dataset_dir : the prepared dataset; its feature cache is reused
        max_seconds : the dataset's excerpt length (None: whole files)
        workers : feature-extraction processes (None: every core)
        """
        settings = {keyword: params[key] for keyword, key in run_params.items() if key in params}
        return cls(max_seconds=max_seconds, workers=workers, cache_dir=feature_cache_dir(dataset_dir), **settings)

    # -- what subclasses provide -------------------------------------------------------------
    def _fit_features(self, features: np.ndarray) -> None:
        """Fit on the train features ``[n, feature_dim]``."""
        raise NotImplementedError

    def _transform(self, features: np.ndarray) -> np.ndarray:
        """Embeddings ``[n, dim]`` of features ``[n, feature_dim]``."""
        raise NotImplementedError

    def _arrays(self) -> dict[str, np.ndarray]:
        """The fitted arrays to save."""
        raise NotImplementedError

    def _set_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        """Restore the fitted state from `_arrays`' output."""
        raise NotImplementedError

    def _extra_settings(self) -> dict[str, Any]:
        """Constructor arguments beyond the base ones (saved with the model)."""
        return {}

    @property
    def dim(self) -> int:
        """Embedding size."""
        raise NotImplementedError

    # -- the shared interface ----------------------------------------------------------------
    def settings(self) -> dict[str, Any]:
        """Constructor arguments that rebuild this model (``type(self)(**settings)``)."""
        return {"sample_rate": self.sample_rate, "max_seconds": self.max_seconds, "workers": self.workers,
                "cache_dir": self.cache_dir, **self._extra_settings()}

    def extract(self, *, paths: list[str]) -> tuple[np.ndarray, list[int], list[tuple[str, str]]]:
        """This model's feature vectors of files: ``(features [n_ok, feature_dim], ok_indices, skipped)``."""
        return extract_many(paths=paths, feature_fn=self.feature_fn, sample_rate=self.sample_rate,
                            max_seconds=self.max_seconds, workers=self.workers, cache_dir=self.cache_dir,
                            progress=self.progress, window_seconds=self.window_seconds)

    def fit(self, *, paths: list[str]) -> "FittedModel":
        """Fit on the train split's files; files that cannot be decoded are left out.

        Raises
        ------
        ValueError
            If fewer than 2 files could be used.
        """
        features, _, skipped = self.extract(paths=list(paths))
        if features.shape[0] < 2:
            reasons = "; ".join(f"{p}: {r}" for p, r in skipped[:5])
            raise ValueError(f"{self.name}: need at least 2 usable train tracks, got {features.shape[0]} of "
                             f"{len(paths)}" + (f" (skipped: {reasons})" if reasons else ""))
        self.fit_features(features=features)
        return self

    def fit_features(self, *, features: np.ndarray) -> "FittedModel":
        """Fit on precomputed train features ``[n, feature_dim]``, n >= 2."""
        features = np.asarray(features, dtype=np.float64)
        if features.ndim != 2 or features.shape[0] < 2:
            raise ValueError(f"{self.name}: need a [n >= 2, dim] feature matrix, got shape {features.shape}")
        if not np.all(np.isfinite(features)):
            raise ValueError(f"{self.name}: train features have non-finite values")
        self._fit_features(features)
        self.fitted = True
        return self

    def tune(self, *, features: np.ndarray, binary: np.ndarray) -> "FittedModel":
        """Choose settings on the eval split (``features`` ``[n, feature_dim]``, ``binary`` ``[n, n]``
        similar or not); most models have none to choose and keep what they have."""
        return self

    def embed_features(self, *, features: np.ndarray) -> np.ndarray:
        """Embeddings of precomputed features: ``[n, feature_dim]`` -> float32 ``[n, dim]``."""
        self._check_fitted()
        features = np.asarray(features, dtype=np.float64)
        if features.ndim != 2:
            raise ValueError(f"{self.name}: features must be [n, dim], got shape {features.shape}")
        if features.shape[0] == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        return self._transform(features).astype(np.float32)

    def embed_paths(self, *, paths: list[str]) -> tuple[np.ndarray, list[int], list[tuple[str, str]]]:
        """Embed files.

        Returns
        -------
        embeddings : np.ndarray, float32, shape ``[n_ok, dim]``
        ok_indices : list[int]
            Index into ``paths`` of each embedding's file.
        skipped : list[(path, reason)]
        """
        self._check_fitted()
        features, ok_indices, skipped = self.extract(paths=list(paths))
        return self.embed_features(features=features), ok_indices, skipped

    def save(self, model_dir: str) -> None:
        """Write ``model_dir/fitted_model.json`` and ``model_dir/fitted_model.npz``."""
        self._check_fitted()
        os.makedirs(model_dir, exist_ok=True)
        arrays = {key: np.asarray(value) for key, value in self._arrays().items()}
        config = {"name": self.name, "format_version": FORMAT_VERSION, "feature_fn": self.feature_fn,
                  "similarity": self.similarity, "dim": self.dim, "settings": self.settings(),
                  "arrays": {key: list(value.shape) for key, value in arrays.items()}}
        # Arrays first, the config last: a directory with a config always has its arrays.
        with atomic_open(os.path.join(model_dir, ARRAYS_FILE), "wb") as f:
            np.savez(f, **arrays)
        write_json_atomic(os.path.join(model_dir, CONFIG_FILE), config)

    @classmethod
    def load(cls, model_dir: str, *, load_run: Callable[..., Any] | None = None) -> "FittedModel":
        """Load a saved fitted model; on the base class, the subclass named in the config.

        ``load_run``: how the model opens another run, for models built on runs (see `load_run`).

        Raises
        ------
        FileNotFoundError
            If ``model_dir`` holds no fitted model.
        ValueError
            If it holds another model than ``cls``, or an unreadable one.
        """
        config_path = os.path.join(model_dir, CONFIG_FILE)
        if not os.path.exists(config_path):
            raise FileNotFoundError(f"{model_dir} holds no fitted model (no {CONFIG_FILE})")
        with open(config_path) as f:
            config = json.load(f)
        name = config.get("name")
        if cls is FittedModel:
            target = _subclass_named(name)
        elif name != cls.name:
            raise ValueError(f"{model_dir} holds a {name!r} model, not {cls.name!r}")
        else:
            target = cls
        if config.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{config_path}: format_version {config.get('format_version')} is not "
                             f"{FORMAT_VERSION}")
        model = target(**config["settings"])
        with np.load(os.path.join(model_dir, ARRAYS_FILE), allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
        missing = set(config["arrays"]) - set(arrays)
        if missing:
            raise ValueError(f"{model_dir}/{ARRAYS_FILE} lacks arrays {sorted(missing)}")
        model._set_arrays(arrays)
        model.fitted = True
        model.load_run = load_run
        return model

    def extract_each(self, *, paths: list[str], dim: int,
                     extract_one: Callable[[str], tuple[np.ndarray | None, str | None]], desc: str) -> tuple[np.ndarray, list[int], list[tuple[str, str]]]:
        """Features of files one at a time, with a progress bar: ``(features [n_ok, dim], ok_indices, skipped)``.

        ``extract_one(path)`` gives ``(vector [dim], None)`` or ``(None, reason)`` and never raises.
        """
        rows, ok_indices, skipped = [], [], []
        for index, path in enumerate(tqdm([os.fspath(p) for p in paths], disable=not self.progress, unit="track",
                                          desc=desc)):
            features, reason = extract_one(path)
            if features is None:
                skipped.append((path, str(reason)))
            else:
                rows.append(features)
                ok_indices.append(index)
        return (np.stack(rows) if rows else np.zeros((0, dim), dtype=np.float64)), ok_indices, skipped

    def cached_file_features(self, *, path: str, dim: int, compute: Callable[[], np.ndarray]
                             ) -> tuple[np.ndarray | None, str | None]:
        """One file's feature vector ``[dim]`` through the per-track cache, or ``(None, reason)``; never raises.

        ``compute()`` makes the vector when the cache has none (or there is no cache). A file that cannot be
        decoded is remembered as such until it changes; any other failure is reported and skipped, since one bad
        track must never stop a corpus or library run.
        """
        cache = None
        if self.cache_dir is not None and os.path.isfile(path):
            cache = FeatureCache(cache_dir=self.cache_dir, feature_name=self.feature_fn, sample_rate=self.sample_rate,
                                 max_seconds=self.max_seconds)
            features, reason = cache.read(path)
            if features is not None and features.shape == (dim,):
                return features, None
            if reason is not None:
                return None, reason
        try:
            features = compute()
        except AudioDecodeError as err:
            if cache is not None:
                cache.write_failure(path, err.reason)
            return None, err.reason
        except Exception as err:  # noqa: BLE001 - one bad track must never stop a run
            print(f"{self.name}: {path}: {type(err).__name__}: {err}", file=sys.stderr)
            return None, f"{self.name} embedding failed ({type(err).__name__}: {err})"
        if cache is not None:
            cache.write(path, features)
        return features, None

    def _check_fitted(self) -> None:
        if not self.fitted:
            raise RuntimeError(f"{self.name} model is not fitted: call fit(paths=...) or load a saved one")

    def __repr__(self) -> str:
        state = f"dim={self.dim}" if self.fitted else "unfitted"
        args = ", ".join(f"{k}={v!r}" for k, v in self.settings().items())
        return f"{type(self).__name__}({args}) [{state}]"


class StandardisedModel(FittedModel):
    """A fitted model whose embedding is its features standardised on the train split.

    Zero-variance dimensions keep scale 1 (sklearn's rule), so they map to 0 rather than NaN (e.g. a
    ReLU unit silent on every train track).
    """

    scaler_mean: np.ndarray | None = None  # [dim]
    scaler_scale: np.ndarray | None = None  # [dim]

    def _check_dim(self, features: np.ndarray) -> None:
        if features.shape[1] != self.dim:
            raise ValueError(f"{self.name}: expected {self.dim}-d features, got {features.shape[1]}")

    def _fit_features(self, features: np.ndarray) -> None:
        self._check_dim(features)
        scaler = StandardScaler().fit(features)
        self.scaler_mean = scaler.mean_.astype(np.float64)
        self.scaler_scale = scaler.scale_.astype(np.float64)

    def _transform(self, features: np.ndarray) -> np.ndarray:
        self._check_dim(features)
        return (features - self.scaler_mean) / self.scaler_scale

    def _arrays(self) -> dict[str, np.ndarray]:
        return {"scaler_mean": self.scaler_mean, "scaler_scale": self.scaler_scale}

    def _set_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        self.scaler_mean = arrays["scaler_mean"]
        self.scaler_scale = arrays["scaler_scale"]


def _subclass_named(name: str) -> type[FittedModel]:
    """The `FittedModel` subclass whose ``name`` is ``name`` (the latest defined, as the registry's module
    imports them all: the registry is not asked, it imports this module)."""
    found, pending = [], list(FittedModel.__subclasses__())
    while pending:
        subclass = pending.pop(0)
        pending.extend(subclass.__subclasses__())
        if subclass.__dict__.get("name") == name:
            found.append(subclass)
    if not found:
        raise ValueError(f"unknown fitted model {name!r}")
    return found[-1]
