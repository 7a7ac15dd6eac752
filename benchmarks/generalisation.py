"""Generalisation benchmark: album folds (the measure that decides defaults), or the two single splits.

``--protocol=album_folds`` (the default) splits the albums of the corpus (default: the extended demo corpus)
into 5 folds (``benchmarks/album_folds.py``: seeded, balanced by track count) and tests each fold once: its
albums are the catalog and every track of the corpus is a query once. Whatever reads labels (a fitted
transform, block weights, a re-ranking choice) sees the other folds only; the label-free steps an index takes
at search time (standardising each dimension over its catalog, DBA / query expansion) use the test
catalog's vectors. Every feature is computed once per track in this process and cached (``--features_dir``:
``blocks/<track id>.npz`` holds the four musicnn checkpoints' layer means and per-patch outputs of one decode;
``feature_cache/`` the MFCC and librosa features), so the rows themselves are cheap numpy:

    python benchmarks/generalisation.py --corpus=demo --output=reports/generalisation \
        --features_dir=data/generalisation/album_folds --workers=1

writes ``album_folds.md`` / ``.csv``: catalog mAP, P@10 and PC, mean ± std over the folds and the mean over all
queries, for random, mfcc, librosa, the four taggers, today's fusion (+ re-ranking chosen on the training
albums) and the pretrained engine's variants (single blocks, concatenations, weights, standardisation,
re-ranking, patch sampling). ``docs/engine-choice.md`` says what it chose and why.

``--protocol=splits``: the track split (the paper's) and one album-disjoint split, every model an
``experiments.run`` subprocess (WaveNet training included). One command prepares both protocols of a corpus (if missing), runs the random, MFCC mean/std and
librosa + PCA models once per protocol (they are deterministic), trains each named WaveNet
configuration once per seed and protocol, builds ``experiments.report`` for each protocol and writes
the combined table (protocol x model, mean ± std over the training seeds):

    python benchmarks/generalisation.py --corpus=/tmp/ext_corpus/manifest.csv \\
        --output=reports/generalisation --data_dir=/tmp/gen/data --runs_dir=/tmp/gen/runs \\
        --seeds=0,1,2 --configs=logmel_lambda_cosine --minutes_per_run=4

Every run is a subprocess ``python -m experiments.run`` (a fresh TF graph and its own memory), its
output kept in ``RUNS_DIR/logs/<protocol>-<name>.log``. The benchmark is resumable: a run whose
``results.json`` exists is not run again (delete its directory to redo it), and a prepared dataset
(``dataset.json``) is not prepared again. ``--time_budget_minutes`` stops launching runs once the
budget would be exceeded; runs not made are listed in the output.

Protocols. ``track``: the paper's stratified 50/25/25 split of the tracks (every album in every
split). ``label``: the album-disjoint split, whole albums per split, so the test albums were never
seen in training: it measures generalisation to new music rather than recall of known albums.

Outputs in ``--output``: ``generalisation.md`` and ``generalisation.csv`` (the combined table; the
csv has one row per protocol and model), and ``<protocol>/results.md``, ``results.csv`` and the
charts of ``experiments.report`` for each protocol.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCHMARKS_DIR = os.path.dirname(os.path.abspath(__file__))
for _folder in (REPO_ROOT, BENCHMARKS_DIR):  # run as a script from anywhere, or loaded from its file by a test
    if _folder not in sys.path:
        sys.path.insert(0, _folder)

import album_folds  # noqa: E402  (benchmarks/album_folds.py, beside this file)
from experiments.recommended import PARTS as RECOMMENDED_PARTS  # noqa: E402
from musicsim import evaluation, rerank  # noqa: E402
from musicsim.rundir import RunDir  # noqa: E402
PROTOCOLS = {"track": "track split (paper)", "label": "album-disjoint split"}
# Models with nothing to train, run once per protocol: the table's row -> experiments.run flags. The
# musicnn rows are the four pretrained taggers of the musicnn 0.1.0 wheel (MSD: a million songs).
FITTED = {
    "random": ("--model=random",),
    "mfcc": ("--model=mfcc",),
    "librosa": ("--model=librosa",),
    "musicnn_msd": ("--model=musicnn", "--musicnn_model=MSD_musicnn"),
    "musicnn_mtt": ("--model=musicnn", "--musicnn_model=MTT_musicnn"),
    "vgg_msd": ("--model=musicnn", "--musicnn_model=MSD_vgg"),
    "vgg_mtt": ("--model=musicnn", "--musicnn_model=MTT_vgg"),
}
FITTED_MODELS = tuple(FITTED)
# Fusions of fitted rows (weights chosen on the eval split), run after their parts.
FUSIONS = {
    "fusion_taggers": ("musicnn_msd", "musicnn_mtt", "vgg_msd", "vgg_mtt"),
    "fusion": tuple(RECOMMENDED_PARTS),  # what experiments.recommended builds for a user's own music
}
RERANK_SUFFIX = " + rerank"
TABLE_METRICS = ("catalog_mAP", "PC", "NDCG@1", "NDCG@6", "MAP")
SIDE_BY_SIDE_METRICS = ("catalog_mAP", "PC", "NDCG@1")
GOAL_METRICS = ("catalog_mAP", "PC")


@dataclass(frozen=True)
class Goal:
    """On the album-disjoint split, the best of the ``candidates`` rows (names containing one of them;
    all non-baseline rows when empty) beats the best of ``references`` by ``margins`` on each metric."""

    title: str
    candidates: tuple[str, ...]
    references: tuple[str, ...]
    margins: dict


GOALS = (
    Goal("the distilled WaveNet ahead of hand-made features", ("distill",), ("mfcc", "librosa"),
         {"catalog_mAP": 0.03, "PC": 0.03}),
    Goal("the best configuration ahead of its teacher", (), ("musicnn_msd",), {"catalog_mAP": 0.03, "PC": 0.02}),
)
# Decode rate and pooling of the data the fitted models and the log-mel WaveNets read: 8 kHz audio,
# so the log-mel front end sees 0-4 kHz (the paper's 3.2 kHz would leave it 0-1.6 kHz).
LOGMEL_DATA = (16000, 2)
PAPER_DATA = (16000, 5)  # the paper's 3.2 kHz

# The log-mel WaveNet: 2 stacks x 4 layers on ~31 frames/s, pooled 2 then 2 (~8 frames/s at the end).
LOGMEL_FLAGS = ("--model=wavenet", "--frontend=logmel", "--n_mels=64", "--channels=32", "--skip_channels=32",
                "--num_stacks=2", "--layers_per_stack=4", "--stack_pool_sizes=2,2", "--final_channels=64",
                "--dense_layers=64", "--crop_seconds=6", "--batch_size=8")


@dataclass(frozen=True)
class WaveNetConfig:
    """A named WaveNet configuration of the benchmark.

    ``flags`` go to ``experiments.run`` as they are; ``data`` is the (decode rate, pool size) of the
    dataset it reads; ``pretrain_flags``, when set, run a self-supervised stage first (its own run
    directory, ``pretrain_share`` of the minutes) and the similarity run warm-starts from it;
    ``max_seeds`` caps the seeds (slow configurations).
    """

    flags: tuple[str, ...]
    description: str
    data: tuple[int, int] = LOGMEL_DATA
    pretrain_flags: tuple[str, ...] = ()
    pretrain_share: float = 0.4
    max_seeds: int | None = None


# The similarity stage of every pretrained configuration: the stacks warm-start logmel_lambda_cosine.
FINE_TUNE_FLAGS = LOGMEL_FLAGS + ("--loss=lambda", "--similarity=cosine", "--warm_start_vars=stacks")


def distill_config(*, teacher: str, description: str, extra: tuple[str, ...] = ()) -> WaveNetConfig:
    """Distillation of the musicnn checkpoint ``teacher`` (cosine, plus ``extra`` flags) into the log-mel
    WaveNet on 60% of the minutes, then fine-tuning."""
    return WaveNetConfig(flags=FINE_TUNE_FLAGS, pretrain_share=0.6, description=description,
                         pretrain_flags=LOGMEL_FLAGS + ("--pretrain=distill", f"--musicnn_model={teacher}",
                                                        "--distill_loss=cosine", *extra))


CONFIGS = {
    "logmel_lambda_cosine": WaveNetConfig(
        flags=LOGMEL_FLAGS + ("--loss=lambda", "--similarity=cosine"),
        description="log-mel WaveNet (64 mels, 2x4 layers, 32 ch, pools 2,2, dense 64), LambdaLoss, cosine"),
    "logmel_lambda_euclidean": WaveNetConfig(
        flags=LOGMEL_FLAGS + ("--loss=lambda", "--similarity=euclidean"),
        description="as logmel_lambda_cosine, Euclidean similarity"),
    "logmel_pairwise_cosine": WaveNetConfig(
        flags=LOGMEL_FLAGS + ("--loss=pairwise", "--similarity=cosine"),
        description="as logmel_lambda_cosine, pairwise hinge loss on pairwise lists"),
    "logmel_contrastive_finetune": WaveNetConfig(
        flags=FINE_TUNE_FLAGS,
        pretrain_flags=LOGMEL_FLAGS + ("--loss=lambda", "--similarity=cosine", "--pretrain=contrastive",
                                       "--n_negatives=3"),
        description="contrastive pretraining on the train split (labels unused), then the stacks warm-start "
                    "logmel_lambda_cosine"),
    "logmel_contrastive_all_finetune": WaveNetConfig(
        flags=FINE_TUNE_FLAGS,
        pretrain_flags=LOGMEL_FLAGS + ("--loss=lambda", "--similarity=cosine", "--pretrain=contrastive",
                                       "--n_negatives=3", "--pretrain_splits=train,eval,test"),
        description="as logmel_contrastive_finetune, the contrastive stage reading the audio of every split "
                    "(labels unused: what a search engine can do with the catalog it indexes)"),
    "logmel_scaled_contrastive_all_finetune": WaveNetConfig(
        flags=LOGMEL_FLAGS + ("--loss=lambda", "--similarity=cosine", "--score_scale=10", "--warm_start_vars=stacks"),
        pretrain_flags=LOGMEL_FLAGS + ("--loss=lambda", "--similarity=cosine", "--score_scale=10",
                                       "--pretrain=contrastive", "--n_negatives=3",
                                       "--pretrain_splits=train,eval,test"),
        description="as logmel_contrastive_all_finetune, both stages scoring with cosine x 10 (--score_scale) "
                    "so the logistic loss can separate pairs"),
    "logmel_distill_finetune": distill_config(
        teacher="MSD_musicnn",
        description="distillation: the log-mel WaveNet learns to reproduce musicnn MSD's penultimate vector of "
                    "each crop of the train split's audio (labels unused; its own row is '/pretrain'), then the "
                    "stacks warm-start logmel_lambda_cosine"),
    "logmel_distill_mtt_finetune": distill_config(
        teacher="MTT_musicnn",
        description="as logmel_distill_finetune, the teacher musicnn MTT (the tagger that ranks unseen albums "
                    "best of the four on the extended corpus)"),
    "logmel_distill_mtt_augment_finetune": distill_config(
        teacher="MTT_musicnn", extra=("--distill_augment",),
        description="as logmel_distill_mtt_finetune, the student reading augmented crops (shift, EQ, gain, "
                    "noise: --distill_augment) against the clean crops' targets, so it cannot learn the train "
                    "crops by heart"),
    "logmel_distill_mtt_all_finetune": distill_config(
        teacher="MTT_musicnn", extra=("--pretrain_splits=train,eval,test",),
        description="as logmel_distill_mtt_finetune, distilling on the audio of every split (labels unused: "
                    "what a search engine can do with the catalog it indexes; the student hears the test "
                    "albums, never their labels)"),
    "raw_paper": WaveNetConfig(
        flags=("--model=wavenet", "--frontend=raw", "--loss=lambda", "--similarity=cosine", "--batch_size=4",
               "--crop_seconds=4"),
        data=PAPER_DATA, max_seeds=1,
        description="the paper's WaveNet on raw 3.2 kHz audio (3 stacks x 6 layers, pools 4; one seed: slow on CPU)"),
}


def dataset_dir(*, data_dir: str, protocol: str, data: tuple[int, int]) -> str:
    """The prepared dataset of one protocol at one (decode rate, pool size)."""
    sample_rate, pool_size = data
    return os.path.join(data_dir, f"{protocol}_sr{sample_rate}_pool{pool_size}")


def corpus_source(corpus: str) -> list[str]:
    """``data_prep.build`` flags naming the corpus: a manifest csv, a folder holding ``manifest.csv``, or
    ``demo`` (the extended demo corpus, built with apt on first use).

    Raises
    ------
    FileNotFoundError
        When ``corpus`` is neither ``demo`` nor an existing manifest (file or folder with ``manifest.csv``).
    """
    if corpus == "demo":
        return ["--dataset=demo", "--extended"]
    manifest = os.path.join(corpus, "manifest.csv") if os.path.isdir(corpus) else corpus
    if not os.path.isfile(manifest):
        raise FileNotFoundError(f"--corpus={corpus}: no manifest csv there (expected a manifest.csv file, a folder "
                                "holding one, or 'demo')")
    return ["--dataset=manifest", f"--input={os.path.abspath(manifest)}"]


def run_logged(*, command: list[str], log_path: str) -> tuple[int, float]:
    """Run ``command`` from the repository root with its output in ``log_path``; (exit status, seconds)."""
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL=os.environ.get("TF_CPP_MIN_LOG_LEVEL", "3"), PYTHONUNBUFFERED="1")
    started = time.monotonic()
    with open(log_path, "a") as log:
        log.write(f"\n$ {' '.join(command)}\n")
        log.flush()
        status = subprocess.call(command, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
    return status, time.monotonic() - started


def prepare_dataset(*, corpus: str, output: str, protocol: str, data: tuple[int, int], max_seconds: float,
                    workers: int, log_dir: str) -> None:
    """Prepare one protocol's dataset into ``output`` unless it is there (``dataset.json``); share the
    fitted models' feature cache between the datasets of a corpus (the cache is keyed on the source file)."""
    if not os.path.isfile(os.path.join(output, "dataset.json")):
        sample_rate, pool_size = data
        command = [sys.executable, "-m", "data_prep.build", *corpus_source(corpus), f"--output={output}",
                   f"--split_by={protocol}", f"--sample_rate={sample_rate}", f"--pool_size={pool_size}",
                   f"--max_seconds={max_seconds}", f"--workers={workers}", "--noprogress"]
        print(f"preparing {output} ...", flush=True)
        status, seconds = run_logged(command=command, log_path=os.path.join(log_dir, f"prepare-{os.path.basename(output)}.log"))
        if status != 0:
            raise RuntimeError(f"data_prep.build failed for {output} (exit {status}); see {log_dir}")
        print(f"  prepared in {seconds:.0f}s", flush=True)
    shared = os.path.join(os.path.dirname(os.path.abspath(output)), "feature_cache")
    link = os.path.join(output, "feature_cache")
    os.makedirs(shared, exist_ok=True)
    if not os.path.lexists(link):
        os.symlink(shared, link)


