"""Unimodal training: one encoder and its own head, the other modalities unused."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional

from torch import Tensor

from ..errors import ConfigError, did_you_mean
from ..types import Batch, LossTerms, ModelOutput
from .base import Method, register


@register
class Unimodal(Method):
    """Trains ``f_cm(f_m(X_m))`` for one modality m; only its encoder and head change."""

    name = "unimodal"
    description = "one modality's encoder and head alone (method.modality is required)"
    reference = "baseline (Kontras et al., Section 4)"
    init_choices = ("scratch",)  # it is what a unimodal start trains

    @dataclass
    class Hyperparameters:
        modality: Optional[str] = None  # required: which modality to train (no default: none is "the" one)

    def __init__(self, model, hparams=None) -> None:
        super().__init__(model, hparams)
        chosen, valid = self.hparams.modality, ", ".join(model.modalities)
        if not chosen:
            raise ConfigError(f"method 'unimodal' needs method.modality, one of: {valid} "
                              f"(e.g. --set method.modality={model.modalities[0]})")
        if chosen not in model.modalities:
            raise ConfigError(f"method.modality {chosen!r} is not a modality; "
                              f"{did_you_mean(chosen, model.modalities)}valid: {valid}")
        self.modality = chosen

    def forward(self, inputs: Mapping[str, Tensor]) -> ModelOutput:
        m = self.modality
        feats = {m: self.model.encode_modality(m, inputs[m])}
        logits = self.model.heads[m](feats[m])
        return ModelOutput(logits=logits, unimodal_logits={m: logits}, features=feats)

    def training_loss(self, batch: Batch, out: ModelOutput) -> LossTerms:
        return LossTerms.from_terms({"task": self.task_loss(out.logits, batch.labels)})

    def param_groups(self) -> List[Dict[str, Any]]:
        params = list(self.model.modality_parameters(self.modality)) + list(self.model.head_parameters(self.modality))
        return [{"params": [p for p in params if p.requires_grad]}]
