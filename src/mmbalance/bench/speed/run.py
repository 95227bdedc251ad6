"""``bench speed`` as a whole: groups of cells, the command's configuration, its files."""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from .cells import (HEAVY, METHODS, MODALITY_SWEEP, MODALITY_VARIANTS, PERMUTATION_SWEEP, QUICK_SETTINGS, SETTINGS,
                    Log, Setting, SpeedVariant, build_model, make_runner, mipd_terms, modality_setting, own_model,
                    unmet, variant_by_label)
from .memory import MemoryServer, measure_memory
from .plots import plot_modalities, plot_permutations
from .report import CSV_COLUMNS, DETAIL_COLUMNS, MODALITY_COLUMNS, CellResult, fmt, markdown_report, write_csv
from .timing import load, time_interleaved

@dataclass
class Protocol:
    """How many rounds, how long a sample, whether to measure memory."""

    warmup: int = 1
    repeats: int = 5
    min_sample_s: float = 0.25
    memory: bool = True
    memory_steps: int = 2
    device: str = "cpu"
    precision: str = "fp32"
    threads: Optional[int] = None


def run_group(setting: Setting, variants: Sequence[SpeedVariant], protocol: Protocol, log: Log,
              tag: Optional[str] = None, server=None) -> List[CellResult]:
    """Times ``variants`` on one shared model of ``setting`` (interleaved), then measures
    each one's memory in a fresh process; one progress line per cell."""
    tag = tag or setting.name
    device = torch.device(protocol.device)
    model = build_model(setting).to(device)
    for v in [v for v in variants if unmet(v, model)]:
        log(f"[{tag}] {v.label}: not run on this setting, {unmet(v, model)}")
    variants = [v for v in variants if not unmet(v, model)]
    runners = [make_runner(setting, v, device, protocol.precision, model=None if own_model(v) else model)
               for v in variants]
    log(f"[{tag}] timing {len(runners)} methods: {protocol.warmup} warm-up + {protocol.repeats} interleaved "
        f"rounds ({load()})")
    timings = time_interleaved(runners, protocol.warmup, protocol.repeats, protocol.min_sample_s, log)
    results = []
    for v, t in zip(variants, timings):
        results.append(CellResult(setting, v, t))
        log(f"[{tag}] {v.label:22s} {t.median:10.2f} ms/step  (IQR {t.quantile(0.25):.2f}-{t.quantile(0.75):.2f}, "
            f"{len(t.samples)} x {t.steps_per_sample} steps)")
    del runners, model
    if protocol.memory:
        for cell in results:
            mem = measure_memory(setting, cell.variant, protocol.device, protocol.precision, protocol.memory_steps,
                                 protocol.threads, server)
            cell.peak_mb, cell.base_mb, cell.saved_mb = mem["peak_mb"], mem["base_mb"], mem["saved_mb"]
            log(f"[{tag}] {cell.variant.label:22s} peak {cell.peak_mb:9.1f} MB  (before the first step "
                f"{cell.base_mb:.1f} MB; saved for backward {cell.saved_mb:.1f} MB)")
    return results


# ----------------------------------------------------------------------------- the command
@dataclass
class SpeedConfig:
    """What ``bench speed`` runs."""

    out: Path
    quick: bool = False
    settings: Tuple[str, ...] = ("synthetic", "cremad", "mosei")
    methods: Optional[Tuple[str, ...]] = None  # labels; None = METHODS
    sweeps: bool = True
    device: str = "cpu"
    precision: str = "fp32"
    batch: Optional[int] = None
    repeats: Optional[int] = None
    memory: bool = True
    threads: Optional[int] = None  # torch intra-op threads; None = torch's default


def protocol_for(cfg: SpeedConfig, setting: Setting) -> Protocol:
    heavy = setting.name in HEAVY and not cfg.quick and cfg.device == "cpu"
    repeats = cfg.repeats or (3 if cfg.quick else (5 if heavy else 7))
    return Protocol(warmup=1, repeats=repeats, min_sample_s=0.05 if cfg.quick else 0.25, memory=cfg.memory,
                    device=cfg.device, precision=cfg.precision, threads=cfg.threads)


