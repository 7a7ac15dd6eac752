"""Distil a teacher into the paper's WaveNet from whole tracks: ``make distill`` or ``python -m experiments.distill``.

The student (the WaveNet with a log-mel front end) learns to reproduce its teacher's standardised
vector (``--teacher=pretrained``: the engine's one-pass vector; or one musicnn checkpoint) of random
crops drawn over every second of the audio given (`musicsim.pretraining.stream`; labels are never
read). Training goes in rounds: each round draws ``--round_crops`` new crops (seeded by the round),
computes their teacher targets in batches (cached on disk per teacher, track content and crop, so a
resumed run does not recompute them) and trains ``--round_steps`` steps on them. Whole tracks are held
out (never cropped for training): half of them decide early stopping (the student's mean cosine to the
teacher, evaluated every ``--eval_every_steps``; training stops once it has not risen for
``--patience_steps`` steps), the other half give the teacher agreement reported.

The output is a normal run folder (``run.json``, checkpoints, ``results.json``, ``embeddings.npz`` of
every file given): ``experiments.export``, ``musicsim.index build``, search, serve and
``musicsim-scan --model_dir=`` use it like any ``experiments.run`` run. Run again with the same flags,
it resumes (a finished run only prints its results).
"""
from __future__ import annotations

import csv
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")  # as experiments.run: the same numbers on any CPU

import numpy as np
import tensorflow as tf
from absl import app, flags
from tensorflow.python.util import deprecation
from tensorflow_estimator.python.estimator.early_stopping import read_eval_metrics

from data_prep.demo import build_demo_corpus
from musicsim import pretraining
from musicsim.train import estimator as training
from musicsim.atomic import atomic_open
from musicsim.data.audio import AUDIO_EXTENSIONS
from musicsim.cli import global_flags_parser, usage_error
from musicsim.embedder import load_embedder
from musicsim.inputs import batched_input_fn
from musicsim.params import ParamsError, settle_params
from musicsim.pretraining import stream
from musicsim.pretraining.distillation import LOSSES
from musicsim.rundir import RunConfigMismatch, RunDir

USAGE = "usage: python -m experiments.distill [--audio=demo|DIR|LIST|manifest.csv] [--output=runs/distilled-wavenet] [--teacher=pretrained] [...]"
STATE_FILE = "distill.json"
STANDARDISATION_FILE = "distill_standardisation.npz"
EARLY_STOPPING = ("cosine", "increase")


class DistillRunError(ValueError):
    """A distillation run that cannot start (no audio, a folder recording another run)."""


@dataclass(frozen=True)
class DistillSettings:
    """Everything a distillation run depends on (recorded in ``distill.json``; a resume must match).

    Attributes
    ----------
    teacher : ``"pretrained"`` or a musicnn checkpoint (`stream.TEACHERS`)
    loss : ``"cosine"`` or ``"mse"`` on the standardised target
    student_input : `stream.STUDENT_INPUTS` key
    crop_seconds : crop length (default one musicnn patch, 2.992 s: the teacher sees it whole)
    round_crops, round_steps : crops drawn per round, training steps per round
    batch_size : crops per step
    eval_every_steps : checkpoint and held-out evaluation interval
    patience_steps : stop once the held-out cosine has not risen for this many steps
    max_steps : a safety bound only (early stopping is what ends a run)
    held_out_fraction, held_out_min : whole tracks held out (at least ``held_out_min``)
    held_out_crops : crops per held-out track, spread over all of it
    seed : int
    params : WaveNet / front-end params overriding the defaults (e.g. a smaller net for tests)
    """

    teacher: str = "pretrained"
    loss: str = "cosine"
    student_input: str = stream.DEFAULT_STUDENT_INPUT
    crop_seconds: float = float(stream.musicnn.PATCH_SECONDS)
    round_crops: int = 256
    round_steps: int = 100
    batch_size: int = 8
    eval_every_steps: int = 50
    patience_steps: int = 1000
    max_steps: int = 1_000_000
    held_out_fraction: float = 0.1
    held_out_min: int = 2
    held_out_crops: int = 4
    seed: int = 0
    params: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.teacher not in stream.TEACHERS:
            raise DistillRunError(f"teacher must be one of {list(stream.TEACHERS)}, got {self.teacher!r}")
        if self.loss not in LOSSES:
            raise DistillRunError(f"loss must be one of {list(LOSSES)}, got {self.loss!r}")
        stream.student_input(self.student_input)
        for name in ("round_crops", "round_steps", "batch_size", "eval_every_steps", "patience_steps", "max_steps",
                     "held_out_min", "held_out_crops"):
            if int(getattr(self, name)) < 1:
                raise DistillRunError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.round_steps % self.eval_every_steps:
            raise DistillRunError(f"round_steps ({self.round_steps}) must be a multiple of eval_every_steps "
                                  f"({self.eval_every_steps}): each round ends on an evaluation")
        if not 0 <= self.held_out_fraction < 1:
            raise DistillRunError(f"held_out_fraction must be in [0, 1), got {self.held_out_fraction}")
        if not self.crop_seconds > 0:
            raise DistillRunError(f"crop_seconds must be positive, got {self.crop_seconds}")

    def recorded(self) -> dict:
        """What must match for a resume (everything but the step bound)."""
        values = asdict(self)
        values.pop("max_steps")
        return values


