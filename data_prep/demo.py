"""The demo corpus: real game soundtracks from 8 Debian packages, 10 album labels, 139 tracks.

The same music and track ids as the project's development corpus (``shared/data/README.md``), built
here without the shared script so that a fresh Debian machine needs only this repository: each
package is fetched with ``apt-get download`` (nothing is installed), its data tarball streamed out of
``dpkg-deb --fsys-tarfile`` (nexuiz keeps its music in a zip, ``music.pk3``), and the curated tracks
are copied, untouched, to ``CACHE/audio/<album>/``. ``CACHE/manifest.csv`` lists them in the dev
corpus' schema, so ``data_prep.build --dataset=manifest`` reads it as it reads the dev corpus.

Curation (the track lists below): music only, at least 30 s; jingles are left out, and so are
colobot's ``music010``/``music011`` (20 s of music, then 64 s of silence), nexuiz's ``thunder``
(ambience) and warzone2100's ``*_enhanced`` remasters (they duplicate tracks of the other
warzone2100 albums). warzone2100 ships three soundtrack albums: three labels.

The extended corpus (``extended=True``, ``data_prep.build --dataset=demo --extended``) adds the 5
extra packages ``shared/data/README.md`` allows (``EXTRA_SOURCES``; one game = one album label) and
goes to its own cache folder (``data/demo_extended_corpus``). Those packages are not curated by
hand: their music folder is matched by a pattern and the README's curation is done in code
(``curate_tracks``): non-music paths excluded by pattern, files that do not decode skipped, tracks
under 30 s dropped, and duplicates dropped, keeping the first by sorted track path: files with the
same bytes (sha256), and files of the same length whose decoded audio is the same up to gain
(``NEAR_DUPLICATE_CORRELATION``). Every file left out is listed with its reason in
``BUILD_INFO.json`` and counted in the printed summary.

Only these 8 + 5 packages may be used: the other Debian game-music packages are reserved for a
held-out evaluation corpus. The packages and track lists are in ``data_prep.demo_packages``, the
curation in code in ``data_prep.demo_curation``. Building is idempotent: each package leaves a stamp in
``CACHE/.stamps``; a rerun with the same spec downloads nothing.
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import shutil
import subprocess
import tarfile
import time
import zipfile
from dataclasses import asdict
from typing import Callable, Sequence

from data_prep.demo_curation import CURATION_VERSION, MIN_TRACK_SECONDS, NON_MUSIC_PATTERNS, curate_tracks, long_enough
from data_prep.demo_packages import DEMO_SOURCES, EXTRA_SOURCES, CuratedSource, DemoSource
from data_prep.sources import file_sha256, repeated_content, safe_name
from musicsim.data.audio import audio_info
from musicsim.atomic import atomic_open, write_json_atomic

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CACHE_DIR = os.path.join(REPO_ROOT, "data", "demo_corpus")
DEFAULT_EXTENDED_CACHE_DIR = os.path.join(REPO_ROOT, "data", "demo_extended_corpus")
MANIFEST_COLUMNS = ("path", "track_id", "label_album", "label_genre", "label_instrument", "duration_s",
                    "source_package", "source_version", "source_member", "clip_offset_s", "license")
# Bump when the unpacking changes in a way the stamps cannot see.
STAMP_VERSION = 1


class DemoBuildError(RuntimeError):
    """The demo corpus could not be built (apt, download or unpacking failed); the message says why."""


def demo_sources(*, extended: bool = False) -> tuple[DemoSource | CuratedSource, ...]:
    """The demo corpus' sources: the 8 ``DEMO_SOURCES``, plus the 5 ``EXTRA_SOURCES`` when ``extended``."""
    # Looked up at call time, not bound at import, so a test can swap in offline fakes.
    return tuple(DEMO_SOURCES) + (tuple(EXTRA_SOURCES) if extended else ())


def default_cache_dir(*, extended: bool = False) -> str:
    """The cache folder a build uses when given none: one for the demo corpus, one for the extended one."""
    return DEFAULT_EXTENDED_CACHE_DIR if extended else DEFAULT_CACHE_DIR


# A fetcher gets a package name and a work folder; it returns the downloaded .deb and its version.
Fetcher = Callable[[str, str], tuple[str, str]]


