"""Results report in the style of the paper's figures 14-16 (paper 5.2).

``python -m experiments.report --runs=tensorboard_logs/A,tensorboard_logs/B --output=reports/NAME``
(``--runs`` also takes globs, e.g. ``'tensorboard_logs/*'``) reads the run directories written by
``experiments.run`` (``results.json``, and ``embeddings.npz`` where the model has embeddings) and
writes into the output directory:

- ``results.md`` and ``results.csv``: one table per dataset, models x metrics (PC, NDCG@1, NDCG@6,
  MAP, catalog_mAP, P@10) as mean ± std, with the random and worst baselines, and the paper's skew
  set ("Skew issues": lists built from a reference model's failures, librosa by default) for every
  model with embeddings and for both baselines;
- ``<dataset>_fig14_metrics.png`` and ``<dataset>_fig15_skew.png``: grouped bar charts, metrics on
  the x axis, one bar per model, error bars = std.

The markdown is also printed to stdout.

Grouping. Runs are grouped by dataset (``dataset_dir`` and similarity definition). Within a dataset,
runs of the same model whose configurations differ only in the seed are one row: mean ± std across
the runs (population std of the run means) and their count. Runs of one model that differ in other
settings (e.g. ``similarity=euclidean``, paper figure 16) become separate rows, labelled by the
settings that differ. A single run shows its own mean ± std over the evaluation seeds.

The skew set is recomputed here (``musicsim.evaluation.evaluate(..., reference_scores=...)``) from
the test embeddings of each run and of the reference run, on the test tracks they share.
"""
from __future__ import annotations

import glob
import json
import os
import re
import sys
from dataclasses import dataclass, field

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from absl import app, flags

from musicsim import evaluation
from musicsim.cli import global_flags_parser, usage_error
from musicsim.evaluation import BASELINES
from musicsim.data.dataset import LABEL_SEPARATOR, DatasetInfo
from musicsim.relevance import make_relevance
from musicsim.rundir import RunDir

METRICS = ("PC", "NDCG@1", "NDCG@6", "MAP", "catalog_mAP", "P@10")
SKEW_METRICS = ("skew/PC", "skew/NDCG@1", "skew/NDCG@6", "skew/MAP")
# Row order in tables and charts; models not listed follow alphabetically, baselines come last.
MODEL_ORDER = ("wavenet", "rnn", "librosa", "mfcc")
# Config keys that do not make two runs different models (runs differing only here are repeats).
REPEAT_KEYS = ("seed", "model_dir", "workers", "warm_start_from")

FLOORS_NOTE = (
    "**Reading the numbers.** With 3 similar + 3 non-similar binary candidates per list, NDCG@6 and the "
    "6-list MAP have high floors (a random ranking scores about 0.775 and 0.645), so they barely separate "
    "methods; catalog mAP (each query ranks the whole test set), PC and NDCG@1 are the figures to watch.")
STD_NOTE = ("mean ± std: over the evaluation seeds for a single run; over the runs (population std of "
            "their means) when runs > 1.")


@dataclass
class Run:
    """One finished ``experiments.run`` directory."""

    run_dir: str
    model: str
    dataset: str
    dataset_dir: str
    relevance_def: str
    similarity: str  # cosine | euclidean, how the model's embeddings are compared
    test: dict[str, tuple[float, float]]
    baselines: dict[str, dict[str, tuple[float, float]]]
    test_tracks: int | None
    config: dict = field(default_factory=dict)

    @property
    def embeddings_path(self) -> str:
        return RunDir(self.run_dir).embeddings_path

    @property
    def has_embeddings(self) -> bool:
        return RunDir(self.run_dir).has_embeddings()

    @property
    def seeds(self) -> list[int]:
        return list(range(int(self.config.get("eval_repeats", 5))))

    @property
    def list_sizes(self) -> dict[str, int]:
        return {"n_similar": int(self.config.get("n_similar", 3)),
                "n_dissimilar": int(self.config.get("n_dissimilar", 3))}

    def settings(self) -> dict[str, str]:
        """The run's configuration flattened (params included), values as JSON, repeat keys left out."""
        flat = {k: v for k, v in self.config.items() if k != "params"}
        flat.update(self.config.get("params") or {})
        flat["similarity"] = self.similarity
        return {k: json.dumps(v, sort_keys=True) for k, v in flat.items() if k not in REPEAT_KEYS}


