"""Losses: pure functions and the MCR regularizer built from them (no Lightning here).

``MCRLoss`` is the weighted sum of three public parts, each usable alone: ``MIPD`` (the
permutation game), ``SupervisedContrastive`` and ``CEB``.
"""

from .ceb import CEB, CEBHead, ceb
from .contrastive import SupervisedContrastive, supervised_contrastive
from .divergence import jensen_shannon, jensen_shannon_log_probs, jensen_shannon_per_sample
from .gradients import grad_multiply
from .mcr import MCRLoss
from .mipd import MIPD, PERTURBATIONS, REFERENCE_MULTIPLIER, ROUTINGS, STRATEGIES
from .permutations import PERMUTATION_KINDS, sample_permutations

__all__ = ["CEB", "CEBHead", "ceb", "SupervisedContrastive", "supervised_contrastive", "jensen_shannon",
           "jensen_shannon_log_probs", "jensen_shannon_per_sample", "grad_multiply", "MCRLoss", "MIPD",
           "STRATEGIES", "REFERENCE_MULTIPLIER", "ROUTINGS", "PERTURBATIONS", "PERMUTATION_KINDS",
           "sample_permutations"]
