"""PMR: prototypes as class means over the first 10% of batches (brute-force loops), their
EMA, which modality gets the prototype loss and its value, the window and the refusal."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from mmbalance.errors import ConfigError
from mmbalance.methods.pmr import PMR, prototype_weights
from mmbalance.models import MLPEncoder, MultimodalModel
from mmbalance.types import Batch


class Identity(nn.Module):
    """Features = inputs, so distances can be chosen by hand."""

    def __init__(self, dim):
        super().__init__()
        self.out_dim = dim
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x):
        return self.scale * x


def test_weights_go_to_every_modality_but_the_best():
    assert prototype_weights(torch.tensor([3.0, 5.0]), 0.5).tolist() == [0.5, 0.0]
    assert prototype_weights(torch.tensor([5.0, 3.0]), 0.5).tolist() == [0.0, 0.5]
    assert prototype_weights(torch.tensor([4.0, 4.0]), 0.5).tolist() == [0.0, 0.0]
    assert prototype_weights(torch.tensor([1.0, 3.0, 2.0]), 1.0).tolist() == [1.0, 0.0, 1.0]


def _loader():
    """20 batches (so 10% = the first 2); classes 0 and 1 only in those two."""
    gen = torch.Generator().manual_seed(0)
    batches = []
    for step in range(20):
        labels = torch.tensor([0, 1, 1, 0]) if step < 2 else torch.tensor([2, 2, 2, 2])
        batches.append(({"a": torch.randn(4, 5, generator=gen), "v": torch.randn(4, 3, generator=gen)}, labels))
    return batches


def _class_means(model, loader, m):
    sums, counts = {}, {}
    for inputs, labels in loader[:2]:
        feats = model.encoders[m](inputs[m]).tolist()
        for row, c in zip(feats, labels.tolist()):
            sums[c] = [s + f for s, f in zip(sums.get(c, [0.0] * len(row)), row)]
            counts[c] = counts.get(c, 0) + 1
    return {c: [s / counts[c] for s in sums[c]] for c in sums}


def test_prototypes_are_class_means_of_the_first_tenth_then_averaged():
    torch.manual_seed(0)
    model = MultimodalModel({"a": MLPEncoder(5, 4, hidden=6, layers=1), "v": MLPEncoder(3, 2, hidden=6, layers=1)}, 3)
    method, loader = PMR(model, PMR.Hyperparameters(momentum=0.2)), _loader()
    method.on_epoch_start(0, loader)
    first = {m: _class_means(model, loader, m) for m in ("a", "v")}
    for m in ("a", "v"):
        got = method.prototypes(m)
        assert got[:2].tolist() == [pytest.approx(first[m][0], abs=1e-6), pytest.approx(first[m][1], abs=1e-6)]
        assert torch.all(got[2] == 0)  # class 2 is absent from the first 10%: no prototype yet
    assert model.training  # the eval-mode pass restores the mode
    with torch.no_grad():
        for p in model.encoders.parameters():
            p.add_(0.3)
    method.on_epoch_start(1, loader)
    for m in ("a", "v"):
        new = _class_means(model, loader, m)
        for c in (0, 1):
            want = [0.8 * n + 0.2 * o for n, o in zip(new[c], first[m][c])]
            assert method.prototypes(m)[c].tolist() == pytest.approx(want, abs=1e-6)


class _Pairs(torch.utils.data.Dataset):
    def __init__(self, n=40):
        gen = torch.Generator().manual_seed(1)
        self.a, self.v, self.y = torch.randn(n, 5, generator=gen), torch.randn(n, 3, generator=gen), torch.arange(n) % 3

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return {"a": self.a[i], "v": self.v[i]}, self.y[i]


def test_a_real_loader_keeps_its_shuffle_order_and_seeded_batches_repeat():
    torch.manual_seed(0)
    model = MultimodalModel({"a": MLPEncoder(5, 4, hidden=6, layers=1), "v": MLPEncoder(3, 2, hidden=6, layers=1)}, 3)
    gen = torch.Generator().manual_seed(5)
    loader = torch.utils.data.DataLoader(_Pairs(), batch_size=2, shuffle=True, generator=gen)  # 20 batches
    state = gen.get_state()
    first, second = PMR(model), PMR(model)
    first.on_epoch_start(0, loader)
    assert torch.equal(gen.get_state(), state)  # the training order is untouched
    second.on_epoch_start(0, loader)
    assert torch.equal(first.prototypes("a"), second.prototypes("a"))
    # 10% of 20 batches of 2 = 4 samples, so at most 2 of the 3 classes can be missing.
    assert int((first.prototypes("a").abs().sum(1) > 0).sum()) >= 1


def _hand_case():
    model = MultimodalModel({"a": Identity(2), "v": Identity(2)}, 2)
    method = PMR(model, PMR.Hyperparameters(alpha=0.5))
    method.prototypes("a").copy_(torch.tensor([[0.0, 0.0], [4.0, 0.0]]))
    method.prototypes("v").copy_(torch.tensor([[0.0, 0.0], [0.0, 1.0]]))
    # a sits on its true prototype (strong); v lies between both (weak).
    x = {"a": torch.tensor([[0.0, 0.0], [4.0, 0.0]]), "v": torch.tensor([[0.0, 0.4], [0.0, 0.5]])}
    return method, x, torch.tensor([0, 1])


def test_the_weaker_modality_gets_the_prototype_loss():
    method, x, y = _hand_case()
    out = method(x)
    terms = method.training_loss(Batch(x, y), out)
    assert set(terms.terms) == {"task", "prototype/v"}
    # Sample 0: distances to the v prototypes 0.4 and 0.6; sample 1: 0.5 and 0.5.
    ce = (-math.log(math.exp(-0.4) / (math.exp(-0.4) + math.exp(-0.6))) - math.log(0.5)) / 2
    assert terms.terms["prototype/v"].item() == pytest.approx(0.5 * ce, rel=1e-5)
    assert method.after_backward() == {"prototype_weight/a": 0.0, "prototype_weight/v": 0.5}


def test_no_prototype_loss_outside_the_window():
    method, x, y = _hand_case()
    method.hparams.end_epoch = 3
    method.on_epoch_start(4)
    assert set(method.training_loss(Batch(x, y), method(x)).terms) == {"task"}


def test_refuses_regression():
    with pytest.raises(ConfigError, match="classification"):
        PMR(MultimodalModel({"a": Identity(2), "v": Identity(2)}, 1))
