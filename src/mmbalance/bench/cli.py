"""Sub-commands ``bench synthetic``, ``bench compare`` and ``tune``.

Other benchmark modules add ``bench`` sub-commands by listing themselves in
``BENCH_MODULES``: each has ``register_bench(bench_subparsers)``.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import time
from pathlib import Path
from typing import List

#: Modules adding ``bench <name>`` commands through ``register_bench(subparsers)``.
BENCH_MODULES: List[str] = ["mmbalance.bench.speed.cli"]


def add_launcher_args(parser) -> None:
    from .launch import add_launcher_args as add
    add(parser)


def launch_options(args: argparse.Namespace):
    from .launch import launch_options as options
    return options(args)


def register(sub) -> None:
    bench = sub.add_parser("bench", help="benchmarks (synthetic competition sweep, ...)")
    bench_sub = bench.add_subparsers(dest="bench_command", required=True, parser_class=type(bench))
    s = bench_sub.add_parser("synthetic", help="every method across the U1/S grid (paper Figure 1)")
    s.add_argument("--out", help="sweep directory (default runs/bench/synthetic[_quick])")
    s.add_argument("--quick", action="store_true", help="3 ratios, 1 seed, small data: a few minutes")
    s.add_argument("--workers", type=int, default=1, help="parallel training processes")
    s.add_argument("--methods", nargs="+", help="method names or labels (unimodal-x1), default: all registered")
    s.add_argument("--seeds", nargs="+", help="seeds to run, default 0 1 2 (quick: 0)")
    s.add_argument("--n", type=int, help="synthetic data size for every run")
    s.add_argument("--epochs", type=int, help="max epochs for every run")
    s.add_argument("--set", nargs="*", action="extend", default=[], metavar="KEY=VALUE",
                   help="overrides applied to every run alike (e.g. model.hidden=64)")
    s.add_argument("--preset", default="default", help=_preset_help())
    s.add_argument("--tuned", help="directory of tuned configs (<label>.yaml from `mmbalance tune --name LABEL`); "
                                   "their optim.* and method.* keys are used")
    s.add_argument("--trials-per-method", type=int, default=0,
                   help="tune every method with this many trials first (into OUT/tuned), then sweep")
    add_launcher_args(s)
    s.set_defaults(func=cmd_bench_synthetic)
    c = bench_sub.add_parser("compare", help="every method on one dataset: CIs, paired deltas, ranks, gaps")
    c.add_argument("--data", required=True, help="synthetic, a built-in dataset (e.g. mfeat), or a .npz/.h5 file")
    c.add_argument("--out", required=True, help="comparison directory (results.csv, summary.md, runs/)")
    c.add_argument("--methods", nargs="+", help="method names or labels, default: all registered "
                                                "(unimodal runs of every modality are always added)")
    c.add_argument("--seeds", nargs="+", help="run seeds, default 0 1 2 3 4")
    c.add_argument("--data-seed", type=int, default=0, help="the split's seed, the same for every run (default 0)")
    c.add_argument("--epochs", type=int, help="max epochs for every run (default 30)")
    c.add_argument("--patience", type=int, help="early-stopping patience for every run (default 8)")
    c.add_argument("--workers", type=int, default=1, help="parallel training processes")
    c.add_argument("--trials-per-method", type=int, default=0,
                   help="tune every method with this many Optuna trials on the validation split first")
    c.add_argument("--set", nargs="*", action="extend", default=[], metavar="KEY=VALUE",
                   help="overrides applied to every run alike (e.g. data.modalities=[pix,fou])")
    c.add_argument("--preset", default="default", help=_preset_help() + " With --data synthetic only; a "
                   "preset other than default also fixes the headline cell S=0.1, U1=0.8.")
    add_launcher_args(c)
    c.set_defaults(func=cmd_bench_compare)
    for module in BENCH_MODULES:
        importlib.import_module(module).register_bench(bench_sub)

    t = sub.add_parser("tune", help="Optuna search over a method's declared search space")
    t.add_argument("--data", required=True, help="synthetic, a dataset name, or a .npz/.h5 file")
    t.add_argument("--method", required=True)
    t.add_argument("--trials", type=int, required=True, help="the study's trial budget: finished trials over all workers sharing it (a rerun "
                   "tops the study up to it)")
    t.add_argument("--out", required=True, help="directory of <name>.yaml, trial runs and the default storage")
    t.add_argument("--storage", help="SQLAlchemy URL of the study (default: sqlite:///OUT/optuna.db)")
    t.add_argument("--study-name", help="default: --name")
    t.add_argument("--name", help="label of the output files (default: the method name)")
    t.add_argument("--metric", help="validation metric to optimise (default: trainer.monitor)")
    t.add_argument("--config", help="YAML file of fixed overrides")
    t.add_argument("--set", nargs="*", action="extend", default=[], metavar="KEY=VALUE", help="fixed overrides")
    t.add_argument("--sampler-seed", type=int, help="TPE seed (leave unset when several workers share a study)")
    t.add_argument("--keep-checkpoints", action="store_true", help="keep each trial's checkpoints")
    t.add_argument("--no-prune", action="store_true",
                   help="run every trial to the end (default: a median pruner stops a trial whose validation "
                        "metric is below the other trials' median at the same epoch, from the 3rd epoch, once "
                        "5 trials have completed)")
    t.add_argument("--workers", type=int, default=1,
                   help="workers on the study, one SLURM job each (needs --launcher submitit when > 1)")
    add_launcher_args(t)
    t.set_defaults(func=cmd_tune)


def _preset_help() -> str:
    from .synthetic import PRESETS
    return "a named generator/optimizer setting (docs/bench_synthetic/presets.md). " + " ".join(
        p.help() for p in PRESETS.values())


def _positive(value: int, flag: str, minimum: int = 1) -> int:
    from ..errors import ConfigError
    if value is not None and value < minimum:
        raise ConfigError(f"{flag} must be >= {minimum}, got {value}")
    return value


def _settings(args: argparse.Namespace):
    import dataclasses
    from ..errors import ConfigError
    from .synthetic import DEFAULT_SETTINGS, QUICK_SETTINGS
    from .synthetic import get_preset
    settings = QUICK_SETTINGS if args.quick else DEFAULT_SETTINGS
    preset = get_preset(getattr(args, "preset", "default"))
    preset_set = dict(preset.overrides)
    changes = {"unique2": preset_set.pop("data.unique2")} if "data.unique2" in preset_set else {}
    if not args.quick:
        changes.update({k: v for k, v in (("n", preset.n), ("seeds", preset.seeds)) if v is not None})
    if preset_set:
        changes["extra"] = tuple(sorted(preset_set.items()))
    if args.seeds:
        try:
            changes["seeds"] = tuple(int(s) for item in args.seeds for s in item.split(",") if s.strip())
        except ValueError:
            raise ConfigError(f"--seeds must be integers, got {' '.join(args.seeds)}") from None
    if args.n is not None:
        changes["n"] = _positive(args.n, "--n", 10)
    if args.epochs is not None:
        changes["max_epochs"] = _positive(args.epochs, "--epochs")
    if args.set:
        from ..config import parse_set_items
        extra = parse_set_items(args.set)
        fixed = [k for k in extra if k in ("seed", "data.seed", "data.shared", "data.unique1", "data.unique2")
                 or k.startswith("method.")]
        if fixed:
            raise ConfigError(f"--set {fixed[0]} is chosen by the sweep (grid, seeds, methods); "
                              "use --seeds, --methods or --tuned")
        changes["extra"] = tuple(sorted({**preset_set, **extra}.items()))  # --set wins over the preset
    return dataclasses.replace(settings, **changes)


def _quiet_lightning_here(workers: int) -> None:
    """Imports and quiets Lightning in this process when it trains (one worker). With more,
    it trains nothing and leaves Lightning's seconds of imports to its workers, which then
    start at once instead of after them."""
    if workers == 1:
        from ..training.quiet import quiet_lightning  # imports Lightning, which configures its loggers
        quiet_lightning()


def cmd_bench_synthetic(args: argparse.Namespace) -> int:
    from ..errors import ConfigError
    from .report import write_report
    from .synthetic import ceilings, load_tuned, make_jobs, method_variants
    _positive(args.workers, "--workers")
    launcher = launch_options(args)  # a missing extra or a bad flag fails before any work
    _positive(args.trials_per_method, "--trials-per-method", 0)
    if args.tuned and args.trials_per_method:
        raise ConfigError("give either --tuned DIR or --trials-per-method N, not both")
    _quiet_lightning_here(args.workers)
    out = Path(args.out or ("runs/bench/synthetic_quick" if args.quick else "runs/bench/synthetic"))
    settings = dataclasses.replace(_settings(args), stage_cache=str(out.resolve() / "stage_cache"))
    variants = method_variants(args.methods)
    from .compare import runnable
    variants = runnable(variants, args.methods, "synthetic", settings.run_overrides(*settings.grid[0], 0),
                        "bench synthetic")  # MLP encoders: greedy (encoders with stages) does not apply
    tuned_dir = args.tuned
    if args.trials_per_method:
        from .synthetic import TUNE_POINT
        shared, unique1 = TUNE_POINT
        tuned_dir = _tune_all(variants, settings.run_overrides(shared, unique1, 0), args.trials_per_method,
                              out / "tuned", args.workers,
                              where=f"at S={shared}, U1={unique1}, U2={settings.unique2} ", launcher=launcher)
    tuned = load_tuned(tuned_dir, variants) if tuned_dir else None
    jobs = make_jobs(settings, variants, tuned)
    _validate(jobs)
    out.mkdir(parents=True, exist_ok=True)
    _write_settings(out, settings, variants, tuned_dir)
    print(f"bench synthetic: {len(variants)} methods x {len(settings.grid)} ratios x {len(settings.seeds)} seeds "
          f"= {len(jobs)} runs; n={settings.n}, max {settings.max_epochs} epochs, patience {settings.patience}, "
          f"{'tuned from ' + str(tuned_dir) if tuned_dir else 'default hyperparameters'}; "
          f"{args.workers} worker(s) -> {out}", flush=True)
    start = time.perf_counter()
    done = _run_jobs(jobs, out, args.workers, launcher)
    if done is None:
        return 130
    outcome, rows = done
    paths = write_report(rows, out, [v.label for v in variants], _preamble(settings, len(rows), len(jobs),
                                                                            tuned_dir, outcome.failed),
                         ceilings=ceilings(jobs, out))
    return _finish(outcome, start, out, paths)


def _preamble(settings, done: int, total: int, tuned_dir, failed) -> str:
    """The settings line of ``summary.md``."""
    failures = "".join(f"\n- {run}: {err}" for run, err in failed)
    return (f"{done} of {total} runs; n={settings.n}, U2={settings.unique2}, max {settings.max_epochs} epochs, "
            f"early-stopping patience {settings.patience}, seeds {', '.join(map(str, settings.seeds))}, "
            + (f"hyperparameters tuned ({tuned_dir})" if tuned_dir else "default hyperparameters")
            + "".join(f", {k}={v}" for k, v in settings.extra)
            + (f".\n\nFailed in the last invocation (rerun to retry):{failures}" if failures else "."))


def _validate(jobs) -> None:
    """Builds one configuration per method now, so a bad --set fails before any training."""
    from ..config import build_config
    from ..methods import get_method
    seen = set()
    for job in jobs:
        if job.variant.label not in seen:
            seen.add(job.variant.label)
            build_config(job.variant.method, job.data_spec, dict(job.overrides),
                         get_method(job.variant.method).Hyperparameters)


def _write_settings(out: Path, settings, variants, tuned_dir) -> None:
    import dataclasses
    info = {"settings": dataclasses.asdict(settings), "methods": [v.label for v in variants],
            "tuned": str(tuned_dir) if tuned_dir else None}
    (out / "sweep.json").write_text(json.dumps(info, indent=2))


def _tune_all(variants, base: dict, trials: int, tuned_dir: Path, workers: int, data_spec: str = "synthetic",
              where: str = "", launcher=None) -> Path:
    """Tunes every variant with ``trials`` trials on ``base`` (seed 0), selecting on validation
    accuracy only (``tune``'s objective), into ``tuned_dir/<label>.yaml``."""
    from .tune import TuneTask, run_tasks
    print(f"tuning {len(variants)} methods, {trials} trials each, {where}(seed 0, validation accuracy only) "
          f"-> {tuned_dir}", flush=True)
    tasks = []
    for v in variants:
        overrides = {**dict(v.fixed), **base}
        tasks.append(TuneTask(v.method, v.label, tuple(sorted(overrides.items())), trials, str(tuned_dir),
                              data_spec=data_spec))
    if launcher is not None and launcher.submitit:  # one job per method
        from .launch_tune import run_tune_tasks
        results = run_tune_tasks(tasks, launcher, log=lambda line: print(line, flush=True))
    else:
        results = run_tasks(tasks, workers)
    for result in results:
        print(f"tuned {result.name}: val {result.best_value:.4f} with {result.best_params} "
              f"({result.finished_trials} trials: {result.counts()})", flush=True)
    return tuned_dir


def cmd_tune(args: argparse.Namespace) -> int:
    _positive(args.workers, "--workers")
    launcher = launch_options(args)
    if args.workers > 1 and not launcher.submitit:
        from ..errors import ConfigError
        raise ConfigError("tune --workers N starts N jobs: add --launcher submitit (--submitit-cluster local runs "
                          "them on this machine), or start `mmbalance tune` N times by hand on one --storage")
    from ..config import load_yaml, parse_set_items
    from ..training.quiet import quiet_lightning
    from .tune import tune
    _positive(args.trials, "--trials", 0)
    importlib.import_module("lightning")  # configures its loggers on import; quiet them after
    quiet_lightning()
    base = load_yaml(args.config) if args.config else {}
    base.update(parse_set_items(args.set))
    if launcher.submitit:
        from .launch_tune import tune_launched
        return tune_launched(args, base, launcher)
    result = tune(args.method, args.data, base, args.trials, args.out, storage=args.storage, name=args.name,
                  study_name=args.study_name, metric=args.metric, sampler_seed=args.sampler_seed,
                  keep_checkpoints=args.keep_checkpoints, pruner=None if args.no_prune else "median",
                  log=lambda line: print(line, flush=True))
    print(f"this process ran trials {result.ran_trials}; the study has {result.finished_trials} finished "
          f"({result.counts()})")
    print(f"best: val {result.best_value:.4f} (trial {result.best_trial}) {result.best_params}")
    if result.running_elsewhere:
        print(f"{'wrote' if result.config_written else 'kept'} {result.config_path} (provisional: trials "
              f"{result.running_elsewhere} still run in other workers; the worker that finishes the study's last trial writes the final file)")
    else:
        print(f"wrote {result.config_path}" if result.config_written
              else f"{result.config_path} already holds this configuration (written by {result.final_by})"
              if result.final_by else f"{result.config_path} already holds this configuration")
    return 0


def _seeds(items, default):
    from ..errors import ConfigError
    if not items:
        return default
    try:
        return tuple(int(s) for item in items for s in item.split(",") if s.strip())
    except ValueError:
        raise ConfigError(f"--seeds must be integers, got {' '.join(items)}") from None


def cmd_bench_compare(args: argparse.Namespace) -> int:
    from ..config import parse_set_items
    from ..errors import ConfigError
    from .compare import CompareSettings, DEFAULT_EPOCHS, DEFAULT_PATIENCE, DEFAULT_SEEDS, compare_variants, \
        data_modalities, make_compare_jobs
    from .report import write_report
    from .synthetic import ceilings, load_tuned
    _positive(args.workers, "--workers")
    launcher = launch_options(args)  # a missing extra or a bad flag fails before any work
    _positive(args.trials_per_method, "--trials-per-method", 0)
    extra = parse_set_items(args.set)
    fixed = [k for k in extra if k in ("seed", "data.seed", "trainer.max_epochs", "trainer.patience")
             or k.startswith("method.")]
    if fixed:
        raise ConfigError(f"--set {fixed[0]} is chosen by the comparison; use --seeds, --data-seed, --epochs, "
                          "--patience or --methods")
    from .synthetic import compare_preset
    extra, preset_seeds = compare_preset(args.preset, args.data, extra)
    args.seeds = args.seeds or ([str(s) for s in preset_seeds] if preset_seeds else None)
    _quiet_lightning_here(args.workers)
    out = Path(args.out).resolve()
    settings = CompareSettings(args.data, _seeds(args.seeds, DEFAULT_SEEDS), args.data_seed,
                               _positive(args.epochs, "--epochs") or DEFAULT_EPOCHS,
                               DEFAULT_PATIENCE if args.patience is None else _positive(args.patience, "--patience", 0),
                               str(out / "stage_cache"), tuple(sorted(extra.items())))
    modalities = data_modalities(args.data, {**extra, "data.seed": args.data_seed})
    variants = compare_variants(args.methods, modalities)
    from .compare import runnable
    variants = runnable(variants, args.methods, args.data, {**extra, "data.seed": args.data_seed}, "bench compare")
    tuned_dir = None
    if args.trials_per_method:
        tuned_dir = _tune_all(variants, settings.run_overrides(0), args.trials_per_method, out / "tuned",
                              args.workers, data_spec=args.data, where=f"on {args.data} ", launcher=launcher)
    tuned = load_tuned(tuned_dir, variants) if tuned_dir else None
    jobs = make_compare_jobs(settings, variants, tuned)
    _validate(jobs)
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.json").write_text(json.dumps({"settings": settings.__dict__ | {"seeds": list(settings.seeds)},
                                                  "methods": [v.label for v in variants],
                                                  "tuned": str(tuned_dir) if tuned_dir else None}, indent=2,
                                                 default=str))
    print(f"bench compare on {args.data} ({', '.join(modalities)}): {len(variants)} methods x {len(settings.seeds)} "
          f"seeds = {len(jobs)} runs; max {settings.max_epochs} epochs, patience {settings.patience}, "
          f"{'tuned, ' + str(args.trials_per_method) + ' trials per method' if tuned_dir else 'default hyperparameters'}; "
          f"{args.workers} worker(s) -> {out}", flush=True)
    start = time.perf_counter()
    done = _run_jobs(jobs, out, args.workers, launcher)
    if done is None:
        return 130
    outcome, rows = done
    preamble = (f"{len(rows)} of {len(jobs)} runs on `{args.data}` (modalities {', '.join(modalities)}); "
                f"split seed {settings.data_seed} for every run, run seeds {', '.join(map(str, settings.seeds))}; "
                f"max {settings.max_epochs} epochs, early-stopping patience {settings.patience} for every method; "
                + (f"every method tuned with {args.trials_per_method} Optuna trials on validation accuracy only"
                   if tuned_dir else "default hyperparameters (no tuning) for every method")
                + "".join(f", {k}={v}" for k, v in settings.extra) + "."
                + "".join(f"\n- FAILED {run}: {err}" for run, err in outcome.failed))
    paths = write_report(rows, out, [v.label for v in variants], preamble, ceilings=ceilings(jobs, out),
                         title=f"Method comparison on {args.data}")
    return _finish(outcome, start, out, paths)


