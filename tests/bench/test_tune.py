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
    assert get_method("mcr").search_space(fixed) == {  # unimodal_weight and init are searched too
        "optim.lr": 3e-3, "method.mipd_weight": 0.2, "method.contrastive_weight": 0.5,
        "method.unimodal_weight": 2.0, "method.init": "unimodal"}
    assert get_method("multiloss").search_space(fixed) == {"optim.lr": 3e-3, "method.unimodal_weight": 2.0}
    assert nested({"seed": 1, "optim.lr": 0.1, "method.a": 2}) == {"seed": 1, "optim": {"lr": 0.1}, "method": {"a": 2}}


def test_the_learning_rate_is_searched_a_decade_either_side_of_the_configured_one(tmp_path, monkeypatch):
    """At Adam's default 1e-3 the range is 1e-4..1e-2; under the competition-sgd preset's SGD at
    0.03 it is 3e-3..0.3 (not the Adam range, which would hold SGD below its chosen rate)."""
    from mmbalance.methods.base import learning_rate_range
    import mmbalance.bench.tune as tune_module
    assert (learning_rate_range(1e-3).low, learning_rate_range(1e-3).high) == pytest.approx((1e-4, 1e-2))
    assert (learning_rate_range(0.03).low, learning_rate_range(0.03).high) == pytest.approx((3e-3, 0.3))
    with pytest.raises(ConfigError, match="optim.lr"):
        learning_rate_range(0.0)
    monkeypatch.setattr(tune_module, "_train", _instant_train)
    for lr, low, high, name in ((None, 1e-4, 1e-2, "adam"), (0.03, 3e-3, 0.3, "sgd")):
        base = {**TINY_BASE, **({} if lr is None else {"optim.name": "sgd", "optim.lr": lr, "optim.momentum": 0.9})}
        tune("joint", "synthetic", base, 12, tmp_path / name, sampler_seed=0, pruner=None, progress_bar=False,
             log=lambda line: None)
        rates = [t.params["optim.lr"] for t in _trials(tmp_path / name)]
        assert len(rates) == 12 and all(low <= r <= high for r in rates)
        # the two ranges overlap only on [3e-3, 1e-2]: each panel draws outside the other's range
        assert any(r < 3e-3 for r in rates) if name == "adam" else any(r > 1e-2 for r in rates)


