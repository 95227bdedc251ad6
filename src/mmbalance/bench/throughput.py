"""``mmbalance data throughput``: samples per second of each loader split, and of the model's
training step on the same batches, so a user can see whether data or model is the bottleneck.

    mmbalance data throughput --data cremad --set data.root=PATH data.num_workers=8 data.pin_memory=true
    mmbalance data throughput --fixtures        # every built-in loader on tiny fixture files
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

from ..config import build_config, parse_set_items
from ..errors import ConfigError


def register(subparsers: Any) -> None:
    """Adds ``mmbalance data throughput`` to the command line."""
    data = subparsers.add_parser("data", help="data tools (check, throughput)")
    sub = data.add_subparsers(dest="data_command", required=True, parser_class=type(data))
    t = sub.add_parser("throughput", help="samples/s of each loader split and of the model step")
    t.add_argument("--data", help="a built-in dataset name (with --set data.root=PATH) or a .npz/.h5 file")
    t.add_argument("--fixtures", action="store_true", help="measure every built-in loader on tiny fixture files")
    t.add_argument("--set", nargs="*", action="extend", default=[], metavar="KEY=VALUE", help="data.* and model.* overrides")
    t.add_argument("--batches", type=int, default=20, help="batches timed per split (default 20)")
    t.add_argument("--out", help="also write the rows as JSON to this file")
    t.set_defaults(func=cmd_throughput)


def cmd_throughput(args: argparse.Namespace) -> int:
    """Runs the command: a table on stdout (and JSON with ``--out``)."""
    if bool(args.data) == bool(args.fixtures):
        raise ConfigError("data throughput needs exactly one of --data NAME or --fixtures")
    overrides = parse_set_items(args.set)
    if args.fixtures:
        rows = fixture_throughput(overrides, args.batches)
    else:
        rows = measure(args.data, overrides, args.batches)
    print(format_rows(rows))
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2))
    return 0


def fixture_throughput(overrides: Dict[str, Any], batches: int) -> List[Dict[str, Any]]:
    """:func:`measure` for every built-in dataset on its fixture (small frames and audio
    unless ``overrides`` say otherwise)."""
    from ..data import DATASETS  # torch and the readers: loaded by the command only
    from ..testing.fixtures import write_fixture

    small = {"data.image_size": 32, "data.audio_seconds": 1.0, "data.batch_size": 4, "model.base_width": 8}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in DATASETS:
            root = write_fixture(name, Path(tmp) / name)
            rows += measure(name, {**small, **overrides, "data.root": str(root)}, batches)
    return rows


def measure(data_spec: str, overrides: Dict[str, Any], batches: int = 20) -> List[Dict[str, Any]]:
    """Times ``batches`` batches of each split's DataLoader (workers and pinned memory as
    configured), then the model's forward + backward on the first training batch (on the GPU
    with ``trainer.accelerator=gpu``; the first step's warm-up included).

    Returns:
        One row per split and one for the model: dataset, stage, samples, seconds, samples_per_s.
    """
    from ..training.build import build_data, loaders  # loads Lightning: inside the command

    cfg = build_config("joint", data_spec, overrides)
    bundle = build_data(cfg)
    rows, first = [], None
    made = loaders(bundle, cfg, cfg.seed)
    made = made[1] if len(made) == 2 else made  # (generator, loaders) or the three loaders
    for split, loader in zip(("train", "val", "test"), made):
        start, samples = time.perf_counter(), 0
        for i, (inputs, labels) in enumerate(loader):
            first = first if first is not None else (inputs, labels)
            samples += len(labels)
            if i + 1 >= batches:
                break
        rows.append(_row(data_spec, f"load {split}", samples, time.perf_counter() - start))
    rows.append(_model_row(data_spec, bundle, cfg, first, repeats=max(1, min(batches, 3))))
    return rows


def _model_row(data_spec: str, bundle, cfg, batch, repeats: int) -> Dict[str, Any]:
    import torch

    from ..training.build import build_model

    gpu = cfg.trainer.accelerator in ("gpu", "cuda") and torch.cuda.is_available()
    device = torch.device("cuda" if gpu else "cpu")
    model = build_model(bundle, cfg).to(device).train()
    inputs = {m: x.to(device, non_blocking=True) for m, x in batch[0].items()}
    start = time.perf_counter()
    for _ in range(repeats):
        loss = model(inputs).logits.float().square().mean()  # any scalar: only the cost matters here
        loss.backward()
        model.zero_grad(set_to_none=True)
    if gpu:
        torch.cuda.synchronize()
    return _row(data_spec, f"model step ({device.type})", len(batch[1]) * repeats, time.perf_counter() - start)


def _row(dataset: str, stage: str, samples: int, seconds: float) -> Dict[str, Any]:
    return {"dataset": dataset, "stage": stage, "samples": samples, "seconds": round(seconds, 4),
            "samples_per_s": round(samples / seconds, 2) if seconds > 0 else float("inf")}


def format_rows(rows: List[Dict[str, Any]]) -> str:
    """A plain-text table of :func:`measure` rows."""
    out = [f"{'dataset':10s} {'stage':12s} {'samples':>8s} {'seconds':>9s} {'samples/s':>10s}"]
    for r in rows:
        out.append(f"{r['dataset']:10s} {r['stage']:12s} {r['samples']:8d} {r['seconds']:9.3f} {r['samples_per_s']:10.1f}")
    return "\n".join(out)