@dataclass
class RunPlan:
    """One ``experiments.run`` invocation of the benchmark."""

    protocol: str
    name: str  # the table's row: a fitted model, a WaveNet configuration, or "<config>/pretrain"
    seed: int | None
    model_dir: str
    flags: list[str]
    expensive: bool  # a training run: counted against the time budget
    depends_on: "RunPlan | None" = None
    also_depends_on: tuple = ()  # further runs it needs (a fusion's other parts)
    wall_seconds: float | None = None
    status: str = "pending"  # pending | done | reused | failed | skipped (budget or failed dependency)

    @property
    def finished(self) -> bool:
        return RunDir(self.model_dir).finished()

    @property
    def log_path(self) -> str:
        seed = "" if self.seed is None else f"-seed{self.seed}"
        return os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(self.model_dir))), "logs",
                            f"{self.protocol}-{self.name.replace('/', '-')}{seed}.log")


def plan_runs(*, runs_dir: str, data_dir: str, configs: list[str], seeds: list[int], minutes_per_run: float,
              workers: int, eval_repeats: int, protocols: tuple[str, ...] = tuple(PROTOCOLS),
              fitted: tuple[str, ...] = FITTED_MODELS, fusions: tuple[str, ...] = tuple(FUSIONS),
              rerank: str = "auto", early_stopping_patience: int = 400) -> list[RunPlan]:
    """The fitted models and their fusions on both protocols first, then per configuration, seed and
    protocol (of ``protocols``) the WaveNet runs (seeds outermost within a configuration, so a cut time
    budget leaves the protocols with the same seeds). Every run also scores its re-ranked test split
    (``--rerank``; settings chosen on eval)."""
    plans = []
    common = [f"--workers={workers}", f"--eval_repeats={eval_repeats}", f"--rerank={rerank}"]
    for protocol in PROTOCOLS:
        dataset = dataset_dir(data_dir=data_dir, protocol=protocol, data=LOGMEL_DATA)
        fitted_plans = {}
        for model in fitted:
            model_dir = os.path.join(runs_dir, protocol, model, "run")
            fitted_plans[model] = RunPlan(protocol=protocol, name=model, seed=None, model_dir=model_dir,
                                          expensive=False, flags=[*FITTED[model], f"--dataset={dataset}",
                                                                  f"--model_dir={model_dir}", *common])
            plans.append(fitted_plans[model])
        for name in fusions:
            parts = [fitted_plans[part] for part in FUSIONS[name] if part in fitted_plans]
            if len(parts) < 2:
                continue
            model_dir = os.path.join(runs_dir, protocol, name, "run")
            plans.append(RunPlan(protocol=protocol, name=name, seed=None, model_dir=model_dir, expensive=False,
                                 flags=["--model=fusion", "--fusion_runs=" + ",".join(p.model_dir for p in parts),
                                        f"--dataset={dataset}", f"--model_dir={model_dir}", *common],
                                 depends_on=parts[0], also_depends_on=tuple(parts[1:])))
    training = [f"--max_minutes={minutes_per_run}", "--max_steps=100000", "--save_checkpoints_steps=100",
                f"--early_stopping_patience={early_stopping_patience}"]
    for name in configs:
        config = CONFIGS[name]
        for seed in seeds[:config.max_seeds]:
            for protocol in (p for p in PROTOCOLS if p in protocols):
                dataset = dataset_dir(data_dir=data_dir, protocol=protocol, data=config.data)
                model_dir = os.path.join(runs_dir, protocol, name, f"seed{seed}")
                flags = [*config.flags, f"--dataset={dataset}", f"--model_dir={model_dir}", f"--seed={seed}",
                         *common, *training]
                pretrain = None
                if config.pretrain_flags:
                    pretrain_dir = os.path.join(runs_dir, protocol, f"{name}-pretrain", f"seed{seed}")
                    pretrain_minutes = round(minutes_per_run * config.pretrain_share, 2)
                    pretrain = RunPlan(
                        protocol=protocol, name=f"{name}/pretrain", seed=seed, model_dir=pretrain_dir, expensive=True,
                        flags=[*config.pretrain_flags, f"--dataset={dataset}", f"--model_dir={pretrain_dir}",
                               f"--seed={seed}", *common, *training[1:], f"--max_minutes={pretrain_minutes}"])
                    plans.append(pretrain)
                    fine_tune_minutes = round(minutes_per_run - pretrain_minutes, 2)
                    flags += [f"--warm_start_from={pretrain_dir}", f"--max_minutes={fine_tune_minutes}"]
                plans.append(RunPlan(protocol=protocol, name=name, seed=seed, model_dir=model_dir, expensive=True,
                                     flags=flags, depends_on=pretrain))
    return plans


