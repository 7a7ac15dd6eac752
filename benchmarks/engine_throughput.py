"""Embedding throughput of whole tracks, end to end: the one-pass engine beside musicnn alone and today's fusion.

    python benchmarks/engine_throughput.py [--corpus=/tmp/extcorpus] [--tracks=6] [--rows=pretrained,musicnn_msd,fusion]
                                           [--max_patches=N|all[,...]] [--output=FILE.json]

Real audio: ``--tracks`` whole tracks of a development corpus (``bash ../shared/data/build_dev_corpus.sh
DIR``, a folder holding ``manifest.csv``; the extended corpus works too), taken one album after another so
several albums and encodings are in the sample. Each row runs in a child process of its own, one after the
other on the same files, and does everything a library scan does for its vectors: decode every file,
embed it, write the vectors (``.npy``, temp-then-rename). Rows:

- ``pretrained``: ``--model=pretrained`` (`musicsim.models.pretrained_engine.raw_engine`, its default
  settings unless ``--max_patches`` is given; several values, comma-separated, give one row each,
  ``pretrained(N)``): one decode, one spectrogram, the four musicnn checkpoints in one graph;
- ``musicnn_msd``: the musicnn MSD tagger alone (``MusicnnModel``, penultimate layer);
- ``fusion``: today's recommended fusion (``experiments.recommended.PARTS``: librosa + the four taggers),
  each part decoding and embedding the files on its own, as ``FusionModel.extract`` does through the parts'
  embedders (librosa's long tracks in the 120 s windows its embedder uses);
- ``distilled``: the WaveNet distilled from the engine (``make distill``'s ``runs/distilled-wavenet``, or any
  distillation run: ``--distilled_run``, e.g. a fold's student of ``benchmarks/distill_folds.py``), through
  its run's embedder as ``musicsim-scan --model_dir=`` uses it. In the default rows when that run exists.

Every row embeds whole tracks (``max_seconds=None``). Each child first embeds a generated 4 s clip (loading
weights and tracing graphs: ``startup_s``), then times the corpus files (``embed_s``): seconds of audio per
second is ``audio_s / embed_s``, and per CPU second ``audio_s / embed_cpu_s`` (the child's and its
workers' CPU time: steadier than wall time on a machine others share). Peak RSS is the ``ru_maxrss`` of
the child as the kernel reports it on ``wait4``: the largest of the child and its waited-for descendants
(librosa's workers are children of multiprocessing's fork server, which the child stops and waits for
before it reads its CPU time). The table ends with each row's speed-up over the fusion and its projection
for 10,000 four-minute tracks. The machine's load
average before each row is printed: on a shared machine the figures are only comparable within one run.
Goal (issue 20): pretrained >= 6x the fusion (about 90x real time on 2 cores), peak RSS <= 1.5 GB.
Goal (issue 25): distilled >= 4x pretrained, on the same files in the same run.

Each row's model is imported inside its child (``_embedders``): a row loads only its own model, and its
``startup_s`` counts that import.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from multiprocessing import forkserver

import numpy as np
import soundfile as sf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # musicsim when run as a script from anywhere
    sys.path.insert(0, ROOT)

from musicsim.atomic import atomic_path, write_json_atomic  # noqa: E402
from musicsim.data.audio import file_duration  # noqa: E402

ROWS = ("pretrained", "musicnn_msd", "fusion", "distilled")
DISTILLED_RUN = os.path.join("runs", "distilled-wavenet")  # make distill's run
GOAL_SPEEDUP = 6.0
GOAL_DISTILLED_SPEEDUP = 4.0  # issue 25: the distilled WaveNet >= 4x the engine
GOAL_RSS_BYTES = 1.5e9
PROJECTION_TRACKS = 10_000
PROJECTION_SECONDS = 240.0
FUSION_WINDOW_SECONDS = 120.0  # musicsim.embedder.INEXACT_MIN_WINDOW_SECONDS: the fitted parts' window


def pick_tracks(*, corpus: str, tracks: int) -> list[str]:
    """``tracks`` files of the corpus's manifest, one album after another (round robin, manifest order)."""
    manifest = os.path.join(corpus, "manifest.csv")
    if not os.path.isfile(manifest):
        raise SystemExit(f"engine_throughput: {corpus} holds no manifest.csv: build it with "
                         f"bash ../shared/data/build_dev_corpus.sh {corpus}")
    albums: dict[str, list[str]] = {}
    with open(manifest, newline="") as f:
        for row in csv.DictReader(f):
            albums.setdefault(row["label_album"], []).append(os.path.join(corpus, row["path"]))
    picked, round_index = [], 0
    while len(picked) < tracks and any(round_index < len(files) for files in albums.values()):
        for files in albums.values():
            if round_index < len(files) and len(picked) < tracks:
                picked.append(files[round_index])
        round_index += 1
    return picked


