"""The distilled WaveNet under album folds: each fold's student hears only the other folds' audio.

For each album fold run (``--folds``): ``experiments.distill`` distils the teacher into a WaveNet from the
whole tracks of the training folds (labels never read; a test album's audio never reaches it), then the
fold's test albums are the catalog and each test track a query (`album_folds.score_catalog`), for:

- the student (its vectors z-scored over the test catalog, as the index's label-free catalog
  standardisation does, then cosine; and raw cosine);
- its teacher (``pretrained``: the engine as shipped, `PretrainedEngine` with catalog standardisation and
  its weights; a musicnn checkpoint: that tagger's penultimate mean);
- MFCC and librosa as ``--model=mfcc|librosa`` (fitted on the training folds' features, the generalisation
  benchmark's 22.05 kHz 60 s excerpt features, cached);

plus the student's teacher agreement on test tracks (its mean cosine, through its ``distill/projection``,
to the teacher's standardised vector of the same crops: crops spread over each whole test track), steps,
minutes per fold and the embedding throughput of student and teacher on the same test files.

    python benchmarks/distill_folds.py --corpus=/tmp/extcorpus --folds=0 --max_minutes=10 \
        --runs_dir=runs/distill-folds --output=reports/distill_folds

Every fold (the goal's figures): ``--folds=all`` (about 5 x (distillation + 5 min) on the 2 cores).
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import sys
import time
from typing import Callable, Sequence

import numpy as np

_folder = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(_folder)
for _path in (_folder, REPO_ROOT):
    if _path not in sys.path:
        sys.path.insert(0, _path)

import album_folds  # noqa: E402  (benchmarks/album_folds.py, H2's fold logic)
import tensorflow as tf  # noqa: E402

from experiments import distill as distill_run  # noqa: E402
from musicsim import evaluation, pretraining, rerank  # noqa: E402
from musicsim.train import estimator as training  # noqa: E402
from musicsim.atomic import atomic_open  # noqa: E402
from musicsim.data.audio import file_duration  # noqa: E402
from musicsim.embedder import load_embedder  # noqa: E402
from musicsim.features import extract_many  # noqa: E402
from musicsim.inputs import batched_input_fn  # noqa: E402
from musicsim.models import fitted_class, musicnn  # noqa: E402
from musicsim.models.pretrained_engine import ENGINE_RERANK, PretrainedEngine  # noqa: E402
from musicsim.pretraining import stream  # noqa: E402
from musicsim.rundir import RunDir  # noqa: E402

HAND_RATE, HAND_SECONDS = 22050, 60.0  # as benchmarks/generalisation.py's fitted rows read them
AGREEMENT_CROPS = 4  # crops per test track for the teacher agreement


def load_corpus(corpus: str) -> tuple[list[str], list[str]]:
    """(paths, album labels) of a manifest csv or a folder holding ``manifest.csv``."""
    manifest = os.path.join(corpus, "manifest.csv") if os.path.isdir(corpus) else corpus
    if not os.path.isfile(manifest):
        raise FileNotFoundError(f"--corpus={corpus}: no manifest.csv")
    root = os.path.dirname(os.path.abspath(manifest))
    with open(manifest, newline="") as f:
        rows = list(csv.DictReader(f))
    return [os.path.join(root, r["path"]) for r in rows], [r["label_album"] for r in rows]


def fold_training_paths(*, paths: Sequence[str], folds: np.ndarray, fold: int) -> list[str]:
    """The audio a fold's student may hear: every track of the other folds (never a test album's)."""
    return [p for p, f in zip(paths, folds) if int(f) != int(fold)]


def fold_test_rows(*, folds: np.ndarray, fold: int) -> np.ndarray:
    return np.flatnonzero(np.asarray(folds) == int(fold))


def catalog_standardised(vectors: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Each dimension z-scored over the catalog itself (the index's label-free step), then weighted."""
    mean, std = album_folds.column_statistics(np.asarray(vectors, np.float64))
    out = (np.asarray(vectors, np.float64) - mean) / std
    return out if weights is None else out * weights


