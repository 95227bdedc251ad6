"""summary.md and the plots from a handmade results table, against hand-computed values.

Student t quantiles: t_{0.975, 2} = 4.302653 (3 seeds), t_{0.975, 1} = 12.706205 (2 seeds).
"""

from __future__ import annotations

import json
import math

import pytest

from mmbalance.bench.report import SweepTable, format_summary, write_report
from mmbalance.bench.stats import RANK_CAVEAT

T2 = 4.302653
A, B = (0.8, 0.1), (0.1, 0.8)


def _row(method, shared, unique1, seed, acc, probe=None):
    return {"method": method, "shared": str(shared), "unique1": str(unique1), "seed": str(seed),
            "test_accuracy": str(acc), "probe": json.dumps(probe) if probe else "",
            "hyperparameters": json.dumps({"optim.lr": 0.001}), "tuning_trials": "0"}


ACC_A = {"ensemble": (0.60, 0.70, 0.66), "mcr": (0.70, 0.80, 0.72), "joint": (0.50, 0.60, 0.55)}
PROBE_X2 = {"mcr": (0.55, 0.60, 0.50), "unimodal-x2": (0.60, 0.62, 0.58), "joint": (0.52, 0.62, 0.58)}
ROWS = [_row(m, *A, s, acc[s], {"x1": 0.7, "x2": PROBE_X2[m][s]} if m in PROBE_X2 else None)
        for m, acc in ACC_A.items() for s in range(3)]
ROWS += [_row("unimodal-x2", *A, s, 0.3, {"x1": 0.2, "x2": PROBE_X2["unimodal-x2"][s]}) for s in range(3)]
ROWS += [_row("ensemble", *B, 0, 0.40), _row("mcr", *B, 0, 0.30), _row("joint", *B, 0, 0.45)]
CEILINGS = {(A, 0): {"both": 0.89, "x1": 0.8, "x2": 0.6}, (A, 1): {"both": 0.90, "x1": 0.8, "x2": 0.6},
            (A, 2): {"both": 0.91, "x1": 0.8, "x2": 0.6}, (B, 0): {"both": 0.60, "x1": 0.55, "x2": 0.3}}
METHODS = ["ensemble", "joint", "mcr", "unimodal-x2"]


def table():
    return SweepTable.from_rows(ROWS, METHODS, CEILINGS)


def test_intervals_paired_differences_headroom_and_gaps_by_hand():
    t = table()
    assert t.cells == [A, B]  # sorted by U1/S
    iv = t.interval("mcr", A)  # mean 0.74, sd 0.052915
    assert iv.n == 3 and iv.mean == pytest.approx(0.74)
    assert iv.half_width == pytest.approx(T2 * math.sqrt(0.0028) / math.sqrt(3), rel=1e-5)
    d = t.paired("mcr", A, "ensemble")  # differences 0.10, 0.10, 0.06
    assert d.interval.mean == pytest.approx(0.26 / 3) and d.significant
    assert d.interval.half_width == pytest.approx(T2 * math.sqrt(0.0016 / 3) / math.sqrt(3), rel=1e-5)
    assert t.paired("mcr", B, "ensemble").interval.n == 1 and not t.paired("mcr", B, "ensemble").significant
    shares = [(0.70 - 0.50) / (0.89 - 0.50), (0.80 - 0.60) / (0.90 - 0.60), (0.72 - 0.55) / (0.91 - 0.55)]
    assert t.headroom("mcr", A).mean == pytest.approx(sum(shares) / 3)
    assert t.headroom("mcr", B).mean == pytest.approx((0.30 - 0.45) / (0.60 - 0.45))
    assert t.ceiling(A).mean == pytest.approx(0.90) and t.ceiling(A, "x2").mean == pytest.approx(0.6)
    gap = t.gap("mcr", A, "x2")  # 0.05, 0.02, 0.08
    assert gap.mean == pytest.approx(0.05) and gap.half_width == pytest.approx(T2 * 0.03 / math.sqrt(3), rel=1e-5)
    assert t.gap("ensemble", A, "x2") is None  # no probe scores
    assert t.ranks(A) == {"mcr": 1, "ensemble": 2, "joint": 3, "unimodal-x2": 4}
    assert t.ranks(B) == {"joint": 1, "ensemble": 2, "mcr": 3}


