"""A run directory: the one reader and writer of what ``experiments.run`` records about a run.

A run folder holds, besides TensorBoard's events and the estimator's checkpoints:

- ``run.json``: ``{"model", "kind", "config", "dataset"}``, the run's settled configuration (every
  hyperparameter filled in), written once before training starts. Resuming with the same
  configuration leaves it as it is; a different one is refused (`RunConfigMismatch`), except for
  the training controls in `RESUMABLE_KEYS` (how long to train, how many workers, ...), which a
  resumed run may change and which are then recorded as the run's latest;
- ``results.json``: the test-split figures, written when the run has finished. It names the
  checkpoint the run embedded with (``checkpoint``) and the hyperparameters the run could only
  settle once trained (``settled_params``: the LSTM's embedding readout chosen on eval);
- ``embeddings.npz``: every split's embeddings (``track_ids``, ``embeddings``, ``splits``,
  ``labels``, ``paths``).

Every file is written to a temporary sibling and renamed over the old one, so a failed or
interrupted write never replaces a good file. Runs written before ``settled_params`` existed
kept their final config in ``results.json``; they are read as before.

>>> import tempfile
>>> run_dir = RunDir(tempfile.mkdtemp())
>>> run_dir.write_config({"seed": 0, "params": {"similarity": "cosine"}}, model="mfcc", kind="fitted",
...                      dataset={"name": "tiny"})
>>> run_dir.config()["params"]
{'similarity': 'cosine'}
"""
from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from musicsim.atomic import atomic_open, write_json_atomic
from musicsim.similarity import SIMILARITIES

RUN_FILE = "run.json"
RESULTS_FILE = "results.json"
EMBEDDINGS_FILE = "embeddings.npz"
FITTED_CONFIG_FILE = "fitted_model.json"  # a fitted model saved outside experiments.run (musicsim.models.fitted)
# Run settings a resumed run may change without becoming another run: none changes the model or its data.
RESUMABLE_KEYS = frozenset({"max_steps", "max_minutes", "early_stopping_patience", "eval_repeats", "workers",
                            "distribute", "num_cpu_replicas", "rerank", "export_checkpoint"})
EMBEDDING_KEYS = ("track_ids", "embeddings", "splits", "labels")


class RunConfigMismatch(ValueError):
    """A run folder already records another configuration: the folder was left as it was."""


@dataclass(frozen=True)
class RunEmbeddings:
    """A run's ``embeddings.npz``.

    Attributes
    ----------
    track_ids : list of str, length N
    vectors : np.ndarray, ``[N, D]``
    splits : list of str, length N (``train`` / ``eval`` / ``test``)
    labels : list of str, length N (a track's labels joined by ``|``)
    paths : list of str, length N (the source files; empty where unknown)
    """

    track_ids: list[str]
    vectors: np.ndarray
    splits: list[str]
    labels: list[str]
    paths: list[str]

    def split(self, name: str) -> "RunEmbeddings":
        """The rows of one split, in order."""
        rows = [i for i, split in enumerate(self.splits) if split == name]
        return RunEmbeddings(track_ids=[self.track_ids[i] for i in rows], vectors=self.vectors[rows],
                             splits=[name] * len(rows), labels=[self.labels[i] for i in rows],
                             paths=[self.paths[i] for i in rows])


def _as_json(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples become lists), for comparing records."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def _read_json(path: str) -> Any:
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from err


