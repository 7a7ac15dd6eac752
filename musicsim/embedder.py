"""Embed audio files with any finished run: the front half of the search engine.

``load_embedder(model_dir)`` reads what ``experiments.run`` recorded about a run and rebuilds its
model, whatever its kind, behind one small interface::

    embedder = load_embedder("runs/wavenet-demo")
    embeddings, ok_indices, skipped = embedder.embed_paths(paths=["a.ogg", "b.mp3"])

- learned ``wavenet``: each file is decoded exactly as ``data_prep.build`` prepared the run's
  dataset (mono at its decode rate, the centred ``max_seconds`` excerpt, mean-pooled by its
  ``pool_size``), then embedded by batched ``estimator.predict`` from the run's exported
  checkpoint. Audio longer than a window (``window_seconds``) is embedded window by window, each
  window with the receptive field of audio before it, and the windows' pooled features are combined
  as the model pools time (max, or length-weighted mean) before the dense layers: the result equals
  the whole excerpt's embedding (up to float rounding), while memory is bounded by a window. Long
  files are also decoded block by block (``musicsim.data.audio.iter_audio_blocks``), short ones in
  worker processes;
- learned ``rnn``: the same decoding at ``chroma_sample_rate``, then the chromagram
  (``musicsim.chroma.chroma_sequence``), as ``rnn.load_tracks`` computes it. A long file's
  chromagram is computed a window at a time (each with an STFT frame of audio either side, so the
  frames are those of the whole file), then the LSTM reads it whole (12 values per frame, about
  1/2000 of the audio). Windowed differs from whole in one place: librosa estimates the tuning of
  each window rather than of the whole file;
- fitted (``librosa``, ``mfcc``): the saved ``FittedModel``'s own ``embed_paths`` (a long file's
  features are the length-weighted mean of its windows' feature vectors: means are exact, the
  other statistics and the tuning estimate are those of windows, not of the whole file).

``window_seconds`` is what the run recorded (``experiments.run --window_seconds``), else its
longer training length (``eval_seconds`` or ``crop_seconds``); ``load_embedder(...,
window_seconds=S)`` overrides it (0: whole files). So a track's vector equals the one the run
exported to ``embeddings.npz`` (when the run embedded whole excerpts, ``predict_seconds`` unset).
Files that cannot be used are skipped with their reason; they never stop a batch.
"""
from __future__ import annotations

import math
import os
from typing import Any, Iterator, Sequence

import numpy as np
import tensorflow as tf
from tqdm.auto import tqdm

from musicsim import models as registry
from musicsim.train.estimator import make_estimator
from musicsim.data.audio import AudioDecodeError, DecodeSettings, decode_track, file_duration, iter_pooled_blocks
from musicsim.chroma import ChromaSettings, decode_chroma
from musicsim.inputs import batched_input_fn, window_rows_input_fn
from musicsim.models.fitted import ARRAYS_FILE
from musicsim.models.pretrained_engine import raw_engine
from musicsim.rundir import RUN_FILE, RunDir, read_run_info
from musicsim.data.windows import WindowRow, iter_window_rows
from musicsim.workers import decode_in_order

DEFAULT_MIN_SECONDS = 1.0
# Files handed to a fitted model's embed_paths at a time: results stream out chunk by chunk.
FITTED_CHUNK = 64
# Excerpts longer than this are decoded block by block in this process instead of whole in a worker
# (a worker's result is held whole, and up to 4 per worker are in flight).
STREAM_ABOVE_SECONDS = 120.0
# Default window of the models whose windowed embedding differs from the whole one (rnn, fitted).
INEXACT_MIN_WINDOW_SECONDS = 120.0

# What an index built by the default engine records as its model_dir: no folder, the engine in the code.
DEFAULT_ENGINE_DIR = "builtin:pretrained"

