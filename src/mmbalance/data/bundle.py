"""What every data source hands the training loop."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import numpy as np
from torch.utils.data import Dataset

from ..errors import ConfigError, did_you_mean
from .arrays import ArrayDataset, MultimodalArrays


@dataclass
class InputSpec:
    """What a trained model takes, saved with its run (``inputs.json``) so that it can be
    rebuilt and fed new data without the training data.

    Attributes:
        shapes: modality -> shape of one sample (model order).
        num_classes: C (1 for regression).
        task: ``classification`` or ``regression``.
        encoders: modality -> the data source's encoder choice (``None``: by shape).
        stats: modality -> (mean, std), float32 over the last axis, fitted on the train split;
            :meth:`standardize` applies them as training did.
    """

    shapes: Dict[str, tuple]
    num_classes: int
    task: str
    encoders: Dict[str, Optional[str]] = field(default_factory=dict)
    stats: Dict[str, Tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)

    @property
    def modalities(self) -> list:
        return list(self.shapes)

    def standardize(self, modality: str, x: np.ndarray) -> np.ndarray:
        """(N, ...) float32 rows of ``modality``, standardized as the training items were."""
        x = np.asarray(x, dtype=np.float32)
        if modality in self.stats:
            mean, std = self.stats[modality]
            x = (x - mean) / std
        return x

    def to_dict(self) -> Dict[str, Any]:
        """A JSON-able tree; float32 statistics survive the round trip exactly."""
        return {"shapes": {m: list(s) for m, s in self.shapes.items()}, "num_classes": self.num_classes,
                "task": self.task, "encoders": dict(self.encoders),
                "standardize": {m: {"mean": [float(v) for v in mean], "std": [float(v) for v in std]}
                                for m, (mean, std) in self.stats.items()}}

    @staticmethod
    def from_dict(tree: Mapping[str, Any]) -> "InputSpec":
        stats = {m: (np.asarray(v["mean"], np.float32), np.asarray(v["std"], np.float32))
                 for m, v in (tree.get("standardize") or {}).items()}
        return InputSpec({m: tuple(s) for m, s in tree["shapes"].items()}, int(tree["num_classes"]),
                         str(tree["task"]), dict(tree.get("encoders") or {}), stats)


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
        stats: modality -> (mean, std) the items are standardized with (array data).
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
    stats: Dict[str, tuple] = field(default_factory=dict)

    def input_spec(self) -> InputSpec:
        """What a model trained on this data takes (see :class:`InputSpec`)."""
        return InputSpec(dict(self.shapes), self.num_classes, self.task, dict(self.encoders), dict(self.stats))

    @staticmethod
    def from_arrays(data: MultimodalArrays) -> "DataBundle":
        """Wraps validated arrays (users' files, the synthetic generator)."""
        extras = {f"{k}/{s}": v[data.splits[s]] for k, v in data.extras.items() for s in data.splits}
        return DataBundle(ArrayDataset(data, "train"), ArrayDataset(data, "val"), ArrayDataset(data, "test"),
                          data.shapes, data.num_classes, data.task, extras=extras, stats=dict(data.stats))


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
