"""studies/lodo_defaults.py: family averaging, the LODO choice and held-out win, the rule (no training)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "studies" / "lodo_defaults.py"


@pytest.fixture(scope="module")
def lodo():
    spec = importlib.util.spec_from_file_location("lodo_defaults", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)
        sys.modules.pop("mcr_sensitivity", None)


# three families; F1 has two data sets, averaged per seed
FAMILIES = {"a1": ("F1", "x", {}), "a2": ("F1", "x", {}), "b": ("F2", "x", {}), "c": ("F3", "x", {})}
VAL = {"default": dict(a1=(50, 50), a2=(50, 50), b=(50, 50), c=(50, 50)),
       "init=unimodal": dict(a1=(52, 52), a2=(50, 50), b=(50, 50), c=(46, 46)),
       "tuned": dict(a1=(51, 51), a2=(51, 51), b=(53, 53), c=(49, 49)),
       "joint": dict(a1=(50, 50), a2=(50, 50), b=(50, 50), c=(50, 50))}
TEST = {"default": dict(a1=(60, 60), a2=(60, 60), b=(60, 60), c=(60, 60)),
        "init=unimodal": dict(a1=(60, 60), a2=(60, 60), b=(60, 60), c=(60, 60)),
        "tuned": dict(a1=(62, 64), a2=(60, 60), b=(70, 70), c=(58, 60)),
        "joint": dict(a1=(60, 60), a2=(60, 60), b=(60, 60), c=(60, 60))}


def rows():
    return [{"dataset": d, "config": c, "seed": str(s), "val_accuracy": str(VAL[c][d][s] / 100),
             "test_accuracy": str(TEST[c][d][s] / 100)} for c in VAL for d in FAMILIES for s in (0, 1)]


def test_table_averages_a_family_and_drops_incomplete_seeds(lodo, monkeypatch):
    monkeypatch.setattr(lodo, "DATASETS", FAMILIES)
    some = [r for r in rows() if not (r["dataset"] == "a2" and r["seed"] == "1")]
    tab = lodo.table(some, "test_accuracy")
    assert tab[("F1", "tuned")] == pytest.approx({0: 61.0})  # seed 1 lacks a2: left out
    assert lodo.gains(lodo.table(rows(), "test_accuracy"), "F1", "tuned") == pytest.approx([1.0, 2.0])


def test_lodo_choice_win_and_rule_by_hand(lodo, monkeypatch):
    monkeypatch.setattr(lodo, "DATASETS", FAMILIES)
    folds, overall, final = lodo.lodo(rows())
    by = {f.held_out: f for f in folds}
    # F1 out: unimodal_start (0 - 4)/2 = -2, tuned (3 - 1)/2 = +1 -> tuned
    assert by["F1"].scores == pytest.approx({"paper": 0.0, "unimodal_start": -2.0, "tuned": 1.0})
    assert by["F1"].chosen == "tuned" and by["F1"].win.mean == pytest.approx(1.5)
    assert by["F1"].win.half_width == pytest.approx(12.7062047 * 0.70710678 / 2 ** 0.5, rel=1e-6)
    # F2 out: tuned (1 - 1)/2 = 0 ties paper -> paper, win 0 (tuned's +10 on F2 is never read)
    assert by["F2"].chosen == "paper" and by["F2"].win.mean == 0.0
    # F3 out: tuned (1 + 3)/2 = 2 -> tuned; test gains -2, 0
    assert by["F3"].chosen == "tuned" and by["F3"].win.mean == pytest.approx(-1.0)
    assert final == "tuned"  # all three: unimodal_start -1, tuned +1
    assert overall.mean == pytest.approx(0.5 / 3)
    sd = (((1.5 - 1 / 6) ** 2 + (1 / 6) ** 2 + (-1 - 1 / 6) ** 2) / 2) ** 0.5
    assert overall.half_width == pytest.approx(4.30265273 * sd / 3 ** 0.5, rel=1e-6)
    assert lodo.decide(overall, final).startswith("keep the paper defaults: tuned is chosen")


def test_decide_changes_only_with_a_positive_interval(lodo):
    from mmbalance.bench.stats import Interval
    assert lodo.decide(Interval(1.0, 0.5, 6, 0.95), "tuned").startswith("change the default to tuned")
    assert lodo.decide(Interval(1.0, 1.5, 6, 0.95), "tuned").startswith("keep")
    assert lodo.decide(Interval(1.0, 0.5, 6, 0.95), "paper").startswith("keep the paper defaults: on all")


def test_jobs_cover_the_plan(lodo):
    configs = lodo.all_configs()
    jobs = lodo.make_jobs("lodo", configs, list(lodo.DATASETS))
    assert len(jobs) == 7 * 4 * 5 and {j.config.name for j in jobs} == {"default", "init=unimodal", "tuned", "joint"}
    job = next(j for j in jobs if j.dataset == "nutrimouse" and j.seed == 3)
    assert job.overrides()["data.seed"] == 3 and job.overrides()["trainer.max_epochs"] == 100
    sens = lodo.make_jobs("sensitivity", configs, list(lodo.DATASETS))
    assert len(sens) == 5 * 2 * 17 and not any(j.dataset.startswith("mfeat") for j in sens)
