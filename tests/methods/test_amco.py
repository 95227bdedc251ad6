"""amco: the mask schedule by hand, the masked logits and one step's loss and gradients against a
separate computation, the dependence flags against a loop over rows, refusals and the CLI."""

from __future__ import annotations

import math

import optuna
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mmbalance.cli import main
from mmbalance.errors import ConfigError
from mmbalance.methods import get_method
from mmbalance.methods.amco import AMCo, class_mask, mask_ratio
from mmbalance.models import MultimodalModel
from mmbalance.types import Batch

from ..conftest import three_modality_npz

MODS = ("a", "b", "c")
C = 4


def _model(fusion="concat_linear", classes=C, seed=0):
    torch.manual_seed(seed)
    enc = {m: nn.Sequential(nn.Linear(3, 5), nn.Tanh()) for m in MODS}
    return MultimodalModel(enc, classes, fusion=fusion, feature_dims={m: 5 for m in MODS})


def _batch(b=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    return {m: torch.randn(b, 3, generator=g) for m in MODS}, torch.randint(C, (b,), generator=g)


def test_mask_ratio_by_hand():
    assert [mask_ratio(0, b, 0.3) for b in range(5)] == [0.0] * 5  # epoch 0: l_t stays 0
    assert [mask_ratio(1, b, 0.3) for b in (0, 1, 2, 3, 9)] == pytest.approx([0, 0.5, math.sqrt(3) / 2, 1, 1])
    assert mask_ratio(2, 1, 0.3) == pytest.approx(math.sin(math.pi / 3))  # l = 0.2
    assert mask_ratio(1, 1, 3.0) == pytest.approx(math.sin(math.pi / 2 * 0.1 / 3.0))
    for ratio, zeros in ((0.0, 0), (0.5, 5), (0.99, 9), (1.0, 10)):
        mask = class_mask(10, ratio, torch.Generator().manual_seed(0))
        assert int((mask == 0).sum()) == zeros and set(mask.tolist()) <= {0.0, 1.0}


def _separate(method, x, mask, dependent):
    """A separate computation of AMCo's logits from the raw parameters."""
    model = method.model
    z = {}
    for j, m in enumerate(MODS):
        lin = model.encoders[m][0]
        h = torch.tanh(x[m] @ lin.weight.T + lin.bias)
        zm = h @ model.fusion.weights[m].weight.T + model.fusion.bias / 3
        z[m] = zm * mask if dependent[j] else zm
    a = method.linear_star
    return (z["a"] + z["b"] + z["c"]) @ a.weight.T + a.bias, z


def test_masked_logits_loss_and_gradients_of_one_step():
    method = AMCo(_model(), AMCo.Hyperparameters()).train()
    method.on_epoch_start(1)
    method.batch_in_epoch.fill_(1)  # p = sin(pi/6) = 0.5: 2 of 4 classes masked
    method.dependent.copy_(torch.tensor([False, True, False]))
    x, y = _batch()
    out = method(x)
    zb = out.unimodal_logits["b"]
    with torch.no_grad():
        _, plain = _separate(method, x, torch.ones(C), [False] * 3)
    zero_cols = (zb == 0).all(0)
    assert int(zero_cols.sum()) == 2 and float(method.ratio) == pytest.approx(0.5)
    mask = (~zero_cols).float()
    assert torch.allclose(zb, plain["b"] * mask, atol=1e-6)
    assert torch.allclose(out.unimodal_logits["a"], plain["a"], atol=1e-6)
    loss = method.training_loss(Batch(x, y), out)
    loss.total.backward()
    logits, z = _separate(method, x, mask, [False, True, False])
    want = F.cross_entropy(logits, y) + sum(F.cross_entropy(z[m], y) for m in MODS)
    assert torch.allclose(out.logits, logits, atol=1e-6)
    assert torch.allclose(loss.total, want, atol=1e-6)
    params = [p for p in method.parameters() if p.grad is not None]
    assert any(p is method.linear_star.weight for p in params)
    for p, g in zip(params, torch.autograd.grad(want, params)):
        assert torch.allclose(p.grad, g, atol=1e-6)


def test_dependence_for_the_next_batch_from_the_block_masses():
    method = AMCo(_model(seed=3), AMCo.Hyperparameters(sigma=0.4)).train()
    x, y = _batch(b=16, seed=5)
    with torch.no_grad():
        method.model.fusion.weights["c"].weight.mul_(8.0)  # c's logits spread widest: most mass
        out = method(x)
        method.training_loss(Batch(x, y), out)
    cat = torch.cat([out.unimodal_logits[m] for m in MODS], 1)
    mass = [0.0, 0.0, 0.0]
    for row in cat:
        p = torch.exp(row - row.max())
        p = p / p.sum()
        for j in range(3):
            mass[j] += float(p[j * C:(j + 1) * C].sum()) / 16
    assert sum(mass) == pytest.approx(1.0)
    assert method.dependent.tolist() == [v > 0.4 for v in mass] and any(method.dependent.tolist())
    assert int(method.batch_in_epoch) == 1 and int(method.steps) == 1
    method.on_epoch_start(2)
    assert not method.dependent.any() and int(method.batch_in_epoch) == 0


def test_evaluation_is_unmasked():
    method = AMCo(_model(), AMCo.Hyperparameters())
    method.on_epoch_start(3)
    method.batch_in_epoch.fill_(10)
    method.dependent.fill_(True)
    x, _ = _batch()
    method.eval()
    with torch.no_grad():
        out = method(x)
        logits, _ = _separate(method, x, torch.ones(C), [False] * 3)
    assert torch.allclose(out.logits, logits, atol=1e-6)


def test_refusals_defaults_and_search_space():
    with pytest.raises(ConfigError, match="'amco'.*decomposable"):
        AMCo(_model(fusion="concat_mlp"))
    with pytest.raises(ConfigError, match="'amco'.*classification"):
        AMCo(_model(classes=1))
    with pytest.raises(ConfigError, match="amco"):
        AMCo(_model(), AMCo.Hyperparameters(eps=0.0))
    d = AMCo.hyperparameter_defaults()
    assert (d["sigma"], d["eps"], d["rate"]) == (0.5, 0.3, 0.1)
    trial = optuna.trial.FixedTrial({"optim.lr": 1e-3, "method.sigma": 0.6, "method.eps": 1.0})
    assert AMCo.search_space(trial) == {"optim.lr": 1e-3, "method.sigma": 0.6, "method.eps": 1.0}
    assert get_method("amco") is AMCo


def test_cli_trains_on_a_three_modality_npz(tmp_path):
    torch.set_num_threads(1)
    path = three_modality_npz(tmp_path / "three.npz")
    out = tmp_path / "run"
    assert main(["train", "--data", str(path), "--method", "amco", "--set", "data.batch_size=16",
                 "trainer.max_epochs=2", "trainer.progress=false", "trainer.patience=0", "--out", str(out)]) == 0
    state = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert state["method.linear_star.weight"].shape == (3, 3) and state["method.dependent"].shape == (3,)