DEMO_AUDIO = "demo"


def audio_paths(spec: str) -> list[str]:
    """Audio files of ``spec``: comma-separated folders (searched recursively), ``manifest.csv`` files
    (their ``path`` column, relative to the manifest), text files listing one path a line, or ``demo``:
    every allowed package's whole tracks (the extended demo corpus: the dev corpus and the 5 extra
    packages, built with apt on first use into ``data/demo_extended_corpus``)."""
    paths: list[str] = []
    for item in [s for s in spec.split(",") if s.strip()]:
        item = item.strip()
        if item == DEMO_AUDIO:
            item = build_demo_corpus(extended=True)
        if os.path.isdir(item):
            for folder, dirs, files in os.walk(item):
                dirs.sort()
                paths += [os.path.join(folder, f) for f in sorted(files) if f.lower().endswith(AUDIO_EXTENSIONS)]
        elif item.endswith(".csv") and os.path.isfile(item):
            with open(item, newline="") as f:
                reader = csv.DictReader(f)
                if "path" not in (reader.fieldnames or []):
                    raise DistillRunError(f"{item}: a manifest needs a 'path' column")
                # Only the paths: labels are never read.
                paths += [os.path.join(os.path.dirname(os.path.abspath(item)), row["path"]) for row in reader]
        elif os.path.isfile(item):
            with open(item) as f:
                paths += [line.strip() for line in f if line.strip()]
        else:
            raise DistillRunError(f"--audio: {item} is not a folder, manifest or list of files")
    if not paths:
        raise DistillRunError(f"--audio={spec} holds no audio file")
    return [os.path.abspath(p) for p in paths]


def _run_params(settings: DistillSettings, student: stream.StudentInput) -> dict:
    params = {**student.params, **settings.params, "input_sample_rate": student.frame_rate,
              "distill_loss": settings.loss, "similarity": "cosine"}
    return settle_params(params, configs=training.param_configs())


def _run_record(settings: DistillSettings, student: stream.StudentInput, *, output: str, params: dict
                ) -> tuple[dict, dict]:
    """(config, dataset) of ``run.json``: what `musicsim.embedder.LearnedEmbedder` rebuilds the model from."""
    config = {"model": "wavenet", "dataset_dir": os.path.abspath(output), "model_dir": os.path.abspath(output),
              "params": params, "batch_size": settings.batch_size, "crop_seconds": settings.crop_seconds,
              "eval_seconds": None, "predict_seconds": None,
              # Windows of 10 s: bounded memory on any file, each window's vector as the student learnt crops.
              "window_seconds": 10.0, "seed": settings.seed, "pretrain": "distill",
              "max_steps": settings.max_steps, "early_stopping_patience": settings.patience_steps,
              "save_checkpoints_steps": settings.eval_every_steps, "export_checkpoint": "best",
              "distill": settings.recorded()}
    dataset = {"name": "audio-files", "kind": "audio", "sample_rate": stream.TEACHER_RATE,
               "pool_size": student.pool_size, "max_seconds": None, "relevance": "album", "min_shared_tags": 2,
               "split_by": "track", "split_seed": settings.seed, "extra": {"min_seconds": 1.0}}
    return config, dataset


