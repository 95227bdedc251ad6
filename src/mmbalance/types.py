"""Typed values passed between the layers of mmbalance."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, NamedTuple, Optional, Union

import torch
from torch import Tensor


class Batch(NamedTuple):
    """One mini-batch.

    Attributes:
        inputs: modality name -> tensor with first axis B.
        labels: (B,) int64 class indices, or (B,) float targets for regression.
    """

    inputs: Dict[str, Tensor]
    labels: Tensor


@dataclass
class ModelOutput:
    """What :class:`mmbalance.MultimodalModel` returns.

    Attributes:
        logits: (B, C) fused prediction (C = 1 for regression).
        unimodal_logits: modality -> (B, C) prediction of that modality's own head.
        features: modality -> (B, D_m) encoder output (training-mode, live in the graph).
    """

    logits: Tensor
    unimodal_logits: Dict[str, Tensor]
    features: Dict[str, Tensor]


@dataclass
class LossTerms:
    """A loss and its named, already weighted parts.

    Attributes:
        total: scalar to backpropagate; equals the sum of ``terms``.
        terms: name -> scalar tensor (weighted contribution, in the graph).
        logs: extra detached diagnostics (for example per-subset JSD values): floats, or
            detached 0-d tensors that are read (``float``) only when they are logged.
    """

    total: Tensor
    terms: Dict[str, Tensor]
    logs: Dict[str, Union[float, Tensor]] = field(default_factory=dict)

    @staticmethod
    def from_terms(terms: Dict[str, Tensor], logs: Optional[Dict[str, Union[float, Tensor]]] = None) -> "LossTerms":
        """Builds a LossTerms whose total is the sum of ``terms``."""
        values = list(terms.values())
        total = torch.stack([v.float() for v in values]).sum() if values else torch.zeros(())
        return LossTerms(total=total, terms=dict(terms), logs=dict(logs or {}))
