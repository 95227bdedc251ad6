"""G-Blending: the blend weights against a hand computation from recorded losses, the
super-epoch schedule (online / offline) with known losses fed through the epoch-end pass,
one step's loss and every parameter's gradient against a separately written formula with
3 modalities, refusals, the search space, ``mmbalance train`` on a three-modality .npz
(a resumed run ends with the weights and records of an uninterrupted one) and on synthetic,
and (slow) two-process DDP: the same weights on both ranks, exact resume after a mid-epoch stop."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import torch
import torch.nn.functional as F

from mmbalance.errors import ConfigError
from mmbalance.methods import get_method
from mmbalance.methods.gblending import GBlending, blend_weights
from mmbalance.models import MLPEncoder, MultimodalModel
from mmbalance.training.passes import SplitLosses
from mmbalance.types import Batch

from ..conftest import three_modality_npz as _three_modality_npz, train_synthetic_cli, whole_and_resumed

NAMES = ("a", "v", "t")
DIMS = (5, 3, 4)
C = 3


def _model(m=3, seed=0):
    torch.manual_seed(seed)
    encoders = {n: MLPEncoder(d, 4, hidden=6, layers=1) for n, d in zip(NAMES[:m], DIMS[:m])}
    return MultimodalModel(encoders, C, fusion="concat_linear")


def _hp(**kw):
    return GBlending.Hyperparameters(**kw)


def test_blend_weights_by_hand():
    # heads (a, v, fused); O_before = 0.1 each; O_after = 0.3, 0.25, 0.3 -> dO = 0.2, 0.15, 0.2
    # dG = 0.2, 0.05, 0.2 -> dG/dO^2 = 5, 20/9, 5 -> sum 110/9 -> w = 9/22, 4/22, 9/22
    f64 = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    t0, v0, t1, v1 = f64([1.0, 1.2, 0.9]), f64([1.1, 1.3, 1.0]), f64([0.6, 1.0, 0.5]), f64([0.9, 1.25, 0.8])
    w = blend_weights(t0, v0, t1, v1)
    assert w.tolist() == pytest.approx([9 / 22, 4 / 22, 9 / 22], rel=1e-9)


def test_blend_weights_signs_and_fallback():
    f64 = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    t0, v0, t1, v1 = f64([1.0, 1.0]), f64([1.0, 1.0]), f64([0.5, 0.5]), f64([0.9, 1.1])
    # head 0: dG 0.1, dO 0.4-0 = 0.4 -> 0.625; head 1: dG -0.1, dO 0.6 -> clamp 0 | abs 0.1/0.36
    assert blend_weights(t0, v0, t1, v1).tolist() == pytest.approx([1.0, 0.0])
    raw = [0.1 / 0.16, 0.1 / 0.36]
    assert blend_weights(t0, v0, t1, v1, sign="abs").tolist() == pytest.approx([r / sum(raw) for r in raw])
    worse = f64([1.2, 1.3])  # every validation loss rose: uniform
    assert blend_weights(t0, v0, t1, worse).tolist() == [0.5, 0.5]


class FakePasses:
    """Hands the hook recorded (train, val) losses per epoch; counts what it was asked."""

    def __init__(self, table):
        self.table, self.asked = table, []

    def for_epoch(self, epoch):
        self.epoch = epoch
        return self

    def losses(self, split):
        self.asked.append((self.epoch, split))
        values = self.table[self.epoch][split]  # (a, v, t, fused)
        f64 = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
        return SplitLosses(f64(values[-1]), {m: f64(x) for m, x in zip(NAMES, values)}, 10)


TABLE = {0: {"train": [1.0, 1.2, 1.1, 0.9], "val": [1.1, 1.3, 1.2, 1.0]},
         2: {"train": [0.6, 1.0, 0.8, 0.5], "val": [0.9, 1.25, 1.0, 0.8]},
         4: {"train": [0.3, 0.8, 0.6, 0.2], "val": [0.8, 1.2, 0.9, 0.75]}}


def _expected(e0, e1):
    a, b = TABLE[e0], TABLE[e1]
    raw = []
    for k in range(4):
        d_o = (b["val"][k] - b["train"][k]) - (a["val"][k] - a["train"][k])
        d_g = a["val"][k] - b["val"][k]
        raw.append(max(d_g, 0.0) / (d_o * d_o + 1e-12))
    return [r / sum(raw) for r in raw]


@pytest.mark.parametrize("mode", ["online", "offline"])
def test_super_epochs_record_and_estimate(mode):
    method = GBlending(_model(), _hp(mode=mode, super_epoch=2))
    passes = FakePasses(TABLE)
    assert method.weights.tolist() == [0.25] * 4  # before the first estimate
    logs = {}
    for epoch in range(5):
        logs[epoch] = method.on_epoch_pass(epoch, passes.for_epoch(epoch))
    asked = sorted({e for e, _ in passes.asked})
    assert asked == ([0, 2, 4] if mode == "online" else [0, 2])  # offline: nothing after its estimate
    want = _expected(2, 4) if mode == "online" else _expected(0, 2)
    assert method.weights.tolist() == pytest.approx(want, rel=1e-9)
    assert logs[2]["blend_weight/fused"] == pytest.approx(_expected(0, 2)[3], rel=1e-6)
    assert logs[1] == logs[3] == {}
    assert int(method.estimates) == (2 if mode == "online" else 1)
    last = 4 if mode == "online" else 2
    assert int(method.record_epoch) == last
    assert method.record.tolist() == [TABLE[last]["train"], TABLE[last]["val"]]
    # the same epoch again (a resumed run repeating the hook) changes nothing
    before = method.state_dict()
    method.on_epoch_pass(last, passes.for_epoch(last))
    assert all(torch.equal(v, method.state_dict()[k]) for k, v in before.items())


def test_one_step_loss_and_gradients_three_modalities():
    method = GBlending(_model(), _hp())
    w = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)  # a, v, t, fused
    method.weights.copy_(w)
    gen = torch.Generator().manual_seed(3)
    x = {n: torch.randn(6, d, generator=gen) for n, d in zip(NAMES, DIMS)}
    y = torch.randint(0, C, (6,), generator=gen)
    out = method(x)
    loss = method.training_loss(Batch(x, y), out)
    loss.total.backward()
    got = {n: p.grad.clone() for n, p in method.named_parameters()}
    method.zero_grad()
    ref = method(x)  # the formula, written separately: per-sample CE, mean, weighted sum
    want = 0.4 * -F.log_softmax(ref.logits, -1)[torch.arange(6), y].mean()
    for i, n in enumerate(NAMES):
        want = want + float(w[i]) * -F.log_softmax(ref.unimodal_logits[n], -1)[torch.arange(6), y].mean()
    assert loss.total.item() == pytest.approx(want.item(), rel=1e-6)
    assert set(loss.terms) == {"task", "unimodal/a", "unimodal/v", "unimodal/t"}
    want.backward()
    for n, p in method.named_parameters():
        assert torch.allclose(got[n], p.grad, atol=1e-7), n


def test_refusals_and_search_space():
    for bad, match in (({"mode": "both"}, "method.mode"), ({"sign": "neg"}, "method.sign"),
                       ({"super_epoch": 0}, "super_epoch")):
        with pytest.raises(ConfigError, match=match):
            GBlending(_model(2), _hp(**bad))
    assert GBlending.hyperparameter_defaults()["super_epoch"] == 10
    space = GBlending.search_space(optuna.trial.FixedTrial({"optim.lr": 1e-3, "method.mode": "offline",
                                                           "method.super_epoch": 2}))
    assert space == {"optim.lr": 1e-3, "method.mode": "offline", "method.super_epoch": 2}
    assert get_method("gblending") is GBlending


KEYS = ("weights", "record", "record_epoch", "estimates")


def test_trains_on_three_modalities_and_resumes_with_its_weights(tmp_path):
    data = _three_modality_npz(tmp_path / "three.npz")
    args = ["train", "--data", str(data), "--method", "gblending", "--set", "trainer.progress=false",
            "--set", "model.hidden=8", "--set", "model.feature_dim=4", "--set", "method.super_epoch=1"]
    whole, stopped, resumed = (
        {k: state[f"method.{k}"] for k in KEYS} for state in whole_and_resumed(args, tmp_path, epochs=4, stop=2))
    assert int(whole["estimates"]) == 3 and int(whole["record_epoch"]) == 3 and whole["weights"].shape == (4,)
    assert float(whole["weights"].sum()) == pytest.approx(1.0)
    assert int(stopped["estimates"]) == 1
    for key, value in whole.items():
        assert torch.equal(value, resumed[key]), key
    metrics = json.loads((tmp_path / "part" / "metrics.json").read_text())
    assert metrics["epochs_run"] == 4 and 0.0 <= metrics["test"]["accuracy"] <= 1.0


def test_trains_on_synthetic_from_the_command_line(tmp_path):
    metrics = train_synthetic_cli("gblending", tmp_path)
    assert metrics["method"] == "gblending"


_DDP = """
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[2])
import ddp_train_worker as w
from mmbalance.config import build_config
from mmbalance.methods import get_method
from mmbalance.training import train

