"""The project's tiny development corpus (20 real tracks, 4 albums), for tests and benchmarks.

It is built by the shared script ``<repo>/../shared/data/build_dev_corpus.sh --tiny`` (apt downloads,
about 180 MB) into ``<repo>/.cache/tiny_corpus``, once: a folder with a ``manifest.csv`` is reused.
"""
from __future__ import annotations

import os
import shutil
import subprocess

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_CORPUS_SCRIPT = os.path.join(os.path.dirname(REPO_ROOT), "shared", "data", "build_dev_corpus.sh")
TINY_CORPUS_CACHE = os.path.join(REPO_ROOT, ".cache", "tiny_corpus")


class DevCorpusUnavailable(RuntimeError):
    """The tiny corpus is not built and cannot be built here; the message says why."""


def tiny_dev_corpus(*, cache_dir: str = TINY_CORPUS_CACHE, script: str = TINY_CORPUS_SCRIPT,
                    timeout_s: float = 600.0) -> str:
    """The tiny corpus folder (holding ``manifest.csv``), built first when needed.

    Raises
    ------
    DevCorpusUnavailable
        When the script is not reachable, apt/dpkg-deb are missing, or the build fails or times out.
    """
    if os.path.isfile(os.path.join(cache_dir, "manifest.csv")):
        return cache_dir
    if not os.path.isfile(script):
        raise DevCorpusUnavailable(f"the dev-corpus script is not reachable at {script}")
    missing = [tool for tool in ("apt-get", "dpkg-deb") if not shutil.which(tool)]
    if missing:
        raise DevCorpusUnavailable(f"{' and '.join(missing)} not found: cannot build the tiny corpus")
    try:
        result = subprocess.run(["bash", script, "--tiny", cache_dir], capture_output=True, text=True,
                                timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise DevCorpusUnavailable(f"building the tiny corpus took over {timeout_s:.0f}s (no network?)")
    if result.returncode != 0:
        raise DevCorpusUnavailable("could not build the tiny corpus (can apt download?): "
                                   + result.stderr.strip()[-500:])
    return cache_dir