def _eval_steps(model_dir: str) -> dict[int, dict]:
    eval_dir = os.path.join(model_dir, "eval")
    return read_eval_metrics(eval_dir) if os.path.isdir(eval_dir) else {}


def patience_exhausted(evaluations: dict[int, dict], *, patience_steps: int, metric: str = "cosine") -> bool:
    """Whether the last evaluation is ``patience_steps`` or more after the best one (ties: the earliest)."""
    scored = sorted((step, float(m[metric])) for step, m in evaluations.items() if metric in m)
    if not scored:
        return False
    best_step = max(scored, key=lambda item: (item[1], -item[0]))[0]
    return scored[-1][0] - best_step >= patience_steps


def _signature(student: stream.StudentInput, dim: int):
    return ({"audio": tf.TensorSpec([None, 1], tf.float32), "length": tf.TensorSpec([], tf.int32)},
            tf.TensorSpec([dim], tf.float32))


def _track_id(path: str, root: str) -> str:
    return os.path.relpath(path, root) if root else os.path.basename(path)


@dataclass(frozen=True)
class _Tracks:
    """The usable tracks given, split: ``train`` (cropped for training), ``stop`` (decide early stopping),
    ``report`` (the teacher agreement reported, never used for a choice); ``skipped``: (path, reason)."""

    all: list
    train: list
    stop: list
    report: list
    skipped: list


def _split_tracks(*, paths: Sequence[str], settings: DistillSettings) -> _Tracks:
    sources, skipped = stream.audio_sources(paths=paths, min_seconds=settings.crop_seconds)
    for path, reason in skipped:
        print(f"skipped {path}: {reason}", file=sys.stderr)
    train, held = stream.held_out_split(sources=sources, fraction=settings.held_out_fraction,
                                        minimum=settings.held_out_min, seed=settings.seed)
    # Half the held-out tracks stop training, the other half (never used for a choice) give the agreement.
    return _Tracks(all=sources, train=train, stop=held[::2], report=held[1::2] or held[::2], skipped=skipped)


def _write_state(path: str, state: dict) -> None:
    with atomic_open(path, "w", make_dirs=True) as f:
        json.dump(state, f, indent=1)


def _open_state(*, output: str, settings: DistillSettings, tracks: _Tracks, record: Callable[[], None]) -> dict:
    """``distill.json``'s state: a new one, or the recorded one when it records this same run (else refused).
    ``record`` writes the run folder's config (it refuses another run's folder) once the state is checked."""
    corpus = sorted(s.content_hash for s in tracks.all)
    state = {"settings": settings.recorded(), "corpus": corpus, "stopped": None}
    state_path = os.path.join(output, STATE_FILE)
    if os.path.isfile(state_path):
        with open(state_path) as f:
            recorded = json.load(f)
        if recorded.get("settings") != state["settings"] or recorded.get("corpus") != corpus:
            raise DistillRunError(f"{output} records another distillation (other settings or audio): use a new "
                                  "--output, or resume with the same flags and files")
        state = recorded
    record()
    return state


def _claim_teacher(*, output: str, state: dict, teacher_key: str) -> None:
    """Record the teacher's key in the state, refusing a run distilled from what the teacher no longer computes."""
    # The teacher itself (e.g. the engine's blocks) may change under the same name: its key says what it computes.
    if state.setdefault("teacher_key", teacher_key) != teacher_key:
        raise DistillRunError(f"{output} was distilled from {state['teacher_key']}, the teacher now computes "
                              f"{teacher_key}: use a new --output")
    _write_state(os.path.join(output, STATE_FILE), state)


