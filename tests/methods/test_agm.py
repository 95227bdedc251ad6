"""AGM: Shapley shares by hand (M = 2 and 3), the coefficient's sign, the running means
updated after the coefficient, the gradient each path receives, clipping and refusal."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from mmbalance.errors import ConfigError
from mmbalance.methods.agm import AGM, scale_gradient, shapley_shares
from mmbalance.models import MLPEncoder, MultimodalModel
from mmbalance.types import Batch


def _model(num_classes=3):
    torch.manual_seed(0)
    encoders = {"a": MLPEncoder(5, 4, hidden=6, layers=1), "v": MLPEncoder(3, 4, hidden=6, layers=1)}
    return MultimodalModel(encoders, num_classes)


def test_two_modality_shares_are_agms_formula():
    full, only_a, only_v = torch.randn(3, 4), torch.randn(3, 4), torch.randn(3, 4)
    values = {frozenset("av"): full, frozenset("a"): only_a, frozenset("v"): only_v}
    shares = shapley_shares(values, ["a", "v"])
    # m_a = 0.5 (full - zero_a + zero_v); zero_a is the output with a zeroed = only v kept.
    assert torch.allclose(shares["a"], 0.5 * (full - only_v + only_a))
    assert torch.allclose(shares["v"], 0.5 * (full - only_a + only_v))


def test_three_modality_shares_split_an_interaction_evenly():
    # f(S) = sum of c_m over S, plus d when a and v are both in S: phi = c_a + d/2, c_v + d/2, c_t.
    c, d = {"a": 1.0, "v": 2.0, "t": 4.0}, 0.6
    values = {}
    for size in (1, 2, 3):
        for kept in itertools.combinations("avt", size):
            total = sum(c[m] for m in kept) + (d if {"a", "v"} <= set(kept) else 0.0)
            values[frozenset(kept)] = torch.full((1, 1), total)
    shares = shapley_shares(values, ["a", "v", "t"])
    assert [float(shares[m]) for m in "avt"] == pytest.approx([1.3, 2.3, 4.0])


def test_the_weaker_modality_gets_k_above_one():
    method = AGM(_model(), AGM.Hyperparameters(alpha=1.0))
    # s_a = 2 > s_v = 1: audio has the larger loss, i.e. it is weaker; running means start at 0.
    k = method.modulate(torch.tensor([2.0, 1.0]))
    assert k.tolist() == pytest.approx([math.exp(1 - math.exp(-1)), math.exp(1 - math.exp(1))], rel=1e-5)
    assert k[0] > 1 > k[1]


def test_running_means_are_updated_after_the_coefficient():
    method = AGM(_model(), AGM.Hyperparameters(alpha=0.5))
    method.modulate(torch.tensor([2.0, 1.0]))
    assert method.running_scores.tolist() == pytest.approx([2.0, 1.0])
    k = method.modulate(torch.tensor([1.0, 3.0]))
    # Target from T = (2, 1) of step 1, not from the updated (1.5, 2).
    want_a = math.exp(0.5 * min(math.exp(1 - 2) - math.exp(3 - 1), 10))
    want_v = math.exp(0.5 * min(math.exp(2 - 1) - math.exp(1 - 3), 10))
    assert k.tolist() == pytest.approx([want_a, want_v], rel=1e-5)
    assert method.running_scores.tolist() == pytest.approx([1.5, 2.0]) and int(method.steps) == 2


def test_gap_is_capped_at_ten_and_three_modalities_use_gain_three_halves():
    method = AGM(_model(), AGM.Hyperparameters(alpha=1.0))
    method.running_scores.copy_(torch.tensor([0.0, 30.0]))
    assert float(method.modulate(torch.tensor([1.0, 1.0]))[0]) == pytest.approx(math.exp(10.0))
    encoders = {m: MLPEncoder(2, 2, hidden=2, layers=0) for m in "avt"}
    three = AGM(MultimodalModel(encoders, 2))
    k = three.modulate(torch.tensor([3.0, 0.0, 0.0]))  # mean 1: r_a = exp(1.5 * (1 - 3))
    assert float(k[0]) == pytest.approx(math.exp(1 - math.exp(-3.0)), rel=1e-5)


def test_scale_gradient_is_identity_forward_and_k_backward():
    x = torch.tensor([1.5, -2.0], requires_grad=True)
    y = scale_gradient(x, 3.0)
    assert torch.equal(y, x)
    y.sum().backward()
    assert x.grad.tolist() == [3.0, 3.0]


def test_loss_gradient_matches_the_hand_built_two_modality_graph():
    model = _model()
    method = AGM(model, AGM.Hyperparameters(alpha=2.0))
    x, y = {"a": torch.randn(6, 5), "v": torch.randn(6, 3)}, torch.tensor([0, 1, 2, 0, 1, 2])
    terms = method.training_loss(Batch(x, y), method(x))
    assert model.training
    got = torch.autograd.grad(terms.total, list(model.parameters()), allow_unused=True)
    k_a, k_v = method.coefficients.tolist()
    full = model.fuse(model.encode(x))
    model.eval()
    zero_a = model.fuse(model.encode({"a": torch.zeros(6, 5), "v": x["v"]}))
    zero_v = model.fuse(model.encode({"a": x["a"], "v": torch.zeros(6, 3)}))
    model.train()
    m_a, m_v = 0.5 * (full - zero_a + zero_v), 0.5 * (full - zero_v + zero_a)
    # Hook semantics of the official code: d loss / d m_a scaled by k_a, / d m_v by k_v.
    loss = F.cross_entropy(scale_gradient(m_a, k_a) + scale_gradient(m_v, k_v), y)
    want = torch.autograd.grad(loss, list(model.parameters()), allow_unused=True)
    for g, w in zip(got, want):
        assert (g is None and w is None) or torch.allclose(g, w, atol=1e-6)
    assert torch.allclose(terms.total, F.cross_entropy(full, y), atol=1e-6)


def test_coefficients_freeze_after_end_epoch_while_running_means_go_on():
    # official: update_scale is not called after modulation_ends, the hooks keep the last scale
    method = AGM(_model(), AGM.Hyperparameters(alpha=1.0, end_epoch=1))
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    history = []
    for epoch in range(3):
        x = {"a": torch.randn(6, 5), "v": torch.randn(6, 3)}  # a new batch: new scores
        method.on_epoch_start(epoch)
        method.training_loss(Batch(x, y), method(x))
        history.append((method.coefficients.clone(), method.running_scores.clone(), int(method.steps)))
    assert not torch.equal(history[0][0], history[1][0])  # epoch 1 still updates
    assert torch.equal(history[1][0], history[2][0])  # epoch 2 > end_epoch: frozen at epoch 1's value
    assert history[2][2] == 3 and not torch.equal(history[1][1], history[2][1])


def test_end_epoch_defaults_to_the_official_twenty_epochs_and_none_never_stops():
    assert AGM.Hyperparameters().end_epoch == 19  # official modulation_ends 20, epochs counted from 1
    method = AGM(_model(), AGM.Hyperparameters(end_epoch=None))
    x = {"a": torch.randn(6, 5), "v": torch.randn(6, 3)}
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    method.on_epoch_start(10_000)
    method.training_loss(Batch(x, y), method(x))
    method.coefficients.fill_(7.0)
    method.training_loss(Batch(x, y), method(x))
    assert not torch.allclose(method.coefficients, torch.full((2,), 7.0))


def test_three_modalities_rebuild_the_full_logits():
    torch.manual_seed(0)
    model = MultimodalModel({m: MLPEncoder(4, 3, hidden=5, layers=1) for m in "avt"}, 3)
    method = AGM(model)
    x, y = {m: torch.randn(6, 4) for m in "avt"}, torch.tensor([0, 1, 2, 0, 1, 2])
    out = method(x)
    values = method.coalition_outputs(x, out.logits)
    assert len(values) == 2 ** 3 - 1  # every non-empty coalition; the empty one cancels
    assert torch.allclose(sum(shapley_shares(values, list("avt")).values()), out.logits, atol=1e-6)
    terms = method.training_loss(Batch(x, y), out)
    assert torch.allclose(terms.total, F.cross_entropy(out.logits, y), atol=1e-6)


def test_clips_to_norm_one_when_a_fusion_weight_gradient_leaves_the_unit_box():
    method = AGM(_model())
    for p in method.parameters():
        p.grad = torch.full_like(p, 0.5)
    assert method.after_backward()["clipped"] == 0.0
    method.model.fusion.weights["a"].weight.grad[0, 0] = 5.0
    assert method.after_backward()["clipped"] == 1.0
    norm = torch.sqrt(sum((p.grad ** 2).sum() for p in method.parameters()))
    assert float(norm) == pytest.approx(1.0, rel=1e-5)


def test_refuses_regression():
    with pytest.raises(ConfigError, match="classification"):
        AGM(_model(num_classes=1))
