"""The album-folds protocol's per-track features (`benchmarks/generalisation.py`): the four musicnn checkpoints'
blocks of one decode per track (cached as ``blocks/<track id>.npz``) and the MFCC and librosa features."""
from __future__ import annotations

import json
import os
import sys
import time
from typing import Sequence

import numpy as np

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCHMARKS_DIR = os.path.dirname(os.path.abspath(__file__))
for _folder in (REPO_ROOT, BENCHMARKS_DIR):  # run as a script from anywhere, or loaded from its file by a test
    if _folder not in sys.path:
        sys.path.insert(0, _folder)

import album_folds  # noqa: E402  (benchmarks/album_folds.py, beside this file)
from data_prep.demo import build_demo_corpus  # noqa: E402
from data_prep.sources import list_manifest  # noqa: E402
from musicsim import rerank  # noqa: E402
from musicsim.atomic import atomic_path, write_json_atomic  # noqa: E402
from musicsim.data.audio import AudioDecodeError, file_duration  # noqa: E402
from musicsim.features import extract_many  # noqa: E402
from musicsim.models import pretrained_engine  # noqa: E402
from musicsim.models.pretrained_engine import shared_networks  # noqa: E402


# --------------------------------------------------------------------------- album folds: per-track features
# The four musicnn checkpoints the engine may combine, each read on the same log-mel patches.
BLOCK_CHECKPOINTS = ("MSD_musicnn", "MTT_musicnn", "MSD_vgg", "MTT_vgg")
# Bump when what a block file holds changes: older files are recomputed.
BLOCKS_VERSION = 1
# The patches a track's blocks are computed on: at most this many, evenly spread over the whole track
# (musicsim.models.pretrained_engine.sampled_patches). 64 patches = 3.2 min: most tracks of the extended corpus
# are read whole; the long ones are sampled (the CPU time of every patch of 13 h of audio did not fit).
BLOCK_MAX_PATCHES = 64


def track_blocks(*, path: str, max_patches: int | None = BLOCK_MAX_PATCHES, networks=None) -> dict[str, np.ndarray]:
    """Everything the album-folds rows read of one track, from one decode and one spectrogram
    (``musicsim.models.pretrained_engine.all_block_means`` with each patch's outputs).

    Parameters
    ----------
    path : an audio file.
    max_patches : at most this many 3 s patches, evenly spread over the track (None: every patch).
    networks : ``pretrained_engine.BlockNetworks`` of the four checkpoints, or None (shared ones).

    Returns
    -------
    dict of arrays: ``"<checkpoint>/<layer>"`` float64 ``[dim]`` (the mean over the patches, what the engine
    computes), ``"<checkpoint>/<layer>/patches"`` float16 ``[patches, dim]`` (each patch's output, in time order:
    patch sampling is measured on them), ``"logmel"`` float64 ``[192]`` (mean and std over the patches' frames of
    each of musicnn's 96 log-mel bands), ``"total_patches"`` (the track's whole patches).
    """
    per_patch = pretrained_engine.all_block_means(path=path, checkpoints=BLOCK_CHECKPOINTS, max_patches=max_patches,
                                                  per_patch=True, networks=networks)
    seconds = file_duration(path)
    result: dict[str, np.ndarray] = {
        "total_patches": np.int64(pretrained_engine.expected_patches(seconds=seconds) if seconds else -1)}
    for (checkpoint, layer), values in per_patch.items():
        if checkpoint == pretrained_engine.LOGMEL:
            continue
        result[f"{checkpoint}/{layer}"] = values.astype(np.float64).mean(axis=0)
        result[f"{checkpoint}/{layer}/patches"] = values.astype(np.float16)
    # Every patch has the same frames: the track's band mean and std from each patch's.
    patch_mean = per_patch[(pretrained_engine.LOGMEL, "mean")].astype(np.float64)
    patch_std = per_patch[(pretrained_engine.LOGMEL, "std")].astype(np.float64)
    band_mean = patch_mean.mean(axis=0)
    band_std = np.sqrt(np.maximum((patch_std ** 2 + patch_mean ** 2).mean(axis=0) - band_mean ** 2, 0.0))
    result["logmel"] = np.concatenate([band_mean, band_std])
    return result


