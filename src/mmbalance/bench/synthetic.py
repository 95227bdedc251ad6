"""``mmbalance bench synthetic``: the competition sweep of paper Section 4.1 / Figure 1.

The ratio U1/S of the synthetic data (``data.unique1`` / ``data.shared``) moves from
S-dominated to U1-dominated with U2 = 0.1 fixed and S + U1 = 0.9, for every registered
method and several seeds. Fairness: every job of a sweep gets the same data size, epochs,
early-stopping rule and tuning budget (``SweepSettings.run_overrides``); a method's own
hyperparameters are its defaults, or the tuned ones (``--tuned``), tuned for every method
with the same number of trials (paper A.4).

Resumable: each finished run becomes one row of ``results.csv`` (see
:mod:`mmbalance.bench.results`); a rerun skips the runs already there, and a run whose
``metrics.json`` was written before the sweep died is recorded without training again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import math
import multiprocessing
import os
import shutil
import threading
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from ..errors import ConfigError
from .results import ResultsFile

#: (shared, unique1) points, S-dominated to U1-dominated; U1/S = 0.125, 0.5, 1, 2, 8.
DEFAULT_GRID: Tuple[Tuple[float, float], ...] = ((0.8, 0.1), (0.6, 0.3), (0.45, 0.45), (0.3, 0.6), (0.1, 0.8))
QUICK_GRID: Tuple[Tuple[float, float], ...] = ((0.8, 0.1), (0.45, 0.45), (0.1, 0.8))
#: Where ``--trials-per-method`` tunes: the paper's headline, most competitive setting.
TUNE_POINT = (0.1, 0.8)
SYNTHETIC_MODALITIES = ("x1", "x2")


@dataclass(frozen=True)
class SweepSettings:
    """What every run of a sweep shares: the grid, the seeds, the data size and the
    training budget (epochs and early stopping)."""

    grid: Tuple[Tuple[float, float], ...] = DEFAULT_GRID
    unique2: float = 0.1
    seeds: Tuple[int, ...] = (0, 1, 2)
    n: int = 6000
    max_epochs: int = 20
    patience: int = 5
    extra: Tuple[Tuple[str, Any], ...] = ()  # further overrides for every run (``--set``)

    def run_overrides(self, shared: float, unique1: float, seed: int) -> Dict[str, Any]:
        """The overrides of one grid cell; the seed draws both the data and the run."""
        return {**dict(self.extra), "seed": seed, "data.seed": seed, "data.n": self.n, "data.shared": shared,
                "data.unique1": unique1, "data.unique2": self.unique2, "trainer.max_epochs": self.max_epochs,
                "trainer.patience": self.patience, "trainer.progress": False}


DEFAULT_SETTINGS = SweepSettings()
QUICK_SETTINGS = SweepSettings(grid=QUICK_GRID, seeds=(0,), n=1500, max_epochs=6, patience=2)


@dataclass(frozen=True)
class Variant:
    """One row of the results table: a method, possibly with fixed options (for example
    ``unimodal`` on one modality)."""

    label: str
    method: str
    fixed: Tuple[Tuple[str, Any], ...] = ()


def method_variants(selected: Optional[Sequence[str]] = None,
                    modalities: Sequence[str] = SYNTHETIC_MODALITIES) -> List[Variant]:
    """Every registered method (or the ``selected`` ones, by method name or label). A method
    whose hyperparameters have a ``modality`` field runs once per modality (``unimodal-x1``)."""
    from ..methods import REGISTRY
    variants: List[Variant] = []
    for name, cls in REGISTRY.items():
        fields = {f.name for f in dataclasses.fields(cls.Hyperparameters)}
        if "modality" in fields:
            variants += [Variant(f"{name}-{m}", name, (("method.modality", m),)) for m in modalities]
        else:
            variants.append(Variant(name, name))
    if not selected:
        return variants
    wanted = [s.strip() for item in selected for s in item.split(",") if s.strip()]
    known = {v.label for v in variants} | {v.method for v in variants}
    unknown = [w for w in wanted if w not in known]
    if unknown:
        raise ConfigError(f"unknown method {unknown[0]!r}; valid: {', '.join(sorted(known))}")
    return [v for v in variants if v.label in wanted or v.method in wanted]


@dataclass(frozen=True)
class Job:
    """One training run of the sweep."""

    variant: Variant
    shared: float
    unique1: float
    unique2: float
    seed: int
    overrides: Tuple[Tuple[str, Any], ...]
    tuning_trials: int = 0

    @property
    def ratio(self) -> float:
        return self.unique1 / self.shared if self.shared > 0 else math.inf

    @property
    def run_id(self) -> str:
        return f"{self.variant.label}__S{self.shared:g}_U1{self.unique1:g}_U2{self.unique2:g}__seed{self.seed}"

    @property
    def fingerprint(self) -> str:
        """Changes whenever anything that shapes the run changes."""
        key = json.dumps([self.variant.method, sorted(self.overrides)], sort_keys=True, default=str)
        return hashlib.sha1(key.encode()).hexdigest()[:12]


def make_jobs(settings: SweepSettings, variants: Sequence[Variant],
              tuned: Optional[Mapping[str, Tuple[Dict[str, Any], int]]] = None) -> List[Job]:
    """The sweep's jobs, seed-major so that an interrupted sweep has whole seeds.

    Args:
        tuned: label -> (``optim.*``/``method.*`` overrides, trials spent), from :func:`load_tuned`.
    """
    jobs = []
    for seed in settings.seeds:
        for shared, unique1 in settings.grid:
            for v in variants:
                hp, trials = (tuned or {}).get(v.label, ({}, 0))
                overrides = {**hp, **dict(v.fixed), **settings.run_overrides(shared, unique1, seed)}
                jobs.append(Job(v, shared, unique1, settings.unique2, seed, tuple(sorted(overrides.items())),
                                trials))
    return jobs


def load_tuned(directory: str | Path, variants: Sequence[Variant]) -> Dict[str, Tuple[Dict[str, Any], int]]:
    """Reads ``DIR/<label>.yaml`` (written by ``mmbalance tune``) for every variant.

    Only ``optim.*`` and ``method.*`` keys are used: the sweep itself fixes data, epochs
    and early stopping for everyone. A missing file is an error, since a method without
    its tuning would not get the same budget as the others.
    """
    from ..config import load_yaml
    directory = Path(directory)
    missing = [v.label for v in variants if not (directory / f"{v.label}.yaml").exists()]
    if missing:
        raise ConfigError(f"--tuned {directory} has no config for {', '.join(missing)}; tune them with "
                          "`mmbalance tune --name LABEL` or leave them out with --methods")
    out = {}
    for v in variants:
        values = load_yaml(directory / f"{v.label}.yaml")
        kept = {k: val for k, val in values.items() if k.startswith(("optim.", "method."))}
        info = directory / f"{v.label}.json"
        trials = int(json.loads(info.read_text()).get("trials", 0)) if info.exists() else 0
        out[v.label] = (kept, trials)
    return out


# --------------------------------------------------------------------------- running
Runner = Callable[[Job, Path], Dict[str, Any]]


def run_job(job: Job, run_dir: Path) -> Dict[str, Any]:
    """Trains one job into ``run_dir`` and returns its ``results.csv`` row."""
    from ..config import build_config
    from ..methods import get_method
    from ..training import train
    cfg = build_config(job.variant.method, "synthetic", dict(job.overrides),
                       get_method(job.variant.method).Hyperparameters)
    return row_from_metrics(job, train(cfg, run_dir))


def row_from_metrics(job: Job, metrics: Mapping[str, Any]) -> Dict[str, Any]:
    """The ``results.csv`` row of a finished run."""
    config = metrics.get("config", {})
    hp = {f"optim.{k}": config.get("optim", {}).get(k) for k in ("lr", "weight_decay")}
    hp.update({f"method.{k}": v for k, v in (config.get("method") or {}).items()})
    return {"run_id": job.run_id, "method": job.variant.label, "base_method": job.variant.method,
            "shared": job.shared, "unique1": job.unique1, "unique2": job.unique2, "ratio": round(job.ratio, 6),
            "seed": job.seed, "val_accuracy": float(metrics["val"]["accuracy"]),
            "test_accuracy": float(metrics["test"]["accuracy"]), "epochs_run": metrics.get("epochs_run", ""),
            "train_seconds": metrics.get("train_seconds", ""), "tuning_trials": job.tuning_trials,
            "fingerprint": job.fingerprint, "hyperparameters": json.dumps(hp, sort_keys=True, default=str)}


@dataclass
class SweepOutcome:
    """What a sweep did: rows written now, runs skipped as already done, failures."""

    written: List[Dict[str, Any]] = field(default_factory=list)
    skipped: int = 0
    recovered: int = 0
    failed: List[Tuple[str, str]] = field(default_factory=list)


def run_sweep(jobs: Sequence[Job], out: str | Path, workers: int = 1, runner: Runner = run_job,
              log: Callable[[str], None] = print) -> SweepOutcome:
    """Runs the jobs not yet in ``out/results.csv``, appending one row per finished run.

    Args:
        jobs: from :func:`make_jobs`.
        out: the sweep directory (``results.csv``, ``runs/<run_id>/``).
        workers: parallel processes; 1 runs in this process.
        runner: trains a job (tests pass a fake one).
        log: where progress lines go.
    """
    out = Path(out)
    results = ResultsFile(out / "results.csv")
    outcome = SweepOutcome()
    todo = _pending(jobs, results, out, outcome, log)
    if not todo:
        return outcome
    start, total, busy = time.perf_counter(), len(todo), [0.0]

    def done(job: Job, row: Optional[Dict[str, Any]], error: str, seconds: float) -> None:
        if row is not None:
            results.append(row, unique="run_id")  # a second sweep on this directory may have it
            outcome.written.append(row)
        else:
            outcome.failed.append((job.run_id, error))
        k = len(outcome.written) + len(outcome.failed)
        elapsed = time.perf_counter() - start
        busy[0] += seconds
        eta = busy[0] / k * (total - k) / max(1, min(workers, total - k))
        what = (f"test {row['test_accuracy']:.4f}  val {row['val_accuracy']:.4f}" if row is not None
                else f"FAILED: {error}")
        log(f"[{k}/{total}] {job.variant.label:<18s} U1/S={job.ratio:<6.3g} seed {job.seed}: {what}  "
            f"({seconds:.1f} s; elapsed {_clock(elapsed)}, left ~{_clock(eta)})")

    if workers <= 1:
        for job in todo:
            done(job, *_execute(runner, job, _prepare(out, job)))
    else:
        _run_pool(todo, out, workers, runner, done)
    return outcome


def _pending(jobs: Sequence[Job], results: ResultsFile, out: Path, outcome: SweepOutcome,
             log: Callable[[str], None]) -> List[Job]:
    recorded = {r["run_id"]: r["fingerprint"] for r in results.rows()}
    clash = [j.run_id for j in jobs if j.run_id in recorded and recorded[j.run_id] != j.fingerprint]
    if clash:
        raise ConfigError(f"{results.path} holds {clash[0]} with other settings (epochs, data size or "
                          "hyperparameters); use another --out, or the settings it was made with")
    todo = []
    for job in jobs:
        if job.run_id in recorded:
            outcome.skipped += 1
        elif (row := _finished_row(out, job)) is not None:
            results.append(row, unique="run_id")
            outcome.recovered += 1
        else:
            todo.append(job)
    if outcome.skipped or outcome.recovered:
        log(f"{results.path}: {outcome.skipped} of {len(jobs)} runs already recorded"
            + (f", {outcome.recovered} recovered from finished run directories" if outcome.recovered else "")
            + f"; {len(todo)} to run")
    return todo


def _run_dir(out: Path, job: Job) -> Path:
    return out / "runs" / job.run_id


def _finished_row(out: Path, job: Job) -> Optional[Dict[str, Any]]:
    """The row of a run that finished (``metrics.json`` written) but was not recorded."""
    run_dir = _run_dir(out, job)
    try:
        stamp = json.loads((run_dir / "job.json").read_text())
        metrics = json.loads((run_dir / "metrics.json").read_text())
    except (OSError, ValueError):
        return None
    return row_from_metrics(job, metrics) if stamp.get("fingerprint") == job.fingerprint else None


def _prepare(out: Path, job: Job) -> Path:
    """A clean run directory (a run killed half-way starts again) stamped with the job."""
    run_dir = _run_dir(out, job)
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    stamp = {"run_id": job.run_id, "fingerprint": job.fingerprint, "method": job.variant.method,
             "overrides": dict(job.overrides)}
    (run_dir / "job.json").write_text(json.dumps(stamp, indent=2, default=str))
    return run_dir


def _execute(runner: Runner, job: Job, run_dir: Path) -> Tuple[Optional[Dict[str, Any]], str, float]:
    start = time.perf_counter()
    try:
        row = runner(job, run_dir)
    except Exception as exc:  # one failing method must not stop the sweep; it is reported
        return None, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}", \
            time.perf_counter() - start
    return row, "", time.perf_counter() - start


def _run_pool(todo: Sequence[Job], out: Path, workers: int, runner: Runner, done) -> None:
    threads = max(1, (os.cpu_count() or 1) // workers)
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_init_worker, initargs=(threads, os.getpid()))
    try:
        futures = {pool.submit(_execute, runner, job, _prepare(out, job)): job for job in todo}
        for future in as_completed(futures):
            done(futures[future], *future.result())
    except BaseException:
        for process in list((getattr(pool, "_processes", None) or {}).values()):
            process.terminate()  # our own workers: do not leave them training
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()


def _init_worker(threads: int, parent: int) -> None:
    import warnings
    importlib.import_module("lightning")  # configures its loggers on import; quiet them after
    import torch
    from ..training.quiet import quiet_lightning
    torch.set_num_threads(threads)
    quiet_lightning()
    warnings.filterwarnings("ignore")

    def watch() -> None:  # a killed sweep must not leave orphaned workers training
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"
