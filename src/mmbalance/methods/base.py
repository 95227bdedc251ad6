"""The method interface: how a balancing method plugs into the one training loop.

A method never owns the loop or the optimizer step. The loop calls, in order:
``on_epoch_start`` -> per batch ``forward`` -> ``training_loss`` -> (backward) ->
``after_backward`` -> (optimizer step) ... ``on_validation_end`` -> ``on_epoch_end``.
State that must survive a checkpoint lives in buffers, parameters, or
``get_extra_state``/``set_extra_state`` (both land in the module's ``state_dict``).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Dict, Iterable, List, Mapping, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..models import MultimodalModel
from ..types import Batch, LossTerms, ModelOutput


@dataclasses.dataclass
class NoHyperparameters:
    """A method without hyperparameters of its own."""


class Method(nn.Module):
    """Base class of every balancing method.

    Subclasses set ``name``, ``description``, ``reference`` and ``Hyperparameters`` (a
    dataclass whose fields, with types and defaults, are the method's ``method.<key>``
    options) and implement :meth:`training_loss`.

    Args:
        model: the multimodal model to train (a submodule, so it is checkpointed with the
            method's own state).
        hparams: an instance of ``Hyperparameters``.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    reference: ClassVar[str] = ""
    Hyperparameters: ClassVar[type] = NoHyperparameters
    regression_loss: str = "mse"  # task loss of a regressor; build_method sets it from model.regression_loss

    def __init__(self, model: MultimodalModel, hparams: Any = None) -> None:
        super().__init__()
        self.model = model
        self.hparams = hparams if hparams is not None else self.Hyperparameters()

    # -- forward and loss ---------------------------------------------------
    def forward(self, inputs: Mapping[str, Tensor]) -> ModelOutput:
        """Runs the model; override to change what is encoded (for example one modality)."""
        return self.model(inputs)

    def training_loss(self, batch: Batch, out: ModelOutput) -> LossTerms:
        """The loss of one training batch, as named terms."""
        raise NotImplementedError

    def predict(self, out: ModelOutput) -> Tensor:
        """The (B, C) prediction that evaluation scores."""
        return out.logits

    # -- hooks ----------------------------------------------------------------
    def after_backward(self) -> Dict[str, float]:
        """Gradient edits after backward, before the optimizer step; returns values to log."""
        return {}

    def param_groups(self) -> List[Dict[str, Any]]:
        """Optimizer parameter groups (extra keys such as ``lr_scale`` are allowed)."""
        return [{"params": [p for p in self.parameters() if p.requires_grad]}]

    def update_param_groups(self, groups: List[Dict[str, Any]]) -> None:
        """Edits the optimizer's live parameter groups (for example a group's ``lr_scale``);
        called after an epoch or validation hook returned values, before the schedule
        re-applies every group's ``lr_scale``."""

    def on_epoch_start(self, epoch: int, train_loader: Optional[Iterable] = None) -> Dict[str, float]:
        """Called before each training epoch with the training loader (for methods that
        need a pass over training data, e.g. prototypes); returns values to log."""
        return {}

    def on_epoch_end(self, epoch: int) -> Dict[str, float]:
        """Called after each training epoch; returns values to log."""
        return {}

    def on_validation_batch(self, out: ModelOutput, labels: Tensor) -> None:
        """Sees each validation batch's output (for methods that keep their own statistics)."""

    def on_validation_end(self, metrics: Mapping[str, float]) -> Dict[str, float]:
        """Called with the validation metrics of each epoch; returns values to log."""
        return {}

    # -- helpers for subclasses -------------------------------------------------
    def task_loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        """Cross-entropy for classification; for regression (``num_classes == 1``) the batch
        mean of ``(y_hat - y)^2`` (``regression_loss="mse"``) or ``|y_hat - y|`` (``"l1"``, the
        authors' MOSI/MOSEI trainer), set from ``model.regression_loss``."""
        if self.model.task == "regression":
            pred, target = logits.float().reshape(-1), labels.float().reshape(-1)
            if self.regression_loss == "l1":
                return F.l1_loss(pred, target)
            return F.mse_loss(pred, target)
        return F.cross_entropy(logits.float(), labels.long())

    def unimodal_losses(self, out: ModelOutput, labels: Tensor) -> Dict[str, Tensor]:
        """Modality -> task loss of that modality's own head."""
        return {m: self.task_loss(z, labels) for m, z in out.unimodal_logits.items()}

    def multiloss_terms(self, out: ModelOutput, labels: Tensor, unimodal_weight: float) -> Dict[str, Tensor]:
        """``task`` (fused) plus ``unimodal/<m>`` = ``unimodal_weight`` x each head's task loss."""
        terms = {"task": self.task_loss(out.logits, labels)}
        for m, loss in self.unimodal_losses(out, labels).items():
            terms[f"unimodal/{m}"] = unimodal_weight * loss
        return terms

    @staticmethod
    def all_reduce_mean(value: Tensor) -> Tensor:
        """Mean of ``value`` over DDP ranks (itself when not distributed), so that every rank
        applies the same balancing coefficients and the weights stay identical."""
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            value = value.detach().clone()
            torch.distributed.all_reduce(value)
            value /= torch.distributed.get_world_size()
        return value

    @classmethod
    def hyperparameter_defaults(cls) -> Dict[str, Any]:
        """Name -> default of every hyperparameter."""
        return {f.name: f.default for f in dataclasses.fields(cls.Hyperparameters)}

    @classmethod
    def search_space(cls, trial: Any) -> Dict[str, Any]:
        """What ``mmbalance tune`` searches: an Optuna ``trial`` -> dotted override keys
        (``"optim.lr"``, ``"method.<name>"``). Default: the learning rate only; a method
        with its own hyperparameters extends it (``space = super().search_space(trial)``)."""
        return {"optim.lr": trial.suggest_float("optim.lr", 1e-4, 1e-2, log=True)}


def zero_like_loss(out: ModelOutput) -> Tensor:
    return torch.zeros((), device=out.logits.device)
