"""``--launcher submitit`` without a cluster: the flags, the sbatch script and pickles that
submitit writes for an array (a fake ``sbatch`` records them), the one-line error without the
extra, and the storage rule of ``tune --workers``."""

from __future__ import annotations

import argparse
import os
import stat
import sys
from pathlib import Path

import pytest

from mmbalance import ConfigError
from mmbalance.bench.launch import LaunchOptions, add_launcher_args, launch_options, parse_minutes
from mmbalance.cli import main


def _options(*flags):
    parser = argparse.ArgumentParser()
    add_launcher_args(parser)
    return launch_options(parser.parse_args(list(flags)))


def test_time_limits_read_as_sbatch_reads_them():
    # MINUTES, MM:SS, HH:MM:SS, D-HH, D-HH:MM:SS (sbatch --time); seconds round up to a minute
    assert [parse_minutes(t) for t in ("90", "45:30", "1:30:00", "1-12", "2-00:00:00")] == \
        [90, 46, 90, 36 * 60, 48 * 60]
    for bad in ("", "1h", "0", "0:00:00"):
        with pytest.raises(ConfigError, match="--slurm-time"):
            parse_minutes(bad)


def test_bad_launcher_flags_are_one_clear_error():
    with pytest.raises(ConfigError, match="--slurm-extra 'qos=' is not KEY=VALUE"):
        _options("--slurm-extra", "qos=")
    with pytest.raises(ConfigError, match="--slurm-array-parallelism must be >= 1"):
        _options("--slurm-array-parallelism", "0")
    assert _options().launcher == "local" and _options().minutes == 60


def test_launcher_submitit_without_the_extra_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "submitit", None)  # as if not installed: `import submitit` fails
    code = main(["bench", "compare", "--data", "synthetic", "--out", str(tmp_path), "--launcher", "submitit"])
    err = capsys.readouterr().err
    assert code == 2 and err == "error: --launcher submitit needs submitit: pip install 'mmbalance[slurm]'\n"
    assert not any(tmp_path.iterdir())  # failed before any work
    assert _options("--launcher", "local").launcher == "local"  # the local launcher never needs it


