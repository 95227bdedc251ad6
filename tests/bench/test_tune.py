"""Search spaces next to each method, `mmbalance tune`, and two workers on one SQLite study."""

from __future__ import annotations

import importlib
import json
import multiprocessing
import os
import re
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from mmbalance.bench.tune import nested, tune
from mmbalance.config import build_config, load_yaml
from mmbalance.errors import ConfigError
from mmbalance.methods import REGISTRY, get_method
from mmbalance.methods.base import Method

from ..conftest import TINY

TINY_BASE = {**TINY, "data.n": 200, "trainer.max_epochs": 1}
ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", list(REGISTRY))
def test_every_search_space_gives_valid_overrides(name):
    cls = get_method(name)
    study = optuna.create_study(direction="maximize")
    for _ in range(3):
        trial = study.ask()
        space = cls.search_space(trial)
        assert "optim.lr" in space and all(k.startswith(("optim.", "method.", "model.")) for k in space)
        assert set(space) == set(trial.params)  # every searched value is one Optuna knows
        build_config(name, "synthetic", {**TINY_BASE, **space}, cls.Hyperparameters)


def test_declared_spaces():
    fixed = optuna.trial.FixedTrial({"optim.lr": 3e-3, "method.mipd_weight": 0.2, "method.contrastive_weight": 0.5,
                                     "method.unimodal_weight": 2.0, "method.init": "unimodal"})
    assert Method.search_space(fixed) == {"optim.lr": 3e-3}
    assert get_method("mcr").search_space(fixed) == {  # issue 14.3: unimodal_weight and init too
        "optim.lr": 3e-3, "method.mipd_weight": 0.2, "method.contrastive_weight": 0.5,
        "method.unimodal_weight": 2.0, "method.init": "unimodal"}
    assert get_method("multiloss").search_space(fixed) == {"optim.lr": 3e-3, "method.unimodal_weight": 2.0}
    assert nested({"seed": 1, "optim.lr": 0.1, "method.a": 2}) == {"seed": 1, "optim": {"lr": 0.1}, "method": {"a": 2}}


def _tune_in_forked_process(argv, log_path):
    """A worker process forked from the test process (no second import of torch): runs the
    `mmbalance tune` command and leaves its output in ``log_path``."""
    import contextlib
    import torch
    from mmbalance.cli import main
    torch.set_num_threads(1)
    with open(log_path, "w") as f, contextlib.redirect_stdout(f):
        code = main(argv)
    raise SystemExit(code)


def _launch(how, argv, tmp_path):
    """Two concurrent `mmbalance tune` workers; returns their stdout texts."""
    if how == "subprocess":  # fresh interpreters, as two machines or terminals would run them
        cmd = [sys.executable, "-m", "mmbalance", *argv]
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
        procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
                 for _ in range(2)]
        outs = [p.communicate(timeout=300) for p in procs]
        assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
        return [o[0] for o in outs]
    for module in ("mmbalance.bench.cli", "mmbalance.training", "lightning"):
        importlib.import_module(module)  # imported once here, so the forked workers start at once
    ctx = multiprocessing.get_context("fork")
    logs = [tmp_path / f"worker{i}.log" for i in range(2)]
    procs = [ctx.Process(target=_tune_in_forked_process, args=(argv, log)) for log in logs]
    for p in procs:
        p.start()
    for p in procs:
        p.join(300)
    assert [p.exitcode for p in procs] == [0, 0], [log.read_text()[-2000:] for log in logs if log.exists()]
    return [log.read_text() for log in logs]


