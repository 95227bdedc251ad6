"""Timing of ``bench speed``: all cells of a setting in interleaved rounds."""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass, field
from typing import List, Optional, Sequence

from .cells import Log, Runner, sync

@dataclass
class Timing:
    samples: List[float] = field(default_factory=list)  # wall-clock ms per step
    cpu_samples: List[float] = field(default_factory=list)  # this process's CPU ms per step
    steps_per_sample: int = 1

    @property
    def cpu_median(self) -> float:
        return statistics.median(self.cpu_samples) if self.cpu_samples else float("nan")

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    def quantile(self, q: float) -> float:
        if len(self.samples) < 2:
            return self.samples[0]
        return statistics.quantiles(self.samples, n=4, method="inclusive")[{0.25: 0, 0.75: 2}[q]]


def time_interleaved(runners: Sequence[Runner], warmup: int, repeats: int, min_sample_s: float,
                     log: Optional[Log] = None, max_steps_per_sample: int = 50) -> List[Timing]:
    """Times all runners in the same rounds: ``warmup`` rounds (discarded; the first fixes
    the steps per sample so that a sample lasts about ``min_sample_s``), then ``repeats``
    rounds, the order rotating by one each round. Returns one :class:`Timing` per runner."""
    timings = [Timing() for _ in runners]
    n = len(runners)
    for r in range(warmup + repeats):
        order = [(i + r) % n for i in range(n)]
        for i in order:
            runner, t = runners[i], timings[i]
            sync(runner.device)
            start, cpu_start = time.perf_counter(), time.process_time()
            for _ in range(t.steps_per_sample):
                runner.step()
            sync(runner.device)
            ms = (time.perf_counter() - start) * 1000 / t.steps_per_sample
            cpu_ms = (time.process_time() - cpu_start) * 1000 / t.steps_per_sample
            if r == 0:
                t.steps_per_sample = max(1, min(max_steps_per_sample, int(min_sample_s * 1000 / max(ms, 1e-3))))
            if r >= warmup:
                t.samples.append(ms)
                t.cpu_samples.append(cpu_ms)
        if log:
            phase = f"warm-up {r + 1}/{warmup}" if r < warmup else f"round {r - warmup + 1}/{repeats}"
            log(f"    {phase} done ({load()})")
    return timings


def load() -> str:
    try:
        return "load %.2f" % os.getloadavg()[0]
    except OSError:  # pragma: no cover
        return "load n/a"

