"""``trainer.logger``: Lightning's loggers, stable scalar names, TensorBoard read
back, wandb offline without a network, one-line errors."""

from __future__ import annotations

import csv
import math
import re
import socket
from pathlib import Path

import pytest

from mmbalance.cli import main
from mmbalance.errors import ConfigError
from mmbalance.training import loggers
from mmbalance.training.run import train

from ..conftest import tiny_config


def test_unknown_logger_exits_2_with_one_line(tmp_path, capsys):
    out = tmp_path / "never"
    code = main(["train", "--data", "synthetic", "--method", "joint", "--set", "trainer.logger=neptune",
                 "--out", str(out)])
    lines = [l for l in capsys.readouterr().err.splitlines() if l.strip()]
    assert code == 2 and lines == ["error: trainer.logger 'neptune' is unknown; valid: csv, tensorboard, wandb, mlflow"]
    assert not out.exists()


@pytest.mark.parametrize("name,install", [("tensorboard", "pip install 'mmbalance[loggers]'"),
                                          ("wandb", "pip install wandb"), ("mlflow", "pip install mlflow")])
def test_a_missing_package_is_named_with_its_install_command(monkeypatch, name, install):
    monkeypatch.setattr(loggers.importlib.util, "find_spec", lambda package: None)
    with pytest.raises(ConfigError, match=re.escape(f"trainer.logger={name} needs the {name} package: {install}")):
        loggers.check_logger(name)
    loggers.check_logger("csv")  # needs nothing


def test_wandb_goes_offline_without_network_or_key(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc

    def unreachable(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(socket, "create_connection", unreachable)
    assert loggers.wandb_offline()                      # no key
    monkeypatch.setenv("WANDB_API_KEY", "k")
    assert loggers.wandb_offline()                      # a key, no network
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: socket.socket())
    assert not loggers.wandb_offline()                  # a key and the service answers
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert loggers.wandb_offline()                      # the user's choice wins
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.setattr(socket, "create_connection", unreachable)
    assert not loggers.wandb_offline()


def _csv_rows(run: Path):
    [path] = run.glob("logs/version_*/metrics.csv")
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


#: method -> scalars its TensorBoard events must hold (docs/logging.md lists them)
EXPECTED = {
    "mcr": ["train/loss", "train/task", "train/unimodal/x1", "train/unimodal/x2", "train/mipd", "train/contrastive",
            "train/ceb", "train/mipd/x1", "train/mipd/x2", "train/grad/mipd/x1", "train/grad_share/mipd/x1",
            "train/grad_share/task/x2", "train/grad_share/contrastive/x2", "val/accuracy", "val/accuracy/x1",
            "test/accuracy", "epoch"],
    "ogm_ge": ["train/loss", "train/task", "balance/coeff/x1", "balance/coeff/x2", "train/grad/task/x1",
               "train/grad_share/task/x1", "train/grad_share/task/x2", "val/accuracy", "test/accuracy/x2"],
}


@pytest.mark.parametrize("method", sorted(EXPECTED))
def test_tensorboard_events_hold_the_documented_scalars(tmp_path, method):
    pytest.importorskip("tensorboard", reason="tensorboard is not installed: pip install 'mmbalance[loggers]'")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    extra = {"method__init": "scratch"} if method == "mcr" else {}
    cfg = tiny_config(method, trainer__logger="tensorboard", trainer__log_term_grad_norms=True,
                      trainer__max_epochs=1, trainer__log_every_n_steps=2, **extra)
    train(cfg, tmp_path)
    [events] = tmp_path.glob("tensorboard/version_*")
    assert list(events.glob("events.out.tfevents.*"))
    acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert not set(EXPECTED[method]) - tags, sorted(tags)
    for tag in tags:
        assert all(math.isfinite(e.value) for e in acc.Scalars(tag)), tag
    for tag in (t for t in tags if t.startswith("train/grad_share/")):
        assert all(0.0 <= e.value <= 1.0 + 1e-6 for e in acc.Scalars(tag))
    rows = _csv_rows(tmp_path)  # the CSV (always written) holds the same values at the same steps
    for tag in ("train/loss", {"mcr": "train/mipd/x1", "ogm_ge": "balance/coeff/x1"}[method]):
        from_csv = [(int(r["step"]), float(r[tag])) for r in rows if r.get(tag)]
        from_tb = [(e.step, e.value) for e in acc.Scalars(tag)]
        assert [s for s, _ in from_tb] == [s for s, _ in from_csv] and from_csv
        assert [v for _, v in from_tb] == pytest.approx([v for _, v in from_csv], rel=1e-5)


def test_step_values_are_logged_only_in_the_steps_that_are_written(tmp_path, monkeypatch):
    """One ``self.log`` call costs about a small model's step, so the loop calls it only in
    the steps Lightning writes (every ``log_every_n_steps``): every call reaches the CSV, and
    the CSV still has a step row every ``log_every_n_steps`` steps."""
    from mmbalance.training.module import BalanceModule

    calls = []
    original = BalanceModule.log

    def counting(self, name, value, *args, **kwargs):
        if name == "train/loss":
            calls.append(self.global_step)
        return original(self, name, value, *args, **kwargs)

    monkeypatch.setattr(BalanceModule, "log", counting)
    cfg = tiny_config("ogm_ge", trainer__max_epochs=2, trainer__log_every_n_steps=3, trainer__patience=5)
    train(cfg, tmp_path)
    rows = [r for r in _csv_rows(tmp_path) if r.get("train/loss")]
    steps_per_epoch = math.ceil(0.7 * 300 / cfg.data.batch_size)  # TINY: 300 points, 70% train
    total = 2 * steps_per_epoch
    assert len(calls) == len(rows) == total // 3            # not one call per step
    assert [int(r["step"]) for r in rows] == [3 * k - 1 for k in range(1, total // 3 + 1)]
    assert all(r.get("balance/coeff/x1") for r in rows)     # the method's coefficients at the same steps
