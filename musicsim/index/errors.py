"""The index package's error: a file the index cannot use (a leaf: it imports nothing of the package)."""
from __future__ import annotations


class IndexFileError(ValueError):
    """An index directory or embeddings file that cannot be used; the message names the file and why."""


__all__ = ["IndexFileError"]
