"""MLB: multi-loss balanced training with per-modality gradient multipliers (Kontras et al., 2024)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional

import torch
from torch import Tensor, nn

from ..types import Batch, LossTerms, ModelOutput
from .hparams import hparam, log_uniform
from .base import Method, register


def mlb_ratios(scores: Tensor, regression: bool = False) -> Tensor:
    """``r_m = mean_{j != m} s_j / s_m`` (classification, s = mean true-class probability), or
    its inverse ``s_m / mean_{j != m} s_j`` (regression, s = MSE), so r_m > 1 marks a modality
    that lags behind the others. For M = 2 this is ``r_0 = s_1 / s_0``, ``r_1 = 1 / r_0``.

    Args:
        scores: (M,) per-modality batch scores, M >= 2.
    """
    others = (scores.sum() - scores) / (scores.numel() - 1)
    return scores / others if regression else others / scores


def mlb_coefficients(ratios: Tensor, alpha: float, beta: Optional[float] = None) -> Tensor:
    """``k = 1 + tanh(alpha (r - 1))``; with ``beta`` the boost for r > 1 becomes
    ``k = 1 + (beta - 1) tanh(alpha (r - 1))`` (r <= 1 keeps the first form).

    Args:
        ratios: (M,) ratios from :func:`mlb_ratios`.

    Returns:
        (M,) multipliers in (0, 2) without beta, (0, beta) with it.
    """
    t = torch.tanh(alpha * (ratios - 1))
    if beta is None:
        return 1 + t
    return torch.where(ratios > 1, 1 + (beta - 1) * t, 1 + t)


@register
class MLB(Method):
    """``L = L_task(f(X), y) + unimodal_weight * sum_m L_task(f_um(X_m), y)``; after backward
    the gradients of modality m's encoder, its unimodal head and its fusion weight slice
    ``W_m`` (not the shared bias; found by structure, only for a decomposable fusion) are
    multiplied by ``k_m`` of :func:`mlb_coefficients` applied to :func:`mlb_ratios` of the
    unimodal heads' scores. Classification and regression (MSE scores, ratio inverted).

    Notes:
        Settings of the paper: alpha 0.5 / beta 10 (CREMA-D), 2.0 / 1 (AVE), 2.0 / 0.5 (UCF).

        Optimizer: the authors ran it with Adam (lr 1e-4, weight decay 1e-4). Adam divides each
        update by the running RMS of that parameter's own gradient, so a constant ``k_m`` is
        largely undone; what acts is its change over steps and its effect on the balance of the
        fused and unimodal gradient terms. ``optim.name=sgd`` makes ``k_m`` a plain step size.
    """

    name = "mlb"
    description = "MLB: multi-loss training, gradients of each modality scaled by 1 + tanh(alpha (r - 1))"
    reference = "Kontras et al., Improving Multimodal Learning with Multi-Loss Gradient Modulation, BMVC 2024"

    @dataclass
    class Hyperparameters:
        alpha: float = hparam(1.0, search=log_uniform(0.25, 4.0))
        beta: Optional[float] = hparam(None, search=log_uniform(0.5, 10.0))  # None: 1 + tanh(.) both sides
        unimodal_weight: float = 1.0


    def __init__(self, model, hparams=None) -> None:
        super().__init__(model, hparams)
        self.register_buffer("coefficients", torch.ones(len(model.modalities)))

    def training_loss(self, batch: Batch, out: ModelOutput) -> LossTerms:
        terms = {"task": self.task_loss(out.logits, batch.labels)}
        unimodal = self.unimodal_losses(out, batch.labels)
        for m, loss in unimodal.items():
            terms[f"unimodal/{m}"] = self.hparams.unimodal_weight * loss
        with torch.no_grad():
            scores = self.all_reduce_mean(self._scores(out, batch.labels, unimodal))
            ratios = mlb_ratios(scores, regression=self.model.task == "regression")
            self.coefficients.copy_(mlb_coefficients(ratios, self.hparams.alpha, self.hparams.beta))
        return LossTerms.from_terms(terms)

    def _scores(self, out: ModelOutput, labels: Tensor, losses: Dict[str, Tensor]) -> Tensor:
        """(M,) mean true-class probability of each head, or its MSE for regression."""
        if self.model.task == "regression":
            return torch.stack([losses[m].detach().float() for m in self.model.modalities])
        index = labels.long().unsqueeze(1)
        return torch.stack([out.unimodal_logits[m].float().softmax(-1).gather(1, index).mean()
                            for m in self.model.modalities])

    def modulated_parameters(self, modality: str) -> Iterator[nn.Parameter]:
        """Encoder, unimodal head and (decomposable fusions only) fusion weight slice of m."""
        groups: List[Iterator[nn.Parameter]] = [self.model.modality_parameters(modality),
                                                self.model.head_parameters(modality)]
        if getattr(self.model.fusion, "decomposable", False):
            groups.append(self.model.fusion.modality_parameters(modality))
        return (p for group in groups for p in group)

    def after_backward(self) -> Dict[str, float]:
        for m, k in zip(self.model.modalities, self.coefficients.tolist()):
            for p in self.modulated_parameters(m):
                if p.grad is not None:
                    p.grad.mul_(k)
        return {f"coeff/{m}": float(k) for m, k in zip(self.model.modalities, self.coefficients)}