def _finish(outcome, start: float, out: Path, paths) -> int:
    """The closing lines of ``bench synthetic`` and ``bench compare``: counts and time, the
    summary, the files written; exit 1 when a run failed."""
    print(f"\n{len(outcome.written)} runs now, {outcome.skipped} already done, {outcome.recovered} recovered, "
          f"{len(outcome.failed)} failed; {time.perf_counter() - start:.0f} s")
    print((out / "summary.md").read_text())
    print("wrote " + ", ".join(str(p) for p in paths))
    return 1 if outcome.failed else 0


def _run_jobs(jobs, out: Path, workers: int, launcher=None):
    """Runs ``jobs`` (resumable, in ``workers`` processes, or one submitit job each with
    ``launcher``); returns the outcome and this command's rows of ``results.csv``, or None
    when interrupted (finished runs are kept)."""
    from .results import ResultsFile
    from .synthetic import run_sweep
    try:
        if launcher is not None and launcher.submitit:
            from .launch_sweep import run_sweep_launched
            outcome = run_sweep_launched(jobs, out, launcher, log=lambda line: print(line, flush=True))
        else:
            outcome = run_sweep(jobs, out, workers=workers, log=lambda line: print(line, flush=True))
    except KeyboardInterrupt:
        print(f"\ninterrupted: finished runs are in {out / 'results.csv'}; rerun the same command to continue")
        return None
    wanted = {j.run_id for j in jobs}
    return outcome, [r for r in ResultsFile(out / "results.csv").rows() if r["run_id"] in wanted]
