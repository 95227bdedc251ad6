"""Tables and plots of a benchmark (``bench synthetic``, ``bench compare``) from ``results.csv``.

``summary.md`` (every number a mean ± 95% Student-t CI over seeds, :mod:`mmbalance.bench.stats`):

- test accuracy per method and setting, with the Bayes ceiling (both modalities, each alone)
  where the data has one (synthetic); the best mean in bold only with 2+ seeds;
- the share of the headroom closed, ``(acc - joint) / (ceiling - joint)`` per seed with that
  seed's ceiling, then mean ± CI;
- paired (same seed) differences to ``joint`` and to ``ensemble``, ``*`` where the CI excludes 0;
- ranks by mean, with :data:`~mmbalance.bench.stats.RANK_CAVEAT`;
- the competition gap on each modality m: probe_m after ``unimodal-m`` minus probe_m after the
  method (same seed), from the ``probe`` column (``trainer.final_probe``);
- the configuration each method ran with (tuned or default).

Plots: ``accuracy_vs_ratio.png`` (synthetic grid; paper Figure 1) or ``accuracy.png`` (one
setting), and ``delta_vs_ensemble.png`` (paper Figure 4); both show the ceiling when known.
With one seed nothing carries a ± (:func:`~mmbalance.bench.stats.format_ci` prints ``(n=1)``).
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from .stats import RANK_CAVEAT, Interval, PairedDifference, format_ci, headroom_closed, mean_ci, \
    paired_difference, ranks

ENSEMBLE, JOINT = "ensemble", "joint"
Cell = tuple  # (shared, unique1) on the synthetic grid, (data_spec,) otherwise
Ceilings = Mapping[Tuple[Cell, int], Mapping[str, float]]  # (cell, seed) -> {"both", "x1", "x2"}


@dataclass
class SweepTable:
    """Finished runs: method -> cell -> seed -> test accuracy (and probe scores), plus the
    Bayes ceilings of (cell, seed) where known."""

    values: Dict[str, Dict[Cell, Dict[int, float]]]
    methods: List[str]
    cells: List[Cell]
    probes: Dict[str, Dict[Cell, Dict[int, Dict[str, float]]]] = field(default_factory=dict)
    ceilings: Dict[Tuple[Cell, int], Dict[str, float]] = field(default_factory=dict)
    configs: Dict[str, Tuple[str, str]] = field(default_factory=dict)  # method -> (hyperparameters, trials)

    @staticmethod
    def from_rows(rows: Sequence[Mapping[str, str]], methods: Optional[Sequence[str]] = None,
                  ceilings: Optional[Ceilings] = None) -> "SweepTable":
        values: Dict[str, Dict[Cell, Dict[int, float]]] = defaultdict(lambda: defaultdict(dict))
        probes: Dict[str, Dict[Cell, Dict[int, Dict[str, float]]]] = defaultdict(lambda: defaultdict(dict))
        configs: Dict[str, Tuple[str, str]] = {}
        for r in rows:
            cell, seed = row_cell(r), int(r["seed"])
            values[r["method"]][cell][seed] = float(r["test_accuracy"])
            if r.get("probe"):
                probes[r["method"]][cell][seed] = {k: float(v) for k, v in json.loads(r["probe"]).items()}
            configs.setdefault(r["method"], (r.get("hyperparameters", ""), r.get("tuning_trials", "")))
        order = [m for m in (methods or []) if m in values] + sorted(m for m in values if m not in (methods or []))
        cells = sorted({c for per in values.values() for c in per}, key=_sort_key)
        return SweepTable({m: dict(v) for m, v in values.items()}, order, cells,
                          {m: dict(v) for m, v in probes.items()}, dict(ceilings or {}), configs)

    def seeds(self, method: str, cell: Cell) -> Dict[int, float]:
        return self.values.get(method, {}).get(cell, {})

    def interval(self, method: str, cell: Cell) -> Optional[Interval]:
        """Mean ± CI of one method's test accuracy at one cell; None without runs."""
        seeds = self.seeds(method, cell)
        return mean_ci([seeds[s] for s in sorted(seeds)]) if seeds else None

    def paired(self, method: str, cell: Cell, reference: str) -> Optional[PairedDifference]:
        """``method - reference`` over the seeds both have."""
        mine, ref = self.seeds(method, cell), self.seeds(reference, cell)
        common = sorted(set(mine) & set(ref))
        if not common:
            return None
        return paired_difference([mine[s] for s in common], [ref[s] for s in common])

    def ceiling(self, cell: Cell, which: str = "both") -> Optional[Interval]:
        """The Bayes ceiling over the data seeds of ``cell``'s runs (it varies with the class
        vectors each data seed draws)."""
        seeds = sorted({s for m in self.methods for s in self.seeds(m, cell)})
        vals = [self.ceilings[(cell, s)][which] for s in seeds if (cell, s) in self.ceilings]
        return mean_ci(vals) if vals else None

    def ceiling_minus(self, cell: Cell, reference: str) -> Optional[PairedDifference]:
        """Ceiling (both) minus ``reference``, paired by seed: the headroom it leaves."""
        ref = self.seeds(reference, cell)
        common = [s for s in sorted(ref) if (cell, s) in self.ceilings]
        if not common:
            return None
        return paired_difference([self.ceilings[(cell, s)]["both"] for s in common], [ref[s] for s in common])

    def headroom(self, method: str, cell: Cell) -> Optional[Interval]:
        """Share of the headroom closed, per seed with its own ceiling, then mean ± CI."""
        mine, joint = self.seeds(method, cell), self.seeds(JOINT, cell)
        shares = [headroom_closed(mine[s], joint[s], self.ceilings[(cell, s)]["both"])
                  for s in sorted(set(mine) & set(joint)) if (cell, s) in self.ceilings]
        shares = [x for x in shares if not math.isnan(x)]
        return mean_ci(shares) if shares else None

    def modalities(self) -> List[str]:
        seen: List[str] = []
        for per in self.probes.values():
            for seeds in per.values():
                for scores in seeds.values():
                    seen += [m for m in scores if m not in seen]
        return seen

    def gap(self, method: str, cell: Cell, modality: str) -> Optional[Interval]:
        """Competition gap on ``modality``: probe after ``unimodal-<modality>`` minus probe
        after ``method``, paired by seed."""
        uni = self.probes.get(f"unimodal-{modality}", {}).get(cell, {})
        mine = self.probes.get(method, {}).get(cell, {})
        diffs = [uni[s][modality] - mine[s][modality] for s in sorted(set(uni) & set(mine))
                 if modality in uni[s] and modality in mine[s]]
        return mean_ci(diffs) if diffs else None

    def ranks(self, cell: Cell) -> Dict[str, int]:
        """Method -> rank by mean test accuracy at ``cell`` (1 = best; ties share a rank)."""
        means = {m: iv.mean for m in self.methods if (iv := self.interval(m, cell)) is not None}
        return dict(ranks(means))


