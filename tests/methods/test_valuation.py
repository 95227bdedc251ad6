"""valuation: per-sample Shapley contributions against a brute force over orderings, copy counts
against the official thresholds and draws by hand, one step's loss and gradients with dropped
copies against a separate computation, the epoch pass, the test-split guard and the CLI."""

from __future__ import annotations

import itertools
import math

import optuna
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mmbalance.cli import main
from mmbalance.errors import ConfigError
from mmbalance.methods import get_method
from mmbalance.methods.base import KEEP
from mmbalance.methods.valuation import (Valuation, coalition_correct, contributions, modality_copies,
                                         sample_copies)
from mmbalance.models import MultimodalModel
from mmbalance.training.passes import EpochPasses
from mmbalance.types import Batch

from ..conftest import three_modality_npz, tiny_config
from .test_test_split_guard import check_test_split_untouched, guards, run_module  # noqa: F401 (a fixture)

MODS = ("a", "b", "c")


def _model(m=3, classes=3, seed=0):
    torch.manual_seed(seed)
    enc = {n: nn.Sequential(nn.Linear(4, 5), nn.Tanh()) for n in MODS[:m]}
    return MultimodalModel(enc, classes, feature_dims={n: 5 for n in MODS[:m]})


def _hp(**kw):
    return Valuation.Hyperparameters(**kw)


def _inputs(m=3, b=24, seed=1):
    g = torch.Generator().manual_seed(seed)
    return {n: torch.randn(b, 4, generator=g) for n in MODS[:m]}, torch.randint(3, (b,), generator=g)


@pytest.mark.parametrize("drop, value", [("feature", "size"), ("input", "correct")])
def test_contributions_equal_a_brute_force_over_orderings(drop, value):
    model = _model().eval()
    x, y = _inputs()
    with torch.no_grad():
        phi = contributions(coalition_correct(model, x, y, drop), list(MODS), value)

        def v(S):  # the fused prediction with the modalities outside S dropped, on forward_dropped
            if not S:
                return torch.zeros(len(y), dtype=torch.float64)
            right = model.forward_dropped(x, list(S), how=drop).logits.argmax(-1) == y
            return right.double() * (len(S) if value == "size" else 1)

        want = torch.zeros(len(y), 3, dtype=torch.float64)
        for order in itertools.permutations(MODS):
            for j, m in enumerate(order):
                want[:, MODS.index(m)] += v(set(order[:j + 1])) - v(set(order[:j]))
        want /= math.factorial(3)
    assert torch.allclose(phi, want)
    assert torch.allclose(phi.sum(1), v(set(MODS)))  # efficiency


def test_two_modalities_give_the_official_formula():
    model = _model(m=2).eval()
    x, y = _inputs(m=2, b=64)
    with torch.no_grad():
        correct = coalition_correct(model, x, y)
        phi = contributions(correct, ["a", "b"])
    va, vb, vab = (correct[frozenset(s)].double() for s in ("a", "b", "ab"))
    assert torch.equal(phi[:, 0], (va + 2 * vab - vb) / 2)  # sample_level.py: value_all = 2
    assert torch.equal(phi[:, 1], (vb + 2 * vab - va) / 2)


def test_sample_copies_follow_the_official_thresholds():
    phi = torch.tensor([-0.5, 0.0, 0.5, 1.0, 1.5, 0.4, -0.1, 0.39, 0.99, -0.11], dtype=torch.float64)
    assert sample_copies(phi).tolist() == [3, 2, 1, 0, 0, 0, 0, 2, 1, 3]


@pytest.mark.parametrize("func", ["linear", "tanh", "square"])
def test_modality_copies_by_hand(func):
    g = torch.Generator().manual_seed(0)
    phi = torch.rand(50, 2, generator=g, dtype=torch.float64) * torch.tensor([1.5, 0.5], dtype=torch.float64)
    got = modality_copies(phi, 0.2, 0.7, func, torch.Generator().manual_seed(7))
    gen = torch.Generator().manual_seed(7)
    picked = torch.randint(50, (10,), generator=gen)
    mean_a = sum(float(phi[i, 0]) for i in picked) / 10
    mean_b = sum(float(phi[i, 1]) for i in picked) / 10
    gap_a, gap_b = 1 - mean_a, 1 - mean_b
    d = abs(gap_a - gap_b) / 3 * 2
    d = {"linear": d * 0.7, "tanh": math.tanh(d * 0.7), "square": d ** 1.5 * 0.7}[func]
    rows = torch.randint(50, (int(d * 50),), generator=gen)
    want = torch.zeros(50, 2, dtype=torch.long)
    for r in rows.tolist():
        want[r, 0 if gap_a > gap_b else 1] += 1
    assert int(d * 50) > 0 and torch.equal(got, want)


