"""The one path for dropping modalities (``MultimodalModel.forward_dropped``): zeroed
features or zeroed inputs against hand computation on linear encoders, the concat-linear
identity (a dropped feature removes its weight block's product, the bias stays), the
difference between the two paths, the OPM scale, and where gradients flow."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mmbalance.errors import ConfigError
from mmbalance.models import MultimodalModel
from mmbalance.models.multimodal import DROPS

NAMES = ("a", "b", "c")
IN = {"a": 3, "b": 2, "c": 4}
D = {"a": 2, "b": 3, "c": 2}
B, C = 4, 3


def _model(seed=0, fusion="concat_linear"):
    torch.manual_seed(seed)
    encoders = {m: nn.Linear(IN[m], D[m]) for m in NAMES}
    return MultimodalModel(encoders, C, fusion=fusion, feature_dims=D)


def _inputs(seed=1):
    gen = torch.Generator().manual_seed(seed)
    return {m: torch.randn(B, IN[m], generator=gen) for m in NAMES}


KEEP = torch.tensor([[1, 1, 1], [0, 1, 1], [1, 0, 0], [0, 1, 0]], dtype=torch.bool)


def _by_hand(model, x, keep, how, scale=1.0):
    """Fused (B, C) logits written out sample by sample and modality by modality."""
    rows = []
    for i in range(B):
        z = model.fusion.bias.clone()
        for j, m in enumerate(NAMES):
            enc, w = model.encoders[m], model.fusion.weights[m].weight
            if how == "feature":
                h = (enc.weight @ x[m][i] + enc.bias) if keep[i, j] else torch.zeros(D[m])
            else:
                h = enc.weight @ (x[m][i] if keep[i, j] else torch.zeros(IN[m])) + enc.bias
            z = z + w @ (scale * h)
        rows.append(z)
    return torch.stack(rows)


def test_drops_and_keep_forms():
    assert DROPS == ("feature", "input")
    model = _model()
    assert torch.equal(model.keep_mask(KEEP, B), KEEP)
    assert torch.equal(model.keep_mask(KEEP.int(), B), KEEP)
    names = model.keep_mask({"a", "c"}, B)
    assert torch.equal(names, torch.tensor([[True, False, True]] * B))
    assert torch.equal(model.keep_mask("b", 2), torch.tensor([[False, True, False]] * 2))
    mapping = model.keep_mask({"b": torch.tensor([1, 0, 1, 0]).bool(), "c": False}, B)
    assert torch.equal(mapping, torch.tensor([[1, 1, 0], [1, 0, 0], [1, 1, 0], [1, 0, 0]]).bool())
    with pytest.raises(ValueError, match=r"expected \(4, 3\)"):
        model.keep_mask(KEEP[:, :2], B)
    with pytest.raises(KeyError, match="'d'"):
        model.keep_mask({"a", "d"}, B)


@pytest.mark.parametrize("how", DROPS)
@pytest.mark.parametrize("scale", [1.0, 1.6])
def test_fused_logits_by_hand(how, scale):
    model, x = _model(), _inputs()
    out = model.forward_dropped(x, KEEP, how=how, scale=scale)
    assert torch.allclose(out.logits, _by_hand(model, x, KEEP, how, scale), atol=1e-6)
    for m in NAMES:  # the heads see the features that were fused
        assert torch.allclose(out.unimodal_logits[m], model.heads[m](out.features[m]), atol=1e-7)


def test_all_kept_is_the_plain_forward():
    model, x = _model(), _inputs()
    full = model(x)
    for how in DROPS:
        out = model.forward_dropped(x, set(NAMES), how=how)
        assert torch.equal(out.logits, full.logits)
        assert all(torch.equal(out.features[m], full.features[m]) for m in NAMES)


def test_dropped_feature_removes_its_weight_block_and_keeps_the_bias():
    model, x = _model(), _inputs()
    full = model(x)
    products = model.fusion.modality_logits(full.features)  # z_m W_m^T, no bias
    dropped = model.fuse(model.drop_features(full.features, KEEP))
    want = full.logits - sum((~KEEP[:, j:j + 1]).float() * products[m] for j, m in enumerate(NAMES))
    assert torch.allclose(dropped, want, atol=1e-6)
    # a sample with every modality dropped gets the bias alone
    none = model.fuse(model.drop_features(full.features, torch.zeros(B, 3, dtype=torch.bool)))
    assert torch.allclose(none, model.fusion.bias.expand(B, C))


def test_input_and_feature_paths_differ_by_the_encoder_bias_of_dropped_pairs():
    model, x = _model(), _inputs()
    by_feature = model.forward_dropped(x, KEEP, how="feature")
    by_input = model.forward_dropped(x, KEEP, how="input")
    gap = torch.stack([sum(model.fusion.weights[m].weight @ model.encoders[m].bias
                           for j, m in enumerate(NAMES) if not KEEP[i, j]) + torch.zeros(C) for i in range(B)])
    assert torch.allclose(by_input.logits - by_feature.logits, gap, atol=1e-6)
    assert not torch.allclose(by_input.logits, by_feature.logits)
    assert torch.equal(by_feature.logits[0], by_input.logits[0])  # sample 0 keeps everything
    for j, m in enumerate(NAMES):
        assert torch.equal(by_feature.features[m][~KEEP[:, j]], torch.zeros(int((~KEEP[:, j]).sum()), D[m]))
        assert torch.allclose(by_input.features[m][~KEEP[:, j]], model.encoders[m].bias.expand(
            int((~KEEP[:, j]).sum()), D[m]))


def test_inputs_are_zeroed_only_where_dropped_and_kept_modalities_pass_untouched():
    model, x = _model(), _inputs()
    zeroed = model.drop_inputs(x, {"b": torch.tensor([True, False, True, True])})
    assert zeroed["a"] is x["a"] and zeroed["c"] is x["c"]
    assert torch.equal(zeroed["b"][1], torch.zeros(2)) and torch.equal(zeroed["b"][[0, 2, 3]], x["b"][[0, 2, 3]])
    seq = model.drop_inputs({**x, "a": torch.randn(B, 5, 3)}, KEEP)["a"]  # any rank: whole rows
    assert torch.equal(seq[1], torch.zeros(5, 3)) and seq[0].abs().sum() > 0


def test_gradients_flow_only_through_kept_modalities():
    model, x = _model(), _inputs()
    keep = {"a", "c"}  # b dropped for every sample
    model.forward_dropped(x, keep, how="feature").logits.pow(2).sum().backward()
    for p in list(model.encoders["b"].parameters()) + list(model.fusion.weights["b"].parameters()):
        assert torch.equal(p.grad, torch.zeros_like(p))
    for m in ("a", "c"):
        assert all(p.grad.abs().sum() > 0 for p in model.encoders[m].parameters())
    model.zero_grad(set_to_none=True)
    model.forward_dropped(x, keep, how="input").logits.pow(2).sum().backward()
    enc = model.encoders["b"]  # zero input: no gradient for its weights, its bias still reaches the fusion
    assert torch.equal(enc.weight.grad, torch.zeros_like(enc.weight))
    assert enc.bias.grad.abs().sum() > 0 and model.fusion.weights["b"].weight.grad.abs().sum() > 0

    for how in DROPS:  # per sample: a dropped (sample, modality) pair sends no gradient to its input
        xs = {m: v.clone().requires_grad_() for m, v in x.items()}
        model.forward_dropped(xs, KEEP, how=how).logits.pow(2).sum().backward()
        for j, m in enumerate(NAMES):
            assert torch.equal(xs[m].grad[~KEEP[:, j]], torch.zeros_like(xs[m][~KEEP[:, j]])), (how, m)
            assert (xs[m].grad[KEEP[:, j]].abs().sum(1) > 0).all(), (how, m)


def test_scale_multiplies_the_feature_and_its_gradient():
    model, x = _model(), _inputs()
    feats = {m: f.detach().requires_grad_() for m, f in model(x).features.items()}
    scaled = model.drop_features(feats, KEEP, scale=2.5)
    for j, m in enumerate(NAMES):
        assert torch.allclose(scaled[m], 2.5 * feats[m] * KEEP[:, j:j + 1])
    sum(v.sum() for v in scaled.values()).backward()
    for j, m in enumerate(NAMES):
        assert torch.equal(feats[m].grad, 2.5 * KEEP[:, j:j + 1].float().expand(B, D[m]))


def test_any_fusion_and_clear_errors():
    model, x = _model(fusion="concat_mlp"), _inputs()
    out = model.forward_dropped(x, KEEP)
    want = model.fuse({m: model.encoders[m](x[m]) * KEEP[:, j:j + 1] for j, m in enumerate(NAMES)})
    assert torch.allclose(out.logits, want, atol=1e-6)
    with pytest.raises(ConfigError, match="unknown drop 'raw'; valid: feature, input"):
        model.forward_dropped(x, KEEP, how="raw")
    with pytest.raises(ConfigError, match="cannot zero the input of modality 'a'.*how='feature'"):
        model.drop_inputs({**x, "a": [1, 2, 3, 4]}, KEEP)
