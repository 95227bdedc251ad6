"""``train``: one configured run, with checkpoints, early stopping and ``metrics.json``."""

from __future__ import annotations

import json
import os
import time
import warnings
from pathlib import Path
from typing import Any, Dict

import lightning as L
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from ..config import RunConfig
from ..errors import ConfigError
from .build import build_data, build_method, build_model, loaders
from .module import BalanceModule

MINIMISED = ("mae", "mse")


def atomic_write_text(path: Path, text: str) -> None:
    """Writes ``text`` to ``path`` via a temporary file and a rename."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def _strategy(cfg: RunConfig):
    if cfg.trainer.strategy == "ddp":
        from lightning.pytorch.strategies import DDPStrategy
        return DDPStrategy(find_unused_parameters=True)  # unimodal stages leave encoders unused
    return cfg.trainer.strategy


def train(cfg: RunConfig, out_dir: str | Path, resume: bool = False) -> Dict[str, Any]:
    """Trains ``cfg.method`` on ``cfg.data_spec`` and writes ``out_dir/metrics.json``.

    Checkpoints go to ``out_dir/checkpoints`` (``last.ckpt`` every epoch, ``best.ckpt`` on
    the monitored validation metric); the test split is scored with the best checkpoint.
    ``resume=True`` continues from ``last.ckpt``.

    Returns:
        The metrics written to ``metrics.json``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    last = out / "checkpoints" / "last.ckpt"
    if resume and not last.exists():
        raise ConfigError(f"--resume: no checkpoint at {last}")
    import yaml
    atomic_write_text(out / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    data = build_data(cfg)
    module = BalanceModule(build_method(cfg, build_model(data, cfg)), cfg)
    module.loader_generator, (train_dl, val_dl, test_dl) = loaders(data, cfg, cfg.seed)
    trainer, checkpoint = _trainer(cfg, out)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*ckpt_path.*")
        trainer.fit(module, train_dl, val_dl, ckpt_path=str(last) if resume else None)
        seconds = time.perf_counter() - start
        best = checkpoint.best_model_path or None
        val = trainer.validate(module, val_dl, ckpt_path=best, verbose=False)[0]
        test = trainer.test(module, test_dl, ckpt_path=best, verbose=False)[0]
    metrics = {
        "method": cfg.method, "seed": cfg.seed, "data": cfg.data_spec, "config": cfg.to_dict(),
        "val": _strip(val, "val/"), "test": _strip(test, "test/"),
        "best_checkpoint": Path(best).name if best else None, "epochs_run": trainer.current_epoch,
        "train_seconds": round(seconds, 3), "nonfinite_steps": module.nonfinite_steps,
        "optimizer": cfg.optim.name,
    }
    if trainer.is_global_zero:
        atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2, default=str))
    return metrics


def _trainer(cfg: RunConfig, out: Path):
    t = cfg.trainer
    monitor = f"val/{t.monitor}"
    mode = "min" if t.monitor in MINIMISED else "max"
    checkpoint = ModelCheckpoint(dirpath=out / "checkpoints", filename="best", monitor=monitor, mode=mode,
                                 save_last=True, save_top_k=1, enable_version_counter=False)
    callbacks = [checkpoint]
    if t.patience > 0:
        callbacks.append(EarlyStopping(monitor=monitor, mode=mode, patience=t.patience))
    trainer = L.Trainer(
        max_epochs=t.max_epochs, accelerator=t.accelerator, devices=t.devices, strategy=_strategy(cfg),
        precision=t.precision, deterministic=t.deterministic, callbacks=callbacks,
        logger=CSVLogger(save_dir=str(out), name="logs", version=""), num_sanity_val_steps=0,
        gradient_clip_val=cfg.optim.grad_clip or None, enable_progress_bar=t.progress,
        enable_model_summary=False, log_every_n_steps=t.log_every_n_steps, default_root_dir=str(out))
    return trainer, checkpoint


def _strip(values: Dict[str, float], prefix: str) -> Dict[str, float]:
    return {k[len(prefix):] if k.startswith(prefix) else k: float(v) for k, v in values.items()}
