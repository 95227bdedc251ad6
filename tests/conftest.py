"""Shared fixtures: tiny synthetic data and configurations that train in seconds."""

from __future__ import annotations

import logging
import warnings

import pytest
import torch

from mmbalance.config import build_config
from mmbalance.methods import get_method

TINY = {"data.n": 300, "data.dim": 16, "data.latent_dim": 4, "data.batch_size": 16, "model.feature_dim": 8,
        "model.hidden": 16, "trainer.max_epochs": 2, "trainer.progress": False, "trainer.patience": 0}


#: the tests whose floats go through the kernels that ATEN_CPU_CAPABILITY and MKL_CBWR switch
#: (losses, methods, training and resume, the engine, models, predictions): `make test-numerics`
#: (CI's second pass) reruns them on the portable kernels, so that a test that holds only for
#: one CPU's rounding fails here rather than on a user's machine
NUMERICS = ("tests/losses/", "tests/methods/", "tests/engine/", "tests/analysis/", "tests/models/",
            "tests/training/test_checkpoints.py", "tests/training/test_interrupt.py", "tests/training/test_run.py",
            "tests/training/test_nonfinite.py", "tests/bench/test_speed.py")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.nodeid.startswith(NUMERICS):
            item.add_marker(pytest.mark.numerics)


def three_modality_npz(path, signal=(0.5, 0.5, 0.5)):
    """A user's 3-modality ``.npz`` (audio 4-d, video 3-d, text 5-d; 90 rows, 3 classes): each
    modality is noise plus ``signal[i]`` times the label, so every one carries it."""
    import numpy as np
    rng = np.random.default_rng(0)
    n = 90
    label = np.arange(n) % 3
    arrays = {m: (rng.normal(size=(n, d)) + label[:, None] * s).astype(np.float32)
              for (m, d), s in zip((("audio", 4), ("video", 3), ("text", 5)), signal)}
    np.savez(path, label=label, **arrays)
    return path



def last_state(run):
    """The ``state_dict`` of run folder ``run``'s ``checkpoints/last.ckpt``."""
    return torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]


def whole_and_resumed(args, folder, epochs: int, stop: int):
    """``mmbalance train ARGS`` for ``epochs`` epochs in ``folder/whole``, and for ``stop`` epochs
    then ``--resume`` to ``epochs`` in ``folder/part`` (each exits 0); returns the last-checkpoint
    state dicts of the whole run, of the part at its stop, and of the resumed run (an exact
    resume makes the first and the last equal)."""
    from mmbalance.cli import main
    assert main(args + ["--set", f"trainer.max_epochs={epochs}", "--out", str(folder / "whole")]) == 0
    assert main(args + ["--set", f"trainer.max_epochs={stop}", "--out", str(folder / "part")]) == 0
    stopped = last_state(folder / "part")
    assert main(args + ["--set", f"trainer.max_epochs={epochs}", "--out", str(folder / "part"), "--resume"]) == 0
    return last_state(folder / "whole"), stopped, last_state(folder / "part")


def train_synthetic_cli(method: str, folder, *sets: str):
    """``mmbalance train --method METHOD --data synthetic`` for one epoch on 200 tiny points in
    ``folder/syn``, plus ``--set`` of each of ``sets`` (exit 0); returns its ``metrics.json``."""
    import json
    from mmbalance.cli import main
    assert main(["train", "--data", "synthetic", "--method", method, "--set", "data.n=200", "--set", "data.dim=16",
                 "--set", "model.hidden=16", "--set", "model.feature_dim=8", "--set", "trainer.max_epochs=1",
                 "--set", "trainer.progress=false", *(a for k in sets for a in ("--set", k)),
                 "--out", str(folder / "syn")]) == 0
    return json.loads((folder / "syn" / "metrics.json").read_text())

#: model keys for a method that requires stage-wise encoders (intermediate fusion): ResNet-18 of width 4
STAGEWISE = {"model.encoder": "resnet18_video", "model.base_width": 4}
_STAGEWISE_FILES: dict = {}


def stagewise_npz(folder=None) -> str:
    """A user's ``.npz`` of two image modalities ``x1``, ``x2`` (N=120, 1x12x12, 3 classes;
    each image is noise plus the label in a corner patch), for methods whose models need
    encoders with stages (ResNet-18); the synthetic set is vectors. Written once per process
    in a temporary folder, or into ``folder`` unless it is there (atomically: both ranks of a
    DDP run may write it at once)."""
    import os
    import tempfile
    from pathlib import Path

    import numpy as np
    if folder is None:
        if "path" not in _STAGEWISE_FILES:
            import atexit
            import shutil
            folder = tempfile.mkdtemp(prefix="mmbalance-stagewise-")
            atexit.register(shutil.rmtree, folder, True)
            _STAGEWISE_FILES["path"] = stagewise_npz(folder)
        return _STAGEWISE_FILES["path"]
    path = Path(folder) / "stagewise.npz"
    if not path.exists():
        rng = np.random.default_rng(0)
        label = np.arange(120) % 3
        arrays = {m: rng.normal(size=(120, 1, 12, 12)).astype(np.float32) for m in ("x1", "x2")}
        for k, m in enumerate(("x1", "x2")):
            arrays[m][:, 0, :4, 4 * k:4 * k + 4] += label[:, None, None] * (1.0 - 0.5 * k)
        handle, part = tempfile.mkstemp(suffix=".npz", dir=folder)
        os.close(handle)
        np.savez(part, label=label, **arrays)
        os.replace(part, path)
    return str(path)


def method_data(method: str, folder=None):
    """The data spec and model overrides of the registry-wide tests' runs of ``method``:
    ``("synthetic", {})``, or for a method that requires stage-wise encoders
    (``Method.requires``) :func:`stagewise_npz` and :data:`STAGEWISE`."""
    if "stagewise_encoders" in get_method(method).requires:
        return stagewise_npz(folder), dict(STAGEWISE)
    return "synthetic", {}


def tiny_config(method: str, **overrides):
    """A run configuration for ``method`` on a 300-point synthetic set; ``overrides`` use
    ``__`` for dots (``trainer__max_epochs=1``). A method that requires stage-wise encoders
    (``Method.requires``) gets :func:`stagewise_npz` and :data:`STAGEWISE` instead."""
    spec, model = method_data(method)
    values = {**TINY, **model}
    values.update({k.replace("__", "."): v for k, v in overrides.items()})
    return build_config(method, spec, values, get_method(method).Hyperparameters)


@pytest.fixture(autouse=True, scope="session")
def _check_cache(tmp_path_factory):
    """The data check's cache (data/check.py) goes to a temporary folder, never the user's
    ~/.cache; subprocesses inherit it through the environment."""
    mp = pytest.MonkeyPatch()
    mp.setenv("MMBALANCE_CACHE_DIR", str(tmp_path_factory.mktemp("mmbalance-check-cache")))
    yield
    mp.undo()


@pytest.fixture
def one_thread():
    """One intra-op thread for the test, restored after it: tiny tensors run fastest on one
    thread, and a bit-for-bit comparison with a subprocess needs the same thread count on
    both sides (a thread count can change how a float sum is split)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _quiet():
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*(num_workers|LeafSpec|litlogger|bottleneck).*")
        yield
