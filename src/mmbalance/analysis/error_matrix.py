"""``mmbalance analyze errors``: multimodal accuracy per unimodal-error category (Figure 5).

Each test sample falls in a category by which unimodal models got it right: with two
modalities "both wrong", "only <a> right", "only <b> right", "both right"; with M > 2
modalities by how many are right ("0 of 3 right" ... "3 of 3 right"). The unimodal
models are ``unimodal`` runs given (one per modality), else the unimodal models of an
``ensemble`` run. Every other run's fused accuracy is reported inside each category.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from ..errors import DataError
from .predictions import Predictions, load_predictions
from .runs import read_metrics


@dataclass(eq=False)
class ErrorRun:
    """A run's test predictions with its identity."""

    label: str
    method: str
    seed: int
    path: Path
    predictions: Predictions


@dataclass
class ErrorMatrix:
    """Fused accuracy of each run inside each category.

    Attributes:
        categories: K category names.
        counts: (K,) samples per category.
        runs: R row labels.
        correct: (R, K) correctly predicted samples.
    """

    categories: List[str]
    counts: np.ndarray
    runs: List[str]
    correct: np.ndarray

    @property
    def accuracy(self) -> np.ndarray:
        """(R, K) accuracy in [0, 1]; NaN for an empty category."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.counts > 0, self.correct / np.maximum(self.counts, 1), np.nan)


def category_names(modalities: Sequence[str]) -> List[str]:
    """The categories for these modalities (see the module docstring)."""
    m = len(modalities)
    if m < 2:
        raise DataError(f"the error analysis needs unimodal models of at least 2 modalities, got {list(modalities)}")
    if m == 2:
        a, b = modalities
        return ["both wrong", f"only {a} right", f"only {b} right", "both right"]
    return [f"{k} of {m} right" for k in range(m + 1)]


def categorize(correct: Mapping[str, np.ndarray]) -> np.ndarray:
    """(N,) category index of each sample, indexing :func:`category_names` of the keys."""
    names = list(correct)
    stacked = np.stack([np.asarray(correct[m], bool) for m in names])
    if len(names) == 2:
        return stacked[0].astype(int) + 2 * stacked[1].astype(int)  # 0 none, 1 only a, 2 only b, 3 both
    return stacked.sum(0)


def error_matrix(reference: Mapping[str, np.ndarray], runs: Mapping[str, np.ndarray]) -> ErrorMatrix:
    """Builds the matrix from per-sample correctness.

    Args:
        reference: modality -> (N,) bool, the unimodal models' correctness.
        runs: row label -> (N,) bool, each run's fused correctness.
    """
    names = category_names(list(reference))
    cat = categorize(reference)
    counts = np.bincount(cat, minlength=len(names))
    correct = np.array([np.bincount(cat, weights=np.asarray(ok, float), minlength=len(names))
                        for ok in runs.values()]).reshape(len(runs), len(names))
    return ErrorMatrix(names, counts, list(runs), correct.astype(int))


def load_error_runs(run_dirs: Sequence[str | Path]) -> List[ErrorRun]:
    """Reads each run's method, seed and ``predictions.npz``; checks they share one test split."""
    runs = []
    for d in run_dirs:
        metrics = read_metrics(d)
        preds = load_predictions(d)
        if preds.task != "classification":
            raise DataError(f"{d} is a regression run; the error analysis needs classification runs")
        runs.append(ErrorRun(str(metrics.get("method")), str(metrics.get("method")), int(metrics.get("seed", 0)),
                             Path(d), preds))
    first = runs[0]
    for r in runs[1:]:
        if r.predictions.label.shape != first.predictions.label.shape or \
                not np.array_equal(r.predictions.label, first.predictions.label):
            raise DataError(f"{r.path} and {first.path} were not evaluated on the same test split "
                            "(labels differ); compare runs of the same data")
    _label_rows(runs)
    return runs


def _label_rows(runs: List[ErrorRun]) -> None:
    for r in runs:
        if sum(o.method == r.method for o in runs) > 1:
            r.label = f"{r.method} (seed {r.seed})"
    for r in runs:
        if sum(o.label == r.label for o in runs) > 1:
            r.label = f"{r.method} ({r.path.name})"


