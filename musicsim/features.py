"""Hand-made music-information-retrieval features (paper 4.1 "Librosa Model") and their extraction.

Per track, every feature below is a matrix ``[rows, frames]``; each row is reduced over time to
seven statistics (mean, median, min, max, std, skewness, kurtosis), so a track becomes one
fixed-length vector whatever its length.

==================  ====  ==========================================
feature             rows  computed from
==================  ====  ==========================================
zcr                  1    the signal (framed)
chroma_cqt          12    the CQT (36 bins per octave, 7 octaves)
chroma_cens         12    the same CQT
tonnetz              6    chroma_cqt
chroma_stft         12    the power STFT
rms                  1    the signal (framed)
spectral_centroid    1    the magnitude STFT
spectral_bandwidth   1    the magnitude STFT
spectral_contrast    7    the magnitude STFT (6 bands + valley row)
spectral_rolloff     1    the magnitude STFT
melspectrogram_db  128    the power STFT, in dB
mfcc                20    the mel spectrogram in dB
==================  ====  ==========================================

The mel spectrogram is summarised in dB: statistics of raw power are dominated by a few loud
frames and made album retrieval worse (devcorpus, 10 albums, nearest-neighbour album accuracy
0.43 with power vs 0.49 with dB; synthetic albums 61/72 vs 72/72).

`librosa_features` computes one STFT and one CQT per track and hands them to every librosa
function that accepts them; `reference_librosa_features` calls each librosa function on the
signal alone, as a textbook would, and exists to prove the two agree (tests, benchmark).

Chromagrams, the LSTM's input (paper 4.2), are features too: ``musicsim.chroma``.

`extract_many` runs a feature function over many files in a process pool, with a per-track cache
(`FeatureCache`); `extract_one` computes (and caches) one file's vector, as other runners (Beam) do.
"""
from __future__ import annotations

import concurrent.futures
import hashlib
import json
import multiprocessing
import os
import warnings
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import librosa
import numpy as np
import scipy.stats
from tqdm.auto import tqdm

from musicsim.atomic import atomic_path
from musicsim.data.audio import AudioDecodeError, MeasuredBlocks, iter_excerpt_blocks, load_excerpt
from musicsim.workers import exit_with_parent

DEFAULT_SAMPLE_RATE = 22050
N_FFT = 2048
HOP_LENGTH = 512
# librosa's chroma_cqt defaults: 3 bins per semitone over 7 octaves from C1.
CQT_BINS_PER_OCTAVE = 36
CQT_OCTAVES = 7
N_MFCC = 20
N_MELS = 128

STATISTICS = ("mean", "median", "min", "max", "std", "skew", "kurtosis")
# (feature name, number of rows), in the order they appear in the feature vector.
FEATURE_ROWS = (
    ("zcr", 1),
    ("chroma_cqt", 12),
    ("chroma_cens", 12),
    ("tonnetz", 6),
    ("chroma_stft", 12),
    ("rms", 1),
    ("spectral_centroid", 1),
    ("spectral_bandwidth", 1),
    ("spectral_contrast", 7),
    ("spectral_rolloff", 1),
    ("melspectrogram_db", N_MELS),
    ("mfcc", N_MFCC),
)
# Bump when a feature's computation changes, so cached vectors from the old code are not reused.
FEATURES_VERSION = 2


