"""Losses: pure functions and the MCR regularizer built from them (no Lightning here)."""

from .ceb import CEBHead, ceb
from .contrastive import supervised_contrastive
from .divergence import jensen_shannon, jensen_shannon_per_sample
from .gradients import grad_multiply
from .mcr import PERTURBATIONS, STRATEGIES, MCRLoss
from .permutations import PERMUTATION_KINDS, sample_permutations

__all__ = ["CEBHead", "ceb", "supervised_contrastive", "jensen_shannon", "jensen_shannon_per_sample",
           "grad_multiply", "MCRLoss", "STRATEGIES", "PERTURBATIONS", "PERMUTATION_KINDS",
           "sample_permutations"]
