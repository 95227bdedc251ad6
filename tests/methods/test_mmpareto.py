"""MMPareto (Wei & Hu, ICML 2024): the min-norm weights against a brute-force search over the
simplex, one step's every parameter gradient against per-term autograd gradients and a
separately written rule (2 and 3 modalities, both branches), the magnitude rule by hand, the
search space, and ``mmbalance train`` on synthetic data and a 3-modality ``.npz``."""

from __future__ import annotations

import json

import optuna
import pytest
import torch

from mmbalance.cli import main
from mmbalance.engine.step import train_step
from mmbalance.methods import MMPareto, get_method
from mmbalance.methods.hparams import searched, uniform
from mmbalance.methods.mmpareto import min_norm_weights, pareto_gradient, pareto_weights
from mmbalance.models import MLPEncoder, MultimodalModel
from mmbalance.types import Batch

from ..conftest import three_modality_npz, train_synthetic_cli

GRID = torch.linspace(0, 1, 10001, dtype=torch.float64)


def _brute_force(g1, g2):
    """argmin over 10001 points c of |c g1 + (1 - c) g2|."""
    points = GRID[:, None] * g1.double()[None] + (1 - GRID[:, None]) * g2.double()[None]
    return float(GRID[points.norm(dim=1).argmin()])


def _pairs(conflicting, n=40):
    gen = torch.Generator().manual_seed(1 if conflicting else 2)
    out = []
    while len(out) < n:
        g1, g2 = torch.randn(7, generator=gen) * torch.rand(1, generator=gen) * 3, torch.randn(7, generator=gen)
        if (torch.dot(g1, g2) < 0) == conflicting:
            out.append((g1, g2))
    return out


@pytest.mark.parametrize("conflicting", [True, False])
def test_min_norm_weights_match_a_brute_force_search_over_the_simplex(conflicting):
    ends = 0
    for g1, g2 in _pairs(conflicting):
        c, rest = min_norm_weights(g1, g2)
        assert c + rest == pytest.approx(1.0)
        best = _brute_force(g1, g2)
        if best in (0.0, 1.0):  # the official solver returns 0.001 / 0.999 at the ends
            ends += 1
            assert c == pytest.approx(0.001 if best == 0.0 else 0.999)
        else:
            assert c == pytest.approx(best, abs=1e-4)
    assert (ends == 0) if conflicting else (0 < ends < 40)  # both cases seen without conflict


def test_agreeing_gradients_get_equal_weights_and_conflicting_ones_the_min_norm_weights():
    for g1, g2 in _pairs(False, 5):
        assert pareto_weights(g1, g2)[:2] == (0.5, 0.5)
    for g1, g2 in _pairs(True, 5):
        w_mm, w_uni, cos = pareto_weights(g1, g2)
        assert cos < 0 and (w_mm, w_uni) == min_norm_weights(g1, g2)


def test_magnitude_rule_by_hand():
    g_mm, g_uni = torch.tensor([3.0, 0.0]), torch.tensor([0.0, 4.0])  # |sum| = 5
    # equal weights: g~ = g_mm + g_uni, |g~| = 5, ratio 1 -> gamma * g~
    torch.testing.assert_close(pareto_gradient(g_mm, g_uni, 0.5, 0.5, 1.5), torch.tensor([4.5, 6.0]))
    # w = (0.1, 0.9): g~ = (0.6, 7.2), |g~| = 7.225 > 5: no raise
    torch.testing.assert_close(pareto_gradient(g_mm, g_uni, 0.1, 0.9, 2.0), torch.tensor([1.2, 14.4]))
    # conflicting: g_mm = (1, 0), g_uni = (-0.5, 0.1): sum (0.5, 0.1); g~ with (0.2, 0.8) = (-0.4, 0.16)*... raised
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([-0.5, 0.1])
    new = 2 * (0.2 * a + 0.8 * b)
    expect = new * (torch.tensor([0.5, 0.1]).norm() / new.norm()) * 1.5
    assert torch.tensor([0.5, 0.1]).norm() > new.norm()
    torch.testing.assert_close(pareto_gradient(a, b, 0.2, 0.8, 1.5), expect)
    # a zero combined gradient stays zero (the official |g_sum| / 0 would give NaN)
    assert torch.equal(pareto_gradient(torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 0.0]), 0.5, 0.5, 1.5),
                       torch.zeros(2))