EmbedResult = tuple[int, "np.ndarray | None", "str | None"]  # (index into paths, vector [D] or None, reason)


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
        The run directory (absolute); the built-in engine's: ``"builtin:pretrained"``.
    window_seconds : float or None
        Long audio is embedded this many seconds at a time (None: whole excerpts).
    catalog_weights : np.ndarray, float64, shape ``[D]``, or None
        Per-dimension multipliers an index applies after standardising over its catalog (the
        engine's `PretrainedEngine.dimension_weights`); None for other models.
    """

    name: str
    kind: str
    similarity: str
    model_dir: str
    window_seconds: float | None = None
    catalog_weights: np.ndarray | None = None

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
        """JSON-friendly summary: name, kind, similarity, dim, model_dir, version, window_seconds."""
        return {"name": self.name, "kind": self.kind, "similarity": self.similarity, "dim": self.dim,
                "model_dir": self.model_dir, "version": self.version, "window_seconds": self.window_seconds}

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


def default_window_seconds(config: dict[str, Any], *, exact: bool) -> float | None:
    """The window a run's long audio is embedded in; None: whole files.

    The run's recorded ``window_seconds``, else the longer of its training crop and eval length
    (the lengths the model learned from). For a model that is not ``exact`` over windows (rnn,
    fitted) at least ``INEXACT_MIN_WINDOW_SECONDS``, so ordinary tracks (under two windows, which
    are embedded in one piece) embed exactly as the run embedded them.
    """
    recorded = config.get("window_seconds")
    if recorded is not None:
        return float(recorded) if float(recorded) > 0 else None
    lengths = [float(config[key]) for key in ("eval_seconds", "crop_seconds") if config.get(key)]
    if not exact:
        lengths.append(INEXACT_MIN_WINDOW_SECONDS)
    return max(lengths) if lengths else None


def _resolve_window(config: dict[str, Any], override: float | None, *, exact: bool) -> float | None:
    if override is None:
        return default_window_seconds(config, exact=exact)
    if not math.isfinite(float(override)) or float(override) < 0:
        raise ValueError(f"window_seconds must be >= 0 (0: whole files), got {override!r}")
    return float(override) if float(override) > 0 else None


class LearnedEmbedder(Embedder):
    """A trained estimator run (wavenet or rnn), embedding from its exported checkpoint.

    ``window_seconds`` (see the module docstring): None embeds whole excerpts.
    """

    kind = "learned"

    def __init__(self, *, model_dir: str, info: dict[str, Any], window_seconds: float | None = None):
        self.model_dir = os.path.abspath(model_dir)
        self.name = str(info["model"])
        self.config = dict(info["config"])
        self.params = dict(self.config.get("params") or {})
        self.dataset = dict(info.get("dataset") or {})
        self.model = registry.entry(self.name)
        # Runs that did not record every hyperparameter ran with the model's defaults.
        self.params = {**self.model.default_params(), **self.params}
        self.similarity = str(self.params.get("similarity", "cosine"))
        # The checkpoint the run exported its embeddings with, so a file's vector equals its exported one.
        self.checkpoint = RunDir(self.model_dir).checkpoint() or tf.train.latest_checkpoint(self.model_dir)
        if self.checkpoint is None:
            raise FileNotFoundError(f"{self.model_dir} holds no checkpoint of its {self.name} model: "
                                    "has the run trained yet?")
        if self.model.embedding_variants is not None and self.params.get("rnn_embedding") == "all":
            raise ValueError(f"{self.model_dir}: the run did not record which {self.name} embedding it kept "
                             "(rnn_embedding='all'); has it finished?")
        spec = self.model.input
        needed = [("sample_rate", spec.decode_rate), ("pool_size", spec.pool_size)]
        for key in [key for key, own in needed if own is None and key not in self.dataset]:
            raise ValueError(f"{self.model_dir}/{RUN_FILE} does not record the dataset's {key}")
        self.window_seconds = _resolve_window(self.config, window_seconds, exact=self.model.windows is not None)
        self._estimator = None
        self._window_estimator = None

    @property
    def dim(self) -> int:
        return int(self.model.embedding_size(self.params))

    @property
    def version(self) -> str:
        return os.path.basename(self.checkpoint)

    @property
    def channels(self) -> int:
        """Channels of the model's input sequences: 1 (pooled audio) or 12 (chromagram)."""
        return int(self.model.input.channels)

    @property
    def sample_rate(self) -> int:
        """Decode rate of the audio, in Hz."""
        return self.model.input.sample_rate(params=self.params, dataset=self.dataset)

    @property
    def pool_size(self) -> int:
        """Mean-pooling window of the model's input (1 for a chromagram, whose input is not pooled audio)."""
        return self.model.input.pool(dataset=self.dataset)

    @property
    def frame_rate(self) -> float:
        """Steps per second of the model's input sequences."""
        return self.model.input.frame_rate(params=self.params, dataset=self.dataset)

    @property
    def max_seconds(self) -> float | None:
        """Length of the centred excerpt embedded per file (None: whole files)."""
        value = self.dataset.get("max_seconds")
        return None if value is None else float(value)

    @property
    def min_seconds(self) -> float:
        """Shortest excerpt the dataset accepted, in seconds."""
        return float((self.dataset.get("extra") or {}).get("min_seconds", DEFAULT_MIN_SECONDS))

    def _decoder(self):
        """(decode function, its settings) for ``musicsim.workers.decode_in_order``."""
        min_seconds = self.min_seconds
        if self.model.input.features == "chroma":
            hop = int(self.params["hop_length"])
            return decode_chroma, ChromaSettings(sample_rate=self.sample_rate, hop_length=hop,
                                                 max_seconds=self.max_seconds, window_seconds=self.window_seconds,
                                                 min_seconds=DEFAULT_MIN_SECONDS)
        return decode_track, DecodeSettings(sample_rate=self.sample_rate, pool_size=self.pool_size,
                                            max_seconds=self.max_seconds, min_seconds=min_seconds)

    @property
    def estimator(self):
        """The run's estimator (built once), reading ``model_dir``'s checkpoints."""
        if self._estimator is None:
            self._estimator = make_estimator(model=self.name, model_dir=self.model_dir,
                                                      params=self.params, seed=int(self.config.get("seed", 0)))
        return self._estimator

    def iter_embeddings(self, *, paths: Sequence[str], batch_size: int = 8, workers: int | None = None
                        ) -> Iterator[EmbedResult]:
        paths = _check_paths(paths)
        _check_batching(batch_size=batch_size, workers=workers)
        if not paths:
            return
        if self.model.windows is not None:
            yield from self._iter_windowed(paths=paths, batch_size=batch_size, workers=workers)
        else:
            yield from self._iter_whole(paths=paths, batch_size=batch_size, workers=workers)

    def _iter_whole(self, *, paths: list[str], batch_size: int, workers: int | None) -> Iterator[EmbedResult]:
        """Each file's sequence in one piece through ``estimator.predict`` (the rnn's chromagram)."""
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

        input_fn = batched_input_fn(generator=generate, signature=signature, batch_size=int(batch_size), prefetch=2)

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


    def _window_sizes(self) -> dict[str, int]:
        """``window``, ``context``, ``lookahead``, ``unit`` in pooled steps (``window`` 0: whole excerpts)."""
        params = dict(self.params)
        params.setdefault("input_sample_rate", self.frame_rate)
        geometry = self.model.windows.window_geometry(params)
        unit = geometry["unit"]
        window = 0
        if self.window_seconds is not None:
            steps = self.window_seconds * self.sample_rate / self.pool_size
            window = max(1, math.ceil(steps / unit)) * unit
        return {**geometry, "window": window}

    @property
    def window_estimator(self):
        """An estimator over the run's checkpoints whose PREDICT gives the model's ``window_features``."""
        if self._window_estimator is None:
            windows = self.model.windows

            def model_fn(features, labels, mode, params):
                pooled, count = windows.window_features(features["audio"], features["length"], features["skip"],
                                                        params=dict(params))
                return tf.estimator.EstimatorSpec(mode, predictions={
                    "features": pooled, "count": count, "index": features["index"], "last": features["last"]})

            self._window_estimator = make_estimator(model=self.name, model_dir=self.model_dir,
                                                             params=self.params, model_fn=model_fn,
                                                             seed=int(self.config.get("seed", 0)))
        return self._window_estimator

    def _window_rows(self, *, paths: list[str], workers: int | None, failures: dict[int, str]
                     ) -> Iterator[WindowRow]:
        """The window rows of every file in order (`musicsim.data.windows.iter_window_rows`); a file that fails
        gets its reason in ``failures`` (and a closing row when some of its windows were already given).

        Which files stream and the decoding processes are settled now; the rows are read as they are taken.
        """
        decode, settings = self._decoder()
        sizes = self._window_sizes()
        workers = int(workers or os.cpu_count() or 1)

        def excerpt_seconds(path: str) -> float:
            duration = file_duration(path)
            if duration is None:  # not audio, or a format only audioread reads: its length is unknown
                duration = math.inf if os.path.isfile(path) and os.path.getsize(path) > 0 else 0.0
            return duration if self.max_seconds is None else min(duration, self.max_seconds)

        streamed = {i for i, p in enumerate(paths) if excerpt_seconds(p) > STREAM_ABOVE_SECONDS}
        decoded = decode_in_order([p for i, p in enumerate(paths) if i not in streamed], settings=settings,
                                  workers=workers, decode=decode)

        def pooled_chunks(index: int) -> Iterator[np.ndarray]:
            if index in streamed:
                yield from iter_pooled_blocks(paths[index], sample_rate=self.sample_rate, pool_size=self.pool_size,
                                              max_seconds=self.max_seconds, min_seconds=self.min_seconds)
                return
            result = next(decoded)
            if result.pooled is None:
                raise AudioDecodeError(paths[index], result.reason or "could not be decoded")
            yield np.asarray(result.pooled, dtype=np.float32)

        def rows() -> Iterator[dict]:
            for index in range(len(paths)):
                window = sizes["window"]
                emitted = False
                try:
                    chunks = pooled_chunks(index)
                    if not window:  # whole excerpts: one row each
                        whole = np.concatenate(list(chunks))
                        found = [WindowRow(index=index, audio=whole, skip=0, last=True)] if whole.size else []
                    else:
                        found = iter_window_rows(index=index, chunks=chunks, window=window, context=sizes["context"],
                                                 lookahead=sizes["lookahead"], unit=sizes["unit"])
                    for row in found:
                        emitted = True
                        yield row
                except AudioDecodeError as err:
                    failures[index] = err.reason
                except Exception as err:  # noqa: BLE001 - one bad file must never stop a batch
                    failures[index] = f"{type(err).__name__}: {err}"
                if emitted and index in failures:
                    # Its windows are already on their way: a closing row tells the combiner to drop them.
                    yield WindowRow(index=index, audio=np.zeros(sizes["unit"], np.float32), skip=0, last=True)

        return rows()

    def _iter_windowed(self, *, paths: list[str], batch_size: int, workers: int | None) -> Iterator[EmbedResult]:
        """WaveNet over windows of each file, combined exactly (see the module docstring).

        Short excerpts are decoded in worker processes; longer ones (over ``STREAM_ABOVE_SECONDS``,
        or of unknown length) block by block here, while the workers decode ahead.
        """
        windows = self.model.windows
        failures: dict[int, str] = {}
        rows = self._window_rows(paths=paths, workers=workers, failures=failures)

        input_fn = window_rows_input_fn(rows=lambda: rows, batch_size=batch_size)

        dense = windows.dense_weights(self.params, checkpoint=self.checkpoint)
        next_index, parts = 0, []
        for prediction in self.window_estimator.predict(input_fn, checkpoint_path=self.checkpoint,
                                                        yield_single_examples=True):
            index = int(prediction["index"])
            for skipped in range(next_index, index):  # files that failed before giving a window
                yield skipped, None, failures.get(skipped, "no embedding was returned")
            next_index = index
            parts.append((np.asarray(prediction["features"], np.float32), int(prediction["count"])))
            if not bool(prediction["last"]):
                continue
            if index in failures:
                yield index, None, failures[index]
            else:
                pooled = windows.combine_windows(np.stack([f for f, _ in parts]), np.array([c for _, c in parts]),
                                                 params=self.params)
                vector = windows.apply_dense_layers(pooled[None, :], weights=dense)
                yield index, vector[0], None
            parts, next_index = [], index + 1
        for skipped in range(next_index, len(paths)):
            yield skipped, None, failures.get(skipped, "no embedding was returned")


class FittedEmbedder(Embedder):
    """A fitted model (librosa, mfcc) saved in the run directory."""

    kind = "fitted"

    def __init__(self, *, model_dir: str, info: dict[str, Any], window_seconds: float | None = None):
        self.model_dir = os.path.abspath(model_dir)
        self.name = str(info["model"])
        self.model = registry.fitted_class(self.name).load(self.model_dir, load_run=load_embedder)
        self.similarity = str(self.model.similarity)
        self.model.progress = False
        self.window_seconds = _resolve_window(dict(info.get("config") or {}), window_seconds, exact=False)
        self.model.window_seconds = self.window_seconds
        cache_dir = self.model.cache_dir
        if cache_dir and not os.path.isdir(os.path.dirname(os.path.abspath(cache_dir))):
            self.model.cache_dir = None  # the run's dataset has moved: extract without a cache

    @property
    def dim(self) -> int:
        return int(self.model.dim)

    @property
    def version(self) -> str:
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


class EngineEmbedder(Embedder):
    """The built-in one-pass engine (`musicsim.models.pretrained_engine.raw_engine`): no run, no fit.

    Its vectors are the engine's weighted raw block means; an index standardises them over its own
    catalog and applies `catalog_weights` (the engine's ``dimension_weights``).

    Parameters
    ----------
    **settings
        `PretrainedEngine` settings (default: the engine's blocks, whole tracks).
    """

    kind = "fitted"
    model_dir = DEFAULT_ENGINE_DIR

    def __init__(self, **settings: Any):
        self.model = raw_engine(**settings)
        self.name = self.model.name
        self.similarity = str(self.model.similarity)
        self.catalog_weights = self.model.dimension_weights()

    @property
    def dim(self) -> int:
        return int(self.model.dim)

    @property
    def version(self) -> str:
        return self.model.version

    def iter_embeddings(self, *, paths: Sequence[str], batch_size: int = 8, workers: int | None = None
                        ) -> Iterator[EmbedResult]:
        """One file at a time, in order (the engine's networks batch a track's patches, not tracks)."""
        paths = _check_paths(paths)
        _check_batching(batch_size=batch_size, workers=workers)
        for index, path in enumerate(paths):
            raw, reason = self.model.extract_one(path=path)
            if raw is None:
                yield index, None, str(reason)
            else:
                vector = self.model.embed_features(features=self.model.choose_blocks(raw[None, :]))[0]
                yield index, np.asarray(vector, dtype=np.float32), None


def default_embedder(**settings: Any) -> Embedder:
    """The default engine (``--model=pretrained`` with identity standardisation): what a scan indexes.

    ``settings`` are `PretrainedEngine`'s (e.g. ``cache_dir`` for a per-track feature cache).
    """
    return EngineEmbedder(**settings)


def load_embedder(model_dir: str, *, window_seconds: float | None = None) -> Embedder:
    """The embedder of a finished run (``experiments.run``) or a saved fitted model.

    ``window_seconds`` overrides the window long audio is embedded in (0: whole files; None: the
    run's, see `default_window_seconds`).

    Raises
    ------
    FileNotFoundError
        If ``model_dir`` holds no run, or a learned run without a checkpoint.
    ValueError
        For a baseline run (random / worst embed nothing) or an unknown model.
    """
    model_dir = os.fspath(model_dir)
    if model_dir == DEFAULT_ENGINE_DIR:  # a scanned library's index: the engine itself, no run folder
        return default_embedder()
    info = read_run_info(model_dir)
    kind = registry.kind_of(str(info["model"]))
    if kind == "learned":
        return LearnedEmbedder(model_dir=model_dir, info=info, window_seconds=window_seconds)
    if kind == "fitted":
        return FittedEmbedder(model_dir=model_dir, info=info, window_seconds=window_seconds)
    raise ValueError(f"{model_dir} is a {info['model']!r} baseline run: baselines only exist inside the "
                     "evaluation protocol and embed no audio")