class RunDir:
    """The files ``experiments.run`` records in one run folder (see the module docstring).

    Parameters
    ----------
    path : str or os.PathLike
        The run folder (``--model_dir``).
    """

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        self._pending_checkpoint: str | None = None

    def __repr__(self) -> str:
        return f"RunDir({self.path!r})"

    # ------------------------------------------------------------------ paths
    @property
    def run_path(self) -> str:
        return os.path.join(self.path, RUN_FILE)

    @property
    def results_path(self) -> str:
        return os.path.join(self.path, RESULTS_FILE)

    @property
    def embeddings_path(self) -> str:
        return os.path.join(self.path, EMBEDDINGS_FILE)

    def exists(self) -> bool:
        """Whether the folder records a run (its ``run.json``)."""
        return os.path.isfile(self.run_path)

    def finished(self) -> bool:
        """Whether the run wrote its results (``results.json``)."""
        return os.path.isfile(self.results_path)

    def has_embeddings(self) -> bool:
        return os.path.isfile(self.embeddings_path)

    # ------------------------------------------------------------------ run.json
    def write_config(self, config: Mapping[str, Any], *, model: str, kind: str, dataset: Mapping[str, Any]) -> None:
        """Record the run's settled configuration, before it trains.

        Parameters
        ----------
        config : mapping
            The run's settings (``experiments.run.RunConfig`` as a dict, ``params`` included).
        model, kind : str
            The registry name and kind (``learned`` / ``fitted`` / ``baseline``).
        dataset : mapping
            What ``dataset.json`` records about the run's data.

        Raises
        ------
        RunConfigMismatch
            When the folder already records a run whose model, data or settings (other than
            `RESUMABLE_KEYS`) differ; nothing is written then.
        """
        record = _as_json({"model": model, "kind": kind, "config": dict(config), "dataset": dict(dataset)})
        if self.exists():
            recorded = self.record()
            if recorded == record:
                return  # resuming the same run: the record stands as written
            differ = _differences(recorded, record)
            if any(key not in RESUMABLE_KEYS for key in differ):
                raise RunConfigMismatch(
                    f"{self.run_path} records another run (it differs in {', '.join(differ)}): use a new --model_dir, "
                    "or resume with the same settings")
        os.makedirs(self.path, exist_ok=True)
        write_json_atomic(self.run_path, record)

    def record(self) -> dict[str, Any]:
        """``run.json`` as written: ``{"model", "kind", "config", "dataset"}``.

        Raises
        ------
        FileNotFoundError
            When the folder records no run.
        ValueError
            When ``run.json`` cannot be read or lacks an entry.
        """
        if not self.exists():
            raise FileNotFoundError(f"{self.path} holds no run (no {RUN_FILE}): train one with "
                                    "`python -m experiments.run --model_dir=...`")
        try:
            record = _read_json(self.run_path)
        except OSError as err:
            raise ValueError(f"cannot read the run recorded in {self.path}: {err}") from err
        if not isinstance(record, dict):
            raise ValueError(f"{self.run_path}: expected a JSON object")
        for key in ("model", "kind", "config"):
            if key not in record:
                raise ValueError(f"{self.run_path} has no {key!r} entry")
        return record

    def config(self) -> dict[str, Any]:
        """The run's configuration as it ended: ``run.json``'s, with the params settled after training.

        A finished run made before ``settled_params`` existed recorded its final config in
        ``results.json``: that one is returned. A folder with only a ``results.json`` (written by
        hand or by an older version) gives that file's config.
        """
        results = self.results() if self.finished() else None
        if not self.exists():
            if results is not None and isinstance(results.get("config"), dict):
                return dict(results["config"])
            self.record()  # raises: no run here
        config = dict(self.record()["config"])
        if results is None:
            return config
        if "settled_params" in results:
            config["params"] = {**(config.get("params") or {}), **(results["settled_params"] or {})}
        elif isinstance(results.get("config"), dict) and results["config"]:
            config = dict(results["config"])  # an older run: its final config lived in results.json
        return config

    def info(self) -> dict[str, Any]:
        """``run.json``'s record with `config` (the settled configuration)."""
        return {**self.record(), "config": self.config()}

    # ------------------------------------------------------------------ results.json
    def write_results(self, results: Mapping[str, Any]) -> None:
        """Record the finished run's results (replacing earlier ones only once written whole).

        A checkpoint given to `record_checkpoint` before is included as ``checkpoint``.
        """
        payload = dict(results)
        if self._pending_checkpoint is not None and not payload.get("checkpoint"):
            payload["checkpoint"] = self._pending_checkpoint
        os.makedirs(self.path, exist_ok=True)
        write_json_atomic(self.results_path, payload)
        self._pending_checkpoint = None

    def results(self) -> dict[str, Any] | None:
        """``results.json``, or None when the run has not finished.

        Raises
        ------
        ValueError
            When ``results.json`` is not a JSON object.
        """
        if not self.finished():
            return None
        results = _read_json(self.results_path)
        if not isinstance(results, dict):
            raise ValueError(f"{self.results_path}: expected a JSON object")
        return results

    def similarity(self) -> str | None:
        """How the run's embeddings are compared (``cosine`` / ``euclidean``), or None when unrecorded."""
        for read in (self.results, lambda: (self.config() if self.exists() else None)):
            try:
                record = read()
            except (OSError, ValueError):
                continue
            if not isinstance(record, dict):
                continue
            params = record.get("params") if isinstance(record.get("params"), dict) else {}
            similarity = record.get("similarity") or params.get("similarity")
            if similarity in SIMILARITIES:
                return str(similarity)
        return None

    # ------------------------------------------------------------------ the chosen checkpoint
    def record_checkpoint(self, path: str) -> None:
        """Name the checkpoint the run embeds with (stored by file name, in ``results.json``).

        Before the results are written it is kept for `write_results`; after, ``results.json`` is
        rewritten with it.
        """
        name = os.path.basename(os.fspath(path))
        results = self.results()
        if results is None:
            self._pending_checkpoint = name
        else:
            write_json_atomic(self.results_path, {**results, "checkpoint": name})

    def checkpoint(self) -> str | None:
        """The checkpoint the run embedded with, as a path; None when unrecorded or gone from disk.

        Callers then use the latest checkpoint.
        """
        name = self._pending_checkpoint
        if name is None:
            try:
                name = (self.results() or {}).get("checkpoint")
            except (OSError, ValueError, AttributeError):
                return None
        if not name:
            return None
        path = os.path.join(os.path.abspath(self.path), os.path.basename(str(name)))
        return path if os.path.exists(path + ".index") else None

    # ------------------------------------------------------------------ embeddings.npz
    def write_embeddings(self, *, track_ids: Sequence[str], vectors: np.ndarray, splits: Sequence[str],
                         labels: Sequence[str], paths: Sequence[str]) -> None:
        """Write ``embeddings.npz``.

        Parameters
        ----------
        track_ids, splits, labels, paths : sequences of str, length N
        vectors : np.ndarray, ``[N, D]``
        """
        vectors = np.asarray(vectors)
        lengths = {len(track_ids), len(splits), len(labels), len(paths)}
        if vectors.ndim != 2 or lengths != {vectors.shape[0]}:
            raise ValueError(f"embeddings of shape {vectors.shape} for {len(track_ids)} track ids, {len(splits)} "
                             f"splits, {len(labels)} labels and {len(paths)} paths")
        arrays = dict(track_ids=np.array(list(track_ids)), embeddings=vectors, splits=np.array(list(splits)),
                      labels=np.array(list(labels)), paths=np.array(list(paths)))
        os.makedirs(self.path, exist_ok=True)
        with atomic_open(self.embeddings_path, "wb") as f:
            np.savez(f, **arrays)

    def embeddings(self) -> RunEmbeddings:
        """``embeddings.npz``.

        Raises
        ------
        FileNotFoundError
            When the run wrote no embeddings (a baseline, or not finished).
        ValueError
            When the file lacks an array or its arrays disagree in length.
        """
        path = self.embeddings_path
        if not self.has_embeddings():
            raise FileNotFoundError(f"{self.path} holds no {EMBEDDINGS_FILE}")
        try:
            with np.load(path, allow_pickle=False) as npz:
                missing = [key for key in EMBEDDING_KEYS if key not in npz.files]
                if missing:
                    raise ValueError(f"{path} lacks {missing}: not written by experiments.run")
                vectors = np.asarray(npz["embeddings"])
                track_ids = [str(t) for t in npz["track_ids"]]
                found = RunEmbeddings(
                    track_ids=track_ids, vectors=vectors, splits=[str(s) for s in npz["splits"]],
                    labels=[str(s) for s in npz["labels"]],
                    paths=[str(p) for p in npz["paths"]] if "paths" in npz.files else [""] * len(track_ids))
        except (OSError, zipfile.BadZipFile) as err:
            raise ValueError(f"cannot read {path}: {err}") from err
        if vectors.ndim != 2 or {len(found.splits), len(found.labels), len(found.paths)} != {len(track_ids)} \
                or vectors.shape[0] != len(track_ids):
            raise ValueError(f"{path}: {len(track_ids)} track ids but embeddings of shape {vectors.shape}")
        return found

    def embedding_dim(self) -> int | None:
        """D of ``embeddings.npz``, read from the array's header only; None when absent or unreadable."""
        try:
            with zipfile.ZipFile(self.embeddings_path) as archive, archive.open("embeddings.npy") as member:
                version = np.lib.format.read_magic(member)
                shape = np.lib.format._read_array_header(member, version)[0]
        except (OSError, KeyError, ValueError, zipfile.BadZipFile):
            return None
        return int(shape[1]) if len(shape) == 2 else None


