"""Embed audio files with any finished run: the front half of the search engine.

``load_embedder(model_dir)`` reads what ``experiments.run`` recorded about a run and rebuilds its
model, whatever its kind, behind one small interface::

    embedder = load_embedder("runs/wavenet-demo")
    embeddings, ok_indices, skipped = embedder.embed_paths(paths=["a.ogg", "b.mp3"])

- learned ``wavenet``: each file is decoded exactly as ``data_prep.build`` prepared the run's
  dataset (mono at its decode rate, the centred ``max_seconds`` excerpt, mean-pooled by its
  ``pool_size``), in worker processes, then embedded by batched ``estimator.predict`` from the
  run's latest checkpoint;
- learned ``rnn``: the same decoding at ``chroma_sample_rate``, then the chromagram
  (``musicsim.models.rnn.chroma_sequence``), as ``rnn.load_tracks`` computes it;
- fitted (``librosa``, ``mfcc``): the saved ``FittedModel``'s own ``embed_paths``.

So a track's vector equals the one the run exported to ``embeddings.npz`` (when the run embedded
whole excerpts, ``predict_seconds`` unset). Files that cannot be used are skipped with their
reason; they never stop a batch.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np

from musicsim import models as registry

RUN_FILE = "run.json"
RESULTS_FILE = "results.json"
FITTED_CONFIG_FILE = "fitted_model.json"
DEFAULT_MIN_SECONDS = 1.0
# Files handed to a fitted model's embed_paths at a time: results stream out chunk by chunk.
FITTED_CHUNK = 64

EmbedResult = tuple[int, "np.ndarray | None", "str | None"]  # (index into paths, vector [D] or None, reason)


@dataclass(frozen=True)
class ChromaSettings:
    """How the rnn model's input is computed from a file (see ``musicsim.models.rnn.load_tracks``)."""

    sample_rate: int
    hop_length: int
    max_seconds: float | None


def decode_chroma(path: str, settings: ChromaSettings):
    """The chromagram of a file's centred excerpt, as a ``data_prep.build.DecodeResult``.

    Module-level so worker processes can unpickle it. ``pooled`` holds the chromagram
    float32 ``[frames, 12]``; failures become the result's ``reason``, never an exception.
    """
    from data_prep.build import DecodeResult
    from musicsim.audio import AudioDecodeError
    from musicsim.features import load_excerpt
    from musicsim.models.rnn import chroma_sequence

    try:
        audio = load_excerpt(path=path, sample_rate=settings.sample_rate, max_seconds=settings.max_seconds)
        seconds = audio.size / float(settings.sample_rate)
        chroma = chroma_sequence(audio=audio, sample_rate=settings.sample_rate, hop_length=settings.hop_length)
    except AudioDecodeError as err:
        return DecodeResult(pooled=None, seconds=0.0, reason=err.reason)
    except Exception as err:  # noqa: BLE001 - one bad file must never stop a batch
        return DecodeResult(pooled=None, seconds=0.0, reason=f"chromagram failed ({type(err).__name__}: {err})")
    return DecodeResult(pooled=chroma, seconds=seconds)


def recorded_checkpoint(model_dir: str) -> str | None:
    """The checkpoint a finished run embedded with (``results.json``'s ``checkpoint``), as a path.

    None when the run records none (an older or unfinished run, a fitted model) or when that
    checkpoint is no longer on disk; callers then use the latest checkpoint.
    """
    try:
        with open(os.path.join(model_dir, RESULTS_FILE)) as f:
            name = json.load(f).get("checkpoint")
    except (OSError, json.JSONDecodeError, AttributeError):
        return None
    if not name:
        return None
    path = os.path.join(os.path.abspath(model_dir), os.path.basename(str(name)))
    return path if os.path.exists(path + ".index") else None