# -- the child: one row ------------------------------------------------------------------------------
def _warm_clip(folder: str) -> str:
    t = np.arange(4 * 22050) / 22050.0
    path = os.path.join(folder, "warm.wav")
    sf.write(path, (0.3 * np.sin(2 * np.pi * 330 * t) * (1 + np.sin(2 * np.pi * 2 * t))).astype(np.float32), 22050)
    return path


def _embedders(row: str, *, max_patches: str | None, distilled_run: str = DISTILLED_RUN):
    """``[(part name, embed(paths) -> (vectors [n_ok, d], ok_indices, skipped))]`` of one row."""
    from musicsim.models import musicnn  # why: in the row's child only, its import counted in startup_s

    if row == "pretrained":
        from musicsim.models.pretrained_engine import raw_engine  # why: as above

        settings = {} if max_patches is None else {"max_patches": None if max_patches == "all" else int(max_patches)}
        engine = raw_engine(**settings)
        return [("pretrained", lambda paths: engine.embed_paths(paths=paths))]
    if row == "musicnn_msd":
        model = musicnn.MusicnnModel(checkpoint="MSD_musicnn", max_seconds=None, progress=False)
        return [("musicnn_msd", lambda paths: model.extract(paths=paths))]
    if row == "distilled":
        from musicsim.embedder import load_embedder  # why: as above

        embedder = load_embedder(distilled_run)
        return [("distilled", lambda paths: embedder.embed_paths(paths=paths, progress=False, workers=1))]
    if row == "fusion":
        from experiments.recommended import PARTS  # why: as above
        from musicsim.models import fitted_class  # why: as above

        parts = []
        for name, (model_name, params) in PARTS.items():
            cls = fitted_class(model_name)
            if model_name == "musicnn":
                model = cls(checkpoint=params.get("musicnn_model", "MSD_musicnn"),
                            layer=params.get("musicnn_layer", "penultimate"), max_seconds=None, progress=False)
            else:
                model = cls(max_seconds=None, progress=False)
                model.window_seconds = FUSION_WINDOW_SECONDS
            parts.append((name, (lambda m: lambda paths: m.extract(paths=paths))(model)))
        return parts
    raise SystemExit(f"engine_throughput: unknown row {row!r}: expected one of {ROWS}")


def child(*, row: str, paths: list[str], out_dir: str, max_patches: str | None,
          distilled_run: str = DISTILLED_RUN) -> dict:
    """Embed ``paths`` with one row's model(s) and write the vectors; returns the timings."""
    started = time.perf_counter()
    embedders = _embedders(row, max_patches=max_patches, distilled_run=distilled_run)
    warm = _warm_clip(out_dir)
    for _, embed in embedders:
        embed([warm])
    startup = time.perf_counter() - started
    began, cpu_began = time.perf_counter(), _cpu_seconds()
    blocks, usable, reasons = [], set(range(len(paths))), {}
    for name, embed in embedders:
        vectors, ok, skipped = embed(paths)
        blocks.append(dict(zip(ok, np.asarray(vectors, np.float32))))
        usable &= set(ok)
        reasons.update({path: f"{name}: {reason}" for path, reason in skipped})
    kept = sorted(usable)
    matrix = (np.stack([np.concatenate([block[i] for block in blocks]) for i in kept]) if kept
              else np.zeros((0, 0), np.float32))
    with atomic_path(os.path.join(out_dir, f"{row}.npy")) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, matrix)
    embed_s = time.perf_counter() - began
    _stop_fork_server()
    embed_cpu_s = _cpu_seconds() - cpu_began
    audio_s = sum(file_duration(paths[i]) or 0.0 for i in kept)
    return {"row": row, "tracks": len(kept), "skipped": reasons, "dim": int(matrix.shape[1]) if kept else 0,
            "audio_s": audio_s, "embed_s": embed_s, "embed_cpu_s": embed_cpu_s, "startup_s": startup}


