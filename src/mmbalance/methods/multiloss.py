"""Multi-Loss: the fused task loss plus each modality's own head's task loss."""

from __future__ import annotations

from dataclasses import dataclass

from ..types import Batch, LossTerms, ModelOutput
from .hparams import hparam, log_uniform
from .base import Method, register


@register
class MultiLoss(Method):
    """``L = L_task(f(X), y) + unimodal_weight * sum_m L_task(f_um(X_m), y)``."""

    name = "multiloss"
    description = "fused loss plus a task loss on each modality's own head"
    reference = "Wang et al., What makes training multi-modal classification networks hard? CVPR 2020"

    @dataclass
    class Hyperparameters:
        unimodal_weight: float = hparam(1.0, search=log_uniform(0.1, 10.0))


    def training_loss(self, batch: Batch, out: ModelOutput) -> LossTerms:
        return LossTerms.from_terms(self.multiloss_terms(out, batch.labels, self.hparams.unimodal_weight))