def split_reference(runs: List[ErrorRun], reference: Optional[Sequence[str | Path]] = None
                    ) -> Tuple[Dict[str, np.ndarray], List[ErrorRun], str]:
    """The unimodal correctness and the runs to report.

    Returns:
        (modality -> (N,) bool, rows, a sentence saying where the categories come from)
    """
    chosen = ([r for r in runs if r.path.resolve() in {Path(p).resolve() for p in reference}] if reference
              else [r for r in runs if r.method == "unimodal"])
    if len(chosen) == 1 and len(chosen[0].predictions.unimodal) >= 2:  # one run's unimodal heads
        r = chosen[0]
        ref = {m: r.predictions.unimodal_correct(m) for m in r.predictions.unimodal}
        return ref, runs, f"unimodal heads of {r.label} ({r.path})"
    if len(chosen) >= 2:
        ref: Dict[str, np.ndarray] = {}
        for r in chosen:
            m = _modality(r)
            if m in ref:
                raise DataError(f"two unimodal runs for modality {m!r}; give one per modality")
            ref[m] = r.predictions.correct()
        where = ", ".join(f"{m}: {r.path}" for m, r in zip(ref, chosen))
        return ref, [r for r in runs if all(r is not c for c in chosen)], f"unimodal runs ({where})"
    ensembles = [r for r in runs if r.method == "ensemble"]
    if not reference and len(ensembles) == 1:
        r = ensembles[0]
        ref = {m: r.predictions.unimodal_correct(m) for m in r.predictions.unimodal}
        return ref, runs, f"the unimodal models of the ensemble ({r.path})"
    raise DataError("no unimodal reference: give one `unimodal` run per modality, one `ensemble` run, "
                    "or --reference RUN_DIR...")


def _modality(run: ErrorRun) -> str:
    names = list(run.predictions.unimodal)
    if len(names) != 1:
        raise DataError(f"{run.path} predicts with {len(names)} modalities; a unimodal reference run has one")
    return names[0]


def write_error_report(matrix: ErrorMatrix, out: Path, source: str, runs: Sequence[ErrorRun]) -> List[Path]:
    """``errors.csv`` (one row per run and category), ``errors.md`` and ``errors.png``."""
    out.mkdir(parents=True, exist_ok=True)
    acc = matrix.accuracy
    by_label = {r.label: r for r in runs}
    with open(out / "errors.csv", "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["run", "method", "seed", "category", "samples", "correct", "accuracy"])
        for i, label in enumerate(matrix.runs):
            r = by_label[label]
            for k, cat in enumerate(matrix.categories):
                w.writerow([label, r.method, r.seed, cat, int(matrix.counts[k]), int(matrix.correct[i, k]),
                            "" if np.isnan(acc[i, k]) else f"{acc[i, k]:.6f}"])
    total = int(matrix.counts.sum())
    heads = [f"{c} (n={n}, {100 * n / max(total, 1):.1f}%)" for c, n in zip(matrix.categories, matrix.counts)]
    lines = ["# Multimodal accuracy per unimodal-error category (paper Figure 5)", "",
             f"Categories from {source}; {total} test samples.", "",
             "| run | " + " | ".join(heads) + " | overall |", "|---|" + "---|" * (len(heads) + 1)]
    for i, label in enumerate(matrix.runs):
        cells = ["—" if np.isnan(v) else f"{100 * v:.1f}" for v in acc[i]]
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {100 * matrix.correct[i].sum() / max(total, 1):.1f} |")
    (out / "errors.md").write_text("\n".join(lines) + "\n")
    plot_error_matrix(matrix, out / "errors.png")
    return [out / "errors.csv", out / "errors.md", out / "errors.png"]


def plot_error_matrix(matrix: ErrorMatrix, path: Path) -> None:
    """Heat map: rows runs, columns categories, cells accuracy (%)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    acc = 100 * matrix.accuracy
    fig, ax = plt.subplots(figsize=(1.6 * len(matrix.categories) + 2.5, 0.45 * len(matrix.runs) + 1.8))
    im = ax.imshow(np.nan_to_num(acc, nan=0.0), cmap="viridis", vmin=0, vmax=100, aspect="auto")
    for i in range(acc.shape[0]):
        for k in range(acc.shape[1]):
            text = "—" if np.isnan(acc[i, k]) else f"{acc[i, k]:.1f}"
            ax.text(k, i, text, ha="center", va="center", color="white" if acc[i, k] < 60 else "black", fontsize=8)
    ax.set_xticks(range(len(matrix.categories)),
                  [f"{c}\n(n={n})" for c, n in zip(matrix.categories, matrix.counts)], fontsize=8)
    ax.set_yticks(range(len(matrix.runs)), matrix.runs, fontsize=8)
    ax.set_title("fused accuracy (%) per unimodal-error category", fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.04)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def analyze_errors(run_dirs: Sequence[str | Path], out: str | Path,
                   reference: Optional[Sequence[str | Path]] = None) -> Tuple[ErrorMatrix, List[Path]]:
    """The whole command: load runs, pick the reference, build and write the matrix."""
    runs = load_error_runs(list(run_dirs) + [p for p in (reference or []) if p not in run_dirs])
    ref, rows, source = split_reference(runs, reference)
    if not rows:
        raise DataError("no run to report besides the unimodal reference runs")
    matrix = error_matrix(ref, {r.label: r.predictions.correct() for r in rows})
    return matrix, write_error_report(matrix, Path(out), source, rows)
