"""Statistics a reader can trust: confidence intervals over seeds, paired differences, the
share of headroom to the Bayes ceiling a method closes, and ranks with their caveat.

Pure functions of plain sequences of numbers; no I/O. With one seed there is no interval:
the half-width is NaN and :func:`format_ci` prints the mean alone, never "± 0.00".
"""

from __future__ import annotations

import math
from typing import Mapping, NamedTuple, Optional, Sequence, Tuple

import numpy as np

RANK_CAVEAT = ("ranks order the means only; two methods whose paired difference is not "
               "significant (its 95% CI contains 0) are not distinguishable on this evidence")


class Interval(NamedTuple):
    """A mean with a two-sided Student-t confidence interval over ``n`` values."""

    mean: float
    half_width: float  # NaN when n < 2
    n: int
    level: float

    @property
    def low(self) -> float:
        return self.mean - self.half_width

    @property
    def high(self) -> float:
        return self.mean + self.half_width


class PairedDifference(NamedTuple):
    """Mean of ``a - b`` over paired values (same seeds) with its CI; ``significant`` only
    when the CI excludes 0."""

    interval: Interval
    significant: bool


def t_quantile(p: float, dof: int) -> float:
    """The p-quantile of Student's t with ``dof`` degrees of freedom."""
    from scipy.stats import t
    return float(t.ppf(p, dof))


def mean_ci(values: Sequence[float], level: float = 0.95) -> Interval:
    """Mean and Student-t interval ``mean ± t_{(1+level)/2, n-1} * sd / sqrt(n)``.

    Args:
        values: one number per seed (NaNs are an error: drop failed runs first).
        level: the confidence level.
    """
    x = np.asarray(values, dtype=float)
    if x.size == 0 or not np.isfinite(x).all():
        raise ValueError("mean_ci needs at least one finite value")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if x.size == 1:
        return Interval(float(x[0]), math.nan, 1, level)
    sd = float(x.std(ddof=1))
    return Interval(float(x.mean()), t_quantile((1 + level) / 2, x.size - 1) * sd / math.sqrt(x.size),
                    int(x.size), level)


def paired_difference(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> PairedDifference:
    """``a - b`` over paired runs (the same seeds, in the same order)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired values need equal lengths, got {a.shape} and {b.shape}")
    interval = mean_ci(a - b, level)
    significant = interval.n > 1 and (interval.low > 0 or interval.high < 0)
    return PairedDifference(interval, bool(significant))


def headroom_closed(acc: float, joint: float, ceiling: float, eps: float = 1e-9) -> float:
    """``(acc - joint) / (ceiling - joint)``: 1 reaches the Bayes ceiling, 0 is joint
    training, negative is worse than joint. NaN when joint is at (or above) the ceiling,
    where there is no headroom to close."""
    room = ceiling - joint
    if room <= eps:
        return math.nan
    return (acc - joint) / room


def ranks(means: Mapping[str, float], higher_is_better: bool = True) -> Tuple[Tuple[str, int], ...]:
    """Competition ranks (1 = best; ties share the better rank), best first. Report them with
    :data:`RANK_CAVEAT`."""
    order = sorted(means.items(), key=lambda kv: -kv[1] if higher_is_better else kv[1])
    out, last, last_rank = [], None, 0
    for i, (name, value) in enumerate(order, 1):
        rank = last_rank if value == last else i
        out.append((name, rank))
        last, last_rank = value, rank
    return tuple(out)


def format_ci(interval: Interval, scale: float = 1.0, digits: int = 2) -> str:
    """``"mean ± hw"``, or the mean alone with ``(n=1)`` when there is no interval."""
    mean = f"{scale * interval.mean:.{digits}f}"
    if math.isnan(interval.half_width):
        return f"{mean} (n={interval.n})"
    if abs(interval.half_width) < 1e-9:  # every seed gave the same value (up to rounding): no spread
        return f"{mean} (same in all {interval.n} seeds)"
    return f"{mean} ± {scale * interval.half_width:.{digits}f}"


def paired_ci_half_width(sd_of_difference: float, n_seeds: int, level: float = 0.95) -> float:
    """The half-width a paired difference's CI will have over ``n_seeds`` seeds when the
    per-seed differences have standard deviation ``sd_of_difference`` (a planning tool)."""
    if n_seeds < 2:
        return math.nan
    return t_quantile((1 + level) / 2, n_seeds - 1) * sd_of_difference / math.sqrt(n_seeds)


def binomial_difference_sd(p_a: float, p_b: float, n_test: int, disagreement: Optional[float] = None) -> float:
    """The test-sampling s.d. of an accuracy difference of two classifiers scored on the same
    ``n_test`` rows. With ``disagreement`` (the share of rows where exactly one is right) it
    is the paired (McNemar) s.d.; without, the conservative unpaired one."""
    if disagreement is None:
        return math.sqrt((p_a * (1 - p_a) + p_b * (1 - p_b)) / n_test)
    delta = p_a - p_b
    return math.sqrt(max(disagreement - delta ** 2, 0.0) / n_test)
