"""Search the collection: the tracks most similar to a track of the index, or to any audio file.

    python -m musicsim.search.query --index=DIR (--query=FILE | --track_id=ID) [-k 10] [--diversity=0.0]
        [--exclude_same_group] [--include_self] [--rerank=index|none] [--json]

An index is built by ``python -m musicsim.index build --embeddings=FILE --output=DIR`` from an export
(``experiments.export``), which names the run it came from. A query by id uses the stored vector and leaves the query
track out of its results. A query by file embeds it with the model the index was built from (the
index records its ``model_dir``; see ``musicsim.embedder``); when the file is itself in the index,
it comes back first with the top score, and ``--exclude_same_group`` leaves out its group.

The index's re-ranking (``musicsim.index build --rerank``) applies to every query: with ``dba`` the
catalog searched is augmented, with ``aqe`` the query is first averaged with its nearest catalog tracks
(a track-id query never with itself). ``--rerank=none`` skips the query expansion for that query (the
catalog searched stays the index's).

Prints a table of rank, score, track id, group and path, or with ``--json`` a list of objects
``{"rank", "track_id", "score", "path", "group"}``, best first. Scores are the index's similarity:
cosine, or minus the Euclidean distance; higher is more similar either way.
"""
from __future__ import annotations

import json
import logging
import os
import sys
import warnings
from typing import TYPE_CHECKING, Any, NoReturn, Sequence

import numpy as np
from absl import flags

import musicsim.index
from musicsim.index import IndexBackend
from musicsim.cli import AT_LEAST_ONE, FRACTION, check_numeric_flags, parse_command_line, run_command

if TYPE_CHECKING:
    from musicsim.embedder import Embedder

RERANK_MODES = ("index", "none")
USAGE = "usage: python -m musicsim.search.query --index=DIR (--query=FILE | --track_id=ID) [-k 10] [--json] [...]"

# Flags of this command only (experiments.run's global FLAGS has some of the same names).
FLAGS = flags.FlagValues()
flags.DEFINE_string("index", None, "The index directory (musicsim.index build).", flag_values=FLAGS)
flags.DEFINE_string("query", None, "An audio file, embedded with the index's model.", flag_values=FLAGS)
flags.DEFINE_string("track_id", None, "A track of the index.", flag_values=FLAGS)
flags.DEFINE_integer("k", 10, "Number of results.", flag_values=FLAGS)
flags.DEFINE_float("diversity", 0.0, "0 ranks by similarity only; up to 1 favours results unlike each other (MMR).",
                   flag_values=FLAGS)
flags.DEFINE_bool("exclude_same_group", False, "Leave out the query's album/group.", flag_values=FLAGS)
flags.DEFINE_bool("include_self", False, "Keep the query track in --track_id results.", flag_values=FLAGS)
flags.DEFINE_enum("rerank", "index", list(RERANK_MODES), "index: the re-ranking the index records; none: no query "
                  "expansion for this query.", flag_values=FLAGS)
flags.DEFINE_bool("json", False, "Print a JSON list instead of a table.", flag_values=FLAGS)
flags.mark_flag_as_required("index", flag_values=FLAGS)
flags.mark_flags_as_mutual_exclusive(["query", "track_id"], required=True, flag_values=FLAGS)
check_numeric_flags(FLAGS, bounds={"k": AT_LEAST_ONE, "diversity": FRACTION})


class UnembeddableQueryError(ValueError):
    """An audio file the index's model cannot embed (not decodable, too short, silent); ``reason`` says why."""

    def __init__(self, *, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"cannot embed the query {path}: {reason}")


def query_model_dir(*, index: IndexBackend, index_dir: str) -> str:
    """The run that embeds audio-file queries of ``index``.

    Raises
    ------
    ValueError
        When the index was built without a model_dir.
    """
    model_dir = index.model.get("model_dir")
    if not model_dir:
        raise ValueError(f"the index {index_dir} was built without a model_dir, so a file cannot be embedded "
                         "with its model: rebuild it with `python -m musicsim.index build ... --model_dir=RUN`, "
                         "or query by track id")
    return str(model_dir)


