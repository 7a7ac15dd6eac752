"""Benchmark of ``musicsim.index.FaissIndex``: build time, queries per second and recall@10.

For each catalogue size N it builds, on N random unit vectors of dimension d:

* ``faiss-flat``: a raw ``faiss.IndexFlatIP`` (the reference for exact speed);
* ``exact``: ``FaissIndex`` in its default exact mode (the ground truth for recall);
* ``ivf``: ``FaissIndex(approximate='ivf')`` at several ``nprobe``;
* ``hnsw``: ``FaissIndex(approximate='hnsw')`` at several ``efSearch``;

and, with ``--backend=faiss,milvus``, the same searches on ``MilvusIndex`` (a Milvus Lite file in a
temporary folder, or ``--milvus_uri``): ``milvus`` exact (FLAT), and ``milvus-ivf`` / ``milvus-hnsw``
when ``ivf`` / ``hnsw`` are among the methods (build_s: build and save; each is then opened again and
searched, as ``index build`` then ``search`` would); recall is always against exact faiss;

and prints one table row per (method, setting): build seconds, queries/s one query at a time
(median over queries of the best of ``--repeats``), queries/s in one batch (best of
``--repeats``), recall@10 against exact, and batched speed-up over exact. The machine may be
shared: best-of timings are the ones least slowed down by other processes.

``--data=uniform`` (random directions, the hard case for approximate search: every point is
nearly equidistant from every other) or ``clustered`` (points and queries drawn around 1000
random centres, closer to real embeddings, where neighbours are well separated).

The last column is the resident memory of the process after that method's build (MB), and the
peak so far; Milvus Lite runs inside the process, so its memory is counted there too.

Usage::

    python benchmarks/search.py --sizes=10000,100000,1000000 --dim=128 --data=uniform
    python benchmarks/search.py --backend=faiss,milvus --sizes=10000,100000 --dim=64 --methods=exact
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import time

import faiss
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import musicsim.index  # noqa: E402
from musicsim.index import FaissIndex, MilvusIndex  # noqa: E402


def unit_rows(matrix: np.ndarray) -> np.ndarray:
    return (matrix / np.linalg.norm(matrix, axis=1, keepdims=True)).astype(np.float32)


def make_data(*, kind: str, count: int, query_count: int, dim: int, seed: int,
              cluster_noise: float = 0.6) -> tuple[np.ndarray, np.ndarray]:
    """Catalogue [count, dim] and queries [query_count, dim], unit float32 rows."""
    rng = np.random.default_rng(seed)
    if kind == "uniform":
        return (unit_rows(rng.standard_normal((count, dim), dtype=np.float32)),
                unit_rows(rng.standard_normal((query_count, dim), dtype=np.float32)))
    centres = unit_rows(rng.standard_normal((1000, dim), dtype=np.float32))

    def around(n: int) -> np.ndarray:
        # noise of norm ~cluster_noise around a unit centre: at 0.6 clusters barely overlap, at 1.0
        # a point's neighbours are spread over several clusters
        noise = rng.standard_normal((n, dim), dtype=np.float32) * (cluster_noise / np.sqrt(dim))
        return unit_rows(centres[rng.integers(0, len(centres), size=n)] + noise)

    return around(count), around(query_count)


def timed(function, *, repeats: int = 1) -> tuple[float, object]:
    """(best wall seconds over ``repeats`` runs, value of the last run). The best run is the one
    least slowed down by other processes on a shared machine."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        value = function()
        best = min(best, time.perf_counter() - start)
    return best, value


def memory_mb() -> tuple[float, float]:
    """(resident, peak resident) memory of this process in MB."""
    with open("/proc/self/status") as f:
        resident_kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    return resident_kb / 1024.0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def recall_at(found: list[list[str]], truth: list[list[str]], *, k: int) -> float:
    return float(np.mean([len(set(f[:k]) & set(t[:k])) / k for f, t in zip(found, truth)]))


def single_query_seconds(search_one, count: int, *, repeats: int) -> float:
    """Median over ``count`` queries of the best of ``repeats`` timings of each."""
    times = []
    for i in range(count):
        times.append(timed(lambda: search_one(i), repeats=repeats)[0])
    return float(np.median(times))


def interleaved_qps(searches: dict, queries: np.ndarray, *, single_count: int,
                    repeats: int) -> dict[str, tuple[float, float]]:
    """{name: (single-query qps, batched qps)} for ``searches`` {name: search(queries [Q, D])},
    timed in turn (A B A B ...) so that a change in the machine's load hits all of them alike."""
    best_batch = {name: float("inf") for name in searches}
    single_times = {name: [] for name in searches}
    for search in searches.values():
        search(queries[:8])  # warm-up
    for _ in range(repeats):
        for name, search in searches.items():
            best_batch[name] = min(best_batch[name], timed(lambda: search(queries))[0])
    for i in range(single_count):
        for name, search in searches.items():
            single_times[name].append(timed(lambda: search(queries[i:i + 1]), repeats=repeats)[0])
    return {name: (1.0 / float(np.median(single_times[name])), len(queries) / best_batch[name])
            for name in searches}