@dataclass
class TestEmbeddings:
    """The test split of a run's ``embeddings.npz``: ``track_ids`` ``[N]``, ``vectors`` ``[N, D]``,
    ``labels`` (N label tuples)."""

    track_ids: list[str]
    vectors: np.ndarray
    labels: list[tuple[str, ...]]


def _metric_table(raw: object, *, path: str, key: str) -> dict[str, tuple[float, float]]:
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: '{key}' must map metric names to {{'mean', 'std'}}, got {type(raw).__name__}")
    table = {}
    for metric, value in raw.items():
        if not isinstance(value, dict) or "mean" not in value or "std" not in value:
            raise ValueError(f"{path}: '{key}/{metric}' must be {{'mean': ..., 'std': ...}}, got {value!r}")
        table[metric] = (float(value["mean"]), float(value["std"]))
    return table


def load_run(run_dir: str) -> Run:
    """Read ``run_dir/results.json`` (see ``experiments.run.run``).

    Raises
    ------
    FileNotFoundError
        When ``run_dir`` has no ``results.json`` (not a run directory, or the run did not finish).
    ValueError
        When ``results.json`` is not valid JSON or lacks ``model``, ``dataset_dir`` or ``test``.
    """
    run = RunDir(run_dir)
    path = run.results_path
    if not run.finished():
        reason = "does not exist" if not os.path.isdir(run_dir) else "has no results.json"
        raise FileNotFoundError(f"run directory {run_dir} {reason}: expected a finished "
                                "`python -m experiments.run --model_dir=...` run (it writes results.json last)")
    results = run.results()
    missing = [key for key in ("model", "dataset_dir", "test") if key not in results]
    if missing:
        raise ValueError(f"{path} lacks {missing}: not written by experiments.run")
    config = run.config() if run.exists() else (results.get("config") or {})
    dataset_dir = os.path.abspath(results["dataset_dir"])
    relevance_def = results.get("relevance", results.get("similarity_def"))  # runs made before the rename
    if relevance_def is None:
        relevance_def = DatasetInfo.load(dataset_dir).relevance
    return Run(
        run_dir=run_dir, model=str(results["model"]),
        dataset=str(results.get("dataset") or os.path.basename(dataset_dir)), dataset_dir=dataset_dir,
        relevance_def=str(relevance_def),
        similarity=str(results.get("similarity") or (config.get("params") or {}).get("similarity", "cosine")),
        test=_metric_table(results["test"], path=path, key="test"),
        baselines={name: _metric_table(table, path=path, key=f"baselines/{name}")
                   for name, table in (results.get("baselines") or {}).items()},
        test_tracks=(results.get("sizes") or {}).get("test"), config=config)


def load_test_embeddings(run: Run) -> TestEmbeddings:
    """The test split of ``run``'s ``embeddings.npz`` (keys track_ids, embeddings, splits, labels)."""
    path = run.embeddings_path
    test = RunDir(run.run_dir).embeddings().split("test")
    track_ids = test.track_ids
    vectors = np.asarray(test.vectors, dtype=np.float64)
    labels = [tuple(l for l in s.split(LABEL_SEPARATOR) if l) for s in test.labels]
    if not track_ids:
        raise ValueError(f"{path} holds no test-split embeddings")
    return TestEmbeddings(track_ids=track_ids, vectors=vectors, labels=labels)


