"""``data_prep.build`` as an Apache Beam pipeline: ``python -m data_prep.build ... --runner=DirectRunner``.

The driver (``data_prep.build.prepare``) lists the source, assigns the splits and plans the shards,
as for the local runner; this module runs the per-file work on a Beam runner::

    Create([(split, SourceTrack), ...]) | Reshuffle
        | ParDo(DecodeTrackFn)  -> one output per split: serialized records (shards.track_record)
                                   "kept":    catalog rows (JSON)
                                   "skipped": {"path", "track_id", "reason"} (JSON)
        records of each split   | WriteToTFRecord(DIR/<split>/part, ".tfrecord", num_shards)
        kept                    | ParDo(CacheFeaturesFn) -> feature cache; "failed" rows (JSON)
        kept, skipped, failed   | WriteToText(DIR/.beam-side/<name>)   (read back by the driver)

then the driver writes ``tracks.csv``, ``report.json`` and ``dataset.json`` with ``build``'s code.
Each split gets as many shards as the local build would (``ceil(tracks / shard_size)``), named
``part-SSSSS-of-NNNNN.tfrecord``; records are spread over them at random, so only the set of records
of a split is fixed, and it is the local build's, byte for byte: both call ``musicsim.data.audio.decode_track``
and ``data_prep.shards.track_record``.

``DirectRunner`` means Beam's local portable engine (``FnApiRunner``) in ``multi_processing`` mode
with ``--workers`` processes, unless the Beam options say otherwise. It is built here rather than
named, because Beam 2.77's ``DirectRunner`` first tries to download and start the Prism runner,
which ignores ``direct_running_mode``. Other runners get their name and the options as given; the
output folder must then be a path both the workers and the driver can write (a shared mount): the
driver reads the side outputs and writes the catalog with local file calls.

No resume: a Beam build rewrites every shard of ``DIR`` (the runner retries failed work itself).
"""
from __future__ import annotations

import collections
import glob
import json
import os
import shutil
from typing import Sequence

import apache_beam as beam
from apache_beam.io.tfrecordio import WriteToTFRecord
from apache_beam.options.pipeline_options import (DirectOptions, PipelineOptions, StandardOptions,
                                                  WorkerOptions)
from apache_beam.runners.runner import PipelineState

from data_prep.shards import BEAM_RUNNERS, BEAM_SHARD_PREFIX, BuiltShards, FeatureSpec, ShardPlan, track_record
from data_prep.sources import SourceTrack
from musicsim.data.audio import DecodeSettings, decode_track
from musicsim.data.dataset import CatalogEntry
from musicsim.data.tfrecords import SPLITS

TFRECORD_SUFFIX = ".tfrecord"  # musicsim.data.tfrecords.shard_paths globs DIR/<split>/*.tfrecord
SIDE_OUTPUT_DIRNAME = ".beam-side"  # under DIR; removed once the driver has read it
KEPT, SKIPPED, FEATURE_FAILURES = "kept", "skipped", "feature_failures"
DIRECT_RUNNING_MODE = "multi_processing"
# The options class holding each option DirectRunner gets a default for.
_OPTION_VIEWS = {"direct_running_mode": DirectOptions, "direct_num_workers": DirectOptions,
                 "default_sdk_harness_log_level": WorkerOptions}


class DecodeTrackFn(beam.DoFn):
    """``(split, SourceTrack)`` -> its serialized record, tagged with its split, and its catalog row;
    or, when the file cannot be used, its skip row (tag ``"skipped"``).

    Parameters
    ----------
    settings : DecodeSettings
        How every track is decoded (the local build's).
    """

    def __init__(self, *, settings: DecodeSettings):
        super().__init__()
        self.settings = settings
        self.decoded = beam.metrics.Metrics.counter("data_prep", "tracks_decoded")
        self.skipped = beam.metrics.Metrics.counter("data_prep", "files_skipped")

    def process(self, element: tuple[str, SourceTrack]):
        split, track = element
        result = decode_track(track.path, self.settings)
        if result.pooled is None:
            self.skipped.inc()
            yield beam.pvalue.TaggedOutput(SKIPPED, json.dumps(
                {"path": track.path, "track_id": track.track_id, "reason": result.reason}, sort_keys=True))
            return
        self.decoded.inc()
        yield beam.pvalue.TaggedOutput(split, track_record(track=track, pooled=result.pooled,
                                                           settings=self.settings))
        yield beam.pvalue.TaggedOutput(KEPT, json.dumps(
            {"track_id": track.track_id, "split": split, "labels": list(track.labels), "path": track.path,
             "duration_s": result.seconds}, sort_keys=True))