def cosine_scores(vectors: np.ndarray) -> np.ndarray:
    return album_folds.search_scores(vectors=np.asarray(vectors, np.float64), similarity="cosine")


def hand_rows(*, paths: list[str], train: np.ndarray, test: np.ndarray, labels: np.ndarray, cache_dir: str,
              workers: int) -> dict[str, float]:
    """MFCC and librosa (``--model=mfcc|librosa``): fitted on the training rows' features, catalog mAP on test."""
    out = {}
    for name in ("mfcc", "librosa"):
        values, ok, _ = extract_many(paths=paths, feature_fn=name, sample_rate=HAND_RATE, max_seconds=HAND_SECONDS,
                                     workers=workers, cache_dir=cache_dir, progress=False)
        row_of = {index: row for row, index in enumerate(ok)}
        train_rows = [row_of[i] for i in train if i in row_of]
        test_rows = [row_of[i] for i in test if i in row_of]
        model = fitted_class(name)().fit_features(features=values[train_rows])
        vectors = model.embed_features(features=values[test_rows])
        scores = evaluation.similarity_matrix(embeddings=vectors, similarity=model.similarity)
        kept = [i for i in test if i in row_of]
        out[name] = album_folds.score_catalog(scores=scores, labels=labels[kept])[0]["catalog_mAP"]
    return out


def teacher_vectors(*, teacher: str, paths: list[str], cache_dir: str | None) -> tuple[np.ndarray, np.ndarray | None,
                                                                                        float]:
    """(raw vectors [n, dim], weights after catalog standardisation or None, seconds taken) of the teacher."""
    started = time.monotonic()
    if teacher == "pretrained":
        engine = PretrainedEngine(cache_dir=cache_dir, progress=False)
        vectors, ok, skipped = engine.extract(paths=paths)
        weights = engine.dimension_weights()
    else:
        model = musicnn.MusicnnModel(checkpoint=teacher, max_seconds=None, cache_dir=cache_dir, progress=False)
        vectors, ok, skipped = model.extract(paths=paths)
        weights = None
    if skipped:
        raise RuntimeError(f"the teacher skipped test files: {skipped[:3]}")
    return vectors, weights, time.monotonic() - started


def audio_seconds(paths: Sequence[str]) -> float:
    return float(sum(file_duration(p) or 0.0 for p in paths))


def teacher_agreement(*, run_dir: str, paths: list[str], teacher_name: str, cache_root: str) -> float:
    """The student's mean cosine to its teacher's standardised vector on crops spread over each test track."""
    with open(os.path.join(run_dir, distill_run.STATE_FILE)) as f:
        settings = distill_run.DistillSettings(**json.load(f)["settings"])
    student = stream.student_input(settings.student_input)
    teacher = stream.make_teacher(teacher_name)
    cache = stream.TargetCache(root=cache_root, teacher_key=teacher.key, dim=teacher.dim)
    sources, _ = stream.audio_sources(paths=paths, min_seconds=settings.crop_seconds)
    crops = stream.spread_crops(sources=sources, crop_seconds=settings.crop_seconds, per_track=AGREEMENT_CROPS)
    audio, raw, _ = stream.crop_targets(crops=crops, teacher=teacher, cache=cache)
    with np.load(os.path.join(run_dir, distill_run.STANDARDISATION_FILE)) as saved:
        mean, scale = saved["mean"], saved["scale"]
    targets = stream.standardise_targets(raw, mean=mean, scale=scale, weights=stream.target_weights(teacher))
    record = RunDir(run_dir).record()
    estimator = training.make_estimator(model="wavenet", model_dir=run_dir, params=record["config"]["params"],
                                        seed=settings.seed, objective=pretraining.objective("distill"))
    input_fn = batched_input_fn(generator=lambda: stream.iter_pairs(audio=audio, targets=targets, student=student,
                                                                      endless=False),
                                signature=({"audio": tf.TensorSpec([None, 1], tf.float32),
                                            "length": tf.TensorSpec([], tf.int32)},
                                           tf.TensorSpec([teacher.dim], tf.float32)),
                                batch_size=settings.batch_size)
    checkpoint = RunDir(run_dir).checkpoint()
    return float(estimator.evaluate(input_fn, checkpoint_path=checkpoint, name="test_albums")["cosine"])


