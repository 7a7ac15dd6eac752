"""What the HTTP handlers answer from: one loaded index version, its tracks, audio files, model and map.

``SearchService`` answers every request of one index version (``musicsim.search.holder`` swaps in
the next one); ``ServingResources`` is what successive versions share: the upload directory, the
upload model and which audio files embed cover art.

Only files the index lists are served: ``audio_file`` and ``cover_art`` look the track id up in the
index's metadata (resolved once per index version) and no part of a request path is ever joined to
a file-system path. No answer names a server-side path except an M3U playlist, whose entries are the
files' paths (absolute, or relative to ``m3u_root``).
"""
from __future__ import annotations

import logging
import mimetypes
import os
import shutil
import stat
import tempfile
import threading
from typing import Any, Callable, Sequence
from urllib.parse import quote

import numpy as np
import soundfile as sf
from starlette.requests import Request

import musicsim.index
from musicsim.index import IndexBackend
from musicsim.search import catalog_map, playlist
from musicsim.search.errors import ServiceError
from musicsim.search.query import UnembeddableQueryError, embed_query_file, load_query_embedder, query_model_dir
from musicsim.search.tracks import common_shown_root, describe_track, folded
from musicsim.search.uploads import (DEFAULT_MAX_UPLOAD_MB, check_decodes, check_upload_limit, private_paths_out,
                                     receive_upload)
from musicsim.data.tags import read_cover_art

LOG = logging.getLogger("musicsim.search")
AUDIO_TYPES = {".wav": "audio/wav", ".flac": "audio/flac", ".ogg": "audio/ogg", ".oga": "audio/ogg",
               ".opus": "audio/ogg", ".mp3": "audio/mpeg", ".m4a": "audio/mp4", ".aac": "audio/aac",
               ".aif": "audio/aiff", ".aiff": "audio/aiff", ".wma": "audio/x-ms-wma", ".webm": "audio/webm"}
WARM_UP_RATE = 22050
WARM_UP_SECONDS = 3


class ServingResources:
    """What the services of successive index versions share: the upload directory, the upload model
    and which audio files embed cover art.

    Parameters
    ----------
    upload_dir : where uploads are written; a private temporary directory by default (removed by
        ``close``)
    """

    def __init__(self, *, upload_dir: str | None = None):
        self._own_upload_dir = upload_dir is None
        if upload_dir is None:
            # Uploads live here, readable by this user only, removed with the service.
            upload_dir = tempfile.mkdtemp(prefix="musicsim-uploads-")
            os.chmod(upload_dir, 0o700)
        self.upload_dir = upload_dir
        self._embedders: dict[tuple, Any] = {}
        self.embed_lock = threading.Lock()
        # What /healthz says of the upload model: none, not loaded, loading, ready, or failed: why.
        self.model_states: dict[tuple, str] = {}
        self._art: dict[tuple, bool] = {}
        self._art_lock = threading.Lock()

    def close(self) -> None:
        """Remove the upload directory (when it is this object's own)."""
        if self._own_upload_dir:
            shutil.rmtree(self.upload_dir, ignore_errors=True)

    @staticmethod
    def model_key(index: IndexBackend) -> tuple:
        """What identifies an index's upload model: a new index version with the same run keeps its model."""
        return (index.model.get("model_dir"), index.model.get("name"), index.dim, index.similarity)

    def has_art(self, path: str) -> bool:
        """Whether the audio file at ``path`` embeds a picture (looked at once per file version)."""
        try:
            status = os.stat(path)
        except OSError:
            return False
        key = (path, status.st_mtime_ns, status.st_size)
        with self._art_lock:
            known = self._art.get(key)
        if known is None:
            known = read_cover_art(path=path) is not None
            with self._art_lock:
                self._art[key] = known
        return known