def cache_track_features(*, path: str, spec: FeatureSpec) -> str | None:
    """Compute one file's feature vector into ``spec.cache_dir`` unless it is cached already.

    Through ``musicsim.features.FeatureCache`` and ``extract_one``, so the entry is exactly the one
    ``extract_many`` would write and read back.

    Returns
    -------
    str or None
        Why the file has no feature vector, or None when it has one (now cached).
    """
    from musicsim import features  # why: librosa+scipy ~2 s, only in the workers of a build caching features

    if not os.path.isfile(path):
        return "file not found"
    feature_name, feature_fn = features.resolve_feature_fn(spec.name)
    cache = features.FeatureCache(cache_dir=spec.cache_dir, feature_name=feature_name, sample_rate=spec.sample_rate,
                                  max_seconds=spec.max_seconds)
    vector, reason = cache.read(path)
    if vector is not None or reason is not None:
        return reason
    _, reason = features.extract_one(path=path, feature_fn=feature_fn, sample_rate=spec.sample_rate,
                                     max_seconds=spec.max_seconds, cache=cache)
    return reason


class CacheFeaturesFn(beam.DoFn):
    """A kept track's catalog row (JSON) -> its feature vector in the cache; yields ``{"path", "reason"}``
    (JSON) for a track whose features cannot be computed.

    Parameters
    ----------
    spec : FeatureSpec
    """

    def __init__(self, *, spec: FeatureSpec):
        super().__init__()
        self.spec = spec

    def process(self, kept_row: str):
        path = json.loads(kept_row)["path"]
        reason = cache_track_features(path=path, spec=self.spec)
        if reason is not None:
            yield json.dumps({"path": path, "reason": reason}, sort_keys=True)


def build_pipeline(pipeline: beam.Pipeline, *, jobs: Sequence[tuple[str, SourceTrack]], settings: DecodeSettings,
                   output: str, shards_per_split: dict[str, int], features: FeatureSpec | None,
                   side_dir: str) -> None:
    """Add the build's transforms to ``pipeline`` (see the module docstring).

    Parameters
    ----------
    pipeline : beam.Pipeline
    jobs : sequence of (split, SourceTrack)
    settings : DecodeSettings
    output : str
        The dataset folder: records go to ``output/<split>/part-SSSSS-of-NNNNN.tfrecord``.
    shards_per_split : dict str -> int >= 1
        Shards of each split; a split not in it gets no file (it has no track).
    features : FeatureSpec or None
        Also cache the kept tracks' feature vectors.
    side_dir : str
        Where the kept, skipped and feature-failure rows go (``<name>-*.jsonl``).
    """
    decoded = (pipeline
               | "ListTracks" >> beam.Create(list(jobs))
               | "SpreadOverWorkers" >> beam.Reshuffle()
               | "DecodeAndSerialize" >> beam.ParDo(DecodeTrackFn(settings=settings)).with_outputs(
                   KEPT, SKIPPED, *SPLITS))
    for split in SPLITS:
        if shards_per_split.get(split, 0) > 0:
            _ = decoded[split] | f"Write_{split}" >> WriteToTFRecord(
                file_path_prefix=os.path.join(output, split, BEAM_SHARD_PREFIX), file_name_suffix=TFRECORD_SUFFIX,
                num_shards=shards_per_split[split])
    side = {KEPT: decoded[KEPT], SKIPPED: decoded[SKIPPED]}
    if features is not None:
        side[FEATURE_FAILURES] = decoded[KEPT] | "CacheFeatures" >> beam.ParDo(CacheFeaturesFn(spec=features))
    for name, rows in side.items():
        _ = rows | f"Write_{name}" >> beam.io.WriteToText(os.path.join(side_dir, name), file_name_suffix=".jsonl")