def expand_run_dirs(patterns: list[str]) -> list[str]:
    """Run directories from paths and globs, in order, without duplicates.

    A glob keeps only the directories holding a ``results.json`` (unfinished runs are reported on
    stderr and skipped); a plain path is kept as is, so ``load_run`` fails clearly if it is not a run.
    """
    run_dirs: list[str] = []
    for pattern in patterns:
        if glob.has_magic(pattern):
            matches = sorted(m for m in glob.glob(pattern) if os.path.isdir(m))
            finished = [m for m in matches if RunDir(m).finished()]
            for skipped in sorted(set(matches) - set(finished)):
                print(f"skipping {skipped}: no results.json (unfinished run?)", file=sys.stderr)
            if not finished:
                raise FileNotFoundError(f"--runs pattern {pattern!r} matches no run directory with a results.json")
            candidates = finished
        else:
            candidates = [pattern.rstrip("/") or pattern]
        for run_dir in candidates:
            if os.path.abspath(run_dir) not in {os.path.abspath(d) for d in run_dirs}:
                run_dirs.append(run_dir)
    return run_dirs


def aggregate(tables: list[dict[str, tuple[float, float]]]) -> dict[str, tuple[float, float]]:
    """One table from several runs' tables: the table itself for one run, else per metric the mean
    and population std of the runs' means (over the runs that have the metric)."""
    if len(tables) == 1:
        return dict(tables[0])
    metrics = {m for table in tables for m in table}
    out = {}
    for metric in metrics:
        means = np.array([table[metric][0] for table in tables if metric in table])
        out[metric] = (float(means.mean()), float(means.std()))
    return out


def _variants(runs: list[Run]) -> list[tuple[str, list[Run]]]:
    """Split one model's runs by the settings that differ among them; label each part by them."""
    settings = [run.settings() for run in runs]
    keys = sorted({k for s in settings for k in s})
    differing = [k for k in keys if len({s.get(k) for s in settings}) > 1]
    parts: dict[str, list[Run]] = {}
    for run, setting in zip(runs, settings):
        label = ", ".join(f"{k}={json.loads(setting[k]) if k in setting else None}" for k in differing)
        parts.setdefault(label, []).append(run)
    return sorted(parts.items())


def _model_sort_key(model: str) -> tuple[int, str]:
    if model in BASELINES:
        return (len(MODEL_ORDER) + 1 + BASELINES.index(model), model)
    return (MODEL_ORDER.index(model) if model in MODEL_ORDER else len(MODEL_ORDER), model)


@dataclass
class _Row:
    model: str
    variant: str
    runs: list[Run]
    metrics: dict[str, tuple[float, float]]
    test_tracks: int | None
    skew_runs: int = 0
    skew_tracks: int | None = None  # test tracks the skew figures were computed on (shared with the reference)

    @property
    def label(self) -> str:
        return f"{self.model} ({self.variant})" if self.variant else self.model


