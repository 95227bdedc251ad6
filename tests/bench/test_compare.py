"""`mmbalance bench compare`: jobs, budgets, and a tiny end-to-end run."""

from __future__ import annotations

import json
import os

import pytest

from mmbalance.bench.compare import CompareSettings, compare_variants, make_compare_jobs
from mmbalance.bench.results import ResultsFile
from mmbalance.cli import main

TINY_SET = ["data.n=200", "data.dim=8", "data.latent_dim=4", "data.batch_size=32", "model.feature_dim=8",
            "model.hidden=8", "trainer.log_every_n_steps=1"]


def test_unimodal_runs_of_every_modality_are_added_for_the_gaps():
    labels = [v.label for v in compare_variants(["joint", "mcr"], ["fou", "kar"])]
    assert labels == ["joint", "mcr", "unimodal-fou", "unimodal-kar"]
    assert [v.label for v in compare_variants(["unimodal-kar"], ["fou", "kar"])] == ["unimodal-kar", "unimodal-fou"]


def test_every_method_gets_the_same_budget_split_and_stage_cache():
    settings = CompareSettings("data.npz", seeds=(0, 1), data_seed=3, max_epochs=7, patience=2,
                               stage_cache="/x/stage_cache")
    jobs = make_compare_jobs(settings, compare_variants(["joint", "ensemble"], ["a", "b"]),
                             {"joint": ({"optim.lr": 0.01}, 4)})
    assert len(jobs) == 8 and [j.seed for j in jobs] == [0] * 4 + [1] * 4
    # the unimodal runs first, so that the ensemble's stages are those runs (stage cache)
    given = [v.label for v in compare_variants(["joint", "ensemble"], ["a", "b"])]
    assert [j.variant.label for j in jobs[:4]] == ["unimodal-a", "unimodal-b"] + [
        label for label in given if not label.startswith("unimodal")]
    for j in jobs:
        o = dict(j.overrides)
        assert (o["data.seed"], o["trainer.max_epochs"], o["trainer.patience"]) == (3, 7, 2)
        assert o["trainer.final_probe"] is True and o["trainer.stage_cache"] == "/x/stage_cache"
        assert j.data_spec == "data.npz" and j.run_id == f"{j.variant.label}__seed{j.seed}"
    joint = next(j for j in jobs if j.variant.label == "joint")
    assert dict(joint.overrides)["optim.lr"] == 0.01 and joint.tuning_trials == 4
    assert all("optim.lr" not in dict(j.overrides) for j in jobs if j.variant.label != "joint")
    moved = make_compare_jobs(CompareSettings("data.npz", seeds=(0,), stage_cache="/y"), [joint.variant])
    same = make_compare_jobs(CompareSettings("data.npz", seeds=(0,), stage_cache="/x"), [joint.variant])
    assert moved[0].fingerprint == same[0].fingerprint  # the cache's place does not shape a run


def test_compare_on_synthetic_writes_results_gaps_and_ceiling_then_skips(tmp_path, capsys, one_thread):
    args = ["bench", "compare", "--data", "synthetic", "--methods", "joint", "--seeds", "0", "--epochs", "1",
            "--out", str(tmp_path), "--set", *TINY_SET]
    assert main(args) == 0
    rows = ResultsFile(tmp_path / "results.csv").rows()
    assert sorted(r["method"] for r in rows) == ["joint", "unimodal-x1", "unimodal-x2"]
    assert all(set(json.loads(r["probe"])) == {"x1", "x2"} and r["data"] == "synthetic" for r in rows)
    summary = (tmp_path / "summary.md").read_text()
    assert "*Bayes ceiling, both modalities*" in summary and "## Competition gap" in summary
    assert (tmp_path / "accuracy.png").stat().st_size > 0 and (tmp_path / "ceilings.json").exists()
    capsys.readouterr()
    assert main(args) == 0
    assert "3 of 3 runs already recorded" in capsys.readouterr().out


def test_compare_trains_each_unimodal_model_once(tmp_path, capsys, one_thread):
    args = ["bench", "compare", "--data", "synthetic", "--methods", "ensemble", "--seeds", "0", "--epochs", "1",
            "--out", str(tmp_path), "--set", *TINY_SET]
    assert main(args) == 0
    capsys.readouterr()
    entries = [p for p in (tmp_path / "stage_cache").iterdir() if p.is_dir()]
    assert sorted(p.name.rsplit("-", 1)[0] for p in entries) == ["unimodal_x1", "unimodal_x2"]
    for entry in entries:  # the unimodal rows' own models, not a second training of them
        m = entry.name.split("-")[0].split("_")[1]
        assert os.path.samefile(entry / "checkpoints" / "best.ckpt",
                                tmp_path / "runs" / f"unimodal-{m}__seed0" / "checkpoints" / "best.ckpt")


def test_method_variants_with_fixed_options():
    from mmbalance import ConfigError
    from mmbalance.bench.runner import method_variants
    got = method_variants(["joint", "mcr:init=unimodal:unimodal_weight=0.01"])
    assert [v.label for v in got] == ["joint", "mcr:init=unimodal:unimodal_weight=0.01"]
    assert got[1].method == "mcr"
    assert got[1].fixed == (("method.init", "unimodal"), ("method.unimodal_weight", 0.01))
    for bad in ("mrc", "nope:init=unimodal", "mcr:init"):
        with pytest.raises(ConfigError):
            method_variants([bad])
