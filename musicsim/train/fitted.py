"""Fit a fitted model (`fit_fitted`), a baseline's lists (`baseline_lists`), and the re-ranked scores (`rerank`)."""
from __future__ import annotations

import sys
from typing import Callable

import numpy as np

from musicsim import rerank as rerank_lib
from musicsim.data.dataset import DatasetInfo, read_catalog
from musicsim.embedder import load_embedder
from musicsim.models import BaselineEntry, FittedEntry
from musicsim.train.settings import RunConfig


def fit_fitted(entry: FittedEntry, settings: RunConfig, *, relevance_def, splits,
               record_config: Callable[[RunConfig], None]) -> dict:
    """Fit a fitted model on the train split's source files, tune it on eval, then embed every split."""
    settings = settings.with_params(similarity=entry.fitted_class.similarity)
    record_config(settings)
    model = entry.make_fitted(params=settings.params, dataset_dir=settings.dataset_dir,
                              max_seconds=DatasetInfo.load(settings.dataset_dir).max_seconds, workers=settings.workers,
                              load_run=load_embedder)
    catalog = {split: read_catalog(settings.dataset_dir, split=split) for split in splits}
    # One pass over every split's files: the worker pool starts once.
    entries = [e for split in splits for e in catalog[split]]
    features, ok, skipped = model.extract(paths=[e.path for e in entries])
    for path, reason in skipped:
        print(f"skipped {path}: {reason}", file=sys.stderr)
    kept = [entries[i] for i in ok]
    rows = {split: [j for j, e in enumerate(kept) if e.split == split] for split in splits}
    if len(rows["train"]) < 2:
        reasons = "; ".join(f"{p}: {r}" for p, r in skipped[:5])
        raise ValueError(f"{settings.model}: need at least 2 usable train tracks, got {len(rows['train'])}"
                         + (f" (skipped: {reasons})" if reasons else ""))
    model.fit_features(features=features[rows["train"]])
    eval_labels = [kept[j].labels for j in rows["eval"]]
    eval_binary = relevance_def.relevance_matrix(eval_labels, eval_labels) > 0
    np.fill_diagonal(eval_binary, False)
    model.tune(features=features[rows["eval"]], binary=eval_binary)  # eval only: test never takes part
    model.save(settings.model_dir)
    vectors = model.embed_features(features=features)
    out = {"ids": {}, "labels": {}, "embeddings": {}, "eval_metrics": {}, "settings": settings}
    for split in splits:
        out["ids"][split] = [kept[j].track_id for j in rows[split]]
        out["labels"][split] = [kept[j].labels for j in rows[split]]
        out["embeddings"][split] = vectors[rows[split]]
    return out


def baseline_lists(entry: BaselineEntry, settings: RunConfig, *, record_config: Callable[[RunConfig], None]) -> dict:
    """A baseline embeds nothing: only the test split's tracks and labels, for the protocol's lists."""
    del entry
    record_config(settings)
    test = read_catalog(settings.dataset_dir, split="test")
    return {"ids": {"test": [e.track_id for e in test]}, "labels": {"test": [e.labels for e in test]},
            "embeddings": {}, "eval_metrics": {}, "settings": settings}


def rerank(settings: RunConfig, out: dict, relevance_def) -> dict:
    """The test split's re-ranked score matrix; 'auto' settings are chosen on the eval split only."""
    eval_table, chosen_on = [], "given"
    if settings.rerank == "auto":
        eval_labels = out["labels"]["eval"]
        eval_binary = relevance_def.relevance_matrix(eval_labels, eval_labels) > 0
        np.fill_diagonal(eval_binary, False)
        chosen, eval_table = rerank_lib.choose_settings(eval_vectors=out["embeddings"]["eval"],
                                                        eval_binary=eval_binary)
        chosen_on = "eval"
    else:
        chosen = rerank_lib.parse_settings(settings.rerank)
    return {"settings": chosen, "chosen_on": chosen_on, "eval_table": eval_table,
            "test_scores": rerank_lib.catalog_scores(vectors=out["embeddings"]["test"], settings=chosen)}
