"""A learned run as SavedModels for serving: ``DIR/pooled``, ``DIR/raw`` (wavenet) and ``DIR/serving.json``.

Callable with no project code (``tf.saved_model.load(DIR + "/raw")``); the inputs are described in
`experiments.export`'s docstring and in ``serving.json``. The folder is written beside ``DIR``, then
swapped in; an existing ``DIR`` is replaced only when it is this project's export (`musicsim.owned`).
"""
from __future__ import annotations

import json
import os
import shutil
import uuid
from typing import Any, Callable

import tensorflow as tf

from experiments.export_embeddings import provenance
from musicsim.embedder import LearnedEmbedder, load_embedder
from musicsim.models.wavenet import lengths_after_pooling, masked_pool
from musicsim.owned import MANIFEST_NAME, check_replaceable, write_manifest

# Written into a SavedModel export folder: what it holds, so a later export knows the folder is its own.
SAVED_MODEL_MANIFEST = MANIFEST_NAME
SAVED_MODEL_KIND = "saved_model"
# What exports recorded before the one manifest of musicsim.owned: still recognised as ours.
LEGACY_SAVED_MODEL_MANIFEST = "musicsim_export.json"
LEGACY_SAVED_MODEL_KIND = "musicsim.saved_model"


def is_legacy_saved_model_export(folder: str) -> bool:
    """Whether ``folder`` holds a SavedModel export written before the ``musicsim.json`` manifest, and
    nothing else: its ``LEGACY_SAVED_MODEL_MANIFEST`` lists what it wrote."""
    try:
        with open(os.path.join(folder, LEGACY_SAVED_MODEL_MANIFEST), encoding="utf-8") as f:
            manifest = json.load(f)
        present = set(os.listdir(folder))
    except (OSError, ValueError):
        return False
    if not isinstance(manifest, dict) or manifest.get("kind") != LEGACY_SAVED_MODEL_KIND:
        return False
    return present <= set(manifest.get("entries") or []) | {LEGACY_SAVED_MODEL_MANIFEST}


def _serving_receivers(embedder: LearnedEmbedder) -> dict[str, Callable[[], Any]]:
    """The serving input receivers of a learned run: ``pooled`` always, ``raw`` when its graph can pool
    decoded audio itself (wavenet); each is called inside the graph the estimator builds for the export."""
    channels = embedder.channels

    def pooled_receiver():
        # Placeholders are made here, inside the graph the estimator builds for the export.
        shape = [None, None] if channels == 1 else [None, None, channels]
        audio = tf.compat.v1.placeholder(tf.float32, shape, name="audio")
        length = tf.compat.v1.placeholder(tf.int32, [None], name="length")
        features = {"audio": audio[:, :, None] if channels == 1 else audio, "length": length}
        return tf.estimator.export.ServingInputReceiver(features, {"audio": audio, "length": length})

    def raw_receiver():
        raw = tf.compat.v1.placeholder(tf.float32, [None, None], name="raw_audio")
        raw_length = tf.compat.v1.placeholder(tf.int32, [None], name="raw_length")
        # The dataset's mean pooling (musicsim.data.audio.mean_pool), in the graph: an average over real samples.
        pooled = masked_pool(raw[:, :, None], raw_length, pool=embedder.pool_size, pooling="avg")
        length = lengths_after_pooling(raw_length, embedder.pool_size)
        return tf.estimator.export.ServingInputReceiver({"audio": pooled, "length": length},
                                                        {"raw_audio": raw, "raw_length": raw_length})

    receivers = {"pooled": pooled_receiver}
    if embedder.model.input.features == "pooled_audio":  # the graph can pool decoded audio itself
        receivers["raw"] = raw_receiver
    return receivers


def _serving_description(embedder: LearnedEmbedder, *, raw: bool) -> dict[str, Any]:
    """``serving.json``: the run, its checkpoint, and what each SavedModel's inputs must be."""
    serving = {**embedder.describe(), "checkpoint": embedder.checkpoint, "signature": "serving_default",
               "output": "embedding",
               "pooled": {"inputs": {"audio": "float32 [batch, time]" if embedder.channels == 1 else
                                     f"float32 [batch, frames, {embedder.channels}] chromagram",
                                     "length": "int32 [batch]"},
                          "rate_hz": embedder.frame_rate},
               "sample_rate": embedder.sample_rate, "pool_size": embedder.pool_size,
               "max_seconds": embedder.max_seconds}
    if raw:
        serving["raw"] = {"inputs": {"raw_audio": "float32 [batch, samples] mono", "raw_length": "int32 [batch]"},
                          "rate_hz": embedder.sample_rate}
    return serving


def export_saved_model(*, model_dir: str, export_dir: str, overwrite: bool = False) -> dict[str, str]:
    """Write SavedModels of a learned run for serving: ``export_dir/pooled`` and (wavenet) ``export_dir/raw``.

    The export is written into a temporary sibling folder, then swapped in for ``export_dir``, with
    ``serving.json`` describing the inputs and ``SAVED_MODEL_MANIFEST`` listing what was written.
    An existing ``export_dir`` is replaced only when it is empty or holds such an export and
    nothing else, or when ``overwrite`` is given.

    Returns
    -------
    dict of name (``pooled``, ``raw``) to SavedModel folder

    Raises
    ------
    ValueError
        For a fitted model (they are not TensorFlow graphs), or an ``export_dir`` that is not
        this project's to replace.
    """
    export_dir = os.path.abspath(export_dir)
    check_replaceable(export_dir, kind=SAVED_MODEL_KIND, overwrite=overwrite, legacy=is_legacy_saved_model_export,
                      description="a SavedModel export of this project",
                      remedy="choose another folder, or give --overwrite to replace it")
    embedder = load_embedder(model_dir)
    if not isinstance(embedder, LearnedEmbedder):
        raise ValueError(f"{model_dir} holds a {embedder.kind} {embedder.name!r} model: only learned models "
                         "(wavenet, rnn) export a SavedModel; serve fitted models with musicsim.embedder")

    estimator = embedder.estimator
    receivers = _serving_receivers(embedder)
    staging = f"{export_dir}.tmp-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    os.makedirs(staging)
    try:
        for name, receiver in receivers.items():
            base = os.path.join(staging, f".{name}-base")
            written = estimator.export_saved_model(base, receiver, checkpoint_path=embedder.checkpoint)
            os.rename(written.decode() if isinstance(written, bytes) else written, os.path.join(staging, name))
            shutil.rmtree(base)
        serving = _serving_description(embedder, raw="raw" in receivers)
        with open(os.path.join(staging, "serving.json"), "w") as f:
            json.dump(serving, f, indent=1)
        entries = sorted(os.listdir(staging))  # before the manifest itself exists
        write_manifest(staging, kind=SAVED_MODEL_KIND, extra={"entries": entries, **provenance(embedder)})
        old = None
        if os.path.isdir(export_dir):
            old = f"{export_dir}.old-{os.getpid()}-{uuid.uuid4().hex[:6]}"
            os.rename(export_dir, old)
        os.rename(staging, export_dir)
        if old:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return {name: os.path.join(export_dir, name) for name in receivers}