def execute(plans: list[RunPlan], *, minutes_per_run: float, time_budget_minutes: float | None) -> None:
    """Run the plans in order, skipping finished ones; stop launching training runs past the time budget."""
    started = time.monotonic()
    for plan in plans:
        label = f"{plan.protocol}/{plan.name}" + ("" if plan.seed is None else f" seed {plan.seed}")
        if plan.finished:
            plan.status = "reused"
            print(f"{label}: results.json exists, reused", flush=True)
            continue
        needed = [p for p in (plan.depends_on, *plan.also_depends_on) if p is not None]
        failed = [p for p in needed if p.status in ("failed", "skipped")]
        if failed:
            plan.status = "skipped"
            print(f"{label}: skipped, the run it needs ({failed[0].name}) was {failed[0].status}", flush=True)
            continue
        elapsed = (time.monotonic() - started) / 60.0
        # A training run takes its minutes plus start-up, evaluation and export (about a third more); a
        # pretraining run and its fine-tuning share those minutes and are budgeted together, at the first.
        expected = 1.35 * minutes_per_run if plan.expensive else 0.0
        budgeted = plan.depends_on is not None and plan.depends_on.status in ("done", "reused")
        if time_budget_minutes is not None and not budgeted and elapsed + expected > time_budget_minutes:
            plan.status = "skipped"
            print(f"{label}: skipped, time budget ({elapsed:.1f} of {time_budget_minutes:g} min used)", flush=True)
            continue
        print(f"{label}: running (log {plan.log_path}) ...", flush=True)
        status, seconds = run_logged(command=[sys.executable, "-m", "experiments.run", *plan.flags],
                                     log_path=plan.log_path)
        plan.wall_seconds = seconds
        plan.status = "done" if status == 0 and plan.finished else "failed"
        print(f"  {plan.status} in {seconds:.0f}s" + ("" if plan.status == "done" else f" (exit {status})"),
              flush=True)


@dataclass
class Row:
    """One (protocol, model) row of the combined table."""

    protocol: str
    name: str
    runs: int
    metrics: dict[str, tuple[float, float]]  # metric -> (mean, std)
    std_over: str  # "seeds" (std over the training runs' means) or "eval lists" (one run's evaluation seeds)
    wall_seconds: float | None
    test_tracks: int | None
    extra: dict = field(default_factory=dict)


def load_results(model_dir: str) -> dict:
    return RunDir(model_dir).results()


def test_track_ids(model_dir: str) -> tuple[str, ...]:
    """The sorted test-split track ids of a run's ``embeddings.npz``."""
    embeddings = RunDir(model_dir).embeddings()
    return tuple(sorted(t for t, split in zip(embeddings.track_ids, embeddings.splits) if split == "test"))