def _setup(names, seed):
    torch.manual_seed(seed)
    dims = {"a": 5, "v": 7, "t": 3}
    model = MultimodalModel({m: MLPEncoder(dims[m], 4, hidden=6, layers=1) for m in names}, 3)
    gen = torch.Generator().manual_seed(seed + 100)
    batch = Batch({m: torch.randn(8, dims[m], generator=gen) for m in names}, torch.tensor([0, 1, 2, 0, 1, 2, 0, 1]))
    return model, batch


def _expected(model, batch, gamma):
    """Written apart from the method: CE losses, autograd per term, the official rule."""
    import torch.nn.functional as F
    out = model(batch.inputs)
    l_mm = F.cross_entropy(out.logits, batch.labels)
    l_uni = {m: F.cross_entropy(out.unimodal_logits[m], batch.labels) for m in model.modalities}
    total = l_mm + sum(l_uni.values())
    named = dict(model.named_parameters())
    grad = lambda loss: dict(zip(named, torch.autograd.grad(loss, list(named.values()),  # noqa: E731
                                                            retain_graph=True, allow_unused=True)))
    g_total, g_mm = grad(total), grad(l_mm)
    expected, branches, raised = dict(g_total), {}, []
    for m in model.modalities:
        g_uni = grad(l_uni[m])
        names = [n for n in named if n.startswith(f"encoders.{m}.")]
        a = torch.cat([g_mm[n].reshape(-1) for n in names]).double()
        b = torch.cat([g_uni[n].reshape(-1) for n in names]).double()
        if torch.dot(a, b) / (a.norm() * b.norm()) > 0:
            w = 0.5
        else:  # the min-norm point of the segment [b, a], in closed form
            w = float(torch.clamp(torch.dot(b, b - a) / (a - b).pow(2).sum(), 0, 1))
        branches[m] = w == 0.5
        for n in names:
            new = 2 * (w * g_mm[n] + (1 - w) * g_uni[n])
            ratio = float(g_total[n].norm() / new.norm())
            raised.append(ratio > 1)
            expected[n] = gamma * max(1.0, ratio) * new
    return expected, branches, set(raised)


class _NoStep(torch.optim.SGD):
    def step(self, closure=None):
        return None


@pytest.mark.parametrize("names,seed", [(("a", "v"), 2), (("a", "v", "t"), 0)])
def test_one_step_every_parameter_gradient_against_the_rule(names, seed):
    model, batch = _setup(names, seed)
    expected, branches, raised = _expected(model, batch, gamma=2.0)
    method = MMPareto(model, MMPareto.Hyperparameters(gamma=2.0))
    loss = train_step(method, batch, _NoStep(method.parameters(), lr=0.1))
    assert set(loss.terms) == {"task", *(f"unimodal/{m}" for m in names)}
    assert set(branches.values()) == {True, False}, branches  # one encoder agrees, one conflicts
    assert raised == {True, False}  # some tensors' combined gradients raised to |g_sum|, some not
    for name, p in method.model.named_parameters():
        torch.testing.assert_close(p.grad, expected[name], rtol=1e-4, atol=1e-7, msg=name)
    for i, m in enumerate(names):
        assert (loss.logs[f"balance/weight_mm/{m}"] == 0.5) == branches[m]
        assert (loss.logs[f"balance/cos/{m}"] > 0) == branches[m]


def test_defaults_and_search_space():
    assert MMPareto.hyperparameter_defaults()["gamma"] == 1.5
    assert searched(MMPareto.Hyperparameters)["gamma"] == uniform(0.5, 3.0)
    fixed = optuna.trial.FixedTrial({"optim.lr": 1e-3, "method.gamma": 2.0})
    assert MMPareto.search_space(fixed) == {"optim.lr": 1e-3, "method.gamma": 2.0}
    assert get_method("mmpareto") is MMPareto


def test_trains_on_synthetic_from_the_command_line(tmp_path):
    metrics = train_synthetic_cli("mmpareto", tmp_path)
    assert metrics["method"] == "mmpareto"


def test_trains_on_three_modalities_and_resumes(tmp_path):
    args = ["train", "--data", str(three_modality_npz(tmp_path / "three.npz")), "--method", "mmpareto", "--set", "trainer.max_epochs=2",
            "--set", "trainer.progress=false", "--set", "model.hidden=8", "--set", "model.feature_dim=4",
            "--out", str(tmp_path / "run")]
    assert main(args) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["method"] == "mmpareto" and 0.0 <= metrics["test"]["accuracy"] <= 1.0
    assert main(args[:-2] + ["--set", "trainer.max_epochs=3", "--out", str(tmp_path / "run"), "--resume"]) == 0
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["epochs_run"] == 3
