"""TensorBoard on a finished run, as the README and the end of every run tell the user: the real
``tensorboard`` command of the venv serves the training loss, the eval PC / NDCG / MAP scalars and the
projector's embeddings through its HTTP API."""
from __future__ import annotations

import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

import numpy as np
import pytest

from test_export import train_tiny_run

TENSORBOARD = os.path.join(os.path.dirname(sys.executable), "tensorboard")
START_TIMEOUT_S = 120
RUN = "wavenet-tiny"
EVAL_RUN = f"{RUN}/eval"
EVAL_METRICS = ("PC", "NDCG@1", "NDCG@6", "MAP")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def get(base: str, path: str, **query) -> bytes:
    url = f"{base}{path}" + (f"?{urllib.parse.urlencode(query)}" if query else "")
    with urllib.request.urlopen(url, timeout=30) as response:
        assert response.status == 200, url
        return response.read()


@pytest.fixture(scope="module")
def log_dir(synthetic_dataset, tmp_path_factory) -> str:
    """A log folder holding one finished tiny WaveNet run (the suite's shared one, copied)."""
    run = train_tiny_run(dataset_dir=synthetic_dataset,
                         model_dir=str(tmp_path_factory.getbasetemp() / "tiny_wavenet_run"))
    logs = tmp_path_factory.mktemp("tensorboard_logs")
    shutil.copytree(run, logs / RUN)
    return str(logs)


@pytest.fixture(scope="module")
def tensorboard(log_dir):
    """``tensorboard --logdir LOGS --port FREE --host 127.0.0.1``, up once its scalars list the run's tags;
    its base URL. Stopped (its own process group) at the end."""
    if not os.path.exists(TENSORBOARD):
        pytest.fail(f"{TENSORBOARD} is not installed: the lock installs tensorboard with the stack")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([TENSORBOARD, "--logdir", log_dir, "--port", str(port), "--host", "127.0.0.1"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                              env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if server.poll() is not None:  # e.g. No module named 'pkg_resources' (setuptools >= 82)
                pytest.fail(f"tensorboard exited with {server.returncode}:\n{server.stdout.read()[-3000:]}")
            try:
                tags = json.loads(get(base, "/data/plugin/scalars/tags"))
                if "loss" in tags.get(RUN, {}) and "NDCG@6" in tags.get(EVAL_RUN, {}):
                    break
            except (urllib.error.URLError, ConnectionError, json.JSONDecodeError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"tensorboard did not list the run's scalars within {START_TIMEOUT_S} s")
            time.sleep(0.5)
        yield base
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=20)
        server.stdout.close()


def scalars(base: str, *, run: str, tag: str) -> np.ndarray:
    """``[[wall_time, step, value], ...]`` of one scalar series, as the Scalars tab reads it."""
    return np.asarray(json.loads(get(base, "/data/plugin/scalars/scalars", run=run, tag=tag)), dtype=np.float64)


def test_training_loss_is_served_step_by_step(tensorboard, log_dir):
    loss = scalars(tensorboard, run=RUN, tag="loss")
    steps = loss[:, 1]
    assert len(loss) >= 2 and np.all(np.diff(steps) > 0) and steps[-1] <= 20
    assert np.all(np.isfinite(loss[:, 2])) and np.all(loss[:, 2] >= 0)


@pytest.mark.parametrize("metric", [*EVAL_METRICS, "loss"])
def test_eval_metrics_are_served_as_the_run_reported_them(tensorboard, log_dir, metric):
    series = scalars(tensorboard, run=EVAL_RUN, tag=metric)
    assert len(series) >= 1 and np.all(np.isfinite(series[:, 2]))
    if metric in EVAL_METRICS:
        assert np.all((series[:, 2] >= 0) & (series[:, 2] <= 1))
    with open(os.path.join(log_dir, RUN, "results.json")) as f:
        last_eval = json.load(f)["eval_metrics"]  # the run's last evaluation, as it printed it
    step, value = series[-1, 1], series[-1, 2]
    assert step == last_eval["global_step"] and math.isclose(value, last_eval[metric], rel_tol=1e-6, abs_tol=1e-6)


def test_projector_serves_the_runs_embeddings_with_tracks_and_albums(tensorboard, log_dir):
    assert RUN in json.loads(get(tensorboard, "/data/plugin/projector/runs"))
    config = json.loads(get(tensorboard, "/data/plugin/projector/info", run=RUN))
    (embedding,) = config["embeddings"]
    with np.load(os.path.join(log_dir, RUN, "embeddings.npz")) as npz:
        vectors, track_ids = npz["embeddings"], npz["track_ids"].tolist()
    assert embedding["tensorShape"] == list(vectors.shape)
    served = np.frombuffer(get(tensorboard, "/data/plugin/projector/tensor", run=RUN,
                               name=embedding["tensorName"]), dtype=np.float32).reshape(vectors.shape)
    np.testing.assert_allclose(served, vectors, rtol=1e-5, atol=1e-6)
    metadata = get(tensorboard, "/data/plugin/projector/metadata", run=RUN,
                   name=embedding["tensorName"]).decode().strip().split("\n")
    assert metadata[0] == "track\tgroup"
    rows = [line.split("\t") for line in metadata[1:]]
    assert [track for track, _ in rows] == track_ids
    assert all(group == track.split("__")[0] for track, group in rows)  # synthetic ids: <album>__t<k>
