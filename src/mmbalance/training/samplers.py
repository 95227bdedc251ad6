"""Samplers for an exact mid-epoch resume (one process or DDP), with per-sample re-sampling of
the training set (``Method.sample_plan``), and for unpadded multi-device evaluation."""

from __future__ import annotations

import itertools
from typing import Callable, Iterator, List, Optional, Sequence, Sized, Tuple

import torch
from torch.utils.data import Dataset, DistributedSampler, RandomSampler

from ..methods.base import KEEP, SamplePlan


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

    With ``plan`` (a re-sampling method's ``Method.sample_plan``), each epoch's rows are the
    copies the plan names when the epoch's iteration starts (the method sets it at an epoch
    boundary and keeps it in its checkpointed state): the copies, listed variant by variant in
    row order, are shuffled by a :class:`RandomSampler` over that list (the same draws from the
    same generator; no plan, or one copy of every row, gives the plain order). A copy that drops
    modalities is yielded as ``(row, bits)`` (bit j: modality j kept), which
    :class:`ResampledDataset` turns into the batch's ``KEEP`` column; a worker needs no state of
    its own. The epoch's length is then unknown until it is drawn, so ``len`` raises
    ``TypeError`` and Lightning ends the epoch when the rows run out.
    """

    def __init__(self, data_source: Sized, generator: torch.Generator,  # noqa: D107 (no process group yet)
                 plan: Optional[Callable[[], Optional[SamplePlan]]] = None) -> None:
        self.data_source, self.generator, self.plan = data_source, generator, plan
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
        items: Sequence = range(len(self.data_source))
        if self.plan is not None:
            items = plan_items(self.plan(), len(self.data_source))
        order_source = self._order if self.plan is None else RandomSampler(items, generator=self.generator)
        if world == 1:  # drawn lazily, as RandomSampler draws it
            yield from (items[j] for j in itertools.islice(iter(order_source), skip, None))
            return
        order, total = list(order_source), -(-len(items) // world) * world
        while len(order) < total:  # every rank the same number of rows, as DistributedSampler pads
            order += order[:total - len(order)]
        yield from (items[j] for j in itertools.islice(order[rank::world], skip, None))

    def __len__(self) -> int:
        if self.plan is not None:
            raise TypeError("a re-sampled epoch's length is known only once its plan is drawn")
        _, world = _ranks()
        return -(-len(self.data_source) // world)

    def set_epoch(self, epoch: int) -> None:
        """The order comes from the generator, which carries over from epoch to epoch."""


def plan_items(plan: Optional[SamplePlan], rows: int) -> List:
    """The epoch's copies under ``plan`` over a split of ``rows`` rows: variant 0's copies in row
    order, then variant 1's, ...; a row index when no variant drops a modality, else
    ``(row, bits)`` (bit j set: modality j kept). ``None``: every row once."""
    if plan is None:
        return list(range(rows))
    counts, keep = plan.counts, plan.keep
    if counts.shape[0] != rows:
        raise ValueError(f"the sample plan has counts for {counts.shape[0]} rows; the training split has {rows}")
    index = torch.arange(rows)
    drops = bool((~keep).any())
    items: List = []
    for k in range(counts.shape[1]):
        copies = index.repeat_interleave(counts[:, k].long().clamp(min=0)).tolist()
        if drops:
            bits = sum(1 << j for j, kept in enumerate(keep[k].tolist()) if kept)
            copies = [(r, bits) for r in copies]
        items += copies
    return items


class ResampledDataset(Dataset):
    """The training split as a :class:`ResumableSampler` with a plan reads it: a row index gives
    the row; ``(row, bits)`` gives the row with ``inputs[KEEP]``, an (M,) bool of the modalities
    kept (model order), which ``Method.forward`` routes through ``MultimodalModel.forward_dropped``.
    Blocks (``__getitems__``) stay blocks. Anything else is the wrapped split's."""

    def __init__(self, inner: Dataset, modalities: Sequence[str]) -> None:
        self.inner, self.modalities = inner, list(modalities)

    def __len__(self) -> int:
        return len(self.inner)

    def __getattr__(self, name: str):
        if name in ("inner", "modalities"):  # not set yet (unpickling)
            raise AttributeError(name)
        return getattr(self.inner, name)

    def _keep(self, bits: int) -> torch.Tensor:
        return torch.tensor([bool(bits >> j & 1) for j in range(len(self.modalities))])

    def __getitem__(self, item):
        if not isinstance(item, tuple):
            return self.inner[item]
        row, bits = item
        inputs, label = self.inner[row]
        return {**inputs, KEEP: self._keep(bits)}, label

    def __getitems__(self, items: list):
        rows = [i[0] if isinstance(i, tuple) else i for i in items]
        getitems = getattr(type(self.inner), "__getitems__", None)
        block = getitems(self.inner, rows) if getitems else [self.inner[r] for r in rows]
        if not items or not isinstance(items[0], tuple):
            return block
        keep = torch.stack([self._keep(bits) for _, bits in items])
        if hasattr(block, "columns"):  # a stacked block (data.arrays.Rows)
            block.columns = {**block.columns, KEEP: keep}
            return block
        return [({**inputs, KEEP: k}, label) for (inputs, label), k in zip(block, keep)]


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
