"""MSLR: modality-specific learning rates for additive late fusion (Yao & Mihalcea, 2022)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence

import torch
from torch import Tensor

from ..errors import ConfigError
from ..types import Batch, LossTerms, ModelOutput
from .hparams import hparam, int_range
from .base import Method, register


def mslr_scale(init: float, accuracy: float, history: Sequence[float], window: int) -> float:
    """``init * acc / mean(last `window` past accuracies)`` once ``window`` past accuracies
    exist, else ``init`` (the AGM and MCR implementations; the current accuracy is not part
    of the mean).

    Args:
        init: the modality's initial learning-rate multiplier.
        accuracy: its validation accuracy this epoch.
        history: its validation accuracies of earlier epochs, oldest first.
        window: k, how many past epochs the mean covers.
    """
    if len(history) < window:
        return init
    mean = sum(history[-window:]) / window
    return init * accuracy / mean if mean > 0 else init


@register
class MSLR(Method):
    """Fused task loss only; each modality's branch (encoder, unimodal head, fusion weight
    slice ``W_m``) is its own optimizer parameter group whose ``lr_scale`` is
    :func:`mslr_scale` of the branch's validation accuracy, updated after every validation;
    the shared fusion bias keeps scale 1. A branch's accuracy is that of its additive share
    ``z_m W_m^T + b/M`` of the linear fusion, so MSLR needs a decomposable fusion
    (``concat_linear``), and classification.

    Notes:
        No official code exists; the AGM and MCR repositories implement it as a per-modality
        gradient multiplier (init 0.7/1.3 for ResNet CREMA-D, 0.9/1.1 for the Conformer runs,
        k = 5 by default, 20 CREMA-D, 10 AVE). The paper describes learning rates, so here they
        are learning rates: under Adam a gradient multiplier would be largely undone, a
        learning-rate scale is not. Optimizer: the AGM repository runs MSLR with SGD
        (momentum 0.9, weight decay 1e-4), the MCR authors with Adam; here it is ``optim.name``.
    """

    name = "mslr"
    description = "MSLR: a learning rate per modality, rescaled by its validation accuracy each epoch"
    reference = ("Yao & Mihalcea, Modality-specific Learning Rates for Effective Multimodal Additive "
                 "Late-fusion, Findings of ACL 2022")
    requires = frozenset({"classification", "decomposable_fusion"})

    @dataclass
    class Hyperparameters:
        init_scales: Optional[List[float]] = None  # one per modality, model order; None: all 1
        window: int = hparam(5, search=int_range(2, 20, log=True))  # k: 5 default, 10 AVE, 20 CREMA-D


    def __init__(self, model, hparams=None) -> None:
        super().__init__(model, hparams)
        init = self.hparams.init_scales or [1.0] * len(model.modalities)
        if len(init) != len(model.modalities) or min(init) <= 0 or self.hparams.window < 1:
            raise ConfigError(f"method.init_scales needs {len(model.modalities)} positive values "
                              f"(one per modality: {', '.join(model.modalities)}) and method.window >= 1")
        self.init = [float(v) for v in init]
        self.register_buffer("lr_scales", torch.tensor(self.init))
        self.register_buffer("correct", torch.zeros(len(model.modalities)))
        self.register_buffer("seen", torch.zeros(()))
        self.history: List[List[float]] = [[] for _ in model.modalities]

    def training_loss(self, batch: Batch, out: ModelOutput) -> LossTerms:
        return LossTerms.from_terms({"task": self.task_loss(out.logits, batch.labels)})

    def param_groups(self) -> List[Dict[str, Any]]:
        groups, taken = [], set()
        for i, m in enumerate(self.model.modalities):
            params = [*self.model.modality_parameters(m), *self.model.head_parameters(m),
                      *self.model.fusion.modality_parameters(m)]
            taken.update(id(p) for p in params)
            groups.append({"params": [p for p in params if p.requires_grad], "modality": m,
                           "lr_scale": float(self.lr_scales[i])})
        rest = [p for p in self.parameters() if id(p) not in taken and p.requires_grad]
        return [g for g in groups + [{"params": rest, "lr_scale": 1.0}] if g["params"]]

    def update_param_groups(self, groups: List[Dict[str, Any]]) -> None:
        for group in groups:
            if group.get("modality") in self.model.modalities:
                group["lr_scale"] = float(self.lr_scales[self.model.modalities.index(group["modality"])])

    def on_validation_batch(self, out: ModelOutput, labels: Tensor) -> None:
        shares = self.model.fusion.contributions(out.features)
        for i, m in enumerate(self.model.modalities):
            self.correct[i] += (shares[m].argmax(-1) == labels).sum()
        self.seen += labels.shape[0]

    def on_validation_end(self, metrics: Mapping[str, float]) -> Dict[str, float]:
        if float(self.seen) == 0:
            return {}
        accuracy = (self.all_reduce_mean(self.correct) / self.all_reduce_mean(self.seen)).tolist()
        self.correct.zero_()
        self.seen.zero_()
        logs = {}
        for i, m in enumerate(self.model.modalities):
            self.lr_scales[i] = mslr_scale(self.init[i], accuracy[i], self.history[i], self.hparams.window)
            self.history[i].append(accuracy[i])
            logs.update({f"lr_scale/{m}": float(self.lr_scales[i]), f"val_accuracy/{m}": accuracy[i]})
        return logs

    def get_extra_state(self) -> Dict[str, Any]:
        return {"history": [list(h) for h in self.history]}

    def set_extra_state(self, state: Optional[Dict[str, Any]]) -> None:
        if state:
            self.history = [list(h) for h in state["history"]]
