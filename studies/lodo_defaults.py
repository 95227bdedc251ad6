"""Leave-one-data-set-out check of MCR's defaults (docs/evidence/defaults_lodo.md).

Candidates: ``paper`` (the generic defaults: unimodal_weight 1, mipd_weight 0.1,
contrastive_weight 1, init scratch), ``unimodal_start`` (the same weights, init unimodal) and
``tuned`` (configs/tuned/mcr_synthetic_mfeat.yaml), with ``joint`` as a reference. For each
held-out family, the candidate with the highest mean validation gain over ``paper`` on the
other families is chosen, and its test gain over ``paper`` on the held-out family is its
held-out win. The sensitivity grid of studies/mcr_sensitivity.py runs on the new data sets
too, into the same CSV, and ``--plots`` draws one figure per hyperparameter with one line
per data set.

    .venv/bin/python studies/lodo_defaults.py --phase lodo --workers 2
    .venv/bin/python studies/lodo_defaults.py --phase sensitivity --workers 2
    .venv/bin/python studies/lodo_defaults.py --report --plots docs/evidence/defaults_lodo
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent))
import mcr_sensitivity as ms  # noqa: E402  (the grid, the CSV format, the per-panel aggregation)

ROOT = Path(__file__).resolve().parent.parent
DATA = Path("runs/lodo_data")  # the .npz files, written from the installed packages
SEEDS = (0, 1, 2, 3, 4)  # training seed = data.seed (a new split per seed)
SENSITIVITY_SEEDS = (0, 1)
MFEAT = {"trainer.max_epochs": 5, "trainer.patience": 3}  # bench compare's mfeat budget
LARGE = {"trainer.max_epochs": 20, "trainer.patience": 5}  # N >= 1000: the synthetic sweep's
SMALL = {"trainer.max_epochs": 100, "trainer.patience": 20}  # N < 1000: one or two batches an epoch
#: name -> (family, data spec, budget)
DATASETS: Dict[str, Tuple[str, str, Dict[str, Any]]] = {
    "mfeat_fou_kar": ("mfeat", "mfeat", {"data.modalities": ["fou", "kar"], **MFEAT}),
    "mfeat_fac_zer": ("mfeat", "mfeat", {"data.modalities": ["fac", "zer"], **MFEAT}),
    "mvmnist": ("mvmnist", str(DATA / "mvmnist.npz"), LARGE),
    "segment": ("segment", str(DATA / "segment.npz"), LARGE),
    "nutrimouse": ("nutrimouse", str(DATA / "nutrimouse.npz"), SMALL),
    "basicmotions": ("basicmotions", str(DATA / "basicmotions.npz"), SMALL),
    "watch": ("watch", str(DATA / "watch.npz"), SMALL),
}
NEW = ("mvmnist", "segment", "nutrimouse", "basicmotions", "watch")
#: candidate -> the sensitivity study's configuration name
CANDIDATES = {"paper": "default", "unimodal_start": "init=unimodal", "tuned": "tuned"}
REFERENCE = "joint"


@dataclass(frozen=True)
class Job:
    """One run; the same fields and CSV row as mcr_sensitivity's Job, data.seed = seed."""

    dataset: str
    config: ms.Config
    seed: int

    @property
    def key(self) -> Tuple[str, str, int]:
        return (self.dataset, self.config.name, self.seed)

    def overrides(self, stage_cache: str = "") -> Dict[str, Any]:
        _, _, budget = DATASETS[self.dataset]
        out = {**ms.COMMON, **budget, "data.seed": self.seed, "seed": self.seed,
               **{f"method.{k}": v for k, v in self.config.hparams}}
        if stage_cache and dict(self.config.hparams).get("init") == "unimodal":
            out["trainer.stage_cache"] = stage_cache
        return out

    @property
    def fingerprint(self) -> str:
        text = json.dumps([self.config.method, DATASETS[self.dataset][1], sorted(self.overrides().items())],
                          sort_keys=True, default=str)
        return hashlib.sha1(text.encode()).hexdigest()[:12]


