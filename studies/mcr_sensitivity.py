"""MCR sensitivity: accuracy over each of MCR's searched values, per data set.

One at a time around MCR's generic defaults: each hyperparameter that ``MCR.Hyperparameters``
declares with a search range (``unimodal_weight``, ``mipd_weight``, ``contrastive_weight``:
``POINTS`` log-spaced points over the declared range, plus the default where the grid misses
it; ``init``: every choice) takes each of its values with the others at their defaults, plus
``joint`` as the reference, on every data set and seed. One CSV row per finished run (validation
AND test accuracy), appended as it finishes; a rerun skips the rows already there, so a killed
study resumes. Then it draws, per data set, one panel per hyperparameter: mean +- s.d. over the
seeds against the value, joint's mean as a horizontal line, the default marked; one figure for
validation accuracy and one for test accuracy. Nothing is chosen from it: it is descriptive
(docs/evidence/mcr_sensitivity/README.md).

    .venv/bin/python studies/mcr_sensitivity.py --workers 2 \
        --csv docs/evidence/mcr_sensitivity/results.csv --plots docs/evidence/mcr_sensitivity

``--plot-only`` redraws the figures and prints the summary table from the CSV alone.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import hashlib
import json
import math
import os
import shutil
import statistics
import sys
import time
from concurrent.futures import as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

POINTS = 5  # log-spaced grid points per weight over its declared search range
SEEDS = (0, 1, 2, 3, 4)
WEIGHTS = ("unimodal_weight", "mipd_weight", "contrastive_weight")
PANELS = WEIGHTS + ("init",)
COMMON = {"data.seed": 0, "trainer.progress": False, "trainer.final_probe": False}
#: name -> (data spec, overrides): the budgets of the committed benchmarks
DATASETS: Dict[str, Tuple[str, Dict[str, Any]]] = {
    # the synthetic sweep's headline cell (U1/S = 8) and budget
    "synthetic": ("synthetic", {"data.shared": 0.1, "data.unique1": 0.8, "data.unique2": 0.1, "data.n": 6000,
                                "trainer.max_epochs": 20, "trainer.patience": 5}),
    # bench compare's mfeat budget (docs/evidence/mfeat), its default views
    "mfeat_fou_kar": ("mfeat", {"data.modalities": ["fou", "kar"], "trainer.max_epochs": 5, "trainer.patience": 3}),
    # the pair chosen by the rule in the notes (largest gap of the recorded linear probes, mor excluded)
    "mfeat_fac_zer": ("mfeat", {"data.modalities": ["fac", "zer"], "trainer.max_epochs": 5, "trainer.patience": 3}),
}
FIELDS = ("dataset", "config", "panel", "value", "method", "unimodal_weight", "mipd_weight", "contrastive_weight",
          "init", "seed", "val_accuracy", "test_accuracy", "epochs_run", "train_seconds", "wall_seconds",
          "fingerprint")


# --------------------------------------------------------------------------- grid
def sig(x: float, digits: int = 3) -> float:
    """``x`` rounded to ``digits`` significant digits."""
    if x == 0:
        return 0.0
    return round(x, digits - 1 - int(math.floor(math.log10(abs(x)))))


def log_grid(low: float, high: float, points: int = POINTS, include: Optional[float] = None) -> List[float]:
    """``points`` log-spaced values from ``low`` to ``high`` (3 significant digits), plus
    ``include`` (the default) where the grid misses it; sorted."""
    if points < 2 or low <= 0 or high <= low:
        raise ValueError(f"need points >= 2 and 0 < low < high, got {points}, {low}, {high}")
    step = (math.log10(high) - math.log10(low)) / (points - 1)
    values = [sig(10 ** (math.log10(low) + i * step)) for i in range(points)]
    if include is not None and not any(math.isclose(v, include, rel_tol=1e-9) for v in values):
        values.append(include)
    return sorted(values)


@dataclass(frozen=True)
class Config:
    """One point of the study: ``panel`` is the hyperparameter it varies ('' for the default
    and joint, which every panel shares or draws as a line)."""

    name: str
    method: str
    panel: str
    value: Any
    hparams: Tuple[Tuple[str, Any], ...]


def declared_space() -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """MCR's searched fields (name -> Search) and their defaults, from its dataclass."""
    from mmbalance.methods import get_method
    from mmbalance.methods.hparams import searched
    hp = get_method("mcr").Hyperparameters
    space = searched(hp)
    defaults = {f.name: f.default for f in dataclasses.fields(hp) if f.name in space}
    return space, defaults