def demo_track_id(*, album: str, track: str) -> str:
    """``<album>__<track path without extension, '/' -> '__'>``, as in the dev corpus."""
    return f"{safe_name(album)}__{safe_name(os.path.splitext(track)[0].replace('/', '__'))}"


def _run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(command, capture_output=True, text=True, **kwargs)
    except FileNotFoundError as err:
        raise DemoBuildError(f"{command[0]} not found: the demo corpus needs a Debian system with apt "
                             f"and dpkg-deb ({err})") from err


def package_version(package: str) -> str | None:
    """The candidate version apt knows for ``package``, or None."""
    result = _run(["apt-cache", "show", "--no-all-versions", package])
    match = re.search(r"^Version:\s*(\S+)", result.stdout, re.M) if result.returncode == 0 else None
    return match.group(1) if match else None


_lists_updated = False


def resolve_package(package: str) -> str:
    """Version of ``package``; runs ``apt-get update`` once (as root) when apt does not know it.

    Raises
    ------
    DemoBuildError
        When apt still does not know the package.
    """
    global _lists_updated
    version = package_version(package)
    if version is None and not _lists_updated and os.geteuid() == 0:
        print(f"demo corpus: apt does not know {package}; running apt-get update", flush=True)
        _run(["apt-get", "update", "-q"])
        _lists_updated = True
        version = package_version(package)
    if version is None:
        raise DemoBuildError(f"apt does not know the package {package!r}: run 'apt-get update' as root "
                             "(Debian main must be among the apt sources)")
    return version


def download_package(package: str, workdir: str) -> tuple[str, str]:
    """Fetch ``package``'s .deb into ``workdir`` with ``apt-get download``: ``(deb path, version)``."""
    version = resolve_package(package)
    for name in os.listdir(workdir):
        if name.startswith(package + "_") and name.endswith(".deb"):
            os.remove(os.path.join(workdir, name))
    result = _run(["apt-get", "download", "-q", package], cwd=workdir)
    if result.returncode != 0:
        raise DemoBuildError(f"apt-get download {package} failed (exit {result.returncode}):\n"
                             f"{(result.stdout + result.stderr).strip()}")
    debs = [n for n in os.listdir(workdir) if n.startswith(package + "_") and n.endswith(".deb")]
    if len(debs) != 1:
        raise DemoBuildError(f"expected one .deb for {package} in {workdir}, found {debs}")
    return os.path.join(workdir, debs[0]), version


def _copy_atomic(source, destination: str) -> None:
    """Copy a readable binary stream to ``destination`` through a temp file and rename."""
    with atomic_open(destination, "wb", make_dirs=True) as out:
        shutil.copyfileobj(source, out, 1 << 20)


def _package_files(deb_path: str, patterns: Sequence[str], workdir: str) -> dict[str, str]:
    """Stream the .deb's data tarball and save the regular files whose path matches a pattern.

    Returns ``{path in the package: local copy}``; local names are numbered, so no member path can
    write outside ``workdir``.
    """
    os.makedirs(workdir, exist_ok=True)
    found: dict[str, str] = {}
    try:
        process = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", deb_path], stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE)
    except FileNotFoundError as err:
        raise DemoBuildError(f"dpkg-deb not found: the demo corpus needs a Debian system ({err})") from err
    try:
        with tarfile.open(fileobj=process.stdout, mode="r|") as tar:
            for member in tar:
                name = "/" + member.name.lstrip("./")
                if member.isfile() and any(re.match(p, name) for p in patterns):
                    local = os.path.join(workdir, f"member-{len(found):05d}")
                    _copy_atomic(tar.extractfile(member), local)
                    found[name] = local
    except tarfile.TarError as err:
        raise DemoBuildError(f"{deb_path}: cannot read the package's data tarball ({err})") from err
    finally:
        stderr = process.stderr.read().decode(errors="replace")
        process.wait()
    if process.returncode != 0:
        raise DemoBuildError(f"dpkg-deb --fsys-tarfile {deb_path} failed (exit {process.returncode}): "
                             f"{stderr.strip()}")
    return found


LEFT_OUT_KEYS = ("missing", "excluded", "undecodable", "too_short", "duplicate")


