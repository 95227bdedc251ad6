"""AGM: adaptive gradient modulation with zero-masking Shapley values (Li et al., ICCV 2023)."""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations
from typing import Any, Dict, FrozenSet, Mapping, Optional, Sequence

import torch
from torch import Tensor

from ..shapley import shapley
from ..types import Batch, LossTerms, ModelOutput
from .hparams import hparam, log_uniform
from .base import Method, register


def shapley_shares(values: Mapping[FrozenSet[str], Tensor], modalities: Sequence[str]) -> Dict[str, Tensor]:
    """Shapley value of each modality plus ``f(empty)/M``, so the shares sum to the full output.

    ``phi_m = sum_{S without m} |S|!(M-|S|-1)!/M! (f(S + m) - f(S))`` with ``f(empty) = 0``
    (any ``f(empty)`` cancels exactly once ``f(empty)/M`` is added). For M = 2 this is AGM's
    ``m_a = 0.5 (full - zero_a + zero_v)``, where ``zero_a`` is the output with a zeroed.

    Args:
        values: non-empty coalition (modalities kept) -> (B, C) fused output.
        modalities: the M modalities.
    """
    return shapley(modalities, lambda coalition: values[coalition] if coalition else 0.0)


def scale_gradient(x: Tensor, k: float) -> Tensor:
    """Identity in the forward pass, gradient times ``k`` in the backward pass (AGM's
    backward hook on each modality's share)."""
    return x.detach() + k * (x - x.detach())


@register
class AGM(Method):
    """``L = L_task(sum_m phi_m, y)``: the fused logits are rebuilt as the sum of the
    modalities' Shapley shares ``phi_m`` (:func:`shapley_shares`; extra eval-mode passes of the model
    with modalities zeroed, gradients flowing through them as in the official code), and
    the gradient reaching share m is multiplied by
    ``k_m = exp(alpha * min(target_m - r_m, 10))``, where, with ``s_m = mean -log p_m[y]``
    (p clamped at 1e-8) and running means ``T_m`` of ``s_m`` over all steps so far,
    ``r_m = exp(M/(M-1) (mean(s) - s_m))`` and ``target_m = exp(M/(M-1) (mean(T) - T_m))``
    (M = 2: ``r_a = exp(s_v - s_a)``; the 3-modality form of the MLB repository). A weaker
    modality (larger loss) gets ``r < target`` and ``k > 1``; BalanceBenchmark flips this
    sign, here it is not flipped. ``T`` is updated AFTER ``k`` is computed. After backward,
    if any fusion weight gradient leaves [-1, 1], all gradients are clipped to norm 1.
    After ``end_epoch`` (0-based, inclusive) the coefficients stop being updated and keep
    their last value, while ``T`` goes on updating: the official code stops calling
    ``update_scale`` after ``modulation_ends`` = 20 (epochs counted from 1, so the first 20
    epochs, ``end_epoch=19`` here), and its backward hooks keep the last scale. The MCR
    authors' AGM has this gate commented out (``end_epoch=None``: no end).
    Any fusion, M >= 2 (2^M - 2 extra forward passes), classification only.

    Notes:
        Optimizer: official SGD (momentum 0.9, weight decay 1e-4, StepLR(70, 0.1));
        alpha 1.0 by default, 1.5 to 3.0 in the CREMA-D runs. Under Adam each update is divided
        by the running RMS of the parameter's own gradient, so a slowly varying ``k_m`` is
        largely undone; what remains is the relative weight of the full and zero-masked paths.
    """

    name = "agm"
    description = "AGM: Shapley shares from zero-masked passes, gradient of each scaled by exp(alpha * gap)"
    reference = "Li et al., Boosting Multi-modal Model Performance with Adaptive Gradient Modulation, ICCV 2023"
    requires = frozenset({"classification"})

    @dataclass
    class Hyperparameters:
        alpha: float = hparam(1.0, search=log_uniform(0.25, 4.0))  # CREMA-D runs: 1.5 to 3.0
        end_epoch: Optional[int] = 19  # last epoch whose coefficients update; None: no end


    def __init__(self, model, hparams=None) -> None:
        super().__init__(model, hparams)
        M = len(model.modalities)
        self.register_buffer("running_scores", torch.zeros(M))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))
        self.register_buffer("coefficients", torch.ones(M))
        self.epoch = 0

    def on_epoch_start(self, epoch: int, train_loader=None) -> Dict[str, float]:
        self.epoch = epoch
        return {}

    def get_extra_state(self) -> Dict[str, Any]:
        return {"epoch": self.epoch}

    def set_extra_state(self, state: Optional[Dict[str, Any]]) -> None:
        if state:
            self.epoch = int(state["epoch"])

    def coalition_outputs(self, inputs: Mapping[str, Tensor], full: Tensor) -> Dict[FrozenSet[str], Tensor]:
        """Fused (B, C) outputs of every non-empty coalition, the others' inputs zeroed, in
        eval mode (no dropout, frozen norm statistics); ``full`` is the training-mode pass."""
        mods, was_training = self.model.modalities, self.model.training
        values = {frozenset(mods): full}
        self.model.eval()
        try:
            for size in range(1, len(mods)):
                for kept in map(frozenset, combinations(mods, size)):
                    masked = {m: x if m in kept else torch.zeros_like(x) for m, x in inputs.items()}
                    values[kept] = self.model.fuse(self.model.encode(masked))
        finally:
            self.model.train(was_training)
        return values

    def modulate(self, scores: Tensor) -> Tensor:
        """(M,) scores -> (M,) coefficients from the running means BEFORE this step; then
        the running means take this step's scores."""
        M, T, n = scores.numel(), self.running_scores, int(self.steps)
        gain = M / (M - 1)
        ratio = torch.exp(gain * (scores.mean() - scores))
        target = torch.exp(gain * (T.mean() - T))
        coefficients = torch.exp(self.hparams.alpha * torch.clamp(target - ratio, max=10.0))
        self.running_scores.copy_(T * n / (n + 1) + scores / (n + 1))
        self.steps += 1
        return coefficients

    def training_loss(self, batch: Batch, out: ModelOutput) -> LossTerms:
        shares = shapley_shares(self.coalition_outputs(batch.inputs, out.logits), self.model.modalities)
        labels = batch.labels.long().unsqueeze(1)
        with torch.no_grad():
            probs = [shares[m].float().softmax(-1).gather(1, labels).clamp_min(1e-8) for m in self.model.modalities]
            scores = self.all_reduce_mean(torch.stack([-p.log().mean() for p in probs]))
            coefficients = self.modulate(scores)  # the running means update in every epoch
            if self.hparams.end_epoch is None or self.epoch <= self.hparams.end_epoch:
                self.coefficients.copy_(coefficients)
        logits = sum(scale_gradient(shares[m], float(k)) for m, k in zip(self.model.modalities, self.coefficients))
        return LossTerms.from_terms({"task": self.task_loss(logits, batch.labels)})

    def after_backward(self) -> Dict[str, float]:
        grads = [p.grad for p in self.model.fusion_parameters() if p.grad is not None and p.dim() >= 2]
        clipped = any(bool((g.abs() > 1).any()) for g in grads)
        if clipped:
            torch.nn.utils.clip_grad_norm_([p for p in self.parameters() if p.grad is not None], max_norm=1.0)
        logs = {f"coeff/{m}": float(k) for m, k in zip(self.model.modalities, self.coefficients)}
        return {**logs, "clipped": float(clipped)}
