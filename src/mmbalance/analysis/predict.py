"""Predictions of a trained run on new data (``mmbalance predict``, ``TrainedRun.predict``).

The output ``.npz`` of ``mmbalance predict`` holds, for N rows and C outputs:

- ``logits`` (N, C): the method's fused prediction (what evaluation scores);
- ``probabilities`` (N, C): their softmax, and ``prediction`` (N,): the argmax
  (classification); for regression ``prediction`` is ``logits[:, 0]``;
- ``unimodal_logits/<m>`` (N, C): modality m's own head, for each modality the method
  encodes (``modalities`` lists them);
- ``fusion_logits/<m>`` (N, C): a decomposable fusion's per-modality part
  ``z_m W_m^T + b/M``, which sums to ``logits`` over the modalities (``fusion_modalities``);
  absent where the fused prediction is not that sum;
- ``label`` (N,) and ``accuracy`` (classification) or ``mae`` and ``mse`` (regression),
  when the data has a ``label`` array; ``task``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple

import numpy as np
import torch

from ..data.arrays import read_array_file
from ..engine import atomic_write_bytes
from ..errors import DataError, did_you_mean


@dataclass
class Prediction:
    """A trained run's outputs on N rows.

    Attributes:
        logits: (N, C) the fused prediction (``Method.predict``).
        unimodal: modality -> (N, C) that modality's head, for the modalities the method encodes.
        fusion: modality -> (N, C) the fusion's per-modality part (sums to ``logits``); empty
            when the fusion is not decomposable or the method's prediction is not its sum.
        task: ``classification`` or ``regression``.
    """

    logits: np.ndarray
    unimodal: Dict[str, np.ndarray] = field(default_factory=dict)
    fusion: Dict[str, np.ndarray] = field(default_factory=dict)
    task: str = "classification"

    @property
    def probabilities(self) -> np.ndarray:
        """(N, C) softmax of the logits (classification)."""
        z = self.logits - self.logits.max(-1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(-1, keepdims=True)

    @property
    def prediction(self) -> np.ndarray:
        """(N,) the predicted class, or the predicted value (regression)."""
        return self.logits.argmax(-1) if self.task == "classification" else self.logits[:, 0]

    def scores(self, label: np.ndarray) -> Dict[str, float]:
        """``accuracy`` (classification) or ``mae`` and ``mse`` (regression) against ``label``."""
        if self.task == "classification":
            return {"accuracy": float((self.prediction == label).mean())}
        err = self.prediction.astype(np.float64) - label
        return {"mae": float(np.abs(err).mean()), "mse": float((err ** 2).mean())}


def check_arrays(spec, arrays: Mapping[str, Any], needed, source: str) -> int:
    """The row count N of ``arrays`` after checking that every modality in ``needed`` is
    there with the per-sample shape the model was trained on; DataError otherwise."""
    found = sorted(arrays)
    rows = set()
    for m in needed:
        if m not in arrays:
            hint = did_you_mean(m, [k for k in found if k not in needed])
            raise DataError(f"{source} has no array {m!r}; {hint}the run was trained on modalities "
                            f"{', '.join(spec.modalities)} (found: {', '.join(found) or 'nothing'})")
        shape = tuple(np.shape(arrays[m])[1:])
        if len(np.shape(arrays[m])) == 0 or shape != tuple(spec.shapes[m]):
            raise DataError(f"{source}: modality {m!r} has samples of shape {shape}, "
                            f"the run was trained on {tuple(spec.shapes[m])}")
        rows.add(len(arrays[m]))
    if len(rows) > 1:
        raise DataError(f"{source}: the modalities have different numbers of rows: "
                        + ", ".join(f"{m} {len(arrays[m])}" for m in needed))
    return rows.pop() if rows else 0


@torch.no_grad()
def predict_arrays(method: torch.nn.Module, spec, arrays: Mapping[str, Any], batch_size: int,
                   source: str = "inputs") -> Prediction:
    """Runs the trained ``method`` (eval mode) on raw arrays, ``batch_size`` rows at a time,
    standardizing each modality with the run's train statistics (``spec``)."""
    needed = [method.modality] if hasattr(method, "modality") else list(spec.modalities)  # unimodal: one
    n = check_arrays(spec, arrays, needed, source)
    device = next(method.parameters()).device
    method.eval()
    fused, uni, fus = [], {}, {}
    for start in range(0, n, batch_size):
        batch = {m: torch.from_numpy(_rows(spec, arrays, m, start, batch_size, source)).to(device) for m in needed}
        out = method(batch)
        fused.append(method.predict(out).float().cpu())
        for m, z in out.unimodal_logits.items():
            uni.setdefault(m, []).append(z.float().cpu())
        for m, z in _fusion_parts(method.model, out.features).items():
            fus.setdefault(m, []).append(z.float().cpu())
    cat = lambda parts: torch.cat(parts).numpy() if parts else np.zeros((0, spec.num_classes), np.float32)  # noqa: E731
    logits = cat(fused)
    fusion = {m: cat(v) for m, v in fus.items()}
    if fusion and not np.allclose(sum(fusion.values()), logits, rtol=1e-4, atol=1e-4):
        fusion = {}  # the method's prediction is not the fusion's sum (e.g. MMCosine): no split to report
    return Prediction(logits, {m: cat(v) for m, v in uni.items()}, fusion, spec.task)


