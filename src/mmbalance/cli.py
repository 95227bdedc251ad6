"""The ``mmbalance`` command. Bad input exits 2 with one ``error: ...`` line, no traceback."""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import os
import shlex
import sys
from pathlib import Path
from typing import List, Optional

from .errors import Interrupted, MMBalanceError


#: Modules that add sub-commands: each has ``register(subparsers)``, which adds its parsers
#: with ``set_defaults(func=callable(args) -> int)``. Import work stays inside ``func``.
COMMAND_MODULES: List[str] = ["mmbalance.bench.cli", "mmbalance.analysis.cli", "mmbalance.bench.throughput"]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2
        sys.stderr.write(f"error: {message}\n")
        raise SystemExit(2)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="mmbalance", description="Balanced multimodal learning (MCR and baselines).")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    sub.add_parser("methods", help="list the registered methods and their hyperparameters").set_defaults(
        func=lambda args: cmd_methods())
    t = sub.add_parser("train", help="train one method on one dataset")
    t.add_argument("--data", required=True, help="synthetic, or a path to a .npz/.h5 file")
    t.add_argument("--method", required=True)
    t.add_argument("--config", help="YAML file of overrides")
    t.add_argument("--set", nargs="*", action="extend", default=[], metavar="KEY=VALUE",
                   help="overrides, applied after --config (repeatable)")
    t.add_argument("--out", required=True, help="run directory")
    t.add_argument("--resume", action="store_true", help="continue from OUT/checkpoints/last.ckpt")
    t.set_defaults(func=cmd_train)
    d = sub.add_parser("demo", help="joint vs multiloss vs mcr on the synthetic competition data")
    d.add_argument("--out", default="runs/demo")
    d.add_argument("--seeds", type=int, default=3)
    d.add_argument("--epochs", type=int, default=15)
    d.set_defaults(func=cmd_demo)
    for module in COMMAND_MODULES:
        importlib.import_module(module).register(sub)
    return p


def cmd_methods() -> int:
    from .methods import REGISTRY
    for name, cls in REGISTRY.items():
        print(f"{name:18s} {cls.description}")
        print(f"{'':18s} ref: {cls.reference}")
        fields = dataclasses.fields(cls.Hyperparameters)
        if fields:
            print(f"{'':18s} " + ", ".join(f"{f.name}={f.default!r}" for f in fields))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from .config import build_config, load_yaml, parse_set_items
    from .methods import get_method
    from .training import train
    method = get_method(args.method)
    overrides = load_yaml(args.config) if args.config else {}
    overrides.update(parse_set_items(args.set))
    cfg = build_config(args.method, _data_spec(args), overrides, method.Hyperparameters)
    try:
        metrics = train(cfg, args.out, resume=args.resume)
    except Interrupted as stop:
        if stop.rank == 0:
            sys.stderr.write(f"interrupted at epoch {stop.epoch} step {stop.step}; "
                             f"continue with: {resume_command(args)}\n")
        sys.stderr.flush()
        return 128 + int(stop.signum)
    test = metrics["test"]
    shown = ", ".join(f"{k}={v:.4f}" for k, v in test.items() if "/" not in k)
    print(f"{args.method}: test {shown}  ({Path(args.out) / 'metrics.json'})")
    return 0


def _data_spec(args: argparse.Namespace) -> str:
    """``--data``; on ``--resume`` the run's saved absolute spec when ``--data`` is the spec
    as first given (a relative path typed in another working directory)."""
    from .config import resolve_data_spec
    from .engine import RunDir
    if args.resume and RunDir(args.out).config.is_file():
        try:
            saved = RunDir(args.out).read_config() or {}
        except Exception:  # an unreadable config.yaml: train() reports what it needs
            saved = {}
        if args.data == saved.get("data_spec_given") and args.data != resolve_data_spec(args.data):
            if not os.path.exists(resolve_data_spec(args.data)):
                return str(saved.get("data_spec", args.data))
    return args.data


def resume_command(args: argparse.Namespace) -> str:
    """The exact command that continues this run, from any working directory (paths absolute,
    including path-valued ``--set`` items such as ``data.root``)."""
    from .config import absolute_path_value, resolve_data_spec
    parts = ["mmbalance", "train", "--data", resolve_data_spec(args.data), "--method", args.method]
    if args.config:
        parts += ["--config", str(Path(args.config).resolve())]
    if args.set:
        items = []
        for item in args.set:
            key, sep, value = item.partition("=")
            fixed = absolute_path_value(key.strip(), value) if sep else value
            items.append(f"{key}={fixed}" if sep and fixed != value else item)
        parts += ["--set", *items]
    return shlex.join(parts + ["--out", str(Path(args.out).resolve()), "--resume"])


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo
    run_demo(args.out, seeds=args.seeds, epochs=args.epochs)
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except MMBalanceError as exc:
        sys.stderr.write(f"error: {str(exc).splitlines()[0]}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("error: interrupted; rerun with --resume to continue from the last checkpoint\n")
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