def unpack_source(*, deb_path: str, version: str, source: DemoSource | CuratedSource, corpus_dir: str,
                  workdir: str, min_track_seconds: float = MIN_TRACK_SECONDS) -> tuple[list[dict], dict]:
    """Copy ``source``'s curated tracks out of its .deb into ``corpus_dir/audio/<album>/``.

    A ``DemoSource`` gives its track list; a ``CuratedSource``'s tracks are the files its pattern
    matches, curated by ``curate_tracks``. Also copies the package's copyright file to
    ``corpus_dir/licenses/<package>.copyright``.

    Returns
    -------
    rows : list of dict
        Manifest rows (``MANIFEST_COLUMNS``), one per kept track.
    info : dict
        Package, version, .deb sha256 and size, kept track count and minutes, and the tracks left
        out with why: a ``DemoSource``'s listed tracks ``missing`` from the package, ``too_short``
        or ``undecodable``; a ``CuratedSource``'s matched files (``matched``) ``excluded``,
        ``undecodable``, ``too_short`` or ``duplicate``.
    """
    curated = isinstance(source, CuratedSource)
    members = _source_members(deb_path=deb_path, source=source, corpus_dir=corpus_dir, workdir=workdir)
    listed, left_out = _listed_tracks(source=source, members=members, min_track_seconds=min_track_seconds)
    rows = []
    for track, album, seconds in listed:
        member, local = members[track]
        track_id = demo_track_id(album=album, track=track)
        relative = os.path.join("audio", safe_name(album),
                                track_id.split("__", 1)[1] + os.path.splitext(track)[1].lower())
        os.makedirs(os.path.dirname(os.path.join(corpus_dir, relative)), exist_ok=True)
        os.replace(local, os.path.join(corpus_dir, relative))
        rows.append({"path": relative, "track_id": track_id, "label_album": album, "label_genre": "",
                     "label_instrument": "", "duration_s": f"{seconds:.2f}", "source_package": source.package,
                     "source_version": version, "source_member": member, "clip_offset_s": "",
                     "license": source.license})
    info = {"package": source.package, "version": version, "deb_sha256": file_sha256(deb_path),
            "deb_mb": round(os.path.getsize(deb_path) / 1e6, 1), "tracks": len(rows),
            "minutes": round(sum(float(r["duration_s"]) for r in rows) / 60.0, 1),
            **({"matched": len(members)} if curated else {}), **left_out}
    return rows, info


def _source_members(*, deb_path: str, source: DemoSource | CuratedSource, corpus_dir: str, workdir: str
                    ) -> dict[str, tuple[str, str]]:
    """{track path: (source member, local file)} of the files ``source`` matches in its .deb (or in the zip
    archive inside it), unpacked into ``workdir``; copies the package's copyright file to ``corpus_dir/licenses``."""
    archive_pattern = None if isinstance(source, CuratedSource) else source.archive_pattern
    copyright_pattern = r"^/usr/share/doc/%s/copyright$" % re.escape(source.package)
    wanted = [copyright_pattern, archive_pattern or source.member_pattern]
    files = _package_files(deb_path, wanted, workdir)
    members: dict[str, tuple[str, str]] = {}  # track path -> (source_member, local file)
    if archive_pattern:
        archives = [(name, local) for name, local in files.items() if re.match(archive_pattern, name)]
        if len(archives) != 1:
            raise DemoBuildError(f"{source.package}: expected one archive matching {archive_pattern}, "
                                 f"found {[name for name, _ in archives]}")
        archive_name, archive_local = archives[0]
        try:
            with zipfile.ZipFile(archive_local) as archive:
                for entry in archive.infolist():
                    match = re.match(source.member_pattern, entry.filename)
                    if match and not entry.is_dir():
                        local = os.path.join(workdir, f"zip-{len(members):05d}")
                        with archive.open(entry) as stream:
                            _copy_atomic(stream, local)
                        members[match.group(1)] = (f"{archive_name}:{entry.filename}", local)
        except zipfile.BadZipFile as err:
            raise DemoBuildError(f"{source.package}: {archive_name} is not a readable zip ({err})") from err
    else:
        for name, local in files.items():
            match = re.match(source.member_pattern, name)
            if match:
                members[match.group(1)] = (name, local)
    for name, local in files.items():
        if re.match(copyright_pattern, name):
            os.makedirs(os.path.join(corpus_dir, "licenses"), exist_ok=True)
            shutil.copyfile(local, os.path.join(corpus_dir, "licenses", f"{source.package}.copyright"))
    return members


