"""Passes over a split at the end of a training epoch, for every method (``Method.on_epoch_pass``).

G-Blending (per-head train and validation losses), DnR (features of the train and validation
sets) and LFM (a validation batch) look at data outside the training step. The loop hands
them an :class:`EpochPasses`; it reads nothing until asked, and it can only reach the
``train`` split and the run's ``val`` split (or, for a method that holds training rows out,
``Method.held_out_rows``, those rows as ``val``): the test split is never among its loaders.

Every pass is in eval mode (no dropout, BatchNorm statistics untouched) under ``no_grad``,
over a sequential loader of this rank's shard (rank ``r`` of ``W`` takes rows ``r, r+W, ...``;
one process: every row), with its own generator so that the global RNG streams, and so an
exact resume, are untouched. Sums and counts are all-reduced, so every DDP rank gets the same
whole-split values; :meth:`EpochPasses.collect` gathers rows from all ranks.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Dict, Iterable, Iterator, Mapping, NamedTuple, Optional, Tuple

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from ..errors import ConfigError
from .samplers import EvalShardSampler

SPLITS = ("train", "val")


class SplitLosses(NamedTuple):
    """Mean task loss over a whole split (all ranks) of the fused prediction and of each
    modality's unimodal head, and the number of rows."""

    fused: Tensor  # () float64
    unimodal: Dict[str, Tensor]  # modality -> () float64
    count: int


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


class EpochPasses:
    """Lazy passes over the ``train`` and ``val`` splits for one epoch-end hook.

    Args:
        method: the method whose ``forward``, ``predict`` and ``task_loss`` are used.
        datasets: split name -> dataset; only ``train`` and ``val`` are accepted.
        batch_size: rows per batch of a pass.
        collate_fn: the run's collate function.
        device: where the batches go.
        context: a context manager factory wrapped around each forward (the precision's autocast).
    """

    def __init__(self, method, datasets: Mapping[str, object], batch_size: int, collate_fn=None,
                 device: Optional[torch.device] = None,
                 context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext) -> None:
        unknown = set(datasets) - set(SPLITS)
        if unknown:
            raise ValueError(f"epoch passes reach only {SPLITS}, got {sorted(unknown)}")
        self.method, self.datasets = method, {k: v for k, v in datasets.items() if v is not None}
        self.batch_size, self.collate_fn, self.context = batch_size, collate_fn, context
        self.device = device if device is not None else next(method.parameters()).device
        self._cache: Dict[str, SplitLosses] = {}

    @property
    def splits(self) -> Tuple[str, ...]:
        return tuple(self.datasets)

    def loader(self, split: str) -> DataLoader:
        """A sequential loader over this rank's shard of ``split``."""
        if split not in self.datasets:
            raise ConfigError(f"method {self.method.name!r} needs a pass over the {split!r} split, which this "
                              f"run does not have (available: {', '.join(self.splits) or 'none'})")
        dataset = self.datasets[split]
        return DataLoader(dataset, batch_size=self.batch_size, sampler=EvalShardSampler(dataset),
                          collate_fn=self.collate_fn, generator=torch.Generator())

    def batches(self, split: str) -> Iterator[Tuple[Dict[str, Tensor], Tensor]]:
        """This rank's ``(inputs, labels)`` batches of ``split``, on the method's device."""
        for inputs, labels in self.loader(split):
            yield {m: x.to(self.device) for m, x in inputs.items()}, labels.to(self.device)

    @contextlib.contextmanager
    def _eval(self):
        was = self.method.training
        self.method.eval()
        try:
            with torch.no_grad():
                yield
        finally:
            self.method.train(was)

    def outputs(self, split: str) -> Iterable:
        """``(ModelOutput, labels)`` for each of this rank's batches, in eval mode, no_grad."""
        with self._eval():
            for inputs, labels in self.batches(split):
                with self.context():
                    out = self.method(inputs)
                yield out, labels

    def losses(self, split: str) -> SplitLosses:
        """Mean task loss of the fused prediction and of every unimodal head over ``split``
        (whole split: per-rank sums and counts are all-reduced). Cached within the hook."""
        if split in self._cache:
            return self._cache[split]
        method = self.method
        sums: Dict[str, Tensor] = {}
        count = torch.zeros((), dtype=torch.float64, device=self.device)
        for out, labels in self.outputs(split):
            n = labels.shape[0]
            heads = {"fused": method.predict(out), **out.unimodal_logits}
            for key, logits in heads.items():
                value = method.task_loss(logits, labels).double() * n
                sums[key] = sums.get(key, torch.zeros((), dtype=torch.float64, device=self.device)) + value
            count += n
        keys = ["fused", *method.model.modalities]
        stacked = torch.stack([sums.get(k, torch.zeros((), dtype=torch.float64, device=self.device))
                               for k in keys] + [count])
        if _distributed():
            torch.distributed.all_reduce(stacked)
        total = int(stacked[-1].item())
        means = stacked[:-1] / max(total, 1)
        result = SplitLosses(means[0].cpu(), {m: means[i + 1].cpu() for i, m in enumerate(keys[1:])}, total)
        self._cache[split] = result
        return result

    def collect(self, split: str, fn: Callable, gather: bool = True) -> Dict[str, Tensor]:
        """Runs ``fn(out, labels) -> {name: (B, ...) tensor}`` on every batch of ``split`` and
        concatenates each name over batches (on the CPU); ``gather``: over all ranks too (rank
        order, then row order within a rank: a fixed permutation of the split's rows)."""
        parts: Dict[str, list] = {}
        for out, labels in self.outputs(split):
            for name, value in fn(out, labels).items():
                parts.setdefault(name, []).append(value.detach().cpu())
        local = {name: torch.cat(values) for name, values in parts.items()}
        if gather and _distributed():
            every = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(every, local)
            names = list(dict.fromkeys(n for r in every for n in r))  # a rank's shard may be empty
            local = {n: torch.cat([r[n] for r in every if n in r]) for n in names}
        return local

    def per_row(self, split: str, fn: Callable[[Dict[str, Tensor], Tensor], Dict[str, Tensor]]) -> Dict[str, Tensor]:
        """Runs ``fn(inputs, labels) -> {name: (B, ...) tensor}`` on every batch of ``split`` in
        eval mode under no_grad (and the precision's context), for values that need the inputs
        (a forward with modalities dropped); returns each name over the whole split, on the CPU,
        in the split's row order (row i is the split's row i), gathered over DDP ranks."""
        parts: Dict[str, list] = {}
        with self._eval():
            for inputs, labels in self.batches(split):
                with self.context():
                    values = fn(inputs, labels)
                for name, value in values.items():
                    parts.setdefault(name, []).append(value.detach().cpu())
        local = {name: torch.cat(values) for name, values in parts.items()}
        if not _distributed():
            return local
        world = torch.distributed.get_world_size()
        every = [None] * world
        torch.distributed.all_gather_object(every, local)
        rows = len(self.datasets[split])
        out: Dict[str, Tensor] = {}
        for rank, values in enumerate(every):  # rank r scored rows r, r+W, ... (EvalShardSampler)
            for name, value in values.items():
                if name not in out:
                    out[name] = value.new_zeros((rows, *value.shape[1:]))
                out[name][rank::world] = value
        return out
