"""UME (Du et al., ICML 2023): the logit mean by hand for three modalities, the ensemble's
combiners reused unchanged, nothing trained jointly, the search space, and a run through
``mmbalance train`` on a three-modality .npz whose fused test prediction is the mean of
its stage models' logits."""

from __future__ import annotations

import json

import numpy as np
import optuna
import pytest
import torch

from mmbalance.cli import main
from mmbalance.engine.rundir import RunDir
from mmbalance.errors import ConfigError
from mmbalance.methods import UME, Ensemble, get_method
from mmbalance.methods.hparams import choice, searched
from mmbalance.methods.pipeline import unimodal_stages
from mmbalance.models import MLPEncoder, MultimodalModel
from mmbalance.types import ModelOutput

NAMES = ("a", "v", "t")


def _model(num_classes=2):
    torch.manual_seed(0)
    return MultimodalModel({m: MLPEncoder(2, 2, hidden=3, layers=1) for m in NAMES}, num_classes)


def _out(**logits):
    first = next(iter(logits.values()))
    return ModelOutput(torch.zeros_like(first), dict(logits), {})


def test_defaults_search_space_and_stages_and_the_ensemble_default_unchanged():
    assert UME.hyperparameter_defaults() == {"combine": "logit_mean", "init": "unimodal", "encoder_lr_scale": 0.1,
                                             "stage_lr": None}
    assert Ensemble.hyperparameter_defaults()["combine"] == "standardized_sum"
    assert searched(UME.Hyperparameters) == {"combine": choice(("logit_mean", "standardized_sum", "softmax_mean"))}
    fixed = optuna.trial.FixedTrial({"optim.lr": 1e-3, "method.combine": "softmax_mean"})
    assert UME.search_space(fixed) == {"optim.lr": 1e-3, "method.combine": "softmax_mean"}
    assert UME.stages(list(NAMES)) == unimodal_stages(NAMES) and not UME.trains_final


def test_logit_mean_by_hand_three_modalities():
    method = UME(_model())
    za = torch.tensor([[3.0, 0.0], [0.0, 0.0]])
    zv = torch.tensor([[0.0, 1.5], [-3.0, 3.0]])
    zt = torch.tensor([[0.0, 0.0], [0.0, 1.5]], dtype=torch.float16)
    want = torch.tensor([[1.0, 0.5], [-1.0, 1.5]])  # (za + zv + zt) / 3, entry by entry
    got = method.predict(_out(a=za, v=zv, t=zt))
    assert got.dtype == torch.float32 and torch.equal(got, want)
    # a sample's prediction does not depend on the rest of its batch (unlike standardized_sum)
    assert torch.equal(method.predict(_out(a=za[:1], v=zv[:1], t=zt[:1])), want[:1])


def test_the_ensembles_combiners_are_reused_and_a_bad_one_is_refused():
    gen = torch.Generator().manual_seed(1)
    out = _out(**{m: torch.randn(4, 2, generator=gen) for m in NAMES})
    for combine in ("standardized_sum", "softmax_mean"):
        ume = UME(_model(), UME.Hyperparameters(combine=combine))
        ens = Ensemble(_model(), Ensemble.Hyperparameters(combine=combine))
        assert torch.equal(ume.predict(out), ens.predict(out))
    reg = UME(_model(num_classes=1))
    got = reg.predict(_out(a=torch.tensor([[1.0]]), v=torch.tensor([[2.0]]), t=torch.tensor([[6.0]])))
    assert torch.equal(got, torch.tensor([[3.0]]))
    with pytest.raises(ConfigError) as err:
        UME(_model(), UME.Hyperparameters(combine="vote"))
    assert str(err.value) == "method.combine 'vote' is unknown; valid: logit_mean, standardized_sum, softmax_mean"
    with pytest.raises(ConfigError, match="method 'ume': method.init 'scratch' is not possible"):
        UME(_model(), UME.Hyperparameters(init="scratch"))


def test_nothing_is_trained_jointly():
    method = UME(_model())
    assert method.param_groups() == [] and method.optimizer_groups() == []
    with pytest.raises(RuntimeError, match="not trained jointly"):
        method.training_loss(None, None)


def test_trains_on_three_modalities_and_predicts_the_mean_of_its_stages(tmp_path):
    rng = np.random.default_rng(0)
    n = 90
    label = np.arange(n) % 3
    arrays = {m: (rng.normal(size=(n, d)) + label[:, None] * 0.5).astype(np.float32)
              for m, d in (("audio", 4), ("video", 3), ("text", 5))}
    np.savez(tmp_path / "three.npz", label=label, **arrays)
    assert main(["train", "--data", str(tmp_path / "three.npz"), "--method", "ume", "--set", "trainer.max_epochs=2",
                 "--set", "trainer.progress=false", "--set", "model.hidden=8", "--set", "model.feature_dim=4",
                 "--out", str(tmp_path / "run")]) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["method"] == "ume" and sorted(metrics["stages"]) == ["unimodal_audio", "unimodal_text",
                                                                          "unimodal_video"]
    pred = RunDir(tmp_path / "run").read_predictions()
    mean = np.mean([pred.unimodal[m] for m in ("audio", "video", "text")], axis=0)
    np.testing.assert_allclose(pred.fused, mean, rtol=1e-6, atol=1e-6)
    assert metrics["test"]["accuracy"] == pytest.approx(float((mean.argmax(-1) == pred.label).mean()))
    assert get_method("ume") is UME
