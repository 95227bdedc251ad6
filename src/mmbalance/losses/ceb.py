"""Conditional entropy bottleneck term of MCR (paper Eq. 13)."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class CEBHead(nn.Module):
    """Reconstruction head ``h``: ``Linear(C, d, no bias) -> ReLU -> Linear(d, sum D_m, no bias)``.

    As in the authors' code it reads the fused logits (detached by the caller), not
    probabilities and not labels.
    """

    def __init__(self, num_classes: int, feature_size: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(num_classes, hidden, bias=False), nn.ReLU(),
                                 nn.Linear(hidden, feature_size, bias=False))

    def forward(self, logits: Tensor) -> Tensor:
        return self.net(logits)


def ceb(reconstruction: Tensor, features: Sequence[Tensor]) -> Tensor:
    """Mean squared error between ``h(logits)`` and the concatenated live features.

    Args:
        reconstruction: (B, sum D_m) output of :class:`CEBHead`.
        features: M tensors (B, D_m), concatenated in model order.

    Returns:
        Scalar: ``mean((reconstruction - [z_1, ..., z_M])**2)``.
    """
    target = torch.cat([f.float() for f in features], dim=-1)
    return F.mse_loss(reconstruction.float(), target)
