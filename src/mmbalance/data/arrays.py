"""Users' own data: ``.npz`` (in memory) or ``.h5`` (read lazily), validated at load.

Contract (DESIGN.md): one array per modality named after it, first axis N; ``label`` (N,)
integers for classification or floats for regression; optional ``split`` (N,) with values
``train``/``val``/``test`` (otherwise a seeded stratified 70/15/15 split). Vector (N, D)
and sequence (N, T, D) features are standardized with train-split statistics unless
``standardize=False``.
"""

from __future__ import annotations

import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Mapping, Optional

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

from ..errors import DataError

SPLITS = ("train", "val", "test")


@dataclass
class MultimodalArrays:
    """Validated data: modality arrays (numpy or lazily read h5 datasets), labels and splits.

    Attributes:
        modalities: name -> array-like with first axis N (order = model order).
        labels: (N,) int64 (classification) or float32 (regression).
        splits: split name -> sorted row indices.
        task: ``classification`` or ``regression``.
        num_classes: C (1 for regression).
        stats: name -> (mean, std) used to standardize, from the train split.
        extras: other per-row arrays (for example the synthetic ``kind``).
    """

    modalities: Dict[str, object]
    labels: np.ndarray
    splits: Dict[str, np.ndarray]
    task: str
    num_classes: int
    stats: Dict[str, tuple] = field(default_factory=dict)
    extras: Dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def shapes(self) -> Dict[str, tuple]:
        """Modality -> shape of one sample."""
        return {m: tuple(a.shape[1:]) for m, a in self.modalities.items()}


def load_array_file(path: str | Path, standardize: bool = True, seed: int = 0,
                    task: str = "auto") -> MultimodalArrays:
    """Reads and validates a ``.npz`` or ``.h5`` file (see the module docstring).

    Raises:
        DataError: naming the file and the array, index or value at fault.
    """
    path = Path(path)
    arrays = read_array_file(path)
    labels = arrays.pop("label", None)
    if labels is None:
        raise DataError(f"{path}: no 'label' array (found: {', '.join(arrays) or 'nothing'})")
    split = arrays.pop("split", None)
    return from_arrays(arrays, np.asarray(labels), None if split is None else np.asarray(split),
                       standardize=standardize, seed=seed, task=task, source=str(path))


def from_arrays(modalities: Mapping[str, object], labels: np.ndarray, split: Optional[np.ndarray] = None,
                standardize: bool = True, seed: int = 0, task: str = "auto", source: str = "data",
                extras: Optional[Mapping[str, np.ndarray]] = None) -> MultimodalArrays:
    """Validates in-memory (or h5) arrays and builds the splits."""
    if len(modalities) < 2:
        raise DataError(f"{source}: needs at least 2 modality arrays besides 'label', found {list(modalities)}")
    labels = labels.reshape(len(labels), -1)[:, 0] if labels.ndim > 1 and labels.size == len(labels) else labels
    n = len(labels)
    if labels.ndim != 1:
        raise DataError(f"{source}: 'label' must have shape (N,), got {labels.shape}")
    for name, arr in modalities.items():
        if arr.shape[0] != n:
            raise DataError(f"{source}: modality {name!r} has {arr.shape[0]} rows but 'label' has {n}")
        if np.dtype(arr.dtype).kind not in "biuf":
            raise DataError(f"{source}: modality {name!r} holds {np.dtype(arr.dtype)} values; a modality must be "
                            "a numeric array (bool, integer or float)")
        _check_finite(source, name, arr)
    task, labels, num_classes = _check_labels(source, labels, task)
    splits = _splits(source, split, labels, task, seed)
    if task == "classification":
        present = np.unique(labels[splits["train"]])
        absent = sorted(set(range(num_classes)) - set(present.tolist()))
        if absent:
            raise DataError(f"{source}: class(es) {absent} have no sample in the train split")
    data = MultimodalArrays(dict(modalities), labels, splits, task, num_classes, extras=dict(extras or {}))
    if standardize:
        data.stats = {m: _train_stats(a, splits["train"]) for m, a in modalities.items() if _standardizable(a)}
    return data


