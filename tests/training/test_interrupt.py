"""SIGKILL mid-run, then --resume: the same final metrics as an uninterrupted run, bit for bit;
atomic checkpoint and metrics writes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mmbalance.training import atomic_write_text
from mmbalance.training.checkpoint_io import AtomicCheckpointIO

from ..conftest import method_data

ARGS = ["data.n=1000", "data.dim=16", "data.batch_size=16", "model.feature_dim=8", "model.hidden=16",
        "trainer.max_epochs=3", "trainer.patience=0", "trainer.progress=false"]
# method -> file whose appearance means "far enough in to kill"
CASES = {"joint": "checkpoints/last.ckpt", "mcr": "checkpoints/last.ckpt", "agm": "checkpoints/last.ckpt",
         "pmr": "checkpoints/last.ckpt", "mslr": "checkpoints/last.ckpt",
         "ensemble": "stages/unimodal_x2/checkpoints/last.ckpt",
         "umt": "checkpoints/last.ckpt",  # killed after its stages: the resume restores the teachers too
         "cml": "checkpoints/last.ckpt", "opm": "checkpoints/last.ckpt", "gblending": "checkpoints/last.ckpt",
         "lfm": "checkpoints/last.ckpt", "dnr": "checkpoints/last.ckpt", "mbsd": "checkpoints/last.ckpt",
         "mmpareto": "checkpoints/last.ckpt", "ume": "stages/unimodal_x2/checkpoints/last.ckpt",
         "mla": "checkpoints/last.ckpt",  # its projector, step count and batch index
         "reconboost": "checkpoints/last.ckpt"}  # killed between a stage's two phases (EXTRA)
#: settings that make a method act within the run (opm modulates from epoch 6 by default;
#: gblending records its losses every 10 epochs)
EXTRA = {"opm": ["method.start_epoch=0"], "gblending": ["method.super_epoch=1"],
         "lfm": ["method.weighting=learned", "method.lr_alpha=10"], "dnr": ["method.reinit_epoch=1"],
         "reconboost": ["method.epochs_per_stage=1", "method.correct_epoch=1"]}  # a new phase every epoch
# greedy, on conftest's tiny ResNet .npz (6 steps an epoch): MMTM running averages, speeds, and windows from
# the first step, one of them open at each epoch's end
CASES["greedy"] = "checkpoints/last.ckpt"
CASES["valuation"] = CASES["amco"] = "checkpoints/last.ckpt"  # valuation: killed after re-sampling
EXTRA["valuation"] = ["method.warmup=1", "method.level=modality"]  # its plan set after epoch 0 comes back
EXTRA["greedy"] = ["method.starting_epoch=0", "method.window=4"]


def _data(method):
    """conftest's data for ``method`` (synthetic, or the ResNet .npz): spec and ``--set`` items."""
    spec, model = method_data(method)
    return spec, [f"{k}={v}" for k, v in model.items()]


def _cmd(method, out, *extra):
    spec, model = _data(method)
    return [sys.executable, "-m", "mmbalance", "train", "--data", spec, "--method", method,
            "--set", *ARGS, *model, *EXTRA.get(method, []), "--out", str(out), *extra]


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """One intra-op thread here and in every training subprocess (``_env``). These tests
    compare a run trained partly in another process with one trained in this process, bit
    for bit, so both must run the same kernels: the same ATEN_CPU_CAPABILITY (inherited)
    and the same thread count, which can change how a float sum is split. Without this a
    child takes OMP_NUM_THREADS or one thread per core (capped at the core count), while
    this process may have been set to another count by a test before."""
    yield


def _env():
    return {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _run(cmd):
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=_env())
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads((Path(cmd[-1] if cmd[-1] != "--resume" else cmd[-2]) / "metrics.json").read_text())


