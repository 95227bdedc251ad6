"""CML (Ma et al., ICML 2023): the per-sample confidence hinge against a brute-force loop, the
nested removal chains, one step's loss and every parameter's gradient against a separately
written formula with three modalities (inputs or features dropped, the official and the
BalanceBenchmark forms), the search space, and training through ``mmbalance train``."""

from __future__ import annotations

import json
import math

import optuna
import pytest
import torch

from mmbalance.cli import main
from mmbalance.errors import ConfigError
from mmbalance.methods import CML, get_method
from mmbalance.methods.cml import confidence_hinge
from mmbalance.methods.hparams import log_uniform, searched
from mmbalance.models import MLPEncoder, MultimodalModel
from mmbalance.types import Batch

from ..conftest import three_modality_npz as _three_modality_npz, train_synthetic_cli

NAMES = ("a", "v", "t")
IN = {"a": 3, "v": 4, "t": 2}
D = {"a": 3, "v": 2, "t": 4}
B = 8


def _model(seed=0, classes=3):
    torch.manual_seed(seed)
    encoders = {m: MLPEncoder(IN[m], D[m], hidden=5, layers=1) for m in NAMES}
    return MultimodalModel(encoders, classes, fusion="concat_linear")


def _batch(seed=5):
    gen = torch.Generator().manual_seed(seed)
    x = {m: 2 * torch.randn(B, IN[m], generator=gen) for m in NAMES}
    return Batch(x, torch.randint(0, 3, (B,), generator=gen))


def _softmax(row):
    e = [math.exp(v) for v in row]
    return [v / sum(e) for v in e]


@pytest.mark.parametrize("epsilon,trick2", [(0.0, True), (0.0, False), (0.05, True), (-0.02, True)])
def test_hinge_per_sample_against_a_brute_force_loop(epsilon, trick2):
    gen = torch.Generator().manual_seed(0)
    parent, child = torch.randn(40, 4, generator=gen) * 2, torch.randn(40, 4, generator=gen) * 2
    labels = torch.randint(0, 4, (40,), generator=gen)
    got = confidence_hinge(parent, child, labels, epsilon, trick2)
    for i in range(40):
        p, c = _softmax(parent[i].tolist()), _softmax(child[i].tolist())
        cp, cc = max(p), max(c)
        right = p.index(cp) == int(labels[i])
        both_wrong = not right and c.index(cc) != int(labels[i])
        want = max(0.0, (cc - cp) * right - epsilon)
        if trick2:
            want += max(0.0, (cc - cp) * both_wrong - epsilon)
        assert float(got[i]) == pytest.approx(want, abs=1e-6), i
    assert (got > 0).any()


def test_trick2_sends_no_gradient_to_the_parent():
    parent = torch.tensor([[0.0, 1.0, 0.2]], requires_grad=True)  # predicts 1, label 0: wrong
    child = torch.tensor([[0.0, 3.0, 0.1]], requires_grad=True)  # also wrong, more confident
    confidence_hinge(parent, child, torch.tensor([0])).sum().backward()
    assert torch.equal(parent.grad, torch.zeros_like(parent)) and child.grad.abs().sum() > 0


def test_removal_chains_are_nested_seeded_and_per_sample_or_per_epoch():
    method = CML(_model())
    order = method.removal_order(500)
    assert all(sorted(row) == [0, 1, 2] for row in order.tolist())
    assert len({tuple(r) for r in order.tolist()}) == 6  # every order occurs: one per sample
    assert torch.equal(order, method.removal_order(500))  # same (seed, step)
    masks = CML.chain_masks(order)
    assert [int(m.sum(1).unique()) for m in masks] == [2, 1]
    assert bool((masks[1] <= masks[0]).all())  # nested
    assert torch.equal(~masks[0], torch.nn.functional.one_hot(order[:, 0], 3).bool())
    method.steps += 1
    assert not torch.equal(order, method.removal_order(500))
    epochwise = CML(_model(), CML.Hyperparameters(chain="epoch"))
    first = epochwise.removal_order(4)
    assert len({tuple(r) for r in first.tolist()}) == 1  # one order for every sample
    epochwise.steps += 5
    assert torch.equal(first, epochwise.removal_order(4))  # and for the whole epoch
    orders = set()
    for epoch in range(20):
        epochwise.on_epoch_start(epoch)
        orders.add(tuple(epochwise.removal_order(1)[0].tolist()))
    assert len(orders) > 1
    twin = CML(_model())
    twin.seed = 99
    twin.load_state_dict(method.state_dict())
    assert torch.equal(twin.removal_order(7), method.removal_order(7))  # seed and step come back