def pipeline_options(*, runner: str, beam_args: Sequence[str], workers: int, command: str = "data_prep.build"
                     ) -> tuple[PipelineOptions, list[str]]:
    """Beam options from the command line's extra arguments, with the DirectRunner's defaults.

    Shared by every Beam pipeline of the project (this build, ``experiments.export_beam``); ``command``
    names the command whose flags they were not, in the error for an unknown one.

    Parameters
    ----------
    runner : str
        One of ``data_prep.shards.BEAM_RUNNERS``.
    beam_args : sequence of str
        Beam flags (``--direct_num_workers=4``, ``--flink_master=host:8081``, ...).
    workers : int >= 1
        DirectRunner: worker processes unless ``--direct_num_workers`` is given. DirectRunner's other
        defaults: ``--direct_running_mode=multi_processing``, ``--default_sdk_harness_log_level=WARNING``.

    Returns
    -------
    options : PipelineOptions
    effective_args : list[str]
        ``beam_args`` plus the defaults added (recorded in ``report.json``).

    Raises
    ------
    ValueError
        For an unknown runner, an argument that is not a ``--flag``, or a flag no Beam option has.
    """
    if runner not in BEAM_RUNNERS:
        raise ValueError(f"runner must be one of {BEAM_RUNNERS}, got {runner!r}")
    beam_args = list(beam_args)
    # A bare word is only allowed as the value of a preceding "--flag value".
    stray = [arg for i, arg in enumerate(beam_args) if not arg.startswith("-")
             and not (i > 0 and beam_args[i - 1].startswith("--") and "=" not in beam_args[i - 1])]
    if stray:
        raise ValueError(f"unexpected arguments {stray}: Beam pipeline options are --flag=value")
    options = PipelineOptions(beam_args)
    unknown = sorted(set(options.get_all_options(retain_unknown_options=True)) - set(options.get_all_options()))
    if unknown:
        raise ValueError(f"unknown Beam pipeline options {['--' + u for u in unknown]} (runner {runner}): not a "
                         f"flag of {command} nor a Beam pipeline option")
    effective = list(beam_args)
    if runner == "DirectRunner":
        # Named on the command line, not merely non-default: "--direct_num_workers=1" must win over --workers.
        given = {arg[2:].split("=", 1)[0] for arg in beam_args if arg.startswith("--")}
        defaults = {"direct_running_mode": DIRECT_RUNNING_MODE, "direct_num_workers": workers,
                    # The worker processes log every bundle at INFO on stderr otherwise.
                    "default_sdk_harness_log_level": "WARNING"}
        for name, value in defaults.items():
            if name not in given:
                setattr(options.view_as(_OPTION_VIEWS[name]), name, value)
                effective.append(f"--{name}={value}")
    options.view_as(StandardOptions).runner = runner
    return options, effective


def make_runner(runner: str, options: PipelineOptions):
    """The runner to hand ``beam.Pipeline``: DirectRunner's portable engine directly (no Prism), else the name."""
    if runner != "DirectRunner":
        return runner
    from apache_beam.portability.api import beam_provision_api_pb2  # why: optional apache_beam, DirectRunner's
    from apache_beam.runners.portability.fn_api_runner import fn_runner  # why: as above
    from apache_beam.runners.portability.portable_runner import JobServiceHandle  # why: as above

    # As DirectRunner builds it: the workers get the pipeline options through the provision info.
    encoded = JobServiceHandle.encode_pipeline_options(options.get_all_options())
    return fn_runner.FnApiRunner(provision_info=fn_runner.ExtendedProvisionInfo(
        beam_provision_api_pb2.ProvisionInfo(pipeline_options=encoded)))