def _rows(spec, arrays: Mapping[str, Any], m: str, start: int, size: int, source: str) -> np.ndarray:
    """Rows ``start:start + size`` of modality ``m``, standardized; DataError on NaN/Inf."""
    x = np.ascontiguousarray(spec.standardize(m, arrays[m][start:start + size]))
    finite = np.isfinite(x.reshape(len(x), -1)).all(1)
    if not finite.all():
        raise DataError(f"{source}: modality {m!r} has NaN or Inf at row {start + int(np.argmin(finite))}")
    return x


def _fusion_parts(model, features: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Modality -> ``z_m W_m^T + b/M`` for a decomposable fusion given every modality's
    features (``modality_logits`` plus an equal share of ``shared_logits``), else {}."""
    fusion = model.fusion
    if not (hasattr(fusion, "modality_logits") and hasattr(fusion, "shared_logits")):
        return {}
    if any(m not in features for m in model.modalities):
        return {}
    share = fusion.shared_logits() / len(model.modalities)
    return {m: z + share for m, z in fusion.modality_logits({m: features[m] for m in model.modalities}).items()}


def read_new_data(path: str | Path, spec) -> Tuple[Dict[str, Any], Optional[np.ndarray]]:
    """A ``.npz``/``.h5`` file of new rows: modality arrays, and ``label`` when present
    (checked against the run's task and classes). ``split`` is ignored."""
    path = Path(path)
    if path.suffix not in (".npz", ".h5", ".hdf5"):
        raise DataError(f"predict --data {path}: give a .npz or .h5 file of arrays named after the run's "
                        f"modalities ({', '.join(spec.modalities)})")
    arrays = read_array_file(path)
    arrays.pop("split", None)
    label = arrays.pop("label", None)
    if label is not None:
        label = np.asarray(label).reshape(len(label), -1)[:, 0] if np.ndim(label) > 1 else np.asarray(label)
        if label.dtype.kind not in "iufb" or not np.isfinite(label.astype(np.float64)).all():
            raise DataError(f"{path}: 'label' must be finite numbers")
        if spec.task == "classification":
            bad = (label != np.round(label)) | (label < 0) | (label >= spec.num_classes)
            if bad.any():
                i = int(np.argmax(bad))
                raise DataError(f"{path}: 'label'[{i}] = {label[i]} is not a class of the run (0 to "
                                f"{spec.num_classes - 1})")
            label = label.astype(np.int64)
        else:
            label = label.astype(np.float32)
    return arrays, label


def write_predictions(path: str | Path, pred: Prediction, label: Optional[np.ndarray] = None) -> Dict[str, float]:
    """Writes ``pred`` (and ``label`` with its scores) as the ``.npz`` described in the module
    docstring, atomically; returns the scores (empty without labels)."""
    import io
    path = Path(path)
    if path.suffix != ".npz":
        raise DataError(f"predict --out {path}: the output is a .npz file; name it so")
    arrays: Dict[str, Any] = {"logits": pred.logits, "prediction": pred.prediction, "task": np.array(pred.task),
                              "modalities": np.array(list(pred.unimodal), dtype=str)}
    if pred.task == "classification":
        arrays["probabilities"] = pred.probabilities
    arrays.update({f"unimodal_logits/{m}": z for m, z in pred.unimodal.items()})
    if pred.fusion:
        arrays["fusion_modalities"] = np.array(list(pred.fusion), dtype=str)
        arrays.update({f"fusion_logits/{m}": z for m, z in pred.fusion.items()})
    scores: Dict[str, float] = {}
    if label is not None:
        scores = pred.scores(label)
        arrays["label"] = label
        arrays.update({k: np.array(v) for k, v in scores.items()})
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buffer.getvalue())
    return scores
