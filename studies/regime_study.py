"""Regime study: does a generator setting leave room for methods to differ?

For each generator setting (``--setting "data.signal1=3 data.depth2=4"``, repeatable) at
U1/S = 8 it trains ``joint``, ``unimodal`` x1 and ``unimodal`` x2 over the seeds with one
budget (20 epochs, patience 5), fits the library's linear probe on each modality's frozen
encoder features (training split, best checkpoint) and scores it on the test split, and
computes the exact Bayes ceilings. One CSV row per run, appended as it finishes; a rerun
skips rows already there. Then it prints, per setting, the four numbers of the criterion in
``docs/evidence/regime.md``.

    PYTHONPATH=src .venv/bin/python studies/regime_study.py --setting "" --setting "data.signal1=3" \
        --seeds 0 1 2 --csv docs/evidence/regime_runs.csv
"""

from __future__ import annotations

import argparse
import csv
import logging
import math
import os
import shutil
import sys
import time
import warnings
from pathlib import Path
from typing import Dict, List, Mapping, Sequence, Tuple

import numpy as np

HEADLINE = {"data.shared": 0.1, "data.unique1": 0.8, "data.unique2": 0.1}
BUDGET = {"trainer.max_epochs": 20, "trainer.patience": 5, "trainer.progress": False}
VARIANTS = (("joint", "joint", {}), ("unimodal-x1", "unimodal", {"method.modality": "x1"}),
            ("unimodal-x2", "unimodal", {"method.modality": "x2"}))
FIELDS = ("setting", "seed", "variant", "n", "n_test", "test_acc", "probe_x1", "probe_x2", "ceiling_both",
          "ceiling_x1", "ceiling_x2", "ceiling_se", "epochs", "seconds", "acc_perm_x2")


def parse_setting(text: str) -> Dict[str, object]:
    from mmbalance.config import parse_set_items
    return parse_set_items(text.split()) if text.strip() else {}


def canonical(text: str) -> str:
    """A setting's name in the CSV: its overrides sorted, or ``default``."""
    items = sorted(text.split())
    return " ".join(items) if items else "default"


def synthetic_spec(data_cfg):
    """The generator spec of a run's DataConfig (a DataConfig is a SyntheticSpec)."""
    return data_cfg


def run_one(setting: Mapping[str, object], seed: int, method: str, fixed: Mapping[str, object],
            workdir: Path) -> Dict[str, object]:
    """Trains one run and returns its test accuracy, probes and ceilings."""
    from mmbalance.analysis.runs import load_run
    from mmbalance.config import build_config
    from mmbalance.data.bayes import bayes_accuracy
    from mmbalance.methods import get_method
    from mmbalance.training.probe import probe_modalities
    from mmbalance.training.run import train
    overrides = {**HEADLINE, **setting, **BUDGET, **fixed, "seed": seed, "data.seed": seed}
    cfg = build_config(method, "synthetic", overrides, get_method(method).Hyperparameters)
    out = workdir / f"{method}_{fixed.get('method.modality', '')}_{seed}_{os.getpid()}"
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    metrics = train(cfg, out)
    loaded = load_run(out)
    probes = probe_modalities(loaded.model, loaded.data.train, loaded.data.test)
    perm = permuted_accuracy(loaded.model, loaded.data.test, "x2", seed)
    ceiling = bayes_accuracy(synthetic_spec(cfg.data), draws=200_000)
    shutil.rmtree(out, ignore_errors=True)
    return {"n": cfg.data.n, "n_test": len(loaded.data.test), "test_acc": metrics["test"]["accuracy"],
            "probe_x1": probes["x1"], "probe_x2": probes["x2"], "ceiling_both": ceiling.both,
            "ceiling_x1": ceiling.x1, "ceiling_x2": ceiling.x2, "ceiling_se": max(ceiling[3:6]),
            "epochs": metrics["epochs_run"], "seconds": round(time.perf_counter() - start, 1),
            "acc_perm_x2": perm}


def permuted_accuracy(model, dataset, modality: str, seed: int) -> float:
    """The fused model's accuracy on ``dataset`` with ``modality``'s features permuted
    across the rows (a seeded permutation): a diagnostic of how much the fusion uses it."""
    import torch
    from mmbalance.training.probe import encode_split
    feats, labels = encode_split(model, dataset)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    feats = {**feats, modality: feats[modality][order]}
    with torch.no_grad():
        return float((model.fuse(feats).argmax(-1) == labels).float().mean())


def read_rows(path: Path) -> List[Dict[str, str]]:
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def append_row(path: Path, row: Mapping[str, object]) -> None:
    new = not path.exists()
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        if new:
            writer.writeheader()
        writer.writerow({k: row.get(k, "") for k in FIELDS})
        f.flush()
        os.fsync(f.fileno())


