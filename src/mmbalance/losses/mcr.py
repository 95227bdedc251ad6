"""The Multimodal Competition Regularizer (paper Section 3, Algorithm 1, Appendix A.5)."""

from __future__ import annotations

import warnings
from typing import Dict, List, Mapping, Optional, Sequence

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..types import LossTerms, ModelOutput
from .ceb import CEB
from .contrastive import SupervisedContrastive
from .mipd import MIPD, PERTURBATIONS, REFERENCE_MULTIPLIER, ROUTINGS, STRATEGIES, Subset

__all__ = ["MCRLoss", "STRATEGIES", "REFERENCE_MULTIPLIER", "PERTURBATIONS", "ROUTINGS"]


class MCRLoss(nn.Module):
    """``L_MCR = L_MIPD + L_Con + L_CEB`` (paper Eq. 6): the weighted sum of the public parts
    :class:`MIPD` (the permutation game), :class:`SupervisedContrastive` and :class:`CEB`.

    Returns the regularizer only; the task and unimodal losses belong to the method
    (Algorithm 1: ``L = L_task + unimodal_weight * sum_m L_task^m + L_MCR``).

    Notes:
        Differences from the authors' release, on purpose: the regularizer is added to the
        loss (the release computes it and drops it), permutations never re-encode the batch
        (the release's permutation branch runs the encoders a second time), and the
        M-modality detach flags work (the release misspells them). The gradient routing is
        the authors' (see :class:`MIPD`): under greedy only the shared parts (reference,
        bias, non-decomposable fusion layers) cancel; a modality's fusion slice ``W_m``
        follows its encoder.

    Args:
        strategy, num_permutations, permutation, perturbation, noise_std, max_subset_size,
            detach_reference, routing, chunk_size, decompose, compile: see :class:`MIPD`.
        mipd_weight: lambda_M >= 0 (:class:`MIPD`'s ``weight``).
        contrastive_weight, temperature, cross_modal_only, projection_dim: see
            :class:`SupervisedContrastive`.
        ceb_weight, ceb_hidden: see :class:`CEB` (no head is built when the weight is 0).
        feature_dims, num_classes: build the heads now instead of on :meth:`bind`.
    """

    def __init__(self, strategy: str = "greedy", mipd_weight: float = 0.1, contrastive_weight: float = 1.0,
                 ceb_weight: float = 0.0, num_permutations: int = 32, temperature: float = 0.5,
                 detach_reference: bool = False, permutation: str = "all", perturbation: str = "permute",
                 noise_std: float = 1.0, max_subset_size: Optional[int] = None, cross_modal_only: bool = False,
                 projection_dim: Optional[int] = None, ceb_hidden: Optional[int] = None,
                 feature_dims: Optional[Mapping[str, int]] = None, num_classes: Optional[int] = None,
                 chunk_size: Optional[int] = None, routing: str = "authors", decompose: bool = True,
                 compile: bool = False) -> None:
        super().__init__()
        for name, value in (("mipd_weight", mipd_weight), ("contrastive_weight", contrastive_weight),
                            ("ceb_weight", ceb_weight)):
            if not value >= 0:
                raise ConfigError(f"MCRLoss {name} must be >= 0, got {value}")
        self.mipd = MIPD(strategy, mipd_weight, num_permutations, permutation, perturbation, noise_std,
                         max_subset_size, detach_reference, routing, chunk_size, decompose, compile)
        self.contrastive = SupervisedContrastive(contrastive_weight, temperature, cross_modal_only, projection_dim)
        self.ceb = CEB(ceb_weight, ceb_hidden)
        self._built = False
        if feature_dims is not None and num_classes is not None:
            self._build(feature_dims, num_classes)

    # -- the parts' settings, readable where they were before ------------------------
    strategy = property(lambda self: self.mipd.strategy)
    mipd_weight = property(lambda self: self.mipd.weight)
    num_permutations = property(lambda self: self.mipd.num_permutations)
    contrastive_weight = property(lambda self: self.contrastive.weight)
    ceb_weight = property(lambda self: self.ceb.weight)
    projections = property(lambda self: self.contrastive.projections)
    ceb_head = property(lambda self: self.ceb.head)

    def subsets(self, modalities: Sequence[str]) -> List[Subset]:
        """Non-empty proper subsets S that get a MIPD term, smallest first (A.5)."""
        return self.mipd.subsets(modalities)

    def bind(self, model: nn.Module) -> "MCRLoss":
        """Builds the projections and the CEB head for ``model``; call before creating the
        optimizer so that their parameters are trained. For a model that has not seen a batch
        (an encoder without ``out_dim``) they are sized on its first batch, in place."""
        if not self._built:
            if self.contrastive.weight > 0:
                self.contrastive.bind(model)
            if self.ceb.weight > 0:
                self.ceb.bind(model)
            self._built = True
        return self

    def _build(self, feature_dims: Mapping[str, int], num_classes: int) -> None:
        if self.contrastive.weight > 0:
            self.contrastive.build(feature_dims)
        if self.ceb.weight > 0:
            self.ceb.build(feature_dims, num_classes)
        self._built = True

    def forward(self, model: nn.Module, out: ModelOutput, labels: Tensor,
                inputs: Optional[Mapping[str, Tensor]] = None) -> LossTerms:
        """Computes the regularizer for one batch.

        Args:
            model: the :class:`~mmbalance.MultimodalModel` that produced ``out``.
            out: its output on this batch (training mode, features live in the graph).
            labels: (B,) targets.
            inputs: the batch's inputs; needed only by the ``input_*`` perturbations.

        Returns:
            LossTerms with ``terms`` ``mipd``, ``contrastive`` and ``ceb`` (weighted) and
            the raw per-subset divergences in ``logs`` (``mipd/<a+b>``), as detached 0-d
            tensors on the batch's device: ``float()`` one when you log it, so that a step
            that logs nothing does not wait for the GPU.
        """
        if not self._built:
            self.bind(model)
            if any(p.requires_grad for p in self.parameters()):
                warnings.warn("MCRLoss built its heads on first use; call mcr.bind(model) before "
                              "creating the optimizer so that they are trained", stacklevel=_caller_level())
        zero = out.logits.new_zeros((), dtype=torch.float32)
        logs: Dict[str, Tensor] = {}
        terms = {"mipd": zero, "contrastive": zero, "ceb": zero}
        if self.mipd.weight > 0:
            values = self.mipd.divergences(model, out, labels, inputs)
            terms["mipd"] = -self.mipd.weight * values.sum()
            detached = values.detach()  # no .tolist(): that would wait for the device every step
            for i, subset in enumerate(self.mipd.subsets(model.modalities)):
                logs["mipd/" + "+".join(subset)] = detached[i]
        if self.contrastive.weight > 0:
            terms["contrastive"] = self.contrastive(out.features, labels)
        if self.ceb.weight > 0:
            terms["ceb"] = self.ceb(out)
        return LossTerms.from_terms(terms, logs)


def _caller_level() -> int:
    """The ``stacklevel`` of the first frame outside this package's losses and torch, so a
    warning from :meth:`MCRLoss.forward` (reached through ``nn.Module.__call__``) points at
    the user's line, whatever torch's call depth."""
    import inspect
    import os
    here = os.path.dirname(os.path.abspath(__file__))
    torch_dir = os.path.dirname(os.path.abspath(torch.__file__))
    frames = inspect.stack(context=0)
    try:
        for level, info in enumerate(frames[1:], start=1):  # 1: the caller of this function
            path = os.path.abspath(info.filename)
            if level >= 2 and not path.startswith((here + os.sep, torch_dir + os.sep)):
                return level
        return 2
    finally:
        del frames

