"""Fusion networks: ``forward(features: dict[str, Tensor (N, D_m)]) -> Tensor (N, C)``.

Optional protocol, read by methods and by MCR's gradient routing:

- ``modality_parameters(m)``: the fusion parameters that belong to modality m alone (the
  weight slice ``W_m`` of a linear fusion); every other fusion parameter is shared.
- ``decomposable = True`` with ``modality_logits(features)`` and ``shared_logits()``: the
  output is a sum of per-modality products plus a shared part, so a perturbation of one
  modality can be applied to its (N, C) product instead of its (N, D_m) features.

Every fusion is built from ``feature_dims`` (modality -> D_m, in the model's modality
order) and ``num_classes``. Any ``nn.Module`` with the same call signature can be passed
to :class:`~mmbalance.models.MultimodalModel` instead of a name.
"""

from __future__ import annotations

from typing import Dict, Iterator

import torch
from torch import Tensor, nn


class ConcatLinear(nn.Module):
    """One linear layer on the concatenation ``[z_1, ..., z_M] W^T + b``.

    Stored as one bias-free ``Linear(D_m, C)`` per modality plus a shared bias, which is the
    same function and gives each modality's slice ``W_m`` of the weight by structure.
    Per-modality contributions are ``z_m W_m^T + b / M`` (the authors' split of the bias),
    and they sum to the fused logits.
    """

    decomposable = True

    def __init__(self, feature_dims: Dict[str, int], num_classes: int) -> None:
        super().__init__()
        self.weights = nn.ModuleDict({m: nn.Linear(d, num_classes, bias=False)
                                      for m, d in feature_dims.items()})
        self.bias = nn.Parameter(torch.zeros(num_classes))
        # Same initialisation as one nn.Linear on the concatenation.
        bound = 1.0 / (sum(feature_dims.values()) ** 0.5)
        for layer in self.weights.values():
            nn.init.uniform_(layer.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def contributions(self, features: Dict[str, Tensor]) -> Dict[str, Tensor]:
        """Modality -> (N, C) contribution ``z_m W_m^T + b/M``; their sum is the output."""
        share = self.bias / len(self.weights)
        return {m: z + share for m, z in self.modality_logits(features).items()}

    def modality_logits(self, features: Dict[str, Tensor]) -> Dict[str, Tensor]:
        """Modality -> (N, C) product ``z_m W_m^T`` (no bias), for the modalities present in
        ``features``. With :meth:`shared_logits` this is the decomposable-fusion protocol:
        ``forward(z) == sum_m modality_logits(z)[m] + shared_logits()``."""
        return {m: self.weights[m](z) for m, z in features.items()}

    def shared_logits(self) -> Tensor:
        """(C,) the part of the output no modality owns: the bias."""
        return self.bias

    def modality_parameters(self, modality: str) -> Iterator[nn.Parameter]:
        """The weight slice ``W_m`` of one modality (not the shared bias). Fusion parameters
        reported here follow modality m's gradient routing in MCR's game; all others are
        shared."""
        return self.weights[modality].parameters()

    def forward(self, features: Dict[str, Tensor]) -> Tensor:
        out = self.bias
        for m, layer in self.weights.items():
            out = out + layer(features[m])
        return out


class ConcatMLP(nn.Module):
    """Concatenation, then ``Linear -> ReLU -> Linear``."""

    decomposable = False

    def __init__(self, feature_dims: Dict[str, int], num_classes: int, hidden: int = 128) -> None:
        super().__init__()
        self.order = list(feature_dims)
        self.net = nn.Sequential(nn.Linear(sum(feature_dims.values()), hidden), nn.ReLU(),
                                 nn.Linear(hidden, num_classes))

    def forward(self, features: Dict[str, Tensor]) -> Tensor:
        return self.net(torch.cat([features[m] for m in self.order], dim=-1))


class SumFusion(nn.Module):
    """A linear projection per modality to a shared width, summed, then ``ReLU -> Linear``."""

    decomposable = False

    def __init__(self, feature_dims: Dict[str, int], num_classes: int, hidden: int = 128) -> None:
        super().__init__()
        self.proj = nn.ModuleDict({m: nn.Linear(d, hidden) for m, d in feature_dims.items()})
        self.out = nn.Sequential(nn.ReLU(), nn.Linear(hidden, num_classes))

    def forward(self, features: Dict[str, Tensor]) -> Tensor:
        total = sum(layer(features[m]) for m, layer in self.proj.items())
        return self.out(total)


class GatedFusion(nn.Module):
    """Softmax gates over modalities, computed from the concatenation, weigh the
    ``tanh`` projections of each modality: ``h = sum_m g_m tanh(W_m z_m)``, then a Linear."""

    decomposable = False

    def __init__(self, feature_dims: Dict[str, int], num_classes: int, hidden: int = 128) -> None:
        super().__init__()
        self.order = list(feature_dims)
        self.proj = nn.ModuleDict({m: nn.Linear(d, hidden) for m, d in feature_dims.items()})
        self.gate = nn.Linear(sum(feature_dims.values()), len(feature_dims))
        self.out = nn.Linear(hidden, num_classes)

    def forward(self, features: Dict[str, Tensor]) -> Tensor:
        gates = torch.softmax(self.gate(torch.cat([features[m] for m in self.order], -1)), -1)
        hidden = torch.stack([torch.tanh(self.proj[m](features[m])) for m in self.order], 1)
        return self.out((gates.unsqueeze(-1) * hidden).sum(1))


class FiLMFusion(nn.Module):
    """FiLM (Perez et al., 2018): the first modality's projection is scaled and shifted by
    ``gamma, beta`` predicted from the concatenation of the others, then ``ReLU -> Linear``."""

    decomposable = False

    def __init__(self, feature_dims: Dict[str, int], num_classes: int, hidden: int = 128) -> None:
        super().__init__()
        self.order = list(feature_dims)
        first, rest = self.order[0], self.order[1:]
        self.proj = nn.Linear(feature_dims[first], hidden)
        self.film = nn.Linear(sum(feature_dims[m] for m in rest), 2 * hidden)
        self.out = nn.Sequential(nn.ReLU(), nn.Linear(hidden, num_classes))

    def forward(self, features: Dict[str, Tensor]) -> Tensor:
        cond = torch.cat([features[m] for m in self.order[1:]], dim=-1)
        gamma, beta = self.film(cond).chunk(2, dim=-1)
        return self.out(gamma * self.proj(features[self.order[0]]) + beta)


FUSIONS = {
    "concat_linear": ConcatLinear,
    "concat_mlp": ConcatMLP,
    "sum": SumFusion,
    "gated": GatedFusion,
    "film": FiLMFusion,
}
