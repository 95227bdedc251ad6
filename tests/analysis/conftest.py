"""Tiny trained runs shared by the analysis tests (trained once per session)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmbalance.config import build_config
from mmbalance.methods import get_method
from mmbalance.training import train

from ..conftest import TINY, tiny_config


@pytest.fixture(scope="session")
def runs(tmp_path_factory):
    """name -> run directory: ``probe`` (multiloss, probes every epoch), ``plain`` (the same
    run without probes), ``ensemble`` and ``npz3`` (joint on a user's 3-modality .npz file).
    Dropout makes training draw from the global RNG, so a probe that drew from it would show."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models train fastest on one thread, above all on a busy machine
    try:
        return _train_runs(tmp_path_factory.mktemp("runs"))
    finally:
        torch.set_num_threads(before)


def _train_runs(root):
    out = {}
    for name, method, extra in (("probe", "multiloss", {"trainer__probe_every": 1, "model__dropout": 0.2}),
                                ("plain", "multiloss", {"model__dropout": 0.2}), ("ensemble", "ensemble", {})):
        out[name] = root / name
        train(tiny_config(method, **extra), out[name])
    rng = np.random.default_rng(0)
    label = rng.integers(0, 3, 240)
    arrays = {"a": np.eye(3)[label] * 2 + rng.normal(size=(240, 3)), "b": rng.normal(size=(240, 4)),
              "c": rng.normal(size=(240, 5)) + label[:, None] * 0.3}
    path = root / "user.npz"
    np.savez(path, label=label, **{k: v.astype(np.float32) for k, v in arrays.items()})
    cfg = build_config("joint", str(path), {**TINY, "trainer.max_epochs": 3}, get_method("joint").Hyperparameters)
    out["npz3"] = root / "npz3"
    train(cfg, out["npz3"])
    return out
