"""Regime study at the fusion (docs/evidence/regime_fusion.md): per generator setting and
optimizer panel, trains ``joint``, ``unimodal`` x1 and ``unimodal`` x2 at the headline
S : U1 = 1 : 8 and records per run the test accuracy on each point type, the probes, the
x2-permutation accuracy, Shapley values and the Bayes ceilings; then prints the criterion's
numbers. Under the ``sgd`` panel the learning rate is first chosen per setting from
``LRS`` by joint training's mean validation accuracy over seeds 0 and 1 (those joint runs
are rows of the CSV too, and are reused as the joint runs of those seeds at that rate).

One CSV row per run, appended as it finishes; a rerun skips rows already there.

    PYTHONPATH=src .venv/bin/python studies/regime_fusion.py --panel adam \\
        --setting "data.family=signed data.latent_dim=50 data.signal2=4 data.depth2=1" --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import shutil
import sys
import time
import warnings
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from regime_study import append_row as _append, canonical, parse_setting, permuted_accuracy, read_rows  # noqa: E402

HEADLINE = {"data.shared": 0.1, "data.unique1": 0.8}
BUDGET = {"trainer.max_epochs": 20, "trainer.patience": 5, "trainer.progress": False}
VARIANTS = (("joint", "joint", {}), ("unimodal-x1", "unimodal", {"method.modality": "x1"}),
            ("unimodal-x2", "unimodal", {"method.modality": "x2"}))
PANELS = {"adam": {"optim.name": "adam", "optim.lr": 0.001},
          "sgd": {"optim.name": "sgd", "optim.momentum": 0.9}}
LRS = (0.01, 0.03, 0.1)
LR_SEEDS = (0, 1)
KINDS = ("shared", "unique1", "unique2", "none")
FIELDS = ("setting", "panel", "lr", "seed", "variant", "n", "n_test", "n_unique2", "val_acc", "test_acc",
          *(f"acc_{k}" for k in KINDS), "macro_f1", "probe_x1", "probe_x2", "acc_perm_x2", "ceiling_both",
          "ceiling_x1", "ceiling_x2", "shap_zero_x1", "shap_zero_x2", "shap_perm_x1", "shap_perm_x2",
          "epochs", "seconds")


def append_row(path: Path, row: Mapping[str, object]) -> None:
    import regime_study
    old, regime_study.FIELDS = regime_study.FIELDS, FIELDS
    try:
        _append(path, row)
    finally:
        regime_study.FIELDS = old


def run_one(setting: Mapping[str, object], panel: str, lr: float, seed: int, method: str,
            fixed: Mapping[str, object], workdir: Path, known_ceiling=None) -> Dict[str, object]:
    """One run; ``known_ceiling``: (both, x1, x2) of this setting and data seed from an
    earlier row (the ceiling depends on the data only), else computed."""
    from mmbalance.analysis.runs import load_run
    from mmbalance.bench.scores import run_scores
    from mmbalance.config import build_config
    from mmbalance.data.bayes import bayes_accuracy
    from mmbalance.methods import get_method
    from mmbalance.training.probe import probe_modalities
    from mmbalance.training.run import train
    overrides = {**HEADLINE, **setting, **BUDGET, **PANELS[panel], "optim.lr": lr, **fixed,
                 "seed": seed, "data.seed": seed}
    cfg = build_config(method, "synthetic", overrides, get_method(method).Hyperparameters)
    out = workdir / f"{method}_{fixed.get('method.modality', '')}_{seed}_{os.getpid()}"
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    metrics = train(cfg, out)
    seconds = time.perf_counter() - start
    scores = run_scores(out)
    loaded = load_run(out)
    from mmbalance.training.build import build_data
    data = build_data(cfg)
    probes = probe_modalities(loaded.method.model, data.train, data.test)
    perm = permuted_accuracy(loaded.method.model, data.test, "x2", seed)
    kinds = np.asarray(data.extras["kind/test"])
    ceiling = known_ceiling or bayes_accuracy(cfg.data, draws=100_000)[:3]
    shutil.rmtree(out, ignore_errors=True)
    kind_acc, shap = scores["kind_accuracy"], scores["shapley"]
    return {"n": cfg.data.n, "n_test": len(data.test), "n_unique2": int((kinds == 2).sum()),
            "val_acc": metrics["val"]["accuracy"], "test_acc": metrics["test"]["accuracy"],
            **{f"acc_{k}": kind_acc.get(k, "") for k in KINDS}, "macro_f1": metrics["test"].get("macro_f1", ""),
            "probe_x1": probes["x1"], "probe_x2": probes["x2"], "acc_perm_x2": perm, "ceiling_both": ceiling[0],
            "ceiling_x1": ceiling[1], "ceiling_x2": ceiling[2],
            "shap_zero_x1": shap["zero"]["x1"], "shap_zero_x2": shap["zero"]["x2"],
            "shap_perm_x1": shap["permute"]["x1"], "shap_perm_x2": shap["permute"]["x2"],
            "epochs": metrics["epochs_run"], "seconds": round(seconds, 1)}


def chosen_lr(rows: Sequence[Mapping[str, str]], setting: str, panel: str) -> Optional[float]:
    """Adam: its fixed rate. SGD: the rate of LRS with the best mean joint validation accuracy
    over LR_SEEDS (ties: the smaller), once every (rate, seed) has a row; else None."""
    if panel == "adam":
        return PANELS["adam"]["optim.lr"]
    val: Dict[float, List[float]] = {}
    for r in rows:
        if r["setting"] == setting and r["panel"] == panel and r["variant"] == "joint" and int(r["seed"]) in LR_SEEDS:
            val.setdefault(float(r["lr"]), []).append(float(r["val_acc"]))
    if any(len(val.get(lr, [])) < len(LR_SEEDS) for lr in LRS):
        return None
    return max(LRS, key=lambda lr: (round(float(np.mean(val[lr])), 9), -lr))


def seeds_needed(sd: float, bound: float, most: int = 10) -> str:
    from mmbalance.bench.stats import paired_ci_half_width
    for k in range(2, most + 1):
        if paired_ci_half_width(sd, k) <= bound:
            return str(k)
    return f">{most}"


def summarize(rows, setting: str, panel: str) -> Dict[str, object]:
    from mmbalance.bench.stats import mean_ci
    lr = chosen_lr(rows, setting, panel)
    if lr is None:
        return {}
    by = {(r["variant"], int(r["seed"])): r for r in rows
          if r["setting"] == setting and r["panel"] == panel and math.isclose(float(r["lr"]), lr)}
    seeds = sorted({s for (_, s) in by if all((v, s) in by for v, _, _ in VARIANTS)})
    if not seeds:
        return {}
    get = lambda v, key: np.array([100 * float(by[(v, s)][key]) for s in seeds])  # noqa: E731
    joint, u1, u2 = (get(v, "test_acc") for v in ("joint", "unimodal-x1", "unimodal-x2"))
    deficit_u2 = get("unimodal-x2", "acc_unique2") - get("joint", "acc_unique2")
    pair = joint - u1
    ci = lambda x: mean_ci(x).half_width if len(x) > 1 else math.nan  # noqa: E731
    sd = lambda x: float(np.std(x, ddof=1)) if len(x) > 1 else math.nan  # noqa: E731
    return {"setting": setting, "panel": panel, "lr": lr, "seeds": len(seeds),
            "n": int(by[("joint", seeds[0])]["n"]), "n_test": int(by[("joint", seeds[0])]["n_test"]),
            "n_u2": float(np.mean([int(by[("joint", s)]["n_unique2"]) for s in seeds])),
            "ceiling": get("joint", "ceiling_both").mean(), "ceiling_x1": get("joint", "ceiling_x1").mean(),
            "ceiling_x2": get("joint", "ceiling_x2").mean(), "joint": joint.mean(), "u1": u1.mean(), "u2": u2.mean(),
            "room": (get("joint", "ceiling_both") - joint).mean(),
            "u2_uni": get("unimodal-x2", "acc_unique2").mean(), "u2_joint": get("joint", "acc_unique2").mean(),
            "deficit": deficit_u2.mean(), "deficit_hw": ci(deficit_u2),
            "dist_x1": (get("unimodal-x1", "ceiling_x1") - u1).mean(),
            "dist_x2": (get("unimodal-x2", "ceiling_x2") - u2).mean(),
            "pair_hw": ci(pair), "pair_sd": sd(pair), "def_sd": sd(deficit_u2),
            "probe_gap": (get("unimodal-x2", "probe_x2") - get("joint", "probe_x2")).mean(),
            "probe_gap_hw": ci(get("unimodal-x2", "probe_x2") - get("joint", "probe_x2")),
            "perm_drop": (joint - get("joint", "acc_perm_x2")).mean(),
            "shap": tuple(get("joint", k).mean() for k in ("shap_zero_x1", "shap_zero_x2", "shap_perm_x1",
                                                          "shap_perm_x2")),
            "seconds": float(np.mean([float(by[(v, s)]["seconds"]) for v, _, _ in VARIANTS for s in seeds]))}


def verdict(s) -> str:
    met2 = s["deficit"] >= 5 and not math.isnan(s["deficit_hw"]) and s["deficit"] - s["deficit_hw"] > 0
    marks = [s["room"] >= 5, met2, max(s["dist_x1"], s["dist_x2"]) <= 3,
             s["pair_hw"] <= 1 and s["deficit_hw"] <= 3]
    return "".join("Y" if m else "n" for m in marks)


def print_summary(rows, keys) -> None:
    print("| setting | panel (lr) | seeds | n (test, unique2) | ceiling (x1, x2) | joint | room (1) | unique2: uni-x2 / joint "
          "| deficit (2) | uni x1, x2 | dist x1, x2 (3) | hw overall, unique2 (4) | sd overall, unique2; seeds for 1 / 3 "
          "| probe gap x2 | drop x2 perm | joint Shapley zero x1/x2, perm x1/x2 | s/run | 1234 |")
    print("|---" * 17 + "|")
    for setting, panel in keys:
        s = summarize(rows, setting, panel)
        if not s:
            continue
        print(f"| {setting} | {panel} ({s['lr']:g}) | {s['seeds']} | {s['n']} ({s['n_test']}, {s['n_u2']:.0f}) | "
              f"{s['ceiling']:.1f} ({s['ceiling_x1']:.1f}, {s['ceiling_x2']:.1f}) | {s['joint']:.1f} | {s['room']:.1f} | "
              f"{s['u2_uni']:.1f} / {s['u2_joint']:.1f} | {s['deficit']:.1f} ± {s['deficit_hw']:.1f} | "
              f"{s['u1']:.1f}, {s['u2']:.1f} | {s['dist_x1']:.1f}, {s['dist_x2']:.1f} | "
              f"{s['pair_hw']:.2f}, {s['deficit_hw']:.2f} | {s['pair_sd']:.2f}, {s['def_sd']:.2f}; "
              f"{seeds_needed(s['pair_sd'], 1)} / {seeds_needed(s['def_sd'], 3)} | "
              f"{s['probe_gap']:.1f} ± {s['probe_gap_hw']:.1f} | {s['perm_drop']:.1f} | "
              + " / ".join(f"{x:.1f}" for x in s["shap"]) + f" | {s['seconds']:.0f} | {verdict(s)} |")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--setting", action="append", default=[], help="space-separated --set overrides ('' = defaults)")
    p.add_argument("--panel", choices=tuple(PANELS), action="append", default=[])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--csv", type=Path, default=Path("docs/evidence/regime_fusion_runs.csv"))
    p.add_argument("--workdir", type=Path, default=Path("/tmp/regime_fusion_runs"))
    p.add_argument("--summary-only", action="store_true")
    p.add_argument("--lrs", type=float, nargs="+", default=list(LRS),
                   help="the SGD rates this process runs for the choice (split the choice between processes that "
                        "share one --csv; the rule still needs every rate of LRS)")
    args = p.parse_args(argv)
    import torch
    torch.set_num_threads(1)
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    settings = [canonical(s) for s in (args.setting or [""])]
    panels = args.panel or ["adam"]
    args.workdir.mkdir(parents=True, exist_ok=True)
    start, k = time.perf_counter(), 0
    for setting in [] if args.summary_only else settings:
        overrides = parse_setting("" if setting == "default" else setting)
        for panel in panels:
            todo = []
            if chosen_lr(read_rows(args.csv), setting, panel) is None:  # SGD: the rate choice first
                todo += [(lr, s, VARIANTS[0]) for lr in args.lrs for s in LR_SEEDS]
            todo += [(None, s, v) for s in args.seeds for v in VARIANTS]
            for lr, seed, (label, method, fixed) in todo:
                rows = read_rows(args.csv)
                while lr is None and chosen_lr(rows, setting, panel) is None:  # another process runs the rest
                    time.sleep(10)
                    rows = read_rows(args.csv)
                lr = lr if lr is not None else chosen_lr(rows, setting, panel)
                if any(r["setting"] == setting and r["panel"] == panel and math.isclose(float(r["lr"]), lr)
                       and int(r["seed"]) == seed and r["variant"] == label for r in rows):
                    continue
                known = next((tuple(float(r[k]) for k in ("ceiling_both", "ceiling_x1", "ceiling_x2")) for r in rows
                              if r["setting"] == setting and int(r["seed"]) == seed), None)
                row = {"setting": setting, "panel": panel, "lr": lr, "seed": seed, "variant": label,
                       **run_one(overrides, panel, lr, seed, method, fixed, args.workdir, known)}
                append_row(args.csv, row)
                k += 1
                print(f"[{k}] {setting} {panel} lr {lr:g} seed {seed} {label}: acc {100 * row['test_acc']:.1f} "
                      f"val {100 * row['val_acc']:.1f} unique2 {100 * float(row['acc_unique2'] or 0):.1f} ceiling "
                      f"{100 * row['ceiling_both']:.1f} ({row['seconds']}s, {row['epochs']} ep; "
                      f"{(time.perf_counter() - start) / 60:.1f} min)", flush=True)
    print_summary(read_rows(args.csv), [(s, p) for s in settings for p in panels])
    return 0


if __name__ == "__main__":
    sys.exit(main())
