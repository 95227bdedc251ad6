"""Per-sample test predictions of a run (``RunDir.predictions``, ``predictions.npz``).

Written by ``train`` when a run ends (with the best weights, on the test split, in
loader order) so that the error analysis can compare runs sample by sample. Arrays:

- ``label``: (N,) targets;
- ``fused``: (N, C) the method's prediction (``Method.predict``), logits;
- ``unimodal``: (M', N, C) the unimodal heads' logits of the modalities the method
  encodes, in the order of ``modalities`` (M',);
- ``task``: ``classification`` or ``regression``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterable

import numpy as np
import torch



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