def test_summary_tables_by_hand():
    text = format_summary(table())
    lines = text.splitlines()
    assert "| *Bayes ceiling, both modalities* | 90.00 ± 2.48 | 60.00 (n=1) |" in lines
    assert "| *Bayes ceiling, x2 alone* | 60.00 (same in all 3 seeds) | 30.00 (n=1) |" in lines  # no ± 0.00
    # best mean in bold only where there are 2+ seeds; one seed prints no ±
    assert "| mcr | **74.00 ± 13.14** | 30.00 (n=1) |" in lines
    assert "| joint | 55.00 ± 12.42 | 45.00 (n=1) |" in lines
    assert "| mcr | +8.67 ± 5.74 * | -10.00 (n=1) |" in lines  # vs the Ensemble
    assert "| mcr | +19.00 ± 4.30 * | -15.00 (n=1) |" in lines  # vs joint: 0.20, 0.20, 0.17
    assert "| ensemble | +10.33 ± 1.43 * | -5.00 (n=1) |" in lines
    assert "| *ceiling − joint* | +35.00 ± 11.38 * | +15.00 (n=1) |" in lines  # 0.39, 0.30, 0.36
    assert f"Caveat: {RANK_CAVEAT}." in lines and "| mcr | 1 | 3 |" in lines
    assert "| mcr | — | +5.00 ± 7.45 | — | — |" in lines  # gaps x1, x2 at A (no unimodal-x1), none at B
    assert "| joint | — | +2.67 ± 11.47 | — | — |" in lines  # 0.08, -0.02, 0.00
    assert ("| *Bayes ceiling, m alone* | 80.00 (same in all 3 seeds) | 60.00 (same in all 3 seeds) | 55.00 (n=1) "
            "| 30.00 (n=1) |") in lines
    assert "| mcr | 0 | `{\"optim.lr\": 0.001}` |" in lines
    assert "U1/S=0.125 (S=0.8, U1=0.1)" in text and "U1/S=8 (S=0.1, U1=0.8)" in text


def test_every_method_is_paired_with_mcr_when_it_ran():
    text = format_summary(table())
    section = text.split("## Difference to MCR")[1].split("\n## ")[0].splitlines()
    assert "| ensemble | -8.67 ± 5.74 * | +10.00 (n=1) |" in section  # -0.10, -0.10, -0.06; B: 0.40 - 0.30
    assert "| joint | -19.00 ± 4.30 * | +15.00 (n=1) |" in section  # -0.20, -0.20, -0.17; B: 0.45 - 0.30
    assert "| *ceiling − mcr* | +16.00 ± 12.91 * | +30.00 (n=1) |" in section  # 0.19, 0.10, 0.19: sd 0.0520
    assert not any(line.startswith("| mcr |") for line in section)
    without = format_summary(SweepTable.from_rows([r for r in ROWS if r["method"] != "mcr"], METHODS, CEILINGS))
    assert "Difference to MCR" not in without and "`mcr` method has no runs" not in without


def test_single_seed_tables_print_no_interval_and_no_best():
    text = format_summary(SweepTable.from_rows([r for r in ROWS if r["seed"] == "0"], METHODS, CEILINGS))
    rows = [line for line in text.splitlines() if line.startswith("|")]
    assert not any("±" in line or "**" in line for line in rows) and "no best marked" in text


def test_single_seed_compare_report_prints_no_interval_and_no_best(tmp_path):
    """``bench compare`` (one setting off the grid, ``--seeds 0``): the same rule in every table."""
    rows = [{**r, "shared": "", "unique1": "", "data": "mfeat"} for r in ROWS if r["shared"] == "0.8" and r["seed"] == "0"]
    write_report(rows, tmp_path, METHODS, title="mfeat")
    text = (tmp_path / "summary.md").read_text()
    table_rows = [line for line in text.splitlines() if line.startswith("|")]
    assert table_rows and not any("±" in line or "**" in line for line in table_rows)
    assert "| mcr | 70.00 (n=1) |" in table_rows and "no best marked" in text


def test_report_files_with_and_without_an_ensemble(tmp_path):
    written = write_report(ROWS, tmp_path, ceilings=CEILINGS)
    assert [p.name for p in written] == ["summary.md", "accuracy_vs_ratio.png", "delta_vs_ensemble.png"]
    assert all(p.stat().st_size > 0 for p in written)
    other = tmp_path / "noens"
    other.mkdir()
    written = write_report([r for r in ROWS if r["method"] != "ensemble"], other)
    assert [p.name for p in written] == ["summary.md", "accuracy_vs_ratio.png"]
    text = (other / "summary.md").read_text()
    assert "no difference to the Ensemble" in text and "no share-of-headroom table" in text


def test_one_setting_off_the_grid_gets_a_bar_plot(tmp_path):
    rows = [{**r, "shared": "", "unique1": "", "data": "mfeat"} for r in ROWS if r["shared"] == "0.8"]
    written = write_report(rows, tmp_path)
    assert [p.name for p in written] == ["summary.md", "accuracy.png", "delta_vs_ensemble.png"]
    assert "| method | mfeat |" in (tmp_path / "summary.md").read_text()



