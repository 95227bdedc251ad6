"""Tables and plots of a benchmark (``bench synthetic``, ``bench compare``) from ``results.csv``.

``summary.md`` (every number a mean ± 95% Student-t CI over seeds, :mod:`mmbalance.bench.stats`):

- test accuracy per method and setting, with the Bayes ceiling (both modalities, each alone)
  where the data has one (synthetic); the best mean in bold only with 2+ seeds;
- the share of the headroom closed, ``(acc - joint) / (ceiling - joint)`` per seed with that
  seed's ceiling, then mean ± CI;
- paired (same seed) differences to ``joint`` and to ``ensemble``, ``*`` where the CI excludes 0;
- ranks by mean, with :data:`~mmbalance.bench.stats.RANK_CAVEAT`;
- macro-F1, accuracy on each synthetic point type, the unique-information deficit on unique2
  points against ``unimodal-x2``, the modalities' Shapley values and training time
  (:mod:`mmbalance.bench.report_fields`);
- the competition gap on each modality m: probe_m after ``unimodal-m`` minus probe_m after the
  method (same seed), from the ``probe`` column (``trainer.final_probe``);
- the configuration each method ran with (tuned or default).

Plots (:mod:`mmbalance.bench.plots`): ``accuracy_vs_ratio.png`` (synthetic grid; paper Figure 1) or ``accuracy.png`` (one
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

from .report_fields import Fields, field_sections, fields_from_rows
from .plots import ENSEMBLE, _ratio, cell_header, plot_accuracy, plot_accuracy_vs_ratio, plot_delta_vs_ensemble
from .stats import RANK_CAVEAT, Interval, PairedDifference, format_ci, headroom_closed, mean_ci, \
    paired_difference, ranks

JOINT = "joint"
MCR = "mcr"  # the library's own method: every other method is also paired with it
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
    #: macro-F1, per-kind accuracy, Shapley values, training time (:mod:`.report_fields`)
    fields: Fields = field(default_factory=dict)

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
                          {m: dict(v) for m, v in probes.items()}, dict(ceilings or {}), configs,
                          fields_from_rows(rows, row_cell))

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


def _sort_key(cell: Cell):
    return (0, _ratio(cell), "") if len(cell) == 2 else (1, 0.0, str(cell[0]))


def _ci(iv: Optional[Interval], signed: bool = False) -> str:
    if iv is None:
        return "—"
    if abs(100 * iv.mean) < 0.005:  # no "-0.00"
        iv = iv._replace(mean=0.0)
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
    if MCR in table.values:  # where MCR wins, loses, or is not distinguishable from each method
        lines += _paired_section(table, heads, MCR, "MCR")
    lines += ["## Rank per setting (1 = best mean test accuracy)", "", f"Caveat: {RANK_CAVEAT}.", ""]
    lines += _table(heads)
    rank = {c: table.ranks(c) for c in table.cells}
    for m in table.methods:
        lines.append(f"| {m} | " + " | ".join(str(rank[c].get(m, "—")) for c in table.cells) + " |")
    lines += [""] + field_sections(table.fields, table.methods, table.cells, heads)
    lines += _gap_section(table, heads) + _config_section(table)
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