def combine(plans: list[RunPlan]) -> list[Row]:
    """Mean ± std over the finished runs of each (protocol, name): population std of the runs' means
    over seeds (as ``experiments.report``); a single run keeps its own std over the evaluation seeds."""
    groups: dict[tuple[str, str], list[RunPlan]] = {}
    for plan in plans:
        if plan.finished:
            groups.setdefault((plan.protocol, plan.name), []).append(plan)
    rows = []
    for (protocol, name), members in groups.items():
        results = [load_results(p.model_dir) for p in members]
        metrics = _over_runs([r["test"] for r in results])
        walls = [r.get("wall_seconds") for r in results if r.get("wall_seconds") is not None]
        steps = [r.get("eval_metrics", {}).get("global_step") for r in results]
        steps = [s for s in steps if s is not None]
        test_ids = {test_track_ids(p.model_dir) for p in members
                    if RunDir(p.model_dir).has_embeddings()}
        common = dict(protocol=protocol, runs=len(results), std_over="seeds" if len(results) > 1 else "eval lists",
                      wall_seconds=float(np.mean(walls)) if walls else None,
                      test_tracks=(results[0].get("sizes") or {}).get("test"))
        agreements = [r["held_out_metrics"]["teacher_agreement_test"]["cosine"] for r in results
                      if "teacher_agreement_test" in (r.get("held_out_metrics") or {})]
        extra = {"steps": steps, "seeds": [p.seed for p in members], "test_sets": test_ids,
                 "teacher_agreement": float(np.mean(agreements)) if len(agreements) == len(results) else None}
        rows.append(Row(name=name, metrics=metrics, extra=extra, **common))
        reranked = [r["rerank"] for r in results if "rerank" in r]
        if len(reranked) == len(results):
            settings = sorted({json.dumps(r["settings"], sort_keys=True) for r in reranked})
            rows.append(Row(name=name + RERANK_SUFFIX, metrics=_over_runs([r["test"] for r in reranked]),
                            extra=dict(extra, rerank=[json.loads(s) for s in settings]), **common))
    order = {name: i for i, name in enumerate(FITTED_MODELS)}
    return sorted(rows, key=lambda r: (list(PROTOCOLS).index(r.protocol),
                                       order.get(r.name.removesuffix(RERANK_SUFFIX), len(order)), r.name))


def _over_runs(tests: list[dict]) -> dict[str, tuple[float, float]]:
    """One run's (mean, std over the evaluation seeds), or the mean and std of several runs' means."""
    if len(tests) == 1:
        return {m: (v["mean"], v["std"]) for m, v in tests[0].items()}
    return {m: (float(np.mean([t[m]["mean"] for t in tests])), float(np.std([t[m]["mean"] for t in tests])))
            for m in tests[0]}


def _cell(metrics: dict[str, tuple[float, float]], metric: str) -> str:
    if metric not in metrics:
        return "–"
    mean, std = metrics[metric]
    return f"{mean:.3f} ± {std:.3f}"


def goal_check(rows: list[Row], goals: tuple[Goal, ...] = GOALS) -> list[str]:
    """Lines saying, for each goal, whether its best candidate row on the album-disjoint split beats the
    best reference row by the goal's margins (means over seeds)."""
    by_name = {r.name: r for r in rows if r.protocol == "label"}
    lines = []
    for goal in goals:
        references = [by_name[n] for n in goal.references if n in by_name]
        candidates = [r for r in by_name.values() if not r.name.endswith("/pretrain") and r.name != "random"
                      and r.name not in goal.references
                      and (not goal.candidates or any(c in r.name for c in goal.candidates))]
        lines.append(f"Goal: {goal.title}: best of {list(goal.candidates) or 'every row'} ≥ best of "
                     f"{list(goal.references)} + " + ", ".join(f"{m} {v}" for m, v in goal.margins.items())
                     + " (album-disjoint split, mean over seeds).")
        if not references or not candidates:
            lines += [f"- not checkable: no finished {'reference' if not references else 'candidate'} row", ""]
            continue
        targets = {m: max(r.metrics[m][0] for r in references) + margin for m, margin in goal.margins.items()}
        best = max(candidates, key=lambda r: (r.metrics["catalog_mAP"][0], r.metrics["PC"][0]))
        for row in sorted(candidates, key=lambda r: -r.metrics["catalog_mAP"][0])[:5]:
            met = all(row.metrics[m][0] >= targets[m] for m in goal.margins)
            gaps = ", ".join(f"{m} {row.metrics[m][0]:.3f} (target {targets[m]:.3f})" for m in goal.margins)
            seeds_note = "" if row.runs >= 3 or row.name.removesuffix(RERANK_SUFFIX) in FITTED_MODELS + tuple(FUSIONS) \
                else f" — only {row.runs} seed(s)"
            lines.append(f"- {row.name}{' (best)' if row is best else ''}: {gaps}: "
                         f"{'MET' if met else 'not met'}{seeds_note}")
        lines.append("")
    return lines


def write_tables(rows: list[Row], plans: list[RunPlan], *, output: str, command: str) -> str:
    """Write ``generalisation.md`` and ``.csv`` into ``output``; return the markdown."""
    import pandas as pd

    names = []
    for row in rows:
        if row.name not in names:
            names.append(row.name)
    cell = {(r.protocol, r.name): r for r in rows}
    md = ["# Generalisation: track split vs album-disjoint split", "",
          f"Reproduce: `{command}`", "",
          "mean ± std: over the training seeds (population std of the runs' means) for rows with runs > 1; "
          "over the evaluation seeds of the test lists for a single run (the fitted models are deterministic). "
          "Catalog mAP (each query ranks the whole test split), PC and NDCG@1 are the figures to watch; "
          "NDCG@6 and the 6-list MAP have high floors.", "",
          "## Side by side", "",
          "| model | " + " | ".join(f"{PROTOCOLS[p]}: {m}" for p in PROTOCOLS for m in SIDE_BY_SIDE_METRICS) + " |",
          "| --- | " + " | ".join("---:" for _ in PROTOCOLS for _ in SIDE_BY_SIDE_METRICS) + " |"]
    for name in names:
        cells = [_cell(cell[(p, name)].metrics, m) if (p, name) in cell else "–"
                 for p in PROTOCOLS for m in SIDE_BY_SIDE_METRICS]
        md.append(f"| {name} | " + " | ".join(cells) + " |")
    for protocol, title in PROTOCOLS.items():
        protocol_rows = [r for r in rows if r.protocol == protocol]
        if not protocol_rows:
            continue
        md += ["", f"## {title} (`{protocol}`)", "",
               "| model | runs | test tracks | " + " | ".join(TABLE_METRICS)
               + " | train steps | wall s / run | teacher agreement (test) |",
               "| --- | ---: | ---: | " + " | ".join("---:" for _ in TABLE_METRICS) + " | ---: | ---: | ---: |"]
        for row in protocol_rows:
            steps = ",".join(str(s) for s in row.extra["steps"]) or "–"
            wall = "–" if row.wall_seconds is None else f"{row.wall_seconds:.0f}"
            agreement = row.extra.get("teacher_agreement")
            agreement = "–" if agreement is None else f"{agreement:.3f}"
            md.append(f"| {row.name} | {row.runs} | {row.test_tracks} | "
                      + " | ".join(_cell(row.metrics, m) for m in TABLE_METRICS) + f" | {steps} | {wall} | {agreement} |")
    md += ["", "## Goal", ""] + goal_check(rows)
    md += ["", "## Configurations", ""]
    used = [n for n in names if n in CONFIGS or n.split("/")[0] in CONFIGS]
    for name in dict.fromkeys(n.split("/")[0] for n in used):
        config = CONFIGS[name]
        pretraining = f"; pretraining flags: `{' '.join(config.pretrain_flags)}`" if config.pretrain_flags else ""
        md.append(f"- `{name}`: {config.description}. Flags: `{' '.join(config.flags)}`{pretraining}")
    not_run = [p for p in plans if p.status in ("skipped", "failed")]
    if not_run:
        md += ["", "## Not run or failed", ""]
        md += [f"- {p.protocol}/{p.name}" + ("" if p.seed is None else f" seed {p.seed}") + f": {p.status} "
               f"(log {p.log_path})" for p in not_run]
    for protocol in PROTOCOLS:
        test_sets = set().union(*(r.extra["test_sets"] for r in rows if r.protocol == protocol))
        if len(test_sets) > 1:
            md += ["", f"Warning: the {protocol} runs were tested on {len(test_sets)} different track sets."]
    text = "\n".join(md) + "\n"
    with open(os.path.join(output, "generalisation.md"), "w") as f:
        f.write(text)
    records = []
    for row in rows:
        record = {"protocol": row.protocol, "model": row.name, "runs": row.runs, "std_over": row.std_over,
                  "test_tracks": row.test_tracks, "wall_seconds_per_run": row.wall_seconds,
                  "seeds": ",".join("" if s is None else str(s) for s in row.extra["seeds"]),
                  "teacher_agreement_test": row.extra.get("teacher_agreement")}
        for metric in TABLE_METRICS:
            mean, std = row.metrics.get(metric, (np.nan, np.nan))
            record[f"{metric} mean"], record[f"{metric} std"] = mean, std
        records.append(record)
    pd.DataFrame.from_records(records).to_csv(os.path.join(output, "generalisation.csv"), index=False)
    return text