class SearchService:
    """What the HTTP handlers answer from: one loaded index version, its audio files, its model, its map.

    Parameters
    ----------
    index_dir : an index written by ``musicsim.index`` or ``musicsim-scan``
    max_upload_mb : largest accepted upload, in MiB
    map_method : 'pca' or 'umap', the projection of ``/api/map``
    index : the loaded index of ``index_dir``, to save loading it again
    resources : what successive services share (upload directory, model, art); a new one by default
    m3u_root : M3U playlists give paths relative to this folder (absolute paths when None)
    version : the index version (config.json's write counter) this service answers from

    Attributes
    ----------
    track_ids : list of str, the index's tracks in index order
    version : int or None

    The public description of a track (``track``) has ``track_id, title, artist, album, album_artist,
    track_number, disc, year, genre, duration_s, group, relative_path, file, audio_url, art_url``; its
    absolute path stays server-side (``audio_file``).
    """

    def __init__(self, *, index_dir: str, max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB, map_method: str = "pca",
                 index: IndexBackend | None = None, resources: ServingResources | None = None,
                 m3u_root: str | None = None, version: int | None = None):
        self.max_upload_bytes = check_upload_limit(max_upload_mb)
        if map_method not in catalog_map.METHODS:
            raise ValueError(f"map must be one of {catalog_map.METHODS}, got {map_method!r}")
        self.index_dir = os.path.abspath(index_dir)
        self.index = index or musicsim.index.open(self.index_dir)
        self.version = version if version is not None else getattr(self.index, "version", None)
        self.map_method = map_method
        self.m3u_root = os.path.abspath(m3u_root) if m3u_root else None
        self._own_resources = resources is None
        self.resources = resources or ServingResources()
        self.upload_dir = self.resources.upload_dir
        self._model_key = ServingResources.model_key(self.index)
        self.resources.model_states.setdefault(
            self._model_key, "not loaded" if self.index.model.get("model_dir") else "none")
        self.track_ids = list(self.index.track_ids)
        self._columns = set(self.index.metadata_columns)
        self.metadata_rows = [self.index.metadata(track_id=t) if self._columns else {} for t in self.track_ids]
        paths = [str(row["path"]) for row in self.metadata_rows if row.get("path")]
        shown_root = common_shown_root(paths) if "relative_path" not in self._columns else None
        real_folders: dict[str, str] = {}
        self._tracks = [describe_track(track_id, row, columns=self._columns, shown_root=shown_root,
                                       real_folders=real_folders)
                        for track_id, row in zip(self.track_ids, self.metadata_rows)]
        self._track_of = {t["track_id"]: t for t in self._tracks}
        self._album_members: dict[Any, list[str]] = {}
        for entry in self._tracks:
            if entry["_album_key"] is not None:
                self._album_members.setdefault(entry["_album_key"], []).append(entry["track_id"])
        self.groups = sorted({str(t["group"]) for t in self._tracks if t["group"] is not None})
        self._map: np.ndarray | None = None
        self._map_lock = threading.Lock()
        self._derived: dict[str, Any] = {}
        self._derived_lock = threading.Lock()

    def close(self, *, release_index: bool = True) -> None:
        """Release the index (a database connection; not with ``release_index=False``) and, when they are
        this service's own, the uploads."""
        if release_index:
            self.index.close()
        if self._own_resources:
            self.resources.close()

    @property
    def model_state(self) -> str:
        """The upload model's state: none, not loaded, loading, ready, or failed: why."""
        return self.resources.model_states.get(self._model_key, "none")

    @model_state.setter
    def model_state(self, value: str) -> None:
        self.resources.model_states[self._model_key] = value

    def derived(self, name: str, build: Callable[[], Any]) -> Any:
        """``build()``'s result, computed once for this index version (e.g. a router's view of the catalog)."""
        with self._derived_lock:
            if name not in self._derived:
                self._derived[name] = build()
            return self._derived[name]

    # ------------------------------------------------------------------ catalog
    # ------------------------------------------------------------------ catalog
    def _entry(self, track_id: str) -> dict[str, Any]:
        """The record of one track, private entries included (404 when unknown)."""
        entry = self._track_of.get(track_id)
        if entry is None:
            raise ServiceError(404, f"unknown track id {track_id!r}: the index holds {len(self.track_ids)} tracks")
        return entry

    def track(self, track_id: str) -> dict[str, Any]:
        """The public description of one track (404 when unknown); ``art_url`` is set when its file embeds art."""
        entry = self._entry(track_id)
        public = {key: value for key, value in entry.items() if not key.startswith("_")}
        quoted = quote(track_id, safe="")
        public["audio_url"] = f"/api/audio/{quoted}" if entry["_audio_file"] else None
        has_art = bool(entry["_audio_file"]) and self.resources.has_art(entry["_audio_file"])
        public["art_url"] = f"/api/art/{quoted}" if has_art else None
        return public

    def tracks(self, *, query: str = "", limit: int = 50, offset: int = 0) -> dict[str, Any]:
        """Tracks whose shown fields (id, tags, relative path, group) contain every word of ``query``
        (case-insensitive), a page of them."""
        words = folded(query).split()
        rows = (range(len(self._tracks)) if not words
                else [row for row, entry in enumerate(self._tracks) if all(w in entry["_haystack"] for w in words)])
        page = rows[offset:offset + limit]
        return {"total": len(rows), "offset": offset, "limit": limit, "query": query,
                "tracks": [self.track(self.track_ids[row]) for row in page]}

    def info(self) -> dict[str, Any]:
        """The index at a glance, for the page's header."""
        return {"summary": self.index.summary(), "tracks": len(self.track_ids), "dim": self.index.dim,
                "similarity": self.index.similarity, "model": self.index.model.get("name"),
                "file_queries": bool(self.index.model.get("model_dir")), "groups": self.groups,
                "max_upload_mb": self.max_upload_bytes / (1024 * 1024), "map": self.map_method,
                "with_audio": sum(1 for t in self._tracks if t["_audio_file"]), "version": self.version}

    def _results(self, found: Sequence[tuple[str, float]]) -> list[dict[str, Any]]:
        return [{"rank": rank, "score": float(score), **self.track(track_id)}
                for rank, (track_id, score) in enumerate(found, start=1)]

    # ------------------------------------------------------------------ queries
    def same_album(self, track_id: str) -> list[str]:
        """The tracks of ``track_id``'s album, itself included (the album tag, else group, else folder)."""
        key = self._entry(track_id)["_album_key"]
        return list(self._album_members.get(key, [track_id])) if key is not None else [track_id]

    def similar(self, *, track_id: str, k: int, diversity: float, exclude_same_album: bool) -> dict[str, Any]:
        """Neighbours of a track of the index, itself (and with ``exclude_same_album`` its album) left out."""
        query = self.track(track_id)
        if exclude_same_album:
            if self._entry(track_id)["_album_key"] is None:
                raise ServiceError(400, "exclude_same_album needs album tags, groups or paths, and this index "
                                        "has none")
            found = self.index.search(queries=self.index.searched_vector(track_id=track_id)[None, :], k=k,
                                      exclude_ids=[self.same_album(track_id)], diversity=diversity,
                                      query_track_ids=[track_id])[0]
        else:
            found = self.index.search_by_id(track_id=track_id, k=k, diversity=diversity)
        return {"query": query, "results": self._results(found)}

    def embedder(self):
        """The index's model (loaded once, on first use, and kept across index versions made by the same
        run), checked against the index (``musicsim.search.query.load_query_embedder``)."""
        try:
            model_dir = query_model_dir(index=self.index, index_dir=self.index_dir)
        except ValueError as error:
            raise ServiceError(400, f"uploaded files cannot be embedded: {error}") from None
        with self.resources.embed_lock:
            embedder = self.resources._embedders.get(self._model_key)
            if embedder is None:
                self.model_state = "loading"
                try:
                    embedder = load_query_embedder(index=self.index, index_dir=self.index_dir)
                except (OSError, ValueError) as error:
                    self.model_state = f"failed: {error}"
                    raise ServiceError(500, f"cannot load the index's model {model_dir}: {error}") from error
                self.resources._embedders[self._model_key] = embedder
                self.model_state = "ready"
            return embedder

    @property
    def _embedder(self):
        """The loaded upload model, or None."""
        return self.resources._embedders.get(self._model_key)

    def warm_up(self) -> None:
        """Load the model and embed a generated tone once, so the first upload does not pay for the
        model's loading and its libraries' first-call compilation; failures are logged, not raised."""
        try:
            embedder = self.embedder()
            self.model_state = "loading"
            rate, count = WARM_UP_RATE, WARM_UP_SECONDS * WARM_UP_RATE
            tone = 0.3 * np.sin(2 * np.pi * 440.0 * np.arange(count) / rate) * np.linspace(0.2, 1.0, count)
            handle, path = tempfile.mkstemp(dir=self.upload_dir, prefix="warm-up-", suffix=".wav")
            os.close(handle)
            try:
                sf.write(path, tone.astype(np.float32), rate)
                with self.resources.embed_lock:
                    embedder.embed_paths(paths=[path], workers=1, progress=False)
            finally:
                os.unlink(path)
            self.model_state = "ready"
        except Exception as error:  # noqa: BLE001 - the first real upload reports the problem
            LOG.warning("model warm-up failed: %s", error)
            if self._embedder is not None:
                self.model_state = "ready"  # loaded; only the warm-up embedding failed

    def similar_to_file(self, *, path: str, name: str, k: int, diversity: float) -> dict[str, Any]:
        """Neighbours of an audio file (an upload saved at ``path``; ``name`` is what the client called it)."""
        embedder = self.embedder()
        check_decodes(path=path, name=name, upload_dir=self.upload_dir)
        with self.resources.embed_lock:  # one model, one query at a time (estimators and workers are not shared)
            try:
                vectors = embed_query_file(embedder=embedder, query_path=path)
            except UnembeddableQueryError as error:
                reason = private_paths_out(error.reason, path=path, name=name, upload_dir=self.upload_dir)
                raise ServiceError(422, f"the upload {name!r} cannot be embedded: {reason}") from None
        # A file's raw embedding goes through the index's catalog standardisation (indexes without one
        # return it as given); indexes older than ``prepare_query`` search it as it is.
        prepare = getattr(self.index, "prepare_query", None)
        found = self.index.search(queries=prepare(vectors) if prepare else vectors, k=k, diversity=diversity)[0]
        return {"query": {"file": name}, "results": self._results(found)}

    def playlist(self, *, seed: str | None, source: str | None, target: str | None, n: int,
                 diversity: float) -> dict[str, Any]:
        """A radio from ``seed``, or a morph from ``source`` to ``target``."""
        if seed is not None and (source is None and target is None):
            self.track(seed)
            entries = playlist.radio(index=self.index, seed=seed, n=n, diversity=diversity)
            kind, name = "radio", f"radio from {self._entry(seed)['title']}"
        elif seed is None and source is not None and target is not None:
            self.track(source), self.track(target)
            entries = playlist.morph(index=self.index, source=source, target=target, n=n)
            kind, name = "morph", f"{self._entry(source)['title']} to {self._entry(target)['title']}"
        else:
            raise ServiceError(400, "give either seed=ID (a radio) or both from=ID and to=ID (a morph)")
        return {"kind": kind, "name": name,
                "tracks": [{**entry, **self.track(entry["track_id"])} for entry in entries]}

    def playlist_m3u8(self, answer: dict[str, Any]) -> str:
        """A playlist answer (``playlist``) as an extended M3U in UTF-8: its tracks' files, absolute or
        relative to ``m3u_root``."""
        entries = []
        for track in answer["tracks"]:
            path = self._entry(track["track_id"])["_path"]
            if path:
                entries.append(playlist.M3UEntry(path=os.path.abspath(path), title=track["title"],
                                                 artist=track["artist"], duration_s=track["duration_s"]))
        return playlist.to_m3u8(entries=entries, root=self.m3u_root, name=answer.get("name"))

    def catalog_map(self) -> dict[str, Any]:
        """2-D coordinates of every track, computed once per index version (and cached beside the index)."""
        with self._map_lock:
            if self._map is None:
                self._map = catalog_map.catalog_map(index=self.index, index_dir=self.index_dir,
                                                    method=self.map_method)
        coordinates = np.round(self._map.astype(np.float64), 5)
        return {"method": self.map_method, "track_ids": self.track_ids,
                "x": coordinates[:, 0].tolist(), "y": coordinates[:, 1].tolist(),
                "groups": [t["group"] for t in self._tracks], "titles": [t["title"] for t in self._tracks]}

    # ------------------------------------------------------------------ audio, art and uploads
    def audio_file(self, track_id: str) -> tuple[str, str]:
        """``(path, media type)`` of a track's audio, as resolved for this index version (404 otherwise)."""
        path = self._entry(track_id)["_audio_file"]
        if not path:
            raise ServiceError(404, f"the index lists no audio file for track {track_id!r}")
        try:
            status = os.lstat(path)
        except OSError:
            raise ServiceError(404, f"the audio file of track {track_id!r} is gone") from None
        # Replaced by a symlink (or a folder in its path by one) since it was indexed: not what was indexed.
        if not stat.S_ISREG(status.st_mode) or os.path.realpath(path) != path:
            raise ServiceError(404, f"the audio file of track {track_id!r} is no longer a regular file")
        suffix = os.path.splitext(path)[1].lower()
        return path, AUDIO_TYPES.get(suffix) or mimetypes.guess_type(path)[0] or "application/octet-stream"

    def cover_art(self, track_id: str) -> tuple[bytes, str] | None:
        """The picture embedded in the track's indexed file, ``(image bytes, mime type)``, or None
        (404 for an unknown track or a file that is gone)."""
        path, _ = self.audio_file(track_id)
        return read_cover_art(path=path)

    async def receive_upload(self, request: Request) -> tuple[str, str]:
        """Stream a request's audio into a private temporary file: ``(path, client's name)``
        (``musicsim.search.uploads.receive_upload``, within this service's upload limit)."""
        return await receive_upload(request, upload_dir=self.upload_dir, limit=self.max_upload_bytes)
