"""``mmbalance bench speed``: registered through ``bench/cli.py::BENCH_MODULES``."""

from __future__ import annotations

import argparse
from pathlib import Path

from ...errors import ConfigError


def register_bench(bench_sub) -> None:
    s = bench_sub.add_parser("speed", help="ms/step and peak memory of every method (what MCR costs over "
                                           "joint training)")
    s.add_argument("--out", required=True, help="directory of speed.csv, speed.md and the figures")
    s.add_argument("--quick", action="store_true", help="small models and few rounds: a smoke run of a minute or two")
    s.add_argument("--settings", nargs="+", default=["synthetic", "cremad", "mosei"],
                   help="any of synthetic (a), cremad (b), mosei (c), cremad_conformer (d: wav2vec2 and face "
                        "features -> Conformers; needs transformers), sthsth_swin (e: two Video Swin-T)")
    s.add_argument("--methods", nargs="+", help="labels of the table (default: all; see docs/performance.md)")
    s.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    s.add_argument("--precision", default="fp32", choices=["fp32", "bf16"],
                   help="autocast dtype for forward and loss (bf16: the GPU check)")
    s.add_argument("--batch", type=int, help="batch size of every setting (default: a 64, b 8, c 32, d 8, e 16)")
    s.add_argument("--repeats", type=int, help="timed rounds per setting (default 7; 5 for b, d, e on CPU; quick 3)")
    s.add_argument("--threads", type=int, help="torch CPU threads (default: torch's; 1 is robust on a busy machine)")
    s.add_argument("--no-sweeps", action="store_true", help="skip the P and M sweeps and their figures")
    s.add_argument("--no-memory", action="store_true", help="skip the fresh-process memory measurements")
    s.add_argument("--profile", nargs="+", metavar="METHOD",
                   help="instead of the table: torch.profiler tables of these methods (first --settings entry)")
    s.add_argument("--profile-steps", type=int, default=3)
    s.add_argument("--loop", action="store_true",
                   help="instead of the table: whole runs of `mmbalance train` (joint, synthetic, 1 and 10 epochs) "
                        "against a plain PyTorch loop, fresh processes; writes loop.md and loop.json")
    s.add_argument("--loop-epochs", type=int, nargs="+", default=[1, 10], metavar="E",
                   help="epoch counts of --loop (default 1 10)")
    s.set_defaults(func=cmd_bench_speed)


def cmd_bench_speed(args: argparse.Namespace) -> int:
    import torch  # here, not at the top: `mmbalance --help` does not pay torch's import

    from .cells import variant_by_label
    from .profile import profile_cells
    from .run import SpeedConfig, resolve_settings, run_speed

    for flag, value in (("--batch", args.batch), ("--repeats", args.repeats), ("--profile-steps", args.profile_steps),
                        ("--threads", args.threads)):
        if value is not None and value < 1:
            raise ConfigError(f"{flag} must be >= 1, got {value}")
    if args.device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {args.device}: CUDA is not available on this machine")
    try:
        for label in list(args.methods or []) + list(args.profile or []):
            variant_by_label(label)
        cfg = SpeedConfig(out=Path(args.out), quick=args.quick, settings=tuple(args.settings),
                                methods=tuple(args.methods) if args.methods else None, sweeps=not args.no_sweeps,
                                device=args.device, precision=args.precision, batch=args.batch,
                                repeats=args.repeats, memory=not args.no_memory, threads=args.threads)
        settings = resolve_settings(cfg)
    except KeyError as exc:
        raise ConfigError(str(exc.args[0])) from None
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.loop:
        import json

        from .loop import loop_markdown, measure_loop
        if any(e < 1 for e in args.loop_epochs):
            raise ConfigError(f"--loop-epochs must be >= 1, got {args.loop_epochs}")
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        rows = measure_loop(args.loop_epochs, repeats=args.repeats or 3, threads=args.threads or 1,
                            log=lambda line: print(line, flush=True))
        (out / "loop.json").write_text(json.dumps(rows, indent=2))
        (out / "loop.md").write_text(loop_markdown(rows))
        print(loop_markdown(rows))
        print(f"wrote {out / 'loop.md'}, {out / 'loop.json'}")
        return 0
    if args.profile:
        profile_cells(settings[0], args.profile, Path(args.out), steps=args.profile_steps, device=args.device,
                            precision=args.precision, log=lambda line: print(line, flush=True))
        return 0
    paths = run_speed(cfg, log=lambda line: print(line, flush=True))
    print((Path(args.out) / "speed.md").read_text())
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0
