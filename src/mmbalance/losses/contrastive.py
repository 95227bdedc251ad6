"""Supervised contrastive term of MCR (paper Eq. 11 and 15, Appendix B)."""

from __future__ import annotations

from typing import Dict, Mapping, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from ..models.lazy import module_device, placeholder, realize


def supervised_contrastive(features: Sequence[Tensor], labels: Tensor, temperature: float = 0.5,
                           cross_modal_only: bool = False) -> Tensor:
    """Supervised contrastive loss over the features of M modalities.

    Default (the authors' code, pytorch-metric-learning's ``NTXentLoss`` on the stacked,
    L2-normalized features of all modalities with the labels repeated): each ordered pair
    (a, p) of distinct rows with the same label is a positive pair, and

        loss(a, p) = -log( e^{s_ap/t} / (e^{s_ap/t} + sum_{n: y_n != y_a} e^{s_an/t}) ),

    with s the cosine similarity, averaged over all positive pairs. Positives lie within
    and across modalities.

    ``cross_modal_only=True`` is the paper's Eq. 15: an anchor in modality a is contrasted
    only against the rows of each other modality b, its positives are the rows of b with its
    label (itself included), and the denominator runs over all rows of b:

        loss(i) = -1/|P_i| sum_{k in P_i} log( e^{s_ik/t} / sum_j e^{s_ij/t} ),

    averaged over anchors and ordered modality pairs.

    Documented values on degenerate batches: with no negatives (a batch of one class) every
    default pair loss is exactly 0; with no positive pair at all (only possible for M = 1)
    the loss is 0. Both keep the graph, so backward works.

    Args:
        features: M tensors of shape (B, D), same D (project first when sizes differ).
        labels: (B,) labels; equality defines positives.
        temperature: t > 0.
        cross_modal_only: use Eq. 15 instead of the authors' stacked NT-Xent.

    Returns:
        Scalar loss.
    """
    with torch.autocast(device_type=labels.device.type, enabled=False):
        z = F.normalize(torch.cat([f.float() for f in features]), dim=-1)
        sim = z @ z.t() / temperature
    num_mod, batch = len(features), labels.shape[0]
    y = labels.reshape(-1).repeat(num_mod)
    same = y[:, None] == y[None, :]
    if cross_modal_only:
        return _cross_modal(sim, same, num_mod, batch)
    eye = torch.eye(len(y), dtype=torch.bool, device=y.device)
    positive = same & ~eye
    neg_lse = torch.logsumexp(sim.masked_fill(same, float("-inf")), dim=1, keepdim=True)
    pair_loss = F.softplus(neg_lse - sim)  # = -log(e^s / (e^s + sum_neg e^s_n)); 0 if no negatives
    pair_loss = torch.where(positive, pair_loss, torch.zeros_like(pair_loss))
    return pair_loss.sum() / positive.sum().clamp(min=1)


def _cross_modal(sim: Tensor, same: Tensor, num_mod: int, batch: int) -> Tensor:
    losses = []
    for a in range(num_mod):
        for b in range(num_mod):
            if a == b:
                continue
            rows, cols = slice(a * batch, (a + 1) * batch), slice(b * batch, (b + 1) * batch)
            block, pos = sim[rows, cols], same[rows, cols].float()
            log_prob = block - torch.logsumexp(block, dim=1, keepdim=True)
            losses.append(-((log_prob * pos).sum(1) / pos.sum(1)).mean())
    return torch.stack(losses).mean()


class SupervisedContrastive(nn.Module):
    """``weight * supervised_contrastive(features, labels)`` (paper Eq. 11, the shared-
    information term of MCR), with a linear projection per modality when feature sizes differ.

    Args:
        weight: >= 0.
        temperature: t > 0.
        cross_modal_only: the paper's Eq. 15 form instead of the authors' stacked NT-Xent.
        projection_dim: shared size of the projections (default: the smallest D_m); they
            exist only when the sizes differ (the authors' encoders all give 512).
        feature_dims: modality -> D_m, to build the projections now instead of on :meth:`bind`.

    Example:
        >>> con = SupervisedContrastive(weight=1.0).bind(model)
        >>> loss = con(out.features, labels)
    """

    def __init__(self, weight: float = 1.0, temperature: float = 0.5, cross_modal_only: bool = False,
                 projection_dim: Optional[int] = None, feature_dims: Optional[Mapping[str, int]] = None) -> None:
        super().__init__()
        if not weight >= 0:
            raise ConfigError(f"SupervisedContrastive weight must be >= 0, got {weight}")
        if not temperature > 0:
            raise ConfigError(f"SupervisedContrastive temperature must be > 0, got {temperature}")
        self.weight, self.temperature, self.cross_modal_only = weight, temperature, cross_modal_only
        self.projection_dim = projection_dim
        self.projections: Optional[nn.ModuleDict] = None
        self.built, self._pending = False, False
        if feature_dims is not None:
            self.build(feature_dims)

    def bind(self, model: nn.Module) -> "SupervisedContrastive":
        """Builds the projections for ``model`` (call before creating the optimizer). For a
        model that has not seen a batch yet (an encoder without ``out_dim``) they are
        placeholders, sized on its first batch (``MultimodalModel.when_materialized``)."""
        if not self.built and getattr(model, "materialized", True):
            self.build(model.feature_dims)
            self.to(module_device(model))
        elif not self.built and not self._pending:  # one placeholder, however often bind is called
            self.projections = placeholder(self._projections, model.modalities, module_device(model))
            model.when_materialized(self._realize)
            self._pending = True
        return self

    def build(self, feature_dims: Mapping[str, int]) -> None:
        self.projections = self._projections(dict(feature_dims))
        self.built = True

    def _projections(self, dims: Dict[str, int]) -> Optional[nn.ModuleDict]:
        if len(set(dims.values())) <= 1:
            return None
        size = self.projection_dim or min(dims.values())
        return nn.ModuleDict({m: nn.Linear(d, size) for m, d in dims.items()})

    def _realize(self, dims: Dict[str, int]) -> None:
        self.projections = realize(self.projections, dims)
        self.built, self._pending = True, False

    def forward(self, features: Mapping[str, Tensor], labels: Tensor) -> Tensor:
        """Args: features: modality -> (B, D_m); labels: (B,). Returns the weighted scalar."""
        feats = [self.projections[m](z) if self.projections is not None else z for m, z in features.items()]
        return self.weight * supervised_contrastive(feats, labels, self.temperature, self.cross_modal_only)