def extract_block_files(*, paths: list[str], track_ids: list[str], blocks_dir: str, log=print) -> dict[str, str]:
    """``track_blocks`` of every track into ``blocks_dir/<track id>.npz``; resumable (existing files are kept).

    A track that cannot be decoded gets ``<track id>.failed.json`` with its reason. Returns track id -> reason of
    the failed tracks.
    """
    os.makedirs(blocks_dir, exist_ok=True)
    networks = None
    failed: dict[str, str] = {}
    started, done_seconds = time.monotonic(), 0.0
    for number, (path, track_id) in enumerate(zip(paths, track_ids)):
        target = os.path.join(blocks_dir, f"{track_id}.npz")
        failure = os.path.join(blocks_dir, f"{track_id}.failed.json")
        if os.path.isfile(failure):
            with open(failure) as f:
                failed[track_id] = json.load(f)["reason"]
            continue
        if os.path.isfile(target):
            with np.load(target) as stored:
                if int(stored["version"]) == BLOCKS_VERSION:
                    continue
        if networks is None:
            networks = shared_networks(checkpoints=BLOCK_CHECKPOINTS)
        t0 = time.monotonic()
        try:
            arrays = track_blocks(path=path, networks=networks)
        except AudioDecodeError as err:
            failed[track_id] = err.reason
            write_json_atomic(failure, {"path": path, "reason": err.reason})
            log(f"blocks: {track_id}: skipped ({err.reason})")
            continue
        with atomic_path(target) as temporary:
            with open(temporary, "wb") as f:
                np.savez(f, version=np.int64(BLOCKS_VERSION), **arrays)
        patches = len(arrays[f"{BLOCK_CHECKPOINTS[0]}/penultimate/patches"])
        done_seconds += patches * 3.0
        log(f"blocks: {number + 1}/{len(paths)} {track_id}: {patches} of {int(arrays['total_patches'])} patches in "
            f"{time.monotonic() - t0:.1f}s (so far {done_seconds / max(time.monotonic() - started, 1e-9):.1f}x real "
            "time on the patches computed)")
    return failed


# --------------------------------------------------------------------------- album folds: the rows
HAND_FEATURES = ("mfcc", "librosa")  # musicsim.features' functions, as --model=mfcc / --model=librosa read them
HAND_RATE, HAND_SECONDS = 22050, 60.0  # their decode in the split protocols: 22.05 kHz, centred 60 s excerpt
TAGGER_ROWS = {"musicnn_msd": "MSD_musicnn", "musicnn_mtt": "MTT_musicnn", "vgg_msd": "MSD_vgg",
               "vgg_mtt": "MTT_vgg"}
PENULTIMATES = tuple(f"{c}/penultimate" for c in BLOCK_CHECKPOINTS)
TAGGRAMS = tuple(f"{c}/taggram" for c in BLOCK_CHECKPOINTS)
MAXPOOLS = ("MSD_musicnn/maxpool", "MTT_musicnn/maxpool")
LOGMEL_BLOCKS = ("logmel/mean", "logmel/std")  # the engine's blocks ("logmel", "mean" | "std"): 96 bands each
# Re-ranking a row may choose on its training albums (none first: it wins ties), and the fixed settings
# measured one by one.
RERANK_GRID = tuple([rerank.RerankSettings(method="none")] + [
    rerank.RerankSettings(method=m, k=k, alpha=a) for m in ("aqe", "dba", "dba+aqe") for k in (1, 2, 3, 5, 8)
    for a in (0.0, 3.0)])
PATCH_SAMPLES = (8, 16, 32)


