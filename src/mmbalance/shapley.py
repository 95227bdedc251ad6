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


#: how :func:`modality_shapley` removes a modality outside the coalition
REMOVALS = ("zero", "permute")


def modality_shapley(method: Any, inputs: Dict[str, Any], labels: Any, how: str = "zero", seed: int = 0,
                     batch_size: int = 1024) -> Dict[str, float]:
    """Exact Shapley value of each modality, the value of a coalition S being the accuracy
    of ``method.predict`` on ``inputs`` with the modalities outside S removed (BalanceBenchmark's
    imbalance metric, ``Calculate_Shapley``; v of the empty coalition is that accuracy with
    every modality removed, not forced to 0). Every coalition goes through the model's one
    modality-dropping path, ``model.forward_dropped``:

    - ``zero``: the removed modalities' encoder features are zeroed (``how="feature"``);
    - ``permute``: the removed modalities' inputs are permuted across the rows (one seeded
      permutation of all rows, the same for every coalition) and nothing is zeroed, so the
      fusion sees in-distribution features that carry no information about the row.

    Args:
        method: a trained method (``method.model`` a MultimodalModel), in eval mode.
        inputs: modality -> (N, ...) tensor of every row.
        labels: (N,) class indices.
        how: one of :data:`REMOVALS`.
        seed: the permutation's seed.

    Returns:
        modality -> phi (fractions of accuracy; they sum to v(all) - v(empty)).
    """
    import torch
    from .errors import ConfigError
    if how not in REMOVALS:
        raise ConfigError(f"unknown modality removal {how!r}; valid: {', '.join(REMOVALS)}")
    model = method.model
    players = list(model.modalities)
    n = int(labels.shape[0])
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    cache: Dict[FrozenSet[str], float] = {}

    @torch.no_grad()
    def value(coalition: FrozenSet[str]) -> float:
        if coalition not in cache:
            correct = 0
            for start in range(0, n, batch_size):
                rows = torch.arange(start, min(n, start + batch_size))
                if how == "zero":
                    batch = {m: inputs[m][rows] for m in players}
                    out = model.forward_dropped(batch, sorted(coalition), how="feature")
                else:
                    batch = {m: inputs[m][rows if m in coalition else perm[rows]] for m in players}
                    out = model.forward_dropped(batch, players, how="feature")
                correct += int((method.predict(out).argmax(-1) == labels[rows]).sum())
            cache[coalition] = correct / n
        return cache[coalition]

    return shapley(players, value)
