"""Opening someone else's run never runs code: every checkpoint load is weights-only.

A crafted checkpoint (a pickle whose ``__reduce__`` calls ``os.system``) goes through every
door a user opens a run by: ``mb.load_run``, ``mmbalance predict``, ``mmbalance diagnose``, a
pipeline's stage checkpoints and ``mmbalance train --resume``. Each refuses it with one line
naming the file and the global, and the command's marker file never appears. The library's own
checkpoints of every registered method (best, last, mid-epoch) load with the allowlist as it is.
"""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
import torch

import mmbalance as mb
from mmbalance.cli import main
from mmbalance.engine.safe_load import CHECKPOINT_GLOBALS, load_checkpoint
from mmbalance.errors import DataError
from mmbalance.methods import REGISTRY
from mmbalance.training import train

from ..conftest import tiny_config


class _RunsACommand:
    """Pickles as a call of ``os.system`` (what a malicious checkpoint carries)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _craft(path, marker, like=None):
    """Writes a checkpoint at ``path`` that runs ``touch marker`` when unpickled: the real
    checkpoint ``like`` (so the file is right in every other way) plus one poisoned entry."""
    tree = torch.load(like, weights_only=True) if like is not None else {"state_dict": {}}
    tree["callbacks"] = {"innocent looking": _RunsACommand(marker)}
    torch.save(tree, path)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished 1-epoch joint run and a finished ensemble (its stage checkpoints)."""
    root = tmp_path_factory.mktemp("safe")
    torch.set_num_threads(1)
    train(tiny_config("joint", trainer__max_epochs=1), root / "joint")
    train(tiny_config("ensemble", trainer__max_epochs=1), root / "ensemble")
    return root


def _copy(finished, name, tmp_path):
    dst = tmp_path / name
    shutil.copytree(finished / name, dst, symlinks=False)
    return dst


def test_a_crafted_checkpoint_file_is_refused_naming_the_global(tmp_path):
    marker = tmp_path / "ran"
    _craft(tmp_path / "x.ckpt", marker)
    with pytest.raises(DataError, match=r"x\.ckpt wants to load (posix|os)\.system, which an mmbalance checkpoint never holds"):
        load_checkpoint(tmp_path / "x.ckpt")
    assert not marker.exists()
    # the very same file does run the command through an unrestricted load: the test is real
    torch.load(tmp_path / "x.ckpt", weights_only=False)
    assert marker.exists()


def test_load_run_refuses_a_crafted_best_checkpoint(finished, tmp_path):
    run, marker = _copy(finished, "joint", tmp_path), tmp_path / "ran"
    best = run / "checkpoints" / "best.ckpt"
    _craft(best, marker, like=best)
    with pytest.raises(DataError) as err:
        mb.load_run(run)
    assert "best.ckpt wants to load" in str(err.value) and "\n" not in str(err.value)
    assert not marker.exists()


def test_load_run_refuses_a_crafted_stage_checkpoint(finished, tmp_path):
    run, marker = _copy(finished, "ensemble", tmp_path), tmp_path / "ran"
    stage = sorted((run / "stages").glob("*/checkpoints/best.ckpt"))[0]
    _craft(stage, marker, like=stage)
    with pytest.raises(DataError, match=str(stage.name)):
        mb.load_run(run)
    assert not marker.exists()


@pytest.mark.parametrize("command", ["predict", "diagnose"])
def test_predict_and_diagnose_refuse_it_with_one_line(finished, tmp_path, command, capsys):
    run, marker = _copy(finished, "joint", tmp_path), tmp_path / "ran"
    best = run / "checkpoints" / "best.ckpt"
    _craft(best, marker, like=best)
    if command == "predict":
        spec = mb.load_run(finished / "joint").inputs
        rng = np.random.default_rng(0)
        np.savez(tmp_path / "new.npz", **{m: rng.normal(size=(4, *s)).astype(np.float32)
                                          for m, s in spec.shapes.items()})
        argv = ["predict", str(run), "--data", str(tmp_path / "new.npz"), "--out", str(tmp_path / "p.npz")]
    else:
        argv = ["diagnose", str(run), "--out", str(tmp_path / "diag")]
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "best.ckpt wants to load" in err, err
    assert not marker.exists()


def test_resume_refuses_a_crafted_last_checkpoint(finished, tmp_path, capsys):
    """Lightning's own load (``--resume``) goes through the same weights-only loader."""
    run, marker = _copy(finished, "joint", tmp_path), tmp_path / "ran"
    last = run / "checkpoints" / "last.ckpt"
    _craft(last, marker, like=last)
    (run / "metrics.json").unlink()  # an unfinished run, as after a kill
    code = main(["train", "--data", "synthetic", "--method", "joint", "--resume", "--out", str(run),
                 "--set", "data.n=300", "data.dim=16", "data.latent_dim=4", "data.batch_size=16",
                 "model.feature_dim=8", "model.hidden=16", "trainer.max_epochs=2", "trainer.progress=false"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "last.ckpt wants to load" in err, err
    assert not marker.exists()


def test_every_methods_own_checkpoints_load_with_the_allowlist_as_it_is(tmp_path):
    """Best, last and a mid-epoch last (``checkpoint_every_n_steps``) of every registered
    method, stages included: nothing in them needs a global beyond :data:`CHECKPOINT_GLOBALS`."""
    assert CHECKPOINT_GLOBALS == ()  # the docstring's claim; widen it only with a reason
    torch.set_num_threads(1)
    loaded = 0
    for name in sorted(REGISTRY):
        extra = {"method__modality": "x1"} if name == "unimodal" else {}
        train(tiny_config(name, data__n=120, trainer__max_epochs=1, trainer__checkpoint_every_n_steps=2,
                          trainer__checkpoint_every_minutes=0, **extra), tmp_path / name)
        files = sorted((tmp_path / name).rglob("*.ckpt"))
        assert files, name
        for path in files:
            tree = load_checkpoint(path)
            assert "state_dict" in tree and "mmbalance" in tree, path
            loaded += 1
    assert loaded >= 2 * len(REGISTRY)
