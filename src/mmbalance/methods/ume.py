"""UME: Uni-Modal Ensemble. Unimodal models trained independently, their logits averaged
(Du et al., ICML 2023). The ``ensemble`` method's machinery with the paper's combination."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import ConfigError
from ..types import ModelOutput
from .base import Method, register
from .ensemble import COMBINERS, Ensemble
from .hparams import choice, hparam

#: ``logit_mean`` (UME's default) and the ensemble's own combiners.
UME_COMBINERS = ("logit_mean",) + COMBINERS


@register
class UME(Ensemble):
    """``f(X) = (1/M) sum_m z_m``, the mean of the (B, C) logits ``z_m`` of M unimodal models
    trained separately (one ``unimodal`` stage each), with no joint training.

    ``method.combine`` also accepts the ensemble's combiners (``standardized_sum``,
    ``softmax_mean``). Regression averages the predictions. Any number of modalities.

    Notes:
        The paper (arXiv 2305.01233) has no public code, and BalanceBenchmark has no UME.
        The combination is an equally weighted average of the unimodal models' output
        logits, our reading of the paper (its exact wording was not verified here). Unlike
        the ``ensemble`` default (``standardized_sum``, the MCR authors' release), the
        prediction of a sample does not depend on the rest of its evaluation batch.
    """

    name = "ume"
    description = "Uni-Modal Ensemble: unimodal models trained separately, their logits averaged"
    reference = "Du et al., On Uni-Modal Feature Learning in Supervised Multi-Modal Learning, ICML 2023"

    @dataclass
    class Hyperparameters:
        combine: str = hparam("logit_mean", search=choice(UME_COMBINERS))

    def __init__(self, model, hparams=None) -> None:
        hparams = hparams if hparams is not None else self.Hyperparameters()
        if hparams.combine not in UME_COMBINERS:
            raise ConfigError(f"method.combine {hparams.combine!r} is unknown; valid: {', '.join(UME_COMBINERS)}")
        # Ensemble.__init__ checks against its own combiners only; the rest of it is Method's
        Method.__init__(self, model, hparams)

    def predict(self, out: ModelOutput) -> Tensor:
        if self.hparams.combine == "logit_mean":
            return torch.stack([out.unimodal_logits[m].float() for m in self.model.modalities]).mean(0)
        return super().predict(out)
