"""``mmbalance diagnose RUN_DIR``: which modality a trained model relies on.

On the run's test split, per modality:

- permutation importance: the JSD between the fused predictions with and without that
  modality's latent permuted across samples, and the accuracy drop;
- the zero-masking Shapley value of the accuracy (latents of absent modalities zeroed);
- the unimodal head's accuracy, and a linear probe's (fitted on the frozen train features);
- unused information: the share of test samples that only modality m's probe gets right
  while the fused model gets them wrong.

Regression runs get the mean squared change of the prediction instead of the JSD and
minus the MSE instead of the accuracy. A plain verdict, ``diagnosis.md``, ``diagnosis.json``
and ``diagnosis.png`` close it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch

from .contributions import permutation_importance, run_predictions, shapley_values, zero_mask_values
from .runs import load_run


@dataclass
class ModalityReport:
    """The numbers of one modality (scores: accuracy, or -MSE for regression)."""

    modality: str
    used: bool
    permutation_divergence: float
    permutation_drop: float
    shapley: float
    head_score: Optional[float]
    probe_score: float
    unused_share: Optional[float]


@dataclass
class Diagnosis:
    """A run's diagnosis."""

    run: str
    method: str
    task: str
    samples: int
    full_score: float
    empty_score: float
    chance: Optional[float]
    modalities: List[ModalityReport] = field(default_factory=list)
    any_probe_right_fused_wrong: Optional[float] = None
    #: modality -> loss term -> share of the gradient norm reaching that encoder, averaged
    #: over the logged training epochs (runs with ``trainer.log_term_grad_norms=true``)
    gradient_shares: Dict[str, Dict[str, float]] = field(default_factory=dict)
    verdict: str = ""


def diagnose(run_dir: str | Path, permutations: int = 5, seed: int = 0,
             probe_samples: int = 20000) -> Diagnosis:
    """Computes the diagnosis of one finished run (see the module docstring)."""
    from ..training.probe import encode_split, fit_linear_probe
    run = load_run(run_dir)
    method, model, data = run.method, run.model, run.data
    regression = model.num_classes == 1
    bs = run.cfg.data.batch_size
    base = run_predictions(method, data.test, bs)
    label, fused = base["label"], base["fused"]
    used = [m for m in model.modalities if f"features/{m}" in base]
    features = {m: base[f"features/{m}"] for m in used}
    perm = permutation_importance(method, data.test, bs, features, fused, label, permutations, seed, regression)
    values = zero_mask_values(method, data.test, bs, used, label, regression)
    phi = shapley_values(used, values)
    train_x, train_y = encode_split(model, data.train, max_samples=probe_samples)
    test_x, test_y = encode_split(model, data.test)
    probes = {m: fit_linear_probe(train_x[m], train_y, model.num_classes)(test_x[m]) for m in model.modalities}
    fused_ok = None if regression else (fused.argmax(-1) == label)
    probe_ok = {} if regression else {m: p.argmax(-1) == test_y for m, p in probes.items()}
    reports = []
    for m in model.modalities:
        head = base.get(f"head/{m}")
        reports.append(ModalityReport(
            m, m in used, perm.get(m, (0.0, 0.0))[0], perm.get(m, (0.0, 0.0))[1], phi.get(m, 0.0),
            None if head is None else _score(head, label, regression), _score(probes[m], test_y, regression),
            None if regression else _only_share(m, probe_ok, fused_ok)))
    chance = None if regression else float(np.bincount(label.numpy()).max() / len(label))
    diag = Diagnosis(str(run_dir), run.cfg.method, model.task, len(label), values[frozenset(used)],
                     values[frozenset()], chance, reports)
    if not regression:
        any_right = torch.stack(list(probe_ok.values())).any(0)
        diag.any_probe_right_fused_wrong = float((any_right & ~fused_ok).float().mean())
    diag.gradient_shares = gradient_shares(run_dir)
    diag.verdict = verdict(diag)
    return diag


