"""One run: train or fit a model, score it by the numpy protocol on the test split, export its embeddings.

`run(settings)` writes ``model_dir/run.json`` (what was run, so export and search can rebuild the
model), ``model_dir/results.json`` and ``model_dir/embeddings.npz``; ``experiments.run`` is its
command line.
"""
from __future__ import annotations

import os
import time
from dataclasses import asdict

import numpy as np

from musicsim import distribute, evaluation
from musicsim import models as registry
from musicsim.data.dataset import DatasetInfo, read_catalog
from musicsim.projector import write_projector
from musicsim.relevance import make_relevance
from musicsim.rundir import RunDir
from musicsim.train.fitted import baseline_lists, fit_fitted, rerank
from musicsim.train.learned import SPLITS, load_tracks, train_learned
from musicsim.train.settings import RunConfig


def make_embeddings(settings: RunConfig, *, relevance_def, run_dir: RunDir, info: DatasetInfo) -> dict:
    """Train, fit or list the run's model by its kind; the config is recorded once settled."""
    entry = registry.entry(settings.model)

    def record_config(settled: RunConfig) -> None:
        run_dir.write_config(asdict(settled), model=settled.model, kind=entry.kind, dataset=asdict(info))

    if entry.kind == "learned":
        tracks = load_tracks(entry, settings)
        return train_learned(entry, tracks, settings, relevance_def=relevance_def, record_config=record_config)
    if entry.kind == "fitted":
        return fit_fitted(entry, settings, relevance_def=relevance_def, splits=SPLITS, record_config=record_config)
    return baseline_lists(entry, settings, record_config=record_config)


def _stats(row: dict) -> dict:
    return {k: {"mean": v[0], "std": v[1]} for k, v in row.items()}


def score(settings: RunConfig, out: dict, *, relevance_def, kind: str) -> tuple[dict, dict | None]:
    """The test table (the model, its re-ranking, the baselines) and the re-ranking's record."""
    test_labels = out["labels"]["test"]
    relevance = relevance_def.relevance_matrix(test_labels, test_labels)
    np.fill_diagonal(relevance, 0.0)
    protocol = dict(relevance_matrix=relevance, seeds=list(range(settings.eval_repeats)),
                    n_similar=settings.n_similar, n_dissimilar=settings.n_dissimilar)
    table = {name: evaluation.evaluate(baseline=name, **protocol) for name in registry.BASELINES}
    if kind != "baseline":
        table[settings.model] = evaluation.evaluate(embeddings=out["embeddings"]["test"],
                                                    similarity=settings.params.get("similarity", "cosine"),
                                                    **protocol)
    reranked = None
    if kind != "baseline" and settings.rerank != "none":
        reranked = rerank(settings, out, relevance_def)
        table[f"{settings.model}+rerank"] = evaluation.evaluate(scores=reranked["test_scores"], **protocol)
    return table, reranked


def write_embeddings(settings: RunConfig, out: dict, run_dir: RunDir) -> None:
    """``embeddings.npz`` of every split, and the run's embedding map in TensorBoard's projector tab."""
    ids = [i for s in SPLITS for i in out["ids"][s]]
    source_paths = {e.track_id: e.path for e in read_catalog(settings.dataset_dir)}
    vectors = np.concatenate([out["embeddings"][s] for s in SPLITS])
    labels = ["|".join(l) for s in SPLITS for l in out["labels"][s]]
    run_dir.write_embeddings(track_ids=ids, vectors=vectors, splits=[s for s in SPLITS for _ in out["ids"][s]],
                             labels=labels, paths=[source_paths.get(i, "") for i in ids])
    write_projector(log_dir=settings.model_dir, track_ids=ids, embeddings=vectors, groups=labels)


def run(config: RunConfig) -> dict:
    """Train or fit ``config.model``, evaluate it on the test split, export its embeddings; the results."""
    started = time.time()
    os.makedirs(config.model_dir, exist_ok=True)
    info = DatasetInfo.load(config.dataset_dir)
    relevance_def = make_relevance(config.relevance or info.relevance,
                                   min_shared_tags=config.min_shared_tags or info.min_shared_tags)
    kind = registry.kind_of(config.model)
    run_dir = RunDir(config.model_dir)
    out = make_embeddings(config, relevance_def=relevance_def, run_dir=run_dir, info=info)
    if not distribute.is_chief():  # multi-worker: worker 0 writes the results, the others only train
        return {}
    settings = out["settings"]
    table, reranked = score(settings, out, relevance_def=relevance_def, kind=kind)
    results = {
        "model": config.model, "dataset": info.name, "dataset_dir": os.path.abspath(config.dataset_dir),
        "relevance": relevance_def.name, "similarity": settings.params.get("similarity", "cosine"),
        "test": _stats(table[config.model]),
        "baselines": {name: _stats(table[name]) for name in registry.BASELINES},
        "eval_metrics": out["eval_metrics"], "eval_repeats": config.eval_repeats,
        "checkpoint": os.path.basename(out["checkpoint"]) if out.get("checkpoint") else None,
        "sizes": {split: len(ids) for split, ids in out["ids"].items()},
        "wall_seconds": round(time.time() - started, 1),
        # Chosen once trained (the LSTM's readout): run.json holds the config as it was before training.
        "settled_params": out.get("settled_params") or {},
        "held_out_metrics": out.get("held_out_metrics") or {},
    }
    if reranked is not None:
        results["rerank"] = {"settings": reranked["settings"].to_json(), "chosen_on": reranked["chosen_on"],
                             "eval_table": reranked["eval_table"],
                             "test": _stats(table[f"{config.model}+rerank"])}
    run_dir.write_results(results)
    if out["embeddings"]:
        write_embeddings(settings, out, run_dir)
    print(format_table(table, title=f"{info.name} test split ({results['sizes']['test']} tracks, "
                                    f"similarity={relevance_def.name}, {config.eval_repeats} seeds)"))
    written = "results.json, embeddings.npz and projector files" if out["embeddings"] else "results.json"
    print(f"wrote {written} to {config.model_dir} in {results['wall_seconds']:.0f}s; "
          f"TensorBoard: tensorboard --logdir {os.path.dirname(os.path.abspath(config.model_dir))}")
    return results


def format_table(table: dict, *, title: str) -> str:
    """Models x metrics as mean ± std."""
    metrics = [m for m in ("PC", "NDCG@1", "NDCG@6", "MAP", "catalog_mAP", "P@10") if any(m in r for r in table.values())]
    lines = [title, f"{'model':<10}" + "".join(f"{m:>16}" for m in metrics)]
    for name, row in table.items():
        lines.append(f"{name:<10}" + "".join(
            f"{row[m][0]:>10.3f} ±{row[m][1]:.3f}" if m in row else f"{'-':>16}" for m in metrics))
    return "\n".join(lines)
