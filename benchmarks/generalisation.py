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

``--rows=...,distilled`` (issue 25) adds the WaveNet distilled from the engine, one student per fold
(``benchmarks/distill_folds.py`` writes them into ``--distilled_runs``): each test track embedded by the
student of its own fold, checked never to have heard it; the folds without a student are left out of
every row (the table says so).

The code: this file (the command), ``generalisation_splits.py`` (the split protocols),
``generalisation_features.py`` (the album folds' per-track features) and ``generalisation_folds.py`` (the
album folds' rows, tables and goals).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCHMARKS_DIR = os.path.dirname(os.path.abspath(__file__))
for _folder in (REPO_ROOT, BENCHMARKS_DIR):  # run as a script from anywhere, or loaded from its file by a test
    if _folder not in sys.path:
        sys.path.insert(0, _folder)

import album_folds  # noqa: E402  (benchmarks/album_folds.py, beside this file)
# The protocols live in three modules beside this one; the names tests and other scripts read are re-exported.
from generalisation_folds import (DEFAULT_ROW_GROUPS, ROW_GROUPS, EngineVariant, engine_row,  # noqa: E402,F401
                                  run_album_folds_protocol)
from generalisation_splits import (CONFIGS, FITTED, FITTED_MODELS, FUSIONS, LOGMEL_DATA, PROTOCOLS,  # noqa: E402,F401
                                   combine, dataset_dir, execute, plan_runs, prepare_dataset, protocol_reports,
                                   write_tables)


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
    parser.add_argument("--rows", default=",".join(DEFAULT_ROW_GROUPS),
                        help=f"album_folds: row groups to run, from {', '.join(ROW_GROUPS)} (distilled: not by "
                        "default, it needs --distilled_runs)")
    parser.add_argument("--distilled_runs", default=os.path.join("runs", "distill-folds"),
                        help="album_folds, rows 'distilled': the folder of fold-K students that "
                        "benchmarks/distill_folds.py wrote with the same --corpus, --n_folds and --fold_seed (each "
                        "student is checked never to have heard its fold's test tracks)")
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
