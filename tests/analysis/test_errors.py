"""The error matrix (Figure 5) on handmade predictions, checked by hand, and on real runs."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from mmbalance.analysis.error_matrix import analyze_errors, categorize, category_names, error_matrix
from mmbalance.cli import main
from mmbalance.errors import DataError

LABEL = np.array([0, 1, 2, 0, 1, 2, 0, 1])
X1 = np.array([1, 1, 0, 0, 1, 0, 1, 0], bool)  # the x1 model's correctness
X2 = np.array([1, 0, 1, 0, 1, 0, 0, 1], bool)
# -> both right: 0, 4; only x1: 1, 6; only x2: 2, 7; both wrong: 3, 5
JOINT = np.array([1, 1, 1, 0, 0, 0, 1, 0], bool)
MCR = np.array([1, 1, 1, 1, 1, 0, 1, 1], bool)


def logits_for(correct, label=LABEL, classes=3):
    """One-hot logits on the label where ``correct``, on the next class otherwise."""
    return np.eye(classes)[np.where(correct, label, (label + 1) % classes)].astype(np.float32)


def fake_run(path, method, fused, unimodal, seed=0, label=LABEL):
    path.mkdir(parents=True)
    (path / "metrics.json").write_text(json.dumps({"method": method, "seed": seed}))
    names = list(unimodal)
    stacked = (np.stack([logits_for(unimodal[m], label) for m in names]) if names
               else np.zeros((0, len(label), 3), np.float32))
    np.savez(path / "predictions.npz", label=label, fused=logits_for(fused, label), unimodal=stacked,
             modalities=np.array(names), task=np.array("classification"))
    return path


def test_categories_by_hand():
    assert category_names(["x1", "x2"]) == ["both wrong", "only x1 right", "only x2 right", "both right"]
    assert categorize({"x1": X1, "x2": X2}).tolist() == [3, 1, 2, 0, 3, 0, 1, 2]
    assert category_names(["a", "b", "c"]) == ["0 of 3 right", "1 of 3 right", "2 of 3 right", "3 of 3 right"]
    m = error_matrix({"x1": X1, "x2": X2}, {"joint": JOINT, "mcr": MCR})
    assert m.counts.tolist() == [2, 2, 2, 2]
    assert m.correct.tolist() == [[0, 2, 1, 1], [1, 2, 2, 2]]
    assert m.accuracy.tolist() == [[0.0, 1.0, 0.5, 0.5], [0.5, 1.0, 1.0, 1.0]]


def test_command_on_handmade_unimodal_runs(tmp_path):
    runs = [fake_run(tmp_path / "u1", "unimodal", X1, {"x1": X1}),
            fake_run(tmp_path / "u2", "unimodal", X2, {"x2": X2}),
            fake_run(tmp_path / "joint", "joint", JOINT, {"x1": ~X1, "x2": ~X2}),
            fake_run(tmp_path / "mcr", "mcr", MCR, {"x1": X1, "x2": X2})]
    matrix, paths = analyze_errors(runs, tmp_path / "out")
    assert matrix.runs == ["joint", "mcr"]  # the unimodal runs define the columns
    with open(paths[0]) as f:
        rows = list(csv.DictReader(f))
    got = {(r["run"], r["category"]): (int(r["samples"]), int(r["correct"]), float(r["accuracy"])) for r in rows}
    assert got[("joint", "both wrong")] == (2, 0, 0.0)
    assert got[("joint", "only x1 right")] == (2, 2, 1.0)
    assert got[("mcr", "only x2 right")] == (2, 2, 1.0)
    assert got[("mcr", "both wrong")] == (2, 1, 0.5)
    text = paths[1].read_text()
    assert "| joint | 0.0 | 100.0 | 50.0 | 50.0 | 50.0 |" in text and "| mcr | 50.0 | 100.0 | 100.0 | 100.0 | 87.5 |" in text
    assert paths[2].stat().st_size > 0


def test_three_modalities_group_by_how_many_are_right(tmp_path):
    x3 = np.array([0, 0, 0, 0, 1, 1, 1, 1], bool)  # models right per sample: 2,1,1,0,3,1,2,2
    runs = [fake_run(tmp_path / f"u{i}", "unimodal", c, {m: c}) for i, (m, c) in
            enumerate({"a": X1, "b": X2, "c": x3}.items())]
    runs.append(fake_run(tmp_path / "j", "joint", JOINT, {}))
    matrix, _ = analyze_errors(runs, tmp_path / "out")
    assert matrix.categories == ["0 of 3 right", "1 of 3 right", "2 of 3 right", "3 of 3 right"]
    assert matrix.counts.tolist() == [1, 3, 3, 1]
    # JOINT is right at samples 0, 1, 2, 6 (categories 2, 1, 1, 2): [0/1, 2/3, 2/3, 0/1]
    assert matrix.correct.tolist() == [[0, 2, 2, 0]]


def test_ensemble_run_supplies_the_categories_and_mismatched_splits_are_refused(tmp_path):
    ens = fake_run(tmp_path / "ens", "ensemble", MCR, {"x1": X1, "x2": X2})
    joint = fake_run(tmp_path / "joint", "joint", JOINT, {"x1": X1, "x2": X2})
    matrix, _ = analyze_errors([ens, joint], tmp_path / "out")
    assert matrix.runs == ["ensemble", "joint"] and matrix.counts.tolist() == [2, 2, 2, 2]
    other = fake_run(tmp_path / "other", "joint", JOINT, {"x1": X1}, label=(LABEL + 1) % 3)
    with pytest.raises(DataError, match="same test split"):
        analyze_errors([ens, other], tmp_path / "out2")
    with pytest.raises(DataError, match="no unimodal reference"):
        analyze_errors([joint], tmp_path / "out3")


def test_cli_on_trained_runs(runs, tmp_path, capsys):
    assert main(["analyze", "errors", str(runs["plain"]), str(runs["ensemble"]), "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "only x1 right" in out and "| multiloss |" in out and "| ensemble |" in out
    with open(tmp_path / "errors.csv") as f:
        rows = list(csv.DictReader(f))
    assert sum(int(r["samples"]) for r in rows if r["run"] == "ensemble") == 45  # the whole test split
    assert main(["analyze", "errors", str(tmp_path / "missing"), "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith("error: run directory")
    assert main(["analyze", "errors", str(runs["plain"] / "metrics.json"), "--out", str(tmp_path)]) == 2
    assert f"pass the run folder: {runs['plain']}" in capsys.readouterr().err
