"""Run as a script: the product's own ``train()`` under 2-process DDP on CPU (gloo), for each
method named; every rank saves its final weights and the first rows it trained on.

After ``--resume``, each method named is trained three times for 2 epochs: uninterrupted
(``METHOD/ref``), stopped in the middle of epoch 1 (``METHOD/cut``: a SIGTERM seen by rank 1
only, at step ``STOP``, so both ranks write ``last.ckpt`` at the end of step ``STOP + 1`` and
raise ``Interrupted``, as a preempted job does), then resumed in ``METHOD/cut``. Every rank
saves its final weights and RNG streams in both folders.

Lightning's DDP launcher re-runs this script for rank 1, so it must be a file, not a test.
Usage: python ddp_train_worker.py OUT_DIR METHOD [METHOD ...] [--resume METHOD ...]
"""

import os
import random
import shutil
import signal
import sys
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

from mmbalance.config import build_config
from mmbalance.errors import Interrupted
from mmbalance.methods import get_method
from mmbalance.training import train
from mmbalance.training.checkpoints import STATE

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository, for tests.conftest
from tests.conftest import method_data  # noqa: E402  (synthetic, or a tiny ResNet .npz for greedy)

# 300 rows: val and test splits of 45, which 2 ranks cannot split evenly
TINY = {"data.n": 300, "data.dim": 16, "data.latent_dim": 4, "data.batch_size": 16, "model.feature_dim": 8,
        "model.hidden": 16, "trainer.max_epochs": 1, "trainer.progress": False, "trainer.patience": 0,
        "trainer.accelerator": "cpu", "trainer.devices": 2, "trainer.strategy": "ddp"}
# 210 training rows: 105 a rank, 7 batches of 16 a rank and epoch; dropout draws from torch's global stream
RESUME = {**TINY, "trainer.max_epochs": 2, "model.dropout": 0.2}
#: per-method settings that make the method act within these short runs (opm modulates from
#: epoch 6 by default and on 70% of batches; gblending records its losses every 10 epochs)
EXTRA = {"opm": {"method.start_epoch": 0, "method.p_exe": 1.0}, "gblending": {"method.super_epoch": 1},
         "reconboost": {"method.epochs_per_stage": 1, "method.correct_epoch": 1, "trainer.max_epochs": 3},
         "lfm": {"method.weighting": "learned", "method.lr_alpha": 10.0},  # lfm: a visible learned step
         "dnr": {"method.reinit_epoch": 1, "trainer.max_epochs": 2}}  # dnr re-initialises after epoch 1
EXTRA["greedy"] = {"method.starting_epoch": 0, "method.window": 2, "trainer.max_epochs": 2}  # windows open and close
EXTRA["valuation"] = {"method.warmup": 1, "trainer.max_epochs": 2}  # epoch 1 trains on the re-sampled rows
EXTRA["amco"] = {"trainer.max_epochs": 2}  # masks from epoch 1 on
STOP = 10  # the stop request, as batch 4 of 7 of epoch 1 begins: last.ckpt holds step 11, 4 batches in


class SaveRank(Callback):
    def __init__(self, out: Path) -> None:
        self.out = out

    def on_train_end(self, trainer, pl_module) -> None:
        rng = {"torch": torch.get_rng_state(), "numpy": np.random.get_state()[1:3], "python": random.getstate()}
        rows = list(iter(trainer.train_dataloader.sampler))[:3]
        torch.save({"state": pl_module.method.state_dict(), "world": trainer.world_size, "first": rows,
                    "step": trainer.global_step, "rng": rng}, self.out / f"rank{trainer.global_rank}.pt")


class RankOneDraws(Callback):
    """Rank 1 alone draws from torch's, NumPy's and Python's global streams before every batch
    (as rank-dependent code or per-rank seeds would), so the two ranks' streams differ and
    a resume that gave rank 1 rank 0's streams would change its dropout masks."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_rank == 1:
            torch.rand(1), np.random.rand(), random.random()


class StopAt(Callback):
    """A stop signal seen by rank 1 only, as ``step`` begins."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step and trainer.global_rank == 1:
            STATE.signum = signal.SIGTERM


def resume_case(method: str, out: Path) -> None:
    cfg = build_config(method, "synthetic", {**RESUME, **EXTRA.get(method, {})}, get_method(method).Hyperparameters)
    train(cfg, out / "ref", callbacks=[RankOneDraws(), SaveRank(out / "ref")])
    try:
        train(cfg, out / "cut", callbacks=[RankOneDraws(), StopAt(STOP)])
    except Interrupted:
        pass
    else:
        raise SystemExit(f"{method}: the run was not interrupted")
    if os.environ.get("LOCAL_RANK", "0") == "0":  # last.ckpt as the stop left it (the resume rewrites it)
        shutil.copy(out / "cut" / "checkpoints" / "last.ckpt", out / "interrupted.ckpt")
    train(cfg, out / "cut", resume=True, callbacks=[RankOneDraws(), SaveRank(out / "cut")])


if __name__ == "__main__":
    root, names = Path(sys.argv[1]), sys.argv[2:]
    resumed = names[names.index("--resume") + 1:] if "--resume" in names else []
    for method in names[:len(names) - len(resumed) - bool(resumed)]:
        spec, model = method_data(method, root)
        cfg = build_config(method, spec, {**TINY, **model, **EXTRA.get(method, {})}, get_method(method).Hyperparameters)
        out = root / method
        train(cfg, out, callbacks=[SaveRank(out)])
    for method in resumed:
        resume_case(method, root / "resume" / method)