class _TeacherTargets:
    """Crops -> (16 kHz audio, standardised teacher targets), through the target cache.

    The standardisation is fitted on round 0's crops once and saved in the run folder (a resume reads it back).
    """

    def __init__(self, *, teacher, cache: stream.TargetCache, settings: DistillSettings, tracks: _Tracks,
                 output: str, on_decode: Callable[[stream.Crop], None] | None):
        self.teacher, self.cache, self.settings, self.tracks = teacher, cache, settings, tracks
        self.on_decode = on_decode
        self.weights = stream.target_weights(teacher)
        path = os.path.join(output, STANDARDISATION_FILE)
        if os.path.isfile(path):
            with np.load(path) as saved:
                self.mean, self.scale = saved["mean"], saved["scale"]
        else:
            _, raw = self.raw(self.round_crops(0))
            self.mean, self.scale = stream.fit_standardisation(raw)
            with atomic_open(path, "wb") as f:
                np.savez(f, mean=self.mean, scale=self.scale)

    def raw(self, crops: Sequence[stream.Crop]) -> tuple[list[np.ndarray], np.ndarray]:
        audio, raw, failed = stream.crop_targets(crops=crops, teacher=self.teacher, cache=self.cache,
                                                 on_decode=self.on_decode)
        for crop, reason in failed:
            print(f"skipped a crop of {crop.source.path} at {crop.start_seconds:.2f} s: {reason}", file=sys.stderr)
        return audio, raw

    def standardised(self, crops: Sequence[stream.Crop]) -> tuple[list[np.ndarray], np.ndarray]:
        audio, raw = self.raw(crops)
        return audio, stream.standardise_targets(raw, mean=self.mean, scale=self.scale, weights=self.weights)

    def round_crops(self, index: int) -> list[stream.Crop]:
        """Round ``index``'s new crops of the training tracks (seeded by the round: a resume draws the same)."""
        return stream.draw_crops(sources=self.tracks.train, crop_seconds=self.settings.crop_seconds,
                                 count=self.settings.round_crops,
                                 rng=np.random.default_rng([self.settings.seed, index]))

    def held_out_input(self, held: list, student: stream.StudentInput) -> tuple[Callable, int]:
        """(input_fn, crops) of crops spread over each of ``held``'s whole tracks."""
        crops = stream.spread_crops(sources=held, crop_seconds=self.settings.crop_seconds,
                                    per_track=self.settings.held_out_crops)
        audio, targets = self.standardised(crops)
        return batched_input_fn(generator=lambda: stream.iter_pairs(audio=audio, targets=targets, student=student,
                                                                      endless=False),
                                signature=_signature(student, self.teacher.dim),
                                batch_size=self.settings.batch_size), len(audio)


def _train_rounds(*, estimator, output: str, settings: DistillSettings, state: dict, targets: _TeacherTargets,
                  student: stream.StudentInput, stop_input: Callable, max_minutes: float | None,
                  progress: bool) -> float:
    """Train round after round until early stopping, ``max_steps`` or ``max_minutes``; the training minutes."""
    state_path = os.path.join(output, STATE_FILE)
    train_started = time.time()
    while state["stopped"] is None:
        step = training.resume_step(output)
        if step >= settings.max_steps:
            state["stopped"] = "max_steps"
            break
        if step and patience_exhausted(_eval_steps(output), patience_steps=settings.patience_steps):
            state["stopped"] = "early_stopping"
            break
        left = None if max_minutes is None else max_minutes - (time.time() - train_started) / 60
        if left is not None and left <= 0:
            break  # out of time: not a stop, a rerun goes on
        index = step // settings.round_steps
        audio, round_targets = targets.standardised(targets.round_crops(index))
        train_input = batched_input_fn(
            generator=lambda: stream.iter_pairs(audio=audio, targets=round_targets, student=student, endless=True,
                                                seed=settings.seed * 1_000_003 + index),
            signature=_signature(student, targets.teacher.dim), batch_size=settings.batch_size)
        goal = min(settings.max_steps, (index + 1) * settings.round_steps)
        training.train_and_evaluate(estimator=estimator, train_input_fn=train_input, eval_input_fn=stop_input,
                                    max_steps=goal, max_minutes=left, early_stopping_patience=settings.patience_steps,
                                    eval_every_steps=settings.eval_every_steps, early_stopping=EARLY_STOPPING,
                                    progress=progress)
        if training.resume_step(output) < goal and (max_minutes is None
                                                    or (time.time() - train_started) / 60 < max_minutes):
            state["stopped"] = "early_stopping"  # the hook stopped it inside the round
        _write_state(state_path, state)
    _write_state(state_path, state)
    return (time.time() - train_started) / 60