class _Rows(torch.utils.data.Dataset):
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return {m: v[i] for m, v in self.x.items()}, self.y[i]


def test_the_epoch_pass_sets_the_plan_from_every_train_row_after_warmup():
    method = Valuation(_model(), _hp(warmup=2))
    x, y = _inputs(b=23)
    passes = EpochPasses(method, {"train": _Rows(x, y)}, batch_size=5)
    assert method.on_epoch_pass(0, passes) == {} and method.sample_plan() is None
    logs = method.on_epoch_pass(1, passes)
    with torch.no_grad():
        phi = contributions(coalition_correct(method.model.eval(), x, y), list(MODS))
    plan = method.sample_plan()
    assert torch.equal(plan.counts, torch.cat([torch.ones(23, 1, dtype=torch.long), sample_copies(phi)], 1))
    assert plan.keep.tolist() == [[True] * 3, [True, False, False], [False, True, False], [False, False, True]]
    assert logs["train_rows"] == float(plan.counts.sum())
    assert logs["contribution/b"] == pytest.approx(float(phi[:, 1].mean()))
    state = method.state_dict()
    fresh = Valuation(_model(), _hp(warmup=2))
    fresh.load_state_dict(state)
    assert torch.equal(fresh.sample_plan().counts, plan.counts)


@pytest.mark.parametrize("drop", ["feature", "input"])
def test_one_step_with_dropped_copies_against_a_separate_computation(drop):
    method = Valuation(_model(), _hp(drop=drop)).train()
    x, y = _inputs(b=6)
    keep = torch.tensor([[1, 1, 1], [1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 1], [0, 0, 1]], dtype=torch.bool)
    loss = method.training_loss(Batch(x, y), method({**x, KEEP: keep}))
    loss.total.backward()
    model = method.model
    feats = []
    for j, m in enumerate(MODS):
        lin = model.encoders[m][0]
        xin = x[m] * keep[:, j:j + 1] if drop == "input" else x[m]
        h = torch.tanh(xin @ lin.weight.T + lin.bias)
        feats.append(h if drop == "input" else h * keep[:, j:j + 1])
    fusion = model.fusion
    logits = sum(f @ fusion.weights[m].weight.T for f, m in zip(feats, MODS)) + fusion.bias
    want = F.cross_entropy(logits, y)
    params = [p for p in method.parameters() if p.grad is not None]
    grads = torch.autograd.grad(want, params)
    assert torch.allclose(loss.total, want, atol=1e-6)
    for p, g in zip(params, grads):
        assert torch.allclose(p.grad, g, atol=1e-6)
    assert set(loss.terms) == {"task"}


def test_refusals_name_the_method_and_defaults():
    with pytest.raises(ConfigError, match="'valuation'.*classification"):
        Valuation(MultimodalModel({m: nn.Linear(4, 5) for m in "ab"}, 1, feature_dims={"a": 5, "b": 5}))
    for bad in ({"level": "class"}, {"warmup": 0}, {"part_ratio": 0.0}, {"drop": "x"}, {"value": "x"}):
        with pytest.raises(ConfigError, match="valuation"):
            Valuation(_model(), _hp(**bad))
    d = Valuation.hyperparameter_defaults()
    assert (d["level"], d["warmup"], d["part_ratio"], d["alpha"], d["drop"]) == ("sample", 5, 0.2, 1.0, "feature")
    trial = optuna.trial.FixedTrial({"optim.lr": 1e-3, "method.level": "modality", "method.warmup": 3,
                                     "method.alpha": 0.5})
    assert Valuation.search_space(trial) == {"optim.lr": 1e-3, "method.level": "modality", "method.warmup": 3,
                                             "method.alpha": 0.5}
    assert get_method("valuation") is Valuation and Valuation.resamples


def test_re_sampled_epochs_do_not_read_the_test_split(guards, tmp_path):
    metrics = run_module.train(tiny_config("valuation", method__warmup=1, method__level="modality"), tmp_path / "v")
    (guard,) = guards
    check_test_split_untouched(guard)
    assert metrics["epochs_run"] == 2


def test_cli_trains_on_a_three_modality_npz(tmp_path):
    torch.set_num_threads(1)
    path = three_modality_npz(tmp_path / "three.npz")
    out = tmp_path / "run"
    assert main(["train", "--data", str(path), "--method", "valuation", "--set", "data.batch_size=16",
                 "trainer.max_epochs=2", "trainer.progress=false", "trainer.patience=0", "method.warmup=1",
                 "--out", str(out)]) == 0
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    counts = ckpt["state_dict"]["method._extra_state"]["counts"]
    assert counts.shape[1] == 4 and int(counts[:, 0].min()) == 1
    assert ckpt["global_step"] > 2 * math.ceil(counts.shape[0] / 16)  # the second epoch had the copies
