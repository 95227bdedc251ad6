"""Samplers for an exact mid-epoch resume (one process or DDP) and for unpadded multi-device evaluation."""

from __future__ import annotations

import itertools
from typing import Iterator, Optional, Sized, Tuple

import torch
from torch.utils.data import DistributedSampler, RandomSampler


def _ranks() -> Tuple[int, int]:
    """(rank, world size) of this process: (0, 1) without a process group."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class ResumableSampler(DistributedSampler):
    """The training order: a :class:`RandomSampler`'s (same draws from the same generator, so
    the same data order), which can restart an epoch at a given sample; under DDP each rank
    takes its shard of it.

    ``epoch_state`` is the generator's state just before this epoch's permutation; a
    checkpoint stores it with the number of samples done, and :meth:`resume_at` replays
    the permutation and skips them, so the next batch is the one an uninterrupted run sees.

    Under DDP every rank draws the same permutation (each rank's loader generator has the
    same seed and the same draws) and rank ``r`` of ``W`` takes rows ``r, r+W, ...`` of it,
    padded to a multiple of ``W`` as :class:`DistributedSampler` pads. It subclasses
    ``DistributedSampler`` only so that Lightning keeps it: Lightning replaces any other
    sampler by a ``DistributedSampler`` of its own, whose order comes from ``seed + epoch``
    and which cannot start an epoch in the middle, so a mid-epoch resume would replay the
    epoch's first batches. The ranks are read when iterating, once the process group exists.
    """

    def __init__(self, data_source: Sized, generator: torch.Generator) -> None:  # noqa: D107 (no process group yet)
        self.data_source, self.generator = data_source, generator
        self._order = RandomSampler(data_source, generator=generator)
        self.epoch_state: Optional[torch.Tensor] = None
        self._resume: Optional[tuple] = None

    def resume_at(self, epoch_state: torch.Tensor, skip: int) -> None:
        """The next iteration replays the permutation drawn from ``epoch_state`` from this
        rank's sample ``skip`` on."""
        self._resume = (epoch_state, int(skip))

    def __iter__(self) -> Iterator[int]:
        skip = 0
        if self._resume is not None:
            state, skip = self._resume
            self._resume = None
            self.generator.set_state(state)
        self.epoch_state = self.generator.get_state()
        rank, world = _ranks()
        if world == 1:  # drawn lazily, as RandomSampler draws it
            yield from itertools.islice(iter(self._order), skip, None)
            return
        order, total = list(self._order), len(self) * world
        while len(order) < total:  # every rank the same number of rows, as DistributedSampler pads
            order += order[:total - len(order)]
        yield from itertools.islice(order[rank::world], skip, None)

    def __len__(self) -> int:
        _, world = _ranks()
        return -(-len(self.data_source) // world)

    def set_epoch(self, epoch: int) -> None:
        """The order comes from the generator, which carries over from epoch to epoch."""


class EvalShardSampler(DistributedSampler):
    """Evaluation rows for this rank: rank ``r`` of ``W`` takes rows ``r, r+W, ...``, so every
    row of the split is scored exactly once over all ranks (a plain :class:`DistributedSampler`
    pads the split to a multiple of ``W`` by repeating rows). One process: every row in order.

    It subclasses ``DistributedSampler`` only so that Lightning does not replace it; the
    ranks are read when iterating, once the process group exists.
    """

    def __init__(self, data_source: Sized) -> None:  # noqa: D107 (no super().__init__: no process group yet)
        self.data_source = data_source

    def __iter__(self) -> Iterator[int]:
        rank, world = _ranks()
        return iter(range(rank, len(self.data_source), world))

    def __len__(self) -> int:
        rank, world = _ranks()
        return len(range(rank, len(self.data_source), world))

    def set_epoch(self, epoch: int) -> None:
        """Evaluation order does not change between epochs."""
