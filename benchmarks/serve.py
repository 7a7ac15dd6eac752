"""HTTP service figures: by-id and file query latency, throughput under concurrent clients, server memory.

    python benchmarks/serve.py [--audio=DIR] [--tracks=100000] [--clients=16] [--seconds=30]

Two indexes, each served by ``python -m musicsim.search.serve`` in a subprocess on 127.0.0.1:

1. real audio: the demo corpus (``data/demo_corpus``) when it exists, else ``--audio`` (a folder of
   audio files), else generated 30 s clips; MFCC model fitted on it, so file queries run a real model;
2. a synthetic catalog of ``--tracks`` random 64-d vectors (cosine, 1000 groups), served with ``--subsonic``.

Prints by-id latency p50/p99 (sequential, keep-alive), file query latency for a 30 s clip (the first
query separately, after the server has warmed its model up), throughput of ``--clients`` concurrent keep-alive
clients for ``--seconds`` (it stops by itself) with its error count, and the server's RSS before
and after; and the Subsonic API's getSimilarSongs2 (count=50, token auth) and search3 latencies on the
synthetic index; and live reload: ``--added`` tracks added to the served synthetic index (a new
version saved by another process), how long until the server answers from it and the by-id latency
of a client querying meanwhile. Goals on 2 cores: by-id p50 <= 10 ms at 100k tracks, a 30 s file query
<= 1.5 s, >= 200 by-id requests/s, RSS growth < 50 MB; Subsonic getSimilarSongs2 p50 <= 15 ms, search3 p50
<= 30 ms; a new version served <= 5 s after its save at 100k tracks, with no failed request and by-id p50
during the reload <= 2x the idle figure.
"""
from __future__ import annotations

import argparse
import glob
import hashlib
import http.client
import json
import multiprocessing
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from urllib.parse import quote, urlencode

import numpy as np
import soundfile as sf

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import musicsim.index  # noqa: E402
from musicsim.data.audio import load_audio  # noqa: E402
from musicsim.index import FaissIndex  # noqa: E402
from musicsim.models.mfcc import MFCCModel  # noqa: E402
from musicsim.search.subsonic.ids import song_id  # noqa: E402
from musicsim.search.users import add_user  # noqa: E402

AUDIO_SUFFIXES = (".ogg", ".opus", ".wav", ".flac", ".mp3")
CLIP_SECONDS = 30.0
CLIP_RATE = 22050


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def audio_files(root: str) -> list[str]:
    return sorted(p for p in glob.glob(os.path.join(root, "**", "*"), recursive=True)
                  if p.lower().endswith(AUDIO_SUFFIXES))


def generated_clips(folder: str, *, count: int = 40, seconds: float = CLIP_SECONDS) -> list[str]:
    """``count`` clips of ``seconds`` (8 timbres x pitches), written as WAV: a stand-in catalog."""
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * CLIP_RATE)) / CLIP_RATE
    paths = []
    for i in range(count):
        album, take = divmod(i, 5)
        base = 110.0 * 2 ** (album / 3) * (1 + 0.03 * take)
        harmonics = sum(np.sin(2 * np.pi * base * (h + 1) * t) / (h + 1) ** (1 + album % 3) for h in range(6))
        beat = 0.6 + 0.4 * (np.sin(2 * np.pi * (1 + album % 4) * t) > 0)
        signal = beat * harmonics + (0.02 + 0.05 * (album % 2)) * rng.standard_normal(t.size)
        path = os.path.join(folder, f"album{album}", f"take{take}.wav")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        sf.write(path, (0.4 * signal / np.abs(signal).max()).astype(np.float32), CLIP_RATE)
        paths.append(path)
    return paths


def build_audio_index(*, paths: list[str], work: str) -> str:
    """Fit the MFCC model on ``paths``, embed them and index them (group = parent folder)."""
    model_dir = os.path.join(work, "mfcc")
    model = MFCCModel(max_seconds=CLIP_SECONDS, workers=2, progress=False).fit(paths=paths)
    model.save(model_dir)
    vectors, ok, skipped = model.embed_paths(paths=paths)
    for path, reason in skipped:
        print(f"skipped {path}: {reason}")
    kept = [paths[i] for i in ok]
    index = FaissIndex(track_ids=[os.path.splitext(os.path.relpath(p, os.path.dirname(os.path.dirname(p))))[0]
                                      for p in kept],
                           vectors=vectors, similarity=model.similarity,
                           metadata={"path": kept, "group": [os.path.basename(os.path.dirname(p)) for p in kept]},
                           model={"name": "mfcc", "model_dir": model_dir})
    index.save(os.path.join(work, "audio_index"))
    return os.path.join(work, "audio_index")


