"""The sweep's bookkeeping with a fake runner: kill and rerun, recovery, clashes, failures."""

from __future__ import annotations

import dataclasses
import json
import os

import pytest

from mmbalance.bench.results import ResultsFile
from mmbalance.bench.synthetic import (DEFAULT_GRID, DEFAULT_SETTINGS, QUICK_SETTINGS, SweepSettings, Variant,
                                       make_jobs, method_variants, row_from_metrics, run_sweep)
from mmbalance.errors import ConfigError
from mmbalance.methods import REGISTRY

SETTINGS = SweepSettings(grid=((0.8, 0.1), (0.1, 0.8)), seeds=(0, 1), n=100, max_epochs=1, patience=0)
VARIANTS = [Variant("a", "joint"), Variant("b", "multiloss")]


def fake_metrics(job):
    acc = 0.5 + 0.01 * job.seed + (0.1 if job.variant.label == "a" else 0.0)
    return {"val": {"accuracy": acc}, "test": {"accuracy": acc - 0.05}, "epochs_run": 1, "train_seconds": 0.1,
            "config": {"optim": {"lr": 1e-3, "weight_decay": 0.0}, "method": {}}}


class Runner:
    """Records the jobs it runs; raises KeyboardInterrupt (a kill) on call number ``kill_at``."""

    def __init__(self, kill_at=None, fail=()):
        self.calls, self.kill_at, self.fail = [], kill_at, set(fail)

    def __call__(self, job, run_dir):
        self.calls.append(job.run_id)
        if len(self.calls) == self.kill_at:
            raise KeyboardInterrupt
        if job.run_id in self.fail:
            raise ValueError("diverged")
        return row_from_metrics(job, fake_metrics(job))


def _rows(out):
    return ResultsFile(out / "results.csv").rows()


def test_grid_covers_s_dominated_to_u1_dominated():
    ratios = [u1 / s for s, u1 in DEFAULT_GRID]
    assert len(ratios) >= 5 and ratios == sorted(ratios) and ratios[0] < 1 < ratios[-1]
    assert all(abs(s + u1 + DEFAULT_SETTINGS.unique2 - 1.0) < 1e-9 for s, u1 in DEFAULT_GRID)
    assert DEFAULT_SETTINGS.unique2 == 0.1 and len(DEFAULT_SETTINGS.seeds) >= 3
    assert set(QUICK_SETTINGS.grid) <= set(DEFAULT_GRID)


def test_every_registered_method_is_swept_with_the_same_budget():
    variants = method_variants()
    assert {v.method for v in variants} == set(REGISTRY)
    assert {v.label for v in variants if v.method == "unimodal"} == {"unimodal-x1", "unimodal-x2"}
    jobs = make_jobs(SETTINGS, variants)
    budget = {(j.shared, j.seed): set() for j in jobs}
    for j in jobs:
        o = dict(j.overrides)
        budget[(j.shared, j.seed)].add((o["trainer.max_epochs"], o["trainer.patience"], o["data.n"]))
    assert all(len(v) == 1 for v in budget.values())
    assert method_variants(["unimodal"]) == [v for v in variants if v.method == "unimodal"]
    assert [v.label for v in method_variants(["mcr,joint"])] == [v.label for v in variants if v.label in ("joint", "mcr")]
    with pytest.raises(ConfigError, match="unknown method 'nope'"):
        method_variants(["nope"])


def test_killed_sweep_keeps_finished_rows_and_rerun_runs_only_the_rest(tmp_path):
    jobs = make_jobs(SETTINGS, VARIANTS)
    assert len(jobs) == 8
    first = Runner(kill_at=4)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(jobs, tmp_path, runner=first, log=lambda s: None)
    done = [r["run_id"] for r in _rows(tmp_path)]
    assert done == first.calls[:3]  # the three finished runs, whole; the killed one absent
    second = Runner()
    outcome = run_sweep(jobs, tmp_path, runner=second, log=lambda s: None)
    assert outcome.skipped == 3 and len(outcome.written) == 5
    assert set(second.calls) == {j.run_id for j in jobs} - set(done)
    rows = _rows(tmp_path)
    assert sorted(r["run_id"] for r in rows) == sorted(j.run_id for j in jobs)  # each once
    third = Runner()
    assert run_sweep(jobs, tmp_path, runner=third, log=lambda s: None).skipped == 8 and not third.calls


