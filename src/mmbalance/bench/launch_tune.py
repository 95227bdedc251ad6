"""``mmbalance tune --launcher submitit --workers N``: N SLURM jobs, each running ``tune``'s
worker loop on one study; and ``--trials-per-method`` tuning as one job per method
(submitit: ``pip install 'mmbalance[slurm]'``).

The study's storage must be reachable from every node: a PostgreSQL URL (``--storage
postgresql+psycopg2://...``, the ``postgres`` extra). SQLite is refused for several SLURM
workers, since its locks are not reliable over NFS; on submitit's local executor (one
machine) the default SQLite file is used as ``tune`` uses it. The workers share the study's
budget exactly as workers started by hand do (:mod:`.tune_study`): the study gets
``--trials`` finished trials in all, and one worker writes the final ``<name>.yaml``.

A worker stopped by SLURM (time limit, preemption) is requeued and goes on with the study's
next trial; the trial it was running is marked failed by Optuna's heartbeat (after the
120 s grace period) and counts towards the budget, like a trial of a worker killed by hand.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

from ..errors import ConfigError, Interrupted
from .launch import (LaunchOptions, job_states, job_threads, log_paths, make_executor, parallel_jobs, setup_job,
                     short_error)


class TuneCall:
    """A job's function: ``tune(**kwargs)`` (one worker of the study), its :class:`TuneResult`.
    Checkpointable: a worker stopped by SLURM is requeued and rejoins the study."""

    def __init__(self, kwargs: Dict[str, Any], threads: Optional[int] = None) -> None:
        self.kwargs, self.threads = kwargs, threads

    def __call__(self):
        from .tune import tune
        setup_job(self.threads)
        try:
            return tune(**self.kwargs, progress_bar=False, log=lambda line: print(line, flush=True))
        except Interrupted as stop:  # SIGTERM: no result; SLURM requeues the job or the parent reports it
            raise SystemExit(128 + int(stop.signum)) from None

    def checkpoint(self, *args: Any, **kwargs: Any):
        from submitit.helpers import DelayedSubmission
        return DelayedSubmission(self, *args, **kwargs)


def tune_launched(args, base: Dict[str, Any], options: LaunchOptions) -> int:
    """``mmbalance tune --launcher submitit``: ``--workers`` jobs on the study, then the
    lines ``tune`` prints (from the worker results)."""
    kwargs = {"method": args.method, "data_spec": args.data, "base": dict(base), "trials": args.trials,
              "out": args.out, "storage": args.storage, "name": args.name, "study_name": args.study_name,
              "metric": args.metric, "sampler_seed": args.sampler_seed, "keep_checkpoints": args.keep_checkpoints,
              "pruner": None if args.no_prune else "median"}
    results = launch_tune_workers(kwargs, args.workers, options, log=lambda line: print(line, flush=True))
    done = [r for r in results if r is not None]
    if not done:
        print("every worker failed (see the lines above); rerun the same command to continue")
        return 1
    last = max(done, key=lambda r: (r.final, r.finished_trials))
    for i, r in enumerate(results, 1):
        if r is not None:
            print(f"worker {i} ran trials {r.ran_trials}")
    print(f"the study has {last.finished_trials} finished trials ({last.counts()})")
    print(f"best: val {last.best_value:.4f} (trial {last.best_trial}) {last.best_params}")
    writer = next((r.final_by for r in done if r.final_by), None)
    print(f"{'final' if last.final else 'provisional'}: {last.config_path}"
          + (f" (written by {writer})" if writer else ""))
    return 0 if len(done) == len(results) else 1


def check_storage(storage: Optional[str], workers: int, options: LaunchOptions) -> None:
    """Several SLURM workers need a storage every node reaches safely: not SQLite."""
    if workers > 1 and options.resolved_cluster() == "slurm" and (storage is None or storage.startswith("sqlite")):
        raise ConfigError("tune --launcher submitit --workers N needs --storage postgresql+psycopg2://USER@HOST/DB "
                          "(pip install 'mmbalance[postgres]'): SQLite's file locks are not reliable over NFS")


def launch_tune_workers(kwargs: Dict[str, Any], workers: int, options: LaunchOptions,
                        log: Callable[[str], None] = print) -> List[Any]:
    """Runs ``workers`` jobs of ``tune(**kwargs)`` on one study; returns their results
    (None for a worker that failed, which is logged with its log path)."""
    check_storage(kwargs.get("storage"), workers, options)
    out = Path(kwargs["out"])
    out.mkdir(parents=True, exist_ok=True)
    from .tune import _open_study, default_storage  # the study and its schema exist before the workers race
    from ..config import build_config
    from ..methods import get_method
    from ..training.run import MINIMISED
    cls = get_method(kwargs["method"])
    metric = kwargs.get("metric") or build_config(kwargs["method"], kwargs["data_spec"], dict(kwargs["base"]),
                                                  cls.Hyperparameters).trainer.monitor
    name = kwargs.get("name") or kwargs["method"]
    _open_study(kwargs.get("storage") or default_storage(out), kwargs.get("study_name") or name, metric in MINIMISED,
                kwargs.get("sampler_seed"), {"method": kwargs["method"], "data": kwargs["data_spec"],
                                             "base": dict(kwargs["base"]), "metric": metric})
    calls = [TuneCall(kwargs) for _ in range(workers)]
    return run_calls(calls, [f"worker {i + 1}" for i in range(workers)], out / "submitit", options, log,
                     name=f"tune-{name}")


def run_tune_tasks(tasks: Sequence[Any], options: LaunchOptions, log: Callable[[str], None] = print) -> List[Any]:
    """``--trials-per-method``: one job per :class:`~.tune.TuneTask`, each method's study in
    its own SQLite file (``<label>.optuna.db``), so that jobs on different nodes never share
    one SQLite file. Raises if a task failed (the comparison needs every method's tuning)."""
    calls = []
    for task in tasks:
        storage = f"sqlite:///{(Path(task.out) / f'{task.name}.optuna.db').resolve()}"
        calls.append(TuneCall({"method": task.method, "data_spec": task.data_spec, "base": dict(task.base),
                               "trials": task.trials, "out": task.out, "name": task.name,
                               "sampler_seed": task.sampler_seed, "storage": storage}))
    folder = Path(tasks[0].out) / "submitit" if tasks else Path("submitit")
    results = run_calls(calls, [t.name for t in tasks], folder, options, log, name="tune")
    failed = [t.name for t, r in zip(tasks, results) if r is None]
    if failed:
        raise ConfigError(f"tuning failed for {', '.join(failed)} (see the lines above); rerun to continue")
    return results


def run_calls(calls: Sequence[Any], labels: Sequence[str], folder: Path, options: LaunchOptions,
              log: Callable[[str], None], name: str = "mmbalance") -> List[Any]:
    """Submits each call as one job (an array on SLURM), waits, returns their results in
    order (None where a job failed: logged with its log path). Cancels them on Ctrl-C."""
    executor = make_executor(options, folder, name=name)
    local = options.resolved_cluster() == "local"
    parallel = parallel_jobs(options, len(calls))
    for call in calls:
        call.threads = job_threads(options, parallel)
    todo = list(range(len(calls)))
    active: Dict[Any, int] = {}
    results: List[Any] = [None] * len(calls)

    def submit(indices: List[int]) -> None:
        if local:
            handles = [executor.submit(calls[i]) for i in indices]
        else:
            with executor.batch():
                handles = [executor.submit(calls[i]) for i in indices]
        for i, handle in zip(indices, handles):
            if local:
                handle._results_timeout_s = 2
            active[handle] = i

    first = todo[:parallel] if local else todo
    submit(first)
    log(f"submitted {len(first)} job(s) ({'on this machine' if local else 'SLURM'}); logs in {folder}")
    rest, shown, start = todo[len(first):], None, time.perf_counter()
    try:
        while active:
            for handle in [h for h in active if h.done()]:
                i = active.pop(handle)
                try:
                    results[i] = handle.result()
                    log(f"{labels[i]} (job {handle.job_id}) done ({time.perf_counter() - start:.0f} s)")
                except Exception as exc:
                    log(f"{labels[i]} (job {handle.job_id}) FAILED: {short_error(exc)} (log: {log_paths(handle)})")
                if rest:
                    submit([rest.pop(0)])
            counts = job_states(active)
            if active and counts != shown:
                log(f"jobs: {counts['running']} running, {counts['waiting']} waiting")
                shown = counts
            if active:
                time.sleep(1.0)
    except BaseException:
        for handle in active:
            try:
                handle.cancel(check=False)
            except Exception:
                pass
        raise
    return results