@pytest.mark.parametrize("how", ["fork", pytest.param("subprocess", marks=pytest.mark.slow)])
def test_two_worker_processes_share_one_sqlite_study_without_losing_or_duplicating_trials(tmp_path, how, one_thread):
    sets = [f"{k}={v}" for k, v in TINY_BASE.items()]
    argv = ["tune", "--data", "synthetic", "--method", "joint", "--trials", "2", "--out", str(tmp_path),
            "--no-prune", "--set", *sets]  # the PostgreSQL test runs the default, pruning
    outs = _launch(how, argv, tmp_path)
    _fork_outputs_have_eta_lines(outs, 2)
    ran = [json.loads(re.search(r"this process ran trials (\[.*?\])", o).group(1)) for o in outs]
    assert len(ran[0]) == 2 and len(ran[1]) == 2 and not set(ran[0]) & set(ran[1])  # nothing run twice
    study = optuna.load_study(study_name="joint", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    trials = study.get_trials()
    assert sorted(t.number for t in trials) == [0, 1, 2, 3] == sorted(ran[0] + ran[1])  # nothing lost
    assert all(t.state == optuna.trial.TrialState.COMPLETE and t.value is not None for t in trials)
    assert len({t.params["optim.lr"] for t in trials}) == 4
    run_dirs = {t.user_attrs["run_dir"] for t in trials}
    assert len(run_dirs) == 4 and all((Path(d) / "metrics.json").exists() for d in run_dirs)
    best = load_yaml(tmp_path / "joint.yaml")
    assert best["optim.lr"] in {t.params["optim.lr"] for t in trials}

    # Resuming with a budget (what `bench synthetic --trials-per-method` does) runs only the rest.
    lines = []
    more = tune("joint", "synthetic", TINY_BASE, 5, tmp_path, top_up=True, log=lines.append)
    assert more.ran_trials == [4] and more.finished_trials == 5 and len(lines) == 1
    assert tune("joint", "synthetic", TINY_BASE, 5, tmp_path, top_up=True).ran_trials == []
    values = load_yaml(tmp_path / "joint.yaml")  # what `mmbalance train --config` reads
    cfg = build_config("joint", "synthetic", values, get_method("joint").Hyperparameters)
    assert cfg.optim.lr == more.best_params["optim.lr"] and cfg.data.n == 200
    info = json.loads((tmp_path / "joint.json").read_text())
    assert info["trials"] == 5 and info["best_trial"] == more.best_trial
    assert not (Path(trials[0].user_attrs["run_dir"]) / "checkpoints").exists()
    with pytest.raises(ConfigError, match="tuned with other base"):
        tune("joint", "synthetic", {**TINY_BASE, "data.n": 300}, 1, tmp_path)


def _fork_outputs_have_eta_lines(outs, trials):
    """Off a terminal (a log file) each trial is one line with its outcome and an ETA."""
    for out in outs:
        lines = re.findall(r"^joint trial \d+: (?:val accuracy [\d.]+|pruned after epoch \d+.*?)  optim\.lr=\S+"
                           r"  \[(\d+)/(\d+), \d+:\d\d elapsed, ETA \d+:\d\d\]$", out, re.M)
        assert [(int(k), int(n)) for k, n in lines] == [(k, trials) for k in range(1, trials + 1)], out


class OddTrialsPruner(optuna.pruners.BasePruner):
    """Prunes every odd-numbered trial once it has reported two epochs: deterministic, so
    that the test checks the wiring, not the median."""

    def prune(self, study, trial) -> bool:
        return trial.number % 2 == 1 and trial.last_step is not None and trial.last_step >= 1


def test_pruned_trials_report_every_epoch_are_counted_and_never_selected(tmp_path, one_thread, monkeypatch, capsys):
    monkeypatch.setattr("mmbalance.bench.tune.stderr_is_terminal", lambda: True)  # as on a terminal
    lines = []
    base = {**TINY_BASE, "trainer.max_epochs": 3}
    result = tune("joint", "synthetic", base, 3, tmp_path, sampler_seed=0, pruner=OddTrialsPruner(), log=lines.append)
    study = optuna.load_study(study_name="joint", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    trials = {t.number: t for t in study.get_trials()}
    state = optuna.trial.TrialState
    assert [trials[n].state for n in range(3)] == [state.COMPLETE, state.PRUNED, state.COMPLETE]
    for n in (0, 2):  # the validation metric of every epoch reached the pruner
        assert sorted(trials[n].intermediate_values) == [0, 1, 2]
        metrics = json.loads((Path(trials[n].user_attrs["run_dir"]) / "metrics.json").read_text())
        assert trials[n].value == pytest.approx(metrics["val"]["accuracy"])  # validation only
    for n in (1,):  # stopped after its second epoch: no checkpoints, no metrics, the logs kept
        assert sorted(trials[n].intermediate_values) == [0, 1]
        run_dir = Path(trials[n].user_attrs["run_dir"])
        assert run_dir.is_dir() and not (run_dir / "checkpoints").exists() and not (run_dir / "metrics.json").exists()
    assert result.best_trial in (0, 2) and result.best_value == max(trials[0].value, trials[2].value)
    assert study.best_trial.number == result.best_trial  # a pruned trial is never the best one
    assert result.pruned_trials == 1 and result.counts() == "2 complete, 1 pruned, 0 failed"
    assert [line.split(":")[0] for line in lines] == [f"joint trial {n}" for n in range(3)]
    assert "pruned after epoch 2 (val accuracy" in lines[1] and "ETA" not in lines[1]  # the bar has the ETA
    assert "Best trial: " in capsys.readouterr().err  # Optuna's progress bar (tqdm, on stderr)
    info = json.loads((tmp_path / "joint.json").read_text())
    assert (info["complete"], info["pruned"], info["failed"], info["running"]) == (2, 1, 0, [])
    assert "best of 3 finished trials (2 complete, 1 pruned, 0 failed)" in (tmp_path / "joint.yaml").read_text()


def test_the_median_pruner_stops_a_trial_below_the_median_at_an_epoch(tmp_path, one_thread):
    """The default pruner, end to end: five earlier trials scored 1.0 at every epoch, so a
    real trial is stopped at the first epoch it may be judged (the third), on val accuracy."""
    from mmbalance.bench.tune import PRUNER_STARTUP_TRIALS, PRUNER_WARMUP_EPOCHS, default_pruner
    pruner = default_pruner()
    assert isinstance(pruner, optuna.pruners.MedianPruner)
    study = optuna.create_study(study_name="joint", storage=f"sqlite:///{tmp_path / 'optuna.db'}",
                                direction="maximize")
    for _ in range(PRUNER_STARTUP_TRIALS):
        trial = study.ask()
        get_method("joint").search_space(trial)
        for epoch in range(4):
            trial.report(1.0, epoch)
        study.tell(trial, 1.0)
    lines = []
    base = {**TINY_BASE, "trainer.max_epochs": 4}
    result = tune("joint", "synthetic", base, 1, tmp_path, progress_bar=False, log=lines.append)
    pruned = study.get_trials()[-1]
    assert pruned.state == optuna.trial.TrialState.PRUNED
    assert sorted(pruned.intermediate_values) == list(range(PRUNER_WARMUP_EPOCHS + 1))
    assert result.ran_trials == [PRUNER_STARTUP_TRIALS] and result.pruned_trials == 1
    assert re.match(r"joint trial 5: pruned after epoch 3 \(val accuracy [\d.]+\)  optim\.lr=\S+  "
                    r"\[1/1, \d+:\d\d elapsed, ETA 0:00\]$", lines[0]), lines


def test_trial_report_lines_and_eta():
    from mmbalance.bench.tune_progress import TrialReport, _duration
    assert [_duration(s) for s in (0, 75, 3725)] == ["0:00", "1:15", "1:02:05"]
    now = [100.0]
    lines = []
    report = TrialReport(4, "accuracy", lines.append, clock=lambda: now[0])
    study = optuna.create_study(direction="maximize")
    lr = optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True)
    study.add_trial(optuna.trial.create_trial(params={"optim.lr": 0.01}, value=0.5, distributions={"optim.lr": lr}))
    now[0] = 130.0
    report(study, study.get_trials()[0])
    assert lines == ["trial 0: val accuracy 0.5000  optim.lr=0.01  [1/4, 0:30 elapsed, ETA 1:30]"]


def test_unimodal_trials_are_not_entered_into_the_stage_cache(tmp_path, one_thread):
    """A trial's checkpoints are deleted after it; a cache entry would keep them (hard links)."""
    cache = tmp_path / "cache"
    base = {**TINY_BASE, "method.modality": "x1", "trainer.stage_cache": str(cache)}
    result = tune("unimodal", "synthetic", base, 2, tmp_path / "study", sampler_seed=0, progress_bar=False)
    assert len(result.ran_trials) == 2 and not (cache.exists() and any(cache.iterdir()))
