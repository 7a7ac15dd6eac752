"""The split protocols of the generalisation benchmark (``--protocol=splits``): the track split (the paper's)
and one album-disjoint split, every model an ``experiments.run`` subprocess; `benchmarks/generalisation.py`
runs them (its docstring says how)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field

import numpy as np

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCHMARKS_DIR = os.path.dirname(os.path.abspath(__file__))
for _folder in (REPO_ROOT, BENCHMARKS_DIR):  # run as a script from anywhere, or loaded from its file by a test
    if _folder not in sys.path:
        sys.path.insert(0, _folder)

import pandas as pd  # noqa: E402

from experiments.recommended import PARTS as RECOMMENDED_PARTS  # noqa: E402
from experiments.report import build_report  # noqa: E402
from musicsim import rerank  # noqa: E402
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
    for protocol in PROTOCOLS:
        run_dirs = [p.model_dir for p in plans if p.protocol == protocol and p.finished]
        if run_dirs:
            build_report(run_dirs=run_dirs, output_dir=os.path.join(output, protocol))
