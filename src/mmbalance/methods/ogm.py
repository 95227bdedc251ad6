"""OGM and OGM-GE: on-the-fly gradient modulation (Peng et al., CVPR 2022)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Iterator, Optional

import torch
from torch import Tensor, nn

from ..types import Batch, LossTerms, ModelOutput
from .hparams import hparam, log_uniform
from .base import Method, register


def ogm_coefficients(scores: Tensor, alpha: float) -> Tensor:
    """OGM's Eq. 10 for M modalities: ``k_m = 1 - tanh(alpha * rho_m)`` if ``rho_m > 1``
    else 1, with ``rho_m = s_m / min_j s_j``.

    For M = 2 this is the official rule (only the stronger modality is damped), for more
    BalanceBenchmark's. As officially, tanh takes ``rho``, not ``rho - 1``. On an exact tie
    the official else-branch damps the first modality by ``1 - tanh(alpha)``; here neither.

    Args:
        scores: (M,) batch scores ``s_m = sum_i softmax(out_m)[i, y_i]``.
        alpha: modulation strength.

    Returns:
        (M,) coefficients in (0, 1].
    """
    ratio = scores / scores.min()
    return torch.where(ratio > 1, 1 - torch.tanh(alpha * ratio), torch.ones_like(ratio))


def ogm_plus_coefficients(scores: Tensor, factor: float = 4.0) -> Tensor:
    """OGM_plus (Wei et al., TPAMI 2024): the weakest modality's coefficient is ``factor``,
    every other modality's 1; all 1 when the scores are equal.

    For M = 2 this is the official rule (BML_TPAMI2024 code/main.py:128-136: if
    ``s_1 / s_2 > 1`` then ``k_2 = 4``, else ``k_1 = 4``; the other 1). For more modalities
    the boosted one is the one OGM leaves undamped (:func:`ogm_coefficients`): the lowest
    score. On an exact tie the official else-branch boosts the first modality; here none.

    Args:
        scores: (M,) batch scores ``s_m = sum_i softmax(out_m)[i, y_i]``.
        factor: the weak modality's gradient multiplier (officially a constant 4).

    Returns:
        (M,) coefficients, ``factor`` or 1.
    """
    weakest = (scores == scores.min()) & (scores.max() > scores.min())
    return torch.where(weakest, torch.full_like(scores, factor), torch.ones_like(scores))


@register
class OGM(Method):
    """``L = L_task(f(X), y)``; after backward the encoder weight gradients of modality m are
    multiplied by ``k_m = 1 - tanh(alpha * s_m / min_j s_j)`` for the dominant modality (1
    for the others; :func:`ogm_coefficients`), ``s_m = sum_i softmax(out_m)[i, y_i]``; with
    ``plus`` (TPAMI 2024's OGM_plus) instead ``k_m = plus_factor`` for the weakest modality
    and 1 for the others (:func:`ogm_plus_coefficients`).

    Before backward, each modality is scored by its
    share ``out_m = z_m W_m^T + b/M`` (B, C) of the linear fusion; after backward, while
    ``start_epoch <= epoch <= end_epoch``, the gradient of every weight tensor (ndim >= 2) of
    modality m's encoder is multiplied by ``k_m`` (:func:`ogm_coefficients`). The official
    code touches the encoders' conv kernels only, so biases and norm scales are left alone.
    Needs a decomposable fusion (``concat_linear``) and classification.

    Notes:
        Optimizer: the official code uses SGD (lr 1e-3, momentum 0.9, weight decay 1e-4,
        StepLR(70, 0.1), batch 64); alpha 0.8 for CREMA-D, 0.1 for VGGSound. Under Adam
        (``optim.name=adam``, the default here and the MCR authors' choice) each update is
        divided by the running RMS of that parameter's own gradient, so a constant ``k_m`` is
        largely undone; only its change from step to step survives. Use ``optim.name=sgd`` for
        the published setting.

        TPAMI 2024 (Wei et al., "On-the-fly Modulation for Balanced Multimodal Learning",
        GeWu-Lab/BML_TPAMI2024) options. Warm-up: its code modulates no gradient while
        ``epoch <= 5`` (code/main.py:91 and :116, 0-based epochs, main.py:275) and otherwise
        only while ``modulation_starts <= epoch <= modulation_ends`` (main.py:154;
        scripts/train_ogm.sh: 0 and 60, alpha 0.8). That is this method's epoch window:
        ``method.start_epoch=6 method.end_epoch=60`` (no second warm-up key). ``plus``:
        ``--use_OGM_plus`` (main.py:37, :128-136) multiplies the weaker modality's encoder
        gradients by the constant 4 and leaves the stronger one's (``alpha`` is unused); the
        window, the conv-kernel-only rule and, for ``ogm_ge``, the noise (std of the
        unscaled gradient, on both encoders, main.py:158-167) are as without it. Its
        commented-out alternative ``1 + tanh(alpha * relu(ratio))`` is not offered. The
        TPAMI code trains with AdamW (lr 5e-5, weight decay 0.01, main.py:267) on
        Kinetics-Sounds only, which mmbalance has no loader for, so no per-dataset values.
        Defaults stay the CVPR 2022 code's (no warm-up beyond ``start_epoch=0``, no plus).
    """

    name = "ogm"
    description = "OGM: damps the dominant modality's encoder gradient by 1 - tanh(alpha * ratio)"
    reference = "Peng et al., Balanced Multimodal Learning via On-the-fly Gradient Modulation, CVPR 2022"
    gradient_noise = False
    requires = frozenset({"classification", "decomposable_fusion"})

    @dataclass
    class Hyperparameters:
        alpha: float = hparam(0.8, search=log_uniform(0.05, 2.0))  # official 0.1 to 0.8
        start_epoch: int = 0  # first modulated epoch (0-based); TPAMI 2024: 6 (its warm-up is epochs 0-5)
        end_epoch: Optional[int] = 50  # last modulated epoch (0-based); None: no end (the MCR authors' runs)
        # TPAMI 2024's OGM_plus: boost the weakest modality instead of damping the dominant one.
        # Not searched: a variant the user picks (alpha has no effect under it).
        plus: bool = False
        plus_factor: float = 4.0  # BML_TPAMI2024 code/main.py:131,136 (a constant)


    def __init__(self, model, hparams=None) -> None:
        super().__init__(model, hparams)
        self.register_buffer("coefficients", torch.ones(len(model.modalities)))
        self.register_buffer("noise_steps", torch.zeros((), dtype=torch.long))
        # One seed for the gradient noise, the same on every DDP rank (the run seed).
        self.noise_seed = torch.initial_seed() % (2**31)
        self.epoch = 0

    def training_loss(self, batch: Batch, out: ModelOutput) -> LossTerms:
        with torch.no_grad():
            shares = self.model.fusion.contributions({m: z.detach() for m, z in out.features.items()})
            labels = batch.labels.long().unsqueeze(1)
            scores = torch.stack([shares[m].float().softmax(-1).gather(1, labels).sum()
                                  for m in self.model.modalities])
            scores = self.all_reduce_mean(scores)
            if self.hparams.plus:
                self.coefficients.copy_(ogm_plus_coefficients(scores, self.hparams.plus_factor))
            else:
                self.coefficients.copy_(ogm_coefficients(scores, self.hparams.alpha))
        return LossTerms.from_terms({"task": self.task_loss(out.logits, batch.labels)})

    def on_epoch_start(self, epoch: int, train_loader=None) -> Dict[str, float]:
        self.epoch = epoch
        return {}

    def modulated_parameters(self, modality: str) -> Iterator[nn.Parameter]:
        """The weight tensors (ndim >= 2) of ``modality``'s encoder."""
        return (p for p in self.model.modality_parameters(modality) if p.dim() >= 2 and p.numel() > 1)

    def after_backward(self) -> Dict[str, float]:
        logs = {f"coeff/{m}": float(k) for m, k in zip(self.model.modalities, self.coefficients)}
        end = self.hparams.end_epoch
        if not (self.hparams.start_epoch <= self.epoch and (end is None or self.epoch <= end)):
            return logs
        generators: Dict[torch.device, torch.Generator] = {}
        for m, k in zip(self.model.modalities, self.coefficients.tolist()):
            for p in self.modulated_parameters(m):
                if p.grad is None:
                    continue
                # OGM-GE: the noise std is the ORIGINAL gradient's, taken before scaling.
                noise = self._noise(p.grad, generators) if self.gradient_noise else None
                p.grad.mul_(k)
                if noise is not None:
                    p.grad.add_(noise)
        self.noise_steps += 1
        return logs

    def _noise(self, grad: Tensor, generators: Dict[torch.device, torch.Generator]) -> Tensor:
        """``N(0, std(grad) + 1e-8)`` drawn from a generator seeded by (seed, step), so that
        every DDP rank adds the same noise and the replicas stay identical."""
        if grad.device not in generators:
            generators[grad.device] = torch.Generator(device=grad.device)
            generators[grad.device].manual_seed(self.noise_seed + int(self.noise_steps))
        std = grad.std() + 1e-8
        return torch.randn(grad.shape, generator=generators[grad.device], device=grad.device, dtype=grad.dtype) * std

    def get_extra_state(self) -> Dict[str, Any]:
        return {"noise_seed": self.noise_seed, "epoch": self.epoch}

    def set_extra_state(self, state: Optional[Dict[str, Any]]) -> None:
        if state:
            self.noise_seed, self.epoch = int(state["noise_seed"]), int(state["epoch"])


@register
class OGMGE(OGM):
    """OGM plus Gaussian noise: ``g <- k_m g + N(0, std(g) + 1e-8)`` on the gradient ``g`` of
    every modulated encoder weight of EVERY modality (the generalization enhancement), with
    the std taken from the gradient BEFORE it is scaled by ``k_m``.

    Notes:
        Optimizer and Adam: as :class:`OGM`; under Adam the noise is normalized together
        with the gradient, so its relative size is what remains.
    """

    name = "ogm_ge"
    description = "OGM-GE: OGM plus Gaussian gradient noise scaled by the unscaled gradient's std"
    gradient_noise = True
