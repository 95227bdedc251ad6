"""MultimodalModel and fusions: shapes, the concat-linear decomposition, parameters by structure."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mmbalance import ConfigError, MLPEncoder, MultimodalModel
from mmbalance.models import FUSIONS


def _model(fusion="concat_linear", m=2, num_classes=4):
    torch.manual_seed(0)
    encoders = {f"m{i}": MLPEncoder(3 + i, 5 + i, 8, 1) for i in range(m)}
    x = {f"m{i}": torch.randn(6, 3 + i) for i in range(m)}
    return MultimodalModel(encoders, num_classes, fusion=fusion), x


@pytest.mark.parametrize("fusion", list(FUSIONS))
@pytest.mark.parametrize("m", [2, 3])
def test_output_shapes_for_every_fusion(fusion, m):
    model, x = _model(fusion, m)
    out = model(x)
    assert out.logits.shape == (6, 4)
    assert set(out.unimodal_logits) == set(out.features) == set(x)
    for i in range(m):
        assert out.features[f"m{i}"].shape == (6, 5 + i) and out.unimodal_logits[f"m{i}"].shape == (6, 4)
    torch.testing.assert_close(model.fuse(out.features), out.logits)
    perm = torch.randperm(6).repeat(3)  # fuse accepts any number of rows (B*P permuted rows)
    assert model.fuse({k: v[perm] for k, v in out.features.items()}).shape == (18, 4)


def test_concat_linear_is_one_linear_layer_and_contributions_sum():
    model, x = _model("concat_linear", 3)
    out = model(x)
    fusion = model.fusion
    weight = torch.cat([fusion.weights[m].weight for m in model.modalities], dim=1)
    concat = torch.cat([out.features[m] for m in model.modalities], dim=1)
    torch.testing.assert_close(out.logits, concat @ weight.t() + fusion.bias)
    parts = fusion.contributions(out.features)
    torch.testing.assert_close(sum(parts.values()), out.logits)
    torch.testing.assert_close(parts["m1"], out.features["m1"] @ fusion.weights["m1"].weight.t() + fusion.bias / 3)


def test_modality_parameters_by_structure():
    model, _ = _model()
    ids = {id(p) for p in model.modality_parameters("m0")}
    assert ids == {id(p) for p in model.encoders["m0"].parameters()}
    assert not ids & {id(p) for p in model.modality_parameters("m1")}
    assert {id(p) for p in model.head_parameters("m1")} == {id(p) for p in model.heads["m1"].parameters()}
    assert {id(p) for p in model.fusion.modality_parameters("m1")} == {id(model.fusion.weights["m1"].weight)}


def test_regression_and_custom_fusion():
    model, x = _model(num_classes=1)
    assert model.task == "regression" and model(x).logits.shape == (6, 1)

    class MeanFusion(nn.Module):
        def forward(self, feats):
            return torch.stack([f[:, :2] for f in feats.values()]).mean(0)

    model = MultimodalModel({"a": MLPEncoder(3, 4), "b": MLPEncoder(2, 4)}, 2, fusion=MeanFusion())
    out = model({"a": torch.randn(5, 3), "b": torch.randn(5, 2)})
    torch.testing.assert_close(out.logits, (out.features["a"][:, :2] + out.features["b"][:, :2]) / 2)


def test_bad_construction():
    with pytest.raises(ConfigError, match="at least 2"):
        MultimodalModel({"a": MLPEncoder(3, 4)}, 2)
    with pytest.raises(ConfigError, match="unknown fusion"):
        MultimodalModel({"a": MLPEncoder(3, 4), "b": MLPEncoder(3, 4)}, 2, fusion="attention")
    lazy = MultimodalModel({"a": nn.Identity(), "b": MLPEncoder(3, 4)}, 2)  # D_a from the first batch
    assert lazy({"a": torch.randn(2, 3), "b": torch.randn(2, 3)}).features["a"].shape == (2, 3)
    model = MultimodalModel({"a": nn.Identity(), "b": MLPEncoder(3, 4)}, 2, feature_dims={"a": 3})
    with pytest.raises(KeyError, match="lack"):
        model({"a": torch.randn(2, 3)})
