"""Distillation from whole tracks: random crops of a list of audio files, each paired with its teacher's vector.

Where :mod:`musicsim.pretraining.distillation` reads a prepared dataset's excerpts (in memory), this
module streams crops out of whole files of any length: a crop is decoded on its own (a seek into
the file, resampled and downmixed to the teacher's 16 kHz, `musicsim.data.audio.load_audio`), so memory is
bounded by the crops of one round whatever the files' length. Labels are never read.

- `audio_sources`: the usable files, each with its content hash (what the cache is keyed on) and
  duration; `held_out_split` sets whole tracks aside for the teacher agreement (never trained on).
- `draw_crops`: crop starts drawn uniformly over every second of the tracks (a seeded round each).
- `TargetCache`: the teacher's raw vector of one crop on disk, keyed by (teacher key, track content,
  crop start and length); atomic writes, bounded size, and an entry names its teacher (never read for
  another one).
- `make_teacher`: ``"pretrained"`` (`EngineTeacher`, the engine's one-pass vector) or one musicnn
  checkpoint (`musicsim.models.musicnn.MusicnnTeacher`).
- `crop_targets`: the teacher's vectors of crops, computed in batches for the cache's misses.
- `STUDENT_INPUTS`: what the student reads of a crop (8 kHz pooled or 16 kHz full band log-mel).
"""
from __future__ import annotations

import hashlib
import os
import zipfile
from dataclasses import dataclass
from typing import Callable, Iterator, Mapping, Sequence

import numpy as np
import soxr

from musicsim.atomic import atomic_open
from musicsim.data.audio import AudioDecodeError, audio_info, load_audio, mean_pool
from musicsim.models import musicnn
from musicsim.models.pretrained_engine import BLOCK_DIMS, PretrainedEngine

TEACHER_RATE = musicnn.SAMPLE_RATE  # crops are decoded at the teachers' rate; the student's input is derived
# 10 ms: crop starts are whole milliseconds (the cache key), drawn on a 10 ms grid.
START_GRID_MS = 10
DEFAULT_CACHE_BYTES = 2 * 1024 ** 3


class DistillStreamError(ValueError):
    """Bad distillation input (no usable audio, an unknown teacher or student input)."""


# -- the student's input -----------------------------------------------------------------------
@dataclass(frozen=True)
class StudentInput:
    """What the student reads of a crop decoded at 16 kHz: mean-pooled by ``pool_size``, then its log-mel.

    Attributes
    ----------
    name : the flag's value
    pool_size : mean-pooling window of the 16 kHz decode (as ``data_prep`` pools a dataset)
    params : the WaveNet front end's params (`musicsim.frontends.FrontendConfig` keys)
    """

    name: str
    pool_size: int
    params: Mapping

    @property
    def frame_rate(self) -> float:
        return TEACHER_RATE / float(self.pool_size)


STUDENT_INPUTS: dict[str, StudentInput] = {
    # The winning student: 8 kHz (hears up to 4 kHz), log-mel with the front end's 64 bands.
    "logmel8k": StudentInput(name="logmel8k", pool_size=2, params={"frontend": "logmel", "n_mels": 64}),
    # Full band: what the teacher hears (16 kHz, 96 mel bands like musicnn's).
    "logmel16k": StudentInput(name="logmel16k", pool_size=1, params={"frontend": "logmel", "n_mels": 96}),
}
DEFAULT_STUDENT_INPUT = "logmel8k"


def student_input(name: str) -> StudentInput:
    if name not in STUDENT_INPUTS:
        raise DistillStreamError(f"student input must be one of {list(STUDENT_INPUTS)}, got {name!r}")
    return STUDENT_INPUTS[name]


# -- the audio ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class AudioSource:
    """One usable file.

    Attributes
    ----------
    path : str
    content_hash : str
        sha1 of the file's bytes (40 hex): the cache's key, so a moved file keeps its targets and an
        edited one does not.
    seconds : float
        Duration from the header.
    """

    path: str
    content_hash: str
    seconds: float


def content_hash(path: str, *, chunk_bytes: int = 1 << 20) -> str:
    """sha1 of a file's bytes (40 hex), read a chunk at a time."""
    digest = hashlib.sha1()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(chunk_bytes), b""):
            digest.update(chunk)
    return digest.hexdigest()


def audio_sources(*, paths: Sequence[str], min_seconds: float) -> tuple[list[AudioSource], list[tuple[str, str]]]:
    """The files that can be cropped: readable audio of at least ``min_seconds``.

    Returns
    -------
    sources : list of AudioSource, in ``paths`` order
    skipped : list of (path, reason)
    """
    sources, skipped = [], []
    for path in paths:
        path = os.fspath(path)
        try:
            seconds = float(audio_info(path).duration)
        except AudioDecodeError as err:
            skipped.append((path, err.reason))
            continue
        except OSError as err:
            skipped.append((path, f"cannot read ({err.strerror or err})"))
            continue
        if not np.isfinite(seconds) or seconds < min_seconds:
            skipped.append((path, f"shorter than the {min_seconds:g} s crop ({seconds:.2f} s)"))
            continue
        sources.append(AudioSource(path=path, content_hash=content_hash(path), seconds=seconds))
    return sources, skipped


