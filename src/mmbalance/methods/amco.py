"""AMCo: Adaptive Mask Co-optimization (Zhou, Liang, Zheng, Xuan, Kumada, ICASSP 2023)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from ..types import Batch, LossTerms, ModelOutput
from .base import register
from .hparams import hparam, log_uniform, uniform
from .seeded import SeededMethod


def mask_ratio(epoch: int, batch: int, eps: float, rate: float = 0.1) -> float:
    """``p_t = sin(pi/2 min(eps, l_t) / eps)`` with ``l_t = batch * epoch * rate``: the share of
    a dependent modality's classes masked at batch ``batch`` (0-based, within the epoch) of epoch
    ``epoch`` (BalanceBenchmark's ``l_t``, reset every epoch and raised by ``epoch/10`` after
    every batch)."""
    return math.sin(math.pi / 2 * min(eps, batch * epoch * rate) / eps)


def class_mask(num_classes: int, ratio: float, gen: torch.Generator) -> Tensor:
    """(C,) float mask with ``int(ratio C)`` zeros at uniformly drawn classes, ones elsewhere."""
    mask = torch.ones(num_classes)
    mask[torch.randperm(num_classes, generator=gen)[:int(ratio * num_classes)]] = 0.0
    return mask


def block_mass(unimodal: Mapping[str, Tensor]) -> Tensor:
    """(M,) each modality's share of one softmax over the concatenated (B, M C) unimodal logits,
    averaged over the batch (each row's shares sum to 1)."""
    probs = torch.softmax(torch.cat([z.float() for z in unimodal.values()], 1), 1)
    return torch.stack(probs.split(next(iter(unimodal.values())).shape[1], 1)).sum(-1).mean(-1)


@register
class AMCo(SeededMethod):
    """``z = A (sum_m z~_m)``, an extra C x C linear layer ``A`` over the summed decomposed
    unimodal logits ``z_m = h_m W_m^T + b/M`` (the concat head's modality share and an M-th of
    its bias), where ``z~_m = z_m * mask`` for a *dependent* modality and ``z_m`` otherwise.
    ``L = CE(z, y) + sum_m CE(z~_m, y)`` (co-optimization). A modality is dependent for the next
    batch when its block of one softmax over the concatenated unimodal logits holds more than
    ``sigma`` of the mass on average (:func:`block_mass`, averaged over DDP ranks); flags are
    reset each epoch. The mask has ``int(p_t C)`` zeros at random classes (:func:`class_mask`,
    one mask per batch, from a generator seeded by (run seed, step)), ``p_t`` from
    :func:`mask_ratio`. Evaluation scores ``A (sum_m z_m)`` and each ``z_m`` as the modality's
    prediction. Any number of modalities; classification with ``model.fusion=concat_linear``.

    Notes:
        There is no official code, and only the paper's abstract could be read (IEEE
        10096641): it names an adaptive mask that makes dependent modalities harder to learn
        and a co-optimization that keeps their performance, nothing more. Every rule here is
        GeWu-Lab/BalanceBenchmark's (4c1482f): balancemm/trainer/AMCo_trainer.py and
        ``BaseClassifierAMCoModel`` in balancemm/models/avclassify_model.py:

        - ``linear_star`` (C x C, PyTorch's default initialisation) over the sum of the
          decomposed logits, the dependent modality's logits multiplied by the mask before the
          sum and in its own loss; losses CE(fused) and CE of each (masked) unimodal logits,
          one backward each (their sum here: the same gradient);
        - ``p_t = sin(pi/2 min(eps, l_t)/eps)``, ``l_t`` reset to 0 each epoch and raised by
          ``epoch/10`` after every batch (``rate`` 0.1); ``N = int(p_t C)`` zeros shuffled into
          a ones vector; defaults ``sigma`` 0.5, ``eps`` 0.3; ``U`` and ``alpha`` are read but
          unused there and are left out; modulation always on (starts 0, ends 80 > epochs);
        - dependence ``mean_b sum_{c in block m} softmax(cat z~)_bc > sigma`` after each step,
          for the next batch, all flags reset each epoch.

        Choices the paper leaves open and where BalanceBenchmark cannot run as written: its
        mask is expanded to (2, C) and multiplies (B, C) logits, which only broadcasts for a
        batch of 2 (a dependent modality crashes any other batch size); here one (C,) mask is
        shared by the batch. Its draws come from ``np.random``; here from a seeded generator,
        so ranks and resumes agree. Dependence is computed from one rank's batch there, from
        the global batch here. With ``eps`` 0.3 the ratio reaches 1 after ``3/epoch`` batches
        of an epoch, from then on all C logits of a dependent modality are zeroed; in epoch 0
        nothing is masked (``l_t`` stays 0). The search ranges are ours (no source gives one).
        Cost: the decomposed logits and one softmax per step; no extra backward.
    """

    name = "amco"
    description = "AMCo: class masks on the dependent modality's logits, a C x C layer over their sum, co-optimized"
    reference = ("Zhou, Liang, Zheng, Xuan, Kumada, Adaptive Mask Co-Optimization for Modal Dependence in "
                 "Multimodal Learning, ICASSP 2023")
    requires = frozenset({"classification", "decomposable_fusion"})

    @dataclass
    class Hyperparameters:
        sigma: float = hparam(0.5, search=uniform(0.5, 0.9))  # trainer_config.yaml AMCo
        eps: float = hparam(0.3, search=log_uniform(0.1, 30.0))  # trainer_config.yaml AMCo
        rate: float = 0.1  # l_t += epoch / 10 per batch (AMCo_trainer.py)

    def __init__(self, model, hparams=None) -> None:
        super().__init__(model, hparams)
        if self.hparams.eps <= 0 or self.hparams.rate < 0:
            raise ConfigError(f"method 'amco': eps must be > 0 and rate >= 0, got eps {self.hparams.eps}, "
                              f"rate {self.hparams.rate}")
        C, M = model.num_classes, len(model.modalities)
        self.linear_star = nn.Linear(C, C)
        self.register_buffer("dependent", torch.zeros(M, dtype=torch.bool))
        self.register_buffer("batch_in_epoch", torch.zeros((), dtype=torch.long))
        self.register_buffer("ratio", torch.zeros(()))

    def on_epoch_start(self, epoch: int, train_loader=None) -> Dict[str, float]:
        super().on_epoch_start(epoch, train_loader)
        self.dependent.zero_()
        self.batch_in_epoch.zero_()
        return {}

    def decomposed(self, features: Mapping[str, Tensor]) -> Dict[str, Tensor]:
        """Modality -> (B, C) ``h_m W_m^T + b/M``."""
        fusion = self.model.fusion
        shares = fusion.modality_logits(dict(features))
        bias = fusion.shared_logits() / len(shares)
        return {m: shares[m] + bias for m in self.model.modalities}

    def current_mask(self) -> Tensor:
        """(C,) this step's class mask (its ratio kept in ``ratio`` for the logs)."""
        ratio = mask_ratio(self.epoch, int(self.batch_in_epoch), self.hparams.eps, self.hparams.rate)
        self.ratio.fill_(ratio)
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + int(self.steps))
        return class_mask(self.model.num_classes, ratio, gen)

    def forward(self, inputs: Mapping[str, Tensor]) -> ModelOutput:
        features = self.model.encode(inputs)
        z = self.decomposed(features)
        if self.training:
            mask = self.current_mask().to(device=features[self.model.modalities[0]].device)
            z = {m: z[m] * mask.to(z[m].dtype) if bool(self.dependent[j]) else z[m]
                 for j, m in enumerate(self.model.modalities)}
        logits = self.linear_star(torch.stack(list(z.values())).sum(0))
        return ModelOutput(logits=logits, unimodal_logits=z, features=features)

    def training_loss(self, batch: Batch, out: ModelOutput) -> LossTerms:
        terms = {"task": self.task_loss(out.logits, batch.labels)}
        for m, loss in self.unimodal_losses(out, batch.labels).items():
            terms[f"unimodal/{m}"] = loss
        with torch.no_grad():
            mass = self.all_reduce_mean(block_mass(out.unimodal_logits))
        self.dependent.copy_(mass > self.hparams.sigma)
        self.batch_in_epoch += 1
        self.steps += 1
        logs = {f"mass/{m}": mass[j] for j, m in enumerate(self.model.modalities)}
        logs["mask_ratio"] = self.ratio.clone()
        return LossTerms.from_terms(terms, logs)
