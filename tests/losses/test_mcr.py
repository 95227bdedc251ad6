"""MCRLoss: gradient semantics of the game strategies term by term, batching, M modalities,
regression, perturbation kinds, edge cases and learnability."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from mmbalance import MCRLoss, MLPEncoder, MultimodalModel
from mmbalance.losses import jensen_shannon, sample_permutations

B, P = 6, 4
K = {"collaborative": 1.0, "independent": 0.0, "greedy": -1.0}


def _model(num_classes=3, seed=0):
    torch.manual_seed(seed)
    model = MultimodalModel({"a": MLPEncoder(5, 4, 6, 1), "v": MLPEncoder(7, 4, 6, 1)}, num_classes)
    x = {"a": torch.randn(B, 5), "v": torch.randn(B, 7)}
    return model, x, torch.tensor([0, 1, 2, 0, 1, 2])


def _groups(model):
    return {"a": list(model.encoders["a"].parameters()), "v": list(model.encoders["v"].parameters()),
            "fusion": list(model.fusion.parameters())}


def _flat(params):
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])


def test_value_independent_of_strategy():
    values = {}
    for strategy in K:
        model, x, y = _model()
        torch.manual_seed(123)
        values[strategy] = MCRLoss(strategy, mipd_weight=1.0, contrastive_weight=0, num_permutations=P)(
            model, model(x), y).total.item()
    assert values["collaborative"] == values["independent"] == values["greedy"]


def test_no_reencoding_and_one_batched_fusion_pass():
    torch.manual_seed(0)
    model = MultimodalModel({"a": MLPEncoder(5, 4, 6, 1), "v": MLPEncoder(7, 4, 6, 1)}, 3, fusion="concat_mlp")
    x, y = {"a": torch.randn(B, 5), "v": torch.randn(B, 7)}, torch.tensor([0, 1, 2, 0, 1, 2])
    out = model(x)
    calls = {"enc": 0, "fuse_rows": []}
    for enc in model.encoders.values():
        enc.register_forward_hook(lambda *a: calls.__setitem__("enc", calls["enc"] + 1))
    model.fusion.register_forward_hook(lambda mod, inp, o: calls["fuse_rows"].append(o.shape[0]))
    MCRLoss(num_permutations=P, contrastive_weight=0).bind(model)(model, out, y)
    assert calls["enc"] == 0
    assert calls["fuse_rows"] == [2 * B * P]  # subsets {a} and {v}: all 2*B*P rows in one call


class _Recorder(nn.Module):
    def __init__(self):
        super().__init__()
        self.inputs = []
        self.lin = nn.Linear(3, 2)

    def forward(self, feats):
        self.inputs.append({m: f.detach().clone() for m, f in feats.items()})
        return self.lin(torch.cat([feats["a"], feats["b"], feats["c"]], -1))


class _Identity(nn.Module):
    out_dim = 1

    def forward(self, x):
        return x


def test_m_modalities_subsets_share_one_permutation():
    fusion = _Recorder()
    model = MultimodalModel({m: _Identity() for m in "abc"}, 2, fusion=fusion)
    x = {m: torch.arange(5.0).unsqueeze(1) for m in "abc"}
    loss = MCRLoss(num_permutations=3, contrastive_weight=0)
    assert len(loss.subsets(model.modalities)) == 6  # 2^3 - 2
    assert MCRLoss(max_subset_size=1).subsets(model.modalities) == [("a",), ("b",), ("c",)]
    out = model(x)
    fusion.inputs.clear()
    loss(model, out, torch.tensor([0, 1, 0, 1, 0]))
    assert len(fusion.inputs) == 1  # every subset's rows in one fusion call
    rows = 5 * 3
    for i, subset in enumerate(loss.subsets(model.modalities)):
        seen = {m: v[i * rows:(i + 1) * rows] for m, v in fusion.inputs[0].items()}
        for m in "abc":
            if m in subset:
                torch.testing.assert_close(seen[m], seen[subset[0]])  # same permutation
            else:
                torch.testing.assert_close(seen[m], x[m].repeat(3, 1))  # untouched


def test_regression_uses_mse_between_predictions():
    model, x, _ = _model(num_classes=1)
    y = torch.randn(B)
    out = model(x)
    loss = MCRLoss(num_permutations=P, contrastive_weight=0, mipd_weight=0.5)
    loss.mipd.subsets = lambda modalities: [("a",)]
    torch.manual_seed(7)
    got = loss(model, out, y)
    torch.manual_seed(7)
    perms, _ = sample_permutations(B, P, "all")
    pred = model.fuse({"a": out.features["a"][perms.reshape(-1)], "v": out.features["v"].repeat(P, 1)})
    expected = -0.5 * ((pred - out.logits.repeat(P, 1)) ** 2).mean()
    assert got.terms["mipd"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_batch_of_one_is_zero_with_one_warning():
    model, x, y = _model()
    loss = MCRLoss(num_permutations=P)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):
            out = model({m: v[:1] for m, v in x.items()})
            terms = loss(model, out, y[:1])
            assert terms.terms["mipd"].item() == 0.0 and torch.isfinite(terms.total)
    assert sum("batch of 1" in str(w.message) for w in caught) == 1


def test_batch_of_two_and_single_class_and_zero_modality_are_finite():
    model, x, y = _model()
    for kind in ("all", "derangement", "different_label"):
        loss = MCRLoss(num_permutations=P, permutation=kind)
        out = model({m: v[:2] for m, v in x.items()})
        assert torch.isfinite(loss(model, out, y[:2]).total)
        out = model({"a": torch.zeros(B, 5), "v": x["v"]})
        terms = loss(model, out, torch.zeros(B, dtype=torch.long))
        terms.total.backward()
        assert torch.isfinite(terms.total)


@pytest.mark.parametrize("kind,encoder_calls", [("latent_noise", 0), ("latent_zero", 0),
                                                 ("input_noise", P), ("input_zero", 1)])
def test_ablation_perturbations(kind, encoder_calls):
    model, x, y = _model()
    out = model(x)
    calls = []
    model.encoders["a"].register_forward_hook(lambda *a: calls.append(1))
    loss = MCRLoss(num_permutations=P, perturbation=kind, contrastive_weight=0)
    loss.mipd.subsets = lambda modalities: [("a",)]
    terms = loss(model, out, y, inputs=x)
    assert len(calls) == encoder_calls and torch.isfinite(terms.total) and terms.terms["mipd"] < 0
    if kind == "latent_zero":
        pred = model.fuse({"a": torch.zeros_like(out.features["a"]), "v": out.features["v"]})
        assert terms.terms["mipd"].item() == pytest.approx(-0.1 * jensen_shannon(pred, out.logits).item(), rel=1e-5)
    if kind.startswith("input"):
        with pytest.raises(ValueError, match="inputs"):
            loss(model, out, y)


def test_bad_options_raise():
    from mmbalance import ConfigError
    for kwargs in ({"num_permutations": 0}, {"mipd_weight": -1.0}, {"strategy": "selfish"},
                   {"temperature": 0.0}, {"permutation": "rsl"}, {"perturbation": "dropout"}):
        with pytest.raises(ConfigError):
            MCRLoss(**kwargs)


def test_projections_when_feature_sizes_differ():
    torch.manual_seed(0)
    model = MultimodalModel({"a": MLPEncoder(5, 4, 6, 1), "v": MLPEncoder(7, 9, 6, 1)}, 3)
    loss = MCRLoss(num_permutations=2).bind(model)
    assert loss.projections["a"].out_features == loss.projections["v"].out_features == 4
    out = model({"a": torch.randn(B, 5), "v": torch.randn(B, 7)})
    assert torch.isfinite(loss(model, out, torch.tensor([0, 1, 2, 0, 1, 2])).total)


def test_learnability_total_falls_over_20_steps():
    model, x, y = _model()
    loss = MCRLoss(num_permutations=8, ceb_weight=1.0).bind(model)
    opt = torch.optim.Adam(list(model.parameters()) + list(loss.parameters()), lr=0.01)
    totals = []
    for _ in range(20):
        opt.zero_grad()
        terms = loss(model, model(x), y)
        terms.total.backward()
        opt.step()
        totals.append(terms.total.item())
    assert totals[-1] < totals[0] - 0.1
    assert sum(totals[-3:]) / 3 < sum(totals[:3]) / 3
