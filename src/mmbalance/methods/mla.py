"""MLA: Multimodal Learning with Alternating unimodal adaptation (Zhang, Yoon, Bansal, Yao, CVPR 2024)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError
from ..types import Batch, LossTerms, ModelOutput
from .base import Method, SubStep, register
from .hparams import choice, hparam

TEST_FUSIONS = ("dynamic", "fixed")
ENTROPIES = ("sample", "batch")
#: the official fixed test-time weights: ``main(av_alpha=0.55)`` for two modalities, the
#: ``--a_alpha/--v_alpha/--t_alpha`` defaults for three (in the model's modality order)
OFFICIAL_FIXED = {2: (0.55, 0.45), 3: (0.35, 0.25, 0.4)}


def projector_update(P: Tensor, r: Tensor, alpha: float) -> Tensor:
    """One step of MLA's head-gradient projector (an OWM-style recursive projector).

    ``k = P r^T``, ``P' = P - k k^T / (alpha + r k)``, then ``P' / |P'|_F``.

    Args:
        P: (D, D) the projector.
        r: (D,) the batch mean of the head's input.
        alpha: the regulariser ``0.1^(1 + batch / batches)``.
    """
    r = r.reshape(1, -1).to(P.dtype)
    k = P @ r.t()
    P = P - (k @ k.t()) / (alpha + r @ k)
    return P / torch.linalg.matrix_norm(P)


def entropy_weights(logits: Sequence[Tensor], per: str = "sample") -> Tensor:
    """MLA's test-time weights ``w_m = exp(H_max - H_m) / sum_k exp(H_max - H_k)`` from the
    prediction entropy ``H_m`` of each modality's (B, C) logits.

    ``per="sample"``: ``H_m`` of each row (softmax over classes), weights (M, B, 1);
    ``per="batch"``: the official code's one number per modality and batch, the entropy of
    the softmax over the BATCH axis summed over all entries, weights (M, 1, 1).
    """
    z = torch.stack([x.float() for x in logits])  # (M, B, C)
    if per == "batch":
        p = z.softmax(1)
        h = -(p * p.log()).sum((1, 2)).reshape(-1, 1, 1)
    else:
        p = z.softmax(-1)
        h = -(p * z.log_softmax(-1)).sum(-1, keepdim=True)  # (M, B, 1)
    w = torch.exp(h.amax(0, keepdim=True) - h)
    return w / w.sum(0, keepdim=True)


@register
class MLA(Method):
    """One shared head ``H`` for all modalities (``model.fusion=shared_linear``, given to the
    model when it has no shared head). Each batch takes M optimizer steps, one per modality
    in the model's order: ``L_m = CE(H(z_m), y)`` updates encoder m and the head only, the
    head called again after the steps before it. Before each step the head's (first
    layer's) weight gradient is replaced by ``grad_W P^T``, where the projector ``P``
    (identity at first, shared by all modalities, :func:`projector_update`) first absorbs the
    batch mean of this modality's head input; the very first step of the run is not
    projected. Prediction: ``sum_m w_m H(z_m)`` with entropy weights (:func:`entropy_weights`,
    ``test_fusion=dynamic``) or fixed ones. Any number of modalities.

    Notes:
        Official code: Cecile-hi/Multimodal-Learning-with-Alternating-Unimodal-Adaptation
        (main.py ``train_epoch``, ``gs_flag`` branch; ``valid``; utils/utils.py ``GSPlugin``):
        one forward of every encoder, then for each modality ``fc_out(feature)``, CE,
        backward, ``GSPlugin.before_update``, ``optimizer.step()``, ``zero_grad``, with
        ``alpha = 0.1 ** (batch_step / len(loader) + 1)`` and ``exp_count`` counting the steps
        over the whole run (the first is not projected); SGD lr 1e-3, momentum 0.9, weight
        decay 1e-4, batch 64, 100 epochs (use ``optim.name=sgd`` for that setting).

        - A plain bug, kept as an option: ``GSPlugin`` edits the parameter named
          ``module.weight``, but it is handed the bare ``fc_out`` Linear whose weight is named
          ``weight``, so the projection never runs in the official code.
          ``projection=true`` (default) runs it as written (``grad_W <- grad_W P^T``, P
          updated); ``projection=false`` is the official code as it runs.
          BalanceBenchmark matches ``weight`` but ADDS the projected gradient to the
          gradient; not offered.
        - Test-time fusion: the README's MLA runs use ``--dynamic`` (entropy weights,
          default here) or fixed weights (``test_fusion=fixed``: 0.55/0.45 for two
          modalities, as ``main(av_alpha=0.55)``; 0.35/0.25/0.4 for three; otherwise
          ``fixed_weights`` or equal weights). The official entropy is a softmax over the
          BATCH axis summed into one number per batch, so a sample's prediction depends on
          the rest of its batch (a plain bug; ``entropy=batch``); the default ``sample`` is
          the paper's per-sample entropy, softmax over classes.
        - Departures: the projector acts on the head's first Linear for ``shared_mlp``
          (the official head is one Linear); the projector's size is the head's input
          width, not a hard-coded 512; under DDP the batch mean that updates it is averaged
          over ranks, so every rank keeps the same projector. The head's bias is never
          projected (as in the official code). Each step updates only what its loss reaches
          (encoder m, its projection if ``model.shared_dim``, the head), as the official
          torch 2 optimizer does with ``zero_grad(set_to_none)``.
        Cost: one forward, M backward passes and M optimizer steps per batch.
    """

    name = "mla"
    description = "MLA: one shared head, one optimizer step per modality per batch, head-gradient projector"
    reference = "Zhang et al., Multimodal Representation Learning by Alternating Unimodal Adaptation, CVPR 2024"
    requires = frozenset({"classification", "shared_head"})
    fusion = "shared_linear"

    @dataclass
    class Hyperparameters:
        projection: bool = True  # False: the official code as it runs (its projector never fires)
        test_fusion: str = hparam("dynamic", search=choice(TEST_FUSIONS))
        entropy: str = "sample"  # batch: the official softmax over the batch axis
        fixed_weights: Optional[List[float]] = None  # test_fusion=fixed; None: the official ones

    def __init__(self, model, hparams=None) -> None:
        super().__init__(model, hparams)
        hp = self.hparams
        for key, value, valid in (("test_fusion", hp.test_fusion, TEST_FUSIONS), ("entropy", hp.entropy, ENTROPIES)):
            if value not in valid:
                raise ConfigError(f"method 'mla': method.{key} {value!r} is unknown; valid: {', '.join(valid)}")
        if hp.fixed_weights is not None and len(hp.fixed_weights) != len(model.modalities):
            raise ConfigError(f"method 'mla': method.fixed_weights has {len(hp.fixed_weights)} values for "
                              f"{len(model.modalities)} modalities")
        self.register_buffer("projector", torch.empty(0))
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))  # steps taken (official exp_count)
        self.register_buffer("batch", torch.zeros((), dtype=torch.long))  # index in the epoch
        self.register_buffer("batches", torch.zeros((), dtype=torch.long))  # len(train loader)
        self._head_mean: Optional[Tensor] = None
        model.when_materialized(self._identity)

    def _identity(self, dims) -> None:
        if self.projector.numel() == 0:  # (not one a checkpoint just filled)
            self.projector = torch.eye(self.model.fusion.in_features, device=self.projector.device)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        saved = state_dict.get(prefix + "projector")
        if saved is not None and saved.shape != self.projector.shape:  # a model sized by its first batch
            self.projector = torch.empty(saved.shape, device=self.projector.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def on_epoch_start(self, epoch: int, train_loader=None) -> Dict[str, float]:
        self.batch.fill_(-1)
        self.batches.fill_(len(train_loader) if train_loader is not None else 0)
        return {}

    def sub_steps(self) -> List[SubStep]:
        self.batch += 1
        fusion = self.model.fusion
        head = tuple(fusion.head_parameters())
        return [SubStep(m, tuple(self.model.modality_parameters(m)) + tuple(fusion.modality_parameters(m)) + head)
                for m in self.model.modalities]

    def sub_step_loss(self, step: SubStep, batch: Batch, out: ModelOutput) -> LossTerms:
        fusion = self.model.fusion
        x = fusion.head_input(step.name, out.features[step.name])
        self._head_mean = x.detach().float().mean(0)
        return LossTerms.from_terms({"task": self.task_loss(fusion.head(x), batch.labels)})

    def after_step_backward(self, step: SubStep) -> Dict[str, float]:
        if self.hparams.projection and int(self.updates) > 0:
            alpha = 0.1 ** (1.0 + float(self.batch) / max(int(self.batches), 1))
            r = self.all_reduce_mean(self._head_mean)
            self.projector = projector_update(self.projector, r, alpha)
            weight = self.model.fusion.input_layer.weight
            if weight.grad is not None:
                weight.grad = weight.grad @ self.projector.t().to(weight.grad.dtype)
        self.updates += 1
        return {}

    def training_loss(self, batch: Batch, out: ModelOutput) -> LossTerms:
        """The M step losses summed (what one batch's steps minimise, for logs and passes)."""
        return LossTerms.from_terms({f"task/{m}": self.task_loss(z, batch.labels)
                                     for m, z in out.unimodal_logits.items()})

    def predict(self, out: ModelOutput) -> Tensor:
        logits = [out.unimodal_logits[m] for m in self.model.modalities]
        if self.hparams.test_fusion == "dynamic":
            w = entropy_weights(logits, self.hparams.entropy)
        else:
            fixed = self.hparams.fixed_weights or OFFICIAL_FIXED.get(len(logits), [1.0 / len(logits)] * len(logits))
            w = torch.tensor(fixed, device=logits[0].device).reshape(-1, 1, 1)
        return (w * torch.stack([z.float() for z in logits])).sum(0)
