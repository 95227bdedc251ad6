"""Contract tests written against the survivors of the losses mutation run:
each checks a documented behaviour against hand-computed values or an independent reference.
docs/testing.md lists which test kills which mutants."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from mmbalance import CEB, MIPD, MLPEncoder, MultimodalModel, SupervisedContrastive
from mmbalance.losses import jensen_shannon
from mmbalance.models.lazy import is_placeholder

B = 6


def _lazy_model(device=None):
    """Encoders without ``out_dim``: the feature sizes (4 and 6) are known only after a batch."""
    torch.manual_seed(0)
    return MultimodalModel({"a": nn.Linear(5, 4, device=device), "v": nn.Linear(7, 6, device=device)}, 3)


def _batch():
    return {"a": torch.randn(2, 5), "v": torch.randn(2, 7)}


# ----------------------------------------------------------------- lazy heads (bind/_realize)
def test_ceb_bind_on_a_lazy_model_is_a_placeholder_realized_in_place_on_the_first_batch():
    model = _lazy_model()
    assert not model.materialized
    term = CEB()
    assert term.bind(model) is term
    assert is_placeholder(term.head)
    params = list(term.head.parameters())
    assert [type(p).__name__ for p in params] == ["UninitializedParameter"] * 2
    assert term.bind(model).head is term.head  # bound already: kept
    model.materialize(_batch())
    first, _, last = term.head.net
    # C = 3 logits in, hidden = mean D_m = (4 + 6) / 2 = 5, sum D_m = 10 out
    assert (first.in_features, first.out_features, last.in_features, last.out_features) == (3, 5, 5, 10)
    assert not is_placeholder(term.head)
    assert [p.shape for p in term.head.parameters()] == [torch.Size([5, 3]), torch.Size([10, 5])]
    assert all(a is b for a, b in zip(term.head.parameters(), params))  # the optimizer's objects
    out = model({"a": torch.randn(B, 5), "v": torch.randn(B, 7)})
    assert torch.isfinite(term(out))


def test_contrastive_bind_on_a_lazy_model_is_a_placeholder_realized_in_place_on_the_first_batch():
    model = _lazy_model()
    term = SupervisedContrastive()
    assert term.bind(model) is term
    assert not term.built and is_placeholder(term.projections) and set(term.projections) == {"a", "v"}
    params = dict(term.projections.named_parameters())
    model.materialize(_batch())
    assert term.built is True and not is_placeholder(term.projections)
    # the sizes differ (4, 6): projections to the smallest, 4
    assert {m: (p.in_features, p.out_features) for m, p in term.projections.items()} == {"a": (4, 4), "v": (6, 4)}
    assert all(p is params[n] for n, p in term.projections.named_parameters())
    term.bind(model)  # built: nothing changes
    assert all(p is params[n] for n, p in term.projections.named_parameters())


def test_lazy_placeholders_live_on_the_models_device():
    model = _lazy_model(device="meta")  # a device other than the default
    assert {p.device.type for p in CEB().bind(model).head.parameters()} == {"meta"}
    assert {p.device.type for p in SupervisedContrastive().bind(model).projections.parameters()} == {"meta"}


# ----------------------------------------------------------------- the warning's stacklevel
def test_caller_level_is_the_first_frame_outside_the_losses_and_torch_from_level_2(monkeypatch):
    """``_caller_level`` on a made-up stack (frame 0 is itself): the level of the first frame
    from level 2 on whose file is outside ``mmbalance/losses`` and torch; 2 when there is none.
    It asks for no source lines (``context=0``)."""
    import inspect

    from mmbalance.losses import mcr
    here = os.path.dirname(os.path.abspath(mcr.__file__))
    torch_dir = os.path.dirname(os.path.abspath(torch.__file__))
    loss, tor = os.path.join(here, "mcr.py"), os.path.join(torch_dir, "nn", "modules", "module.py")
    user, other = "/somewhere/user.py", "/somewhere/train.py"
    cases = [([loss, user, other], 2),           # level 1 is outside, but level 1 never counts
             ([loss, loss, tor, user, other], 3),
             ([loss, loss, tor, tor, loss, other], 5),
             ([loss, loss, tor], 2),             # nothing outside: 2
             ([loss, user], 2),
             ([loss, loss, here + "_evil/x.py"], 2)]  # a sibling folder is outside
    for files, expected in cases:
        calls = []

        def fake_stack(context=1, _files=files):
            calls.append(context)
            return [SimpleNamespace(filename=f) for f in _files]

        monkeypatch.setattr(inspect, "stack", fake_stack)
        assert mcr._caller_level() == expected, files
        assert calls == [0]


# ----------------------------------------------------------------- input perturbations
def test_input_zero_re_encodes_through_the_models_pooling():
    """``input_*`` perturbations go through ``model.encode_modality`` (the model's checks and
    sequence pooling), not the bare encoder: a (B, T, 5) sequence is mean-pooled over T."""
    model = _lazy_model()  # nn.Linear maps a (B, T, 5) sequence to (B, T, 4)
    model.eval()
    x = {"a": torch.randn(B, 3, 5), "v": torch.randn(B, 7)}
    out = model(x)
    mipd = MIPD(weight=1.0, perturbation="input_zero")
    mipd.subsets = lambda modalities: [("a",)]
    got = mipd(model, out, torch.zeros(B, dtype=torch.long), inputs=x)
    zero_a = model.encoders["a"](torch.zeros(B, 3, 5)).mean(1)  # pooled by hand
    pred = model.fuse({"a": zero_a, "v": out.features["v"]})
    assert got.item() == pytest.approx(-jensen_shannon(pred, out.logits).item(), rel=1e-5)


def test_reencode_uses_the_bare_encoder_when_the_model_has_no_encode_modality():
    encoder = nn.Linear(2, 3)

    class Bare(nn.Module):  # a model with encoders but no encode_modality
        def __init__(self):
            super().__init__()
            self.encoders = nn.ModuleDict({"a": encoder})

    x = torch.randn(4, 2)
    got = MIPD(perturbation="input_zero")._reencode(Bare(), "a", x, 1)
    torch.testing.assert_close(got, encoder(torch.zeros(4, 2)))


# ----------------------------------------------------------------- chunked path
def _three_class_model(fusion):
    torch.manual_seed(0)
    model = MultimodalModel({"a": MLPEncoder(5, 4, 6, 1), "v": MLPEncoder(7, 6, 6, 1)}, 3, fusion=fusion,
                            fusion_hidden=8)
    x = {"a": torch.randn(B, 5), "v": torch.randn(B, 7)}
    return model, x, torch.tensor([0, 1, 2, 0, 1, 2])


def test_chunked_fusion_calls_hold_at_most_chunk_size_rows():
    """``chunk_size`` bounds the rows of every fusion call (whole copies of the batch): with
    chunk_size = B, P = 4 copies are fused one copy (B rows) at a time, per subset."""
    model, x, y = _three_class_model("concat_mlp")
    out = model(x)
    rows = []
    hook = model.fusion.register_forward_pre_hook(lambda module, args: rows.append(next(iter(args[0].values())).shape[0]))
    try:
        MIPD("collaborative", weight=1.0, num_permutations=4, chunk_size=B, routing="features")(model, out, y)
    finally:
        hook.remove()
    assert rows == [B] * 8  # 2 subsets x 4 copies


@pytest.mark.parametrize("fusion", ["concat_linear", "concat_mlp"])
def test_chunked_different_label_masks_rows_like_the_one_pass(fusion):
    """With ``different_label`` some perturbed rows do not count: the chunked mean over the
    valid rows equals the one-pass (unchunked) value for the same permutations."""
    from mmbalance.losses import sample_permutations
    values = []
    for chunk_size in (None, B):
        model, x, y = _three_class_model(fusion)
        out = model(x)
        torch.manual_seed(3)
        values.append(MIPD("greedy", weight=1.0, num_permutations=4, permutation="different_label",
                           chunk_size=chunk_size).divergences(model, out, y))
    torch.manual_seed(3)
    _, valid = sample_permutations(B, 4, "different_label", torch.tensor([0, 1, 2, 0, 1, 2]))
    assert 0 < valid.sum() < valid.numel()  # some rows masked: the case under test
    assert torch.isfinite(values[1]).all()
    torch.testing.assert_close(values[1], values[0], rtol=1e-5, atol=1e-7)


# ----------------------------------------------------------------- compile option
def test_compile_option_compiles_the_decomposed_math_once_with_static_shapes(monkeypatch):
    """``compile=True`` hands ``_decomposed_divergences`` to ``torch.compile`` (static shapes)
    once and reuses it; torch.compile is replaced here by a recorder (the real one takes a
    minute on this CPU; the slow test compares the compiled values)."""
    from mmbalance.losses import mipd as mipd_module
    calls = []

    def fake_compile(fn=None, **kwargs):
        calls.append((fn, kwargs))
        return fn

    monkeypatch.setattr(torch, "compile", fake_compile)
    model, x, y = _three_class_model("concat_linear")
    out = model(x)
    mipd = MIPD(weight=1.0, num_permutations=4, compile=True)
    torch.manual_seed(1)
    first = mipd.divergences(model, out, y)
    torch.manual_seed(1)
    second = mipd.divergences(model, out, y)
    torch.manual_seed(1)
    eager = MIPD(weight=1.0, num_permutations=4).divergences(model, out, y)
    assert calls == [(mipd_module._decomposed_divergences, {"dynamic": False})]
    torch.testing.assert_close(first, eager)
    torch.testing.assert_close(second, eager)


# ----------------------------------------------------------------- constructors
def test_ceb_and_contrastive_defaults_messages_and_eager_build():
    from mmbalance import ConfigError
    from mmbalance.losses import supervised_contrastive
    torch.manual_seed(0)
    feats = {"a": torch.randn(B, 4), "v": torch.randn(B, 4)}
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    # defaults: weight 1 (and temperature 0.5): the bare function's value
    assert SupervisedContrastive()(feats, y).item() == pytest.approx(
        supervised_contrastive(list(feats.values()), y, 0.5).item(), rel=1e-6)
    term = CEB(num_classes=3, feature_dims={"a": 4, "v": 4})
    out = SimpleNamespace(logits=torch.randn(B, 3), features=feats)
    target = torch.cat([feats["a"], feats["v"]], 1)
    assert term(out).item() == pytest.approx(((term.head(out.logits) - target) ** 2).mean().item(), rel=1e-6)
    with pytest.raises(ConfigError, match=r"^CEB weight must be >= 0, got -1.0$"):
        CEB(weight=-1.0)
    with pytest.raises(ConfigError, match=r"^SupervisedContrastive weight must be >= 0, got -2.0$"):
        SupervisedContrastive(weight=-2.0)
    with pytest.raises(ConfigError, match=r"^SupervisedContrastive temperature must be > 0, got 0.0$"):
        SupervisedContrastive(temperature=0.0)
    # the CEB head is built at once only with both sizes: C = 3 in, mean D = 5 hidden, sum D = 10 out
    first, _, last = CEB(num_classes=3, feature_dims={"a": 4, "v": 6}).head.net
    assert (first.in_features, first.out_features, last.out_features) == (3, 5, 10)
    assert CEB(num_classes=3).head is None and CEB(feature_dims={"a": 4, "v": 6}).head is None


def test_mcr_passes_compile_to_the_mipd():
    from mmbalance import MCRLoss
    assert MCRLoss(compile=True).mipd.compile_math is True and MCRLoss().mipd.compile_math is False


def test_first_use_warning_points_outside_the_losses_package():
    from pathlib import Path

    from mmbalance import MCRLoss
    from mmbalance.losses import mcr
    model, x, y = _three_class_model("concat_linear")
    with pytest.warns(UserWarning, match="first use") as record:
        MCRLoss(num_permutations=2, ceb_weight=1.0)(model, model(x), y)
    where = Path(record[0].filename).resolve()
    assert Path(mcr.__file__).resolve().parent not in where.parents and "torch" not in where.parts


# ----------------------------------------------------------------- gradients, divergence
def test_grad_multiply_scales_the_gradient_by_any_factor():
    from mmbalance.losses import grad_multiply
    x = torch.tensor([1.0, -2.0], requires_grad=True)
    assert grad_multiply(x, 1.0) is x  # documented: x itself
    assert not grad_multiply(x, 0.0).requires_grad  # documented: x.detach(), no graph
    for factor in (0.5, -2.0, 2.0, 3.0):
        x = torch.tensor([1.0, -2.0], requires_grad=True)
        y = grad_multiply(x, factor)
        assert torch.equal(y, x.detach())
        (y * torch.tensor([1.0, 10.0])).sum().backward()
        assert x.grad.tolist() == [factor, 10.0 * factor]


def test_jensen_shannon_stays_within_its_bounds_after_rounding_and_warns_nothing():
    """Near-equal rows round to slightly below 0 and far-apart rows slightly above ln 2 before
    the clamp; the softmax axis is given explicitly (no implicit-dim warning)."""
    import warnings

    from mmbalance.losses import jensen_shannon_per_sample
    from mmbalance.losses.divergence import LN2
    torch.manual_seed(0)
    a = torch.randn(20000, 5) * 3
    near = jensen_shannon_per_sample(a, a + 1e-7 * torch.randn_like(a))
    # some rows are -4e-15 before the clamp: rounding, whatever the kernels (150-550 of these
    # 20000 rows under ATen's default, AVX2 and AVX-512 kernels)
    assert near.min().item() == 0.0
    far_p, far_q = torch.randn(2000, 10) * 20, torch.randn(2000, 10) * 20
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        far = jensen_shannon_per_sample(far_p, far_q)
    # some are 1 ulp above before (10-20 of these 2000 rows under each of the three kernel sets)
    assert far.max() <= torch.tensor(LN2) and (far == torch.tensor(LN2)).any()


def test_noisy_draws_float32_noise_and_returns_the_input_dtype():
    """For a bfloat16 x the noise is drawn in float32, scaled, then rounded once to bfloat16
    (drawing it in bfloat16 would round twice) and the result stays bfloat16."""
    from mmbalance.losses.mipd import _noisy
    ref = torch.tensor([[0.0, 5.0, 0.0], [1.0, 5.5, 4.0]])  # population std 0.5, 0.25, 2
    torch.manual_seed(1)
    x = torch.randn(64, 3).to(torch.bfloat16)
    torch.manual_seed(0)
    got = _noisy(x, ref, 0.7)
    torch.manual_seed(0)
    expected = x + (0.7 * torch.tensor([0.5, 0.25, 2.0]) * torch.randn(64, 3)).to(torch.bfloat16)
    assert got.dtype == torch.bfloat16
    # exact: sigma is exactly (0.5, 0.25, 2) for these rows, whatever the reduction's order,
    # and the rest is the same elementwise ops on the same values (correctly rounded)
    assert torch.equal(got, expected)


def test_chunked_mean_over_one_valid_row_is_that_rows_divergence():
    """``_chunked`` on a hand-made perturbation: 2 copies of a batch of 3 (chunk_size 3: one
    copy per chunk) where only row 4 counts (copy 1, position 1, which takes row 2): the
    result is the JSD of that one perturbed prediction, divided by 1."""
    from mmbalance.losses.mipd import Perturbation
    model, x, _ = _three_class_model("concat_mlp")
    model.eval()
    # inputs scaled so that the perturbed row's prediction is well apart from the reference
    # (a JSD of 0.03): unscaled it was 4e-7, a residue of terms 1000x larger that float32 gives
    # to ~1e-4 only, and other kernels (MKL's compatible path) moved it 1e-4 off the reference
    out = model({m: 30 * v[:3] for m, v in x.items()})
    index = torch.tensor([0, 1, 2, 1, 2, 0])
    valid = torch.tensor([False, False, False, False, True, False])
    pert = Perturbation(2, valid, index, {})
    mipd = MIPD("collaborative", weight=1.0, chunk_size=3)
    got = mipd._chunked(model, out, ("a",), pert, out.logits)
    pred = model.fuse({"a": out.features["a"][2:3], "v": out.features["v"][1:2]})
    assert got.item() == pytest.approx(jensen_shannon(pred, out.logits[1:2]).item(), rel=1e-5)
    none = mipd._chunked(model, out, ("a",), Perturbation(2, torch.zeros(6, dtype=torch.bool), index, {}), out.logits)
    assert none.item() == 0.0


def test_features_routing_fuses_all_subsets_in_one_call():
    """Under ``routing="features"`` the fusion parameters are routed alike for every subset,
    so the generic path makes one fusion call over all subsets' rows (even for a fusion with
    per-modality parameters, here concat_linear with decompose off)."""
    model, x, y = _three_class_model("concat_linear")
    out = model(x)
    rows = []
    hook = model.fusion.register_forward_pre_hook(lambda module, args: rows.append(next(iter(args[0].values())).shape[0]))
    try:
        MIPD("greedy", weight=1.0, num_permutations=4, routing="features", decompose=False)(model, out, y)
    finally:
        hook.remove()
    assert rows == [2 * 4 * B]  # 2 subsets x 4 copies x B rows, one call


# ----------------------------------------------------------------- permutations
def test_permutations_are_made_on_the_requested_device():
    """``device`` reaches the draw and the label mask (``meta`` stands for an accelerator on
    this CPU-only machine; the derangement's rejection loop needs real values, so not there)."""
    from mmbalance.losses import sample_permutations
    perms, valid = sample_permutations(4, 3, device="meta")
    assert perms.device.type == "meta" and valid.device.type == "meta"
    perms, valid = sample_permutations(4, 3, "different_label", torch.tensor([0, 1, 0, 1]), device="meta")
    assert perms.device.type == "meta" and valid.device.type == "meta"


def test_derangement_redraws_only_the_rows_with_a_fixed_point():
    """Rows are redrawn one by one: 400 derangements of 5 take many of the 44 (each about
    9 times), never one row repeated, and none has a fixed point."""
    from mmbalance.losses import sample_permutations
    perms, valid = sample_permutations(5, 400, "derangement", generator=torch.Generator().manual_seed(2))
    assert not (perms == torch.arange(5)).any() and valid.all()
    assert len(torch.unique(perms, dim=0)) > 30
    first = torch.rand(400, 5, generator=torch.Generator().manual_seed(2)).argsort(dim=1)  # the first draw
    kept = ~(first == torch.arange(5)).any(1)
    assert 100 < kept.sum() < 300 and torch.equal(perms[kept], first[kept])  # rows without a fixed point stay


# ----------------------------------------------------------------- MIPD.divergences
def test_batch_of_one_warning_text_and_no_warning_for_a_batch_of_two():
    import warnings
    model, x, y = _three_class_model("concat_linear")
    mipd = MIPD(weight=1.0, num_permutations=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mipd(model, model({m: v[:2] for m, v in x.items()}), y[:2])  # two rows: a real permutation exists
    with pytest.warns(UserWarning) as record:
        mipd(model, model({m: v[:1] for m, v in x.items()}), y[:1])
    assert [str(w.message) for w in record] == [
        "MCR: batch of 1, the only permutation is the identity; the MIPD term is 0"]


def test_noise_is_drawn_modality_by_modality_in_model_order():
    """latent_noise with modalities ordered (v, a), not alphabetically: the seeded noise of v
    is drawn first, then a's; the value is the hand-built sum of both subsets' JSDs."""
    from mmbalance.losses.mipd import _noisy
    torch.manual_seed(0)
    model = MultimodalModel({"v": MLPEncoder(7, 6, 6, 1), "a": MLPEncoder(5, 4, 6, 1)}, 3)
    x = {"v": torch.randn(B, 7), "a": torch.randn(B, 5)}
    model.eval()
    out = model(x)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    torch.manual_seed(4)
    got = MIPD("collaborative", weight=1.0, num_permutations=1, perturbation="latent_noise")(model, out, y)
    f = out.features
    torch.manual_seed(4)
    noisy_v = _noisy(f["v"], f["v"], 1.0)
    noisy_a = _noisy(f["a"], f["a"], 1.0)
    expected = jensen_shannon(model.fuse({"v": noisy_v, "a": f["a"]}), out.logits) \
        + jensen_shannon(model.fuse({"v": f["v"], "a": noisy_a}), out.logits)
    assert got.item() == pytest.approx(-expected.item(), rel=1e-5)


def _fusion_rows(fusion, chunk_size, num_permutations):
    model, x, y = _three_class_model(fusion)
    out = model(x)
    rows = []
    model.fusion.register_forward_hook(lambda module, inputs, o: rows.append(o.shape[0]))
    MIPD("collaborative", weight=1.0, num_permutations=num_permutations, chunk_size=chunk_size)(model, out, y)
    return rows


def test_chunking_starts_only_when_the_copies_do_not_fit_one_chunk():
    # every copy fits (chunk_size = P * B): the one-pass decomposed path, no fusion call at all
    assert _fusion_rows("concat_linear", 4 * B, 4) == []
    # chunk_size below one batch: still one whole copy per call, so 2 copies are 2 calls per subset
    assert _fusion_rows("concat_mlp", B - 1, 2) == [B] * 4
    # 2 copies in chunks of one copy (chunk_size 2B - 1): chunked, 4 calls of B rows
    assert _fusion_rows("concat_mlp", 2 * B - 1, 2) == [B] * 4


def test_is_decomposable_needs_the_flag_and_both_methods():
    from mmbalance.losses.mipd import _is_decomposable
    f = lambda *args: None  # noqa: E731
    assert _is_decomposable(SimpleNamespace(decomposable=True, modality_logits=f, shared_logits=f))
    assert not _is_decomposable(SimpleNamespace(modality_logits=f, shared_logits=f))  # no flag
    assert not _is_decomposable(SimpleNamespace(decomposable=False, modality_logits=f, shared_logits=f))
    assert not _is_decomposable(SimpleNamespace(decomposable=True, shared_logits=f))
    assert not _is_decomposable(SimpleNamespace(decomposable=True, modality_logits=f))


def test_rows_kernel_passes_no_gradient_through_clamped_rows():
    """Near-equal rows round below 0 and are clamped: like ``clamp``, the kernel gives them a
    zero gradient (finite), equal to the autograd of the clamped log-prob form."""
    import torch.nn.functional as F

    from mmbalance.losses.divergence import jensen_shannon_log_probs, jensen_shannon_rows
    torch.manual_seed(0)
    ref = torch.randn(2000, 5) * 3
    pert = (ref + 1e-7 * torch.randn_like(ref)).requires_grad_(True)
    ref.requires_grad_(True)
    ga, gb = torch.autograd.grad(jensen_shannon_rows(pert, ref).sum(), (pert, ref))
    lp, lq = F.log_softmax(pert, -1), F.log_softmax(ref, -1)
    raw_a, raw_b = torch.autograd.grad(jensen_shannon_log_probs(lp, lq).sum(), (pert, ref))
    assert torch.isfinite(ga).all() and torch.isfinite(gb).all()
    assert (ga == 0).all(1).sum() > 0  # some rows were clamped (zero gradient): ~700 of 2000 on any kernels
    torch.testing.assert_close(ga, raw_a, rtol=0, atol=1e-6)
    torch.testing.assert_close(gb, raw_b, rtol=0, atol=1e-6)


def test_rows_kernel_computes_in_float32_at_least_and_clamps_to_its_bounds():
    """bfloat16 logits (either side) are promoted to float32 before the softmax: the values
    equal those of the float32 copies; float64 stays float64. Rounding below 0 and above ln 2
    is clamped."""
    from mmbalance.losses.divergence import LN2, jensen_shannon_rows
    torch.manual_seed(0)
    a, b = (torch.randn(3, 4, 5) * 4).to(torch.bfloat16), (torch.randn(4, 5) * 4).to(torch.bfloat16)
    expected = jensen_shannon_rows(a.float(), b.float())
    for pert, ref in ((a, b), (a, b.float()), (a.float(), b)):
        got = jensen_shannon_rows(pert, ref)
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-7)
    assert jensen_shannon_rows(a.double(), b.float()).dtype == torch.float64
    ref = torch.randn(20000, 5) * 3
    assert jensen_shannon_rows(ref + 1e-7 * torch.randn_like(ref), ref).min().item() == 0.0
    far = jensen_shannon_rows(torch.randn(2000, 10) * 20, torch.randn(2000, 10) * 20)
    assert far.max() <= torch.tensor(LN2)


def test_masked_rows_mean_and_regression_rows():
    from mmbalance.losses.mipd import _masked_rows_mean, _row_divergence
    per_row = torch.tensor([[[1.0, 2.0], [3.0, 4.0]], [[10.0, 20.0], [30.0, 40.0]]])  # (S=2, P=2, B=2)
    one = torch.tensor([False, False, True, False])  # copy 1, row 0 only
    assert _masked_rows_mean(per_row, one, 2, False).tolist() == [3.0, 30.0]
    some = torch.tensor([True, False, True, True])
    assert _masked_rows_mean(per_row, some, 2, False).tolist() == pytest.approx([8.0 / 3, 80.0 / 3])
    assert _masked_rows_mean(per_row, torch.ones(4, dtype=torch.bool), 2, True).tolist() == [2.5, 25.0]
    # regression (C = 1): the squared difference per row, (P, B)
    pert = torch.tensor([[[1.0], [2.0], [4.0]], [[0.0], [0.0], [1.0]]])
    got = _row_divergence(pert, torch.tensor([[1.0], [0.0], [2.0]]))
    assert got.tolist() == [[0.0, 4.0, 4.0], [1.0, 0.0, 1.0]]


def test_mipd_defaults_messages_and_boundaries():
    from mmbalance import ConfigError
    m = MIPD()
    assert (m.strategy, m.weight, m.num_permutations, m.permutation, m.perturbation, m.noise_std,
            m.max_subset_size, m.detach_reference, m.routing, m.chunk_size, m.decompose, m.compile_math) == (
        "greedy", 0.1, 32, "all", "permute", 1.0, None, False, "authors", None, True, False)
    assert MIPD(compile=True).compile_math is True
    assert callable(MIPD().compile)  # nn.Module.compile is not hidden by the option
    assert MIPD(num_permutations=1).num_permutations == 1 and MIPD(chunk_size=1).chunk_size == 1
    assert MIPD(max_subset_size=1).max_subset_size == 1
    cases = [({"strategy": "selfish"}, "MIPD strategy 'selfish' is unknown; valid: collaborative, independent, greedy"),
             ({"permutation": "rsl"}, "MIPD permutation 'rsl' is unknown; valid: all, derangement, different_label"),
             ({"perturbation": "drop"}, "MIPD perturbation 'drop' is unknown; valid: permute, latent_noise, "
                                        "latent_zero, input_noise, input_zero"),
             ({"routing": "x"}, "MIPD routing 'x' is unknown; valid: authors, features"),
             ({"weight": -1.0}, "MIPD weight must be >= 0, got -1.0"),
             ({"noise_std": -0.5}, "MIPD noise_std must be >= 0, got -0.5"),
             ({"num_permutations": 0}, "MIPD num_permutations must be >= 1, got 0"),
             ({"max_subset_size": 0}, "MIPD max_subset_size must be >= 1 or None, got 0"),
             ({"chunk_size": 0}, "MIPD chunk_size must be >= 1 or None, got 0")]
    for kwargs, message in cases:
        with pytest.raises(ConfigError) as info:
            MIPD(**kwargs)
        assert str(info.value) == message


def test_perturb_builds_bool_masks_and_indices_on_the_logits_device():
    """``perturb`` on a meta-device batch (standing in for an accelerator): the permutation
    indices and the validity masks are made there, the masks are bool, and a permutation
    carries no perturbed features."""
    out = SimpleNamespace(logits=torch.zeros(4, 3, device="meta"),
                          features={"a": torch.zeros(4, 2, device="meta")})
    labels = torch.zeros(4, dtype=torch.long, device="meta")
    pert = MIPD(num_permutations=2).perturb(None, out, labels, None, ["a"])
    assert pert.copies == 2 and pert.features == {}
    assert pert.index.device.type == "meta" and pert.valid.device.type == "meta" and pert.valid.dtype == torch.bool
    zero = MIPD(perturbation="latent_zero").perturb(None, out, labels, None, ["a"])
    assert zero.copies == 1 and zero.index is None and zero.valid.shape == (4,)
    assert zero.valid.device.type == "meta" and zero.valid.dtype == torch.bool
    assert zero.features["a"].device.type == "meta" and zero.features["a"].shape == (4, 2)


def test_mcr_bind_builds_no_projections_at_contrastive_weight_zero():
    from mmbalance import MCRLoss
    model, _, _ = _three_class_model("concat_linear")  # feature sizes 4 and 6 differ
    loss = MCRLoss(contrastive_weight=0.0).bind(model)
    assert loss._built and loss.projections is None and not list(loss.parameters())
    assert MCRLoss().bind(model).projections is not None


@pytest.mark.parametrize("classes_first", [True, False], ids=["classes-first layout", "last-axis layout"])
def test_rows_kernel_keeps_the_gradient_of_rows_exactly_on_a_bound(monkeypatch, classes_first):
    """As ``torch.clamp`` does, rows whose float32 value falls exactly on 0 or on ln 2 (not
    beyond) keep their gradient; the value is rebuilt here from the docstring's formula
    ``-0.5 sum (p log(m/p) + q log(m/q))`` with the same float32 operations, in the layout
    the kernel is made to use (classes first or last), so that the rounding is the same: the
    same kernels on tensors of the same shapes, in this process. The rows on a bound or
    beyond it come from rounding, whatever the CPU's kernels: 130-700 on a bound and 10-50
    beyond it under ATen's default, AVX2 and AVX-512 kernels."""
    import torch.nn.functional as F

    from mmbalance.losses import divergence
    from mmbalance.losses.divergence import LN2, jensen_shannon_rows
    monkeypatch.setattr(divergence, "CLASSES_FIRST_MAX", 10 ** 6 if classes_first else 0)
    monkeypatch.setattr(divergence, "CLASSES_FIRST_MIN_ROWS", 0)
    axis = 0 if classes_first else -1

    def raw_value(a, b):
        if classes_first:
            a, b = a.t().contiguous(), b.t().contiguous()
        lp, lq = F.log_softmax(a, axis), F.log_softmax(b, axis)
        d = lq - lp
        common = torch.log1p(torch.expm1(-d.abs()) / 2)
        return -0.5 * ((lp.exp() * (torch.relu(d) + common)).sum(axis, keepdim=True)
                       + (lq.exp() * (torch.relu(-d) + common)).sum(axis, keepdim=True)).squeeze(axis)

    torch.manual_seed(0)
    near_q = torch.randn(2000, 5) * 3
    far_q = torch.randn(2000, 10) * 20
    for pert, ref, bound in ((near_q + 1e-7 * torch.randn_like(near_q), near_q, 0.0),
                             (torch.randn(2000, 10) * 20, far_q, LN2)):
        pert.requires_grad_(True)
        grad, = torch.autograd.grad(jensen_shannon_rows(pert, ref).sum(), (pert,))
        raw = raw_value(pert.detach(), ref)
        on_bound = raw == torch.tensor(bound)
        assert ((grad != 0).any(1) & on_bound).sum() > 10, bound
        beyond = raw < 0 if bound == 0.0 else raw > torch.tensor(LN2)  # clamped: no gradient
        assert beyond.sum() > 0 and (grad[beyond] == 0).all(), bound
