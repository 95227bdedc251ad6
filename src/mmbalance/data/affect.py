"""CMU-MOSI and CMU-MOSEI from the MultiBench "affect" pickles.

``data.root`` is the pickle itself or the folder holding it (``mosi_data.pkl``,
``mosei_senti_data.pkl``)::

    {"train" | "valid" | "test": {"vision": (N, T, 20 or 35), "audio": (N, T, 74),
                                  "text": (N, T, 300), "labels": (N, 1) or (N, 1, 1),
                                  "id": ...}}

As MultiBench does: samples whose text is all zero are dropped (counted in the log), and
``-inf`` in the audio features becomes 0 (counted in the log). Any other NaN/Inf is an
error. Features are not standardized (MultiBench does not; the zero rows are the sequences'
front padding, which the sequence encoder masks). Sentiment scores lie in [-3, 3].

- ``data.modalities``: any of ``video`` (alias ``vision``), ``audio``, ``text``; default all
  three (V-A-T); ``[video, text]`` gives the paper's V-T setting.
- ``data.task``: ``regression`` (default, scores as targets) or ``classification``
  (binary: label 1 where the score is ``> 0``, see :mod:`mmbalance.data.affect_metrics`).
- Metrics: Acc-7, Acc-2, F1, MAE and Pearson correlation (regression).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from ..errors import ConfigError, DataError
from . import safe_pickle
from .arrays import from_arrays
from .bundle import DataBundle
from .clips import require_root

log = logging.getLogger("mmbalance.data")

FILES = {"mosi": "mosi_data.pkl", "mosei": "mosei_senti_data.pkl"}
SPLITS = {"train": "train", "valid": "val", "test": "test"}
KEYS = {"video": "vision", "audio": "audio", "text": "text"}
ALIASES = {"vision": "video", "video": "video", "audio": "audio", "text": "text"}


def load_mosi(cfg: Any) -> DataBundle:
    """CMU-MOSI (``mosi_data.pkl``); see the module docstring."""
    return load_affect(cfg, "mosi")


def load_mosei(cfg: Any) -> DataBundle:
    """CMU-MOSEI (``mosei_senti_data.pkl``); see the module docstring."""
    return load_affect(cfg, "mosei")


def load_affect(cfg: Any, name: str) -> DataBundle:
    """Builds the bundle: items ``({m: (T, D_m)}, score or 0/1)`` for the chosen modalities."""
    path = _pickle_path(require_root(cfg, name, f"{FILES[name]} (MultiBench affect pickle)"), name)
    modalities = _modalities(cfg.modalities)
    if cfg.task not in ("auto", "regression", "classification"):
        raise ConfigError(f"data.task must be regression or classification for {name}, got {cfg.task!r}")
    task = "classification" if cfg.task == "classification" else "regression"
    arrays, labels, split = _collect(path, _read(path), modalities)
    if task == "classification":
        labels = (labels > 0).astype(np.int64)
    data = from_arrays(arrays, labels, split, standardize=False, task=task, source=str(path))
    bundle = DataBundle.from_arrays(data)
    bundle.encoders = {m: "transformer_seq" for m in modalities}
    from .affect_metrics import affect_metrics  # torchmetrics: imported when a MOSI/MOSEI run needs it
    bundle.metrics = affect_metrics
    return bundle


def _pickle_path(root: Path, name: str) -> Path:
    path = root / FILES[name] if root.is_dir() else root
    if not path.is_file():
        raise DataError(f"{path} does not exist (expected the MultiBench pickle {FILES[name]})")
    return path


def _modalities(chosen: Optional[list]) -> List[str]:
    names = [str(m) for m in (chosen or ["video", "audio", "text"])]
    unknown = [m for m in names if m not in ALIASES]
    if unknown:
        raise ConfigError(f"data.modalities: unknown {unknown[0]!r}; valid: video (or vision), audio, text")
    out = list(dict.fromkeys(ALIASES[m] for m in names))
    if len(out) < 2:
        raise ConfigError(f"data.modalities needs at least 2 modalities, got {out}")
    return out


def _read(path: Path) -> Dict[str, Any]:
    try:
        table = safe_pickle.load(path)
    except safe_pickle.UnsafePickleError:
        raise
    except Exception as exc:  # any unpickling failure means the same thing here
        raise DataError(f"{path} is not a readable pickle ({type(exc).__name__}: {exc})") from None
    missing = [k for k in SPLITS if not isinstance(table, dict) or not isinstance(table.get(k), dict)]
    if missing:
        raise DataError(f"{path}: no split {missing[0]!r}; expected {{'train'|'valid'|'test': "
                        "{'vision', 'audio', 'text', 'labels'}}")
    return table


def _collect(path: Path, table: Dict[str, Any], modalities: List[str]):
    parts: Dict[str, List[np.ndarray]] = {m: [] for m in modalities}
    labels, split, dropped, neg_inf = [], [], 0, 0
    for key, ours in SPLITS.items():
        arrays, scores, keep, n_inf = _split(path, key, table[key], modalities)
        for m in modalities:
            parts[m].append(arrays[m][keep])
        labels.append(scores[keep])
        split += [ours] * int(keep.sum())
        dropped, neg_inf = dropped + int((~keep).sum()), neg_inf + n_inf
    if dropped:
        log.warning("%s: dropped %d sample(s) whose text features are all zero, as MultiBench does", path.name, dropped)
    if neg_inf:
        log.warning("%s: replaced %d -inf value(s) in the audio features with 0, as MultiBench does", path.name, neg_inf)
    try:
        arrays = {m: np.concatenate(parts[m]) for m in modalities}
    except ValueError:
        shapes = {m: [p.shape[1:] for p in parts[m]] for m in modalities}
        raise DataError(f"{path}: splits disagree on the (T, D) of a modality: {shapes}") from None
    return arrays, np.concatenate(labels), np.asarray(split)


def _split(path: Path, key: str, part: Dict[str, Any], modalities: List[str]) -> Tuple[Dict[str, np.ndarray], np.ndarray, np.ndarray, int]:
    needed = sorted({KEYS[m] for m in modalities} | {"text", "labels"})
    missing = [k for k in needed if k not in part]
    if missing:
        raise DataError(f"{path}: split {key!r} has no {missing[0]!r} array (found: {', '.join(map(str, part))})")
    text = _features(path, key, "text", part["text"])
    n = len(text)
    raw = np.asarray(part["labels"], dtype=np.float64)
    if raw.size != n:
        raise DataError(f"{path}: split {key!r} has {raw.size} labels of shape {raw.shape} for {n} samples; "
                        "expected (N,), (N, 1) or (N, 1, 1)")
    arrays, n_inf = {}, 0
    for m in modalities:
        x = text if m == "text" else _features(path, key, KEYS[m], part[KEYS[m]])
        if len(x) != n:
            raise DataError(f"{path}: split {key!r} has {len(x)} {KEYS[m]!r} rows but {n} text rows")
        if m == "audio":
            bad = np.isneginf(x)
            n_inf, x = int(bad.sum()), np.where(bad, np.float32(0), x)
        arrays[m] = x
    keep = text.reshape(n, -1).sum(axis=1) != 0
    return arrays, raw.reshape(-1), keep, n_inf


def _features(path: Path, key: str, name: str, value: Any) -> np.ndarray:
    try:
        x = np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError):
        raise DataError(f"{path}: split {key!r} array {name!r} is not numeric") from None
    if x.ndim != 3:
        raise DataError(f"{path}: split {key!r} array {name!r} has shape {x.shape}; expected (N, T, D)")
    return x
