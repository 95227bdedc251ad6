"""What a run prints while it trains.

On a terminal Lightning's progress bar redraws itself in place. Anywhere else (CI, ``nohup``,
a cluster's log file) a bar is a stream of carriage returns, so :class:`EpochLines` prints
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
import math
import os
import sys
import time
from typing import Any, Iterator, Optional

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


def __getattr__(name: str) -> Any:
    """``EpochLines`` is built on first use: the rest of this module (``emit``, ``clock``,
    ``heartbeat``) serves processes that never import Lightning, such as the demo's parent."""
    if name == "EpochLines":
        cls = _epoch_lines_class()
        globals()["EpochLines"] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _epoch_lines_class() -> type:
    from lightning.pytorch.callbacks import Callback

    class EpochLines(Callback):
        """One line per training epoch: mean training loss, the monitored validation metric,
        the best value so far (and its epoch), seconds per epoch and the ETA; inside a long epoch,
        a line every ``within_epoch_every`` seconds with the batch count and the epoch's ETA."""

        within_epoch_every = 20.0

        def __init__(self, label: str, monitor: str, mode: str = "max") -> None:
            self.label, self.monitor, self.mode = label, monitor, mode
            self.best: Optional[float] = None
            self.best_epoch: Optional[int] = None
            self._run_start = self._epoch_start = 0.0
            self._epochs_timed = 0
            self._loss_sum, self._loss_count = 0.0, 0
            self._last_line = 0.0

        def on_train_start(self, trainer, pl_module) -> None:
            self._run_start = time.perf_counter()
            self._epochs_timed = 0
            score = getattr(trainer.checkpoint_callback, "best_model_score", None)  # a resumed run's best
            if score is not None and math.isfinite(float(score)):
                self.best = float(score)

        def on_train_epoch_start(self, trainer, pl_module) -> None:
            self._epoch_start = self._last_line = time.perf_counter()
            self._loss_sum, self._loss_count = 0.0, 0

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
            if loss is not None:
                value = float(loss)
                if math.isfinite(value):
                    self._loss_sum += value
                    self._loss_count += 1
            now = time.perf_counter()
            if now - self._last_line >= self.within_epoch_every and trainer.is_global_zero:
                self._last_line = now
                done, total = batch_idx + 1, trainer.num_training_batches
                parts = [f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs}"]
                if isinstance(total, int) and total > 0:
                    parts.append(f"batch {done}/{total}")
                if self._loss_count:
                    parts.append(f"loss {self._loss_sum / self._loss_count:.4f}")
                if isinstance(total, int) and total > 0:
                    parts.append(f"epoch ETA {clock((now - self._epoch_start) / done * (total - done))}")
                emit(f"[{self.label}] " + "  ".join(parts))

        def on_train_epoch_end(self, trainer, pl_module) -> None:
            """Runs after the epoch's validation and before the checkpoint and early-stopping
            callbacks (Lightning calls monitoring callbacks last)."""
            if not trainer.is_global_zero:
                return
            epoch = trainer.current_epoch  # 0-based; still this epoch's number here
            self._epochs_timed += 1
            seconds = time.perf_counter() - self._epoch_start
            pace = (time.perf_counter() - self._run_start) / self._epochs_timed
            value = trainer.callback_metrics.get(self.monitor)
            value = None if value is None else float(value)
            if value is not None and math.isfinite(value) and (
                    self.best is None or (value > self.best if self.mode == "max" else value < self.best)):
                self.best, self.best_epoch = value, epoch + 1
            total = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else epoch + 1
            parts = [f"epoch {epoch + 1}/{total}"]
            if self._loss_count:
                parts.append(f"loss {self._loss_sum / self._loss_count:.4f}")
            name = self.monitor.split("/", 1)[-1]
            parts.append(f"val {name} " + ("—" if value is None else f"{value:.4f}"))
            if self.best is not None:
                parts.append(f"best {self.best:.4f}" + (f" (epoch {self.best_epoch})" if self.best_epoch else ""))
            parts += [f"{seconds:.1f} s/epoch", f"ETA {clock(pace * max(0, total - epoch - 1))}"]
            self._last_line = time.perf_counter()
            emit(f"[{self.label}] " + "  ".join(parts))

    return EpochLines
