"""Gradient routing used by the game strategies."""

from __future__ import annotations

import torch
from torch import Tensor


class _GradMultiply(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, factor: float) -> Tensor:  # type: ignore[override]
        ctx.factor = factor
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        return grad * ctx.factor, None


def grad_multiply(x: Tensor, factor: float) -> Tensor:
    """Identity in the forward pass; multiplies the gradient by ``factor`` in the backward.

    ``factor == 1`` returns ``x``; ``factor == 0`` returns ``x.detach()`` (no graph kept).
    """
    if factor == 1.0:
        return x
    if factor == 0.0:
        return x.detach()
    return _GradMultiply.apply(x, factor)