class _Skew:
    """Recomputes the skew-set metrics of one dataset against its reference run."""

    def __init__(self, *, reference: Run, notes: list[str]):
        self.reference = reference
        self.notes = notes
        self.embeddings = load_test_embeddings(reference)
        min_shared_tags = reference.config.get("min_shared_tags")
        if not min_shared_tags and reference.relevance_def.startswith("tags"):
            min_shared_tags = DatasetInfo.load(reference.dataset_dir).min_shared_tags
        self.similarity = make_relevance(reference.relevance_def, min_shared_tags=min_shared_tags or 2)

    def _protocol(self, track_ids: list[str], *, run: Run) -> dict:
        """Relevance and reference scores on ``track_ids`` (a subset of the reference's test tracks)."""
        position = {t: i for i, t in enumerate(self.embeddings.track_ids)}
        rows = np.array([position[t] for t in track_ids])
        labels = [self.embeddings.labels[i] for i in rows]
        relevance = self.similarity.relevance_matrix(labels, labels)
        np.fill_diagonal(relevance, 0.0)  # a track is not its own result, as in experiments.run
        reference_scores = evaluation.similarity_matrix(embeddings=self.embeddings.vectors[rows],
                                                        similarity=self.reference.similarity)
        return dict(relevance_matrix=relevance, reference_scores=reference_scores, seeds=run.seeds,
                    **run.list_sizes)

    @staticmethod
    def _skew_only(results: dict[str, tuple[float, float]]) -> dict[str, tuple[float, float]]:
        return {m: results[m] for m in SKEW_METRICS}

    def of_run(self, run: Run) -> tuple[dict[str, tuple[float, float]], int] | None:
        """Skew metrics of ``run``'s test embeddings on the test tracks it shares with the reference, and
        how many those are (None when fewer than 2)."""
        embeddings = load_test_embeddings(run)
        reference_ids = set(self.embeddings.track_ids)
        shared = [t for t in embeddings.track_ids if t in reference_ids]
        if len(shared) != len(embeddings.track_ids) or len(shared) != len(reference_ids):
            self.notes.append(f"{run.run_dir}: {len(embeddings.track_ids)} test tracks, reference "
                              f"{len(reference_ids)}; its skew metrics use the {len(shared)} they share.")
        if len(shared) < 2:
            self.notes.append(f"{run.run_dir}: fewer than 2 test tracks shared with the reference, no skew metrics.")
            return None
        position = {t: i for i, t in enumerate(embeddings.track_ids)}
        own_labels = [set(embeddings.labels[position[t]]) for t in shared]
        reference_labels = {t: set(l) for t, l in zip(self.embeddings.track_ids, self.embeddings.labels)}
        if any(own != reference_labels[t] for own, t in zip(own_labels, shared)):
            raise ValueError(f"{run.embeddings_path} and {self.reference.embeddings_path} give different labels "
                             "to the same test tracks: were they run on different versions of the dataset?")
        vectors = embeddings.vectors[[position[t] for t in shared]]
        results = evaluation.evaluate(embeddings=vectors, similarity=run.similarity,
                                      **self._protocol(shared, run=run))
        if shared == embeddings.track_ids:
            # Same tracks in the same order as experiments.run used: its figures must come back.
            stale = [m for m in METRICS if m in run.test and m in results
                     and not np.isclose(results[m][0], run.test[m][0], rtol=0, atol=1e-9)]
            if stale:
                self.notes.append(f"{run.run_dir}: embeddings.npz does not reproduce results.json "
                                  f"({', '.join(f'{m} {results[m][0]:.3f} vs {run.test[m][0]:.3f}' for m in stale)}): "
                                  "stale or mixed-up files?")
        return self._skew_only(results), len(shared)

    def of_baseline(self, name: str) -> dict[str, tuple[float, float]]:
        """Skew metrics of a baseline on the reference's test tracks, with the reference's protocol."""
        results = evaluation.evaluate(baseline=name, **self._protocol(self.embeddings.track_ids,
                                                                     run=self.reference))
        return self._skew_only(results)


