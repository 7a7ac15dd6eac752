"""Prepare a dataset for training and evaluation (paper 4.3 pre-processing, 5.1.1 datasets).

    python -m data_prep.build --dataset=KIND --input=PATH --output=DIR [--max_seconds=S] [--split_seed=0]
        [--sample_rate=16000] [--pool_size=5] [--workers=N] [--label_column=genre] [--min_shared_tags=2]
        [--split_by=track|label] [--shard_size=32] [--features=librosa|mfcc]
        [--runner=local|DirectRunner|FlinkRunner|SparkRunner|DataflowRunner [beam pipeline options]]

KIND is ``magnatagatune``, ``album_folders``, ``labelled_csv``, ``manifest`` (see ``data_prep.sources``)
or ``demo`` (builds the demo corpus first, see ``data_prep.demo``; ``--input`` is then its cache folder).

Each track is decoded to mono at ``sample_rate`` (resampled whatever its format, channels or rate),
cut to its centred ``max_seconds`` (only that excerpt is read) and mean-pooled by ``pool_size``
(the paper's size-5 pooling). Tracks are split 50/25/25 (``data_prep.splits``) and written as
TFRecord shards ``DIR/{train,eval,test}/shard-NNNNN.tfrecord`` of ``shard_size`` tracks (sorted by
track id), each with a ``.json`` sidecar naming its tracks and the settings they were made with. A
rerun keeps every shard whose sidecar matches, so an interrupted build resumes where it stopped and
a finished one costs only the listing. ``dataset.json`` is written last: it marks a finished build.

A file that cannot be used (missing, empty, not audio, truncated, too short, silent, a decoder
error, a duplicate id or content) or a folder that cannot be read is skipped and listed with its
reason in ``DIR/report.json``; it never stops the run. Decoding streams (``musicsim.data.audio.iter_audio_blocks``),
so memory is bounded by the pooled excerpt, not by the source file's length.

One build at a time writes into a folder (``data_prep.lock``: ``DIR/.build.lock`` names its pid and
host; a dead owner's lock is taken over); a second one refuses. A non-empty folder that is not a
dataset folder of this project is refused before anything is written to it. Decoding workers end
when the build does, even when it is killed.

``--runner`` other than ``local`` runs the per-file work (decode, resample, pool, serialize) as an
Apache Beam pipeline (``data_prep.beam_pipeline``) that writes ``DIR/{split}/part-SSSSS-of-NNNNN.tfrecord``
with the same records; listing, splits, ``tracks.csv`` and ``report.json`` stay here, in the driver.
Flags this module does not define are handed to Beam's ``PipelineOptions`` (an unknown one is an
error). A Beam build does not resume: it rewrites every shard (runners retry failed work themselves).

``--features=librosa|mfcc`` also computes the fitted model's per-track feature vectors (both
runners) into ``DIR/feature_cache``, the cache ``experiments.run`` reads, so fitting the
``librosa``/``mfcc`` model then decodes nothing.
"""
from __future__ import annotations

import glob
import json
import logging
import os
import sys
import time
from dataclasses import asdict, dataclass
from typing import Iterator, Sequence

from absl import app, flags
from tqdm import tqdm

from data_prep.demo import DemoBuildError, build_demo_corpus, default_cache_dir
from data_prep.lock import OutputLock, OutputLockedError, check_output_folder, claim_output_folder
from data_prep.shards import (BEAM_RUNNERS, BEAM_SHARD_PREFIX, LOCAL_RUNNER, RUNNERS, BuiltShards, FeatureSpec,
                              ShardPlan, plan_shards, track_record)
from data_prep.sources import KINDS, SourceListing, list_manifest, list_source
from data_prep.splits import SPLIT_BY, SPLIT_FRACTIONS, assign_splits
from musicsim.data.audio import DEFAULT_POOL_SIZE, DEFAULT_SAMPLE_RATE, DecodeResult, DecodeSettings
from musicsim.atomic import write_json_atomic
from musicsim.cli import ANY_FINITE, AT_LEAST_ONE, NON_NEGATIVE, SEED, check_numeric_flags, global_flags_parser
from musicsim.data.dataset import DATASET_INFO_FILE, REPORT_FILE, CatalogEntry, DatasetInfo, write_catalog
from musicsim.evaluation import split_query_problem
from musicsim.relevance import make_relevance
from musicsim.data.tfrecords import SPLITS, write_records
from musicsim.workers import decode_in_order