def run_job(job: Job, workdir: str, stage_cache: str):
    """Trains one job in a worker; (row, error, seconds) as mcr_sensitivity.run_job."""
    start = time.perf_counter()
    try:
        from mmbalance.config import build_config
        from mmbalance.methods import get_method
        from mmbalance.training import train
        spec = DATASETS[job.dataset][1]
        cfg = build_config(job.config.method, spec, job.overrides(stage_cache),
                           get_method(job.config.method).Hyperparameters)
        out = Path(workdir) / job.dataset / f"{job.config.name}__seed{job.seed}"
        shutil.rmtree(out, ignore_errors=True)
        metrics = train(cfg, out)
        shutil.rmtree(out / "checkpoints", ignore_errors=True)
        return ms.row_of(job, metrics, time.perf_counter() - start), "", time.perf_counter() - start
    except Exception as exc:  # reported, not recorded: a rerun tries it again
        return None, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}", time.perf_counter() - start


def all_configs() -> Dict[str, ms.Config]:
    space, defaults = ms.declared_space()
    return {c.name: c for c in ms.make_configs(space, defaults, tuned=ms.tuned_values())}


def make_jobs(phase: str, configs: Mapping[str, ms.Config], datasets: Sequence[str]) -> List[Job]:
    """``lodo``: the candidates and joint, every data set, seeds 0-4, seed by seed;
    ``sensitivity``: every grid configuration on the new data sets, seeds 0-1."""
    if phase == "lodo":
        names = list(CANDIDATES.values()) + [REFERENCE]
        return [Job(d, configs[n], s) for s in SEEDS for d in datasets for n in names]
    return [Job(d, c, s) for s in SENSITIVITY_SEEDS for d in datasets if d in NEW for c in configs.values()]


# --------------------------------------------------------------------------- analysis
def table(rows: Sequence[Mapping[str, str]], metric: str) -> Dict[Tuple[str, str], Dict[int, float]]:
    """(family, config) -> seed -> accuracy in points, averaged over the family's data sets
    (a seed counts only where every data set of the family has it)."""
    per: Dict[Tuple[str, str, int], List[float]] = {}
    size = {f: sum(1 for d in DATASETS.values() if d[0] == f) for f, _, _ in DATASETS.values()}
    for r in rows:
        if r["dataset"] in DATASETS:
            family = DATASETS[r["dataset"]][0]
            per.setdefault((family, r["config"], int(r["seed"])), []).append(100 * float(r[metric]))
    out: Dict[Tuple[str, str], Dict[int, float]] = {}
    for (family, config, seed), xs in per.items():
        if len(xs) == size[family]:
            out.setdefault((family, config), {})[seed] = statistics.fmean(xs)
    return out


def gains(tab: Mapping[Tuple[str, str], Mapping[int, float]], family: str, config: str,
          base: str = CANDIDATES["paper"]) -> List[float]:
    """Per-seed ``config - base`` on ``family`` over the seeds both have, in seed order."""
    a, b = tab.get((family, config), {}), tab.get((family, base), {})
    return [a[s] - b[s] for s in sorted(set(a) & set(b))]


def choose(val: Mapping, families: Sequence[str]) -> Tuple[str, Dict[str, float]]:
    """The candidate with the highest mean over ``families`` of its mean validation gain over
    ``paper`` (``paper``'s is 0; a tie keeps the earlier candidate, ``paper`` first)."""
    scores = {}
    for cand, config in CANDIDATES.items():
        scores[cand] = statistics.fmean(statistics.fmean(gains(val, f, config)) for f in families)
    best = max(CANDIDATES, key=lambda c: (scores[c], -list(CANDIDATES).index(c)))
    return best, scores


@dataclass
class Fold:
    held_out: str
    chosen: str
    scores: Dict[str, float]
    win: Any  # mmbalance.bench.stats.Interval of the per-seed test gains of ``chosen``


