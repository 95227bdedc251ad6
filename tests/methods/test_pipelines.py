"""Pipeline methods: ensemble combiners, Uni-Pre freezing/finetuning, stage resume."""

from __future__ import annotations

import json
import os

import pytest
import torch

from mmbalance import ConfigError, MLPEncoder, MultimodalModel
from mmbalance.methods import get_method
from mmbalance.training import train
from mmbalance.types import ModelOutput

from ..conftest import tiny_config


def _ensemble(combine, num_classes=3):
    model = MultimodalModel({"a": MLPEncoder(2, 2), "b": MLPEncoder(2, 2)}, num_classes)
    return get_method("ensemble")(model, get_method("ensemble").Hyperparameters(combine=combine))


def test_standardized_sum_by_hand():
    za = torch.tensor([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]])  # mean 2, std (unbiased) sqrt(0.8)
    zb = torch.tensor([[0.0, 0.0, 6.0], [0.0, 0.0, 0.0]])  # mean 1, std sqrt(36*5/6 ... ) below
    mean_b = 1.0
    std_b = (((0 - 1) ** 2 * 5 + (6 - 1) ** 2) / 5) ** 0.5
    expected = (za - 2.0) / 0.8 ** 0.5 + (zb - mean_b) / std_b
    out = ModelOutput(logits=torch.zeros(2, 3), unimodal_logits={"a": za, "b": zb}, features={})
    torch.testing.assert_close(_ensemble("standardized_sum").predict(out), expected)


def test_softmax_mean_and_bad_combiner():
    za, zb = torch.tensor([[0.0, 1.0, 2.0]]), torch.tensor([[2.0, 0.0, 0.0]])
    out = ModelOutput(logits=torch.zeros(1, 3), unimodal_logits={"a": za, "b": zb}, features={})
    torch.testing.assert_close(_ensemble("softmax_mean").predict(out), (za.softmax(-1) + zb.softmax(-1)) / 2)
    with pytest.raises(ConfigError, match="combine"):
        _ensemble("vote")


def _stage_state(path, part, modality):
    state = torch.load(path, weights_only=False)["state_dict"]
    prefix = f"method.model.{part}.{modality}."
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


@pytest.mark.parametrize("name,frozen", [("unipre_frozen", True), ("unipre_finetuned", False)])
def test_unipre_starts_from_stages(tmp_path, name, frozen):
    metrics = train(tiny_config(name), tmp_path)
    assert set(metrics["stages"]) == {"unimodal_x1", "unimodal_x2"}
    final = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    for m in ("x1", "x2"):
        stage = _stage_state(tmp_path / "stages" / f"unimodal_{m}" / "checkpoints" / "best.ckpt", "encoders", m)
        same = all(torch.equal(final[f"method.model.encoders.{m}.{k}"], v) for k, v in stage.items())
        assert same == frozen


def test_ensemble_combines_stage_models_and_resumes_at_its_stage(tmp_path):
    full = train(tiny_config("ensemble"), tmp_path / "full")
    assert full["stages"]["unimodal_x1"]["test"]["accuracy"] == pytest.approx(
        full["test"]["accuracy/x1"])  # the ensemble's head x1 is the stage's model
    run = tmp_path / "cut"
    train(tiny_config("ensemble"), run)
    # simulate a kill during stage 2: its metrics and the final result never got written
    (run / "stages" / "unimodal_x2" / "metrics.json").unlink()
    (run / "metrics.json").unlink()
    first = run / "stages" / "unimodal_x1" / "metrics.json"
    stamp = os.stat(first).st_mtime_ns
    resumed = train(tiny_config("ensemble"), run, resume=True)
    assert os.stat(first).st_mtime_ns == stamp  # finished stage skipped
    assert resumed["test"] == full["test"]
    assert json.loads((run / "metrics.json").read_text())["test"] == full["test"]
