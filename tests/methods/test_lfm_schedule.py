"""The step schedule (``optim.schedule=step``) that LFM's official CREMA-D run needs (SGD lr 1e-2,
StepLR(70, 0.1), configs/cremad/lfm.yaml): every epoch's learning rate against torch's own
``StepLR`` stepped after each epoch, a group's ``lr_scale`` kept, a checkpointed schedule
resuming at its epoch, and the refusals."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mmbalance.config import OptimConfig, build_config, load_yaml
from mmbalance.engine import LRSchedule, build_optimizer
from mmbalance.errors import ConfigError
from mmbalance.methods import get_method

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def _params():
    return [torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(3))]


def test_step_schedule_matches_torch_steplr_every_epoch():
    cfg = OptimConfig(name="sgd", lr=1e-2, momentum=0.9, weight_decay=1e-4, schedule="step", step_size=70,
                      step_gamma=0.1)
    a, b = _params()
    ours = build_optimizer([{"params": [a]}, {"params": [b], "lr_scale": 0.5}], cfg)
    schedule = LRSchedule(ours, cfg, max_epochs=200)
    ref = torch.optim.SGD([{"params": [torch.nn.Parameter(a.detach().clone())], "lr": 1e-2},
                           {"params": [torch.nn.Parameter(b.detach().clone())], "lr": 0.5e-2}], lr=1e-2)
    steplr = torch.optim.lr_scheduler.StepLR(ref, step_size=70, gamma=0.1)
    for epoch in range(200):
        got = [g["lr"] for g in ours.param_groups]
        want = [g["lr"] for g in ref.param_groups]
        assert got == pytest.approx(want, rel=1e-12), epoch
        ref.step()  # (no gradients: only the schedule matters)
        steplr.step()
        schedule.step()
    assert [g["lr"] for g in ours.param_groups] == pytest.approx([1e-4, 0.5e-4], rel=1e-12)  # 200 // 70 = 2 decays


def test_step_schedule_resumes_at_its_epoch():
    cfg = OptimConfig(name="sgd", lr=1.0, schedule="step", step_size=3, step_gamma=0.5)
    opt = build_optimizer([{"params": _params()}], cfg)
    schedule = LRSchedule(opt, cfg, max_epochs=20)
    for _ in range(7):
        schedule.step()
    state = schedule.state_dict()
    fresh = LRSchedule(build_optimizer([{"params": _params()}], cfg), cfg, max_epochs=20)
    assert fresh.optimizer.param_groups[0]["lr"] == 1.0
    fresh.load_state_dict(state)
    assert fresh.optimizer.param_groups[0]["lr"] == opt.param_groups[0]["lr"] == 0.25  # 7 // 3 = 2 decays


@pytest.mark.parametrize("key, value, match", [
    ("optim.step_size", 0, "optim.step_size is out of range: 0"),
    ("optim.step_gamma", 0.0, "optim.step_gamma is out of range: 0.0"),
    ("optim.schedule", "steps", "valid: cosine, constant, step"),
])
def test_bad_step_settings_are_refused_in_one_line(key, value, match):
    with pytest.raises(ConfigError, match=match):
        build_config("lfm", "synthetic", {key: value}, get_method("lfm").Hyperparameters)


def test_the_cremad_lfm_config_is_the_official_setting():
    cfg = build_config("lfm", "cremad", load_yaml(CONFIGS / "cremad" / "lfm.yaml"), get_method("lfm").Hyperparameters)
    o = cfg.optim
    assert (o.name, o.lr, o.momentum, o.weight_decay, o.schedule, o.step_size, o.step_gamma) == (
        "sgd", 1e-2, 0.9, 1e-4, "step", 70, 0.1)
    assert (cfg.data.batch_size, cfg.trainer.max_epochs, cfg.trainer.patience) == (64, 200, 0)
    assert cfg.hparams.weighting == "heuristic"
