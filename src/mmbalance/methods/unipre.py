"""Uni-Pre: joint training on encoders pre-trained unimodally, frozen or finetuned.

Both are :class:`~mmbalance.methods.joint.Joint` with ``method.init=unimodal`` (the stages
mechanism every method shares, see ``methods/pipeline.py``); they keep their names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from torch import Tensor

from ..types import ModelOutput
from .base import register
from .hparams import hparam, log_uniform
from .joint import Joint


@register
class UniPreFrozen(Joint):
    """``L = L_task(f(X), y)`` with the encoders taken from the unimodal stages and frozen
    (weights and BatchNorm/dropout statistics); the fusion and heads train.

    The encoders run in eval mode in every forward (BatchNorm uses and keeps the stages'
    running statistics, dropout is off), whatever mode a loop left them in: Lightning starts
    the fit without calling ``train()`` and, around each validation, puts back the modes it
    recorded by setting each submodule's ``training`` flag, which bypasses :meth:`train`.

    Notes:
        The authors' release swaps the freeze flags of the two configurations; here the
        frozen variant is frozen. The optimizer sees only trainable parameters.
    """

    name = "unipre_frozen"
    description = "unimodally pre-trained encoders, frozen; only the fusion is trained"
    reference = "baseline (Kontras et al., Section 4; Du et al., 2023)"
    default_init = "unimodal"
    init_choices = ("unimodal",)

    def __init__(self, model, hparams=None) -> None:
        super().__init__(model, hparams)
        for m in model.modalities:
            for p in model.modality_parameters(m):
                p.requires_grad_(False)

    def train(self, mode: bool = True) -> "UniPreFrozen":
        super().train(mode)
        self.model.encoders.eval()  # frozen BatchNorm/dropout statistics
        return self

    def forward(self, inputs: Mapping[str, Tensor]) -> ModelOutput:
        if self.training:  # set on use too: a loop may have restored the encoders' flags directly
            self.model.encoders.eval()
        return super().forward(inputs)


@register
class UniPreFinetuned(Joint):
    """``L = L_task(f(X), y)`` from encoders taken from the unimodal stages, finetuned with
    the fusion: joint training with ``method.init=unimodal``.

    Notes:
        The encoders' learning rate is scaled by ``encoder_lr_scale`` (paper A.4: one
        magnitude lower when finetuning pretrained encoders). The authors' CREMA-D run used
        one learning rate (1e-4) for all parameters; set ``encoder_lr_scale: 1`` and
        ``optim.lr`` to follow that instead.
    """

    name = "unipre_finetuned"
    description = "unimodally pre-trained encoders, finetuned jointly with the fusion"
    reference = "baseline (Kontras et al., Section 4; Du et al., 2023)"
    default_init = "unimodal"
    init_choices = ("unimodal",)

    @dataclass
    class Hyperparameters:
        encoder_lr_scale: float = hparam(0.1, search=log_uniform(0.01, 1.0))  # paper A.4: 0.1
