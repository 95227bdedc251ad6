"""MMCosine: logits are s times the cosine of features and class weights (brute-force loops),
the loss is the task loss of their sum, and it refuses what it cannot decompose."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mmbalance.errors import ConfigError
from mmbalance.methods.mmcosine import MMCosine
from mmbalance.models import MLPEncoder, MultimodalModel
from mmbalance.types import Batch


def _model(fusion="concat_linear", num_classes=3):
    torch.manual_seed(0)
    encoders = {"a": MLPEncoder(5, 4, hidden=6, layers=1), "v": MLPEncoder(3, 6, hidden=6, layers=1)}
    return MultimodalModel(encoders, num_classes, fusion=fusion, fusion_hidden=8)


def _cosine(u, w):
    dot = sum(a * b for a, b in zip(u, w))
    return dot / (math.sqrt(sum(a * a for a in u)) * math.sqrt(sum(b * b for b in w)))


def test_logits_are_scale_times_cosine():
    model = _model()
    method = MMCosine(model, MMCosine.Hyperparameters(scale=7.0))
    x = {"a": torch.randn(4, 5), "v": torch.randn(4, 3)}
    out = method(x)
    features = {m: z.tolist() for m, z in model.encode(x).items()}
    for m in ("a", "v"):
        W = model.fusion.weights[m].weight.tolist()  # (C, D_m), one row per class
        want = [[7.0 * _cosine(features[m][i], W[c]) for c in range(3)] for i in range(4)]
        assert torch.allclose(out.unimodal_logits[m], torch.tensor(want), atol=1e-5)
    assert torch.allclose(out.logits, out.unimodal_logits["a"] + out.unimodal_logits["v"])
    assert out.logits.abs().max().item() <= 2 * 7.0 + 1e-5


def test_loss_is_cross_entropy_of_the_cosine_sum_and_ignores_the_bias():
    model = _model()
    method = MMCosine(model)
    x, y = {"a": torch.randn(4, 5), "v": torch.randn(4, 3)}, torch.tensor([0, 1, 2, 1])
    out = method(x)
    terms = method.training_loss(Batch(x, y), out)
    assert torch.allclose(terms.total, F.cross_entropy(out.logits, y))
    terms.total.backward()
    assert model.fusion.bias.grad is None and model.heads["a"].weight.grad is None
    assert model.fusion.weights["v"].weight.grad.abs().sum() > 0


def test_refuses_non_decomposable_fusion_and_regression():
    with pytest.raises(ConfigError, match="concat_linear"):
        MMCosine(_model(fusion="gated"))
    with pytest.raises(ConfigError, match="classification"):
        MMCosine(_model(num_classes=1))
