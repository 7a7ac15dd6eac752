"""Data-prep throughput: seconds of audio prepared per wall-clock second on the tiny dev corpus.

Decode + resample to 16 kHz mono + mean-pool (size 5) + TFRecord write, with ``data_prep.build``'s
defaults (whole tracks, every core), into a fresh folder so nothing is reused. TensorFlow's import is
done before the clock starts: it is a one-off cost, not throughput. Target: >= 100x real time on 2 cores.

    python benchmarks/prep_throughput.py [--repeats=N]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from data_prep.build import _available_cores, prepare  # noqa: E402
from data_prep.dev_corpus import DevCorpusUnavailable, tiny_dev_corpus  # noqa: E402
from musicsim.data.tfrecords import _tf  # noqa: E402

TARGET_REAL_TIME = 100.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1, help="runs to time; the best is reported")
    args = parser.parse_args()
    try:
        corpus = tiny_dev_corpus()
    except DevCorpusUnavailable as err:
        print(f"prep_throughput: skipped ({err})")
        return 0
    _tf()
    cores = _available_cores()
    best = None
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory(prefix="prep_bench_") as output:
            started = time.perf_counter()
            report = prepare(dataset="manifest", input_path=corpus, output=os.path.join(output, "tiny"),
                             progress=False, verbose=False)
            wall = time.perf_counter() - started
        if best is None or wall < best[0]:
            best = (wall, report)
    wall, report = best
    speed = report["seconds"] / wall
    print(f"prep_throughput: {report['seconds']:.0f} s of audio ({report['tracks']} tracks, "
          f"{report['seconds'] / 60:.1f} min) prepared in {wall:.1f} s on {cores} cores: "
          f"{speed:.0f}x real time ({speed / cores:.0f}x per core; target >= {TARGET_REAL_TIME:.0f}x on 2 cores)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
