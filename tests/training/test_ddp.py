"""Two-process DDP on CPU: both ranks see different data and end with identical weights."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

WORKER = Path(__file__).with_name("ddp_worker.py")


@pytest.mark.parametrize("method", ["mcr"])
def test_two_rank_ddp_weights_identical(tmp_path, method):
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "MASTER_PORT": str(29500 + os.getpid() % 1000)}
    proc = subprocess.run([sys.executable, str(WORKER), str(tmp_path), method], env=env, capture_output=True,
                          text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    assert ranks[0]["world"] == ranks[1]["world"] == 2
    assert ranks[0]["first"] != ranks[1]["first"], "ranks should read different shards"
    s0, s1 = ranks[0]["state"], ranks[1]["state"]
    assert s0.keys() == s1.keys()
    for key, value in s0.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, s1[key]), f"{key} differs between ranks"