def lodo(rows: Sequence[Mapping[str, str]]) -> Tuple[List[Fold], Any, str]:
    """The folds, the interval of their wins (t over folds) and the all-family choice."""
    from mmbalance.bench.stats import mean_ci
    val, test = table(rows, "val_accuracy"), table(rows, "test_accuracy")
    families = sorted({f for f, _, _ in DATASETS.values()})
    folds = []
    for held in families:
        chosen, scores = choose(val, [f for f in families if f != held])
        win = gains(test, held, CANDIDATES[chosen])
        folds.append(Fold(held, chosen, scores, mean_ci(win) if chosen != "paper" else mean_ci([0.0] * len(win))))
    overall = mean_ci([f.win.mean for f in folds])
    return folds, overall, choose(val, families)[0]


def decide(overall: Any, final: str) -> str:
    """The rule of docs/evidence/defaults_lodo.md."""
    if final == "paper":
        return "keep the paper defaults: on all families' validation no candidate beats them"
    if overall.low > 0:
        return f"change the default to {final}: its held-out win's 95% CI excludes 0"
    return f"keep the paper defaults: {final} is chosen on validation but its held-out win's 95% CI includes 0"


def report(rows: Sequence[Mapping[str, str]]) -> str:
    from mmbalance.bench.stats import mean_ci
    val, test = table(rows, "val_accuracy"), table(rows, "test_accuracy")
    families = sorted({f for f, _, _ in DATASETS.values()})
    fmt = lambda i: f"{i.mean:+.2f} [{i.low:+.2f}, {i.high:+.2f}]"  # noqa: E731
    out = ["Per family: gain over paper in points, mean [95% CI] over seeds (validation | test)", "",
           "| family | seeds | " + " | ".join(f"{c} val | {c} test" for c in list(CANDIDATES)[1:] + [REFERENCE]) + " |",
           "|---|---|" + "---|---|" * (len(CANDIDATES))]
    for f in families:
        cells = []
        for config in [CANDIDATES[c] for c in list(CANDIDATES)[1:]] + [REFERENCE]:
            cells += [fmt(mean_ci(gains(val, f, config))), fmt(mean_ci(gains(test, f, config)))]
        out.append(f"| {f} | {len(gains(test, f, REFERENCE))} | " + " | ".join(cells) + " |")
    folds, overall, final = lodo(rows)
    out += ["", "LODO: held out -> chosen on the others' validation (scores: mean validation gain over paper) "
            "-> held-out test win over paper", "",
            "| held out | chosen | scores (paper / unimodal_start / tuned) | held-out test win [95% CI over seeds] |",
            "|---|---|---|---|"]
    for fo in folds:
        s = " / ".join(f"{fo.scores[c]:+.2f}" for c in CANDIDATES)
        out.append(f"| {fo.held_out} | {fo.chosen} | {s} | {fmt(fo.win) if fo.chosen != 'paper' else '0 (paper)'} |")
    out += ["", f"Mean held-out win over the {len(folds)} folds: {fmt(overall)} (95% t-interval over folds)",
            f"Chosen on all families' validation: {final}", f"Decision: {decide(overall, final)}", "",
            "Descriptive, not part of the rule: each candidate imposed on every family, test gain over paper, "
            "mean over families [95% t over families]"]
    for cand in list(CANDIDATES)[1:]:
        per = [statistics.fmean(gains(test, f, CANDIDATES[cand])) for f in families]
        out.append(f"- {cand}: {fmt(mean_ci(per))}; positive on {sum(g > 0 for g in per)} of {len(per)} families")
    return "\n".join(out)


