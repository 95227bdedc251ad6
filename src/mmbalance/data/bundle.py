"""What every data source hands the training loop."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Optional

from torch.utils.data import Dataset

from ..errors import ConfigError, did_you_mean
from .arrays import ArrayDataset, MultimodalArrays


@dataclass
class DataBundle:
    """Train/val/test datasets whose items are ``({modality: tensor}, label)``.

    Attributes:
        train, val, test: the three splits.
        shapes: modality -> shape of one sample (model order).
        num_classes: C (1 for regression).
        task: ``classification`` or ``regression``.
        encoders: modality -> encoder name to use by default (``None``: chosen by shape).
        extras: per-split side information, e.g. the synthetic datapoint types.
        metrics: optional ``(task, num_classes) -> MetricCollection`` replacing the default
            evaluation metrics (MOSI/MOSEI: Acc-7, Acc-2, F1, MAE, correlation).
    """

    train: Dataset
    val: Dataset
    test: Dataset
    shapes: Dict[str, tuple]
    num_classes: int
    task: str
    encoders: Dict[str, Optional[str]] = field(default_factory=dict)
    extras: Dict[str, Any] = field(default_factory=dict)
    metrics: Optional[Callable[[str, int], Any]] = None

    @staticmethod
    def from_arrays(data: MultimodalArrays) -> "DataBundle":
        """Wraps validated arrays (users' files, the synthetic generator)."""
        extras = {f"{k}/{s}": v[data.splits[s]] for k, v in data.extras.items() for s in data.splits}
        return DataBundle(ArrayDataset(data, "train"), ArrayDataset(data, "val"), ArrayDataset(data, "test"),
                          data.shapes, data.num_classes, data.task, extras=extras)


#: Built-in dataset names -> loader taking the run's DataConfig. Real datasets register here.
DATASETS: Dict[str, Callable[[Any], DataBundle]] = {}

ARRAY_SUFFIXES = (".npz", ".h5", ".hdf5")


def data_kind(spec: str) -> str:
    """``synthetic``, ``dataset`` (a built-in name) or ``file`` (a ``.npz``/``.h5`` path);
    ConfigError naming the closest dataset name for anything else."""
    if spec == "synthetic":
        return "synthetic"
    if spec in DATASETS:
        return "dataset"
    if Path(spec).suffix in ARRAY_SUFFIXES or Path(spec).exists():
        return "file"
    valid = ["synthetic", *DATASETS]
    raise ConfigError(f"--data {spec!r} is not a dataset name nor a .npz/.h5 file; "
                      f"{did_you_mean(spec, valid)}valid names: {', '.join(valid)}")
