"""The engine's blocks of one file in one pass: every musicnn network on the same patches, in one graph.

A *block* is the mean over a track's patches of one layer of one checkpoint (``("MSD_musicnn",
"penultimate")``, `BLOCK_DIMS`), or a statistic of the spectrogram itself (``("logmel", "mean" | "std")``).
`BlockNetworks` runs several networks on the same patches in one traced function; `all_block_means`
gives every block of one file (the patches from `musicsim.models.engine_patches`). Which blocks make the
engine's vector, and their weights, is `musicsim.models.pretrained_engine`'s.
"""
from __future__ import annotations

from typing import Any, Iterable, Sequence

import numpy as np
import tensorflow as tf

from musicsim.data.audio import AudioDecodeError
from musicsim.models import musicnn
from musicsim.models.engine_patches import DEFAULT_BATCH_PATCHES, patches_of_file

CHECKPOINTS = tuple(musicnn.ARCHITECTURES)  # MSD_musicnn, MTT_musicnn, MSD_vgg, MTT_vgg
# The cheap statistics of the spectrogram itself, as a pseudo-checkpoint: each mel band over the track.
LOGMEL = "logmel"
LOGMEL_LAYERS = ("mean", "std")
BLOCK_DIMS: dict[tuple[str, str], int] = {
    **{(checkpoint, layer): dim for checkpoint in CHECKPOINTS
       for layer, dim in musicnn.LAYER_DIMS[musicnn.ARCHITECTURES[checkpoint]].items()},
    **{(LOGMEL, layer): musicnn.N_MELS for layer in LOGMEL_LAYERS},
}
ALL_BLOCKS = tuple(BLOCK_DIMS)  # every (checkpoint, layer) one pass gives

# Numerics of the networks: "float32" (exact, the reference) and the faster paths (see BlockNetworks).
PRECISIONS = ("float32",)
DEFAULT_PRECISION = "float32"
# Bump when the cached block means of a file change (how they are computed, not which are chosen).
FEATURES_VERSION = 1


class EngineError(ValueError):
    """A setting of the engine that cannot work (unknown block, precision, ...)."""


def check_blocks(blocks: Iterable[Sequence[Any]]) -> tuple[tuple[str, str, float], ...]:
    """Blocks as ``((checkpoint, layer, weight), ...)``, checked: known, distinct, weights >= 0, not all 0."""
    checked = []
    for block in blocks:
        if len(block) != 3:
            raise EngineError(f"a block is (checkpoint, layer, weight), got {block!r}")
        checkpoint, layer, weight = str(block[0]), str(block[1]), float(block[2])
        if (checkpoint, layer) not in BLOCK_DIMS:
            raise EngineError(f"unknown block ({checkpoint!r}, {layer!r}): expected one of {list(ALL_BLOCKS)}")
        if not np.isfinite(weight) or weight < 0:
            raise EngineError(f"block ({checkpoint}, {layer}): weight must be >= 0, got {weight}")
        checked.append((checkpoint, layer, weight))
    names = [(c, l) for c, l, _ in checked]
    if len(set(names)) != len(names):
        raise EngineError(f"blocks must be distinct, got {names}")
    if not any(w > 0 for _, _, w in checked):
        raise EngineError(f"at least one block needs a weight > 0, got {checked}")
    return tuple(checked)


def needed_checkpoints(blocks: Iterable[Sequence[Any]]) -> tuple[str, ...]:
    """The networks the blocks read, in `CHECKPOINTS` order (the log-mel statistics need none)."""
    wanted = {block[0] for block in blocks}
    return tuple(checkpoint for checkpoint in CHECKPOINTS if checkpoint in wanted)


def feature_blocks(checkpoints: Sequence[str]) -> tuple[tuple[str, str], ...]:
    """The blocks one pass with these networks gives, in cache order: their layers, then the log-mel statistics."""
    return tuple(block for block in ALL_BLOCKS if block[0] in checkpoints or block[0] == LOGMEL)