def index_qps(index, queries: np.ndarray, *, single_count: int, k: int, repeats: int,
              **search_args) -> tuple[float, float, list[list[str]]]:
    """(single-query qps, batched qps, result ids of the batch)."""
    index.search(queries=queries[:8], k=k, **search_args)  # warm-up
    single_s = single_query_seconds(lambda i: index.search(queries=queries[i:i + 1], k=k, **search_args),
                                    single_count, repeats=repeats)
    batch_s, results = timed(lambda: index.search(queries=queries, k=k, **search_args), repeats=repeats)
    ids = [[track_id for track_id, _ in row] for row in results]
    return 1.0 / single_s, len(queries) / batch_s, ids


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,100000,1000000", help="comma-separated catalogue sizes")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--queries", type=int, default=1000, help="batch size for the batched figures")
    parser.add_argument("--single_queries", type=int, default=100, help="queries timed one at a time")
    parser.add_argument("--repeats", type=int, default=3, help="timings repeated, best kept")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--data", choices=("uniform", "clustered"), default="uniform")
    parser.add_argument("--cluster_noise", type=float, default=0.6,
                        help="clustered data: norm of the noise around each unit centre")
    parser.add_argument("--methods", default="faiss-flat,exact,ivf,hnsw")
    parser.add_argument("--nprobe", default="16,64,256", help="IVF nprobe values to sweep")
    parser.add_argument("--ef_search", default="64,128,256", help="HNSW efSearch values to sweep")
    parser.add_argument("--hnsw_m", type=int, default=32)
    parser.add_argument("--ef_construction", type=int, default=80)
    parser.add_argument("--hnsw_max_size", type=int, default=10**7,
                        help="skip HNSW above this size (its build is the slow part)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--backend", default="faiss", help="comma-separated: faiss, milvus")
    parser.add_argument("--milvus_uri", default=None,
                        help="a Milvus server (http://host:19530); default: a Milvus Lite file in a temp folder")
    parser.add_argument("--milvus_max_size", type=int, default=10**6,
                        help="skip Milvus above this size")
    args = parser.parse_args()
    unknown = sorted(set(args.backend.split(",")) - {"faiss", "milvus"})
    if unknown:
        parser.error(f"unknown backends {unknown}")
    return args


def row(count, method, setting, build_s, single, batch, recall, exact_batch, memory=None) -> None:
    """One printed line of the table (memory: (resident, peak) MB, measured now when not given)."""
    speedup = f"{batch / exact_batch:8.1f}" if exact_batch else f"{'':>8}"
    recall_text = f"{recall:9.3f}" if recall is not None else f"{'':>9}"
    resident, peak = memory or memory_mb()
    print(f"{count:>8} {method:<11} {setting:<14} {build_s:8.2f} {single:11.{0 if single >= 10 else 2}f} "
          f"{batch:10.{0 if batch >= 10 else 2}f} "
          f"{recall_text} {speedup} {resident:6.0f}/{peak:<6.0f}", flush=True)


def approximate_rows(*, count: int, vectors: np.ndarray, queries: np.ndarray, track_ids: list[str],
                     truth: list[list[str]], exact_batch: float, methods: list[str], args: argparse.Namespace) -> None:
    """The faiss IVF and HNSW rows of one catalogue size (each setting of the sweeps)."""
    k = args.k
    if "ivf" in methods:
        build_s, ivf = timed(lambda: FaissIndex(track_ids=track_ids, vectors=vectors, approximate="ivf"))
        for nprobe in [int(v) for v in args.nprobe.split(",")]:
            if nprobe > ivf.nlist:
                continue
            single, batch, found = index_qps(ivf, queries, single_count=args.single_queries, k=k,
                                             repeats=args.repeats, nprobe=nprobe)
            row(count, "ivf", f"nl={ivf.nlist},np={nprobe}", build_s, single, batch,
                recall_at(found, truth, k=k), exact_batch)
        del ivf
    if "hnsw" in methods and count <= args.hnsw_max_size:
        build_s, hnsw = timed(lambda: FaissIndex(track_ids=track_ids, vectors=vectors, approximate="hnsw",
                                                 hnsw_m=args.hnsw_m, ef_construction=args.ef_construction))
        for ef in [int(v) for v in args.ef_search.split(",")]:
            single, batch, found = index_qps(hnsw, queries, single_count=args.single_queries, k=k,
                                             repeats=args.repeats, ef_search=ef)
            row(count, "hnsw", f"M={args.hnsw_m},ef={ef}", build_s, single, batch,
                recall_at(found, truth, k=k), exact_batch)
        del hnsw


