"""The shared-head fusions: one head applied to every modality, the size check, projections."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mmbalance import ConfigError, MLPEncoder, MultimodalModel
from mmbalance.models.shared_head import SharedHead


def _model(fusion="shared_linear", dims=(6, 6, 6), **kw):
    torch.manual_seed(0)
    encoders = {f"m{i}": MLPEncoder(3 + i, d, 8, 1) for i, d in enumerate(dims)}
    x = {f"m{i}": torch.randn(5, 3 + i) for i in range(len(dims))}
    return MultimodalModel(encoders, 4, fusion=fusion, **kw), x


@pytest.mark.parametrize("fusion", ["shared_linear", "shared_mlp"])
def test_one_head_for_every_modality_and_the_sum_is_the_fused_output(fusion):
    model, x = _model(fusion, fusion_hidden=7)
    out = model(x)
    head = model.fusion.head
    for m in model.modalities:  # the SAME module on each modality's features
        torch.testing.assert_close(out.unimodal_logits[m], head(out.features[m]))
    torch.testing.assert_close(out.logits, sum(head(out.features[m]) for m in model.modalities))
    torch.testing.assert_close(model.fuse(out.features), out.logits)
    linear = [layer for layer in head if isinstance(layer, nn.Linear)]
    assert [tuple(layer.weight.shape) for layer in linear] == ([(4, 6)] if fusion == "shared_linear" else
                                                               [(7, 6), (4, 7)])
    assert list(model.fusion.modality_parameters("m0")) == []  # nothing of the fusion is one modality's


def test_unequal_sizes_without_projection_is_one_clear_error():
    with pytest.raises(ConfigError, match=r"equal feature sizes, got m0=6, m1=5: set model.shared_dim") as err:
        _model(dims=(6, 5))
    assert "\n" not in str(err.value)


def test_projection_lets_unequal_sizes_share_the_head():
    model, x = _model(dims=(6, 5, 3), shared_dim=4)
    out = model(x)
    fusion = model.fusion
    for m in model.modalities:
        proj = fusion.project[m]
        assert proj.weight.shape == (4, out.features[m].shape[1])
        expect = (out.features[m] @ proj.weight.t() + proj.bias) @ fusion.head[0].weight.t() + fusion.head[0].bias
        torch.testing.assert_close(out.unimodal_logits[m], expect)
    assert {id(p) for p in fusion.modality_parameters("m1")} == {id(p) for p in fusion.project["m1"].parameters()}


def test_sizes_known_only_after_the_first_batch():
    torch.manual_seed(0)
    model = MultimodalModel({"a": nn.Linear(3, 6), "b": nn.Linear(2, 6)}, 3, fusion="shared_linear")
    assert not model.materialized  # a placeholder: stand-in sizes differ, yet no error
    out = model({"a": torch.randn(4, 3), "b": torch.randn(4, 2)})
    assert model.fusion.head[0].weight.shape == (3, 6) and out.logits.shape == (4, 3)
    lazy = MultimodalModel({"a": nn.Linear(3, 6), "b": nn.Linear(2, 5)}, 3, fusion="shared_linear")
    with pytest.raises(ConfigError, match="a=6, b=5"):
        lazy({"a": torch.randn(4, 3), "b": torch.randn(4, 2)})


def test_use_fusion_swaps_in_a_shared_head_and_state_dicts_round_trip():
    model, x = _model("concat_linear")
    assert not model.shared_head
    model.use_fusion("shared_mlp")
    assert model.shared_head and isinstance(model.fusion, SharedHead)
    twin, _ = _model("shared_mlp")
    twin.load_state_dict(model.state_dict())
    torch.testing.assert_close(twin(x).logits, model(x).logits)
