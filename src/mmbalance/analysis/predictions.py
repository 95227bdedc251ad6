"""Per-sample test predictions of a run: ``RUN_DIR/predictions.npz``.

Written by ``train`` when a run ends (with the best weights, on the test split, in
loader order) so that the error analysis can compare runs sample by sample. Arrays:

- ``label``: (N,) targets;
- ``fused``: (N, C) the method's prediction (``Method.predict``), logits;
- ``unimodal``: (M', N, C) the unimodal heads' logits of the modalities the method
  encodes, in the order of ``modalities`` (M',);
- ``task``: ``classification`` or ``regression``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable

import numpy as np
import torch

from ..errors import DataError

FILENAME = "predictions.npz"


@dataclass
class Predictions:
    """Per-sample predictions of one run on one split."""

    label: np.ndarray
    fused: np.ndarray
    unimodal: Dict[str, np.ndarray]
    task: str = "classification"

    def correct(self) -> np.ndarray:
        """(N,) bool: the fused prediction is right (classification)."""
        return self.fused.argmax(-1) == self.label

    def unimodal_correct(self, modality: str) -> np.ndarray:
        """(N,) bool: ``modality``'s head is right (classification)."""
        return self.unimodal[modality].argmax(-1) == self.label


@torch.no_grad()
def collect_predictions(method: torch.nn.Module, batches: Iterable, task: str) -> Predictions:
    """Runs ``method`` in eval mode over ``(inputs, labels)`` batches; restores every
    submodule's own train/eval flag afterwards (frozen parts may live in eval mode)."""
    modes = {m: m.training for m in method.modules()}
    method.eval()
    labels, fused, uni = [], [], {}
    device = next(method.parameters()).device
    try:
        for inputs, y in batches:
            out = method({m: x.to(device) for m, x in inputs.items()})
            labels.append(y.cpu())
            fused.append(method.predict(out).float().cpu())
            for m, z in out.unimodal_logits.items():
                uni.setdefault(m, []).append(z.float().cpu())
    finally:
        for module, mode in modes.items():
            module.training = mode
    return Predictions(torch.cat(labels).numpy(), torch.cat(fused).numpy(),
                       {m: torch.cat(v).numpy() for m, v in uni.items()}, task)


def save_predictions(method: torch.nn.Module, loader: Iterable, out_dir: str | Path) -> Path:
    """Writes ``out_dir/predictions.npz`` for ``loader`` (atomically: temp file + rename)."""
    task = getattr(getattr(method, "model", None), "task", "classification")
    preds = collect_predictions(method, loader, task)
    path = Path(out_dir) / FILENAME
    tmp = path.with_name(f".{FILENAME}.tmp{os.getpid()}")
    names = list(preds.unimodal)
    stacked = np.stack([preds.unimodal[m] for m in names]) if names else np.zeros((0,) + preds.fused.shape,
                                                                                   np.float32)
    with open(tmp, "wb") as f:
        np.savez(f, label=preds.label, fused=preds.fused, unimodal=stacked,
                 modalities=np.array(names, dtype=str), task=np.array(task))
    os.replace(tmp, path)
    return path


def load_predictions(run_dir: str | Path) -> Predictions:
    """Reads ``run_dir/predictions.npz``."""
    path = Path(run_dir) / FILENAME
    if not path.exists():
        raise DataError(f"{path} does not exist (the run predates per-sample predictions, or did not finish)")
    try:
        with np.load(path, allow_pickle=False) as f:
            names = [str(m) for m in f["modalities"]]
            return Predictions(f["label"], f["fused"], {m: f["unimodal"][i] for i, m in enumerate(names)},
                               str(f["task"]))
    except (KeyError, ValueError, OSError) as exc:
        raise DataError(f"{path} is not a predictions file ({type(exc).__name__}: {exc})") from None
