"""`mmbalance bench synthetic` end to end on tiny runs."""

from __future__ import annotations

import json
import os

import pytest

from mmbalance.bench.results import ResultsFile
from mmbalance.config import load_yaml
from mmbalance.cli import main

TINY_SET = ["data.dim=8", "data.latent_dim=4", "data.batch_size=32", "model.feature_dim=8", "model.hidden=8",
            "trainer.log_every_n_steps=1"]


def test_tuned_quick_sweep_writes_results_summary_and_plot_then_skips_on_rerun(tmp_path, capsys, one_thread):
    # a planted signal: class vectors 4 noise s.d. apart, so even a few epochs learn it
    args = ["bench", "synthetic", "--quick", "--methods", "joint", "--n", "400", "--epochs", "8",
            "--trials-per-method", "1", "--out", str(tmp_path), "--set", *TINY_SET, "data.signal1=4", "data.signal2=4"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "joint trial 0:" in out and out.count("] joint ") == 3  # one progress line per finished run
    tuned_lr = load_yaml(tmp_path / "tuned" / "joint.yaml")["optim.lr"]
    rows = ResultsFile(tmp_path / "results.csv").rows()
    assert len(rows) == 3 and {r["method"] for r in rows} == {"joint"}
    # learned, not chance (20%): each ratio's 60 test rows at least 15 points (3 s.e.) above it
    # (measured 70.0 / 61.7 / 56.7 against Bayes ceilings of about 91% at U1/S = 8)
    assert all(float(r["test_accuracy"]) >= 0.35 and float(r["train_seconds"]) > 0 for r in rows)
    assert {float(r["ratio"]) for r in rows} == {0.125, 1.0, 8.0}
    assert all(json.loads(r["hyperparameters"])["optim.lr"] == tuned_lr and r["tuning_trials"] == "1"
               for r in rows)
    assert (tmp_path / "accuracy_vs_ratio.png").stat().st_size > 0
    assert "| joint |" in (tmp_path / "summary.md").read_text()
    for run in (tmp_path / "runs").iterdir():
        assert (run / "metrics.json").exists() and (run / "predictions.npz").exists()
    assert main(args) == 0  # the rerun neither tunes again nor trains again
    out = capsys.readouterr().out
    assert "3 of 3 runs already recorded; 0 to run" in out and "trial 1" not in out
    assert len(ResultsFile(tmp_path / "results.csv").rows()) == 3
    assert json.loads((tmp_path / "tuned" / "joint.json").read_text())["trials"] == 1


def test_the_sweep_trains_each_unimodal_model_once_for_every_method_that_starts_from_it(tmp_path, capsys, one_thread):
    args = ["bench", "synthetic", "--quick", "--methods", "unimodal", "ensemble", "--n", "300", "--epochs", "1",
            "--out", str(tmp_path), "--set", *TINY_SET]
    assert main(args) == 0
    capsys.readouterr()
    entries = sorted(p.name.rsplit("-", 1)[0] for p in (tmp_path / "stage_cache").iterdir() if p.is_dir())
    assert entries == ["unimodal_x1"] * 3 + ["unimodal_x2"] * 3  # one per ratio: the unimodal runs themselves
    rows = ResultsFile(tmp_path / "results.csv").rows()
    solo = {(r["ratio"], r["method"]): float(r["test_accuracy"]) for r in rows if r["method"].startswith("unimodal")}
    assert len(solo) == 6
    runs = {r["run_id"] for r in rows if r["method"].startswith("unimodal")}
    for entry in (tmp_path / "stage_cache").iterdir():  # each entry is a unimodal run's own files
        if entry.is_dir():
            assert sum(os.path.samefile(entry / "checkpoints" / "best.ckpt",
                                        tmp_path / "runs" / run / "checkpoints" / "best.ckpt") for run in runs) == 1
    for run in (tmp_path / "runs").iterdir():
        if run.name.startswith("ensemble"):
            metrics = json.loads((run / "metrics.json").read_text())
            ratio = next(r["ratio"] for r in rows if r["run_id"] == run.name)
            for m in ("x1", "x2"):
                assert (run / "stages" / f"unimodal_{m}").is_symlink()
                assert metrics["stages"][f"unimodal_{m}"]["test"]["accuracy"] == \
                    pytest.approx(solo[ratio, f"unimodal-{m}"], abs=1e-6)


@pytest.mark.parametrize("extra, message", [
    (["--set", "model.nope=1"], "unknown key 'model.nope'"),
    (["--set", "data.shared=0.5"], "chosen by the sweep"),
    (["--workers", "0"], "--workers must be >= 1"),
    (["--methods", "bogus"], "unknown method 'bogus'"),
    (["--tuned", "nowhere"], "has no config for joint"),
])
def test_bad_input_exits_2_with_one_line(tmp_path, capsys, extra, message):
    assert main(["bench", "synthetic", "--quick", "--methods", "joint", "--out", str(tmp_path), *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