def _reference(method, batch, order, hp):
    """The loss of one step, written per sample and per chain level on a copy of the model."""
    ref = _model()
    ref.load_state_dict(method.model.state_dict())
    ref.train()
    W = {m: ref.fusion.weights[m].weight for m in NAMES}
    y = batch.labels
    levels = []
    for k in range(3):  # k modalities removed
        rows = []
        for i in range(B):
            removed = {NAMES[j] for j in order[i, :k].tolist()}
            z = ref.fusion.bias
            for m in NAMES:
                x = batch.inputs[m][i:i + 1]
                if m in removed and hp.drop == "feature":
                    continue
                f = ref.encoders[m](torch.zeros_like(x) if m in removed else x)[0]
                z = z + W[m] @ f
            rows.append(z)
        levels.append(torch.stack(rows))
    ce = sum(-levels[k].log_softmax(-1)[torch.arange(B), y].mean() for k in range(3)) / 3
    rank = 0.0
    for k in range(2):
        p, c = levels[k].softmax(-1), levels[k + 1].softmax(-1)
        if hp.hinge == "batch":
            rank = rank + torch.relu(sum(c[i].max() - p[i].max() for i in range(B)))
            continue
        for i in range(B):
            right = float(p[i].argmax() == y[i])
            rank = rank + torch.relu((c[i].max() - p[i].max()) * right - hp.epsilon)
            if hp.trick2:
                wrong = float(p[i].argmax() != y[i] and c[i].argmax() != y[i])
                rank = rank + torch.relu((c[i].max() - p[i].max().detach()) * wrong - hp.epsilon)
    return ref, ce, rank


@pytest.mark.parametrize("kwargs", [{}, {"drop": "feature"}, {"drop": "feature", "chain": "epoch", "hinge": "batch"},
                                    {"epsilon": 0.01, "trick2": False, "rank_weight": 0.7}])
def test_one_step_loss_and_every_gradient_against_the_formula(kwargs):
    hp = CML.Hyperparameters(**{"rank_weight": 2.0, **kwargs})
    method = CML(_model(), hp)
    method.train()
    batch = _batch()
    for epoch in range(10):  # an epoch whose order makes the hinge active in this batch
        method.on_epoch_start(epoch)
        order = method.removal_order(B)
        ref, ce, rank = _reference(method, batch, order, hp)
        if float(rank.detach()) > 0:
            break
    assert float(rank.detach()) > 0
    want = ce + hp.rank_weight * rank
    want.backward()

    loss = method.training_loss(batch, method(batch.inputs))
    assert torch.allclose(loss.terms["task"], ce.detach(), atol=1e-6)
    assert torch.allclose(loss.terms["rank"], hp.rank_weight * rank.detach(), atol=1e-6)
    assert torch.allclose(loss.total, want.detach(), atol=1e-6)
    loss.total.backward()
    for m in NAMES:
        for got, r in zip(method.model.encoders[m].parameters(), ref.encoders[m].parameters()):
            assert torch.allclose(got.grad, r.grad, atol=1e-6), m
        assert all(p.grad is None for p in method.model.head_parameters(m))
    for got, r in zip(method.model.fusion.parameters(), ref.fusion.parameters()):
        assert torch.allclose(got.grad, r.grad, atol=1e-6)
    assert int(method.steps) == 1


def test_defaults_search_space_and_refusals():
    assert CML.hyperparameter_defaults() == {"rank_weight": 0.1, "epsilon": 0.0, "trick2": True, "drop": "input",
                                             "chain": "sample", "hinge": "sample", "init": "scratch",
                                             "encoder_lr_scale": 0.1, "stage_lr": None}
    assert searched(CML.Hyperparameters) == {"rank_weight": log_uniform(0.001, 1.0)}
    fixed = optuna.trial.FixedTrial({"optim.lr": 1e-3, "method.rank_weight": 0.05})
    assert CML.search_space(fixed) == {"optim.lr": 1e-3, "method.rank_weight": 0.05}
    assert get_method("cml") is CML and CML.stages(list(NAMES)) == []
    with pytest.raises(ConfigError, match="method 'cml': method.chain 'all' is unknown; valid: sample, epoch"):
        CML(_model(), CML.Hyperparameters(chain="all"))
    with pytest.raises(ConfigError, match="method 'cml' needs classification"):
        CML(_model(classes=1))
    CML(MultimodalModel({m: MLPEncoder(IN[m], D[m]) for m in NAMES}, 3, fusion="gated"))  # any fusion


def test_trains_on_three_modalities_and_resumes(tmp_path):
    data = _three_modality_npz(tmp_path / "three.npz")
    args = ["train", "--data", str(data), "--method", "cml", "--set", "trainer.max_epochs=2",
            "--set", "trainer.progress=false", "--set", "model.hidden=8", "--set", "model.feature_dim=4",
            "--out", str(tmp_path / "run")]
    assert main(args) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["method"] == "cml" and 0.0 <= metrics["test"]["accuracy"] <= 1.0
    assert main(args[:-2] + ["--set", "trainer.max_epochs=3", "--out", str(tmp_path / "run"), "--resume"]) == 0
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["epochs_run"] == 3


def test_trains_on_synthetic_from_the_command_line(tmp_path):
    metrics = train_synthetic_cli("cml", tmp_path, "method.drop=feature")
    assert metrics["method"] == "cml"