def protocol_reports(plans: list[RunPlan], *, output: str) -> None:
    """``experiments.report`` over the finished runs of each protocol, into ``output/<protocol>``."""
    from experiments.report import build_report

    for protocol in PROTOCOLS:
        run_dirs = [p.model_dir for p in plans if p.protocol == protocol and p.finished]
        if run_dirs:
            build_report(run_dirs=run_dirs, output_dir=os.path.join(output, protocol))


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
    from musicsim.audio import file_duration
    from musicsim.models import pretrained_engine

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
    from musicsim.atomic import atomic_path, write_json_atomic
    from musicsim.audio import AudioDecodeError

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
            from musicsim.models.pretrained_engine import shared_networks

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
    from data_prep.sources import list_manifest

    if corpus == "demo":
        from data_prep.demo import build_demo_corpus

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
    from musicsim.features import extract_many

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


# Each row is (choose, search) for album_folds.run_album_folds.
def random_row() -> tuple:
    def choose(*, features, labels):
        return None

    def search(*, choice, features):
        n = len(next(iter(features.values())))
        return np.random.default_rng(np.random.SeedSequence([n, 7])).random((n, n))

    return choose, search


def fitted_row(*, model: str, key: str, checkpoint: str | None = None) -> tuple:
    """Today's fitted model (``--model=mfcc|librosa|musicnn``): fitted on the training albums' features (train
    standardisation, librosa's PCA), its own similarity, no re-ranking."""
    from musicsim.models import fitted_class

    def choose(*, features, labels):
        cls = fitted_class(model)
        instance = cls(checkpoint=checkpoint) if checkpoint else cls()
        return instance.fit_features(features=features[key])

    def search(*, choice, features):
        vectors = choice.embed_features(features=features[key])
        return evaluation.similarity_matrix(embeddings=vectors, similarity=choice.similarity)

    return choose, search


def choose_rerank(*, vectors_of: Callable[[np.ndarray], np.ndarray], catalogs: list[np.ndarray], labels: np.ndarray,
                  grid: Sequence = RERANK_GRID):
    """The re-ranking of ``grid`` with the best mean catalog mAP over the training catalogs (none wins ties)."""
    best, best_map = None, -np.inf
    for settings in grid:
        value = album_folds.mean_catalog_map(
            catalogs=catalogs, labels=labels,
            scores_of=lambda rows: album_folds.search_scores(vectors=vectors_of(rows), settings=settings))
        if value > best_map + 1e-12:
            best, best_map = settings, value
    return best


def fusion_row(*, parts: Sequence[str] = tuple(RECOMMENDED_PARTS), choose_rerank_too: bool = False,
               rerank_grid: Sequence | None = None, n_catalogs: int = 4) -> tuple:
    """Today's fusion (``--model=fusion`` of experiments.recommended's parts): each part fitted on the training
    albums, the concatenation standardised with their statistics, block weights by ``musicsim.models.fusion``'s
    coordinate search and (``choose_rerank_too``) a re-ranking chosen on the training albums (catalogs of
    test-fold size, `album_folds.inner_catalogs`)."""
    from musicsim.models import fitted_class
    from musicsim.models.fusion import SEARCH_PASSES, WEIGHT_GRID

    def part_key(part: str) -> str:
        return "librosa" if part == "librosa" else f"{TAGGER_ROWS[part]}/penultimate"

    def choose(*, features, labels):
        models = []
        for part in parts:
            model, params = RECOMMENDED_PARTS[part]
            cls = fitted_class(model)
            instance = cls(checkpoint=params["musicnn_model"]) if "musicnn_model" in params else cls()
            models.append(instance.fit_features(features=features[part_key(part)]))
        embedded = {part: m.embed_features(features=features[part_key(part)]) for part, m in zip(parts, models)}
        statistics = {part: album_folds.column_statistics(embedded[part]) for part in parts}
        catalogs = album_folds.inner_catalogs(labels=labels, n_catalogs=n_catalogs)

        def vectors(rows, weights):
            return album_folds.block_vectors(features={p: v[rows] for p, v in embedded.items()}, blocks=parts,
                                             weights=weights, statistics=statistics)

        def objective(weights):
            return album_folds.mean_catalog_map(
                catalogs=catalogs, labels=labels,
                scores_of=lambda rows: album_folds.search_scores(vectors=vectors(rows, weights)))

        weights, _ = album_folds.coordinate_search(n_blocks=len(parts), objective=objective, grid=WEIGHT_GRID,
                                                   passes=SEARCH_PASSES)
        settings = rerank.RerankSettings()
        if choose_rerank_too:
            settings = choose_rerank(vectors_of=lambda rows: vectors(rows, weights), catalogs=catalogs,
                                     labels=labels, grid=rerank.default_grid() if rerank_grid is None else rerank_grid)
        return {"models": models, "statistics": statistics, "weights": weights, "rerank": settings}

    def search(*, choice, features):
        embedded = {part: m.embed_features(features=features[part_key(part)])
                    for part, m in zip(parts, choice["models"])}
        vectors = album_folds.block_vectors(features=embedded, blocks=parts, weights=choice["weights"],
                                            statistics=choice["statistics"])
        return album_folds.search_scores(vectors=vectors, settings=choice["rerank"])

    return choose, search


@dataclass(frozen=True)
class EngineVariant:
    """One way of making the pretrained engine's vector, measured as a row.

    ``blocks``: feature keys concatenated; ``weights``: fixed per block, or None (equal) / ``"search"`` (a
    coordinate search on the training albums); ``standardise``: ``catalog`` (each dimension z-scored over the
    searched catalog itself: the index's label-free step) or ``train`` (the training albums' statistics);
    ``rerank``: fixed settings, or ``"choose"`` (``RERANK_GRID``, chosen on the training albums).
    """

    blocks: tuple[str, ...]
    weights: tuple[float, ...] | str | None = None
    standardise: str = "catalog"
    rerank: rerank.RerankSettings | str = rerank.RerankSettings()
    weight_grid: tuple[float, ...] = (0.0, 0.5, 1.0, 1.5, 2.0)


# The engine's vector as chosen under album folds (docs/engine-choice.md): the rows "rerank" and "patches" vary it.
ENGINE_CHOICE = EngineVariant(blocks=PENULTIMATES + MAXPOOLS,
                              rerank=rerank.RerankSettings(method="dba+aqe", k=5, alpha=3.0))
ENGINE_CHOICE_NAME = "4 penultimates + 2 maxpools + dba+aqe:k=5,alpha=3"


def shipped_engine_variant() -> tuple[EngineVariant, str]:
    """The engine as ``musicsim.models.pretrained_engine`` ships it (BLOCKS, ENGINE_RERANK, DEFAULT_MAX_PATCHES),
    as a row: catalog standardisation, its fixed weights and re-ranking; (variant, description)."""
    from musicsim.models import pretrained_engine

    sampled = pretrained_engine.DEFAULT_MAX_PATCHES
    if sampled is not None and sampled not in PATCH_SAMPLES and sampled < BLOCK_MAX_PATCHES:
        raise ValueError(f"pretrained_engine.DEFAULT_MAX_PATCHES={sampled}: the benchmark samples {PATCH_SAMPLES}")
    suffix = f"@{sampled}" if sampled is not None and sampled < BLOCK_MAX_PATCHES else ""
    blocks = tuple(f"{c}/{l}" + ("" if c == pretrained_engine.LOGMEL else suffix)
                   for c, l, _ in pretrained_engine.BLOCKS)
    weights = tuple(float(w) for _, _, w in pretrained_engine.BLOCKS)
    settings = rerank.parse_settings(pretrained_engine.ENGINE_RERANK)
    description = (" + ".join(f"{b}×{w:g}" for b, w in zip(blocks, weights)) + f", rerank {pretrained_engine.ENGINE_RERANK}"
                   + f", max_patches {sampled}")
    return EngineVariant(blocks=blocks, weights=weights, rerank=settings), description


