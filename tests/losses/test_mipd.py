"""MIPD gradient routing against an independent implementation of the authors' detach-copy
formulas, parameter group by parameter group, and the decomposed path against
the generic one."""

from __future__ import annotations

import itertools

import pytest
import torch

from mmbalance import MIPD, MLPEncoder, MultimodalModel
from mmbalance.losses import jensen_shannon, sample_permutations

B, P = 6, 4
STRATEGIES = ("collaborative", "independent", "greedy")


def _model(modalities="av", fusion="concat_linear", num_classes=3, seed=0):
    torch.manual_seed(seed)
    sizes = {m: 5 + i for i, m in enumerate(modalities)}
    model = MultimodalModel({m: MLPEncoder(d, 4, 6, 1) for m, d in sizes.items()}, num_classes, fusion=fusion,
                            fusion_hidden=8)
    x = {m: torch.randn(B, d) for m, d in sizes.items()}
    return model, x, torch.tensor([0, 1, 2, 0, 1, 2])


def _groups(model):
    """Every parameter group the routing rule names: each encoder, each fusion slice W_m
    (linear fusion), and the shared fusion parameters."""
    groups = {f"enc_{m}": list(model.encoders[m].parameters()) for m in model.modalities}
    if model.fusion.decomposable:
        groups.update({f"W_{m}": list(model.fusion.weights[m].parameters()) for m in model.modalities})
        groups["shared"] = [model.fusion.bias]
    else:
        groups["shared"] = list(model.fusion.parameters())
    return groups


def _grads(model):
    return {g: torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in ps])
            for g, ps in _groups(model).items()}


def _subsets(modalities, max_size=None):
    largest = len(modalities) - 1 if max_size is None else min(max_size, len(modalities) - 1)
    return [s for r in range(1, largest + 1) for s in itertools.combinations(modalities, r)]


def _authors_loss(model, out, perm, strategy, subsets, detach_reference=False):
    """The authors' formulas written out: for each subset S a perturbed prediction in which
    a detach flag detaches a modality's PRODUCT z_m W_m^T (linear fusion; the bias stays live)
    or its features (non-decomposable fusion; every fusion layer stays live).

    greedy:        sum_S -J(S, det(not S)) + J(S, det(S))
    independent:   sum_S -J(S, det(not S))
    collaborative: sum_S -J(S)
    """
    feats, fusion = out.features, model.fusion
    reference = out.logits.detach() if detach_reference else out.logits

    def prediction(subset, detached):
        rows = {m: feats[m][perm] if m in subset else feats[m].repeat(P, 1) for m in model.modalities}
        if fusion.decomposable:
            logits = fusion.bias
            for m in model.modalities:
                product = rows[m] @ fusion.weights[m].weight.t()
                logits = logits + (product.detach() if m in detached else product)
            return logits
        return fusion({m: z.detach() if m in detached else z for m, z in rows.items()})

    def J(subset, detached=()):
        return jensen_shannon(prediction(subset, set(detached)), reference.repeat(P, 1))

    total = 0.0
    for s in subsets:
        others = [m for m in model.modalities if m not in s]
        if strategy == "greedy":
            total = total - J(s, others) + J(s, s)
        elif strategy == "independent":
            total = total - J(s, others)
        else:
            total = total - J(s)
    return total


def _routed(strategy, fusion="concat_linear", modalities="av", max_size=None, detach_reference=False,
            ours=True, **kwargs):
    model, x, y = _model(modalities, fusion)
    out = model(x)
    torch.manual_seed(123)
    if ours:
        mipd = MIPD(strategy, weight=1.0, num_permutations=P, max_subset_size=max_size,
                    detach_reference=detach_reference, **kwargs)
        value = mipd(model, out, y)
    else:
        perm = sample_permutations(B, P, "all")[0].reshape(-1)
        value = _authors_loss(model, out, perm, strategy, _subsets(model.modalities, max_size), detach_reference)
    value.backward()
    return value.item(), _grads(model)


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("fusion", ["concat_linear", "concat_mlp"])
@pytest.mark.parametrize("detach_reference", [False, True])
def test_two_modalities_match_authors_formulas(strategy, fusion, detach_reference):
    _, got = _routed(strategy, fusion, detach_reference=detach_reference)
    _, want = _routed(strategy, fusion, detach_reference=detach_reference, ours=False)
    for group in want:
        torch.testing.assert_close(got[group], want[group], rtol=1e-5, atol=1e-7, msg=group)


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("fusion", ["concat_linear", "concat_mlp"])
@pytest.mark.parametrize("max_size", [None, 1])
def test_three_modalities_match_authors_formulas(strategy, fusion, max_size):
    _, got = _routed(strategy, fusion, "avt", max_size)
    _, want = _routed(strategy, fusion, "avt", max_size, ours=False)
    for group in want:
        torch.testing.assert_close(got[group], want[group], rtol=1e-5, atol=1e-7, msg=group)


