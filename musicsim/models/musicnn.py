"""A pretrained music tagger as a fitted model: musicnn's trained networks, re-implemented in TF 2.

musicnn (Pons & Serra, 2019; the ``musicnn`` 0.1.0 wheel, ISC licence) ships tagging networks
trained on the Million Song Dataset (``MSD_*``, 50 Last.fm tags) and on MagnaTagATune (``MTT_*``,
50 tags). Knowledge of far more music than any of the project's corpora holds: their penultimate
layer is a strong content descriptor for similarity. The weights come from the wheel
(`musicsim.pretrained`); the graph is this module's, restoring the checkpoint's variables by name.

Input (musicnn's ``configuration.py`` / ``extractor.py``): 16 kHz mono, a 512-point STFT with hop
256 (frames centred on ``k * 256``, zero padding at the ends), power spectrogram, 96 mel bands
(librosa's Slaney filters), ``log10(1 + 10000 * mel)``, in non-overlapping patches of 187 frames
(3 s). A track is read block by block (`musicsim.data.audio.iter_excerpt_blocks`) and its patches go
through the network a few at a time, so memory does not grow with the track; its embedding is the
mean over its patches of one layer:

- ``penultimate``: the 200-unit dense layer after batch-norm (musicnn), or the 256-d flattened
  last pooling (vgg);
- ``taggram``: the 50 tag probabilities;
- ``maxpool``: the back-end's max over time of the 753 front- and mid-end features (musicnn only).

The train split's mean and standard deviation standardise each dimension; tracks are compared by
cosine. Nothing is trained; batch-norm runs in inference mode. `MusicnnTeacher` gives the same
layer means for in-memory crops: the targets of distillation (`musicsim.pretraining`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Sequence

import librosa
import numpy as np
import soxr
import tensorflow as tf

from musicsim.data.audio import MeasuredBlocks, iter_excerpt_blocks
from musicsim.models.entry import FittedEntry
from musicsim.models.fitted import StandardisedModel
from musicsim.params import ParamsConfig, hyperparameter
from musicsim.pretrained import musicnn_checkpoint

SAMPLE_RATE = 16000
N_FFT = 512
HOP = 256
N_MELS = 96
LOG_SCALE = 10000.0
PATCH_FRAMES = 187  # 3 s: the length the networks were trained on
PATCH_SAMPLES = PATCH_FRAMES * HOP
# Patches per network call and per spectrogram: bounds memory (~0.1 GB of activations) whatever the track.
BLOCK_PATCHES = 8
BN_EPSILON = 1e-3  # tf.compat.v1.layers.batch_normalization's default, as trained
ARCHITECTURES = {"MSD_musicnn": "musicnn", "MTT_musicnn": "musicnn", "MSD_vgg": "vgg", "MTT_vgg": "vgg"}
LAYERS = ("penultimate", "taggram", "maxpool")
# The defaults of the model, of the distillation teacher and of their flags (`MusicnnConfig`).
DEFAULT_CHECKPOINT = "MSD_musicnn"
DEFAULT_LAYER = "penultimate"
LAYER_DIMS = {"musicnn": {"penultimate": 200, "taggram": 50, "maxpool": 753},
              "vgg": {"penultimate": 256, "taggram": 50}}
# Bump when the embedding of a file changes (cached features are keyed on it).
EMBEDDING_VERSION = 1


# -- the spectrogram ------------------------------------------------------------------------------
_MEL_BASIS: np.ndarray | None = None


def _mel_basis() -> np.ndarray:
    """librosa's mel filters ``[N_MELS, N_FFT // 2 + 1]`` (built once)."""
    global _MEL_BASIS
    if _MEL_BASIS is None:
        _MEL_BASIS = librosa.filters.mel(sr=SAMPLE_RATE, n_fft=N_FFT, n_mels=N_MELS).astype(np.float32)
    return _MEL_BASIS


