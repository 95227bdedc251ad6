"""The command line: methods listing, train outputs, one-line errors with exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from mmbalance.cli import main

TINY = ["data.n=300", "data.dim=16", "model.feature_dim=8", "model.hidden=16", "trainer.max_epochs=1",
        "trainer.progress=false"]


def test_methods_lists_registry(capsys):
    from mmbalance.methods import REGISTRY
    assert main(["methods"]) == 0
    text = capsys.readouterr().out
    for name, cls in REGISTRY.items():
        assert name in text and cls.reference in text
    assert "num_permutations=32" in text


def test_train_writes_metrics(tmp_path, capsys):
    assert main(["train", "--data", "synthetic", "--method", "joint", "--set", *TINY, "--out", str(tmp_path)]) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["method"] == "joint" and 0 <= metrics["test"]["accuracy"] <= 1
    assert "test accuracy=" in capsys.readouterr().out


@pytest.mark.parametrize("args,culprit", [
    (["--method", "nope"], "unknown method 'nope'"),
    (["--method", "joint", "--set", "trainer.max_epoch=3"], "trainer.max_epoch"),
    (["--method", "mcr", "--set", "method.num_permutations=0"], "num_permutations"),
    (["--method", "mcr", "--set", "method.mipd_weight=-1"], "mipd_weight"),
    (["--method", "joint", "--config", "/no/such.yaml"], "/no/such.yaml"),
])
def test_bad_input_exit_2_one_line(tmp_path, args, culprit):
    cmd = [sys.executable, "-m", "mmbalance", "train", "--data", "synthetic", *args, "--out", str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and culprit in lines[0]
    assert "Traceback" not in proc.stderr


def test_missing_data_file(tmp_path, capsys):
    assert main(["train", "--data", str(tmp_path / "x.npz"), "--method", "joint", "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith(f"error: data file {tmp_path / 'x.npz'} does not exist")


def test_resume_without_checkpoint(tmp_path, capsys):
    assert main(["train", "--data", "synthetic", "--method", "joint", "--out", str(tmp_path), "--resume"]) == 2
    assert "no checkpoint" in capsys.readouterr().err
