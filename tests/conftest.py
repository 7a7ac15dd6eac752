"""Shared fixtures: small synthetic prepared datasets written directly in the project's format."""
from __future__ import annotations

import os
import socket
import subprocess
import threading
import time

import numpy as np
import pytest
import soundfile as sf

from musicsim.data.audio import load_audio, mean_pool
import dataclasses
import shutil

from musicsim.data.dataset import CatalogEntry, DatasetInfo, read_catalog, write_catalog
from musicsim.data.tfrecords import Track, serialize_track, write_records
from musicsim.workers import process_alive

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# Albums that differ clearly in timbre: base frequency, harmonic weights, noise level.
ALBUM_TIMBRES = {
    "low_sine": (110.0, (1.0,), 0.02),
    "bright_square": (330.0, (1.0, 0.0, 0.33, 0.0, 0.2, 0.0, 0.14), 0.02),
    "noisy_mid": (220.0, (1.0, 0.5), 0.3),
    "high_pulse": (660.0, (1.0, 0.8, 0.6), 0.05),
}


def render_track(*, album: str, index: int, seconds: float, sample_rate: int, seed: int) -> np.ndarray:
    """A synthetic track of an album's timbre, with per-track pitch, rhythm and noise variation."""
    base, harmonics, noise = ALBUM_TIMBRES[album]
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    pitch = base * (1.0 + 0.06 * index)
    signal = sum(w * np.sin(2 * np.pi * pitch * (h + 1) * t) for h, w in enumerate(harmonics))
    envelope = 0.6 + 0.4 * np.sin(2 * np.pi * (0.5 + 0.2 * index) * t) ** 2
    signal = envelope * signal / sum(harmonics) + noise * rng.standard_normal(t.size)
    return (0.5 * signal / np.max(np.abs(signal))).astype(np.float32)


