"""``bench compare`` / ``bench synthetic --launcher submitit``: one job per run (submitit:
``pip install 'mmbalance[slurm]'``).

The parent stamps each run folder (``runs/<run_id>/job.json``) as a local sweep does,
submits one job per run (a SLURM array: ``executor.batch()``; on submitit's local executor,
at most :func:`~.launch.parallel_jobs` at a time), waits, and hands every finished job's row
to the runner's ``done``: the same progress line, ``results.csv`` and ``summary.md`` as a
local sweep (its seconds are the job's, from submission to its end: queue wait, start and
training, so that the time left counts them). Each job trains into its run folder on the shared file system, exactly as a
local run does, and returns its row.

Stopped jobs lose at most an epoch (``last.ckpt`` is written at every epoch end and every
``trainer.checkpoint_every_minutes``):

- time limit (and clusters that signal preemption with USR2): SLURM sends USR2 90 s before
  the end; the run writes ``last.ckpt`` at its next batch end, and submitit's
  checkpoint-and-requeue puts the same job back in the queue (:meth:`SweepCall.checkpoint`),
  which resumes from that ``last.ckpt``;
- preemption by SIGTERM: the run writes ``last.ckpt`` at its next batch end and exits
  without a result; SLURM requeues it (``PreemptMode=REQUEUE``) and it resumes, or it ends
  and is reported failed;
- a job that dies (killed, out of memory, node failure) is reported with its log path; the
  next call of the same command resubmits it, and it resumes from its folder's ``last.ckpt``
  (a folder stamped with the same fingerprint is kept, not cleaned).
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from ..errors import Interrupted
from .launch import (LaunchOptions, job_states, job_threads, log_paths, make_executor, parallel_jobs, setup_job,
                     short_error)
from .runner import Done, Job, Runner, SweepOutcome, _prepare, _run_dir, resumable, run_job, run_sweep

#: seconds between two looks at the jobs (the scheduler itself is asked at most once a minute by submitit)
POLL_S = 1.0
#: a job left PREEMPTED this long (``PreemptMode=CANCEL``: never requeued) is reported failed
PREEMPTED_S = 600.0


class SweepCall:
    """A job's function: trains one run into its folder (resuming from its ``last.ckpt``),
    returns ``(row, error, seconds)`` like the local pool's workers. Checkpointable: when
    SLURM's USR2 comes, the training writes ``last.ckpt`` at its next batch end, then
    submitit requeues the same call, which resumes from it."""

    def __init__(self, runner: Runner = run_job, threads: Optional[int] = None) -> None:
        self.runner, self.threads = runner, threads

    def __call__(self, job: Job, run_dir: str) -> Tuple[Optional[Dict[str, Any]], str, float]:
        from ..training.checkpoints import STATE
        setup_job(self.threads)
        submitit_handler = signal.getsignal(signal.SIGUSR2)  # submitit's checkpoint-and-requeue

        def on_usr2(signum, frame) -> None:
            if STATE.depth > 0 and STATE.signum is None:
                STATE.signum = signum  # the training loop writes last.ckpt, then raises Interrupted
            elif callable(submitit_handler):
                submitit_handler(signum, frame)

        signal.signal(signal.SIGUSR2, on_usr2)
        start = time.perf_counter()
        try:
            row = self.runner(job, Path(run_dir))
        except Interrupted as stop:
            if stop.signum == signal.SIGUSR2 and callable(submitit_handler):
                submitit_handler(signal.SIGUSR2, None)  # checkpoint() below, requeue, exit
            raise SystemExit(128 + int(stop.signum)) from None  # no result: requeued, or reported failed
        except Exception as exc:  # reported in the sweep's table of failures, like a local run's
            return None, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}", \
                time.perf_counter() - start
        return row, "", time.perf_counter() - start

    def checkpoint(self, *args: Any, **kwargs: Any):
        """The same run again: it resumes from the ``last.ckpt`` its folder now holds."""
        from submitit.helpers import DelayedSubmission
        return DelayedSubmission(self, *args, **kwargs)


def run_sweep_launched(jobs: Sequence[Job], out: str | Path, options: LaunchOptions, runner: Runner = run_job,
                       log: Callable[[str], None] = print) -> SweepOutcome:
    """:func:`~.runner.run_sweep` with one submitit job per run (``options``)."""
    def launch(todo: Sequence[Job], folder: Path, run: Runner, done: Done) -> None:
        launch_jobs(todo, folder, run, done, options, log)

    return run_sweep(jobs, out, workers=parallel_jobs(options, len(jobs)), runner=runner, log=log, launch=launch)


def prepare(out: Path, job: Job) -> Tuple[Path, bool]:
    """The job's run folder: kept when it holds a checkpoint of this very job (same
    fingerprint), so that a resubmitted job resumes; else clean and stamped."""
    run_dir = _run_dir(out, job)
    try:
        stamp = json.loads((run_dir / "job.json").read_text())
    except (OSError, ValueError):
        stamp = {}
    if stamp.get("fingerprint") == job.fingerprint and resumable(run_dir):
        return run_dir, True
    return _prepare(out, job), False


def launch_jobs(todo: Sequence[Job], out: Path, runner: Runner, done: Done, options: LaunchOptions,
                log: Callable[[str], None] = print) -> None:
    """Submits ``todo`` (one job each), reports each to ``done`` as it ends; on any
    exception (Ctrl-C included) cancels the jobs still queued or running."""
    executor = make_executor(options, out / "submitit", name=f"mmbalance-{out.name}")
    local = options.resolved_cluster() == "local"
    parallel = parallel_jobs(options, len(todo))
    call = SweepCall(runner, threads=job_threads(options, parallel))
    folders: Dict[str, Path] = {}
    resumed, queue, active = [], [], {}  # active: job handle -> (job, submitted at)
    for job in todo:
        handle = None if local else _still_queued(out, job, executor)
        if handle is not None:  # an earlier call's job, queued or running: wait for it, do not submit twice
            active[handle] = (job, time.time())
            continue
        folders[job.run_id], kept = prepare(out, job)
        queue.append(job)
        if kept:
            resumed.append(job.run_id)
    if active:
        log(f"{len(active)} run(s) still queued or running from an earlier call: waiting for them")
    if resumed:
        log(f"{len(resumed)} run(s) resume from their last.ckpt: {', '.join(resumed[:5])}"
            + (" ..." if len(resumed) > 5 else ""))

    def submit(batch: List[Job]) -> None:
        if local:  # no queue of its own: at most `parallel` at once, the next when one ends
            handles = [executor.submit(call, job, str(folders[job.run_id])) for job in batch]
        else:
            with executor.batch():
                delayed = [executor.submit(call, job, str(folders[job.run_id])) for job in batch]
            handles = list(delayed)
        for job, handle in zip(batch, handles):
            if local:
                handle._results_timeout_s = 2  # results are on this machine's disk: no NFS lag
            active[handle] = (job, time.time())
            _record(folders[job.run_id], handle)

    first = queue[:parallel] if local else list(queue)
    del queue[:len(first)]
    if first:
        before = set(active)
        submit(first)
        array = str(next(h for h in active if h not in before).job_id).split("_")[0]
        where = "submitit local executor on this machine" if local else f"SLURM array {array}"
        log(f"submitted {len(first)} job(s) ({where}{f', {len(queue)} more as these end' if queue else ''}); "
            f"logs in {out / 'submitit'}")
    try:
        _wait(active, queue, submit, done, log)
    except BaseException:
        for handle in list(active):
            try:
                handle.cancel(check=False)
            except Exception:  # already ended
                pass
        if active:
            log(f"cancelled {len(active)} unfinished job(s); rerun the same command to continue")
        raise


def _wait(active: Dict[Any, Tuple[Job, float]], queue: List[Job], submit, done: Done,
          log: Callable[[str], None]) -> None:
    preempted: Dict[Any, float] = {}
    shown, shown_at = None, 0.0
    while active:
        for handle in list(active):
            state = str(getattr(handle, "state", "") or "").upper()
            if state.startswith("PREEMPTED"):
                preempted.setdefault(handle, time.time())
            else:
                preempted.pop(handle, None)
            stuck = handle in preempted and time.time() - preempted[handle] > PREEMPTED_S
            if not (stuck or handle.done()):
                continue
            job, submitted = active.pop(handle)
            row, error, _ = _outcome(handle, stuck)
            done(job, row, error, time.time() - submitted)  # the job's own time: queue, start and training
            if queue:
                submit([queue.pop(0)])
        counts = job_states(active)
        if active and counts != shown and time.time() - shown_at > 10:
            log(f"jobs: {counts['running']} running, {counts['waiting']} waiting, {len(queue)} not yet submitted")
            shown, shown_at = counts, time.time()
        if active:
            time.sleep(POLL_S)


def _outcome(handle, stuck: bool = False) -> Tuple[Optional[Dict[str, Any]], str, float]:
    """``(row, error, seconds)`` of an ended job; a job that died says so, with its log."""
    where = f"log: {log_paths(handle)}"
    if stuck:
        return None, f"job {handle.job_id} preempted and not requeued ({where})", 0.0
    try:
        row, error, seconds = handle.result()
    except Exception as exc:  # the job itself failed: killed, out of memory, node failure, cancelled
        kind = type(exc).__name__
        if kind == "UncompletedJobError":
            return None, f"job {handle.job_id} ended without a result, state {handle.state} ({where})", 0.0
        return None, f"job {handle.job_id}: {short_error(exc)} ({where})", 0.0
    return row, (f"{error} ({where})" if error else ""), seconds


#: scheduler states of a job that will still run (or runs)
_ALIVE = ("PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "SUSPENDED", "RESIZING", "REQUEUE_HOLD")


def _still_queued(out: Path, job: Job, executor) -> Optional[Any]:
    """The SLURM job an earlier call submitted for ``job`` (``launch.json``), when the
    scheduler says it is still queued or running; else None."""
    run_dir = _run_dir(out, job)
    try:
        stamp = json.loads((run_dir / "job.json").read_text())
        job_id = json.loads((run_dir / "launch.json").read_text())["job_id"]
    except (OSError, ValueError, KeyError):
        return None
    if stamp.get("fingerprint") != job.fingerprint:
        return None
    handle = executor.job_class(folder=executor.folder, job_id=str(job_id))
    try:
        handle.done(force_check=True)  # asks the scheduler now
        state = str(handle.state).upper()
    except Exception:  # sacct unavailable: submit again
        return None
    return handle if state.startswith(_ALIVE) else None


def _record(run_dir: Path, handle) -> None:
    """``runs/<run_id>/launch.json``: the run's job id and logs (the latest submission)."""
    paths = getattr(handle, "paths", None)
    info = {"job_id": str(handle.job_id), "stdout": str(paths.stdout) if paths else None,
            "stderr": str(paths.stderr) if paths else None, "submitted": time.strftime("%Y-%m-%dT%H:%M:%S")}
    try:
        (run_dir / "launch.json").write_text(json.dumps(info, indent=2))
    except OSError:  # only for the user's eyes
        pass