def _listed_tracks(*, source: DemoSource | CuratedSource, members: dict[str, tuple[str, str]],
                   min_track_seconds: float) -> tuple[list[tuple[str, str, float]], dict[str, list[str]]]:
    """(track path, album, seconds) of the tracks kept, and the ones left out by reason."""
    if isinstance(source, CuratedSource):
        if not members:
            raise DemoBuildError(f"{source.package}: no file matches {source.member_pattern}: the package's "
                                 "layout changed, update its CuratedSource")
        kept, left_out = curate_tracks(files={track: local for track, (_, local) in members.items()},
                                       min_track_seconds=min_track_seconds,
                                       exclude_patterns=NON_MUSIC_PATTERNS + tuple(source.exclude_patterns))
        return [(track, source.album, seconds) for track, seconds in kept], left_out
    listed, left_out = [], {"missing": [], "too_short": [], "undecodable": []}
    for track, album in source.tracks:
        if track not in members:
            left_out["missing"].append(track)
            continue
        measured = long_enough(track=track, measure=lambda: (audio_info(members[track][1]).duration,),
                               min_track_seconds=min_track_seconds, left_out=left_out)
        if measured is not None:
            listed.append((track, album, measured[0]))
    return listed, left_out


def _spec_hash(source: DemoSource | CuratedSource, min_track_seconds: float) -> str:
    spec = {"source": asdict(source), "min_track_seconds": min_track_seconds, "version": STAMP_VERSION}
    if isinstance(source, CuratedSource):  # a DemoSource's hash stays what it was, so its stamps stay valid
        spec.update(kind="curated", curation=CURATION_VERSION, non_music=NON_MUSIC_PATTERNS)
    payload = json.dumps(spec, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _stamp_rows(stamp_path: str, spec: str, corpus_dir: str) -> tuple[list[dict], dict] | None:
    """The stamped rows of a source built with this spec whose files are all still there, else None."""
    try:
        with open(stamp_path) as f:
            stamp = json.load(f)
    except (OSError, ValueError):
        return None
    if stamp.get("spec") != spec:
        return None
    if not all(os.path.isfile(os.path.join(corpus_dir, row["path"])) for row in stamp["rows"]):
        return None
    return stamp["rows"], stamp["info"]


def write_manifest(*, corpus_dir: str, rows: Sequence[dict]) -> str:
    """Write ``corpus_dir/manifest.csv`` atomically, sorted by album then track id; returns its path."""
    path = os.path.join(corpus_dir, "manifest.csv")
    with atomic_open(path, newline="") as f:
        writer = csv.DictWriter(f, fieldnames=MANIFEST_COLUMNS)
        writer.writeheader()
        writer.writerows(sorted(rows, key=lambda r: (r["label_album"], r["track_id"])))
    return path


def build_demo_corpus(*, cache_dir: str | None = None, sources: Sequence[DemoSource | CuratedSource] | None = None,
                      fetch: Fetcher | None = None, min_track_seconds: float | None = None, extended: bool = False,
                      verbose: bool = True) -> str:
    """Build (or reuse) the demo corpus in ``cache_dir``; returns the path of its ``manifest.csv``.

    Parameters
    ----------
    cache_dir : str or None
        Where the audio, ``manifest.csv``, ``licenses/`` and ``BUILD_INFO.json`` go; None:
        ``default_cache_dir(extended=extended)`` (``data/demo_corpus`` or ``data/demo_extended_corpus``).
    sources : sequence of DemoSource or CuratedSource, or None
        The packages and their tracks; None: ``demo_sources(extended=extended)``.
    fetch : callable ``(package, workdir) -> (deb path, version)``, or None
        Downloads a package; None: ``download_package`` (apt).
    min_track_seconds : float or None
        Tracks shorter than this are left out (curation: music, not jingles); None:
        ``MIN_TRACK_SECONDS`` (30 s).
    extended : bool
        The extended corpus: the 8 demo packages and the 5 extra ones (``EXTRA_SOURCES``).
    verbose : bool
        Print a line per package built and a summary with what the curation left out.

    Raises
    ------
    DemoBuildError
        When a package cannot be fetched or unpacked, or two sources give the same track id.
    """
    started = time.time()
    # Looked up at call time, not bound as defaults, so a test can swap in offline fakes.
    sources = demo_sources(extended=extended) if sources is None else sources
    fetch = download_package if fetch is None else fetch
    min_track_seconds = MIN_TRACK_SECONDS if min_track_seconds is None else min_track_seconds
    cache_dir = os.path.abspath(cache_dir or default_cache_dir(extended=extended))
    corpus = "demo_extended" if extended else "demo"
    stamps_dir, work_root = os.path.join(cache_dir, ".stamps"), os.path.join(cache_dir, ".work")
    os.makedirs(stamps_dir, exist_ok=True)
    all_rows, infos, downloaded = [], {}, []
    for source in sources:
        stamp_path = os.path.join(stamps_dir, f"{source.key}.json")
        spec = _spec_hash(source, min_track_seconds)
        stamped = _stamp_rows(stamp_path, spec, cache_dir)
        if stamped is None:
            stamped = _fetch_source(source=source, fetch=fetch, cache_dir=cache_dir,
                                    workdir=os.path.join(work_root, source.key), min_track_seconds=min_track_seconds,
                                    stamp=(stamp_path, spec), progress_prefix=f"{corpus} corpus" if verbose else None)
            downloaded.append(source.package)
        rows, info = stamped
        all_rows += rows
        infos[source.key] = info
    shutil.rmtree(work_root, ignore_errors=True)
    ids = [row["track_id"] for row in all_rows]
    repeated = sorted({i for i in ids if ids.count(i) > 1})
    if repeated:
        raise DemoBuildError(f"demo sources give the same track id more than once: {repeated}")
    duplicates = same_bytes_rows(corpus_dir=cache_dir, rows=all_rows)
    dropped = {d["path"] for d in duplicates}
    # A dropped duplicate's file stays: its source's stamp lists it, and deleting it would refetch the package.
    _remove_unlisted_audio(cache_dir, {row["path"] for row in all_rows})
    all_rows = [row for row in all_rows if row["path"] not in dropped]
    manifest = write_manifest(corpus_dir=cache_dir, rows=all_rows)
    albums = _album_counts(all_rows)
    curation = {key: {k: len(info[k]) for k in LEFT_OUT_KEYS if info.get(k)} for key, info in infos.items()}
    curation = {key: counts for key, counts in curation.items() if counts}
    if duplicates:
        curation["across_sources"] = {"duplicate": len(duplicates)}
    if downloaded or not os.path.exists(os.path.join(cache_dir, "BUILD_INFO.json")):
        write_json_atomic(os.path.join(cache_dir, "BUILD_INFO.json"), {
            "corpus": corpus, "tracks": len(all_rows), "albums": dict(sorted(albums.items())),
            "total_minutes": round(sum(a["minutes"] for a in albums.values()), 1),
            "built_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "build_seconds": round(time.time() - started, 1), "min_track_seconds": min_track_seconds,
            "left_out": curation, "duplicates_across_sources": duplicates, "sources": infos})
    if verbose and downloaded:
        _print_summary(corpus=corpus, cache_dir=cache_dir, tracks=len(all_rows), albums=len(albums),
                       seconds=time.time() - started, curation=curation, duplicates=duplicates)
    return manifest


def _fetch_source(*, source: DemoSource | CuratedSource, fetch: Fetcher, cache_dir: str, workdir: str,
                  min_track_seconds: float, stamp: tuple[str, str], progress_prefix: str | None
                  ) -> tuple[list[dict], dict]:
    """Download ``source``'s package into a fresh ``workdir``, unpack its tracks into ``cache_dir`` and stamp it.

    ``stamp``: (stamp file, spec hash). Returns :func:`unpack_source`'s (rows, info); prints a line
    starting with ``progress_prefix`` unless None.
    """
    shutil.rmtree(workdir, ignore_errors=True)
    os.makedirs(workdir)
    t0 = time.time()
    deb_path, version = fetch(source.package, workdir)
    rows, info = unpack_source(deb_path=deb_path, version=version, source=source, corpus_dir=cache_dir,
                               workdir=os.path.join(workdir, "files"), min_track_seconds=min_track_seconds)
    shutil.rmtree(workdir, ignore_errors=True)
    write_json_atomic(stamp[0], {"spec": stamp[1], "rows": rows, "info": info})
    if progress_prefix is not None:
        print(f"{progress_prefix}: {source.key:<12} {source.package} {version}: {len(rows)} tracks, "
              f"{info['minutes']} min ({info['deb_mb']} MB, {time.time() - t0:.1f}s)"
              + _left_out_summary(info), flush=True)
    return rows, info


def _album_counts(rows: Sequence[dict]) -> dict[str, dict]:
    """{album: {"tracks", "minutes" (rounded to 0.1)}} of manifest rows."""
    albums: dict[str, dict] = {}
    for row in rows:
        album = albums.setdefault(row["label_album"], {"tracks": 0, "minutes": 0.0})
        album["tracks"] += 1
        album["minutes"] += float(row["duration_s"]) / 60.0
    for album in albums.values():
        album["minutes"] = round(album["minutes"], 1)
    return albums


def _print_summary(*, corpus: str, cache_dir: str, tracks: int, albums: int, seconds: float,
                   curation: dict[str, dict[str, int]], duplicates: Sequence[dict]) -> None:
    """The build's last lines: tracks, albums, what the curation left out, the duplicates across sources."""
    totals: dict[str, int] = {}
    for counts in curation.values():
        for reason, count in counts.items():
            totals[reason] = totals.get(reason, 0) + count
    left_out = ", ".join(f"{count} {reason.replace('_', ' ')}" for reason, count in sorted(totals.items()))
    print(f"{corpus} corpus in {cache_dir}: {tracks} tracks, {albums} albums "
          f"({seconds:.1f}s); left out: {left_out or 'none'}"
          + (" (see BUILD_INFO.json)" if left_out else ""), flush=True)
    for duplicate in duplicates:
        print(f"  duplicate: {duplicate['path']}: same bytes as {duplicate['same_as']}", flush=True)


def _left_out_summary(info: dict) -> str:
    """``; left out 3: 1 undecodable (x.ogg), 2 too short`` for a source's info, or ``""``."""
    parts = []
    for reason in LEFT_OUT_KEYS:
        entries = info.get(reason, [])
        if not entries:
            continue
        part = f"{len(entries)} {reason.replace('_', ' ')}"
        if reason in ("undecodable", "duplicate", "missing"):  # few, and each worth a look
            part += " (" + "; ".join(entry.split(": ", 1)[0] for entry in entries) + ")"
        parts.append(part)
    total = sum(len(info.get(reason, [])) for reason in LEFT_OUT_KEYS)
    return f"; left out {total}: " + ", ".join(parts) if parts else ""


def same_bytes_rows(*, corpus_dir: str, rows: Sequence[dict]) -> list[dict]:
    """Manifest rows whose file has the same bytes as another's, all but the first by sorted path.

    Only files of equal size are hashed (sha256), so a corpus without duplicates costs a ``stat``
    per file.

    Returns
    -------
    list of dict
        ``{"path", "track_id", "same_as" (the kept row's path), "sha256"}`` per row to drop.
    """
    by_path = {os.path.join(corpus_dir, row["path"]): row for row in sorted(rows, key=lambda r: r["path"])}
    repeats = repeated_content(list(by_path))
    return sorted(({"path": by_path[path]["path"], "track_id": by_path[path]["track_id"],
                    "same_as": by_path[first]["path"], "sha256": digest}
                   for path, (first, digest) in repeats.items()), key=lambda d: d["path"])


def _remove_unlisted_audio(cache_dir: str, listed: set[str]) -> None:
    """Delete audio no longer in the manifest (after a spec change), so the folder matches it."""
    for dirpath, _, filenames in os.walk(os.path.join(cache_dir, "audio")):
        for filename in filenames:
            relative = os.path.relpath(os.path.join(dirpath, filename), cache_dir)
            if relative not in listed:
                os.remove(os.path.join(cache_dir, relative))
