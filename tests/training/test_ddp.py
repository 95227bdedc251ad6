"""Two-process DDP on CPU through the product's own ``train()``: every method with a gradient
or learning-rate hook ends with identical weights on both ranks (their balancing coefficients
are averaged across ranks), and val/test metrics count every row of the split exactly once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

WORKER = Path(__file__).with_name("ddp_train_worker.py")
METHODS = ["ogm", "ogm_ge", "agm", "mlb", "pmr", "mslr", "mcr"]


@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "MASTER_PORT": str(29500 + os.getpid() % 1000)}
    proc = subprocess.run([sys.executable, str(WORKER), str(root), *METHODS], env=env, capture_output=True,
                          text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root


@pytest.mark.parametrize("method", METHODS)
def test_two_rank_ddp_weights_identical(ddp_runs, method):
    ranks = [torch.load(ddp_runs / method / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    assert ranks[0]["world"] == ranks[1]["world"] == 2
    assert ranks[0]["first"] != ranks[1]["first"], "ranks should read different shards"
    s0, s1 = ranks[0]["state"], ranks[1]["state"]
    assert s0.keys() == s1.keys()
    for key, value in s0.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, s1[key]), f"{method}: {key} differs between ranks"
    assert (ddp_runs / method / "metrics.json").exists()


@pytest.mark.parametrize("method", ["mcr", "mslr"])
def test_ddp_metrics_count_every_row_once(ddp_runs, method):
    """metrics.json under 2-process DDP equals a single-process evaluation of the same
    checkpoint on val and test splits of 45 rows (a padding sampler scores 46)."""
    from mmbalance.analysis.runs import load_run
    run = load_run(ddp_runs / method)
    metrics = json.loads((ddp_runs / method / "metrics.json").read_text())
    for split in ("val", "test"):
        dataset = getattr(run.data, split)
        assert len(dataset) % 2 == 1
        loader = torch.utils.data.DataLoader(dataset, batch_size=7)
        with torch.no_grad():
            right = sum(int((run.method.predict(run.method(x)).argmax(-1) == y).sum()) for x, y in loader)
        assert metrics[split]["accuracy"] == pytest.approx(right / len(dataset), abs=1e-6), split