def _differences(recorded: Mapping[str, Any], wanted: Mapping[str, Any]) -> list[str]:
    """The top-level entries of two run records that differ, ``config`` opened one level (its keys).

    A hyperparameter the recorded ``params`` lack does not count: runs recorded before every default
    was settled into ``params`` left them out, and ran with them.
    """
    differ = []
    for key in sorted(set(recorded) | set(wanted)):
        if key == "config" and isinstance(recorded.get(key), dict) and isinstance(wanted.get(key), dict):
            old, new = recorded[key], wanted[key]
            for name in sorted(set(old) | set(new)):
                if name == "params" and isinstance(old.get(name), dict) and isinstance(new.get(name), dict):
                    if any(new[name].get(k) != v for k, v in old[name].items()):
                        differ.append(name)
                elif old.get(name) != new.get(name):
                    differ.append(name)
        elif recorded.get(key) != wanted.get(key):
            differ.append(key)
    return differ


def read_run_info(model_dir: str | os.PathLike) -> dict[str, Any]:
    """What a run recorded: ``{"model", "kind", "config", "dataset"}``, ``config`` as the run ended.

    A folder holding only a fitted model saved outside ``experiments.run`` (``fitted_model.json``)
    reads as a fitted run with empty settings.

    Raises
    ------
    FileNotFoundError
        If ``model_dir`` holds neither a run nor a saved fitted model.
    ValueError
        If the run's files cannot be read.
    """
    model_dir = os.fspath(model_dir)
    if not os.path.isdir(model_dir):
        raise FileNotFoundError(f"model_dir {model_dir} does not exist")
    run_dir = RunDir(model_dir)
    if not run_dir.exists():
        fitted_path = os.path.join(model_dir, FITTED_CONFIG_FILE)
        if os.path.exists(fitted_path):
            try:
                name = _read_json(fitted_path).get("name")
            except (OSError, AttributeError) as err:
                raise ValueError(f"cannot read {fitted_path}: {err}") from err
            return {"model": name, "kind": "fitted", "config": {"params": {}}, "dataset": {}}
        run_dir.record()  # raises FileNotFoundError, naming the folder
    try:
        return run_dir.info()
    except FileNotFoundError:
        raise
    except OSError as err:
        raise ValueError(f"cannot read the run recorded in {model_dir}: {err}") from err