def load_album_corpus(corpus: str) -> tuple[list[str], list[str], list[str]]:
    """(paths, track ids, album labels) of a corpus: ``demo`` (the extended demo corpus, built with apt on first
    use into ``data/demo_extended_corpus``), a manifest csv, or a folder holding ``manifest.csv``."""
    if corpus == "demo":
        corpus = build_demo_corpus(extended=True)
    manifest = os.path.join(corpus, "manifest.csv") if os.path.isdir(corpus) else corpus
    if not os.path.isfile(manifest):
        raise FileNotFoundError(f"--corpus={corpus}: no manifest csv there (expected a manifest.csv file, a folder "
                                "holding one, or 'demo')")
    listing = list_manifest(manifest=manifest)
    tracks = listing.tracks
    return [t.path for t in tracks], [t.track_id for t in tracks], [t.labels[0] for t in tracks]


def load_album_features(*, paths: list[str], track_ids: list[str], features_dir: str, workers: int,
                        patch_samples: Sequence[int] = PATCH_SAMPLES, log=print
                        ) -> tuple[dict[str, np.ndarray], list[int]]:
    """Every block of every track (computed once, cached under ``features_dir``): ``(features, usable rows)``.

    Keys: each ``"<checkpoint>/<layer>"`` (means over at most ``BLOCK_MAX_PATCHES`` patches evenly spread over the
    track) and ``"<checkpoint>/<layer>@N"`` (over N of those, evenly spread: ``album_folds.evenly_spread``),
    ``"logmel"`` (its 96 bands' mean and std: statistics of the engine's own spectrogram), ``"mfcc"`` /
    ``"librosa"`` (``musicsim.features`` at 22.05 kHz on the centred 60 s excerpt, as the split protocols' fitted
    rows read them). Rows: the tracks every feature could be computed for.
    """
    blocks_dir = os.path.join(features_dir, "blocks")
    failed = extract_block_files(paths=paths, track_ids=track_ids, blocks_dir=blocks_dir, log=log)
    hand, usable = {}, set(range(len(paths))) - {i for i, t in enumerate(track_ids) if t in failed}
    for name in HAND_FEATURES:
        values, ok, skipped = extract_many(paths=paths, feature_fn=name, sample_rate=HAND_RATE,
                                           max_seconds=HAND_SECONDS, workers=workers,
                                           cache_dir=os.path.join(features_dir, "feature_cache"), progress=False)
        for path, reason in skipped:
            log(f"{name}: {path} skipped ({reason})")
        hand[name] = dict(zip(ok, values))
        usable &= set(ok)
    rows = sorted(usable)
    features: dict[str, list[np.ndarray]] = {}
    for index in rows:
        with np.load(os.path.join(blocks_dir, f"{track_ids[index]}.npz")) as stored:
            features.setdefault("logmel", []).append(stored["logmel"])
            half = len(stored["logmel"]) // 2
            features.setdefault("logmel/mean", []).append(stored["logmel"][:half])
            features.setdefault("logmel/std", []).append(stored["logmel"][half:])
            for key in stored.files:
                if not key.endswith("/patches"):
                    continue
                block = key.removesuffix("/patches")
                patches = stored[key].astype(np.float64)
                mean = stored[block]
                if len(patches) > BLOCK_MAX_PATCHES:  # a file computed on every patch: the same sample as the rest
                    patches = patches[album_folds.evenly_spread(len(patches), BLOCK_MAX_PATCHES)]
                    mean = patches.mean(axis=0)
                features.setdefault(block, []).append(mean)
                for n in patch_samples:
                    features.setdefault(f"{block}@{n}", []).append(
                        patches[album_folds.evenly_spread(len(patches), n)].mean(axis=0))
        for name in HAND_FEATURES:
            features.setdefault(name, []).append(hand[name][index])
    return {key: np.stack(values) for key, values in features.items()}, rows