def test_the_stage_cache_lock_refreshes_the_nfs_view_and_names_a_file_system_without_locks(tmp_path, monkeypatch):
    import errno
    from mmbalance.training import run
    lock = tmp_path / "stage_cache" / "unimodal_x1-0123456789ab.lock"
    (tmp_path / "stage_cache" / "unimodal_x1-0123456789ab").mkdir(parents=True)
    changed = []
    monkeypatch.setattr(run.os, "chmod", lambda path, mode: changed.append((Path(path), mode)))
    with run._locked(lock):
        # under the lock: the cache folder and the stage's folder were re-read (mode set to itself)
        stage = lock.with_name("unimodal_x1-0123456789ab")
        assert changed == [(lock.parent, lock.parent.stat().st_mode & 0o7777), (stage, stage.stat().st_mode & 0o7777)]

    def no_locks(handle, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(run.fcntl, "flock", no_locks)
    with pytest.raises(ConfigError, match=r"cannot lock .*unimodal_x1-0123456789ab\.lock \(No locks available\); "
                                          r"the cache needs flock that holds across nodes"):
        with run._locked(lock):
            pass


submitit = pytest.importorskip("submitit", reason="submitit is not installed (pip install 'mmbalance[slurm]'): "
                                                  "the tests of its sbatch script and pickles need it")


def _fake_slurm(tmp_path, monkeypatch):
    """``sbatch`` that keeps the script it is given and answers a job id; ``srun`` (submitit
    checks that it exists)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = tmp_path / "submitted.sh"
    (bin_dir / "sbatch").write_text(f'#!/bin/sh\ncp "$1" "{record}"\necho "Submitted batch job 4242"\n')
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")
    for tool in bin_dir.iterdir():
        tool.chmod(tool.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return record


def test_an_array_submission_writes_the_sbatch_script_and_one_pickle_per_run(tmp_path, monkeypatch):
    from mmbalance.bench.launch import make_executor, sbatch_script
    from mmbalance.bench.launch_sweep import SweepCall
    from mmbalance.bench.runner import Job, Variant
    record = _fake_slurm(tmp_path, monkeypatch)
    options = _options("--launcher", "submitit", "--submitit-cluster", "slurm", "--slurm-partition", "gpu",
                       "--slurm-gpus-per-job", "2", "--slurm-time", "1:30:00", "--slurm-array-parallelism", "3",
                       "--slurm-extra", "qos=high", "--slurm-extra", "account=lab", "--slurm-extra", "exclusive")
    assert options == LaunchOptions("submitit", "slurm", "gpu", 2, 90, 3,
                                    (("qos", "high"), ("account", "lab"), ("exclusive", True)))
    jobs = [Job(Variant("joint", "joint"), seed, (("seed", seed),)) for seed in range(5)]
    folder = tmp_path / "out" / "submitit"
    executor = make_executor(options, folder)
    with executor.batch():
        handles = [executor.submit(SweepCall(), job, str(tmp_path / job.run_id)) for job in jobs]
    script = record.read_text().splitlines()
    for line in ("#SBATCH --array=0-4%3", "#SBATCH --partition=gpu", "#SBATCH --gpus-per-node=2",
                 "#SBATCH --time=90", "#SBATCH --qos=high", "#SBATCH --account=lab", "#SBATCH --exclusive",
                 "#SBATCH --signal=USR2@90", "#SBATCH --job-name=mmbalance",
                 f"#SBATCH --output={folder}/%A_%a/%A_%a_0_log.out"):
        assert line in script, (line, script)
    assert script[-1].endswith(f"-m submitit.core._submit {folder}/%j") and script[-1].startswith("srun ")
    # the same text as the one the docs show (made without sbatch), but for the python command
    assert sbatch_script(options, folder, 5).splitlines()[:-1] == script[:-1]
    # one pickle per run, in the folder of its array task, holding the call and its run
    assert [h.job_id for h in handles] == [f"4242_{i}" for i in range(5)]
    for handle, job in zip(handles, jobs):
        delayed = submitit.helpers.DelayedSubmission.load(folder / handle.job_id / f"{handle.job_id}_submitted.pkl")
        assert isinstance(delayed.function, SweepCall) and delayed.args[0] == job
        assert delayed.args[1] == str(tmp_path / job.run_id)
        assert hasattr(delayed.function, "checkpoint")  # requeued at a time limit or preemption


def test_several_slurm_tune_workers_need_a_shared_database():
    from mmbalance.bench.launch_tune import check_storage
    slurm = LaunchOptions("submitit", "slurm")
    for storage in (None, "sqlite:////shared/optuna.db"):
        with pytest.raises(ConfigError, match="needs --storage postgresql"):
            check_storage(storage, 2, slurm)
    check_storage("postgresql+psycopg2://u@db/optuna", 4, slurm)
    check_storage(None, 1, slurm)
    check_storage(None, 3, LaunchOptions("submitit", "local"))  # one machine: SQLite as tune uses it


def test_tune_workers_need_the_submitit_launcher(tmp_path, capsys):
    code = main(["tune", "--data", "synthetic", "--method", "joint", "--trials", "2", "--out", str(tmp_path),
                 "--workers", "2"])
    assert code == 2 and "add --launcher submitit" in capsys.readouterr().err



@pytest.mark.parametrize("state, waited_for", [("RUNNING", True), ("PENDING", True), ("COMPLETED", False),
                                               ("FAILED", False)])
def test_a_rerun_waits_for_the_job_an_earlier_call_left_queued_or_running(tmp_path, monkeypatch, state, waited_for):
    """The parent died but its job lives on: the rerun must not submit the run a second time
    into the same folder; a job the scheduler says has ended is submitted again."""
    import json
    from mmbalance.bench.launch import make_executor
    from mmbalance.bench.launch_sweep import _still_queued
    from mmbalance.bench.runner import Job, Variant
    _fake_slurm(tmp_path, monkeypatch)
    job_id = f"{5000 + ['RUNNING', 'PENDING', 'COMPLETED', 'FAILED'].index(state)}_3"  # the watcher caches by id
    sacct = tmp_path / "bin" / "sacct"
    sacct.write_text(f"#!/bin/sh\necho 'JobID|State|NodeList'\necho '{job_id}|{state}|node7'\n")
    sacct.chmod(0o755)
    job = Job(Variant("joint", "joint"), 0, (("seed", 0),))
    run_dir = tmp_path / "out" / "runs" / job.run_id
    run_dir.mkdir(parents=True)
    (run_dir / "job.json").write_text(json.dumps({"fingerprint": job.fingerprint}))
    (run_dir / "launch.json").write_text(json.dumps({"job_id": job_id}))
    executor = make_executor(LaunchOptions("submitit", "slurm"), tmp_path / "out" / "submitit")
    handle = _still_queued(tmp_path / "out", job, executor)
    assert (handle is not None) == waited_for and (handle is None or handle.job_id == job_id)
    (run_dir / "job.json").write_text(json.dumps({"fingerprint": "another run"}))  # other settings: not its job
    assert _still_queued(tmp_path / "out", job, executor) is None
