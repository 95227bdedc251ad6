"""Where a benchmark's runs train: this machine's process pool (``--launcher local``) or one
SLURM job per run through submitit (``--launcher submitit``, the ``slurm`` extra).

This module holds what every launched command shares: the options and their command-line
flags (:func:`add_launcher_args`, :func:`launch_options`), the submitit executor they make
(:func:`make_executor`, :func:`sbatch_script`), and the set-up of a job's process
(:func:`setup_job`). :mod:`.launch_sweep` runs ``bench compare`` / ``bench synthetic`` runs
as jobs, :mod:`.launch_tune` runs ``tune`` workers as jobs. submitit is imported only when a
job is launched: importing mmbalance and running locally never needs it.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

from ..errors import ConfigError

LAUNCHERS = ("local", "submitit")
CLUSTERS = ("auto", "slurm", "local")
#: ``--slurm-time`` when none is given: accepted by most partitions; a run that needs longer
#: is requeued from its ``last.ckpt`` when the limit comes (up to :data:`MAX_TIMEOUTS` times)
DEFAULT_MINUTES = 60
#: how many times a job stopped by its time limit is requeued (preemptions do not count)
MAX_TIMEOUTS = 20
#: seconds before the time limit at which SLURM sends USR2 (submitit's ``--signal=USR2@90``)
SIGNAL_DELAY_S = 90


@dataclass(frozen=True)
class LaunchOptions:
    """How runs are launched.

    Attributes:
        launcher: ``local`` (this machine's processes) or ``submitit`` (one job per run).
        cluster: submitit's executor: ``slurm``, ``local`` (submitit's local executor: the same
            pickles, folders and signals, on this machine) or ``auto`` (slurm where ``sbatch``
            is on the PATH, else local).
        partition, gpus_per_job, minutes, array_parallelism: the jobs' SLURM request
            (``None``: SLURM's default; ``array_parallelism`` None: every job at once).
        extra: further ``#SBATCH`` lines, ``key -> value`` (``--slurm-extra qos=high``).
    """

    launcher: str = "local"
    cluster: str = "auto"
    partition: Optional[str] = None
    gpus_per_job: Optional[int] = None
    minutes: int = DEFAULT_MINUTES
    array_parallelism: Optional[int] = None
    extra: Tuple[Tuple[str, Any], ...] = field(default=())

    @property
    def submitit(self) -> bool:
        return self.launcher == "submitit"

    def resolved_cluster(self) -> str:
        if self.cluster != "auto":
            return self.cluster
        return "slurm" if shutil.which("sbatch") else "local"


def add_launcher_args(parser: argparse.ArgumentParser) -> None:
    """The launcher flags, on every command that launches runs in pools."""
    g = parser.add_argument_group("launcher (one SLURM job per run; pip install 'mmbalance[slurm]')")
    g.add_argument("--launcher", choices=LAUNCHERS, default="local",
                   help="local: this machine's processes (--workers); submitit: one job per run, as array jobs")
    g.add_argument("--submitit-cluster", choices=CLUSTERS, default="auto",
                   help="submitit's executor: slurm, or local (the same jobs on this machine); auto: slurm where "
                        "sbatch is on the PATH")
    g.add_argument("--slurm-partition", help="the jobs' partition (default: the cluster's)")
    g.add_argument("--slurm-gpus-per-job", type=int, help="GPUs per job (--gpus-per-node; default none)")
    g.add_argument("--slurm-time", default=str(DEFAULT_MINUTES),
                   help=f"time limit per job: MINUTES, HH:MM:SS or D-HH:MM:SS (default {DEFAULT_MINUTES}); a run "
                        f"stopped by it is requeued from its last.ckpt (up to {MAX_TIMEOUTS} times)")
    g.add_argument("--slurm-array-parallelism", type=int,
                   help="at most this many jobs at once (the array's %%N; default: all)")
    g.add_argument("--slurm-extra", action="append", default=[], metavar="KEY=VALUE",
                   help="a further #SBATCH option, repeatable (e.g. qos=high, account=lab, cpus-per-task=8, mem=16G)")


def launch_options(args: argparse.Namespace) -> LaunchOptions:
    """The :class:`LaunchOptions` of parsed flags (bad values: one clear line)."""
    extra = []
    for item in getattr(args, "slurm_extra", None) or []:
        key, sep, value = item.partition("=")
        key = key.strip().lstrip("-")
        if not key or (sep and not value.strip()):
            raise ConfigError(f"--slurm-extra {item!r} is not KEY=VALUE or KEY (e.g. qos=high, exclusive)")
        extra.append((key, value.strip() if sep else True))
    for flag, value in (("--slurm-gpus-per-job", args.slurm_gpus_per_job),
                        ("--slurm-array-parallelism", args.slurm_array_parallelism)):
        if value is not None and value < (0 if flag == "--slurm-gpus-per-job" else 1):
            raise ConfigError(f"{flag} must be >= {0 if flag == '--slurm-gpus-per-job' else 1}, got {value}")
    if args.launcher == "submitit":
        require_submitit()
    return LaunchOptions(args.launcher, args.submitit_cluster, args.slurm_partition, args.slurm_gpus_per_job,
                         parse_minutes(args.slurm_time), args.slurm_array_parallelism, tuple(extra))


def parse_minutes(text: str) -> int:
    """``"90"``, ``"1:30:00"``, ``"2-00:00:00"``, ``"45:00"`` (MM:SS) -> whole minutes (at least 1)."""
    match = re.fullmatch(r"\s*(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?\s*", str(text))
    if not match:
        raise ConfigError(f"--slurm-time {text!r} is not MINUTES, HH:MM:SS or D-HH:MM:SS")
    days, a, b, c = (int(x) if x else None for x in match.groups())
    if c is not None:
        seconds = a * 3600 + b * 60 + c
    elif b is not None:
        seconds = a * 3600 + b * 60 if days is not None else a * 60 + b  # D-HH:MM or MM:SS, as sbatch reads them
    else:
        seconds = a * (3600 if days is not None else 60)
    seconds += (days or 0) * 86400
    if seconds <= 0:
        raise ConfigError(f"--slurm-time must be positive, got {text!r}")
    return max(1, -(-seconds // 60))


def require_submitit():
    """submitit, or one line saying which extra installs it."""
    try:
        import submitit
    except ImportError:
        raise ConfigError("--launcher submitit needs submitit: pip install 'mmbalance[slurm]'") from None
    return submitit


def make_executor(options: LaunchOptions, folder: Path, name: str = "mmbalance"):
    """submitit's executor for ``options``: jobs' pickles and logs in ``folder/<job id>``
    (it must be on the file system the nodes share)."""
    submitit = require_submitit()
    folder = Path(folder) / "%j"
    if options.resolved_cluster() == "local":
        executor = submitit.LocalExecutor(folder, max_num_timeout=MAX_TIMEOUTS)
        executor.update_parameters(timeout_min=options.minutes, gpus_per_node=options.gpus_per_job or 0,
                                   signal_delay_s=SIGNAL_DELAY_S if options.minutes > 3 else 10)
        return executor
    try:
        executor = submitit.SlurmExecutor(folder, max_num_timeout=MAX_TIMEOUTS)
    except RuntimeError as exc:  # no srun here
        raise ConfigError(f"--launcher submitit: {exc} (use --submitit-cluster local to run the jobs here)") from None
    executor.update_parameters(**slurm_parameters(options, name))
    return executor


def slurm_parameters(options: LaunchOptions, name: str) -> Dict[str, Any]:
    """The SlurmExecutor's parameters of ``options`` (``#SBATCH`` lines of every job)."""
    params: Dict[str, Any] = {"job_name": name, "time": options.minutes, "signal_delay_s": SIGNAL_DELAY_S,
                              "ntasks_per_node": 1}
    if options.partition:
        params["partition"] = options.partition
    if options.gpus_per_job:
        params["gpus_per_node"] = options.gpus_per_job
    if options.array_parallelism:
        params["array_parallelism"] = options.array_parallelism
    if options.extra:
        params["additional_parameters"] = {k.replace("-", "_"): v for k, v in options.extra}
    return params


def sbatch_script(options: LaunchOptions, folder: Path, count: int, name: str = "mmbalance") -> str:
    """The sbatch file submitit writes for an array of ``count`` jobs under ``options``
    (made without a cluster: for checks and the docs)."""
    require_submitit()
    from submitit.slurm.slurm import _make_sbatch_string
    return _make_sbatch_string(command="python -u -m submitit.core._submit " + str(Path(folder) / "%j"),
                               folder=Path(folder) / "%j", map_count=count, **slurm_parameters(options, name))


def parallel_jobs(options: LaunchOptions, count: int) -> int:
    """How many of ``count`` jobs run at once: the array's limit, on this machine at most
    one per core (submitit's local executor has no queue of its own)."""
    limit = options.array_parallelism or count
    if options.resolved_cluster() == "local":
        limit = min(limit, os.cpu_count() or 1)
    return max(1, min(limit, count))


def job_threads(options: LaunchOptions, parallel: int) -> Optional[int]:
    """Intra-op threads of each job: on SLURM what the allocation gives (``cpus-per-task``,
    or ``OMP_NUM_THREADS``, which jobs inherit); on this machine ``OMP_NUM_THREADS`` when set,
    else the cores shared among the jobs that run at once."""
    if options.resolved_cluster() != "local":
        return None
    given = os.environ.get("OMP_NUM_THREADS", "")
    return int(given) if given.isdigit() and int(given) > 0 else max(1, (os.cpu_count() or 1) // parallel)


def setup_job(threads: Optional[int]) -> None:
    """A job's process: ``threads`` intra-op threads (None: what the allocation gives) and
    quiet Lightning, as in the local pool's workers."""
    import importlib
    import warnings
    importlib.import_module("lightning")  # configures its loggers on import; quiet them after
    import torch
    from ..training.quiet import quiet_lightning
    if threads:
        torch.set_num_threads(threads)
    quiet_lightning()
    warnings.filterwarnings("ignore")


def log_paths(job) -> str:
    """Where a job's output is: its stderr log (and stdout beside it)."""
    try:
        return str(job.paths.stderr)
    except Exception:  # a job object without paths (not a submitit job)
        return "?"


def short_error(exc: BaseException) -> str:
    """The first informative line of a job's exception."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip() and not set(line.strip()) <= {"-"}]
    for line in reversed(lines):  # the trace's last line names the exception
        if re.match(r"^[\w.]+(Error|Exception|Interrupt|Exit)\b", line):
            return line
    return lines[0] if lines else type(exc).__name__


def job_states(jobs: Sequence[Any]) -> Dict[str, int]:
    """``{"running": n, "waiting": m}`` of unfinished submitit jobs (from the scheduler's
    cached view: no extra call to it)."""
    counts = {"running": 0, "waiting": 0}
    for job in jobs:
        state = str(getattr(job, "state", "") or "").upper()
        counts["running" if state.startswith(("RUNNING", "COMPLETING")) else "waiting"] += 1
    return counts
