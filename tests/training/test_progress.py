"""What a run prints: one line per epoch with an ETA when stdout is not a terminal, a bar
on a terminal, nothing with ``trainer.progress=false``; no Lightning adverts or banners."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mmbalance.engine import RunDir
from mmbalance.training import progress, train
from mmbalance.training.epoch_lines import EpochLines
from mmbalance.training.run import _trainer

from ..conftest import tiny_config

SRC = str(Path(__file__).resolve().parents[2] / "src")
#: what must never reach a run's output
SUPPRESSED = ("Tip:", "litlogger", "log_every_n_steps", "GPU available", "TPU available", "Restoring states",
              "Loaded model weights", "weights_only", "`Trainer.fit` stopped")
EPOCH = re.compile(r"^\[(?P<label>[^\]]+)\] epoch (?P<epoch>\d+)/(?P<total>\d+)  loss \d+\.\d{4}  "
                   r"val accuracy \d\.\d{4}  best \d\.\d{4} \(epoch \d+\)  \d+\.\d s/epoch  ETA \d+:\d\d:\d\d$")


def test_train_to_a_pipe_prints_one_line_per_epoch_and_no_chatter(tmp_path):
    """``python -m mmbalance train ... | cat``: mcr with its two unimodal stages, 2 epochs each."""
    sets = ["data.n=300", "data.dim=16", "data.latent_dim=4", "data.batch_size=16", "model.feature_dim=8",
            "model.hidden=16", "trainer.max_epochs=2", "trainer.patience=0", "method.init=unimodal"]
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "mmbalance", "train", "--data", "synthetic", "--method", "mcr",
                           "--set", *sets, "--out", str(tmp_path / "run")],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "\r" not in proc.stdout and "\r" not in proc.stderr
    for text in SUPPRESSED:
        assert text not in proc.stdout and text not in proc.stderr, text
    lines = proc.stdout.splitlines()
    epochs = [(m["label"], int(m["epoch"]), int(m["total"])) for line in lines if (m := EPOCH.match(line))]
    assert epochs == [(label, e, 2) for label in ("unimodal:x1", "unimodal:x2", "mcr") for e in (1, 2)], lines
    for n, stage in ((1, "unimodal_x1"), (2, "unimodal_x2")):  # each stage says when it starts and ends
        assert f"[mcr] stage {n}/2 {stage}: training unimodal:x{n}" in lines
        assert any(line.startswith(f"[mcr] stage {n}/2 {stage}: done in ") for line in lines)
    assert lines[0].startswith("[mcr] training on synthetic (210 train / 45 val / 45 test rows), at most 2 epochs")
    assert lines[-1].startswith("mcr: test accuracy=")
    assert proc.stderr.strip() == ""


def test_progress_false_prints_nothing(tmp_path, capsys):
    train(tiny_config("joint", trainer__max_epochs=1), tmp_path / "run")  # TINY has trainer.progress=false
    captured = capsys.readouterr()
    assert captured.out == "" and "\r" not in captured.err


def test_lines_in_process_with_stdout_captured(tmp_path, capsys):
    train(tiny_config("joint", trainer__max_epochs=2, trainer__progress=True), tmp_path / "run")
    lines = capsys.readouterr().out.splitlines()
    assert [int(m["epoch"]) for line in lines if (m := EPOCH.match(line))] == [1, 2]


class _Terminal:
    def isatty(self) -> bool:
        return True

    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass


def test_a_terminal_gets_the_bar_and_a_file_the_lines(tmp_path, monkeypatch):
    from lightning.pytorch.callbacks import ProgressBar
    cfg = tiny_config("joint", trainer__progress=True)
    monkeypatch.setattr(sys, "stdout", _Terminal())
    trainer, _ = _trainer(cfg, RunDir(tmp_path / "a"))
    assert trainer.progress_bar_callback is not None
    assert not any(isinstance(c, EpochLines) for c in trainer.callbacks)
    with progress.heartbeat(20.0):  # the demo's runs: lines, never a bar over its own lines
        trainer, _ = _trainer(cfg, RunDir(tmp_path / "b"))
    assert trainer.progress_bar_callback is None
    monkeypatch.undo()
    trainer, _ = _trainer(cfg, RunDir(tmp_path / "c"))  # pytest's captured stdout is no terminal
    assert trainer.progress_bar_callback is None
    assert sum(isinstance(c, EpochLines) for c in trainer.callbacks) == 1
    cfg.trainer.progress = False
    trainer, _ = _trainer(cfg, RunDir(tmp_path / "d"))
    assert trainer.progress_bar_callback is None and not any(isinstance(c, ProgressBar) for c in trainer.callbacks)
    assert not any(isinstance(c, EpochLines) for c in trainer.callbacks)


def test_heartbeat_thins_a_runs_lines(monkeypatch, capsys):
    now = [1000.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: now[0])
    progress.emit("caller's own line", force=True)
    with progress.heartbeat(20.0, prefix="    "):
        for step in range(6):  # one line every 10 s
            now[0] += 10.0
            progress.emit(f"run line {step}")
        progress.emit("caller again", force=True)
    assert capsys.readouterr().out.splitlines() == ["caller's own line", "    run line 1", "    run line 3",
                                                    "    run line 5", "caller again"]
    progress.emit("after")  # outside: every line
    assert capsys.readouterr().out == "after\n"


@pytest.mark.parametrize("seconds,text", [(0, "0:00:00"), (59.6, "0:01:00"), (3725, "1:02:05")])
def test_clock(seconds, text):
    assert progress.clock(seconds) == text


def test_a_long_epoch_gets_lines_inside_it(monkeypatch, capsys):
    """An epoch longer than ``within_epoch_every`` seconds prints a batch line at that pace,
    with the mean loss so far and the epoch's ETA (a fake clock: 10 s per batch, 4 batches)."""
    from types import SimpleNamespace
    clock_now = [100.0]
    monkeypatch.setattr(progress.time, "perf_counter", lambda: clock_now[0])
    lines = EpochLines("mcr", "val/accuracy")
    trainer = SimpleNamespace(current_epoch=0, max_epochs=3, num_training_batches=4, is_global_zero=True)
    lines.on_train_epoch_start(trainer, None)
    for i, loss in enumerate((4.0, 2.0, 3.0, 1.0)):
        clock_now[0] += 10.0
        lines.on_train_batch_end(trainer, None, {"loss": loss}, None, i)
    out = capsys.readouterr().out.splitlines()
    # lines at 20 s (batch 2) and 40 s (batch 4): mean losses 3.0 and 2.5, epoch ETA 20 s then 0
    assert out == ["[mcr] epoch 1/3  batch 2/4  loss 3.0000  epoch ETA 0:00:20",
                   "[mcr] epoch 1/3  batch 4/4  loss 2.5000  epoch ETA 0:00:00"]
