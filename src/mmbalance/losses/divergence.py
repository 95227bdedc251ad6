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