class NeverHeardError(RuntimeError):
    """A fold's student whose distillation corpus holds one of the fold's test tracks."""


def check_never_heard(*, run_dir: str, test_paths: Sequence[str]) -> None:
    """Refuse a student that heard a test track: its ``distill.json`` corpus (content hashes of every file it was
    given, held-out tracks included) must share none with ``test_paths``."""
    with open(os.path.join(run_dir, distill_run.STATE_FILE)) as f:
        heard = set(json.load(f)["corpus"])
    overlap = [path for path in test_paths if stream.content_hash(path) in heard]
    if overlap:
        raise NeverHeardError(f"{run_dir} was distilled from {len(overlap)} of its fold's test tracks "
                              f"(e.g. {overlap[0]}): another fold assignment or corpus")


def student_vectors_by_fold(*, runs_dir: str, paths: Sequence[str], folds: np.ndarray, cache_dir: str | None = None,
                            log: Callable[[str], None] = print) -> tuple[np.ndarray, list[int]]:
    """(``[N, dim]``, folds with a student): each track embedded by its own fold's student (``runs_dir/fold-K``: a
    finished distillation), which never heard its album; the rows of folds without one are NaN.

    Each fold's vectors are cached in ``cache_dir/fold-K-<key>.npz`` with the paths they are of; the key hashes the
    run folder, its checkpoint's name and its index file, so another run, a retrained run or another checkpoint
    recomputes them, as do other tracks.
    """
    out: np.ndarray | None = None
    done = []
    for fold in np.unique(folds):
        run_dir = os.path.join(runs_dir, f"fold-{int(fold)}")
        if not os.path.isfile(os.path.join(run_dir, "results.json")):
            log(f"fold {int(fold)}: no finished student in {run_dir} (benchmarks/distill_folds.py "
                f"--folds={int(fold)} --runs_dir={runs_dir})")
            continue
        rows = fold_test_rows(folds=folds, fold=int(fold))
        fold_paths = [os.path.abspath(paths[i]) for i in rows]
        check_never_heard(run_dir=run_dir, test_paths=fold_paths)
        checkpoint_path = RunDir(run_dir).checkpoint() or tf.train.latest_checkpoint(run_dir)
        checkpoint = os.path.basename(checkpoint_path)
        with open(checkpoint_path + ".index", "rb") as f:
            key = hashlib.sha1(f"{os.path.abspath(run_dir)}\0{checkpoint}\0".encode() + f.read()).hexdigest()[:16]
        cached = None if cache_dir is None else os.path.join(cache_dir, f"fold-{int(fold)}-{key}.npz")
        vectors = None
        if cached and os.path.isfile(cached):
            with np.load(cached) as stored:
                if list(stored["paths"]) == fold_paths:
                    vectors = stored["vectors"]
        if vectors is None:
            started = time.monotonic()
            vectors, ok, skipped = load_embedder(run_dir).embed_paths(paths=fold_paths, progress=False, workers=1)
            if skipped:
                raise RuntimeError(f"the fold {int(fold)} student skipped test files: {skipped[:3]}")
            log(f"fold {int(fold)}: {len(fold_paths)} tracks embedded by {run_dir} ({checkpoint}) in "
                f"{time.monotonic() - started:.0f} s")
            if cached:
                os.makedirs(cache_dir, exist_ok=True)
                with atomic_open(cached, "wb") as f:
                    np.savez(f, vectors=vectors, paths=np.asarray(fold_paths))
        if out is None:
            out = np.full((len(paths), vectors.shape[1]), np.nan, np.float32)
        out[rows] = vectors
        done.append(int(fold))
    if out is None:
        raise FileNotFoundError(f"no fold has a finished student in {runs_dir}")
    return out, done


