"""The statistics against hand computations."""

from __future__ import annotations

import math

import pytest

from mmbalance.bench.stats import (RANK_CAVEAT, binomial_difference_sd, format_ci, headroom_closed, mean_ci,
                                   paired_ci_half_width, paired_difference, ranks, t_quantile)


def test_t_quantiles_from_the_table():
    # printed t tables: t_{0.975, 4} = 2.776, t_{0.975, 2} = 4.303, t_{0.95, 9} = 1.833
    assert t_quantile(0.975, 4) == pytest.approx(2.776, abs=5e-4)
    assert t_quantile(0.975, 2) == pytest.approx(4.303, abs=5e-4)
    assert t_quantile(0.95, 9) == pytest.approx(1.833, abs=5e-4)


def test_mean_ci_by_hand():
    # [1..5]: mean 3, sd sqrt(2.5) = 1.5811, hw = 2.776 * 1.5811 / sqrt(5) = 1.963
    ci = mean_ci([1, 2, 3, 4, 5])
    assert ci.mean == 3 and ci.n == 5
    assert ci.half_width == pytest.approx(1.963, abs=1e-3)
    assert (ci.low, ci.high) == pytest.approx((1.037, 4.963), abs=1e-3)
    # 90%: t_{0.95,4} = 2.132 -> 2.132 * 0.7071 = 1.5075
    assert mean_ci([1, 2, 3, 4, 5], level=0.9).half_width == pytest.approx(1.5075, abs=1e-3)


def test_one_value_has_no_interval_and_never_prints_zero_width():
    ci = mean_ci([0.7])
    assert ci.mean == 0.7 and math.isnan(ci.half_width)
    text = format_ci(ci, scale=100)
    assert text == "70.00 (n=1)" and "±" not in text
    assert format_ci(mean_ci([1, 2, 3, 4, 5])) == "3.00 ± 1.96"


def test_mean_ci_rejects_empty_and_nan():
    with pytest.raises(ValueError):
        mean_ci([])
    with pytest.raises(ValueError):
        mean_ci([1.0, math.nan])


def test_paired_difference_by_hand():
    # differences [1, 2, 3]: mean 2, sd 1, hw = 4.303 / sqrt(3) = 2.484 -> [-0.484, 4.484]
    d = paired_difference([3, 5, 7], [2, 3, 4])
    assert d.interval.mean == 2 and d.interval.half_width == pytest.approx(2.484, abs=1e-3)
    assert not d.significant
    # differences [2, 2.1, 1.9, 2, 2]: sd 0.0707, hw 0.0878 -> excludes 0
    d = paired_difference([3, 3.1, 2.9, 3, 3], [1, 1, 1, 1, 1])
    assert d.interval.half_width == pytest.approx(2.776 * 0.070711 / math.sqrt(5), abs=1e-4)
    assert d.significant
    # the pairing matters: unpaired, 20 ± 24.8 and 19 ± 24.8 overlap; paired, every seed is +1
    assert paired_difference([10, 20, 30], [9, 19, 29]).significant
    assert mean_ci([10, 20, 30]).half_width == pytest.approx(24.84, abs=0.01)
    assert paired_difference([1], [0]).significant is False  # n = 1: no interval, never significant


def test_paired_difference_negative_and_length_check():
    assert paired_difference([1, 1.1, 0.9], [3, 3, 3]).significant
    with pytest.raises(ValueError):
        paired_difference([1, 2], [1])


def test_headroom_closed():
    assert headroom_closed(0.65, 0.60, 0.70) == pytest.approx(0.5)
    assert headroom_closed(0.70, 0.60, 0.70) == pytest.approx(1.0)
    assert headroom_closed(0.55, 0.60, 0.70) == pytest.approx(-0.5)
    assert math.isnan(headroom_closed(0.61, 0.70, 0.70))
    assert math.isnan(headroom_closed(0.61, 0.71, 0.70))


def test_ranks_with_ties_and_caveat():
    assert ranks({"a": 0.6, "b": 0.7, "c": 0.6, "d": 0.5}) == (("b", 1), ("a", 2), ("c", 2), ("d", 4))
    assert ranks({"a": 1.0, "b": 2.0}, higher_is_better=False) == (("a", 1), ("b", 2))
    assert "not significant" in RANK_CAVEAT


def test_planning_half_width_and_binomial_sd():
    # sd 1.0 over 5 seeds: 2.776 / sqrt(5) = 1.2415
    assert paired_ci_half_width(1.0, 5) == pytest.approx(1.2415, abs=1e-3)
    assert math.isnan(paired_ci_half_width(1.0, 1))
    # p = 0.6 both, n = 900: sqrt(2 * 0.24 / 900) = 0.02309
    assert binomial_difference_sd(0.6, 0.6, 900) == pytest.approx(0.02309, abs=1e-5)
    # paired: 10% disagreement, delta 0.02: sqrt((0.1 - 0.0004) / 900) = 0.010520
    assert binomial_difference_sd(0.62, 0.60, 900, disagreement=0.1) == pytest.approx(0.010520, abs=1e-5)


def test_format_ci_never_prints_a_zero_interval():
    from mmbalance.bench.stats import format_ci, mean_ci
    assert format_ci(mean_ci([0.5, 0.5, 0.5]), scale=100) == "50.00 (same in all 3 seeds)"
    assert "±" not in format_ci(mean_ci([0.5]))