# -- the networks, in one graph -------------------------------------------------------------------
class BlockNetworks:
    """Several musicnn networks run on the same patches by one traced function.

    Parameters
    ----------
    checkpoints : sequence of str
        Networks to run (`CHECKPOINTS`); may be empty (then only the log-mel statistics are given).
    batch_patches : int >= 1
        Patches per call: ``n`` patches take ``ceil(n / batch_patches)`` calls of the one traced graph
        (batch-norm runs with its moving statistics, so each patch is computed on its own). Bounds the
        activations' memory (about 0.1 GB per network at 8).
    precision : str
        One of `PRECISIONS`.
    pretrained_cache : str or None
        Cache root of the weights (`musicsim.pretrained.cache_root` when None).
    """

    def __init__(self, *, checkpoints: Sequence[str], batch_patches: int = DEFAULT_BATCH_PATCHES,
                 precision: str = DEFAULT_PRECISION, pretrained_cache: str | None = None):
        unknown = [c for c in checkpoints if c not in CHECKPOINTS]
        if unknown:
            raise EngineError(f"unknown checkpoints {unknown}: expected some of {list(CHECKPOINTS)}")
        if precision not in PRECISIONS:
            raise EngineError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        if int(batch_patches) < 1:
            raise EngineError(f"batch_patches must be >= 1, got {batch_patches}")
        self.checkpoints = tuple(checkpoints)
        self.batch_patches = int(batch_patches)
        self.precision = precision
        self.pretrained_cache = pretrained_cache
        self._run = None

    @property
    def blocks(self) -> tuple[tuple[str, str], ...]:
        """The (checkpoint, layer) outputs of a call."""
        return tuple(block for block in ALL_BLOCKS if block[0] in self.checkpoints)

    def _build(self):
        networks = {checkpoint: musicnn.MusicnnNetwork.from_checkpoint(checkpoint=checkpoint,
                                                                       cache_dir=self.pretrained_cache)
                    for checkpoint in self.checkpoints}

        def every_layer(patches):
            outputs = {}
            for checkpoint, network in networks.items():
                for layer, value in network.layer_outputs(patches).items():
                    outputs[f"{checkpoint}/{layer}"] = value
            return outputs

        # One trace for any batch up to batch_patches: a short track's last call is not padded to a full batch.
        run = tf.function(every_layer, input_signature=[
            tf.TensorSpec([None, musicnn.PATCH_FRAMES, musicnn.N_MELS], tf.float32)])

        def call(batch: np.ndarray) -> dict[tuple[str, str], np.ndarray]:
            found = run(batch)
            return {tuple(key.split("/")): value.numpy() for key, value in found.items()}

        return call

    def __call__(self, *, patches: np.ndarray) -> dict[tuple[str, str], np.ndarray]:
        """Every layer of every network on each patch.

        Parameters
        ----------
        patches : np.ndarray, float32, shape ``[n, PATCH_FRAMES, N_MELS]``

        Returns
        -------
        dict (checkpoint, layer) -> np.ndarray, float32, shape ``[n, BLOCK_DIMS[block]]``
        """
        patches = np.asarray(patches, dtype=np.float32)
        if patches.ndim != 3 or patches.shape[1:] != (musicnn.PATCH_FRAMES, musicnn.N_MELS):
            raise ValueError(f"patches must be [n, {musicnn.PATCH_FRAMES}, {musicnn.N_MELS}], got {patches.shape}")
        count = patches.shape[0]
        if not self.checkpoints:
            return {}
        if self._run is None:
            self._run = self._build()
        parts: dict[tuple[str, str], list[np.ndarray]] = {block: [] for block in self.blocks}
        for start in range(0, count, self.batch_patches):
            for block, value in self._run(patches[start:start + self.batch_patches]).items():
                parts[block].append(value)
        return {block: (np.concatenate(values) if values else np.zeros((0, BLOCK_DIMS[block]), np.float32))
                for block, values in parts.items()}


_LOADED: dict[tuple, BlockNetworks] = {}


def shared_networks(*, checkpoints: Sequence[str], batch_patches: int = DEFAULT_BATCH_PATCHES,
                    precision: str = DEFAULT_PRECISION, pretrained_cache: str | None = None) -> BlockNetworks:
    """One `BlockNetworks` per setting in this process (a graph is traced and its weights loaded once)."""
    key = (tuple(checkpoints), int(batch_patches), precision, pretrained_cache)
    if key not in _LOADED:
        _LOADED[key] = BlockNetworks(checkpoints=checkpoints, batch_patches=batch_patches, precision=precision,
                                     pretrained_cache=pretrained_cache)
    return _LOADED[key]


# -- one file, one pass ---------------------------------------------------------------------------
def _finite(values: np.ndarray, *, what: str) -> np.ndarray:
    if not np.all(np.isfinite(values)):
        raise ValueError(f"{what} has non-finite values")
    return values