def main() -> None:
    args = parse_args()
    methods = args.methods.split(",")
    backends = args.backend.split(",")
    k = args.k
    data = args.data + (f" (noise {args.cluster_noise})" if args.data == "clustered" else "")
    print(f"# {data} unit vectors, d={args.dim}, k={k}, {args.queries} batched / {args.single_queries} "
          f"single queries, faiss {faiss.__version__}, {faiss.omp_get_max_threads()} threads, "
          f"{os.cpu_count()} cpus")
    header = f"{'N':>8} {'method':<11} {'setting':<14} {'build_s':>8} {'qps_single':>11} {'qps_batch':>10} " \
             f"{'recall@10':>9} {'x_exact':>8} {'rss/peak_MB':>13}"
    print(header)
    print("-" * len(header))

    for count in [int(s) for s in args.sizes.split(",")]:
        vectors, queries = make_data(kind=args.data, count=count, query_count=args.queries, dim=args.dim,
                                     seed=args.seed, cluster_noise=args.cluster_noise)
        track_ids = [f"t{i:07d}" for i in range(count)]
        # exact is always built: it is the ground truth for recall and the speed reference
        exact_build_s, exact = timed(lambda: FaissIndex(track_ids=track_ids, vectors=vectors))
        exact_memory = memory_mb()
        truth = [[t for t, _ in r] for r in exact.search(queries=queries, k=k)]
        searches = {"exact": lambda q: exact.search(queries=q, k=k)}
        if "faiss-flat" in methods:
            flat_build_s, flat = timed(lambda: (lambda ix: (ix.add(vectors), ix)[1])(faiss.IndexFlatIP(args.dim)))
            flat_ids = [[track_ids[i] for i in r] for r in flat.search(queries, k)[1].tolist()]
            searches["faiss-flat"] = lambda q: flat.search(q, k)
        speeds = interleaved_qps(searches, queries, single_count=args.single_queries, repeats=args.repeats)
        exact_batch = speeds["exact"][1]
        if "faiss-flat" in methods:
            row(count, "faiss-flat", "IndexFlatIP", flat_build_s, *speeds["faiss-flat"], None, None)
            del flat, searches["faiss-flat"]
        if "exact" in methods and "faiss" in backends:
            agree = recall_at(flat_ids, truth, k=k) if "faiss-flat" in methods else None
            row(count, "exact", "default", exact_build_s, *speeds["exact"], agree, exact_batch, exact_memory)
        del exact, searches
        if "milvus" in backends and count <= args.milvus_max_size:
            milvus_rows(count=count, vectors=vectors, queries=queries, track_ids=track_ids, truth=truth,
                        exact_batch=exact_batch, methods=methods, args=args, row=row)
        if "faiss" not in backends:
            continue
        approximate_rows(count=count, vectors=vectors, queries=queries, track_ids=track_ids, truth=truth,
                         exact_batch=exact_batch, methods=methods, args=args)


def milvus_rows(*, count: int, vectors: np.ndarray, queries: np.ndarray, track_ids: list[str],
                truth: list[list[str]], exact_batch: float, methods: list[str], args: argparse.Namespace,
                row) -> None:
    """Build ``MilvusIndex`` (exact, and IVF / HNSW when asked) over the catalogue and print its rows."""
    folder = tempfile.mkdtemp(prefix="milvus-bench-")
    uri = args.milvus_uri or os.path.join(folder, "bench.db")
    kinds = [("milvus", None, [None])]
    if "ivf" in methods:
        kinds.append(("milvus-ivf", "ivf", [int(v) for v in args.nprobe.split(",")]))
    if "hnsw" in methods:
        kinds.append(("milvus-hnsw", "hnsw", [int(v) for v in args.ef_search.split(",")]))
    try:
        for method, approximate, sweep in kinds:
            directory = os.path.join(folder, f"index-{method}")

            def build() -> None:
                built = MilvusIndex(uri=uri, collection="bench", track_ids=track_ids, vectors=vectors,
                                    approximate=approximate, hnsw_m=args.hnsw_m,
                                    ef_construction=args.ef_construction, overwrite=True)
                built.save(directory)
                built.close()

            # Built, saved and opened again, as `index build` then `search` do: Milvus Lite searches
            # only the rows it loaded from disk through the collection's index.
            build_s, _ = timed(build)
            open_s, index = timed(lambda: musicsim.index.open(directory))
            print(f"# {method} at N={count}: opened again in {open_s:.1f}s", flush=True)
            memory = memory_mb()
            try:
                for value in sweep:
                    if approximate == "ivf" and value > index.nlist:
                        continue
                    search_args = {"nprobe": value} if approximate == "ivf" else (
                        {"ef_search": value} if approximate == "hnsw" else {})
                    single, batch, found = index_qps(index, queries, single_count=args.single_queries, k=args.k,
                                                     repeats=args.repeats, **search_args)
                    setting = {"ivf": f"nl={index.nlist},np={value}", "hnsw": f"M={args.hnsw_m},ef={value}"}.get(
                        approximate, "FLAT")
                    row(count, method, setting, build_s, single, batch, recall_at(found, truth, k=args.k),
                        exact_batch, memory)
            finally:
                index.close()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