def resolve_settings(cfg: SpeedConfig) -> List[Setting]:
    table = QUICK_SETTINGS if cfg.quick else SETTINGS
    unknown = [s for s in cfg.settings if s not in table]
    if unknown:
        raise KeyError(f"unknown setting {unknown[0]!r}; valid: {', '.join(table)}")
    chosen = [table[s] for s in cfg.settings]
    if cfg.batch:
        chosen = [dataclasses.replace(s, batch=cfg.batch) for s in chosen]
    return chosen


def run_speed(cfg: SpeedConfig, log: Log = print) -> Dict[str, Path]:
    """Runs the benchmark and writes its files into ``cfg.out``; returns name -> path."""
    cfg.out.mkdir(parents=True, exist_ok=True)
    if cfg.threads is None and cfg.quick and cfg.device == "cpu":
        cfg = dataclasses.replace(cfg, threads=1)  # a smoke run: immune to a busy second core
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    variants = [variant_by_label(label) for label in cfg.methods] if cfg.methods else list(METHODS)
    extras = [v for v in PERMUTATION_SWEEP if v.label not in {x.label for x in variants}] if cfg.sweeps else []
    env = environment(cfg)
    log(f"bench speed: {len(variants)} methods{f' + {len(extras)} sweep cells' if extras else ''} x "
        f"{len(cfg.settings)} settings on {env['device']} ({env['threads']} threads, {cfg.precision}), "
        f"{'quick sizes' if cfg.quick else 'full sizes'} -> {cfg.out}")
    start = time.perf_counter()
    results: List[CellResult] = []
    modality_results: List[CellResult] = []
    with MemoryServer() as server:
        for setting in resolve_settings(cfg):
            log(f"[{setting.name}] {setting.describe()}")
            results += run_group(setting, variants + extras, protocol_for(cfg, setting), log, server=server)
            write_csv(cfg.out / "speed.csv", CSV_COLUMNS, [r.row() for r in results])
        if cfg.sweeps:
            for base in resolve_settings(cfg):
                for count in MODALITY_SWEEP.get(base.name, ()):
                    setting = modality_setting(base, count)
                    modality_results += run_group(setting, MODALITY_VARIANTS, protocol_for(cfg, setting), log,
                                                  tag=f"{base.name} M={count}", server=server)
    env["load_end"] = os.getloadavg()[0]
    env["seconds"] = round(time.perf_counter() - start, 1)
    paths = {"speed.csv": write_csv(cfg.out / "speed.csv", CSV_COLUMNS, [r.row() for r in results]),
             "speed_details.csv": write_csv(cfg.out / "speed_details.csv", DETAIL_COLUMNS,
                                            [r.detail() for r in results])}
    if modality_results:
        rows = [{"setting": r.setting.name, "modalities": len(r.setting.names), "method": r.variant.label,
                 "mipd_terms": mipd_terms(r.variant, r.setting.names), "ms_per_step": f"{r.timing.median:.2f}",
                 "peak_memory_mb": fmt(r.peak_mb, 1)} for r in modality_results]
        paths["modalities.csv"] = write_csv(cfg.out / "modalities.csv", MODALITY_COLUMNS, rows)
    paths["speed.md"] = cfg.out / "speed.md"
    paths["speed.md"].write_text(markdown_report(results, modality_results, env))
    if cfg.sweeps:
        paths["cost_vs_permutations.png"] = plot_permutations(results, cfg.out / "cost_vs_permutations.png")
        if modality_results:
            paths["cost_vs_modalities.png"] = plot_modalities(modality_results, cfg.out / "cost_vs_modalities.png")
    (cfg.out / "speed.json").write_text(json.dumps(env, indent=2))
    paths["speed.json"] = cfg.out / "speed.json"
    log(f"bench speed: {env['seconds']:.0f} s")
    return paths


def environment(cfg: SpeedConfig) -> Dict[str, object]:
    """What the numbers were measured on."""
    if cfg.device.startswith("cuda"):
        device = torch.cuda.get_device_name(torch.device(cfg.device))
    else:
        device = f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
    return {"device": device, "threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "precision": cfg.precision, "quick": cfg.quick,
            "command": " ".join(["mmbalance", *sys.argv[1:]]) if sys.argv and "mmbalance" in sys.argv[0] else "",
            "load_start": os.getloadavg()[0], "started": time.strftime("%Y-%m-%d %H:%M:%S")}

