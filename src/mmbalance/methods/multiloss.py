"""Multi-Loss: the fused task loss plus each modality's own head's task loss."""

from __future__ import annotations

from dataclasses import dataclass

from ..types import Batch, LossTerms, ModelOutput
from .base import Method


class MultiLoss(Method):
    """``L = L_task(f(X), y) + unimodal_weight * sum_m L_task(f_um(X_m), y)``."""

    name = "multiloss"
    description = "fused loss plus a task loss on each modality's own head"
    reference = "Wang et al., What makes training multi-modal classification networks hard? CVPR 2020"

    @dataclass
    class Hyperparameters:
        unimodal_weight: float = 1.0

    @classmethod
    def search_space(cls, trial):
        """The learning rate and the weight of the unimodal losses."""
        space = super().search_space(trial)
        space["method.unimodal_weight"] = trial.suggest_float("method.unimodal_weight", 0.1, 10.0, log=True)
        return space

    def training_loss(self, batch: Batch, out: ModelOutput) -> LossTerms:
        return LossTerms.from_terms(self.multiloss_terms(out, batch.labels, self.hparams.unimodal_weight))
