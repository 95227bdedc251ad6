"""MLB: ratios and k by hand (r < 1 and r > 1, with and without beta, M = 3, regression),
scores by brute-force loops, and which gradients it scales."""

from __future__ import annotations

import math

import pytest
import torch

from mmbalance.methods.mlb import MLB, mlb_coefficients, mlb_ratios
from mmbalance.models import MLPEncoder, MultimodalModel
from mmbalance.types import Batch


def _model(num_classes=3, fusion="concat_linear"):
    torch.manual_seed(0)
    encoders = {"a": MLPEncoder(5, 4, hidden=6, layers=1), "v": MLPEncoder(3, 4, hidden=6, layers=1)}
    return MultimodalModel(encoders, num_classes, fusion=fusion, fusion_hidden=8)


def test_ratios_by_hand():
    # Classification: r_0 = s_1 / s_0; the lagging modality (lower score) gets r > 1.
    assert mlb_ratios(torch.tensor([0.2, 0.6])).tolist() == pytest.approx([3.0, 1 / 3])
    # Three modalities: r_m = mean(other scores) / s_m.
    assert mlb_ratios(torch.tensor([0.2, 0.4, 0.6])).tolist() == pytest.approx([2.5, 1.0, 0.5])
    # Regression (scores are MSE, ratio inverted): the larger error lags.
    assert mlb_ratios(torch.tensor([2.0, 1.0]), regression=True).tolist() == pytest.approx([2.0, 0.5])


def test_k_below_and_above_one_with_and_without_beta():
    r = torch.tensor([2.0, 0.5])
    plain = mlb_coefficients(r, alpha=0.5)
    assert plain.tolist() == pytest.approx([1 + math.tanh(0.5), 1 + math.tanh(-0.25)])
    boosted = mlb_coefficients(r, alpha=0.5, beta=10.0)
    assert boosted.tolist() == pytest.approx([1 + 9 * math.tanh(0.5), 1 + math.tanh(-0.25)])
    assert mlb_coefficients(torch.tensor([1.5]), alpha=2.0, beta=0.5).tolist() == pytest.approx(
        [1 - 0.5 * math.tanh(1.0)])


def test_method_scores_unimodal_heads_and_scales_the_branch():
    model = _model()
    method = MLB(model, MLB.Hyperparameters(alpha=0.5, beta=10.0))
    x, y = {"a": torch.randn(6, 5), "v": torch.randn(6, 3)}, torch.tensor([0, 1, 2, 0, 1, 2])
    out = method(x)
    terms = method.training_loss(Batch(x, y), out)
    assert set(terms.terms) == {"task", "unimodal/a", "unimodal/v"}
    scores = []
    for m in ("a", "v"):
        logits = out.unimodal_logits[m].tolist()
        probs = [math.exp(row[int(t)]) / sum(math.exp(v) for v in row) for row, t in zip(logits, y)]
        scores.append(sum(probs) / len(probs))
    ratios = [scores[1] / scores[0], scores[0] / scores[1]]
    want = [1 + (9 if r > 1 else 1) * math.tanh(0.5 * (r - 1)) for r in ratios]
    assert method.coefficients.tolist() == pytest.approx(want, rel=1e-5)

    for p in method.parameters():
        p.grad = torch.ones_like(p)
    logs = method.after_backward()
    assert [logs["coeff/a"], logs["coeff/v"]] == pytest.approx(want, rel=1e-5)
    for i, m in enumerate(("a", "v")):
        branch = [*model.modality_parameters(m), *model.head_parameters(m), model.fusion.weights[m].weight]
        assert all(torch.allclose(p.grad, torch.full_like(p, want[i])) for p in branch)
    assert torch.all(model.fusion.bias.grad == 1.0)


def test_regression_uses_mse_scores():
    model = _model(num_classes=1)
    method = MLB(model, MLB.Hyperparameters(alpha=1.0))
    x, y = {"a": torch.randn(6, 5), "v": torch.randn(6, 3)}, torch.randn(6)
    out = method(x)
    method.training_loss(Batch(x, y), out)
    mse = [sum((p - t) ** 2 for p, t in zip(out.unimodal_logits[m].reshape(-1).tolist(), y.tolist())) / 6
           for m in ("a", "v")]
    want = [1 + math.tanh(mse[0] / mse[1] - 1), 1 + math.tanh(mse[1] / mse[0] - 1)]
    assert method.coefficients.tolist() == pytest.approx(want, rel=1e-5)


def test_non_decomposable_fusion_scales_encoder_and_head_only():
    model = _model(fusion="concat_mlp")
    method = MLB(model)
    method.coefficients.copy_(torch.tensor([0.5, 1.5]))
    for p in method.parameters():
        p.grad = torch.ones_like(p)
    method.after_backward()
    assert all(torch.all(p.grad == 0.5) for p in model.head_parameters("a"))
    assert all(torch.all(p.grad == 1.0) for p in model.fusion_parameters())
