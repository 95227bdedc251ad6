"""``bench compare --launcher submitit`` on submitit's local executor: real jobs through the
same pickles, folders and signals as on SLURM. One job is stopped as SLURM stops one at its
time limit (USR2: checkpoint and requeue) and resumes; another is killed (SIGKILL), reported
failed with its log, and resumed from its ``last.ckpt`` by the next call. The table then
equals the one ``--launcher local`` makes of the same runs, on one thread."""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time
from pathlib import Path

import pytest

from mmbalance.bench.results import ResultsFile
from mmbalance.cli import main

pytest.importorskip("submitit", reason="submitit is not installed (pip install 'mmbalance[slurm]'): "
                                       "the launcher's jobs cannot run")

TINY_SET = ["data.n=600", "data.dim=8", "data.latent_dim=4", "data.batch_size=8", "model.feature_dim=8",
            "model.hidden=8", "trainer.log_every_n_steps=1"]
ARGS = ["bench", "compare", "--data", "synthetic", "--methods", "unimodal-x1", "--seeds", "0", "--epochs", "2",
        "--patience", "0", "--set", *TINY_SET]
SUBMITIT = ["--launcher", "submitit", "--submitit-cluster", "local", "--slurm-array-parallelism", "2"]
#: run -> the signal it gets once its first last.ckpt is written
STOPS = {"unimodal-x1__seed0": signal.SIGUSR2, "unimodal-x2__seed0": signal.SIGKILL}


def _children(pid: int):
    """Processes whose parent is ``pid`` (the local executor's controller starts the task)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _stop_when_checkpointed(out: Path, sent: dict, stop: threading.Event) -> None:
    """Sends each run of STOPS its signal as soon as its run folder holds last.ckpt."""
    while not stop.is_set() and len(sent) < len(STOPS):
        for run_id, signum in STOPS.items():
            run_dir = out / "runs" / run_id
            if run_id in sent or not (run_dir / "checkpoints" / "last.ckpt").exists():
                continue
            try:
                controller = int(json.loads((run_dir / "launch.json").read_text())["job_id"])
            except (OSError, ValueError, KeyError):
                continue
            finished = (run_dir / "metrics.json").exists()
            for task in _children(controller):
                os.kill(task, signum)
            sent[run_id] = not finished
        time.sleep(0.01)


def _rows(path: Path):
    """results.csv by run id, without the wall time (the only column that may differ)."""
    return {r["run_id"]: {k: v for k, v in r.items() if k != "train_seconds"} for r in ResultsFile(path).rows()}


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the jobs' processes through /proc")
def test_submitit_jobs_resume_after_a_stop_and_give_the_local_table(tmp_path, capsys, monkeypatch, one_thread):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the jobs train on one thread, as this process does
    assert main(ARGS + ["--out", str(tmp_path / "local")]) == 0
    capsys.readouterr()
    out = tmp_path / "submitit"
    sent, stop = {}, threading.Event()
    watcher = threading.Thread(target=_stop_when_checkpointed, args=(out, sent, stop), daemon=True)
    watcher.start()
    try:
        first = main(ARGS + ["--out", str(out)] + SUBMITIT)
    finally:
        stop.set()
        watcher.join()
    text = capsys.readouterr().out
    assert sent == {run: True for run in STOPS}, "a run finished before its signal: make the runs longer"
    # the killed job: reported failed with its log, not in the table; the exit code says so
    assert first == 1
    failed = re.search(r"\[\d/2\] unimodal-x2\s+seed 0: FAILED: job \d+ ended without a result, state \w+ "
                       r"\(log: (\S+)\)", text)
    assert failed and Path(failed.group(1)).exists(), text
    assert sorted(_rows(out / "results.csv")) == ["unimodal-x1__seed0"]
    # the USR2 job: submitit called its checkpoint and requeued it; it resumed in the same call
    log = Path(json.loads((out / "runs" / "unimodal-x1__seed0" / "launch.json").read_text())["stdout"]).read_text()
    assert "Calling checkpoint method" in log and "Requeued job" in log, log
    # the next call resubmits only the failed run, which resumes from its last.ckpt
    assert main(ARGS + ["--out", str(out)] + SUBMITIT) == 0
    text = capsys.readouterr().out
    assert "1 of 2 runs already recorded" in text
    assert "1 run(s) resume from their last.ckpt: unimodal-x2__seed0" in text
    assert _rows(out / "results.csv") == _rows(tmp_path / "local" / "results.csv")


@pytest.mark.slow
def test_tune_workers_as_jobs_share_one_study(tmp_path, capsys, monkeypatch):
    """`tune --launcher submitit --workers 2`: two jobs of the worker loop on one study run its
    budget between them, each trial once, and the final file is written."""
    import optuna
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    argv = ["tune", "--data", "synthetic", "--method", "joint", "--trials", "3", "--out", str(tmp_path), "--no-prune",
            "--set", "data.n=200", "data.dim=8", "data.latent_dim=4", "model.feature_dim=8", "model.hidden=8",
            "trainer.max_epochs=1", "--launcher", "submitit", "--submitit-cluster", "local", "--workers", "2"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    ran = [json.loads(m) for m in re.findall(r"^worker \d ran trials (\[.*?\])$", out, re.M)]
    assert len(ran) == 2 and sorted(ran[0] + ran[1]) == [0, 1, 2], out
    study = optuna.load_study(study_name="joint", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    assert sorted(t.number for t in study.trials) == [0, 1, 2]
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    assert f"final: {tmp_path / 'joint.yaml'}" in out and (tmp_path / "joint.yaml").exists()
