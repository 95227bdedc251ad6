"""Within-batch permutations used to perturb latents (paper Section 3.3)."""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

PERMUTATION_KINDS = ("all", "derangement", "different_label")


def sample_permutations(batch_size: int, num: int, kind: str = "all", labels: Optional[Tensor] = None,
                        device: Optional[torch.device] = None,
                        generator: Optional[torch.Generator] = None) -> Tuple[Tensor, Tensor]:
    """Draws ``num`` independent within-batch permutations.

    Kinds (the authors' ``rand``, ``rsi``, ``rsl``):
        - ``all``: uniform over all permutations (fixed points kept); every position valid.
        - ``derangement``: uniform over permutations without fixed points (rejection
          sampling, about e draws per row). For ``batch_size == 1`` none exists: the
          documented empty set, every position invalid.
        - ``different_label``: uniform permutations; only positions whose partner has another
          label are valid. For a batch of one class the set is empty.

    Args:
        batch_size: B.
        num: P, the number of permutations.
        kind: one of ``PERMUTATION_KINDS``.
        labels: (B,) labels, needed by ``different_label``.
        device: where to put the result.
        generator: optional RNG (the global one otherwise).

    Returns:
        ``(perms, valid)``: (P, B) int64 indices, each row a permutation of ``range(B)``, and
        a (P, B) bool mask of the positions that count.
    """
    if kind not in PERMUTATION_KINDS:
        raise ValueError(f"unknown permutation kind {kind!r}; valid: {', '.join(PERMUTATION_KINDS)}")
    perms = _uniform(num, batch_size, device, generator)
    if kind == "all":
        return perms, torch.ones_like(perms, dtype=torch.bool)
    if kind == "different_label":
        if labels is None:
            raise ValueError("the different_label permutation needs labels")
        labels = labels.reshape(-1).to(perms.device)
        return perms, labels[perms] != labels[None, :]
    if batch_size < 2:
        return perms, torch.zeros_like(perms, dtype=torch.bool)
    identity = torch.arange(batch_size, device=perms.device)
    bad = (perms == identity).any(1)
    while bad.any():
        perms[bad] = _uniform(int(bad.sum()), batch_size, perms.device, generator)
        bad = (perms == identity).any(1)
    return perms, torch.ones_like(perms, dtype=torch.bool)


def _uniform(num: int, batch_size: int, device, generator) -> Tensor:
    keys = torch.rand(num, batch_size, device=device, generator=generator)
    return keys.argsort(dim=1)
