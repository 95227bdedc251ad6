"""What a run prints while it trains.

On a terminal Lightning's progress bar redraws itself in place. Anywhere else (CI, ``nohup``,
a cluster's log file) a bar is a stream of carriage returns, so :class:`~mmbalance.training.epoch_lines.EpochLines` prints
one plain line per epoch instead, with the main metrics and an ETA::

    [mcr] epoch 3/30  loss 1.2345  val accuracy 0.4567  best 0.4600 (epoch 2)  4.1 s/epoch  ETA 0:01:50

The ETA assumes every remaining epoch up to ``trainer.max_epochs`` runs at the mean pace so
far; early stopping can end the run sooner. An epoch that runs longer than
:attr:`EpochLines.within_epoch_every` seconds (a real dataset) also gets a line at that pace
inside it (``epoch 3/30  batch 120/400  loss ...  ETA of the epoch``), so a run is never
silent for long. ``trainer.progress=false`` prints neither.
Every line goes to stdout through :func:`emit`, flushed, from rank 0 only. Inside
:func:`heartbeat` (``demo``: many runs, one line each) a run's own lines are thinned to one
every few seconds, so a long run is never silent and a short one adds nothing.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from typing import Any, Iterator

from ..config import RunConfig


class _Heartbeat:
    every = 0.0  # seconds between a run's lines; 0: every line
    prefix = ""
    last = 0.0  # time.monotonic() of the last line printed


_BEAT = _Heartbeat()


def emit(text: str, force: bool = False) -> None:
    """Prints one progress line to stdout, flushed; inside :func:`heartbeat` only if
    ``force`` or the last line is ``every`` seconds old (and then with its prefix)."""
    now = time.monotonic()
    thinned = _BEAT.every > 0 and not force
    if thinned and now - _BEAT.last < _BEAT.every:
        return
    _BEAT.last = now
    print((_BEAT.prefix if thinned else "") + text, flush=True)


@contextlib.contextmanager
def heartbeat(every_s: float, prefix: str = "") -> Iterator[None]:
    """Within: runs print a line only when the last one is ``every_s`` seconds old, each
    after ``prefix``, and never a bar (a bar would overwrite the caller's lines)."""
    saved = (_BEAT.every, _BEAT.prefix)
    _BEAT.every, _BEAT.prefix = float(every_s), prefix
    try:
        yield
    finally:
        _BEAT.every, _BEAT.prefix = saved


def use_bar(stream: Any = None) -> bool:
    """True when ``stream`` (default stdout) is a terminal, where a redrawn bar belongs, and
    no :func:`heartbeat` is thinning the lines."""
    if _BEAT.every > 0:
        return False
    stream = sys.stdout if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # a closed or replaced stream
        return False


def run_label(cfg: RunConfig) -> str:
    """``mcr``, or ``unimodal:x1`` for a one-modality run (a pipeline's stage)."""
    modality = getattr(cfg.hparams, "modality", None)
    return f"{cfg.method}:{modality}" if modality else cfg.method


def say(cfg: RunConfig, text: str) -> None:
    """Prints one progress line (``[label] text``) unless ``trainer.progress`` is off or
    this is not rank 0."""
    if cfg.trainer.progress and _rank() == 0:
        emit(f"[{run_label(cfg)}] {text}")


def clock(seconds: float) -> str:
    """``H:MM:SS``."""
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def _rank() -> int:
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")) or 0)
