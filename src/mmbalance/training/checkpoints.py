"""``last.ckpt`` at every epoch end, every N steps or M minutes, and on SIGINT/SIGTERM;
``best.ckpt`` that survives the run folder being moved.

Lightning's ``ModelCheckpoint(save_last=True)`` writes ``last`` only when it saves a top-k
checkpoint, i.e. when validation improves, so a resume would repeat every epoch since the
best one. Here ``best.ckpt`` stays with ``ModelCheckpoint`` (``save_last=False``) and
:class:`LastCheckpoint` owns ``last.ckpt``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional

from lightning.pytorch.callbacks import Checkpoint, ModelCheckpoint

from ..errors import Interrupted

_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class _SignalState:
    signum: Optional[int] = None  # the first SIGINT/SIGTERM received while a run trains
    depth = 0  # nesting of graceful_signals (a pipeline's stages are nested train() calls)
    previous: Dict[int, Any] = {}


STATE = _SignalState()


def _handler(signum: int, frame) -> None:
    if STATE.signum is not None and signum == signal.SIGINT:  # a second Ctrl+C: leave at once
        os.write(2, b"interrupted again: exiting without saving\n")
        os._exit(128 + signal.SIGINT)
    if STATE.signum is None:
        STATE.signum = signum


def install_handlers() -> None:
    """(Re)installs the stop handlers (Lightning's trainer puts its own SIGTERM handler in)."""
    if threading.current_thread() is threading.main_thread():
        for signum in _STOP_SIGNALS:
            signal.signal(signum, _handler)


@contextlib.contextmanager
def graceful_signals():
    """While a run trains, SIGINT and SIGTERM only set :data:`STATE.signum`; the training
    loop then writes ``last.ckpt`` and raises :class:`Interrupted` at the next batch end."""
    outermost = STATE.depth == 0
    if outermost:
        STATE.signum = None
        if threading.current_thread() is threading.main_thread():
            STATE.previous = {s: signal.getsignal(s) for s in _STOP_SIGNALS}
        install_handlers()
    STATE.depth += 1
    try:
        yield STATE
    finally:
        STATE.depth -= 1
        if outermost and threading.current_thread() is threading.main_thread():
            for signum, handler in STATE.previous.items():
                signal.signal(signum, handler if handler is not None else signal.SIG_DFL)


def raise_if_stopped(epoch: int, step: int, rank: int = 0) -> None:
    """Raises :class:`Interrupted` when a stop signal has arrived (between training phases)."""
    if STATE.signum is not None:
        raise Interrupted(STATE.signum, epoch, step, rank)


class LastCheckpoint(Checkpoint):
    """Writes ``path`` (atomically, through the trainer's checkpoint IO) at the end of every
    training epoch, after the epoch-end hooks (schedule step, method state); every
    ``every_n_steps`` optimizer steps; after ``every_minutes`` of wall time; and when a stop
    signal arrived, after which it raises :class:`Interrupted`.

    A step checkpoint is never taken on an epoch's last batch: the epoch-end one follows and
    covers validation and the epoch-end hooks. Under DDP every rank takes the same decision
    (a signal seen by any rank stops all; the clock is rank 0's); Lightning's
    ``save_checkpoint`` lets only rank 0 write.

    Args:
        path: the ``last.ckpt`` to write.
        every_n_steps: 0 disables.
        every_minutes: 0 disables.
        clock: seconds, monotonic (injectable for tests).
    """

    def __init__(self, path: str | Path, every_n_steps: int = 0, every_minutes: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.path = Path(path)
        self.every_n_steps, self.every_minutes, self.clock = every_n_steps, every_minutes, clock
        self._saved_at = clock()

    def on_train_start(self, trainer, pl_module) -> None:
        install_handlers()  # over Lightning's SIGTERM handler, which would end the run with exit code 0
        self._saved_at = self.clock()

    def _any_rank(self, trainer, decision: bool) -> bool:
        if trainer.world_size > 1:
            return trainer.strategy.reduce_boolean_decision(decision, all=False)
        return decision

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if batch_idx + 1 >= trainer.num_training_batches:
            return  # the epoch-end checkpoint comes next
        stop = self._any_rank(trainer, STATE.signum is not None)
        step = trainer.global_step
        due = stop or bool(self.every_n_steps and step % self.every_n_steps == 0)
        if self.every_minutes and not due:
            elapsed = self.clock() - self._saved_at >= 60 * self.every_minutes
            due = trainer.strategy.broadcast(elapsed, src=0) if trainer.world_size > 1 else elapsed
        if due:
            self.save(trainer)
        if stop:
            self._interrupt(trainer)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.save(trainer)
        if self._any_rank(trainer, STATE.signum is not None):
            self._interrupt(trainer)

    def save(self, trainer) -> None:
        trainer.save_checkpoint(self.path)
        self._saved_at = self.clock()

    def _interrupt(self, trainer) -> None:
        signum = STATE.signum if STATE.signum is not None else signal.SIGTERM  # another rank's signal
        STATE.signum = signum
        raise Interrupted(signum, trainer.current_epoch, trainer.global_step, trainer.global_rank)

    def state_dict(self) -> Dict[str, Any]:
        return {}


class BestCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` whose restored state follows the run folder: a checkpoint written
    in ``A/checkpoints`` and resumed in ``B/checkpoints`` (the folder was moved) keeps its
    best score and path, now under ``B`` (Lightning would drop them and let the next
    validation overwrite ``best.ckpt`` whatever its score)."""

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        old = state_dict.get("dirpath")
        if old and self.dirpath and Path(old) != Path(self.dirpath):
            here = Path(self.dirpath)
            move = lambda p: str(here / Path(p).name) if p else p  # noqa: E731
            state_dict = dict(state_dict, dirpath=self.dirpath)
            for key in ("best_model_path", "kth_best_model_path", "last_model_path"):
                state_dict[key] = move(state_dict.get(key, ""))
            state_dict["best_k_models"] = {move(k): v for k, v in state_dict.get("best_k_models", {}).items()}
        super().load_state_dict(state_dict)
