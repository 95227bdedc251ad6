"""UMT (Du et al., ICML 2023): one step against a separately written formula (loss and every
parameter group's gradient), frozen eval-mode teachers, teachers from the stages and in the
checkpoint, the search space, and training through ``mmbalance train`` with three
modalities, from a resumed run and back through ``load_run``."""

from __future__ import annotations

import json

import optuna
import pytest
import torch
from torch import nn

from mmbalance.cli import main
from mmbalance.methods import UMT, Unimodal, get_method
from mmbalance.methods.hparams import log_uniform, searched
from mmbalance.methods.pipeline import unimodal_stages
from mmbalance.models import MLPEncoder, MultimodalModel
from mmbalance.types import Batch

from ..conftest import three_modality_npz as _three_modality_npz, train_synthetic_cli

NAMES = ("a", "v", "t")
DIMS = {"a": 5, "v": 3, "t": 4}


def _model(seed=0):
    torch.manual_seed(seed)
    encoders = {m: MLPEncoder(DIMS[m], 4, hidden=6, layers=1) for m in NAMES}
    return MultimodalModel(encoders, 3, fusion="concat_linear")


def _batch():
    gen = torch.Generator().manual_seed(3)
    x = {m: torch.randn(6, DIMS[m], generator=gen) for m in NAMES}
    return Batch(x, torch.tensor([0, 1, 2, 0, 1, 2]))


def _stage_states():
    """Each modality's stage state: a unimodal run's ``state_dict`` with distinct weights."""
    return {f"unimodal_{m}": Unimodal(_model(seed=10 + i), Unimodal.Hyperparameters(modality=m)).state_dict()
            for i, m in enumerate(NAMES)}


def test_defaults_search_space_and_stages():
    assert UMT.hyperparameter_defaults() == {"distill_weight": 10.0, "init": "scratch", "encoder_lr_scale": 0.1,
                                             "stage_lr": None}
    assert searched(UMT.Hyperparameters) == {"distill_weight": log_uniform(0.1, 100.0)}
    fixed = optuna.trial.FixedTrial({"optim.lr": 1e-3, "method.distill_weight": 3.0})
    assert UMT.search_space(fixed) == {"optim.lr": 1e-3, "method.distill_weight": 3.0}
    for init in ("scratch", "unimodal"):  # the teachers are trained whatever the student's start
        assert UMT.stages(list(NAMES), UMT.Hyperparameters(init=init)) == unimodal_stages(NAMES)


def test_one_step_loss_and_every_gradient_against_the_formula():
    lam = 2.5
    method = UMT(_model(), UMT.Hyperparameters(distill_weight=lam))
    states = _stage_states()
    method.load_stages(states)
    method.train()
    batch = _batch()

    # the independent computation: teachers rebuilt from the stage states, the student from a
    # copy of the method's model, the loss written out with explicit sums
    teachers = {}
    for i, m in enumerate(NAMES):
        enc = MLPEncoder(DIMS[m], 4, hidden=6, layers=1)
        prefix = f"model.encoders.{m}."
        enc.load_state_dict({k[len(prefix):]: v for k, v in states[f"unimodal_{m}"].items() if k.startswith(prefix)})
        teachers[m] = enc.eval()
    student = _model()
    student.load_state_dict(method.model.state_dict())
    feats = {m: student.encoders[m](batch.inputs[m]) for m in NAMES}
    weight = torch.cat([student.fusion.weights[m].weight for m in NAMES], 1)  # (C, sum D_m)
    logits = torch.cat([feats[m] for m in NAMES], -1) @ weight.T + student.fusion.bias
    logp = logits.log_softmax(-1)
    ce = -sum(logp[i, batch.labels[i]] for i in range(6)) / 6
    distill = {}
    for m in NAMES:
        with torch.no_grad():
            target = teachers[m](batch.inputs[m])
        distill[m] = lam * ((feats[m] - target) ** 2).sum() / (6 * 4)
    want = ce + sum(distill.values())
    want.backward()

    out = method(batch.inputs)
    loss = method.training_loss(batch, out)
    assert list(loss.terms) == ["task", "distill/a", "distill/v", "distill/t"]
    assert torch.allclose(loss.terms["task"], ce.detach(), atol=1e-6)
    for m in NAMES:
        assert torch.allclose(loss.terms[f"distill/{m}"], distill[m].detach(), atol=1e-6)
        assert float(loss.logs[f"mse/{m}"]) == pytest.approx(float(distill[m].detach()) / lam, rel=1e-5)
    assert torch.allclose(loss.total, want.detach(), atol=1e-6)
    loss.total.backward()

    for m in NAMES:  # students: CE + distillation gradients; heads: none (unused by the loss)
        for (name, got), ref in zip(method.model.encoders[m].named_parameters(), student.encoders[m].parameters()):
            assert torch.allclose(got.grad, ref.grad, atol=1e-6), f"encoder {m} {name}"
        assert all(p.grad is None for p in method.model.head_parameters(m))
        assert all(p.grad is None and not p.requires_grad for p in method.teachers[m].parameters())
    for got, ref in zip(method.model.fusion.parameters(), student.fusion.parameters()):
        assert torch.allclose(got.grad, ref.grad, atol=1e-6)
    optimized = {id(p) for g in method.param_groups() for p in g["params"]}
    assert optimized.isdisjoint(id(p) for p in method.teachers.parameters())
    assert optimized == {id(p) for p in method.model.parameters()}


