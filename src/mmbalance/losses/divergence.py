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


#: On the CPU, :class:`_JensenShannonRows` computes with the classes as the first axis when
#: there are at most ``CLASSES_FIRST_MAX`` classes and at least ``CLASSES_FIRST_MIN_ROWS``
#: rows: a softmax or a sum over a short last axis is a slow reduction there, and the
#: layout's copy costs more than it saves on few rows. ``studies/jsd_layout.py`` (forward and
#: backward, 2 x P x 64 rows; docs/performance/small_models/jsd_layout.md) measured, against
#: the last-axis layout, 0.52-0.77x the time with 2-5 classes at P = 32 or 128, 0.90-0.96x
#: with 8, 0.94-1.15x with 12, 1.09-1.39x from 16 classes on, and 1.08-1.22x at P = 1.
CLASSES_FIRST_MAX = 8
CLASSES_FIRST_MIN_ROWS = 1024


class _JensenShannonRows(torch.autograd.Function):
    """Per-row JSD of perturbed logits (..., B, C) against reference logits (B, C), float32,
    with the gradient written out (few large kernels instead of an autograd graph of ~30
    small ones). With ``h = log(m / p)`` and ``h' = log(m / q)``:
    ``JSD = -0.5 sum (p h + q h')``, ``dJSD/da = -0.5 p (h - sum p h)`` for the perturbed
    logits a, and the same with q, h' for the reference (summed over its broadcast copies).
    Rows outside [0, ln 2] (rounding) are clamped and pass no gradient, as ``clamp`` does.
    On the CPU with few classes and many rows (:data:`CLASSES_FIRST_MAX`) it computes in a
    (C, ..., B) layout; the values are the same up to float rounding."""

    @staticmethod
    def forward(ctx, perturbed: Tensor, reference: Tensor) -> Tensor:  # type: ignore[override]
        acc = torch.promote_types(torch.promote_types(perturbed.dtype, reference.dtype), torch.float32)
        classes = perturbed.shape[-1]
        first = (perturbed.device.type == "cpu" and classes <= CLASSES_FIRST_MAX and perturbed.dim() >= 2
                 and perturbed.numel() >= CLASSES_FIRST_MIN_ROWS * classes)
        if first:
            a = perturbed.to(acc).movedim(-1, 0).contiguous()  # (C, ..., B)
            b = reference.to(acc).movedim(-1, 0)
            b = b.reshape(classes, *[1] * (a.dim() - b.dim()), *b.shape[1:])
        else:
            a, b = perturbed.to(acc), reference.to(acc)
        axis = 0 if first else -1
        log_p = F.log_softmax(a, dim=axis)   # float32 at least (float64 stays)
        log_q = F.log_softmax(b, dim=axis)
        p, q = log_p.exp(), log_q.exp()
        d = log_q - log_p
        common = torch.log1p(torch.expm1(-d.abs()) / 2)   # log((1 + e^-|d|) / 2)
        h_p = torch.relu(d) + common                      # log(m / p)
        h_q = torch.relu(-d) + common                     # log(m / q)
        sum_p, sum_q = (p * h_p).sum(axis, keepdim=True), (q * h_q).sum(axis, keepdim=True)
        raw = (-0.5 * (sum_p + sum_q)).squeeze(axis)
        value = raw.clamp(0.0, LN2)
        ctx.save_for_backward(p, q, h_p, h_q, sum_p, sum_q, (raw >= 0) & (raw <= LN2))
        ctx.shapes = (first, perturbed.dtype, reference.dim(), reference.dtype)
        return value

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        p, q, h_p, h_q, sum_p, sum_q, inside = ctx.saved_tensors
        first, dtype_a, dims_b, dtype_b = ctx.shapes
        axis = 0 if first else -1
        g = ((grad.to(p.dtype) * inside) * -0.5).unsqueeze(axis)
        grad_a = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_a = g * p * (h_p - sum_p)
            grad_a = (grad_a.movedim(0, -1) if first else grad_a).to(dtype_a)
        if ctx.needs_input_grad[1]:
            grad_b = g * q * (h_q - sum_q)
            lead = grad_b.dim() - dims_b                  # the reference's broadcast copies
            if lead:
                grad_b = grad_b.sum(dim=tuple(range(1, 1 + lead)) if first else tuple(range(lead)))
            grad_b = (grad_b.movedim(0, -1) if first else grad_b).to(dtype_b)
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
