"""Per-sample test predictions of a finished run, read back through its :class:`RunDir`."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import torch

from ..engine.predictions import Predictions, collect_predictions
from ..engine.rundir import RunDir

__all__ = ["Predictions", "collect_predictions", "load_predictions", "save_predictions"]


def save_predictions(method: torch.nn.Module, loader: Iterable, out_dir: str | Path) -> Path:
    """Writes ``out_dir``'s predictions file for ``loader`` (see :meth:`RunDir.write_predictions`)."""
    return RunDir(out_dir).write_predictions(method, loader)


def load_predictions(run_dir: str | Path) -> Predictions:
    """Reads a run's predictions file."""
    return RunDir(run_dir).read_predictions()
