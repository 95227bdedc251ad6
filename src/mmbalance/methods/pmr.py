"""PMR: prototypical modal rebalance (Fan et al., CVPR 2023)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Dict, Iterable, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.parameter import UninitializedBuffer, is_lazy
from torch.utils.data import DataLoader

from ..types import Batch, LossTerms, ModelOutput
from .hparams import hparam, log_uniform
from .base import Method, register


def prototype_weights(scores: Tensor, alpha: float) -> Tensor:
    """Weight of each modality's prototype loss: ``alpha`` for every modality whose
    prototype score is below the best one, 0 for the best (and for all on a tie). For M = 2
    this is the official rule: ``rho = s_a / s_v > 1`` puts ``alpha`` on v, ``< 1`` on a.

    Args:
        scores: (M,) ``s_m = sum_i softmax(-||z_m,i - p_m,c||)[y_i]``.
    """
    return torch.where(scores < scores.max(), alpha, 0.0).to(scores.dtype)


@register
class PMR(Method):
    """``L = L_task(f(X), y) + sum_m w_m CE(-||z_m - P_m||, y)``: each modality's features
    (B, D_m) are classified by their negative Euclidean distance to class prototypes
    ``P_m`` (C, D_m), and the weaker modality (:func:`prototype_weights`) is trained on that
    prototype loss while ``start_epoch <= epoch <= end_epoch``.

    Prototypes are the class means of each encoder's features (eval mode, no gradient) over
    the first 10% of the batches of a shuffled pass over the training set (at least one
    batch; :meth:`_first_tenth`), computed at the start of every epoch: fresh at epoch 0, then ``(1 - momentum) new + momentum old``. Classes absent
    from those batches keep their previous prototype (the official code divides by zero).
    The official code also skips the average at its second computation (it passes the
    finished epoch, 0); here every later one is averaged. The paper's prototype entropy
    regularizer is absent from the official code and from here. Classification; any fusion.

    Notes:
        Prototypes come from TRAINING batches only. The MCR authors' AVE code computes them from
        the validation set; that lets validation labels shape training and leaks into model
        selection, so it is not copied. The MCR authors ran PMR with ``momentum=0.0`` and
        ``alpha=2.0``; the defaults here stay the official code's (0.2, 1.0) and the
        per-dataset configs set the authors' values.

        Optimizer: official SGD (lr 1e-4, momentum 0.9, weight decay 1e-4, StepLR(70, 0.1)).
        PMR adds a loss term rather than scaling gradients; under Adam, the per-parameter
        normalization rescales the weaker encoder's total gradient, so ``alpha`` changes its
        direction more than its size.
    """

    name = "pmr"
    description = "PMR: prototype (class-mean) classification loss on the weaker modality's encoder"
    reference = "Fan et al., PMR: Prototypical Modal Rebalance for Multimodal Learning, CVPR 2023"
    requires = frozenset({"classification"})

    @dataclass
    class Hyperparameters:
        alpha: float = hparam(1.0, search=log_uniform(0.1, 5.0))  # the prototype loss weight, 1.0 official
        momentum: float = 0.2
        start_epoch: int = 0
        end_epoch: int = 100


    def __init__(self, model, hparams=None) -> None:
        super().__init__(model, hparams)
        for i, m in enumerate(model.modalities):  # sized on the first batch if D_m is not known yet
            self.register_buffer(f"prototypes_{i}", torch.zeros(model.num_classes, model.feature_dims[m])
                                 if model.materialized else UninitializedBuffer())
        model.when_materialized(self._size_prototypes)
        self.register_buffer("prototype_epoch", torch.tensor(-1))
        self.register_buffer("weights", torch.zeros(len(model.modalities)))
        self.seed = torch.initial_seed() % (2**31)  # the run seed; shuffles the prototype batches
        self.epoch = 0

    def _size_prototypes(self, dims: Dict[str, int]) -> None:
        for m in self.model.modalities:
            buffer = self.prototypes(m)
            if is_lazy(buffer):
                buffer.materialize((self.model.num_classes, dims[m]))
                buffer.zero_()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        for i in range(len(self.model.modalities)):  # not sized yet: a checkpoint's prototypes size it
            buffer, key = getattr(self, f"prototypes_{i}"), f"{prefix}prototypes_{i}"
            if is_lazy(buffer) and key in state_dict:
                buffer.materialize(state_dict[key].shape)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def prototypes(self, modality: str) -> Tensor:
        """(C, D_m) class prototypes of ``modality``."""
        return getattr(self, f"prototypes_{self.model.modalities.index(modality)}")

    def on_epoch_start(self, epoch: int, train_loader: Optional[Iterable] = None) -> Dict[str, float]:
        self.epoch = epoch
        if train_loader is None or int(self.prototype_epoch) == epoch:  # resumed mid-epoch: keep
            return {}
        sums, counts = self._class_sums(self._first_tenth(train_loader, epoch))
        seen = counts > 0
        keep = 0.0 if int(self.prototype_epoch) < 0 else self.hparams.momentum  # first time: fresh
        for m in self.model.modalities:
            new, old = sums[m][seen] / counts[seen].unsqueeze(1), self.prototypes(m)
            old[seen] = (1 - keep) * new + keep * old[seen]
        self.prototype_epoch.fill_(epoch)
        return {"prototype_classes": float(seen.sum())}

    def _first_tenth(self, loader: Iterable, epoch: int) -> Iterable:
        """The first 10% (at least one) of the batches of a shuffled pass over the training
        set. The shuffle has its own generator, seeded by (run seed, epoch), so the training
        loader's order is untouched (an exact resume; the same batches as other methods)
        and every DDP rank uses the same batches."""
        n_batches = max(1, len(loader) // 10)
        if getattr(loader, "dataset", None) is not None and getattr(loader, "batch_size", None):
            generator = torch.Generator().manual_seed(self.seed + epoch)
            loader = DataLoader(loader.dataset, batch_size=loader.batch_size, shuffle=True,
                                generator=generator, collate_fn=loader.collate_fn)
        return itertools.islice(loader, n_batches)

    @torch.no_grad()
    def _class_sums(self, batches: Iterable) -> Tuple[Dict[str, Tensor], Tensor]:
        """Per-class feature sums (C, D_m) and counts (C,), averaged over DDP ranks."""
        device, was_training, C = self.prototypes_0.device, self.model.training, self.model.num_classes
        sums: Dict[str, Tensor] = {}  # made after the first batch, which sizes a lazy model
        counts = torch.zeros(C, device=device)
        self.model.eval()
        for inputs, labels in batches:
            labels = labels.to(device).long()
            features = self.model.encode({m: x.to(device) for m, x in inputs.items()})
            for m in self.model.modalities:
                sums.setdefault(m, torch.zeros_like(self.prototypes(m))).index_add_(0, labels, features[m].float())
            counts += torch.bincount(labels, minlength=C).float()
        self.model.train(was_training)
        sums = {m: sums[m] if m in sums else torch.zeros_like(self.prototypes(m)) for m in self.model.modalities}
        return {m: self.all_reduce_mean(s) for m, s in sums.items()}, self.all_reduce_mean(counts)

    def training_loss(self, batch: Batch, out: ModelOutput) -> LossTerms:
        terms = {"task": self.task_loss(out.logits, batch.labels)}
        labels = batch.labels.long()
        sims = {m: -torch.cdist(out.features[m].float(), self.prototypes(m)) for m in self.model.modalities}
        with torch.no_grad():
            scores = torch.stack([sims[m].softmax(-1).gather(1, labels.unsqueeze(1)).sum()
                                  for m in self.model.modalities])
            active = self.hparams.start_epoch <= self.epoch <= self.hparams.end_epoch
            weights = prototype_weights(self.all_reduce_mean(scores), self.hparams.alpha)
            self.weights.copy_(weights if active else torch.zeros_like(weights))
        for i, m in enumerate(self.model.modalities):
            if self.weights[i] > 0:
                terms[f"prototype/{m}"] = self.weights[i] * F.cross_entropy(sims[m], labels)
        return LossTerms.from_terms(terms)

    def after_backward(self) -> Dict[str, float]:
        return {f"prototype_weight/{m}": float(w) for m, w in zip(self.model.modalities, self.weights)}

    def get_extra_state(self) -> Dict[str, int]:
        return {"epoch": self.epoch, "seed": self.seed}

    def set_extra_state(self, state: Optional[Dict[str, int]]) -> None:
        if state:
            self.epoch, self.seed = int(state["epoch"]), int(state["seed"])