@pytest.mark.parametrize("method", list(CASES))
def test_sigkill_then_resume_is_identical(tmp_path, method):
    from mmbalance.methods import REGISTRY
    if method not in REGISTRY:
        pytest.fail(f"{method} is not registered")
    from mmbalance.config import build_config, parse_set_items
    from mmbalance.training import train
    spec, model = _data(method)
    cfg = build_config(method, spec, parse_set_items(ARGS + model + EXTRA.get(method, [])),
                       REGISTRY[method].Hyperparameters)
    reference = train(cfg, tmp_path / "ref")  # in-process: same code, same seed, same numbers
    out = tmp_path / "cut"
    proc = subprocess.Popen(_cmd(method, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env())
    marker = out / CASES[method]
    deadline = time.time() + 240
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    killed = proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert killed, "the run finished before it could be killed; make it longer"
    assert not (out / "metrics.json").exists()
    # the resume runs `mmbalance train ... --resume` in this process (its imports are done);
    # test_sigkill_after_the_best_epoch_keeps_the_last_epoch resumes in a process of its own
    from mmbalance.cli import main
    assert main(_cmd(method, out, "--resume")[3:]) == 0
    resumed = json.loads((out / "metrics.json").read_text())
    assert resumed["test"] == reference["test"]
    assert resumed["val"] == reference["val"]


def test_checkpoint_write_is_atomic(tmp_path):
    path = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"w": torch.ones(3)}, path)
    with pytest.raises(Exception):
        io.save_checkpoint({"w": torch.zeros(3), "bad": lambda: 0}, path)  # dies mid-write
    assert torch.equal(torch.load(path)["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"] or all(
        p.name == "last.ckpt" or p.name.startswith(".last.ckpt.tmp") for p in tmp_path.iterdir())


def test_metrics_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "metrics.json"
    atomic_write_text(path, '{"ok": 1}')

    def crash(*args, **kwargs):
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        atomic_write_text(path, '{"ok": 2}')
    assert json.loads(path.read_text()) == {"ok": 1}


def _epoch_step(path):
    ckpt = torch.load(path, weights_only=False)
    return ckpt["epoch"], ckpt["global_step"]


def test_sigkill_after_the_best_epoch_keeps_the_last_epoch(tmp_path):
    """last.ckpt holds the last finished epoch, not the best one: killed once the epoch after
    the best has ended, last.ckpt holds that epoch and its step, and the resume continues
    from there to the uninterrupted run's metrics."""
    from mmbalance.config import build_config, parse_set_items
    from mmbalance.methods import REGISTRY
    from mmbalance.training import train
    args = [a for a in ARGS if not a.startswith(("trainer.max_epochs", "data.n"))]
    args += ["trainer.max_epochs=8", "data.n=600", "optim.lr=0.01"]
    cfg = build_config("joint", "synthetic", parse_set_items(args), REGISTRY["joint"].Hyperparameters)
    reference = train(cfg, tmp_path / "ref")
    best, _ = _epoch_step(tmp_path / "ref" / "checkpoints" / "best.ckpt")
    batches = _epoch_step(tmp_path / "ref" / "checkpoints" / "last.ckpt")[1] // 8
    assert best <= 5, "pick settings whose best epoch comes before the last two"
    out = tmp_path / "cut"
    cmd = [sys.executable, "-m", "mmbalance", "train", "--data", "synthetic", "--method", "joint",
           "--set", *args, "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env())
    last, seen, deadline = out / "checkpoints" / "last.ckpt", None, time.time() + 240
    while proc.poll() is None and time.time() < deadline:
        if last.exists():
            seen = _epoch_step(last)[0]
            if seen > best:
                break
        time.sleep(0.02)
    proc.send_signal(signal.SIGSTOP)  # frozen: last.ckpt cannot change any more
    epoch, step = _epoch_step(last)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert seen is not None and seen > best, "the run ended before the epoch after the best"
    assert epoch > best and epoch >= seen and step == (epoch + 1) * batches, (epoch, step, best)
    assert _epoch_step(out / "checkpoints" / "best.ckpt")[0] == best
    resumed = _run(cmd + ["--resume"])
    assert resumed["test"] == reference["test"] and resumed["val"] == reference["val"]