def _stop_fork_server() -> None:
    """Stop multiprocessing's fork server, if one runs: librosa's workers are its children, so only once it
    has been waited for do their CPU time and peak memory count among this process's children."""
    stop = getattr(getattr(forkserver, "_forkserver", None), "_stop", None)
    if stop is not None:
        stop()


def _cpu_seconds() -> float:
    """CPU seconds of this process and of its waited-for children (librosa's workers) so far."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


# -- the parent: every row, side by side ---------------------------------------------------------------
def run_row(*, row: str, paths: list[str], max_patches: str | None, workdir: str,
            distilled_run: str = DISTILLED_RUN) -> dict:
    """One row in a child process: its timings, its wall time and its peak RSS (``wait4``)."""
    paths_file = os.path.join(workdir, "paths.json")
    with open(paths_file, "w") as f:
        json.dump(paths, f)
    result_file = os.path.join(workdir, f"{row}.json")
    command = [sys.executable, os.path.abspath(__file__), f"--child={row}", f"--paths_file={paths_file}",
               f"--result={result_file}", f"--workdir={workdir}", f"--distilled_run={os.path.abspath(distilled_run)}"]
    if max_patches is not None:
        command.append(f"--max_patches={max_patches}")
    environment = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": ROOT}
    load = os.getloadavg()[0]
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=ROOT, env=environment)
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    if process.returncode != 0:
        raise SystemExit(f"engine_throughput: the {row} row failed (exit {process.returncode})")
    with open(result_file) as f:
        result = json.load(f)
    return {**result, "wall_s": wall, "peak_rss_bytes": usage.ru_maxrss * 1024, "load_before": load,
            "cpu_s": usage.ru_utime + usage.ru_stime}


def report(results: list[dict]) -> str:
    """The side-by-side table, with speed-ups over the fusion and the 10,000-track projection."""
    by_row = {r["row"]: r for r in results}
    fusion = by_row.get("fusion")
    fusion_rate = fusion["audio_s"] / fusion["embed_s"] if fusion else None
    fusion_cpu_rate = fusion["audio_s"] / fusion["embed_cpu_s"] if fusion else None
    lines = [f"{'row':<16} {'tracks':>6} {'audio s':>8} {'embed s':>8} {'x real time':>11} {'vs fusion':>9} "
             f"{'CPU s':>7} {'audio s/CPU s':>13} {'vs fusion':>9} {'startup s':>9} {'peak RSS':>9} {'load':>5} "
             f"{'10k x 4 min':>12}"]
    for r in results:
        rate, cpu_rate = r["audio_s"] / r["embed_s"], r["audio_s"] / r["embed_cpu_s"]
        speedup = f"{rate / fusion_rate:8.2f}x" if fusion_rate else "        -"
        cpu_speedup = f"{cpu_rate / fusion_cpu_rate:8.2f}x" if fusion_cpu_rate else "        -"
        hours = PROJECTION_TRACKS * PROJECTION_SECONDS / rate / 3600
        lines.append(f"{r['row']:<16} {r['tracks']:>6} {r['audio_s']:>8.0f} {r['embed_s']:>8.1f} {rate:>10.1f}x "
                     f"{speedup:>9} {r['embed_cpu_s']:>7.1f} {cpu_rate:>13.1f} {cpu_speedup:>9} {r['startup_s']:>9.1f} "
                     f"{r['peak_rss_bytes'] / 1e9:>7.2f}GB {r['load_before']:>5.1f} {hours:>10.1f} h")
    lines.append(f"(10k x 4 min: {PROJECTION_TRACKS:,} tracks of {PROJECTION_SECONDS:.0f} s at the row's "
                 "wall-clock rate; "
                 "audio s/CPU s: the rate on one dedicated core, steadier on a shared machine)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--corpus", default="/tmp/extcorpus" if os.path.isdir("/tmp/extcorpus") else "/tmp/devcorpus")
    parser.add_argument("--tracks", type=int, default=6)
    parser.add_argument("--rows", default=None, help=f"some of {','.join(ROWS)} (default: all, distilled only when "
                        "--distilled_run exists)")
    parser.add_argument("--distilled_run", default=DISTILLED_RUN, help="the distillation run folder of the "
                        "distilled row (default: make distill's)")
    parser.add_argument("--max_patches", default=None, help="the engine's max_patches (an int or 'all'; several, "
                                                             "comma-separated: a pretrained row each); default: "
                                                             "the engine's own")
    parser.add_argument("--output", default=None, help="also write the results as JSON here")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--paths_file", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--result", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    settings = [None] if args.max_patches is None else [v.strip() for v in args.max_patches.split(",")]
    for value in settings:
        if value not in (None, "all") and (not value.isdigit() or int(value) < 1):
            parser.error(f"--max_patches must be positive integers or 'all', got {args.max_patches!r}")
    if args.child:
        with open(args.paths_file) as f:
            paths = json.load(f)
        result = child(row=args.child, paths=paths, out_dir=args.workdir, max_patches=args.max_patches,
                       distilled_run=args.distilled_run)
        with open(args.result, "w") as f:
            json.dump(result, f)
        return 0
    if args.tracks < 1:
        parser.error(f"--tracks must be >= 1, got {args.tracks}")
    if args.rows is None:
        args.rows = ",".join(r for r in ROWS if r != "distilled" or os.path.isdir(args.distilled_run))
    rows = [row.strip() for row in args.rows.split(",") if row.strip()]
    unknown = [row for row in rows if row not in ROWS]
    if unknown:
        parser.error(f"unknown rows {unknown}: expected some of {list(ROWS)}")
    if "distilled" in rows and not os.path.isfile(os.path.join(args.distilled_run, "run.json")):
        parser.error(f"--distilled_run={args.distilled_run}: not a run folder (make distill writes one)")
    paths = pick_tracks(corpus=args.corpus, tracks=args.tracks)
    print(f"{len(paths)} whole tracks of {args.corpus}; {os.cpu_count()} cores; load average "
          f"{os.getloadavg()[0]:.1f}", flush=True)
    results = []
    with tempfile.TemporaryDirectory(prefix="engine_throughput-") as workdir:
        for row in rows:
            for value in (settings if row == "pretrained" else [None]):
                label = row if value is None else f"{row}({value})"
                print(f"-- {label} ...", flush=True)
                results.append({**run_row(row=row, paths=paths, max_patches=value, workdir=workdir,
                                          distilled_run=args.distilled_run), "row": label, "max_patches": value})
    table = report(results)
    print(table)
    by_row = {r["row"]: r for r in results}
    for label, r in by_row.items():
        if label.startswith("pretrained") and "fusion" in by_row:
            speedup = (r["audio_s"] / r["embed_s"]) / (by_row["fusion"]["audio_s"] / by_row["fusion"]["embed_s"])
            print(f"goal: {label} >= {GOAL_SPEEDUP:.0f}x fusion: {speedup:.2f}x "
                  f"({'met' if speedup >= GOAL_SPEEDUP else 'not met'}); peak RSS <= 1.5 GB: "
                  f"{'met' if r['peak_rss_bytes'] <= GOAL_RSS_BYTES else 'not met'}")
    student = by_row.get("distilled")
    for label, r in by_row.items():
        if student and label.startswith("pretrained"):
            speedup = (student["audio_s"] / student["embed_s"]) / (r["audio_s"] / r["embed_s"])
            cpu_speedup = (student["audio_s"] / student["embed_cpu_s"]) / (r["audio_s"] / r["embed_cpu_s"])
            met = "met" if speedup >= GOAL_DISTILLED_SPEEDUP else "not met"
            print(f"goal: distilled >= {GOAL_DISTILLED_SPEEDUP:.0f}x {label}: {speedup:.2f}x wall clock, "
                  f"{cpu_speedup:.2f}x per CPU second ({met})")
    if args.output:
        write_json_atomic(args.output, {"corpus": args.corpus, "paths": paths, "rows": results,
                                        "max_patches": args.max_patches, "cores": os.cpu_count()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
