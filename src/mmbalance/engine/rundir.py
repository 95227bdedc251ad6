"""The run folder: every file name of an ``mmbalance train`` output, and its I/O.

::

    OUT/config.yaml            the run's configuration (RunConfig.to_dict)
    OUT/inputs.json            what the model takes: per-modality sample shapes, the train
                               split's standardization, classes (data.InputSpec)
    OUT/metrics.json           the final metrics (written last: a finished run has it)
    OUT/predictions.npz        per-sample test predictions (engine/predictions.py)
    OUT/checkpoints/last.ckpt  rewritten every epoch; --resume continues from it
    OUT/checkpoints/best.ckpt  the best epoch on the monitored validation metric
    OUT/stages/<name>/         a pipeline method's stages, each a run folder itself
    OUT/logs/                  the CSV logger's per-epoch values
    OUT/probes.png             linear-probe history (trainer.probe_every)

Every writer goes through a temporary file, fsync and a rename, so a kill during a
write leaves the previous good file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional

import numpy as np
import torch
import yaml

from ..errors import DataError
from .predictions import Predictions, collect_predictions
from .safe_load import load_checkpoint

#: prefix of the method's entries in the Lightning module's ``state_dict`` (its attribute name)
METHOD_PREFIX = "method."


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Writes ``data`` to ``path`` via a temporary file, fsync and a rename."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_text(path: Path, text: str) -> None:
    """Writes ``text`` to ``path`` via a temporary file, fsync and a rename."""
    atomic_write_bytes(Path(path), text.encode())


def method_state(checkpoint: str | Path) -> Dict[str, torch.Tensor]:
    """The method's own ``state_dict`` from a training checkpoint (the entries under
    :data:`METHOD_PREFIX`, prefix removed), loaded weights-only (:mod:`.safe_load`)."""
    state = load_checkpoint(checkpoint)["state_dict"]
    return {k[len(METHOD_PREFIX):]: v for k, v in state.items() if k.startswith(METHOD_PREFIX)}


class RunDir:
    """One run folder (see the module docstring for its layout).

    Args:
        path: the folder (need not exist yet).
    """

    CONFIG = "config.yaml"
    INPUTS = "inputs.json"
    METRICS = "metrics.json"
    PREDICTIONS = "predictions.npz"
    CHECKPOINTS = "checkpoints"
    BEST = "best"  # ModelCheckpoint's file name stem
    LAST = "last"
    STAGES = "stages"
    LOGS = "logs"
    PROBES_PLOT = "probes.png"
    STAGE_KEY = "stage.key"  # a stage's configuration hash: a resume reuses it only when unchanged

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    # ------------------------------------------------------------------ paths
    @property
    def config(self) -> Path:
        return self.path / self.CONFIG

    @property
    def inputs(self) -> Path:
        return self.path / self.INPUTS

    @property
    def metrics(self) -> Path:
        return self.path / self.METRICS

    @property
    def predictions(self) -> Path:
        return self.path / self.PREDICTIONS

    @property
    def checkpoints(self) -> Path:
        return self.path / self.CHECKPOINTS

    @property
    def last_checkpoint(self) -> Path:
        return self.checkpoints / f"{self.LAST}.ckpt"

    @property
    def best_checkpoint(self) -> Path:
        return self.checkpoints / f"{self.BEST}.ckpt"

    @property
    def stages(self) -> Path:
        return self.path / self.STAGES

    @property
    def probes_plot(self) -> Path:
        return self.path / self.PROBES_PLOT

    def stage(self, name: str) -> "RunDir":
        """The run folder of pipeline stage ``name``."""
        return RunDir(self.stages / name)

    def link_to(self, target: "RunDir") -> None:
        """Makes this folder a (relative) symbolic link to ``target``, a cached stage."""
        if self.path.is_symlink() or self.path.exists():
            if self.path.resolve() == target.path.resolve():
                return
            raise DataError(f"{self.path} exists and is not the cached stage {target.path}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.symlink_to(os.path.relpath(target.path.resolve(), self.path.parent.resolve()))

    def stage_names(self) -> List[str]:
        """Stages that have a best checkpoint, sorted."""
        return sorted(p.parent.parent.name for p in self.stages.glob(f"*/{self.CHECKPOINTS}/{self.BEST}.ckpt"))

    def write_stage_key(self, key: str) -> None:
        atomic_write_text(self.path / self.STAGE_KEY, key)

    def read_stage_key(self) -> Optional[str]:
        path = self.path / self.STAGE_KEY
        return path.read_text().strip() if path.exists() else None

    def is_finished(self) -> bool:
        return self.metrics.exists()

    def mkdir(self) -> "RunDir":
        self.path.mkdir(parents=True, exist_ok=True)
        return self

    # ------------------------------------------------------------------ config and metrics
    def write_config(self, tree: Mapping[str, Any]) -> None:
        atomic_write_text(self.config, yaml.safe_dump(dict(tree), sort_keys=False))

    def read_config(self) -> Optional[Dict[str, Any]]:
        """``config.yaml``, else the ``config`` saved in ``metrics.json``, else None."""
        self.check_is_run()
        if self.config.exists():
            return yaml.safe_load(self.config.read_text())
        return self.read_metrics().get("config")

    def write_inputs(self, tree: Mapping[str, Any]) -> None:
        atomic_write_text(self.inputs, json.dumps(dict(tree)))

    def read_inputs(self) -> Optional[Dict[str, Any]]:
        """``inputs.json``; None for a run written before it existed."""
        if not self.inputs.exists():
            return None
        try:
            return json.loads(self.inputs.read_text())
        except ValueError as exc:
            raise DataError(f"{self.inputs} is not valid JSON ({exc})") from None

    def write_metrics(self, metrics: Mapping[str, Any]) -> None:
        atomic_write_text(self.metrics, json.dumps(metrics, indent=2, default=str))

    def enclosing_run(self) -> Optional[Path]:
        """For a file inside a run folder (``metrics.json``, ``checkpoints/best.ckpt``), the
        run folder itself; None when there is none."""
        for parent in [self.path.parent, *self.path.parent.parents][:4]:
            if (parent / self.CONFIG).is_file() or (parent / self.METRICS).is_file():
                return parent
        return None

    def check_is_run(self) -> None:
        """DataError unless this is a folder; a file inside a run names the run folder to pass."""
        if self.path.is_dir():
            return
        run = self.enclosing_run() if self.path.exists() else None
        if run is not None:
            raise DataError(f"{self.path} is inside the run folder {run}; pass the run folder: {run}")
        if self.path.is_file():
            raise DataError(f"{self.path} is a file, not a run folder (an `mmbalance train --out` folder)")
        if not self.path.is_dir():
            raise DataError(f"run directory {self.path} does not exist")

    def read_metrics(self) -> Dict[str, Any]:
        """``metrics.json``; DataError when the run is missing or unfinished."""
        self.check_is_run()
        if not self.metrics.exists():
            raise DataError(f"{self.path} has no {self.METRICS}: not a finished `mmbalance train` run")
        try:
            return json.loads(self.metrics.read_text())
        except ValueError as exc:
            raise DataError(f"{self.metrics} is not valid JSON ({exc})") from None

    # ------------------------------------------------------------------ predictions
    def write_predictions(self, method: torch.nn.Module, loader: Iterable) -> Path:
        """Runs ``method`` over ``loader`` and writes ``predictions.npz`` (atomically)."""
        task = getattr(getattr(method, "model", None), "task", "classification")
        preds = collect_predictions(method, loader, task)
        names = list(preds.unimodal)
        stacked = (np.stack([preds.unimodal[m] for m in names]) if names
                   else np.zeros((0,) + preds.fused.shape, np.float32))
        tmp = self.predictions.with_name(f".{self.PREDICTIONS}.tmp{os.getpid()}")
        with open(tmp, "wb") as f:
            np.savez(f, label=preds.label, fused=preds.fused, unimodal=stacked,
                     modalities=np.array(names, dtype=str), task=np.array(task))
        os.replace(tmp, self.predictions)
        return self.predictions

    def read_predictions(self) -> Predictions:
        path = self.predictions
        if not path.exists():
            raise DataError(f"{path} does not exist (the run predates per-sample predictions, or did not finish)")
        try:
            with np.load(path, allow_pickle=False) as f:
                names = [str(m) for m in f["modalities"]]
                return Predictions(f["label"], f["fused"], {m: f["unimodal"][i] for i, m in enumerate(names)},
                                   str(f["task"]))
        except (KeyError, ValueError, OSError) as exc:
            raise DataError(f"{path} is not a predictions file ({type(exc).__name__}: {exc})") from None

    # ------------------------------------------------------------------ checkpoints
    def checkpoint_to_load(self, metrics: Optional[Mapping[str, Any]] = None) -> Optional[Path]:
        """The checkpoint a finished run's test score came from: the one ``metrics.json``
        names, else ``best.ckpt``, else ``last.ckpt``; None when there is none."""
        names = ((metrics or {}).get("best_checkpoint"), f"{self.BEST}.ckpt", f"{self.LAST}.ckpt")
        for name in names:
            if name and (self.checkpoints / name).exists():
                return self.checkpoints / name
        return None

    @staticmethod
    def method_state(checkpoint: str | Path) -> Dict[str, torch.Tensor]:
        """The method's ``state_dict`` in a training checkpoint (see :func:`method_state`)."""
        return method_state(checkpoint)

    def stage_states(self, names: Iterable[str]) -> Dict[str, Dict[str, torch.Tensor]]:
        """Stage name -> that stage method's state from its best checkpoint."""
        return {name: method_state(self.stage(name).best_checkpoint) for name in names}

    @staticmethod
    def load_method_state(method: torch.nn.Module, checkpoint: str | Path) -> None:
        """Loads a training checkpoint's weights and state into ``method``."""
        method.load_state_dict(method_state(checkpoint))
