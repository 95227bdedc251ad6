"""The plain epoch lines of a run (see :mod:`mmbalance.training.progress`)."""

from __future__ import annotations

import math
import time
from typing import Optional

from lightning.pytorch.callbacks import Callback

from .progress import clock, emit


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
