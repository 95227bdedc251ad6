"""Reopening a finished ``mmbalance train`` run: its configuration, data and trained method."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Mapping

import torch

from ..errors import DataError


def read_metrics(run_dir: str | Path) -> Dict[str, Any]:
    """``RUN_DIR/metrics.json``; DataError when the run is missing or unfinished."""
    path = Path(run_dir) / "metrics.json"
    if not Path(run_dir).is_dir():
        raise DataError(f"run directory {run_dir} does not exist")
    if not path.exists():
        raise DataError(f"{run_dir} has no metrics.json: not a finished `mmbalance train` run")
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        raise DataError(f"{path} is not valid JSON ({exc})") from None


def overrides_from_dict(tree: Mapping[str, Any]) -> Dict[str, Any]:
    """A run's saved configuration (``RunConfig.to_dict``) -> dotted overrides."""
    from ..config import SECTIONS
    out: Dict[str, Any] = {"seed": tree.get("seed", 0)}
    for section in SECTIONS:
        out.update({f"{section}.{k}": v for k, v in (tree.get(section) or {}).items()})
    out.update({f"method.{k}": v for k, v in (tree.get("method") or {}).items()})
    return out


def run_config(run_dir: str | Path):
    """The :class:`RunConfig` a run was trained with (``config.yaml``, else ``metrics.json``)."""
    import yaml
    from ..config import build_config
    from ..methods import get_method
    path = Path(run_dir) / "config.yaml"
    tree = yaml.safe_load(path.read_text()) if path.exists() else read_metrics(run_dir).get("config")
    if not isinstance(tree, Mapping) or "method_name" not in tree:
        raise DataError(f"{run_dir} has no readable config.yaml")
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
    from ..training.build import build_data, build_method, build_model
    run_dir = Path(run_dir)
    metrics = read_metrics(run_dir)
    cfg = run_config(run_dir)
    data = build_data(cfg)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        method = build_method(cfg, build_model(data, cfg))
    stages = sorted((run_dir / "stages").glob("*/checkpoints/best.ckpt")) if hasattr(method, "load_stages") else []
    if stages:
        method.load_stages({p.parent.parent.name: p for p in stages})
    ckpt = _checkpoint(run_dir, metrics)
    if ckpt is not None:
        state = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
        method.load_state_dict({k[len("method."):]: v for k, v in state.items() if k.startswith("method.")})
    elif not stages:
        raise DataError(f"{run_dir} has no checkpoint (checkpoints/best.ckpt or last.ckpt) to load the model from")
    method.eval()
    return LoadedRun(run_dir, cfg, data, method, metrics)


def _checkpoint(run_dir: Path, metrics: Mapping[str, Any]):
    folder = run_dir / "checkpoints"
    for name in (metrics.get("best_checkpoint"), "best.ckpt", "last.ckpt"):
        if name and (folder / name).exists():
            return folder / name
    return None
