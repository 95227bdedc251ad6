"""A shared head: ONE classifier applied to every modality's features (MLA, ReconBoost).

``SharedHead(feature_dims, num_classes)`` is a fusion (called as ``fusion(features) -> (N, C)``)
whose output is the sum of the head applied to each modality,
``sum_m head(P_m z_m)``, and whose per-modality outputs ``head(P_m z_m)`` are the model's
unimodal logits (:meth:`MultimodalModel.forward` reads them through ``modality_logits``
when the fusion says ``shared = True``). ``P_m`` is the identity unless ``project`` is set:
then each modality gets its own ``Linear(D_m, project)`` first, which lets modalities of
different feature sizes share one head. Without it every D_m must be equal.

Two heads, by name (``model.fusion``): ``shared_linear`` (one ``Linear(D, C)``, MLA's
``fusion_module.fc_out``) and ``shared_mlp`` (``Linear(D, hidden) -> ReLU -> Linear(hidden, C)``,
ReconBoost's ``Head``, hidden 256 in its code; here ``model.fusion_hidden``).
"""

from __future__ import annotations

from typing import Dict, Iterator, Optional

import torch
from torch import Tensor, nn

from ..errors import ConfigError


def _sizing_placeholder() -> bool:
    """True while :func:`mmbalance.models.lazy.placeholder` builds with stand-in sizes (on the
    meta device): the real sizes, and so whether they are equal, are not known yet."""
    return torch.empty(0).device.type == "meta"


class SharedHead(nn.Module):
    """One head for all modalities; ``forward`` sums its per-modality outputs.

    Args:
        feature_dims: modality -> D_m, in the model's modality order.
        num_classes: C.
        hidden: width of the MLP head's hidden layer (``mlp=True``).
        project: width of a per-modality ``Linear(D_m, project)`` applied before the head;
            ``None`` (default): no projection, so every D_m must be equal.
        mlp: ``Linear -> ReLU -> Linear`` instead of one ``Linear``.

    Raises:
        ConfigError: the feature sizes differ and ``project`` is not set.
    """

    shared = True  # the protocol MultimodalModel and the shared-head methods read
    decomposable = False

    def __init__(self, feature_dims: Dict[str, int], num_classes: int, hidden: int = 128,
                 project: Optional[int] = None, mlp: bool = False) -> None:
        super().__init__()
        sizes = {int(d) for d in feature_dims.values()}
        if project is None and len(sizes) > 1 and not _sizing_placeholder():
            listed = ", ".join(f"{m}={d}" for m, d in feature_dims.items())
            raise ConfigError(f"a shared head needs equal feature sizes, got {listed}: set model.shared_dim=N "
                              "to project every modality to N features first")
        if project is not None and project < 1:
            raise ConfigError(f"model.shared_dim must be >= 1, got {project}")
        self.order = list(feature_dims)
        self.project = None if project is None else nn.ModuleDict(
            {m: nn.Linear(d, project) for m, d in feature_dims.items()})
        width = project if project is not None else int(next(iter(feature_dims.values())))
        self.in_features = width
        if mlp:
            self.head = nn.Sequential(nn.Linear(width, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))
        else:
            self.head = nn.Sequential(nn.Linear(width, num_classes))

    @property
    def input_layer(self) -> nn.Linear:
        """The head's first ``Linear``: the layer that sees each modality's (projected) feature
        (MLA's gradient projector acts on its weight)."""
        return self.head[0]

    def head_input(self, modality: str, z: Tensor) -> Tensor:
        """(N, D) the input the head gets for one modality: ``z`` or its projection."""
        return z if self.project is None else self.project[modality](z)

    def modality_logits(self, features: Dict[str, Tensor]) -> Dict[str, Tensor]:
        """Modality -> (N, C) ``head(P_m z_m)``, for the modalities present in ``features``."""
        return {m: self.head(self.head_input(m, z)) for m, z in features.items()}

    @staticmethod
    def combine(logits: Dict[str, Tensor]) -> Tensor:
        """(N, C) the sum of per-modality outputs, in their order: what ``forward`` returns."""
        values = list(logits.values())
        out = values[0]
        for z in values[1:]:
            out = out + z
        return out

    def forward(self, features: Dict[str, Tensor]) -> Tensor:
        return self.combine(self.modality_logits({m: features[m] for m in self.order}))

    def modality_parameters(self, modality: str) -> Iterator[nn.Parameter]:
        """The projection of one modality (none without ``project``); the head is shared."""
        return iter(()) if self.project is None else self.project[modality].parameters()

    def head_parameters(self) -> Iterator[nn.Parameter]:
        """The shared head's parameters."""
        return self.head.parameters()


def shared_linear(feature_dims: Dict[str, int], num_classes: int, hidden: int = 128,
                  project: Optional[int] = None) -> SharedHead:
    return SharedHead(feature_dims, num_classes, hidden, project, mlp=False)


def shared_mlp(feature_dims: Dict[str, int], num_classes: int, hidden: int = 128,
               project: Optional[int] = None) -> SharedHead:
    return SharedHead(feature_dims, num_classes, hidden, project, mlp=True)


#: the shared-head fusions, by name (``model.fusion``)
SHARED_HEADS = {"shared_linear": shared_linear, "shared_mlp": shared_mlp}
