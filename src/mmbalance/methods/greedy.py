"""Greedy: intermediate fusion by MMTM, and re-balancing windows driven by the conditional
learning speeds of the two branches (Wu et al., ICML 2022)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, List, Sequence

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..models.mmtm import MMTMFusion
from ..types import Batch, LossTerms, ModelOutput
from .base import Method, register
from .hparams import hparam, int_range, log_uniform


def learning_speed(params: Sequence[nn.Parameter]) -> float:
    """``sum_p |grad_p|^2 / sum_p |p|^2`` over ``params`` (a missing gradient counts as zero):
    one step's term of a conditional learning speed (callbacks.py:200-228)."""
    params = list(params)
    grads = [p.grad.detach() for p in params if p.grad is not None]
    weights, grads = (torch.stack(torch._foreach_norm(ts)).double().pow(2).sum() if ts else 0.0
                      for ts in ([p.detach() for p in params], grads))  # one norm kernel per list
    return float(grads) / float(weights)


def imbalance(speeds: Tensor) -> float:
    """``d = BDR_0 - BDR_1`` with ``BDR_m = log10(M_bypass,m / M_main,m)`` from the (2, 2)
    accumulated speeds ``[[M_main,0, M_bypass,0], [M_main,1, M_bypass,1]]`` (callbacks.py:230-233)."""
    bdr = [math.log10(float(speeds[m, 1]) / float(speeds[m, 0])) for m in range(2)]
    return bdr[0] - bdr[1]


