"""How much each modality contributes to a trained model's predictions.

Everything works on the method's own forward pass: forward hooks on
``model.encoders[m]`` replace that modality's latent (with a permuted copy, or zeros)
while the rest of the method runs as in evaluation, so fusion, unimodal heads and
``Method.predict`` (for example the Ensemble's combination) are all taken into account.
"""

from __future__ import annotations

import itertools
from contextlib import contextmanager
from typing import Callable, Dict, FrozenSet, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from ..losses import jensen_shannon
from ..shapley import shapley

#: modality -> f(sample indices (B,), the encoder's real output (B, ...)) -> replacement
Replacements = Mapping[str, Callable[[Tensor, Tensor], Tensor]]


def shapley_values(players: Sequence[str], value: Mapping[FrozenSet[str], float]) -> Dict[str, float]:
    """Exact Shapley values: ``phi_m = sum_S |S|!(M-|S|-1)!/M! (v(S + m) - v(S))`` over
    coalitions S without m.

    Args:
        players: the M modalities.
        value: every coalition (frozenset, including the empty one) -> its value.
    """
    return shapley(players, value.__getitem__)


@contextmanager
def replaced_latents(model: torch.nn.Module, replacements: Replacements, index: List[Tensor]) -> Iterator[None]:
    """Within the block, ``model.encoders[m]``'s output is ``replacements[m](index[0], output)``;
    ``index[0]`` holds the current batch's sample indices (set by the caller per batch)."""
    handles = [model.encoders[m].register_forward_hook(lambda mod, inp, out, f=f: f(index[0], out))
               for m, f in replacements.items()]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def run_predictions(method: torch.nn.Module, dataset: Dataset, batch_size: int,
                    replacements: Optional[Replacements] = None) -> Dict[str, Tensor]:
    """The method's outputs on ``dataset`` (in order) with some latents replaced.

    Returns:
        ``fused`` (N, C), ``label`` (N,), ``head/<m>`` (N, C) and ``features/<m>`` (N, ...)
        for every modality the method encoded.
    """
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, generator=torch.Generator())
    model = method.model
    index: List[Tensor] = [torch.empty(0, dtype=torch.long)]
    captured: Dict[str, List[Tensor]] = {}
    capture = {m: (lambda idx, out, m=m: captured.setdefault(m, []).append(out.detach()))
               for m in model.modalities if m not in (replacements or {})}
    out_parts: Dict[str, List[Tensor]] = {}
    start = 0
    with replaced_latents(model, {**capture, **(replacements or {})}, index):
        for inputs, y in loader:
            index[0] = torch.arange(start, start + len(y))
            start += len(y)
            out = method(inputs)
            out_parts.setdefault("fused", []).append(method.predict(out).float())
            out_parts.setdefault("label", []).append(y)
            for m, z in out.unimodal_logits.items():
                out_parts.setdefault(f"head/{m}", []).append(z.float())
    result = {k: torch.cat(v) for k, v in out_parts.items()}
    result.update({f"features/{m}": torch.cat(v) for m, v in captured.items()})
    return result


def as_logits(pred: Tensor) -> Tensor:
    """Logits for the JSD: predictions that are already probabilities (rows >= 0 summing
    to 1, e.g. the Ensemble's softmax mean) become log-probabilities."""
    if (pred >= 0).all() and torch.allclose(pred.sum(-1), torch.ones(len(pred)), atol=1e-4):
        return pred.clamp_min(1e-12).log()
    return pred


def score(pred: Tensor, label: Tensor, regression: bool) -> float:
    """Accuracy, or minus the mean squared error for regression (higher is better)."""
    if regression:
        return -float(((pred.reshape(-1) - label.float()) ** 2).mean())
    return float((pred.argmax(-1) == label).float().mean())


def divergence(base: Tensor, other: Tensor, regression: bool) -> float:
    """JSD (natural log, batch mean) between two predictions; mean squared change for regression."""
    if regression:
        return float(((base - other) ** 2).mean())
    return float(jensen_shannon(as_logits(base), as_logits(other)))


def permutation_importance(method, dataset, batch_size: int, features: Mapping[str, Tensor], base: Tensor,
                           label: Tensor, permutations: int = 5, seed: int = 0,
                           regression: bool = False) -> Dict[str, Tuple[float, float]]:
    """Modality -> (divergence, score drop) with its latent permuted across the split,
    averaged over ``permutations`` seeded permutations."""
    rng = np.random.default_rng(seed)
    n, base_score = len(label), score(base, label, regression)
    out = {}
    for m, feats in features.items():
        divs, drops = [], []
        for _ in range(permutations):
            perm = torch.from_numpy(rng.permutation(n))
            pred = run_predictions(method, dataset, batch_size,
                                   {m: lambda idx, real, f=feats, p=perm: f[p[idx]]})["fused"]
            divs.append(divergence(base, pred, regression))
            drops.append(base_score - score(pred, label, regression))
        out[m] = (float(np.mean(divs)), float(np.mean(drops)))
    return out


def zero_mask_values(method, dataset, batch_size: int, modalities: Sequence[str], label: Tensor,
                     regression: bool = False) -> Dict[FrozenSet[str], float]:
    """Every coalition S -> the score with the latents of the modalities outside S zeroed."""
    values = {}
    for k in range(len(modalities) + 1):
        for present in itertools.combinations(modalities, k):
            masked = {m: (lambda idx, real: torch.zeros_like(real)) for m in modalities if m not in present}
            pred = run_predictions(method, dataset, batch_size, masked)["fused"]
            values[frozenset(present)] = score(pred, label, regression)
    return values