def test_the_distillation_gradient_alone_is_two_lambda_times_the_feature_gap_over_bd():
    # with the fused loss cut off, d L / d f_m = 2 lambda (f_m - t_m) / (B D)
    lam = 0.7
    method = UMT(_model(), UMT.Hyperparameters(distill_weight=lam))
    method.load_stages(_stage_states())
    batch = _batch()
    out = method(batch.inputs)
    for f in out.features.values():
        f.retain_grad()
    loss = method.training_loss(batch, out)
    (loss.total - loss.terms["task"]).backward()
    targets = method.teacher_features(batch.inputs)
    for m in NAMES:
        want = 2 * lam * (out.features[m].detach() - targets[m]) / (6 * 4)
        assert torch.allclose(out.features[m].grad, want, atol=1e-7)


def test_teachers_come_from_the_stages_stay_frozen_in_eval_mode_and_the_student_starts_as_asked():
    states = _stage_states()
    scratch = UMT(_model())
    before = {k: v.clone() for k, v in scratch.model.state_dict().items()}
    scratch.load_stages(states)
    for m in NAMES:
        want = Unimodal(_model(seed=10 + NAMES.index(m)), Unimodal.Hyperparameters(modality=m)).model.encoders[m]
        got = scratch.teachers[m].state_dict()
        assert all(torch.equal(got[k], v) for k, v in want.state_dict().items())
    assert all(torch.equal(scratch.model.state_dict()[k], v) for k, v in before.items())  # student untouched
    warm = UMT(_model(), UMT.Hyperparameters(init="unimodal"))
    warm.load_stages(states)
    for m in NAMES:
        assert all(torch.equal(p, q) for p, q in zip(warm.model.encoders[m].parameters(),
                                                     warm.teachers[m].parameters()))
    scratch.train()
    assert scratch.training and scratch.model.training
    assert not any(mod.training for mod in scratch.teachers.modules())
    scratch.teachers.train()  # as a loop restoring saved modes might leave them: eval again on use
    scratch.training_loss(_batch(), scratch(_batch().inputs))
    assert not any(mod.training for mod in scratch.teachers.modules())


def test_teachers_in_eval_mode_keep_batchnorm_statistics():
    torch.manual_seed(0)
    encoders = {m: nn.Sequential(nn.Linear(DIMS[m], 4), nn.BatchNorm1d(4)) for m in NAMES}
    method = UMT(MultimodalModel(encoders, 3, feature_dims={m: 4 for m in NAMES}))
    method.train()
    stats = {k: v.clone() for k, v in method.teachers.state_dict().items()}
    batch = _batch()
    method.training_loss(batch, method(batch.inputs))
    assert all(torch.equal(method.teachers.state_dict()[k], v) for k, v in stats.items())
    assert not torch.equal(method.model.encoders["a"][1].running_mean, stats["a.1.running_mean"])


def test_trains_on_three_modalities_resumes_and_loads_back(tmp_path):
    from mmbalance import load_run

    data = _three_modality_npz(tmp_path / "three.npz")
    args = ["train", "--data", str(data), "--method", "umt", "--set", "trainer.max_epochs=2",
            "--set", "trainer.progress=false", "--set", "model.hidden=8", "--set", "model.feature_dim=4",
            "--set", "method.distill_weight=3", "--out", str(tmp_path / "run")]
    assert main(args) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["method"] == "umt" and 0.0 <= metrics["test"]["accuracy"] <= 1.0
    assert sorted(metrics["stages"]) == ["unimodal_audio", "unimodal_text", "unimodal_video"]
    run = load_run(tmp_path / "run")
    stage = {m: torch.load(tmp_path / "run" / "stages" / f"unimodal_{m}" / "checkpoints" / "best.ckpt",
                           weights_only=False)["state_dict"] for m in ("audio", "video", "text")}
    for m, state in stage.items():  # the teachers are the stages' best encoders, unchanged by training
        for k, v in run.method.teachers[m].state_dict().items():
            assert torch.equal(v, state[f"method.model.encoders.{m}.{k}"]), (m, k)
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    assert any(k.startswith("method.teachers.text.") for k in ckpt)
    assert main(args[:-2] + ["--set", "trainer.max_epochs=3", "--out", str(tmp_path / "run"), "--resume"]) == 0
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["epochs_run"] == 3


def test_trains_on_synthetic_from_the_command_line(tmp_path):
    metrics = train_synthetic_cli("umt", tmp_path)
    assert metrics["method"] == "umt"
    assert get_method("umt") is UMT
