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
    # a strong signal (s_m = 4 in both modalities) and 3 epochs of batch 16 at lr 0.01, so the
    # run must learn: 45 test points, chance 1/5. Measured over run seeds 0-5: 0.93, 0.89,
    # 0.87, 0.71, 0.82, 0.84 (1 epoch at the defaults stays near chance: 0.13-0.24)
    learn = ["data.signal1=4", "data.signal2=4", "optim.lr=0.01", "data.batch_size=16", "trainer.max_epochs=3"]
    assert main(["train", "--data", "synthetic", "--method", "joint", "--set", *TINY, *learn,
                 "--out", str(tmp_path)]) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["method"] == "joint"
    assert metrics["test"]["accuracy"] >= 1 / 5 + 0.38  # at least 27 of 45 (bound between counts); chance 9
    assert "test accuracy=" in capsys.readouterr().out


# Two cases run as real processes (one failing before the heavy imports, one after Lightning
# and the model are loaded), so nothing else reaches the terminal; the rest call main() in
# this process (about 10 s of imports saved each) and read what reached fds 1 and 2.
@pytest.mark.parametrize("args,culprit,own_process", [
    (["--method", "nope"], "unknown method 'nope'", True),
    (["--method", "joint", "--set", "trainer.max_epoch=3"], "trainer.max_epoch", False),
    (["--method", "mcr", "--set", "method.num_permutations=0"], "num_permutations", True),
    (["--method", "mcr", "--set", "method.mipd_weight=-1"], "mipd_weight", False),
    (["--method", "joint", "--config", "/no/such.yaml"], "/no/such.yaml", False),
    (["--method", "joint", "--config", "{tmp}"], "is a directory", False),
    (["--method", "joint", "--config", "{tmp}/bad.yaml"], "not valid YAML", False),
    (["--method", "joint", "--set", "trainer.precision=fp8"], "trainer.precision 'fp8' is unknown; valid: ", False),
    (["--method", "joint", "--set", "trainer.strategy=bogus"], "trainer.strategy 'bogus' is unknown; valid: auto",
     False),
    pytest.param(["--method", "joint", "--set", "trainer.accelerator=gpu"], "trainer.accelerator=gpu", False,
                 marks=pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has a GPU")),
    (["--method", "joint", "--set", "trainer.checkpoint_every_n_steps=-1"], "checkpoint_every_n_steps", False),
])
def test_bad_input_exit_2_one_line(tmp_path, capfd, args, culprit, own_process):
    (tmp_path / "bad.yaml").write_text("trainer: {max_epochs: [1\n")
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    out = tmp_path / "never"
    argv = ["train", "--data", "synthetic", *args, "--out", str(out)]
    if own_process:
        proc = subprocess.run([sys.executable, "-m", "mmbalance", *argv], capture_output=True, text=True, timeout=300)
        code, stdout, stderr = proc.returncode, proc.stdout, proc.stderr
    else:
        code = main(argv)
        stdout, stderr = capfd.readouterr()
    assert code == 2
    lines = [l for l in stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and culprit.replace("{tmp}", str(tmp_path)) in lines[0]
    assert "Traceback" not in stderr and not stdout.strip()
    assert not out.exists(), "a run that fails before its first step leaves no folder"


def test_failed_run_leaves_no_folder_unless_it_existed(tmp_path, capsys):
    """ogm needs a decomposable fusion: the method fails to build after data loading."""
    bad = ["train", "--data", "synthetic", "--method", "ogm", "--set", *TINY, "model.fusion=concat_mlp", "--out"]
    assert main([*bad, str(tmp_path / "new")]) == 2
    assert "decomposable" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "notes.txt").write_text("mine")
    assert main([*bad, str(tmp_path / "old")]) == 2
    assert (tmp_path / "old" / "notes.txt").read_text() == "mine"


def test_resume_from_another_directory_with_a_relative_data_path(tmp_path, monkeypatch):
    """config.yaml keeps the data path resolved; --resume with the relative path as first typed
    works from any working directory, and a .npz run records no generator settings."""
    import numpy as np
    import yaml
    rng = np.random.default_rng(0)
    label = rng.integers(0, 3, 200)
    (tmp_path / "data").mkdir()
    np.savez(tmp_path / "data" / "mine.npz", label=label, a=(np.eye(3)[label] + rng.normal(size=(200, 3))).astype("f4"),
             b=rng.normal(size=(200, 4)).astype("f4"))
    monkeypatch.chdir(tmp_path / "data")
    args = ["train", "--data", "mine.npz", "--method", "joint", "--set", *TINY, "--out", str(tmp_path / "run")]
    assert main(args) == 0
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["data_spec"] == str(tmp_path / "data" / "mine.npz") and saved["data_spec_given"] == "mine.npz"
    assert "n" not in saved["data"] and "num_classes" not in saved["data"] and "root" not in saved["data"]
    assert saved["data"]["seed"] == 0 and "batch_size" in saved["data"]
    monkeypatch.chdir(tmp_path)
    (tmp_path / "run" / "metrics.json").unlink()
    assert main([*args, "--resume"]) == 0
    from mmbalance.analysis.runs import load_run
    assert load_run(tmp_path / "run").cfg.data_spec == str(tmp_path / "data" / "mine.npz")


def test_missing_data_file(tmp_path, capsys):
    assert main(["train", "--data", str(tmp_path / "x.npz"), "--method", "joint", "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith(f"error: data file {tmp_path / 'x.npz'} does not exist")


def test_resume_without_checkpoint(tmp_path, capsys):
    assert main(["train", "--data", "synthetic", "--method", "joint", "--out", str(tmp_path), "--resume"]) == 2
    assert "no checkpoint" in capsys.readouterr().err


def test_path_valued_keys_are_saved_and_printed_absolute(tmp_path, monkeypatch):
    """data.root, data.spectrogram_dir, model.pretrained (also ``m=DIR,...``) and
    trainer.stage_cache are local paths: config.yaml and the printed resume command hold them
    absolute, so a run can be diagnosed or resumed from any working directory. A name that is
    not a local path (a Hugging Face id) is kept as typed."""
    import argparse

    from mmbalance.cli import resume_command
    from mmbalance.config import absolute_path_value, build_config, record
    (tmp_path / "roots" / "cremad").mkdir(parents=True)
    (tmp_path / "hf").mkdir()
    monkeypatch.chdir(tmp_path)
    assert absolute_path_value("data.root", "roots/cremad") == str(tmp_path / "roots" / "cremad")
    assert absolute_path_value("data.root", "missing") == "missing"  # left for the loader's error
    assert absolute_path_value("trainer.stage_cache", "cache") == str(tmp_path / "cache")
    assert absolute_path_value("model.pretrained", "audio=hf,video=bert-base") == f"audio={tmp_path / 'hf'},video=bert-base"
    assert absolute_path_value("model.pretrained", "bert-base-uncased") == "bert-base-uncased"
    assert absolute_path_value("data.n", "hf") == "hf" and absolute_path_value("data.root", None) is None
    cfg = build_config("joint", "cremad", {"data.root": "roots/cremad", "trainer.stage_cache": "cache"})
    saved = record(cfg)
    assert saved["data"]["root"] == str(tmp_path / "roots" / "cremad")
    assert saved["trainer"]["stage_cache"] == str(tmp_path / "cache")
    args = argparse.Namespace(data="synthetic", method="joint", config=None, out="run",
                              set=["data.root=roots/cremad", "data.n=300", "trainer.stage_cache=cache"])
    line = resume_command(args)
    assert f"data.root={tmp_path / 'roots' / 'cremad'}" in line and "data.n=300" in line
    assert f"trainer.stage_cache={tmp_path / 'cache'}" in line and f"--out {tmp_path / 'run'} --resume" in line
