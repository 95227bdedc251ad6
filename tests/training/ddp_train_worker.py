"""Run as a script: the product's own ``train()`` under 2-process DDP on CPU (gloo), for each
method named; every rank saves its final weights and the first rows it trained on.

Lightning's DDP launcher re-runs this script for rank 1, so it must be a file, not a test.
Usage: python ddp_train_worker.py OUT_DIR METHOD [METHOD ...]
"""

import sys
from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback

from mmbalance.config import build_config
from mmbalance.methods import get_method
from mmbalance.training import train

# 300 rows: val and test splits of 45, which 2 ranks cannot split evenly
TINY = {"data.n": 300, "data.dim": 16, "data.latent_dim": 4, "data.batch_size": 16, "model.feature_dim": 8,
        "model.hidden": 16, "trainer.max_epochs": 1, "trainer.progress": False, "trainer.patience": 0,
        "trainer.accelerator": "cpu", "trainer.devices": 2, "trainer.strategy": "ddp"}


class SaveRank(Callback):
    def __init__(self, out: Path) -> None:
        self.out = out

    def on_train_end(self, trainer, pl_module) -> None:
        rows = list(iter(trainer.train_dataloader.sampler))[:3]
        torch.save({"state": pl_module.method.state_dict(), "world": trainer.world_size, "first": rows},
                   self.out / f"rank{trainer.global_rank}.pt")


if __name__ == "__main__":
    root = Path(sys.argv[1])
    for method in sys.argv[2:]:
        cfg = build_config(method, "synthetic", TINY, get_method(method).Hyperparameters)
        out = root / method
        train(cfg, out, callbacks=[SaveRank(out)])