def run_fold(*, fold: int, paths: list[str], labels: np.ndarray, folds: np.ndarray, args: argparse.Namespace) -> dict:
    train, test = np.flatnonzero(folds != fold), fold_test_rows(folds=folds, fold=fold)
    train_paths = fold_training_paths(paths=paths, folds=folds, fold=fold)
    test_paths = [paths[i] for i in test]
    run_dir = os.path.join(args.runs_dir, f"fold-{fold}")
    settings = distill_run.DistillSettings(
        teacher=args.teacher, loss=args.distill_loss, student_input=args.student_input, round_crops=args.round_crops,
        round_steps=args.round_steps, batch_size=args.batch_size, eval_every_steps=args.eval_every_steps,
        patience_steps=args.patience_steps, max_steps=args.max_steps, seed=args.seed,
        params=distill_run.parse_params(args.params))
    started = time.monotonic()
    results = distill_run.distill(paths=train_paths, output=run_dir, settings=settings, cache_dir=args.cache_dir,
                                  max_minutes=args.max_minutes, embed=False, progress=False,
                                  log=lambda m: print(m, flush=True))
    distill_minutes = (time.monotonic() - started) / 60
    seconds = audio_seconds(test_paths)
    t0 = time.monotonic()
    embedder = load_embedder(run_dir)
    student, ok, skipped = embedder.embed_paths(paths=test_paths, progress=False, workers=1)
    student_seconds = time.monotonic() - t0
    if skipped:
        raise RuntimeError(f"the student skipped test files: {skipped[:3]}")
    teacher_raw, weights, teacher_seconds = teacher_vectors(teacher=args.teacher, paths=test_paths,
                                                            cache_dir=None)
    fold_labels = labels[test]
    # The engine's label-free re-ranking (ENGINE_RERANK) on the student's and the teacher's catalogs alike.
    engine_rerank = rerank.parse_settings(ENGINE_RERANK)

    def reranked_map(vectors):
        scores = album_folds.search_scores(vectors=vectors, settings=engine_rerank)
        return album_folds.score_catalog(scores=scores, labels=fold_labels)[0]["catalog_mAP"]

    row = {
        "fold": fold, "test_tracks": len(test), "test_albums": sorted(set(fold_labels)),
        "train_tracks": len(train_paths),
        "student (catalog std)": album_folds.score_catalog(
            scores=cosine_scores(catalog_standardised(student)), labels=fold_labels)[0]["catalog_mAP"],
        "student (raw cosine)": album_folds.score_catalog(
            scores=cosine_scores(student), labels=fold_labels)[0]["catalog_mAP"],
        f"teacher {args.teacher}": album_folds.score_catalog(
            scores=cosine_scores(catalog_standardised(teacher_raw, weights)), labels=fold_labels)[0]["catalog_mAP"],
        f"student (catalog std) + {ENGINE_RERANK}": reranked_map(catalog_standardised(student)),
        f"teacher {args.teacher} + {ENGINE_RERANK}": reranked_map(catalog_standardised(teacher_raw, weights)),
        "teacher_key": results["distill"]["teacher_key"],
        **hand_rows(paths=paths, train=train, test=test, labels=labels, cache_dir=args.hand_cache_dir,
                    workers=args.workers),
        "teacher_agreement_test_albums": teacher_agreement(run_dir=run_dir, paths=test_paths,
                                                           teacher_name=args.teacher, cache_root=args.cache_dir),
        "teacher_agreement_held_out_train_albums": results["held_out_metrics"]["teacher_agreement_test"],
        "steps": results["distill"]["steps"], "best_step": results["distill"]["best_step"],
        "stopped": results["distill"]["stopped"], "distill_minutes": round(distill_minutes, 2),
        "test_audio_seconds": round(seconds, 1),
        "student_x_real_time": round(seconds / student_seconds, 1),
        "teacher_x_real_time": round(seconds / teacher_seconds, 1),
    }
    row["throughput_ratio"] = round(row["student_x_real_time"] / row["teacher_x_real_time"], 2)
    print(json.dumps(row), flush=True)
    return row


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    defaults = distill_run.DistillSettings()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", default="/tmp/extcorpus", help="manifest.csv or a folder holding one")
    parser.add_argument("--folds", default="0", help="comma-separated fold indices, or 'all'")
    parser.add_argument("--n_folds", type=int, default=5)
    parser.add_argument("--fold_seed", type=int, default=0)
    parser.add_argument("--teacher", default=defaults.teacher)
    parser.add_argument("--distill_loss", default=defaults.loss)
    parser.add_argument("--student_input", default=defaults.student_input)
    parser.add_argument("--round_crops", type=int, default=defaults.round_crops)
    parser.add_argument("--round_steps", type=int, default=defaults.round_steps)
    parser.add_argument("--batch_size", type=int, default=defaults.batch_size)
    parser.add_argument("--eval_every_steps", type=int, default=defaults.eval_every_steps)
    parser.add_argument("--patience_steps", type=int, default=defaults.patience_steps)
    parser.add_argument("--max_steps", type=int, default=defaults.max_steps, help="training steps per fold (a "
                        "step budget: folds stay comparable whatever the machine's load)")
    parser.add_argument("--max_minutes", type=float, default=None, help="training minutes per fold (None: early "
                        "stopping alone)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--params", default="", help="WaveNet params key=value,... (as experiments.distill)")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--runs_dir", default=os.path.join("runs", "distill-folds"))
    parser.add_argument("--cache_dir", default=os.path.join(".cache", "distill_targets"))
    parser.add_argument("--hand_cache_dir", default=os.path.join("data", "generalisation", "album_folds",
                                                                 "feature_cache"))
    parser.add_argument("--output", default=os.path.join("reports", "distill_folds"))
    parser.add_argument("--also", default="", help="comma-separated distill_folds.json reports of other runs whose "
                        "rows (of folds not run here) join the summary; say why their settings match")
    return parser.parse_args(argv)