def read_run_info(model_dir: str) -> dict[str, Any]:
    """What a run recorded: ``{"model", "kind", "config", "dataset"}``.

    ``results.json`` (written when the run finished) wins over ``run.json`` (written when it
    started) for the config: a run may settle hyperparameters while it runs (the rnn's best
    embedding variant, a fitted model's similarity).

    Raises
    ------
    FileNotFoundError
        If ``model_dir`` holds neither a run nor a saved fitted model.
    ValueError
        If the run's files cannot be read.
    """
    run_path = os.path.join(model_dir, RUN_FILE)
    fitted_path = os.path.join(model_dir, FITTED_CONFIG_FILE)
    if not os.path.isdir(model_dir):
        raise FileNotFoundError(f"model_dir {model_dir} does not exist")
    if not os.path.exists(run_path):
        if os.path.exists(fitted_path):  # a fitted model saved outside experiments.run
            with open(fitted_path) as f:
                name = json.load(f).get("name")
            return {"model": name, "kind": "fitted", "config": {"params": {}}, "dataset": {}}
        raise FileNotFoundError(f"{model_dir} holds no run (no {RUN_FILE}): train one with "
                                "`python -m experiments.run --model_dir=...`")
    try:
        with open(run_path) as f:
            info = json.load(f)
        results_path = os.path.join(model_dir, RESULTS_FILE)
        if os.path.exists(results_path):
            with open(results_path) as f:
                final_config = json.load(f).get("config")
            if final_config:
                info["config"] = final_config
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"cannot read the run recorded in {model_dir}: {err}") from err
    for key in ("model", "kind", "config"):
        if key not in info:
            raise ValueError(f"{run_path} has no {key!r} entry")
    return info


class Embedder:
    """A run's model, turning audio files into embeddings.

    Attributes
    ----------
    name : str
        The model's registry name (``wavenet``, ``rnn``, ``librosa``, ``mfcc``).
    kind : str
        ``learned`` or ``fitted``.
    similarity : str
        How the run compares embeddings: ``cosine`` or ``euclidean``.
    model_dir : str
        The run directory (absolute).
    """

    name: str
    kind: str
    similarity: str
    model_dir: str

    @property
    def dim(self) -> int:
        """Embedding size D."""
        raise NotImplementedError

    @property
    def version(self) -> str:
        """Names the weights the embeddings come from (changes when the model is retrained)."""
        raise NotImplementedError

    def iter_embeddings(self, *, paths: Sequence[str], batch_size: int = 8, workers: int | None = None
                        ) -> Iterator[EmbedResult]:
        """Embed files one by one, in order: ``(index, vector [D] float32, None)`` or ``(index, None, reason)``.

        One result per path, in the order of ``paths``, as soon as it is ready, so a long run can
        save its progress as it goes.
        """
        raise NotImplementedError

    def embed_paths(self, *, paths: Sequence[str], batch_size: int = 8, workers: int | None = None,
                    progress: bool = True) -> tuple[np.ndarray, list[int], list[tuple[str, str]]]:
        """Embed files; the ones that cannot be used are skipped.

        Parameters
        ----------
        paths : sequence of str, length n
        batch_size : int >= 1
            Tracks per ``estimator.predict`` batch (learned models).
        workers : int >= 1 or None
            Decoding processes; None uses every core, 1 decodes in this process.
        progress : bool
            Show a tqdm progress bar.

        Returns
        -------
        embeddings : np.ndarray, float32, shape ``[n_ok, D]``
        ok_indices : list[int], length n_ok
            Index into ``paths`` of each row, ascending.
        skipped : list[(path, reason)]
            The files that could not be embedded, in ``paths`` order.
        """
        from tqdm.auto import tqdm

        paths = _check_paths(paths)
        _check_batching(batch_size=batch_size, workers=workers)
        vectors, ok_indices, skipped = [], [], []
        with tqdm(total=len(paths), disable=not progress, unit="track", desc=f"embed ({self.name})") as bar:
            for index, vector, reason in self.iter_embeddings(paths=paths, batch_size=batch_size, workers=workers):
                if vector is None:
                    skipped.append((paths[index], str(reason)))
                else:
                    vectors.append(vector)
                    ok_indices.append(index)
                bar.update(1)
        embeddings = (np.stack(vectors).astype(np.float32) if vectors
                      else np.zeros((0, self.dim), dtype=np.float32))
        return embeddings, ok_indices, skipped

    def describe(self) -> dict[str, Any]:
        """JSON-friendly summary: name, kind, similarity, dim, model_dir, version."""
        return {"name": self.name, "kind": self.kind, "similarity": self.similarity, "dim": self.dim,
                "model_dir": self.model_dir, "version": self.version}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name}, dim={self.dim}, {self.similarity}, {self.model_dir})"


def _check_paths(paths: Sequence[str]) -> list[str]:
    if isinstance(paths, (str, bytes, os.PathLike)):
        raise ValueError(f"paths must be a list of files, got the single path {paths!r}")
    return [os.fspath(p) for p in paths]