TUNED = Path(__file__).resolve().parent.parent / "configs" / "tuned" / "mcr_synthetic_mfeat.yaml"


def tuned_values(path: Path = TUNED) -> Dict[str, Any]:
    """The searched values of the named tuned configuration (``method.<name>`` keys of the YAML)."""
    from mmbalance.config import load_yaml
    return {k.split(".", 1)[1]: v for k, v in load_yaml(path).items() if k.startswith("method.")}


def make_configs(space: Mapping[str, Any], defaults: Mapping[str, Any], points: int = POINTS,
                 tuned: Optional[Mapping[str, Any]] = None) -> List[Config]:
    """``default`` (every searched value at its default), each other grid value of each
    hyperparameter with the rest at the default, ``joint``, and ``tuned`` (``tuned``'s values,
    the rest at the default) where given: the two reference lines."""
    base = tuple((k, defaults[k]) for k in PANELS)
    configs = [Config("default", "mcr", "", "", base)]
    for name in PANELS:
        search = space[name]
        if search.kind == "choice":
            values = list(search.choices)
        elif search.kind == "float" and search.log:
            values = log_grid(search.low, search.high, points, include=defaults[name])
        else:
            raise ValueError(f"{name}: no grid for search kind {search.kind!r} (log={search.log})")
        for v in values:
            if v == defaults[name]:
                continue
            hp = tuple((k, v if k == name else d) for k, d in base)
            configs.append(Config(f"{name}={v}", "mcr", name, v, hp))
    configs.append(Config("joint", "joint", "", "", ()))
    if tuned:
        unknown = set(tuned) - set(PANELS)
        if unknown:
            raise ValueError(f"tuned values outside the study's hyperparameters: {sorted(unknown)}")
        configs.append(Config("tuned", "mcr", "", "", tuple((k, tuned.get(k, d)) for k, d in base)))
    return configs


@dataclass(frozen=True)
class Job:
    dataset: str
    config: Config
    seed: int

    @property
    def key(self) -> Tuple[str, str, int]:
        return (self.dataset, self.config.name, self.seed)

    def overrides(self, stage_cache: str = "") -> Dict[str, Any]:
        spec, budget = DATASETS[self.dataset]
        out = {**COMMON, **budget, "seed": self.seed, **{f"method.{k}": v for k, v in self.config.hparams}}
        if stage_cache and dict(self.config.hparams).get("init") == "unimodal":
            out["trainer.stage_cache"] = stage_cache
        return out

    @property
    def fingerprint(self) -> str:
        """Changes whenever anything that shapes the run changes (not the stage cache)."""
        spec, _ = DATASETS[self.dataset]
        text = json.dumps([self.config.method, spec, sorted(self.overrides().items())], sort_keys=True, default=str)
        return hashlib.sha1(text.encode()).hexdigest()[:12]


def make_jobs(datasets: Sequence[str], configs: Sequence[Config], seeds: Sequence[int]) -> List[Job]:
    """Data set by data set (the last one may be left out if time runs short), then seed by
    seed, so a study stopped early has every configuration at the first seeds."""
    return [Job(d, c, s) for d in datasets for s in seeds for c in configs]


# --------------------------------------------------------------------------- CSV
def read_rows(path: Path) -> List[Dict[str, str]]:
    if not Path(path).exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def append_row(path: Path, row: Mapping[str, Any]) -> None:
    path = Path(path)
    new = not path.exists() or path.stat().st_size == 0
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        if new:
            writer.writeheader()
        writer.writerow({k: row.get(k, "") for k in FIELDS})
        f.flush()
        os.fsync(f.fileno())


