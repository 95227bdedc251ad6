"""MMPareto: multimodal and unimodal losses, each encoder's two gradients integrated by a
Pareto rule (Wei & Hu, ICML 2024)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..types import Batch, LossTerms, ModelOutput
from .base import Method, register
from .hparams import hparam, uniform


def min_norm_weights(g_mm: Tensor, g_uni: Tensor) -> Tuple[float, float]:
    """The weights ``(c, 1 - c)`` of the minimum-norm point ``c g_mm + (1 - c) g_uni`` of the
    segment between two flat gradients (MGDA for two tasks, in closed form):
    ``c = <g_uni, g_uni - g_mm> / |g_mm - g_uni|^2``, except ``c = 0.999`` when
    ``<g_mm, g_uni> >= |g_mm|^2`` and ``c = 0.001`` when ``<g_mm, g_uni> >= |g_uni|^2`` (the
    official solver's end points).

    Args:
        g_mm, g_uni: (P,) flat gradients.
    """
    v11, v12, v22 = (float(torch.dot(a.double(), b.double())) for a, b in
                     ((g_mm, g_mm), (g_mm, g_uni), (g_uni, g_uni)))
    if v12 >= v11:
        c = 0.999
    elif v12 >= v22:
        c = 0.001
    else:
        c = (v22 - v12) / (v11 + v22 - 2 * v12)
    return c, 1.0 - c


def pareto_weights(g_mm: Tensor, g_uni: Tensor) -> Tuple[float, float, float]:
    """``(w_mm, w_uni, cos)``: ``(1/2, 1/2)`` when the two flat gradients agree
    (``cos(g_mm, g_uni) > 0``), else :func:`min_norm_weights`."""
    cos = float(F.cosine_similarity(g_mm.float(), g_uni.float(), dim=0))
    if cos > 0:
        return 0.5, 0.5, cos
    return (*min_norm_weights(g_mm, g_uni), cos)


def pareto_gradient(g_mm: Tensor, g_uni: Tensor, w_mm: float, w_uni: float, gamma: float) -> Tensor:
    """One parameter tensor's gradient: ``g~ = 2 (w_mm g_mm + w_uni g_uni)``, raised to the norm
    of the summed gradient ``g_mm + g_uni`` when it is shorter, times ``gamma``:
    ``gamma * max(1, |g_mm + g_uni| / |g~|) * g~`` (a zero ``g~`` stays zero)."""
    new = 2 * (w_mm * g_mm + w_uni * g_uni)
    new_norm = new.norm()
    ratio = (g_mm + g_uni).norm() / new_norm if new_norm > 0 else new_norm.new_ones(())
    return new * gamma * torch.clamp(ratio, min=1.0)


@register
class MMPareto(Method):
    """``L = L_task(f(X), y) + sum_m L_task(f_m(X_m), y)``, the fused loss and each separate
    unimodal head's loss. Each encoder m's gradients of the fused loss ``g_mm`` and of its own
    unimodal loss ``g_uni`` (flattened over the encoder) get the weights of
    :func:`pareto_weights`; each encoder tensor's gradient is then :func:`pareto_gradient`
    with ``gamma``. The fusion and the unimodal heads get the summed loss's gradient (their own
    losses'). Any number of modalities: every encoder has its own pair.

    Notes:
        Official code: GeWu-Lab/MMPareto_ICML2024 (a339db3), ``code/MMPareto.py``:

        - losses CE(fused), CE(head_audio), CE(head_video) (:99-103), separate unimodal heads
          (``code/models/models.py``:154-156);
        - each loss's gradient captured separately (:117-147), the cosine of an encoder's
          flattened ``both`` and unimodal gradients (:149-150), weights 1/2 each if it is
          > 0, else ``MinNormSolver.find_min_norm_element`` (:165-174), which for two
          vectors is the closed form of ``code/min_norm_solvers.py``:9-30 returned at :127-129;
        - ``gamma = 1.5`` hard-coded (:178); the rewrite is PER PARAMETER TENSOR of the
          encoders (:184-207): ``2 (k0 g_both + k1 g_uni)``, scaled by
          ``|g_sum| / |new|`` when that exceeds 1, times gamma; the heads keep the summed
          loss's gradient (:187-188);
        - SGD lr 2e-3, momentum 0.9, weight decay 1e-4, StepLR(30, 0.1), batch 64, 50 epochs
          (:27-34, :296, :301): use ``optim.name=sgd`` for the published setting. Under Adam
          (the default here) a step whose encoders all agree (cosine > 0, ratio 1) gets
          ``gamma (g_mm + g_uni)``, which Adam's per-parameter normalization turns into
          ``multiloss``'s update up to Adam's eps: the method then acts through conflicting
          steps only.

        Departures: encoders and heads are found by the model's structure, not by the
        substrings ``audio``/``visual``/``head`` of parameter names; a tensor whose combined
        gradient is zero keeps a zero gradient (the official ratio ``|g_sum| / 0`` would make
        it NaN); under DDP the weights come from the rank-averaged term gradients (the whole
        global batch), so every rank decides alike. The MCR authors' ``run.sh`` sets
        ``alpha`` (= gamma) 1.5 (ResNet CREMA-D), 2.0 (ViT), 0.5 (AVE ResNet), 3.0 (AVE ViT);
        gamma is searched uniformly over [0.5, 3]. The official code has two modalities; more
        follow its per-encoder rule, as the MCR authors' ``Bias_Infusion_MMPareto_3d`` does.
        Cost: M + 2 gradient passes per step, and under DDP one all-reduce per term. The
        paper's own statement of the magnitude rule was not checked against the code.
    """

    name = "mmpareto"
    description = "MMPareto: fused + unimodal losses; each encoder's two gradients integrated by a Pareto rule"
    reference = "Wei & Hu, MMPareto: Boosting Multimodal Learning with Innocent Unimodal Assistance, ICML 2024"

    @dataclass
    class Hyperparameters:
        gamma: float = hparam(1.5, search=uniform(0.5, 3.0))  # MMPareto.py:178

    def __init__(self, model, hparams=None) -> None:
        super().__init__(model, hparams)
        self.register_buffer("weights", torch.full((len(model.modalities),), 0.5))  # w_mm of each encoder
        self.register_buffer("cosines", torch.zeros(len(model.modalities)))

    def training_loss(self, batch: Batch, out: ModelOutput) -> LossTerms:
        terms = {"task": self.task_loss(out.logits, batch.labels)}
        for m, loss in self.unimodal_losses(out, batch.labels).items():
            terms[f"unimodal/{m}"] = loss
        return LossTerms.from_terms(terms)

    def encoder_parameters(self) -> Dict[str, List[nn.Parameter]]:
        return {m: [p for p in self.model.modality_parameters(m) if p.requires_grad] for m in self.model.modalities}

    def combine_gradients(self, loss: LossTerms,
                          gradient: Callable[[Tensor, Sequence[Tensor]], List[Tensor]]) -> Dict[nn.Parameter, Tensor]:
        encoders = self.encoder_parameters()
        flat = [p for ps in encoders.values() for p in ps]
        fused = iter(gradient(loss.terms["task"], flat))
        out: Dict[nn.Parameter, Tensor] = {}
        for i, (m, params) in enumerate(encoders.items()):
            g_mm = [next(fused) for _ in params]
            if not params:
                continue
            g_uni = gradient(loss.terms[f"unimodal/{m}"], params)
            w_mm, w_uni, cos = pareto_weights(torch.cat([g.reshape(-1) for g in g_mm]),
                                              torch.cat([g.reshape(-1) for g in g_uni]))
            self.weights[i], self.cosines[i] = w_mm, cos
            for p, a, b in zip(params, g_mm, g_uni):
                out[p] = pareto_gradient(a, b, w_mm, w_uni, self.hparams.gamma)
        return out

    def after_backward(self) -> Dict[str, float]:
        logs = {f"weight_mm/{m}": float(w) for m, w in zip(self.model.modalities, self.weights)}
        logs.update({f"cos/{m}": float(c) for m, c in zip(self.model.modalities, self.cosines)})
        return logs
