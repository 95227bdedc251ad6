"""Supervised contrastive term: brute-force loops and pytorch-metric-learning's NTXentLoss."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from mmbalance.losses import supervised_contrastive


def _brute_ntxent(features, labels, t):
    z = F.normalize(torch.cat(features), dim=-1).tolist()
    y = labels.tolist() * len(features)
    sim = [[sum(a * b for a, b in zip(zi, zj)) / t for zj in z] for zi in z]
    losses = []
    for a in range(len(z)):
        negs = [math.exp(sim[a][n]) for n in range(len(z)) if y[n] != y[a]]
        for p in range(len(z)):
            if p != a and y[p] == y[a]:
                e = math.exp(sim[a][p])
                losses.append(-math.log(e / (e + sum(negs))))
    return sum(losses) / len(losses) if losses else 0.0


def _brute_eq15(features, labels, t):
    zs = [F.normalize(f, dim=-1).tolist() for f in features]
    y = labels.tolist()
    out = []
    for a in range(len(zs)):
        for b in range(len(zs)):
            if a == b:
                continue
            per_anchor = []
            for i, zi in enumerate(zs[a]):
                s = [sum(u * v for u, v in zip(zi, zj)) / t for zj in zs[b]]
                log_z = math.log(sum(math.exp(v) for v in s))
                pos = [k for k in range(len(y)) if y[k] == y[i]]
                per_anchor.append(-sum(s[k] - log_z for k in pos) / len(pos))
            out.append(sum(per_anchor) / len(per_anchor))
    return sum(out) / len(out)


@pytest.fixture
def batch():
    torch.manual_seed(0)
    return [torch.randn(6, 4), torch.randn(6, 4)], torch.tensor([0, 1, 0, 2, 1, 0])


def test_matches_brute_force(batch):
    feats, labels = batch
    assert supervised_contrastive(feats, labels, 0.5).item() == pytest.approx(_brute_ntxent(feats, labels, 0.5),
                                                                              rel=1e-5)


def test_matches_pytorch_metric_learning(batch):
    losses = pytest.importorskip("pytorch_metric_learning.losses")
    feats, labels = batch
    reference = losses.NTXentLoss(temperature=0.5)(torch.cat(feats), labels.repeat(2))
    assert supervised_contrastive(feats, labels, 0.5).item() == pytest.approx(reference.item(), rel=1e-5)


def test_three_modalities_against_pml():
    losses = pytest.importorskip("pytorch_metric_learning.losses")
    torch.manual_seed(3)
    feats, labels = [torch.randn(5, 3) for _ in range(3)], torch.tensor([0, 1, 1, 2, 0])
    reference = losses.NTXentLoss(temperature=0.2)(torch.cat(feats), labels.repeat(3))
    assert supervised_contrastive(feats, labels, 0.2).item() == pytest.approx(reference.item(), rel=1e-5)


def test_cross_modal_only_is_eq15(batch):
    feats, labels = batch
    got = supervised_contrastive(feats, labels, 0.5, cross_modal_only=True)
    assert got.item() == pytest.approx(_brute_eq15(feats, labels, 0.5), rel=1e-5)


def test_single_class_batch_is_zero_and_differentiable():
    feats = [torch.randn(4, 3, requires_grad=True), torch.randn(4, 3, requires_grad=True)]
    loss = supervised_contrastive(feats, torch.zeros(4, dtype=torch.long))
    assert loss.item() == 0.0  # no negatives: every pair loss is -log(1)
    loss.backward()
    assert torch.isfinite(feats[0].grad).all()


def test_singleton_class_is_finite():
    # class 2 has one sample: its only positive is itself in the other modality
    feats, labels = [torch.randn(3, 4), torch.randn(3, 4)], torch.tensor([0, 0, 2])
    assert math.isfinite(supervised_contrastive(feats, labels).item())
    assert supervised_contrastive(feats, labels).item() == pytest.approx(_brute_ntxent(feats, labels, 0.5), rel=1e-5)


def test_learnability():
    torch.manual_seed(0)
    feats = [torch.randn(8, 4, requires_grad=True), torch.randn(8, 4, requires_grad=True)]
    labels = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    opt = torch.optim.Adam(feats, lr=0.05)
    start = supervised_contrastive(feats, labels).item()
    for _ in range(20):
        opt.zero_grad()
        loss = supervised_contrastive(feats, labels)
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * start


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 3), min_size=1, max_size=8), st.integers(0, 2**16))
def test_finite_for_any_labels(labels, seed):
    torch.manual_seed(seed)
    y = torch.tensor(labels)
    feats = [torch.randn(len(labels), 3), torch.zeros(len(labels), 3)]  # an all-zero modality too
    for cross in (False, True):
        assert math.isfinite(supervised_contrastive(feats, y, cross_modal_only=cross).item())


def _loop_ntxent_torch(features, labels, t):
    """The NT-Xent pair loss written as explicit loops over torch scalars (autograd-able)."""
    z = [F.normalize(r, dim=0) for f in features for r in f]
    y = labels.tolist() * len(features)
    losses = []
    for a in range(len(z)):
        negs = [torch.exp(torch.dot(z[a], z[n]) / t) for n in range(len(z)) if y[n] != y[a]]
        for p in range(len(z)):
            if p != a and y[p] == y[a]:
                e = torch.exp(torch.dot(z[a], z[p]) / t)
                losses.append(-torch.log(e / (e + sum(negs))))
    return sum(losses) / len(losses)


def _loop_eq15_torch(features, labels, t):
    zs = [[F.normalize(r, dim=0) for r in f] for f in features]
    y = labels.tolist()
    out = []
    for a in range(len(zs)):
        for b in range(len(zs)):
            if a != b:
                anchors = []
                for i, zi in enumerate(zs[a]):
                    s = torch.stack([torch.dot(zi, zj) / t for zj in zs[b]])
                    pos = [k for k in range(len(y)) if y[k] == y[i]]
                    anchors.append(-sum(s[k] - torch.logsumexp(s, 0) for k in pos) / len(pos))
                out.append(sum(anchors) / len(anchors))
    return sum(out) / len(out)


@pytest.mark.parametrize("cross_modal_only", [False, True])
def test_gradient_matches_loop_autograd(batch, cross_modal_only):
    feats, labels = batch
    mine = [f.clone().requires_grad_() for f in feats]
    ref = [f.clone().requires_grad_() for f in feats]
    supervised_contrastive(mine, labels, 0.5, cross_modal_only).backward()
    (_loop_eq15_torch if cross_modal_only else _loop_ntxent_torch)(ref, labels, 0.5).backward()
    for a, b in zip(mine, ref):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-7)


def test_module_weight_and_projections():
    from mmbalance import SupervisedContrastive
    torch.manual_seed(0)
    feats, labels = {"a": torch.randn(6, 4), "v": torch.randn(6, 4)}, torch.tensor([0, 1, 0, 2, 1, 0])
    con = SupervisedContrastive(weight=0.3, feature_dims={"a": 4, "v": 4})
    assert con.projections is None  # equal sizes: the raw features, as the authors do
    assert con(feats, labels).item() == pytest.approx(0.3 * supervised_contrastive(list(feats.values()), labels).item())
    con = SupervisedContrastive(feature_dims={"a": 4, "v": 7})
    assert con.projections["v"].in_features == 7 and con.projections["v"].out_features == 4


class _Stub(torch.nn.Module):
    """What bind reads from a model: feature_dims and a parameter's device."""

    def __init__(self, feature_dims, device="cpu"):
        super().__init__()
        self.feature_dims = feature_dims
        self.weight = torch.nn.Parameter(torch.zeros(1, device=device))