def test_greedy_shared_parts_get_nothing():
    for fusion in ("concat_linear", "concat_mlp"):
        _, got = _routed("greedy", fusion)
        assert torch.count_nonzero(got["shared"]) == 0
        assert all(torch.count_nonzero(g) > 0 for name, g in got.items() if name != "shared")


def test_features_routing_differs_exactly_where_the_audit_found():
    """The routing before this change (``routing="features"``) differs from the authors' in
    6 of the 24 two-modality groups: greedy linear W_a, W_v, bias; independent linear W_a,
    W_v; greedy MLP, the shared MLP."""
    differing = set()
    for strategy, fusion in itertools.product(STRATEGIES, ["concat_linear", "concat_mlp"]):
        _, authors = _routed(strategy, fusion)
        _, features = _routed(strategy, fusion, routing="features")
        for group in authors:
            if not torch.allclose(authors[group], features[group], rtol=1e-5, atol=1e-7):
                differing.add((strategy, fusion, group))
    assert differing == {("greedy", "concat_linear", "W_a"), ("greedy", "concat_linear", "W_v"),
                         ("greedy", "concat_linear", "shared"), ("independent", "concat_linear", "W_a"),
                         ("independent", "concat_linear", "W_v"), ("greedy", "concat_mlp", "shared")}


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("modalities", ["av", "avt"])
@pytest.mark.parametrize("kind", ["all", "derangement", "different_label"])
def test_decomposed_path_equals_generic_path(strategy, modalities, kind):
    _assert_same_value_and_gradients(modalities, *[dict(strategy=strategy, permutation=kind, decompose=d)
                                                   for d in (True, False)])


def _assert_same_value_and_gradients(modalities, *options):
    """Each MIPD built from ``options`` on the same model, batch and permutations gives the
    same value and the same gradient of every parameter group (to 1e-6)."""
    results = []
    for kwargs in options:
        model, x, y = _model(modalities)
        out = model(x)
        torch.manual_seed(5)
        value = MIPD(weight=1.0, num_permutations=P, **kwargs)(model, out, y)
        value.backward()
        results.append((value.item(), _grads(model)))
    (v1, g1), (v2, g2) = results
    assert v1 == pytest.approx(v2, abs=1e-6)
    for group in g1:
        torch.testing.assert_close(g1[group], g2[group], rtol=0, atol=1e-6, msg=group)


def test_decomposed_path_calls_no_fusion_forward():
    # the generic path routes W_m differently per subset, so it fuses each subset's B*P rows
    for decompose, calls_expected in ((True, []), (False, [B * P, B * P])):
        model, x, y = _model()
        out = model(x)
        calls = []
        model.fusion.register_forward_hook(lambda mod, inp, o: calls.append(o.shape[0]))
        MIPD(num_permutations=P, decompose=decompose)(model, out, y)
        assert calls == calls_expected


@pytest.mark.parametrize("subset", [("a",), ("v",)])
def test_signs_term_by_term(subset):
    """A step along -grad: the permuted encoder raises its own term under every strategy; the
    other encoder raises it (k=+1), is untouched (k=0) or lowers it (k=-1)."""
    own, other = subset[0], "v" if subset == ("a",) else "a"
    model, x, y = _model()
    out = model(x)
    torch.manual_seed(123)
    perm = sample_permutations(B, P, "all")[0].reshape(-1)
    rows = {m: out.features[m][perm] if m in subset else out.features[m].repeat(P, 1) for m in "av"}
    j = jensen_shannon(model.fuse(rows), out.logits.detach().repeat(P, 1))
    j.backward()
    dj = _grads(model)
    for strategy, k in zip(STRATEGIES, (1, 0, -1)):
        model, x, y = _model()
        mipd = MIPD(strategy, weight=1.0, num_permutations=P, detach_reference=True)
        mipd.subsets = lambda modalities: [subset]
        torch.manual_seed(123)
        mipd(model, model(x), y).backward()
        got = _grads(model)
        assert torch.dot(got[f"enc_{own}"], dj[f"enc_{own}"]) < 0
        other_dot = torch.dot(got[f"enc_{other}"], dj[f"enc_{other}"])
        assert (other_dot < 0) if k > 0 else (other_dot > 0) if k < 0 else torch.count_nonzero(got[f"enc_{other}"]) == 0


