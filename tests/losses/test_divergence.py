"""Jensen-Shannon divergence against a brute-force loop, at extremes and under autocast."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mmbalance.losses import jensen_shannon, jensen_shannon_per_sample


def _brute_jsd(p_logits, q_logits):
    total = 0.0
    for lp_row, lq_row in zip(p_logits.tolist(), q_logits.tolist()):
        zp = sum(math.exp(v) for v in lp_row)
        zq = sum(math.exp(v) for v in lq_row)
        p = [math.exp(v) / zp for v in lp_row]
        q = [math.exp(v) / zq for v in lq_row]
        js = 0.0
        for pi, qi in zip(p, q):
            m = (pi + qi) / 2
            js += 0.5 * (pi * math.log(pi / m) if pi > 0 else 0) + 0.5 * (qi * math.log(qi / m) if qi > 0 else 0)
        total += js
    return total / len(p_logits)


def test_matches_brute_force_loop():
    torch.manual_seed(0)
    p, q = torch.randn(7, 5) * 2, torch.randn(7, 5) * 2
    assert jensen_shannon(p, q).item() == pytest.approx(_brute_jsd(p, q), rel=1e-5)


def test_hand_value_two_classes():
    # p = (1, 0), q = (0.5, 0.5): m = (0.75, 0.25); JSD = 0.5 ln(4/3) + 0.5 (0.5 ln(2/3) + 0.5 ln 2)
    p = torch.tensor([[1e4, -1e4]])
    q = torch.zeros(1, 2)
    expected = 0.5 * math.log(1 / 0.75) + 0.5 * (0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25))
    assert jensen_shannon(p, q).item() == pytest.approx(expected, abs=1e-6)


def test_extreme_logits_are_finite_and_bounded():
    p = torch.tensor([[1e4, -1e4, 0.0], [-1e4, 1e4, 0.0]], requires_grad=True)
    q = torch.tensor([[-1e4, 1e4, 0.0], [-1e4, 1e4, 0.0]], requires_grad=True)
    value = jensen_shannon(p, q)
    assert value.item() == pytest.approx(math.log(2) / 2, abs=1e-6)  # disjoint row: ln 2, equal row: 0
    value.backward()
    assert torch.isfinite(p.grad).all() and torch.isfinite(q.grad).all()


def test_mask_and_empty_mask():
    p, q = torch.randn(4, 3), torch.randn(4, 3)
    mask = torch.tensor([True, False, True, False])
    assert jensen_shannon(p, q, mask).item() == pytest.approx(_brute_jsd(p[mask], q[mask]), rel=1e-5)
    assert jensen_shannon(p, q, torch.zeros(4, dtype=torch.bool)).item() == 0.0


def _jsd_float64(p_logits, q_logits):
    """Per-row JSD in float64 (the definition, not the function under test's numerics)."""
    lp, lq = torch.log_softmax(p_logits.double(), -1), torch.log_softmax(q_logits.double(), -1)
    log_m = torch.logaddexp(lp, lq) - math.log(2)
    return 0.5 * (lp.exp() * (lp - log_m)).sum(-1) + 0.5 * (lq.exp() * (lq - log_m)).sum(-1)


#: max |autocast JSD - float64 JSD of the same half-precision logits| over rows. Measured
#: (seeds 0-2, these logits): float32 arithmetic inside 3e-8 to 7e-8; softmax and logs computed
#: in bf16 3e-3 to 4e-3, in fp16 3e-4 to 6e-4. The tolerance sits 15x above the first and 280x
#: below the closest failure.
AUTOCAST_TOL = 1e-6


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_under_autocast(dtype):
    """Moderate logits (|z| ~ 1-3, JSD 0.002-0.5, far from the 0 and ln 2 clamps), so a loss
    of precision inside the function shows: each row must equal the float64 JSD of the very
    half-precision logits it was given, to float32 accuracy."""
    torch.manual_seed(1)
    layer = torch.nn.Linear(8, 5)
    x = torch.randn(64, 8) * 2
    ref32 = jensen_shannon(layer(x[:32]), layer(x[32:])).item()
    with torch.no_grad(), torch.autocast("cpu", dtype=dtype):
        a, b = layer(x[:32]), layer(x[32:])
        assert a.dtype == dtype
        rows, value = jensen_shannon_per_sample(a, b), jensen_shannon(a, b)
    assert rows.dtype == value.dtype == torch.float32 and torch.isfinite(rows).all()
    exact = _jsd_float64(a, b)
    assert exact.min() > 1e-3 and exact.max() < 0.6  # not saturated
    assert (rows.double() - exact).abs().max().item() < AUTOCAST_TOL
    assert value.item() == pytest.approx(exact.mean().item(), abs=AUTOCAST_TOL)
    assert value.item() == pytest.approx(ref32, abs=0.01)  # only the logits' rounding differs


logit_rows = st.lists(st.floats(-1e4, 1e4, allow_nan=False, width=32), min_size=2, max_size=6)


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_properties(data):
    row = data.draw(logit_rows)
    other = data.draw(st.lists(st.floats(-1e4, 1e4, allow_nan=False, width=32),
                               min_size=len(row), max_size=len(row)))
    p, q = torch.tensor([row]), torch.tensor([other])
    pq, qp = jensen_shannon_per_sample(p, q), jensen_shannon_per_sample(q, p)
    assert 0.0 <= pq.item() <= math.log(2) + 1e-7
    assert pq.item() == pytest.approx(qp.item(), abs=1e-6)
    # exact: equal inputs of one shape take the same kernels, so log p == log q bit for bit and
    # the formula gives 0 exactly (documented); near-equal rows are the clamp's business
    assert jensen_shannon_per_sample(p, p.clone()).item() == 0.0


def test_masked_mean_of_nothing_is_zero_and_of_one_row_is_that_row():
    from mmbalance.losses.divergence import masked_mean
    assert masked_mean(torch.zeros(0)).item() == 0.0  # not the nan of an empty mean
    values = torch.tensor([2.0, 4.0, 6.0])
    assert masked_mean(values, torch.tensor([False, True, False])).item() == 4.0
    assert masked_mean(values, torch.tensor([False, False, False])).item() == 0.0
    assert masked_mean(values).item() == 4.0


@pytest.mark.parametrize("classes_first_max", [32, 0], ids=["classes-first layout", "last-axis layout"])
def test_rows_kernel_matches_the_log_prob_form_and_its_gradient_is_exact(monkeypatch, classes_first_max):
    """``jensen_shannon_rows`` (one autograd node, the MIPD's kernel) against the brute-force
    loop and the autograd of ``jensen_shannon_log_probs``: values and both gradients, with the
    reference broadcast over leading axes; gradcheck in float64; extreme logits stay finite.
    Both of its layouts (classes first, the CPU's with few classes; classes last)."""
    import torch.nn.functional as F

    from mmbalance.losses import divergence
    from mmbalance.losses.divergence import jensen_shannon_log_probs, jensen_shannon_rows
    monkeypatch.setattr(divergence, "CLASSES_FIRST_MAX", classes_first_max)
    monkeypatch.setattr(divergence, "CLASSES_FIRST_MIN_ROWS", 0)

    torch.manual_seed(0)
    a = torch.randn(2, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(jensen_shannon_rows, (a, b))
    values = jensen_shannon_rows(a, b)
    for i in range(2):
        for j in range(3):
            for k in range(4):
                assert values[i, j, k].item() == pytest.approx(_brute_jsd(a[i, j, k][None].detach(), b[k][None].detach()), abs=1e-12)
    weights = torch.rand(2, 3, 4, dtype=torch.float64)
    ga, gb = torch.autograd.grad((values * weights).sum(), (a, b))
    ref = jensen_shannon_log_probs(F.log_softmax(a, -1), F.log_softmax(b, -1))
    ra, rb = torch.autograd.grad((ref * weights).sum(), (a, b))
    torch.testing.assert_close(ga, ra, rtol=0, atol=1e-12)
    torch.testing.assert_close(gb, rb, rtol=0, atol=1e-12)
    big = torch.tensor([[1e4, -1e4, 0.0]], requires_grad=True)
    out = jensen_shannon_rows(big.expand(2, 1, 3), torch.tensor([[-1e4, 1e4, 0.0]]))
    assert torch.all((out >= 0) & (out <= math.log(2))) and out[0].item() == pytest.approx(math.log(2))
    out.sum().backward()
    assert torch.isfinite(big.grad).all()
    same = torch.randn(6, 4)
    # exactly 0 for equal inputs (documented): one tensor on both sides, so the same kernels
    assert torch.equal(jensen_shannon_rows(same, same), torch.zeros(6))
