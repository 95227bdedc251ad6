"""modality_shapley against a brute force over every order of the players (the permutation
definition of the Shapley value, not the subset weights the code uses), with a coalition's
value scored by separate code: features zeroed by hand before ``fuse``, or inputs permuted
by hand before ``forward``."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from mmbalance.errors import ConfigError
from mmbalance.models import MultimodalModel
from mmbalance.models.encoders import MLPEncoder
from mmbalance.shapley import modality_shapley

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one thread is fastest


class Stub:
    """The two things modality_shapley uses of a method: ``model`` and ``predict``."""

    def __init__(self, model):
        self.model = model

    def __call__(self, inputs):  # the base Method.forward
        return self.model(inputs)

    def predict(self, out):
        return out.logits


class OwnForward(Stub):
    """A method with its own forward, like ``unimodal``: head of modality a on a's feature alone."""

    def __call__(self, inputs):
        return self.forward(inputs)

    def forward(self, inputs):
        from mmbalance.types import ModelOutput
        z = self.model.encode_modality("a", inputs["a"])
        return ModelOutput(logits=self.model.heads["a"](z), unimodal_logits={}, features={"a": z})


def _setup(names, n=40, classes=3, fusion="concat_mlp"):
    torch.manual_seed(0)
    model = MultimodalModel({m: MLPEncoder(4, 6, hidden=8, layers=1) for m in names}, classes, fusion=fusion).eval()
    inputs = {m: torch.randn(n, 4) for m in names}
    labels = model(inputs).logits.argmax(-1)  # the full model is right on every row: v(all) = 1
    labels[: n // 4] = (labels[: n // 4] + 1) % classes  # ... except on a quarter of them
    return Stub(model), inputs, labels


def _value_zero(model, inputs, labels, coalition):
    with torch.no_grad():
        feats = model.encode(inputs)
        feats = {m: z if m in coalition else torch.zeros_like(z) for m, z in feats.items()}
        return float((model.fuse(feats).argmax(-1) == labels).float().mean())


def _value_permute(model, inputs, labels, coalition, seed):
    perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        moved = {m: x if m in coalition else x[perm] for m, x in inputs.items()}
        return float((model(moved).logits.argmax(-1) == labels).float().mean())


def _brute_force(players, value):
    phi = {p: 0.0 for p in players}
    for order in itertools.permutations(players):
        before = set()
        for p in order:
            phi[p] += value(frozenset(before | {p})) - value(frozenset(before))
            before.add(p)
    return {p: v / math.factorial(len(players)) for p, v in phi.items()}


@pytest.mark.parametrize("names", [("a", "b"), ("a", "b", "c")])
@pytest.mark.parametrize("how", ["zero", "permute"])
def test_modality_shapley_matches_brute_force_over_orders(names, how):
    method, inputs, labels = _setup(names)
    got = modality_shapley(method, inputs, labels, how=how, seed=3, batch_size=7)  # batches split the rows
    value = ((lambda s: _value_zero(method.model, inputs, labels, s)) if how == "zero"
             else (lambda s: _value_permute(method.model, inputs, labels, s, 3)))
    want = _brute_force(list(names), value)
    assert got == pytest.approx(want, abs=1e-6)
    # efficiency: the values add up to v(all) - v(empty); v(all) = 0.75 by construction
    assert sum(got.values()) == pytest.approx(0.75 - value(frozenset()), abs=1e-6)


def test_two_modalities_by_hand():
    """With two players phi_a = (v(a) - v(0) + v(ab) - v(b)) / 2."""
    method, inputs, labels = _setup(("a", "b"))
    v = {s: _value_zero(method.model, inputs, labels, set(s)) for s in ("", "a", "b", "ab")}
    got = modality_shapley(method, inputs, labels, how="zero")
    assert got["a"] == pytest.approx((v["a"] - v[""] + v["ab"] - v["b"]) / 2, abs=1e-6)
    assert got["b"] == pytest.approx((v["b"] - v[""] + v["ab"] - v["a"]) / 2, abs=1e-6)


def test_unknown_removal_is_one_clear_error():
    method, inputs, labels = _setup(("a", "b"))
    with pytest.raises(ConfigError, match="unknown modality removal 'shuffle'"):
        modality_shapley(method, inputs, labels, how="shuffle")


def test_a_method_with_its_own_forward_is_scored_by_it():
    """unimodal-like: b is never used, so phi_b = 0 and phi_a = v(a) - v(empty), with v
    scored by hand on a's head (a's feature zeroed for the empty coalition)."""
    stub, inputs, labels = _setup(("a", "b"))
    method = OwnForward(stub.model)
    with torch.no_grad():
        z = method.model.encode_modality("a", inputs["a"])
        head = method.model.heads["a"]
        v_a = float((head(z).argmax(-1) == labels).float().mean())
        v_0 = float((head(torch.zeros_like(z)).argmax(-1) == labels).float().mean())
    zero = modality_shapley(method, inputs, labels, how="zero", batch_size=7)
    assert zero["b"] == pytest.approx(0.0, abs=1e-9) and zero["a"] == pytest.approx(v_a - v_0, abs=1e-6)
    perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        v_perm = float((head(method.model.encode_modality("a", inputs["a"][perm])).argmax(-1) == labels).float().mean())
    permuted = modality_shapley(method, inputs, labels, how="permute", seed=5)
    assert permuted["b"] == pytest.approx(0.0, abs=1e-9) and permuted["a"] == pytest.approx(v_a - v_perm, abs=1e-6)
