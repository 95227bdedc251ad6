"""Exact Shapley values, for floats (analysis) and tensors (AGM's per-sample shares)."""

from __future__ import annotations

from itertools import combinations
from math import factorial
from typing import Any, Callable, Dict, FrozenSet, Sequence


def shapley(players: Sequence[str], value: Callable[[FrozenSet[str]], Any]) -> Dict[str, Any]:
    """``phi_p = sum_{S without p} |S|!(M-|S|-1)!/M! (v(S + p) - v(S))``.

    Args:
        players: the M players (modalities).
        value: coalition (frozenset, the empty one included) -> its value: a float or a
            tensor (then each phi is a tensor of the same shape).
    """
    M, phi = len(players), {}
    for p in players:
        others = [q for q in players if q != p]
        total: Any = 0.0
        for size in range(M):
            weight = factorial(size) * factorial(M - size - 1) / factorial(M)
            for coalition in map(frozenset, combinations(others, size)):
                total = total + weight * (value(coalition | {p}) - value(coalition))
        phi[p] = total
    return phi
