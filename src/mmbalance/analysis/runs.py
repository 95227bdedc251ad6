"""Reopening a trained ``mmbalance train`` run: its configuration, trained method and data."""

from __future__ import annotations

import os
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

import numpy as np
import torch
import yaml

from ..config import SECTIONS, build_config
from ..data import InputSpec
from ..engine import RunDir
from ..errors import ConfigError, DataError
from ..methods import get_method
from ..training.build import build_data, build_method, build_model
from .predict import Prediction, predict_arrays


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
    run = RunDir(run_dir)
    run.check_is_run()
    if not run.config.exists() and not run.metrics.exists():
        raise DataError(f"{run_dir} has no {RunDir.CONFIG}: not an `mmbalance train` run folder")
    try:
        tree = run.read_config()
    except yaml.YAMLError as exc:
        raise DataError(f"{run.config} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(tree, Mapping) or "method_name" not in tree:
        raise DataError(f"{run_dir} has no readable {RunDir.CONFIG}: not an `mmbalance train` run folder")
    method = tree["method_name"]
    return build_config(method, tree.get("data_spec", "synthetic"), overrides_from_dict(tree),
                        get_method(method).Hyperparameters)


@dataclass
class TrainedRun:
    """A trained run, loaded back (:func:`load_run`).

    Attributes:
        path: the run folder.
        cfg: the :class:`~mmbalance.config.RunConfig` it was trained with.
        method: the trained method (eval mode), a ``torch.nn.Module`` whose ``forward``
            returns a :class:`~mmbalance.types.ModelOutput` and whose ``predict(out)`` is the
            (B, C) prediction that evaluation scores.
        inputs: what the model takes (:class:`~mmbalance.data.InputSpec`): modality shapes
            and the train split's standardization.
        checkpoint: the checkpoint loaded (None for a method made only of its stages).
        metrics: ``metrics.json``, None for an unfinished run.
    """

    path: Path
    cfg: Any
    method: Any
    inputs: InputSpec
    checkpoint: Optional[Path]
    metrics: Optional[Dict[str, Any]]
    _data: Any = field(default=None, repr=False)

    @property
    def model(self):
        """The trained :class:`~mmbalance.MultimodalModel`."""
        return self.method.model

    @property
    def data(self):
        """The run's data, same splits as in training (built on first use: it needs the data
        the run was trained on, where ``config.yaml`` says it is)."""
        if self._data is None:
            self._data = build_data(self.cfg)
        return self._data

    def prepare(self, arrays: Mapping[str, Any]) -> Dict[str, torch.Tensor]:
        """Modality -> (N, ...) float32 tensors, standardized as in training, on the model's
        device: what ``run.model`` and ``run.method`` take."""
        device = next(self.method.parameters()).device
        return {m: torch.from_numpy(np.ascontiguousarray(self.inputs.standardize(m, np.asarray(arrays[m]))))
                .to(device) for m in arrays}

    def predict(self, arrays: Mapping[str, Any], batch_size: Optional[int] = None) -> Prediction:
        """Predictions for raw (unstandardized) arrays, modality -> (N, ...): the fused logits,
        and each modality's logits where the method gives them (see :class:`Prediction`)."""
        return predict_arrays(self.method, self.inputs, arrays, batch_size or self.cfg.data.batch_size)


def load_run(run_dir: str | Path, checkpoint: str = "best", device: str | torch.device = "cpu") -> TrainedRun:
    """Loads a trained run from its folder, from any working directory and after the
    folder was moved: the model is rebuilt from ``config.yaml`` and ``inputs.json`` (runs
    that predate ``inputs.json`` rebuild it from their data), then the checkpoint's weights
    and method state are loaded.

    Args:
        run_dir: an ``mmbalance train --out`` folder.
        checkpoint: ``best`` (default: the checkpoint the test score came from, the best
            epoch on the monitored validation metric) or ``last`` (``last.ckpt``).
        device: where the method goes.

    Raises:
        DataError: not a run folder, no such checkpoint, or a checkpoint that does not fit.
    """
    if checkpoint not in ("best", "last"):
        raise ConfigError(f"checkpoint must be 'best' or 'last', got {checkpoint!r}")
    RunDir(run_dir).check_is_run()
    run = RunDir(os.path.abspath(run_dir))  # the paths it hands out stay valid when the cwd changes
    cfg = run_config(run.path)
    metrics = run.read_metrics() if run.metrics.exists() else None
    tree = run.read_inputs()
    try:
        spec = InputSpec.from_dict(tree) if tree is not None else build_data(cfg).input_spec()
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"{run.inputs} is malformed ({type(exc).__name__}: {exc})") from None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        method = build_method(cfg, build_model(spec, cfg))
    stages = [s.name for s in method.stages(method.model.modalities, method.hparams)]
    if stages:
        missing = [n for n in stages if not run.stage(n).best_checkpoint.exists()]
        if missing:
            raise DataError(f"{run.path} lacks the stage checkpoint {run.stage(missing[0]).best_checkpoint}")
        method.load_stages(_read(lambda: run.stage_states(stages), run.stages))
    ckpt = run.checkpoint_to_load(metrics) if checkpoint == "best" else (
        run.last_checkpoint if run.last_checkpoint.exists() else None)
    if ckpt is not None:
        _read(lambda: run.load_method_state(method, ckpt), ckpt)
    elif getattr(type(method), "trains_final", True):
        raise DataError(f"{run.path} has no {checkpoint} checkpoint ({run.checkpoints}/{checkpoint}.ckpt) "
                        "to load the model from")
    method.to(device).eval()
    return TrainedRun(run.path, cfg, method, spec, ckpt, metrics)


def _read(load, where: Path):
    """Runs ``load``; a checkpoint that is unreadable or does not fit the rebuilt model
    becomes one DataError line."""
    try:
        return load()
    except (OSError, RuntimeError, KeyError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile) as exc:
        first = (str(exc).strip().splitlines() or [""])[0]
        raise DataError(f"{where} cannot be loaded into the run's model ({type(exc).__name__}: {first})") from None