def build_synthetic_index(*, count: int, work: str, dim: int = 64) -> str:
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((count, dim)).astype(np.float32)
    ids = [f"synthetic/{i:06d}" for i in range(count)]
    index = FaissIndex(track_ids=ids, vectors=vectors, similarity="cosine",
                           metadata={"group": [f"group{i % 1000:03d}" for i in range(count)]})
    index.save(os.path.join(work, "synthetic_index"))
    return os.path.join(work, "synthetic_index")


class Server:
    """``python -m musicsim.search.serve`` in a subprocess on a free loopback port."""

    def __init__(self, index_dir: str, *, extra_args: tuple[str, ...] = ()):
        self.port = free_port()
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
        self.process = subprocess.Popen([sys.executable, "-m", "musicsim.search.serve", f"--index={index_dir}",
                                         "--host=127.0.0.1", f"--port={self.port}", *extra_args],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
        deadline = time.time() + 120
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited: {self.process.stderr.read().decode()[-2000:]}")
            try:
                status, _ = request(self.port, "GET", "/healthz")
                if status == 200:
                    return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError("server did not start within 120 s")

    def wait_for_model(self, *, timeout: float = 180.0) -> None:
        """Until the server's background warm-up has loaded the upload model (it competes for the CPU)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            state = json.loads(request(self.port, "GET", "/healthz")[1])["model"]
            if state in ("ready", "none") or state.startswith("failed"):
                return
            time.sleep(0.2)

    def rss_mb(self) -> float:
        with open(f"/proc/{self.process.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
        return float("nan")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()


def request(port: int, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
            connection: http.client.HTTPConnection | None = None) -> tuple[int, bytes]:
    own = connection is None
    connection = connection or http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        if own:
            connection.close()


def latency_by_id(port: int, ids: list[str], *, count: int) -> np.ndarray:
    """Seconds per sequential by-id query over one keep-alive connection: shape [count]."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    rng = np.random.default_rng(1)
    times = []
    for track_id in rng.choice(ids, size=count):
        started = time.perf_counter()
        status, _ = request(port, "GET", f"/api/similar/{quote(str(track_id), safe='')}?k=10", connection=connection)
        times.append(time.perf_counter() - started)
        if status != 200:
            raise RuntimeError(f"by-id query answered {status}")
    connection.close()
    return np.asarray(times)


def latency_of(port: int, path: str, *, count: int) -> np.ndarray:
    """Seconds per sequential GET of ``path`` over one keep-alive connection: shape [count]."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    times = []
    for _ in range(count):
        started = time.perf_counter()
        request(port, "GET", path, connection=connection)
        times.append(time.perf_counter() - started)
    connection.close()
    return np.asarray(times)


SUBSONIC_USER, SUBSONIC_PASSWORD = "bench", "bench-password"


def subsonic_latency(port: int, method: str, param_sets: list[dict[str, str]]) -> np.ndarray:
    """Seconds per sequential Subsonic request (token auth, f=json) over one keep-alive connection: [count]."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    times = []
    for i, params in enumerate(param_sets):
        salt = f"{i:08x}"
        token = hashlib.md5((SUBSONIC_PASSWORD + salt).encode()).hexdigest()
        query = urlencode({"u": SUBSONIC_USER, "t": token, "s": salt, "v": "1.16.1", "c": "bench", "f": "json",
                           **params})
        started = time.perf_counter()
        status, body = request(port, "GET", f"/rest/{method}?{query}", connection=connection)
        times.append(time.perf_counter() - started)
        if status != 200 or b'"status":"ok"' not in body:
            raise RuntimeError(f"{method} answered {status}: {body[:300]!r}")
    connection.close()
    return np.asarray(times)


def report_subsonic(*, port: int, track_ids: list[str], count: int) -> None:
    """The Subsonic rows: getSimilarSongs2 of random songs (count=50, players' default) and search3 of
    random 3-digit words (20 artists, albums and songs each)."""
    rng = np.random.default_rng(2)
    songs = [song_id(str(t)) for t in rng.choice(track_ids, size=count)]
    for method, params, goal in (
            ("getSimilarSongs2", [{"id": s, "count": "50"} for s in songs], 15),
            ("search3", [{"query": f"{int(n):03d}"} for n in rng.integers(0, 1000, size=count)], 30)):
        times = subsonic_latency(port, method, params)
        print(f"synthetic index: Subsonic {method} over HTTP p50 {1000 * np.percentile(times, 50):.1f} ms, "
              f"p99 {1000 * np.percentile(times, 99):.1f} ms ({times.size} sequential requests; goal p50 <= "
              f"{goal} ms)")


def _client_process(port: int, ids: list[str], threads: int, seconds: float, queue) -> None:
    counts, errors = [0] * threads, [0] * threads
    stop_at = time.time() + seconds

    def client(slot: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        rng = np.random.default_rng(slot + 100 * os.getpid())
        while time.time() < stop_at:
            track_id = ids[int(rng.integers(len(ids)))]
            try:
                status, _ = request(port, "GET", f"/api/similar/{quote(track_id, safe='')}?k=10",
                                    connection=connection)
                counts[slot] += 1
                errors[slot] += status != 200
            except OSError:
                errors[slot] += 1
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        connection.close()

    workers = [threading.Thread(target=client, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    queue.put((sum(counts), sum(errors)))


def throughput(port: int, ids: list[str], *, clients: int, seconds: float) -> tuple[float, int, int]:
    """(requests/s, requests, errors) of ``clients`` concurrent keep-alive clients for ``seconds``."""
    processes = min(4, clients)
    queue = multiprocessing.get_context("fork").Queue()
    per = [clients // processes + (i < clients % processes) for i in range(processes)]
    started = time.time()
    workers = [multiprocessing.get_context("fork").Process(target=_client_process, args=(port, ids, n, seconds, queue))
               for n in per]
    for w in workers:
        w.start()
    results = [queue.get(timeout=seconds + 120) for _ in workers]
    for w in workers:
        w.join()
    elapsed = time.time() - started
    done, errors = sum(r[0] for r in results), sum(r[1] for r in results)
    return done / elapsed, done, errors


def file_query_latency(port: int, clip: str, *, count: int) -> tuple[float, np.ndarray]:
    """(first query seconds, the next ``count`` queries' seconds [count]) for the file ``clip``."""
    with open(clip, "rb") as f:
        body = f.read()
    times = []
    for _ in range(count + 1):
        started = time.perf_counter()
        status, answer = request(port, "POST", "/api/similar?k=10", body=body,
                                 headers={"Content-Type": "audio/wav", "X-Filename": "clip.wav"})
        times.append(time.perf_counter() - started)
        if status != 200:
            raise RuntimeError(f"file query answered {status}: {answer[:300]!r}")
    return times[0], np.asarray(times[1:])


def thirty_second_clip(path: str, folder: str) -> str:
    """The centred 30 s of ``path`` as a WAV (what a user would upload)."""
    audio = load_audio(path, sample_rate=CLIP_RATE, min_seconds=0.0)
    middle = max(0, audio.size // 2 - int(CLIP_SECONDS * CLIP_RATE) // 2)
    clip = os.path.join(folder, "clip30.wav")
    sf.write(clip, audio[middle:middle + int(CLIP_SECONDS * CLIP_RATE)], CLIP_RATE)
    return clip


def reload_while_querying(*, port: int, index_dir: str, ids: list[str], added: int) -> None:
    """Save a new version of the served index (``added`` tracks more) while one client queries by id;
    prints the save time, the delay until /healthz reports the new version's count, and the latency."""
    index = musicsim.index.open(index_dir)
    count = len(index)
    rng = np.random.default_rng(2)
    index.add(track_ids=[f"added/{i:06d}" for i in range(added)],
              vectors=rng.standard_normal((added, index.dim)).astype(np.float32),
              metadata={"group": ["added"] * added})
    stop = threading.Event()
    times: list[float] = []
    failures: list[str] = []

    def query() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        for track_id in rng.choice(ids, size=1_000_000):
            if stop.is_set():
                break
            started = time.perf_counter()
            status, body = request(port, "GET", f"/api/similar/{quote(str(track_id), safe='')}?k=10",
                                   connection=connection)
            times.append(time.perf_counter() - started)
            if status != 200:
                failures.append(f"{status} {body[:200]!r}")
        connection.close()

    client = threading.Thread(target=query)
    client.start()
    time.sleep(1.0)
    idle = len(times)
    started = time.perf_counter()
    index.save(index_dir)
    saved = time.perf_counter()
    seen = None
    while time.perf_counter() - saved < 120:
        if json.loads(request(port, "GET", "/healthz")[1])["tracks"] == count + added:
            seen = time.perf_counter()
            break
        time.sleep(0.05)
    during = len(times)
    stop.set()
    client.join()
    idle_times, reload_times = np.asarray(times[:idle]), np.asarray(times[idle:during])
    served = f"{seen - saved:.1f} s after its save" if seen else "NOT within 120 s"
    print(f"synthetic index: live reload of {count + added} tracks ({added} added): saved in {saved - started:.1f} s, "
          f"served {served}; by-id while reloading p50 {1000 * np.percentile(reload_times, 50):.1f} ms, "
          f"p99 {1000 * np.percentile(reload_times, 99):.1f} ms ({reload_times.size} queries; idle p50 "
          f"{1000 * np.percentile(idle_times, 50):.1f} ms), {len(failures)} failed requests")


def report_by_id(name: str, times: np.ndarray) -> None:
    print(f"{name}: by-id latency over HTTP p50 {1000 * np.percentile(times, 50):.1f} ms, "
          f"p99 {1000 * np.percentile(times, 99):.1f} ms ({times.size} sequential queries, k=10)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--audio", default=None,
                        help="a folder of audio files (default: the demo corpus, else generated)")
    parser.add_argument("--tracks", type=int, default=100_000, help="synthetic index size")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=30.0, help="throughput run length")
    parser.add_argument("--queries", type=int, default=300, help="sequential by-id queries for the latency")
    parser.add_argument("--added", type=int, default=100, help="tracks added for the live reload row")
    args = parser.parse_args()
    print(f"{os.cpu_count()} CPU cores; loopback only; other work on the machine competes for them")
    with tempfile.TemporaryDirectory(prefix="serve-bench-") as work:
        root = args.audio or ("data/demo_corpus/audio" if os.path.isdir("data/demo_corpus/audio") else None)
        paths = audio_files(root) if root else generated_clips(os.path.join(work, "clips"))
        started = time.time()
        audio_index = build_audio_index(paths=paths, work=work)
        print(f"real audio: {len(paths)} files from {root or 'generated 30 s clips'}; MFCC fitted and indexed "
              f"in {time.time() - started:.0f} s")
        server = Server(audio_index)
        try:
            server.wait_for_model()
            ids = musicsim.index.open(audio_index).track_ids
            report_by_id(f"audio index ({len(ids)} tracks)", latency_by_id(server.port, ids, count=args.queries))
            clip = thirty_second_clip(paths[0], work)
            first, times = file_query_latency(server.port, clip, count=5)
            print(f"audio index: file query, 30 s WAV clip: first {first:.2f} s (model warmed up at start-up), then "
                  f"p50 {np.percentile(times, 50):.2f} s, max {times.max():.2f} s ({times.size} queries)")
        finally:
            server.stop()

        started = time.time()
        synthetic = build_synthetic_index(count=args.tracks, work=work)
        print(f"synthetic index: {args.tracks} tracks, d=64, built in {time.time() - started:.1f} s")
        users_file = os.path.join(work, "users.json")
        add_user(users_file=users_file, name=SUBSONIC_USER, password=SUBSONIC_PASSWORD)
        server = Server(synthetic, extra_args=("--subsonic", f"--users={users_file}"))
        try:
            ids = [f"synthetic/{i:06d}" for i in range(args.tracks)]
            request(server.port, "GET", "/api/similar/synthetic%2F000000?k=10")  # first-request set-up
            subsonic_latency(server.port, "search3", [{"query": "warm"}])  # waits for the Subsonic catalog
            before = server.rss_mb()
            index = musicsim.index.open(synthetic)
            in_process = []
            for track_id in ids[::max(1, args.tracks // args.queries)][:args.queries]:
                started = time.perf_counter()
                index.search_by_id(track_id=track_id, k=10)
                in_process.append(time.perf_counter() - started)
            del index
            print(f"synthetic index: the same query in-process (FaissIndex.search_by_id, no HTTP): "
                  f"p50 {1000 * np.median(in_process):.1f} ms")
            floor = latency_of(server.port, "/healthz", count=args.queries)
            print(f"HTTP floor (GET /healthz): p50 {1000 * np.percentile(floor, 50):.1f} ms, "
                  f"p99 {1000 * np.percentile(floor, 99):.1f} ms")
            report_by_id(f"synthetic index ({args.tracks} tracks)", latency_by_id(server.port, ids, count=args.queries))
            report_subsonic(port=server.port, track_ids=ids, count=args.queries)
            rate, done, errors = throughput(server.port, ids, clients=args.clients, seconds=args.seconds)
            after = server.rss_mb()
            print(f"synthetic index: throughput {rate:.0f} by-id requests/s with {args.clients} concurrent clients "
                  f"for {args.seconds:.0f} s ({done} requests, {errors} errors)")
            print(f"synthetic index: server RSS {before:.0f} MB before, {after:.0f} MB after "
                  f"(growth {after - before:+.1f} MB)")
            reload_while_querying(port=server.port, index_dir=synthetic, ids=ids, added=args.added)
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