def pending(jobs: Sequence[Job], rows: Iterable[Mapping[str, str]]) -> List[Job]:
    """The jobs whose row is not in the CSV yet; a row with the same key but another
    fingerprint (other budget or values) is an error, not a skip."""
    recorded = {(r["dataset"], r["config"], int(r["seed"])): r["fingerprint"] for r in rows}
    todo = []
    for job in jobs:
        if job.key in recorded:
            if recorded[job.key] != job.fingerprint:
                raise SystemExit(f"the CSV holds {job.key} with other settings; use another --csv")
            continue
        todo.append(job)
    return todo


def row_of(job: Job, metrics: Mapping[str, Any], wall: float) -> Dict[str, Any]:
    hp = dict(job.config.hparams)
    return {"dataset": job.dataset, "config": job.config.name, "panel": job.config.panel, "value": job.config.value,
            "method": job.config.method, **{k: hp.get(k, "") for k in PANELS}, "seed": job.seed,
            "val_accuracy": float(metrics["val"]["accuracy"]), "test_accuracy": float(metrics["test"]["accuracy"]),
            "epochs_run": metrics.get("epochs_run", ""), "train_seconds": metrics.get("train_seconds", ""),
            "wall_seconds": round(wall, 1), "fingerprint": job.fingerprint}


# --------------------------------------------------------------------------- aggregation
@dataclass(frozen=True)
class Point:
    value: Any
    mean: float
    sd: float
    n: int
    is_default: bool


def _stats(xs: Sequence[float]) -> Tuple[float, float]:
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def aggregate(rows: Sequence[Mapping[str, str]], dataset: str, panel: str, metric: str = "val_accuracy",
              defaults: Optional[Mapping[str, Any]] = None) -> List[Point]:
    """The panel's points in percent, sorted by value: the rows that vary ``panel`` and the
    ``default`` rows (at the default's value of ``panel``), mean and s.d. over seeds."""
    mine = [r for r in rows if r["dataset"] == dataset and r["method"] == "mcr"]
    by: Dict[Any, List[float]] = {}
    default_value = None
    for r in mine:
        if r["config"] == "default":
            value = _parse(r[panel])
            default_value = value
        elif r["panel"] == panel:
            value = _parse(r["value"])
        else:
            continue
        by.setdefault(value, []).append(100 * float(r[metric]))
    if defaults is not None:
        default_value = defaults[panel]
    out = [Point(v, *_stats(xs), len(xs), v == default_value) for v, xs in by.items()]
    return sorted(out, key=lambda p: (isinstance(p.value, str), str(p.value) if isinstance(p.value, str) else p.value))


def reference(rows: Sequence[Mapping[str, str]], dataset: str, config: str = "joint",
              metric: str = "val_accuracy") -> Optional[Tuple[float, float, int]]:
    """Mean, s.d. (percent) and count of one configuration's rows (joint by default)."""
    xs = [100 * float(r[metric]) for r in rows if r["dataset"] == dataset and r["config"] == config]
    return (*_stats(xs), len(xs)) if xs else None


def _parse(text: Any) -> Any:
    if not isinstance(text, str):
        return text
    try:
        return float(text)
    except ValueError:
        return text


def summary_table(rows: Sequence[Mapping[str, str]], datasets: Sequence[str], metric: str = "val_accuracy") -> str:
    """Markdown: per data set and hyperparameter, the lowest and highest mean over the grid
    (with their values), the default's mean and joint's."""
    lines = ["| data set | hyperparameter | lowest mean (value) | highest mean (value) | spread | default | joint | tuned |",
             "|---|---|---|---|---|---|---|---|"]
    for d in datasets:
        joint = reference(rows, d, "joint", metric)
        default = reference(rows, d, "default", metric)
        tuned = reference(rows, d, "tuned", metric)
        for panel in PANELS:
            pts = aggregate(rows, d, panel, metric)
            if not pts:
                continue
            lo, hi = min(pts, key=lambda p: p.mean), max(pts, key=lambda p: p.mean)
            fmt = lambda s: f"{s[0]:.2f} ± {s[1]:.2f}" if s else "—"  # noqa: E731
            lines.append(f"| {d} | {panel} | {lo.mean:.2f} ({_show(lo.value)}) | {hi.mean:.2f} ({_show(hi.value)}) | "
                         f"{hi.mean - lo.mean:.2f} | {fmt(default)} | {fmt(joint)} | {fmt(tuned)} |")
    return "\n".join(lines)


