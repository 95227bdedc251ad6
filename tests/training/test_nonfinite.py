"""The numerical guard: a non-finite loss stops the run naming the step and the term, or is
skipped and counted with trainer.skip_nonfinite; metrics.json never holds an unflagged NaN."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torchmetrics

from mmbalance import NonFiniteLossError
from mmbalance.cli import main
from mmbalance.methods import REGISTRY, Method
from mmbalance.training import train
from mmbalance.types import LossTerms

from ..conftest import tiny_config


class _Exploding(Method):
    """Joint training whose 'boom' term turns NaN from the third step on."""

    name = "exploding"
    description = "test-only"

    def __init__(self, model, hparams=None):
        super().__init__(model, hparams)
        self.calls = 0

    def training_loss(self, batch, out):
        self.calls += 1
        boom = torch.tensor(float("nan") if self.calls >= 3 else 0.0)
        return LossTerms.from_terms({"task": self.task_loss(out.logits, batch.labels), "boom": boom})


@pytest.fixture
def exploding(monkeypatch):
    monkeypatch.setitem(REGISTRY, "exploding", _Exploding)


def test_stops_naming_step_and_term(exploding, tmp_path):
    cfg = tiny_config("joint")
    cfg.method = "exploding"
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss at step 2 .*term 'boom' is nan"):
        train(cfg, tmp_path)


def test_cli_exit_2_one_line(exploding, tmp_path, capsys):
    code = main(["train", "--data", "synthetic", "--method", "exploding", "--set", "data.n=300",
                 "trainer.progress=false", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: non-finite loss at step 2") and err.count("\n") == 1


def test_skip_nonfinite_counts(exploding, tmp_path):
    cfg = tiny_config("joint", trainer__skip_nonfinite=True)
    cfg.method = "exploding"
    metrics = train(cfg, tmp_path)
    steps_per_epoch = math.ceil(210 / 16)  # 70% of 300 train rows, batch 16
    assert metrics["nonfinite_steps"] == 2 * steps_per_epoch - 2
    assert json.loads((tmp_path / "metrics.json").read_text())["nonfinite_steps"] == metrics["nonfinite_steps"]


class _Undefined(torchmetrics.Metric):
    """A metric whose value is NaN by construction (as Pearson's correlation of a constant
    prediction is): the flagging is tested without relying on any kernel's rounding."""

    def __init__(self):
        super().__init__()
        self.add_state("count", default=torch.tensor(0.0), dist_reduce_fx="sum")

    def update(self, preds, target):
        self.count += target.shape[0]

    def compute(self):
        return self.count * float("nan")


def test_nan_metric_is_flagged(tmp_path, monkeypatch):
    from mmbalance.training import module
    planted = module._metrics

    def with_undefined(task, num_classes):
        metrics = planted(task, num_classes)
        metrics.add_metrics({"undefined": _Undefined()})
        return metrics

    monkeypatch.setattr(module, "_metrics", with_undefined)
    metrics = train(tiny_config("joint", trainer__max_epochs=1), tmp_path / "run")
    text = (tmp_path / "run" / "metrics.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    written = json.loads(text)
    for split in ("val", "test"):
        assert f"{split}/undefined" in metrics["nonfinite_metrics"] and written[split]["undefined"] is None
        assert math.isfinite(written[split]["accuracy"])  # only the non-finite value is replaced
    # the fused prediction's and each modality head's value, on both splits (validation logs
    # them as 0.0 for the monitor; metrics.json must not hold that false 0)
    assert sorted(written["nonfinite_metrics"]) == sorted(f"{split}/undefined{head}" for split in ("val", "test")
                                                          for head in ("", "/x1", "/x2"))