DATASET_KINDS = KINDS + ("demo",)
DEFAULT_SHARD_SIZE = 32
DEFAULT_MIN_SECONDS = 1.0
DEMO_MAX_SECONDS = 60.0
_SHARD_GLOB = "shard-*"


def _read_sidecar(plan: ShardPlan, output: str) -> dict | None:
    """The shard's sidecar when it and its TFRecord file are there and it matches the plan."""
    if not os.path.isfile(plan.record_path(output)):
        return None
    try:
        with open(plan.sidecar_path(output)) as f:
            sidecar = json.load(f)
    except (OSError, ValueError):
        return None
    return sidecar if sidecar.get("key") == plan.key else None


def _remove_stale_files(output: str, plans: Sequence[ShardPlan]) -> None:
    """Delete shards the plan no longer has (fewer tracks, other settings, a Beam build's shards) and
    temp files of a crash."""
    expected = {p.record_path(output) for p in plans} | {p.sidecar_path(output) for p in plans}
    for split in SPLITS:
        for pattern in (_SHARD_GLOB, f"{BEAM_SHARD_PREFIX}-*.tfrecord"):
            for path in glob.glob(os.path.join(output, split, pattern)):
                if path not in expected:
                    os.remove(path)
    for path in glob.glob(os.path.join(output, "*.tmp-*")):
        os.remove(path)


def _write_shard(plan: ShardPlan, results: Iterator[DecodeResult], *, output: str,
                 settings: DecodeSettings) -> dict:
    """Write one shard's TFRecord file, then its sidecar (so a sidecar always means a whole shard).

    ``results`` is consumed one per track of the plan while the file is written, so only the track
    being serialized is held, not the whole shard.
    """
    kept, skipped = [], []

    def records() -> Iterator[bytes]:
        for track, result in zip(plan.tracks, results):  # tracks first: no result is taken past the shard
            if result.pooled is None:
                skipped.append({"path": track.path, "track_id": track.track_id, "reason": result.reason})
                continue
            yield track_record(track=track, pooled=result.pooled, settings=settings)
            kept.append({"track_id": track.track_id, "labels": list(track.labels), "path": track.path,
                         "duration_s": result.seconds})

    os.makedirs(os.path.join(output, plan.split), exist_ok=True)
    write_records(plan.record_path(output), records())
    if len(kept) + len(skipped) != len(plan.tracks):
        raise RuntimeError(f"{plan.record_path(output)}: the decoder gave {len(kept) + len(skipped)} results for "
                           f"{len(plan.tracks)} tracks")
    sidecar = {"key": plan.key, "split": plan.split, "tracks": kept, "skipped": skipped}
    write_json_atomic(plan.sidecar_path(output), sidecar)
    return sidecar


def _hours(seconds: float) -> str:
    return f"{seconds / 3600.0:.1f} h" if seconds >= 3600 else f"{seconds / 60.0:.1f} min"


def _report(*, listing: SourceListing, entries: Sequence[CatalogEntry], skipped: list[dict], name: str,
            dataset: str, output: str, written: int, reused: int, wall_seconds: float) -> dict:
    splits = {s: {"tracks": 0, "seconds": 0.0, "labels": {}} for s in SPLITS}
    labels: dict[str, dict[str, int]] = {}
    for entry in entries:
        split = splits[entry.split]
        split["tracks"] += 1
        split["seconds"] += entry.duration_s
        for label in entry.labels:
            split["labels"][label] = split["labels"].get(label, 0) + 1
            per_label = labels.setdefault(label, dict.fromkeys(SPLITS, 0))
            per_label[entry.split] += 1
    for split in splits.values():
        split["seconds"] = round(split["seconds"], 3)
        split["labels"] = dict(sorted(split["labels"].items()))
    seconds = sum(s["seconds"] for s in splits.values())
    summary = f"prepared {len(entries)} tracks ({_hours(seconds)} of audio) into {output}"
    summary += f"; skipped {len(skipped)} files: see report.json" if skipped else "; skipped none"
    return {"dataset": name, "kind": dataset, "output": output, "tracks": len(entries),
            "seconds": round(seconds, 3), "splits": splits,
            "labels": {label: dict(counts, total=sum(counts.values())) for label, counts in sorted(labels.items())},
            "skipped": sorted(skipped, key=lambda s: (s["path"], s["track_id"])),
            "ignored": listing.ignored, "shards": {"total": written + reused, "written": written, "reused": reused},
            "wall_seconds": round(wall_seconds, 2), "summary": summary}


