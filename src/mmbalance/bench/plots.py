"""The plots of a benchmark report (:mod:`mmbalance.bench.report`); each shows the Bayes
ceiling where the data has one."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Dict, Optional, Sequence

from .stats import Interval

ENSEMBLE = "ensemble"
Cell = tuple  # (shared, unique1) on the synthetic grid, (data_spec,) otherwise
SweepTable = "SweepTable"  # mmbalance.bench.report.SweepTable (not imported: report imports this module)


def _ratio(cell: Cell) -> float:
    shared, unique1 = cell
    return unique1 / shared if shared > 0 else float("inf")


def cell_header(cell: Cell) -> str:
    if len(cell) != 2:
        return str(cell[0])
    return f"U1/S={_ratio(cell):.3g} (S={cell[0]:g}, U1={cell[1]:g})"


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _colors(methods: Sequence[str]) -> Dict[str, object]:
    plt = _pyplot()
    cmap = plt.get_cmap("tab20")
    return {m: cmap(i % 20) for i, m in enumerate(methods)}


def _half(iv: Optional[Interval]) -> float:
    return 0.0 if iv is None or math.isnan(iv.half_width) else 100 * iv.half_width


def _plot_ceilings(ax, table: SweepTable, xs: Sequence[float]) -> None:
    styles = {"both": ("black", "-", "Bayes ceiling (both)"), "x1": ("gray", "--", "Bayes ceiling (x1 alone)"),
              "x2": ("gray", ":", "Bayes ceiling (x2 alone)")}
    for which, (color, ls, label) in styles.items():
        pts = [(x, iv.mean) for x, c in zip(xs, table.cells) if (iv := table.ceiling(c, which)) is not None]
        if pts:
            ax.plot([p[0] for p in pts], [100 * p[1] for p in pts], color=color, ls=ls, lw=1.6, label=label)


def plot_accuracy_vs_ratio(table: SweepTable, path: Path) -> None:
    """Mean test accuracy (95% CI as error bars) against U1/S on a log axis, one line per
    method, with the Bayes ceilings."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    colors = _colors(table.methods)
    for m in table.methods:
        pts = [(_ratio(c), iv) for c in table.cells if (iv := table.interval(m, c)) is not None]
        if not pts:
            continue
        bold = m in ("mcr", ENSEMBLE)
        ax.errorbar([p[0] for p in pts], [100 * p[1].mean for p in pts], yerr=[_half(p[1]) for p in pts],
                    label=m, color="black" if m == "mcr" else colors[m], marker="o", ms=4, capsize=3,
                    lw=2.4 if bold else 1.2, ls="--" if m == ENSEMBLE else "-")
    ticks = [_ratio(c) for c in table.cells]
    _plot_ceilings(ax, table, ticks)
    ax.set_xscale("log")
    ax.minorticks_off()
    ax.set_xticks(ticks, [f"{t:.3g}" for t in ticks])
    ax.set_xlabel("U1 / S (unique information of x1 over shared information; U2 = 0.1)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Synthetic competition: accuracy against U1/S (95% CI)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def chance_of_runs(out: Path) -> Optional[float]:
    """1 / classes of the runs under ``out/runs`` (``inputs.json``, as the benchmarks lay them
    out); None for regression or where no run has written it."""
    from ..engine.rundir import RunDir
    for run in sorted((out / "runs").glob("*/")):
        inputs = RunDir(run).read_inputs()
        if inputs and inputs.get("task") == "classification" and inputs.get("num_classes"):
            return 1.0 / int(inputs["num_classes"])
    return None


def accuracy_figure(table: SweepTable, chance: Optional[float] = None):
    """One setting: each method's mean test accuracy as a bar with its 95% CI, on an axis from 0,
    with the chance level and the Bayes ceiling as lines where known (as the demo's plot)."""
    plt = _pyplot()
    cell = table.cells[0]
    methods = [m for m in table.methods if table.interval(m, cell) is not None]
    ivs = [table.interval(m, cell) for m in methods]
    fig, ax = plt.subplots(figsize=(max(8.0, 0.6 * len(methods) + 4), 4.5))  # 2 inches for the legend
    ax.bar(range(len(methods)), [100 * iv.mean for iv in ivs], yerr=[_half(iv) for iv in ivs], capsize=3,
           color=[_colors(table.methods)[m] for m in methods])
    ceiling = table.ceiling(cell)
    if ceiling is not None:
        ax.axhline(100 * ceiling.mean, color="black", lw=1.6, label=f"Bayes ceiling (both) {100 * ceiling.mean:.1f}%")
    if chance is not None:
        ax.axhline(100 * chance, color="#b22222", lw=1.2, ls="--", label=f"chance {100 * chance:.0f}%")
    if ceiling is not None or chance is not None:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))  # beside the bars, never on one
    ax.set_ylim(0, 100)
    ax.set_xticks(range(len(methods)), methods, rotation=40, ha="right")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{cell_header(cell)}: test accuracy, mean and 95% CI over seeds"
                 + ("" if ceiling is not None else " (no Bayes ceiling known)"), fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def plot_accuracy(table: SweepTable, path: Path, chance: Optional[float] = None) -> None:
    """:func:`accuracy_figure` saved to ``path``; the chance level defaults to that of the runs
    beside it (:func:`chance_of_runs`)."""
    fig = accuracy_figure(table, chance_of_runs(path.parent) if chance is None else chance)
    fig.savefig(path, dpi=120)
    _pyplot().close(fig)


def plot_delta_vs_ensemble(table: SweepTable, path: Path) -> bool:
    """Grouped bars of each method's paired difference to the Ensemble with 95% CIs, one
    bar per setting (paper Figure 4), and the ceiling's headroom over the Ensemble as a
    marker. Returns False (and writes nothing) without Ensemble runs."""
    if ENSEMBLE not in table.values:
        return False
    plt = _pyplot()
    methods = [m for m in table.methods if m != ENSEMBLE]
    width = 0.8 / max(1, len(table.cells))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.6 * len(methods) + 2), 4.5))
    cmap = plt.get_cmap("viridis")
    for j, c in enumerate(table.cells):
        ys, es = [], []
        for m in methods:
            d = table.paired(m, c, ENSEMBLE)
            ys.append(100 * d.interval.mean if d else float("nan"))
            es.append(_half(d.interval) if d else 0.0)
        offset = (j - (len(table.cells) - 1) / 2) * width
        xs = [i + offset for i in range(len(methods))]
        ax.bar(xs, ys, width, yerr=es, capsize=2, color=cmap(j / max(1, len(table.cells) - 1)),
               label=cell_header(c))
        room = table.ceiling_minus(c, ENSEMBLE)
        if room is not None:
            ax.plot([xs[0] - width / 2, xs[-1] + width / 2], [100 * room.interval.mean] * 2, color="black",
                    ls="--", lw=1, label="Bayes ceiling − Ensemble" if j == 0 else None)
    ax.axhline(0.0, color="black", lw=1)
    ax.set_xticks(range(len(methods)), methods, rotation=40, ha="right")
    ax.set_ylabel("accuracy − Ensemble (pp)")
    ax.set_title("Difference to the Ensemble, paired by seed, 95% CI", fontsize=10)
    ax.legend(fontsize=7)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True