def held_out_split(*, sources: Sequence[AudioSource], fraction: float, minimum: int, seed: int
                   ) -> tuple[list[AudioSource], list[AudioSource]]:
    """(training sources, held-out sources): whole tracks set aside, chosen by content (not by order).

    The choice depends only on the files' contents and ``seed``: a rerun (resume) holds out the same
    tracks whatever order the files are listed in. At least one track always trains.
    """
    if len(sources) < 2:
        raise DistillStreamError(f"distillation needs at least 2 usable tracks (one trains, one is held out), "
                                 f"got {len(sources)}")
    count = min(len(sources) - 1, max(int(minimum), int(round(fraction * len(sources)))))
    ranked = sorted(sources, key=lambda s: hashlib.sha1(f"{seed}:{s.content_hash}".encode()).hexdigest())
    held = {s.content_hash for s in ranked[:count]}
    return [s for s in sources if s.content_hash not in held], [s for s in sources if s.content_hash in held]


@dataclass(frozen=True)
class Crop:
    """``crop_ms`` milliseconds of ``source`` from ``start_ms``."""

    source: AudioSource
    start_ms: int
    crop_ms: int

    @property
    def start_seconds(self) -> float:
        return self.start_ms / 1000.0


def draw_crops(*, sources: Sequence[AudioSource], crop_seconds: float, count: int, rng: np.random.Generator
               ) -> list[Crop]:
    """``count`` crops drawn uniformly over every second of the tracks (a longer track gives more crops).

    Each crop lies wholly inside its track; its start is on a `START_GRID_MS` grid.
    """
    crop_ms = int(round(crop_seconds * 1000))
    spans = np.array([max(int(s.seconds * 1000) - crop_ms, 0) for s in sources], dtype=np.float64)
    # Every start position equally likely: a track's chance is its number of start positions.
    weights = spans + START_GRID_MS
    chosen = rng.choice(len(sources), size=int(count), p=weights / weights.sum())
    crops = []
    for index in chosen:
        slots = int(spans[index]) // START_GRID_MS
        crops.append(Crop(source=sources[int(index)], start_ms=int(rng.integers(0, slots + 1)) * START_GRID_MS,
                          crop_ms=crop_ms))
    return crops


