"""Reopening a finished ``mmbalance train`` run: its configuration, data and trained method."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Mapping

import torch

from ..config import SECTIONS, build_config
from ..engine import RunDir
from ..errors import DataError
from ..methods import get_method
from ..training.build import build_data, build_method, build_model


def read_metrics(run_dir: str | Path) -> Dict[str, Any]:
    """A finished run's metrics; DataError when the run is missing or unfinished."""
    return RunDir(run_dir).read_metrics()


def overrides_from_dict(tree: Mapping[str, Any]) -> Dict[str, Any]:
    """A run's saved configuration (``RunConfig.to_dict``) -> dotted overrides."""
    out: Dict[str, Any] = {"seed": tree.get("seed", 0)}
    for section in SECTIONS:
        out.update({f"{section}.{k}": v for k, v in (tree.get(section) or {}).items()})
    out.update({f"method.{k}": v for k, v in (tree.get("method") or {}).items()})
    return out


def run_config(run_dir: str | Path):
    """The :class:`RunConfig` a run was trained with (its saved configuration)."""
    tree = RunDir(run_dir).read_config()
    if not isinstance(tree, Mapping) or "method_name" not in tree:
        raise DataError(f"{run_dir} has no readable {RunDir.CONFIG}")
    method = tree["method_name"]
    return build_config(method, tree.get("data_spec", "synthetic"), overrides_from_dict(tree),
                        get_method(method).Hyperparameters)


@dataclass
class LoadedRun:
    """A trained run, ready for evaluation.

    Attributes:
        path: the run directory.
        cfg: its configuration.
        data: its data (same splits as in training).
        method: the trained method (eval mode, best weights, on CPU).
        metrics: its ``metrics.json``.
    """

    path: Path
    cfg: Any
    data: Any
    method: Any
    metrics: Dict[str, Any]

    @property
    def model(self):
        return self.method.model


def load_run(run_dir: str | Path) -> LoadedRun:
    """Rebuilds a run's data and method and loads the weights its test score came from:
    the checkpoint named in ``metrics.json`` (``best.ckpt``), the stages' checkpoints for
    pipeline methods that train no final stage (``ensemble``)."""
    run = RunDir(run_dir)
    run_dir = run.path
    metrics = run.read_metrics()
    cfg = run_config(run_dir)
    data = build_data(cfg)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        method = build_method(cfg, build_model(data, cfg))
    stages = [s.name for s in method.stages(method.model.modalities, method.hparams)]
    if stages:
        method.load_stages(run.stage_states(stages))
    ckpt = run.checkpoint_to_load(metrics)
    if ckpt is not None:
        run.load_method_state(method, ckpt)
    elif not stages:
        raise DataError(f"{run_dir} has no checkpoint (checkpoints/best.ckpt or last.ckpt) to load the model from")
    method.eval()
    return LoadedRun(run_dir, cfg, data, method, metrics)

