"""OPM: on-the-fly prediction modulation (Wei et al., TPAMI 2024)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional

import torch
from torch import Tensor

from ..types import Batch, LossTerms, ModelOutput
from .base import register
from .hparams import hparam, uniform
from .seeded import SeededMethod


def opm_drop_probabilities(scores: Tensor, q_base: float, lam: float) -> Tensor:
    """OPM's drop probability per modality: ``q_m = q_base (1 + lam rho_m)`` if ``rho_m > 0``
    else 0, clipped to [0, 1], with ``rho_m = tanh(relu(s_m / sum_{k != m} s_k - 1))``.

    For M = 2 the denominator is the other modality's score, the official rule
    (BML_TPAMI2024 code/models/Classifier.py:58-72); for more, BalanceBenchmark's
    (balancemm/trainer/OPM_trainer.py:174-181, without its 1e-5). Only a modality that
    out-scores all the others together gets ``q > 0``, so at most one is ever dropped.

    Args:
        scores: (M,) batch scores ``s_m = sum_i softmax(out_m)[i, y_i]``.
        q_base: the base drop probability.
        lam: how much the score ratio raises it.

    Returns:
        (M,) drop probabilities in [0, 1].
    """
    others = (scores.sum() - scores).clamp_min(torch.finfo(scores.dtype).tiny)
    rho = torch.tanh(torch.relu(scores / others - 1))
    q = torch.where(rho > 0, q_base * (1 + lam * rho), torch.zeros_like(rho))
    return q.clamp(0.0, 1.0)


def opm_theta(q: Tensor, dims: Tensor) -> Tensor:
    """``theta = sum_m d_m q_m / sum_m d_m``: the expected dropped share of the concatenated
    feature; the kept features are scaled by ``1 / (1 - theta)`` (Classifier.py:39-49)."""
    return (dims * q).sum() / dims.sum()


@register
class OPM(SeededMethod):
    """``L = CE(f_c(z * mask / (1 - theta))[kept], y[kept])``: with probability ``p_exe`` per
    batch, each sample's feature of modality m is dropped with probability ``q_m``
    (:func:`opm_drop_probabilities`), the features that remain are scaled by ``1/(1 - theta)``
    (:func:`opm_theta`, the gradient alike) and samples that lost every modality leave the loss;
    otherwise, and before ``start_epoch``, ``L = CE(f(X), y)``.

    The scores ``s_m = sum_i softmax(out_m)[i, y_i]`` come from each modality's share
    ``out_m = z_m W_m^T + b/M`` of the linear fusion on detached features (the official code
    uses detached weights and ``b/2``), averaged over DDP ranks. Dropping happens on the
    encoder features through ``MultimodalModel.drop_features``; evaluation never drops.
    The unimodal heads are not trained. Any M >= 2; needs ``concat_linear`` and classification.

    Notes:
        Sources, BML_TPAMI2024 (GeWu-Lab, commit 4b3aa4f). The drop and its scale:
        code/models/Classifier.py:31-55 (Bernoulli(1 - q) per sample and modality, theta over
        feature sizes, a custom autograd that divides value and gradient by ``1 - theta``,
        samples with no modality left removed); the loss on the fused output only:
        code/main.py:95-114. Warm-up: ``warm_up = 1 if epoch <= 5`` with 0-based epochs
        (main.py:91, :275): no modulation in epochs 0-5, so ``start_epoch=6``.
        Defaults: ``q_base`` 0.5, ``lam`` 0.5, ``p_exe`` 0.7. code/config.py:51-53 says
        q_base 0.4, but main.py:42 declares ``--q_base`` with default 0.5 and ``cfg.parse``
        (main.py:226) copies every argparse value over the config, so 0.4 is never used;
        scripts/train_opm.sh passes 0.5 too. BalanceBenchmark's OPM uses 0.4.
        Randomness: the official code draws the batch decision from numpy and the masks from
        torch's global generator. Here both come from a generator seeded by (run seed,
        step): the batch decision is the same on every DDP rank (as one large batch), the
        masks differ by rank, and ``--resume`` redraws the same ones (the step count is a
        buffer, the seed extra state). When no sample keeps a modality the official loop
        skips the step; here the loss is a zero connected to the graph (the optimizer still
        steps). Under the rule above at most one modality has q > 0, so every sample keeps
        another one and neither the removal nor this case happens (also in the official code).
        Differences from BalanceBenchmark: a warm-up (BB has none), detached scores.
        Optimizer: the official code trains with AdamW (lr 5e-5, weight decay 0.01), batch
        32, on Kinetics-Sounds only, which mmbalance has no loader for.
    """

    name = "opm"
    description = "OPM: drops the dominant modality's features per sample with probability q, rescaled"
    reference = "Wei et al., On-the-fly Modulation for Balanced Multimodal Learning, TPAMI 2024"
    requires = frozenset({"classification", "decomposable_fusion"})

    @dataclass
    class Hyperparameters:
        q_base: float = hparam(0.5, search=uniform(0.1, 0.8))  # main.py:42 default, train_opm.sh
        lam: float = hparam(0.5, search=uniform(0.0, 1.0))  # main.py:43, train_opm.sh
        p_exe: float = hparam(0.7, search=uniform(0.3, 1.0))  # main.py:44, train_opm.sh
        start_epoch: int = 6  # first modulated epoch (0-based): main.py:91 warms up in epochs 0-5
        end_epoch: Optional[int] = None  # last modulated epoch; None: no end (official)

    def __init__(self, model, hparams=None) -> None:
        super().__init__(model, hparams)
        self.register_buffer("drop_probabilities", torch.zeros(len(model.modalities)))

    def modulating(self) -> bool:
        end = self.hparams.end_epoch
        return self.hparams.start_epoch <= self.epoch and (end is None or self.epoch <= end)

    def scores(self, out: ModelOutput, labels: Tensor) -> Tensor:
        """(M,) ``s_m = sum_i softmax(out_m)[i, y_i]`` from the fusion's per-modality shares
        of the detached features, averaged over DDP ranks."""
        with torch.no_grad():
            shares = self.model.fusion.contributions({m: z.detach() for m, z in out.features.items()})
            y = labels.long().unsqueeze(1)
            s = torch.stack([shares[m].float().softmax(-1).gather(1, y).sum() for m in self.model.modalities])
        return self.all_reduce_mean(s)

    def drop_mask(self, batch_size: int, q: Tensor) -> Optional[Tensor]:
        """(B, M) bool keep mask ``~ Bernoulli(1 - q_m)``, or None when this batch is not
        modulated (probability ``1 - p_exe``); drawn from a generator seeded by (seed, step)."""
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + int(self.steps))
        execute = bool(torch.rand((), generator=gen) >= 1 - self.hparams.p_exe)  # Classifier.py:34
        rank = torch.distributed.get_rank() if torch.distributed.is_available() and \
            torch.distributed.is_initialized() else 0
        gen.manual_seed(int(torch.randint(2**40, (), generator=gen)) + rank)
        keep = torch.rand(batch_size, q.numel(), generator=gen) < (1 - q.detach().cpu().float())
        return keep.to(q.device) if execute else None

    def training_loss(self, batch: Batch, out: ModelOutput) -> LossTerms:
        if not self.modulating():
            return LossTerms.from_terms({"task": self.task_loss(out.logits, batch.labels)})
        q = opm_drop_probabilities(self.scores(out, batch.labels), self.hparams.q_base, self.hparams.lam)
        self.drop_probabilities.copy_(q)
        keep = self.drop_mask(batch.labels.shape[0], q)
        self.steps += 1
        logs: Dict[str, Any] = {f"q/{m}": float(v) for m, v in zip(self.model.modalities, q)}
        if keep is None:
            return LossTerms.from_terms({"task": self.task_loss(out.logits, batch.labels)}, {**logs, "dropped": 0.0})
        dims = torch.tensor([float(self.model.feature_dims[m]) for m in self.model.modalities], device=q.device)
        theta = float(opm_theta(q, dims))
        features = self.model.drop_features(out.features, keep, scale=1.0 / (1.0 - theta))
        rows = keep.any(1)
        logs.update({"dropped": 1.0, "theta": theta, "kept_samples": float(rows.float().mean())})
        if not bool(rows.any()):  # every sample lost every modality: nothing to learn from
            return LossTerms.from_terms({"task": out.logits.sum() * 0.0}, logs)
        logits = self.model.fuse({m: z[rows] for m, z in features.items()})
        return LossTerms.from_terms({"task": self.task_loss(logits, batch.labels[rows])}, logs)
