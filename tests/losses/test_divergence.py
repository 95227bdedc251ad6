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


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_under_autocast(dtype):
    torch.manual_seed(1)
    layer = torch.nn.Linear(8, 5)
    x = torch.randn(16, 8) * 50
    ref = jensen_shannon(layer(x[:8]), layer(x[8:]))
    with torch.autocast("cpu", dtype=dtype):
        a, b = layer(x[:8]), layer(x[8:])
        assert a.dtype == dtype
        value = jensen_shannon(a, b)
    assert value.dtype == torch.float32 and torch.isfinite(value)
    assert value.item() == pytest.approx(ref.item(), abs=0.02)


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
    assert jensen_shannon_per_sample(p, p.clone()).item() == 0.0