def row_cell(row: Mapping[str, str]) -> Cell:
    """A row's setting: ``(shared, unique1)`` on the synthetic grid, else ``(data,)``."""
    if row.get("shared", "") not in ("", None):
        return float(row["shared"]), float(row["unique1"])
    return (row.get("data") or "data",)


def _ratio(cell: Cell) -> float:
    shared, unique1 = cell
    return unique1 / shared if shared > 0 else float("inf")


def _sort_key(cell: Cell):
    return (0, _ratio(cell), "") if len(cell) == 2 else (1, 0.0, str(cell[0]))


def cell_header(cell: Cell) -> str:
    if len(cell) != 2:
        return str(cell[0])
    return f"U1/S={_ratio(cell):.3g} (S={cell[0]:g}, U1={cell[1]:g})"


def _ci(iv: Optional[Interval], signed: bool = False) -> str:
    if iv is None:
        return "—"
    text = format_ci(iv, 100.0)
    return ("+" if signed and iv.mean >= 0 else "") + text


def _diff(d: Optional[PairedDifference]) -> str:
    return "—" if d is None else _ci(d.interval, signed=True) + (" *" if d.significant else "")


def _table(heads: Sequence[str], first: str = "method") -> List[str]:
    return [f"| {first} | " + " | ".join(heads) + " |", "|---|" + "---|" * len(heads)]