def test_permutations_drawn_once_per_step_and_shared_by_subsets():
    model, x, y = _model("avt", fusion="concat_mlp")
    out = model(x)
    seen = []
    model.fusion.register_forward_hook(lambda mod, inp, o: seen.append({m: z.detach() for m, z in inp[0].items()}))
    MIPD(num_permutations=P)(model, out, y)
    subsets = _subsets("avt")
    assert len(seen) == 1 and seen[0]["a"].shape[0] == len(subsets) * B * P  # one call for every subset
    perms = []
    for i, s in enumerate(subsets):
        for m in "avt":
            block = seen[0][m][i * B * P:(i + 1) * B * P]
            # the batch row each row is: a copy is at distance ~0, every other row of these
            # random features far away, so the argmin has no near-tie to round either way
            index = torch.cdist(block, out.features[m].detach()).argmin(1)
            torch.testing.assert_close(block, out.features[m].detach()[index])
            if m in s:
                perms.append(index)
            else:
                assert torch.equal(index, torch.arange(B).repeat(P))  # left alone
    assert all(torch.equal(p, perms[0]) for p in perms)  # one draw, shared by all subsets


def test_noisy_scales_unit_noise_by_the_reference_batch_std():
    """_noisy(x, ref, s) = x + s * sigma * N(0, 1): sigma the per-feature population std of
    ref over the batch (1 for a batch of one), the noise drawn in float32, the result in x's dtype."""
    from mmbalance.losses.mipd import _noisy
    ref = torch.tensor([[1.0, 5.0, 0.0], [3.0, 5.0, 4.0]])  # population std per feature: 1, 0, 2
    x = torch.arange(12, dtype=torch.float64).view(4, 3)
    torch.manual_seed(0)
    got = _noisy(x, ref, 0.5)
    torch.manual_seed(0)
    z = torch.randn(4, 3)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, x + (0.5 * torch.tensor([1.0, 0.0, 2.0]) * z).double())
    one = torch.tensor([[2.0, -1.0, 7.0]])
    torch.manual_seed(1)
    got = _noisy(one, one, 3.0)  # batch of one: sigma = 1
    torch.manual_seed(1)
    torch.testing.assert_close(got, one + 3.0 * torch.randn(1, 3))


def test_zero_weight_is_a_float32_zero_scalar():
    model, x, _ = _model()
    out = model(x)
    logits = out.logits.double()
    got = MIPD(weight=0.0)(model, type(out)(logits, out.unimodal_logits, out.features), torch.zeros(B, dtype=torch.long))
    assert got.shape == () and got.dtype == torch.float32 and got.item() == 0.0


def test_input_zero_encodes_zeros_once():
    model, x, _ = _model()
    model.eval()
    out = model(x)
    mipd = MIPD(weight=1.0, perturbation="input_zero")
    mipd.subsets = lambda modalities: [("a",)]
    got = mipd(model, out, torch.zeros(B, dtype=torch.long), inputs=x)
    zero_a = model.encoders["a"](torch.zeros_like(x["a"]))
    pred = model.fuse({"a": zero_a, "v": out.features["v"]})
    assert got.item() == pytest.approx(-jensen_shannon(pred, out.logits).item(), rel=1e-5)


@pytest.mark.parametrize("routing", ["authors", "features"])
def test_generic_path_latent_zero_with_one_subset(routing):
    """The fusion-network path (concat_mlp does not decompose) with a perturbed subset that
    holds the same modality in every subset: the value is the JSD against zeroed features."""
    model, x, _ = _model(fusion="concat_mlp")
    model.eval()
    out = model(x)
    mipd = MIPD(weight=1.0, perturbation="latent_zero", routing=routing)
    mipd.subsets = lambda modalities: [("a",)]
    got = mipd(model, out, torch.zeros(B, dtype=torch.long))
    pred = model.fuse({"a": torch.zeros_like(out.features["a"]), "v": out.features["v"]})
    assert got.item() == pytest.approx(-jensen_shannon(pred, out.logits).item(), rel=1e-5)


@pytest.mark.slow  # torch.compile's first call takes 10-60 s on a 2-core CPU
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_compiled_decomposed_path_equals_the_eager_one(strategy):
    _assert_same_value_and_gradients("avt", dict(strategy=strategy), dict(strategy=strategy, compile=True))