def _show(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


# --------------------------------------------------------------------------- plots
def plot(rows: Sequence[Mapping[str, str]], datasets: Sequence[str], metric: str, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    datasets = [d for d in datasets if any(r["dataset"] == d for r in rows)]
    if not datasets:
        return
    which = "VALIDATION" if metric == "val_accuracy" else "TEST"
    fig, axes = plt.subplots(len(datasets), len(PANELS), figsize=(4.2 * len(PANELS), 3.3 * len(datasets)),
                             squeeze=False, sharey="row")
    for i, d in enumerate(datasets):
        joint = reference(rows, d, "joint", metric)
        tuned = reference(rows, d, "tuned", metric)
        for j, panel in enumerate(PANELS):
            ax = axes[i][j]
            pts = aggregate(rows, d, panel, metric)
            if panel == "init":
                xs = list(range(len(pts)))
                ax.set_xticks(xs, [str(p.value) for p in pts])
                ax.set_xlim(-0.6, len(pts) - 0.4)
            else:
                xs = [p.value for p in pts]
                ax.set_xscale("log")
            ax.errorbar(xs, [p.mean for p in pts], yerr=[p.sd for p in pts], fmt="o-", color="C0", capsize=3,
                        label="mcr, mean ± s.d. over seeds")
            for x, p in zip(xs, pts):
                if p.is_default:
                    ax.plot([x], [p.mean], marker="*", markersize=15, color="C3", zorder=5, linestyle="none",
                            label="generic default")
            if joint:
                ax.axhline(joint[0], color="0.3", linestyle="--", linewidth=1, label=f"joint mean ({joint[0]:.2f})")
                ax.axhspan(joint[0] - joint[1], joint[0] + joint[1], color="0.5", alpha=0.12, linewidth=0,
                           label="joint ± s.d.")
            if tuned:
                ax.axhline(tuned[0], color="C2", linestyle=":", linewidth=1.5,
                           label=f"mcr, configs/tuned/ mean ({tuned[0]:.2f})")
            ax.set_xlabel(f"method.{panel}" + ("" if panel == "init" else " (log scale)"))
            if j == 0:
                ax.set_ylabel(f"{d}\n{which} accuracy (%)")
            ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    seen = {}
    for h, label in zip(handles, labels):  # one entry each; the joint/tuned means are those of row 1
        seen.setdefault(label.split(" (")[0], h)
    fig.legend(list(seen.values()), list(seen), loc="lower center", ncol=len(seen), fontsize=8, frameon=False)
    seeds = sorted({int(r["seed"]) for r in rows})
    fig.suptitle(f"MCR sensitivity: {which} accuracy, one hyperparameter at a time around the generic defaults "
                 f"(seeds {', '.join(map(str, seeds))}); descriptive, nothing chosen from it; y axis zoomed per data set",
                 fontsize=10)
    fig.tight_layout(rect=(0, 0.035, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------- running
def run_job(job: Job, workdir: str, stage_cache: str) -> Tuple[Optional[Dict[str, Any]], str, float]:
    """Trains one job (in a worker), removes its checkpoints, returns (row, error, seconds)."""
    start = time.perf_counter()
    try:
        from mmbalance.config import build_config
        from mmbalance.methods import get_method
        from mmbalance.training import train
        spec, _ = DATASETS[job.dataset]
        cfg = build_config(job.config.method, spec, job.overrides(stage_cache),
                           get_method(job.config.method).Hyperparameters)
        out = Path(workdir) / job.dataset / f"{job.config.name}__seed{job.seed}"
        shutil.rmtree(out, ignore_errors=True)  # a run killed half-way starts again
        metrics = train(cfg, out)
        shutil.rmtree(out / "checkpoints", ignore_errors=True)  # the cached stages stay: reruns reuse them
        wall = time.perf_counter() - start
        return row_of(job, metrics, wall), "", wall
    except Exception as exc:  # reported, not recorded: a rerun tries it again
        return None, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}", time.perf_counter() - start


def _clock(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 60}m{s % 60:02d}s"


def run_all(todo: Sequence[Job], csv_path: Path, workers: int, workdir: Path, stage_cache: Path,
            runner=None) -> int:
    """Trains ``todo`` with ``runner`` (default :func:`run_job`; studies/lodo_defaults.py passes
    its own for its data sets), appending a CSV row per finished run; returns the failures."""
    runner = runner or run_job
    start, busy, failed = time.perf_counter(), [0.0], []
    total = len(todo)

    def done(k: int, job: Job, row: Optional[Dict[str, Any]], error: str, seconds: float) -> None:
        busy[0] += seconds
        if row is not None:
            append_row(csv_path, row)
            what = f"val {100 * row['val_accuracy']:.2f} test {100 * row['test_accuracy']:.2f} ({row['epochs_run']} ep)"
        else:
            failed.append((job.key, error))
            what = f"FAILED: {error}"
        eta = busy[0] / k * (total - k) / max(1, min(workers, total - k))
        print(f"[{k}/{total}] {job.dataset} {job.config.name} seed {job.seed}: {what}  ({seconds:.1f} s; "
              f"elapsed {_clock(time.perf_counter() - start)}, ETA {_clock(eta)})", flush=True)

    if workers <= 1:
        for k, job in enumerate(todo, 1):
            done(k, job, *runner(job, str(workdir), str(stage_cache)))
    else:
        from mmbalance.bench.runner import worker_pool  # spawned workers, one thread each with 2 on 2 cores
        with worker_pool(workers) as pool:
            futures = {pool.submit(runner, job, str(workdir), str(stage_cache)): job for job in todo}
            for k, future in enumerate(as_completed(futures), 1):
                done(k, futures[future], *future.result())
    for key, error in failed:
        print(f"failed: {key}: {error}")
    return len(failed)


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    p.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    p.add_argument("--configs", nargs="*", default=None, help="only these configuration names (timing runs)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--csv", type=Path, default=Path("docs/evidence/mcr_sensitivity/results.csv"))
    p.add_argument("--plots", type=Path, default=None, help="folder for val_accuracy.png and test_accuracy.png")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/mcr_sensitivity"))
    p.add_argument("--plot-only", action="store_true")
    p.add_argument("--list", action="store_true", help="print the configurations and exit")
    args = p.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    space, defaults = declared_space()
    configs = make_configs(space, defaults, tuned=tuned_values())
    if args.list:
        for c in configs:
            print(c.name, dict(c.hparams))
        print(f"{len(configs)} configurations x {len(args.seeds)} seeds x {len(args.datasets)} data sets = "
              f"{len(configs) * len(args.seeds) * len(args.datasets)} runs")
        return 0
    if args.configs:
        configs = [c for c in configs if c.name in args.configs]
    failed = 0
    if not args.plot_only:
        jobs = make_jobs(args.datasets, configs, args.seeds)
        todo = pending(jobs, read_rows(args.csv))
        print(f"{len(jobs)} runs, {len(jobs) - len(todo)} already in {args.csv}, {len(todo)} to run", flush=True)
        if todo:
            import torch
            torch.set_num_threads(1)
            failed = run_all(todo, args.csv, args.workers, args.workdir, args.workdir / "stage_cache")
    rows = read_rows(args.csv)
    datasets = [d for d in args.datasets if any(r["dataset"] == d for r in rows)]
    for metric in ("val_accuracy", "test_accuracy"):
        print(f"\n{metric} (%), mean over seeds:\n" + summary_table(rows, datasets, metric))
        if args.plots:
            plot(rows, datasets, metric, args.plots / f"{metric}.png")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
