"""The search engine over HTTP: a JSON API and a web page to search, listen, explore and build playlists.

    python -m musicsim.search.serve --index=DIR [--host=127.0.0.1] [--port=8000] [--max_upload_mb=50]
        [--map=pca|umap] [--m3u_root=DIR] [--reload_interval_s=1] [--access_log]

Binds to localhost unless ``--host`` says otherwise. The model that embeds uploaded files is loaded
at start-up in the background (or on the first file query) and kept. Endpoints (the spec is at
``/openapi.json``, an offline page listing it at ``/docs``); every GET route answers HEAD too:

    GET  /                          the web page (static files of the package, no CDN)
    GET  /healthz                   liveness, the index version in use, its track count, the upload model
    GET  /api/info                  the index: size, similarity, model, groups, upload limit
    GET  /api/tracks?q=&limit=&offset=        the catalog, filtered by what it shows: id, tags, relative path
    GET  /api/similar/{track_id}?k=&diversity=&exclude_same_album=   neighbours of a track
    POST /api/similar?k=&diversity=  neighbours of an uploaded audio file (multipart ``file`` or raw body)
    GET  /api/audio/{track_id}      the track's audio file, with HTTP range requests
    GET  /api/art/{track_id}        the cover art embedded in the track's file (404 when none)
    GET  /api/playlist?seed=&n=&diversity=[&format=m3u8]    a radio walk from a seed
    GET  /api/playlist?from=&to=&n=[&format=m3u8]           a path morphing from one track to another
    GET  /api/map                   2-D coordinates of every track (PCA or UMAP, cached beside the index)

Tracks are described by their tags (title, artist, album, album_artist, track_number, disc, year,
genre, duration_s: the index's metadata columns, written by ``musicsim-scan``), with fallbacks for an
index without them: the title is the file name (or the id's last part) and the album the track's group.
"Same album" is the album tag with its album artist, or the group, or the file's folder.

The index is followed while serving: a background thread looks at its ``config.json`` every
``--reload_interval_s`` seconds (one ``stat``) and, when an index command or a scan has written a
new version, loads it and swaps it in (``ServiceHolder``). A request takes the service of the
version current when it starts and answers from it to the end; later requests see the new tracks,
and removed tracks (their audio and art included) are no longer served.

Only files the index lists are served: ``/api/audio`` and ``/api/art`` look the track id up in the
index's metadata (resolved once per index version) and no part of a request path is ever joined to
a file-system path. An upload is streamed into a private temporary directory (mode 0700, outside
anything served) with its size checked as it arrives, checked to be audio by decoding it, and
deleted after the query. Errors are JSON ``{"error": message, "status": code}``: 400 bad parameters,
404 unknown track or path, 405 method not allowed (with ``Allow``), 413 upload too large, 415 not
audio, 422 audio that cannot be embedded (too short, silent). No answer names a server-side path
except an M3U playlist, whose entries are the files' paths (absolute, or relative to ``--m3u_root``).
An unusable ``Range`` header (malformed or unsatisfiable) is ignored, as RFC 9110 allows: the whole file.
"""
from __future__ import annotations

import logging
import os
import sys
from typing import NoReturn, Sequence

import uvicorn
from absl import flags
from threadpoolctl import threadpool_limits

from musicsim.cli import Bounds, check_numeric_flags, one_line, parse_command_line, run_command, usage_error
from musicsim.search.app import create_app
from musicsim.search.holder import DEFAULT_RELOAD_INTERVAL_S, MAX_RELOAD_INTERVAL_S
from musicsim.search.uploads import DEFAULT_MAX_UPLOAD_MB, MAX_UPLOAD_MB_LIMIT
from musicsim.search.users import add_user_command

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
USAGE = ("usage: python -m musicsim.search.serve --index=DIR [--host=127.0.0.1] [--port=8000] [--max_upload_mb=50] "
         "[--m3u_root=DIR] [...]")

# Flags of this command only (experiments.run's global FLAGS has some of the same names).
FLAGS = flags.FlagValues()
flags.DEFINE_string("index", None, "The index directory (musicsim.index build, or musicsim-scan --index).",
                    flag_values=FLAGS)
flags.DEFINE_string("host", DEFAULT_HOST, f"Address to bind (default {DEFAULT_HOST}: this machine only; 0.0.0.0 "
                    "exposes it to the network).", flag_values=FLAGS)
flags.DEFINE_integer("port", DEFAULT_PORT, "Port.", lower_bound=0, upper_bound=65535, flag_values=FLAGS)
flags.DEFINE_float("max_upload_mb", DEFAULT_MAX_UPLOAD_MB, "Largest accepted audio upload, in MiB (> 0).",
                   flag_values=FLAGS)