def spread_crops(*, sources: Sequence[AudioSource], crop_seconds: float, per_track: int) -> list[Crop]:
    """``per_track`` crops of each track spread evenly over all of it (first at 0, last at its end): the
    fixed held-out crops."""
    crop_ms = int(round(crop_seconds * 1000))
    crops = []
    for source in sources:
        span = max(int(source.seconds * 1000) - crop_ms, 0)
        starts = np.linspace(0, span, int(per_track)) if per_track > 1 else np.array([span / 2])
        for start in sorted({int(s) // START_GRID_MS * START_GRID_MS for s in starts}):
            crops.append(Crop(source=source, start_ms=start, crop_ms=crop_ms))
    return crops


def read_crop(crop: Crop) -> np.ndarray:
    """The crop at the teachers' 16 kHz, mono: float32 ``[round(crop_ms * 16)]`` (zero-padded at a short end).

    Only the crop's frames are decoded (`musicsim.data.audio.load_audio` seeks to it).

    Raises
    ------
    AudioDecodeError
        Naming the file when it cannot be decoded.
    """
    samples = int(round(crop.crop_ms * TEACHER_RATE / 1000))
    audio = load_audio(crop.source.path, sample_rate=TEACHER_RATE, offset=crop.start_seconds,
                       duration=crop.crop_ms / 1000.0, min_seconds=0.0, reject_silence=False)
    audio = np.asarray(audio, dtype=np.float32)[:samples]
    if audio.size < samples:
        audio = np.pad(audio, (0, samples - audio.size))
    return audio


def student_audio(audio: np.ndarray, *, student: StudentInput) -> np.ndarray:
    """The student's input of a 16 kHz crop: float32 ``[T, 1]`` at ``student.frame_rate``."""
    return mean_pool(audio, size=student.pool_size).astype(np.float32)[:, None]


# -- the teachers --------------------------------------------------------------------------------
class EngineTeacher:
    """The pretrained engine's one-pass vector of in-memory crops (`musicsim.models.pretrained_engine`).

    The engine's blocks' means over the crop's 3 s patches, concatenated in the engine's order; its
    per-dimension weights (`PretrainedEngine.dimension_weights`) are `target_weights`, applied after the
    targets are standardised, as the engine applies them after its z-score.
    """

    def __init__(self, *, blocks: Sequence[Sequence] | None = None, pretrained_cache: str | None = None):
        self.engine = PretrainedEngine(blocks=blocks, pretrained_cache=pretrained_cache, max_patches=None,
                                       progress=False)

    @property
    def key(self) -> str:
        return f"engine-{self.engine.version}"

    @property
    def dim(self) -> int:
        return self.engine.dim

    @property
    def target_weights(self) -> np.ndarray:
        """float64 ``[dim]``: the engine's dimension weights, scaled to a root mean square of 1."""
        weights = self.engine.dimension_weights()
        return weights / np.sqrt(np.mean(np.square(weights)))

    def __call__(self, *, crops: Sequence[np.ndarray], frame_rate: float) -> np.ndarray:
        """``[len(crops), dim]`` float32: the engine's raw (unstandardised) vector of each crop at ``frame_rate``."""
        patches, owners = [], []
        for index, crop in enumerate(crops):
            audio = np.asarray(crop, dtype=np.float32)
            audio = audio.mean(axis=1) if audio.ndim == 2 else audio
            if float(frame_rate) != TEACHER_RATE:
                audio = soxr.resample(audio, float(frame_rate), TEACHER_RATE, quality="HQ").astype(np.float32)
            for block in musicnn.iter_patch_blocks(blocks=[audio]):
                patches.append(block)
                owners.extend([index] * block.shape[0])
        owners = np.asarray(owners, dtype=np.int64)
        sums = {(c, l): np.zeros((len(crops), self._dim(c, l))) for c, l, _ in self.engine.blocks}
        if patches:
            outputs = self.engine.networks(patches=np.concatenate(patches))
            for block, total in sums.items():
                np.add.at(total, owners, outputs[block].astype(np.float64))
        counts = np.maximum(np.bincount(owners, minlength=len(crops)), 1)[:, None]
        return np.concatenate([sums[(c, l)] / counts for c, l, _ in self.engine.blocks], axis=1).astype(np.float32)

    @staticmethod
    def _dim(checkpoint: str, layer: str) -> int:
        return BLOCK_DIMS[(checkpoint, layer)]


TEACHERS = ("pretrained",) + tuple(musicnn.ARCHITECTURES)


def make_teacher(name: str, *, layer: str = "penultimate", pretrained_cache: str | None = None):
    """``"pretrained"``: `EngineTeacher`; a musicnn checkpoint name: its `MusicnnTeacher` of ``layer``."""
    if name == "pretrained":
        return EngineTeacher(pretrained_cache=pretrained_cache)
    if name in musicnn.ARCHITECTURES:
        return musicnn.MusicnnTeacher(checkpoint=name, layer=layer, pretrained_cache=pretrained_cache)
    raise DistillStreamError(f"teacher must be one of {list(TEACHERS)}, got {name!r}")


def target_weights(teacher) -> np.ndarray | None:
    """The teacher's per-dimension weights after standardisation (None: all 1)."""
    weights = getattr(teacher, "target_weights", None)
    return None if weights is None else np.asarray(weights, dtype=np.float64)


# -- the cache -----------------------------------------------------------------------------------
def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in text)


class TargetCache:
    """The teacher's raw vector of each crop, one small file per (teacher, track content, crop).

    ``root/<teacher key>-<sha1 of the key>/<hash[:2]>/<hash>-<start ms>-<length ms>.npz`` holding the
    teacher key and the vector. Written temp-then-rename (a kill leaves no partial entry under its
    name); an entry whose recorded key is not this teacher's, or whose shape is wrong, is a miss. At
    most ``max_bytes`` of entries are written (beyond, targets are computed and not stored).

    Parameters
    ----------
    root : str
    teacher_key : str
    dim : int
    max_bytes : int
    """

    def __init__(self, *, root: str, teacher_key: str, dim: int, max_bytes: int = DEFAULT_CACHE_BYTES):
        self.root, self.teacher_key, self.dim, self.max_bytes = os.fspath(root), str(teacher_key), int(dim), int(max_bytes)
        self.folder = os.path.join(self.root, f"{_safe(self.teacher_key)[:80]}-"
                                              f"{hashlib.sha1(self.teacher_key.encode()).hexdigest()[:12]}")
        self._bytes: int | None = None

    def path(self, crop: Crop) -> str:
        digest = crop.source.content_hash
        return os.path.join(self.folder, digest[:2], f"{digest}-{crop.start_ms}-{crop.crop_ms}.npz")

    def get(self, crop: Crop) -> np.ndarray | None:
        """The cached raw vector float32 ``[dim]``, or None (a miss, or an entry that is not this teacher's)."""
        try:
            with np.load(self.path(crop), allow_pickle=False) as entry:
                if str(entry["teacher"]) != self.teacher_key:
                    return None
                value = np.asarray(entry["target"], dtype=np.float32)
        except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile):
            return None
        return value if value.shape == (self.dim,) and np.all(np.isfinite(value)) else None

    def used_bytes(self) -> int:
        if self._bytes is None:
            total = 0
            for folder, _, files in os.walk(self.folder):
                total += sum(os.path.getsize(os.path.join(folder, f)) for f in files if f.endswith(".npz"))
            self._bytes = total
        return self._bytes

    def put(self, crop: Crop, value: np.ndarray) -> bool:
        """Store one raw vector; False when the cache is full (nothing written)."""
        value = np.asarray(value, dtype=np.float32)
        if value.shape != (self.dim,):
            raise ValueError(f"teacher {self.teacher_key}: a target of shape {value.shape}, expected ({self.dim},)")
        if self.used_bytes() >= self.max_bytes:
            return False
        path = self.path(crop)
        with atomic_open(path, "wb", make_dirs=True) as f:
            np.savez(f, teacher=np.array(self.teacher_key), target=value)
        self._bytes = self.used_bytes() + os.path.getsize(path)
        return True