def _dataset_rows(runs: list[Run], *, reference: str | None, notes: list[str]) -> list[_Row]:
    """The rows of one dataset: each model (variant), then random and worst, skew metrics included."""
    rows: list[_Row] = []
    by_model: dict[str, list[Run]] = {}
    for run in runs:
        if run.model not in BASELINES:
            by_model.setdefault(run.model, []).append(run)
    for model in sorted(by_model, key=_model_sort_key):
        for variant, variant_runs in _variants(by_model[model]):
            sizes = [r.test_tracks for r in variant_runs if r.test_tracks is not None]
            rows.append(_Row(model=model, variant=variant, runs=variant_runs,
                             metrics=aggregate([r.test for r in variant_runs]),
                             test_tracks=min(sizes) if sizes else None))

    for name in BASELINES:
        # Every run carries the baselines evaluated on its own test lists; identical ones count once.
        evaluations: dict[str, tuple[dict, Run]] = {}
        for run in runs:
            table = run.test if run.model == name else run.baselines.get(name)
            if table is not None:
                evaluations.setdefault(json.dumps(table, sort_keys=True), (table, run))
        if not evaluations:
            continue
        tables = [table for table, _ in evaluations.values()]
        sources = [run for _, run in evaluations.values()]
        if len(tables) > 1:
            notes.append(f"{name}: the runs evaluated it on different test lists (different test tracks or "
                         f"protocol settings); the row shows mean ± std over its {len(tables)} distinct evaluations.")
        sizes = [r.test_tracks for r in sources if r.test_tracks is not None]
        rows.append(_Row(model=name, variant="", runs=sources, metrics=aggregate(tables),
                         test_tracks=max(sizes) if sizes else None))

    if not reference:
        return rows
    references = sorted((r for r in runs if r.model == reference and r.has_embeddings), key=lambda r: r.run_dir)
    if not references:
        notes.append(f"No {reference} run with embeddings.npz for this dataset: no skew set.")
        return rows
    skew = _Skew(reference=references[0], notes=notes)
    notes.append(f"Skew set built from the failures of {reference} run {references[0].run_dir} "
                 f"({len(skew.embeddings.track_ids)} test tracks, {references[0].similarity} similarity)"
                 + (f"; {len(references) - 1} other {reference} run(s) ignored as reference." if len(references) > 1
                    else "."))
    for row in rows:
        if row.model in BASELINES:
            row.metrics.update(skew.of_baseline(row.model))
            row.skew_runs, row.skew_tracks = 1, len(skew.embeddings.track_ids)
            continue
        with_embeddings = [r for r in row.runs if r.has_embeddings]
        if len(with_embeddings) < len(row.runs):
            notes.append(f"{row.label}: {len(row.runs) - len(with_embeddings)} run(s) without embeddings.npz "
                         "left out of its skew metrics.")
        skewed = [result for result in map(skew.of_run, with_embeddings) if result is not None]
        if skewed:
            row.metrics.update(aggregate([table for table, _ in skewed]))
            row.skew_runs, row.skew_tracks = len(skewed), min(n for _, n in skewed)
    return rows


def _dataset_labels(groups: dict[tuple[str, str], list[Run]]) -> dict[tuple[str, str], str]:
    """A readable, unique label per dataset group: its name, then its similarity, then its directory."""
    labels = {}
    for key, runs in groups.items():
        name = runs[0].dataset
        if sum(g[0].dataset == name for g in groups.values()) > 1:
            name = f"{name} · {key[1]}"
            if sum(g[0].dataset == runs[0].dataset and k[1] == key[1] for k, g in groups.items()) > 1:
                name = f"{name} · {key[0]}"
        labels[key] = name
    return labels


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "dataset"


def _cell(metrics: dict[str, tuple[float, float]], metric: str) -> str:
    if metric not in metrics:
        return "–"
    mean, std = metrics[metric]
    return f"{mean:.3f} ± {std:.3f}"


def _markdown_table(rows: list[_Row], metrics: tuple[str, ...], *, count: str = "runs") -> list[str]:
    lines = ["| model | runs | test tracks | " + " | ".join(metrics) + " |",
             "| --- | ---: | ---: | " + " | ".join("---:" for _ in metrics) + " |"]
    for row in rows:
        runs, tracks = (row.skew_runs, row.skew_tracks) if count == "skew" else (len(row.runs), row.test_tracks)
        tracks = "–" if tracks is None else str(tracks)
        cells = " | ".join(_cell(row.metrics, m) for m in metrics)
        lines.append(f"| {row.label} | {runs} | {tracks} | {cells} |")
    return lines


BASELINE_COLOURS = {"random": "#9e9e9e", "worst": "#424242"}


def _colours(rows: list[_Row]) -> dict[str, str]:
    """A colour per row label (models: tab10 in row order; baselines: greys), so a model keeps its
    colour from the metrics chart to the skew chart."""
    palette = matplotlib.colormaps["tab10"].colors
    models = [row.label for row in rows if row.model not in BASELINE_COLOURS]
    colours = {label: matplotlib.colors.to_hex(palette[i % len(palette)]) for i, label in enumerate(models)}
    colours.update({row.label: BASELINE_COLOURS[row.model] for row in rows if row.model in BASELINE_COLOURS})
    return colours


