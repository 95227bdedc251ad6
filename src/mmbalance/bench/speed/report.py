"""The files of ``bench speed``: CSVs and the markdown tables of ratios."""

from __future__ import annotations

import csv
import statistics
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence

from .cells import Setting, SpeedVariant, fused_rows, mipd_terms
from .timing import Timing

CSV_COLUMNS = ["setting", "method", "ms_per_step", "peak_memory_mb"]
DETAIL_COLUMNS = ["setting", "method", "base_method", "hyperparameters", "batch", "modalities", "mipd_terms",
                  "fused_rows", "ms_per_step", "ms_p25", "ms_p75", "cpu_ms_per_step", "samples", "steps_per_sample",
                  "peak_memory_mb", "base_memory_mb", "step_memory_mb", "saved_for_backward_mb"]
MODALITY_COLUMNS = ["setting", "modalities", "method", "mipd_terms", "ms_per_step", "peak_memory_mb"]

#: Issue targets for setting (b): mcr with P = 32 against multiloss.
TARGETS = {"setting": "cremad", "method": "mcr_p32", "reference": "multiloss", "time": 1.10, "memory": 1.15}


def write_csv(path: Path, columns: Sequence[str], rows: Sequence[Mapping[str, object]]) -> Path:
    """Writes ``rows`` (atomically: a temporary file, then a rename)."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(columns))
        writer.writeheader()
        for row in rows:
            writer.writerow({c: row.get(c, "") for c in columns})
    tmp.replace(path)
    return path


def _ratio(value: float, reference: Optional[float]) -> str:
    if reference is None or reference != reference or value != value or reference <= 0:
        return "-"
    return f"{value / reference:.2f}"


def _num(value: float, digits: int = 1) -> str:
    return "-" if value != value else f"{value:,.{digits}f}"


def setting_table(cells: Sequence) -> List[str]:
    """One setting's table: ms/step and peak memory with their ratios to joint and multiloss."""
    by_label = {c.variant.label: c for c in cells}
    ms = {k: c.timing.median for k, c in by_label.items()}
    mem = {k: c.peak_mb for k, c in by_label.items()}
    lines = ["| method | ms/step | x joint | x multiloss | peak MB | x joint | x multiloss | saved for backward MB "
             "| MIPD fused rows |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for c in cells:
        k = c.variant.label
        lines.append(f"| {k} | {_num(ms[k])} | {_ratio(ms[k], ms.get('joint'))} | {_ratio(ms[k], ms.get('multiloss'))} "
                     f"| {_num(mem[k], 0)} | {_ratio(mem[k], mem.get('joint'))} | {_ratio(mem[k], mem.get('multiloss'))} "
                     f"| {_num(c.saved_mb, 1)} | {fused_rows(c.variant, c.setting) or '-'} |")
    return lines


def target_lines(results: Sequence, quick: bool = False) -> List[str]:
    """The step-time and memory targets (``TARGETS``) for setting (b), met or missed, from this run's cells."""
    cells = {(c.setting.name, c.variant.label): c for c in results}
    mine = cells.get((TARGETS["setting"], TARGETS["method"]))
    ref = cells.get((TARGETS["setting"], TARGETS["reference"]))
    if mine is None or ref is None:
        return []
    t = mine.timing.median / ref.timing.median
    cpu = mine.timing.cpu_median / ref.timing.cpu_median
    lines = ["", f"Targets, setting (b), {TARGETS['method']} vs {TARGETS['reference']} (batch {mine.setting.batch}"
             + ("; --quick sizes, not the targets' setting" if quick else "") + "):",
             f"- step time {t:.3f}x (target <= {TARGETS['time']:.2f}x): {'met' if t <= TARGETS['time'] else 'MISSED'}"
             + (f" (process CPU time per step: {cpu:.3f}x)" if cpu == cpu else "")]
    if mine.peak_mb == mine.peak_mb and ref.peak_mb == ref.peak_mb:
        m = mine.peak_mb / ref.peak_mb
        lines.append(f"- peak memory {m:.3f}x (target <= {TARGETS['memory']:.2f}x): "
                     f"{'met' if m <= TARGETS['memory'] else 'MISSED'}")
    if mine.saved_mb == mine.saved_mb and ref.saved_mb == ref.saved_mb and ref.saved_mb > 0:
        lines.append(f"- tensors saved for backward {mine.saved_mb / ref.saved_mb:.3f}x "
                     f"({mine.saved_mb:.1f} vs {ref.saved_mb:.1f} MB)")
    return lines


def round_ratios(mine: Timing, ref: Timing) -> List[float]:
    """``mine``'s sample over ``ref``'s in each timed round (both cells ran in every round, so a
    drift of the machine's speed between rounds largely cancels)."""
    return [a / b for a, b in zip(mine.samples, ref.samples) if b > 0]


def ratio_lines(results: Sequence, reference: str = "multiloss") -> List[str]:
    """Per setting, each MCR cell against ``reference`` round by round: the median ratio and
    its range over the rounds (the spread the table's medians hide)."""
    lines = []
    by_setting: Dict[str, Dict[str, object]] = defaultdict(dict)
    for c in results:
        by_setting[c.setting.name][c.variant.label] = c
    for name, cells in by_setting.items():
        ref = cells.get(reference)
        if ref is None:
            continue
        for label, c in cells.items():
            if not label.startswith("mcr_p") or "chunk" in label:
                continue
            ratios = sorted(round_ratios(c.timing, ref.timing))
            if ratios:
                lines.append(f"- {name}: {label} / {reference} per round: median {statistics.median(ratios):.3f}, "
                             f"range {ratios[0]:.3f}-{ratios[-1]:.3f} ({len(ratios)} rounds)")
    return ["", "Step-time ratios round by round (the cells of a round ran back to back):"] + lines if lines else []


def modality_table(cells: Sequence) -> List[str]:
    """M sweep: MIPD terms and ms/step of multiloss, mcr over all subsets and singletons only."""
    grouped: Dict[tuple, Dict[str, object]] = defaultdict(dict)
    for c in cells:
        grouped[(c.setting.name, len(c.setting.names))][c.variant.label] = c
    lines = ["| setting | M | terms, all subsets (2^M - 2) | terms, max_subset_size=1 | multiloss ms | "
             "mcr_p32 ms (x multiloss) | singletons ms (x multiloss) | peak MB multiloss / all / singletons |",
             "|---|---:|---:|---:|---:|---:|---:|---|"]
    for (setting, count), row in grouped.items():
        ml, full, single = row.get("multiloss"), row.get("mcr_p32"), row.get("mcr_p32_singletons")
        if ml is None or full is None or single is None:
            continue
        base = ml.timing.median
        mems = " / ".join(_num(c.peak_mb, 0) for c in (ml, full, single))
        lines.append(f"| {setting} | {count} | {mipd_terms(full.variant, full.setting.names)} | "
                     f"{mipd_terms(single.variant, single.setting.names)} | {_num(base)} | "
                     f"{_num(full.timing.median)} ({_ratio(full.timing.median, base)}) | "
                     f"{_num(single.timing.median)} ({_ratio(single.timing.median, base)}) | {mems} |")
    return lines


def markdown_report(results: Sequence, modality_results: Sequence, env: Mapping[str, object]) -> str:
    """``speed.md``: environment, one ratio table per setting, the targets, the M sweep."""
    lines = ["# bench speed", "",
             f"{env.get('device')}, {env.get('threads')} threads, torch {env.get('torch')}, {env.get('precision')}; "
             f"1-min load average {env.get('load_start', float('nan')):.2f} at the start, "
             f"{env.get('load_end', float('nan')):.2f} at the end; {env.get('seconds', '?')} s."
             + (" QUICK sizes: a smoke run, not the reported numbers." if env.get("quick") else ""),
             "", "ms/step: median over interleaved rounds after warm-up; peak MB: peak resident set (CPU) or "
             "max_memory_allocated (GPU) of a fresh process running the method alone; saved for backward MB: the "
             "distinct non-parameter tensors one step keeps for backward (exact, no allocator noise).", ""]
    by_setting: Dict[str, List] = defaultdict(list)
    for c in results:
        by_setting[c.setting.name].append(c)
    for name, cells in by_setting.items():
        lines += [f"## {cells[0].setting.describe()}", ""] + setting_table(cells) + [""]
    lines += target_lines(results, bool(env.get("quick")))
    lines += ratio_lines(results)
    if modality_results:
        lines += ["", "## MIPD terms as modalities grow (M = 2, 3, 4)", ""] + modality_table(modality_results)
    return "\n".join(lines) + "\n"


@dataclass
class CellResult:
    setting: Setting
    variant: SpeedVariant
    timing: Timing
    peak_mb: float = float("nan")
    base_mb: float = float("nan")
    saved_mb: float = float("nan")

    def row(self) -> Dict[str, object]:
        return {"setting": self.setting.name, "method": self.variant.label,
                "ms_per_step": f"{self.timing.median:.2f}", "peak_memory_mb": fmt(self.peak_mb, 1)}

    def detail(self) -> Dict[str, object]:
        return {"setting": self.setting.name, "method": self.variant.label, "base_method": self.variant.method,
                "hyperparameters": self.variant.describe(), "batch": self.setting.batch,
                "modalities": "+".join(self.setting.names),
                "mipd_terms": mipd_terms(self.variant, self.setting.names),
                "fused_rows": fused_rows(self.variant, self.setting),
                "ms_per_step": f"{self.timing.median:.2f}", "ms_p25": f"{self.timing.quantile(0.25):.2f}",
                "ms_p75": f"{self.timing.quantile(0.75):.2f}", "cpu_ms_per_step": fmt(self.timing.cpu_median, 2),
                "samples": len(self.timing.samples),
                "steps_per_sample": self.timing.steps_per_sample, "peak_memory_mb": fmt(self.peak_mb, 1),
                "base_memory_mb": fmt(self.base_mb, 1), "step_memory_mb": fmt(self.peak_mb - self.base_mb, 1),
                "saved_for_backward_mb": fmt(self.saved_mb, 2)}


def fmt(value: float, digits: int) -> str:
    return "" if value != value else f"{value:.{digits}f}"