def _results(*, output: str, settings: DistillSettings, teacher, tracks: _Tracks, state: dict, checkpoint: str,
             agreement: dict[str, float], held_out_crops: dict[str, int], train_minutes: float,
             started: float) -> dict:
    """``results.json`` of a distillation run."""
    evaluations = _eval_steps(output)
    return {
        "model": "wavenet", "dataset": "audio-files", "relevance": None, "similarity": "cosine",
        "checkpoint": os.path.basename(checkpoint),
        "held_out_metrics": {"teacher_agreement_test": agreement["held_out_report"],
                             "teacher_agreement_eval": agreement["held_out_stop"]},
        "distill": {"teacher": settings.teacher, "teacher_key": teacher.key, "teacher_dim": teacher.dim,
                    "student_input": settings.student_input, "loss": settings.loss,
                    "steps": training.resume_step(output),
                    "best_step": int(os.path.basename(checkpoint).rsplit("-", 1)[1]), "stopped": state["stopped"],
                    "train_minutes_this_call": round(train_minutes, 2),
                    "tracks": {"train": len(tracks.train), "held_out_stop": len(tracks.stop),
                               "held_out_report": len(tracks.report), "skipped": len(tracks.skipped)},
                    "held_out_crops": held_out_crops,
                    "train_audio_hours": round(sum(s.seconds for s in tracks.train) / 3600, 3),
                    "eval_cosine_by_step": {str(k): float(v["cosine"]) for k, v in sorted(evaluations.items())
                                            if "cosine" in v}},
        "sizes": {"train": len(tracks.train), "eval": len(tracks.stop), "test": len(tracks.report)},
        "wall_seconds": round(time.time() - started, 1),
    }


def _embed_all(*, output: str, tracks: _Tracks, progress: bool) -> float:
    """Every usable track's vector into ``output/embeddings.npz`` (split: train, eval, test); the seconds taken."""
    split_of = {s.path: "train" for s in tracks.train}
    split_of.update({s.path: "eval" for s in tracks.stop})
    split_of.update({s.path: "test" for s in tracks.report if s.path not in split_of})
    embed_started = time.time()
    vectors, ok, failed = load_embedder(output).embed_paths(paths=[s.path for s in tracks.all], progress=progress,
                                                            workers=1)
    for path, reason in failed:
        print(f"not embedded {path}: {reason}", file=sys.stderr)
    kept = [tracks.all[i].path for i in ok]
    root = os.path.commonpath(kept) if len(kept) > 1 else os.path.dirname(kept[0]) if kept else ""
    RunDir(output).write_embeddings(track_ids=[_track_id(p, root) for p in kept], vectors=vectors,
                                    splits=[split_of[p] for p in kept], labels=[""] * len(kept), paths=kept)
    return time.time() - embed_started