def summarize(rows: Sequence[Mapping[str, str]], setting: str) -> Dict[str, object]:
    """The criterion's four numbers for one setting (points), over the seeds present for
    all three variants."""
    from mmbalance.bench.stats import mean_ci, paired_difference
    by = {(r["variant"], int(r["seed"])): r for r in rows if r["setting"] == setting}
    seeds = sorted({s for (_, s) in by if all((v, s) in by for v, _, _ in VARIANTS)})
    if not seeds:
        return {}
    get = lambda v, key: np.array([100 * float(by[(v, s)][key]) for s in seeds])  # noqa: E731
    joint, u1, u2 = (get(v, "test_acc") for v in ("joint", "unimodal-x1", "unimodal-x2"))
    diff = paired_difference(joint, u1)
    return {
        "setting": setting, "seeds": len(seeds), "n_test": int(by[("joint", seeds[0])]["n_test"]),
        "ceiling": get("joint", "ceiling_both").mean(), "ceiling_x1": get("joint", "ceiling_x1").mean(),
        "ceiling_x2": get("joint", "ceiling_x2").mean(), "joint": joint.mean(), "u1": u1.mean(), "u2": u2.mean(),
        "deficit": (get("joint", "ceiling_both") - joint).mean(),
        "gap": (get("unimodal-x2", "probe_x2") - get("joint", "probe_x2")).mean(),
        "gap_ci": mean_ci(get("unimodal-x2", "probe_x2") - get("joint", "probe_x2")).half_width,
        "probe_x2_uni": get("unimodal-x2", "probe_x2").mean(), "probe_x2_joint": get("joint", "probe_x2").mean(),
        # the x2 encoder of a unimodal-x1 run never sees a gradient from x2 data (only weight decay)
        "probe_x2_untrained": get("unimodal-x1", "probe_x2").mean(),
        "dist_x1": (get("unimodal-x1", "ceiling_x1") - u1).mean(),
        "dist_x2": (get("unimodal-x2", "ceiling_x2") - u2).mean(),
        "perm_drop": (joint - get("joint", "acc_perm_x2")).mean() if all(by[("joint", s)].get("acc_perm_x2") for s in seeds) else math.nan,
        "pair_hw": diff.interval.half_width, "pair_sd": float(np.std(joint - u1, ddof=1)) if len(seeds) > 1 else math.nan,
    }


def verdict(s: Mapping[str, object]) -> str:
    marks = [s["deficit"] >= 5, s["gap"] >= 5, max(s["dist_x1"], s["dist_x2"]) <= 2, s["pair_hw"] <= 1]
    return "".join("Y" if m else "n" for m in marks)


def print_summary(rows, settings: Sequence[str]) -> None:
    print("| setting | seeds | n_test | ceiling (x1, x2) | joint | deficit (1) | probe x2 uni / joint / untrained | "
          "gap (2) | uni x1, x2 | dist x1, x2 (3) | paired hw, sd (4) | joint drop, x2 permuted | 1234 |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name in settings:
        s = summarize(rows, name)
        if not s:
            continue
        print(f"| {name} | {s['seeds']} | {s['n_test']} | {s['ceiling']:.1f} ({s['ceiling_x1']:.1f}, "
              f"{s['ceiling_x2']:.1f}) | {s['joint']:.1f} | {s['deficit']:.1f} | {s['probe_x2_uni']:.1f} / "
              f"{s['probe_x2_joint']:.1f} / {s['probe_x2_untrained']:.1f} | {s['gap']:.1f} ± {s['gap_ci']:.1f} | {s['u1']:.1f}, {s['u2']:.1f} | "
              f"{s['dist_x1']:.1f}, {s['dist_x2']:.1f} | {s['pair_hw']:.2f}, {s['pair_sd']:.2f} | {s['perm_drop']:.1f} | {verdict(s)} |")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--setting", action="append", default=[], help="space-separated --set overrides ('' = defaults)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--csv", type=Path, default=Path("docs/evidence/regime_runs.csv"))
    p.add_argument("--workdir", type=Path, default=Path("/tmp/regime_runs"))
    p.add_argument("--summary-only", action="store_true")
    args = p.parse_args(argv)
    import torch
    torch.set_num_threads(1)  # tiny MLPs: one thread is faster than two on a shared 2-core machine
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    settings = [canonical(s) for s in (args.setting or [""])]
    done = {(r["setting"], int(r["seed"]), r["variant"]) for r in read_rows(args.csv)}
    todo = [(s, seed, v) for s in settings for seed in args.seeds for v in VARIANTS if (s, seed, v[0]) not in done]
    args.workdir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    for i, (setting, seed, (label, method, fixed)) in enumerate([] if args.summary_only else todo, 1):
        overrides = parse_setting("" if setting == "default" else setting)
        row = {"setting": setting, "seed": seed, "variant": label,
               **run_one(overrides, seed, method, fixed, args.workdir)}
        append_row(args.csv, row)
        elapsed = time.perf_counter() - start
        eta = elapsed / i * (len(todo) - i)
        print(f"[{i}/{len(todo)}] {setting} seed {seed} {label}: acc {100 * row['test_acc']:.1f} probe x2 "
              f"{100 * row['probe_x2']:.1f} ceiling {100 * row['ceiling_both']:.1f} ({row['seconds']}s, "
              f"{row['epochs']} ep) eta {eta / 60:.1f} min", flush=True)
    print_summary(read_rows(args.csv), settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
