"""OPM (Wei et al., TPAMI 2024): the drop probabilities against the official two-modality rule
and its M-modality form by hand, one step with a fixed mask against a separately written
computation (masks, theta scale, removed samples, the loss, every parameter's gradient), the
warm-up and p_exe gates, seeded and resumable masks, the search space, and training through
``mmbalance train`` on synthetic data and a three-modality ``.npz``."""

from __future__ import annotations

import json
import math

import numpy as np
import optuna
import pytest
import torch
from torch import nn

from mmbalance.cli import main
from mmbalance.errors import ConfigError
from mmbalance.methods import OPM, get_method
from mmbalance.methods.hparams import searched, uniform
from mmbalance.methods.opm import opm_drop_probabilities, opm_theta
from mmbalance.models import MLPEncoder, MultimodalModel
from mmbalance.types import Batch

from ..conftest import three_modality_npz, train_synthetic_cli

NAMES = ("a", "v", "t")
IN = {"a": 3, "v": 4, "t": 2}
D = {"a": 3, "v": 2, "t": 4}
LABELS = torch.tensor([0, 1, 2, 0, 1, 2])


def _model(seed=0):
    torch.manual_seed(seed)
    encoders = {m: MLPEncoder(IN[m], D[m], hidden=5, layers=1 if m != "a" else 0) for m in NAMES}
    model = MultimodalModel(encoders, 3, fusion="concat_linear")
    with torch.no_grad():  # audio reads its one-hot label part: it out-scores the others together
        model.encoders["a"].net[0].weight.copy_(torch.eye(3) + 0.1 * model.encoders["a"].net[0].weight)
        model.fusion.weights["a"].weight.copy_(2 * torch.eye(3) + model.fusion.weights["a"].weight)
    return model


def _batch():
    gen = torch.Generator().manual_seed(4)
    x = {m: torch.randn(6, IN[m], generator=gen) for m in NAMES}
    x["a"] = x["a"] + 4 * nn.functional.one_hot(LABELS, 3).float()  # audio dominates: q_a > 0
    return Batch(x, LABELS)


def _official_q(p1, p2, q_base, lam):
    """BML_TPAMI2024 calcu_q, rewritten with python floats."""
    r1, r2 = math.tanh(max(p1 / p2 - 1, 0.0)), math.tanh(max(p2 / p1 - 1, 0.0))
    q1 = q_base * (1 + lam * r1) if r1 > 0 else 0.0
    q2 = q_base * (1 + lam * r2) if r2 > 0 else 0.0
    return [min(max(q1, 0.0), 1.0), min(max(q2, 0.0), 1.0)]


@pytest.mark.parametrize("scores", [(10.0, 4.0), (3.0, 7.5), (5.0, 5.0), (40.0, 1.0)])
def test_two_modalities_follow_the_official_rule(scores):
    for q_base, lam in ((0.5, 0.5), (0.4, 0.5), (0.9, 1.0)):
        got = opm_drop_probabilities(torch.tensor(scores), q_base, lam)
        assert got.tolist() == pytest.approx(_official_q(*scores, q_base, lam), abs=1e-6)


def test_more_modalities_compare_each_with_the_sum_of_the_others():
    s = torch.tensor([9.0, 3.0, 2.0, 1.0])
    rho = math.tanh(9.0 / 6.0 - 1)
    assert opm_drop_probabilities(s, 0.4, 0.5).tolist() == pytest.approx([0.4 * (1 + 0.5 * rho), 0, 0, 0])
    assert opm_drop_probabilities(torch.tensor([3.0, 2.0, 2.0]), 0.4, 0.5).tolist() == [0, 0, 0]
    assert opm_theta(torch.tensor([0.5, 0.0, 0.0]), torch.tensor([3.0, 2.0, 5.0])).item() == pytest.approx(0.15)


def test_defaults_search_space_and_requirements():
    assert OPM.hyperparameter_defaults() == {"q_base": 0.5, "lam": 0.5, "p_exe": 0.7, "start_epoch": 6,
                                             "end_epoch": None, "init": "scratch", "encoder_lr_scale": 0.1,
                                             "stage_lr": None}
    assert searched(OPM.Hyperparameters) == {"q_base": uniform(0.1, 0.8), "lam": uniform(0.0, 1.0),
                                             "p_exe": uniform(0.3, 1.0)}
    trial = optuna.trial.FixedTrial({"optim.lr": 1e-3, "method.q_base": 0.3, "method.lam": 0.2, "method.p_exe": 0.9})
    assert OPM.search_space(trial) == {"optim.lr": 1e-3, "method.q_base": 0.3, "method.lam": 0.2,
                                       "method.p_exe": 0.9}
    assert get_method("opm") is OPM and OPM.stages(list(NAMES)) == []
    mlp = MultimodalModel({m: MLPEncoder(IN[m], D[m]) for m in NAMES}, 3, fusion="concat_mlp")
    with pytest.raises(ConfigError, match="method 'opm' needs a decomposable fusion"):
        OPM(mlp)


