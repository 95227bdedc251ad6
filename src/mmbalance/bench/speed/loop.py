"""``bench speed --loop``: the whole ``mmbalance train`` run against a minimal plain-PyTorch
loop on the same model, data and epochs: what the loop itself costs.

Both run as fresh processes (``python -m ...``), so the figure is what a user waits for:
interpreter start and imports, the data, the epochs, the validation after each epoch, the
final scoring and the files. The plain loop (:func:`plain_main`) is what a user would
write by hand: the same synthetic data (the generator of ``mmbalance train``, with the
train-split standardization), the same :class:`~mmbalance.MultimodalModel` (same encoders
and seed), Adam with the same learning rate, weight decay and update kernel (foreach, as
``train`` runs it by default), the fused cross-entropy (``joint``), a shuffled
``DataLoader`` with the same batch size, validation accuracy after every epoch, a
``torch.save`` of the weights and optimizer after every epoch (the ``last.ckpt`` of the
Lightning loop) and of the best epoch, the test accuracy of the best
epoch, and a JSON file. It has no early stopping in either case (``trainer.patience=0``),
no per-modality metrics, no logger and no checkpoint atomicity: that is the difference the
row prices.

``mmbalance train`` also writes where its own time went (``metrics.json``'s ``seconds``:
setup, stages, fit, score, probe_and_write); the rest of its wall time is the interpreter's
start and imports.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

#: the small synthetic run the loop's target is stated for: the default generator at the sweep's
#: headline setting, joint training (the plain loop's loss), no early stopping
RUN_SETTINGS = ("data.shared=0.1", "data.unique1=0.8", "data.unique2=0.1", "trainer.patience=0")


def plain_main(argv: Optional[Sequence[str]] = None) -> int:
    """The plain-PyTorch loop (``python -m mmbalance.bench.speed.loop --epochs E --out DIR``)."""
    began = time.perf_counter()
    p = argparse.ArgumentParser(description="a minimal plain-PyTorch training loop (bench speed --loop)")
    p.add_argument("--epochs", type=int, required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    import numpy as np
    import torch
    import torch.nn.functional as F
    from torch.utils.data import DataLoader, TensorDataset

    from ...config import DataConfig, ModelConfig, OptimConfig
    from ...data.synthetic import make_synthetic
    from ...models import MultimodalModel, build_encoder
    imported = time.perf_counter()

    data_cfg, model_cfg, optim_cfg = DataConfig(shared=0.1, unique1=0.8, unique2=0.1), ModelConfig(), OptimConfig()
    arrays = make_synthetic(data_cfg)
    split = arrays["split"]
    tensors = {}
    for part in ("train", "val", "test"):
        rows = split == part
        tensors[part] = [arrays["x1"][rows], arrays["x2"][rows], arrays["label"][rows]]
    for i in (0, 1):  # the train split's standardization
        mean, std = tensors["train"][i].mean(0), tensors["train"][i].std(0) + 1e-8
        for part in tensors:
            tensors[part][i] = ((tensors[part][i] - mean) / std).astype(np.float32)
    datasets = {part: TensorDataset(*(torch.from_numpy(a) for a in t)) for part, t in tensors.items()}
    torch.manual_seed(args.seed)
    shapes = {"x1": (arrays["x1"].shape[1],), "x2": (arrays["x2"].shape[1],)}
    model = MultimodalModel({m: build_encoder("mlp", s, model_cfg, modality=m) for m, s in shapes.items()},
                            int(arrays["label"].max()) + 1, fusion=model_cfg.fusion)
    optimizer = torch.optim.Adam(model.parameters(), lr=optim_cfg.lr, weight_decay=optim_cfg.weight_decay,
                                 foreach=optim_cfg.implementation == "foreach")  # the update train uses
    train_dl = DataLoader(datasets["train"], batch_size=data_cfg.batch_size, shuffle=True,
                          generator=torch.Generator().manual_seed(args.seed))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    def accuracy(part: str) -> float:
        model.eval()
        correct = 0
        with torch.no_grad():
            for x1, x2, y in DataLoader(datasets[part], batch_size=data_cfg.batch_size):
                correct += int((model({"x1": x1, "x2": x2}).logits.argmax(-1) == y).sum())
        model.train()
        return correct / len(datasets[part])

    ready = time.perf_counter()
    best = -1.0
    for epoch in range(args.epochs):
        for x1, x2, y in train_dl:
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(model({"x1": x1, "x2": x2}).logits, y).backward()
            optimizer.step()
        val = accuracy("val")
        state = {"epoch": epoch, "model": model.state_dict(), "optimizer": optimizer.state_dict()}
        torch.save(state, out / "last.pt")
        if val > best:
            best = val
            torch.save(state, out / "best.pt")
    trained = time.perf_counter()
    model.load_state_dict(torch.load(out / "best.pt", weights_only=True)["model"])
    result = {"val_accuracy": best, "test_accuracy": accuracy("test"),
              "seconds": {"imports": round(imported - began, 3), "setup": round(ready - imported, 3),
                          "fit": round(trained - ready, 3), "score_and_write": None}}
    result["seconds"]["score_and_write"] = round(time.perf_counter() - trained, 3)
    (out / "metrics.json").write_text(json.dumps(result, indent=2))
    return 0


def _wall(cmd: List[str], env: Dict[str, str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise RuntimeError(f"{' '.join(cmd[:6])} ... exited with {done.returncode}: {tail}")
    return seconds


def measure_loop(epochs: Sequence[int] = (1, 10), repeats: int = 3, threads: Optional[int] = 1,
                 log=print) -> List[Dict[str, object]]:
    """Whole-run wall times of ``mmbalance train`` (joint) and of :func:`plain_main`, as
    fresh processes, alternating, ``repeats`` times per epoch count; the medians and the
    Lightning run's own breakdown (medians of ``metrics.json``'s ``seconds``)."""
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    rows = []
    with tempfile.TemporaryDirectory(prefix="mmbalance-loop-") as tmp:
        for count in epochs:
            walls: Dict[str, List[float]] = {"train": [], "plain": []}
            parts: Dict[str, List[float]] = {}
            plain_parts: Dict[str, List[float]] = {}
            for r in range(repeats):
                run = Path(tmp) / f"train_{count}_{r}"
                walls["train"].append(_wall([sys.executable, "-m", "mmbalance", "train", "--data", "synthetic",
                                             "--method", "joint", "--set", *RUN_SETTINGS,
                                             f"trainer.max_epochs={count}", "trainer.progress=false",
                                             "--out", str(run)], env))
                for k, v in json.loads((run / "metrics.json").read_text())["seconds"].items():
                    parts.setdefault(k, []).append(float(v or 0.0))
                plain = Path(tmp) / f"plain_{count}_{r}"
                walls["plain"].append(_wall([sys.executable, "-m", "mmbalance.bench.speed.loop", "--epochs",
                                             str(count), "--out", str(plain)], env))
                for k, v in json.loads((plain / "metrics.json").read_text())["seconds"].items():
                    plain_parts.setdefault(k, []).append(float(v or 0.0))
                log(f"[loop] {count} epoch{'s' if count > 1 else ''}, round {r + 1}/{repeats}: train "
                    f"{walls['train'][-1]:.1f} s, plain loop {walls['plain'][-1]:.1f} s")
            med = {k: statistics.median(v) for k, v in walls.items()}
            row = {"epochs": count, "train_s": med["train"], "plain_s": med["plain"],
                   "ratio": med["train"] / med["plain"],
                   "train_parts": {k: statistics.median(v) for k, v in parts.items()},
                   "plain_parts": {k: statistics.median(v) for k, v in plain_parts.items()},
                   "train_runs": walls["train"], "plain_runs": walls["plain"]}
            # what each process did not time itself: the interpreter's start (and, for train, the imports)
            row["train_parts"]["start_and_imports"] = med["train"] - sum(row["train_parts"].values())
            row["plain_parts"]["start"] = med["plain"] - sum(row["plain_parts"].values())
            rows.append(row)
    return rows


def loop_markdown(rows: Sequence[Dict[str, object]]) -> str:
    """The loop table and where the time went."""
    lines = ["## The loop: `mmbalance train` against a plain PyTorch loop (whole runs, fresh processes)", "",
             "Synthetic data (" + ", ".join(RUN_SETTINGS[:3]) + "), `joint`, batch 64, no early stopping; "
             "median of the rounds, both commands alternating.", "",
             "| epochs | mmbalance train s | plain loop s | x plain |", "|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['epochs']} | {r['train_s']:.1f} | {r['plain_s']:.1f} | {r['ratio']:.2f} |")
    lines += ["", "Where the time went (seconds, medians):", "",
              "| epochs | run | start and imports | setup | stages | fit | score | probe and write |",
              "|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        t, p = r["train_parts"], r["plain_parts"]
        lines.append(f"| {r['epochs']} | train | {t['start_and_imports']:.1f} | {t.get('setup', 0):.1f} | "
                     f"{t.get('stages', 0):.1f} | {t.get('fit', 0):.1f} | {t.get('score', 0):.1f} | "
                     f"{t.get('probe_and_write', 0):.1f} |")
        lines.append(f"| {r['epochs']} | plain | {p['start'] + p.get('imports', 0):.1f} | {p.get('setup', 0):.1f} | "
                     f"- | {p.get('fit', 0):.1f} | {p.get('score_and_write', 0):.1f} | - |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(plain_main())
