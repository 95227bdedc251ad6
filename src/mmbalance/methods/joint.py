"""Joint training: the task loss on the fused output only."""

from __future__ import annotations

from ..types import Batch, LossTerms, ModelOutput
from .base import Method, register


@register
class Joint(Method):
    """Plain joint training, no balancing: ``L = L_task(f(X), y)``."""

    name = "joint"
    description = "joint training on the fused output only, no balancing"
    reference = "baseline (Kontras et al., Section 4)"

    def training_loss(self, batch: Batch, out: ModelOutput) -> LossTerms:
        return LossTerms.from_terms({"task": self.task_loss(out.logits, batch.labels)})