def _available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _build_local(*, plans: Sequence[ShardPlan], settings: DecodeSettings, output: str, workers: int, name: str,
                 progress: bool) -> BuiltShards:
    """Write every shard whose sidecar does not match its plan, in this machine's process pool."""
    _remove_stale_files(output, plans)
    sidecars = {id(p): _read_sidecar(p, output) for p in plans}
    pending = [p for p in plans if sidecars[id(p)] is None]
    paths = [t.path for p in pending for t in p.tracks]
    with tqdm(total=len(paths), unit="track", desc=f"preparing {name}", disable=not progress or not paths,
              file=sys.stderr, dynamic_ncols=True) as bar:
        results = decode_in_order(paths, settings=settings, workers=workers)

        def counted() -> Iterator[DecodeResult]:
            for result in results:
                bar.update(1)
                yield result

        stream = counted()
        try:
            for plan in pending:
                sidecars[id(plan)] = _write_shard(plan, stream, output=output, settings=settings)
        finally:
            stream.close()
            results.close()

    entries, skipped = [], []
    for plan in plans:
        sidecar = sidecars[id(plan)]
        skipped += sidecar["skipped"]
        entries += [CatalogEntry(track_id=t["track_id"], split=plan.split, labels=tuple(t["labels"]),
                                 duration_s=float(t["duration_s"]), path=t["path"]) for t in sidecar["tracks"]]
    return BuiltShards(entries=entries, skipped=skipped, written=len(pending), reused=len(plans) - len(pending))


def _cache_features_local(*, entries: Sequence[CatalogEntry], spec: FeatureSpec, workers: int,
                          progress: bool) -> list[dict]:
    """Fill ``spec.cache_dir`` for every kept track; returns the failures ``[{"path", "reason"}]``."""
    from musicsim.features import extract_many  # why: librosa+scipy ~2 s in each spawned worker (re-imports us)

    _, _, failed = extract_many(paths=[e.path for e in entries], feature_fn=spec.name, sample_rate=spec.sample_rate,
                                max_seconds=spec.max_seconds, workers=workers, cache_dir=spec.cache_dir,
                                progress=progress)
    return [{"path": path, "reason": reason} for path, reason in failed]


