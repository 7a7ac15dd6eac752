"""The index command line.

    python -m musicsim.index build --embeddings=FILE --output=DIR [--similarity=cosine]
        [--approximate=ivf|hnsw] [--model_dir=RUN] [--model=NAME] [--overwrite]
        [--backend=faiss|milvus --uri=PATH.db|http://host:19530 --collection=NAME]
        [--rerank=auto|none|dba+aqe:k=3,alpha=3] [--standardise|--nostandardise] [--wait]
    python -m musicsim.index add --index=DIR --embeddings=FILE [--model_dir=RUN] [--replace] [--wait]
    python -m musicsim.index remove --index=DIR --track_id=ID [--track_id=ID ...] [--wait]
        (or --track_id ID [ID ...])

``build`` replaces DIR only when it is absent, empty or an index (its config.json says so).
One writer at a time: each command holds DIR's lock (``musicsim.index.lock``) while it writes; when
another writer holds it, the command exits 2 naming that writer, or with ``--wait`` says it waits and
waits for it.
Queries are ``python -m musicsim.search.query``'s.

The command keeps its flags in a ``FlagValues`` of its own (parsed by ``musicsim.cli``, the command-line
plumbing every command shares): ``experiments.run`` defines flags of the same names (``--similarity``, ``--model_dir``) on absl's global ``FLAGS``, and both are imported
into one process by the demo and the tests.
"""
from __future__ import annotations

import os
import sys
from typing import NoReturn, Sequence

from absl import flags

from musicsim.cli import parse_subcommand, run_command, usage_error
from musicsim.index.build import add_to_index, build_index, remove_from_index
from musicsim.index.lock import index_lock
from musicsim.index.registry import BACKENDS, DEFAULT_BACKEND
from musicsim.index.vectors import APPROXIMATE_KINDS
from musicsim.similarity import SIMILARITIES

USAGE = ("usage: python -m musicsim.index build --embeddings=FILE --output=DIR [...]\n"
         "       python -m musicsim.index add --index=DIR --embeddings=FILE [--replace]\n"
         "       python -m musicsim.index remove --index=DIR --track_id=ID [ID ...]")

FLAGS = flags.FlagValues()
flags.DEFINE_string("embeddings", None, "build, add: the embeddings file, .parquet, .npz or .npy (+ .ids.json).",
                    flag_values=FLAGS)
flags.DEFINE_string("output", None, "build: the index directory to write.", flag_values=FLAGS)
flags.DEFINE_string("index", None, "add, remove: the index directory to change.", flag_values=FLAGS)
flags.DEFINE_enum("similarity", None, list(SIMILARITIES), "build: how embeddings are compared (default: the run's "
                  "own, cosine when unknown).", flag_values=FLAGS)
flags.DEFINE_enum("approximate", None, list(APPROXIMATE_KINDS), "build: approximate search (default: exact).",
                  flag_values=FLAGS)
flags.DEFINE_string("model_dir", None, "build, add: the run the embeddings come from (default: the one the "
                    "embeddings file names).", flag_values=FLAGS)
flags.DEFINE_string("model", None, "build: the model name, if the embeddings file does not say.", flag_values=FLAGS)
flags.DEFINE_bool("overwrite", False, "build: replace --output even if it is a folder that holds no index (and, "
                  "for milvus, an existing --collection).", flag_values=FLAGS)
# A string checked against the table when the command runs (build_index), so a backend added to it later is taken.
flags.DEFINE_string("backend", DEFAULT_BACKEND, f"build: where the vectors live, one of {', '.join(BACKENDS)}.",
                    flag_values=FLAGS)
flags.DEFINE_string("uri", None, "build, milvus: a PATH.db Milvus Lite file, or http://host:19530.",
                    flag_values=FLAGS)
flags.DEFINE_string("collection", None, "build, milvus: the collection to create.", flag_values=FLAGS)
flags.DEFINE_string("rerank", "auto", "build: label-free re-ranking the index applies: auto (the model's fixed "
                    "setting: the pretrained engine's own, none for other models), none, or aqe / dba / dba+aqe "
                    "with options, e.g. 'dba+aqe:k=3,alpha=3' (cosine, faiss only; kreciprocal is refused).",
                    flag_values=FLAGS)
flags.DEFINE_bool("standardise", None, "build: standardise every dimension over the indexed catalog (label-free; "
                  "file queries use the same statistics). Default: on for the pretrained engine, else off.",
                  flag_values=FLAGS)
flags.DEFINE_bool("wait", False, "build, add, remove: when another writer holds the index, wait for it instead of "
                  "exiting with status 2.", flag_values=FLAGS)
flags.DEFINE_bool("replace", False, "add: replace tracks already in the index.", flag_values=FLAGS)
flags.DEFINE_multi_string("track_id", [], "remove: a track id (repeat the flag, or list more ids after it).",
                          flag_values=FLAGS)

# The flags each command takes; any other given is a usage error.
COMMAND_FLAGS = {
    "build": ({"embeddings", "output"}, {"similarity", "approximate", "model_dir", "model", "overwrite", "backend",
                                         "uri", "collection", "rerank", "standardise", "wait"}),
    "add": ({"index", "embeddings"}, {"model_dir", "replace", "wait"}),
    "remove": ({"index", "track_id"}, {"wait"}),
}


def main(argv: Sequence[str]) -> int:
    """``python -m musicsim.index COMMAND ...`` (``argv`` program name first); returns the exit status
    (2 on a usage or input error)."""
    parsed = parse_subcommand(FLAGS, argv, doc=__doc__, usage=USAGE, commands=COMMAND_FLAGS,
                              extra_arguments=frozenset({"remove"}))  # remove --track_id A B C: the ids after the first
    if isinstance(parsed, int):
        return parsed
    command, extra = parsed
    if command == "build" and FLAGS.backend not in BACKENDS:  # before the lock is taken
        return usage_error(f"flag --backend={FLAGS.backend}: value should be one of <{'|'.join(BACKENDS)}>", usage=USAGE)
    index_dir = FLAGS.output if command == "build" else FLAGS.index
    try:
        with index_lock(index_dir, wait=FLAGS.wait, command=f"musicsim.index {command}"):
            if command == "build":
                index = build_index(embeddings=FLAGS.embeddings, output=FLAGS.output, similarity=FLAGS.similarity,
                                    approximate=FLAGS.approximate, model_dir=FLAGS.model_dir,
                                    model_name=FLAGS.model, overwrite=FLAGS.overwrite, backend=FLAGS.backend,
                                    uri=FLAGS.uri, collection=FLAGS.collection, rerank=FLAGS.rerank,
                                    standardise=FLAGS.standardise)
                print(f"{index.summary()} -> {os.path.abspath(FLAGS.output)}")
            elif command == "add":
                index, added, replaced = add_to_index(index_dir=FLAGS.index, embeddings=FLAGS.embeddings,
                                                      replace=FLAGS.replace, model_dir=FLAGS.model_dir)
                print(f"added {added}, replaced {replaced}: {index.summary()} -> {os.path.abspath(FLAGS.index)}")
            else:
                track_ids = list(FLAGS.track_id) + extra
                index = remove_from_index(index_dir=FLAGS.index, track_ids=track_ids)
                print(f"removed {len(set(track_ids))}: {index.summary()} -> {os.path.abspath(FLAGS.index)}")
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


def cli() -> NoReturn:
    """The ``musicsim-index`` console script."""
    run_command(main)
