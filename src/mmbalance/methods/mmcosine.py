"""MMCosine: modality-wise L2 normalization of features and fusion weights (Xu et al., ICASSP 2023)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from ..types import Batch, LossTerms, ModelOutput
from .hparams import hparam, log_uniform
from .base import Method, register


def cosine_logits(features: Tensor, weight: Tensor, scale: float) -> Tensor:
    """``s * cos(z_i, w_c)``: (B, D) features and a (C, D) weight to (B, C) logits.

    Both the feature rows and the class rows of the weight are L2-normalized (the official
    code normalizes ``W^T`` along dim 0, i.e. each class vector), so every modality's logits
    lie in ``[-s, s]`` whatever the scale of its encoder.
    """
    return scale * F.normalize(features, dim=1) @ F.normalize(weight, dim=1).t()


@register
class MMCosine(Method):
    """Fused logits ``sum_m s * cos(z_m, W_m)`` of a concat-linear fusion, no bias; the loss
    is the task loss of that sum.

    Each modality's weight slice ``W_m`` (C, D_m) of the linear fusion is found by
    structure (``model.fusion.modality_parameters(m)``); the shared fusion bias and the
    unimodal heads are unused. ``out.unimodal_logits[m]`` is the modality's own cosine
    branch ``s * cos(z_m, W_m)`` (what the official code reports as unimodal accuracy).
    Needs a decomposable fusion with one weight per modality, and classification.

    Notes:
        Differences from the official code: it trains on the cosine logits but evaluates the
        fused prediction with the raw linear layer (un-normalized, with its untrained bias);
        here training and evaluation use the same cosine logits. The optional NCE term of its
        supplementary material (weight 0 in every published run) is not implemented.

        Optimizer: official SGD (lr 1e-3, momentum 0.9, weight decay 1e-4, StepLR(100, 0.1));
        MMCosine changes the logits, not the gradients, so Adam needs no caveat here.
    """

    name = "mmcosine"
    description = "MMCosine: fused logits are s times the cosine of each modality's features and weights"
    reference = ("Xu et al., MMCosine: Multi-Modal Cosine Loss Towards Balanced Audio-Visual Fine-Grained "
                 "Learning, ICASSP 2023")
    requires = frozenset({"classification", "decomposable_fusion"})

    @dataclass
    class Hyperparameters:
        scale: float = hparam(10.0, search=log_uniform(5.0, 30.0))  # s; BalanceBenchmark uses 15


    def __init__(self, model, hparams=None) -> None:
        super().__init__(model, hparams)
        for m in model.modalities if model.materialized else ():
            self._weight_of(m)  # validates the structure now rather than at the first batch

    def _weight_of(self, modality: str) -> nn.Parameter:
        params = list(self.model.fusion.modality_parameters(modality))
        shape = (self.model.num_classes, self.model.feature_dims[modality])
        if len(params) != 1 or tuple(params[0].shape) != shape:
            raise ConfigError(f"method 'mmcosine' needs one {shape} fusion weight for modality {modality!r}")
        return params[0]

    def forward(self, inputs: Mapping[str, Tensor]) -> ModelOutput:
        features = self.model.encode(inputs)
        branches = {m: cosine_logits(features[m], self._weight_of(m), self.hparams.scale)
                    for m in self.model.modalities}
        return ModelOutput(logits=sum(branches.values()), unimodal_logits=branches, features=features)

    def training_loss(self, batch: Batch, out: ModelOutput) -> LossTerms:
        return LossTerms.from_terms({"task": self.task_loss(out.logits, batch.labels)})