@dataclass(frozen=True)
class PrepareOptions:
    """What :func:`prepare` builds and how: its keyword arguments, checked by :meth:`check`.

    Attributes
    ----------
    dataset : str
        One of ``DATASET_KINDS``.
    output : str
        The prepared dataset's folder; rerunning into it resumes (finished shards are kept).
    input_path : str or None
        The source (see ``data_prep.sources``); for ``demo`` the corpus cache folder (default
        ``data/demo_corpus`` in the repository).
    audio_root : str or None
        MagnaTagATune only: where the mp3s are, when not under ``input_path``.
    max_seconds : float or None
        Length of the centred excerpt kept per track. None: the kind's default (``demo``: 60 s,
        others: whole tracks); 0 or less: whole tracks.
    split_seed : int
        Seed of the 50/25/25 split.
    sample_rate : int > 0
        Decode rate in Hz, before pooling; a multiple of ``pool_size``.
    pool_size : int >= 1
        Mean-pooling window in samples (paper: 5).
    workers : int >= 1 or None
        Decoding processes; None: every available core.
    label_column : str
        ``labelled_csv`` only: the column holding each track's label.
    min_shared_tags : int >= 1
        Recorded in ``dataset.json`` for the tag similarity (``magnatagatune``).
    split_by : {"track", "label"}
        Stratified random tracks, or disjoint labels per split (see ``data_prep.splits``).
    shard_size : int >= 1
        Tracks per TFRecord shard.
    min_seconds : float >= 0
        Excerpts shorter than this are skipped as too short.
    name : str or None
        Dataset name in ``dataset.json``; default: the basename of ``output``.
    progress, verbose : bool
        Show a progress bar; print the summary line.
    runner : str
        ``"local"``: decode in this machine's process pool and resume from finished shards. One of
        ``BEAM_RUNNERS``: run the per-file work as a Beam pipeline (``data_prep.beam_pipeline``),
        no resume; ``output`` must be a local or mounted path the workers can write.
    beam_args : sequence of str
        Beam pipeline options (``["--direct_num_workers=4", ...]``); Beam runners only.
    features : {"librosa", "mfcc"} or None
        Also cache each kept track's feature vector of that fitted model in
        ``output/feature_cache`` (``musicsim.features.extract_many``'s layout; sample rate
        ``musicsim.features.DEFAULT_SAMPLE_RATE``, excerpt ``max_seconds``).
    extended : bool
        ``demo`` only: the extended demo corpus (the 8 demo packages and the 5 extra ones, see
        ``data_prep.demo``), cached by default in ``data/demo_extended_corpus``.
    """

    dataset: str
    output: str
    input_path: str | None = None
    audio_root: str | None = None
    max_seconds: float | None = None
    split_seed: int = 0
    sample_rate: int = DEFAULT_SAMPLE_RATE
    pool_size: int = DEFAULT_POOL_SIZE
    workers: int | None = None
    label_column: str = "genre"
    min_shared_tags: int = 2
    split_by: str = "track"
    shard_size: int = DEFAULT_SHARD_SIZE
    min_seconds: float = DEFAULT_MIN_SECONDS
    name: str | None = None
    progress: bool = True
    verbose: bool = True
    runner: str = LOCAL_RUNNER
    beam_args: Sequence[str] = ()
    features: str | None = None
    extended: bool = False

    def check(self) -> None:
        """Raise ValueError for arguments :func:`prepare` cannot use, before anything is read or written."""
        if self.dataset not in DATASET_KINDS:
            raise ValueError(f"dataset must be one of {DATASET_KINDS}, got {self.dataset!r}")
        if self.extended and self.dataset != "demo":
            raise ValueError("extended applies to the demo dataset only (--dataset=demo), got dataset "
                             f"{self.dataset!r}")
        if self.dataset != "demo" and not self.input_path:
            raise ValueError(f"dataset {self.dataset!r} needs an input path (--input)")
        if self.sample_rate <= 0:
            raise ValueError(f"sample_rate must be positive, got {self.sample_rate}")
        if self.pool_size < 1:
            raise ValueError(f"pool_size must be >= 1, got {self.pool_size}")
        if self.sample_rate % self.pool_size:
            raise ValueError(f"sample_rate ({self.sample_rate}) must be a multiple of pool_size ({self.pool_size}) "
                             "so the pooled rate is a whole number of Hz")
        if self.workers is not None and self.workers < 1:
            raise ValueError(f"workers must be >= 1 or None (all cores), got {self.workers}")
        if self.shard_size < 1:
            raise ValueError(f"shard_size must be >= 1, got {self.shard_size}")
        if self.min_seconds < 0:
            raise ValueError(f"min_seconds must be >= 0, got {self.min_seconds}")
        if self.min_shared_tags < 1:
            raise ValueError(f"min_shared_tags must be >= 1, got {self.min_shared_tags}")
        if self.split_by not in SPLIT_BY:
            raise ValueError(f"split_by must be one of {SPLIT_BY}, got {self.split_by!r}")
        if self.runner not in RUNNERS:
            raise ValueError(f"runner must be one of {RUNNERS}, got {self.runner!r}")
        if "://" in self.output:
            raise ValueError(f"output must be a local (or mounted) folder, got the URL {self.output!r}: the catalog "
                             "and report are written with local file calls")
        if self.beam_args and self.runner == LOCAL_RUNNER:
            raise ValueError(f"unknown arguments {list(self.beam_args)}: not flags of data_prep.build (only a Beam "
                             f"--runner, {', '.join(BEAM_RUNNERS)}, takes extra arguments, as pipeline options)")
        if self.features is not None:
            from musicsim.features import FEATURE_FUNCTIONS  # why: librosa+scipy ~2 s in each spawned worker

            if self.features not in FEATURE_FUNCTIONS:
                raise ValueError(f"features must be one of {sorted(FEATURE_FUNCTIONS)} or None, got {self.features!r}")
        self.excerpt_seconds()

    def excerpt_seconds(self) -> float | None:
        """The centred excerpt kept per track in seconds (the kind's default when not given); None: whole tracks."""
        if self.max_seconds is None:
            max_seconds = DEMO_MAX_SECONDS if self.dataset == "demo" else None
        elif self.max_seconds <= 0:
            max_seconds = None
        else:
            max_seconds = float(self.max_seconds)
        if max_seconds is not None and max_seconds < self.min_seconds:
            raise ValueError(f"max_seconds ({max_seconds}) is under min_seconds ({self.min_seconds}): every track "
                             "would be too short")
        return max_seconds


