"""Seconds per clip of the librosa feature vector: one librosa call per feature vs shared transforms.

    python benchmarks/librosa_features.py [--manifest CSV] [--tracks 10] [--seconds 30]

Takes ``--tracks`` files spread over the manifest (a CSV with a ``path`` column, relative to the
CSV's folder; /tmp/devcorpus/manifest.csv by default), decodes their centred ``--seconds``
excerpts at 22050 Hz (not timed), then times `reference_librosa_features` and `librosa_features`
on every clip, checks they agree, and prints seconds per clip and the speed-up.
"""
from __future__ import annotations

import argparse
import csv
import os
import sys
import time
import warnings

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from musicsim import features as F  # noqa: E402

DEFAULT_MANIFEST = "/tmp/devcorpus/manifest.csv"


def manifest_paths(*, manifest: str, tracks: int) -> list[str]:
    """``tracks`` paths spread evenly over the manifest's rows (so over its albums)."""
    with open(manifest, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or "path" not in rows[0]:
        raise SystemExit(f"{manifest}: no rows with a 'path' column")
    root = os.path.dirname(os.path.abspath(manifest))
    picks = np.unique(np.linspace(0, len(rows) - 1, num=min(tracks, len(rows))).round().astype(int))
    return [os.path.join(root, rows[i]["path"]) for i in picks]


def time_both(*, clips: list[np.ndarray], sample_rate: int) -> dict[str, tuple[float, list[np.ndarray]]]:
    """{path name: (mean seconds per clip, feature vectors)} for the reference and shared paths.

    The two run alternately clip by clip, so a change in machine load hits both alike.
    """
    functions = {"reference": F.reference_librosa_features, "shared": F.librosa_features}
    seconds = {name: 0.0 for name in functions}
    vectors: dict[str, list[np.ndarray]] = {name: [] for name in functions}
    for clip in clips:
        for name, fn in functions.items():
            start = time.perf_counter()
            vectors[name].append(fn(audio=clip, sample_rate=sample_rate))
            seconds[name] += time.perf_counter() - start
    return {name: (seconds[name] / len(clips), vectors[name]) for name in functions}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--manifest", default=DEFAULT_MANIFEST if os.path.exists(DEFAULT_MANIFEST) else None,
                        help=f"CSV with a 'path' column (default {DEFAULT_MANIFEST} if present)")
    parser.add_argument("--tracks", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=30.0, help="centred excerpt per track")
    parser.add_argument("--sample-rate", type=int, default=F.DEFAULT_SAMPLE_RATE)
    args = parser.parse_args(argv)
    if args.manifest is None:
        parser.error(f"{DEFAULT_MANIFEST} does not exist: pass --manifest")

    clips = []
    for path in manifest_paths(manifest=args.manifest, tracks=args.tracks):
        try:
            clips.append(F.load_excerpt(path=path, sample_rate=args.sample_rate, max_seconds=args.seconds))
        except F.AudioDecodeError as err:
            print(f"skipped {err}")
    if not clips:
        raise SystemExit("no usable tracks")
    warnings.simplefilter("ignore", UserWarning)  # librosa's tuning warning on silent passages
    # Warm-up: librosa's numba kernels and filter caches, so neither path pays them in the timing.
    F.librosa_features(audio=clips[0][: args.sample_rate * 2], sample_rate=args.sample_rate)
    F.reference_librosa_features(audio=clips[0][: args.sample_rate * 2], sample_rate=args.sample_rate)

    timings = time_both(clips=clips, sample_rate=args.sample_rate)
    (reference_s, reference), (shared_s, shared) = timings["reference"], timings["shared"]
    largest_gap = max(float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-12))) for a, b in zip(shared, reference))
    seconds = np.mean([clip.size / args.sample_rate for clip in clips])
    print(f"{len(clips)} clips of {seconds:.1f} s at {args.sample_rate} Hz, {len(shared[0])} features")
    print(f"reference (one call per feature): {reference_s:.3f} s/clip")
    print(f"shared STFT + CQT:                {shared_s:.3f} s/clip")
    print(f"speed-up: {reference_s / shared_s:.2f}x; largest relative difference {largest_gap:.1e}")


if __name__ == "__main__":
    main()
