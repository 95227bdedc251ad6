"""Modality valuation: per-sample Shapley contributions of each modality, and a training set
re-sampled towards the low-contribution modality (Wei, Feng, Wang, Hu, CVPR 2024)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional

import torch
from torch import Tensor

from ..errors import ConfigError
from ..shapley import shapley
from ..types import Batch, LossTerms, ModelOutput
from .base import SamplePlan, register
from .hparams import choice, hparam, int_range, uniform
from .seeded import SeededMethod

LEVELS = ("sample", "modality")
VALUES = ("size", "correct")
GAP_FUNCS = ("linear", "tanh", "square")


def coalition_correct(model, inputs: Mapping[str, Tensor], labels: Tensor,
                      drop: str = "feature") -> Dict[frozenset, Tensor]:
    """Coalition (frozenset of modalities, every non-empty one) -> (B,) bool: is the fused
    prediction right when every other modality is dropped (``MultimodalModel.forward_dropped``;
    with ``drop="feature"`` the inputs are encoded once and the features zeroed, the same
    numbers as ``forward_dropped(how="feature")`` at one encoder pass)."""
    mods = model.modalities
    features = model.encode(inputs) if drop == "feature" else None
    out: Dict[frozenset, Tensor] = {}
    for mask in range(1, 2 ** len(mods)):
        kept = frozenset(m for j, m in enumerate(mods) if mask >> j & 1)
        if features is not None:
            logits = model.fuse(model.drop_features(features, kept))
        else:
            logits = model.forward_dropped(inputs, kept, how=drop).logits
        out[kept] = logits.argmax(-1) == labels
    return out


def contributions(correct: Mapping[frozenset, Tensor], modalities: List[str], value: str = "size") -> Tensor:
    """(B, M) exact Shapley value of each modality per sample, with ``v(S) = |S| 1[right with S]``
    (``size``: the official ``v(full) = 2``, ``v(m) = 1`` for two modalities) or ``1[right with S]``
    (``correct``: BalanceBenchmark's), and ``v(empty) = 0``."""
    def v(S):
        if not S:
            return torch.zeros_like(next(iter(correct.values())), dtype=torch.float64)
        return correct[S].double() * (len(S) if value == "size" else 1.0)
    phi = shapley(modalities, v)
    return torch.stack([phi[m] for m in modalities], 1)


def sample_copies(phi: Tensor) -> Tensor:
    """Copies of a sample that keep only modality m, from its contribution ``phi``
    (datasets/dataloader.py:154-184): 1 if 0.4 < phi < 1, 2 if -0.1 < phi < 0.4,
    3 if phi < -0.1, else 0 (the bounds themselves give 0)."""
    copies = torch.zeros_like(phi, dtype=torch.long)
    copies[(phi > 0.4) & (phi < 1)] = 1
    copies[(phi > -0.1) & (phi < 0.4)] = 2
    copies[phi < -0.1] = 3
    return copies


def modality_copies(phi: Tensor, part_ratio: float, alpha: float, func: str, gen: torch.Generator) -> Tensor:
    """(N, M) copies of the modality-level rule (modality_level.py:143-161, dataloader.py
    :296-316): mean contributions over ``int(N part_ratio)`` rows drawn
    with replacement, ``gap_m = 1 - mean_m``, ``d = (max gap - min gap) 2/3`` then ``alpha d``
    (linear), ``tanh(alpha d)`` or ``alpha d^1.5`` (square), and ``int(d N)`` rows drawn with
    replacement, each copied once keeping only the modality with the largest gap."""
    n, M = phi.shape
    num = int(n * part_ratio)
    if num < 1:
        raise ConfigError(f"method 'valuation': part_ratio {part_ratio} picks no row of {n}")
    part = phi[torch.randint(n, (num,), generator=gen)].mean(0)
    gap = 1.0 - part
    d = float(gap.max() - gap.min()) / 3 * 2
    d = {"linear": d * alpha, "tanh": math.tanh(d * alpha), "square": d ** 1.5 * alpha}[func]
    copies = torch.zeros(n, M, dtype=torch.long)
    rows = torch.randint(n, (int(d * n),), generator=gen)
    keep = M - 1 - int(torch.argmax(gap.flip(0)))  # the last largest gap: the official tie goes to the second
    copies[:, keep] = torch.bincount(rows, minlength=n)
    return copies


@register
class Valuation(SeededMethod):
    """``L = CE(f(X), y)`` on a training set re-sampled each epoch from per-sample modality
    contributions. After epoch ``e >= warmup - 1`` (0-based), a pass over the training split in
    eval mode scores the fused prediction of every coalition of modalities (the others dropped
    through ``MultimodalModel.forward_dropped``) and takes each sample's exact Shapley value
    ``phi_m`` (:func:`contributions`). The next epoch trains on every row once plus copies that
    keep one modality only (the others dropped the same way): ``level=sample``, per sample and
    modality :func:`sample_copies`; ``level=modality``, :func:`modality_copies`. The copies are
    the method's :class:`SamplePlan`; the sampler shuffles them with the run's seeded generator,
    and a checkpoint carries them (a resume, mid-epoch included, reads the same rows). Any number
    of modalities (2^M - 1 coalitions per pass); classification only.

    Notes:
        Official code: GeWu-Lab/Valuate-and-Enhance-Multimodal-Cooperation (7ed12b0),
        code/sample_level.py and code/modality_level.py (``execute_modulation``), the datasets
        of code/datasets/dataloader.py, code/models/models.py:

        - value ``v(av) = 2 1[fused right]``, ``v(m) = 1[m right]``, ``phi_a = (v_a + v_av -
          v_v)/2`` (sample_level.py:88-118); the unimodal prediction is the fused head on the
          features with the other modality's feature zeroed (``exec_drop``, models.py:74-84), the
          default ``drop=feature``; ``drop=input`` zeroes raw inputs (BalanceBenchmark's);
        - for M modalities the value is generalised as ``v(S) = |S| 1[right with S]``, which
          gives the official numbers for two; ``value=correct`` is BalanceBenchmark's
          ``v(S) = 1[right with S]`` (a different scale for the same thresholds);
        - re-sampled after epochs ``>= warmup - 1`` (sample_level.py:141, :330), each epoch's
          set rebuilt from that epoch's contributions; the copies' other modality is zeroed in
          the training forward (models.py:62-67); the loss is CE on the fused output only
          (sample_level.py:173); defaults ``warmup`` 5, ``part_ratio`` 0.2,
          ``alpha`` 1, ``func`` linear (argparse);
        - the official pass reads a second copy of the training set with its training
          transforms (random crops) in eval mode; here the training split as loaded;
        - the official pass runs (and logs) every epoch; here it runs only when its result
          is used, after epochs ``>= warmup - 1``; the official ``np.random`` draws of the
          modality level come here from a generator seeded by (run seed, epoch), the same on
          every DDP rank; for M > 2 the modality level's ``|gap_a - gap_v|`` becomes
          ``max gap - min gap`` and the copy keeps the modality of the largest gap.

        Official bugs not kept: modality_level.py's ``execute_modulation`` returns an unbound
        ``train_dataloader`` before epoch ``warmup - 1`` (an UnboundLocalError: the released
        script cannot run), and both scripts build ``AV_KS_Dataset(loader=...)`` which takes no
        such argument. BalanceBenchmark (``Sample`` trainer) differs: raw inputs zeroed,
        ``v(full) = 1``, one extra full copy per resampled index, a modality-level count doubled
        for two modalities and ``alpha`` unused, warm-up 1 epoch.
        Cost: one extra eval pass over the training split per epoch from ``warmup - 1`` on
        (one encoding and 2^M - 1 fusions per batch with ``drop=feature``), and longer epochs.
    """

    name = "valuation"
    description = "Modality valuation: per-sample Shapley values; copies that train the low-contribution modality"
    reference = ("Wei, Feng, Wang, Hu, Enhancing Multimodal Cooperation via Sample-level Modality Valuation, "
                 "CVPR 2024")
    requires = frozenset({"classification"})
    resamples = True

    @dataclass
    class Hyperparameters:
        level: str = hparam("sample", search=choice(LEVELS))  # sample_level.py | modality_level.py
        warmup: int = hparam(5, search=int_range(1, 10))  # argparse --warmup
        part_ratio: float = 0.2  # modality_level.py --part_ratio
        alpha: float = hparam(1.0, search=uniform(0.25, 2.0))  # modality_level.py --alpha
        func: str = "linear"  # dataloader.py AV_KS_Dataset_modality_level(func=...)
        drop: str = "feature"  # exec_drop zeroes encoder features; "input": raw inputs (BalanceBenchmark)
        value: str = "size"  # v(S) = |S| 1[right]; "correct": 1[right] (BalanceBenchmark)

    def __init__(self, model, hparams=None) -> None:
        super().__init__(model, hparams)
        hp = self.hparams
        for key, valid in (("level", LEVELS), ("func", GAP_FUNCS), ("drop", ("feature", "input")), ("value", VALUES)):
            if getattr(hp, key) not in valid:
                raise ConfigError(f"method 'valuation': {key} {getattr(hp, key)!r} is unknown; "
                                  f"valid: {', '.join(valid)}")
        if hp.warmup < 1 or not 0 < hp.part_ratio <= 1:
            raise ConfigError(f"method 'valuation': warmup must be >= 1 and part_ratio in (0, 1], got "
                              f"{hp.warmup} and {hp.part_ratio}")
        M = len(model.modalities)
        self.keep = torch.cat([torch.ones(1, M, dtype=torch.bool), torch.eye(M, dtype=torch.bool)])
        self.counts: Optional[Tensor] = None  # (N, 1 + M): the full row once, then one-modality copies

    def training_loss(self, batch: Batch, out: ModelOutput) -> LossTerms:
        return LossTerms.from_terms({"task": self.task_loss(out.logits, batch.labels)})

    def sample_plan(self) -> Optional[SamplePlan]:
        return None if self.counts is None else SamplePlan(self.counts, self.keep)

    def copies(self, phi: Tensor, epoch: int) -> Tensor:
        """(N, 1 + M) counts of the next epoch from (N, M) contributions."""
        hp = self.hparams
        if hp.level == "sample":
            extra = sample_copies(phi)
        else:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + 7919 * epoch)
            extra = modality_copies(phi, hp.part_ratio, hp.alpha, hp.func, gen)
        return torch.cat([torch.ones(phi.shape[0], 1, dtype=torch.long), extra], 1)

    def on_epoch_pass(self, epoch: int, passes) -> Dict[str, float]:
        if epoch < self.hparams.warmup - 1:
            return {}
        mods = self.model.modalities

        def score(inputs, labels):
            correct = coalition_correct(self.model, inputs, labels, self.hparams.drop)
            return {"phi": contributions(correct, mods, self.hparams.value)}

        phi = passes.per_row("train", score)["phi"]
        self.counts = self.copies(phi, epoch)
        logs = {f"contribution/{m}": float(phi[:, j].mean()) for j, m in enumerate(mods)}
        logs.update({f"copies/{m}": float(self.counts[:, j + 1].sum()) for j, m in enumerate(mods)})
        logs["train_rows"] = float(self.counts.sum())
        return logs

    def get_extra_state(self) -> Dict[str, Any]:
        return {**super().get_extra_state(), "counts": self.counts}

    def set_extra_state(self, state: Optional[Dict[str, Any]]) -> None:
        super().set_extra_state(state)
        if state:
            self.counts = state.get("counts")
