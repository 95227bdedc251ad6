"""OGM: coefficients against Eq. 10 by hand, scores by brute-force loops, which gradients it
scales, its epoch window and its refusals."""

from __future__ import annotations

import math

import pytest
import torch

from mmbalance.errors import ConfigError
from mmbalance.methods.ogm import OGM, ogm_coefficients
from mmbalance.models import MLPEncoder, MultimodalModel
from mmbalance.types import Batch


def _model(fusion="concat_linear", num_classes=3):
    torch.manual_seed(0)
    encoders = {"a": MLPEncoder(5, 4, hidden=6, layers=1), "v": MLPEncoder(3, 4, hidden=6, layers=1)}
    return MultimodalModel(encoders, num_classes, fusion=fusion, fusion_hidden=8)


def test_coefficients_two_modalities_by_hand():
    # s_a = 6, s_v = 3: rho_a = 2 > 1 damps a by 1 - tanh(0.8 * 2); v keeps 1.
    k = ogm_coefficients(torch.tensor([6.0, 3.0]), alpha=0.8)
    assert k.tolist() == pytest.approx([1 - math.tanh(1.6), 1.0])
    k = ogm_coefficients(torch.tensor([3.0, 6.0]), alpha=0.1)
    assert k.tolist() == pytest.approx([1.0, 1 - math.tanh(0.2)])


def test_coefficients_three_modalities_and_tie():
    k = ogm_coefficients(torch.tensor([2.0, 1.0, 4.0]), alpha=0.5)
    assert k.tolist() == pytest.approx([1 - math.tanh(1.0), 1.0, 1 - math.tanh(2.0)])
    assert ogm_coefficients(torch.tensor([2.0, 2.0]), alpha=0.5).tolist() == [1.0, 1.0]


def test_scores_come_from_each_modality_share_of_the_linear_fusion():
    model = _model()
    method = OGM(model, OGM.Hyperparameters(alpha=0.7))
    x = {"a": torch.randn(6, 5), "v": torch.randn(6, 3)}
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    out = method(x)
    terms = method.training_loss(Batch(x, y), out)
    assert torch.allclose(terms.total, torch.nn.functional.cross_entropy(out.logits, y))
    scores = []
    for m in ("a", "v"):
        W, b, z = model.fusion.weights[m].weight.tolist(), model.fusion.bias.tolist(), out.features[m].tolist()
        total = 0.0
        for i in range(6):
            logits = [sum(z[i][d] * W[c][d] for d in range(4)) + b[c] / 2 for c in range(3)]
            exps = [math.exp(v) for v in logits]
            total += exps[int(y[i])] / sum(exps)
        scores.append(total)
    low = min(scores)
    want = [1 - math.tanh(0.7 * s / low) if s / low > 1 else 1.0 for s in scores]
    assert method.coefficients.tolist() == pytest.approx(want, rel=1e-5)


def _ones_grads(method):
    for p in method.parameters():
        p.grad = torch.ones_like(p)


def test_only_the_encoder_weight_matrices_are_scaled():
    method = OGM(_model())
    method.coefficients.copy_(torch.tensor([0.25, 1.0]))
    _ones_grads(method)
    logs = method.after_backward()
    assert logs == {"coeff/a": 0.25, "coeff/v": 1.0}
    for p in method.model.modality_parameters("a"):
        assert torch.all(p.grad == (0.25 if p.dim() >= 2 else 1.0))
    others = [*method.model.modality_parameters("v"), *method.model.fusion_parameters(),
              *method.model.head_parameters("a"), *method.model.head_parameters("v")]
    assert all(torch.all(p.grad == 1.0) for p in others)


def test_no_modulation_outside_the_epoch_window():
    method = OGM(_model(), OGM.Hyperparameters(start_epoch=2, end_epoch=3))
    method.coefficients.copy_(torch.tensor([0.25, 1.0]))
    for epoch, scaled in ((1, False), (2, True), (3, True), (4, False)):
        method.on_epoch_start(epoch)
        _ones_grads(method)
        method.after_backward()
        weight = next(p for p in method.model.modality_parameters("a") if p.dim() >= 2)
        assert torch.all(weight.grad == (0.25 if scaled else 1.0)), epoch


def test_end_epoch_none_modulates_without_end():
    method = OGM(_model(), OGM.Hyperparameters(end_epoch=None))
    method.coefficients.copy_(torch.tensor([0.25, 1.0]))
    method.on_epoch_start(10_000)
    _ones_grads(method)
    method.after_backward()
    weight = next(p for p in method.model.modality_parameters("a") if p.dim() >= 2)
    assert torch.all(weight.grad == 0.25)


def test_refuses_non_decomposable_fusion_and_regression():
    with pytest.raises(ConfigError, match="concat_linear"):
        OGM(_model(fusion="concat_mlp"))
    with pytest.raises(ConfigError, match="classification"):
        OGM(_model(num_classes=1))