def _clear_outputs(output: str, side_dir: str) -> None:
    """Remove every shard of an earlier build (either runner's), a crashed Beam write's temp folders and
    the side outputs, so the split folders hold only this build's shards."""
    for split in SPLITS:
        folder = os.path.join(output, split)
        for path in glob.glob(os.path.join(folder, "*" + TFRECORD_SUFFIX)) + glob.glob(
                os.path.join(folder, "shard-*.json")):
            os.remove(path)
        for path in glob.glob(os.path.join(folder, ".temp-beam*")):
            shutil.rmtree(path, ignore_errors=True)
    shutil.rmtree(side_dir, ignore_errors=True)


def _read_rows(side_dir: str, name: str) -> list[dict]:
    rows = []
    for path in sorted(glob.glob(os.path.join(side_dir, f"{name}-*.jsonl"))):
        with open(path) as f:
            rows += [json.loads(line) for line in f if line.strip()]
    return rows


def build_with_beam(*, plans: Sequence[ShardPlan], settings: DecodeSettings, output: str, runner: str,
                    beam_args: Sequence[str], workers: int, features: FeatureSpec | None) -> BuiltShards:
    """Write the planned tracks' records with a Beam pipeline; return what the catalog and report need.

    Parameters
    ----------
    plans : sequence of ShardPlan
        ``data_prep.shards.plan_shards``' plan: its tracks and, per split, its number of shards.
    settings : DecodeSettings
    output : str
        Local (or mounted) dataset folder, absolute.
    runner : str
        One of ``data_prep.shards.BEAM_RUNNERS``.
    beam_args : sequence of str
        Beam pipeline options.
    workers : int >= 1
        DirectRunner's default number of worker processes.
    features : FeatureSpec or None
        Also cache the kept tracks' feature vectors in the workers.

    Returns
    -------
    BuiltShards
        ``written`` counts the shard files; ``reused`` is 0 (no resume).

    Raises
    ------
    ValueError
        For bad Beam options or a runner Beam cannot start.
    RuntimeError
        When the pipeline does not finish.
    """
    options, effective = pipeline_options(runner=runner, beam_args=beam_args, workers=workers)
    side_dir = os.path.join(output, SIDE_OUTPUT_DIRNAME)
    _clear_outputs(output, side_dir)
    jobs = [(plan.split, track) for plan in plans for track in plan.tracks]
    shards_per_split = dict(collections.Counter(plan.split for plan in plans))
    try:
        pipeline = beam.Pipeline(runner=make_runner(runner, options), options=options)
    except (ImportError, ValueError) as err:  # e.g. DataflowRunner without apache-beam[gcp]
        raise ValueError(f"cannot start Beam runner {runner}: {err}") from err
    build_pipeline(pipeline, jobs=jobs, settings=settings, output=output, shards_per_split=shards_per_split,
                   features=features, side_dir=side_dir)
    state = pipeline.run().wait_until_finish()
    if state != PipelineState.DONE:
        raise RuntimeError(f"Beam pipeline on {runner} ended in state {state}; {output} is incomplete")

    kept = _read_rows(side_dir, KEPT)
    entries = [CatalogEntry(track_id=r["track_id"], split=r["split"], labels=tuple(r["labels"]),
                            duration_s=float(r["duration_s"]), path=r["path"]) for r in kept]
    skipped = _read_rows(side_dir, SKIPPED)
    failures = _read_rows(side_dir, FEATURE_FAILURES) if features is not None else []
    shutil.rmtree(side_dir, ignore_errors=True)
    written = sum(len(glob.glob(os.path.join(output, split, f"{BEAM_SHARD_PREFIX}-*{TFRECORD_SUFFIX}")))
                  for split in SPLITS)
    return BuiltShards(entries=entries, skipped=skipped, written=written, reused=0, feature_failures=failures,
                       beam_options=effective)