def log_mel_frames(*, window: np.ndarray) -> np.ndarray:
    """Log-compressed mel frames of a signal, without centring: ``1 + (n - N_FFT) // HOP`` frames.

    Parameters
    ----------
    window : np.ndarray, float32, shape ``[n]``, n >= N_FFT

    Returns
    -------
    np.ndarray, float32, shape ``[frames, N_MELS]``
    """
    power = np.abs(librosa.stft(np.asarray(window, dtype=np.float32), n_fft=N_FFT, hop_length=HOP,
                                center=False)) ** 2
    return np.log10(1.0 + LOG_SCALE * (_mel_basis() @ power)).T.astype(np.float32)


def iter_patch_blocks(*, blocks: Iterable[np.ndarray], block_patches: int = BLOCK_PATCHES
                      ) -> Iterator[np.ndarray]:
    """Non-overlapping 3 s log-mel patches of a signal given in pieces, a few patches at a time.

    The patches are those of the whole signal's centred spectrogram (librosa's ``center=True``
    with zero padding: frame ``k`` covers samples ``[k * HOP - N_FFT / 2, k * HOP + N_FFT / 2)``)
    cut every ``PATCH_FRAMES`` frames, whatever the pieces' sizes. A last, incomplete patch is
    dropped, except for a signal shorter than one patch: its one patch is zero padded.

    Parameters
    ----------
    blocks : iterable of np.ndarray, float32, shape ``[n_i]``
        Consecutive pieces of a 16 kHz signal.
    block_patches : int >= 1
        Patches per yielded array.

    Yields
    ------
    np.ndarray, float32, shape ``[k, PATCH_FRAMES, N_MELS]``, 1 <= k <= block_patches
    """
    if block_patches < 1:
        raise ValueError(f"block_patches must be >= 1, got {block_patches}")
    half = N_FFT // 2
    # The buffer starts at sample ``emitted * PATCH_SAMPLES - half``: the centring's zero padding.
    buffer = np.zeros(half, dtype=np.float32)
    total, emitted = 0, 0
    span = block_patches * PATCH_SAMPLES + half
    for block in blocks:
        block = np.asarray(block, dtype=np.float32).reshape(-1)
        total += block.size
        buffer = np.concatenate([buffer, block])
        while buffer.size >= span:
            yield log_mel_frames(window=buffer[:span]).reshape(block_patches, PATCH_FRAMES, N_MELS)
            buffer = buffer[block_patches * PATCH_SAMPLES:]
            emitted += block_patches
    # librosa's centred spectrogram has 1 + total // HOP frames; whole patches only.
    remaining = max((1 + total // HOP) // PATCH_FRAMES, 1) - emitted
    if remaining > 0:
        needed = remaining * PATCH_SAMPLES + half
        window = np.zeros(needed, dtype=np.float32)
        window[:min(needed, buffer.size)] = buffer[:needed]
        yield log_mel_frames(window=window).reshape(remaining, PATCH_FRAMES, N_MELS)


# -- the network ----------------------------------------------------------------------------------
def read_checkpoint(prefix: str) -> dict[str, np.ndarray]:
    """Every non-optimiser variable of a TF1 checkpoint, by name."""
    reader = tf.compat.v1.train.NewCheckpointReader(prefix)
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()
            if "Adam" not in name and not name.startswith("beta")}


class MusicnnNetwork:
    """musicnn's ``musicnn`` or ``vgg`` tagger in inference mode, on weights read from its checkpoint.

    Parameters
    ----------
    weights : dict[str, np.ndarray]
        The checkpoint's variables by their TF1 names (`read_checkpoint`).
    architecture : {"musicnn", "vgg"}
    """

    def __init__(self, *, weights: dict[str, np.ndarray], architecture: str):
        if architecture not in LAYER_DIMS:
            raise ValueError(f"unknown architecture {architecture!r}: expected one of {sorted(LAYER_DIMS)}")
        self.architecture = architecture
        self._weights = {name: tf.constant(value) for name, value in weights.items()}
        self._run = tf.function(self._layers if architecture == "musicnn" else self._vgg_layers,
                                input_signature=[tf.TensorSpec([None, PATCH_FRAMES, N_MELS], tf.float32)])

    @classmethod
    def from_checkpoint(cls, *, checkpoint: str = DEFAULT_CHECKPOINT, cache_dir: str | None = None) -> "MusicnnNetwork":
        """One of musicnn's trained networks (`musicsim.pretrained.MUSICNN_CHECKPOINTS`), fetched on first use."""
        if checkpoint not in ARCHITECTURES:
            raise ValueError(f"unknown musicnn checkpoint {checkpoint!r}: expected one of {list(ARCHITECTURES)}")
        prefix = musicnn_checkpoint(checkpoint=checkpoint, cache_dir=cache_dir)
        return cls(weights=read_checkpoint(prefix), architecture=ARCHITECTURES[checkpoint])

    def __call__(self, *, patches: np.ndarray) -> dict[str, np.ndarray]:
        """Layer outputs of each patch.

        Parameters
        ----------
        patches : np.ndarray, float32, shape ``[n, PATCH_FRAMES, N_MELS]``

        Returns
        -------
        dict
            ``"penultimate"`` ``[n, 200]`` (vgg: ``[n, 256]``), ``"taggram"`` ``[n, 50]`` and, for
            musicnn, ``"maxpool"`` ``[n, 753]``; float32.
        """
        patches = np.asarray(patches, dtype=np.float32)
        if patches.ndim != 3 or patches.shape[1:] != (PATCH_FRAMES, N_MELS):
            raise ValueError(f"patches must be [n, {PATCH_FRAMES}, {N_MELS}], got shape {patches.shape}")
        return {name: value.numpy() for name, value in self._run(patches).items()}

    def layer_outputs(self, patches):
        """The layers as TensorFlow tensors, for tracing inside another graph (`musicsim.models.pretrained_engine`
        runs several networks in one): ``patches`` a float32 tensor ``[n, PATCH_FRAMES, N_MELS]``; the
        same dict as a call, of tensors."""
        return self._layers(patches) if self.architecture == "musicnn" else self._vgg_layers(patches)

    # Batch-norm with the moving statistics, as the networks run at inference.
    def _batch_norm(self, x, name: str):
        w = self._weights
        scale = w[f"{name}/gamma"] * tf.math.rsqrt(w[f"{name}/moving_variance"] + BN_EPSILON)
        return x * scale + (w[f"{name}/beta"] - w[f"{name}/moving_mean"] * scale)

    def _conv(self, x, name: str, *, padding: str):
        y = tf.nn.conv2d(x, self._weights[f"{name}/kernel"], strides=1, padding=padding)
        return tf.nn.relu(y + self._weights[f"{name}/bias"])

    def _dense(self, x, name: str):
        return x @ self._weights[f"{name}/kernel"] + self._weights[f"{name}/bias"]

    @staticmethod
    def _pad_time(x, before: int, after: int):
        return tf.pad(x, [[0, 0], [before, after], [0, 0], [0, 0]])

    def _layers(self, patches):
        """musicnn: timbral + temporal front end, dense residual mid-end, pooled dense back end."""
        x = self._batch_norm(patches[..., None], "batch_normalization")  # [n, T, 96, 1]
        padded = self._pad_time(x, 3, 3)
        front = []
        # Timbral filters span 7 frames and 40 % / 70 % of the mel axis; temporal ones 1 band and
        # 128 / 64 / 32 frames. Each map is max-pooled over frequency: [n, T, filters].
        for conv, bn, source, padding in (("conv2d", "batch_normalization_1", padded, "VALID"),
                                          ("conv2d_1", "batch_normalization_2", padded, "VALID"),
                                          ("conv2d_2", "batch_normalization_3", x, "SAME"),
                                          ("conv2d_3", "batch_normalization_4", x, "SAME"),
                                          ("conv2d_4", "batch_normalization_5", x, "SAME")):
            front.append(tf.reduce_max(self._batch_norm(self._conv(source, conv, padding=padding), bn), axis=2))
        frontend = tf.concat(front, axis=2)  # [n, T, 561]
        # Mid-end: three 7-frame convolutions over every feature, the last two residual.
        features = [frontend]
        hidden = frontend
        for index, (conv, bn) in enumerate((("conv2d_5", "batch_normalization_6"),
                                            ("conv2d_6", "batch_normalization_7"),
                                            ("conv2d_7", "batch_normalization_8"))):
            y = self._conv(self._pad_time(hidden[..., None], 3, 3), conv, padding="VALID")  # [n, T, 1, 64]
            y = self._batch_norm(y, bn)[:, :, 0, :]
            hidden = y if index == 0 else y + hidden
            features.append(hidden)
        midend = tf.concat(features, axis=2)  # [n, T, 753]
        # Back end: max and mean over time, interleaved per feature as the trained dense layer expects.
        max_pool = tf.reduce_max(midend, axis=1)
        pooled = tf.reshape(tf.stack([max_pool, tf.reduce_mean(midend, axis=1)], axis=2), [-1, 2 * 753])
        pooled = self._batch_norm(pooled, "batch_normalization_9")
        penultimate = self._batch_norm(tf.nn.relu(self._dense(pooled, "dense")), "batch_normalization_10")
        taggram = tf.sigmoid(self._dense(penultimate, "dense_1"))
        return {"penultimate": penultimate, "taggram": taggram, "maxpool": max_pool}

    def _vgg_layers(self, patches):
        """vgg: five 3x3 conv / batch-norm / max-pool blocks, then the tag layer."""
        x = self._batch_norm(patches[..., None], "batch_normalization")
        pools = ((4, 1, 2, 2), (2, 2, 2, 2), (2, 2, 2, 2), (2, 2, 2, 2), (4, 4, 4, 4))
        for index, (pool_t, pool_f, stride_t, stride_f) in enumerate(pools):
            x = self._batch_norm(self._conv(x, f"{index + 1}CNN", padding="SAME"),
                                 f"batch_normalization_{index + 1}")
            x = tf.nn.max_pool2d(x, ksize=[pool_t, pool_f], strides=[stride_t, stride_f], padding="VALID")
        flat = tf.reshape(x, [tf.shape(x)[0], -1])  # [n, 2 * 1 * 128]
        return {"penultimate": flat, "taggram": tf.sigmoid(self._dense(flat, "dense"))}


def track_embedding(*, network: MusicnnNetwork, layer: str, blocks: Iterable[np.ndarray],
                    block_patches: int = BLOCK_PATCHES) -> np.ndarray:
    """Mean over a signal's non-overlapping 3 s patches of one layer's output.

    Parameters
    ----------
    network : MusicnnNetwork
    layer : str
        One of `LAYERS` the network has.
    blocks : iterable of np.ndarray, float32, shape ``[n_i]``
        Consecutive pieces of a 16 kHz signal (see `iter_patch_blocks`).
    block_patches : int >= 1

    Returns
    -------
    np.ndarray, float64, shape ``[LAYER_DIMS[architecture][layer]]``
    """
    total, count = None, 0
    for patches in iter_patch_blocks(blocks=blocks, block_patches=block_patches):
        outputs = network(patches=patches)[layer].astype(np.float64)
        total = outputs.sum(axis=0) if total is None else total + outputs.sum(axis=0)
        count += outputs.shape[0]
    return total / count


PATCH_SECONDS = PATCH_SAMPLES / SAMPLE_RATE


class MusicnnTeacher:
    """A musicnn layer's mean over the 3 s patches of in-memory crops: a distillation teacher.

    Parameters
    ----------
    checkpoint : str
        One of `musicsim.pretrained.MUSICNN_CHECKPOINTS`.
    layer : str
        One of the checkpoint's `LAYER_DIMS`.
    pretrained_cache : str or None
        Cache root of the pretrained weights.
    network : MusicnnNetwork or None
        An already loaded network of ``checkpoint`` (else loaded on first use).
    """

    def __init__(self, *, checkpoint: str = DEFAULT_CHECKPOINT, layer: str = DEFAULT_LAYER,
                 pretrained_cache: str | None = None, network: MusicnnNetwork | None = None):
        if checkpoint not in ARCHITECTURES:
            raise ValueError(f"unknown musicnn checkpoint {checkpoint!r}: expected one of {list(ARCHITECTURES)}")
        if layer not in LAYER_DIMS[ARCHITECTURES[checkpoint]]:
            raise ValueError(f"{checkpoint} has no layer {layer!r}: expected one of "
                             f"{list(LAYER_DIMS[ARCHITECTURES[checkpoint]])}")
        self.checkpoint, self.layer, self.pretrained_cache = checkpoint, layer, pretrained_cache
        self._network = network

    @property
    def key(self) -> str:
        """Names what the teacher computes (for caches of its outputs)."""
        return f"musicnn-{self.checkpoint}-{self.layer}-v{EMBEDDING_VERSION}"

    @property
    def dim(self) -> int:
        return LAYER_DIMS[ARCHITECTURES[self.checkpoint]][self.layer]

    @property
    def network(self) -> MusicnnNetwork:
        if self._network is None:
            self._network = MusicnnNetwork.from_checkpoint(checkpoint=self.checkpoint, cache_dir=self.pretrained_cache)
        return self._network

    @staticmethod
    def whole_patches(seconds: float) -> float:
        """``seconds`` rounded to a whole number (>= 1) of 3 s patches: a crop the teacher sees entirely."""
        return max(1, int(round(seconds / PATCH_SECONDS))) * PATCH_SECONDS

    def __call__(self, *, crops: Sequence[np.ndarray], frame_rate: float) -> np.ndarray:
        """The layer mean of each crop.

        Parameters
        ----------
        crops : sequence of np.ndarray, shape ``[T_i]`` or ``[T_i, channels]`` (channels averaged)
            Audio at ``frame_rate``; resampled to 16 kHz when the rate differs.
        frame_rate : float > 0

        Returns
        -------
        np.ndarray, float32, shape ``[len(crops), dim]``
        """
        patches, owners = [], []
        for index, crop in enumerate(crops):
            audio = np.asarray(crop, dtype=np.float32)
            audio = audio.mean(axis=1) if audio.ndim == 2 else audio
            if float(frame_rate) != SAMPLE_RATE:
                audio = soxr.resample(audio, float(frame_rate), SAMPLE_RATE, quality="HQ").astype(np.float32)
            for block in iter_patch_blocks(blocks=[audio]):
                patches.append(block)
                owners.extend([index] * block.shape[0])
        owners = np.asarray(owners, dtype=np.int64)
        sums = np.zeros((len(crops), self.dim), dtype=np.float64)
        if patches:
            patches = np.concatenate(patches)
            for start in range(0, patches.shape[0], 4 * BLOCK_PATCHES):
                outputs = self.network(patches=patches[start:start + 4 * BLOCK_PATCHES])[self.layer]
                np.add.at(sums, owners[start:start + 4 * BLOCK_PATCHES], outputs.astype(np.float64))
        counts = np.bincount(owners, minlength=len(crops))[:, None]
        return (sums / np.maximum(counts, 1)).astype(np.float32)


# -- the fitted model -----------------------------------------------------------------------------
class MusicnnModel(StandardisedModel):
    """A musicnn layer, mean over 3 s patches -> standardised with train statistics; cosine.

    Parameters
    ----------
    checkpoint : str
        One of `musicsim.pretrained.MUSICNN_CHECKPOINTS` (default ``MSD_musicnn``).
    layer : str
        ``penultimate``, ``taggram`` or (musicnn networks) ``maxpool``.
    min_seconds : float >= 0
        Files shorter than this are skipped.
    pretrained_cache : str or None
        Cache root of the pretrained weights (`musicsim.pretrained.cache_root` when None).
    **settings
        `FittedModel`'s: sample_rate (16000 only: the networks' rate), max_seconds, workers
        (unused: the network runs in this process), cache_dir, progress.
    """

    name = "musicnn"
    similarity = "cosine"

    def __init__(self, *, checkpoint: str = DEFAULT_CHECKPOINT, layer: str = DEFAULT_LAYER, min_seconds: float = 1.0,
                 pretrained_cache: str | None = None, sample_rate: int = SAMPLE_RATE, **settings: Any):
        # The teacher checks the checkpoint and layer and owns the network: one loader for both uses.
        teacher = MusicnnTeacher(checkpoint=checkpoint, layer=layer, pretrained_cache=pretrained_cache)
        if sample_rate != SAMPLE_RATE:
            raise ValueError(f"musicnn networks take {SAMPLE_RATE} Hz audio, got sample_rate={sample_rate}")
        if min_seconds < 0:
            raise ValueError(f"min_seconds must be >= 0, got {min_seconds}")
        super().__init__(sample_rate=sample_rate, **settings)
        self.checkpoint, self.layer = checkpoint, layer
        self.min_seconds = float(min_seconds)
        self.pretrained_cache = pretrained_cache
        self.teacher = teacher

    @property
    def feature_fn(self) -> str:  # the feature cache's folder and key
        return f"musicnn-{self.checkpoint}-{self.layer}-v{EMBEDDING_VERSION}"

    def _extra_settings(self) -> dict[str, Any]:
        return {"checkpoint": self.checkpoint, "layer": self.layer, "min_seconds": self.min_seconds,
                "pretrained_cache": self.pretrained_cache}

    @property
    def dim(self) -> int:
        return self.teacher.dim

    @property
    def network(self) -> MusicnnNetwork:
        """The trained network, loaded on first use."""
        return self.teacher.network

    def embed_file(self, *, path: str) -> np.ndarray:
        """The unstandardised layer mean of one file's excerpt: float64 ``[dim]``.

        Raises
        ------
        AudioDecodeError
            Naming the file and why it cannot be used (unreadable, too short, silent, ...).
        """
        # The excerpt is checked (too short, silent) as its blocks end, before the last patches run.
        blocks = MeasuredBlocks(iter_excerpt_blocks(path, sample_rate=SAMPLE_RATE, max_seconds=self.max_seconds),
                                path=path, sample_rate=SAMPLE_RATE, min_seconds=self.min_seconds)
        embedding = track_embedding(network=self.network, layer=self.layer, blocks=blocks)
        if not np.all(np.isfinite(embedding)):
            raise ValueError("embedding has non-finite values")
        return embedding

    def extract(self, *, paths: list[str]) -> tuple[np.ndarray, list[int], list[tuple[str, str]]]:
        """Layer means of files, cached per track like `musicsim.features.extract_many`'s features.

        Returns
        -------
        features : np.ndarray, float64, shape ``[n_ok, dim]``
        ok_indices : list[int]
        skipped : list[(path, reason)]
        """
        return self.extract_each(paths=paths, dim=self.dim, extract_one=self._extract_one, desc=self.feature_fn)

    def _extract_one(self, path: str) -> tuple[np.ndarray | None, str | None]:
        return self.cached_file_features(path=path, dim=self.dim, compute=lambda: self.embed_file(path=path))


@dataclass(frozen=True)
class MusicnnConfig(ParamsConfig):
    """The musicnn model's settings (also distillation's teacher: ``--pretrain=distill``)."""

    musicnn_model: str = hyperparameter(DEFAULT_CHECKPOINT, "musicnn: which pretrained tagger (MSD: Million Song "
                                        "Dataset, MTT: MagnaTagATune).", choices=ARCHITECTURES)
    musicnn_layer: str = hyperparameter(DEFAULT_LAYER, "musicnn: the layer averaged over a track's 3 s patches "
                                        "(maxpool: musicnn networks only).", choices=LAYERS)

    def teacher(self) -> MusicnnTeacher:
        """The distillation teacher of these settings."""
        return MusicnnTeacher(checkpoint=self.musicnn_model, layer=self.musicnn_layer)


ENTRY = FittedEntry(name="musicnn", fitted_class=MusicnnModel, config=MusicnnConfig,
                    keywords={"checkpoint": "musicnn_model", "layer": "musicnn_layer"})
