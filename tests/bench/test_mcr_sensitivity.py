"""studies/mcr_sensitivity.py: its grid, its resumable CSV and its aggregation (no training)."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest

from mmbalance.methods.hparams import choice, log_uniform

SCRIPT = Path(__file__).resolve().parents[2] / "studies" / "mcr_sensitivity.py"


@pytest.fixture(scope="module")
def ms():
    spec = importlib.util.spec_from_file_location("mcr_sensitivity", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


SPACE = {"unimodal_weight": log_uniform(0.001, 1.0), "mipd_weight": log_uniform(0.01, 1.0),
         "contrastive_weight": log_uniform(0.05, 5.0), "init": choice(("scratch", "unimodal"))}
DEFAULTS = {"unimodal_weight": 1.0, "mipd_weight": 0.1, "contrastive_weight": 1.0, "init": "scratch"}


def test_log_grid_spans_the_range_and_adds_a_missed_default(ms):
    assert ms.log_grid(0.001, 1.0, 5) == [0.001, 0.00562, 0.0316, 0.178, 1.0]
    assert ms.log_grid(0.01, 1.0, 5, include=0.1) == [0.01, 0.0316, 0.1, 0.316, 1.0]  # already on it
    assert ms.log_grid(0.05, 5.0, 5, include=1.0) == [0.05, 0.158, 0.5, 1.0, 1.58, 5.0]
    with pytest.raises(ValueError):
        ms.log_grid(0.0, 1.0)
    assert ms.sig(0.0070917) == 0.00709 and ms.sig(1234.5) == 1230.0


def test_configs_vary_one_value_at_a_time_around_the_defaults(ms):
    configs = ms.make_configs(SPACE, DEFAULTS, tuned={"unimodal_weight": 0.0709, "init": "unimodal"})
    names = [c.name for c in configs]
    assert len(names) == len(set(names)) == 1 + 4 + 4 + 5 + 1 + 2  # default, grids less it, init, joint, tuned
    assert names[0] == "default" and dict(configs[0].hparams) == DEFAULTS
    for c in configs:
        hp = dict(c.hparams)
        if c.method == "joint":
            assert hp == {}
        elif c.panel:  # exactly the panel's value differs from the defaults
            assert {k for k in DEFAULTS if hp[k] != DEFAULTS[k]} == {c.panel} and hp[c.panel] == c.value
    tuned = dict(next(c for c in configs if c.name == "tuned").hparams)
    assert tuned == {**DEFAULTS, "unimodal_weight": 0.0709, "init": "unimodal"}
    with pytest.raises(ValueError):
        ms.make_configs(SPACE, DEFAULTS, tuned={"lr": 1.0})


def test_jobs_fingerprint_and_stage_cache(ms):
    configs = ms.make_configs(SPACE, DEFAULTS)
    jobs = ms.make_jobs(["synthetic", "mfeat_fou_kar"], configs, [0, 1])
    assert len(jobs) == 2 * len(configs) * 2 and jobs[0].key == ("synthetic", "default", 0)
    assert [j.dataset for j in jobs[:2 * len(configs)]] == ["synthetic"] * 2 * len(configs)  # data set first
    init = next(j for j in jobs if j.config.name == "init=unimodal")
    assert init.overrides("/c")["trainer.stage_cache"] == "/c"
    assert "trainer.stage_cache" not in jobs[0].overrides("/c")
    assert init.fingerprint == ms.Job(init.dataset, init.config, init.seed).fingerprint
    assert len({j.fingerprint for j in jobs}) == len(jobs)


def _row(ms, job, val, test=0.5):
    return ms.row_of(job, {"val": {"accuracy": val}, "test": {"accuracy": test}, "epochs_run": 3,
                           "train_seconds": 1.0}, 2.0)


def test_csv_resume_skips_recorded_rows_and_refuses_other_settings(ms, tmp_path):
    jobs = ms.make_jobs(["synthetic"], ms.make_configs(SPACE, DEFAULTS), [0, 1])
    path = tmp_path / "r.csv"
    assert ms.pending(jobs, ms.read_rows(path)) == jobs
    for job in jobs[:3]:
        ms.append_row(path, _row(ms, job, 0.6))
    rows = ms.read_rows(path)
    assert len(rows) == 3 and list(rows[0]) == list(ms.FIELDS)
    assert ms.pending(jobs, rows) == jobs[3:]
    rows[0]["fingerprint"] = "other"
    with pytest.raises(SystemExit):
        ms.pending(jobs, rows)


def test_aggregate_panels_share_the_default_rows(ms, tmp_path):
    configs = {c.name: c for c in ms.make_configs(SPACE, DEFAULTS)}
    path = tmp_path / "r.csv"
    for seed, (d, lo, joint) in enumerate([(0.60, 0.50, 0.70), (0.62, 0.54, 0.72)]):
        ms.append_row(path, _row(ms, ms.Job("synthetic", configs["default"], seed), d))
        ms.append_row(path, _row(ms, ms.Job("synthetic", configs["mipd_weight=0.01"], seed), lo))
        ms.append_row(path, _row(ms, ms.Job("synthetic", configs["init=unimodal"], seed), lo))
        ms.append_row(path, _row(ms, ms.Job("synthetic", configs["joint"], seed), joint))
    rows = ms.read_rows(path)
    pts = ms.aggregate(rows, "synthetic", "mipd_weight")
    assert [p.value for p in pts] == [0.01, 0.1] and [p.is_default for p in pts] == [False, True]
    assert math.isclose(pts[0].mean, 52.0) and math.isclose(pts[0].sd, math.sqrt(8.0)) and pts[0].n == 2
    assert [p.value for p in ms.aggregate(rows, "synthetic", "init")] == ["scratch", "unimodal"]
    assert [p.value for p in ms.aggregate(rows, "synthetic", "unimodal_weight")] == [1.0]  # the default alone
    assert math.isclose(ms.reference(rows, "synthetic")[0], 71.0)
    assert ms.reference(rows, "synthetic", "tuned") is None
    table = ms.summary_table(rows, ["synthetic"])
    assert "| synthetic | mipd_weight | 52.00 (0.01) | 61.00 (0.1) | 9.00 | 61.00 ± 1.41 | 71.00 ± 1.41 | — |" in table
