"""Optimizers and the per-epoch schedules (warmup + cosine, constant, step), built from a
method's parameter groups."""

from __future__ import annotations

import math
from typing import Any, Dict, List

import torch

from ..config import FUSED_SGD, OptimConfig
from ..errors import ConfigError


def build_optimizer(groups: List[Dict[str, Any]], cfg: OptimConfig) -> torch.optim.Optimizer:
    """Adam, AdamW or SGD over ``groups``; a group's ``lr_scale`` (default 1, a method may
    change it later) and ``init_scale`` (default 1; ``method.encoder_lr_scale`` for encoders
    that start from unimodal stages) multiply ``cfg.lr``.

    ``cfg.implementation``: ``foreach`` (the default) updates all tensors of a group with one
    multi-tensor kernel per operation and gives the same numbers, bit for bit, as torch's CPU
    default ``for_loop`` (a Python loop over the tensors), in less time on small models
    (docs/performance.md); ``fused`` (Adam and AdamW) is one kernel for the whole update,
    faster still, and differs in the last float bits (it needs a torch that has a fused
    kernel for the optimizer and the device)."""
    prepared = []
    for group in groups:
        group = dict(group)
        group.setdefault("lr_scale", 1.0)
        group.setdefault("init_scale", 1.0)
        group["lr"] = cfg.lr * group["lr_scale"] * group["init_scale"]
        group.setdefault("base_lr", cfg.lr)
        prepared.append(group)
    how = implementation_kwargs(cfg)
    try:
        if cfg.name == "sgd":
            return torch.optim.SGD(prepared, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, **how)
        kind = torch.optim.AdamW if cfg.name == "adamw" else torch.optim.Adam
        return kind(prepared, lr=cfg.lr, eps=cfg.eps, weight_decay=cfg.weight_decay, **how)
    except (RuntimeError, TypeError, ValueError) as exc:
        if cfg.implementation != "fused":
            raise
        raise ConfigError(f"optim.implementation=fused is not available here ({str(exc).splitlines()[0]}); "
                          "use foreach") from exc


def implementation_kwargs(cfg: OptimConfig) -> Dict[str, bool]:
    """The torch optimizer's ``foreach``/``fused`` arguments for ``cfg.implementation``."""
    if cfg.implementation == "fused":
        if cfg.name == "sgd":
            raise ConfigError(FUSED_SGD)
        return {"fused": True}
    return {"foreach": cfg.implementation == "foreach"}


def warmup_cosine(epoch: int, warmup_epochs: int, max_epochs: int) -> float:
    """LR factor at ``epoch``: linear warmup from ``1/(w+1)`` to 1, then cosine to 0."""
    if epoch < warmup_epochs:
        return (epoch + 1) / (warmup_epochs + 1)
    span = max(1, max_epochs - warmup_epochs)
    return 0.5 * (1.0 + math.cos(math.pi * min(epoch - warmup_epochs, span) / span))


class LRSchedule:
    """Per-epoch schedule that respects each group's ``lr_scale`` (checkpointable)."""

    def __init__(self, optimizer: torch.optim.Optimizer, cfg: OptimConfig, max_epochs: int) -> None:
        self.optimizer, self.cfg, self.max_epochs = optimizer, cfg, max_epochs
        self.epoch = 0
        self._apply()

    def factor(self) -> float:
        """The lr factor of the current epoch (0-based): ``schedule=step`` gives
        ``step_gamma ** (epoch // step_size)``, torch's ``StepLR`` stepped after each epoch."""
        if self.cfg.schedule == "constant":
            return 1.0
        if self.cfg.schedule == "step":
            return self.cfg.step_gamma ** (self.epoch // self.cfg.step_size)
        return warmup_cosine(self.epoch, self.cfg.warmup_epochs, self.max_epochs)

    def _apply(self) -> None:
        f = self.factor()
        for group in self.optimizer.param_groups:
            group["lr"] = group["base_lr"] * group["lr_scale"] * group.get("init_scale", 1.0) * f

    def step(self) -> None:
        self.epoch += 1
        self._apply()

    def refresh(self) -> None:
        """Re-applies the factor after a method changed an ``lr_scale``."""
        self._apply()

    def state_dict(self) -> Dict[str, int]:
        return {"epoch": self.epoch}

    def load_state_dict(self, state: Dict[str, int]) -> None:
        self.epoch = state["epoch"]
        self._apply()
