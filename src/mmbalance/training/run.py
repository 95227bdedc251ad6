"""``train``: one configured run, with checkpoints, early stopping and ``metrics.json``."""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from pathlib import Path
from typing import Any, Dict

import lightning as L
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.strategies import DDPStrategy

from ..config import RunConfig
from ..engine import RunDir, atomic_write_text
from ..errors import ConfigError
from ..methods import get_method
from .build import build_data, build_method, build_model, loaders
from .checkpoint_io import AtomicCheckpointIO
from .module import BalanceModule
from .probe import probe_callbacks, probe_metrics

MINIMISED = ("mae", "mse")
__all__ = ["MINIMISED", "atomic_write_text", "train"]


def _strategy(cfg: RunConfig):
    if cfg.trainer.strategy == "ddp":
        return DDPStrategy(find_unused_parameters=True)  # unimodal stages leave encoders unused
    return cfg.trainer.strategy


def train(cfg: RunConfig, out_dir: str | Path, resume: bool = False) -> Dict[str, Any]:
    """Trains ``cfg.method`` on ``cfg.data_spec`` and writes ``out_dir/metrics.json``.

    Checkpoints go to ``out_dir/checkpoints`` (``last.ckpt`` every epoch, ``best.ckpt`` on
    the monitored validation metric); the test split is scored with the best checkpoint.
    ``resume=True`` continues from ``last.ckpt``. Pipeline methods (``ensemble``,
    ``unipre_*``) first run their stages in ``out_dir/stages/<name>``; with ``resume``,
    finished stages are skipped and an interrupted one continues.

    Returns:
        The metrics written to ``metrics.json``.
    """
    out = RunDir(out_dir).mkdir()
    last = out.last_checkpoint
    method_cls = get_method(cfg.method)
    pipeline = method_cls.is_pipeline
    if resume and not last.exists() and not (pipeline and out.stages.exists()):
        raise ConfigError(f"--resume: no checkpoint at {last}")
    out.write_config(cfg.to_dict())
    stages = _run_stages(cfg, method_cls, out, resume) if pipeline else {}
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    data = build_data(cfg)
    method = build_method(cfg, build_model(data, cfg))
    if stages:
        method.load_stages(out.stage_states(stages))
    module = BalanceModule(method, cfg, metrics=data.metrics)
    module.loader_generator, (train_dl, val_dl, test_dl) = loaders(data, cfg, cfg.seed)
    trainer, checkpoint = _trainer(cfg, out)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*(does not have many workers|ckpt_path|LeafSpec).*")
        if method_cls.trains_final:
            trainer.fit(module, train_dl, val_dl, ckpt_path=str(last) if resume and last.exists() else None)
        seconds = time.perf_counter() - start
        nonfinite_steps = module.nonfinite_steps  # loading the best checkpoint restores an older count
        best = checkpoint.best_model_path or None
        val = trainer.validate(module, val_dl, ckpt_path=best, verbose=False)[0]
        test = trainer.test(module, test_dl, ckpt_path=best, verbose=False)[0]
    metrics = {
        "method": cfg.method, "seed": cfg.seed, "data": cfg.data_spec, "config": cfg.to_dict(),
        "val": _strip(val, "val/"), "test": _strip(test, "test/"), "nonfinite_metrics": [],
        "best_checkpoint": Path(best).name if best else None, "epochs_run": trainer.current_epoch,
        "train_seconds": round(seconds + sum(m["train_seconds"] for m in stages.values()), 3),
        "nonfinite_steps": nonfinite_steps, "optimizer": cfg.optim.name,
    }
    if stages:
        metrics["stages"] = {name: {k: m[k] for k in ("method", "val", "test", "train_seconds")}
                             for name, m in stages.items()}
    metrics.update(probe_metrics(trainer))
    _flag_nonfinite(metrics)
    if trainer.is_global_zero:
        out.write_predictions(module.method, test_dl)
        out.write_metrics(metrics)
    return metrics


def _run_stages(cfg: RunConfig, method_cls, out: RunDir, resume: bool) -> Dict[str, Dict[str, Any]]:
    """Runs (or, on resume, skips or continues) each stage of a pipeline method."""
    results: Dict[str, Dict[str, Any]] = {}
    for stage in method_cls.stages(list(build_data(cfg).shapes)):
        stage_dir = out.stage(stage.name)
        if resume and stage_dir.is_finished():
            results[stage.name] = stage_dir.read_metrics()
            continue
        stage_method = get_method(stage.method)
        stage_cfg = dataclasses.replace(cfg, method=stage.method,
                                        hparams=stage_method.Hyperparameters(**stage.hparams))
        partial = resume and stage_dir.last_checkpoint.exists()
        results[stage.name] = train(stage_cfg, stage_dir.path, resume=partial)
    return results


def _trainer(cfg: RunConfig, out: RunDir):
    t = cfg.trainer
    monitor = f"val/{t.monitor}"
    mode = "min" if t.monitor in MINIMISED else "max"
    checkpoint = ModelCheckpoint(dirpath=out.checkpoints, filename=RunDir.BEST, monitor=monitor, mode=mode,
                                 save_last=True, save_top_k=1, enable_version_counter=False)
    callbacks = [checkpoint, *probe_callbacks(cfg, out.path)]
    if t.patience > 0:
        callbacks.append(EarlyStopping(monitor=monitor, mode=mode, patience=t.patience))
    trainer = L.Trainer(
        max_epochs=t.max_epochs, accelerator=t.accelerator, devices=t.devices, strategy=_strategy(cfg),
        precision=t.precision, deterministic=t.deterministic, callbacks=callbacks,
        logger=CSVLogger(save_dir=str(out.path), name=RunDir.LOGS), num_sanity_val_steps=0,
        plugins=[AtomicCheckpointIO()], enable_progress_bar=t.progress,  # clipping: BalanceModule
        enable_model_summary=False, log_every_n_steps=t.log_every_n_steps, default_root_dir=str(out.path))
    return trainer, checkpoint


def _flag_nonfinite(metrics: Dict[str, Any]) -> None:
    """Replaces NaN/Inf metric values by ``None`` and lists them in ``nonfinite_metrics``
    (for example the correlation of a constant prediction), so none passes unflagged."""
    for split in ("val", "test"):
        for key, value in metrics[split].items():
            if not math.isfinite(value):
                metrics[split][key] = None
                metrics["nonfinite_metrics"].append(f"{split}/{key}")


def _strip(values: Dict[str, float], prefix: str) -> Dict[str, float]:
    return {k[len(prefix):] if k.startswith(prefix) else k: float(v) for k, v in values.items()}