def distill(*, paths: Sequence[str], output: str, settings: DistillSettings, cache_dir: str | None = None,
            cache_bytes: int = stream.DEFAULT_CACHE_BYTES, max_minutes: float | None = None, embed: bool = True,
            progress: bool = True, on_decode: Callable[[stream.Crop], None] | None = None,
            log: Callable[[str], None] = print, teacher=None) -> dict:
    """Distil ``settings.teacher`` into a WaveNet from ``paths``' whole tracks, into the run folder ``output``.

    Parameters
    ----------
    paths : audio files (labels are never read; unusable files are skipped and reported)
    output : the run folder (created; resumed when it records the same run)
    settings : DistillSettings
    cache_dir : the teacher-target cache (default ``.cache/distill_targets``)
    cache_bytes : at most this many bytes of cached targets per teacher
    max_minutes : stop training after this long (None: early stopping alone)
    embed : embed every file given into ``output/embeddings.npz``
    progress : progress bars and evaluation lines
    on_decode : called with every crop decoded (tests: what audio reached distillation)
    log : where the summary lines go
    teacher : an already built teacher (`musicsim.pretraining.Teacher`) in place of ``settings.teacher``'s;
        its ``key`` keeps its cache entries apart

    Returns
    -------
    dict : the ``results.json`` written
    """
    started = time.time()
    student = stream.student_input(settings.student_input)
    tracks = _split_tracks(paths=paths, settings=settings)
    run_dir = RunDir(output)
    params = _run_params(settings, student)
    config, dataset = _run_record(settings, student, output=output, params=params)
    state = _open_state(output=output, settings=settings, tracks=tracks,
                        record=lambda: run_dir.write_config(config, model="wavenet", kind="learned", dataset=dataset))
    teacher = teacher if teacher is not None else stream.make_teacher(settings.teacher)
    _claim_teacher(output=output, state=state, teacher_key=teacher.key)
    cache = stream.TargetCache(root=cache_dir or os.path.join(".cache", "distill_targets"), teacher_key=teacher.key,
                               dim=teacher.dim, max_bytes=cache_bytes)
    targets = _TeacherTargets(teacher=teacher, cache=cache, settings=settings, tracks=tracks, output=output,
                              on_decode=on_decode)
    stop_input, stop_crops = targets.held_out_input(tracks.stop, student)
    report_input, report_crops = targets.held_out_input(tracks.report, student)
    estimator = training.make_estimator(
        model="wavenet", model_dir=output, params=params, seed=settings.seed,
        save_checkpoints_steps=settings.eval_every_steps, objective=pretraining.objective("distill"),
        keep_checkpoint_max=training.checkpoints_to_keep(early_stopping_patience=settings.patience_steps,
                                                         save_checkpoints_steps=settings.eval_every_steps))
    train_minutes = _train_rounds(estimator=estimator, output=output, settings=settings, state=state,
                                  targets=targets, student=student, stop_input=stop_input, max_minutes=max_minutes,
                                  progress=progress)
    checkpoint = training.best_checkpoint(output, metric="cosine", direction="increase")
    if checkpoint is None:
        raise DistillRunError(f"{output}: no checkpoint was written (max_minutes too short?)")
    run_dir.record_checkpoint(checkpoint)
    agreement = {name: float(estimator.evaluate(input_fn, checkpoint_path=checkpoint, name=name)["cosine"])
                 for name, input_fn in (("held_out_stop", stop_input), ("held_out_report", report_input))}
    results = _results(output=output, settings=settings, teacher=teacher, tracks=tracks, state=state,
                       checkpoint=checkpoint, agreement=agreement, train_minutes=train_minutes, started=started,
                       held_out_crops={"stop": stop_crops, "report": report_crops})
    run_dir.write_results(results)
    if embed:
        results["embed_seconds"] = round(_embed_all(output=output, tracks=tracks, progress=progress), 1)
        results["wall_seconds"] = round(time.time() - started, 1)
        run_dir.write_results(results)
    log(f"distilled {settings.teacher} into {output}: teacher agreement (mean cosine) on "
        f"{report_crops} crops of {len(tracks.report)} held-out tracks never trained on: "
        f"{agreement['held_out_report']:.3f} (early-stopping tracks: {agreement['held_out_stop']:.3f}); "
        f"best step {results['distill']['best_step']} of {results['distill']['steps']} "
        f"({state['stopped'] or 'not stopped yet: run again to go on'}); "
        f"took {results['wall_seconds'] / 60:.1f} min ({train_minutes:.1f} min training)")
    return results


