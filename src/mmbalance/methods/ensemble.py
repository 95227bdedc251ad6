"""Ensemble: separately trained unimodal models combined without further training."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List

import torch
from torch import Tensor

from ..errors import ConfigError
from ..types import Batch, LossTerms, ModelOutput
from .hparams import choice, hparam
from .base import Method, register

COMBINERS = ("standardized_sum", "softmax_mean")


@register
class Ensemble(Method):
    """``f(X) = sum_m (z_m - mean(z_m)) / std(z_m)`` over the logits ``z_m`` of unimodal models
    trained separately (stages), with no joint training.

    ``standardized_sum`` (the authors' code): each modality's (B, C) logits are standardized
    over the whole batch x class tensor, ``(z - mean(z)) / std(z)``, and summed; the
    prediction therefore depends on the evaluation batch, as in the release.
    ``softmax_mean``: the average of the modalities' softmax probabilities (per sample).
    Regression averages the predictions.
    """

    name = "ensemble"
    description = "separately trained unimodal models, predictions combined (no joint training)"
    reference = "baseline (Kontras et al., Section 4)"
    trains_final = False
    default_init = "unimodal"
    init_choices = ("unimodal",)

    @dataclass
    class Hyperparameters:
        combine: str = hparam("standardized_sum", search=choice(COMBINERS))


    def __init__(self, model, hparams=None) -> None:
        super().__init__(model, hparams)
        if self.hparams.combine not in COMBINERS:
            raise ConfigError(f"method.combine {self.hparams.combine!r} is unknown; valid: {', '.join(COMBINERS)}")

    def predict(self, out: ModelOutput) -> Tensor:
        logits = [out.unimodal_logits[m].float() for m in self.model.modalities]
        if self.model.task == "regression":
            return torch.stack(logits).mean(0)
        if self.hparams.combine == "softmax_mean":
            return torch.stack([z.softmax(-1) for z in logits]).mean(0)
        return sum((z - z.mean()) / z.std().clamp_min(1e-12) for z in logits)

    def training_loss(self, batch: Batch, out: ModelOutput) -> LossTerms:
        raise RuntimeError("the ensemble is not trained jointly; its stages train the unimodal models")

    def param_groups(self) -> List[Dict[str, Any]]:
        return []