def engine_row(variant: EngineVariant, *, n_catalogs: int = 4) -> tuple:
    """(choose, search) of an `EngineVariant`: labels are read only to choose weights / re-ranking when the
    variant asks for it, on catalogs of the training albums searched as a test catalog is."""
    blocks = variant.blocks

    def statistics_for(features):
        return {b: album_folds.column_statistics(features[b]) for b in blocks}

    def choose(*, features, labels):
        statistics = statistics_for(features) if variant.standardise == "train" else None
        weights = np.ones(len(blocks)) if variant.weights is None or variant.weights == "search" \
            else np.asarray(variant.weights, np.float64)
        catalogs = album_folds.inner_catalogs(labels=labels, n_catalogs=n_catalogs)

        def vectors(rows, w):
            return album_folds.block_vectors(features={b: features[b][rows] for b in blocks}, blocks=blocks,
                                             weights=w, statistics=statistics)

        if variant.weights == "search":
            weights, _ = album_folds.coordinate_search(
                n_blocks=len(blocks), grid=variant.weight_grid,
                objective=lambda w: album_folds.mean_catalog_map(
                    catalogs=catalogs, labels=labels,
                    scores_of=lambda rows: album_folds.search_scores(vectors=vectors(rows, w))))
        settings = variant.rerank
        if settings == "choose":
            settings = choose_rerank(vectors_of=lambda rows: vectors(rows, weights), catalogs=catalogs, labels=labels)
        return {"statistics": statistics, "weights": weights, "rerank": settings}

    def search(*, choice, features):
        vectors = album_folds.block_vectors(features=features, blocks=blocks, weights=choice["weights"],
                                            statistics=choice["statistics"])
        return album_folds.search_scores(vectors=vectors, settings=choice["rerank"])

    return choose, search


def describe_choices(result: "album_folds.RowResult") -> str:
    """The per-fold choices of a row that chose something (weights, re-ranking), for the table."""
    parts = []
    for fold in result.folds:
        choice = fold.choice
        if not isinstance(choice, dict):
            continue
        text = []
        if "weights" in choice and len(choice["weights"]) > 1 and not np.all(np.asarray(choice["weights"]) == 1):
            text.append("w=" + "/".join(f"{w:g}" for w in choice["weights"]))
        settings = choice.get("rerank")
        if isinstance(settings, rerank.RerankSettings) and settings.method != "none":
            text.append(f"{settings.method} k={settings.k} a={settings.alpha:g}")
        parts.append(" ".join(text))
    if len(set(parts)) == 1:
        return parts[0] + (" (every fold)" if parts[0] else "")
    return "; ".join(p or "none" for p in parts)


def album_fold_rows(*, groups: Sequence[str]) -> list[tuple[str, str, tuple]]:
    """The rows of the album-folds table: (group, name, (choose, search)), in table order."""
    rows: list[tuple[str, str, tuple]] = []
    if "baselines" in groups:
        rows += [("baselines", "random", random_row()),
                 ("baselines", "mfcc", fitted_row(model="mfcc", key="mfcc")),
                 ("baselines", "librosa", fitted_row(model="librosa", key="librosa"))]
        rows += [("baselines", name, fitted_row(model="musicnn", key=f"{checkpoint}/penultimate",
                                                checkpoint=checkpoint)) for name, checkpoint in TAGGER_ROWS.items()]
        rows += [("baselines", "fusion", fusion_row()),
                 ("baselines", "fusion" + RERANK_SUFFIX, fusion_row(choose_rerank_too=True)),
                 ("baselines", "fusion + rerank (the index's methods: aqe/dba)",
                  fusion_row(choose_rerank_too=True, rerank_grid=RERANK_GRID))]
    if "blocks" in groups:
        for block in PENULTIMATES + TAGGRAMS + MAXPOOLS + LOGMEL_BLOCKS + ("logmel", "mfcc"):
            rows.append(("blocks", f"block {block}", engine_row(EngineVariant(blocks=(block,)))))
    if "engine" in groups:
        variants = {
            "4 penultimates": EngineVariant(blocks=PENULTIMATES),
            "4 penultimates, train standardisation": EngineVariant(blocks=PENULTIMATES, standardise="train"),
            "4 penultimates, weights searched": EngineVariant(blocks=PENULTIMATES, weights="search"),
            "MSD+MTT musicnn penultimates": EngineVariant(blocks=PENULTIMATES[:2]),
            "musicnn + vgg MTT penultimates": EngineVariant(blocks=PENULTIMATES[:2] + PENULTIMATES[3:]),
            "4 penultimates + 4 taggrams": EngineVariant(blocks=PENULTIMATES + TAGGRAMS),
            "4 penultimates + 2 maxpools": EngineVariant(blocks=PENULTIMATES + MAXPOOLS),
            "4 penultimates + 2 maxpools, train standardisation": EngineVariant(blocks=PENULTIMATES + MAXPOOLS,
                                                                               standardise="train"),
            "4 penultimates + MTT maxpool": EngineVariant(blocks=PENULTIMATES + MAXPOOLS[1:]),
            "4 penultimates + 2 maxpools (weights 0.5)": EngineVariant(blocks=PENULTIMATES + MAXPOOLS,
                                                                      weights=(1, 1, 1, 1, 0.5, 0.5)),
            "4 penultimates + 2 maxpools, weights searched": EngineVariant(blocks=PENULTIMATES + MAXPOOLS,
                                                                          weights="search"),
            "4 penultimates + 2 maxpools, re-ranking chosen": EngineVariant(blocks=PENULTIMATES + MAXPOOLS,
                                                                           rerank="choose"),
            "4 penultimates + mfcc": EngineVariant(blocks=PENULTIMATES + ("mfcc",)),
            "4 penultimates + logmel mean": EngineVariant(blocks=PENULTIMATES + LOGMEL_BLOCKS[:1]),
            "4 penultimates + logmel mean, std": EngineVariant(blocks=PENULTIMATES + LOGMEL_BLOCKS),
            "2 maxpools + logmel mean, std": EngineVariant(blocks=MAXPOOLS + LOGMEL_BLOCKS),
            "4 penultimates + 2 maxpools + logmel mean, std": EngineVariant(blocks=PENULTIMATES + MAXPOOLS
                                                                           + LOGMEL_BLOCKS),
            "4 penultimates + 2 maxpools + logmel mean, std, train standardisation": EngineVariant(
                blocks=PENULTIMATES + MAXPOOLS + LOGMEL_BLOCKS, standardise="train"),
            "4 penultimates + 2 maxpools + logmel mean, std, weights searched": EngineVariant(
                blocks=PENULTIMATES + MAXPOOLS + LOGMEL_BLOCKS, weights="search"),
            "two networks: MTT musicnn (penultimate, maxpool) + MSD vgg + logmel mean, std": EngineVariant(
                blocks=("MTT_musicnn/penultimate", "MTT_musicnn/maxpool", "MSD_vgg/penultimate") + LOGMEL_BLOCKS),
            "all blocks, weights searched": EngineVariant(blocks=PENULTIMATES + TAGGRAMS + MAXPOOLS + LOGMEL_BLOCKS
                                                          + ("mfcc",), weights="search"),
            "4 penultimates, re-ranking chosen": EngineVariant(blocks=PENULTIMATES, rerank="choose"),
            "4 penultimates + 2 maxpools + logmel mean, std, re-ranking chosen": EngineVariant(
                blocks=PENULTIMATES + MAXPOOLS + LOGMEL_BLOCKS, rerank="choose"),
        }
        rows += [("engine", f"pretrained: {name}", engine_row(v)) for name, v in variants.items()]
        rows.append(("engine", "pretrained: chosen, without re-ranking",
                     engine_row(dataclasses.replace(ENGINE_CHOICE, rerank=rerank.RerankSettings()))))
        rows.append(("engine", f"pretrained: chosen ({ENGINE_CHOICE_NAME})", engine_row(ENGINE_CHOICE)))
        shipped, description = shipped_engine_variant()
        rows.append(("engine", f"pretrained as shipped ({description})", engine_row(shipped)))
    if "rerank" in groups:
        for settings in RERANK_GRID[1:]:
            name = f"{settings.method}:k={settings.k},alpha={settings.alpha:g}"
            rows.append(("rerank", f"pretrained: chosen blocks + {name}",
                         engine_row(dataclasses.replace(ENGINE_CHOICE, rerank=settings))))
    if "patches" in groups:
        for n in PATCH_SAMPLES:
            sampled = tuple(b if b.startswith("logmel") or "/" not in b else f"{b}@{n}" for b in ENGINE_CHOICE.blocks)
            rows.append(("patches", f"pretrained: chosen (with its re-ranking), max {n} patches",
                         engine_row(dataclasses.replace(ENGINE_CHOICE, blocks=sampled))))
        for n in PATCH_SAMPLES:
            rows.append(("patches", f"pretrained: 4 penultimates, max {n} patches",
                         engine_row(EngineVariant(blocks=tuple(f"{b}@{n}" for b in PENULTIMATES)))))
    return rows


