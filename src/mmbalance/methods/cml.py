"""CML: calibrating multimodal learning (Ma et al., ICML 2023)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, List

import torch
from torch import Tensor

from ..errors import ConfigError
from ..models.multimodal import DROPS
from ..types import Batch, LossTerms, ModelOutput
from .base import register
from .hparams import hparam, log_uniform
from .seeded import SeededMethod

#: ``method.chain``: a removal order per sample and batch (official) or one per epoch (BalanceBenchmark)
CHAINS = ("sample", "epoch")
#: ``method.hinge``: per-sample hinges (official) or one hinge on the batch sum (BalanceBenchmark)
HINGES = ("sample", "batch")


def confidence(logits: Tensor) -> Tensor:
    """(B,) the largest softmax probability of (B, C) logits."""
    return logits.float().softmax(-1).amax(-1)


def confidence_hinge(parent: Tensor, child: Tensor, labels: Tensor, epsilon: float = 0.0,
                     trick2: bool = True) -> Tensor:
    """(B,) CML's per-sample penalty for a child subset (fewer modalities) more confident than
    its parent: ``relu((c_child - c_parent) s - eps)`` with ``s = [parent right]`` ("trick 1"),
    plus with ``trick2`` ``relu((c_child - sg(c_parent)) t - eps)``, ``t = [both wrong]``
    (QingyangZhang/CML miwae/train.py:294-302; ``sg``: no gradient).

    Args:
        parent: (B, C) logits of the larger subset.
        child: (B, C) logits of the subset with one modality fewer.
        labels: (B,) class indices.
        epsilon: the tolerance margin.
        trick2: add the term for samples both subsets get wrong.
    """
    c_parent, c_child = confidence(parent), confidence(child)
    parent_right = parent.argmax(-1) == labels
    out = torch.relu((c_child - c_parent) * parent_right.float() - epsilon)
    if trick2:
        both_wrong = (~parent_right & (child.argmax(-1) != labels)).float()
        out = out + torch.relu((c_child - c_parent.detach()) * both_wrong - epsilon)
    return out


@register
class CML(SeededMethod):
    """``L = (1/M) sum_{k=0}^{M-1} CE(z_k, y) + rank_weight sum_{k<M-1} sum_i h_i(z_k, z_{k+1})``:
    ``z_0`` is the full model's output and ``z_{k+1}`` the same sample with one more modality
    removed along a random removal chain, ``h`` the per-sample confidence hinge
    (:func:`confidence_hinge`): confidence must not rise when a modality is removed.

    Each sample gets its own random removal order every batch (``chain=sample``; with
    ``chain=epoch`` one order per epoch for all samples); a removed modality's raw input is
    zeroed (``drop=input``) or its encoder feature (``drop=feature``; for ``concat_linear`` the
    fused logits minus that modality's ``z_m W_m^T``, bias kept), both through
    ``MultimodalModel.forward_dropped``. ``hinge=batch`` replaces the hinges by
    ``sum_k relu(sum_i (c_{k+1,i} - c_{k,i}))``. Any fusion, M >= 2, classification only.

    Notes:
        Only the incomplete-view experiments are public (QingyangZhang/CML, commit 9d2496e,
        miwae/train.py); the late-fusion code of the paper is not. From it: the nested
        removal chain with a per-sample random order drawn every batch (get_multi_mask,
        train.py:67-86, :224), the classification loss as the mean CE over the chain's M
        subsets (:286, :292), trick 1 and the still active trick 2 (:294-302), the sum over
        samples (not a mean, so the term grows with the batch; official batch 200), and
        ``loss = cls + beta/100 * rank`` (:304): ``rank_weight`` 0.1 is the README's
        ``--beta 10`` (train.py's default beta 0 turns CML off), ``epsilon`` 0 (:137). The
        official code fills a missing view with the training mean of the raw input; here it
        is zeroed, which is that mean for inputs standardized with train statistics (the
        default for vector and sequence arrays), else a departure. Subsets: the nested chain
        (M subsets), not all subsets of size M - 1. The full subset's logits are the loop's
        forward; with ``drop=input`` each smaller subset is one more training-mode pass.
        BalanceBenchmark (balancemm/trainer/CML_trainer.py): ``drop=feature chain=epoch
        hinge=batch rank_weight=0.1`` is its rule (one shuffled order per epoch, the hinge on
        the batch sum, its trick-1 sign computed and unused); its ``modulation_starts/ends``
        window is not offered. Randomness: a generator seeded by (run seed, step), orders
        per DDP rank; the epoch chain by (run seed, epoch), the same on every rank; both come
        back on ``--resume``. Under DDP the per-rank sum over samples is averaged over ranks.
        Optimizer: the official code uses Adam (lr 1e-2, then 1e-3 after epoch 20).
    """

    name = "cml"
    description = "CML: a confidence hinge so that removing modalities never raises confidence"
    reference = "Ma et al., Calibrating Multimodal Learning, ICML 2023"
    requires = frozenset({"classification"})

    @dataclass
    class Hyperparameters:
        rank_weight: float = hparam(0.1, search=log_uniform(0.001, 1.0))  # beta/100; README --beta 10
        epsilon: float = 0.0  # tolerance margin, miwae/train.py:137
        trick2: bool = True  # train.py:298-302, active in the official code
        drop: str = "input"  # input (the official imputes the missing view) or feature (BalanceBenchmark)
        chain: str = "sample"  # sample (official) or epoch (BalanceBenchmark)
        hinge: str = "sample"  # sample (official) or batch (BalanceBenchmark)

    def __init__(self, model, hparams=None) -> None:
        super().__init__(model, hparams)
        for key, valid in (("drop", DROPS), ("chain", CHAINS), ("hinge", HINGES)):
            if getattr(self.hparams, key) not in valid:
                raise ConfigError(f"method 'cml': method.{key} {getattr(self.hparams, key)!r} is unknown; "
                                  f"valid: {', '.join(valid)}")

    def removal_order(self, batch_size: int) -> Tensor:
        """(B, M) long: row i lists modality indices in the order sample i loses them."""
        M = len(self.model.modalities)
        gen = torch.Generator()
        if self.hparams.chain == "epoch":
            gen.manual_seed(self.seed * 1_000_003 + 7919 * self.epoch)
            return torch.rand(M, generator=gen).argsort().expand(batch_size, M)
        rank = torch.distributed.get_rank() if torch.distributed.is_available() and \
            torch.distributed.is_initialized() else 0
        gen.manual_seed(self.seed * 1_000_003 + int(self.steps) * 8191 + rank)
        return torch.rand(batch_size, M, generator=gen).argsort(1)

    @staticmethod
    def chain_masks(order: Tensor) -> List[Tensor]:
        """The M - 1 nested (B, M) keep masks after 1, ..., M - 1 removals along ``order``."""
        position = order.argsort(1)  # position[i, m]: when sample i loses modality m
        return [position >= k for k in range(1, order.shape[1])]

    def subset_logits(self, batch: Batch, out: ModelOutput, keep: Tensor) -> Tensor:
        if self.hparams.drop == "feature":
            return self.model.fuse(self.model.drop_features(out.features, keep))
        return self.model.forward_dropped(batch.inputs, keep, how="input").logits

    def training_loss(self, batch: Batch, out: ModelOutput) -> LossTerms:
        labels = batch.labels.long()
        order = self.removal_order(labels.shape[0]).to(labels.device)
        self.steps += 1
        chain = [out.logits] + [self.subset_logits(batch, out, keep) for keep in self.chain_masks(order)]
        task = torch.stack([self.task_loss(z, labels) for z in chain]).mean()
        hp, hinges = self.hparams, []
        for parent, child in zip(chain[:-1], chain[1:]):
            if hp.hinge == "batch":
                hinges.append(torch.relu((confidence(child) - confidence(parent)).sum()))
            else:
                hinges.append(confidence_hinge(parent, child, labels, hp.epsilon, hp.trick2).sum())
        rank = torch.stack(hinges).sum()
        logs = {"rank_sum": rank.detach(), "confidence/full": confidence(out.logits).detach().mean()}
        return LossTerms.from_terms({"task": task, "rank": hp.rank_weight * rank}, logs)