def _ceiling_rows(table: SweepTable, which: Sequence[str] = ("both", "x1", "x2")) -> List[str]:
    if not any(table.ceiling(c) for c in table.cells):
        return []
    names = {"both": "both modalities", "x1": "x1 alone", "x2": "x2 alone"}
    return [f"| *Bayes ceiling, {names[w]}* | " + " | ".join(_ci(table.ceiling(c, w)) for c in table.cells) + " |"
            for w in which]


def format_summary(table: SweepTable, preamble: str = "",
                   title: str = "Synthetic competition sweep (paper Figure 1)") -> str:
    """The markdown of ``summary.md``."""
    lines = [f"# {title}", ""]
    if preamble:
        lines += [preamble, ""]
    heads = [cell_header(c) for c in table.cells]
    multi = any((iv := table.interval(m, c)) is not None and iv.n > 1 for m in table.methods for c in table.cells)
    lines += ["## Test accuracy (%), mean ± 95% CI over seeds"
              + (" (best mean per column in bold)" if multi else " (one seed: no interval, no best marked)"), ""]
    lines += _table(heads) + _ceiling_rows(table)
    best = {c: max((iv.mean for m in table.methods if (iv := table.interval(m, c))), default=None)
            for c in table.cells}
    for m in table.methods:
        cells = []
        for c in table.cells:
            iv = table.interval(m, c)
            text = _ci(iv)
            bold = iv is not None and iv.n > 1 and abs(iv.mean - best[c]) < 1e-12
            cells.append(f"**{text}**" if bold else text)
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    lines += [""]
    lines += _headroom_section(table, heads)
    for ref, name in ((JOINT, "joint training"), (ENSEMBLE, "the Ensemble")):
        lines += _paired_section(table, heads, ref, name)
    lines += ["## Rank per setting (1 = best mean test accuracy)", "", f"Caveat: {RANK_CAVEAT}.", ""]
    lines += _table(heads)
    rank = {c: table.ranks(c) for c in table.cells}
    for m in table.methods:
        lines.append(f"| {m} | " + " | ".join(str(rank[c].get(m, "—")) for c in table.cells) + " |")
    lines += [""] + _gap_section(table, heads) + _config_section(table)
    return "\n".join(lines) + "\n"


def _headroom_section(table: SweepTable, heads: Sequence[str]) -> List[str]:
    if not table.ceilings:
        return ["No Bayes ceiling is known for this data (only the synthetic generator has one), so there is "
                "no share-of-headroom table.", ""]
    lines = ["## Share of the headroom closed, (acc − joint) / (ceiling − joint), mean ± 95% CI", "",
             "Per seed with that seed's ceiling (1: reaches the Bayes ceiling, 0: joint training, < 0: worse "
             "than joint).", ""] + _table(heads) + _ceiling_rows(table, ("both",))
    lines.append("| *ceiling − joint (pp)* | " + " | ".join(_diff(table.ceiling_minus(c, JOINT))
                                                          for c in table.cells) + " |")
    for m in table.methods:
        if m != JOINT:
            lines.append(f"| {m} | " + " | ".join("—" if (h := table.headroom(m, c)) is None else format_ci(h)
                                                for c in table.cells) + " |")
    return lines + [""]


def _paired_section(table: SweepTable, heads: Sequence[str], ref: str, name: str) -> List[str]:
    if ref not in table.values:
        return [f"The `{ref}` method has no runs here, so there is no difference to {name} table.", ""]
    lines = [f"## Difference to {name} (percentage points), paired by seed, mean ± 95% CI", "",
             "`*`: significant, the CI excludes 0.", ""] + _table(heads) + _ceiling_rows(table, ("both",))
    if table.ceilings:
        lines.append(f"| *ceiling − {ref}* | " + " | ".join(_diff(table.ceiling_minus(c, ref))
                                                         for c in table.cells) + " |")
    for m in table.methods:
        if m != ref:
            lines.append(f"| {m} | " + " | ".join(_diff(table.paired(m, c, ref)) for c in table.cells) + " |")
    return lines + [""]


