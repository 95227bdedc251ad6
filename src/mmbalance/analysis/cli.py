"""Sub-commands ``analyze errors``, ``analyze probes``, ``diagnose`` and ``predict``."""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path


def register(sub) -> None:
    a = sub.add_parser("analyze", help="compare trained runs (error matrix, probe curves)")
    a_sub = a.add_subparsers(dest="analyze_command", required=True, parser_class=type(a))
    e = a_sub.add_parser("errors", help="fused accuracy per unimodal-error category (paper Figure 5)")
    e.add_argument("runs", nargs="+", metavar="RUN_DIR", help="finished runs on the same data")
    e.add_argument("--out", required=True)
    e.add_argument("--reference", nargs="+", metavar="RUN_DIR",
                   help="runs whose unimodal predictions define the categories (default: the unimodal runs "
                        "given, else the ensemble run)")
    e.set_defaults(func=cmd_errors)
    p = a_sub.add_parser("probes", help="plot a run's linear-probe history (paper Figure 6)")
    p.add_argument("run", metavar="RUN_DIR", help="a run trained with --set trainer.probe_every=K")
    p.add_argument("--out", required=True)
    p.add_argument("--ensemble", metavar="RUN_DIR", help="an ensemble run: its validation accuracy as a line")
    p.set_defaults(func=cmd_probes)
    d = sub.add_parser("diagnose", help="how much each modality contributes to a trained model")
    d.add_argument("run", metavar="RUN_DIR")
    d.add_argument("--out", required=True)
    d.add_argument("--permutations", type=int, default=5, help="permutations averaged per modality")
    d.add_argument("--seed", type=int, default=0)
    d.set_defaults(func=cmd_diagnose)
    r = sub.add_parser("predict", help="a trained run's predictions for new data (fused and per modality)")
    r.add_argument("run", metavar="RUN_DIR", help="an `mmbalance train --out` folder (it may have been moved)")
    r.add_argument("--data", required=True, metavar="FILE",
                   help=".npz/.h5 with one array per modality of the run (same names and sample shapes, "
                        "not standardized); 'label' optional")
    r.add_argument("--out", required=True, metavar="FILE.npz", help="where the predictions go")
    r.add_argument("--checkpoint", choices=["best", "last"], default="best",
                   help="best (default: the checkpoint the test score came from) or last")
    r.add_argument("--batch-size", type=int, help="rows per forward pass (default: the run's data.batch_size)")
    r.set_defaults(func=cmd_predict)


def cmd_errors(args: argparse.Namespace) -> int:
    from .error_matrix import analyze_errors
    matrix, paths = analyze_errors(args.runs, args.out, args.reference)
    print(Path(paths[1]).read_text())
    print("wrote " + ", ".join(map(str, paths)))
    return 0


def cmd_probes(args: argparse.Namespace) -> int:
    from ..errors import DataError
    from ..training.probe import plot_probes
    from .runs import read_metrics
    probes = read_metrics(args.run).get("probes")
    if not probes:
        raise DataError(f"{args.run} has no probe history; train it with --set trainer.probe_every=K")
    ensemble = None
    if args.ensemble:
        ensemble = read_metrics(args.ensemble)["val"].get(probes["metric"])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    plot_probes(probes["history"], out / "probes.png", ensemble=ensemble)
    for h in probes["history"]:
        fused = "—" if h["fused"] is None else f"{h['fused']:.4f}"
        print(f"epoch {h['epoch']:3d}: fused {fused}  " + "  ".join(f"{m} {v:.4f}" for m, v in h["probe"].items()))
    print(f"wrote {out / 'probes.png'}")
    return 0


def cmd_diagnose(args: argparse.Namespace) -> int:
    from ..training.quiet import quiet_lightning
    from ..errors import ConfigError
    from .diagnose import diagnose, write_diagnosis
    if args.permutations < 1:
        raise ConfigError(f"--permutations must be >= 1, got {args.permutations}")
    importlib.import_module("lightning")  # configures its loggers on import; quiet them after
    quiet_lightning()
    d = diagnose(args.run, permutations=args.permutations, seed=args.seed)
    paths = write_diagnosis(d, args.out)
    print(Path(paths[0]).read_text())
    print("wrote " + ", ".join(map(str, paths)))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from ..errors import ConfigError
    from .predict import read_new_data, write_predictions
    from .runs import load_run
    if args.batch_size is not None and args.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {args.batch_size}")
    run = load_run(args.run, checkpoint=args.checkpoint)
    arrays, label = read_new_data(args.data, run.inputs)
    pred = run.predict(arrays, batch_size=args.batch_size)
    scores = write_predictions(args.out, pred, label)
    shown = "".join(f", {k}={v:.4f}" for k, v in scores.items())
    parts = ", ".join(["fused", *(f"head {m}" for m in pred.unimodal), *(f"fusion {m}" for m in pred.fusion)])
    print(f"predict: {len(pred.logits)} rows with {run.checkpoint.name if run.checkpoint else 'the stages'} "
          f"of {run.path} ({parts}){shown} -> {args.out}")
    return 0
