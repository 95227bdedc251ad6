"""UMT: Uni-Modal Teacher. Unimodal models trained first distil their encoder features into
the multimodal model's encoders while it trains on the fused loss (Du et al., ICML 2023)."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, List, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..types import Batch, LossTerms, ModelOutput
from .base import Method, register
from .hparams import hparam, log_uniform
from .pipeline import Stage, unimodal_stages


@register
class UMT(Method):
    """``L = L_task(f(X), y) + distill_weight * sum_m MSE(f_m(X_m), t_m(X_m))``, where ``t_m``
    is modality m's encoder trained alone (a ``unimodal`` stage) and then frozen, and
    ``f_m(X_m)`` the (B, D_m) feature that the multimodal model's encoder hands to the fusion.

    Every ``train`` call first runs one ``unimodal`` stage per modality (whatever
    ``method.init``); their best encoders become the teachers. ``MSE`` is the mean over the
    B x D_m entries (``nn.MSELoss``). Any number of modalities.

    Notes:
        The paper (arXiv 2305.01233; first version 2106.11059) has no public code; the
        choices it leaves open, and where they come from:

        - Distillation target: the pre-fusion encoder output (after the model's sequence
          pooling), as in BalanceBenchmark's ``UMTTrainer`` (``encoder_res[modality]``).
        - Weight: ``distill_weight`` 10, BalanceBenchmark's UMT setting; the paper's own
          value was not verified here. Searched log-uniformly over [0.1, 100].
        - Student start: ``method.init=scratch`` (default): the multimodal encoders start from
          random weights and learn from the fused loss plus the teachers, our reading of the
          paper; ``init=unimodal`` starts them from the teachers too (then their learning
          rate is scaled by ``encoder_lr_scale``, as for every method).
        - Teachers: frozen (no gradient, not in the optimizer) and always in eval mode
          (BatchNorm statistics and dropout fixed). BalanceBenchmark runs them under
          ``no_grad`` but leaves their mode as loaded.
        - Only the encoders are distilled; the teachers' heads are not used. The loss is
          applied in every epoch; BalanceBenchmark's ``modulation_starts``/``_ends``
          window is not offered.
        - The teachers are part of the method's ``state_dict``, so a checkpoint holds them:
          ``--resume`` and ``load_run`` restore them with the student. A ``UMT`` built
          directly (not through ``train``) has teachers equal to the student's initial
          encoders until :meth:`load_stages` fills them.
    """

    name = "umt"
    description = "frozen unimodal teachers (trained first) distil their encoder features into the fused model"
    reference = "Du et al., On Uni-Modal Feature Learning in Supervised Multi-Modal Learning, ICML 2023"

    @dataclass
    class Hyperparameters:
        distill_weight: float = hparam(10.0, search=log_uniform(0.1, 100.0))

    def __init__(self, model, hparams=None) -> None:
        super().__init__(model, hparams)
        self.teachers = nn.ModuleDict({m: copy.deepcopy(model.encoders[m]) for m in model.modalities})
        self.teachers.requires_grad_(False)  # eval mode is set on use (see teacher_features)

    @classmethod
    def stages(cls, modalities: Sequence[str], hparams: Any = None) -> List[Stage]:
        """One ``unimodal`` stage per modality, always: they train the teachers."""
        return unimodal_stages(modalities)

    def load_stages(self, states: Mapping[str, Mapping[str, Tensor]]) -> None:
        """Each stage's encoder becomes its modality's teacher; with ``init=unimodal`` the
        student's encoder and head start from it as well."""
        by_name = {s.name: s.modality for s in self.stages(self.model.modalities)}
        for name, state in states.items():
            m = by_name[name]
            prefix = f"model.encoders.{m}."
            self.teachers[m].load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
        if self.hparams.init == "unimodal":
            super().load_stages(states)

    def train(self, mode: bool = True) -> "UMT":
        super().train(mode)
        self.teachers.eval()  # frozen: BatchNorm statistics and dropout stay as trained
        return self

    @torch.no_grad()
    def teacher_features(self, inputs: Mapping[str, Tensor]) -> dict:
        """Modality -> (B, D_m) teacher feature, pooled as the model pools its own; the
        teachers always run in eval mode, whatever mode a loop restored on them (set here
        rather than at construction, where Lightning would warn of modules in eval mode)."""
        self.teachers.eval()
        return {m: self.model._feature(m, self.teachers[m](inputs[m]), inputs[m]) for m in self.model.modalities}

    def training_loss(self, batch: Batch, out: ModelOutput) -> LossTerms:
        terms = {"task": self.task_loss(out.logits, batch.labels)}
        logs = {}
        for m, target in self.teacher_features(batch.inputs).items():
            mse = F.mse_loss(out.features[m].float(), target.float())
            terms[f"distill/{m}"] = self.hparams.distill_weight * mse
            logs[f"mse/{m}"] = mse.detach()
        return LossTerms.from_terms(terms, logs)
