"""``bench speed --profile``: torch.profiler tables of single cells."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import List, Sequence

import torch
from torch.profiler import ProfilerActivity, profile

from .cells import Log, Setting, make_runner, sync, variant_by_label
from .timing import load

@contextmanager
def _mcr_regions(method):
    """Profiler ranges around the MCR regularizer's parts (forward only)."""
    reg = getattr(method, "regularizer", None)
    if reg is None:
        yield
        return
    parts = {"mipd": (reg.mipd, "divergences"), "contrastive": (reg.contrastive, "forward"),
             "ceb": (reg.ceb, "forward")}
    for name, (part, attr) in parts.items():
        original = getattr(part, attr)

        def wrapper(*a, __f=original, __n=name, **k):
            with torch.profiler.record_function(f"mcr/{__n}"):
                return __f(*a, **k)
        setattr(part, attr, wrapper)
    try:
        yield
    finally:
        for part, attr in parts.values():
            delattr(part, attr)


def profile_cells(setting: Setting, labels: Sequence[str], out: Path, steps: int = 3, device: str = "cpu",
                  precision: str = "fp32", log: Log = print, row_limit: int = 30) -> List[Path]:
    """torch.profiler over ``steps`` steps of each method (after two warm-up steps): writes
    ``profile_<setting>_<label>.txt`` (phases, then ops by self time) and returns the paths."""
    out.mkdir(parents=True, exist_ok=True)
    dev = torch.device(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    paths = []
    for label in labels:
        runner = make_runner(setting, variant_by_label(label), dev, precision)
        for _ in range(2):
            runner.step()
        runner.regions = True
        with _mcr_regions(runner.method), profile(activities=activities, record_shapes=False) as prof:
            for _ in range(steps):
                runner.step()
            sync(dev)
        averages = prof.key_averages()
        sort = "self_cuda_time_total" if dev.type == "cuda" else "self_cpu_time_total"
        phases = [e for e in averages if e.key.startswith(("step/", "mcr/"))]
        lines = [f"# {setting.describe()}", f"# {label}: {variant_by_label(label).describe() or 'defaults'}; "
                 f"{steps} profiled steps after 2 warm-up steps ({load()}, {torch.get_num_threads()} threads)", "",
                 "phase                    ms/step (CPU)" + (" ms/step (device)" if dev.type == "cuda" else "")]
        for e in sorted(phases, key=lambda e: e.key):
            device_ms = f" {getattr(e, 'device_time_total', 0) / 1000 / steps:16.2f}" if dev.type == "cuda" else ""
            lines.append(f"{e.key:24s} {e.cpu_time_total / 1000 / steps:13.2f}{device_ms}")
        lines += ["", averages.table(sort_by=sort, row_limit=row_limit)]
        path = out / f"profile_{setting.name}_{label}.txt"
        path.write_text("\n".join(lines))
        paths.append(path)
        log(f"[{setting.name}] profiled {label} -> {path}")
    return paths