ROW_GROUPS = ("baselines", "blocks", "engine", "rerank", "patches")


def album_folds_table(results: list[tuple[str, "album_folds.RowResult"]], *, reference: str = "musicnn_msd"
                      ) -> list[str]:
    """Markdown lines: one row per result, mean ± std over folds, the mean over all queries, the gain over
    ``reference`` and, for the engine's rows, over the chosen engine (catalog mAP and PC, folds won), and what
    the row chose on its training albums."""
    by_name = {r.name: r for _, r in results}
    chosen = next((r for r in by_name.values() if r.name.startswith("pretrained: chosen (")), None)
    lines = ["| group | row | catalog mAP | P@10 | PC | pooled mAP | pooled P@10 | pooled PC | Δ mAP vs "
             f"{reference} (folds won) | Δ mAP / Δ PC vs chosen (folds won) | chosen on the training albums |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]

    def gain(row, base) -> str:
        delta, won = album_folds.paired_gain(row=row, reference=base)
        delta_pc, won_pc = album_folds.paired_gain(row=row, reference=base, metric="PC")
        return f"{delta:+.3f} ({won}/{len(row.folds)}) / {delta_pc:+.3f} ({won_pc}/{len(row.folds)})"

    for group, result in results:
        summary = result.summary()
        cells = [f"{summary[m]['mean']:.3f} ± {summary[m]['std']:.3f}" for m in album_folds.FOLD_METRICS]
        cells += [f"{summary[m]['pooled']:.3f}" for m in album_folds.FOLD_METRICS]
        versus_reference = "–"
        if reference in by_name and result.name != reference:
            delta, won = album_folds.paired_gain(row=result, reference=by_name[reference])
            versus_reference = f"{delta:+.3f} ({won}/{len(result.folds)})"
        versus_chosen = gain(result, chosen) if chosen is not None and result is not chosen \
            and group in ("engine", "rerank", "patches") else "–"
        lines.append(f"| {group} | {result.name} | " + " | ".join(cells)
                     + f" | {versus_reference} | {versus_chosen} | {describe_choices(result)} |")
    return lines


def album_folds_goals(results: list[tuple[str, "album_folds.RowResult"]]) -> list[str]:
    """Issue 20's goal for the engine rows: catalog mAP ≥ musicnn_msd + 0.03 and ≥ today's fusion (both
    fusion rows), mean over folds, with the folds won."""
    by_name = {r.name: r for _, r in results}
    references = [n for n in ("musicnn_msd", "fusion", "fusion" + RERANK_SUFFIX) if n in by_name]
    lines = ["## Goal: pretrained ≥ musicnn_msd + 0.03 catalog mAP and ≥ today's fusion (mean over folds)", ""]
    if "musicnn_msd" not in by_name:
        return lines + ["- not checkable: the baselines were not run (--rows=baselines)"]
    for name, row in by_name.items():
        if not (name.startswith("pretrained: chosen (") or name.startswith("pretrained as shipped")):
            continue
        mean = row.summary()["catalog_mAP"]["mean"]
        checks = []
        for reference in references:
            target = by_name[reference].summary()["catalog_mAP"]["mean"] + (0.03 if reference == "musicnn_msd" else 0.0)
            _, won = album_folds.paired_gain(row=row, reference=by_name[reference])
            checks.append(f"{'≥' if mean >= target - 1e-12 else '<'} {reference}{' + 0.03' if reference == 'musicnn_msd' else ''} "
                          f"= {target:.3f} (beats it on {won}/{len(row.folds)} folds)")
        met = all(c.startswith("≥") for c in checks)
        lines.append(f"- {name}: {mean:.3f} " + "; ".join(checks) + f": {'MET' if met else 'not met'}")
    return lines


def run_album_folds_protocol(args: argparse.Namespace, *, command: str) -> str:
    """The album-folds benchmark: features (cached), folds, every row, ``album_folds.md`` / ``.csv``."""
    import pandas as pd

    started = time.monotonic()
    paths, track_ids, albums = load_album_corpus(args.corpus)
    features, usable = load_album_features(paths=paths, track_ids=track_ids, features_dir=args.features_dir,
                                           workers=args.workers, log=lambda m: print(m, flush=True))
    albums = [albums[i] for i in usable]
    folds = album_folds.assign_album_folds(albums=albums, n_folds=args.n_folds, seed=args.fold_seed)
    results = []
    for group, name, (choose, search) in album_fold_rows(groups=args.row_groups):
        t0 = time.monotonic()
        result = album_folds.run_album_folds(features=features, labels=albums, folds=folds, choose=choose,
                                             search=search, name=name, seeds=tuple(range(args.eval_repeats)))
        results.append((group, result))
        summary = result.summary()
        print(f"{name}: catalog mAP {summary['catalog_mAP']['mean']:.3f} ± {summary['catalog_mAP']['std']:.3f}, "
              f"PC {summary['PC']['mean']:.3f} ({time.monotonic() - t0:.1f}s)", flush=True)
    fold_lines = []
    for fold in range(args.n_folds):
        members = sorted({a for a, f in zip(albums, folds) if f == fold})
        fold_lines.append(f"- fold {fold}: {int((folds == fold).sum())} tracks: {', '.join(members)}")
    md = ["# Album folds: every track a query once, on albums nothing was chosen on", "",
          f"Reproduce: `{command}`", "",
          f"{len(albums)} tracks, {len(set(albums))} albums, {args.n_folds} folds (seed {args.fold_seed}, balanced by "
          "track count). Each fold is tested once: its albums are the catalog, each of its tracks a query. "
          "Whatever reads labels (a fitted transform, block weights, a re-ranking choice) sees the other folds only; "
          "catalog standardisation and DBA/AQE use the test catalog's vectors (label-free, as the index does). "
          "Cells: mean ± population std over the folds; pooled: the mean over all queries (PC weighted by queries). "
          "PC: mean over " f"{args.eval_repeats} evaluation seeds of the pair lists.", "",
          *fold_lines, "", *album_folds_table(results), "", *album_folds_goals(results), "",
          f"Done in {(time.monotonic() - started) / 60.0:.1f} min."]
    text = "\n".join(md) + "\n"
    os.makedirs(args.output, exist_ok=True)
    with open(os.path.join(args.output, "album_folds.md"), "w") as f:
        f.write(text)
    records = []
    for group, result in results:
        record = {"group": group, "row": result.name, "folds": len(result.folds), "choices": describe_choices(result)}
        for metric, values in result.summary().items():
            for stat, value in values.items():
                record[f"{metric} {stat}"] = value
        for fold in result.folds:
            record[f"catalog_mAP fold{fold.fold}"] = fold.metrics["catalog_mAP"]
        records.append(record)
    pd.DataFrame.from_records(records).to_csv(os.path.join(args.output, "album_folds.csv"), index=False)
    return text


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--protocol", default="album_folds", choices=("album_folds", "splits"),
                        help="album_folds (default: the measure that decides defaults; every track a query once, "
                        "features computed in this process) or splits (the track and album-disjoint splits, every "
                        "model an experiments.run subprocess)")
    parser.add_argument("--features_dir", default="data/generalisation/album_folds", help="album_folds: the "
                        "per-track features (blocks/<track id>.npz, feature_cache/), computed once and reused")
    parser.add_argument("--n_folds", type=int, default=5, help="album_folds: number of album folds")
    parser.add_argument("--fold_seed", type=int, default=0, help="album_folds: seed of the fold assignment")
    parser.add_argument("--rows", default=",".join(ROW_GROUPS),
                        help=f"album_folds: row groups to run, from {', '.join(ROW_GROUPS)}")
    parser.add_argument("--corpus", default="demo", help="manifest csv (or a folder holding manifest.csv) of the "
                        "corpus, or 'demo' for the extended demo corpus; used only to prepare missing datasets")
    parser.add_argument("--output", default="reports/generalisation", help="where the tables and reports go")
    parser.add_argument("--data_dir", default="data/generalisation", help="prepared datasets, one per protocol "
                        "and sample rate (<protocol>_sr<rate>_pool<pool>); existing ones are reused")
    parser.add_argument("--runs_dir", default="tensorboard_logs/generalisation", help="run directories and logs")
    parser.add_argument("--seeds", default="0,1,2", help="training seeds of the WaveNet configurations")
    parser.add_argument("--configs", default="logmel_lambda_cosine",
                        help=f"comma-separated WaveNet configurations, in order: {', '.join(CONFIGS)}")
    parser.add_argument("--fitted", default=",".join(FITTED_MODELS),
                        help=f"fitted rows to run (both protocols): {', '.join(FITTED_MODELS)}")
    parser.add_argument("--fusions", default=",".join(FUSIONS),
                        help=f"fusion rows, from the fitted rows run: {', '.join(FUSIONS)} (empty: none)")
    parser.add_argument("--rerank", default="auto", help="experiments.run --rerank of every run: auto (chosen on "
                        "eval), none, or a musicsim.rerank setting")
    parser.add_argument("--protocols", default=",".join(PROTOCOLS),
                        help="protocols the WaveNet configurations train on (the fitted models run on both)")
    parser.add_argument("--minutes_per_run", type=float, default=5.0, help="training minutes per WaveNet run")
    parser.add_argument("--time_budget_minutes", type=float, default=None,
                        help="launch no training run that would end past this many minutes from the start")
    parser.add_argument("--max_seconds", type=float, default=60.0, help="centred excerpt per track when preparing")
    parser.add_argument("--workers", type=int, default=2, help="processes for data preparation and features")
    parser.add_argument("--eval_repeats", type=int, default=5, help="seeds of the test lists per run")
    parser.add_argument("--early_stopping_patience", type=int, default=400, help="training steps without a better "
                        "eval metric before a WaveNet run stops (evaluated every 100 steps)")
    args = parser.parse_args(argv)
    args.seed_list = [int(s) for s in args.seeds.split(",") if s.strip()]
    args.config_list = [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = [c for c in args.config_list if c not in CONFIGS]
    if unknown:
        parser.error(f"--configs: unknown {unknown}; choose from {list(CONFIGS)}")
    args.fitted_list = tuple(m.strip() for m in args.fitted.split(",") if m.strip())
    args.fusion_list = tuple(m.strip() for m in args.fusions.split(",") if m.strip())
    if any(m not in FITTED for m in args.fitted_list) or any(m not in FUSIONS for m in args.fusion_list):
        parser.error(f"--fitted / --fusions: choose from {list(FITTED)} / {list(FUSIONS)}")
    args.protocol_list = tuple(p.strip() for p in args.protocols.split(",") if p.strip())
    if not args.protocol_list or any(p not in PROTOCOLS for p in args.protocol_list):
        parser.error(f"--protocols: choose some of {list(PROTOCOLS)}, got {args.protocols!r}")
    if not args.seed_list:
        parser.error("--seeds: give at least one seed")
    if args.minutes_per_run <= 0:
        parser.error(f"--minutes_per_run must be > 0, got {args.minutes_per_run}")
    if args.early_stopping_patience < 100:
        parser.error(f"--early_stopping_patience must be >= 100 (one evaluation), got {args.early_stopping_patience}")
    if args.workers < 1:
        parser.error(f"--workers must be >= 1, got {args.workers}")
    args.row_groups = tuple(g.strip() for g in args.rows.split(",") if g.strip())
    if not args.row_groups or any(g not in ROW_GROUPS for g in args.row_groups):
        parser.error(f"--rows: choose some of {list(ROW_GROUPS)}, got {args.rows!r}")
    if args.n_folds < 2:
        parser.error(f"--n_folds must be >= 2, got {args.n_folds}")
    if args.eval_repeats < 1:
        parser.error(f"--eval_repeats must be >= 1, got {args.eval_repeats}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    command = "python benchmarks/generalisation.py " + " ".join(sys.argv[1:] if argv is None else argv)
    if args.protocol == "album_folds":
        try:
            text = run_album_folds_protocol(args, command=command)
        except (FileNotFoundError, album_folds.AlbumFoldsError) as err:
            print(f"generalisation: {err}", file=sys.stderr)
            sys.exit(2)
        print(text)
        print(f"wrote {os.path.abspath(args.output)}/album_folds.md and album_folds.csv")
        return
    started = time.monotonic()
    data_dir, runs_dir, output = (os.path.abspath(p) for p in (args.data_dir, args.runs_dir, args.output))
    log_dir = os.path.join(runs_dir, "logs")
    needed = {LOGMEL_DATA} | {CONFIGS[c].data for c in args.config_list}
    for data in sorted(needed):
        for protocol in PROTOCOLS:
            prepare_dataset(corpus=args.corpus, output=dataset_dir(data_dir=data_dir, protocol=protocol, data=data),
                            protocol=protocol, data=data, max_seconds=args.max_seconds, workers=args.workers,
                            log_dir=log_dir)
    budget = None
    if args.time_budget_minutes is not None:
        budget = args.time_budget_minutes - (time.monotonic() - started) / 60.0
    plans = plan_runs(runs_dir=runs_dir, data_dir=data_dir, configs=args.config_list, seeds=args.seed_list,
                      minutes_per_run=args.minutes_per_run, workers=args.workers, eval_repeats=args.eval_repeats,
                      protocols=args.protocol_list, fitted=args.fitted_list, fusions=args.fusion_list,
                      rerank=args.rerank, early_stopping_patience=args.early_stopping_patience)
    execute(plans, minutes_per_run=args.minutes_per_run, time_budget_minutes=budget)
    os.makedirs(output, exist_ok=True)
    protocol_reports(plans, output=output)
    text = write_tables(combine(plans), plans, output=output, command=command)
    print(text)
    print(f"wrote {output}/generalisation.md, generalisation.csv and <protocol>/results.md "
          f"in {(time.monotonic() - started) / 60.0:.1f} min")


if __name__ == "__main__":
    sys.path.insert(0, REPO_ROOT)  # experiments.report when run as a script from anywhere
    main()
