"""``mmbalance demo``: joint, multiloss and mcr on the synthetic competition data
(shared=0.1, unique1=0.8, unique2=0.1) over several seeds; prints a table, writes a PNG.

It prints one line per run with the time left, and, while a run is long, one of that
run's own progress lines every :data:`HEARTBEAT_S` seconds. With ``workers`` > 1 the runs
go to that many processes (mcr, the longest, first), as ``bench synthetic --workers``
does. Each run is seeded, so the table holds the same runs whatever the number of workers;
a worker trains with fewer threads, which can move a run's float sums and, rarely, its
accuracy by a test row. The table and the plot carry the chance level and the Bayes ceiling
of the data the runs trained on (:func:`mmbalance.data.bayes.bayes_accuracy`); the plot's
accuracy axis starts at 0 and shows every seed's point.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

from .config import build_config
from .methods import get_method
from .training.progress import clock, emit, heartbeat  # Lightning-free: with workers, this process trains nothing

DEMO_METHODS = ("joint", "multiloss", "mcr")
DEMO_DATA = {"data.shared": 0.1, "data.unique1": 0.8, "data.unique2": 0.1}
#: seconds between the progress lines of one long run
HEARTBEAT_S = 20.0
#: Monte Carlo draws of the Bayes ceiling (about a second)
CEILING_DRAWS = 100_000


def default_workers(runs: int) -> int:
    """The demo's default: one process per core, at most one per run."""
    return max(1, min(os.cpu_count() or 1, runs))


def run_demo(out_dir: str | Path, seeds: int = 3, epochs: int = 15, overrides: Optional[Mapping[str, Any]] = None,
             ceiling_draws: int = CEILING_DRAWS, workers: int = 1) -> Dict[str, List[float]]:
    """Trains each demo method for each seed; returns method -> test accuracies (in seed order).

    Args:
        overrides: extra ``--set`` style values for every run (tests shrink the data).
        ceiling_draws: Monte Carlo draws of the Bayes ceiling; 0 skips it.
        workers: processes that train runs at the same time (1: all in this process).
    """
    if workers < 1:
        from .errors import ConfigError
        raise ConfigError(f"demo --workers must be >= 1, got {workers}")
    out = Path(out_dir)
    seconds: Dict[str, List[float]] = {m: [] for m in DEMO_METHODS}
    base = {**DEMO_DATA, **(overrides or {}), "trainer.max_epochs": epochs, "trainer.progress": True}
    runs = [(method, seed) for seed in range(seeds) for method in DEMO_METHODS]
    spec = build_config("joint", "synthetic", base, get_method("joint").Hyperparameters).data  # bad input: no workers
    with contextlib.ExitStack() as stack:
        futures = None
        if workers > 1:  # submitted first: the workers start while this process computes the ceiling
            from .bench.runner import worker_pool
            pool = stack.enter_context(worker_pool(workers))
            futures = {pool.submit(_train_one, method, seed, dict(base), str(out)): (method, seed)
                       for method, seed in sorted(runs, key=lambda run: (run[0] != "mcr", run[1]))}
        total = len(runs)
        emit(f"demo: {', '.join(DEMO_METHODS)} x {seeds} seed{'s' if seeds > 1 else ''} on synthetic data "
             f"(shared={spec.shared:g}, unique1={spec.unique1:g}, unique2={spec.unique2:g}, n={spec.n}), at most "
             f"{epochs} epochs each: {total} runs"
             + (f" in {workers} processes" if workers > 1 else "") + f" -> {out}", force=True)
        ceiling = _ceiling(spec, ceiling_draws)
        chance = 1.0 / spec.num_classes
        start = time.perf_counter()
        by_run: Dict[Tuple[str, int], float] = {}

        def finished(method: str, seed: int, accuracy: float, took: float) -> None:
            by_run[method, seed] = accuracy
            seconds[method].append(took)
            done = len(by_run)
            emit(f"[{done}/{total}] {method:10s} seed {seed}: test accuracy {100 * accuracy:.2f}%  "
                 f"({took:.0f} s; elapsed {clock(time.perf_counter() - start)}, "
                 f"ETA {clock(_time_left(seconds, seeds) / max(1, min(workers, total - done)))})", force=True)

        if futures is None:
            from .training.quiet import quiet_lightning
            quiet_lightning()
            for method, seed in runs:
                finished(method, seed, *_train_one(method, seed, base, str(out)))
        else:
            from concurrent.futures import as_completed
            for future in as_completed(futures):
                finished(*futures[future], *future.result())
    results = {method: [by_run[method, seed] for seed in range(seeds)] for method in DEMO_METHODS}
    table = format_table(results, ceiling=ceiling, chance=chance)
    emit("\n" + table, force=True)
    (out / "summary.md").write_text(table + "\n")
    (out / "results.json").write_text(json.dumps(results, indent=2))
    plot_bars(results, out / "demo_accuracy.png", ceiling=ceiling, chance=chance)
    emit(f"\nwrote {out / 'summary.md'} and {out / 'demo_accuracy.png'}", force=True)
    return results