root, over = Path(sys.argv[1]), {"method.super_epoch": 1, "trainer.max_epochs": 3}
w.RESUME = {**w.RESUME, **over}  # 3 epochs of 6 batches a rank (10% of the rows held out); stopped as step 10 begins (epoch 1)
cfg = build_config("gblending", "synthetic", {**w.TINY, **over}, get_method("gblending").Hyperparameters)
train(cfg, root / "plain", callbacks=[w.SaveRank(root / "plain")])
w.resume_case("gblending", root / "resume")
"""


@pytest.mark.slow  # about 30 s: two 2-process runs and a resume
def test_two_rank_ddp_same_weights_and_a_stopped_run_resumes_exactly(tmp_path):
    """Both ranks estimate the same weights (whole-split losses, reduced); a run stopped in the
    middle of epoch 1 and resumed ends with the uninterrupted run's weights, records and model."""
    script = tmp_path / "gb_ddp.py"
    script.write_text(_DDP)
    worker_dir = Path(__file__).resolve().parents[1] / "training"
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1",
           "MASTER_PORT": str(30500 + os.getpid() % 1000)}
    proc = subprocess.run([sys.executable, str(script), str(tmp_path), str(worker_dir)], env=env,
                          capture_output=True, text=True, timeout=500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    load = lambda p: torch.load(p, weights_only=False)  # noqa: E731
    r0, r1 = load(tmp_path / "plain" / "rank0.pt"), load(tmp_path / "plain" / "rank1.pt")
    assert r0["world"] == 2 and r0["first"] != r1["first"]
    assert int(r0["state"]["estimates"]) == 2
    for key, value in r0["state"].items():
        assert torch.equal(value, r1["state"][key]), f"{key} differs between ranks"
    for rank in (0, 1):
        ref, cut = (load(tmp_path / "resume" / run / f"rank{rank}.pt") for run in ("ref", "cut"))
        assert ref["step"] == cut["step"] == 18  # 3 epochs x 6 batches: the held-out rows are not trained on
        for key, value in ref["state"].items():
            assert torch.equal(value, cut["state"][key]), f"rank {rank}: {key} differs after the resume"
