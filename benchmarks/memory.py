"""Peak memory of data preparation, export and search by file on one long recording; windowed vs whole.

    python benchmarks/memory.py [--minutes=60] [--model_dir=RUN] [--keep_dir=DIR]

Generates a ``--minutes`` long 44.1 kHz stereo WAV (written block by block) in a temporary folder, then
runs each command in a subprocess of its own and prints the peak resident memory of its largest process
(``ru_maxrss`` of the waited-for children):

- prep: ``python -m data_prep.build --dataset=album_folders`` on a folder holding only that file;
- export: ``python -m experiments.export`` of that folder (``--workers=1``);
- search: ``python -m musicsim.search.query --query=FILE`` against the index of that export;
- export_mfcc: the export with the MFCC baseline (when this benchmark trained it);
- run: ``python -m experiments.run --model=wavenet`` (the default architecture, 20 steps) on a prepared
  dataset (the small synthetic one at 16 kHz) whose eval split also holds that file, whole (prepared
  without ``--max_seconds``): its evaluation lists read centred crops and its embedding of every track
  goes window by window. Goal for this row: 2 GB (issue 24 item 13; it peaked at 8.4 GB on 20 whole
  tracks of at most 3.8 minutes before);
- run_short: the same run on the same dataset without the long file: what the default WaveNet's training
  step itself takes (4 lists x 7 crops of 4 s through 18 layers), whatever the tracks' length.

Then the cosine between a 5-minute track embedded whole (``window_seconds=0``) and in the run's
windows, for WaveNet (exact over windows) and the MFCC baseline (windowed statistics differ from whole
ones). Without ``--model_dir``, short WaveNet (the default architecture) and MFCC runs are trained on
a small synthetic dataset first (a couple of minutes). Everything generated is deleted at the end.
Goal: every peak under 1.5 GB (the run row: 2 GB), WaveNet cosine > 0.999.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import soundfile as sf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for _folder in (ROOT, os.path.join(ROOT, "tests")):  # run as a script from anywhere; the tests' synthetic dataset
    if _folder not in sys.path:
        sys.path.insert(0, _folder)

from conftest import write_synthetic_dataset  # noqa: E402  (tests/conftest.py: synthetic albums, prepared)
from musicsim.data.audio import DecodeSettings, decode_track  # noqa: E402
from musicsim.data.dataset import CatalogEntry, read_catalog, write_catalog  # noqa: E402
from musicsim.data.tfrecords import Track, serialize_track, write_records  # noqa: E402

RATE = 44100
# Runs one command and prints the peak RSS (bytes) of its largest process, as JSON on the last line.
PEAK_WRAPPER = """
import json, resource, subprocess, sys
status = subprocess.run(sys.argv[1:]).returncode
print(json.dumps({"rc": status, "peak_bytes": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024}))
"""
GOAL_BYTES = 1.5e9
# experiments.run holds a dataset's every split in memory (pooled at 3.2 kHz: 46 MB per hour) beside TensorFlow.
GOAL_BYTES_BY_CASE = {"run": 2.0e9, "run_short": 2.0e9}
# The reference each row is printed beside: its peak before the training step recomputed the WaveNet's long stacks in
# the backward pass (musicsim.models.wavenet.recomputed), as this benchmark measured it then (60-minute track).
PREVIOUS_BYTES = {"run": 3.53e9, "run_short": 3.15e9}


def write_long_wav(path: str, *, minutes: float, seed: int = 0) -> None:
    """A stereo 44.1 kHz WAV ``minutes`` long, written a minute at a time (tones, a beat and noise)."""
    rng = np.random.default_rng(seed)
    with sf.SoundFile(path, "w", samplerate=RATE, channels=2, subtype="PCM_16") as f:
        done = 0
        total = int(minutes * 60 * RATE)
        while done < total:
            n = min(60 * RATE, total - done)
            t = (done + np.arange(n)) / RATE
            pitch = 220.0 * 2 ** ((np.floor(t / 7.0) % 12) / 12.0)
            tone = np.sin(2 * np.pi * pitch * t) * (0.5 + 0.4 * np.sin(2 * np.pi * 0.5 * t) ** 2)
            beat = (np.sin(2 * np.pi * 2.0 * t) > 0.95) * rng.standard_normal(n) * 0.3
            left = 0.4 * tone + beat + 0.02 * rng.standard_normal(n)
            right = 0.4 * np.sin(2 * np.pi * 1.5 * pitch * t) + beat + 0.02 * rng.standard_normal(n)
            f.write(np.clip(np.stack([left, right], axis=1), -1, 1).astype(np.float32))
            done += n


def peak(command: list[str], *, label: str) -> tuple[float, int, float]:
    """(peak RSS bytes, exit status, seconds) of ``command`` run in its own subprocess."""
    started = time.time()
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=ROOT)
    done = subprocess.run([sys.executable, "-c", PEAK_WRAPPER, *command], cwd=ROOT, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seconds = time.time() - started
    try:
        result = json.loads(done.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        result = {"rc": done.returncode, "peak_bytes": float("nan")}
    if result["rc"] != 0:
        print(f"  {label} exited {result['rc']}:\n{done.stderr[-2000:]}", file=sys.stderr)
    return float(result["peak_bytes"]), int(result["rc"]), seconds


def train_runs(workdir: str) -> dict[str, str]:
    """Short WaveNet (default architecture) and MFCC runs on a small synthetic prepared dataset."""
    dataset = write_synthetic_dataset(os.path.join(workdir, "synthetic"), per_album=8, seconds=3.0, sample_rate=16000)
    runs = {}
    for model, extra in (("wavenet", ["--max_steps=4", "--crop_seconds=2", "--eval_seconds=4"]),
                         ("mfcc", [])):
        model_dir = os.path.join(workdir, f"{model}-run")
        command = [sys.executable, "-m", "experiments.run", f"--model={model}", f"--dataset={dataset}",
                   f"--model_dir={model_dir}", "--eval_repeats=1", "--workers=1", "--save_checkpoints_steps=2",
                   "--early_stopping_patience=0", *extra]
        done = subprocess.run(command, cwd=ROOT, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if done.returncode != 0:
            raise SystemExit(f"training the {model} run failed:\n{done.stderr[-3000:]}")
        runs[model] = model_dir
    return runs


def dataset_with_long_track(workdir: str, long_wav: str | None) -> str:
    """The small synthetic dataset at 16 kHz (pool 5), plus ``long_wav`` decoded whole into its eval split.

    The long track shares an album with eval tracks, so the evaluation lists take it as a query and as a
    candidate. ``long_wav`` None: the synthetic dataset alone. Returns the prepared dataset folder.
    """
    dataset = write_synthetic_dataset(os.path.join(workdir, "with-long" if long_wav else "short-only"), per_album=8,
                                      seconds=3.0, sample_rate=16000)
    if long_wav is None:
        return dataset
    entries = read_catalog(dataset)
    album = sorted(e.labels for e in entries if e.split == "eval")[0]
    decoded = decode_track(long_wav, DecodeSettings(sample_rate=16000, pool_size=5, max_seconds=None, min_seconds=1.0))
    if decoded.pooled is None:
        raise SystemExit(f"cannot decode {long_wav}: {decoded.reason}")
    track = Track(track_id="long", labels=tuple(album), audio=decoded.pooled, sample_rate=16000 // 5, pool_size=5)
    write_records(os.path.join(dataset, "eval", "shard-long.tfrecord"), [serialize_track(track)])
    write_catalog(dataset, [*entries, CatalogEntry(track_id="long", split="eval", labels=tuple(album),
                                                   duration_s=decoded.seconds, path=os.path.abspath(long_wav))])
    return dataset


def cosine_whole_vs_windows(model_dir: str, path: str) -> tuple[float, float | None]:
    """(cosine of the whole and windowed embeddings of ``path``, the run's window in seconds)."""
    code = f"""
import json, numpy as np
from musicsim.embedder import load_embedder
whole = load_embedder({model_dir!r}, window_seconds=0).embed_paths(paths=[{path!r}], workers=1, progress=False)[0][0]
windowed = load_embedder({model_dir!r})
vector = windowed.embed_paths(paths=[{path!r}], workers=1, progress=False)[0][0]
cosine = float(whole @ vector / (np.linalg.norm(whole) * np.linalg.norm(vector)))
print(json.dumps({{"cosine": cosine, "window_seconds": windowed.window_seconds}}))
"""
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if done.returncode != 0:
        print(done.stderr[-2000:], file=sys.stderr)
        return float("nan"), None
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return result["cosine"], result["window_seconds"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=60.0, help="length of the long recording")
    parser.add_argument("--model_dir", default=None, help="a WaveNet run to use (default: train a short one)")
    parser.add_argument("--skip", default="", help="comma-separated cases to leave out: prep,export,search,"
                        "export_mfcc,run,run_short,cosine")
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    workdir = tempfile.mkdtemp(prefix="musicsim-memory-")
    rows = []
    try:
        cases_wanted = {"prep", "export", "search", "export_mfcc", "cosine"} - skip  # those need trained runs
        runs = {"wavenet": args.model_dir} if args.model_dir else (train_runs(workdir) if cases_wanted else {})
        music = os.path.join(workdir, "music", "album")
        os.makedirs(music)
        long_wav = os.path.join(music, "long.wav")
        started = time.time()
        write_long_wav(long_wav, minutes=args.minutes)
        print(f"{args.minutes:g}-minute 44.1 kHz stereo WAV: {os.path.getsize(long_wav) / 1e9:.2f} GB "
              f"(written in {time.time() - started:.0f}s)")
        wavenet_run = runs.get("wavenet", "")
        export_file = os.path.join(workdir, "long.parquet")
        cases = [
            ("prep", [sys.executable, "-m", "data_prep.build", "--dataset=album_folders",
                      f"--input={os.path.dirname(music)}", f"--output={os.path.join(workdir, 'prepared')}",
                      "--workers=1", "--noprogress"]),
            ("export", [sys.executable, "-m", "experiments.export", f"--model_dir={wavenet_run}",
                        f"--audio={os.path.dirname(music)}", f"--output={export_file}", "--workers=1",
                        "--noprogress"]),
            ("search", [sys.executable, "-m", "musicsim.search.query", f"--index={os.path.join(workdir, 'index')}",
                        f"--query={long_wav}", "-k", "1"]),
        ]
        if "mfcc" in runs:  # a fitted model: features computed a window at a time
            cases.append(("export_mfcc", [sys.executable, "-m", "experiments.export", f"--model_dir={runs['mfcc']}",
                                          f"--audio={os.path.dirname(music)}",
                                          f"--output={os.path.join(workdir, 'long_mfcc.parquet')}", "--workers=1",
                                          "--noprogress"]))
        for label, source in (("run", long_wav), ("run_short", None)):
            if label not in skip:
                cases.append((label, [sys.executable, "-m", "experiments.run", "--model=wavenet",
                                      f"--dataset={dataset_with_long_track(workdir, source)}",
                                      f"--model_dir={os.path.join(workdir, label)}", "--max_steps=20",
                                      "--save_checkpoints_steps=10", "--early_stopping_patience=0",
                                      "--eval_repeats=1", "--workers=1"]))
        for label, command in cases:
            if label in skip:
                continue
            if label == "search":
                if not os.path.exists(export_file):
                    print("  search needs the export: skipped", file=sys.stderr)
                    continue
                subprocess.run([sys.executable, "-m", "musicsim.index", "build", f"--embeddings={export_file}",
                                f"--output={os.path.join(workdir, 'index')}", f"--model_dir={wavenet_run}"],
                               cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
            bytes_, status, seconds = peak(command, label=label)
            goal = GOAL_BYTES_BY_CASE.get(label, GOAL_BYTES)
            rows.append((label, bytes_, status, seconds, goal))
            verdict = "ok" if bytes_ < goal and status == 0 else "OVER GOAL or failed"
            previous = f", before {PREVIOUS_BYTES[label] / 1e9:.2f} GB" if label in PREVIOUS_BYTES else ""
            print(f"{label:<11} peak RSS {bytes_ / 1e9:6.2f} GB  exit {status}  {seconds:6.0f}s  {verdict} "
                  f"(goal {goal / 1e9:g} GB{previous})", flush=True)
        os.remove(long_wav)
        if "cosine" not in skip:
            track = os.path.join(workdir, "five_minutes.wav")
            write_long_wav(track, minutes=5.0, seed=1)
            for model, model_dir in runs.items():
                cosine, window = cosine_whole_vs_windows(model_dir, track)
                print(f"cosine whole vs windows ({model}, {window} s windows, 5-minute track): {cosine:.7f} "
                      f"(1 - cosine = {1 - cosine:.1e})")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0 if all(status == 0 and b < goal for _, b, status, _, goal in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