@register
class Greedy(Method):
    """Two branches joined by MMTM modules after encoder stages (``mmtm_stages``), each with its
    own head; ``f(X) = (z_0 + z_1) / 2`` and ``L = CE(z_0, y) + CE(z_1, y)``.

    After each backward the branch ("main": encoder and head of m) and MMTM ("bypass":
    m's excitation layers plus the shared squeeze layers) learning speeds
    (:func:`learning_speed`) are added to running sums ``M``, and ``d`` (:func:`imbalance`)
    computed. From epoch ``starting_epoch`` on, when ``|d| > epsilon`` the next ``window``
    training steps are a re-balancing window for modality ``c = 0 if d > 0 else 1``: every
    MMTM replaces c's excitation by its running average, so c's branch learns without the
    other modality's input-dependent signal; ``M`` is not updated inside a window.

    Notes:
        Official code: nyukat/greedy_multimodal_learning (a190e03): ``src/model.py``
        (``MMTM_MVCNN``: two ResNet-18, MMTM(128/256/512, ratio 4) after layer2/3/4, branch
        fc heads, output ``(x_0 + x_1)/2``), ``train.py`` ``blend_loss`` (sum of the branch
        CEs), ``src/balanced_mmtm.py`` (``MMTM_mitigate``), ``src/callbacks.py``
        (``Bias_Mitigation_Strong``: ``compute_BDR`` sums squared weights and gradients per
        group, then divides; ``on_backward_end`` runs before ``optimizer.step``; a window
        counts ``curation_windowsize`` steps after the step that opened it),
        ``configs/training_guided.gin`` (epsilon 0.01, window 5, starting_epoch 2 with epochs
        counted from 1, i.e. 1 here; SGD lr 0.1, momentum 0, batch 8: use ``optim.name=sgd``).
        Parameters are grouped by the model's structure, not by the substrings ``mmtm``,
        ``visual``, ``skeleton``, ``net_view_k`` of their names; the model's late ``fusion``
        is not used (not optimized).

        Departures: (1) the official second running average takes the FIRST modality's
        excitation (balanced_mmtm.py:114); fixed here, ``average_bug=true`` restores it. (2)
        the official running averages and window also act in evaluation forwards (validation
        and test batches enter the averages, and an open window freezes the excitation at
        evaluation); here only training forwards update the averages and windows apply to
        training only, so no test data reaches training and scores do not depend on the
        window. (3) under DDP the averages use the global batch, and the speeds come from the
        all-reduced gradients, so all ranks decide alike. (4) video maps (B, C, T, H, W) are
        squeezed over T, H and W. The paper describes re-balancing steps that update one
        branch alone with the other's MMTM input fixed; the code (followed here) instead
        freezes the caring modality's excitation and keeps training every parameter.
        BalanceBenchmark's version puts MMTM after layers 1-4 (``mmtm_stages``) and uses
        epsilon 0.001. Two modalities only, both codes hard-code two.
        Cost: three small MMTMs and one norm pass over every parameter and gradient per step;
        at the CREMA-D size (ResNet-18, batch 8, one CPU thread) 1.03x joint's process CPU time
        per step and 1.05x its peak memory (``mmbalance bench speed --settings cremad --methods
        joint greedy --threads 1 --batch 8 --no-sweeps``; docs/performance.md).
    """

    name = "greedy"
    description = "Greedy: MMTM intermediate fusion; re-balancing windows from the branches' learning speeds"
    reference = ("Wu et al., Characterizing and Overcoming the Greedy Nature of Learning in Multi-modal "
                 "Deep Neural Networks, ICML 2022")
    requires = frozenset({"two_modalities", "stagewise_encoders"})

    @dataclass
    class Hyperparameters:
        epsilon: float = hparam(0.01, search=log_uniform(1e-3, 1e-1))  # training_guided.gin epsilon
        window: int = hparam(5, search=int_range(1, 20))  # training_guided.gin curation_windowsize
        starting_epoch: int = 1  # training_guided.gin starting_epoch=2 (epochs from 1); here from 0
        ratio: float = 4.0  # model.py:58-60 MMTM(C, C, 4)
        mmtm_stages: str = "layer2,layer3,layer4"  # model.py:81 (BalanceBenchmark: layer1,...,layer4)
        average_bug: bool = False  # True: balanced_mmtm.py:114's average of modality 1 (see Notes)

    def __init__(self, model, hparams=None) -> None:
        super().__init__(model, hparams)
        hp = self.hparams
        if hp.epsilon < 0 or hp.window < 1 or hp.ratio <= 0 or hp.starting_epoch < 0:
            raise ConfigError(f"method 'greedy': epsilon >= 0, window >= 1, ratio > 0 and starting_epoch >= 0 "
                              f"are needed; got {hp.epsilon}, {hp.window}, {hp.ratio}, {hp.starting_epoch}")
        encoders = [model.encoders[m] for m in model.modalities]
        stages = [s.strip() for s in hp.mmtm_stages.split(",") if s.strip()]
        unknown = [s for s in stages if s not in encoders[0].stages]
        if unknown or not stages:
            raise ConfigError(f"method 'greedy': method.mmtm_stages {hp.mmtm_stages!r}; valid stage names: "
                              f"{', '.join(encoders[0].stages)}")
        channels = {s: [e.stage_channels[s] for e in encoders] for s in stages}
        if hp.average_bug and any(a != b for a, b in channels.values()):
            raise ConfigError("method 'greedy': method.average_bug needs equal channels in both encoders")
        model.set_stage_fusion(MMTMFusion(model.modalities, channels, hp.ratio, hp.average_bug))
        self.register_buffer("speeds", torch.zeros(2, 2, dtype=torch.float64))  # [m, (main, bypass)]
        self.register_buffer("d", torch.zeros((), dtype=torch.float64))
        self.register_buffer("window_open", torch.zeros((), dtype=torch.bool))
        self.register_buffer("caring", torch.zeros((), dtype=torch.long))
        self.register_buffer("window_step", torch.zeros((), dtype=torch.long))
        self.register_buffer("unlocked", torch.zeros((), dtype=torch.bool))

    @classmethod
    def check_requirements(cls, model) -> None:
        try:
            super().check_requirements(model)
        except ConfigError as err:
            got = ", ".join(f"{m}: {type(e).__name__}" for m, e in model.encoders.items())
            raise ConfigError(f"{err} (got {got})") from None

    @property
    def stage_fusion(self) -> MMTMFusion:
        return self.model.stage_fusion

    # -- forward and loss ------------------------------------------------------------
    def forward(self, inputs) -> ModelOutput:
        self.stage_fusion.frozen = int(self.caring) if (self.training and bool(self.window_open)) else None
        out = self.model(inputs)
        logits = torch.stack([out.unimodal_logits[m] for m in self.model.modalities]).mean(0)
        return ModelOutput(logits=logits, unimodal_logits=out.unimodal_logits, features=out.features)

    def training_loss(self, batch: Batch, out: ModelOutput) -> LossTerms:
        losses = self.unimodal_losses(out, batch.labels)  # train.py blend_loss: the sum of the branch CEs
        return LossTerms.from_terms({f"unimodal/{m}": loss for m, loss in losses.items()})

    def param_groups(self) -> List[Dict[str, Any]]:
        fusion = {id(p) for p in self.model.fusion_parameters()}
        return [{"params": [p for p in self.parameters() if p.requires_grad and id(p) not in fusion]}]

    # -- the schedule ----------------------------------------------------------------
    def groups(self) -> List[List[List[nn.Parameter]]]:
        """Per modality ``[main, bypass]`` parameter lists (callbacks.py:203-223)."""
        shared = self.stage_fusion.shared_parameters()
        out = []
        for k, m in enumerate(self.model.modalities):
            main = list(self.model.modality_parameters(m)) + list(self.model.head_parameters(m))
            out.append([main, self.stage_fusion.modality_parameters(k) + shared])
        return out

    def accumulate(self) -> float:
        """Adds this step's speeds to ``M`` and returns the new ``d``."""
        for k, (main, bypass) in enumerate(self.groups()):
            self.speeds[k, 0] += learning_speed(main)
            self.speeds[k, 1] += learning_speed(bypass)
        self.d.fill_(imbalance(self.speeds))
        return float(self.d)

    def on_epoch_start(self, epoch: int, train_loader=None) -> Dict[str, float]:
        if epoch >= self.hparams.starting_epoch:  # callbacks.py:265-267 (never locked again)
            self.unlocked.fill_(True)
        return {}

    def after_backward(self) -> Dict[str, float]:
        """callbacks.py:240-263, after the backward of each training step."""
        if not bool(self.unlocked):
            self.accumulate()
            self.window_open.fill_(False)
            self.caring.fill_(0)
        elif not bool(self.window_open):
            d = self.accumulate()
            if abs(d) > self.hparams.epsilon:
                self.window_open.fill_(True)
                self.window_step.fill_(0)
                self.caring.fill_(0 if d > 0 else 1)
            else:
                self.caring.fill_(0)
        else:
            self.window_step += 1
            if int(self.window_step) == self.hparams.window:
                self.window_open.fill_(False)
        return {"d": float(self.d), "window": float(self.window_open), "caring": float(self.caring)}
