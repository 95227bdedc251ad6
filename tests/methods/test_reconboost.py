"""ReconBoost: the phase-1 loss against loops, the schedule, each phase's updates, the boost
rate's gradient, the GA term's gradient (and the official detached one)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mmbalance import MultimodalModel
from mmbalance.engine import train_step
from mmbalance.errors import ConfigError
from mmbalance.methods import get_method
from mmbalance.methods.reconboost import ReconBoost, boosting_loss
from mmbalance.types import Batch


def _loop_loss(logits, labels, others, w1, w2):
    total, (B, C) = 0.0, logits.shape
    for i in range(B):
        p = [math.exp(float(v)) for v in logits[i]]
        q = [math.exp(float(v)) for v in others[i]] if others is not None else None
        row = 0.0
        for c in range(C):
            y = 1.0 if c == int(labels[i]) else 0.0
            qc = q[c] / sum(q) if q is not None else 1.0  # one constant column: softmax 1
            row += -w1 * y * math.log(p[c] / sum(p)) + w2 * y * qc * math.log(p[c] / sum(p))
        total += row / C
    return total / B


@pytest.mark.parametrize("with_others", [True, False])
def test_boosting_loss_against_loops(with_others):
    g = torch.Generator().manual_seed(0)
    logits, others = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g)
    labels = torch.tensor([0, 3, 1, 1, 2])
    got = boosting_loss(logits, labels, others if with_others else None, 5.0, 1.0)
    assert float(got) == pytest.approx(_loop_loss(logits, labels, others if with_others else None, 5.0, 1.0),
                                       rel=1e-5)


def _method(seed=0, modalities=2, **hp):
    torch.manual_seed(seed)
    enc = {m: nn.Linear(2 + i, 4) for i, m in enumerate("abc"[:modalities])}
    model = MultimodalModel(enc, 3, feature_dims={m: 4 for m in enc}, fusion_hidden=5)
    return ReconBoost(model, get_method("reconboost").Hyperparameters(**hp))


def _batch(modalities=2):
    g = torch.Generator().manual_seed(3)
    return Batch({m: torch.randn(6, 2 + i, generator=g) for i, m in enumerate("abc"[:modalities])},
                 torch.tensor([0, 1, 2, 0, 1, 2]))


def test_schedule_by_hand():
    method = _method(modalities=3, epochs_per_stage=2, correct_epoch=1)
    got = [(s.index, s.modality, s.phase, s.previous) for s in map(method.stage, range(7))]
    assert got == [(0, "a", "boost", None), (0, "a", "boost", None), (0, "a", "rectify", None),
                   (1, "b", "boost", "a"), (1, "b", "boost", "a"), (1, "b", "rectify", "a"), (2, "c", "boost", "b")]
    assert [method.learners(e) for e in (0, 3, 6)] == [["a"], ["a", "b"], ["a", "b", "c"]]
    assert [method.phase(e).name for e in (1, 2, 3)] == ["stage0/a/boost", "stage0/a/rectify", "stage1/b/boost"]
    assert all(method.phase(e).fresh_optimizer for e in range(7))
    assert _method(init="unimodal").learners(0) == ["a", "b"]
    with pytest.raises(ConfigError, match="method 'reconboost': method.epochs_per_stage must be >= 1"):
        _method(epochs_per_stage=0)


def _snapshot(method):
    return {n: p.detach().clone() for n, p in method.named_parameters()}


def test_phase_one_loss_and_updates_only_the_new_learner_and_the_head():
    method = _method(epochs_per_stage=1, correct_epoch=1)
    method.on_epoch_start(2)  # stage 1: modality b against a, GA towards a
    batch = _batch()
    before = _snapshot(method)
    with torch.no_grad():
        out = method(batch.inputs)
    za, zb, beta = out.unimodal_logits["a"], out.unimodal_logits["b"], float(method.boost_rate.detach())
    expect = _loop_loss(zb, batch.labels, beta * za, 5.0, 1.0) + 0.5 * float(
        ((zb.softmax(-1) - za.softmax(-1)) ** 2).mean())
    opt = torch.optim.SGD(method.parameters(), lr=0.1)
    loss = train_step(method, batch, opt)
    assert float(loss.total) == pytest.approx(expect, rel=1e-5)
    changed = {n for n, p in method.named_parameters() if not torch.equal(before[n], p.detach())}
    assert changed == {"model.encoders.b.weight", "model.encoders.b.bias", "model.fusion.head.0.weight",
                       "model.fusion.head.0.bias", "model.fusion.head.2.weight", "model.fusion.head.2.bias"}


def test_ga_term_gradient_and_the_official_detached_term():
    batch = _batch()
    grads = {}
    for detached in (False, True):
        method = _method(epochs_per_stage=1, correct_epoch=1, ga_detached=detached)
        method.on_epoch_start(2)
        loss = method.training_loss(batch, method(batch.inputs))
        w = method.model.encoders["b"].weight
        ga = loss.terms["ga"]
        grads[detached] = (torch.autograd.grad(ga, w, retain_graph=True)[0] if ga.requires_grad else None,
                           torch.autograd.grad(loss.terms["boost"], w)[0])
    assert grads[True][0] is None  # the official term reaches nothing
    zb_fn = lambda W: method.model.fusion.head(batch.inputs["b"] @ W.t() + method.model.encoders["b"].bias)  # noqa
    with torch.no_grad():
        za = method.model.fusion.head(method.model.encoders["a"](batch.inputs["a"])).softmax(-1)
    W = method.model.encoders["b"].weight.detach().clone().requires_grad_()
    want = torch.autograd.grad(0.5 * ((zb_fn(W).softmax(-1) - za) ** 2).mean(), W)[0]
    torch.testing.assert_close(grads[False][0], want)
    torch.testing.assert_close(grads[False][1], grads[True][1])


def test_rectification_trains_every_learner_and_the_boost_rate_by_its_gradient():
    method = _method(epochs_per_stage=1, correct_epoch=1)
    method.on_epoch_start(3)  # stage 1, phase 2: learners a and b
    batch = _batch()
    with torch.no_grad():
        out = method(batch.inputs)
    S = out.unimodal_logits["a"] + out.unimodal_logits["b"]
    beta = float(method.boost_rate.detach())
    p = (beta * S).softmax(-1)
    y = F.one_hot(batch.labels, 3).float()
    d_beta = float(((p - y) * S).sum(-1).mean())  # d CE(beta S, y) / d beta, by hand
    before = _snapshot(method)
    opt = torch.optim.SGD(method.parameters(), lr=0.1)
    loss = train_step(method, batch, opt)
    assert float(loss.total) == pytest.approx(float(F.cross_entropy(beta * S, batch.labels)), rel=1e-5)
    assert float(method.boost_rate.grad) == pytest.approx(d_beta, rel=1e-4)
    assert float(method.boost_rate.detach()) == pytest.approx(beta - 0.1 * d_beta, rel=1e-5)
    changed = {n for n, p in method.named_parameters() if not torch.equal(before[n], p.detach())}
    assert {"model.encoders.a.weight", "model.encoders.b.weight", "boost_rate"} <= changed
    assert not any(n.startswith("model.heads.") for n in changed)
    torch.testing.assert_close(method.predict(out), method.boost_rate * S)