def _check_batching(*, batch_size: int, workers: int | None) -> None:
    if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if workers is not None and (isinstance(workers, bool) or int(workers) != workers or workers < 1):
        raise ValueError(f"workers must be a positive integer or None, got {workers!r}")


class LearnedEmbedder(Embedder):
    """A trained estimator run (wavenet or rnn), embedding from its latest checkpoint."""

    kind = "learned"

    def __init__(self, *, model_dir: str, info: dict[str, Any]):
        import tensorflow as tf

        self.model_dir = os.path.abspath(model_dir)
        self.name = str(info["model"])
        self.config = dict(info["config"])
        self.params = dict(self.config.get("params") or {})
        self.dataset = dict(info.get("dataset") or {})
        self.similarity = str(self.params.get("similarity", "cosine"))
        self.module = registry.learned_module(self.name)
        # The checkpoint the run exported its embeddings with, so a file's vector equals its exported one.
        self.checkpoint = recorded_checkpoint(self.model_dir) or tf.train.latest_checkpoint(self.model_dir)
        if self.checkpoint is None:
            raise FileNotFoundError(f"{self.model_dir} holds no checkpoint of its {self.name} model: "
                                    "has the run trained yet?")
        if self.name == "rnn" and self.params.get("rnn_embedding") == "all":
            raise ValueError(f"{self.model_dir}: the run did not record which rnn embedding it kept "
                             "(rnn_embedding='all'); has it finished?")
        for key in ("sample_rate", "pool_size"):
            if self.name == "wavenet" and key not in self.dataset:
                raise ValueError(f"{self.model_dir}/{RUN_FILE} does not record the dataset's {key}")
        self._estimator = None

    @property
    def dim(self) -> int:
        return int(self.module.embedding_size(self.params))

    @property
    def version(self) -> str:
        return os.path.basename(self.checkpoint)

    @property
    def channels(self) -> int:
        """Channels of the model's input sequences: 1 (pooled audio) or 12 (chromagram)."""
        return 12 if self.name == "rnn" else 1

    @property
    def sample_rate(self) -> int:
        """Decode rate of the audio, in Hz."""
        if self.name == "rnn":
            return int(self.params.get("chroma_sample_rate", self.module.DEFAULT_PARAMS["chroma_sample_rate"]))
        return int(self.dataset["sample_rate"])

    @property
    def pool_size(self) -> int:
        """Mean-pooling window of the model's input (1 for the rnn, whose input is not pooled audio)."""
        return 1 if self.name == "rnn" else int(self.dataset["pool_size"])

    @property
    def max_seconds(self) -> float | None:
        """Length of the centred excerpt embedded per file (None: whole files)."""
        value = self.dataset.get("max_seconds")
        return None if value is None else float(value)

    def _decoder(self):
        """(decode function, its settings) for ``data_prep.build.decode_in_order``."""
        from data_prep.build import DecodeSettings, decode_track

        min_seconds = float((self.dataset.get("extra") or {}).get("min_seconds", DEFAULT_MIN_SECONDS))
        if self.name == "rnn":
            hop = int(self.params.get("hop_length", self.module.DEFAULT_PARAMS["hop_length"]))
            return decode_chroma, ChromaSettings(sample_rate=self.sample_rate, hop_length=hop,
                                                 max_seconds=self.max_seconds)
        return decode_track, DecodeSettings(sample_rate=self.sample_rate, pool_size=self.pool_size,
                                            max_seconds=self.max_seconds, min_seconds=min_seconds)

    @property
    def estimator(self):
        """The run's estimator (built once), reading ``model_dir``'s checkpoints."""
        if self._estimator is None:
            from musicsim import training

            self._estimator = training.make_estimator(model=self.name, model_dir=self.model_dir,
                                                      params=self.params, seed=int(self.config.get("seed", 0)))
        return self._estimator

    def iter_embeddings(self, *, paths: Sequence[str], batch_size: int = 8, workers: int | None = None
                        ) -> Iterator[EmbedResult]:
        import tensorflow as tf
        from data_prep.build import decode_in_order

        paths = _check_paths(paths)
        _check_batching(batch_size=batch_size, workers=workers)
        if not paths:
            return
        decode, settings = self._decoder()
        workers = int(workers or os.cpu_count() or 1)
        failures: dict[int, str] = {}
        channels = self.channels

        def generate():
            # Runs in TF's input thread: the decoding processes work ahead of the model.
            for index, result in enumerate(decode_in_order(paths, settings=settings, workers=workers,
                                                           decode=decode)):
                if result.pooled is None:
                    failures[index] = result.reason or "could not be decoded"
                    continue
                sequence = np.asarray(result.pooled, dtype=np.float32).reshape(-1, channels)
                yield {"audio": sequence, "length": np.int32(sequence.shape[0]), "track_id": str(index)}

        signature = {"audio": tf.TensorSpec([None, channels], tf.float32), "length": tf.TensorSpec([], tf.int32),
                     "track_id": tf.TensorSpec([], tf.string)}

        def input_fn(params=None):
            dataset = tf.data.Dataset.from_generator(generate, output_signature=signature)
            return dataset.padded_batch(int(batch_size)).prefetch(2)

        next_index = 0
        for prediction in self.estimator.predict(input_fn, checkpoint_path=self.checkpoint,
                                                 yield_single_examples=True):
            index = int(prediction["track_id"].decode())
            # The generator handled every earlier file before this one, so their failures are known.
            for skipped in range(next_index, index):
                yield skipped, None, failures.get(skipped, "no embedding was returned")
            yield index, np.asarray(prediction["embedding"], dtype=np.float32), None
            next_index = index + 1
        for skipped in range(next_index, len(paths)):
            yield skipped, None, failures.get(skipped, "no embedding was returned")