def gradient_shares(run_dir: str | Path) -> Dict[str, Dict[str, float]]:
    """Modality -> loss term -> share of the push on that encoder: each term's gradient norm
    (``train/grad/<term>/<m>`` in the run's CSV logs, the epoch means) averaged over the
    logged epochs, over the sum of all terms' averages. Empty when the run did not log them."""
    import csv
    sums: Dict[str, Dict[str, List[float]]] = {}
    for path in sorted(Path(run_dir).glob("logs/*/metrics.csv")):
        with open(path, newline="") as handle:
            for row in csv.DictReader(handle):
                for key, value in row.items():
                    if key.startswith("train/grad/") and value not in ("", None):
                        term, _, m = key[len("train/grad/"):].rpartition("/")
                        sums.setdefault(m, {}).setdefault(term, []).append(float(value))
    shares = {}
    for m, terms in sums.items():
        means = {t: sum(v) / len(v) for t, v in terms.items()}
        total = sum(means.values())
        shares[m] = {t: v / total for t, v in sorted(means.items(), key=lambda kv: -kv[1])} if total > 0 else {}
    return shares


def _score(pred, label, regression: bool) -> float:
    from .contributions import score
    return score(pred, label, regression)


def _only_share(m: str, probe_ok: Dict[str, torch.Tensor], fused_ok: torch.Tensor) -> float:
    only = probe_ok[m].clone()
    for other, ok in probe_ok.items():
        if other != m:
            only &= ~ok
    return float((only & ~fused_ok).float().mean())


def _units(d: Diagnosis):
    """(scale, unit) of the scores as the table prints them: accuracy in % / points, or −MSE."""
    return (1.0, "−MSE") if d.task == "regression" else (100.0, "accuracy")


def verdict(d: Diagnosis) -> str:
    """One paragraph in plain words: balanced, or which modality dominates and by how much.
    Its numbers are in the table's units: accuracy in % (points for Shapley values), or −MSE."""
    regression = d.task == "regression"
    pct, unit = _units(d)
    points = "" if regression else " points"
    score = (lambda v: f"{v:.3f}") if regression else (lambda v: f"{100 * v:.2f}%")  # noqa: E731
    gain = d.full_score - d.empty_score
    reports = sorted(d.modalities, key=lambda r: r.shapley, reverse=True)
    if gain <= (1e-6 if regression else 0.01):
        return (f"No verdict: with every modality masked the model scores as well as with all of them "
                f"({unit} {score(d.empty_score)} vs {score(d.full_score)}); it has learned nothing to attribute.")
    positive = {r.modality: max(r.shapley, 0.0) for r in reports}
    total = sum(positive.values()) or 1.0
    top, low = reports[0], reports[-1]
    ratio = top.shapley / low.shapley if low.shapley > 1e-9 else float("inf")
    shares = ", ".join(f"{r.modality} {100 * positive[r.modality] / total:.0f}%" for r in reports)
    if ratio < 2.0:
        text = (f"Balanced: the modalities contribute comparably (Shapley shares of the {unit} gain: {shares}; "
                f"largest/smallest {ratio:.1f}x).")
    else:
        times = "all" if ratio == float("inf") else f"{ratio:.1f}x"
        text = (f"{top.modality} dominates: it holds {100 * positive[top.modality] / total:.0f}% of the zero-masking "
                f"Shapley value ({pct * top.shapley:.2f} vs {round(pct * low.shapley, 2) + 0.0:.2f}{points} "
                f"for {low.modality}, {times}); permuting its "
                f"latent moves the fused prediction by {top.permutation_divergence:.4f} "
                f"({'squared change' if regression else 'JSD'}) against {low.permutation_divergence:.4f}.")
    for r in reports[1:]:
        if not r.used:
            text += f" The method does not encode {r.modality} at all."
        elif d.chance is not None and r.probe_score > d.chance + 0.05 and positive[r.modality] / total < 0.25:
            text += (f" {r.modality}'s own features reach {100 * r.probe_score:.2f}% with a linear probe "
                     f"(chance {100 * d.chance:.1f}%), yet the fusion barely uses them: {100 * (r.unused_share or 0):.1f}% "
                     f"of test samples are right for the {r.modality} probe alone but wrong for the fused model.")
    return text