def _trials(out):
    """Every trial of the one study stored in ``out/optuna.db``."""
    storage = f"sqlite:///{out / 'optuna.db'}"
    (summary,) = optuna.get_all_study_summaries(storage)
    return optuna.load_study(study_name=summary.study_name, storage=storage).trials


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
    argv = ["tune", "--data", "synthetic", "--method", "joint", "--trials", "4", "--out", str(tmp_path),
            "--no-prune", "--set", *sets]  # the PostgreSQL test runs the default, pruning
    outs = _launch(how, argv, tmp_path)
    ran = [json.loads(re.search(r"this process ran trials (\[.*?\])", o).group(1)) for o in outs]
    assert len(ran[0]) + len(ran[1]) == 4 and not set(ran[0]) & set(ran[1])  # the study's budget, nothing run twice
    _fork_outputs_have_eta_lines(outs, ran, 4)
    study = optuna.load_study(study_name="joint", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    trials = study.get_trials()
    assert sorted(t.number for t in trials) == [0, 1, 2, 3] == sorted(ran[0] + ran[1])  # nothing lost
    assert all(t.state == optuna.trial.TrialState.COMPLETE and t.value is not None for t in trials)
    assert len({t.params["optim.lr"] for t in trials}) == 4
    run_dirs = {t.user_attrs["run_dir"] for t in trials}
    assert len(run_dirs) == 4 and all((Path(d) / "metrics.json").exists() for d in run_dirs)
    best = load_yaml(tmp_path / "joint.yaml")
    assert best["optim.lr"] == study.best_trial.params["optim.lr"]
    final = [line for o in outs for line in o.splitlines() if line == f"wrote {tmp_path / 'joint.yaml'}"]
    assert len(final) == 1, outs  # the final configuration is written once, by one worker
    assert study.user_attrs["mmbalance.budget"] == 4 and study.user_attrs["mmbalance.final"]["budget"] == 4

    # A larger budget (what `bench synthetic --trials-per-method` does when raised) runs only the rest.
    lines = []
    more = tune("joint", "synthetic", TINY_BASE, 5, tmp_path, log=lines.append)
    assert more.ran_trials == [4] and more.finished_trials == 5 and more.final and more.config_written
    assert lines[0] == "joint study 'joint': budget raised from 4 to 5 trials" and len(lines) == 2
    again = tune("joint", "synthetic", TINY_BASE, 5, tmp_path)  # the study holds its budget: nothing to run or write
    assert again.ran_trials == [] and not again.config_written and again.final_by == more.final_by
    values = load_yaml(tmp_path / "joint.yaml")  # what `mmbalance train --config` reads
    cfg = build_config("joint", "synthetic", values, get_method("joint").Hyperparameters)
    assert cfg.optim.lr == more.best_params["optim.lr"] and cfg.data.n == 200
    info = json.loads((tmp_path / "joint.json").read_text())
    assert (info["trials"], info["best_trial"], info["budget"], info["final"]) == (5, more.best_trial, 5, True)
    assert not (Path(trials[0].user_attrs["run_dir"]) / "checkpoints").exists()
    final_text = (tmp_path / "joint.yaml").read_text()
    (tmp_path / "joint.yaml").unlink()
    export = tune("joint", "synthetic", TINY_BASE, 0, tmp_path)  # --trials 0: written again on request
    assert export.config_written and export.final and (tmp_path / "joint.yaml").read_text() == final_text
    with pytest.raises(ConfigError, match="tuned with other base"):
        tune("joint", "synthetic", {**TINY_BASE, "data.n": 300}, 1, tmp_path)


def _fork_outputs_have_eta_lines(outs, ran, budget):
    """Off a terminal (a log file) each trial is one line with its outcome and, with an ETA,
    how many of the study's trials have finished: more after each of a worker's trials, all
    of them after the last."""
    counts = []
    for out, numbers in zip(outs, ran):
        lines = re.findall(r"^joint trial (\d+): (?:val accuracy [\d.]+|pruned after epoch \d+.*?)  optim\.lr=\S+"
                           r"  \[(\d+)/(\d+), \d+:\d\d elapsed, ETA \d+:\d\d\]$", out, re.M)
        assert [int(n) for n, _, _ in lines] == numbers and {int(b) for _, _, b in lines} <= {budget}, out
        finished = [int(k) for _, k, _ in lines]
        assert finished == sorted(set(finished)) and all(1 <= k <= budget for k in finished), out
        counts += finished
    assert max(counts) == budget


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
    result = tune("joint", "synthetic", base, PRUNER_STARTUP_TRIALS + 1, tmp_path, progress_bar=False,
                  log=lines.append)  # the study's budget: one trial more than it holds
    pruned = study.get_trials()[-1]
    assert pruned.state == optuna.trial.TrialState.PRUNED
    assert sorted(pruned.intermediate_values) == list(range(PRUNER_WARMUP_EPOCHS + 1))
    assert result.ran_trials == [PRUNER_STARTUP_TRIALS] and result.pruned_trials == 1
    assert re.match(r"joint trial 5: pruned after epoch 3 \(val accuracy [\d.]+\)  optim\.lr=\S+  "
                    r"\[6/6, \d+:\d\d elapsed, ETA 0:00\]$", lines[0]), lines


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


def _instant_train(cfg, run_dir, keep_checkpoints, callbacks=()):
    """A stand-in for training: the trial's value is its learning rate (no Lightning, no data)."""
    return {"val": {"accuracy": float(cfg.optim.lr)}, "test": {"accuracy": 0.0}}


def _racing_worker(role, out, budget, events, result_path):
    """One of two forked ``tune`` workers that the test drives into a race between trials:
    ``b`` finishes its first trial and stops between trials (before asking for its next one)
    until ``a`` has returned; ``a`` holds its first trial until ``b`` is there."""
    import mmbalance.bench.tune as tune_module
    first = [True]

    def train(*args, **kwargs):
        if role == "a" and first[0]:
            first[0] = False
            assert events["b_between"].wait(120)
        return _instant_train(*args, **kwargs)

    tune_module._train = train
    if role == "b":
        ask, asked = optuna.study.Study.ask, [0]

        def held_ask(study, *args, **kwargs):
            asked[0] += 1
            if asked[0] == 2:  # between its first and its second trial
                events["b_between"].set()
                assert events["a_done"].wait(120)
            return ask(study, *args, **kwargs)

        optuna.study.Study.ask = held_ask
    try:
        result = tune("joint", "synthetic", TINY_BASE, budget, out, pruner=None, progress_bar=False,
                      log=lambda line: None)
    finally:
        if role == "a":
            events["a_done"].set()
    result_path.write_text(json.dumps({"ran": result.ran_trials, "written": result.config_written,
                                       "running": result.running_elsewhere, "final": getattr(result, "final", None),
                                       "yaml": (out / "joint.yaml").read_text()}))


def test_one_worker_writes_the_final_configuration_when_the_other_is_between_trials(tmp_path):
    """``a`` ends while ``b`` is between trials, with no trial of ``b`` running.
    Without a budget stored in the study ``a`` took its result for the final one and ``b``
    rewrote it after its next trial (two final writes). With the budget, ``a`` sees that the
    study's 4 trials are not all finished (``b`` holds a claim on the last one): its file is
    provisional, and ``b``, which finishes the last trial, writes the final file once."""
    importlib.import_module("mmbalance.training.run")  # imported once here (Lightning), not in each worker
    ctx = multiprocessing.get_context("fork")
    events = {"b_between": ctx.Event(), "a_done": ctx.Event()}
    paths = {role: tmp_path / f"{role}.json" for role in "ab"}
    procs = [ctx.Process(target=_racing_worker, args=(role, tmp_path, 4, events, paths[role])) for role in "ab"]
    for p in procs:
        p.start()
    for p in procs:
        p.join(180)
    assert [p.exitcode for p in procs] == [0, 0]
    a, b = (json.loads(paths[role].read_text()) for role in "ab")
    finals = [r for r in (a, b) if r["written"] and not r["running"]]
    assert len(finals) == 1 and finals[0] is b, (a, b)  # the final file is written once, by b
    study = optuna.load_study(study_name="joint", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    trials = study.get_trials()
    assert sorted(t.number for t in trials) == [0, 1, 2, 3] == sorted(a["ran"] + b["ran"])  # the budget, exactly
    assert a["running"] == [3] and a["final"] is False and "# provisional: 3 of the study's 4 trials" in a["yaml"]
    assert b["final"] is True and f"(trial {study.best_trial.number})" in b["yaml"] and "provisional" not in b["yaml"]
    assert (tmp_path / "joint.yaml").read_text() == b["yaml"]


def _claiming_worker(url, barrier, budget, result_path):
    from mmbalance.bench.tune_study import StudyAttrs, TrialClaims, open_storage
    storage = open_storage(url)
    study = optuna.load_study(study_name="claims", storage=storage)
    claims = TrialClaims(study, StudyAttrs(storage, storage.get_study_id_from_name("claims")))
    barrier.wait(60)
    # each takes one claim before the race, so that both race for the rest even when the
    # scheduler runs one process through the whole budget before the other wakes (a busy CI)
    first = claims.claim()
    barrier.wait(60)
    while first and claims.claim():
        pass
    barrier.wait(60)
    won, _ = claims.claim_final(budget, {"worker": str(os.getpid())})
    result_path.write_text(json.dumps([claims.made, won]))


def claims_race(url, tmp_path, budget=40):
    """Two processes claim trials of one study's budget as fast as they can (after one claim
    each), then race for its final write: together they claim the budget exactly and one wins
    the final write."""
    from mmbalance.bench.tune_study import BUDGET_KEY, StudyAttrs, join_budget, open_storage
    storage = open_storage(url)
    optuna.create_study(storage=storage, study_name="claims")
    attrs = StudyAttrs(storage, storage.get_study_id_from_name("claims"))
    lines = []
    assert join_budget(attrs, budget, lines.append) == budget and lines == []
    assert join_budget(attrs, budget - 1, lines.append) == budget  # a smaller budget adopts the stored one
    assert lines == [f"its budget is {budget} trials (this worker was given {budget - 1}); working to {budget}"]
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(2)
    paths = [tmp_path / f"claims{i}.json" for i in range(2)]
    procs = [ctx.Process(target=_claiming_worker, args=(url, barrier, budget, path)) for path in paths]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    (made0, won0), (made1, won1) = (json.loads(path.read_text()) for path in paths)
    assert made0 + made1 == budget and made0 > 0 and made1 > 0, (made0, made1)
    assert won0 != won1  # exactly one worker may write the final file
    assert attrs.get("mmbalance.claimed") == budget and attrs.get(BUDGET_KEY) == budget


def test_trial_claims_and_the_final_write_are_atomic_between_processes(tmp_path):
    claims_race(f"sqlite:///{tmp_path / 'claims.db'}", tmp_path)
