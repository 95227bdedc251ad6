"""The machinery every benchmark shares: methods as table rows, one job per training run,
and a resumable, parallel runner that appends one row per finished run to ``results.csv``.

``bench synthetic`` (:mod:`mmbalance.bench.synthetic`) and ``bench compare``
(:mod:`mmbalance.bench.compare`) differ only in the jobs they make. Resumable: each finished
run becomes one row of ``results.csv`` (see :mod:`mmbalance.bench.results`); a rerun skips the
runs already there, and a run whose ``metrics.json`` was written before the sweep died is
recorded without training again.
"""

from __future__ import annotations

import contextlib
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

import yaml

from ..errors import ConfigError, did_you_mean
from .results import ResultsFile

#: overrides that do not change what a run learns, left out of its fingerprint
_NOT_SHAPING = ("trainer.stage_cache",)


@dataclass(frozen=True)
class Variant:
    """One row of the results table: a method, possibly with fixed options (for example
    ``unimodal`` on one modality)."""

    label: str
    method: str
    fixed: Tuple[Tuple[str, Any], ...] = ()


def method_variants(selected: Optional[Sequence[str]] = None,
                    modalities: Sequence[str] = ("x1", "x2")) -> List[Variant]:
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
    chosen = [v for v in variants if v.label in wanted or v.method in wanted]
    for item in wanted:
        if item in known:
            continue
        name, sep, options = item.partition(":")
        if not sep or name not in REGISTRY:
            raise ConfigError(f"unknown method {item!r}; {did_you_mean(item, known)}valid: {', '.join(sorted(known))}, "
                              "or NAME:key=value[:key=value] (e.g. mcr:init=unimodal)")
        chosen.append(Variant(item, name, tuple(_option(item, o) for o in options.split(":"))))
    return chosen


def _option(item: str, text: str) -> Tuple[str, Any]:
    """``key=value`` of a variant label -> ``("method.key", value)`` (value read as YAML)."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ConfigError(f"method variant {item!r}: {text!r} is not key=value")
    return f"method.{key}", yaml.safe_load(value)


@dataclass(frozen=True)
class Job:
    """One training run of a benchmark.

    Attributes:
        cell: the setting's coordinates, e.g. ``(("shared", 0.8), ("unique1", 0.1), ("unique2", 0.1))``
            on the synthetic grid; ``()`` where there is one setting (``bench compare``).
        cell_id: the setting's part of ``run_id`` (``S0.8_U10.1_U20.1``), ``""`` for none.
    """

    variant: Variant
    seed: int
    overrides: Tuple[Tuple[str, Any], ...]
    tuning_trials: int = 0
    data_spec: str = "synthetic"
    cell: Tuple[Tuple[str, float], ...] = ()
    cell_id: str = ""

    def _coordinate(self, name: str) -> Optional[float]:
        return dict(self.cell).get(name)

    shared = property(lambda self: self._coordinate("shared"))
    unique1 = property(lambda self: self._coordinate("unique1"))
    unique2 = property(lambda self: self._coordinate("unique2"))

    @property
    def ratio(self) -> Optional[float]:
        if self.shared is None or self.unique1 is None:
            return None
        return self.unique1 / self.shared if self.shared > 0 else math.inf

    @property
    def run_id(self) -> str:
        return "__".join(p for p in (self.variant.label, self.cell_id, f"seed{self.seed}") if p)

    @property
    def fingerprint(self) -> str:
        """Changes whenever anything that shapes the run changes."""
        shaping = sorted((k, v) for k, v in self.overrides if k not in _NOT_SHAPING)
        parts = [self.variant.method, shaping] + ([self.data_spec] if self.data_spec != "synthetic" else [])
        key = json.dumps(parts, sort_keys=True, default=str)
        return hashlib.sha1(key.encode()).hexdigest()[:12]


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
    """Trains one job into ``run_dir`` and returns its ``results.csv`` row. A folder that
    holds a checkpoint of this job (a launched job stopped by SLURM and started again) is
    resumed from it; the local pool starts each run in a clean folder."""
    from ..config import build_config
    from ..methods import get_method
    from ..training import train
    from .scores import run_scores
    cfg = build_config(job.variant.method, job.data_spec, dict(job.overrides),
                       get_method(job.variant.method).Hyperparameters)
    metrics = train(cfg, run_dir, resume=resumable(run_dir))
    return row_from_metrics(job, metrics, run_scores(run_dir))


def resumable(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds a run to continue: its ``last.ckpt``, or finished stages."""
    from ..engine import RunDir
    folder = RunDir(run_dir)
    return folder.last_checkpoint.exists() or folder.stages.is_dir()