def test_the_one_setting_bar_plot_starts_at_0_with_chance_and_the_bayes_ceiling():
    from mmbalance.bench.plots import accuracy_figure
    cell = ("synthetic",)
    rows = [{**r, "shared": "", "unique1": "", "data": "synthetic"} for r in ROWS if r["shared"] == "0.8"]
    ceilings = {(cell, s): CEILINGS[(A, s)] for s in range(3)}  # both: 0.89, 0.90, 0.91 -> mean 90.0
    fig = accuracy_figure(SweepTable.from_rows(rows, METHODS, ceilings), chance=0.2)
    ax = fig.axes[0]
    assert ax.get_ylim()[0] == 0  # the lowest bar is 30 %: the axis still starts at 0
    lines = {line.get_label(): line.get_ydata()[0] for line in ax.get_lines()}
    assert lines["Bayes ceiling (both) 90.0%"] == pytest.approx(90.0)
    assert lines["chance 20%"] == pytest.approx(20.0)
    assert [p.get_height() for p in ax.patches] == pytest.approx([100 * sum(ACC_A["ensemble"]) / 3,
                                                                  100 * sum(ACC_A["joint"]) / 3,
                                                                  100 * sum(ACC_A["mcr"]) / 3, 30.0])
    bare = accuracy_figure(SweepTable.from_rows([{**r, "data": "mfeat"} for r in rows], METHODS)).axes[0]
    assert bare.get_ylim()[0] == 0  # nothing known, no line drawn (the error bars' caps are unlabelled)
    assert [line.get_label() for line in bare.get_lines() if not line.get_label().startswith("_")] == []


def test_chance_comes_from_the_runs_inputs(tmp_path):
    from mmbalance.bench.plots import chance_of_runs
    assert chance_of_runs(tmp_path) is None  # no runs
    (tmp_path / "runs" / "a__seed0").mkdir(parents=True)
    (tmp_path / "runs" / "a__seed0" / "inputs.json").write_text(json.dumps({"task": "regression", "num_classes": 1}))
    assert chance_of_runs(tmp_path) is None
    (tmp_path / "runs" / "b__seed0").mkdir()
    (tmp_path / "runs" / "b__seed0" / "inputs.json").write_text(json.dumps({"task": "classification",
                                                                           "num_classes": 10}))
    assert chance_of_runs(tmp_path) == pytest.approx(0.1)

def test_kind_accuracy_from_a_known_prediction_vector():
    import numpy as np
    from mmbalance.bench.scores import kind_accuracy
    label = np.array([0, 1, 2, 0, 1, 2, 0, 1])
    pred = np.array([0, 1, 0, 0, 2, 2, 1, 1])  # right: 1 1 0 1 0 1 0 1
    kind = np.array([0, 0, 0, 1, 1, 2, 2, 2])  # shared x3, unique1 x2, unique2 x3, no "none" row
    assert kind_accuracy(pred, label, kind) == pytest.approx({"shared": 2 / 3, "unique1": 0.5, "unique2": 2 / 3})
    with pytest.raises(ValueError, match="one length"):
        kind_accuracy(pred[:3], label, kind)


def _scored_row(method, seed, acc, u2, f1, secs, phi):
    kinds = {"shared": acc, "unique1": acc, "unique2": u2}
    return {**_row(method, *A, seed, acc), "macro_f1": str(f1), "train_seconds": str(secs),
            "kind_accuracy": json.dumps(kinds), "shapley": json.dumps({"zero": phi, "permute": phi})}


def test_field_sections_by_hand():
    from mmbalance.bench.report_fields import fields_from_rows, unique2_deficit
    from mmbalance.bench.report import row_cell
    rows = [_scored_row("unimodal-x2", s, 0.3, u2, 0.2, 1.0, {"x1": 0.0, "x2": 0.1})
            for s, u2 in enumerate((0.70, 0.60, 0.65))]
    rows += [_scored_row("joint", s, 0.8, u2, f1, t, {"x1": p, "x2": 0.05})
             for s, (u2, f1, t, p) in enumerate(((0.60, 0.70, 2.0, 0.30), (0.50, 0.72, 4.0, 0.40),
                                                  (0.60, 0.74, 3.0, 0.35)))]
    fields = fields_from_rows(rows, row_cell)
    d = unique2_deficit(fields, "joint", A)  # 0.10, 0.10, 0.05
    assert d.interval.mean == pytest.approx(0.25 / 3) and d.significant
    assert d.interval.half_width == pytest.approx(T2 * math.sqrt(((1 / 60) ** 2 * 2 + (1 / 30) ** 2) / 2) / math.sqrt(3),
                                                  rel=1e-5)
    lines = format_summary(SweepTable.from_rows(rows, ["joint", "unimodal-x2"])).splitlines()
    sd_f1 = 0.02  # 0.70, 0.72, 0.74
    assert f"| joint | 72.00 ± {100 * T2 * sd_f1 / math.sqrt(3):.2f} |" in lines
    assert "| *unimodal-x2 on unique2* | 65.00 ± 12.42 |" in lines  # sd 0.05
    assert f"| joint | +8.33 ± {100 * d.interval.half_width:.2f} * |" in lines
    # per-kind table: shared, unique1, unique2, none (no row of kind none)
    assert "| joint | 80.00 (same in all 3 seeds) | 80.00 (same in all 3 seeds) | 56.67 ± 14.34 | — |" in lines
    # Shapley: zero x1, zero x2, permute x1, permute x2; x1: 0.30, 0.40, 0.35 (sd 0.05)
    assert ("| joint | 35.00 ± 12.42 | 5.00 (same in all 3 seeds) | 35.00 ± 12.42 | 5.00 (same in all 3 seeds) |"
            in lines)
    assert "| joint | 3.0 ± 2.5 |" in lines  # training time 2, 4, 3 s: sd 1, 4.3027/sqrt(3) = 2.48
