"""``bench speed --loop``: the plain PyTorch loop it compares against, the table,
and the time breakdown ``mmbalance train`` writes."""

from __future__ import annotations

import json

import pytest

from mmbalance.bench.speed.loop import loop_markdown, plain_main
from mmbalance.cli import main
from mmbalance.training.run import train

from ..conftest import tiny_config


def test_plain_loop_trains_the_same_data_and_model_and_reports_its_time(tmp_path):
    assert plain_main(["--epochs", "2", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "metrics.json").read_text())
    # the default generator at shared=0.1/unique1=0.8: Bayes ceiling about 62%, chance 20%
    assert result["test_accuracy"] > 0.45 and result["val_accuracy"] > 0.45
    assert set(result["seconds"]) == {"imports", "setup", "fit", "score_and_write"}
    assert all(v >= 0 for v in result["seconds"].values())
    assert (tmp_path / "last.pt").exists() and (tmp_path / "best.pt").exists()


def test_train_writes_where_its_time_went(tmp_path):
    metrics = train(tiny_config("joint", trainer__max_epochs=1), tmp_path)
    seconds = json.loads((tmp_path / "metrics.json").read_text())["seconds"]
    assert seconds == metrics["seconds"]
    assert set(seconds) == {"setup", "stages", "fit", "score", "probe_and_write"}
    assert seconds["stages"] == 0.0 and all(v >= 0 for v in seconds.values())
    assert seconds["fit"] == pytest.approx(metrics["train_seconds"], abs=1e-3)


def test_loop_table_shows_ratio_and_breakdown():
    rows = [{"epochs": 1, "train_s": 12.0, "plain_s": 6.0, "ratio": 2.0,
             "train_parts": {"setup": 0.1, "stages": 0.0, "fit": 1.0, "score": 0.3, "probe_and_write": 0.1,
                             "start_and_imports": 10.5},
             "plain_parts": {"imports": 2.5, "setup": 2.5, "fit": 0.5, "score_and_write": 0.1, "start": 0.4}}]
    text = loop_markdown(rows)
    assert "| 1 | 12.0 | 6.0 | 2.00 |" in text
    assert "| 1 | train | 10.5 | 0.1 | 0.0 | 1.0 | 0.3 | 0.1 |" in text
    assert "| 1 | plain | 2.9 | 2.5 | - | 0.5 | 0.1 | - |" in text


def test_bad_loop_epochs_exit_2(tmp_path, capsys):
    assert main(["bench", "speed", "--loop", "--loop-epochs", "0", "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == "error: --loop-epochs must be >= 1, got [0]"