def row_from_metrics(job: Job, metrics: Mapping[str, Any], scores: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """The ``results.csv`` row of a finished run (``scores``: :func:`mmbalance.bench.scores.run_scores`)."""
    from .scores import row_scores
    config = metrics.get("config", {})
    hp = {f"optim.{k}": config.get("optim", {}).get(k) for k in ("lr", "weight_decay")}
    hp.update({f"method.{k}": v for k, v in (config.get("method") or {}).items()})
    ratio = job.ratio
    return {"run_id": job.run_id, "method": job.variant.label, "base_method": job.variant.method,
            "shared": _blank(job.shared), "unique1": _blank(job.unique1), "unique2": _blank(job.unique2),
            "ratio": "" if ratio is None else round(ratio, 6),
            "seed": job.seed, "val_accuracy": float(metrics["val"]["accuracy"]),
            "test_accuracy": float(metrics["test"]["accuracy"]), "epochs_run": metrics.get("epochs_run", ""),
            "train_seconds": metrics.get("train_seconds", ""), "tuning_trials": job.tuning_trials,
            "fingerprint": job.fingerprint, "hyperparameters": json.dumps(hp, sort_keys=True, default=str),
            "data": job.data_spec, "probe": json.dumps(metrics["probe"], sort_keys=True) if metrics.get("probe") else "",
            **row_scores(metrics, scores)}


def _blank(value: Optional[float]) -> Any:
    return "" if value is None else value


@dataclass
class SweepOutcome:
    """What a sweep did: rows written now, runs skipped as already done, failures."""

    written: List[Dict[str, Any]] = field(default_factory=list)
    skipped: int = 0
    recovered: int = 0
    failed: List[Tuple[str, str]] = field(default_factory=list)


#: a finished run's report to the sweep: the job, its row (None: failed), the error, seconds
Done = Callable[[Job, Optional[Dict[str, Any]], str, float], None]
#: runs the jobs elsewhere (``--launcher submitit``: :mod:`.launch_sweep`), reporting each to ``done``
Launch = Callable[[Sequence[Job], Path, Runner, Done], None]


def run_sweep(jobs: Sequence[Job], out: str | Path, workers: int = 1, runner: Runner = run_job,
              log: Callable[[str], None] = print, launch: Optional[Launch] = None) -> SweepOutcome:
    """Runs the jobs not yet in ``out/results.csv``, appending one row per finished run.

    Args:
        jobs: from :func:`make_jobs`.
        out: the sweep directory (``results.csv``, ``runs/<run_id>/``).
        workers: parallel processes; 1 runs in this process. With ``launch``: how many
            jobs run at once (for the time left).
        runner: trains a job (tests pass a fake one).
        log: where progress lines go.
        launch: runs the jobs instead of this machine's processes (``--launcher submitit``).
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
        where = f"U1/S={job.ratio:<6.3g} " if job.ratio is not None else ""
        log(f"[{k}/{total}] {job.variant.label:<18s} {where}seed {job.seed}: {what}  "
            f"({seconds:.1f} s; elapsed {_clock(elapsed)}, left ~{_clock(eta)})")

    if launch is not None:
        launch(todo, out, runner, done)
    elif workers <= 1:
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
    if stamp.get("fingerprint") != job.fingerprint:
        return None
    from .scores import read_scores, run_scores
    scores = read_scores(run_dir)
    if scores is None:  # died between metrics.json and scores.json
        try:
            scores = run_scores(run_dir)
        except Exception:  # noqa: BLE001  (a row without its scores beats no row)
            scores = None
    return row_from_metrics(job, metrics, scores)


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
    with worker_pool(workers) as pool:
        futures = {pool.submit(_execute, runner, job, _prepare(out, job)): job for job in todo}
        for future in as_completed(futures):
            done(futures[future], *future.result())


@contextlib.contextmanager
def worker_pool(workers: int):
    """``workers`` spawned training processes (the sweep's, the demo's), each with its share
    of the cores as threads and quiet Lightning, ending with their parent. On any exception,
    Ctrl-C included, they are terminated at once instead of finishing their runs."""
    threads = max(1, (os.cpu_count() or 1) // workers)
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_init_worker, initargs=(threads, os.getpid()))
    try:
        yield pool
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
