"""What ``mmbalance tune`` prints while it runs: one line per finished trial, with an ETA
when no progress bar is drawn (a log file, CI), or above Optuna's progress bar on a terminal."""

from __future__ import annotations

import math
import sys
import time
from typing import Callable


def stderr_is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stream
        return False


def above_bar(log: Callable[[str], None]) -> Callable[[str], None]:
    """``log`` that clears Optuna's tqdm bar first and redraws it after the line."""
    from tqdm.auto import tqdm

    def emit(line: str) -> None:
        with tqdm.external_write_mode():
            log(line)

    return emit


def _duration(seconds: float) -> str:
    """``75`` -> ``1:15``; ``3725`` -> ``1:02:05``."""
    seconds = int(round(max(seconds, 0)))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class TrialReport:
    """Optuna study callback: one line per trial this process finished, with its outcome
    and parameters and, with ``eta``, ``[k/N, elapsed, ETA]``: ``k`` of the study's ``N``
    trials (its budget, counted over every worker) have finished; the ETA is the mean time
    of this process's trials so far times the trials left, shared among this worker and the
    others that are running a trial now."""

    def __init__(self, total: int, metric: str, log: Callable[[str], None], eta: bool = True,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.total, self.metric, self.log, self.eta, self.clock = total, metric, log, eta, clock
        self.start, self.done = clock(), 0

    def __call__(self, study, trial) -> None:
        self.done += 1
        state = trial.state.name
        if state == "COMPLETE":
            outcome = f"val {self.metric} {trial.value:.4f}"
        elif state == "PRUNED":
            steps = sorted(trial.intermediate_values)
            last = f" (val {self.metric} {trial.intermediate_values[steps[-1]]:.4f})" if steps else ""
            outcome = f"pruned after epoch {steps[-1] + 1 if steps else 0}{last}"
        else:
            outcome = "failed (Optuna's warning above gives the error)"
        params = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in trial.params.items())
        line = f"trial {trial.number}: {outcome}  {params}"
        if self.eta:
            trials = study.get_trials(deepcopy=False)
            finished = sum(t.state.is_finished() for t in trials)
            workers = 1 + sum(t.state.name == "RUNNING" for t in trials)  # this one's trial has finished
            elapsed = self.clock() - self.start
            left = elapsed / self.done * math.ceil(max(self.total - finished, 0) / workers)
            line += f"  [{finished}/{self.total}, {_duration(elapsed)} elapsed, ETA {_duration(left)}]"
        self.log(line)
