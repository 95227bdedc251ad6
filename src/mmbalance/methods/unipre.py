"""Uni-Pre: encoders pre-trained unimodally, then frozen or finetuned in the fused model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Dict, List

from ..types import Batch, LossTerms, ModelOutput
from .hparams import hparam, log_uniform
from .base import register
from .pipeline import PipelineMethod


class _UniPre(PipelineMethod):
    """Final stage: the fused task loss (joint training) on encoders initialized from the
    unimodal stages. The optimizer sees only trainable parameters."""

    freeze: ClassVar[bool] = False
    reference = "baseline (Kontras et al., Section 4; Du et al., 2023)"

    def training_loss(self, batch: Batch, out: ModelOutput) -> LossTerms:
        return LossTerms.from_terms({"task": self.task_loss(out.logits, batch.labels)})


@register
class UniPreFrozen(_UniPre):
    """Frozen pre-trained encoders (weights and BatchNorm statistics); fusion trained.

    The authors' release swaps the freeze flags of the two configurations; here the
    frozen variant is frozen.
    """

    name = "unipre_frozen"
    description = "unimodally pre-trained encoders, frozen; only the fusion is trained"
    freeze = True

    def __init__(self, model, hparams=None) -> None:
        super().__init__(model, hparams)
        for m in model.modalities:
            for p in model.modality_parameters(m):
                p.requires_grad_(False)

    def train(self, mode: bool = True) -> "UniPreFrozen":
        super().train(mode)
        self.model.encoders.eval()  # frozen BatchNorm/dropout statistics
        return self


@register
class UniPreFinetuned(_UniPre):
    """Pre-trained encoders finetuned with the fusion; the encoders' learning rate is scaled
    by ``encoder_lr_scale`` (paper A.4: one magnitude lower when finetuning)."""

    name = "unipre_finetuned"
    description = "unimodally pre-trained encoders, finetuned jointly with the fusion"

    @dataclass
    class Hyperparameters:
        encoder_lr_scale: float = hparam(0.1, search=log_uniform(0.01, 1.0))  # paper A.4: 0.1


    def param_groups(self) -> List[Dict[str, Any]]:
        encoders = [p for m in self.model.modalities for p in self.model.modality_parameters(m)]
        ids = {id(p) for p in encoders}
        rest = [p for p in self.parameters() if p.requires_grad and id(p) not in ids]
        return [{"params": encoders, "lr_scale": self.hparams.encoder_lr_scale}, {"params": rest}]