def _gap_section(table: SweepTable, heads: Sequence[str]) -> List[str]:
    mods = table.modalities()
    if not mods:
        return ["No run has probe scores (`trainer.final_probe`), so there is no competition-gap table.", ""]
    cols = [f"{h}: {m}" for h in heads for m in mods]
    pairs = [(c, m) for c in table.cells for m in mods]
    lines = ["## Competition gap (percentage points), mean ± 95% CI", "",
             "Test accuracy of a linear probe on modality m's frozen encoder (best checkpoint, fitted on the "
             "train split) after `unimodal-m`, minus the same probe after the method, paired by seed. Positive: "
             "the method leaves m's encoder worse than training it alone.", ""] + _table(cols)
    if table.ceilings:
        lines.append("| *Bayes ceiling, m alone* | " + " | ".join(
            _ci(table.ceiling(c, m)) if m in ("x1", "x2") else "—" for c, m in pairs) + " |")
    for m in mods:
        uni = f"unimodal-{m}"
        lines.append(f"| *probe after {uni}* | " + " | ".join(
            _ci(mean_ci([v[mod] for v in seeds.values()])) if mod == m and (seeds := table.probes.get(uni, {}).get(c))
            else "" for c, mod in pairs) + " |")
    for meth in table.methods:
        if not meth.startswith("unimodal-"):
            lines.append(f"| {meth} | " + " | ".join(_ci(table.gap(meth, c, m), signed=True) for c, m in pairs) + " |")
    return lines + [""]


def _config_section(table: SweepTable) -> List[str]:
    lines = ["## Configuration each method ran with", "", "| method | tuning trials | hyperparameters |",
             "|---|---|---|"]
    for m in table.methods:
        hp, trials = table.configs.get(m, ("", ""))
        lines.append(f"| {m} | {trials or 0} | `{hp}` |")
    return lines


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


def plot_accuracy(table: SweepTable, path: Path) -> None:
    """One setting: each method's mean test accuracy as a bar with its 95% CI, and the Bayes
    ceiling as a line where known."""
    plt = _pyplot()
    cell = table.cells[0]
    methods = [m for m in table.methods if table.interval(m, cell) is not None]
    ivs = [table.interval(m, cell) for m in methods]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.6 * len(methods) + 2), 4.5))
    ax.bar(range(len(methods)), [100 * iv.mean for iv in ivs], yerr=[_half(iv) for iv in ivs], capsize=3,
           color=[_colors(table.methods)[m] for m in methods])
    ceiling = table.ceiling(cell)
    if ceiling is not None:
        ax.axhline(100 * ceiling.mean, color="black", lw=1.6, label="Bayes ceiling (both)")
        ax.legend(fontsize=8)
    low = min(100 * iv.mean - _half(iv) for iv in ivs)
    ax.set_ylim(max(0.0, low - 5), None)
    ax.set_xticks(range(len(methods)), methods, rotation=40, ha="right")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{cell_header(cell)}: test accuracy, mean and 95% CI over seeds"
                 + ("" if ceiling is not None else " (no Bayes ceiling known)"), fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


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


def write_report(rows: Sequence[Mapping[str, str]], out: Path, methods: Optional[Sequence[str]] = None,
                 preamble: str = "", ceilings: Optional[Ceilings] = None,
                 title: str = "Synthetic competition sweep (paper Figure 1)") -> List[Path]:
    """Writes ``summary.md`` and the plots into ``out``; returns the paths written."""
    table = SweepTable.from_rows(rows, methods, ceilings)
    grid = all(len(c) == 2 for c in table.cells)
    written = [out / "summary.md", out / ("accuracy_vs_ratio.png" if grid else "accuracy.png")]
    written[0].write_text(format_summary(table, preamble, title))
    (plot_accuracy_vs_ratio if grid else plot_accuracy)(table, written[1])
    delta = out / "delta_vs_ensemble.png"
    if plot_delta_vs_ensemble(table, delta):
        written.append(delta)
    return written
