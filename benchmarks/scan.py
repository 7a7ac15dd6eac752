"""Library scan figures: first scan speed, re-scans, peak memory, and the server's latency during a scan.

    python benchmarks/scan.py [--files=1000] [--min_seconds=10] [--max_seconds=30] [--workdir=DIR]
        [--model_dir=RUN] [--queries=300] [--busy_files=20]

Generates a library of ``--files`` tagged tracks (half FLAC, half Ogg Vorbis, 22.05 kHz stereo,
``--min_seconds`` to ``--max_seconds`` long, uniformly drawn with a fixed seed; albums of 10 tracks
in ``Artist k/Album k/NN title.ext``; title, artist, album, track number, year and genre written
with mutagen), kept in ``--workdir`` so a rerun with the same settings reuses it. Then, each step
the real command (``python -m musicsim.scan``, the default engine unless ``--model_dir``) in a
subprocess, its wall time including the process start:

1. the first scan: audio seconds per second (wall; the scan's own figure, which leaves out the
   start and the engine loading; and per CPU second of the scan process, steadier on a shared
   machine and comparable with ``benchmarks/engine_throughput.py``'s: the default engine works in
   that process, the decoding workers of other runs are not counted), peak RSS of the scan process
   (``wait4``'s ``ru_maxrss``);
2. a re-scan with nothing changed (goal: <= 3 s per 1,000 files), beside the command's start-up alone
   (``python -m musicsim.scan --help``: Python and the imports, paid once per scan whatever the library);
3. ``musicsim.search.serve`` started on a free localhost port; by-id latency (``/api/similar/{id}``,
   keep-alive, ``--queries`` sequential requests) while idle;
4. 10 files added and 5 removed, then a re-scan: its counts must show exactly those 15 touched
   (10 added, 5 removed, the rest unchanged), and its wall time;
5. ``--busy_files`` more files added and a scan started; by-id latency while it runs (the loop
   ends with the scan, or after ``BUSY_LIMIT_S``), against the idle figure (goal: p50 <= 2x).

Goals (issue 21, 2 cores): first scan >= the engine benchmark's audio s/s less 10%, re-scan <= 3 s
per 1,000 files, peak RSS <= 1.5 GB, by-id p50 during a scan <= 2x idle. Results are printed and
written to ``WORKDIR/results.json``.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

import mutagen
import numpy as np
import soundfile as sf

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "benchmarks"))

import musicsim.index  # noqa: E402
from serve import Server, request  # noqa: E402  (benchmarks/serve.py: the server in a subprocess)

SAMPLE_RATE = 22050
TRACKS_PER_ALBUM = 10
GENRES = ("Ambient", "Rock", "Jazz", "Electronic", "Folk", "Classical")
SUMMARY = re.compile(r"scanned (\d+) files: (\d+) added, (\d+) changed, (\d+) moved, (\d+) removed, (\d+) unchanged, "
                     r"(\d+) skipped")
# The by-id loop during a scan ends with the scan, or after this many seconds.
BUSY_LIMIT_S = 1800.0
SPEED = re.compile(r"\(([\d.]+) s of audio per second\)")


def render(*, album: int, track: int, seconds: float) -> np.ndarray:
    """A stereo track [samples, 2]: an album's timbre (harmonics, noise) at a track's pitch and rhythm."""
    rng = np.random.default_rng(album * 1000 + track)
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    base = 80.0 * 2 ** ((album % 24) / 12.0) * (1 + 0.05 * track)
    harmonics = rng.uniform(0.1, 1.0, size=1 + album % 6)
    signal = sum(w * np.sin(2 * np.pi * base * (h + 1) * t) for h, w in enumerate(harmonics)) / harmonics.sum()
    signal = signal * (0.6 + 0.4 * np.sin(2 * np.pi * (0.5 + 0.3 * (track % 4)) * t) ** 2)
    noise = 0.02 + 0.1 * (album % 3)
    left = signal + noise * rng.standard_normal(t.size)
    right = signal + noise * rng.standard_normal(t.size)
    stereo = np.stack([left, right], axis=1)
    return (0.5 * stereo / np.max(np.abs(stereo))).astype(np.float32)


def write_track(root: str, number: int, *, seconds: float) -> tuple[str, float]:
    """Track ``number`` of the library (FLAC for even numbers, Ogg Vorbis for odd), tagged; (path, seconds)."""
    album, track = divmod(number, TRACKS_PER_ALBUM)
    ext, fmt, subtype = (".flac", "FLAC", "PCM_16") if number % 2 == 0 else (".ogg", "OGG", "VORBIS")
    folder = os.path.join(root, f"Artist {album % 37}", f"Album {album}")
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"{track + 1:02d} Track {number}{ext}")
    sf.write(path, render(album=album, track=track, seconds=seconds), SAMPLE_RATE, format=fmt, subtype=subtype)
    audio = mutagen.File(path)
    if audio.tags is None:
        audio.add_tags()
    audio.tags["TITLE"] = [f"Track {number} «{album}»"]
    audio.tags["ARTIST"] = [f"Artist {album % 37}"]
    audio.tags["ALBUM"] = [f"Album {album}"]
    audio.tags["TRACKNUMBER"] = [str(track + 1)]
    audio.tags["DATE"] = [str(1970 + album % 50)]
    audio.tags["GENRE"] = [GENRES[album % len(GENRES)]]
    audio.save()
    return path, seconds


def make_library(root: str, *, files: int, first: int = 0, min_seconds: float, max_seconds: float
                 ) -> list[tuple[str, float]]:
    """Tracks ``first .. first + files - 1`` under ``root`` (lengths drawn per track number, so reproducible)."""
    tracks = []
    for number in range(first, first + files):
        seconds = float(np.random.default_rng(number).uniform(min_seconds, max_seconds))
        tracks.append(write_track(root, number, seconds=seconds))
    return tracks


WORKDIR_MARKER = "scan-benchmark.txt"


def cached_library(workdir: str, *, files: int, min_seconds: float, max_seconds: float) -> tuple[str, float]:
    """The generated library (reused when its settings match): (folder, total audio seconds)."""
    settings = {"files": files, "min_seconds": min_seconds, "max_seconds": max_seconds, "rate": SAMPLE_RATE}
    root, record = os.path.join(workdir, "library"), os.path.join(workdir, "library.json")
    try:
        with open(record) as f:
            saved = json.load(f)
        if saved["settings"] == settings and os.path.isdir(root):
            return root, float(saved["audio_seconds"])
    except (OSError, ValueError, KeyError):
        pass
    shutil.rmtree(root, ignore_errors=True)
    started = time.perf_counter()
    tracks = make_library(root, files=files, min_seconds=min_seconds, max_seconds=max_seconds)
    audio_seconds = sum(seconds for _, seconds in tracks)
    print(f"generated {files} tracks ({audio_seconds / 3600:.2f} h of audio) in {time.perf_counter() - started:.0f} s")
    with open(record, "w") as f:
        json.dump({"settings": settings, "audio_seconds": audio_seconds}, f)
    return root, audio_seconds


class ScanProcess:
    """``python -m musicsim.scan`` running in a subprocess, reaped with ``wait4`` (for its peak RSS)."""

    def __init__(self, *, library: str, index: str, model_dir: str | None, log: str):
        command = [sys.executable, "-m", "musicsim.scan", f"--audio={library}", f"--index={index}", "--noprogress"]
        if model_dir:
            command.append(f"--model_dir={model_dir}")
        self.log = log
        self.started = time.perf_counter()
        with open(log, "w") as out:
            self.process = subprocess.Popen(command, cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                                            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=REPO))
        self.ended: tuple[int, float, object] | None = None  # (exit status, wall seconds, rusage)

    def running(self) -> bool:
        if self.ended is None:
            pid, status, usage = os.wait4(self.process.pid, os.WNOHANG)
            if pid:
                self.ended = (os.waitstatus_to_exitcode(status), time.perf_counter() - self.started, usage)
        return self.ended is None

    def result(self) -> dict:
        """Wait for the end: wall seconds, peak RSS (MB), counts and the scan's own speed; raises when it failed."""
        if self.ended is None:
            _, status, usage = os.wait4(self.process.pid, 0)
            self.ended = (os.waitstatus_to_exitcode(status), time.perf_counter() - self.started, usage)
        self.process.returncode, wall, usage = self.ended
        text = open(self.log).read()
        if self.process.returncode != 0:
            raise RuntimeError(f"scan failed ({self.process.returncode}): {text[-2000:]}")
        counts, speed = SUMMARY.search(text), SPEED.search(text)
        names = ("files", "added", "changed", "moved", "removed", "unchanged", "skipped")
        return {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime, "peak_rss_mb": usage.ru_maxrss / 1024.0,
                "load_average_at_end": os.getloadavg()[0],
                "counts": dict(zip(names, map(int, counts.groups()))) if counts else {},
                "own_audio_s_per_s": float(speed.group(1)) if speed else None}