def load_query_embedder(*, index: IndexBackend, index_dir: str) -> "Embedder":
    """The index's model, loaded and checked to make the index's embeddings (its name and dimension).

    A model that compares embeddings by another similarity than the index is warned about
    (``warnings.warn``), not refused.

    Raises
    ------
    ValueError
        For an index without a model_dir, a run of another model, or another dimension.
    FileNotFoundError
        If the run is gone.
    """
    # Imported here, not at the top: musicsim.embedder loads the model registry, whose learned models import
    # TensorFlow (seconds, and its memory), and an index served or searched by track id never needs it.
    from musicsim.embedder import load_embedder

    model_dir = query_model_dir(index=index, index_dir=index_dir)
    embedder = load_embedder(model_dir)
    name = index.model.get("name")
    if name and name != embedder.name:
        raise ValueError(f"the index {index_dir} holds {name!r} embeddings but its model_dir {model_dir} is a "
                         f"{embedder.name!r} run")
    if embedder.dim != index.dim:
        raise ValueError(f"dimension mismatch: the index {index_dir} holds {index.dim}-d embeddings but "
                         f"{model_dir} ({embedder.name}) makes {embedder.dim}-d ones; was the index built "
                         "from another run?")
    if embedder.similarity != index.similarity:
        warnings.warn(f"{model_dir} compares embeddings by {embedder.similarity} but the index uses "
                      f"{index.similarity}")
    return embedder


def embed_query_file(*, embedder: "Embedder", query_path: str) -> np.ndarray:
    """The embedding ``[1, D]`` of one audio file; ``UnembeddableQueryError`` naming it when it cannot be embedded."""
    vectors, _, skipped = embedder.embed_paths(paths=[query_path], workers=1, progress=False)
    if skipped:
        raise UnembeddableQueryError(path=query_path, reason=str(skipped[0][1]))
    return vectors


def search(*, index_dir: str, query_path: str | None = None, track_id: str | None = None, k: int = 10,
           diversity: float = 0.0, exclude_same_group: bool = False, exclude_self: bool = True,
           index: IndexBackend | None = None, rerank: str = "index") -> list[dict[str, Any]]:
    """The ``k`` tracks of an index most similar to one query.

    Parameters
    ----------
    index_dir : an index written by ``musicsim.index``
    query_path : an audio file, embedded with the index's model (exclusive with ``track_id``)
    track_id : a track of the index, queried by its stored vector
    k : number of results
    diversity : float in [0, 1], 0 ranks by similarity only (see ``FaissIndex.search``)
    exclude_same_group : leave out tracks of the query's group (its album); for a file query, the
        file must be in the index
    exclude_self : for a ``track_id`` query, leave the query track out (a file query never does)
    index : the loaded index of ``index_dir`` (either backend), to save loading it again
    rerank : ``index`` applies the re-ranking the index records, ``none`` no query expansion

    Returns
    -------
    list of dict, best first: ``rank`` (1-based), ``track_id``, ``score`` (float), ``path`` and
    ``group`` (None when the index has no such metadata)

    Raises
    ------
    ValueError
        For no or two queries, k < 1, diversity outside [0, 1], an unknown track id, an index
        without a model_dir (file query), an embedding dimension that is not the index's, a file
        that cannot be embedded, or a damaged index (``musicsim.index.IndexFileError``, naming the file).
    FileNotFoundError
        If the index or the query file does not exist.
    """
    if (query_path is None) == (track_id is None):
        raise ValueError("give exactly one query: query_path (an audio file) or track_id (a track of the index)")
    # Checked before loading the index and embedding the file, which take seconds.
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    if not 0.0 <= float(diversity) <= 1.0:
        raise ValueError(f"diversity must be in [0, 1], got {diversity}")
    if rerank not in RERANK_MODES:
        raise ValueError(f"rerank must be one of {RERANK_MODES}, got {rerank!r}")
    opened = index is None
    if index is None:
        index = musicsim.index.open(index_dir)
    try:
        return _search_loaded(index, index_dir=index_dir, query_path=query_path, track_id=track_id, k=k,
                              diversity=diversity, exclude_same_group=exclude_same_group, exclude_self=exclude_self,
                              rerank=rerank == "index")
    finally:
        if opened:
            index.close()


