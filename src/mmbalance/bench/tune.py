"""``mmbalance tune``: Optuna search over a method's declared search space.

Each method declares what to tune next to its code (``Method.search_space(trial, lr)``,
dotted override keys; the learning rate is searched around the configured ``optim.lr``);
the objective is one training run's validation metric. The study lives in SQLite by
default (``OUT/optuna.db``); any SQLAlchemy URL (PostgreSQL) lets processes on several
machines work on one study. The best configuration is written as ``OUT/<name>.yaml``,
ready for ``mmbalance train --config``.

Budget: ``--trials N`` is the number of finished trials the *study* should hold, over
all its workers (like Optuna's ``MaxTrialsCallback``; not ``n_trials``, which counts one
process's trials). The study stores it, every worker claims a trial before it runs one,
and exactly one worker writes the final configuration, once: :mod:`.tune_study` says how.

Pruning: each trial reports its validation metric after every epoch through Optuna's
Lightning callback (``optuna-integration``), and a median pruner (:func:`default_pruner`)
stops a trial whose value falls below the median of the earlier trials at the same epoch.
A pruned trial has no value, so it is never selected; selection uses the validation split
only.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import yaml

from ..errors import ConfigError, DataError, NonFiniteLossError
from .tune_progress import TrialReport, above_bar, stderr_is_terminal
from .tune_study import (BUDGET_KEY, StudyAttrs, TrialClaims, _optuna, default_storage, file_lock, join_budget,
                         open_storage, shown_url)  # noqa: F401 (shown_url: part of this module's interface)

FINISHED_STATES = ("COMPLETE", "FAIL", "PRUNED")
#: the median pruner's settings (see :func:`default_pruner`)
PRUNER_STARTUP_TRIALS, PRUNER_WARMUP_EPOCHS, PRUNER_MIN_TRIALS = 5, 2, 3


@dataclass
class TuneResult:
    """The outcome of one ``tune`` call."""

    name: str
    best_value: float
    best_params: Dict[str, Any]
    best_trial: int
    finished_trials: int
    ran_trials: List[int] = field(default_factory=list)
    config_path: Optional[Path] = None
    states: Dict[str, int] = field(default_factory=dict)  # study-wide: COMPLETE, PRUNED, FAIL, RUNNING
    running_elsewhere: List[int] = field(default_factory=list)  # trials other workers still run (or claimed)
    config_written: bool = True  # False: the file already held this configuration, or another worker wrote it
    budget: Optional[int] = None  # the study's trial budget (None: a study tuned before budgets were stored)
    final: bool = False  # the study's budget is finished: the configuration is final
    final_by: Optional[str] = None  # the worker that wrote the final file ("host pid N"), this one or another

    @property
    def pruned_trials(self) -> int:
        return self.states.get("PRUNED", 0)

    def counts(self) -> str:
        """"4 complete, 1 pruned, 0 failed"."""
        return ", ".join(f"{self.states.get(s, 0)} {w}" for s, w in
                         (("COMPLETE", "complete"), ("PRUNED", "pruned"), ("FAIL", "failed")))


def default_pruner():
    """Optuna's median pruner as ``tune`` uses it: a trial is stopped after an epoch whose
    validation metric is worse than the median of the other trials' values at that epoch.

    - ``n_startup_trials=5``: nothing is pruned until 5 trials have completed (the median of
      fewer is noise, and TPE needs complete trials to learn from);
    - ``n_warmup_steps=2``: epochs are steps 0, 1, ...; no trial is judged before its third
      epoch, since a small learning rate looks worse early than it ends;
    - ``n_min_trials=3``: an epoch is judged only when at least 3 trials reported a value
      there (early stopping leaves few trials at late epochs).
    """
    return _optuna().pruners.MedianPruner(n_startup_trials=PRUNER_STARTUP_TRIALS,
                                          n_warmup_steps=PRUNER_WARMUP_EPOCHS, n_min_trials=PRUNER_MIN_TRIALS)


def _pruning_callback_class():
    """Optuna's Lightning pruning callback (``optuna-integration``): reports the monitored
    validation metric after every validation epoch of ``fit`` and raises ``TrialPruned``
    when the pruner says so. The validation of the best checkpoint after ``fit`` (which
    gives the trial's value) is not an epoch: it is neither reported nor judged."""
    _optuna()
    try:
        from optuna_integration import PyTorchLightningPruningCallback
    except ImportError:
        raise ConfigError("pruning needs optuna-integration: pip install 'mmbalance[tune]' "
                          "(or tune without pruning: --no-prune)") from None

    class EpochPruning(PyTorchLightningPruningCallback):
        def on_validation_end(self, trainer, pl_module) -> None:
            if trainer.state.fn == "fit":
                super().on_validation_end(trainer, pl_module)

    return EpochPruning


def nested(overrides: Mapping[str, Any]) -> Dict[str, Any]:
    """Dotted keys -> the sectioned mapping that ``--config`` reads."""
    tree: Dict[str, Any] = {}
    for key, value in overrides.items():
        section, dot, name = key.partition(".")
        if dot:
            tree.setdefault(section, {})[name] = value
        else:
            tree[key] = value
    return tree


def tune(method: str, data_spec: str, base: Mapping[str, Any], trials: int, out: str | Path, *,
         storage: Optional[str] = None, name: Optional[str] = None, study_name: Optional[str] = None,
         metric: Optional[str] = None, sampler_seed: Optional[int] = None,
         keep_checkpoints: bool = False, pruner: Any = "median", progress_bar: Optional[bool] = None,
         log: Callable[[str], None] = print) -> TuneResult:
    """Tunes ``method`` until its study holds ``trials`` finished trials and writes the best
    configuration (the final one exactly once among the study's workers: see the module's
    docstring).

    Args:
        method: registered method name.
        data_spec: as for ``mmbalance train --data``.
        base: fixed dotted overrides (``--config`` and ``--set``); the search space adds to them.
        trials: the study's budget: the finished trials it should hold, counted over every
            worker; the larger of this and the stored budget holds. 0: run nothing, write
            the file from the study as it stands.
        out: directory of ``<name>.yaml``, ``<name>.json``, the trial runs and the default storage.
        storage: SQLAlchemy URL; default SQLite in ``out``.
        name: label of the output files and default study name (default ``method``).
        metric: validation metric to optimise (default ``trainer.monitor``).
        sampler_seed: TPE seed (leave None when several workers share a study).
        pruner: ``"median"`` (:func:`default_pruner`), ``None`` (no pruning) or an Optuna pruner.
        progress_bar: Optuna's progress bar (True) or one ``log`` line per trial with an ETA
            (False); default: the bar when stderr is a terminal. Either way each trial's
            result is logged.
    """
    optuna = _optuna()  # before anything is written: a missing extra fails at once
    from ..config import build_config
    from ..methods import get_method
    from ..training.run import MINIMISED, atomic_write_text
    cls = get_method(method)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    name, base = name or method, dict(base)
    metric = metric or build_config(method, data_spec, base, cls.Hyperparameters).trainer.monitor
    if pruner == "median":
        pruner = default_pruner()
    callback_class = _pruning_callback_class() if pruner is not None else None
    study, attrs = _open_study(storage or default_storage(out), study_name or name, metric in MINIMISED,
                               sampler_seed, {"method": method, "data": data_spec, "base": base, "metric": metric},
                               pruner or optuna.pruners.NopPruner())
    claims = TrialClaims(study, attrs)
    ran: List[int] = []
    if trials > 0:
        budget = join_budget(attrs, trials, lambda line: log(f"{name} study {study.study_name!r}: {line}"))
        if claims.claim():
            bar = stderr_is_terminal() if progress_bar is None else progress_bar
            emit = above_bar(log) if bar else log
            objective = _objective(cls, data_spec, base, metric, out / "trials" / study.study_name, ran,
                                   keep_checkpoints, callback_class)
            report = TrialReport(budget, metric, lambda line: emit(f"{name} {line}"), eta=not bar)

            def claim_next(study, trial) -> None:  # after each trial: the next one, or stop
                if not claims.claim():
                    study.stop()

            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    study.optimize(objective, n_trials=max(1, budget - len(study.get_trials(deepcopy=False))),
                                   catch=(NonFiniteLossError,), callbacks=[report, claim_next],
                                   show_progress_bar=bar)
            finally:  # a claim this process made but no trial of it used (the loop ended first)
                claims.release(claims.made - len(ran))
    with file_lock(out / f".{name}.lock"):  # one writer at a time, each from a fresh read of the study
        return _write_best(study, name, method, data_spec, base, metric, out, ran, atomic_write_text, claims,
                           claim_final=trials > 0)


def _open_study(url: str, study_name: str, minimise: bool, sampler_seed: Optional[int], identity: Dict[str, Any],
                pruner=None):
    """The study (created or joined) and its :class:`StudyAttrs`."""
    optuna = _optuna()
    storage = open_storage(url)
    study = optuna.create_study(storage=storage, study_name=study_name, load_if_exists=True,
                                direction="minimize" if minimise else "maximize", pruner=pruner)
    _check_identity(study, identity)
    # Seeded by the trials already done, so that a resumed study does not replay its proposals.
    study.sampler = optuna.samplers.TPESampler(seed=None if sampler_seed is None else sampler_seed + _finished(study))
    return study, StudyAttrs(storage, storage.get_study_id_from_name(study.study_name))


def _objective(cls, data_spec: str, base: Dict[str, Any], metric: str, trial_root: Path, ran: List[int],
               keep_checkpoints: bool, callback_class=None) -> Callable:
    """One trial: the method's search space on top of ``base``, one training run, its
    validation ``metric`` (reported after every epoch to the pruner when ``callback_class``,
    the Lightning pruning callback, is given)."""
    from ..config import build_config
    optuna = _optuna()
    configured_lr = build_config(cls.name, data_spec, dict(base), cls.Hyperparameters).optim.lr  # the range's centre

    def objective(trial) -> float:
        ran.append(trial.number)  # first: the trial exists (it used this worker's claim), whatever follows
        space = cls.search_space(trial, configured_lr)
        trial.set_user_attr("overrides", space)
        cfg = build_config(cls.name, data_spec, {**base, **space}, cls.Hyperparameters)
        cfg.trainer.progress = False
        if cls.name == "unimodal":  # a trial is not entered into the stage cache: its checkpoints go
            cfg.trainer.stage_cache = None
        run_dir = trial_root / f"trial_{trial.number:04d}"
        if run_dir.exists():
            shutil.rmtree(run_dir)
        pruning = callback_class(trial, monitor=f"val/{metric}") if callback_class else None
        try:
            metrics = _train(cfg, run_dir, keep_checkpoints, [pruning] if pruning else [])
            if pruning is not None:
                pruning.check_pruned()  # under DDP the callback only flags the trial
        except optuna.TrialPruned:
            if run_dir.exists():  # the logs stay, for a look at where it was stopped
                trial.set_user_attr("run_dir", str(run_dir))
                if not keep_checkpoints:
                    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
            raise
        if metric not in metrics["val"]:
            raise ConfigError(f"metric {metric!r} is not a validation metric; valid: {', '.join(metrics['val'])}")
        value = float(metrics["val"][metric])
        trial.set_user_attr("run_dir", str(run_dir))
        trial.set_user_attr(f"test_{metric}", float(metrics["test"].get(metric, float("nan"))))
        return value

    return objective


def _train(cfg, run_dir: Path, keep_checkpoints: bool, callbacks: Sequence[Any] = ()) -> Dict[str, Any]:
    from ..training import train
    metrics = train(cfg, run_dir, callbacks=callbacks)
    if not keep_checkpoints:
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    return metrics


def _finished(study) -> int:
    return sum(1 for t in study.get_trials(deepcopy=False) if t.state.name in FINISHED_STATES)


def _check_identity(study, identity: Dict[str, Any]) -> None:
    """A study is tied to one method, data and base configuration: reusing its name for
    other settings would mix incomparable trials."""
    normal = json.loads(json.dumps(identity, sort_keys=True, default=str))
    stored = study.user_attrs.get("mmbalance")
    if stored is None:
        study.set_user_attr("mmbalance", normal)
    elif stored != normal:
        diff = sorted(k for k in normal if stored.get(k) != normal[k])
        raise ConfigError(f"study {study.study_name!r} was tuned with other {', '.join(diff)} "
                          f"({stored}); use another --study-name or --out")


def _write_best(study, name: str, method: str, data_spec: str, base: Dict[str, Any], metric: str, out: Path,
                ran: List[int], write: Callable, claims: TrialClaims, claim_final: bool = True) -> TuneResult:
    """Writes ``<name>.yaml`` and ``<name>.json`` from the study as it stands now (a file that
    already holds the same text is left alone).

    When all the trials of the study's budget have finished, the configuration is final:
    with ``claim_final`` only the worker that wins the study's final-write claim writes it
    (exactly one, since the claim is atomic; the others write nothing), without (``--trials
    0``) it is written again on request. Before that, the file is provisional, which its
    header says: trials of other workers are running or claimed, and the worker that
    finishes the last one writes the final file. A study without a stored budget (tuned
    before budgets were) is final when no trial runs."""
    optuna = _optuna()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)  # a killed worker's trial is not "running"
    trials = study.get_trials(deepcopy=False)
    states = {s: sum(t.state.name == s for t in trials) for s in ("COMPLETE", "PRUNED", "FAIL", "RUNNING")}
    budget = claims.attrs.get(BUDGET_KEY)  # read now: another worker may have raised it
    running = sorted(t.number for t in trials if t.state.name == "RUNNING")
    running += claims.pending(len(trials))  # claimed by workers about to ask for them
    try:
        best = study.best_trial
    except ValueError:
        raise DataError(f"study {study.study_name!r} has no completed trial to take a configuration from "
                        f"({states['PRUNED']} pruned, {states['FAIL']} failed, {states['RUNNING']} running)") from None
    finished = sum(states[s] for s in ("COMPLETE", "PRUNED", "FAIL"))
    final = not running and (budget is None or finished >= budget)
    params = best.user_attrs.get("overrides", best.params)
    path = out / f"{name}.yaml"
    result = TuneResult(name, float(best.value), dict(params), best.number, finished, ran, path, states, running,
                        False, budget, final)
    if final and budget is not None and claim_final:
        won, claim = claims.claim_final(budget, {"worker": f"{socket.gethostname()} pid {os.getpid()}",
                                                 "trials": finished, "best_trial": best.number, "file": str(path)})
        result.final_by = claim.get("worker")
        if not won:  # another worker writes (or wrote) the final file
            return result
    header = (f"# mmbalance tune: best of {finished} finished trials ({states['COMPLETE']} complete, "
              f"{states['PRUNED']} pruned, {states['FAIL']} failed) of study {study.study_name!r}"
              f"{'' if budget is None else f' (budget {budget})'}\n"
              f"# method {method}, data {data_spec}, val {metric} = {best.value:.6g} (trial {best.number})\n"
              f"# use: mmbalance train --data {data_spec} --method {method} --config {path}\n")
    if not final:
        header += (f"# provisional: {finished} of the study's {budget} trials have finished"
                   f"{f'; trials {running} run in other workers' if running else ''}; the worker that "
                   f"finishes the last one writes the final file\n" if budget is not None else
                   f"# provisional: trials {running} were still running in other workers\n")
    info = {"method": method, "data": data_spec, "study": study.study_name, "metric": metric,
            "direction": study.direction.name.lower(), "best_value": best.value, "best_trial": best.number,
            "params": params, "trials": finished, "complete": states["COMPLETE"], "pruned": states["PRUNED"],
            "failed": states["FAIL"], "running": running, "budget": budget, "final": final}
    for target, text in ((path, header + yaml.safe_dump(nested({**base, **params}), sort_keys=True)),
                         (out / f"{name}.json", json.dumps(info, indent=2, default=str))):
        if not target.exists() or target.read_text() != text:
            write(target, text)
            result.config_written = True
    return result


@dataclass(frozen=True)
class TuneTask:
    """One method's tuning, as ``bench synthetic --trials-per-method`` schedules it."""

    method: str
    name: str
    base: tuple  # sorted (key, value) pairs
    trials: int
    out: str
    data_spec: str = "synthetic"
    sampler_seed: Optional[int] = 0


def _run_task(task: TuneTask) -> TuneResult:
    return tune(task.method, task.data_spec, dict(task.base), task.trials, task.out, name=task.name,
                sampler_seed=task.sampler_seed, progress_bar=False,  # workers share the terminal
                log=lambda line: print(line, flush=True))


def run_tasks(tasks: List[TuneTask], workers: int = 1) -> List[TuneResult]:
    """Tunes each task up to its number of finished trials (resumable), ``workers`` methods
    at a time in separate processes; each task has its own study, so budgets stay exact."""
    if workers <= 1 or len(tasks) <= 1:
        return [_run_task(t) for t in tasks]
    import multiprocessing
    import os
    from concurrent.futures import ProcessPoolExecutor
    from .runner import _init_worker
    threads = max(1, (os.cpu_count() or 1) // workers)
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_init_worker, initargs=(threads, os.getpid())) as pool:
        return list(pool.map(_run_task, tasks))
