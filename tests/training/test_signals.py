"""SIGINT and SIGTERM: last.ckpt written, one line with the exact command that resumes,
exit 130 / 143; a second SIGINT exits at once; under DDP every rank stops."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ARGS = ["data.n=1000", "data.dim=16", "data.batch_size=16", "model.feature_dim=8", "model.hidden=16",
        "trainer.max_epochs=30", "trainer.patience=0", "trainer.progress=false"]
LINE = re.compile(r"^interrupted at epoch (\d+) step (\d+); continue with: (mmbalance train .* --resume)$")
ENV = {**os.environ, "PYTHONWARNINGS": "ignore"}


def _start(out, *extra, cwd=None):
    cmd = [sys.executable, "-m", "mmbalance", "train", "--data", "synthetic", "--method", "joint",
           "--set", *ARGS, *extra, "--out", str(out)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, cwd=cwd)


def _wait_for(path, proc, timeout=240):
    deadline = time.time() + timeout
    while not path.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, proc.communicate()[1][-2000:]


def _stopped(proc, signum, code):
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err[-2000:]
    lines = [l for l in err.splitlines() if l.startswith("interrupted")]
    assert len(lines) == 1, err[-2000:]
    match = LINE.match(lines[0])
    assert match, lines[0]
    return int(match.group(1)), int(match.group(2)), match.group(3)


@pytest.mark.parametrize("signum,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_writes_last_and_prints_the_resume_command(tmp_path, signum, code):
    out = tmp_path / "run"
    proc = _start(out)
    _wait_for(out / "checkpoints" / "last.ckpt", proc)
    epoch, step, command = _stopped(proc, signum, code)
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=False)
    assert (ckpt["epoch"], ckpt["global_step"]) == (epoch, step)
    assert not (out / "metrics.json").exists()
    argv = shlex.split(command)
    assert argv[:2] == ["mmbalance", "train"] and argv[argv.index("--out") + 1] == str(out.resolve())
    if signum == signal.SIGINT:  # the printed command continues the run, from another directory
        argv[argv.index("trainer.max_epochs=30")] = "trainer.max_epochs=%d" % (epoch + 2)
        done = subprocess.run([sys.executable, "-m", *argv], capture_output=True, text=True,
                              env=ENV, cwd=tmp_path.parent, timeout=240)
        assert done.returncode == 0, done.stderr[-2000:]
        assert json.loads((out / "metrics.json").read_text())["epochs_run"] == epoch + 2


def test_second_sigint_exits_at_once(tmp_path):
    """The first SIGINT only asks the loop to stop at the next batch end; a second one, while
    a batch is still running (here: a sleep), ends the process at once with 130."""
    code = ("import sys, time\n"
            "from mmbalance.training.checkpoints import graceful_signals\n"
            "with graceful_signals() as state:\n"
            "    print('ready', flush=True)\n"
            "    while state.signum is None: time.sleep(0.01)\n"
            "    print('first', flush=True)\n"
            "    time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=ENV)
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGINT)
    assert proc.stdout.readline().strip() == "first"
    start = time.time()
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=10)
    assert proc.returncode == 130 and time.time() - start < 5


def _processes_with(marker: str):
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and marker in (entry / "cmdline").read_bytes().decode(errors="ignore"):
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


@pytest.mark.skipif(not Path("/proc").exists(), reason="needs /proc to find the ranks")
def test_sigterm_under_ddp_stops_every_rank(tmp_path):
    """SIGTERM to rank 0 only (as a scheduler may send it): both ranks stop at the same step,
    rank 0 alone writes last.ckpt and prints the line; exit 143."""
    out = tmp_path / "ddp-run"
    proc = _start(out, "trainer.strategy=ddp", "trainer.devices=2", "data.n=400")
    _wait_for(out / "checkpoints" / "last.ckpt", proc)
    assert len(_processes_with(str(out))) == 2, "two ranks"
    epoch, step, _ = _stopped(proc, signal.SIGTERM, 143)
    deadline = time.time() + 30
    while _processes_with(str(out)) and time.time() < deadline:
        time.sleep(0.1)
    assert not _processes_with(str(out)), "rank 1 is still running"
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=False)
    assert (ckpt["epoch"], ckpt["global_step"]) == (epoch, step)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