def crop_targets(*, crops: Sequence[Crop], teacher, cache: TargetCache | None, batch_crops: int = 32,
                 on_decode: Callable[[Crop], None] | None = None
                 ) -> tuple[list[np.ndarray], np.ndarray, list[tuple[Crop, str]]]:
    """Each crop's 16 kHz audio and its teacher's raw vector (cached, or computed in batches of misses).

    Parameters
    ----------
    crops : sequence of Crop
    teacher : a `musicsim.pretraining.Teacher` (``key``, ``dim``, ``__call__(crops=, frame_rate=)``)
    cache : TargetCache or None
    batch_crops : int >= 1
        Crops per teacher call.
    on_decode : called with each crop decoded (a test's witness of what audio was read)

    Returns
    -------
    audio : list of float32 ``[samples]`` at 16 kHz, the usable crops in order
    targets : float32 ``[len(audio), dim]``, row ``i`` the teacher's vector of ``audio[i]``
    failed : list of (crop, reason) that could not be decoded
    """
    audio, targets, failed, pending = [], [], [], []

    def flush():
        values = np.asarray(teacher(crops=[a for _, a in pending], frame_rate=TEACHER_RATE), dtype=np.float32)
        if values.shape != (len(pending), teacher.dim) or not np.all(np.isfinite(values)):
            raise ValueError(f"teacher {teacher.key} gave {values.shape} targets, expected finite "
                             f"{(len(pending), teacher.dim)}")
        for (slot, _), value in zip(pending, values):
            targets[slot] = value
            if cache is not None:
                cache.put(crops_kept[slot], value)
        pending.clear()

    crops_kept = []
    for crop in crops:
        try:
            samples = read_crop(crop)
        except AudioDecodeError as err:
            failed.append((crop, err.reason))
            continue
        if on_decode is not None:
            on_decode(crop)
        slot = len(audio)
        audio.append(samples)
        crops_kept.append(crop)
        cached = cache.get(crop) if cache is not None else None
        targets.append(cached)
        if cached is None:
            pending.append((slot, samples))
            if len(pending) >= batch_crops:
                flush()
    if pending:
        flush()
    stacked = np.stack(targets).astype(np.float32) if targets else np.zeros((0, teacher.dim), np.float32)
    return audio, stacked, failed


def iter_pairs(*, audio: Sequence[np.ndarray], targets: np.ndarray, student: StudentInput, endless: bool,
               seed: int = 0) -> Iterator[tuple[dict, np.ndarray]]:
    """(student features, target) elements: ``{"audio": [T, 1], "length"}``, float32 ``[dim]``.

    ``endless``: shuffled passes (seeded) for training; else each pair once, in order.
    """
    rng = np.random.default_rng(seed)
    while True:
        order = rng.permutation(len(audio)) if endless else range(len(audio))
        for i in order:
            features = student_audio(audio[int(i)], student=student)
            yield {"audio": features, "length": np.int32(features.shape[0])}, targets[int(i)]
        if not endless:
            return


def standardise_targets(raw: np.ndarray, *, mean: np.ndarray, scale: np.ndarray,
                        weights: np.ndarray | None) -> np.ndarray:
    """``((raw - mean) / scale) * weights``: float32, the student's targets."""
    values = (np.asarray(raw, np.float64) - mean) / scale
    if weights is not None:
        values = values * weights
    return values.astype(np.float32)


def fit_standardisation(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean, scale) float64 ``[dim]`` of raw targets; a constant dimension keeps scale 1."""
    raw = np.asarray(raw, np.float64)
    mean, scale = raw.mean(axis=0), raw.std(axis=0)
    return mean, np.where(scale > 1e-8, scale, 1.0)