def _search_loaded(index: IndexBackend, *, index_dir: str, query_path: str | None, track_id: str | None, k: int,
                   diversity: float, exclude_same_group: bool, exclude_self: bool,
                   rerank: bool) -> list[dict[str, Any]]:
    """``search`` on an opened index."""
    if track_id is not None:
        if track_id not in index:
            raise ValueError(f"unknown track id {track_id!r}: the index {index_dir} holds {len(index)} tracks")
        results = index.search_by_id(track_id=track_id, k=k, exclude_self=exclude_self,
                                     exclude_same_group=exclude_same_group, diversity=diversity, rerank=rerank)
    else:
        exclude_groups = None
        if exclude_same_group:
            if "group" not in index.metadata_columns:
                raise ValueError(f"exclude_same_group needs 'group' metadata, and the index {index_dir} has none")
            own = index.track_id_of_path(path=query_path)
            if own is None:
                raise ValueError(f"exclude_same_group with a file query needs the file to be in the index, and "
                                 f"{query_path} is not (its group is unknown)")
            exclude_groups = [[index.group(track_id=own)]]
        query_model_dir(index=index, index_dir=index_dir)  # before the file: the index's own defect first
        if os.path.isdir(query_path):
            raise ValueError(f"query {query_path} is a directory: give one audio file (or --track_id)")
        if os.path.exists(query_path) and not os.path.isfile(query_path):
            raise ValueError(f"query {query_path} is not a regular file (a device, socket or pipe): give an audio file")
        if not os.path.isfile(query_path):
            raise FileNotFoundError(f"query file {query_path} does not exist")
        embedder = load_query_embedder(index=index, index_dir=index_dir)
        # The catalog's standardisation (an index that standardises), as for every vector it holds.
        queries = index.prepare_query(embed_query_file(embedder=embedder, query_path=query_path))
        results = index.search(queries=queries, k=k, exclude_groups=exclude_groups, diversity=diversity,
                               rerank=rerank)[0]
    described = [(found, float(score), index.metadata(track_id=found)) for found, score in results]
    return [{"rank": rank, "track_id": found, "score": score, "path": metadata.get("path"),
             "group": metadata.get("group")}
            for rank, (found, score, metadata) in enumerate(described, start=1)]


def format_table(results: Sequence[dict[str, Any]]) -> str:
    """Results as an aligned text table: rank, score, track id, group, path."""
    if not results:
        return "(no results)"
    id_width = max(8, *(len(str(r["track_id"])) for r in results))
    group_width = max(5, *(len(str(r["group"] or "")) for r in results))
    lines = [f"{'rank':>4}  {'score':>8}  {'track_id':<{id_width}}  {'group':<{group_width}}  path"]
    for r in results:
        lines.append(f"{r['rank']:>4}  {r['score']:>+8.4f}  {r['track_id']:<{id_width}}  "
                     f"{str(r['group'] or ''):<{group_width}}  {r['path'] or ''}")
    return "\n".join(lines)


def main(argv: Sequence[str]) -> int:
    """``python -m musicsim.search.query ...`` (``argv`` program name first); returns the exit status (2 on a
    usage or input error)."""
    status = parse_command_line(FLAGS, argv, doc=__doc__, usage=USAGE)
    if isinstance(status, int):
        return status
    # TensorFlow's Python logger (estimator INFO lines), set without importing TensorFlow.
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    try:
        results = search(index_dir=FLAGS.index, query_path=FLAGS.query, track_id=FLAGS.track_id, k=FLAGS.k,
                         diversity=FLAGS.diversity, exclude_same_group=FLAGS.exclude_same_group,
                         exclude_self=not FLAGS.include_self, rerank=FLAGS.rerank)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(results, indent=1) if FLAGS.json else format_table(results))
    return 0


def cli() -> NoReturn:
    """The ``musicsim-search`` console script."""
    run_command(main)


if __name__ == "__main__":
    cli()