def summary_statistics(*, frames: np.ndarray) -> np.ndarray:
    """Reduce each row of a feature matrix over time to seven statistics.

    Parameters
    ----------
    frames : np.ndarray, shape ``[f, t]``, t >= 1
        One feature row per line, one frame per column.

    Returns
    -------
    np.ndarray, float64, shape ``[7 * f]``
        Row-major: row 0's mean, median, min, max, std, skewness, kurtosis, then row 1's, ...
        Skewness is the biased sample skewness, kurtosis the biased excess (Fisher) kurtosis,
        as `scipy.stats` computes them; both are 0 for a constant row, whose moments ratio
        would otherwise be 0/0.
    """
    frames = np.asarray(frames, dtype=np.float64)
    if frames.ndim != 2:
        raise ValueError(f"frames must be a 2-D [features, time] matrix, got shape {frames.shape}")
    if frames.shape[1] == 0:
        raise ValueError("frames has no time frames (shape [f, 0]); cannot summarise an empty signal")
    if not np.all(np.isfinite(frames)):
        raise ValueError("frames has non-finite values")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # scipy warns about the constant rows fixed below
        skew = scipy.stats.skew(frames, axis=1)
        kurtosis = scipy.stats.kurtosis(frames, axis=1)
    # scipy returns NaN for a (numerically) constant row, its moment ratio being 0/0: such a row
    # has no asymmetry and no tails, so 0 for both.
    skew = np.where(np.isfinite(skew), skew, 0.0)
    kurtosis = np.where(np.isfinite(kurtosis), kurtosis, 0.0)
    stats = np.stack([frames.mean(axis=1), np.median(frames, axis=1), frames.min(axis=1),
                      frames.max(axis=1), frames.std(axis=1), skew, kurtosis], axis=1)  # [f, 7]
    return stats.reshape(-1)


def feature_names() -> list[str]:
    """Name of each dimension of `librosa_features`' vector: ``"<feature>_<row>_<statistic>"``.

    Returns
    -------
    list[str], length ``7 * 202`` (= 1414)
        e.g. ``"mfcc_03_kurtosis"``; rows are numbered from 0 within their feature.
    """
    return [f"{feature}_{row:02d}_{stat}"
            for feature, rows in FEATURE_ROWS for row in range(rows) for stat in STATISTICS]


