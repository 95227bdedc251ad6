"""Chooses the mfeat view pairs and the three-view set from unimodal validation accuracy
alone (the rule in README.md). One row per run in views.csv; a rerun skips rows already there.

    PYTHONPATH=src .venv/bin/python docs/evidence/ranked_mfeat/choose_views.py
"""

from __future__ import annotations

import csv
import itertools
import logging
import shutil
import time
import warnings
from pathlib import Path

VIEWS = ("fou", "fac", "kar", "pix", "zer", "mor")
SEEDS = (0, 1, 2)
BUDGET = {"trainer.max_epochs": 5, "trainer.patience": 3, "trainer.progress": False, "data.seed": 0}
HERE = Path(__file__).resolve().parent
CSV = HERE / "views.csv"


def run(view: str, seed: int) -> dict:
    from mmbalance.config import build_config
    from mmbalance.methods import get_method
    from mmbalance.training.run import train
    other = VIEWS[(VIEWS.index(view) + 1) % len(VIEWS)]
    overrides = {**BUDGET, "data.modalities": [view, other], "method.modality": view, "seed": seed}
    cfg = build_config("unimodal", "mfeat", overrides, get_method("unimodal").Hyperparameters)
    out = Path(f"/tmp/mfeat_views/{view}_{seed}")
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    metrics = train(cfg, out)
    shutil.rmtree(out, ignore_errors=True)
    return {"view": view, "seed": seed, "val_accuracy": metrics["val"]["accuracy"],
            "epochs": metrics["epochs_run"], "seconds": round(time.perf_counter() - start, 1)}


def main() -> None:
    import torch
    torch.set_num_threads(1)
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    rows = list(csv.DictReader(open(CSV))) if CSV.exists() else []
    done = {(r["view"], int(r["seed"])) for r in rows}
    for view, seed in itertools.product(VIEWS, SEEDS):
        if (view, seed) in done:
            continue
        row = run(view, seed)
        new = not CSV.exists()
        with open(CSV, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(row))
            if new:
                w.writeheader()
            w.writerow(row)
        rows.append({k: str(v) for k, v in row.items()})
        print(row, flush=True)
    score = {v: 100 * sum(float(r["val_accuracy"]) for r in rows if r["view"] == v) / len(SEEDS) for v in VIEWS}
    print("| view | " + " | ".join(VIEWS) + " |\n|---|" + "---|" * len(VIEWS))
    print("| val. accuracy, mean of seeds 0-2 | " + " | ".join(f"{score[v]:.2f}" for v in VIEWS) + " |")
    pairs = sorted(itertools.combinations(VIEWS, 2), key=lambda p: (abs(score[p[0]] - score[p[1]]), p))
    gap = lambda p: abs(score[p[0]] - score[p[1]])  # noqa: E731
    for name, p in (("largest", pairs[-1]), ("median", pairs[7]), ("smallest", pairs[0])):
        print(f"{name} gap: {p[0]},{p[1]} ({gap(p):.2f} points)")
    weak, strong = min(VIEWS, key=lambda v: (score[v], v)), max(VIEWS, key=lambda v: (score[v], v))
    mid = (score[weak] + score[strong]) / 2
    middle = min((v for v in VIEWS if v not in (weak, strong)), key=lambda v: (abs(score[v] - mid), v))
    print(f"three views: {weak},{middle},{strong} (weakest {score[weak]:.2f}, middle {score[middle]:.2f}, "
          f"strongest {score[strong]:.2f})")


if __name__ == "__main__":
    main()
