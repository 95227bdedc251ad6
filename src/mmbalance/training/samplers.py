"""Samplers for an exact mid-epoch resume and for unpadded multi-device evaluation."""

from __future__ import annotations

import itertools
from typing import Iterator, Optional, Sized

import torch
from torch.utils.data import DistributedSampler, RandomSampler


class ResumableSampler(RandomSampler):
    """A :class:`RandomSampler` (same draws from the same generator, so the same data order)
    that can restart an epoch at a given sample.

    ``epoch_state`` is the generator's state just before this epoch's permutation; a
    checkpoint stores it with the number of samples done, and :meth:`resume_at` replays
    the permutation and skips them, so the next batch is the one an uninterrupted run sees.
    """

    def __init__(self, data_source: Sized, generator: torch.Generator) -> None:
        super().__init__(data_source, generator=generator)
        self.epoch_state: Optional[torch.Tensor] = None
        self._resume: Optional[tuple] = None

    def resume_at(self, epoch_state: torch.Tensor, skip: int) -> None:
        """The next iteration replays the permutation drawn from ``epoch_state`` from sample ``skip`` on."""
        self._resume = (epoch_state, int(skip))

    def __iter__(self) -> Iterator[int]:
        skip = 0
        if self._resume is not None:
            state, skip = self._resume
            self._resume = None
            self.generator.set_state(state)
        self.epoch_state = self.generator.get_state()
        yield from itertools.islice(super().__iter__(), skip, None)


class EvalShardSampler(DistributedSampler):
    """Evaluation rows for this rank: rank ``r`` of ``W`` takes rows ``r, r+W, ...``, so every
    row of the split is scored exactly once over all ranks (a plain :class:`DistributedSampler`
    pads the split to a multiple of ``W`` by repeating rows). One process: every row in order.

    It subclasses ``DistributedSampler`` only so that Lightning does not replace it; the
    ranks are read when iterating, once the process group exists.
    """

    def __init__(self, data_source: Sized) -> None:  # noqa: D107 (no super().__init__: no process group yet)
        self.data_source = data_source

    @staticmethod
    def _ranks() -> tuple:
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
        return 0, 1

    def __iter__(self) -> Iterator[int]:
        rank, world = self._ranks()
        return iter(range(rank, len(self.data_source), world))

    def __len__(self) -> int:
        rank, world = self._ranks()
        return len(range(rank, len(self.data_source), world))

    def set_epoch(self, epoch: int) -> None:
        """Evaluation order does not change between epochs."""