def test_one_step_with_a_fixed_mask_against_a_separate_computation():
    method = OPM(_model())
    method.train()
    method.on_epoch_start(6)
    batch = _batch()
    keep = torch.tensor([[0, 1, 1], [1, 1, 0], [0, 0, 0], [1, 0, 1], [0, 1, 0], [1, 1, 1]], dtype=torch.bool)
    seen = {}

    def fixed(batch_size, q):
        seen["q"] = q.clone()
        return keep

    method.drop_mask = fixed

    ref = _model()
    ref.load_state_dict(method.model.state_dict())
    feats = {m: ref.encoders[m](batch.inputs[m]) for m in NAMES}
    W = {m: ref.fusion.weights[m].weight for m in NAMES}
    b = ref.fusion.bias
    with torch.no_grad():  # scores from the detached shares z_m W_m^T + b/3
        s = []
        for m in NAMES:
            share = feats[m] @ W[m].T + b / 3
            s.append(sum(share[i].softmax(-1)[LABELS[i]] for i in range(6)))
    total = sum(s)
    q = []
    for m, sm in zip(NAMES, s):
        rho = math.tanh(max(float(sm) / (float(total) - float(sm)) - 1, 0.0))
        q.append(min(0.5 * (1 + 0.5 * rho), 1.0) if rho > 0 else 0.0)
    assert q[0] > 0 and q[1] == q[2] == 0.0  # the dominant audio alone
    theta = sum(D[m] * qm for m, qm in zip(NAMES, q)) / sum(D.values())
    ce, kept = 0.0, [i for i in range(6) if keep[i].any()]
    assert kept == [0, 1, 3, 4, 5]  # sample 2 lost every modality and leaves the loss
    for i in kept:
        z = b.clone()
        for j, m in enumerate(NAMES):
            if keep[i, j]:
                z = z + W[m] @ (feats[m][i] / (1 - theta))
        ce = ce - z.log_softmax(-1)[LABELS[i]]
    want = ce / len(kept)
    want.backward()

    out = method(batch.inputs)
    loss = method.training_loss(batch, out)
    assert seen["q"].tolist() == pytest.approx(q, abs=1e-6)
    assert torch.allclose(loss.total, want.detach(), atol=1e-6)
    assert loss.logs["theta"] == pytest.approx(theta, abs=1e-6)
    assert loss.logs["kept_samples"] == pytest.approx(5 / 6)
    loss.total.backward()
    for m in NAMES:
        for got, r in zip(method.model.encoders[m].parameters(), ref.encoders[m].parameters()):
            assert torch.allclose(got.grad, r.grad, atol=1e-6), m
        assert all(p.grad is None for p in method.model.head_parameters(m))  # heads untrained
    for got, r in zip(method.model.fusion.parameters(), ref.fusion.parameters()):
        assert torch.allclose(got.grad, r.grad, atol=1e-6)
    assert int(method.steps) == 1 and method.drop_probabilities.tolist() == pytest.approx(q, abs=1e-6)


def test_warm_up_window_and_unexecuted_batches_are_plain_cross_entropy():
    batch = _batch()
    for epoch, hp in ((5, OPM.Hyperparameters()), (6, OPM.Hyperparameters(p_exe=0.0)),
                      (9, OPM.Hyperparameters(start_epoch=0, end_epoch=8))):
        method = OPM(_model(), hp)
        method.on_epoch_start(epoch)
        out = method(batch.inputs)
        loss = method.training_loss(batch, out)
        assert torch.equal(loss.total, nn.functional.cross_entropy(out.logits, LABELS)), epoch


def test_masks_are_seeded_by_step_differ_by_step_and_follow_q():
    method = OPM(_model(), OPM.Hyperparameters(p_exe=1.0))
    q = torch.tensor([0.7, 0.0, 0.2])
    first = method.drop_mask(4000, q)
    assert torch.equal(first, method.drop_mask(4000, q))  # same (seed, step): same mask
    assert first.float().mean(0).tolist() == pytest.approx([0.3, 1.0, 0.8], abs=0.03)
    method.steps += 1
    assert not torch.equal(first, method.drop_mask(4000, q))
    executed = []
    half = OPM(_model(), OPM.Hyperparameters(p_exe=0.7))
    for step in range(400):
        half.steps.fill_(step)
        executed.append(half.drop_mask(2, q) is not None)
    assert np.mean(executed) == pytest.approx(0.7, abs=0.08)
    twin = OPM(_model(), OPM.Hyperparameters(p_exe=1.0))
    twin.seed = 12345
    twin.load_state_dict(method.state_dict())  # the seed and step come back with the state
    assert twin.seed == method.seed and torch.equal(twin.drop_mask(4000, q), method.drop_mask(4000, q))


def _three_modality_npz(path):  # the audio view carries the label most strongly: opm's ratio acts
    return three_modality_npz(path, signal=(1.5, 0.2, 0.2))


def test_trains_on_three_modalities_and_resumes(tmp_path):
    data = _three_modality_npz(tmp_path / "three.npz")
    args = ["train", "--data", str(data), "--method", "opm", "--set", "trainer.max_epochs=2",
            "--set", "trainer.progress=false", "--set", "model.hidden=8", "--set", "model.feature_dim=4",
            "--set", "method.start_epoch=0", "--set", "method.p_exe=1.0", "--out", str(tmp_path / "run")]
    assert main(args) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["method"] == "opm" and 0.0 <= metrics["test"]["accuracy"] <= 1.0
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    assert int(ckpt["method.steps"]) > 0
    assert main(args[:-2] + ["--set", "trainer.max_epochs=3", "--out", str(tmp_path / "run"), "--resume"]) == 0
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["epochs_run"] == 3


def test_trains_on_synthetic_from_the_command_line(tmp_path):
    metrics = train_synthetic_cli("opm", tmp_path)
    assert metrics["method"] == "opm"
