"""Conditional entropy bottleneck term of MCR (paper Eq. 13)."""

from __future__ import annotations

from functools import partial
from typing import Dict, Mapping, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from ..models.lazy import module_device, placeholder, realize
from ..types import ModelOutput


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


class CEB(nn.Module):
    """``weight * ceb(h(detached fused logits), features)``: the conditional entropy
    bottleneck term of MCR (paper Eq. 13), with its reconstruction head ``h``.

    Args:
        weight: >= 0 (1 in the authors' Conformer, MOSEI and Something-Something runs).
        hidden: width d of the head (default: mean D_m).
        num_classes, feature_dims: build the head now instead of on :meth:`bind`.

    Example:
        >>> ceb_term = CEB(weight=1.0).bind(model)
        >>> loss = ceb_term(out)
    """

    def __init__(self, weight: float = 1.0, hidden: Optional[int] = None, num_classes: Optional[int] = None,
                 feature_dims: Optional[Mapping[str, int]] = None) -> None:
        super().__init__()
        if not weight >= 0:
            raise ConfigError(f"CEB weight must be >= 0, got {weight}")
        self.weight, self.hidden = weight, hidden
        self.head: Optional[CEBHead] = None
        if num_classes is not None and feature_dims is not None:
            self.build(feature_dims, num_classes)

    def bind(self, model: nn.Module) -> "CEB":
        """Builds the head for ``model`` (call before creating the optimizer). For a model
        that has not seen a batch yet it is a placeholder, sized on that batch."""
        if self.head is None and getattr(model, "materialized", True):
            self.build(model.feature_dims, model.num_classes)
            self.to(module_device(model))
        elif self.head is None:
            self.head = placeholder(partial(self._head, model.num_classes), model.modalities, module_device(model))
            model.when_materialized(self._realize)
        return self

    def build(self, feature_dims: Mapping[str, int], num_classes: int) -> None:
        self.head = self._head(num_classes, dict(feature_dims))

    def _head(self, num_classes: int, dims: Dict[str, int]) -> CEBHead:
        hidden = self.hidden or max(1, round(sum(dims.values()) / len(dims)))
        return CEBHead(num_classes, sum(dims.values()), hidden)

    def _realize(self, dims: Dict[str, int]) -> None:
        self.head = realize(self.head, dims)

    def forward(self, out: ModelOutput) -> Tensor:
        """The weighted term for one batch's model output (head fed the detached logits)."""
        reconstruction = self.head(out.logits.detach().float())
        return self.weight * ceb(reconstruction, list(out.features.values()))