def test_bind_builds_projections_once_on_the_models_device():
    from mmbalance import SupervisedContrastive
    con = SupervisedContrastive(projection_dim=3)
    assert not con.built and con.projections is None
    assert con.bind(_Stub({"a": 4, "v": 7})) is con and con.built
    assert {m: (p.in_features, p.out_features) for m, p in con.projections.items()} == {"a": (4, 3), "v": (7, 3)}
    first = con.projections
    con.bind(_Stub({"a": 5, "v": 9}))  # already built: kept
    assert con.projections is first and con.projections["a"].in_features == 4
    same = SupervisedContrastive().bind(_Stub({"a": 4, "v": 4}))
    assert same.built and same.projections is None  # equal sizes: no projection
    meta = SupervisedContrastive().bind(_Stub({"a": 4, "v": 6}, device="meta"))  # moved to the model's device
    assert meta.projections["v"].weight.device.type == "meta" and meta.projections["v"].out_features == 4


def test_module_passes_cross_modal_only(batch):
    from mmbalance import SupervisedContrastive
    feats, labels = batch
    named = {"a": feats[0], "v": feats[1]}
    eq15 = supervised_contrastive(feats, labels, 0.5, cross_modal_only=True).item()
    assert eq15 != pytest.approx(supervised_contrastive(feats, labels, 0.5).item(), rel=1e-3)  # the two forms differ here
    assert SupervisedContrastive(weight=2.0, cross_modal_only=True)(named, labels).item() == pytest.approx(2 * eq15, rel=1e-6)



def test_binding_twice_before_the_first_batch_keeps_one_placeholder():
    """bind on a model that has not seen a batch makes one placeholder, however often it is
    called: an optimizer created after the first bind holds the parameters that the first
    batch sizes (and that training then moves)."""
    from torch import nn

    from mmbalance import MultimodalModel, SupervisedContrastive

    model = MultimodalModel({"a": nn.Sequential(nn.Linear(3, 4), nn.ReLU()),
                             "v": nn.Sequential(nn.Linear(5, 6), nn.ReLU())}, num_classes=2)
    con = SupervisedContrastive(weight=1.0).bind(model)
    first = con.projections
    params = list(con.parameters())
    assert con.bind(model).projections is first and list(con.parameters()) == params
    optimizer = torch.optim.SGD(list(model.parameters()) + list(con.parameters()), lr=0.1)
    torch.manual_seed(0)
    x = {"a": torch.randn(8, 3), "v": torch.randn(8, 5)}
    y = torch.tensor([0, 1] * 4)
    out = model(x)  # the first batch sizes the model and the projections
    assert {m: tuple(p.weight.shape) for m, p in con.projections.items()} == {"a": (4, 4), "v": (4, 6)}
    before = con.projections["v"].weight.detach().clone()
    con(out.features, y).backward()
    optimizer.step()
    assert not torch.equal(con.projections["v"].weight, before)  # the optimizer trains them
