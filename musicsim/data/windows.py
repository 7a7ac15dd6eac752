"""Windows of a streamed sequence, each with the context before it: how long audio is embedded exactly.

A learned model whose output at a step depends on a bounded span of earlier steps (the WaveNet's
receptive field) embeds a long sequence window by window: each window's row carries ``context`` steps
before it and ``lookahead`` after, so its own part is computed as in the whole sequence. Used by the
export (`musicsim.embedder`) and by a run's own embedding of its tracks (`musicsim.train.estimator`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np


@dataclass(frozen=True)
class WindowRow:
    """One window of a file, as fed to the windowed model: its samples and where its own part starts."""

    index: int  # into the paths
    audio: np.ndarray  # float32 [steps]: context, the window itself, lookahead
    skip: int  # final-conv steps of the context
    last: bool  # the file's last window


def iter_window_rows(*, index: int, chunks: Iterator[np.ndarray], window: int, context: int, lookahead: int,
                     unit: int) -> Iterator[WindowRow]:
    """Cut a streamed sequence into rows of `musicsim.models.wavenet.window_features`.

    Window ``k`` owns steps ``[k * window, (k + 1) * window)``; its row starts ``context`` steps
    earlier (at 0 for the first windows) and ends ``lookahead`` steps later (or at the end). Only
    about one row of the sequence is held at a time.

    Parameters
    ----------
    index : int, the file's index, copied into each row
    chunks : iterator of float32 ``[n_i]`` consecutive pieces of the sequence
    window, context, unit : int, steps; ``window`` and ``context`` multiples of ``unit``
    lookahead : int >= 0, steps

    Yields
    ------
    WindowRow, the last one with ``last=True`` (none when the sequence is empty)
    """
    buffer, buffer_start, own_start = np.zeros(0, np.float32), 0, 0
    pending: WindowRow | None = None  # held back one step: only the next chunk tells whether it was the last
    for chunk in chunks:
        buffer = np.concatenate([buffer, np.asarray(chunk, np.float32).reshape(-1)])
        while buffer_start + buffer.size > own_start + window + lookahead:
            if pending is not None:
                yield pending
            lo = max(0, own_start - context)
            pending = WindowRow(index=index, audio=buffer[lo - buffer_start: own_start + window + lookahead - buffer_start],
                           skip=(own_start - lo) // unit, last=False)
            own_start += window
            keep_from = max(0, own_start - context)
            buffer, buffer_start = buffer[keep_from - buffer_start:].copy(), keep_from
    end = buffer_start + buffer.size
    if own_start < end:
        if pending is not None:
            yield pending
        lo = max(0, own_start - context)
        yield WindowRow(index=index, audio=buffer[lo - buffer_start:], skip=(own_start - lo) // unit, last=True)
    elif pending is not None:
        yield WindowRow(index=pending.index, audio=pending.audio, skip=pending.skip, last=True)