def run_scan(*, library: str, index: str, model_dir: str | None, log: str) -> dict:
    """One scan to its end (``ScanProcess.result``)."""
    return ScanProcess(library=library, index=index, model_dir=model_dir, log=log).result()


def by_id_latencies(port: int, ids: list[str], *, count: int, while_running: ScanProcess | None = None
                    ) -> tuple[np.ndarray, int]:
    """Seconds per sequential by-id query (keep-alive): ``count`` of them, or as many as fit while
    ``while_running`` runs (at most ``BUSY_LIMIT_S``). Returns (latencies, requests that did not answer 200)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    rng = np.random.default_rng(2)
    times, errors = [], 0
    deadline = time.perf_counter() + BUSY_LIMIT_S
    while (len(times) < count if while_running is None
           else while_running.running() and time.perf_counter() < deadline):
        track_id = str(rng.choice(ids))
        started = time.perf_counter()
        try:
            status, _ = request(port, "GET", f"/api/similar/{track_id}?k=10", connection=connection)
        except (OSError, http.client.HTTPException):
            connection.close()
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            status = 0
        times.append(time.perf_counter() - started)
        errors += status != 200
    connection.close()
    return np.asarray(times), errors


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, default=1000, help="tracks in the generated library")
    parser.add_argument("--min_seconds", type=float, default=10.0, help="shortest track")
    parser.add_argument("--max_seconds", type=float, default=30.0, help="longest track")
    parser.add_argument("--workdir", default=None, help="where the library and indexes go (default: a temp dir, "
                        "removed at the end)")
    parser.add_argument("--model_dir", default=None, help="scan with this run instead of the default engine")
    parser.add_argument("--queries", type=int, default=300, help="by-id requests for the idle latency")
    parser.add_argument("--busy_files", type=int, default=20, help="files the scan under load embeds")
    args = parser.parse_args()
    if args.files < 10 or not 0 < args.min_seconds <= args.max_seconds or args.queries < 1 or args.busy_files < 1:
        parser.error("--files >= 10, 0 < --min_seconds <= --max_seconds, --queries >= 1, --busy_files >= 1")
    workdir = args.workdir or tempfile.mkdtemp(prefix="scan-benchmark-")
    # The benchmark deletes and rewrites library/, scanned/ and index/ in its folder: only in a folder it made.
    marker = os.path.join(workdir, WORKDIR_MARKER)
    if os.path.isdir(workdir) and os.listdir(workdir) and not os.path.exists(marker):
        parser.error(f"--workdir={workdir} is not empty and is not a folder of this benchmark (no {WORKDIR_MARKER}): "
                     "give a new or empty folder")
    os.makedirs(workdir, exist_ok=True)
    with open(marker, "w") as f:
        f.write("written by benchmarks/scan.py: its generated library, copies and indexes live here\n")
    try:
        return run(args, workdir)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)


def run(args: argparse.Namespace, workdir: str) -> int:
    base, audio_seconds = cached_library(workdir, files=args.files, min_seconds=args.min_seconds,
                                         max_seconds=args.max_seconds)
    library = os.path.join(workdir, "scanned")  # a copy the benchmark changes; the generated one stays as it is
    shutil.rmtree(library, ignore_errors=True)
    shutil.copytree(base, library)
    index = os.path.join(workdir, "index")
    shutil.rmtree(index, ignore_errors=True)
    results: dict = {"files": args.files, "audio_seconds": audio_seconds, "min_seconds": args.min_seconds,
                     "max_seconds": args.max_seconds, "engine": args.model_dir or "default", "cores": os.cpu_count()}

    first = run_scan(library=library, index=index, model_dir=args.model_dir, log=os.path.join(workdir, "scan1.log"))
    assert first["counts"].get("added") == args.files, first
    results["first_scan"] = {**first, "audio_s_per_s": audio_seconds / first["wall_s"],
                             "audio_s_per_cpu_s": audio_seconds / first["cpu_s"]}
    print(f"first scan: {args.files} files, {audio_seconds:.0f} s of audio in {first['wall_s']:.1f} s: "
          f"{audio_seconds / first['wall_s']:.1f} audio s/s (the scan's own figure: {first['own_audio_s_per_s']}; per "
          f"CPU second: {audio_seconds / first['cpu_s']:.1f}; load average {first['load_average_at_end']:.1f}); "
          f"peak RSS {first['peak_rss_mb']:.0f} MB")

    again = run_scan(library=library, index=index, model_dir=args.model_dir, log=os.path.join(workdir, "scan2.log"))
    assert again["counts"].get("unchanged") == args.files and again["counts"].get("added") == 0, again
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "musicsim.scan", "--help"], cwd=REPO, stdout=subprocess.DEVNULL,
                   env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=REPO), check=True)
    startup = time.perf_counter() - started
    results["unchanged_rescan"] = {**again, "s_per_1000_files": again["wall_s"] * 1000 / args.files,
                                   "command_startup_s": startup}
    print(f"re-scan, nothing changed: {again['wall_s']:.2f} s for {args.files} files (goal <= 3 s per 1,000 files); "
          f"the command's start-up alone (--help): {startup:.2f} s, the engine's loading comes on top")

    ids = list(musicsim.index.open(index).track_ids)
    server = Server(index)
    try:
        server.wait_for_model()
        by_id_latencies(server.port, ids, count=50)  # warm-up: the first requests pay for lazy set-up
        idle, idle_errors = by_id_latencies(server.port, ids, count=args.queries)
        results["serve_idle"] = {"p50_ms": 1000 * float(np.median(idle)), "p99_ms": 1000 * float(np.quantile(idle, .99)),
                                 "requests": len(idle), "errors": idle_errors}
        print(f"serve by-id while idle: p50 {results['serve_idle']['p50_ms']:.1f} ms, "
              f"p99 {results['serve_idle']['p99_ms']:.1f} ms ({len(idle)} requests, {idle_errors} errors)")

        # 10 added, 5 removed: a re-scan touching only those 15.
        make_library(library, files=10, first=args.files, min_seconds=args.min_seconds, max_seconds=args.max_seconds)
        removed = sorted(os.path.join(d, f) for d, _, fs in os.walk(library) for f in fs)[:5]
        for path in removed:
            os.remove(path)
        changed = run_scan(library=library, index=index, model_dir=args.model_dir,
                           log=os.path.join(workdir, "scan3.log"))
        counts = changed["counts"]
        touched_only_15 = (counts.get("added"), counts.get("removed"), counts.get("changed"),
                           counts.get("unchanged")) == (10, 5, 0, args.files - 5)
        results["rescan_10_added_5_removed"] = {**changed, "touched_only_those_15": touched_only_15}
        print(f"re-scan after 10 added, 5 removed: {changed['wall_s']:.1f} s, counts {counts} "
              f"(only those 15 touched: {touched_only_15})")

        # By-id latency while a scan embeds --busy_files new files into the index being served.
        make_library(library, files=args.busy_files, first=args.files + 10, min_seconds=args.min_seconds,
                     max_seconds=args.max_seconds)
        stable = [t for t in ids if t in set(musicsim.index.open(index).track_ids)]
        busy_process = ScanProcess(library=library, index=index, model_dir=args.model_dir,
                                   log=os.path.join(workdir, "scan4.log"))
        busy, busy_errors = by_id_latencies(server.port, stable, count=args.queries, while_running=busy_process)
        busy_scan = busy_process.result()
        p50 = 1000 * float(np.median(busy)) if busy.size else float("nan")
        results["serve_during_scan"] = {"p50_ms": p50, "p99_ms": 1000 * float(np.quantile(busy, .99)) if busy.size
                                        else float("nan"), "requests": len(busy), "errors": busy_errors,
                                        "ratio_to_idle": p50 / results["serve_idle"]["p50_ms"], "scan": busy_scan}
        results["server_rss_mb"] = server.rss_mb()
        print(f"serve by-id during a scan of {args.busy_files} files ({busy_scan['wall_s']:.0f} s): p50 {p50:.1f} ms, "
              f"p99 {results['serve_during_scan']['p99_ms']:.1f} ms ({len(busy)} requests, {busy_errors} errors): "
              f"{results['serve_during_scan']['ratio_to_idle']:.2f}x idle (goal <= 2x)")
    finally:
        server.stop()
    with open(os.path.join(workdir, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
