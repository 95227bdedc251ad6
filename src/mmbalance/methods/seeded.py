"""A method whose random draws repeat under DDP and after a resume."""

from __future__ import annotations

from typing import Any, Dict, Optional

import torch

from .base import Method


class SeededMethod(Method):
    """Base of methods that draw random masks or orders during training (``cml``, ``opm``).

    It keeps the run's seed (``torch.initial_seed()`` when built: the same on every DDP rank),
    the current epoch and a ``steps`` buffer in the checkpoint, so a generator seeded from
    (seed, step) or (seed, epoch) gives the same draws on every rank and after ``--resume``.
    Subclasses increment ``steps`` once per training step.
    """

    def __init__(self, model, hparams=None) -> None:
        super().__init__(model, hparams)
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))
        self.seed = torch.initial_seed() % (2**31)
        self.epoch = 0

    def on_epoch_start(self, epoch: int, train_loader=None) -> Dict[str, float]:
        self.epoch = epoch
        return {}

    def get_extra_state(self) -> Dict[str, Any]:
        return {"seed": self.seed, "epoch": self.epoch}

    def set_extra_state(self, state: Optional[Dict[str, Any]]) -> None:
        if state:
            self.seed, self.epoch = int(state["seed"]), int(state["epoch"])
