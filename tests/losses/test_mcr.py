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


def _mcr_grads(strategy, detach_reference, subset):
    model, x, y = _model()
    loss = MCRLoss(strategy, mipd_weight=1.0, contrastive_weight=0, num_permutations=P,
                   detach_reference=detach_reference)
    loss.subsets = lambda modalities: [subset]
    out = model(x)
    torch.manual_seed(123)
    terms = loss(model, out, y)
    terms.total.backward()
    return terms.total.item(), {g: _flat(ps) for g, ps in _groups(model).items()}


def _plain_parts(subset):
    """Independent autograd: dJ/dtheta through the perturbed pass and through the reference."""
    model, x, y = _model()
    out = model(x)
    torch.manual_seed(123)
    perms, _ = sample_permutations(B, P, "all")
    flat = perms.reshape(-1)
    feats = {m: out.features[m][flat] if m in subset else out.features[m].repeat(P, 1) for m in ("a", "v")}
    groups = _groups(model)
    params = [p for ps in groups.values() for p in ps]

    def grads(value):
        g = torch.autograd.grad(value, params, allow_unused=True, retain_graph=True)
        g = [torch.zeros_like(p) if gi is None else gi for gi, p in zip(g, params)]
        out_, i = {}, 0
        for name, ps in groups.items():
            out_[name] = torch.cat([gi.reshape(-1) for gi in g[i:i + len(ps)]])
            i += len(ps)
        return out_

    perturbed = model.fuse(feats)
    reference = out.logits.repeat(P, 1)
    via_perturbed = grads(jensen_shannon(perturbed, reference.detach()))
    via_reference = grads(jensen_shannon(perturbed.detach(), reference))
    return via_perturbed, via_reference


@pytest.mark.parametrize("strategy", list(K))
@pytest.mark.parametrize("detach_reference", [False, True])
@pytest.mark.parametrize("subset", [("a",), ("v",)])
def test_gradients_match_routing(strategy, detach_reference, subset):
    _, got = _mcr_grads(strategy, detach_reference, subset)
    pert, ref = _plain_parts(subset)
    r = 0.0 if detach_reference or strategy == "greedy" else 1.0
    other = "v" if subset == ("a",) else "a"
    expected = {subset[0]: -(pert[subset[0]] + r * ref[subset[0]]),
                other: -(K[strategy] * pert[other] + r * ref[other]),
                "fusion": -(pert["fusion"] + r * ref["fusion"])}
    for group in expected:
        torch.testing.assert_close(got[group], expected[group], rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("subset", [("a",), ("v",)])
def test_signs_term_by_term(subset):
    pert, _ = _plain_parts(subset)  # ascending J means a step along -grad raises J: <grad, dJ> < 0
    own, other = subset[0], "v" if subset == ("a",) else "a"
    for strategy, k in K.items():
        _, got = _mcr_grads(strategy, True, subset)
        assert torch.dot(got[own], pert[own]) < 0, "the permuted encoder must ascend its own term"
        assert torch.dot(got["fusion"], pert["fusion"]) < 0, "the fusion network must ascend"
        other_dot = torch.dot(got[other], pert[other])
        if k > 0:
            assert other_dot < 0
        elif k == 0:
            assert torch.count_nonzero(got[other]) == 0
        else:
            assert other_dot > 0


@pytest.mark.parametrize("subset", [("a",), ("v",)])
def test_greedy_reference_gets_nothing(subset):
    _, live = _mcr_grads("greedy", False, subset)
    _, cut = _mcr_grads("greedy", True, subset)
    for group in live:
        torch.testing.assert_close(live[group], cut[group], rtol=0, atol=0)


def test_value_independent_of_strategy_and_linear_identity():
    values, grads = {}, {}
    for strategy in K:
        values[strategy], grads[strategy] = _mcr_grads(strategy, True, ("a",))
    assert values["collaborative"] == values["independent"] == values["greedy"]
    for group in ("a", "v"):
        torch.testing.assert_close(grads["collaborative"][group] + grads["greedy"][group],
                                   2 * grads["independent"][group], rtol=1e-5, atol=1e-8)


def test_no_reencoding_and_one_batched_fusion_pass_per_subset():
    model, x, y = _model()
    out = model(x)
    calls = {"enc": 0, "fuse_rows": []}
    for enc in model.encoders.values():
        enc.register_forward_hook(lambda *a: calls.__setitem__("enc", calls["enc"] + 1))
    model.fusion.register_forward_hook(lambda mod, inp, o: calls["fuse_rows"].append(o.shape[0]))
    MCRLoss(num_permutations=P, contrastive_weight=0).bind(model)(model, out, y)
    assert calls["enc"] == 0
    assert calls["fuse_rows"] == [B * P, B * P]  # subsets {a} and {v}, all B*P rows at once


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
    for subset, seen in zip(loss.subsets(model.modalities), fusion.inputs):
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
    loss.subsets = lambda modalities: [("a",)]
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
    loss.subsets = lambda modalities: [("a",)]
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
