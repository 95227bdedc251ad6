"""predictions.npz written where a run ends, and linear probes during training (A.1)."""

from __future__ import annotations

import json

import pytest
import torch

from mmbalance.analysis.predictions import load_predictions
from mmbalance.cli import main
from mmbalance.errors import ConfigError
from mmbalance.training.probe import fit_linear_probe, probe_callbacks

from ..conftest import tiny_config


@pytest.mark.parametrize("name", ["plain", "ensemble", "npz3"])
def test_predictions_match_the_reported_test_metrics(runs, name):
    metrics = json.loads((runs[name] / "metrics.json").read_text())
    preds = load_predictions(runs[name])
    assert preds.task == "classification" and preds.fused.shape[0] == preds.label.shape[0]
    assert preds.correct().mean() == pytest.approx(metrics["test"]["accuracy"], abs=1e-6)
    for m, logits in preds.unimodal.items():
        assert preds.unimodal_correct(m).mean() == pytest.approx(metrics["test"][f"accuracy/{m}"], abs=1e-6)


def test_probe_history_in_metrics_and_png(runs):
    probes = json.loads((runs["probe"] / "metrics.json").read_text())["probes"]
    assert probes["every"] == 1 and probes["metric"] == "accuracy"
    assert [h["epoch"] for h in probes["history"]] == [1, 2]  # after each of the 2 epochs
    for h in probes["history"]:
        assert set(h["probe"]) == {"x1", "x2"} and all(0.0 <= v <= 1.0 for v in h["probe"].values())
        assert 0.0 <= h["fused"] <= 1.0
    assert (runs["probe"] / "probes.png").stat().st_size > 0


def test_probes_stay_out_of_training(runs):
    """Same seed with and without probes: identical weights and metrics, bit for bit. Exact
    is legitimate: both runs trained in this process (the ``runs`` fixture, one thread) on
    the same batches, so through the same kernels; a probe that drew from the global RNG or
    touched the model would show."""
    with_p = torch.load(runs["probe"] / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    without = torch.load(runs["plain"] / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    assert with_p.keys() == without.keys()
    assert all(torch.equal(with_p[k], without[k]) for k in with_p)
    m1, m2 = (json.loads((runs[n] / "metrics.json").read_text()) for n in ("probe", "plain"))
    assert m1["test"] == m2["test"] and m1["val"] == m2["val"]


def test_fit_linear_probe_by_hand():
    x = torch.tensor([[0.0, 1.0], [0.1, 0.9], [1.0, 0.0], [0.9, 0.2], [-1.0, -1.0], [-0.8, -1.1]])
    y = torch.tensor([0, 0, 1, 1, 2, 2])
    probe = fit_linear_probe(x, y, 3)
    assert torch.equal(probe(x).argmax(-1), y)  # separable: all right
    w = torch.tensor([2.0, -1.0, 0.5])
    xr = torch.randn(50, 3, generator=torch.Generator().manual_seed(0))
    ridge = fit_linear_probe(xr, xr @ w + 3.0, 1, weight_decay=1e-8)
    assert torch.allclose(ridge(xr).reshape(-1), xr @ w + 3.0, atol=1e-3)


def test_probe_every_validated():
    assert probe_callbacks(tiny_config("joint"), None) == []
    with pytest.raises(ConfigError, match="probe_every"):
        probe_callbacks(tiny_config("joint", trainer__probe_every=-1), None)


def test_analyze_probes_cli_draws_the_ensemble_line(runs, tmp_path, capsys):
    assert main(["analyze", "probes", str(runs["probe"]), "--ensemble", str(runs["ensemble"]),
                 "--out", str(tmp_path)]) == 0
    assert "epoch   2" in capsys.readouterr().out and (tmp_path / "probes.png").stat().st_size > 0
    assert main(["analyze", "probes", str(runs["plain"]), "--out", str(tmp_path)]) == 2
    assert "no probe history" in capsys.readouterr().err
