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
    of the method's prediction on ``inputs`` with the modalities outside S removed
    (BalanceBenchmark's imbalance metric, ``Calculate_Shapley``; v of the empty coalition is
    that accuracy with every modality removed, not forced to 0).

    - ``zero``: the removed modalities' encoder features are zeroed. For a method that
      scores ``model(inputs)`` (the base ``Method.forward``) this is the model's one
      modality-dropping path, ``model.forward_dropped(inputs, S, how="feature")``. A method
      with its own forward (``unimodal``, ``mmcosine``, ``greedy``, ``amco``) builds its
      logits from the features itself, so there the same zeroing is applied to
      ``model.encode_modality``'s output while the method's own forward runs (it is an
      error if the method never encoded a removed modality that way).
    - ``permute``: the removed modalities' inputs are permuted across the rows (one seeded
      permutation of all rows, the same for every coalition) and the method runs as in
      evaluation; nothing is zeroed, so the fusion sees in-distribution features that carry
      no information about the row.

    Args:
        method: a trained method in eval mode: ``method(inputs)`` gives its ModelOutput,
            ``method.predict(out)`` the (B, C) scores, ``method.model`` the MultimodalModel.
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
    owner = next((c for c in type(method).__mro__ if "forward" in c.__dict__), None)
    base_forward = owner is None or owner.__module__.endswith("methods.base")
    cache: Dict[FrozenSet[str], float] = {}

    def scores(batch: Dict[str, Any], coalition: FrozenSet[str]) -> Any:
        if how == "permute":
            return method.predict(method(batch))
        if base_forward:
            return method.predict(model.forward_dropped(batch, sorted(coalition), how="feature"))
        return _own_forward_zeroed(method, batch, set(players) - coalition)

    @torch.no_grad()
    def value(coalition: FrozenSet[str]) -> float:
        if coalition not in cache:
            correct = 0
            for start in range(0, n, batch_size):
                rows = torch.arange(start, min(n, start + batch_size))
                batch = {m: inputs[m][rows if how == "zero" or m in coalition else perm[rows]] for m in players}
                correct += int((scores(batch, coalition).argmax(-1) == labels[rows]).sum())
            cache[coalition] = correct / n
        return cache[coalition]

    return shapley(players, value)


def _own_forward_zeroed(method: Any, batch: Dict[str, Any], removed: set) -> Any:
    """``method.predict(method(batch))`` with the features of ``removed`` zeroed where
    ``model.encode_modality`` returns them; an error if a removed modality's encoder ran
    by another path (its feature could not be zeroed)."""
    import torch
    from .errors import ConfigError
    model, zeroed_here, ran = method.model, set(), set()
    original = model.encode_modality

    def zeroed(m: str, x: Any) -> Any:
        z = original(m, x)
        if m in removed:
            zeroed_here.add(m)
            z = torch.zeros_like(z)
        return z

    hooks = [model.encoders[m].register_forward_hook(lambda *_, m=m: ran.add(m)) for m in removed]
    model.encode_modality = zeroed  # an instance attribute: shadows the method for this call only
    try:
        out = method.predict(method(batch))
    finally:
        del model.encode_modality
        for h in hooks:
            h.remove()
    if ran - zeroed_here:
        raise ConfigError(f"cannot zero modality {sorted(ran - zeroed_here)[0]!r}: {type(method).__name__}'s forward "
                          "encodes it without model.encode_modality")
    return out
