"""The numbers a benchmark row carries beyond accuracy, computed from a finished run folder:
test accuracy on each synthetic point type (shared, unique1, unique2, none) and the
modalities' Shapley values (BalanceBenchmark's imbalance metric) with features zeroed and
with inputs permuted. Macro-F1 and training time come from ``metrics.json`` itself.

:func:`run_scores` writes them next to the run as ``scores.json`` (so a recovered run need
not compute them again); :func:`row_scores` turns them into ``results.csv`` cells.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

import numpy as np

SCORES_FILE = "scores.json"
#: the largest test split whose Shapley values are computed (every coalition scores it again)
MAX_SHAPLEY_ROWS = 50_000


def kind_accuracy(prediction: np.ndarray, label: np.ndarray, kind: np.ndarray) -> Dict[str, float]:
    """Accuracy on the rows of each synthetic point type.

    Args:
        prediction: (N,) predicted classes.
        label: (N,) true classes.
        kind: (N,) index into :data:`mmbalance.data.synthetic.KINDS`.

    Returns:
        kind name -> accuracy (fraction) over its rows; kinds without a row are left out.
    """
    from ..data.synthetic import KINDS
    prediction, label, kind = (np.asarray(a).reshape(-1) for a in (prediction, label, kind))
    if not prediction.shape == label.shape == kind.shape:
        raise ValueError(f"prediction, label and kind need one length, got {prediction.shape}, {label.shape}, "
                         f"{kind.shape}")
    right = prediction == label
    return {name: float(right[kind == k].mean()) for k, name in enumerate(KINDS) if (kind == k).any()}


def run_scores(run_dir: str | Path, shapley_seed: int = 0) -> Dict[str, Any]:
    """Per-kind test accuracy (synthetic data only) and Shapley values of ``run_dir``'s best
    checkpoint on the test split; written to ``run_dir/scores.json`` and returned.

    Returns:
        ``{"kind_accuracy": {kind: acc}, "shapley": {"zero": {m: phi}, "permute": {m: phi}}}``;
        a part that does not apply (real data has no kinds; a regression model, inputs that
        are not tensors, or more than :data:`MAX_SHAPLEY_ROWS` test rows) is ``{}``.
    """
    import torch
    from torch.utils.data import DataLoader
    from ..analysis.runs import load_run
    from ..data.arrays import collate
    from ..shapley import REMOVALS, modality_shapley
    from ..training.build import build_data
    run = load_run(run_dir)
    data = build_data(run.cfg)
    test = data.test
    out: Dict[str, Any] = {"kind_accuracy": {}, "shapley": {}}
    loader = DataLoader(test, batch_size=max(1, min(len(test), MAX_SHAPLEY_ROWS)), shuffle=False, collate_fn=collate)
    inputs, labels = next(iter(loader)) if 0 < len(test) <= MAX_SHAPLEY_ROWS else ({}, None)
    tensors = labels is not None and all(isinstance(x, torch.Tensor) for x in inputs.values())
    classification = getattr(run.method.model, "task", "classification") == "classification"
    if tensors and classification:
        with torch.no_grad():
            pred = run.method.predict(run.method(inputs))  # as evaluation scores it
        kinds = data.extras.get("kind/test")
        if kinds is not None:
            out["kind_accuracy"] = kind_accuracy(pred.argmax(-1).numpy(), labels.numpy(), np.asarray(kinds))
        out["shapley"] = {how: modality_shapley(run.method, inputs, labels, how, seed=shapley_seed)
                          for how in REMOVALS}
    (Path(run_dir) / SCORES_FILE).write_text(json.dumps(out, indent=1, sort_keys=True))
    return out


def read_scores(run_dir: str | Path) -> Optional[Dict[str, Any]]:
    """``run_dir/scores.json``, or None when it is missing or unreadable."""
    try:
        return json.loads((Path(run_dir) / SCORES_FILE).read_text())
    except (OSError, ValueError):
        return None


def row_scores(metrics: Mapping[str, Any], scores: Optional[Mapping[str, Any]]) -> Dict[str, str]:
    """The ``results.csv`` cells of the scores: ``macro_f1`` (from the run's test metrics),
    ``kind_accuracy`` and ``shapley`` (JSON, empty when unknown)."""
    f1 = (metrics.get("test") or {}).get("macro_f1")
    scores = scores or {}
    dump = lambda v: json.dumps(v, sort_keys=True) if v else ""  # noqa: E731
    return {"macro_f1": "" if f1 is None else float(f1), "kind_accuracy": dump(scores.get("kind_accuracy")),
            "shapley": dump(scores.get("shapley"))}