def prepare(*, dataset: str, output: str, input_path: str | None = None, audio_root: str | None = None,
            max_seconds: float | None = None, split_seed: int = 0, sample_rate: int = DEFAULT_SAMPLE_RATE,
            pool_size: int = DEFAULT_POOL_SIZE, workers: int | None = None, label_column: str = "genre",
            min_shared_tags: int = 2, split_by: str = "track", shard_size: int = DEFAULT_SHARD_SIZE,
            min_seconds: float = DEFAULT_MIN_SECONDS, name: str | None = None, progress: bool = True,
            verbose: bool = True, runner: str = LOCAL_RUNNER, beam_args: Sequence[str] = (),
            features: str | None = None, extended: bool = False) -> dict:
    """Prepare a dataset into ``output`` (TFRecord shards, tracks.csv, dataset.json, report.json).

    The keyword arguments are the attributes of :class:`PrepareOptions` (same names, types and
    defaults), which documents each.

    Returns
    -------
    dict
        The content of ``report.json``.

    Raises
    ------
    ValueError
        For invalid arguments, an unusable index file or a source listing no track.
    FileNotFoundError
        When the input does not exist.
    data_prep.lock.OutputLockedError
        When another build is writing into ``output``.
    musicsim.owned.NotOurFolderError
        When ``output`` holds files that are not a dataset of this project (nothing is written).
    """
    started = time.time()
    options = PrepareOptions(dataset=dataset, output=output, input_path=input_path, audio_root=audio_root,
                             max_seconds=max_seconds, split_seed=split_seed, sample_rate=sample_rate,
                             pool_size=pool_size, workers=workers, label_column=label_column,
                             min_shared_tags=min_shared_tags, split_by=split_by, shard_size=shard_size,
                             min_seconds=min_seconds, name=name, progress=progress, verbose=verbose, runner=runner,
                             beam_args=beam_args, features=features, extended=extended)
    options.check()
    output = os.path.abspath(output)
    check_output_folder(output)  # before any work: a folder of someone else's files is never touched
    listing = _list_tracks(options)
    settings, plans = _plan(options, listing=listing)
    # One build per folder at a time; the lock is held until dataset.json marks the build finished.
    lock = OutputLock(output).acquire()
    try:
        report = _build(options, listing=listing, settings=settings, plans=plans, output=output, started=started)
    finally:
        lock.release()
    if verbose:
        print(report["summary"], flush=True)
    for warning in report["warnings"]:  # printed even when quiet: the dataset cannot be evaluated as it is
        print(f"data_prep.build: warning: {warning}", file=sys.stderr, flush=True)
    return report


def _list_tracks(options: PrepareOptions) -> SourceListing:
    """The source's tracks (the demo corpus built first); ValueError when it lists none."""
    if options.dataset == "demo":
        cache_dir = os.path.abspath(options.input_path or default_cache_dir(extended=options.extended))
        listing = list_manifest(manifest=build_demo_corpus(cache_dir=cache_dir, extended=options.extended,
                                                           verbose=options.verbose))
        listing.kind = "demo"
        listing.extra["demo_cache"] = cache_dir
    else:
        listing = list_source(options.dataset, input_path=options.input_path, audio_root=options.audio_root,
                              label_column=options.label_column)
    if not listing.tracks:
        detail = f"; {len(listing.skipped)} rows skipped, e.g. {listing.skipped[0]}" if listing.skipped else ""
        raise ValueError(f"{options.dataset} source {options.input_path} lists no usable track{detail}")
    return listing


def _plan(options: PrepareOptions, *, listing: SourceListing) -> tuple[DecodeSettings, list[ShardPlan]]:
    """How each track is decoded, and the shards of the 50/25/25 split."""
    split_of = assign_splits(tracks=listing.tracks, seed=options.split_seed, split_by=options.split_by,
                             multi_label=listing.multi_label)
    settings = DecodeSettings(sample_rate=options.sample_rate, pool_size=options.pool_size,
                              max_seconds=options.excerpt_seconds(), min_seconds=float(options.min_seconds))
    return settings, plan_shards(tracks=listing.tracks, split_of=split_of, settings=settings,
                                 shard_size=options.shard_size)


