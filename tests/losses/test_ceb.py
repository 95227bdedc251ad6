"""CEB term: the head reads detached fused logits; MSE to the live concatenated features."""

from __future__ import annotations

import pytest
import torch

from mmbalance.losses import CEBHead, ceb


def test_value_is_hand_mse():
    head = CEBHead(num_classes=2, feature_size=3, hidden=2)
    with torch.no_grad():
        head.net[0].weight.copy_(torch.tensor([[1.0, 0.0], [0.0, -1.0]]))
        head.net[2].weight.copy_(torch.tensor([[1.0, 1.0], [2.0, 0.0], [0.0, 1.0]]))
    logits = torch.tensor([[1.0, -2.0]])  # hidden = relu([1, 2]) = [1, 2] -> recon [3, 2, 2]
    feats = [torch.tensor([[1.0, 2.0]]), torch.tensor([[0.0]])]
    expected = ((3 - 1) ** 2 + (2 - 2) ** 2 + (2 - 0) ** 2) / 3
    assert ceb(head(logits), feats).item() == pytest.approx(expected)
    assert [m.bias for m in head.net if isinstance(m, torch.nn.Linear)] == [None, None]


def test_gradient_reaches_features_and_head_not_logits():
    from mmbalance import MCRLoss, MLPEncoder, MultimodalModel
    torch.manual_seed(0)
    model = MultimodalModel({"a": MLPEncoder(5, 4, 8, 1), "b": MLPEncoder(6, 4, 8, 1)}, 3)
    loss = MCRLoss(mipd_weight=0, contrastive_weight=0, ceb_weight=1.0).bind(model)
    out = model({"a": torch.randn(8, 5), "b": torch.randn(8, 6)})
    terms = loss(model, out, torch.randint(0, 3, (8,)))
    assert terms.total.item() == pytest.approx(terms.terms["ceb"].item())
    terms.total.backward()
    assert all(p.grad is None for p in model.fusion.parameters())  # logits were detached
    assert model.encoders["a"].net[0].weight.grad.abs().sum() > 0
    assert loss.ceb_head.net[0].weight.grad.abs().sum() > 0
    assert loss.ceb_head.net[2].weight.shape == (8, 4)  # Linear(d -> sum D_m = 8), d = mean D_m = 4


def test_learnability():
    torch.manual_seed(0)
    head = CEBHead(3, 6, 4)
    logits, feats = torch.randn(16, 3), [torch.randn(16, 3), torch.randn(16, 3)]
    opt = torch.optim.Adam(head.parameters(), lr=0.05)
    start = ceb(head(logits), feats).item()
    for _ in range(20):
        opt.zero_grad()
        loss = ceb(head(logits), feats)
        loss.backward()
        opt.step()
    assert loss.item() < start


def test_gradient_is_hand_derivative():
    """d/dz mean((r - z)^2) = -2 (r - z) / N and d/dr = 2 (r - z) / N, N = B * sum D_m."""
    torch.manual_seed(0)
    recon = torch.randn(4, 5, requires_grad=True)
    feats = [torch.randn(4, 2, requires_grad=True), torch.randn(4, 3, requires_grad=True)]
    ceb(recon, feats).backward()
    diff = (recon - torch.cat(feats, 1)).detach()
    torch.testing.assert_close(recon.grad, 2 * diff / 20)
    torch.testing.assert_close(torch.cat([f.grad for f in feats], 1), -2 * diff / 20)


def test_module_is_weighted_term_with_detached_logits():
    from mmbalance import CEB, MLPEncoder, MultimodalModel
    torch.manual_seed(0)
    model = MultimodalModel({"a": MLPEncoder(5, 4, 8, 1), "b": MLPEncoder(6, 2, 8, 1)}, 3)
    term = CEB(weight=0.5).bind(model)
    out = model({"a": torch.randn(8, 5), "b": torch.randn(8, 6)})
    expected = 0.5 * ceb(term.head(out.logits.detach()), [out.features["a"], out.features["b"]])
    assert term(out).item() == pytest.approx(expected.item())
    assert term.head.net[2].weight.shape == (6, 3)  # sum D_m = 6, hidden = mean D_m = 3


class _Stub(torch.nn.Module):
    """What CEB.bind reads from a model: feature_dims, num_classes and a parameter's device."""

    def __init__(self, feature_dims, num_classes, device="cpu"):
        super().__init__()
        self.feature_dims, self.num_classes = feature_dims, num_classes
        self.weight = torch.nn.Parameter(torch.zeros(1, device=device))


def _layers(term):
    first, _, last = term.head.net
    return (first.in_features, first.out_features), (last.in_features, last.out_features)


def test_bind_and_hidden_size():
    from mmbalance import CEB
    term = CEB()
    assert term.bind(_Stub({"a": 4, "v": 7}, 3)) is term
    assert _layers(term) == ((3, 6), (6, 11))  # hidden = round((4 + 7) / 2) = round(5.5) = 6
    head = term.head
    term.bind(_Stub({"a": 9, "v": 9}, 5))  # built already: kept
    assert term.head is head
    assert _layers(CEB().bind(_Stub({"a": 1, "v": 1}, 2))) == ((2, 1), (1, 2))  # hidden = max(1, 1)
    assert _layers(CEB(hidden=16).bind(_Stub({"a": 4, "v": 7}, 3))) == ((3, 16), (16, 11))
    meta = CEB().bind(_Stub({"a": 4, "v": 4}, 3, device="meta"))  # moved to the model's device
    assert meta.head.net[0].weight.device.type == "meta"
