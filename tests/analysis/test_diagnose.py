"""Modality contributions: Shapley, permutation importance, and the diagnose command."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from mmbalance.analysis.contributions import (permutation_importance, run_predictions, shapley_values,
                                              zero_mask_values)
from mmbalance.analysis.diagnose import diagnose, write_diagnosis
from mmbalance.cli import main
from mmbalance.methods import get_method
from mmbalance.models import MultimodalModel


def test_shapley_by_hand():
    v = {frozenset(): 0.2, frozenset("a"): 0.6, frozenset("b"): 0.3, frozenset("ab"): 0.9}
    phi = shapley_values(["a", "b"], v)
    assert phi["a"] == pytest.approx(0.5 * (0.6 - 0.2) + 0.5 * (0.9 - 0.3))  # 0.5
    assert phi["b"] == pytest.approx(0.5 * (0.3 - 0.2) + 0.5 * (0.9 - 0.6))  # 0.2
    # three players, v(S) = |S|^2: symmetric, so each gets v(all) / 3
    v3 = {frozenset(s): len(s) ** 2 for k in range(4) for s in __import__("itertools").combinations("abc", k)}
    assert all(p == pytest.approx(3.0) for p in shapley_values(list("abc"), v3).values())


class Passthrough(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.out_dim = dim

    def forward(self, x):
        return x


def known_model():
    """Fused logits = 5 * x_a + 0 * x_b + (0, 0, 1): with x_a the one-hot label the model is
    always right; with x_a zeroed it always says class 2; x_b is ignored."""
    model = MultimodalModel({"a": Passthrough(3), "b": Passthrough(3)}, num_classes=3)
    with torch.no_grad():
        model.fusion.weights["a"].weight.copy_(5 * torch.eye(3))
        model.fusion.weights["b"].weight.zero_()
        model.fusion.bias.copy_(torch.tensor([0.0, 0.0, 1.0]))
    return get_method("joint")(model).eval()


def test_contributions_on_a_model_whose_answer_is_known():
    label = torch.tensor([0, 1, 2, 0, 1, 2, 0, 0, 1, 2])  # class 2 is 3 of 10
    xb = torch.randn(10, 3, generator=torch.Generator().manual_seed(0))
    data = [({"a": torch.eye(3)[y], "b": xb[i]}, y) for i, y in enumerate(label)]
    method = known_model()
    base = run_predictions(method, data, batch_size=4)
    assert torch.equal(base["label"], label) and torch.equal(base["fused"].argmax(-1), label)
    assert torch.equal(base["features/a"], torch.eye(3)[label])
    values = zero_mask_values(method, data, 4, ["a", "b"], label)
    assert values == {frozenset(): pytest.approx(0.3), frozenset("a"): 1.0, frozenset("b"): pytest.approx(0.3),
                      frozenset("ab"): 1.0}
    phi = shapley_values(["a", "b"], values)
    assert phi == {"a": pytest.approx(0.7), "b": pytest.approx(0.0)}
    feats = {m: base[f"features/{m}"] for m in ("a", "b")}
    perm = permutation_importance(method, data, 4, feats, base["fused"], label, permutations=3)
    # an ignored modality: no divergence, no drop. Exact: b's weights are 0, so permuting its
    # rows changes no bit of the fused logits (a's rows keep their batch positions), and the
    # JSD of equal inputs is exactly 0 (documented)
    assert perm["b"] == (0.0, 0.0)
    assert perm["a"][0] > 0.05 and perm["a"][1] > 0.2


def test_diagnose_a_trained_run(runs, tmp_path):
    d = diagnose(runs["plain"], permutations=2)
    assert [r.modality for r in d.modalities] == ["x1", "x2"] and d.samples == 45
    assert sum(r.shapley for r in d.modalities) == pytest.approx(d.full_score - d.empty_score)
    metrics = json.loads((runs["plain"] / "metrics.json").read_text())
    assert d.full_score == pytest.approx(metrics["test"]["accuracy"])
    for r in d.modalities:
        assert r.head_score == pytest.approx(metrics["test"][f"accuracy/{r.modality}"])
        assert 0 <= r.probe_score <= 1 and 0 <= r.unused_share <= 1 and r.permutation_divergence >= 0
    assert d.verdict
    paths = write_diagnosis(d, tmp_path)
    assert "**Verdict.**" in paths[0].read_text() and json.loads(paths[1].read_text())["method"] == "multiloss"
    assert paths[2].stat().st_size > 0


def test_diagnose_cli_on_users_npz_with_three_modalities(runs, tmp_path, capsys):
    assert main(["diagnose", str(runs["npz3"]), "--out", str(tmp_path), "--permutations", "2"]) == 0
    out = capsys.readouterr().out
    assert "Verdict" in out and "| c |" in out
    d = json.loads((tmp_path / "diagnosis.json").read_text())
    assert [m["modality"] for m in d["modalities"]] == ["a", "b", "c"]
    assert sum(m["shapley"] for m in d["modalities"]) == pytest.approx(d["full_score"] - d["empty_score"])
    shap = {m["modality"]: m["shapley"] for m in d["modalities"]}
    assert shap["a"] > shap["b"]  # a carries the label; b is noise
    assert main(["diagnose", str(tmp_path / "nope"), "--out", str(tmp_path)]) == 2
    capsys.readouterr()
    for inside in ("metrics.json", "checkpoints/best.ckpt"):  # a file inside a run names the run folder
        assert main(["diagnose", str(runs["npz3"] / inside), "--out", str(tmp_path)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and f"pass the run folder: {runs['npz3']}" in err


def test_diagnose_a_moved_run_from_another_directory(runs, tmp_path, monkeypatch):
    """A run folder refers to its own files relatively: moved, it still loads, from any directory."""
    import shutil
    moved = tmp_path / "elsewhere" / "run"
    shutil.copytree(runs["npz3"], moved, symlinks=True)
    monkeypatch.chdir(tmp_path)
    assert main(["diagnose", "elsewhere/run", "--out", str(tmp_path / "d"), "--permutations", "1"]) == 0


def _diag(shapley, probe, unused=0.1):
    from mmbalance.analysis.diagnose import Diagnosis, ModalityReport
    mods = [ModalityReport(m, True, 0.01 * i, 0.0, s, None, p, unused)
            for i, (m, s, p) in enumerate(zip(("a", "b"), shapley, probe))]
    return Diagnosis("run", "joint", "classification", 100, 0.2 + sum(shapley), 0.2, 0.2, mods)


def test_verdict_in_plain_words():
    from mmbalance.analysis.diagnose import verdict
    assert verdict(_diag([0.20, 0.15], [0.6, 0.5])).startswith("Balanced")
    text = verdict(_diag([0.40, 0.02], [0.7, 0.55]))
    # in the table's units: Shapley values in accuracy points, accuracies in %
    assert text.startswith("a dominates: it holds 95%") and "(40.00 vs 2.00 points for b, 20.0x)" in text
    assert "b's own features reach 55.00% with a linear probe (chance 20.0%)" in text
    assert "not encoded" not in text and verdict(_diag([0.0, 0.0], [0.2, 0.2])).startswith("No verdict")


def test_verdict_numbers_appear_in_the_table(tmp_path):
    """Every Shapley value the verdict quotes is printed the same way in the table."""
    from mmbalance.analysis.diagnose import verdict
    d = _diag([0.40, 0.02], [0.7, 0.55])
    d.verdict = verdict(d)
    write_diagnosis(d, tmp_path)
    table = (tmp_path / "diagnosis.md").read_text().split("| modality |", 1)[1]
    for r in d.modalities:
        assert f"{100 * r.shapley:.2f}" in d.verdict and f"| {100 * r.shapley:.2f} |" in table
    d = _diag([0.0, 0.0], [0.2, 0.2])
    d.verdict = verdict(d)
    assert f"accuracy {100 * d.empty_score:.2f}% vs {100 * d.full_score:.2f}%" in d.verdict


@pytest.mark.parametrize("heads", [True, False])
def test_plot_keeps_title_and_legend_clear_of_the_bars(heads):
    import math
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle
    from mmbalance.analysis.diagnose import figure, verdict
    d = _diag([0.40, 0.02], [0.9, 0.95])  # probes near the top of their panel, where a legend would sit
    for i, r in enumerate(d.modalities, 1):
        r.head_score = 0.93 if heads else None
        r.permutation_divergence, r.permutation_drop = 0.01 * i, 0.05 * i
    d.verdict = verdict(d)
    fig = figure(d)
    try:
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        bars = [b for ax in fig.axes for p in ax.patches if isinstance(p, Rectangle)
                for b in [p.get_window_extent(renderer)] if math.isfinite(b.y1) and b.height]
        assert len(bars) == 2 * 3 + (4 if heads else 2)
        texts = [fig._suptitle, *(ax.title for ax in fig.axes), *(ax.get_legend() for ax in fig.axes if ax.get_legend())]
        assert len(texts) == 1 + 4 + 1
        for artist in texts:
            box = artist.get_window_extent(renderer)
            assert not any(b.x0 < box.x1 and box.x0 < b.x1 and b.y0 < box.y1 and box.y0 < b.y1 for b in bars), artist
        legend = fig.axes[3].get_legend()
        assert sorted(t.get_text() for t in legend.get_texts()) == sorted(
            (["unimodal head"] if heads else []) + ["linear probe", "chance (majority class)"])
        assert "a dominates" in fig._suptitle.get_text()
    finally:
        plt.close(fig)