def test_run_finished_but_not_recorded_is_recovered_without_training(tmp_path):
    jobs = make_jobs(SETTINGS, VARIANTS)
    job = jobs[2]
    run_dir = tmp_path / "runs" / job.run_id
    run_dir.mkdir(parents=True)
    (run_dir / "job.json").write_text(json.dumps({"fingerprint": job.fingerprint}))
    (run_dir / "metrics.json").write_text(json.dumps(fake_metrics(job)))
    stale = tmp_path / "runs" / jobs[3].run_id  # killed mid-training: no metrics.json
    stale.mkdir(parents=True)
    (stale / "job.json").write_text(json.dumps({"fingerprint": jobs[3].fingerprint}))
    (stale / "leftover.ckpt").write_text("half")
    runner = Runner()
    outcome = run_sweep(jobs, tmp_path, runner=runner, log=lambda s: None)
    assert outcome.recovered == 1 and job.run_id not in runner.calls and jobs[3].run_id in runner.calls
    assert not (stale / "leftover.ckpt").exists()  # a half-done run starts again from a clean directory
    assert len(_rows(tmp_path)) == 8


def test_other_settings_in_the_same_directory_are_refused(tmp_path):
    run_sweep(make_jobs(SETTINGS, VARIANTS[:1]), tmp_path, runner=Runner(), log=lambda s: None)
    longer = dataclasses.replace(SETTINGS, max_epochs=2)
    with pytest.raises(ConfigError, match="other settings"):
        run_sweep(make_jobs(longer, VARIANTS[:1]), tmp_path, runner=Runner(), log=lambda s: None)
    # adding a method to the same settings is fine
    outcome = run_sweep(make_jobs(SETTINGS, VARIANTS), tmp_path, runner=Runner(), log=lambda s: None)
    assert outcome.skipped == 4 and len(outcome.written) == 4


def test_a_failing_run_is_reported_not_recorded_and_retried(tmp_path):
    jobs = make_jobs(SETTINGS, VARIANTS)
    lines = []
    outcome = run_sweep(jobs, tmp_path, runner=Runner(fail={jobs[1].run_id}), log=lines.append)
    assert outcome.failed == [(jobs[1].run_id, "ValueError: diverged")]
    assert len(_rows(tmp_path)) == 7 and any("FAILED" in line for line in lines)
    assert len(lines) == 8 and lines[0].startswith("[1/8]")  # a progress line per finished run
    retry = Runner()
    run_sweep(jobs, tmp_path, runner=retry, log=lambda s: None)
    assert retry.calls == [jobs[1].run_id]


def test_tuned_overrides_change_the_fingerprint_and_are_recorded(tmp_path):
    plain = make_jobs(SETTINGS, VARIANTS[:1])
    tuned = make_jobs(SETTINGS, VARIANTS[:1], {"a": ({"optim.lr": 0.01}, 7)})
    assert plain[0].run_id == tuned[0].run_id and plain[0].fingerprint != tuned[0].fingerprint
    assert dict(tuned[0].overrides)["optim.lr"] == 0.01 and tuned[0].tuning_trials == 7


def pool_runner(job, run_dir):
    """Module-level (picklable) fake runner for the process pool; reports its process. Each
    call first checks in under $MMB_TEST_CHECKIN and waits (up to 120 s) until two processes
    have: a pool whose first worker would drain the queue before the second started, or
    that ran the jobs in one process, cannot pass."""
    import os
    import time
    from pathlib import Path

    checkin = Path(os.environ["MMB_TEST_CHECKIN"])
    (checkin / str(os.getpid())).touch()
    deadline = time.monotonic() + 120
    while len(list(checkin.iterdir())) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    row = row_from_metrics(job, fake_metrics(job))
    row["hyperparameters"] = json.dumps({"pid": os.getpid()})
    return row