def plot_bars(*, rows: list[_Row], metrics: tuple[str, ...], title: str, path: str,
              colours: dict[str, str] | None = None) -> None:
    """Grouped bar chart (paper figures 14-16): metrics on the x axis, one bar per row, error bars = std.

    ``colours`` maps row labels to colours (default ``_colours(rows)``); baselines are hatched."""
    matplotlib.use("Agg")  # files only, whatever display the caller has

    rows = [row for row in rows if any(m in row.metrics for m in metrics)]
    positions = np.arange(len(metrics))
    width = 0.8 / max(1, len(rows))
    colours = colours or _colours(rows)
    width_inches = min(13.0, max(8.0, 1.2 * len(metrics) + 0.25 * len(rows) * len(metrics)))
    figure, axes = plt.subplots(figsize=(width_inches, 4.8))
    for i, row in enumerate(rows):
        means = [row.metrics[m][0] if m in row.metrics else np.nan for m in metrics]
        stds = [row.metrics[m][1] if m in row.metrics else np.nan for m in metrics]
        colour, hatch = colours[row.label], ("//" if row.model in BASELINE_COLOURS else None)
        centres = positions + (i - (len(rows) - 1) / 2) * width
        axes.bar(centres, means, width, yerr=stds, capsize=3, label=row.label, color=colour, hatch=hatch,
                 edgecolor="white", linewidth=0.5, error_kw={"elinewidth": 1, "ecolor": "black"})
        # Values on the bars: a 0 (the worst baseline) would otherwise be no bar at all.
        for centre, mean, std in zip(centres, means, stds):
            if not np.isnan(mean):
                axes.text(centre, mean + (0 if np.isnan(std) else std) + 0.015, f"{mean:.2f}", ha="center",
                          va="bottom", rotation=90, fontsize=7)
    axes.set_xticks(positions, metrics)
    axes.set_ylim(0, 1.18)
    axes.set_yticks(np.linspace(0, 1, 6))
    axes.set_ylabel("score (test split)")
    axes.set_title(title)
    axes.grid(axis="y", alpha=0.3)
    axes.set_axisbelow(True)
    axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def build_report(*, run_dirs: list[str], output_dir: str, reference: str | None = "librosa") -> pd.DataFrame:
    """Gather runs into the results table, write ``results.md``, ``results.csv`` and the bar charts.

    Parameters
    ----------
    run_dirs : run directories of ``experiments.run`` (globs allowed, see ``expand_run_dirs``).
    output_dir : where the report goes (created).
    reference : model whose failures build the skew set (paper 5.2 "Skew issues"); None or "" for no
        skew set.

    Returns
    -------
    pandas.DataFrame, one row per (dataset, model, variant), random and worst included; columns
    ``dataset, relevance_def, dataset_dir, model, variant, runs, test_tracks, skew_test_tracks``, then
    ``"<metric> mean"`` and ``"<metric> std"`` for each metric of ``METRICS`` and ``SKEW_METRICS`` (NaN
    where not computed). ``runs`` counts the runs aggregated in the row (distinct evaluations for a
    baseline); ``skew_test_tracks`` the test tracks shared with the reference (None without skew figures).
    """
    if isinstance(run_dirs, str):
        raise ValueError("run_dirs must be a list of run directories, not a string")
    run_dirs = expand_run_dirs(list(run_dirs))
    if not run_dirs:
        raise ValueError("run_dirs is empty: give at least one experiments.run directory")
    runs = [load_run(run_dir) for run_dir in run_dirs]
    groups: dict[tuple[str, str], list[Run]] = {}
    for run in runs:
        groups.setdefault((run.dataset_dir, run.relevance_def), []).append(run)
    labels = _dataset_labels(groups)
    os.makedirs(output_dir, exist_ok=True)

    records, markdown = [], ["# Results", "", FLOORS_NOTE, "", STD_NOTE, ""]
    for key in sorted(groups, key=lambda k: labels[k]):
        label, notes = labels[key], []
        rows = _dataset_rows(groups[key], reference=reference, notes=notes)
        for row in rows:
            record = {"dataset": label, "relevance_def": key[1], "dataset_dir": key[0], "model": row.model,
                      "variant": row.variant, "runs": len(row.runs), "test_tracks": row.test_tracks,
                      "skew_test_tracks": row.skew_tracks}
            for metric in METRICS + SKEW_METRICS:
                mean, std = row.metrics.get(metric, (np.nan, np.nan))
                record[f"{metric} mean"], record[f"{metric} std"] = mean, std
            records.append(record)

        markdown += [f"## {label}", "", f"Dataset `{key[0]}`, similarity `{key[1]}`.", ""]
        markdown += _markdown_table(rows, METRICS)
        random_row = next((r for r in rows if r.model == "random"), None)
        if random_row and "NDCG@6" in random_row.metrics and "MAP" in random_row.metrics:
            markdown += ["", f"Here random scores NDCG@6 {random_row.metrics['NDCG@6'][0]:.3f} and "
                             f"MAP {random_row.metrics['MAP'][0]:.3f}."]
        metrics_png = f"{_slug(label)}_fig14_metrics.png"
        colours = _colours(rows)
        plot_bars(rows=rows, metrics=METRICS, path=os.path.join(output_dir, metrics_png), colours=colours,
                  title=f"{label}: test split, {key[1]} similarity")
        markdown += ["", f"![{label} metrics]({metrics_png})", ""]
        skew_rows = [row for row in rows if row.skew_runs]
        if skew_rows:
            skew_png = f"{_slug(label)}_fig15_skew.png"
            plot_bars(rows=skew_rows, metrics=SKEW_METRICS, path=os.path.join(output_dir, skew_png), colours=colours,
                      title=f"{label}: skew set (failures of {reference})")
            markdown += [f"Skew set (paper 5.2 \"Skew issues\"): per query, the 3 similar tracks {reference} scores "
                         "lowest and the 3 non-similar it scores highest, 15 pairs likewise; the reference's own "
                         "skew figures are low wherever it fails (1.0 only where it ranks every query "
                         "perfectly).", ""]
            markdown += _markdown_table(skew_rows, SKEW_METRICS, count="skew")
            markdown += ["", f"![{label} skew set]({skew_png})", ""]
        if notes:
            markdown += ["Notes:", ""] + [f"- {note}" for note in notes] + [""]

    table = pd.DataFrame.from_records(records)
    table.to_csv(os.path.join(output_dir, "results.csv"), index=False)
    with open(os.path.join(output_dir, "results.md"), "w") as f:
        f.write("\n".join(markdown).rstrip() + "\n")
    return table


