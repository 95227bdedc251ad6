"""Tables and plots of a synthetic sweep, computed from ``results.csv`` alone.

``summary.md``: test accuracy mean +- std per method and U1/S ratio (best per column in
bold), each method's paired difference to the Ensemble (same seed, same data), and each
method's rank per ratio. ``accuracy_vs_ratio.png`` is paper Figure 1 (right);
``delta_vs_ensemble.png`` is Figure 4's view of the same numbers.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

ENSEMBLE = "ensemble"
Cell = Tuple[float, float]  # (shared, unique1)


@dataclass
class SweepTable:
    """Test accuracies of finished runs: method -> cell -> seed -> accuracy."""

    values: Dict[str, Dict[Cell, Dict[int, float]]]
    methods: List[str]
    cells: List[Cell]

    @staticmethod
    def from_rows(rows: Sequence[Mapping[str, str]], methods: Optional[Sequence[str]] = None) -> "SweepTable":
        values: Dict[str, Dict[Cell, Dict[int, float]]] = defaultdict(lambda: defaultdict(dict))
        for r in rows:
            cell = (float(r["shared"]), float(r["unique1"]))
            values[r["method"]][cell][int(r["seed"])] = float(r["test_accuracy"])
        order = [m for m in (methods or []) if m in values] + sorted(m for m in values if m not in (methods or []))
        cells = sorted({c for per in values.values() for c in per}, key=lambda c: _ratio(c))
        return SweepTable({m: dict(v) for m, v in values.items()}, order, cells)

    def stats(self, method: str, cell: Cell) -> Optional[Tuple[float, float, int]]:
        """(mean, std, seeds) of one method at one cell, None when it has no run."""
        seeds = self.values.get(method, {}).get(cell)
        if not seeds:
            return None
        vals = list(seeds.values())
        return statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0, len(vals)

    def delta(self, method: str, cell: Cell, reference: str = ENSEMBLE) -> Optional[Tuple[float, float, int]]:
        """Paired (same seed) difference to ``reference``: (mean, std, pairs)."""
        mine = self.values.get(method, {}).get(cell, {})
        ref = self.values.get(reference, {}).get(cell, {})
        diffs = [mine[s] - ref[s] for s in sorted(set(mine) & set(ref))]
        if not diffs:
            return None
        return statistics.fmean(diffs), statistics.stdev(diffs) if len(diffs) > 1 else 0.0, len(diffs)

    def ranks(self, cell: Cell) -> Dict[str, int]:
        """Method -> rank by mean test accuracy at ``cell`` (1 = best; ties share a rank)."""
        means = {m: s[0] for m in self.methods if (s := self.stats(m, cell)) is not None}
        ordered = sorted(means.values(), reverse=True)
        return {m: 1 + sum(1 for v in ordered if v > mean + 1e-12) for m, mean in means.items()}


def _ratio(cell: Cell) -> float:
    shared, unique1 = cell
    return unique1 / shared if shared > 0 else float("inf")


def cell_header(cell: Cell) -> str:
    return f"U1/S={_ratio(cell):.3g} (S={cell[0]:g}, U1={cell[1]:g})"


def format_summary(table: SweepTable, preamble: str = "") -> str:
    """The markdown of ``summary.md``."""
    lines = ["# Synthetic competition sweep (paper Figure 1)", ""]
    if preamble:
        lines += [preamble, ""]
    heads = [cell_header(c) for c in table.cells]
    lines += ["## Test accuracy (%), mean ± std over seeds (best per column in bold)", "",
              "| method | " + " | ".join(heads) + " |", "|---|" + "---|" * len(heads)]
    best = {c: max((s[0] for m in table.methods if (s := table.stats(m, c))), default=None) for c in table.cells}
    for m in table.methods:
        cells = []
        for c in table.cells:
            s = table.stats(m, c)
            text = "—" if s is None else f"{100 * s[0]:.2f} ± {100 * s[1]:.2f}"
            cells.append(f"**{text}**" if s is not None and abs(s[0] - best[c]) < 1e-12 else text)
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    lines += [""]
    if ENSEMBLE in table.values:
        lines += ["## Difference to the Ensemble (percentage points), paired by seed", "",
                  "| method | " + " | ".join(heads) + " |", "|---|" + "---|" * len(heads)]
        for m in table.methods:
            if m == ENSEMBLE:
                continue
            cells = []
            for c in table.cells:
                d = table.delta(m, c)
                cells.append("—" if d is None else f"{100 * d[0]:+.2f} ± {100 * d[1]:.2f}")
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
        lines += [""]
    else:
        lines += ["The `ensemble` method has no runs in this sweep, so there is no difference to the "
                  "Ensemble table and no `delta_vs_ensemble.png`.", ""]
    lines += ["## Rank per ratio (1 = best mean test accuracy)", "",
              "| method | " + " | ".join(heads) + " |", "|---|" + "---|" * len(heads)]
    ranks = {c: table.ranks(c) for c in table.cells}
    for m in table.methods:
        lines.append(f"| {m} | " + " | ".join(str(ranks[c].get(m, "—")) for c in table.cells) + " |")
    return "\n".join(lines) + "\n"


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _colors(methods: Sequence[str]) -> Dict[str, object]:
    plt = _pyplot()
    cmap = plt.get_cmap("tab20")
    return {m: cmap(i % 20) for i, m in enumerate(methods)}


def plot_accuracy_vs_ratio(table: SweepTable, path: Path) -> None:
    """Mean test accuracy (std as error bars) against U1/S on a log axis, one line per method."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    colors = _colors(table.methods)
    for m in table.methods:
        pts = [(_ratio(c), s) for c in table.cells if (s := table.stats(m, c)) is not None]
        if not pts:
            continue
        bold = m in ("mcr", ENSEMBLE)
        ax.errorbar([p[0] for p in pts], [100 * p[1][0] for p in pts], yerr=[100 * p[1][1] for p in pts],
                    label=m, color="black" if m == "mcr" else colors[m], marker="o", ms=4, capsize=3,
                    lw=2.4 if bold else 1.2, ls="--" if m == ENSEMBLE else "-")
    ax.set_xscale("log")
    ax.minorticks_off()
    ticks = [_ratio(c) for c in table.cells]
    ax.set_xticks(ticks, [f"{t:.3g}" for t in ticks])
    ax.set_xlabel("U1 / S (unique information of x1 over shared information; U2 = 0.1)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Synthetic competition: accuracy against U1/S")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_delta_vs_ensemble(table: SweepTable, path: Path) -> bool:
    """Grouped bars of each method's paired difference to the Ensemble, one bar per ratio
    (paper Figure 4). Returns False (and writes nothing) without Ensemble runs."""
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
            d = table.delta(m, c)
            ys.append(100 * d[0] if d else float("nan"))
            es.append(100 * d[1] if d else 0.0)
        xs = [i + (j - (len(table.cells) - 1) / 2) * width for i in range(len(methods))]
        ax.bar(xs, ys, width, yerr=es, capsize=2, color=cmap(j / max(1, len(table.cells) - 1)),
               label=f"U1/S={_ratio(c):.3g}")
    ax.axhline(0.0, color="black", lw=1)
    ax.set_xticks(range(len(methods)), methods, rotation=40, ha="right")
    ax.set_ylabel("accuracy − Ensemble (pp)")
    ax.set_title("Difference to the Ensemble (positive: better than the unimodal ensemble)")
    ax.legend(fontsize=7)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def write_report(rows: Sequence[Mapping[str, str]], out: Path, methods: Optional[Sequence[str]] = None,
                 preamble: str = "") -> List[Path]:
    """Writes ``summary.md`` and the plots into ``out``; returns the paths written."""
    table = SweepTable.from_rows(rows, methods)
    written = [out / "summary.md", out / "accuracy_vs_ratio.png"]
    written[0].write_text(format_summary(table, preamble))
    plot_accuracy_vs_ratio(table, written[1])
    delta = out / "delta_vs_ensemble.png"
    if plot_delta_vs_ensemble(table, delta):
        written.append(delta)
    return written
