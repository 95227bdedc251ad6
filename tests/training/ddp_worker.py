"""Run as a script: 2-process DDP on CPU (gloo) for a few steps; each rank saves its weights.

Lightning's DDP launcher re-runs this script for rank 1, so it must be a file, not a test.
Usage: python ddp_worker.py OUT_DIR METHOD
"""

import sys
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.strategies import DDPStrategy

from mmbalance.config import build_config
from mmbalance.methods import get_method
from mmbalance.training import BalanceModule, build_data, build_method, build_model, loaders

if __name__ == "__main__":
    out, method = Path(sys.argv[1]), sys.argv[2]
    overrides = {"data.n": 400, "data.dim": 16, "data.batch_size": 16, "model.feature_dim": 8, "model.hidden": 16}
    cfg = build_config(method, "synthetic", overrides, get_method(method).Hyperparameters)
    L.seed_everything(0, verbose=False)
    data = build_data(cfg)
    module = BalanceModule(build_method(cfg, build_model(data, cfg)), cfg)
    _, (train_dl, val_dl, _) = loaders(data, cfg, 0)
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy=DDPStrategy(process_group_backend="gloo"),
                        max_steps=4, limit_val_batches=2, val_check_interval=4, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0, default_root_dir=str(out))
    trainer.fit(module, train_dl, val_dl)
    batches = [sorted(int(i) for i in trainer.train_dataloader.sampler.__iter__())[:3]]
    torch.save({"state": module.method.state_dict(), "world": trainer.world_size, "first": batches},
               out / f"rank{trainer.global_rank}.pt")
