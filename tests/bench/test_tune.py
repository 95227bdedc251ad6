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
            "--set", *sets]
    outs = _launch(how, argv, tmp_path)
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