flags.DEFINE_enum("map", "pca", ["pca", "umap"], "Projection of the embedding map.", flag_values=FLAGS)
flags.DEFINE_string("m3u_root", None, "Write the paths of M3U playlists relative to this folder (default: "
                    "absolute paths).", flag_values=FLAGS)
flags.DEFINE_float("reload_interval_s", DEFAULT_RELOAD_INTERVAL_S, "Seconds between two looks at the index for "
                   "a new version (0: never reload).", flag_values=FLAGS)
flags.DEFINE_bool("access_log", False, "Log every request.", flag_values=FLAGS)
flags.DEFINE_bool("subsonic", False, "Also serve the library as a read-only OpenSubsonic server under /rest/ "
                  "(musicsim.search.subsonic; users from --users).", flag_values=FLAGS)
flags.DEFINE_string("users", None, "The Subsonic users file (default $XDG_CONFIG_HOME/musicsim/users.json, else "
                    "~/.config/musicsim/users.json; mode 0600, never inside the index folder).", flag_values=FLAGS)
flags.DEFINE_string("add_user", None, "Add a Subsonic user (or reset its password and API key) to --users, the "
                    "password read from stdin, and exit.", flag_values=FLAGS)
check_numeric_flags(FLAGS, bounds={"port": Bounds(lower=0, upper=65535),
                                   "max_upload_mb": Bounds(lower=0, lower_open=True, upper=MAX_UPLOAD_MB_LIMIT),
                                   "reload_interval_s": Bounds(lower=0, upper=MAX_RELOAD_INTERVAL_S)})


def _is_loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")


def main(argv: Sequence[str]) -> int:
    """``python -m musicsim.search.serve ...`` (``argv`` program name first); returns the exit status (2 on a
    usage or input error)."""
    status = parse_command_line(FLAGS, argv, doc=__doc__, usage=USAGE)
    if isinstance(status, int):
        return status
    if FLAGS.add_user is not None:
        return add_user_command(name=FLAGS.add_user, users_file=FLAGS.users, index_dir=FLAGS.index)
    if FLAGS.index is None:
        return usage_error("Flag --index must have a value other than None.", usage=USAGE)
    for name in ("index", "m3u_root"):
        value = FLAGS[name].value
        if value is not None and os.path.exists(value) and not os.path.isdir(value):
            print(f"error: --{name}={value} is a file, not a folder" + (
                " (an index is the folder musicsim.index build --output or musicsim-scan --index wrote)"
                if name == "index" else ""), file=sys.stderr)
            return 2
    if FLAGS.m3u_root is not None and not os.path.isdir(FLAGS.m3u_root):
        print(f"error: --m3u_root={FLAGS.m3u_root} does not exist", file=sys.stderr)
        return 2
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    # Requests run concurrently on the server's threads: BLAS threads of their own would only fight
    # them for the cores (and spin), which costs both latency and throughput on a busy machine. The
    # limit is lifted when serving ends, so a caller of main() keeps its own BLAS threads.
    with threadpool_limits(limits=1, user_api="blas"):
        try:
            app = create_app(index_dir=FLAGS.index, max_upload_mb=FLAGS.max_upload_mb, map_method=FLAGS.map,
                             warm_up=True, m3u_root=FLAGS.m3u_root, reload_interval_s=FLAGS.reload_interval_s,
                             subsonic=FLAGS.subsonic, users_file=FLAGS.users)
        except (ValueError, FileNotFoundError) as error:
            print(f"error: {one_line(str(error))}", file=sys.stderr)
            return 2
        if not _is_loopback(FLAGS.host):
            print(f"warning: binding to {FLAGS.host}: the service is reachable from other machines", file=sys.stderr)
        service = app.state.holder.current
        follows = (f"; following its new versions (every {FLAGS.reload_interval_s:g} s)"
                   if FLAGS.reload_interval_s > 0 else "")
        print(f"{service.index.summary()}\nserving {service.index_dir} (version {service.version}{follows}) on "
              f"http://{FLAGS.host}:{FLAGS.port}/ (API spec: /openapi.json)", flush=True)
        uvicorn.run(app, host=FLAGS.host, port=FLAGS.port, access_log=FLAGS.access_log, log_level="info")
    return 0


def cli() -> NoReturn:
    """The ``musicsim-serve`` console script."""
    run_command(main)


if __name__ == "__main__":
    cli()