def _build(options: PrepareOptions, *, listing: SourceListing, settings: DecodeSettings, plans: Sequence[ShardPlan],
           output: str, started: float) -> dict:
    """Decode and write the planned shards into ``output`` (whose lock the caller holds); returns the report."""
    o, max_seconds = options, settings.max_seconds
    workers = o.workers or _available_cores()
    name = o.name or os.path.basename(output.rstrip(os.sep))
    claim_output_folder(output)
    info_path = os.path.join(output, DATASET_INFO_FILE)
    if os.path.exists(info_path):
        os.remove(info_path)  # written again last: until then the folder is a build in progress
    feature_spec = None if o.features is None else FeatureSpec.for_dataset(name=o.features, output=output,
                                                                            max_seconds=max_seconds)
    if o.runner == LOCAL_RUNNER:
        built = _build_local(plans=plans, settings=settings, output=output, workers=workers, name=name,
                             progress=o.progress)
        if feature_spec is not None:
            built.feature_failures = _cache_features_local(entries=built.entries, spec=feature_spec,
                                                           workers=workers, progress=o.progress)
    else:
        from data_prep.beam_pipeline import build_with_beam  # why: apache_beam is optional, only for Beam runners

        built = build_with_beam(plans=plans, settings=settings, output=output, runner=o.runner,
                                beam_args=o.beam_args, workers=workers, features=feature_spec)
    entries, skipped = built.entries, list(listing.skipped) + built.skipped
    write_catalog(output, entries)
    report = _report(listing=listing, entries=entries, skipped=skipped, name=name, dataset=o.dataset,
                     output=output, written=built.written, reused=built.reused, wall_seconds=time.time() - started)
    report["warnings"] = _query_warnings(entries=entries, relevance=listing.relevance,
                                         min_shared_tags=o.min_shared_tags)
    report["runner"] = o.runner
    if o.runner != LOCAL_RUNNER:
        report["beam_options"] = built.beam_options
    if feature_spec is not None:
        report["features"] = dict(asdict(feature_spec), tracks=len(entries) - len(built.feature_failures),
                                  failed=sorted(built.feature_failures, key=lambda f: f["path"]))
    write_json_atomic(os.path.join(output, REPORT_FILE), report)
    DatasetInfo(name=name, kind=o.dataset, sample_rate=o.sample_rate, pool_size=o.pool_size,
                max_seconds=max_seconds, relevance=listing.relevance, min_shared_tags=o.min_shared_tags,
                split_by=o.split_by, split_seed=o.split_seed,
                extra={"input": os.path.abspath(o.input_path) if o.input_path else listing.extra.get("demo_cache"),
                       "split_fractions": SPLIT_FRACTIONS, "shard_size": o.shard_size,
                       "min_seconds": o.min_seconds, "multi_label": listing.multi_label,
                       "stratified_on": "labels, rarest first (iterative stratification)"
                       if o.split_by == "track" else "whole labels per split",
                       "source": listing.extra}).save(output)
    return report


def _query_warnings(*, entries: Sequence[CatalogEntry], relevance: str, min_shared_tags: int) -> list[str]:
    """What the evaluation protocol will refuse: each split that cannot form a single query (a track with a
    similar and a non-similar track in its split), so ``experiments.run`` would stop before training."""
    relevance_def = make_relevance(relevance, min_shared_tags=min_shared_tags)
    problems = [split_query_problem(split=split, labels=[e.labels for e in entries if e.split == split],
                                    relevance=relevance_def) for split in SPLIT_FRACTIONS]
    return [problem for problem in problems if problem]


def main(argv: Sequence[str]) -> None:
    """Run :func:`prepare` from the flags; ``argv[1:]`` are the arguments no flag here took (Beam's)."""
    f = flags.FLAGS
    if f.runner != LOCAL_RUNNER:
        logging.getLogger("apache_beam").setLevel(logging.WARNING)  # absl shows INFO: a line per bundle
    try:
        report = prepare(dataset=f.dataset, output=f.output, input_path=f.input, audio_root=f.audio_root,
                         max_seconds=f.max_seconds, split_seed=f.split_seed, sample_rate=f.sample_rate,
                         pool_size=f.pool_size, workers=f.workers, label_column=f.label_column,
                         min_shared_tags=f.min_shared_tags, split_by=f.split_by, shard_size=f.shard_size,
                         min_seconds=f.min_seconds, name=f.name, progress=f.progress, runner=f.runner,
                         beam_args=list(argv[1:]), features=f.features, extended=f.extended)
    except (ValueError, FileNotFoundError, DemoBuildError,
            OutputLockedError) as err:  # bad arguments, input or output folder (NotOurFolderError): no traceback
        print(f"data_prep.build: error: {err}", file=sys.stderr)
        sys.exit(2)
    if report["tracks"] == 0:
        sys.exit(1)