# -- the command -------------------------------------------------------------------------------
def _define_flags():
    defaults = DistillSettings()
    flags.DEFINE_string("audio", DEMO_AUDIO, "Audio to distil from: comma-separated folders (recursive), manifest.csv "
                        "files (their path column; labels never read), text files of paths, or 'demo': every "
                        "allowed package's whole tracks (the extended demo corpus, built on first use).")
    flags.DEFINE_string("output", os.path.join("runs", "distilled-wavenet"), "The run folder (resumed when it "
                        "records the same run).")
    flags.DEFINE_enum("teacher", defaults.teacher, list(stream.TEACHERS), "pretrained: the engine's one-pass "
                      "vector (four taggers); or one musicnn checkpoint's penultimate layer.")
    flags.DEFINE_enum("distill_loss", defaults.loss, ["cosine", "mse"], "Loss on the standardised target.")
    flags.DEFINE_enum("student_input", defaults.student_input, list(stream.STUDENT_INPUTS),
                      "logmel8k: 8 kHz log-mel (64 bands); logmel16k: full band like the teacher (96 bands).")
    flags.DEFINE_float("crop_seconds", defaults.crop_seconds, "Crop length (default one musicnn patch).")
    flags.DEFINE_integer("round_crops", defaults.round_crops, "New crops drawn (and teacher targets computed) "
                         "per round.")
    flags.DEFINE_integer("round_steps", defaults.round_steps, "Training steps per round.")
    flags.DEFINE_integer("batch_size", defaults.batch_size, "Crops per step.")
    flags.DEFINE_integer("eval_every_steps", defaults.eval_every_steps, "Held-out evaluation interval.")
    flags.DEFINE_integer("patience_steps", defaults.patience_steps, "Stop once the held-out cosine to the teacher "
                         "has not risen for this many steps.")
    flags.DEFINE_integer("max_steps", defaults.max_steps, "A safety bound (early stopping ends a run).")
    flags.DEFINE_float("max_minutes", None, "Stop training after this long (a rerun goes on).")
    flags.DEFINE_float("held_out_fraction", defaults.held_out_fraction, "Share of whole tracks held out.")
    flags.DEFINE_integer("held_out_crops", defaults.held_out_crops, "Crops per held-out track.")
    flags.DEFINE_integer("seed", defaults.seed, "Seed.")
    flags.DEFINE_string("params", "", "WaveNet/front-end params as key=value,... (e.g. channels=8,num_stacks=1).")
    flags.DEFINE_string("cache_dir", os.path.join(".cache", "distill_targets"), "Teacher-target cache.")
    flags.DEFINE_float("cache_gb", stream.DEFAULT_CACHE_BYTES / 1024 ** 3, "At most this much cache per teacher.")
    flags.DEFINE_boolean("embed", True, "Embed every file into OUTPUT/embeddings.npz at the end.")
    return flags.FLAGS


def parse_params(text: str) -> dict:
    """``"a=1,b=x"`` -> ``{"a": 1, "b": "x"}`` (ints, floats, true/false, else strings)."""
    out = {}
    for item in [s for s in text.split(",") if s.strip()]:
        if "=" not in item:
            raise DistillRunError(f"--params: expected key=value, got {item!r}")
        key, value = (part.strip() for part in item.split("=", 1))
        for convert in (int, float):
            try:
                out[key] = convert(value)
                break
            except ValueError:
                continue
        else:
            out[key] = {"true": True, "false": False}.get(value.lower(), value)
    return out


def main(argv) -> None:
    del argv
    flag_values = FLAGS
    tf.compat.v1.logging.set_verbosity(tf.compat.v1.logging.WARN)  # the run's own lines, not the estimator's
    tf.get_logger().propagate = False
    deprecation._PRINT_DEPRECATION_WARNINGS = False  # TF1-style estimator chatter, as experiments.run drops it
    try:
        settings = DistillSettings(
            teacher=flag_values.teacher, loss=flag_values.distill_loss, student_input=flag_values.student_input,
            crop_seconds=flag_values.crop_seconds, round_crops=flag_values.round_crops,
            round_steps=flag_values.round_steps, batch_size=flag_values.batch_size,
            eval_every_steps=flag_values.eval_every_steps, patience_steps=flag_values.patience_steps,
            max_steps=flag_values.max_steps, held_out_fraction=flag_values.held_out_fraction,
            held_out_crops=flag_values.held_out_crops, seed=flag_values.seed, params=parse_params(flag_values.params))
        paths = audio_paths(flag_values.audio)
        distill(paths=paths, output=flag_values.output, settings=settings, cache_dir=flag_values.cache_dir,
                cache_bytes=int(flag_values.cache_gb * 1024 ** 3), max_minutes=flag_values.max_minutes,
                embed=flag_values.embed)
    except (DistillRunError, stream.DistillStreamError, ParamsError) as err:
        sys.exit(usage_error(str(err), usage=USAGE))
    except RunConfigMismatch as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


FLAGS = None


def cli() -> None:
    """``python -m experiments.distill``: ``--help`` lists the flags (exit 0), misuse exits 2."""
    global FLAGS
    FLAGS = _define_flags()
    app.run(main, flags_parser=global_flags_parser(module=sys.modules[__name__], doc=__doc__, usage=USAGE))


if __name__ == "__main__":
    cli()
