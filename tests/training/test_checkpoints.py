"""last.ckpt: rewritten at every epoch end and every N steps; a resume from a mid-epoch step
checkpoint ends bit-identical to an uninterrupted run; a moved run folder resumes."""

from __future__ import annotations

import shutil

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from mmbalance.training import train
from mmbalance.training.checkpoints import LastCheckpoint

from ..conftest import tiny_config

EVERY = 5  # trainer.checkpoint_every_n_steps
AT = 20  # the step checkpoint resumed from: epoch 1, batch 6 of 14 (210 training rows, batch 16)


class Snapshot(Callback):
    """Copies the run folder to ``dest`` as step ``at + 1`` begins: its ``last.ckpt`` is then
    the step checkpoint of step ``at`` (the copy is also a moved run folder)."""

    def __init__(self, out, dest, at):
        self.out, self.dest, self.at, self.done = out, dest, at, False

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.at and not self.done:
            shutil.copytree(self.out, self.dest, symlinks=True)
            self.done = True


def _ckpt(path):
    c = torch.load(path, weights_only=False)
    return c["epoch"], c["global_step"], c["mmbalance"]["epoch_batches"]


@pytest.mark.parametrize("method,extra", [
    ("joint", {}), ("mcr", {}), ("ogm_ge", {}),
    ("unipre_finetuned", {}),  # a pipeline: unimodal stages, then the final training
])
def test_mid_epoch_resume_is_bit_identical(tmp_path, method, extra):
    cfg = tiny_config(method, trainer__max_epochs=2, trainer__checkpoint_every_n_steps=EVERY, **extra)
    snap = Snapshot(tmp_path / "ref", tmp_path / "moved", AT)
    reference = train(cfg, tmp_path / "ref", callbacks=[snap])
    assert snap.done
    epoch, step, batches = _ckpt(tmp_path / "moved" / "checkpoints" / "last.ckpt")
    assert (epoch, step, batches) == (1, AT, AT - 14), "a mid-epoch step checkpoint"
    resumed = train(cfg, tmp_path / "moved", resume=True)
    assert resumed["val"] == reference["val"]
    assert resumed["test"] == reference["test"]
    assert _ckpt(tmp_path / "moved" / "checkpoints" / "last.ckpt")[:2] == (1, 28)


def test_last_is_rewritten_every_epoch_and_step(tmp_path):
    """last.ckpt after each epoch end and every EVERY steps, never only when validation improves."""
    seen = []

    class Spy(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            path = tmp_path / "run" / "checkpoints" / "last.ckpt"
            if path.exists():
                seen.append(_ckpt(path)[:2])

    cfg = tiny_config("joint", trainer__max_epochs=3, trainer__checkpoint_every_n_steps=EVERY)
    train(cfg, tmp_path / "run", callbacks=[Spy()])
    written = sorted(set(seen))
    ends = [(0, 14), (1, 28)]
    steps = [(s // 14, s) for s in range(EVERY, 42, EVERY) if s % 14]
    assert written == sorted(set(ends + [x for x in steps if x[1] < 42])), written
    assert _ckpt(tmp_path / "run" / "checkpoints" / "last.ckpt")[:2] == (2, 42)


def test_minutes_trigger_a_step_checkpoint(tmp_path):
    now = [0.0]
    cb = LastCheckpoint(tmp_path / "last.ckpt", every_n_steps=0, every_minutes=10, clock=lambda: now[0])
    saved = []
    cb.save = lambda trainer: saved.append(trainer.global_step)  # noqa: E731

    class T:
        num_training_batches, world_size, global_step = 14, 1, 3

    cb.on_train_batch_end(T, None, None, None, 2)
    now[0] = 601.0
    cb.on_train_batch_end(T, None, None, None, 2)
    assert saved == [3]
