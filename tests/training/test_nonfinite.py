"""The numerical guard: a non-finite loss stops the run naming the step and the term, or is
skipped and counted with trainer.skip_nonfinite; metrics.json never holds an unflagged NaN."""

from __future__ import annotations

import json
import math

import pytest
import torch

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


def test_nan_metric_is_flagged(tmp_path):
    import numpy as np
    n = 120
    path = tmp_path / "const.npz"  # constant inputs -> constant predictions -> undefined correlation
    np.savez(path, a=np.ones((n, 2), np.float32), b=np.ones((n, 2), np.float32),
             label=np.random.default_rng(0).normal(size=n).astype(np.float32))
    from mmbalance.config import build_config
    from mmbalance.methods import get_method
    cfg = build_config("joint", str(path), {"trainer.max_epochs": 1, "trainer.monitor": "mae",
                                            "trainer.progress": False, "optim.lr": 1e-12},
                       get_method("joint").Hyperparameters)
    metrics = train(cfg, tmp_path / "run")
    text = (tmp_path / "run" / "metrics.json").read_text()
    assert "NaN" not in text
    assert "test/corr" in metrics["nonfinite_metrics"] and json.loads(text)["test"]["corr"] is None