def _check_audio(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim != 1:
        raise ValueError(f"audio must be a 1-D mono signal, got shape {audio.shape}")
    if audio.size < N_FFT:
        raise ValueError(f"audio is too short: {audio.size} samples < one {N_FFT}-sample frame")
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    if not np.all(np.isfinite(audio)):
        raise ValueError("audio has non-finite samples")
    return audio


def _vector(matrices: dict[str, np.ndarray]) -> np.ndarray:
    """Concatenate the summary statistics of each feature matrix in `FEATURE_ROWS` order."""
    parts = []
    for feature, rows in FEATURE_ROWS:
        frames = matrices[feature]
        if frames.shape[0] != rows:
            raise AssertionError(f"{feature} has {frames.shape[0]} rows, expected {rows}")
        parts.append(summary_statistics(frames=frames))
    return np.concatenate(parts)


def librosa_features(*, audio: np.ndarray, sample_rate: int = DEFAULT_SAMPLE_RATE) -> np.ndarray:
    """The paper's librosa feature vector of one track, sharing one STFT and one CQT.

    Equal to `reference_librosa_features` (same librosa calls, same defaults) but each
    transform is computed once: the magnitude STFT feeds the spectral features and the CQT's
    tuning estimate, its square feeds chroma_stft and the mel spectrogram, the mel spectrogram
    in dB feeds the MFCC, the CQT feeds chroma_cqt and chroma_cens, chroma_cqt feeds tonnetz.

    Parameters
    ----------
    audio : np.ndarray, float32, shape ``[n]``, n >= 2048
        Mono signal.
    sample_rate : int
        Its rate in Hz.

    Returns
    -------
    np.ndarray, float64, shape ``[len(feature_names())]``
    """
    y = _check_audio(audio, sample_rate)
    sr = sample_rate
    magnitude = np.abs(librosa.stft(y, n_fft=N_FFT, hop_length=HOP_LENGTH))  # [1025, t]
    power = magnitude ** 2
    # chroma_cqt would estimate tuning from its own STFT of y (piptrack's defaults: n_fft 2048,
    # hop 512, magnitude): that is this very magnitude STFT.
    tuning = librosa.estimate_tuning(S=magnitude, sr=sr, n_fft=N_FFT, bins_per_octave=CQT_BINS_PER_OCTAVE)
    cqt = np.abs(librosa.cqt(y, sr=sr, hop_length=HOP_LENGTH, n_bins=CQT_OCTAVES * CQT_BINS_PER_OCTAVE,
                             bins_per_octave=CQT_BINS_PER_OCTAVE, tuning=tuning))  # [252, t]
    # bins_per_octave must match the CQT's, or the bins map to the wrong pitch classes.
    chroma_cqt = librosa.feature.chroma_cqt(C=cqt, sr=sr, bins_per_octave=CQT_BINS_PER_OCTAVE)
    mel_db = librosa.power_to_db(librosa.feature.melspectrogram(S=power, sr=sr, n_mels=N_MELS))
    matrices = {
        "zcr": librosa.feature.zero_crossing_rate(y, frame_length=N_FFT, hop_length=HOP_LENGTH),
        "chroma_cqt": chroma_cqt,
        "chroma_cens": librosa.feature.chroma_cens(C=cqt, sr=sr, bins_per_octave=CQT_BINS_PER_OCTAVE),
        "tonnetz": librosa.feature.tonnetz(chroma=chroma_cqt, sr=sr),
        "chroma_stft": librosa.feature.chroma_stft(S=power, sr=sr),
        # Time-domain RMS of the framed signal: cheap, and what rms(y=) gives (rms(S=) from a
        # Hann-windowed STFT is a different quantity).
        "rms": librosa.feature.rms(y=y, frame_length=N_FFT, hop_length=HOP_LENGTH),
        "spectral_centroid": librosa.feature.spectral_centroid(S=magnitude, sr=sr),
        "spectral_bandwidth": librosa.feature.spectral_bandwidth(S=magnitude, sr=sr),
        "spectral_contrast": librosa.feature.spectral_contrast(S=magnitude, sr=sr),
        "spectral_rolloff": librosa.feature.spectral_rolloff(S=magnitude, sr=sr),
        "melspectrogram_db": mel_db,
        "mfcc": librosa.feature.mfcc(S=mel_db, sr=sr, n_mfcc=N_MFCC),
    }
    return _vector(matrices)


def reference_librosa_features(*, audio: np.ndarray, sample_rate: int = DEFAULT_SAMPLE_RATE) -> np.ndarray:
    """The same vector as `librosa_features`, one librosa call on the signal per feature.

    Every call computes its own STFT or CQT (eight STFTs and three CQTs per track). Used only to
    prove `librosa_features` equal and to measure its speed-up.

    Parameters
    ----------
    audio : np.ndarray, float32, shape ``[n]``, n >= 2048
    sample_rate : int

    Returns
    -------
    np.ndarray, float64, shape ``[len(feature_names())]``
    """
    y = _check_audio(audio, sample_rate)
    sr = sample_rate
    matrices = {
        "zcr": librosa.feature.zero_crossing_rate(y),
        "chroma_cqt": librosa.feature.chroma_cqt(y=y, sr=sr),
        "chroma_cens": librosa.feature.chroma_cens(y=y, sr=sr),
        "tonnetz": librosa.feature.tonnetz(y=y, sr=sr),
        "chroma_stft": librosa.feature.chroma_stft(y=y, sr=sr),
        "rms": librosa.feature.rms(y=y),
        "spectral_centroid": librosa.feature.spectral_centroid(y=y, sr=sr),
        "spectral_bandwidth": librosa.feature.spectral_bandwidth(y=y, sr=sr),
        "spectral_contrast": librosa.feature.spectral_contrast(y=y, sr=sr),
        "spectral_rolloff": librosa.feature.spectral_rolloff(y=y, sr=sr),
        "melspectrogram_db": librosa.power_to_db(librosa.feature.melspectrogram(y=y, sr=sr)),
        "mfcc": librosa.feature.mfcc(y=y, sr=sr, n_mfcc=N_MFCC),
    }
    return _vector(matrices)


def mfcc_mean_std(*, audio: np.ndarray, sample_rate: int = DEFAULT_SAMPLE_RATE,
                  n_mfcc: int = N_MFCC) -> np.ndarray:
    """Mean and standard deviation over time of the MFCCs: the classic timbre baseline.

    Parameters
    ----------
    audio : np.ndarray, float32, shape ``[n]``, n >= 2048
    sample_rate : int
    n_mfcc : int >= 1

    Returns
    -------
    np.ndarray, float64, shape ``[2 * n_mfcc]``
        The ``n_mfcc`` means, then the ``n_mfcc`` standard deviations.
    """
    if n_mfcc < 1:
        raise ValueError(f"n_mfcc must be >= 1, got {n_mfcc}")
    y = _check_audio(audio, sample_rate)
    mfcc = librosa.feature.mfcc(y=y, sr=sample_rate, n_mfcc=n_mfcc).astype(np.float64)  # [n_mfcc, t]
    return np.concatenate([mfcc.mean(axis=1), mfcc.std(axis=1)])


# Feature functions `extract_many` knows by name (models save the name, not the function).
FEATURE_FUNCTIONS: dict[str, Callable[..., np.ndarray]] = {
    "librosa": librosa_features,
    "mfcc": mfcc_mean_std,
}


def resolve_feature_fn(feature_fn: str | Callable[..., np.ndarray]) -> tuple[str, Callable[..., np.ndarray]]:
    """(cache name, function) of a feature function given by name or as a top-level callable."""
    if isinstance(feature_fn, str):
        if feature_fn not in FEATURE_FUNCTIONS:
            raise ValueError(f"unknown feature function {feature_fn!r}: expected one of "
                             f"{sorted(FEATURE_FUNCTIONS)} or a callable")
        return feature_fn, FEATURE_FUNCTIONS[feature_fn]
    if not callable(feature_fn):
        raise ValueError(f"feature_fn must be a name or a callable, got {type(feature_fn).__name__}")
    qualname = getattr(feature_fn, "__qualname__", None)
    if qualname is None or "<" in qualname:  # lambdas and nested functions cannot go to a worker
        raise ValueError(f"feature_fn {feature_fn!r} must be a top-level function (picklable for the worker pool)")
    return f"{feature_fn.__module__}.{qualname}", feature_fn


@dataclass(frozen=True)
class FeatureCache:
    """A per-track cache of feature vectors, and of the files that have none, in ``cache_dir``.

    An entry is keyed on the file (absolute path, size, mtime) and on how its vector is computed
    (feature function name, decode rate, excerpt, window), so an edited file or other settings
    miss the cache. Entries are written atomically: concurrent workers and readers never see half
    a file.

    Parameters
    ----------
    cache_dir : str
        The cache folder (a dataset's is ``musicsim.data.dataset.feature_cache_dir``).
    feature_name : str
        The feature function's name (:func:`resolve_feature_fn`); one subfolder per name.
    sample_rate : int
    max_seconds : float or None
    window_seconds : float or None
    """

    cache_dir: str
    feature_name: str
    sample_rate: int
    max_seconds: float | None
    window_seconds: float | None = None

    def entry_paths(self, path: str) -> tuple[str, str]:
        """(features ``.npy``, failure ``.json``) of one file; raises OSError when it cannot be stat'ed."""
        stat = os.stat(path)
        parts = [os.path.abspath(path), stat.st_size, stat.st_mtime_ns, self.feature_name, int(self.sample_rate),
                 None if self.max_seconds is None else float(self.max_seconds), FEATURES_VERSION]
        if self.window_seconds is not None:  # only then: the keys of whole-excerpt entries stay what they were
            parts.append(["window_seconds", float(self.window_seconds)])
        digest = hashlib.sha1(json.dumps(parts).encode("utf-8")).hexdigest()
        folder = os.path.join(self.cache_dir,
                              "".join(c if c.isalnum() or c in "._-" else "_" for c in self.feature_name))
        return os.path.join(folder, digest + ".npy"), os.path.join(folder, digest + ".failed.json")

    def read(self, path: str) -> tuple[np.ndarray | None, str | None]:
        """(features, failure reason) of one file; both None on a miss, an unreadable entry or a missing file."""
        try:
            npy_path, failed_path = self.entry_paths(path)
        except OSError:
            return None, None
        if os.path.exists(npy_path):
            try:
                return np.load(npy_path, allow_pickle=False), None
            except (OSError, ValueError):
                return None, None  # a damaged entry is recomputed and overwritten
        if os.path.exists(failed_path):
            try:
                with open(failed_path) as f:
                    return None, str(json.load(f)["reason"])
            except (OSError, ValueError, KeyError):
                return None, None
        return None, None

    def write(self, path: str, features: np.ndarray) -> None:
        """Cache one file's feature vector."""
        npy_path, _ = self.entry_paths(path)

        def write(tmp: str) -> None:
            with open(tmp, "wb") as f:
                np.save(f, features, allow_pickle=False)

        _write_atomic(npy_path, write)

    def write_failure(self, path: str, reason: str) -> None:
        """Remember that a file cannot be used (until it changes); nothing when it cannot be stat'ed."""
        try:
            _, failed_path = self.entry_paths(path)
        except OSError:
            return

        def write(tmp: str) -> None:
            with open(tmp, "w") as f:
                json.dump({"path": path, "reason": reason}, f)

        _write_atomic(failed_path, write)


def _write_atomic(path: str, write: Callable[[str], None]) -> None:
    # Readers (and concurrent workers) never see half a file.
    with atomic_path(path, make_dirs=True) as temporary:
        write(temporary)


def windowed_features(*, path: str, feature_fn: Callable[..., np.ndarray], sample_rate: int,
                      max_seconds: float | None, window_seconds: float, min_seconds: float = 1.0) -> np.ndarray:
    """A file's feature vector computed a window at a time: the length-weighted mean of its windows'.

    The excerpt is decoded block by block (``musicsim.data.audio.iter_excerpt_blocks``) and cut into
    windows of ``window_seconds``; the last window takes the rest (one to two windows long), so an
    excerpt under two windows is computed in one piece, exactly as ``feature_fn`` on the whole
    excerpt. Longer ones differ from the whole: a mean over frames is the same, but the other
    statistics (median, min, max, std, skewness, kurtosis) and librosa's tuning estimate are those
    of each window, averaged. Memory is bounded by two windows, not by the file.

    Returns
    -------
    np.ndarray, float64, shape ``[dim]``

    Raises
    ------
    AudioDecodeError
        Naming the file and why it cannot be used (as ``musicsim.data.audio.load_excerpt``).
    """
    window = max(1, int(round(window_seconds * sample_rate)))
    buffer = np.zeros(0, np.float32)
    vectors, weights = [], []
    blocks = MeasuredBlocks(iter_excerpt_blocks(path, sample_rate=sample_rate, max_seconds=max_seconds),
                            path=path, sample_rate=sample_rate, min_seconds=min_seconds)
    for block in blocks:
        buffer = np.concatenate([buffer, block])
        while buffer.size >= 2 * window:  # keep at least a window back: the rest joins the last one
            vectors.append(np.asarray(feature_fn(audio=buffer[:window], sample_rate=sample_rate), np.float64))
            weights.append(window)
            buffer = buffer[window:]
    vectors.append(np.asarray(feature_fn(audio=buffer, sample_rate=sample_rate), np.float64))
    weights.append(buffer.size)
    return np.average(np.stack(vectors), axis=0, weights=np.asarray(weights, np.float64))


def extract_one(*, path: str, feature_fn: Callable[..., np.ndarray], sample_rate: int, max_seconds: float | None,
                window_seconds: float | None = None, cache: FeatureCache | None = None
                ) -> tuple[np.ndarray | None, str | None]:
    """(features float64 ``[dim]`` or None, failure reason or None) of one file; never raises for a bad file.

    The result is written to ``cache`` (a vector, or the reason of a file that is itself unusable);
    the cache is not read: see :meth:`FeatureCache.read`. ``window_seconds``: compute long excerpts
    a window at a time (:func:`windowed_features`).
    """
    try:
        if window_seconds is None:
            audio = load_excerpt(path=path, sample_rate=sample_rate, max_seconds=max_seconds)
            features = np.asarray(feature_fn(audio=audio, sample_rate=sample_rate), dtype=np.float64)
        else:
            features = windowed_features(path=path, feature_fn=feature_fn, sample_rate=sample_rate,
                                         max_seconds=max_seconds, window_seconds=window_seconds)
        if features.ndim != 1:
            raise ValueError(f"feature function returned shape {features.shape}, expected a vector")
        if not np.all(np.isfinite(features)):
            raise ValueError("feature vector has non-finite values")
    except AudioDecodeError as err:
        # The file itself is unusable: remembered (keyed on its size and mtime) so reruns skip it.
        if cache is not None:
            cache.write_failure(path, err.reason)
        return None, err.reason
    except Exception as err:  # noqa: BLE001 - one bad track must never stop a corpus run
        return None, f"feature extraction failed ({type(err).__name__}: {err})"
    if cache is not None:
        cache.write(path, features)
    return features, None


def _extract_indexed(index: int, path: str, feature_fn: Callable[..., np.ndarray], sample_rate: int,
                     max_seconds: float | None, window_seconds: float | None, cache: FeatureCache | None
                     ) -> tuple[int, np.ndarray | None, str | None]:
    """:func:`extract_one` with the file's index, positional: what the worker pool runs."""
    features, reason = extract_one(path=path, feature_fn=feature_fn, sample_rate=sample_rate,
                                   max_seconds=max_seconds, window_seconds=window_seconds, cache=cache)
    return index, features, reason


def _worker_context() -> multiprocessing.context.BaseContext:
    """Start method of the worker pool: a clean server process that imports this module once.

    Not fork: the caller may hold TensorFlow or BLAS threads a fork would break. Not plain spawn:
    every worker would import numpy, scipy and librosa again (seconds each, per run).
    """
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    # librosa loads its submodules lazily: preload the ones the features use. Ignored once the server runs.
    context.set_forkserver_preload([__name__, "librosa.feature", "librosa.core.spectrum", "librosa.core.constantq",
                                    "librosa.core.pitch"])
    return context


def check_extraction_settings(*, sample_rate: int, max_seconds: float | None, workers: int | None) -> None:
    """Raise ValueError for a non-positive sample rate or excerpt length, or fewer than one worker."""
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    if max_seconds is not None and max_seconds <= 0:
        raise ValueError(f"max_seconds must be positive or None, got {max_seconds}")
    if workers is not None and workers < 1:
        raise ValueError(f"workers must be >= 1 or None, got {workers}")


def extract_many(*, paths: Sequence[str], feature_fn: str | Callable[..., np.ndarray] = "librosa",
                 sample_rate: int = DEFAULT_SAMPLE_RATE, max_seconds: float | None = None,
                 workers: int | None = None, cache_dir: str | None = None,
                 progress: bool = True, window_seconds: float | None = None
                 ) -> tuple[np.ndarray, list[int], list[tuple[str, str]]]:
    """Feature vectors of many files, in parallel, cached per track; bad files are skipped.

    Parameters
    ----------
    paths : sequence of str, length n
    feature_fn : str or callable
        A name in `FEATURE_FUNCTIONS` (``"librosa"``, ``"mfcc"``) or a top-level function
        ``f(*, audio [n] float32, sample_rate) -> [dim]``.
    sample_rate : int > 0
        Decode rate in Hz.
    max_seconds : float > 0 or None
        Use the centred excerpt this long; ``None`` uses whole tracks.
    workers : int >= 1 or None
        Worker processes; ``None`` uses every core. 1 runs in this process.
    cache_dir : str or None
        Per-track cache, keyed on (path, file size, mtime, feature function, sample_rate,
        max_seconds): a rerun decodes nothing that is cached. Files that failed to decode are
        remembered too, until they change.
    progress : bool
        Show a tqdm progress bar.
    window_seconds : float > 0 or None
        Compute excerpts of two windows or more a window at a time, in bounded memory (see
        `windowed_features`); None computes each excerpt whole.

    Returns
    -------
    features : np.ndarray, float64, shape ``[n_ok, dim]`` (``[0, 0]`` when nothing succeeded)
    ok_indices : list[int], length n_ok
        Index into ``paths`` of each row, ascending.
    skipped : list[(path, reason)]
        The files that could not be used, in ``paths`` order.
    """
    feature_name, fn = resolve_feature_fn(feature_fn)
    check_extraction_settings(sample_rate=sample_rate, max_seconds=max_seconds, workers=workers)
    if window_seconds is not None and not window_seconds > 0:
        raise ValueError(f"window_seconds must be positive or None, got {window_seconds}")
    paths = [os.fspath(p) for p in paths]
    cache = None if cache_dir is None else FeatureCache(cache_dir=cache_dir, feature_name=feature_name,
                                                         sample_rate=sample_rate, max_seconds=max_seconds,
                                                         window_seconds=window_seconds)
    results = _cached_results(paths=paths, cache=cache)
    pending = [index for index in range(len(paths)) if index not in results]
    workers = min(workers or os.cpu_count() or 1, max(1, len(pending)))
    args = [(i, paths[i], fn, sample_rate, max_seconds, window_seconds, cache) for i in pending]
    with tqdm(total=len(paths), initial=len(results), disable=not progress, unit="track",
              desc=f"{feature_name} features") as bar:
        for index, features, reason in _extract_in_pool(args=args, workers=workers):
            results[index] = (features, reason)
            bar.update(1)

    ok_indices = [i for i in range(len(paths)) if results[i][0] is not None]
    skipped = [(paths[i], str(results[i][1])) for i in range(len(paths)) if results[i][0] is None]
    dims = {results[i][0].shape for i in ok_indices}
    if len(dims) > 1:
        raise ValueError(f"{feature_name} returned vectors of different shapes {sorted(dims)}")
    features = (np.stack([results[i][0] for i in ok_indices]) if ok_indices
                else np.zeros((0, 0), dtype=np.float64))
    return features, ok_indices, skipped


def _cached_results(*, paths: Sequence[str], cache: FeatureCache | None
                    ) -> dict[int, tuple[np.ndarray | None, str | None]]:
    """{index into ``paths``: (features, failure reason)} of the files ``cache`` already holds."""
    results: dict[int, tuple[np.ndarray | None, str | None]] = {}
    if cache is None:
        return results
    for index, path in enumerate(paths):
        if os.path.isfile(path):
            features, reason = cache.read(path)
            if features is not None or reason is not None:
                results[index] = (features, reason)
    return results


def _extract_in_pool(*, args: Sequence[tuple], workers: int
                     ) -> Iterator[tuple[int, np.ndarray | None, str | None]]:
    """(index, features, failure reason) of each :func:`_extract_indexed` argument tuple, as they finish.

    ``workers == 1`` runs in this process, in order; otherwise a worker that dies (out of memory,
    say) costs its file, not the run.
    """
    if workers == 1:
        for arg in args:
            yield _extract_indexed(*arg)
        return
    context = _worker_context()
    with concurrent.futures.ProcessPoolExecutor(max_workers=workers, mp_context=context,
                                                initializer=exit_with_parent, initargs=(os.getpid(),)) as pool:
        futures = {pool.submit(_extract_indexed, *arg): arg[0] for arg in args}
        for future in concurrent.futures.as_completed(futures):
            try:
                yield future.result()
            except Exception as err:  # noqa: BLE001 - a worker that died (e.g. out of memory)
                yield futures[future], None, f"worker failed ({type(err).__name__}: {err})"
