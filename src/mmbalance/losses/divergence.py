"""Jensen-Shannon divergence between two categorical predictions given as logits."""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

LN2 = math.log(2.0)


def _log_half_one_plus_exp(d: Tensor) -> Tensor:
    """``log((1 + e^d) / 2)``, exact at d = 0 and finite for any finite d."""
    return torch.relu(d) + torch.log1p(torch.expm1(-d.abs()) / 2)


def jensen_shannon_per_sample(logits_p: Tensor, logits_q: Tensor) -> Tensor:
    """Per-row JSD of ``softmax(logits_p)`` and ``softmax(logits_q)``, natural log.

    ``0.5 KL(p || m) + 0.5 KL(q || m)`` with ``m = (p + q) / 2``, computed in float32 from
    log-probabilities: ``log p - log m = -log((1 + q/p) / 2)``. It is exactly 0 for equal
    inputs, symmetric, within [0, ln 2], and finite for logits of +-1e4 and under fp16/bf16
    autocast (inputs are promoted to float32).

    Args:
        logits_p: (N, C) logits.
        logits_q: (N, C) logits.

    Returns:
        (N,) divergences in [0, ln 2].
    """
    return jensen_shannon_log_probs(F.log_softmax(logits_p.float(), dim=-1),
                                    F.log_softmax(logits_q.float(), dim=-1))


def jensen_shannon_log_probs(log_p: Tensor, log_q: Tensor) -> Tensor:
    """JSD over the last axis from log-probabilities that broadcast against each other.

    Lets a caller take the log-softmax of a reference once and compare it with many
    perturbed copies: ``log_p`` (P, B, C) against ``log_q`` (B, C) gives (P, B).
    """
    kl_p = -(log_p.exp() * _log_half_one_plus_exp(log_q - log_p)).sum(-1)
    kl_q = -(log_q.exp() * _log_half_one_plus_exp(log_p - log_q)).sum(-1)
    return (0.5 * (kl_p + kl_q)).clamp(0.0, LN2)


class _JensenShannonRows(torch.autograd.Function):
    """Per-row JSD of perturbed logits (..., B, C) against reference logits (B, C), float32,
    with the gradient written out (few large kernels instead of an autograd graph of ~30
    small ones). With ``h = log(m / p)`` and ``h' = log(m / q)``:
    ``JSD = -0.5 sum (p h + q h')``, ``dJSD/da = -0.5 p (h - sum p h)`` for the perturbed
    logits a, and the same with q, h' for the reference (summed over its broadcast copies).
    Rows outside [0, ln 2] (rounding) are clamped and pass no gradient, as ``clamp`` does."""

    @staticmethod
    def forward(ctx, perturbed: Tensor, reference: Tensor) -> Tensor:  # type: ignore[override]
        acc = torch.promote_types(torch.promote_types(perturbed.dtype, reference.dtype), torch.float32)
        log_p = F.log_softmax(perturbed.to(acc), dim=-1)   # float32 at least (float64 stays)
        log_q = F.log_softmax(reference.to(acc), dim=-1)
        p, q = log_p.exp(), log_q.exp()
        d = log_q - log_p
        common = torch.log1p(torch.expm1(-d.abs()) / 2)   # log((1 + e^-|d|) / 2)
        h_p = torch.relu(d) + common                      # log(m / p)
        h_q = torch.relu(-d) + common                     # log(m / q)
        p_h, q_h = p * h_p, q * h_q
        raw = -0.5 * (p_h.sum(-1) + q_h.sum(-1))
        value = raw.clamp(0.0, LN2)
        ctx.save_for_backward(p, q, h_p, h_q, p_h.sum(-1, keepdim=True), q_h.sum(-1, keepdim=True),
                              (raw >= 0) & (raw <= LN2))
        ctx.shapes = (perturbed.shape, perturbed.dtype, reference.shape, reference.dtype)
        return value

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        p, q, h_p, h_q, sum_p, sum_q, inside = ctx.saved_tensors
        shape_a, dtype_a, shape_b, dtype_b = ctx.shapes
        g = (grad.to(p.dtype) * inside).unsqueeze(-1) * -0.5
        grad_a = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_a = (g * p * (h_p - sum_p)).to(dtype_a)
        if ctx.needs_input_grad[1]:
            grad_b = g * q * (h_q - sum_q)
            grad_b = grad_b.reshape(-1, *shape_b).sum(0).to(dtype_b) if grad_b.dim() > len(shape_b) else grad_b.to(dtype_b)
        return grad_a, grad_b


def jensen_shannon_rows(perturbed: Tensor, reference: Tensor) -> Tensor:
    """(..., B) JSD of ``softmax(perturbed)`` (..., B, C) against ``softmax(reference)`` (B, C):
    the values of :func:`jensen_shannon_log_probs` on their log-softmaxes, in one custom
    autograd node (the MIPD's many perturbed copies against one reference)."""
    return _JensenShannonRows.apply(perturbed, reference)


def masked_mean(values: Tensor, mask: Optional[Tensor] = None) -> Tensor:
    """Mean of ``values`` over ``mask``; 0 (still in the graph) when the mask is empty."""
    if mask is None:
        return values.mean() if values.numel() else values.sum()
    count = mask.sum()
    return (values * mask).sum() / count.clamp(min=1)


def jensen_shannon(logits_p: Tensor, logits_q: Tensor, mask: Optional[Tensor] = None) -> Tensor:
    """Batch-mean Jensen-Shannon divergence (natural log) between two sets of logits.

    Paper Eq. 10. See :func:`jensen_shannon_per_sample` for the numerics.

    Args:
        logits_p: (N, C) logits.
        logits_q: (N, C) logits.
        mask: optional (N,) bool; only these rows are averaged (0 if none).

    Returns:
        Scalar in [0, ln 2].
    """
    return masked_mean(jensen_shannon_per_sample(logits_p, logits_q), mask)
