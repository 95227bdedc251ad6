"""Sentiment metrics of CMU-MOSI / MOSEI with torchmetrics: Acc-7, Acc-2, F1, MAE, correlation.

Conventions (chosen once, used everywhere in mmbalance):

- **Acc-2 / binary labels**: positive means score ``> 0``; zero and negative scores are the
  other class. This is the rule of MultiBench's affect loader for ``task=classification``
  (the rule the authors' runs use). Papers in the MulT line report ``>= 0`` instead
  ("non-negative vs negative"); the two differ only on samples labelled exactly 0.
- **Acc-7**: ``round(clip(score, -3, 3))`` of prediction and label compared (7 classes).
- **F1**: support-weighted F1 of the binary decision (``average="weighted"``, as MulT and
  MultiBench compute it).
- ``accuracy`` repeats Acc-2, so that the default ``trainer.monitor=accuracy`` and
  cross-dataset tables work for MOSI/MOSEI as for every other dataset.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import MeanAbsoluteError, MetricCollection, PearsonCorrCoef
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score
from torchmetrics.wrappers import LambdaInputTransformer


def positive(score: Tensor) -> Tensor:
    """(N,) scores -> (N,) int64, 1 where ``score > 0``."""
    return (score.reshape(-1) > 0).long()


def seven_class(score: Tensor) -> Tensor:
    """(N,) scores in about [-3, 3] -> (N,) int64 in 0..6 (``round(clip(s, -3, 3)) + 3``)."""
    return torch.round(torch.clamp(score.reshape(-1).float(), -3.0, 3.0)).long() + 3


def _binary(metric):
    return LambdaInputTransformer(metric, transform_pred=positive, transform_target=positive)


def affect_metrics(task: str, num_classes: int) -> MetricCollection:
    """The metric collection for sentiment scores (regression) or binary labels.

    Args:
        task: ``regression``: updates take (N,) predicted and true scores;
            ``classification``: updates take (N,) predicted and true class indices (0/1).
        num_classes: 1 for regression, 2 for classification.
    """
    if task == "regression":
        return MetricCollection({
            "acc7": LambdaInputTransformer(MulticlassAccuracy(7, average="micro"), transform_pred=seven_class,
                                           transform_target=seven_class),
            "acc2": _binary(MulticlassAccuracy(2, average="micro")),
            "accuracy": _binary(MulticlassAccuracy(2, average="micro")),
            "f1": _binary(MulticlassF1Score(2, average="weighted")),
            "mae": MeanAbsoluteError(),
            "corr": PearsonCorrCoef(),
        }, compute_groups=False)  # wrapped metrics of one class must never share state
    return MetricCollection({
        "acc2": MulticlassAccuracy(num_classes, average="micro"),
        "accuracy": MulticlassAccuracy(num_classes, average="micro"),
        "f1": MulticlassF1Score(num_classes, average="weighted"),
        "macro_f1": MulticlassF1Score(num_classes, average="macro"),
    }, compute_groups=False)