def write_synthetic_dataset(root: str, *, albums=tuple(ALBUM_TIMBRES), per_album: int = 8, seconds: float = 3.0,
                            sample_rate: int = 8000, pool_size: int = 5, seed: int = 0) -> str:
    """Render WAVs under ``root/audio`` and prepare them into ``root/prepared`` (50/25/25 per album)."""
    dataset_dir = os.path.join(root, "prepared")
    entries, shards = [], {"train": [], "eval": [], "test": []}
    for a, album in enumerate(albums):
        os.makedirs(os.path.join(root, "audio", album), exist_ok=True)
        order = np.random.default_rng(seed + a).permutation(per_album)
        for k in range(per_album):
            path = os.path.join(root, "audio", album, f"t{k}.wav")
            duration = seconds * (1.0 + 0.3 * (k % 3))  # real variable lengths
            sf.write(path, render_track(album=album, index=k, seconds=duration, sample_rate=sample_rate,
                                        seed=seed * 1000 + a * 100 + k), sample_rate)
            rank = int(np.flatnonzero(order == k)[0])
            split = "train" if rank < per_album // 2 else ("eval" if rank < 3 * per_album // 4 else "test")
            audio = load_audio(path, sample_rate=sample_rate)
            pooled = mean_pool(audio, size=pool_size)
            track = Track(track_id=f"{album}__t{k}", labels=(album,), audio=pooled,
                          sample_rate=sample_rate // pool_size, pool_size=pool_size)
            shards[split].append(serialize_track(track))
            entries.append(CatalogEntry(track_id=track.track_id, split=split, labels=(album,),
                                        duration_s=audio.size / sample_rate, path=os.path.abspath(path)))
    for split, records in shards.items():
        os.makedirs(os.path.join(dataset_dir, split), exist_ok=True)
        write_records(os.path.join(dataset_dir, split, "shard-00000.tfrecord"), records)
    write_catalog(dataset_dir, entries)
    DatasetInfo(name="synthetic", kind="album_folders", sample_rate=sample_rate, pool_size=pool_size,
                max_seconds=None, relevance="album").save(dataset_dir)
    return dataset_dir


@pytest.fixture(scope="session")
def synthetic_dataset(tmp_path_factory) -> str:
    """A prepared dataset of 4 synthetic albums x 8 tracks (pooled rate 1.6 kHz)."""
    return write_synthetic_dataset(str(tmp_path_factory.mktemp("synthetic")))


def copy_with_test_labels_permuted(dataset_dir: str, output_dir: str, *, seed: int) -> str:
    """A copy of a prepared dataset whose test split's labels are shuffled among its tracks.

    What is chosen on the eval split must not change; what is measured on test must.
    """
    shutil.copytree(dataset_dir, output_dir)
    entries = read_catalog(output_dir)
    test_rows = [i for i, e in enumerate(entries) if e.split == "test"]
    permuted = np.random.default_rng(seed).permutation([entries[i].labels for i in test_rows])
    for i, labels in zip(test_rows, permuted):
        entries[i] = dataclasses.replace(entries[i], labels=tuple(labels))
    write_catalog(output_dir, entries)
    return output_dir


def _parent_pids() -> dict[int, int]:
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parents[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    return parents


def descendant_pids(pid: int) -> list[int]:
    """Every process below ``pid`` (children, and theirs: a fork server's workers)."""
    parents = _parent_pids()
    found, frontier = [], [pid]
    while frontier:
        children = [child for child, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def assert_workers_die_with(command: list[str], *, cwd: str, min_processes: int) -> None:
    """Start ``command``, wait until it has ``min_processes`` processes below it, SIGKILL it, and
    check that every one of them ends within seconds (a worker must never outlive its parent)."""
    import signal
    import subprocess
    import time

    run = subprocess.Popen(command, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while len(descendant_pids(run.pid)) < min_processes and time.time() < deadline and run.poll() is None:
            time.sleep(0.05)
        workers = descendant_pids(run.pid)
        assert len(workers) >= min_processes and run.poll() is None, \
            f"the command ended before its workers could be seen ({len(workers)} processes)"
        time.sleep(0.5)
    finally:
        os.kill(run.pid, signal.SIGKILL)
        run.wait()
    deadline = time.time() + 10
    while any(process_alive(pid) for pid in workers) and time.time() < deadline:
        time.sleep(0.1)
    survivors = [pid for pid in workers if process_alive(pid)]
    for pid in survivors:  # leave nothing behind, then fail
        os.kill(pid, signal.SIGKILL)
    assert survivors == []


# The served catalog: real audio files, a real fitted model and an index of its embeddings (serve, browser).
SERVED_SAMPLE_RATE = 8000
SERVED_TRACKS_PER_ALBUM = 4


def write_album_tracks(root, *, sample_rate: int = SERVED_SAMPLE_RATE,
                       per_album: int = SERVED_TRACKS_PER_ALBUM) -> list[str]:
    """Synthetic albums x ``per_album`` tracks of 2-3 s, WAV, under ``root/<album>/t<k>.wav``; their paths."""
    paths = []
    for a, album in enumerate(ALBUM_TIMBRES):
        os.makedirs(os.path.join(root, album), exist_ok=True)
        for k in range(per_album):
            path = os.path.join(str(root), album, f"t{k}.wav")
            sf.write(path, render_track(album=album, index=k, seconds=2.0 + 0.5 * (k % 3), sample_rate=sample_rate,
                                        seed=a * 10 + k), sample_rate)
            paths.append(path)
    return paths


def album_track_ids(paths: list[str]) -> list[str]:
    """``<album>/t<k>`` of each path of ``write_album_tracks``."""
    return [f"{os.path.basename(os.path.dirname(p))}/{os.path.splitext(os.path.basename(p))[0]}" for p in paths]


@pytest.fixture(scope="module")
def mfcc_catalog(tmp_path_factory) -> dict:
    """A real MFCC model fitted on the synthetic albums (``root/mfcc``), and an index of their
    embeddings with paths, groups and durations (``index_dir``); also ``root``, ``paths``, ``vectors``."""
    from musicsim.index import FaissIndex
    from musicsim.models.mfcc import MFCCModel

    root = tmp_path_factory.mktemp("served")
    paths = write_album_tracks(root / "audio")
    model = MFCCModel(sample_rate=SERVED_SAMPLE_RATE, max_seconds=None, workers=1, progress=False).fit(paths=paths)
    model.save(str(root / "mfcc"))
    vectors, ok, skipped = model.embed_paths(paths=paths)
    assert not skipped and ok == list(range(len(paths)))
    index = FaissIndex(track_ids=album_track_ids(paths), vectors=vectors, similarity=model.similarity,
                           metadata={"path": paths, "group": [os.path.basename(os.path.dirname(p)) for p in paths],
                                     "duration_s": [sf.info(p).duration for p in paths]},
                           model={"name": "mfcc", "model_dir": str(root / "mfcc")})
    index.save(str(root / "index"))
    return {"root": root, "paths": paths, "vectors": vectors, "index_dir": str(root / "index")}


def write_fitted_model_config(folder, *, name: str, dim: int, similarity: str = "euclidean") -> str:
    """The ``fitted_model.json`` a saved fitted model starts with: all an index build reads of a run
    (its model name, embedding dimension and similarity). Returns the folder."""
    import json

    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "fitted_model.json"), "w") as f:
        json.dump({"name": name, "dim": dim, "similarity": similarity}, f)
    return str(folder)


# ---------------------------------------------------------------- fake Debian packages, the tiny dev corpus

def build_fake_deb(folder, *, package: str, files: dict[str, bytes]) -> str:
    """A real .deb (dpkg-deb --build) holding ``files`` (path in the package -> content)."""
    tree = os.path.join(str(folder), package)
    os.makedirs(os.path.join(tree, "DEBIAN"))
    with open(os.path.join(tree, "DEBIAN", "control"), "w") as f:
        f.write(f"Package: {package}\nVersion: 1.0-1\nArchitecture: all\nMaintainer: t <t@example.org>\n"
                "Description: test package\n test\n")
    for member, content in files.items():
        path = os.path.join(tree, member.lstrip("/"))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(content)
    deb = os.path.join(str(folder), f"{package}_1.0-1_all.deb")
    subprocess.run(["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", tree, deb], check=True,
                   capture_output=True)
    return deb


class FakeApt:
    """Stands in for ``apt-get download``: copies a prebuilt .deb into the work folder."""

    def __init__(self, debs: dict[str, str]):
        self.debs, self.calls = debs, []

    def __call__(self, package: str, workdir: str) -> tuple[str, str]:
        self.calls.append(package)
        return shutil.copy(self.debs[package], workdir), "1.0-1"


@pytest.fixture(scope="session")
def tiny_corpus() -> str:
    """The 20-clip development corpus (built once from Debian packages); skips where it cannot be built."""
    from data_prep import dev_corpus

    try:
        return dev_corpus.tiny_dev_corpus()
    except dev_corpus.DevCorpusUnavailable as err:
        pytest.skip(str(err))


class ServerThread:
    """uvicorn serving ``app`` on a free 127.0.0.1 port in a thread (bounded start and stop): ``base`` is its
    address, ``url`` its root page; ``stop`` shuts it down."""

    def __init__(self, app):
        import uvicorn

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            if time.time() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start within 30 s")
            time.sleep(0.05)
        self.base = f"http://127.0.0.1:{self.port}"
        self.url = self.base + "/"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=20)