FLAGS = flags.FLAGS
flags.DEFINE_list("runs", None, "Run directories of experiments.run, comma-separated; globs allowed "
                  "(quote them), e.g. 'tensorboard_logs/*'.")
flags.DEFINE_string("output", None, "Report directory, e.g. reports/NAME.")
flags.DEFINE_string("reference", "librosa", "Model whose failures build the skew set ('' for none).")


USAGE = "usage: python -m experiments.report --runs=RUN[,RUN...] --output=DIR [--reference=librosa]"


def main(argv) -> int | None:
    """``python -m experiments.report``; 2 (one line on stderr) when --runs or --output is missing."""
    del argv
    if not FLAGS.runs:
        return usage_error("--runs is required: run directories of experiments.run (globs allowed)", usage=USAGE)
    if not FLAGS.output:
        return usage_error("--output is required, e.g. --output=reports/NAME", usage=USAGE)
    build_report(run_dirs=FLAGS.runs, output_dir=FLAGS.output, reference=FLAGS.reference or None)
    with open(os.path.join(FLAGS.output, "results.md")) as f:
        print(f.read())
    print(f"wrote {FLAGS.output}/results.md, results.csv and the charts")


def cli() -> None:
    """``python -m experiments.report`` and the ``musicsim-report`` console script: ``--help`` lists its flags
    (exit 0), a bad flag is one line and exit 2 (``musicsim.cli``)."""
    app.run(main, flags_parser=global_flags_parser(module=sys.modules[__name__], doc=__doc__, usage=USAGE))


if __name__ == "__main__":
    cli()