def summarise(rows: list[dict]) -> dict:
    """Mean and (population) std over folds of every numeric column."""
    summary = {}
    for key in rows[0]:
        values = [r.get(key) for r in rows]
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            summary[key] = {"mean": float(np.mean(values)), "std": float(np.std(values)), "n": len(values)}
    return summary


def write_report(*, args: argparse.Namespace, command: str, rows: list[dict]) -> dict:
    """``OUTPUT/distill_folds.json``: this run's rows so far plus ``--also``'s rows of other folds (rewritten after
    every fold, so a stopped run keeps the folds it finished)."""
    borrowed = []
    for report_path in [p for p in args.also.split(",") if p.strip()]:
        with open(report_path) as f:
            other = json.load(f)
        done = {r["fold"] for r in rows + borrowed}
        borrowed += [{**r, "from": report_path, "from_command": other.get("command")} for r in other["rows"]
                     if r["fold"] not in done]
    all_rows = sorted(rows + borrowed, key=lambda r: r["fold"])
    report = {"command": command, "folds_run": [r["fold"] for r in rows],
              "folds_borrowed": [r["fold"] for r in borrowed], "n_folds": args.n_folds,
              "partial": len(all_rows) < args.n_folds, "rows": all_rows, "summary": summarise(all_rows)}
    os.makedirs(args.output, exist_ok=True)
    path = os.path.join(args.output, "distill_folds.json")
    with atomic_open(path, "w") as f:
        json.dump(report, f, indent=1)
    return report


def main(argv: list[str] | None = None) -> None:
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    args = parse_args(argv)
    paths, albums = load_corpus(args.corpus)
    labels = np.asarray(albums)
    folds = album_folds.assign_album_folds(albums=albums, n_folds=args.n_folds, seed=args.fold_seed)
    chosen = range(args.n_folds) if args.folds == "all" else [int(f) for f in args.folds.split(",")]
    command = " ".join([os.path.basename(sys.argv[0])] + (argv if argv is not None else sys.argv[1:]))
    rows: list[dict] = []
    report = None
    for fold in chosen:
        rows.append(run_fold(fold=fold, paths=paths, labels=labels, folds=folds, args=args))
        report = write_report(args=args, command=command, rows=rows)
    print(json.dumps(report["summary"] if report else {}, indent=1))


if __name__ == "__main__":
    main()
