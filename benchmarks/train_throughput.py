"""Training throughput of the default WaveNet: examples (lists) per second and peak memory.

Each configuration runs in its own process so its peak RSS is its own. Audio is synthetic noise at
16 kHz decode rate, mean-pooled by --pool_sizes; a training example is one list (query + 6 candidates).

    python benchmarks/train_throughput.py [--pool_sizes=5,1] [--steps=10] [--batch_size=4] [--crop_seconds=4]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np
import tensorflow as tf

from musicsim.inputs import TrackSet, make_list_input_fn
from musicsim.relevance import make_relevance
from musicsim.train import estimator as training

DECODE_RATE = 16000


def measure(pool_size: int, steps: int, batch_size: int, crop_seconds: float) -> dict:
    rng = np.random.default_rng(0)
    rate = DECODE_RATE / pool_size
    tracks = TrackSet(track_ids=[f"t{i}" for i in range(24)], labels=[(f"a{i % 4}",) for i in range(24)],
                      sequences=[rng.standard_normal(int(rate * 2 * crop_seconds)).astype(np.float32) * 0.1
                                 for _ in range(24)], frame_rate=rate)
    input_fn = make_list_input_fn(tracks=tracks, relevance_def=make_relevance("album"), mode="train",
                                  batch_size=batch_size, crop_seconds=crop_seconds)
    with tempfile.TemporaryDirectory() as model_dir:
        estimator = training.make_estimator(model="wavenet", model_dir=model_dir, params={},
                                            save_checkpoints_steps=10_000)
        estimator.train(input_fn, steps=2)  # graph building and first-step costs
        started = time.perf_counter()
        estimator.train(input_fn, steps=steps)
        seconds = time.perf_counter() - started
    gpu = tf.config.list_physical_devices("GPU")
    peak_gpu = None
    if gpu:
        peak_gpu = tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2**30
    return {"pool_size": pool_size, "frame_rate": rate, "device": "GPU" if gpu else "CPU", "steps": steps,
            "batch_lists": batch_size, "clips_per_step": batch_size * 7, "crop_seconds": crop_seconds,
            "seconds_per_step": seconds / steps, "lists_per_second": steps * batch_size / seconds,
            "clips_per_second": steps * batch_size * 7 / seconds,
            "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "peak_gpu_gib": peak_gpu}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pool_sizes", default="5,1")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--crop_seconds", type=float, default=4.0)
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(measure(args.child, args.steps, args.batch_size, args.crop_seconds)))
        return
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    print(f"{'pool':>4} {'device':>6} {'Hz':>6} {'clips/step':>10} {'s/step':>8} {'lists/s':>8} {'clips/s':>8} "
          f"{'peak RSS GiB':>12} {'peak GPU GiB':>12}")
    for pool in (int(p) for p in args.pool_sizes.split(",")):
        out = subprocess.run([sys.executable, __file__, f"--child={pool}", f"--steps={args.steps}",
                              f"--batch_size={args.batch_size}", f"--crop_seconds={args.crop_seconds}"],
                             capture_output=True, text=True, env=env)
        if out.returncode != 0:
            print(f"pool {pool}: failed\n{out.stderr[-2000:]}")
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        gpu = f"{r['peak_gpu_gib']:.2f}" if r["peak_gpu_gib"] is not None else "-"
        print(f"{r['pool_size']:>4} {r['device']:>6} {r['frame_rate']:>6.0f} {r['clips_per_step']:>10} "
              f"{r['seconds_per_step']:>8.2f} {r['lists_per_second']:>8.2f} {r['clips_per_second']:>8.2f} "
              f"{r['peak_rss_gib']:>12.2f} {gpu:>12}")


if __name__ == "__main__":
    main()
