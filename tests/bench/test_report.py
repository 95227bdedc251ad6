"""summary.md and the plots from a handmade results table, against hand-computed values."""

from __future__ import annotations

from mmbalance.bench.report import SweepTable, format_summary, write_report


def _row(method, shared, unique1, seed, acc):
    return {"method": method, "shared": str(shared), "unique1": str(unique1), "seed": str(seed),
            "test_accuracy": str(acc)}


ROWS = [
    _row("ensemble", 0.8, 0.1, 0, 0.60), _row("ensemble", 0.8, 0.1, 1, 0.70),
    _row("mcr", 0.8, 0.1, 0, 0.65), _row("mcr", 0.8, 0.1, 1, 0.80),
    _row("joint", 0.8, 0.1, 0, 0.50),
    _row("ensemble", 0.1, 0.8, 0, 0.40), _row("mcr", 0.1, 0.8, 0, 0.30), _row("joint", 0.1, 0.8, 0, 0.45),
]


def test_stats_delta_and_ranks_by_hand():
    t = SweepTable.from_rows(ROWS, ["ensemble", "joint", "mcr"])
    assert t.cells == [(0.8, 0.1), (0.1, 0.8)]  # sorted by U1/S
    mean, std, n = t.stats("mcr", (0.8, 0.1))
    assert (round(mean, 6), round(std, 6), n) == (0.725, round(0.15 / 2 ** 0.5, 6), 2)
    d_mean, d_std, pairs = t.delta("mcr", (0.8, 0.1))  # paired: +0.05 and +0.10
    assert (round(d_mean, 6), round(d_std, 6), pairs) == (0.075, round(0.05 / 2 ** 0.5, 6), 2)
    assert t.delta("joint", (0.8, 0.1))[2] == 1  # only seed 0 has a pair
    assert t.ranks((0.8, 0.1)) == {"mcr": 1, "ensemble": 2, "joint": 3}
    assert t.ranks((0.1, 0.8)) == {"joint": 1, "ensemble": 2, "mcr": 3}


def test_summary_marks_the_best_per_column_and_the_ensemble_difference():
    text = format_summary(SweepTable.from_rows(ROWS, ["ensemble", "joint", "mcr"]))
    lines = text.splitlines()
    mcr = next(line for line in lines if line.startswith("| mcr | **72.50"))
    assert "**72.50 ± 10.61**" in mcr and "| 30.00 ± 0.00 |" in mcr
    assert "| joint | 50.00 ± 0.00 | **45.00 ± 0.00** |" in lines
    assert "| mcr | +7.50 ± 3.54 | -10.00 ± 0.00 |" in lines
    assert "| mcr | 1 | 3 |" in lines
    assert "U1/S=0.125 (S=0.8, U1=0.1)" in text and "U1/S=8 (S=0.1, U1=0.8)" in text


def test_report_files_with_and_without_an_ensemble(tmp_path):
    written = write_report(ROWS, tmp_path)
    assert [p.name for p in written] == ["summary.md", "accuracy_vs_ratio.png", "delta_vs_ensemble.png"]
    assert all(p.stat().st_size > 0 for p in written)
    other = tmp_path / "noens"
    other.mkdir()
    written = write_report([r for r in ROWS if r["method"] != "ensemble"], other)
    assert [p.name for p in written] == ["summary.md", "accuracy_vs_ratio.png"]
    assert "no difference to the Ensemble" in (other / "summary.md").read_text()
