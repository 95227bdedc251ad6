"""The regression task loss is a setting: ``model.regression_loss`` = ``mse`` (default) or
``l1`` (the authors' MOSI/MOSEI trainer). Expected values by hand."""

from __future__ import annotations

import pytest
import torch

from mmbalance.config import build_config
from mmbalance.errors import ConfigError
from mmbalance.methods import REGISTRY
from mmbalance.models import MultimodalModel
from mmbalance.training.build import build_method

# predictions 1, -2, 0.5 against labels 0, 1, 0.5: errors 1, -3, 0
PRED = torch.tensor([[1.0], [-2.0], [0.5]])
LABELS = torch.tensor([0.0, 1.0, 0.5])
MSE = (1 + 9 + 0) / 3  # 10/3
L1 = (1 + 3 + 0) / 3  # 4/3


def _regressor():
    encoders = {"a": torch.nn.Linear(2, 3), "b": torch.nn.Linear(2, 3)}
    return MultimodalModel(encoders, num_classes=1, feature_dims={"a": 3, "b": 3})


@pytest.mark.parametrize("loss, expected", [(None, MSE), ("mse", MSE), ("l1", L1)])
def test_task_loss_by_hand(loss, expected):
    overrides = {} if loss is None else {"model.regression_loss": loss}
    cfg = build_config("joint", "synthetic", overrides, REGISTRY["joint"].Hyperparameters)
    method = build_method(cfg, _regressor())
    assert method.regression_loss == (loss or "mse")
    assert method.task_loss(PRED, LABELS).item() == pytest.approx(expected)


def test_l1_gradient_is_the_sign_over_n():
    cfg = build_config("joint", "synthetic", {"model.regression_loss": "l1"}, REGISTRY["joint"].Hyperparameters)
    method = build_method(cfg, _regressor())
    pred = PRED.clone().requires_grad_(True)
    method.task_loss(pred, LABELS).backward()
    # d|e|/de = sign(e) / N; the zero error has gradient 0 in torch
    assert pred.grad.reshape(-1).tolist() == pytest.approx([1 / 3, -1 / 3, 0.0])


def test_classification_ignores_the_setting():
    cfg = build_config("joint", "synthetic", {"model.regression_loss": "l1"}, REGISTRY["joint"].Hyperparameters)
    encoders = {"a": torch.nn.Linear(2, 3), "b": torch.nn.Linear(2, 3)}
    method = build_method(cfg, MultimodalModel(encoders, num_classes=2, feature_dims={"a": 3, "b": 3}))
    logits = torch.tensor([[0.0, 0.0]])
    assert method.task_loss(logits, torch.tensor([1])).item() == pytest.approx(torch.log(torch.tensor(2.0)).item())


def test_unknown_value_fails():
    with pytest.raises(ConfigError, match="regression_loss"):
        build_config("joint", "synthetic", {"model.regression_loss": "huber"}, REGISTRY["joint"].Hyperparameters)