class FittedEmbedder(Embedder):
    """A fitted model (librosa, mfcc) saved in the run directory."""

    kind = "fitted"

    def __init__(self, *, model_dir: str, info: dict[str, Any]):
        self.model_dir = os.path.abspath(model_dir)
        self.name = str(info["model"])
        self.model = registry.fitted_class(self.name).load(self.model_dir)
        self.similarity = str(self.model.similarity)
        self.model.progress = False
        cache_dir = self.model.cache_dir
        if cache_dir and not os.path.isdir(os.path.dirname(os.path.abspath(cache_dir))):
            self.model.cache_dir = None  # the run's dataset has moved: extract without a cache

    @property
    def dim(self) -> int:
        return int(self.model.dim)

    @property
    def version(self) -> str:
        from musicsim.models.fitted import ARRAYS_FILE

        stat = os.stat(os.path.join(self.model_dir, ARRAYS_FILE))
        return f"{ARRAYS_FILE}:{stat.st_size}:{stat.st_mtime_ns}"

    def iter_embeddings(self, *, paths: Sequence[str], batch_size: int = 8, workers: int | None = None
                        ) -> Iterator[EmbedResult]:
        paths = _check_paths(paths)
        _check_batching(batch_size=batch_size, workers=workers)
        self.model.workers = workers
        for start in range(0, len(paths), FITTED_CHUNK):
            chunk = paths[start:start + FITTED_CHUNK]
            vectors, ok_indices, skipped = self.model.embed_paths(paths=chunk)
            row_of = {index: row for row, index in enumerate(ok_indices)}
            reasons = iter(reason for _, reason in skipped)
            for offset in range(len(chunk)):
                if offset in row_of:
                    yield start + offset, np.asarray(vectors[row_of[offset]], dtype=np.float32), None
                else:
                    yield start + offset, None, next(reasons, "could not be embedded")


def load_embedder(model_dir: str) -> Embedder:
    """The embedder of a finished run (``experiments.run``) or a saved fitted model.

    Raises
    ------
    FileNotFoundError
        If ``model_dir`` holds no run, or a learned run without a checkpoint.
    ValueError
        For a baseline run (random / worst embed nothing) or an unknown model.
    """
    model_dir = os.fspath(model_dir)
    info = read_run_info(model_dir)
    kind = registry.kind_of(str(info["model"]))
    if kind == "learned":
        return LearnedEmbedder(model_dir=model_dir, info=info)
    if kind == "fitted":
        return FittedEmbedder(model_dir=model_dir, info=info)
    raise ValueError(f"{model_dir} is a {info['model']!r} baseline run: baselines only exist inside the "
                     "evaluation protocol and embed no audio")


def file_duration(path: str) -> float | None:
    """A file's duration in seconds from its header; None when the header cannot be read."""
    from musicsim.audio import AudioDecodeError, audio_info

    try:
        seconds = audio_info(path).duration
    except AudioDecodeError:
        return None
    return seconds if math.isfinite(seconds) and seconds > 0 else None