def _define_flags() -> None:
    flags.DEFINE_enum("dataset", None, list(DATASET_KINDS), "Source layout (see data_prep.sources), or demo.")
    flags.DEFINE_string("input", None, "Source: MTAT root, album root, labelled CSV, manifest (file or folder); "
                                       "demo: the corpus cache folder (default data/demo_corpus).")
    flags.DEFINE_string("output", None, "Prepared dataset folder; rerunning resumes.")
    flags.DEFINE_string("audio_root", None, "magnatagatune: folder of the mp3s when not under --input.")
    flags.DEFINE_float("max_seconds", None, "Centred excerpt length in seconds; default: 60 for demo, whole "
                                            "tracks otherwise; <= 0: whole tracks.")
    flags.DEFINE_integer("split_seed", 0, "Seed of the 50/25/25 split.")
    flags.DEFINE_integer("sample_rate", DEFAULT_SAMPLE_RATE, "Decode rate (Hz), before pooling.")
    flags.DEFINE_integer("pool_size", DEFAULT_POOL_SIZE, "Mean-pooling window (samples).")
    flags.DEFINE_integer("workers", None, "Decoding processes (default: all cores).")
    flags.DEFINE_string("label_column", "genre", "labelled_csv: the label column.")
    flags.DEFINE_integer("min_shared_tags", 2, "Tag relevance: shared tags needed to be similar.")
    flags.DEFINE_enum("split_by", "track", list(SPLIT_BY), "track: stratified tracks; label: disjoint labels.")
    flags.DEFINE_integer("shard_size", DEFAULT_SHARD_SIZE, "Tracks per TFRecord shard.")
    flags.DEFINE_float("min_seconds", DEFAULT_MIN_SECONDS, "Skip excerpts shorter than this.")
    flags.DEFINE_string("name", None, "Dataset name (default: the output folder's name).")
    flags.DEFINE_boolean("progress", True, "Show a progress bar.")
    flags.DEFINE_enum("runner", LOCAL_RUNNER, list(RUNNERS),
                      "local: decode in this machine's process pool; resumes (finished shards are kept). A Beam "
                      "runner: the same records from an Apache Beam pipeline (data_prep.beam_pipeline), as "
                      "DIR/<split>/part-SSSSS-of-NNNNN.tfrecord; flags not defined here go to Beam's "
                      "PipelineOptions (DirectRunner default: --direct_running_mode=multi_processing "
                      "--direct_num_workers=<--workers, else all cores>); no resume: every shard is rewritten, "
                      "the runner retries failed work itself. DIR must be a path the workers can write.")
    flags.DEFINE_string("features", None, "librosa or mfcc: also cache each track's feature vector of that fitted "
                                          "model in DIR/feature_cache (both runners), so experiments.run "
                                          "--model=librosa|mfcc extracts nothing.")
    flags.DEFINE_boolean("extended", False, "demo only: the extended demo corpus (8 demo + 5 extra packages, "
                                             "curated in code), cached by default in data/demo_extended_corpus.")
    flags.mark_flags_as_required(["dataset", "output"])
    check_numeric_flags(flags.FLAGS, module=sys.modules[__name__], bounds={
        "max_seconds": ANY_FINITE, "split_seed": SEED, "sample_rate": AT_LEAST_ONE, "pool_size": AT_LEAST_ONE,
        "workers": AT_LEAST_ONE, "min_shared_tags": AT_LEAST_ONE, "shard_size": AT_LEAST_ONE,
        "min_seconds": NON_NEGATIVE})


USAGE = "usage: python -m data_prep.build --dataset=KIND --input=PATH --output=DIR [...]"


def cli() -> None:
    """``python -m data_prep.build`` and the ``musicsim-prep`` console script.

    ``--help`` lists the flags (exit 0); a bad flag or value is one line and exit 2 (``musicsim.cli``).
    Flags no module defines are left for Beam's pipeline options (``prepare`` refuses them with the
    local runner).
    """
    _define_flags()
    app.run(main, flags_parser=global_flags_parser(module=sys.modules[__name__], doc=__doc__, usage=USAGE,
                                                    known_only=True))


if __name__ == "__main__":
    cli()