def _train_one(method: str, seed: int, base: Mapping[str, Any], out: str) -> Tuple[float, float]:
    """One demo run: its test accuracy and its seconds (top level, so worker processes can run it)."""
    from .training import train
    cfg = build_config(method, "synthetic", {**base, "seed": seed}, get_method(method).Hyperparameters)
    began = time.perf_counter()
    with heartbeat(HEARTBEAT_S, prefix=f"      {method} seed {seed}: "):
        metrics = train(cfg, Path(out) / f"{method}_seed{seed}")
    return metrics["test"]["accuracy"], time.perf_counter() - began


def _ceiling(spec, draws: int) -> Optional[float]:
    """The Bayes accuracy (both modalities) of the demo's data, printed; None without draws."""
    if draws <= 0:
        return None
    from .data.bayes import bayes_accuracy
    c = bayes_accuracy(spec, draws)
    emit(f"Bayes ceiling of this data (data seed {spec.seed}, {draws} draws): {100 * c.both:.2f}% with both "
         f"modalities, {100 * c.x1:.2f}% x1 alone, {100 * c.x2:.2f}% x2 alone; chance {100 / spec.num_classes:.0f}%",
         force=True)
    return c.both


def _time_left(seconds: Dict[str, List[float]], seeds: int) -> float:
    """Each method's remaining runs at its own mean duration so far (mcr runs are longer)."""
    known = [s for per in seconds.values() for s in per]
    fallback = statistics.fmean(known) if known else 0.0
    return sum((seeds - len(per)) * (statistics.fmean(per) if per else fallback) for per in seconds.values())


def _mean_std(values: List[float]):
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def format_table(results: Dict[str, List[float]], ceiling: Optional[float] = None,
                 chance: Optional[float] = None) -> str:
    """Markdown table of each method's test accuracy (%): mean ± s.d. over seeds (one seed:
    the value alone, no ±) and every seed's value; then the Bayes ceiling and chance."""
    counts = {len(v) for v in results.values()}
    many = max(counts, default=0) > 1
    head = "mean ± s.d. over seeds" if many else "one seed"
    lines = [f"| method | test accuracy (%), {head} | per seed |", "|---|---|---|"]
    for method, values in results.items():
        mean, std = _mean_std(values)
        shown = f"{100 * mean:.2f}" + ("" if std is None else f" ± {100 * std:.2f}")
        lines.append(f"| {method} | {shown} | {', '.join(f'{100 * v:.2f}' for v in values)} |")
    if ceiling is not None:
        lines.append(f"| *Bayes ceiling (both modalities)* | {100 * ceiling:.2f} | |")
    if chance is not None:
        lines.append(f"| *chance* | {100 * chance:.2f} | |")
    return "\n".join(lines)


def bar_figure(results: Dict[str, List[float]], ceiling: Optional[float] = None, chance: Optional[float] = None):
    """The demo's bar chart: mean test accuracy per method (s.d. as error bars with 2+ seeds),
    every seed as a point, the chance level and the Bayes ceiling as lines; the accuracy axis
    starts at 0. Returns the matplotlib Figure."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = list(results)
    stats = [_mean_std(results[n]) for n in names]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    errors = [100 * s if s is not None else 0.0 for _, s in stats]
    ax.bar(range(len(names)), [100 * m for m, _ in stats], yerr=errors if any(errors) else None, capsize=6,
           color=["#bbbbbb", "#9bb3d9", "#f0b48a"][: len(names)] + ["#cccccc"] * max(0, len(names) - 3),
           edgecolor="black", linewidth=0.6, zorder=1)
    for i, n in enumerate(names):
        values = results[n]
        offsets = [0.0] if len(values) == 1 else [-0.18 + 0.36 * k / (len(values) - 1) for k in range(len(values))]
        ax.scatter([i + o for o in offsets], [100 * v for v in values], s=18, color="black", zorder=3,
                   label="each seed" if i == 0 else None)
        ax.text(i, 100 * stats[i][0] / 2, f"{100 * stats[i][0]:.2f}", ha="center", va="center", fontsize=9)
    if ceiling is not None:
        ax.axhline(100 * ceiling, color="#2a7a2a", lw=1.6, zorder=2, label=f"Bayes ceiling {100 * ceiling:.1f}%")
    if chance is not None:
        ax.axhline(100 * chance, color="#b22222", lw=1.2, ls="--", zorder=2, label=f"chance {100 * chance:.0f}%")
    ax.set_xticks(range(len(names)), names)
    ax.set_ylim(0, 100)
    ax.set_ylabel("test accuracy (%)")
    seeds = max(len(v) for v in results.values()) if results else 0
    ax.set_title("synthetic: shared=0.1, unique1=0.8, unique2=0.1\n"
                 + (f"mean ± s.d. over {seeds} seeds" if seeds > 1 else "one seed (no spread)"), fontsize=10)
    ax.grid(axis="y", alpha=0.3, zorder=0)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    fig.tight_layout()
    return fig


def plot_bars(results: Dict[str, List[float]], path: Path, ceiling: Optional[float] = None,
              chance: Optional[float] = None) -> None:
    """Writes :func:`bar_figure` to ``path``."""
    fig = bar_figure(results, ceiling, chance)
    import matplotlib.pyplot as plt
    fig.savefig(path, dpi=120)
    plt.close(fig)
