"""``mmbalance demo``: a line per run with an ETA; a table with no ``± 0.00`` on one seed; a
bar plot whose accuracy axis starts at 0, with every seed's point, chance and the Bayes ceiling."""

from __future__ import annotations

import json
import re

import pytest
from matplotlib.collections import PathCollection
from matplotlib.patches import Rectangle

from mmbalance.demo import DEMO_METHODS, bar_figure, format_table, run_demo

from .conftest import TINY

RESULTS = {"joint": [0.60, 0.612, 0.589], "multiloss": [0.59, 0.60, 0.582], "mcr": [0.605, 0.61, 0.59]}


def overlaps(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def bar_boxes(fig, renderer):
    """Window extents of every bar of every axes (NaN bars draw nothing)."""
    import math
    boxes = []
    for ax in fig.axes:
        for patch in ax.patches:
            if isinstance(patch, Rectangle):
                box = patch.get_window_extent(renderer)
                if all(math.isfinite(v) for v in (box.x0, box.x1, box.y0, box.y1)) and box.width and box.height:
                    boxes.append(box)
    return boxes


def test_demo_prints_a_line_per_run_with_an_eta(tmp_path, capsys):
    results = run_demo(tmp_path, seeds=1, epochs=1, overrides=dict(TINY), ceiling_draws=2000)
    out = capsys.readouterr().out
    runs = [line for line in out.splitlines() if line.startswith("[")]
    assert len(runs) == len(DEMO_METHODS)
    for k, (line, method) in enumerate(zip(runs, DEMO_METHODS), 1):
        assert re.match(rf"\[{k}/3\] {method} +seed 0: test accuracy \d+\.\d\d%  \(\d+ s; elapsed \d+:\d\d:\d\d, "
                        r"ETA \d+:\d\d:\d\d\)$", line), line
    assert runs[-1].endswith("ETA 0:00:00)") and "Bayes ceiling of this data" in out and "\r" not in out
    summary = (tmp_path / "summary.md").read_text()
    assert "±" not in summary and "**" not in summary and "one seed" in summary  # one seed: no spread, no best
    assert "| *Bayes ceiling (both modalities)* |" in summary and "| *chance* | 20.00 | |" in summary
    assert json.loads((tmp_path / "results.json").read_text()) == results
    assert (tmp_path / "demo_accuracy.png").stat().st_size > 0


def test_table_with_several_seeds_and_with_one():
    text = format_table(RESULTS, ceiling=0.6191, chance=0.2)
    assert "| joint | 60.03 ± 1.15 | 60.00, 61.20, 58.90 |" in text
    assert "| *Bayes ceiling (both modalities)* | 61.91 | |" in text
    one = format_table({m: v[:1] for m, v in RESULTS.items()})
    assert "| joint | 60.00 | 60.00 |" in one and "±" not in one and "**" not in one


@pytest.mark.parametrize("seeds", [3, 1])
def test_bar_plot_reads_correctly(seeds):
    import matplotlib.pyplot as plt
    results = {m: v[:seeds] for m, v in RESULTS.items()}
    fig = bar_figure(results, ceiling=0.6191, chance=0.2)
    try:
        ax = fig.axes[0]
        assert ax.get_ylim()[0] == 0  # the accuracy axis starts at 0
        lines = {line.get_label(): line.get_ydata()[0] for line in ax.get_lines()}
        assert lines["Bayes ceiling 61.9%"] == pytest.approx(61.91) and lines["chance 20%"] == pytest.approx(20.0)
        points = sum(len(c.get_offsets()) for c in ax.collections if isinstance(c, PathCollection))
        assert points == seeds * len(results)  # every seed's point
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        bars = bar_boxes(fig, renderer)
        assert len(bars) == len(results)
        for artist in (ax.get_legend(), ax.title):
            box = artist.get_window_extent(renderer)
            assert not any(overlaps(box, bar) for bar in bars), artist
    finally:
        plt.close(fig)


def test_demo_in_two_processes_trains_the_same_runs(tmp_path, capsys):
    import os

    import torch
    threads = torch.get_num_threads()
    # bench.runner.worker_pool gives each of 2 workers max(1, cores // 2) threads (1 on CI's
    # 2 cores); train alone with as many, so that both sides split their float sums alike
    # and the accuracies can be compared exactly (a thread count can move a sum's rounding)
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // 2))
    try:
        alone = run_demo(tmp_path / "one", seeds=2, epochs=1, overrides=dict(TINY), ceiling_draws=0)
    finally:
        torch.set_num_threads(threads)
    capsys.readouterr()
    both = run_demo(tmp_path / "two", seeds=2, epochs=1, overrides=dict(TINY), ceiling_draws=0, workers=2)
    out = capsys.readouterr().out
    assert both == alone  # seeded runs: the same accuracies, in seed order, whatever ran them
    runs = [line for line in out.splitlines() if line.startswith("[")]
    assert sorted(int(line[1:line.index("/")]) for line in runs) == list(range(1, 7))
    assert all(line.startswith(f"[{k}/6] ") for k, line in enumerate(runs, 1)) and "in 2 processes" in out
    assert runs[-1].endswith("ETA 0:00:00)")
    assert json.loads((tmp_path / "two" / "results.json").read_text()) == both
    assert {p.name for p in (tmp_path / "two").iterdir() if p.is_dir()} == {
        f"{m}_seed{s}" for m in DEMO_METHODS for s in (0, 1)}


def test_demo_refuses_zero_workers(tmp_path):
    from mmbalance.errors import ConfigError
    with pytest.raises(ConfigError, match="--workers"):
        run_demo(tmp_path, seeds=1, epochs=1, overrides=dict(TINY), ceiling_draws=0, workers=0)
