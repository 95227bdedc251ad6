"""LFM: one step's loss and every parameter's gradient against a separately written formula
(3 modalities, both weightings), the heuristic schedule at chosen epochs by hand, the learned
weight's hypergradient proxy against a full Hessian and a finite difference on a tiny model,
its update (step, clip, halving, repeat) through the epoch-end pass, refusals, the search
space, and ``mmbalance train`` on synthetic data and a three-modality ``.npz`` (a resumed run
ends with the state of an uninterrupted one)."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from mmbalance.errors import ConfigError
from mmbalance.methods import get_method
from mmbalance.methods.lfm import LFM, heuristic_cls_weight
from mmbalance.models import MLPEncoder, MultimodalModel
from mmbalance.types import Batch

from ..conftest import three_modality_npz as _three_modality_npz, tiny_config, train_synthetic_cli, whole_and_resumed
from .test_test_split_guard import check_test_split_untouched, guards, run_module  # noqa: F401 (fixture)

NAMES = ("a", "v", "t")
DIMS = (5, 3, 4)
C = 3


def _model(m=3, seed=0):
    torch.manual_seed(seed)
    encoders = {n: MLPEncoder(d, 4, hidden=6, layers=1) for n, d in zip(NAMES[:m], DIMS[:m])}
    return MultimodalModel(encoders, C, fusion="concat_linear")


def _data(m=3, n=6, seed=3):
    gen = torch.Generator().manual_seed(seed)
    x = {k: torch.randn(n, d, generator=gen) for k, d in zip(NAMES[:m], DIMS[:m])}
    return x, torch.randint(0, C, (n,), generator=gen)


def _official_alignment(p, q):  # written as the official Alignment, with p.log()
    p, q = F.softmax(p, dim=-1), F.softmax(q, dim=-1)
    m = 0.5 * p + 0.5 * q
    return 0.5 * (F.kl_div(p.log(), m, reduction="batchmean") + F.kl_div(q.log(), m, reduction="batchmean"))


def _reference(out, y, names, w_cls, w_align, factor=2.0):
    ce = -F.log_softmax(out.logits, -1)[torch.arange(y.shape[0]), y].mean()
    pairs = list(itertools.combinations(names, 2))
    align = sum(_official_alignment(out.unimodal_logits[a], out.unimodal_logits[b]) for a, b in pairs) / len(pairs)
    return factor * (w_cls * ce + w_align * align), ce, align


def test_heuristic_schedule_by_hand():
    assert heuristic_cls_weight(0) == pytest.approx(0.204623704, abs=1e-12)
    # 0.204623704 + 0.0335472727 + 0.0122989557 - 0.00292947416 + 0.000223835486 - 0.00000539717505
    assert heuristic_cls_weight(10) == pytest.approx(0.247758896551, abs=1e-10)
    assert heuristic_cls_weight(100) == pytest.approx(0.5392, abs=1e-4)
    assert heuristic_cls_weight(199) == pytest.approx(0.9160, abs=1e-4)
    assert heuristic_cls_weight(300) == heuristic_cls_weight(199)  # held past the official 200 epochs
    method = LFM(_model(2), LFM.Hyperparameters())
    logs = method.on_epoch_start(10)
    assert int(method.epoch) == 10 and method.weights() == pytest.approx((0.247758896551, 0.752241103449))
    assert logs["lfm/align_weight"] == pytest.approx(0.752241103449)


@pytest.mark.parametrize("weighting", ["heuristic", "learned"])
def test_one_step_loss_and_gradients_three_modalities(weighting):
    method = LFM(_model(), LFM.Hyperparameters(weighting=weighting))
    if weighting == "heuristic":
        method.on_epoch_start(10)
        w_cls, w_align = 0.247758896551, 0.752241103449
    else:
        method.align_weight.fill_(0.3)
        w_cls, w_align = 0.7, 0.3
    x, y = _data()
    out = method(x)
    loss = method.training_loss(Batch(x, y), out)
    loss.total.backward()
    got = {n: p.grad.clone() for n, p in method.named_parameters()}
    method.zero_grad()
    want, _, _ = _reference(method(x), y, NAMES, w_cls, w_align)
    assert set(loss.terms) == {"task", "alignment"}
    assert loss.total.item() == pytest.approx(want.item(), rel=1e-6)
    want.backward()
    for n, p in method.named_parameters():
        assert p.grad is not None and torch.allclose(got[n], p.grad, atol=1e-7), n
    assert any(got[n].abs().sum() > 0 for n in got if n.startswith("model.heads."))  # alignment reaches the heads


def _flat_objective(method, x, y, w_cls, w_align, which):
    names = [n for n, _ in method.model.named_parameters()]
    shapes = [p.shape for _, p in method.model.named_parameters()]

    def f(flat):
        parts, i = {}, 0
        for n, s in zip(names, shapes):
            k = int(torch.tensor(s).prod()) if len(s) else 1
            parts[n] = flat[i:i + k].reshape(s)
            i += k
        out = functional_call(method.model, parts, (x,))
        total, ce, _ = _reference(out, y, NAMES, w_cls, w_align, factor=1.0)
        return total if which == "total" else ce
    flat = torch.cat([p.detach().reshape(-1) for p in method.model.parameters()])
    return f, flat, shapes


@pytest.mark.parametrize("alpha_grad", ["first", "all"])
def test_alpha_gradient_against_the_full_hessian(alpha_grad):
    method = LFM(_model(), LFM.Hyperparameters(weighting="learned", alpha_grad=alpha_grad))
    method.align_weight.fill_(0.6)
    method.eval()
    x, y = _data(n=8, seed=5)
    got = method.alpha_gradient(x, y)
    f_total, flat, shapes = _flat_objective(method, x, y, 0.4, 0.6, "total")
    f_ce, _, _ = _flat_objective(method, x, y, 0.4, 0.6, "ce")
    hessian = torch.autograd.functional.hessian(f_total, flat)
    u = torch.autograd.functional.jacobian(f_ce, flat)
    hv = hessian @ u
    first = int(torch.tensor(shapes[0]).prod())
    want = hv[:first].mean() if alpha_grad == "first" else hv.mean()
    assert float(got) == pytest.approx(float(want), rel=1e-4, abs=1e-9)
    # a finite difference of the gradient of the objective along u gives the same product
    eps = 1e-2
    g = lambda v: torch.autograd.functional.jacobian(f_total, v)  # noqa: E731
    fd = (g(flat + eps * u) - g(flat - eps * u)) / (2 * eps)
    fd_want = fd[:first].mean() if alpha_grad == "first" else fd.mean()
    assert float(got) == pytest.approx(float(fd_want), rel=2e-2, abs=1e-6)


class FakePasses:
    def __init__(self, x, y, batch=4):
        self.x, self.y, self.batch, self.asked = x, y, batch, []

    def batches(self, split):
        self.asked.append(split)
        for i in range(0, self.y.shape[0], self.batch):
            yield {k: v[i:i + self.batch] for k, v in self.x.items()}, self.y[i:i + self.batch]


def test_learned_update_through_the_epoch_pass():
    hp = LFM.Hyperparameters(weighting="learned", lr_alpha=50.0, val_rows=6)
    method = LFM(_model(), hp)
    assert method.weights() == pytest.approx((0.05, 0.95))
    x, y = _data(n=12, seed=7)
    passes = FakePasses(x, y)
    method.train()
    g = float(method.eval().alpha_gradient({k: v[:6] for k, v in x.items()}, y[:6]))
    method.train()
    logs = method.on_epoch_pass(0, passes)
    assert passes.asked == ["val"] and method.training  # only validation rows; mode restored
    want = min(max(0.95 - 50.0 * g, 0.05), 0.95)
    assert float(method.align_weight) == pytest.approx(want, rel=1e-6)
    assert logs["lfm/alpha_grad"] == pytest.approx(g, rel=1e-6)
    assert method.weights()[0] == pytest.approx(1.0 - want)
    # the same epoch again (a resumed run repeating the hook) changes nothing
    before = {k: v.clone() for k, v in method.state_dict().items()}
    assert method.on_epoch_pass(0, passes) == {}
    assert all(torch.equal(v, method.state_dict()[k]) for k, v in before.items())
    # lr_alpha halves before the update that sets epoch 20's weight; clipping to [0.05, 0.95]
    method.align_weight.fill_(0.5)
    g19 = float(method.eval().alpha_gradient({k: v[:6] for k, v in x.items()}, y[:6]))
    method.train()
    method.on_epoch_pass(19, passes)
    assert float(method.lr_alpha) == 25.0
    assert float(method.align_weight) == pytest.approx(min(max(0.5 - 25.0 * g19, 0.05), 0.95), rel=1e-6)
    method.lr_alpha.fill_(1e9)
    method.on_epoch_pass(20, passes)
    assert float(method.align_weight) in (0.05, 0.95)
    heuristic = LFM(_model(), LFM.Hyperparameters())
    assert heuristic.on_epoch_pass(0, FakePasses(x, y)) == {}  # reads nothing


def test_refusals_and_search_space():
    for bad, match in (({"weighting": "exp"}, "method.weighting"), ({"alpha_grad": "last"}, "method.alpha_grad"),
                       ({"val_rows": 0}, "val_rows"), ({"alpha_init": 1.5}, "alpha_init")):
        with pytest.raises(ConfigError, match=match):
            LFM(_model(2), LFM.Hyperparameters(**bad))
    defaults = LFM.hyperparameter_defaults()
    assert defaults["weighting"] == "heuristic" and defaults["lr_alpha"] == 1e-4 and defaults["alpha_init"] == 0.95
    fixed = optuna.trial.FixedTrial({"optim.lr": 1e-3, "method.weighting": "heuristic"})
    assert LFM.search_space(fixed) == {"optim.lr": 1e-3, "method.weighting": "heuristic"}
    fixed = optuna.trial.FixedTrial({"optim.lr": 1e-3, "method.weighting": "learned", "method.lr_alpha": 1e-3})
    assert LFM.search_space(fixed) == {"optim.lr": 1e-3, "method.weighting": "learned", "method.lr_alpha": 1e-3}
    assert get_method("lfm") is LFM


def test_learned_trains_on_three_modalities_and_resumes(tmp_path):
    data = _three_modality_npz(tmp_path / "three.npz")
    args = ["train", "--data", str(data), "--method", "lfm", "--set", "trainer.progress=false",
            "--set", "model.hidden=8", "--set", "model.feature_dim=4", "--set", "method.weighting=learned",
            "--set", "method.lr_alpha=10.0"]
    whole, _, resumed = ({k: v for k, v in state.items() if k.startswith("method.")}
                         for state in whole_and_resumed(args, tmp_path, epochs=3, stop=1))
    assert int(whole["method.updated_epoch"]) == 2 and float(whole["method.align_weight"]) != 0.95
    for key, value in whole.items():
        assert torch.equal(value, resumed[key]), key
    metrics = json.loads((tmp_path / "part" / "metrics.json").read_text())
    assert metrics["epochs_run"] == 3 and 0.0 <= metrics["test"]["accuracy"] <= 1.0


def test_trains_on_synthetic_from_the_command_line(tmp_path):
    metrics = train_synthetic_cli("lfm", tmp_path)
    assert metrics["method"] == "lfm"


def test_learned_weight_reads_validation_rows_never_the_test_split(guards, tmp_path):
    """The learned variant (which reads held-out rows after each epoch) under the guard that
    raises on any test-split read before the final evaluation; its weight did move."""
    cfg = tiny_config("lfm", method__weighting="learned", method__lr_alpha=10.0)
    metrics = run_module.train(cfg, tmp_path / "lfm")
    (guard,) = guards
    check_test_split_untouched(guard)
    assert metrics["test"] and metrics["epochs_run"] == 2
    state = torch.load(tmp_path / "lfm" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert int(state["method.updated_epoch"]) == 1 and float(state["method.align_weight"]) != 0.95


_DDP = """
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[2])
import ddp_train_worker as w
from mmbalance.config import build_config
from mmbalance.methods import get_method
from mmbalance.training import train
root = Path(sys.argv[1])
over = {"method.weighting": "learned", "method.lr_alpha": 10.0, "method.alpha_init": 0.5, "trainer.max_epochs": 2}
w.RESUME = {**w.RESUME, **over}  # 2 epochs of 7 batches a rank; stopped as step 10 begins (epoch 1)
cfg = build_config("lfm", "synthetic", {**w.TINY, **over}, get_method("lfm").Hyperparameters)
train(cfg, root / "plain", callbacks=[w.SaveRank(root / "plain")])
w.resume_case("lfm", root / "resume")
"""


@pytest.mark.slow  # two 2-process runs and a resume
def test_two_rank_ddp_same_weight_and_a_stopped_run_resumes_exactly(tmp_path):
    """Both ranks take the same learned-weight step (per-rank held-out gradients averaged);
    a run stopped in the middle of epoch 1 and resumed ends with the uninterrupted run's state."""
    script = tmp_path / "lfm_ddp.py"
    script.write_text(_DDP)
    worker_dir = Path(__file__).resolve().parents[1] / "training"
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1",
           "MASTER_PORT": str(31500 + os.getpid() % 1000)}
    proc = subprocess.run([sys.executable, str(script), str(tmp_path), str(worker_dir)], env=env,
                          capture_output=True, text=True, timeout=500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    load = lambda p: torch.load(p, weights_only=False)  # noqa: E731
    r0, r1 = load(tmp_path / "plain" / "rank0.pt"), load(tmp_path / "plain" / "rank1.pt")
    assert r0["world"] == 2 and r0["first"] != r1["first"]
    assert int(r0["state"]["updated_epoch"]) == 1 and float(r0["state"]["align_weight"]) != 0.5  # it moved
    for key, value in r0["state"].items():
        assert torch.equal(value, r1["state"][key]), f"{key} differs between ranks"
    for rank in (0, 1):
        ref, cut = (load(tmp_path / "resume" / run / f"rank{rank}.pt") for run in ("ref", "cut"))
        assert ref["step"] == cut["step"] == 14
        for key, value in ref["state"].items():
            assert torch.equal(value, cut["state"][key]), f"rank {rank}: {key} differs after the resume"