# --------------------------------------------------------------------------- plots
def plot_by_panel(rows: Sequence[Mapping[str, str]], datasets: Sequence[str], folder: Path) -> None:
    """One figure per hyperparameter (validation and test side by side), one line per data
    set: its mean accuracy at each value minus its mean at the default (points)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    folder.mkdir(parents=True, exist_ok=True)
    for panel in ms.PANELS:
        fig, axes = plt.subplots(1, 2, figsize=(13, 4.6), sharey=True)
        for ax, metric in zip(axes, ("val_accuracy", "test_accuracy")):
            for i, d in enumerate(datasets):
                pts = ms.aggregate(rows, d, panel, metric)
                base = [p.mean for p in pts if p.is_default]
                if not pts or not base:
                    continue
                xs = list(range(len(pts))) if panel == "init" else [p.value for p in pts]
                n = max(p.n for p in pts)
                ax.plot(xs, [p.mean - base[0] for p in pts], "o-", color=f"C{i % 10}", label=f"{d} (n={n})")
            ax.axhline(0, color="0.3", linewidth=0.8)
            if panel == "init":
                ax.set_xticks([0, 1], ["scratch", "unimodal"])
            else:
                ax.set_xscale("log")
            ax.set_title(("VALIDATION" if metric == "val_accuracy" else "TEST") + " accuracy")
            ax.set_xlabel(f"method.{panel}" + ("" if panel == "init" else " (log scale)"))
            ax.grid(alpha=0.3)
        axes[0].set_ylabel("mean accuracy minus the default's (points)")
        fig.legend(*axes[0].get_legend_handles_labels(), fontsize=8, loc="center right")
        fig.suptitle(f"MCR: {panel} over its range, the others at the paper defaults; one line per data set, mean "
                     "over n seeds; descriptive, nothing chosen from it\n(synthetic, mfeat: data seed 0, "
                     "docs/evidence/mcr_sensitivity; the others: a new split per seed, docs/evidence/defaults_lodo)",
                     fontsize=9)
        fig.tight_layout(rect=(0, 0, 0.84, 1))
        fig.savefig(folder / f"sensitivity_{panel}.png", dpi=110)
        plt.close(fig)


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--phase", choices=("lodo", "sensitivity"))
    p.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--csv", type=Path, default=Path("docs/evidence/defaults_lodo/runs.csv"))
    p.add_argument("--old-csv", type=Path, default=Path("docs/evidence/mcr_sensitivity/results.csv"),
                   help="the earlier sensitivity runs (synthetic, mfeat at data seed 0), drawn beside")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/lodo_defaults"))
    p.add_argument("--report", action="store_true")
    p.add_argument("--plots", type=Path, default=None)
    p.add_argument("--limit", type=int, default=0, help="run at most this many jobs (timing)")
    args = p.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from mmbalance.data.packaged import write_npz
    for name in NEW:
        if name in args.datasets and not (DATA / f"{name}.npz").exists():
            write_npz(name, DATA)
    failed = 0
    if args.phase:
        configs = all_configs()
        jobs = make_jobs(args.phase, configs, args.datasets)
        todo = ms.pending(jobs, ms.read_rows(args.csv))
        print(f"{len(jobs)} runs, {len(jobs) - len(todo)} already in {args.csv}, {len(todo)} to run"
              + (f" (at most {args.limit} now)" if args.limit else ""), flush=True)
        todo = todo[:args.limit] if args.limit else todo
        failed = ms.run_all(todo, args.csv, args.workers, args.workdir, args.workdir / "stage_cache",
                            runner=run_job) if todo else 0
    rows = ms.read_rows(args.csv)
    if args.report:
        print(report(rows))
    if args.plots:
        old = ms.read_rows(args.old_csv)  # synthetic and the two mfeat pairs, data seed 0
        names = sorted({r["dataset"] for r in old}) + [d for d in DATASETS if d in NEW]
        ours = [r for r in rows if r["dataset"] in NEW and int(r["seed"]) in SENSITIVITY_SEEDS]
        plot_by_panel(old + ours, names, args.plots)
        for metric in ("val_accuracy", "test_accuracy"):  # the new data sets, seeds 0-1 only
            print(f"\n{metric} (%), mean over seeds {SENSITIVITY_SEEDS}:\n" + ms.summary_table(ours, NEW, metric))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