# Not slow: ~12 s, and it guards the mode behind the README's full sweep (workers > 1).
def test_parallel_workers_record_every_run_once(tmp_path, monkeypatch):
    checkin = tmp_path / "checkin"
    checkin.mkdir()
    monkeypatch.setenv("MMB_TEST_CHECKIN", str(checkin))  # spawned workers inherit it
    jobs = make_jobs(SETTINGS, VARIANTS)
    outcome = run_sweep(jobs, tmp_path / "out", workers=2, runner=pool_runner, log=lambda s: None)
    rows = _rows(tmp_path / "out")
    assert len(outcome.written) == 8 and sorted(r["run_id"] for r in rows) == sorted(j.run_id for j in jobs)
    pids = {json.loads(r["hyperparameters"])["pid"] for r in rows}
    assert len(pids) == 2 and os.getpid() not in pids  # two worker processes, neither of them this one
    assert {int(p.name) for p in checkin.iterdir()} == pids


def test_a_results_file_from_before_the_score_columns_is_read_and_upgraded(tmp_path):
    from mmbalance.bench.results import COLUMNS, OLDEST_COLUMNS
    path = tmp_path / "results.csv"
    old = ",".join(OLDEST_COLUMNS) + "\n" + ",".join(["r0", "joint"] + [""] * (len(OLDEST_COLUMNS) - 2)) + "\n"
    path.write_text(old)
    f = ResultsFile(path)
    assert f.rows() == [{**{k: "" for k in COLUMNS}, "run_id": "r0", "method": "joint"}]
    f.append({"run_id": "r1", "method": "mcr", "macro_f1": 0.5, "kind_accuracy": '{"unique2": 0.25}'})
    lines = path.read_text().splitlines()
    assert lines[0] == ",".join(COLUMNS) and len(lines) == 3  # rewritten once with the new header
    rows = f.rows()
    assert [r["run_id"] for r in rows] == ["r0", "r1"] and rows[0]["macro_f1"] == ""
    assert rows[1]["macro_f1"] == "0.5" and json.loads(rows[1]["kind_accuracy"]) == {"unique2": 0.25}


def test_rows_carry_macro_f1_kind_accuracy_and_shapley(tmp_path):
    job = make_jobs(SETTINGS, VARIANTS)[0]
    metrics = {**fake_metrics(job), "test": {"accuracy": 0.4, "macro_f1": 0.375}}
    scores = {"kind_accuracy": {"shared": 1.0, "unique2": 0.5}, "shapley": {"zero": {"x1": 0.1, "x2": 0.2}}}
    row = row_from_metrics(job, metrics, scores)
    assert row["macro_f1"] == 0.375 and json.loads(row["kind_accuracy"]) == scores["kind_accuracy"]
    assert json.loads(row["shapley"]) == scores["shapley"]
    bare = row_from_metrics(job, fake_metrics(job))  # no macro-F1, no scores: empty cells
    assert (bare["macro_f1"], bare["kind_accuracy"], bare["shapley"]) == ("", "", "")
    # a run that finished without scores.json and cannot be loaded back is still recorded
    run_dir = tmp_path / "runs" / job.run_id
    run_dir.mkdir(parents=True)
    (run_dir / "job.json").write_text(json.dumps({"fingerprint": job.fingerprint}))
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    (run_dir / "scores.json").write_text(json.dumps(scores))
    out = run_sweep([job], tmp_path, runner=Runner(), log=lambda _: None)
    assert out.recovered == 1 and json.loads(_rows(tmp_path)[0]["kind_accuracy"]) == scores["kind_accuracy"]