def write_diagnosis(d: Diagnosis, out: str | Path) -> List[Path]:
    """``diagnosis.md``, ``diagnosis.json`` and ``diagnosis.png`` in ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    reg = d.task == "regression"
    unit, pct = ("−MSE", 1.0) if reg else ("accuracy (%)", 100.0)
    lines = [f"# Modality contributions: {d.method} ({d.run})", "", f"**Verdict.** {d.verdict}", "",
             f"Test split, {d.samples} samples. Fused {unit}: {pct * d.full_score:.2f}; with every latent zeroed: "
             f"{pct * d.empty_score:.2f}" + ("" if d.chance is None else f"; chance (majority class): {100 * d.chance:.1f}%")
             + ".", "",
             f"| modality | permutation {'Δ² ' if reg else 'JSD'} | permutation drop | Shapley (zero-masking) | "
             f"unimodal head | linear probe | only this probe right, fused wrong |", "|---|---|---|---|---|---|---|"]
    for r in d.modalities:
        head = "—" if r.head_score is None else f"{pct * r.head_score:.2f}"
        unused = "—" if r.unused_share is None else f"{100 * r.unused_share:.1f}%"
        lines.append(f"| {r.modality}{'' if r.used else ' (not encoded)'} | {r.permutation_divergence:.4f} | "
                     f"{pct * r.permutation_drop:.2f} | {pct * r.shapley:.2f} | {head} | {pct * r.probe_score:.2f} | "
                     f"{unused} |")
    if d.any_probe_right_fused_wrong is not None:
        lines += ["", f"Some probe right but the fused model wrong: {100 * d.any_probe_right_fused_wrong:.1f}% of "
                      "test samples (unimodal information the fusion leaves unused)."]
    if d.gradient_shares:
        terms = sorted({t for shares in d.gradient_shares.values() for t in shares})
        lines += ["", "Share of each loss term in the gradient norm reaching each encoder (training epochs' "
                      "mean; `trainer.log_term_grad_norms`):", "",
                  "| encoder | " + " | ".join(terms) + " |", "|---|" + "---|" * len(terms)]
        for m, shares in d.gradient_shares.items():
            lines.append(f"| {m} | " + " | ".join(f"{shares.get(t, 0.0):.3f}" for t in terms) + " |")
    lines += ["", "Scores are " + unit + "; the Shapley values sum to the fused score minus the all-zeroed score. "
              "Unimodal heads only mean something for methods that train them (not `joint`); the probes are "
              "fitted here on the frozen training features."]
    (out / "diagnosis.md").write_text("\n".join(lines) + "\n")
    (out / "diagnosis.json").write_text(json.dumps(asdict(d), indent=2))
    _plot(d, out / "diagnosis.png")
    return [out / "diagnosis.md", out / "diagnosis.json", out / "diagnosis.png"]


def headline(d: Diagnosis) -> str:
    """The verdict's first words ("x1 dominates", "Balanced", "No verdict")."""
    return d.verdict.split(":", 1)[0] if d.verdict else ""


def figure(d: Diagnosis):
    """The diagnosis plot: four panels of bars; the title (method and :func:`headline`) and
    the legend sit outside the axes, clear of every bar. Returns the matplotlib Figure."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    reg = d.task == "regression"
    pct = 1.0 if reg else 100.0
    names = [r.modality for r in d.modalities]
    unit = "" if reg else " (accuracy points)"
    panels = [("Shapley (zero-masking)" + unit, [pct * r.shapley for r in d.modalities]),
              ("permutation " + ("Δ²" if reg else "JSD"), [r.permutation_divergence for r in d.modalities]),
              ("permutation drop" + unit, [pct * r.permutation_drop for r in d.modalities])]
    fig, axes = plt.subplots(1, 4, figsize=(14, 3.6))
    for ax, (title, vals) in zip(axes, panels):
        ax.bar(names, vals, color="#4c72b0")
        ax.set_title(title, fontsize=9)
        ax.axhline(0, color="black", lw=0.8)
    x = np.arange(len(names))
    heads = [pct * r.head_score if r.head_score is not None else float("nan") for r in d.modalities]
    pair = any(r.head_score is not None for r in d.modalities)  # joint has no heads: the probes alone
    if pair:
        axes[3].bar(x - 0.2, heads, 0.4, label="unimodal head")
    axes[3].bar(x + 0.2 if pair else x, [pct * r.probe_score for r in d.modalities], 0.4 if pair else 0.6,
                label="linear probe", color="#dd8452")
    axes[3].set_xticks(x, names)
    axes[3].set_title("unimodal " + ("−MSE" if reg else "accuracy (%)"), fontsize=9)
    if d.chance is not None:
        axes[3].axhline(100 * d.chance, color="red", ls="--", lw=1, label="chance (majority class)")
    axes[3].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.03, 1.0), borderaxespad=0.0)
    fig.suptitle(f"{d.method}: {headline(d)} (verdict and table: diagnosis.md)", fontsize=10)
    fig.tight_layout()
    return fig


def _plot(d: Diagnosis, path: Path) -> None:
    fig = figure(d)
    import matplotlib.pyplot as plt
    fig.savefig(path, dpi=120)
    plt.close(fig)