def all_block_means(*, path: str, checkpoints: Sequence[str] = CHECKPOINTS, max_seconds: float | None = None,
                    max_patches: int | None = None, min_seconds: float = 1.0, per_patch: bool = False,
                    precision: str = DEFAULT_PRECISION, batch_patches: int = DEFAULT_BATCH_PATCHES,
                    pretrained_cache: str | None = None, networks: BlockNetworks | None = None,
                    seek: bool = True) -> dict[tuple[str, str], np.ndarray]:
    """Every block of one file in one pass: one decode, one spectrogram, each network once per patch.

    Parameters
    ----------
    path : str
        An audio file.
    checkpoints : sequence of str
        The networks to run (default all four); the log-mel statistics are always given.
    max_seconds : float > 0 or None
        The centred excerpt used (None: the whole track).
    max_patches : int >= 1 or None
        At most this many patches, spread evenly over the excerpt (`sampled_patches`); the count
        comes from the header's duration (unknown: every patch).
    seek : bool
        With ``max_patches``, decode only around the sampled patches (`iter_seeked_patches`);
        False decodes the whole excerpt and computes the sampled patches' spectrogram only.
    min_seconds : float >= 0
        Shorter excerpts are refused.
    per_patch : bool
        Return each patch's outputs instead of the means over the track.
    precision, batch_patches, pretrained_cache : as `BlockNetworks`
    networks : BlockNetworks or None
        Already loaded networks (else `shared_networks` of the settings above).

    Returns
    -------
    dict (checkpoint, layer) -> np.ndarray
        For each network's layers (`BLOCK_DIMS`) and ``("logmel", "mean" | "std")``: float64
        ``[dim]`` means over the patches, or with ``per_patch`` float32 ``[patches, dim]``: the
        network rows average to the means exactly (``rows[keep].mean(0)`` with ``keep`` =
        `sampled_patches` is what ``max_patches`` gives); the log-mel rows are each patch's band
        mean ``m_p`` and std ``s_p`` over its frames, so the track's are ``mean_p(m_p)`` and
        ``sqrt(mean_p(s_p ** 2 + m_p ** 2) - mean_p(m_p) ** 2)``.

    Raises
    ------
    AudioDecodeError
        Naming the file and why it cannot be used (unreadable, not audio, too short, silent).
    """
    if max_patches is not None and int(max_patches) < 1:
        raise EngineError(f"max_patches must be >= 1 or None, got {max_patches}")
    if networks is None:
        networks = shared_networks(checkpoints=checkpoints, batch_patches=batch_patches, precision=precision,
                                   pretrained_cache=pretrained_cache)
    elif tuple(networks.checkpoints) != tuple(checkpoints):
        raise EngineError(f"the networks run {networks.checkpoints}, not {tuple(checkpoints)}")
    patch_blocks = patches_of_file(path=path, max_seconds=max_seconds, max_patches=max_patches,
                                   min_seconds=min_seconds, seek=seek, batch_patches=networks.batch_patches)
    return _block_means(path=path, patch_blocks=patch_blocks, networks=networks, per_patch=per_patch)


def _block_means(*, path: str, patch_blocks: Iterable[np.ndarray], networks: BlockNetworks,
                 per_patch: bool) -> dict[tuple[str, str], np.ndarray]:
    """`all_block_means` of the patches ``patch_blocks``: the networks' outputs and the log-mel statistics."""
    sums: dict[tuple[str, str], np.ndarray] = {}
    rows: dict[tuple[str, str], list[np.ndarray]] = {}
    band_sum = np.zeros(musicnn.N_MELS)
    band_squares = np.zeros(musicnn.N_MELS)
    frames, count = 0, 0
    for patches in patch_blocks:
        outputs = networks(patches=patches)
        as64 = patches.astype(np.float64)
        band_sum += as64.sum(axis=(0, 1))
        band_squares += np.square(as64).sum(axis=(0, 1))
        frames += patches.shape[0] * patches.shape[1]
        count += patches.shape[0]
        if per_patch:
            outputs = {**outputs, (LOGMEL, "mean"): patches.mean(axis=1), (LOGMEL, "std"): patches.std(axis=1)}
            for block, value in outputs.items():
                rows.setdefault(block, []).append(value)
        else:
            for block, value in outputs.items():
                total = value.astype(np.float64).sum(axis=0)
                sums[block] = total if block not in sums else sums[block] + total
    if count == 0:  # iter_patch_blocks gives at least one patch of any signal: only an empty one has none
        raise AudioDecodeError(path, "no audio")
    if per_patch:
        return {block: _finite(np.concatenate(values), what=f"{path}: {block}") for block, values in rows.items()}
    means = {block: _finite(total / count, what=f"{path}: {block}") for block, total in sums.items()}
    band_mean = band_sum / frames
    means[(LOGMEL, "mean")] = band_mean
    means[(LOGMEL, "std")] = np.sqrt(np.maximum(band_squares / frames - np.square(band_mean), 0.0))
    return means