def read_array_file(path: str | Path) -> Dict[str, object]:
    """Every array of a ``.npz`` (in memory) or ``.h5`` file (``label``/``split`` read, the
    others lazily), not yet validated; DataError when missing or unreadable."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"data file {path} does not exist")
    if path.suffix == ".npz":
        return _read_npz(path)
    if path.suffix in (".h5", ".hdf5"):
        return _read_h5(path)
    raise DataError(f"data file {path} must end in .npz or .h5")


def _read_npz(path: Path) -> Dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise DataError(f"data file {path} is not a readable .npz ({type(exc).__name__}: {exc})") from None


def _read_h5(path: Path) -> Dict[str, object]:
    try:
        import h5py
    except ImportError:
        raise DataError("reading .h5 needs h5py, a dependency of mmbalance that is missing here: "
                        "pip install h5py") from None
    try:
        handle = h5py.File(path, "r")
    except OSError as exc:
        raise DataError(f"data file {path} is not a readable .h5 ({exc})") from None
    out: Dict[str, object] = {}
    for key in handle.keys():
        ds = handle[key]
        if key in ("label", "split"):
            value = ds[()]
            out[key] = value.astype(str) if value.dtype.kind in "SO" else value
        else:
            out[key] = ds  # read lazily, row by row
    return out


def _check_finite(source: str, name: str, arr, chunk: int = 4096) -> None:
    if np.dtype(arr.dtype).kind not in "fc":
        return
    bad, first = 0, None
    for start in range(0, arr.shape[0], chunk):
        block = np.asarray(arr[start:start + chunk])
        mask = ~np.isfinite(block.reshape(len(block), -1)).all(1)
        if mask.any():
            bad += int(mask.sum())
            first = first if first is not None else start + int(np.argmax(mask))
    if bad:
        raise DataError(f"{source}: modality {name!r} has NaN or Inf in {bad} sample(s), first at index {first}")


def _check_labels(source: str, labels: np.ndarray, task: str):
    if task not in ("auto", "classification", "regression"):
        raise DataError(f"data.task must be auto, classification or regression, got {task!r}")
    kind = labels.dtype.kind
    if kind not in "iufb":
        raise DataError(f"{source}: 'label' must be numeric, got dtype {labels.dtype}")
    if not np.isfinite(labels.astype(np.float64)).all():
        raise DataError(f"{source}: 'label' has NaN or Inf at index {int(np.argmax(~np.isfinite(labels)))}")
    if task == "auto":
        task = "regression" if kind == "f" else "classification"
    if task == "regression":
        return task, labels.astype(np.float32), 1
    if kind == "f" and not np.all(labels == np.round(labels)):
        idx = int(np.argmax(labels != np.round(labels)))
        raise DataError(f"{source}: classification labels must be integers, 'label'[{idx}] = {labels[idx]}")
    labels = labels.astype(np.int64)
    if labels.min() < 0:
        idx = int(np.argmin(labels))
        raise DataError(f"{source}: labels must lie in [0, C), 'label'[{idx}] = {labels[idx]}")
    num_classes = int(labels.max()) + 1
    if num_classes < 2:
        raise DataError(f"{source}: classification needs at least 2 classes, found {num_classes}")
    return task, labels, num_classes


def _splits(source: str, split, labels: np.ndarray, task: str, seed: int) -> Dict[str, np.ndarray]:
    if split is None:
        return stratified_split(labels if task == "classification" else np.zeros(len(labels), int), seed)
    split = np.asarray(split).astype(str)
    unknown = sorted(set(np.unique(split)) - set(SPLITS))
    if unknown:
        idx = int(np.argmax(~np.isin(split, SPLITS)))
        raise DataError(f"{source}: 'split' value {str(unknown[0])!r} at index {idx} is unknown; valid: train, val, test")
    out = {s: np.flatnonzero(split == s) for s in SPLITS}
    for s, idx in out.items():
        if len(idx) == 0:
            raise DataError(f"{source}: the {s!r} split is empty")
    return out


def stratified_split(labels: np.ndarray, seed: int, fractions=(0.7, 0.15, 0.15)) -> Dict[str, np.ndarray]:
    """Seeded per-class 70/15/15 split (rounded per class; train gets at least one row of each
    class). Raises DataError when the val or test split comes out empty, which small N can do
    (5 rows of one class: 4/1/0)."""
    rng = np.random.default_rng(seed)
    parts = {s: [] for s in SPLITS}
    for cls in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        n_train = max(1, int(round(fractions[0] * len(idx))))
        n_val = int(round(fractions[1] * len(idx)))
        parts["train"].append(idx[:n_train])
        parts["val"].append(idx[n_train:n_train + n_val])
        parts["test"].append(idx[n_train + n_val:])
    out = {s: np.sort(np.concatenate(p)) for s, p in parts.items()}
    for s in ("val", "test"):
        if len(out[s]) == 0:
            raise DataError(f"too few samples ({len(labels)}) for a 70/15/15 split: the {s} split is empty")
    return out


def _standardizable(arr) -> bool:
    return np.dtype(arr.dtype).kind == "f" and len(arr.shape) in (2, 3)


def _train_stats(arr, train_idx: np.ndarray, chunk: int = 4096):
    total, total_sq, count = 0.0, 0.0, 0
    for start in range(0, len(train_idx), chunk):
        block = np.asarray(arr[np.sort(train_idx[start:start + chunk])], dtype=np.float64)
        block = block.reshape(-1, block.shape[-1])
        total, total_sq, count = total + block.sum(0), total_sq + (block ** 2).sum(0), count + len(block)
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean ** 2, 0.0))
    return mean.astype(np.float32), np.where(std > 1e-8, std, 1.0).astype(np.float32)


class ArrayDataset(Dataset):
    """One split of :class:`MultimodalArrays`; items are ``({modality: tensor}, label)``."""

    def __init__(self, data: MultimodalArrays, split: str) -> None:
        self.data, self.indices = data, data.splits[split]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        row = int(self.indices[i])
        inputs = {}
        for m, arr in self.data.modalities.items():
            x = np.asarray(arr[row], dtype=np.float32)
            if m in self.data.stats:
                mean, std = self.data.stats[m]
                x = (x - mean) / std
            inputs[m] = torch.from_numpy(np.ascontiguousarray(x))
        return inputs, torch.as_tensor(self.data.labels[row])

    def __getitems__(self, positions: List[int]) -> "Rows":
        """The items at ``positions``, read and standardized as one block per modality (what
        ``DataLoader`` calls for a batch). Equal, element for element, to
        ``[self[i] for i in positions]``: the same float32 operations, on a block instead of a
        row; a file-backed (h5) modality is still read row by row. The blocks stay stacked
        (:class:`Rows`), so :func:`collate` hands them over without unstacking and
        restacking; any other collate sees the rows."""
        rows = self.indices[np.asarray(positions, dtype=np.int64)]
        columns = {}
        for m, arr in self.data.modalities.items():
            if isinstance(arr, np.ndarray):
                x = np.asarray(arr[rows], dtype=np.float32)
            else:
                x = np.stack([np.asarray(arr[int(r)], dtype=np.float32) for r in rows])
            if m in self.data.stats:
                mean, std = self.data.stats[m]
                x = (x - mean) / std
            columns[m] = torch.from_numpy(np.ascontiguousarray(x))
        return Rows(columns, torch.as_tensor(np.asarray(self.data.labels)[rows]))


class Rows(Sequence):
    """A batch of :class:`ArrayDataset` items kept as stacked blocks: a sequence of
    ``(inputs, label)`` rows (views into the blocks, made on access) whose
    :attr:`batch` is what ``default_collate`` would make of those rows."""

    def __init__(self, columns: Dict[str, torch.Tensor], labels: torch.Tensor) -> None:
        self.columns, self.labels = columns, labels

    @property
    def batch(self) -> list:
        """``[{modality: (B, ...) tensor}, (B,) labels]``, as ``default_collate`` returns it."""
        return [dict(self.columns), self.labels]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, k):
        if isinstance(k, slice):
            return [self[i] for i in range(*k.indices(len(self)))]
        return {m: col[k] for m, col in self.columns.items()}, self.labels[k]


def collate(items):
    """The loaders' ``collate_fn``: a :class:`Rows` batch as it is, anything else through
    ``default_collate``."""
    return items.batch if isinstance(items, Rows) else default_collate(items)
