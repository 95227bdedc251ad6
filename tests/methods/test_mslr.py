"""MSLR: the learning rates after a given accuracy history (by hand), the parameter groups
by structure, branch accuracies by brute-force loops, and the live optimizer in training."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from mmbalance.config import OptimConfig
from mmbalance.errors import ConfigError
from mmbalance.methods.mslr import MSLR, mslr_scale
from mmbalance.models import MLPEncoder, MultimodalModel
from mmbalance.training import BalanceModule, build_data, build_method, build_model, loaders
from mmbalance.engine.optim import LRSchedule, build_optimizer
from mmbalance.types import ModelOutput

from ..conftest import tiny_config


def _model(fusion="concat_linear"):
    torch.manual_seed(0)
    encoders = {"a": MLPEncoder(5, 4, hidden=6, layers=1), "v": MLPEncoder(3, 4, hidden=6, layers=1)}
    return MultimodalModel(encoders, 3, fusion=fusion, fusion_hidden=8)


def test_scale_by_hand():
    assert mslr_scale(0.7, 0.9, [0.5, 0.7], window=2) == pytest.approx(0.7 * 0.9 / 0.6)
    assert mslr_scale(0.7, 0.9, [0.1, 0.5, 0.7], window=2) == pytest.approx(0.7 * 0.9 / 0.6)
    assert mslr_scale(1.3, 0.9, [0.5], window=2) == 1.3  # not enough history yet


def _validate(method, accuracies, n=100):
    """One validation with the given per-modality accuracies."""
    method.correct.copy_(torch.tensor(accuracies) * n)
    method.seen.fill_(n)
    return method.on_validation_end({})


def test_learning_rates_after_an_accuracy_history():
    method = MSLR(_model(), MSLR.Hyperparameters(init_scales=[0.7, 1.3], window=2))
    optimizer = build_optimizer(method.param_groups(), OptimConfig(lr=0.01, schedule="constant"))
    schedule = LRSchedule(optimizer, OptimConfig(lr=0.01, schedule="constant"), max_epochs=10)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.007, 0.013, 0.01])
    for acc_a, acc_v in ((0.5, 0.4), (0.6, 0.4), (0.9, 0.2)):
        logs = _validate(method, [acc_a, acc_v])
    method.update_param_groups(optimizer.param_groups)
    schedule.refresh()
    want_a, want_v = 0.7 * 0.9 / ((0.5 + 0.6) / 2), 1.3 * 0.2 / ((0.4 + 0.4) / 2)
    assert logs["lr_scale/a"] == pytest.approx(want_a) and logs["lr_scale/v"] == pytest.approx(want_v)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.01 * want_a, 0.01 * want_v, 0.01])
    history = method.get_extra_state()["history"]
    assert history[0] == pytest.approx([0.5, 0.6, 0.9]) and history[1] == pytest.approx([0.4, 0.4, 0.2])


def test_groups_are_each_modality_branch_by_structure():
    model = _model()
    groups = MSLR(model).param_groups()
    for group, m in zip(groups, ("a", "v")):
        want = [*model.encoders[m].parameters(), *model.heads[m].parameters(), model.fusion.weights[m].weight]
        assert group["modality"] == m and [id(p) for p in group["params"]] == [id(p) for p in want]
    assert groups[2]["params"] == [model.fusion.bias] and groups[2]["lr_scale"] == 1.0


def test_branch_accuracy_is_that_of_each_linear_share():
    model = _model()
    method = MSLR(model)
    z = {"a": torch.randn(8, 4), "v": torch.randn(8, 4)}
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    method.on_validation_batch(ModelOutput(torch.zeros(8, 3), {}, z), y)
    logs = method.on_validation_end({})
    for m in ("a", "v"):
        W, b = model.fusion.weights[m].weight.tolist(), model.fusion.bias.tolist()
        hits = 0
        for i in range(8):
            share = [sum(z[m][i, d].item() * W[c][d] for d in range(4)) + b[c] / 2 for c in range(3)]
            # float64 loops against float32 kernels: their argmax agree only away from ties
            top, second = sorted(share)[::-1][:2]
            assert top - second > 1e-4, "a near-tie: pick other rows"
            hits += share.index(max(share)) == int(y[i])
        assert logs[f"val_accuracy/{m}"] == pytest.approx(hits / 8)
    assert float(method.seen) == 0  # counters reset for the next validation


def test_refusals():
    with pytest.raises(ConfigError, match="init_scales"):
        MSLR(_model(), MSLR.Hyperparameters(init_scales=[1.0]))
    with pytest.raises(ConfigError, match="decomposable"):
        MSLR(_model(fusion="sum"))


def test_the_live_optimizer_follows_the_scales_in_training(tmp_path):
    cfg = tiny_config("mslr", method__window=1, method__init_scales=[0.5, 2.0], optim__schedule="constant")
    L.seed_everything(0, verbose=False)
    data = build_data(cfg)
    module = BalanceModule(build_method(cfg, build_model(data, cfg)), cfg)
    _, (train_dl, val_dl, _) = loaders(data, cfg, 0)
    trainer = L.Trainer(max_epochs=2, num_sanity_val_steps=0, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(module, train_dl, val_dl)
    method, groups = module.method, trainer.optimizers[0].param_groups
    history = method.get_extra_state()["history"]
    assert [len(h) for h in history] == [2, 2]
    want = [init * h[1] / h[0] for init, h in zip((0.5, 2.0), history)]
    assert method.lr_scales.tolist() == pytest.approx(want, rel=1e-5)
    assert [g["lr"] for g in groups[:2]] == pytest.approx([cfg.optim.lr * s for s in want], rel=1e-5)
