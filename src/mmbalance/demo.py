"""``mmbalance demo``: joint, multiloss and mcr on the synthetic competition data
(shared=0.1, unique1=0.8, unique2=0.1) over several seeds; prints a table, writes a PNG."""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Dict, List

from .config import build_config
from .methods import get_method
from .training import train
from .training.quiet import quiet_lightning

DEMO_METHODS = ("joint", "multiloss", "mcr")
DEMO_DATA = {"data.shared": 0.1, "data.unique1": 0.8, "data.unique2": 0.1}


def run_demo(out_dir: str | Path, seeds: int = 3, epochs: int = 15) -> Dict[str, List[float]]:
    """Trains each demo method for each seed; returns method -> test accuracies."""
    quiet_lightning()
    out = Path(out_dir)
    results: Dict[str, List[float]] = {m: [] for m in DEMO_METHODS}
    start = time.perf_counter()
    total, done = len(DEMO_METHODS) * seeds, 0
    for seed in range(seeds):
        for method in DEMO_METHODS:
            overrides = {**DEMO_DATA, "seed": seed, "trainer.max_epochs": epochs, "trainer.progress": False}
            cfg = build_config(method, "synthetic", overrides, get_method(method).Hyperparameters)
            metrics = train(cfg, out / f"{method}_seed{seed}")
            results[method].append(metrics["test"]["accuracy"])
            done += 1
            print(f"[{done}/{total}] {method:10s} seed {seed}: test accuracy {results[method][-1]:.4f} "
                  f"({time.perf_counter() - start:.0f} s)", flush=True)
    table = format_table(results)
    print("\n" + table)
    (out / "summary.md").write_text(table + "\n")
    (out / "results.json").write_text(json.dumps(results, indent=2))
    plot_bars(results, out / "demo_accuracy.png")
    print(f"\nwrote {out / 'summary.md'} and {out / 'demo_accuracy.png'}")
    return results


def _mean_std(values: List[float]):
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def format_table(results: Dict[str, List[float]]) -> str:
    """Markdown table of mean +- std test accuracy (in %)."""
    lines = ["| method | test accuracy (%) | seeds |", "|---|---|---|"]
    for method, values in results.items():
        mean, std = _mean_std(values)
        lines.append(f"| {method} | {100 * mean:.2f} ± {100 * std:.2f} | {len(values)} |")
    return "\n".join(lines)


def plot_bars(results: Dict[str, List[float]], path: Path) -> None:
    """Bar chart of mean test accuracy with std error bars."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = list(results)
    stats = [_mean_std(results[n]) for n in names]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.bar(names, [100 * m for m, _ in stats], yerr=[100 * s for _, s in stats], capsize=6,
           color=["#888888", "#4c72b0", "#dd8452"][: len(names)])
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("synthetic: shared=0.1, unique1=0.8, unique2=0.1")
    low = min(100 * m for m, _ in stats)
    ax.set_ylim(max(0, low - 10), None)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
