"""Dataset preparation (paper 4.3 pre-processing, 5.1.1 datasets): ``python -m data_prep.build``.

``prepare(...)`` (from ``data_prep.build``) prepares a dataset in-process; it is imported lazily here so
that ``python -m data_prep.build`` does not load the module twice.
"""
from __future__ import annotations

__all__ = ["prepare"]


def __getattr__(name: str):
    if name == "prepare":
        from data_prep.build import prepare  # why: on first use, so `python -m data_prep.build` loads it once

        return prepare
    raise AttributeError(f"module 'data_prep' has no attribute {name!r}")
